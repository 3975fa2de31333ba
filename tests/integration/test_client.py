"""The Python client against real servers over real sockets.

Most tests serve the test models in-process on the direct ``websockets`` shell over a
SQLite file (hooks make errors and delays happen on demand). The restart tests run
``examples/quickstart.py`` as a real subprocess on a fixed port, stop it (SIGTERM, or
SIGKILL) in the middle of a subscription and start it again on the same port: the
client must reconnect and re-subscribe by itself, keep the caller's handle, tell the
caller about the outage, and deliver every change made after it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import serve
from websocketspec import (
    Config,
    Handler,
    HookContext,
    HookType,
    UnauthorizedError,
    ValidationError,
)
from websocketspec.auth import BearerAuth
from websocketspec.client import (
    AsyncClient,
    ConnectionClosedError,
    ConnectionState,
    Notification,
    RequestTimeoutError,
    ServerError,
    Subscription,
    connect,
)
from websocketspec.client import sync as sync_client

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.py"
EXAMPLE = ROOT / "examples" / "client_python.py"
TIMEOUT = 10.0
STARTUP_TIMEOUT = 30.0
FAST: dict[str, Any] = {"reconnect_interval": 0.05, "max_reconnect_interval": 0.3}
"""Reconnect quickly in tests."""


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture
def backend() -> str:
    """The client is database-agnostic: SQLite keeps these tests fast."""
    return "sqlite"


@pytest.fixture
def config() -> Config:
    return Config(max_subscriptions=5)


@pytest.fixture
async def url(handler: Handler) -> AsyncIterator[str]:
    async with serve("direct", handler) as base:
        yield f"{base}/ws"
    await handler.stop()


@pytest.fixture
async def client(url: str) -> AsyncIterator[AsyncClient]:
    async with connect(url, request_timeout=TIMEOUT, **FAST) as client:
        yield client


async def next_change(sub: Subscription) -> Notification:
    return await asyncio.wait_for(anext(sub), TIMEOUT)


async def changes_until(
    sub: Subscription, predicate: Any, limit: int = 50
) -> list[Notification]:
    """Notifications up to and including the first that satisfies ``predicate``."""
    seen: list[Notification] = []
    while len(seen) < limit:
        change = await next_change(sub)
        seen.append(change)
        if predicate(change):
            return seen
    raise AssertionError(f"no matching notification among {seen}")


# -- every operation ------------------------------------------------------------------


async def test_every_operation(client: AsyncClient) -> None:
    ann = await client.create(
        "users", {"name": "Ann", "email": "ann@example.com", "age": 30}
    )
    assert ann["name"] == "Ann"
    assert ann["status"] == "active"  # a database default shows
    bob = await client.create(
        "public.users", {"name": "Bob", "email": None, "age": 20, "status": "away"}
    )

    assert await client.read("users", ann["id"]) == ann
    assert await client.read("users", str(bob["id"]), columns=["id", "name"]) == {
        "id": bob["id"],
        "name": "Bob",
    }
    rows = await client.read(
        "users", filters=[("age", "gte", 20)], sort="-age", columns=["id", "age"]
    )
    assert rows == [{"id": ann["id"], "age": 30}, {"id": bob["id"], "age": 20}]
    either = await client.read(
        "users",
        filters=[
            {"column": "name", "operator": "eq", "value": "Bob"},
            {"column": "email", "operator": "is_null", "logic_operator": "OR"},
        ],
    )
    assert [row["id"] for row in either] == [bob["id"]]

    page = await client.read_page("users", sort=["name"], limit=1, offset=1)
    assert [row["name"] for row in page.rows] == ["Bob"]
    assert (page.total, page.count, page.limit, page.offset) == (2, 1, 1, 1)

    post = await client.create(
        "posts", {"title": "Hello", "content": "…", "user_id": ann["id"]}
    )
    [with_user] = await client.read(
        "posts", preload=[{"relation": "user", "columns": ["id", "name"]}]
    )
    assert with_user["user"] == {"id": ann["id"], "name": "Ann"}

    updated = await client.update("users", ann["id"], {"email": None, "age": 0})
    assert (updated["email"], updated["age"], updated["name"]) == (None, 0, "Ann")
    with pytest.raises(ServerError) as refused:
        await client.update(
            "users", ann["id"], {"age": 1}, filters=[("status", "eq", "away")]
        )
    assert refused.value.code == "not_found"

    meta = await client.meta("users")
    assert meta["primary_key"] == ["id"]
    assert {c["name"]: c["type"] for c in meta["columns"]}["age"] == "integer"
    assert (await client.meta("posts"))["relations"][0]["name"] == "user"

    assert await client.delete("posts", post["id"]) == post
    assert (await client.delete("users", bob["id"]))["name"] == "Bob"
    assert [row["id"] for row in await client.read("users")] == [ann["id"]]

    await client.ping()
    raw = await client.request("read", "users", record_id=ann["id"])
    assert raw.data["id"] == ann["id"]
    assert raw.message["type"] == "response" and raw.message["success"] is True


async def test_the_client_speaks_over_the_asgi_shell_too(handler: Handler) -> None:
    async with (
        serve("asgi", handler) as base,
        connect(f"{base}/ws", request_timeout=TIMEOUT) as client,
        client.subscribe("users") as sub,
    ):
        ann = await client.create("users", {"name": "Ann"})
        change = await next_change(sub)
        assert (change.operation, change.data) == ("create", ann)
    await handler.stop()


# -- errors ---------------------------------------------------------------------------


async def test_every_refusal_is_a_server_error_with_its_code(
    handler: Handler, url: str
) -> None:
    @handler.hooks.before(HookType.CREATE)
    def refuse(ctx: HookContext) -> None:
        name = ctx.data.get("name") if isinstance(ctx.data, dict) else None
        if name == "forbidden":
            raise UnauthorizedError("not you")
        if name == "invalid":
            raise ValidationError("Email is required", field="email")
        if name == "boom":
            raise RuntimeError("a bug in a hook")

    async with connect(url, request_timeout=TIMEOUT) as client:
        ann = await client.create("users", {"name": "Ann"})
        cases: list[tuple[str, Any]] = [
            ("not_found", client.read("users", 999_999)),
            ("not_found", client.update("users", 999_999, {"name": "x"})),
            ("not_found", client.delete("users", 999_999)),
            ("model_not_found", client.read("nobody")),
            ("model_not_found", client.meta("users", schema="elsewhere")),
            ("validation_error", client.create("users", {"name": "x", "shoe": 1})),
            ("validation_error", client.update("users", ann["id"], {"age": "old"})),
            ("invalid_filter", client.read("users", filters=[("age", "eq", "x")])),
            ("invalid_filter", client.read("users", filters=[("age", "near", 1)])),
            ("invalid_column", client.read("users", filters=[("shoe", "eq", 1)])),
            ("invalid_column", client.read("users", sort="-shoe")),
            ("invalid_column", client.read("posts", preload=[{"relation": "x"}])),
            ("invalid_model", client.request("create", "users", data="x")),
            ("invalid_model", client.request("update", "users", record_id=1, data=[1])),
            ("invalid_operation", client.request("subscribe", "users")),
            ("invalid_operation", client.request("auth", data={"token": "x"})),
            ("invalid_message", client.request("read")),
            ("unauthorized", client.create("users", {"name": "forbidden"})),
            ("validation_error", client.create("users", {"name": "invalid"})),
            ("hook_error", client.create("users", {"name": "boom"})),
        ]
        for code, call in cases:
            with pytest.raises(ServerError) as caught:
                await call
            assert caught.value.code == code, (code, caught.value)
            assert caught.value.message
        with pytest.raises(ServerError) as invalid:
            await client.create("users", {"name": "invalid"})
        assert invalid.value.details == {"field": "email"}
        assert str(invalid.value) == "validation_error: Email is required"

        with pytest.raises(ServerError) as bad_sub:
            await client.subscribe("users", filters=[("shoe", "eq", 1)])
        assert bad_sub.value.code == "invalid_column"
        subs = [await client.subscribe("users") for _ in range(5)]
        with pytest.raises(ServerError) as too_many:
            await client.subscribe("posts")
        assert too_many.value.code == "too_many_subscriptions"
        for sub in subs:
            await sub.unsubscribe()
        assert client.subscriptions == []
        assert sum(handler.stats()["subscriptions"].values()) == 0
        # The connection survived every refusal.
        assert await client.read("users", ann["id"]) == ann
        assert client.reconnects == 0


async def test_a_refused_handshake_raises_at_once(handler: Handler, url: str) -> None:
    BearerAuth(lambda token: {"user": 1} if token == "good" else None).install(handler)
    with pytest.raises(ServerError) as refused:
        await connect(url, token="bad")
    assert refused.value.code == "unauthorized"
    assert refused.value.details == {"status": 401}
    async with connect(url, token="good") as client:
        assert await client.read("users") == []


async def test_an_unreachable_server_raises_at_once() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectionClosedError, match="could not connect"):
        await connect(f"ws://127.0.0.1:{port}/ws", connect_timeout=TIMEOUT)
    with pytest.raises(ValueError, match="not a WebSocket URL"):
        await connect("http://127.0.0.1/ws")


async def test_a_closed_client_refuses_requests(url: str) -> None:
    client = AsyncClient(url)
    with pytest.raises(ConnectionClosedError, match="connect"):
        await client.read("users")
    await client.connect()
    sub = await client.subscribe("users")
    await client.close()
    await client.close()  # idempotent
    assert client.state is ConnectionState.CLOSED
    assert sub.closed
    with pytest.raises(ConnectionClosedError):
        await client.read("users")
    with pytest.raises(StopAsyncIteration):
        await next_change(sub)


# -- timeouts -------------------------------------------------------------------------


async def test_a_slow_answer_times_out_and_the_connection_goes_on(
    handler: Handler, client: AsyncClient
) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    @handler.hooks.before(HookType.READ)
    async def stall(ctx: HookContext) -> None:
        if ctx.entity == "posts":
            entered.set()
            await release.wait()

    try:
        with pytest.raises(RequestTimeoutError, match=r"no answer within 0\.2 s"):
            await client.read("posts", timeout=0.2)
        assert entered.is_set()
        # The late answer is dropped; other requests are unaffected meanwhile.
        assert await client.read("users") == []
        release.set()
        assert await client.read("posts") == []
        with pytest.raises(RequestTimeoutError):
            await client.subscribe("posts", timeout=0.0)
    finally:
        release.set()
    assert client.is_connected
    assert client.reconnects == 0


async def test_a_request_in_flight_when_the_connection_drops(
    handler: Handler, url: str
) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    @handler.hooks.before(HookType.READ)
    async def stall(ctx: HookContext) -> None:
        if ctx.entity == "posts":
            entered.set()
            await release.wait()

    try:
        async with connect(url, request_timeout=TIMEOUT, **FAST) as client:
            sub = await client.subscribe("users")
            old_server_id = sub.server_id
            in_flight = asyncio.create_task(client.read("posts"))
            await asyncio.wait_for(entered.wait(), TIMEOUT)
            [conn] = handler.connections.values()
            conn.close(1011, "dropped by the test")
            # Its outcome is unknown: the caller is told, not left waiting.
            with pytest.raises(ConnectionClosedError, match="may or may not"):
                await asyncio.wait_for(in_flight, TIMEOUT)
            # The client comes back by itself, with the same subscription handle.
            ann = await client.create("users", {"name": "Ann"})
            seen = await changes_until(
                sub, lambda c: c.data and c.data.get("id") == ann["id"]
            )
            assert client.reconnects == 1
            assert sub.server_id not in (None, old_server_id)
            assert all(c.subscription is sub for c in seen)
    finally:
        release.set()


async def test_a_subscribe_that_times_out_leaves_nothing_behind(
    handler: Handler, client: AsyncClient
) -> None:
    release = asyncio.Event()
    done = asyncio.Event()

    @handler.hooks.before(HookType.SUBSCRIBE)
    async def stall(ctx: HookContext) -> None:
        await release.wait()

    @handler.hooks.after(HookType.UNSUBSCRIBE)
    def unsubscribed(ctx: HookContext) -> None:
        done.set()

    try:
        with pytest.raises(RequestTimeoutError, match="subscribe users"):
            await client.subscribe("users", timeout=0.2)
    finally:
        release.set()
    # The server's late success creates a subscription nobody wants: the client
    # unsubscribes it by itself.
    await asyncio.wait_for(done.wait(), TIMEOUT)
    assert sum(handler.stats()["subscriptions"].values()) == 0
    assert client.subscriptions == []


# -- subscriptions --------------------------------------------------------------------


async def test_iterator_form_follows_a_filter(
    handler: Handler, client: AsyncClient
) -> None:
    async with client.subscribe(
        "users", filters=[("status", "eq", "active")], columns=["name"]
    ) as sub:
        assert sub.server_id is not None and sub.id.startswith("s")
        ann = await client.create("users", {"name": "Ann"})
        await client.create("users", {"name": "Away", "status": "away"})
        await client.update("users", ann["id"], {"name": "Anna"})
        await client.update("users", ann["id"], {"status": "away"})
        await client.update("users", ann["id"], {"status": "active"})
        await client.delete("users", ann["id"])
        seen = [await next_change(sub) for _ in range(5)]
        assert [(c.operation, c.metadata.get("change")) for c in seen] == [
            ("create", None),
            ("update", "stay"),
            ("delete", "leave"),
            ("create", "enter"),
            ("delete", None),
        ]
        assert seen[0].data == {"id": ann["id"], "name": "Ann"}
        assert all(c.subscription is sub and c.entity == "users" for c in seen)
        positions = [c.position for c in seen]
        assert all(p is not None for p in positions)
        assert sub.position == positions[-1]
    assert sub.closed
    assert sum(handler.stats()["subscriptions"].values()) == 0


async def test_async_for_directly_on_subscribe(
    handler: Handler, client: AsyncClient
) -> None:
    subscribed = asyncio.Event()
    unsubscribed = asyncio.Event()
    handler.hooks.register_after(HookType.SUBSCRIBE, lambda ctx: subscribed.set())
    handler.hooks.register_after(HookType.UNSUBSCRIBE, lambda ctx: unsubscribed.set())

    async def write() -> None:
        # The after-subscribe hook runs just before the subscription joins fan-out.
        await subscribed.wait()
        ann = await client.create("users", {"name": "Ann"})
        await client.update("users", ann["id"], {"age": 3})

    writer = asyncio.create_task(write())
    seen: list[str] = []
    async with asyncio.timeout(TIMEOUT):
        async for change in client.subscribe("users"):
            seen.append(change.operation)
            if len(seen) == 2:
                break
        await writer
        # Leaving the loop closes the iterator, which unsubscribes.
        await unsubscribed.wait()
    assert seen == ["create", "update"]
    assert sum(handler.stats()["subscriptions"].values()) == 0


async def test_async_for_notices_the_first_change(client: AsyncClient) -> None:
    # The first change is made from another client as soon as the server answered.
    async with connect(client.url, request_timeout=TIMEOUT) as writer:
        sub = await client.subscribe("users")
        await writer.create("users", {"name": "Ann"})
        async with asyncio.timeout(TIMEOUT):
            async for change in sub:
                assert change.data["name"] == "Ann"
                await sub.unsubscribe()
        assert sub.closed


async def test_callback_forms(client: AsyncClient) -> None:
    plain: asyncio.Queue[Notification] = asyncio.Queue()
    awaited: asyncio.Queue[Notification] = asyncio.Queue()

    async def slow_but_ordered(change: Notification) -> None:
        await asyncio.sleep(0)  # an async callback is awaited, in order
        await awaited.put(change)

    def failing(change: Notification) -> None:
        raise RuntimeError("a bug in a callback does not stop delivery")

    one = await client.subscribe("users", on_change=plain.put_nowait)
    two = await client.subscribe("users", on_change=slow_but_ordered)
    three = await client.subscribe("users", on_change=failing)
    with pytest.raises(TypeError, match="on_change"):
        aiter(one)
    names = [f"user {i}" for i in range(5)]
    for name in names:
        await client.create("users", {"name": name})
    for queue in (plain, awaited):
        got = [await asyncio.wait_for(queue.get(), TIMEOUT) for _ in names]
        assert [c.data["name"] for c in got] == names
    for sub in (one, two, three):
        await sub.unsubscribe()
        await sub.unsubscribe()  # idempotent


async def test_snapshot_subscriptions(client: AsyncClient) -> None:
    ann = await client.create("users", {"name": "Ann"})
    async with client.subscribe("users", snapshot=True) as sub:
        # A server that does not know snapshot yet answers without rows.
        if sub.snapshot is not None:
            assert sub.snapshot == [ann]
        bob = await client.create("users", {"name": "Bob"})
        assert (await next_change(sub)).data == bob


async def test_a_slow_consumer_gets_a_reset_instead_of_a_silent_loss(
    client: AsyncClient,
) -> None:
    async with client.subscribe("users", max_queue=2) as sub:
        for i in range(3):
            await client.create("users", {"name": f"u{i}"})
        await client.ping()  # every notification has arrived
        [reset] = [await next_change(sub)]
        assert reset.is_reset
        assert reset.metadata["reason"] == "overflow"
        last = await client.create("users", {"name": "last"})
        assert (await next_change(sub)).data == last


async def test_revoked_ends_the_subscription(handler: Handler, url: str) -> None:
    BearerAuth(lambda token: {"admin": token == "admin"}).install(handler)

    @handler.hooks.before(HookType.SUBSCRIBE)
    def admins_only(ctx: HookContext) -> None:
        if not ctx.connection.metadata.get("admin"):
            raise UnauthorizedError("only admins may watch users")

    async with connect(url, token="admin", request_timeout=TIMEOUT) as client:
        sub = await client.subscribe("users")
        answer = await client.authenticate("someone")
        assert answer["authenticated"] is True
        revoked = await next_change(sub)
        assert revoked.operation == "revoked"
        assert revoked.metadata["reason"] == "unauthorized"
        with pytest.raises(StopAsyncIteration):
            await next_change(sub)
        assert sub.closed and client.subscriptions == []
        with pytest.raises(ServerError) as refused:
            await client.subscribe("users")
        assert refused.value.code == "unauthorized"


# -- tokens ---------------------------------------------------------------------------


class Tokens:
    """Issues short-lived tokens; the server verifies them."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.known: dict[str, float] = {}
        self.issued = 0

    def issue(self) -> str:
        self.issued += 1
        token = f"tok-{uuid.uuid4().hex}"
        self.known[token] = time.time() + self.ttl
        return token

    async def verify(self, token: str) -> dict[str, Any] | None:
        exp = self.known.get(token)
        return None if exp is None else {"user_id": 1, "exp": exp}


