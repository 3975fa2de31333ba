"""One connection's state, its reader and writer hand-offs, with no socket.

An idle connection must cost little: no task of its own besides the shell's read, no
outbox, event or future until something needs one. These tests pin what that must not
change: the writer sees everything queued before it first waits, a close wakes it, the
reader is interrupted when the server decides to close (and only that cancellation is
taken back), and the idle timeout still closes a silent connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from websocketspec import Config, Handler, HookContext
from websocketspec.adapters.sqlalchemy import SQLAlchemyAdapter, create_engine
from websocketspec.hooks import Handshake
from websocketspec.protocol.messages import FilterOption, QueryOptions
from websocketspec.registry import EntityInfo
from websocketspec.server.connection import Connection, State
from websocketspec.server.subscriptions import Subscription

TIMEOUT = 5.0

HANDSHAKE = Handshake(
    path="/ws",
    headers={},
    query_params={},
    cookies={},
    client=("127.0.0.1", 50000),
    subprotocols=(),
)


def new_connection(max_queue: int = 10, max_queue_bytes: int = 1 << 20) -> Connection:
    return Connection(HANDSHAKE, max_queue=max_queue, max_queue_bytes=max_queue_bytes)


class Sink:
    """A FrameSink that records frames and closes."""

    def __init__(self, buffered: int = 0, fail: bool = False) -> None:
        self.frames: list[str] = []
        self.closed: tuple[int, str] | None = None
        self.buffered = buffered
        self.fail = fail

    def write(self, text: str) -> int:
        if self.fail:
            raise ConnectionError("gone")
        self.frames.append(text)
        return self.buffered

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


class Frames:
    """A frame source the test feeds; ``None`` ends it."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self.cancelled = 0

    async def __call__(self) -> str | bytes | None:
        try:
            return await self.queue.get()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


@pytest.fixture
def config() -> Config:
    return Config(close_timeout=1.0)


@pytest.fixture
async def handler(config: Config) -> AsyncIterator[Handler]:
    # Never started: nothing here reaches the database.
    engine = create_engine("sqlite:///:memory:")
    yield Handler(SQLAlchemyAdapter(engine), config=config)
    await engine.dispose()


def serve(handler: Handler, conn: Connection, frames: Frames) -> asyncio.Task[None]:
    ctx = HookContext(connection=conn, operation="connect")
    return asyncio.create_task(handler.serve_connection(conn, ctx, frames))


async def settle() -> None:
    """Let the loop run the callbacks and task steps that are ready."""
    for _ in range(5):
        await asyncio.sleep(0)


# -- the outbox and the writer --------------------------------------------------------


async def test_an_idle_connection_holds_no_outbox_event_or_future() -> None:
    conn = new_connection()
    conn.sink = Sink()
    conn.send_text("one")
    conn.close(1000)
    assert conn._outbox is None
    assert conn._waiter is None
    assert conn._closing is None
    assert conn._reader is None


async def test_the_writer_sees_what_was_queued_before_its_first_wait() -> None:
    conn = new_connection()
    conn.send_text("one")
    conn.send_text("two")
    assert conn.queued == 2
    await asyncio.wait_for(conn.wait(), TIMEOUT)
    assert conn.take() == ["one", "two"]
    assert conn.queued == 0
    assert conn._outbox is None  # nothing held while nothing waits


async def test_the_writer_waits_until_a_frame_or_a_close() -> None:
    conn = new_connection()
    waiting = asyncio.ensure_future(conn.wait())
    await settle()
    assert not waiting.done()
    conn.send_text("one")
    await asyncio.wait_for(waiting, TIMEOUT)
    assert conn.take() == ["one"]

    waiting = asyncio.ensure_future(conn.wait())
    await settle()
    assert not waiting.done()
    conn.close(1001, "bye")
    await asyncio.wait_for(waiting, TIMEOUT)
    assert conn.take() == []
    assert (conn.state, conn.close_code, conn.close_reason) == (
        State.CLOSING,
        1001,
        "bye",
    )
    assert conn._waiter is None


async def test_a_close_before_the_writer_waits_is_not_missed() -> None:
    conn = new_connection()
    conn.close(1000)
    await asyncio.wait_for(conn.wait(), TIMEOUT)
    assert conn.state is State.CLOSING


