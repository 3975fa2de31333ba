"""Graceful shutdown: requests in flight finish, clients see 1001, no committed write is lost.

The direct shell (``DirectServer``) owns its shutdown: it stops accepting, waits for the
requests in flight (up to ``Config.close_timeout``), closes every connection with 1001
("going away"), runs the disconnect hooks and releases the database. The quickstart
serves on it and stops that way on SIGTERM. Under uvicorn (the ASGI shell) the server,
not the application, decides: see :func:`test_uvicorn_shutdown_closes_with_1012`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.models import User
from tests.support.servers import serve_asgi
from tests.support.wsclient import TIMEOUT, WSClient
from websocketspec import Config, Handler, HookContext, HookType
from websocketspec.server.direct import DirectServer

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.py"
STARTUP_TIMEOUT = 20.0
EXIT_TIMEOUT = 15.0


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
def config() -> Config:
    return Config(close_timeout=5.0)


def is_listening(port: int) -> bool:
    """Whether a socket listens on ``port`` on IPv4 loopback, as the kernel reports it."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if state == "0A" and int(local.rpartition(":")[2], 16) == port:  # LISTEN
            return True
    return False


async def wait_not_listening(port: int) -> None:
    """Wait until the server has closed its listening socket.

    There is no event for it outside the server, so this polls the kernel's table,
    briefly and with a deadline. (It does not probe by connecting: a connection that
    races the close is accepted and then leaked by asyncio on Python 3.11.)
    """
    async with asyncio.timeout(TIMEOUT):
        while True:
            if not is_listening(port):
                return
            await asyncio.sleep(0.01)


async def closed_code(client: WSClient) -> int | None:
    """Wait for the server to close the client's connection; returns the close code."""
    await asyncio.wait_for(client.ws.wait_closed(), TIMEOUT)
    return client.ws.close_code


def held_create(client: WSClient, name: str) -> tuple[str, str]:
    msg_id = client.next_id()
    frame = json.dumps(
        {
            "id": msg_id,
            "type": "request",
            "operation": "create",
            "entity": "users",
            "data": {"name": name},
        }
    )
    return msg_id, frame


async def count_named(engine: AsyncEngine, name: str) -> int:
    async with engine.connect() as conn:
        query = sa.select(sa.func.count()).select_from(User).where(User.name == name)
        return int((await conn.execute(query)).scalar_one())


