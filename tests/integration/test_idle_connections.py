"""What an idle subscribed connection costs the server, and that cheap stays prompt.

Issue #5: memory per idle subscribed connection. The server holds thousands of
connections that only wait; each must cost little beyond the WebSocket library's own
state. On the direct route the framework runs no task of its own per connection (the
library's handler task reads), on ASGI one (the writer draining the outbox); no
outbox, event or future waits on an idle direct-route connection. Nothing watches
for the close with a task of its own, yet when the server decides to close, the
connection is released at once (subscriptions gone, disconnect hooks run), even if
the client never answers the close.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import websocketspec
from tests.support.wsclient import TIMEOUT, WSClient
from websocketspec import Handler, HookContext, HookType
from websocketspec.server.connection import Connection

Connect = Callable[..., Any]

CLIENTS = 12
PACKAGE = Path(websocketspec.__file__).resolve().parent
ASYNCIO = Path(asyncio.__file__).resolve().parent


@pytest.fixture
def backend() -> str:
    # The cost is the server's, not the database's: one backend is enough.
    return "sqlite"


def own_tasks() -> int:
    """Pending tasks running the framework's code or a bare asyncio wait."""
    count = 0
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if code is None:
            continue
        path = Path(code.co_filename).resolve()
        if path.is_relative_to(PACKAGE) or path.is_relative_to(ASYNCIO):
            count += 1
    return count


async def requests_done(handler: Handler) -> None:
    """Wait until no request of any connection is in flight."""
    pending = [t for c in handler.connections.values() for t in c.tasks]
    if pending:
        await asyncio.wait(pending, timeout=TIMEOUT)


async def test_an_idle_subscribed_connection_costs_no_task_of_its_own(
    handler: Handler, connect: Connect, shell: str
) -> None:
    first: WSClient = await connect()
    await first.subscribe("users")
    await requests_done(handler)
    before = own_tasks()

    clients: list[WSClient] = [await connect() for _ in range(CLIENTS)]
    for i, client in enumerate(clients):
        await client.subscribe(
            "users",
            options={"filters": [{"column": "id", "operator": "eq", "value": i}]},
        )
    await requests_done(handler)

    per_connection = 0 if shell == "direct" else 1  # ASGI: the writer task
    assert own_tasks() - before == CLIENTS * per_connection
    conns = list(handler.connections.values())
    assert len(conns) == CLIENTS + 1
    for conn in conns:
        assert len(conn.subscriptions) == 1
        assert conn._outbox is None
        assert conn._closing is None
        if shell == "direct":
            assert conn._waiter is None

    # Still live: a change reaches the one subscriber it concerns.
    writer: WSClient = await connect()
    row = await writer.ok("create", "users", data={"name": "Ann", "id": 3})
    note = await clients[3].notification()
    assert note["data"]["id"] == row["id"] == 3
    assert (await first.notification())["data"]["id"] == 3
    assert [await c.drain() for c in clients] == [[]] * CLIENTS


async def test_a_client_that_never_answers_the_close_is_released_at_once(
    handler: Handler, connect: Connect
) -> None:
    gone = asyncio.Event()
    kicked: list[Connection] = []

    @handler.hooks.before(HookType.READ)
    def kick(ctx: HookContext) -> None:
        if ctx.options.limit == 1:
            assert isinstance(ctx.connection, Connection)
            kicked.append(ctx.connection)
            ctx.connection.close(4000, "kicked")

    @handler.hooks.after(HookType.DISCONNECT)
    def bye(ctx: HookContext) -> None:
        if ctx.connection in kicked:
            gone.set()

    client: WSClient = await connect()
    await client.subscribe("users")
    # From here on the client reads nothing: it cannot answer the close frame.
    client.ws.transport.pause_reading()
    await client.send_raw(
        '{"id": "r1", "type": "request", "operation": "read", "entity": "users",'
        ' "options": {"limit": 1}}'
    )
    started = time.monotonic()
    await asyncio.wait_for(gone.wait(), TIMEOUT)
    # Well within the closing handshake's timeout (several seconds) it waits for.
    assert time.monotonic() - started < 2.0
    conn = kicked[0]
    assert conn.id not in handler.connections
    assert conn.subscriptions == {}
    assert len(handler.subscriptions) == 0
    assert conn.close_code == 4000

    client.ws.transport.resume_reading()
    await asyncio.wait_for(client.ws.wait_closed(), TIMEOUT)
    assert client.ws.close_code == 4000
