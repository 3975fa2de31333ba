"""A slow consumer is cut off; everyone else gets everything, and memory stays bounded.

A client subscribes to ``posts`` and then stops reading, with a tiny TCP receive
buffer, while a writer floods large rows and a healthy subscriber reads everything.
The server must never wait for the slow client (fan-out is synchronous), must bound
what it holds for it (``Config.max_queue`` / ``max_queue_bytes``), and must close it
(1013) once the bound is passed, while the healthy subscriber misses nothing.

Where the bound applies differs by shell:

- direct (``websockets``): frames are written to the socket at once, so the transport's
  write buffer grows; past ``max_queue_bytes`` the connection is closed with 1013. The
  close frame is queued behind the data, so the client sees 1013 once it reads.
- ASGI (uvicorn): the writer task awaits ``send()``, which uvicorn blocks while the
  transport is paused (its write buffer is over the high-water mark), so the outbox
  fills; past ``max_queue`` it is dropped and the connection is closed (the handler
  releases it at once: subscriptions gone, disconnect hooks run). The close frame
  cannot pass the blocked ``send()``: the handler gives the writer one second more,
  then cancels it and returns, and uvicorn closes the transport once its buffer is
  flushed. So the code the client sees depends on when it reads again: within that
  second, the writer gets through and the client sees 1013; later, it reads the data
  it was owed and then the TCP connection ends without a close frame: 1006.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.wsclient import TIMEOUT, WSClient
from websocketspec import Config, Handler, HookContext, HookType
from websocketspec.server.connection import Connection

Connect = Callable[..., Any]

MAX_QUEUE = 32
MAX_QUEUE_BYTES = 128 * 1024
CONTENT = "x" * 8192
"""Each notification is a little over 8 KiB."""
BATCH = 25
MAX_ROWS = 4000
"""The flood stops once the slow client is cut off; this caps it if it never is."""


@pytest.fixture
def backend() -> str:
    # The bound is the server's, not the database's: one backend is enough.
    return "sqlite"


@pytest.fixture
def config() -> Config:
    return Config(
        max_queue=MAX_QUEUE, max_queue_bytes=MAX_QUEUE_BYTES, close_timeout=1.0
    )


def rss_bytes() -> int:
    """This process's resident set size, from /proc (no psutil needed)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@contextlib.asynccontextmanager
