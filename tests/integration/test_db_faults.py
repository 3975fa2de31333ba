"""Database faults: the server answers fast with a neutral error, stays up, and recovers.

PostgreSQL is reached through a TCP proxy of the test's own (tests/support/proxy.py):
the engine's URL names the proxy's port, never the shared server's, so a fault is the
proxy severing or holding connections, and the database server itself is untouched.
SQLite faults come from a second connection holding an exclusive lock on the test's own
database file.

How soon a timed-out request is answered: ``Config.request_timeout`` cancels the
database work, and the answer leaves once the driver has cleaned up after the
cancellation. On PostgreSQL, SQLAlchemy closes a cancelled asyncpg connection
gracefully with a 2 s timeout (``_terminate_graceful_close``), which a hung server runs
out; on SQLite, the cancelled call's thread stays blocked until SQLite's busy timeout
(5 s by default) gives up on the lock, and the cleanup queues behind it. The bounds
below allow for that.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.databases import admin_url
from tests.support.models import User
from tests.support.proxy import TCPProxy, running_proxy
from tests.support.wsclient import WSClient
from websocketspec import Config, Handler, HookContext, HookType

Connect = Callable[..., Any]

REQUEST_TIMEOUT = 0.3
"""The request timeout of the slow-database test."""
DEFAULT_TIMEOUT = 3.0
"""The request timeout of the other tests: generous, as the machine may be loaded."""
RECOVERY_ATTEMPTS = 20
"""Failures tolerated after a fault ends, while the pool replaces dead connections."""
SQLITE_BUSY_TIMEOUT = 5.0
"""How long the SQLite driver waits for a lock (sqlite3's default)."""
DRIVER_WORDS = ("asyncpg", "sqlalchemy", "sqlite", "connection", "select", "insert")


@pytest.fixture
def config() -> Config:
    return Config(request_timeout=DEFAULT_TIMEOUT, close_timeout=2.0)


@pytest.fixture
async def proxy() -> AsyncIterator[TCPProxy]:
    """A proxy in front of the shared PostgreSQL server."""
    target = urlsplit(admin_url())
    async with running_proxy(target.hostname or "127.0.0.1", target.port or 5432) as p:
        yield p


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The test database; on PostgreSQL its URL names the proxy's port."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    url = urlsplit(str(request.getfixturevalue("postgres_url")))
    proxy: TCPProxy = request.getfixturevalue("proxy")
    netloc = url.netloc.rpartition("@")
    user = f"{netloc[0]}@" if netloc[1] else ""
    return urlunsplit(url._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))


def assert_neutral(answer: dict[str, Any], operation: str) -> None:
    """A database failure answers ``<operation>_error`` without the driver's words."""
    assert answer["success"] is False, answer
    error = answer["error"]
    assert error["code"] == f"{operation}_error", answer
    assert error["message"] in (
        f"the {operation} failed",
        f"the {operation} timed out",
    ), answer
    text = str(error).lower()
    assert not any(word in text for word in DRIVER_WORDS), answer


async def timed(client: WSClient, operation: str, **fields: Any) -> tuple[Any, float]:
    started = time.monotonic()
    answer = await client.request(operation, **fields)
    return answer, time.monotonic() - started


async def recovers(client: WSClient, operation: str, **fields: Any) -> Any:
    """Repeat a request until it succeeds (bounded); returns its data."""
    for _ in range(RECOVERY_ATTEMPTS):
        answer = await client.request(operation, **fields)
        if answer["success"]:
            return answer["data"]
        assert_neutral(answer, operation)
    raise AssertionError(f"{operation} still failing after {RECOVERY_ATTEMPTS} tries")


