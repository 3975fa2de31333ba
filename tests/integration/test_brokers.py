"""One behavioural suite for every broker: memory, Redis and PostgreSQL ``LISTEN/NOTIFY``.

Two handlers in this test process stand for two server processes: each has its own
engine, its own broker connection and its own direct server on a free loopback port,
and both share one fresh PostgreSQL database. A subscriber on one server must receive
the writes made through the other, in commit order, exactly once, filtered, with
``metadata.seq`` consecutive per entity; a write rolled back by a hook is never
notified. The in-memory broker shares nothing between handlers (which is why
``--workers`` refuses it): it is held to the same rules within one server.

Broker faults use services of the test's own, never the shared ones: a private
``redis-server`` on a free port that the test kills and restarts, and a TCP proxy in
front of PostgreSQL that severs only the listener's connection (the adapters write
directly). During an outage requests keep succeeding; afterwards the broker has
reconnected and the other server's subscribers have every change, caught up from the
change log; when the log was pruned meanwhile they are told ``reset`` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import sqlalchemy as sa

from tests.support.databases import (
    admin_url,
    create_database,
    drop_database,
    models_database,
)
from tests.support.models import MODELS, Base, User
from tests.support.proxy import TCPProxy, running_proxy
from tests.support.wsclient import WSClient
from websocketspec import Handler, HookContext, HookType
from websocketspec.adapters.base import Change
from websocketspec.adapters.sqlalchemy import SQLAlchemyAdapter, create_engine
from websocketspec.adapters.sqlalchemy_log import SQLAlchemyChangeLog
from websocketspec.broker.base import Broker
from websocketspec.broker.memory import MemoryBroker
from websocketspec.broker.postgres import PostgresBroker
from websocketspec.broker.redis import RedisBroker
from websocketspec.exceptions import ValidationError
from websocketspec.server.direct import DirectServer

TIMEOUT = 20.0
"""The longest any single wait in this module may take."""
SWEEP = 0.2
"""Brokers sweep the change log this often here (1 s by default)."""
BACKOFF = 0.4
"""The longest wait between reconnection attempts here."""

Row = dict[str, Any]


# -- a Redis server of the test's own ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A ``redis-server`` that the test starts, kills and restarts on one free port.

    Nothing is persisted (``--save "" --appendonly no``): a restart starts empty, as
    Redis pub/sub is anyway. Never the shared Redis of the machine.
    """

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(
                "redis-server is not installed; these tests start a private one. "
                "Install it (apt-get install redis-server) and run again."
            )
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        if self.process is not None:
            raise RuntimeError("the private redis-server is already running")
        log = (self.directory / f"redis-{self.port}-{self.starts}.log").open("wb")
        with log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.directory),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        deadline = time.monotonic() + 10
        while not self._answers():  # a bounded poll for the port: the server boots
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"redis-server did not start on port {self.port}; see {log.name}"
                )
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """Die at once (SIGKILL), as a crashed server does."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait(timeout=10)

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """One private Redis for the module's fault-free tests (each uses its own channel)."""
    with PrivateRedis(tmp_path_factory.mktemp("redis")) as redis:
        yield redis


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database with the test models' empty tables."""
    async with models_database() as url:
        yield url


def via_proxy(url: str, proxy: TCPProxy) -> str:
    """The same database, reached through ``proxy``."""
    parts = urlsplit(url)
    user, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user}{at}127.0.0.1:{proxy.port}"))


# -- servers ------------------------------------------------------------------------


@dataclass
class Node:
    """One server: a handler with its own engine and broker, on its own port."""

    handler: Handler
    server: DirectServer
    url: str
    clients: list[WSClient] = field(default_factory=list)

    @property
    def broker(self) -> Broker:
        return self.handler.broker

    async def client(self) -> WSClient:
        client = await WSClient.connect(self.url)
        self.clients.append(client)
        return client


@contextlib.asynccontextmanager
async def running_node(
    database: str, broker: Broker, setup: Callable[[Handler], None] | None = None
) -> AsyncIterator[Node]:
    engine = create_engine(database)
    handler = Handler(SQLAlchemyAdapter(engine), broker=broker)
    for name, model in MODELS.items():
        handler.registry.register_model(name, model)
    if setup is not None:
        setup(handler)
    server = DirectServer(handler, "127.0.0.1", 0, path="/ws")
    node = Node(handler, server, "")
    try:
        async with asyncio.timeout(TIMEOUT):
            await server.start()
        node.url = f"ws://127.0.0.1:{server.port}/ws"
        yield node
    finally:
        for client in node.clients:
            await client.close()
        async with asyncio.timeout(TIMEOUT):
            await server.stop(timeout=5)
            await engine.dispose()