async def test_a_full_outbox_is_dropped_and_the_connection_closed_1013() -> None:
    conn = new_connection(max_queue=2)
    for text in ("a", "b", "c"):
        conn.send_text(text)
    assert conn.queued == 0
    assert (conn.state, conn.close_code) == (State.CLOSING, 1013)
    await asyncio.wait_for(conn.wait(), TIMEOUT)
    assert conn.take() == []
    conn.send_text("d")  # closing: dropped
    assert conn.queued == 0


async def test_a_sink_over_its_bound_closes_1013_and_a_dead_one_closes() -> None:
    conn = new_connection(max_queue_bytes=100)
    sink = conn.sink = Sink(buffered=101)
    conn.send_text("x")
    assert sink.frames == ["x"]
    assert sink.closed == (1013, "send queue full: the client reads too slowly")
    assert conn.state is State.CLOSING

    conn = new_connection()
    conn.sink = Sink(fail=True)
    conn.send_text("x")
    assert conn.state is State.CLOSED
    assert conn.sent == 0


async def test_the_closing_event_is_made_on_demand_and_set_when_closing() -> None:
    conn = new_connection()
    closing = conn.closing
    assert not closing.is_set()
    conn.close(1000)
    assert closing.is_set()
    late = new_connection()
    late.close(1000)
    assert late.closing.is_set()


# -- the reader ---------------------------------------------------------------------


async def test_a_close_interrupts_the_reader_and_releases_the_connection(
    handler: Handler,
) -> None:
    conn = new_connection()
    frames = Frames()
    task = serve(handler, conn, frames)
    await settle()
    assert conn.id in handler.connections
    conn.close(4000, "bye")
    await asyncio.wait_for(task, TIMEOUT)
    assert not task.cancelled()
    assert task.cancelling() == 0
    assert frames.cancelled == 1
    assert conn.id not in handler.connections
    assert conn._reader is None


async def test_a_cancel_from_outside_is_not_swallowed_even_with_a_close(
    handler: Handler,
) -> None:
    conn = new_connection()
    task = serve(handler, conn, Frames())
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, TIMEOUT)

    # Both at once: the close's cancellation is taken back, the other one stands.
    conn = new_connection()
    task = serve(handler, conn, Frames())
    await settle()
    conn.close(1000)
    await asyncio.sleep(0)  # the close's cancellation reaches the reader first
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, TIMEOUT)


async def test_the_reader_ends_when_the_client_goes(handler: Handler) -> None:
    conn = new_connection()
    frames = Frames()
    task = serve(handler, conn, frames)
    await settle()
    frames.queue.put_nowait(None)
    await asyncio.wait_for(task, TIMEOUT)
    assert conn.state is State.CLOSED
    assert frames.cancelled == 0
    assert conn.id not in handler.connections


async def test_a_close_from_the_reader_itself_ends_it(handler: Handler) -> None:
    # A binary frame is answered by the reader itself; a dead socket closes there.
    conn = new_connection()
    conn.sink = Sink(fail=True)
    frames = Frames()
    task = serve(handler, conn, frames)
    await settle()
    frames.queue.put_nowait(b"binary")
    await asyncio.wait_for(task, TIMEOUT)
    assert conn.state is State.CLOSED
    assert not task.cancelled()


@pytest.mark.parametrize("config", [Config(idle_timeout=0.2)])
async def test_the_idle_timeout_closes_a_silent_connection_on_time(
    handler: Handler,
) -> None:
    conn = new_connection()
    sink = conn.sink = Sink()
    task = serve(handler, conn, Frames())
    await asyncio.sleep(0.1)
    conn.send_text("traffic")  # a notification counts as traffic
    sent = time.monotonic()
    await asyncio.wait_for(task, TIMEOUT)
    assert time.monotonic() - sent >= 0.19
    assert sink.closed == (1000, "idle timeout")


# -- subscriptions ------------------------------------------------------------------


def test_a_subscription_keeps_the_clients_options_and_gives_a_fresh_copy() -> None:
    options = QueryOptions(
        filters=[FilterOption(column="id", operator="eq", value=7)],
        columns=["id", "name"],
    )
    entity = EntityInfo(
        schema="public",
        name="users",
        model=None,
        columns={},
        relations={},
        primary_key=("id",),
    )
    sub = Subscription(
        id="sub-1",
        connection=new_connection(),
        entity=entity,
        where=None,
        columns=None,
        options=options,
    )
    assert sub.options == options
    copy = sub.options
    assert copy is not None
    copy.filters.clear()
    assert sub.options == options
    sub.options = None
    assert sub.options is None