async def test_an_expiring_token_is_refreshed_in_band(
    handler: Handler, url: str
) -> None:
    tokens = Tokens(ttl=0.5)
    auth = BearerAuth(tokens.verify, grace_period=TIMEOUT).install(handler)
    refreshed: asyncio.Queue[None] = asyncio.Queue()
    authenticate = auth.authenticate

    async def observed(conn: Any, credentials: dict[str, Any]) -> dict[str, Any]:
        answer = await authenticate(conn, credentials)
        refreshed.put_nowait(None)
        return answer

    auth.authenticate = observed  # type: ignore[method-assign]

    async def fresh_token() -> str:  # an async callable works too
        return tokens.issue()

    async with connect(url, token=fresh_token, request_timeout=TIMEOUT) as client:
        assert tokens.issued == 1
        async with client.subscribe("users") as sub:
            for _ in range(2):  # the token expires, is refreshed, expires again…
                await asyncio.wait_for(refreshed.get(), TIMEOUT)
                ann = await client.create("users", {"name": "Ann"})
                assert (await next_change(sub)).data == ann
        assert tokens.issued >= 3
        assert client.token_refreshes >= 2
        assert client.reconnects == 0
        assert client.is_connected


async def test_a_static_token_that_expires_ends_the_client(
    handler: Handler, url: str
) -> None:
    tokens = Tokens(ttl=0.3)
    BearerAuth(tokens.verify, grace_period=0.1).install(handler)
    async with connect(url, token=tokens.issue(), **FAST) as client:
        sub = await client.subscribe("users")
        # Nothing can refresh a string: the server closes (4001), the reconnect is
        # refused (401), and the client gives up rather than retry forever.
        await client.wait_state(ConnectionState.CLOSED, timeout=TIMEOUT)
        with pytest.raises(ConnectionClosedError) as ended:
            await next_change(sub)
        cause = ended.value.__cause__
        assert isinstance(cause, ServerError) and cause.code == "unauthorized"
        with pytest.raises(ConnectionClosedError):
            await client.read("users")