def make_broker(kind: str, database: str, redis: PrivateRedis | None) -> Broker:
    """A fresh broker of ``kind``; shared ones sweep and reconnect quickly here."""
    if kind == "memory":
        return MemoryBroker()
    if kind == "redis":
        assert redis is not None
        channel = f"wsspec-test-{uuid.uuid4().hex}"
        return RedisBroker(
            redis.url, channel=channel, sweep_interval=SWEEP, max_backoff=BACKOFF
        )
    return PostgresBroker(database, sweep_interval=SWEEP, max_backoff=BACKOFF)


@contextlib.asynccontextmanager
async def two_nodes(
    kind: str,
    database: str,
    redis: PrivateRedis | None,
    setup: Callable[[Handler], None] | None = None,
) -> AsyncIterator[tuple[Node, Node]]:
    """Two servers sharing ``database``; with a shared broker, sharing one channel."""
    first = make_broker(kind, database, redis)
    second = make_broker(kind, database, redis)
    if isinstance(first, RedisBroker) and isinstance(second, RedisBroker):
        second.channel = first.channel
    async with (
        running_node(database, first, setup) as a,
        running_node(database, second, setup) as b,
    ):
        yield a, b


@pytest.fixture(params=["memory", "redis", "postgresql"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def redis_for(broker_kind: str, request: pytest.FixtureRequest) -> PrivateRedis | None:
    if broker_kind != "redis":
        return None
    redis: PrivateRedis = request.getfixturevalue("module_redis")
    return redis


# -- what subscribers must see --------------------------------------------------------


@dataclass(frozen=True)
class Watch:
    """A subscription's options and the same filter as a Python predicate."""

    entity: str
    filters: list[dict[str, Any]]
    predicate: Callable[[Row], bool]
    columns: list[str] | None = None

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"filters": self.filters}
        if self.columns is not None:
            options["columns"] = self.columns
        return options


ALL_USERS = Watch("users", [], lambda row: True)
GOLD_USERS = Watch(
    "users",
    [{"column": "status", "operator": "eq", "value": "gold"}],
    lambda row: row["status"] == "gold",
)
NAMED_B = Watch(
    "users",
    [{"column": "name", "operator": "startswith", "value": "b-"}],
    lambda row: str(row["name"]).startswith("b-"),
    columns=["name"],
)
ALL_POSTS = Watch("posts", [], lambda row: True)


@dataclass(frozen=True)
class Committed:
    entity: str
    operation: str
    old: Row | None
    new: Row | None


def expected(watch: Watch, changes: list[Committed]) -> list[tuple[str, Row]]:
    """What ``watch`` must be told of ``changes``: DESIGN.md's enter/stay/leave rules."""
    out: list[tuple[str, Row]] = []
    for c in changes:
        if c.entity != watch.entity:
            continue
        before = c.old is not None and watch.predicate(c.old)
        after = c.new is not None and watch.predicate(c.new)
        told: tuple[str, Row | None] | None = None
        if c.operation == "create":
            told = ("create", c.new) if after else None
        elif c.operation == "delete":
            told = ("delete", c.old) if before else None
        elif before and after:
            told = ("update", c.new)
        elif after:
            told = ("create", c.new)
        elif before:
            told = ("delete", c.old)
        if told is not None and told[1] is not None:
            row = told[1]
            if watch.columns is not None:
                row = {k: row[k] for k in ["id", *watch.columns]}
            out.append((told[0], row))
    return out


class Writer:
    """Writes through one client and records each committed change, in order."""

    def __init__(self, log: list[Committed]) -> None:
        self.log = log
        self.rows: dict[tuple[str, int], Row] = {}

    async def create(self, client: WSClient, entity: str, data: Row) -> Row:
        row: Row = await client.ok("create", entity, data=data)
        self.rows[entity, row["id"]] = row
        self.log.append(Committed(entity, "create", None, row))
        return row

    async def update(self, client: WSClient, entity: str, key: int, data: Row) -> Row:
        row: Row = await client.ok("update", entity, record_id=str(key), data=data)
        old = self.rows[entity, key]
        self.rows[entity, key] = row
        self.log.append(Committed(entity, "update", old, row))
        return row

    async def delete(self, client: WSClient, entity: str, key: int) -> Row:
        row: Row = await client.ok("delete", entity, record_id=str(key))
        del self.rows[entity, key]
        self.log.append(Committed(entity, "delete", row, None))
        return row


async def script(writer: Writer, clients: list[WSClient], rounds: int) -> None:
    """Creates, updates that move rows in and out of filters, deletes, on two
    entities; the writes take turns among ``clients``, one at a time."""
    turns = iter(range(1_000_000))

    def through() -> WSClient:
        return clients[next(turns) % len(clients)]

    for i in range(rounds):
        prefix = "b-" if i % 3 == 0 else "a-"
        status = "gold" if i % 2 == 0 else "plain"
        user = await writer.create(
            through(), "users", {"name": f"{prefix}{i}", "status": status}
        )
        post = await writer.create(
            through(), "posts", {"title": f"t{i}", "user_id": user["id"]}
        )
        flipped = "plain" if status == "gold" else "gold"
        await writer.update(through(), "users", user["id"], {"status": flipped})
        await writer.update(through(), "users", user["id"], {"email": f"{i}@x.org"})
        if i % 4 == 3:
            await writer.delete(through(), "posts", post["id"])
            await writer.delete(through(), "users", user["id"])


async def receive(client: WSClient, count: int) -> list[dict[str, Any]]:
    """Exactly ``count`` notifications, then nothing more before a barrier."""
    got = [await client.notification(TIMEOUT) for _ in range(count)]
    extra = await client.drain()
    assert extra == [], f"more notifications than expected: {extra[:3]}"
    return got


def assert_told(
    notes: list[dict[str, Any]], watch: Watch, want: list[tuple[str, Row]], sub_id: str
) -> None:
    assert [(n["operation"], n["data"]) for n in notes] == want
    for note in notes:
        assert note["type"] == "notification"
        assert note["subscription_id"] == sub_id
        assert (note["schema"], note["entity"]) == ("public", watch.entity)
    seqs = [n["metadata"]["seq"] for n in notes]
    assert seqs == sorted(set(seqs)), f"out of order or duplicated: {seqs}"


@dataclass
class Subscriber:
    """One connection with one subscription."""

    client: WSClient
    watch: Watch
    id: str

    @classmethod
    async def on(cls, node: Node, watch: Watch) -> Subscriber:
        client = await node.client()
        return cls(
            client, watch, await client.subscribe(watch.entity, options=watch.options())
        )

    async def expect(self, log: list[Committed]) -> list[dict[str, Any]]:
        want = expected(self.watch, log)
        notes = await receive(self.client, len(want))
        assert_told(notes, self.watch, want, self.id)
        return notes


# -- the behavioural suite ------------------------------------------------------------


async def test_writes_through_any_server_reach_matching_subscribers_in_order_once(
    broker_kind: str, database: str, redis_for: PrivateRedis | None
) -> None:
    """Subscribers on both servers, writes alternating between them: each subscriber
    gets exactly the changes matching its filter, in commit order, once, and
    ``metadata.seq`` counts each entity's changes 1, 2, 3… (memory: one server)."""
    async with two_nodes(broker_kind, database, redis_for) as (a, b):
        nodes = [a, b] if broker_kind != "memory" else [a]
        watches = [ALL_USERS, GOLD_USERS, NAMED_B, ALL_POSTS]
        subscribers = [await Subscriber.on(n, w) for n in nodes for w in watches]
        log: list[Committed] = []
        await script(Writer(log), [await n.client() for n in nodes], rounds=12)

        for sub in subscribers:
            notes = await sub.expect(log)
            if not sub.watch.filters:
                count = sum(1 for c in log if c.entity == sub.watch.entity)
                seqs = [n["metadata"]["seq"] for n in notes]
                assert seqs == list(range(1, count + 1))
                assert {n["metadata"]["epoch"] for n in notes} != {""}


async def test_two_in_memory_handlers_share_nothing(database: str) -> None:
    """Each in-memory broker tells only its own handler's subscribers: several
    processes need a shared broker (``--workers`` refuses memory://)."""
    async with two_nodes("memory", database, None) as (a, b):
        on_a = await Subscriber.on(a, ALL_USERS)
        on_b = await Subscriber.on(b, ALL_USERS)
        log: list[Committed] = []
        writer = Writer(log)
        await writer.create(await a.client(), "users", {"name": "through a"})
        await on_a.expect(log)
        # B's first notification is B's own write, never A's.
        mine = await writer.create(await b.client(), "users", {"name": "through b"})
        note = await on_b.client.notification(TIMEOUT)
        assert (note["operation"], note["data"]) == ("create", mine)
        assert await on_b.client.drain() == []
        assert await on_a.client.drain() == []


def refuse_bad_names(handler: Handler) -> None:
    """After-hooks run inside the write's transaction: raising rolls it back."""

    @handler.hooks.after(HookType.CREATE)
    def no_bad_creates(ctx: HookContext) -> None:
        if ctx.result is not None and str(ctx.result["name"]).startswith("bad"):
            raise ValidationError("no bad names", field="name")

    @handler.hooks.after(HookType.UPDATE)
    def no_bad_updates(ctx: HookContext) -> None:
        if ctx.result is not None and str(ctx.result["name"]).startswith("bad"):
            raise ValidationError("no bad names", field="name")


async def test_rolled_back_writes_are_never_notified(
    broker_kind: str, database: str, redis_for: PrivateRedis | None
) -> None:
    async with two_nodes(broker_kind, database, redis_for, refuse_bad_names) as (a, b):
        far = b if broker_kind != "memory" else a
        subscriber = await Subscriber.on(far, ALL_USERS)
        writer_client = await a.client()
        log: list[Committed] = []
        writer = Writer(log)
        good = await writer.create(writer_client, "users", {"name": "good 1"})
        refused = await writer_client.request("create", "users", data={"name": "bad 1"})
        assert refused["error"]["code"] == "validation_error", refused
        refused = await writer_client.request(
            "update", "users", record_id=str(good["id"]), data={"name": "bad 2"}
        )
        assert refused["error"]["code"] == "validation_error", refused
        await writer.create(writer_client, "users", {"name": "good 2"})
        notes = await subscriber.expect(log)
        # The rolled-back writes gave their numbers back: no gap, nothing to catch up.
        assert [n["metadata"]["seq"] for n in notes] == [1, 2]
        rows = await writer_client.ok("read", "users")
        assert [r["name"] for r in rows] == ["good 1", "good 2"]


# -- broker faults ------------------------------------------------------------------


@dataclass
class Outage:
    """Cuts one server (B) off its broker and restores it; A writes all the while.

    Redis: the test's own ``redis-server`` is killed (both servers lose it) and started
    again on the same port. PostgreSQL: B listens through a proxy that is severed,
    while both adapters write to the database directly.
    """

    kind: str
    redis: PrivateRedis | None = None
    proxy: TCPProxy | None = None

    def brokers(self, database: str) -> tuple[Broker, Broker]:
        if self.redis is not None:
            first = make_broker("redis", database, self.redis)
            second = make_broker("redis", database, self.redis)
            assert isinstance(first, RedisBroker) and isinstance(second, RedisBroker)
            second.channel = first.channel
            return first, second
        assert self.proxy is not None
        return (
            PostgresBroker(database, sweep_interval=SWEEP, max_backoff=BACKOFF),
            PostgresBroker(
                via_proxy(database, self.proxy),
                sweep_interval=SWEEP,
                max_backoff=BACKOFF,
            ),
        )

    def cut(self) -> None:
        if self.redis is not None:
            self.redis.kill()
        else:
            assert self.proxy is not None
            self.proxy.sever()

    def restore(self) -> None:
        if self.redis is not None:
            self.redis.start()
        else:
            assert self.proxy is not None
            self.proxy.restore()


@pytest.fixture(params=["redis", "postgresql"])
async def outage(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Outage]:
    if request.param == "redis":
        with PrivateRedis(tmp_path) as redis:
            yield Outage("redis", redis=redis)
    else:
        target = urlsplit(admin_url())
        async with running_proxy(
            target.hostname or "127.0.0.1", target.port or 5432
        ) as proxy:
            yield Outage("postgresql", proxy=proxy)


@contextlib.asynccontextmanager
async def nodes_for(outage: Outage, database: str) -> AsyncIterator[tuple[Node, Node]]:
    first, second = outage.brokers(database)
    async with (
        running_node(database, first) as a,
        running_node(database, second) as b,
    ):
        yield a, b


async def until(condition: Callable[[], bool], what: str) -> None:
    """A bounded wait for a state that no event announces (a broker's connection)."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.02)


def is_listening(broker: Broker) -> bool:
    assert isinstance(broker, RedisBroker | PostgresBroker)
    return broker.listening


def reconnects(broker: Broker) -> int:
    assert isinstance(broker, RedisBroker | PostgresBroker)
    return broker.reconnects


class Stream:
    """Writers creating users back to back through several clients, counting."""

    def __init__(self, clients: list[WSClient]) -> None:
        self.clients = clients
        self.created: list[Row] = []
        self.slowest = 0.0
        self.stop = asyncio.Event()
        self._progress = asyncio.Event()

    async def _write(self, client: WSClient, tag: str) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            started = time.monotonic()
            row = await client.ok("create", "users", data={"name": f"{tag}-{n}"})
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.created.append(row)
            self._progress.set()

    async def more(self, count: int) -> None:
        """Wait until ``count`` more writes have been answered."""
        target = len(self.created) + count
        async with asyncio.timeout(TIMEOUT):
            while len(self.created) < target:
                self._progress.clear()
                await self._progress.wait()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Stream]:
        async with asyncio.TaskGroup() as group:
            for i, client in enumerate(self.clients):
                group.create_task(self._write(client, f"w{i}"))
            try:
                yield self
            finally:
                self.stop.set()


async def test_a_broker_outage_mid_stream_loses_nothing(
    outage: Outage, database: str
) -> None:
    """Writers on both servers keep writing while B's broker connection is down: every
    request succeeds, B reconnects with backoff, and subscribers on both servers end up
    with every change, in order, once (caught up from the change log)."""
    async with nodes_for(outage, database) as (a, b):
        far = await Subscriber.on(b, ALL_USERS)
        near = await Subscriber.on(a, ALL_USERS)
        stream = Stream([await a.client(), await b.client()])
        async with stream.running():
            await stream.more(20)
            outage.cut()
            cut_at = time.monotonic()
            await until(lambda: not is_listening(b.broker), "B noticed the outage")
            await stream.more(30)  # requests keep succeeding meanwhile
            down = time.monotonic() - cut_at
            if outage.proxy is not None:  # B kept trying, with backoff, not in a loop
                assert 1 <= outage.proxy.refused <= 5 + down / 0.1
            outage.restore()
            await until(lambda: is_listening(b.broker), "B listens again")
            await stream.more(20)
        assert reconnects(b.broker) > 0
        total = len(stream.created)
        for sub in (far, near):
            notes = await receive(sub.client, total)
            assert [n["metadata"]["seq"] for n in notes] == list(range(1, total + 1))
            assert sorted(n["data"]["id"] for n in notes) == sorted(
                r["id"] for r in stream.created
            )
            assert {n["operation"] for n in notes} == {"create"}
        assert stream.slowest < 5, f"a write took {stream.slowest:.1f}s"


async def test_subscribers_are_told_to_reset_when_the_log_no_longer_reaches_back(
    outage: Outage, database: str
) -> None:
    """B is cut off while A writes more than the log keeps: when B is back, its
    subscribers get ``operation: "reset"``, then new changes again; A's get no reset."""
    async with nodes_for(outage, database) as (a, b):
        far = await Subscriber.on(b, ALL_USERS)
        near = await Subscriber.on(a, ALL_USERS)
        writer_client = await a.client()
        log: list[Committed] = []
        writer = Writer(log)
        for i in range(2):
            await writer.create(writer_client, "users", {"name": f"before {i}"})
        await far.expect(log)

        outage.cut()
        await until(lambda: not is_listening(b.broker), "B noticed the outage")
        for i in range(10):
            await writer.create(writer_client, "users", {"name": f"during {i}"})
        adapter = a.handler.adapter
        assert isinstance(adapter, SQLAlchemyAdapter) and adapter.log is not None
        async with asyncio.timeout(TIMEOUT):
            pruned = await adapter.log.prune(keep=3)
        assert pruned == 9  # seq 1..9 are gone; 10..12 kept
        outage.restore()

        reset = await far.client.notification(TIMEOUT)
        assert reset == {
            "type": "notification",
            "operation": "reset",
            "subscription_id": far.id,
            "schema": "public",
            "entity": "users",
            "data": None,
            "metadata": {"reason": reset["metadata"]["reason"]},
            "timestamp": reset["timestamp"],
        }
        assert reset["metadata"]["reason"]
        # What the log still holds follows, then new changes flow as before.
        kept = [await far.client.notification(TIMEOUT) for _ in range(3)]
        assert [n["metadata"]["seq"] for n in kept] == [10, 11, 12]
        await writer.create(writer_client, "users", {"name": "after"})
        note = await far.client.notification(TIMEOUT)
        assert (note["operation"], note["metadata"]["seq"]) == ("create", 13)
        assert await far.client.drain() == []
        assert reconnects(b.broker) > 0

        told = await receive(near.client, len(log))
        assert "reset" not in {n["operation"] for n in told}
        assert [n["metadata"]["seq"] for n in told] == list(range(1, 14))


@pytest.mark.parametrize("kind", ["redis", "postgresql"])
async def test_a_change_committed_but_never_published_still_reaches_every_server(
    kind: str, database: str, module_redis: PrivateRedis
) -> None:
    """A writer that died between commit and publish: its change is in the outbox and
    nowhere else. The periodic sweep of the log delivers it to every server, in order,
    even while another entity keeps the broker busy."""
    async with two_nodes(kind, database, module_redis) as (a, b):
        subscribers = [await Subscriber.on(n, ALL_USERS) for n in (a, b)]
        writer_client = await a.client()
        log: list[Committed] = []
        owner = await Writer(log).create(writer_client, "users", {"name": "owner"})
        for sub in subscribers:
            await sub.expect(log)

        posts = [await a.client(), await b.client()]
        stop = asyncio.Event()

        async def busy(client: WSClient) -> None:
            while not stop.is_set():
                await client.ok(
                    "create", "posts", data={"title": "busy", "user_id": owner["id"]}
                )

        async with asyncio.TaskGroup() as group:
            for client in posts:
                group.create_task(busy(client))
            try:
                async with asyncio.timeout(TIMEOUT):
                    orphan = await commit_without_publishing(database, "orphan")
                for sub in subscribers:
                    note = await sub.client.notification(TIMEOUT)
                    assert note["operation"] == "create"
                    assert note["data"] == orphan
                    assert note["metadata"]["seq"] == 2
            finally:
                stop.set()
        assert await writer_client.ok("read", "users", record_id=str(orphan["id"])) == (
            orphan
        )
        for sub in subscribers:
            assert await sub.client.drain() == []


async def commit_without_publishing(database: str, name: str) -> Row:
    """Insert a user and its outbox row in one transaction, then publish nothing."""
    engine = create_engine(database)
    try:
        changelog = SQLAlchemyChangeLog(engine, lambda _key: None, notify=None)
        async with engine.begin() as conn:
            inserted = await conn.execute(
                sa.insert(User).values(name=name).returning(*User.__table__.c)
            )
            row = dict(inserted.mappings().one())
            await changelog.append(conn, [Change("create", "public.users", None, row)])
    finally:
        await engine.dispose()
    return row


async def test_servers_starting_at_once_on_a_fresh_database_all_start(
    database: str,
) -> None:
    """``--workers N`` starts N processes at once on a database that may be new: the
    change log's tables are created once, and no process fails to start."""
    engines = [create_engine(database) for _ in range(4)]
    handlers = []
    for engine in engines:
        handler = Handler(
            SQLAlchemyAdapter(engine),
            broker=PostgresBroker(database, sweep_interval=SWEEP, max_backoff=BACKOFF),
        )
        for name, model in MODELS.items():
            handler.registry.register_model(name, model)
        handlers.append(handler)
    try:
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(*(h.start() for h in handlers))
    finally:
        async with asyncio.timeout(TIMEOUT):
            for handler in handlers:
                await handler.stop()
            for engine in engines:
                await engine.dispose()


async def test_deployments_sharing_a_redis_channel_do_not_mix_their_changes(
    module_redis: PrivateRedis,
) -> None:
    """Redis pub/sub channels ignore the database number: two deployments on one
    Redis with the default channel hear each other. Each must still tell its
    subscribers of its own database's changes only, with no spurious reset."""
    async with asyncio.timeout(TIMEOUT):
        urls = [await create_database() for _ in range(2)]
    try:
        for url in urls:
            engine = create_engine(url)
            async with asyncio.timeout(TIMEOUT), engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            await engine.dispose()
        async with (
            running_node(urls[0], RedisBroker(module_redis.url)) as one,
            running_node(urls[1], RedisBroker(module_redis.url)) as other,
        ):
            mine = await Subscriber.on(other, ALL_USERS)
            log: list[Committed] = []
            writer = Writer(log)
            foreign = Writer([])
            for i in range(3):
                await foreign.create(await one.client(), "users", {"name": f"x{i}"})
            await writer.create(await other.client(), "users", {"name": "own"})
            notes = await mine.expect(log)
            assert [n["metadata"]["seq"] for n in notes] == [1]
    finally:
        async with asyncio.timeout(TIMEOUT):
            for url in urls:
                await drop_database(url)