async def slow_client(url: str) -> AsyncIterator[ClientConnection]:
    """A client with a tiny TCP receive buffer that reads only when told to."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Before connect(), so that the advertised window is small from the start.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port)),
            TIMEOUT,
        )
        ws = await asyncio.wait_for(
            connect(
                url,
                sock=sock,
                max_queue=4,
                additional_headers={"X-Name": "slow"},
                close_timeout=1,
            ),
            TIMEOUT,
        )
    except BaseException:
        sock.close()
        raise
    try:
        yield ws
    finally:
        await asyncio.wait_for(ws.close(), TIMEOUT)


async def read_until_closed(ws: ClientConnection) -> tuple[int, int | None]:
    """Read everything left; returns (frames read, the close code seen)."""
    frames = 0
    async with asyncio.timeout(TIMEOUT):
        try:
            while True:
                await ws.recv()
                frames += 1
        except ConnectionClosed:
            pass
    return frames, ws.close_code


async def create_batch(writer: WSClient, user_id: int, size: int) -> list[int]:
    """Create ``size`` large posts in one batch frame; returns their ids."""
    messages = [
        {
            "id": writer.next_id(),
            "type": "request",
            "operation": "create",
            "entity": "posts",
            "data": {"title": "flood", "content": CONTENT, "user_id": user_id},
        }
        for _ in range(size)
    ]
    futures = [writer.expect(m["id"]) for m in messages]
    await asyncio.wait_for(writer.send_raw(json.dumps(messages)), TIMEOUT)
    answers = await asyncio.wait_for(asyncio.gather(*futures), TIMEOUT)
    assert all(a["success"] for a in answers), [a for a in answers if not a["success"]]
    return [int(a["data"]["id"]) for a in answers]


async def test_slow_consumer_is_cut_off_and_others_miss_nothing(
    handler: Handler, server: str, connect: Connect, shell: str
) -> None:
    slow_gone = asyncio.Event()
    slow_conns: list[Connection] = []
    peaks = {"queued": 0, "buffered": 0}

    @handler.hooks.after(HookType.CONNECT)
    def name(ctx: HookContext) -> None:
        if ctx.handshake.headers.get("x-name") == "slow":
            assert isinstance(ctx.connection, Connection)
            slow_conns.append(ctx.connection)

    @handler.hooks.after(HookType.DISCONNECT)
    def bye(ctx: HookContext) -> None:
        if ctx.connection in slow_conns:
            slow_gone.set()

    @handler.hooks.after(HookType.CREATE)
    def sample(ctx: HookContext) -> None:
        # Runs on every write while the flood goes on: what the server holds for
        # the slow client, in its outbox (ASGI) or its transport's buffer (direct).
        for conn in slow_conns:
            peaks["queued"] = max(peaks["queued"], conn.queued)
            ws = getattr(conn.sink, "_ws", None)  # the direct shell's socket
            if ws is not None and ws.transport is not None:
                size = ws.transport.get_write_buffer_size()
                peaks["buffered"] = max(peaks["buffered"], size)

    writer: WSClient = await connect()
    healthy: WSClient = await connect()
    user = await writer.ok("create", "users", data={"name": "flood"})
    healthy_sub = await healthy.subscribe("posts")

    async with slow_client(server) as slow:
        await slow.send(
            json.dumps(
                {
                    "id": "s1",
                    "type": "subscription",
                    "operation": "subscribe",
                    "entity": "posts",
                }
            )
        )
        answer = json.loads(await asyncio.wait_for(slow.recv(), TIMEOUT))
        assert answer["success"] is True, answer
        assert len(slow_conns) == 1
        # From here on the slow client reads nothing until it has been cut off.

        rss_before = rss_bytes()
        created: list[int] = []
        while not slow_gone.is_set() and len(created) < MAX_ROWS:
            created += await create_batch(writer, user["id"], BATCH)
        assert slow_gone.is_set(), (
            f"the slow client was not cut off after {len(created)} rows; peaks {peaks}"
        )
        # A little more after it was cut off: nobody else notices.
        created += await create_batch(writer, user["id"], BATCH)
        rss_growth = rss_bytes() - rss_before

        # The healthy subscriber got every notification, once, in commit order.
        notes = [await healthy.notification() for _ in created]
        assert [n["data"]["id"] for n in notes] == sorted(created)
        assert {n["subscription_id"] for n in notes} == {healthy_sub}
        assert {n["operation"] for n in notes} == {"create"}
        assert all(n["data"]["content"] == CONTENT for n in notes)
        assert await healthy.drain() == []

        # What the server held for the slow client stayed within its bounds.
        conn = slow_conns[0]
        assert conn.id not in handler.connections
        assert peaks["queued"] <= MAX_QUEUE, peaks
        if shell == "direct":
            # It is closed as soon as a write leaves more than the bound waiting.
            assert peaks["buffered"] <= MAX_QUEUE_BYTES + 2 * len(CONTENT), peaks
        # The rows themselves are ~8 KiB each, held by three clients in this process;
        # what matters is that nothing grew with the slow client's backlog.
        assert rss_growth < 64 * 1024 * 1024 + 3 * len(created) * len(CONTENT), (
            rss_growth
        )

        # The slow client reads what the server had already sent, then the close.
        frames, code = await read_until_closed(slow)
        assert frames < len(created), (frames, len(created))
        if shell == "direct":
            assert code == 1013
            assert conn.close_code == 1013
        else:
            # The server decided on 1013; whether the client sees it depends on when
            # it reads again (see the module docstring).
            assert conn.close_code == 1013
            assert code in (1013, 1006)

    # Other connections keep working: a fresh client reads and is notified.
    fresh: WSClient = await connect()
    rows = await fresh.request("read", "posts", options={"columns": ["id"]})
    assert rows["metadata"]["total"] == len(created)
    fresh_sub = await fresh.subscribe("posts")
    post = await writer.ok(
        "create", "posts", data={"title": "after", "user_id": user["id"]}
    )
    note = await fresh.notification()
    assert note["subscription_id"] == fresh_sub
    assert note["data"]["id"] == post["id"]
    assert (await healthy.notification())["data"]["id"] == post["id"]
    assert handler.stats()["connections"] == 3