async def test_direct_stop_finishes_requests_then_closes_with_1001(
    handler: Handler, engine: AsyncEngine
) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()
    gone: list[str] = []

    @handler.hooks.after(HookType.CREATE)
    async def hold(ctx: HookContext) -> None:
        if ctx.data and ctx.data.get("name") == "in flight":
            entered.set()
            await asyncio.wait_for(release.wait(), TIMEOUT)

    @handler.hooks.after(HookType.DISCONNECT)
    def bye(ctx: HookContext) -> None:
        gone.append(ctx.connection.id)

    server = DirectServer(handler, "127.0.0.1", 0, path="/ws")
    await server.start()
    port = server.port
    url = f"ws://127.0.0.1:{port}/ws"
    stopping: asyncio.Task[None] | None = None
    client = await WSClient.connect(url)
    idle = await WSClient.connect(url)
    try:
        await client.ok("create", "users", data={"name": "before"})
        msg_id, frame = held_create(client, "in flight")
        answer = client.expect(msg_id)
        await client.send_raw(frame)
        await asyncio.wait_for(entered.wait(), TIMEOUT)

        stopping = asyncio.create_task(server.stop())
        # New connections are refused as soon as the stop begins...
        assert is_listening(port)
        await wait_not_listening(port)
        with pytest.raises(ConnectionRefusedError):
            await WSClient.connect(url)
        # ...while the request in flight is still being served, connections open.
        assert not answer.done()
        assert not stopping.done()
        assert gone == []
        assert client.ws.close_code is None
        # A request that arrives during the grace period is in flight too: it is
        # answered before the close, never run and left unanswered.
        late_id, late_frame = held_create(client, "late")
        late = client.expect(late_id)
        await client.send_raw(late_frame)

        release.set()
        # The requests in flight get their answers, then the close: 1001, going away.
        reply = await asyncio.wait_for(answer, TIMEOUT)
        assert reply["success"] is True, reply
        assert reply["data"]["name"] == "in flight"
        late_reply = await asyncio.wait_for(late, TIMEOUT)
        assert late_reply["success"] is True, late_reply
        assert await closed_code(client) == 1001
        assert await closed_code(idle) == 1001
        assert client.ws.close_reason == "server shutting down"
        await asyncio.wait_for(stopping, TIMEOUT)
        # Disconnect hooks ran for both connections before stop() returned.
        assert len(gone) == 2
        assert handler.connections == {}
    finally:
        release.set()
        if stopping is None:
            await server.stop(timeout=1)
        await client.close()
        await idle.close()
    # The writes committed before their answers were sent.
    assert await count_named(engine, "in flight") == 1
    assert await count_named(engine, "late") == 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Quickstart:
    """``examples/quickstart.py`` as a real process, its output in a log file."""

    def __init__(self, database: str, log: Path) -> None:
        self.database = database
        self.log = log
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.proc: asyncio.subprocess.Process | None = None

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(QUICKSTART),
                "--port",
                str(self.port),
                "--database",
                self.database,
                cwd=ROOT,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    async def connect(self) -> WSClient:
        """Connect once the server listens (it gives no other sign of being ready)."""
        assert self.proc is not None
        async with asyncio.timeout(STARTUP_TIMEOUT):
            while True:
                if self.proc.returncode is not None:
                    raise AssertionError(f"quickstart exited:\n{self.output()}")
                try:
                    return await WSClient.connect(self.url, open_timeout=2)
                except OSError:
                    await asyncio.sleep(0.05)

    async def terminate(self) -> int:
        """SIGTERM, then wait for the exit; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), EXIT_TIMEOUT)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await asyncio.wait_for(self.proc.wait(), EXIT_TIMEOUT)


@pytest.fixture
async def quickstart(tmp_path: Path) -> AsyncIterator[Any]:
    """Start quickstart processes on one SQLite file; all are killed at the end."""
    database = f"sqlite:///{tmp_path / 'app.db'}"
    started: list[Quickstart] = []

    async def start() -> Quickstart:
        process = Quickstart(database, tmp_path / f"quickstart-{len(started)}.log")
        started.append(process)
        await process.start()
        return process

    yield start
    for process in started:
        await process.kill()


async def test_quickstart_sigterm_closes_1001_exits_0_and_loses_no_write(
    quickstart: Any,
) -> None:
    first: Quickstart = await quickstart()
    client = await first.connect()
    try:
        acknowledged = [
            (await client.ok("create", "users", data={"name": f"u{i}", "email": "e"}))[
                "id"
            ]
            for i in range(20)
        ]
        # A burst still arriving when the signal comes: whatever was answered with
        # success must survive the restart.
        burst = [
            {
                "id": client.next_id(),
                "type": "request",
                "operation": "create",
                "entity": "users",
                "data": {"name": f"burst{i}", "email": "e"},
            }
            for i in range(30)
        ]
        answers = [client.expect(m["id"]) for m in burst]
        await client.send_raw(json.dumps(burst))
        code = await first.terminate()
        assert code == 0, first.output()
        assert await closed_code(client) == 1001, first.output()
    finally:
        # Also waits for the client to have read every frame that arrived.
        await client.close()
    for answer in answers:
        if not answer.cancelled() and answer.result()["success"]:
            acknowledged.append(answer.result()["data"]["id"])
    assert "shutting down" in first.output()

    second: Quickstart = await quickstart()
    client = await second.connect()
    try:
        rows = await client.ok("read", "users", options={"limit": 1000})
        # Every acknowledged write is there, and only those: a request is either
        # answered before the close or not run at all (the burst may have arrived
        # before or after the stop began).
        assert sorted(row["id"] for row in rows) == sorted(acknowledged)
        assert len(acknowledged) in (20, 50), len(acknowledged)
        assert {f"u{i}" for i in range(20)} <= {row["name"] for row in rows}
        # And the restarted server works.
        await client.ok("create", "users", data={"name": "again", "email": "e"})
    finally:
        await client.close()
    assert await second.terminate() == 0, second.output()


async def test_uvicorn_shutdown_closes_with_1012(
    handler: Handler, engine: AsyncEngine
) -> None:
    """What the ASGI shell does when uvicorn shuts down with a client connected.

    uvicorn owns the connection: on shutdown it sends every WebSocket a close frame with
    1012 ("service restart") itself, tells the application ``websocket.disconnect``,
    and then waits for the application to return. So the client sees 1012, not the
    direct shell's 1001, and a request still in flight cannot be answered any more:
    its write commits (it already began), its response is lost. The handler still
    releases the connection and runs its disconnect hooks.
    """
    entered = asyncio.Event()
    release = asyncio.Event()
    gone: list[str] = []

    @handler.hooks.after(HookType.CREATE)
    async def hold(ctx: HookContext) -> None:
        if ctx.data and ctx.data.get("name") == "in flight":
            entered.set()
            await asyncio.wait_for(release.wait(), TIMEOUT)

    @handler.hooks.after(HookType.DISCONNECT)
    def bye(ctx: HookContext) -> None:
        gone.append(ctx.connection.id)

    async def release_once_closed(client: WSClient) -> None:
        await client.ws.wait_closed()
        release.set()

    async with serve_asgi(handler) as base:
        client = await WSClient.connect(f"{base}/ws")
        await client.ok("create", "users", data={"name": "before"})
        msg_id, frame = held_create(client, "in flight")
        answer = client.expect(msg_id)
        await client.send_raw(frame)
        await asyncio.wait_for(entered.wait(), TIMEOUT)
        # uvicorn waits for the application while stopping; the hook lets the
        # request go once the client has seen its close.
        releaser = asyncio.create_task(release_once_closed(client))
    # Leaving the block stopped uvicorn.
    try:
        assert await closed_code(client) == 1012
        await asyncio.wait_for(releaser, TIMEOUT)
        assert not answer.done()
        assert len(gone) == 1
        assert await count_named(engine, "in flight") == 1
    finally:
        answer.cancel()
        await client.close()
        await handler.stop()