async def assert_server_up(connect: Connect, client: WSClient) -> None:
    """Pings are answered and new clients are served (meta needs no database)."""
    await client.barrier()
    other: WSClient = await connect()
    meta = await other.ok("meta", "users")
    assert meta["entity"] == "users"
    await other.close()


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_database_going_away_under_load_fails_fast_and_recovers(
    proxy: TCPProxy, handler: Handler, connect: Connect
) -> None:
    loaded = asyncio.Event()
    entered = 0

    @handler.hooks.before(HookType.HANDLE)
    def count(ctx: HookContext) -> None:
        nonlocal entered
        entered += 1
        if entered >= 20:
            loaded.set()

    client: WSClient = await connect()
    watcher: WSClient = await connect()
    sub = await watcher.subscribe("users")
    acknowledged = [
        (await client.ok("create", "users", data={"name": f"before-{i}"}))["id"]
        for i in range(5)
    ]
    assert proxy.live > 0

    # Load: reads and writes in flight while the database goes away.
    async def one(i: int) -> dict[str, Any]:
        if i % 2:
            return await client.request("read", "users")
        return await client.request("create", "users", data={"name": f"load-{i}"})

    entered = 0
    load = [asyncio.create_task(one(i)) for i in range(40)]
    # Sever once the server is busy with them (it handles them concurrently).
    await asyncio.wait_for(loaded.wait(), 10)
    proxy.sever()
    answers = await asyncio.wait_for(asyncio.gather(*load), 10)
    failed = 0
    for i, answer in enumerate(answers):
        if not answer["success"]:
            failed += 1
            assert_neutral(answer, "read" if i % 2 else "create")
        elif i % 2 == 0:
            acknowledged.append(answer["data"]["id"])
    assert failed > 0
    assert proxy.live == 0

    # While it is gone: every request fails fast and neutrally; the server stays up.
    for operation, fields in (
        ("read", {"entity": "users"}),
        ("read", {"entity": "users", "record_id": "1"}),
        ("create", {"entity": "users", "data": {"name": "lost"}}),
        ("update", {"entity": "users", "record_id": "1", "data": {"name": "x"}}),
        ("delete", {"entity": "users", "record_id": "2"}),
    ):
        answer, elapsed = await timed(client, operation, **fields)
        assert_neutral(answer, operation)
        assert answer["error"]["message"] == f"the {operation} failed", answer
        assert elapsed < 2.0, (operation, elapsed)
    await assert_server_up(connect, client)
    assert proxy.refused > 0

    # Back again: requests succeed by themselves once dead connections are replaced.
    proxy.restore()
    await recovers(client, "read", entity="users")
    for _ in range(5):
        await client.ok("read", "users")
    created = await client.ok("create", "users", data={"name": "after"})
    acknowledged.append(created["id"])

    # Every acknowledged write was notified, in commit order, and nothing that is
    # not in the database was. (A write cut off during its commit may be in the
    # database with an error answer and no notification: its outcome is unknown to
    # this process, so it is not required either way.)
    rows = await client.ok("read", "users", options={"limit": 1000})
    notes = await watcher.drain()
    assert {n["subscription_id"] for n in notes} == {sub}
    notified = [n["data"]["id"] for n in notes]
    assert notified == sorted(notified)
    assert set(acknowledged) <= set(notified) <= {r["id"] for r in rows}
    assert notes[-1]["data"] == created


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize(
    "config",
    [Config(request_timeout=REQUEST_TIMEOUT, close_timeout=2.0)],
    ids=["request_timeout"],
)
async def test_slow_database_times_out_and_recovers(
    proxy: TCPProxy, engine: AsyncEngine, connect: Connect
) -> None:
    client: WSClient = await connect()
    # The row is written directly: on a loaded machine, a request may take longer
    # than this test's short timeout even when nothing is held.
    async with engine.begin() as conn:
        ann = (
            await conn.execute(sa.insert(User).values(name="Ann").returning(User.id))
        ).scalar_one()

    proxy.hold()
    for operation, fields in (
        ("read", {"entity": "users"}),
        ("create", {"entity": "users", "data": {"name": "held"}}),
        ("update", {"entity": "users", "record_id": ann, "data": {"age": 3}}),
    ):
        answer, elapsed = await timed(client, operation, **fields)
        assert_neutral(answer, operation)
        assert answer["error"]["message"] == f"the {operation} timed out", answer
        # Up to SQLAlchemy's 2 s graceful close of the cancelled connection (above).
        assert REQUEST_TIMEOUT <= elapsed < REQUEST_TIMEOUT + 3.0, (operation, elapsed)
    await assert_server_up(connect, client)

    proxy.restore()
    rows = await recovers(client, "read", entity="users")
    # The held create never answered success, and a timed-out write is not kept
    # half-done: each row is there entirely or not at all.
    assert [r["name"] for r in rows if r["name"] != "held"] == ["Ann"]
    assert all(r["age"] in (None, 3) for r in rows)
    await recovers(client, "create", entity="users", data={"name": "after"})


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_sqlite_locked_by_another_connection(
    database_url: str, connect: Connect
) -> None:
    client: WSClient = await connect()
    watcher: WSClient = await connect()
    await watcher.subscribe("users")
    ann = await client.ok("create", "users", data={"name": "Ann"})
    post = await client.ok("create", "posts", data={"title": "t", "user_id": ann["id"]})
    thing = await client.ok("create", "things", data={"count": 1})

    path = database_url.removeprefix("sqlite:///")
    locker = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        # Writes to three entities at once (one entity's writes queue behind each
        # other): each waits for the lock and fails. The answer comes once SQLite's
        # busy timeout (5 s, the driver's default) lets go of the connection's
        # thread, even though the request timeout fired long before: see the module
        # docstring.
        started = time.monotonic()
        answers = await asyncio.gather(
            client.request("create", "users", data={"name": "blocked"}),
            client.request(
                "update", "posts", record_id=post["id"], data={"title": "x"}
            ),
            client.request("delete", "things", record_id=thing["id"]),
        )
        elapsed = time.monotonic() - started
        for answer, operation in zip(
            answers, ("create", "update", "delete"), strict=True
        ):
            assert_neutral(answer, operation)
        assert elapsed < SQLITE_BUSY_TIMEOUT + 2.0, elapsed
        # Reads still work (WAL: readers never wait for the writer), and so does
        # everything else.
        assert [r["name"] for r in await client.ok("read", "users")] == ["Ann"]
        await assert_server_up(connect, client)
    finally:
        locker.rollback()
        locker.close()

    # The lock is gone: writes succeed again, and nothing blocked was applied.
    await recovers(client, "create", entity="users", data={"name": "free"})
    rows = await client.ok("read", "users")
    assert [r["name"] for r in rows] == ["Ann", "free"]
    assert (await client.ok("read", "posts", record_id=post["id"]))["title"] == "t"
    assert (await client.ok("read", "things", record_id=thing["id"]))["count"] == 1
    notes = await watcher.drain()
    assert [n["data"]["name"] for n in notes] == ["Ann", "free"]