# -- the blocking client --------------------------------------------------------------


def blocking_session(url: str) -> list[str]:
    log: list[str] = []
    with sync_client.connect(url, request_timeout=TIMEOUT) as client:
        assert client.state is ConnectionState.OPEN
        ann = client.create("users", {"name": "Ann"})
        assert client.read("users", ann["id"]) == ann
        assert client.read_page("users").total == 1
        assert client.meta("users")["entity"] == "users"
        client.ping()
        called: list[Notification] = []
        done = threading.Event()

        def on_change(change: Notification) -> None:
            called.append(change)
            done.set()

        callback = client.subscribe("users", on_change=on_change)
        with client.subscribe("users") as sub:
            client.update("users", ann["id"], {"age": 5})
            change = sub.get(timeout=TIMEOUT)
            log.append(f"{change.operation} {change.data['age']}")
            with pytest.raises(TimeoutError):
                sub.get(timeout=0.05)
            with pytest.raises(TypeError):
                next(iter(callback))
        assert done.wait(TIMEOUT)
        log.append(f"callback {called[0].operation}")
        callback.unsubscribe()
        with pytest.raises(ServerError) as missing:
            client.delete("users", 12345)
        log.append(missing.value.code)
        assert client.delete("users", ann["id"]) == {**ann, "age": 5}
        # The subscription ended: iteration stops.
        assert list(sub) == []
    return log


async def test_the_blocking_client(url: str) -> None:
    log = await asyncio.wait_for(asyncio.to_thread(blocking_session, url), 30)
    assert log == ["update 5", "callback update", "not_found"]


# -- a real server process, restarted ------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Quickstart:
    """``examples/quickstart.py`` as a subprocess on a fixed port and SQLite file."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.db = tmp_path / "app.db"
        self.log = tmp_path / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> None:
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    str(QUICKSTART),
                    "--port",
                    str(self.port),
                    "--database",
                    f"sqlite:///{self.db}",
                ],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:  # bounded polling for the port, as the brief allows
            if self.process.poll() is not None:
                raise AssertionError(f"the quickstart exited:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"the quickstart did not listen:\n{self.output()}"
                    ) from None
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        process = self.process
        if process is None:
            return
        self.process = None
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=TIMEOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def quickstart(tmp_path: Path) -> Iterator[Quickstart]:
    server = Quickstart(tmp_path)
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)
    assert "Traceback" not in server.output(), server.output()


def write_behind_the_servers_back(db: Path, name: str) -> int:
    """A change made while the server is down: no server can ever announce it."""
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        cursor = conn.execute(
            "INSERT INTO users (name, email, status) VALUES (?, ?, 'active')",
            (name, f"{name}@example.com"),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
async def test_a_server_restart_in_the_middle_of_a_subscription(
    quickstart: Quickstart, sig: int
) -> None:
    await asyncio.to_thread(quickstart.start)
    callback_seen: asyncio.Queue[Notification] = asyncio.Queue()
    async with (
        connect(
            quickstart.url, request_timeout=TIMEOUT, max_queued=2, **FAST
        ) as client,
        connect(quickstart.url, when_disconnected="fail", **FAST) as failing,
    ):
        watcher = await client.subscribe("users", on_change=callback_seen.put_nowait)
        sub = await client.subscribe("users", filters=[("status", "eq", "active")])
        handle, old_server_id = sub.id, sub.server_id
        before = await client.create(
            "users", {"name": "before", "email": "b@example.com"}
        )
        assert (await next_change(sub)).data == before
        assert (await asyncio.wait_for(callback_seen.get(), TIMEOUT)).data == before

        await asyncio.to_thread(quickstart.stop, sig)
        await client.wait_state(ConnectionState.RECONNECTING, timeout=TIMEOUT)
        await failing.wait_state(ConnectionState.RECONNECTING, timeout=TIMEOUT)

        # Fail-fast mode refuses at once; queue mode holds a bounded number.
        with pytest.raises(ConnectionClosedError, match="not connected"):
            await failing.read("users")
        queued = [
            asyncio.create_task(
                client.create("users", {"name": f"queued {i}", "email": "q@x"})
            )
            for i in range(2)
        ]
        await asyncio.sleep(0)  # one step: each task runs up to the queue's wait
        assert client.queued == 2
        with pytest.raises(ConnectionClosedError, match="already wait"):
            await client.read("users")

        outage = write_behind_the_servers_back(quickstart.db, "outage")
        await asyncio.to_thread(quickstart.start)

        # No action by the caller: the queued writes go out once the client has
        # reconnected and re-subscribed, and their changes reach the subscription.
        created = await asyncio.wait_for(asyncio.gather(*queued), TIMEOUT)
        assert client.state is ConnectionState.OPEN
        assert client.reconnects == 1
        async with connect(quickstart.url, request_timeout=TIMEOUT) as writer:
            after = await writer.create(
                "users", {"name": "after", "email": "a@example.com"}
            )
        seen = await changes_until(
            sub, lambda c: c.data and c.data["id"] == after["id"]
        )

        assert sub.id == handle and sub.server_id not in (None, old_server_id)
        assert all(c.subscription is sub for c in seen)
        created_ids = {c.data["id"] for c in seen if c.operation == "create"}
        assert {row["id"] for row in created} | {after["id"]} <= created_ids
        # No silent gap: the change made during the outage either came (a replay)
        # or the caller was told that changes may have been missed.
        resets = [c for c in seen if c.is_reset]
        assert outage in created_ids or resets, seen
        if resets:
            assert seen[0].is_reset  # told before anything newer arrives
        assert await client.read("users", outage)  # reading again finds it

        # The callback subscription was re-established as well.
        got = [await asyncio.wait_for(callback_seen.get(), TIMEOUT)]
        while not (got[-1].data and got[-1].data["id"] == after["id"]):
            got.append(await asyncio.wait_for(callback_seen.get(), TIMEOUT))
        assert any(c.is_reset for c in got) or outage in {
            c.data["id"] for c in got if c.data
        }
        await watcher.unsubscribe()
        await sub.unsubscribe()
        assert failing.is_connected or await failing.wait_state(
            ConnectionState.OPEN, timeout=TIMEOUT
        )
        assert await failing.read("users", after["id"]) == after


async def test_giving_up_after_a_number_of_attempts(quickstart: Quickstart) -> None:
    await asyncio.to_thread(quickstart.start)
    client = await connect(
        quickstart.url, max_reconnect_attempts=2, request_timeout=TIMEOUT, **FAST
    )
    try:
        sub = await client.subscribe("users")
        await asyncio.to_thread(quickstart.stop, signal.SIGKILL)
        await client.wait_state(ConnectionState.CLOSED, timeout=TIMEOUT)
        with pytest.raises(ConnectionClosedError):
            await next_change(sub)
        with pytest.raises(ConnectionClosedError):
            await client.read("users")
    finally:
        await client.close()


async def test_the_example_runs_against_the_quickstart(
    quickstart: Quickstart,
) -> None:
    await asyncio.to_thread(quickstart.start)
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(EXAMPLE), "--url", quickstart.url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pushed: create" in result.stdout
    assert "not_found" in result.stdout
