"""Delivery guarantees over real sockets, servers and databases.

- Resume: a subscriber disconnected while 1,000 changes are written (by concurrent
  writers, through one server with the memory broker, or through two in-process servers
  sharing one database and a shared broker) resumes with ``resume_from`` and receives
  exactly the missed matching changes, in order, then the live ones, with no duplicate.
  The oracle is a witness subscription that never disconnected (and, with a shared
  broker, the transactional outbox itself).
- Reset: when the history no longer reaches back (``MemoryBroker(history=50)``, or the
  outbox after ``prune``), the epoch differs, or the position is ahead of the stream,
  the subscription gets ``operation: "reset"`` and continues from the present.
- Snapshot: rows, total and position taken together; ``limit``, ``sort`` and
  ``preload`` shape the snapshot only, ``columns`` the notifications too, and the
  primary key is always in both.
- Idempotent writes: retry, conflict, concurrent duplicates (one server, and two
  servers on one database), per-identity keys, update and delete keys.
- Multi-row writes: bulk create/update/delete notified one frame per row with
  ``txid``/``batch_index``/``batch_size``; rollback by an after-hook; ``too_many_rows``;
  refused without ``bulk=True``; row-level security restricting bulk writes.

The shared broker is PostgreSQL ``LISTEN/NOTIFY`` on a PostgreSQL database of the
test's own, and Redis (its own channel) in front of a SQLite file.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.databases import models_database
from tests.support.models import Post, Thing, User
from tests.support.servers import serve
from tests.support.wsclient import WSClient
from websocketspec import (
    Config,
    FilterOption,
    Handler,
    HookContext,
    HookType,
    MemoryBroker,
    ValidationError,
)
from websocketspec.adapters.base import Change
from websocketspec.adapters.sqlalchemy import SQLAlchemyAdapter, create_engine
from websocketspec.broker import Broker, broker_from_url
from websocketspec.broker.redis import RedisBroker

TIMEOUT = 30.0
"""The longest any single wait may take (the machine may be busy)."""
REDIS_URL = os.environ.get("WEBSOCKETSPEC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
USERS = "public.users"

Row = dict[str, Any]
Note = dict[str, Any]
Connect = Callable[..., Awaitable[WSClient]]

# (status = 'a' OR age >= 50): rows enter, stay in and leave it as they are updated.
FILTER = [
    {"column": "status", "operator": "eq", "value": "a"},
    {"column": "age", "operator": "gte", "value": 50, "logic_operator": "OR"},
]


def in_filter(row: Row) -> bool:
    return row["status"] == "a" or (row["age"] is not None and row["age"] >= 50)


# -- servers --------------------------------------------------------------------------


def register(handler: Handler) -> Handler:
    """Users and posts allow multi-row updates and deletes; things do not."""
    handler.registry.register_model("public.users", User, bulk=True)
    handler.registry.register_model("public.posts", Post, bulk=True)
    handler.registry.register_model("public.things", Thing)
    return handler


@pytest.fixture
def history() -> int:
    """Changes the memory broker keeps per entity (tests parametrize it)."""
    return 5000


@pytest.fixture
def handler(engine: AsyncEngine, config: Config, history: int) -> Handler:
    broker = MemoryBroker(history=history)
    return register(Handler(SQLAlchemyAdapter(engine), broker=broker, config=config))


@dataclass
class Node:
    """One in-process server of a group sharing a database and a broker."""

    handler: Handler
    url: str
    clients: list[WSClient] = field(default_factory=list)

    async def connect(self, **kwargs: Any) -> WSClient:
        client = await WSClient.connect(self.url, **kwargs)
        self.clients.append(client)
        return client

    @property
    def adapter(self) -> SQLAlchemyAdapter:
        adapter = self.handler.adapter
        assert isinstance(adapter, SQLAlchemyAdapter)
        return adapter


def shared_database(backend: str, tmp_path: Path) -> AbstractAsyncContextManager[str]:
    """A database of the test's own with the models' tables (for shared brokers)."""
    return models_database(tmp_path / "shared.db" if backend == "sqlite" else None)


@pytest.fixture
async def shared_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    async with shared_database(backend, tmp_path) as url:
        yield url


def shared_brokers(database_url: str, count: int) -> list[Broker]:
    """Brokers for ``count`` servers on one database: PostgreSQL NOTIFY, or Redis."""
    if database_url.startswith("sqlite"):
        channel = f"wsspec-delivery-{uuid.uuid4().hex}"
        return [RedisBroker(REDIS_URL, channel=channel) for _ in range(count)]
    return [broker_from_url(database_url) for _ in range(count)]


@asynccontextmanager
async def running_node(
    database_url: str,
    broker: Broker,
    *,
    shell: str = "direct",
    config: Config | None = None,
    setup: Callable[[Handler], None] | None = None,
) -> AsyncIterator[Node]:
    """A server with its own engine and ``broker`` on ``database_url``."""
    engine = create_engine(database_url)
    handler = register(Handler(SQLAlchemyAdapter(engine), broker=broker, config=config))
    if setup is not None:
        setup(handler)
    try:
        async with serve(shell, handler) as base:
            node = Node(handler, f"{base}/ws")
            try:
                yield node
            finally:
                for client in node.clients:
                    await client.close()
    finally:
        async with asyncio.timeout(TIMEOUT):
            await handler.stop()
            await engine.dispose()


@asynccontextmanager
async def shared_nodes(
    database_url: str, count: int, **kwargs: Any
) -> AsyncIterator[list[Node]]:
    """``count`` servers on one database sharing one broker channel."""
    brokers = shared_brokers(database_url, count)
    async with running_node(database_url, brokers[0], **kwargs) as first:
        if count == 1:
            yield [first]
            return
        async with running_node(database_url, brokers[1], **kwargs) as second:
            yield [first, second]


# -- wire helpers ---------------------------------------------------------------------


async def subscribe(client: WSClient, entity: str = "users", **options: Any) -> Row:
    """Subscribe; returns the answer's data."""
    answer = await client.call(
        {
            "type": "subscription",
            "operation": "subscribe",
            "entity": entity,
            "options": options,
        }
    )
    assert answer["success"] is True, answer
    data: Row = answer["data"]
    return data


async def notes_until(
    client: WSClient, done: Callable[[Note], bool], timeout: float = TIMEOUT
) -> list[Note]:
    """Notifications in arrival order, up to and including the first that is ``done``."""
    out: list[Note] = []
    async with asyncio.timeout(timeout):
        while True:
            note = await client.notifications.get()
            out.append(note)
            if done(note):
                return out


async def receive(client: WSClient, count: int) -> list[Note]:
    """Exactly ``count`` notifications (then nothing more before a barrier)."""
    async with asyncio.timeout(TIMEOUT):
        notes = [await client.notifications.get() for _ in range(count)]
    extra = await client.drain()
    assert extra == [], extra
    return notes


def named(name: str) -> Callable[[Note], bool]:
    def done(note: Note) -> bool:
        data = note.get("data")
        return isinstance(data, dict) and data.get("name") == name

    return done


def seqs(notes: list[Note]) -> list[int]:
    return [int(n["metadata"]["seq"]) for n in notes]


def essence(notes: list[Note]) -> list[tuple[str, int, Row]]:
    return [(n["operation"], int(n["metadata"]["seq"]), n["data"]) for n in notes]


def apply(state: dict[Any, Row], notes: list[Note]) -> dict[Any, Row]:
    """Apply notifications to rows by id, checking each makes sense where it lands."""
    for note in notes:
        row = note["data"]
        if note["operation"] == "create":
            assert row["id"] not in state, f"a duplicate create: {note}"
            state[row["id"]] = row
        elif note["operation"] == "update":
            assert row["id"] in state, f"an update of a row never seen: {note}"
            state[row["id"]] = row
        else:
            assert note["operation"] == "delete", note
            assert state.pop(row["id"], None) is not None, f"a gap: {note}"
    return state


async def read_all(client: WSClient, entity: str = "users", **options: Any) -> Any:
    return await client.ok("read", entity, options={"limit": 1000, **options})


async def create(client: WSClient, entity: str = "users", **data: Any) -> Row:
    row: Row = await client.ok("create", entity, data=data)
    return row


def told(change: Change) -> tuple[str, Any] | None:
    """What a subscriber with FILTER is told of a committed change (DESIGN.md rules)."""
    before = change.old is not None and in_filter(change.old)
    after = change.new is not None and in_filter(change.new)
    if change.operation == "create":
        return ("create", change.new["id"]) if after and change.new else None
    if change.operation == "delete":
        return ("delete", change.old["id"]) if before and change.old else None
    if before and after and change.new:
        return "update", change.new["id"]
    if after and change.new:
        return "create", change.new["id"]
    if before and change.old:
        return "delete", change.old["id"]
    return None


class Writer:
    """Writes random changes to rows of its own: single-row and multi-row writes."""

    def __init__(self, client: WSClient, seed: int) -> None:
        self.client = client
        self.rng = random.Random(seed)
        self.own: list[int] = []
        self.made = 0
        """Changes written so far (one per row a write changed)."""

    def values(self) -> Row:
        return {"status": self.rng.choice("abc"), "age": self.rng.randrange(100)}

    def some(self, most: int) -> list[int]:
        return self.rng.sample(self.own, min(len(self.own), self.rng.randint(2, most)))

    async def step(self, budget: int) -> None:
        """One write of at most ``budget`` changes."""
        rng, client = self.rng, self.client
        roll = rng.random()
        if len(self.own) < 5 or roll < 0.3:
            data = [
                {"name": f"w{rng.random()}", **self.values()}
                for _ in range(rng.randint(1, min(budget, 12)))
            ]
            rows = await client.ok("create", "users", data=data)
            self.own.extend(row["id"] for row in rows)
            self.made += len(rows)
            return
        if budget == 1 or roll < 0.5:
            key = rng.choice(self.own)
            await client.ok("update", "users", record_id=str(key), data=self.values())
        elif roll < 0.8:
            keys = self.some(min(budget, 15))
            where = [{"column": "id", "operator": "in", "value": keys}]
            rows = await client.ok(
                "update", "users", data=self.values(), options={"filters": where}
            )
            assert len(rows) == len(keys)
            self.made += len(keys) - 1
        elif roll < 0.9:
            key = self.own.pop(rng.randrange(len(self.own)))
            await client.ok("delete", "users", record_id=str(key))
        else:
            keys = self.some(min(budget, 8))
            where = [{"column": "id", "operator": "in", "value": keys}]
            rows = await client.ok("delete", "users", options={"filters": where})
            assert len(rows) == len(keys)
            self.own = [key for key in self.own if key not in keys]
            self.made += len(keys) - 1
        self.made += 1

    async def run(self, changes: int) -> None:
        """Write exactly ``changes`` more changes."""
        goal = self.made + changes
        while self.made < goal:
            await self.step(goal - self.made)


async def write_all(writers: list[Writer], total: int) -> None:
    """Exactly ``total`` changes, split between the writers, written concurrently."""
    share, rest = divmod(total, len(writers))
    async with asyncio.timeout(4 * TIMEOUT):
        await asyncio.gather(
            *(w.run(share + (1 if i < rest else 0)) for i, w in enumerate(writers))
        )


async def check_resume(
    subscriber: WSClient,
    witness: WSClient,
    writers: list[Writer],
    reconnect: Callable[[], Awaitable[WSClient]],
) -> tuple[list[Note], list[Note], int]:
    """The scenario of both resume tests; returns (witness notes, resumed notes, last)."""
    first = await subscribe(subscriber, filters=FILTER)
    await write_all(writers, 40)
    seen = await subscriber.drain()
    assert seen, "the first 40 changes hold some matching ones"
    last = seqs(seen)[-1]
    epoch = seen[-1]["metadata"]["epoch"]
    assert epoch == first["position"]["epoch"]
    await subscriber.close()

    await write_all(writers, 1000)  # while the subscriber is away

    resumed = await reconnect()
    # More writes race the resume: the replay and the live changes must not overlap.
    racing = asyncio.create_task(write_all(writers, 40))
    again = await subscribe(
        resumed, filters=FILTER, resume_from={"seq": last, "epoch": epoch}
    )
    await racing
    await create(writers[0].client, name="marker", status="a", age=0)
    got = await notes_until(resumed, named("marker"))
    assert await resumed.drain() == []
    assert all(n["subscription_id"] == again["subscription_id"] for n in got)
    watched = await notes_until(witness, named("marker"))
    return watched, got, last


async def check_witness(witness_notes: list[Note], client: WSClient) -> None:
    """The witness saw everything from an empty table: its notes rebuild the table."""
    assert seqs(witness_notes) == sorted(set(seqs(witness_notes)))
    state = apply({}, witness_notes)
    expected = {row["id"]: row for row in await read_all(client, filters=FILTER)}
    assert state == expected


# -- resume ---------------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["direct"])
async def test_resume_after_1000_changes_replays_exactly_the_missed_ones(
    connect: Connect,
) -> None:
    """Memory broker, one server: four writers, 1,000 changes while away."""
    witness = await connect()
    await subscribe(witness, filters=FILTER)
    subscriber = await connect()
    writers = [Writer(await connect(), seed) for seed in range(4)]

    watched, got, last = await check_resume(subscriber, witness, writers, connect)

    missed_and_live = [n for n in watched if n["metadata"]["seq"] > last]
    assert len(missed_and_live) > 300
    assert essence(got) == essence(missed_and_live)
    assert "reset" not in {n["operation"] for n in got}
    await check_witness(watched, writers[0].client)


async def test_resume_after_1000_changes_across_two_servers(
    shared_url: str,
) -> None:
    """A shared broker, two servers on one database: writers on both, the subscriber
    leaves server A and resumes on server B; the outbox is the oracle."""
    async with shared_nodes(shared_url, 2) as (a, b):
        witness = await a.connect()
        await subscribe(witness, filters=FILTER)
        subscriber = await a.connect()
        writers = [
            Writer(await node.connect(), seed) for seed, node in enumerate([a, b, a, b])
        ]

        watched, got, last = await check_resume(subscriber, witness, writers, b.connect)

        missed_and_live = [n for n in watched if n["metadata"]["seq"] > last]
        assert len(missed_and_live) > 300
        assert essence(got) == essence(missed_and_live)
        await check_witness(watched, writers[1].client)

        # Every committed change in commit order, as the outbox holds it.
        log = a.adapter.log
        assert log is not None
        async with asyncio.timeout(TIMEOUT):
            _, changes = await log.changes_since(USERS, 0, limit=100_000)
        assert [c.seq for c in changes] == list(range(1, len(changes) + 1))
        assert len(changes) == 40 + 1000 + 40 + 1
        expected = [
            (*outcome, c.seq) for c in changes if (outcome := told(c)) is not None
        ]
        assert [
            (n["operation"], n["data"]["id"], n["metadata"]["seq"]) for n in watched
        ] == expected


@pytest.mark.parametrize("shell", ["asgi"])
@pytest.mark.parametrize("history", [50])
async def test_resume_past_the_memory_history_gets_reset(connect: Connect) -> None:
    subscriber = await connect()
    writer = await connect()
    start = await subscribe(subscriber)
    assert start["position"]["seq"] == 0
    epoch = start["position"]["epoch"]
    await subscriber.close()
    for part in range(2):  # 1,000 changes, far more than the 50 kept
        batch = [{"name": f"u{part}-{i}", "status": "a"} for i in range(500)]
        await writer.ok("create", "users", data=batch)

    # The last 50 are kept: resuming from 950 replays them, from 949 cannot.
    edge = await connect()
    sub = await subscribe(edge, resume_from={"seq": 950, "epoch": epoch})
    replayed = await receive(edge, 50)
    assert seqs(replayed) == list(range(951, 1001))
    assert {n["subscription_id"] for n in replayed} == {sub["subscription_id"]}

    late = await connect()
    sub = await subscribe(late, resume_from={"seq": 949, "epoch": epoch})
    reset = await late.notification()
    assert reset == {
        "type": "notification",
        "operation": "reset",
        "subscription_id": sub["subscription_id"],
        "schema": "public",
        "entity": "users",
        "data": None,
        "metadata": {"reason": reset["metadata"]["reason"]},
        "timestamp": reset["timestamp"],
    }
    assert isinstance(reset["metadata"]["reason"], str) and reset["metadata"]["reason"]
    assert await late.drain() == []  # nothing of the history, only what comes next

    await create(writer, name="after", status="a")
    (note,) = await receive(late, 1)
    assert (note["operation"], note["metadata"]["seq"]) == ("create", 1001)
    assert note["data"]["name"] == "after"
    (note,) = await receive(edge, 1)
    assert note["metadata"]["seq"] == 1001


async def test_resume_on_a_server_that_lags_behind_replays_from_the_log(
    shared_url: str,
) -> None:
    """A client resumes on server B from a position it got from server A, before B has
    heard of it (its broker is not listening): the outbox has the changes, so B
    replays them; a position the stream holds is never answered with reset."""
    async with shared_nodes(shared_url, 2) as (a, b):
        subscriber = await a.connect()
        writer = await a.connect()
        start = await subscribe(subscriber)
        epoch = start["position"]["epoch"]
        broker = b.handler.broker
        async with asyncio.timeout(TIMEOUT):
            await broker.stop()  # B hears nothing from now on
        rows = [await create(writer, name=f"u{i}", status="a") for i in range(5)]
        seen = await receive(subscriber, 5)
        await subscriber.close()
        assert b.handler.relay.positions.get(USERS, 0) == 0

        resumed = await b.connect()
        await subscribe(resumed, resume_from={"seq": seqs(seen)[2], "epoch": epoch})
        first = await resumed.notification()
        assert first["operation"] != "reset", first
        replayed = [first, *await receive(resumed, 1)]
        assert [n["data"] for n in replayed] == rows[3:]
        assert seqs(replayed) == [4, 5]

        async with asyncio.timeout(TIMEOUT):
            await broker.start(b.handler.relay)  # B catches up: nothing twice
        await create(writer, name="after", status="a")
        (note,) = await receive(resumed, 1)
        assert (note["data"]["name"], note["metadata"]["seq"]) == ("after", 6)


async def test_resume_past_the_pruned_outbox_gets_reset(shared_url: str) -> None:
    async with shared_nodes(shared_url, 1) as (node,):
        subscriber = await node.connect()
        writer = await node.connect()
        start = await subscribe(subscriber)
        epoch = start["position"]["epoch"]
        await subscriber.close()
        rows = [await create(writer, name=f"u{i}", status="a") for i in range(30)]
        log = node.adapter.log
        assert log is not None
        async with asyncio.timeout(TIMEOUT):
            assert await log.prune(keep=10) == 20  # seq 21..30 are kept

        edge = await node.connect()
        await subscribe(edge, resume_from={"seq": 20, "epoch": epoch})
        replayed = await receive(edge, 10)
        assert seqs(replayed) == list(range(21, 31))
        assert [n["data"] for n in replayed] == rows[20:]

        for late_from in (0, 19):
            late = await node.connect()
            sub = await subscribe(late, resume_from={"seq": late_from, "epoch": epoch})
            reset = await late.notification()
            assert reset["operation"] == "reset"
            assert reset["subscription_id"] == sub["subscription_id"]
            assert reset["metadata"]["reason"]
            assert await late.drain() == []

        await create(writer, name="after", status="a")
        for client in node.clients[2:]:
            (note,) = await receive(client, 1)
            assert (note["operation"], note["metadata"]["seq"]) == ("create", 31)


@pytest.mark.parametrize("shell", ["direct"])
async def test_resume_with_another_epoch_gets_reset(
    connect: Connect, engine: AsyncEngine
) -> None:
    client = await connect()
    writer = await connect()
    start = await subscribe(client)
    await create(writer, name="one", status="a")
    (note,) = await receive(client, 1)
    assert note["metadata"]["epoch"] == start["position"]["epoch"]

    other = await connect()
    sub = await subscribe(
        other, resume_from={"seq": 0, "epoch": "not-this-streams-history"}
    )
    reset = await other.notification()
    assert (reset["operation"], reset["subscription_id"]) == (
        "reset",
        sub["subscription_id"],
    )
    assert await other.drain() == []  # the change of the other epoch is not replayed

    await create(writer, name="two", status="a")
    (note,) = await receive(other, 1)
    assert (note["data"]["name"], note["metadata"]["seq"]) == ("two", 2)

    # A restarted server with the memory broker has a new history: an old position
    # of the previous process gets reset too.
    fresh = register(Handler(SQLAlchemyAdapter(engine), broker=MemoryBroker()))
    async with serve("asgi", fresh) as base:
        again = await WSClient.connect(f"{base}/ws")
        try:
            answer = await subscribe(
                again, resume_from={"seq": 2, "epoch": note["metadata"]["epoch"]}
            )
            assert answer["position"]["epoch"] != note["metadata"]["epoch"]
            reset = await again.notification()
            assert (reset["operation"], reset["subscription_id"]) == (
                "reset",
                answer["subscription_id"],
            )
        finally:
            await again.close()
    async with asyncio.timeout(TIMEOUT):
        await fresh.stop()


@pytest.mark.parametrize("shell", ["asgi"])
async def test_resume_from_a_position_ahead_of_the_stream_gets_reset(
    connect: Connect,
) -> None:
    client = await connect()
    writer = await connect()
    start = await subscribe(client)
    epoch = start["position"]["epoch"]
    for i in range(3):
        await create(writer, name=f"u{i}", status="a")

    bogus = await connect()
    sub = await subscribe(bogus, resume_from={"seq": 1000, "epoch": epoch})
    reset = await bogus.notification()
    assert (reset["operation"], reset["subscription_id"]) == (
        "reset",
        sub["subscription_id"],
    )
    assert await bogus.drain() == []
    # It continues from the present: the next change is not swallowed.
    await create(writer, name="next", status="a")
    (note,) = await receive(bogus, 1)
    assert (note["data"]["name"], note["metadata"]["seq"]) == ("next", 4)

    # Resuming at the head itself is fine: nothing to replay, live changes follow.
    exact = await connect()
    await subscribe(exact, resume_from={"seq": 4, "epoch": epoch})
    assert await exact.drain() == []
    await create(writer, name="after", status="a")
    (note,) = await receive(exact, 1)
    assert note["metadata"]["seq"] == 5


async def test_resume_replays_only_matching_changes_and_every_answer_has_a_position(
    connect: Connect,
) -> None:
    client = await connect()
    writer = await connect()
    start = await subscribe(client, filters=FILTER)
    epoch = start["position"]["epoch"]
    await client.close()
    made = [
        await create(writer, name="in", status="a", age=1),
        await create(writer, name="out", status="b", age=1),
    ]
    await writer.ok("update", "users", record_id=str(made[1]["id"]), data={"age": 60})
    await writer.ok(
        "update", "users", record_id=str(made[0]["id"]), data={"status": "c"}
    )
    await writer.ok("delete", "users", record_id=str(made[1]["id"]))

    again = await connect()
    answer = await subscribe(
        again, filters=FILTER, resume_from={"seq": 0, "epoch": epoch}
    )
    assert answer["position"] == {"seq": 5, "epoch": epoch}  # the head
    assert answer["resumed"] is True
    notes = await receive(again, 4)
    assert [
        (
            n["operation"],
            n["data"]["name"],
            n["metadata"].get("change"),
            n["metadata"]["seq"],
        )
        for n in notes
    ] == [
        ("create", "in", None, 1),
        ("create", "out", "enter", 3),
        ("delete", "in", "leave", 4),
        ("delete", "out", None, 5),
    ]
    # A leave carries the old row, never the new values.
    assert notes[2]["data"]["status"] == "a"


# -- snapshot -------------------------------------------------------------------------


async def test_snapshot_answers_rows_total_and_position(connect: Connect) -> None:
    client = await connect()
    writer = await connect()
    empty = await subscribe(client, snapshot=True, filters=FILTER)
    assert empty["rows"] == [] and empty["total"] == 0
    assert empty["position"]["seq"] == 0
    epoch = empty["position"]["epoch"]

    rows = [
        await create(writer, name=f"u{i}", status="ab"[i % 2], age=10 * i)
        for i in range(8)
    ]
    await writer.ok(
        "update", "users", record_id=str(rows[0]["id"]), data={"status": "c"}
    )
    await writer.ok("delete", "users", record_id=str(rows[2]["id"]))
    await client.drain()

    answer = await subscribe(client, snapshot=True, filters=FILTER)
    expected = await read_all(writer, filters=FILTER)
    assert answer["rows"] == expected
    assert [r["name"] for r in expected] == ["u4", "u5", "u6", "u7"]
    assert answer["total"] == 4
    assert answer["position"] == {"seq": 10, "epoch": epoch}
    assert set(answer) == {
        "subscription_id",
        "schema",
        "entity",
        "rows",
        "total",
        "position",
    }

    # The first notification is the change right after the snapshot's position.
    await writer.ok("update", "users", record_id=str(rows[4]["id"]), data={"age": 1})
    notes = [
        n
        for n in await client.drain()
        if n["subscription_id"] == answer["subscription_id"]
    ]
    assert [(n["operation"], n["metadata"]["seq"]) for n in notes] == [("update", 11)]

    # snapshot and resume_from exclude each other.
    refused = await client.call(
        {
            "type": "subscription",
            "operation": "subscribe",
            "entity": "users",
            "options": {"snapshot": True, "resume_from": {"seq": 0, "epoch": epoch}},
        }
    )
    assert refused["success"] is False
    assert refused["error"]["code"] == "invalid_message"


async def test_snapshot_limit_sort_columns_preload_shape_the_snapshot_only(
    connect: Connect,
) -> None:
    client = await connect()
    writer = await connect()
    ann = await create(writer, name="Ann", status="a")
    bob = await create(writer, name="Bob", status="a")
    for rank in (3, 1, 4, 2):
        await writer.ok(
            "create",
            "posts",
            data={"title": f"p{rank}", "rank": rank, "user_id": ann["id"]},
        )
    await writer.ok(
        "create", "posts", data={"title": "bob's", "rank": 9, "user_id": bob["id"]}
    )

    answer = await subscribe(
        client,
        "posts",
        snapshot=True,
        filters=[{"column": "user_id", "operator": "eq", "value": ann["id"]}],
        sort=[{"column": "rank", "direction": "desc"}],
        limit=2,
        columns=["title", "rank"],
        preload=[{"relation": "user", "columns": ["name"]}],
    )
    assert answer["total"] == 4  # every matching row, not just the page
    assert [(r["title"], r["rank"], r["user"]) for r in answer["rows"]] == [
        ("p4", 4, {"name": "Ann"}),
        ("p3", 3, {"name": "Ann"}),
    ]
    # The primary key always comes along, so notifications can be applied to the rows.
    for row in answer["rows"]:
        assert set(row) == {"id", "title", "rank", "user"}
    assert answer["position"]["seq"] == 5

    # Notifications are not paged, sorted or preloaded: a low-ranked post still arrives,
    # with the subscription's columns (and the primary key).
    low = await writer.ok(
        "create", "posts", data={"title": "p0", "rank": 0, "user_id": ann["id"]}
    )
    await writer.ok(
        "create", "posts", data={"title": "bob2", "rank": 0, "user_id": bob["id"]}
    )
    (note,) = await receive(client, 1)
    assert note["operation"] == "create"
    assert note["data"] == {"id": low["id"], "title": "p0", "rank": 0}
    assert note["metadata"]["seq"] == 6


# -- idempotency ----------------------------------------------------------------------


Keyed = Callable[[str], dict[str, Any]]


@pytest.fixture
def keyed() -> Keyed:
    """``metadata.idempotency_key`` fields with keys of this test's own: the key table
    outlives the re-creation of the models' tables in the session's database."""
    token = uuid.uuid4().hex
    return lambda name: {"metadata": {"idempotency_key": f"{name}-{token}"}}


async def test_a_retried_create_is_applied_once(connect: Connect, keyed: Keyed) -> None:
    watcher = await connect()
    await subscribe(watcher)
    client = await connect()
    first = await client.request(
        "create", "users", data={"name": "once"}, **keyed("k-1")
    )
    assert first["success"] is True, first
    assert "replayed" not in (first.get("metadata") or {})

    retry = await client.request(
        "create", "users", data={"name": "once"}, **keyed("k-1")
    )
    assert retry["success"] is True, retry
    assert retry["data"] == first["data"]
    assert retry["metadata"] == {"replayed": True}
    # Through another connection of the same identity (anonymous here) too.
    other = await connect()
    again = await other.request(
        "create", "users", data={"name": "once"}, **keyed("k-1")
    )
    assert (again["data"], again["metadata"]) == (first["data"], {"replayed": True})

    assert len(await read_all(client)) == 1
    notes = await receive(watcher, 1)
    assert notes[0]["data"] == first["data"]

    # The same key with another request is refused, and changes nothing.
    conflict = await client.request(
        "create", "users", data={"name": "twice"}, **keyed("k-1")
    )
    assert conflict["success"] is False
    assert conflict["error"]["code"] == "idempotency_conflict"
    assert len(await read_all(client)) == 1
    assert await watcher.drain() == []

    # A key whose write failed in the database (after the key was claimed in its
    # transaction) was rolled back with it: it may be used again.
    post = {"title": "t", "user_id": 999_999}
    bad = await client.request("create", "posts", data=post, **keyed("k-2"))
    assert bad["success"] is False
    assert bad["error"]["code"] == "create_error"
    post["user_id"] = first["data"]["id"]
    ok = await client.request("create", "posts", data=post, **keyed("k-2"))
    assert ok["success"] is True and "replayed" not in (ok.get("metadata") or {})


async def test_concurrent_duplicates_are_applied_once(
    connect: Connect, keyed: Keyed
) -> None:
    watcher = await connect()
    await subscribe(watcher)
    first, second = await connect(), await connect()
    for n in range(10):
        message = {
            "type": "request",
            "operation": "create",
            "entity": "users",
            "data": {"name": f"dup-{n}"},
            **keyed(f"dup-{n}"),
        }
        # Both frames are on the wire before either answer comes back.
        answers = await asyncio.gather(
            first.call({**message, "id": f"a-{n}"}),
            second.call({**message, "id": f"b-{n}"}),
        )
        assert all(a["success"] for a in answers), answers
        assert answers[0]["data"] == answers[1]["data"]
        flags = sorted(bool((a.get("metadata") or {}).get("replayed")) for a in answers)
        assert flags == [False, True]
    rows = await read_all(first)
    assert sorted(r["name"] for r in rows) == sorted(f"dup-{n}" for n in range(10))
    notes = await receive(watcher, 10)
    assert sorted(n["data"]["name"] for n in notes) == sorted(r["name"] for r in rows)


async def test_concurrent_duplicates_through_two_servers_are_applied_once(
    shared_url: str, keyed: Keyed
) -> None:
    """No process-local lock helps here: the key is claimed in the database."""
    async with shared_nodes(shared_url, 2) as (a, b):
        watcher = await a.connect()
        await subscribe(watcher)
        first, second = await a.connect(), await b.connect()
        for n in range(10):
            message = {
                "type": "request",
                "operation": "create",
                "entity": "users",
                "data": {"name": f"dup-{n}"},
                **keyed(f"dup-{n}"),
            }
            answers = await asyncio.gather(
                first.call({**message, "id": f"a-{n}"}),
                second.call({**message, "id": f"b-{n}"}),
            )
            assert all(x["success"] for x in answers), answers
            assert answers[0]["data"] == answers[1]["data"]
            flags = sorted(
                bool((x.get("metadata") or {}).get("replayed")) for x in answers
            )
            assert flags == [False, True]
        rows = await read_all(first)
        assert len(rows) == 10
        notes = await notes_until(watcher, lambda note: note["metadata"]["seq"] == 10)
        assert seqs(notes) == list(range(1, 11))
        assert await watcher.drain() == []


async def test_idempotency_keys_belong_to_one_identity(
    handler: Handler, connect: Connect, keyed: Keyed
) -> None:
    @handler.hooks.before(HookType.CONNECT)
    def identify(ctx: HookContext) -> None:
        ctx.connection.metadata["user_id"] = ctx.handshake.headers.get("x-user")

    alice = await connect(additional_headers={"x-user": "alice"})
    bob = await connect(additional_headers={"x-user": "bob"})
    alice2 = await connect(additional_headers={"x-user": "alice"})
    mine = await alice.request(
        "create", "users", data={"name": "alice's"}, **keyed("k")
    )
    theirs = await bob.request("create", "users", data={"name": "bob's"}, **keyed("k"))
    assert mine["success"] and theirs["success"], (mine, theirs)
    assert "replayed" not in (theirs.get("metadata") or {})
    assert mine["data"]["id"] != theirs["data"]["id"]

    again = await alice2.request(
        "create", "users", data={"name": "alice's"}, **keyed("k")
    )
    assert (again["data"], again["metadata"]) == (mine["data"], {"replayed": True})
    clash = await alice2.request(
        "create", "users", data={"name": "bob's"}, **keyed("k")
    )
    assert clash["error"]["code"] == "idempotency_conflict"
    again = await bob.request("create", "users", data={"name": "bob's"}, **keyed("k"))
    assert (again["data"], again["metadata"]) == (theirs["data"], {"replayed": True})
    assert sorted(r["name"] for r in await read_all(alice)) == ["alice's", "bob's"]


@pytest.mark.parametrize("shell", ["direct"])
async def test_update_and_delete_keys(connect: Connect, keyed: Keyed) -> None:
    watcher = await connect()
    await subscribe(watcher)
    client = await connect()
    row = await create(client, name="before", status="a")
    await receive(watcher, 1)

    update = {"record_id": str(row["id"]), "data": {"name": "keyed"}, **keyed("u-1")}
    first = await client.request("update", "users", **update)
    assert first["success"] is True and first["data"]["name"] == "keyed"
    await client.ok("update", "users", record_id=str(row["id"]), data={"name": "later"})
    retry = await client.request("update", "users", **update)
    assert (retry["data"], retry["metadata"]) == (first["data"], {"replayed": True})
    assert (await client.ok("read", "users", record_id=str(row["id"])))[
        "name"
    ] == "later"
    notes = await receive(watcher, 2)
    assert [n["data"]["name"] for n in notes] == ["keyed", "later"]

    # The same key for a delete is another request.
    clash = await client.request(
        "delete", "users", record_id=str(row["id"]), **keyed("u-1")
    )
    assert clash["error"]["code"] == "idempotency_conflict"

    delete = {"record_id": str(row["id"]), **keyed("d-1")}
    gone = await client.request("delete", "users", **delete)
    assert gone["success"] is True and gone["data"]["name"] == "later"
    retry = await client.request("delete", "users", **delete)
    # The first answer again, not not_found; and no second notification.
    assert (retry["success"], retry["data"], retry["metadata"]) == (
        True,
        gone["data"],
        {"replayed": True},
    )
    notes = await receive(watcher, 1)
    assert notes[0]["operation"] == "delete"


# -- multi-row writes -----------------------------------------------------------------


def batch_of(notes: list[Note]) -> tuple[str, list[int], set[int]]:
    txids = {n["metadata"]["txid"] for n in notes}
    assert len(txids) == 1, txids
    return (
        txids.pop(),
        [n["metadata"]["batch_index"] for n in notes],
        {n["metadata"]["batch_size"] for n in notes},
    )


async def test_bulk_create_update_delete_are_notified_row_by_row(
    connect: Connect, keyed: Keyed
) -> None:
    watcher = await connect()
    await subscribe(watcher)
    golds = await connect()
    await subscribe(
        golds, filters=[{"column": "status", "operator": "eq", "value": "gold"}]
    )
    client = await connect()
    await create(client, name="single", status="gold")
    await receive(watcher, 1)
    await receive(golds, 1)

    data = [{"name": f"b{i}", "status": "gold" if i % 2 else "plain"} for i in range(5)]
    answer = await client.request("create", "users", data=data, **keyed("bulk-1"))
    assert answer["success"] is True, answer
    assert [r["name"] for r in answer["data"]] == [d["name"] for d in data]
    assert answer["metadata"]["count"] == 5
    txid = answer["metadata"]["txid"]
    assert isinstance(txid, str) and txid
    notes = await receive(watcher, 5)
    assert batch_of(notes) == (txid, [0, 1, 2, 3, 4], {5})
    assert seqs(notes) == [2, 3, 4, 5, 6]  # consecutive: one transaction
    assert [n["data"] for n in notes] == answer["data"]
    gold_notes = await receive(golds, 2)
    assert [n["data"]["name"] for n in gold_notes] == ["b1", "b3"]
    assert batch_of(gold_notes) == (txid, [1, 3], {5})

    # A retried bulk create is answered again and creates nothing.
    retry = await client.request("create", "users", data=data, **keyed("bulk-1"))
    assert (retry["data"], retry["metadata"]["replayed"]) == (answer["data"], True)
    assert len(await read_all(client)) == 6
    assert await watcher.drain() == []

    updated = await client.request(
        "update",
        "users",
        data={"status": "gold"},
        options={
            "filters": [{"column": "name", "operator": "startswith", "value": "b"}]
        },
    )
    assert updated["success"] is True, updated
    assert {r["status"] for r in updated["data"]} == {"gold"}
    assert updated["metadata"]["count"] == 5
    notes = await receive(watcher, 5)
    assert batch_of(notes) == (updated["metadata"]["txid"], [0, 1, 2, 3, 4], {5})
    assert seqs(notes) == [7, 8, 9, 10, 11]
    assert {n["operation"] for n in notes} == {"update"}
    gold_notes = await receive(golds, 5)
    assert [(n["data"]["name"], n["operation"]) for n in gold_notes] == [
        ("b0", "create"),
        ("b1", "update"),
        ("b2", "create"),
        ("b3", "update"),
        ("b4", "create"),
    ]

    deleted = await client.request(
        "delete",
        "users",
        options={
            "filters": [
                {"column": "name", "operator": "in", "value": ["b1", "b2", "single"]}
            ]
        },
    )
    assert deleted["success"] is True, deleted
    assert sorted(r["name"] for r in deleted["data"]) == ["b1", "b2", "single"]
    notes = await receive(watcher, 3)
    assert batch_of(notes) == (deleted["metadata"]["txid"], [0, 1, 2], {3})
    assert {n["operation"] for n in notes} == {"delete"}
    assert seqs(notes) == [12, 13, 14]
    assert sorted(r["name"] for r in await read_all(client)) == ["b0", "b3", "b4"]

    # Filters that match nothing change nothing and notify nothing.
    none = await client.request(
        "delete",
        "users",
        options={"filters": [{"column": "name", "operator": "eq", "value": "nobody"}]},
    )
    assert (none["success"], none["data"], none["metadata"]["count"]) == (True, [], 0)
    assert await watcher.drain() == []


@pytest.mark.parametrize("shell", ["asgi"])
async def test_an_after_hook_raising_rolls_back_every_row(
    handler: Handler, connect: Connect
) -> None:
    def refuse(ctx: HookContext) -> None:
        rows = ctx.result if isinstance(ctx.result, list) else [ctx.result]
        if any(row.get("name") == "bad" or row.get("status") == "bad" for row in rows):
            raise ValidationError("no bad rows", field="name")

    handler.hooks.register_after(HookType.CREATE, refuse)
    handler.hooks.register_after(HookType.UPDATE, refuse)
    watcher = await connect()
    await subscribe(watcher)
    client = await connect()
    await client.ok("create", "users", data=[{"name": "x"}, {"name": "y"}])
    assert seqs(await receive(watcher, 2)) == [1, 2]

    failed = await client.request(
        "create", "users", data=[{"name": "ok"}, {"name": "bad"}, {"name": "ok2"}]
    )
    assert failed["success"] is False
    assert failed["error"]["code"] == "validation_error"
    failed = await client.request(
        "update",
        "users",
        data={"status": "bad"},
        options={
            "filters": [{"column": "name", "operator": "in", "value": ["x", "y"]}]
        },
    )
    assert failed["error"]["code"] == "validation_error"
    rows = await read_all(client)
    assert [(r["name"], r["status"]) for r in rows] == [
        ("x", "active"),
        ("y", "active"),
    ]
    assert await watcher.drain() == []

    # The stream has no hole where the rolled-back writes were.
    await create(client, name="z")
    (note,) = await receive(watcher, 1)
    assert note["metadata"]["seq"] == 3


@pytest.mark.parametrize("config", [Config(max_bulk_rows=3)])
@pytest.mark.parametrize("shell", ["direct"])
async def test_too_many_rows_changes_nothing(connect: Connect) -> None:
    watcher = await connect()
    await subscribe(watcher)
    client = await connect()
    refused = await client.request(
        "create", "users", data=[{"name": f"u{i}"} for i in range(4)]
    )
    assert refused["success"] is False
    assert refused["error"]["code"] == "too_many_rows"
    assert await read_all(client) == []

    await client.ok("create", "users", data=[{"name": f"u{i}"} for i in range(3)])
    await create(client, name="u3")
    await receive(watcher, 4)
    every = {"filters": [{"column": "name", "operator": "startswith", "value": "u"}]}
    for operation, extra in (("update", {"data": {"status": "x"}}), ("delete", {})):
        refused = await client.request(operation, "users", options=every, **extra)
        assert refused["success"] is False, refused
        assert refused["error"]["code"] == "too_many_rows"
    assert {r["status"] for r in await read_all(client)} == {"active"}
    assert len(await read_all(client)) == 4
    assert await watcher.drain() == []
    three = {
        "filters": [{"column": "name", "operator": "in", "value": ["u0", "u1", "u2"]}]
    }
    assert len(await client.ok("delete", "users", options=three)) == 3


@pytest.mark.parametrize("shell", ["asgi"])
async def test_bulk_updates_and_deletes_need_bulk_entities_and_filters(
    connect: Connect,
) -> None:
    client = await connect()
    await client.ok("create", "things", data=[{"label": "a"}, {"label": "b"}])
    every = {"filters": [{"column": "label", "operator": "is_not_null"}]}
    for operation, extra in (("update", {"data": {"label": "z"}}), ("delete", {})):
        refused = await client.request(operation, "things", options=every, **extra)
        assert refused["success"] is False
        assert refused["error"]["code"] == "invalid_message"
        # Even a bulk entity needs filters naming its rows.
        refused = await client.request(operation, "users", **extra)
        assert refused["error"]["code"] == "invalid_message"
    assert sorted(r["label"] for r in await read_all(client, "things")) == ["a", "b"]


async def test_row_security_restricts_bulk_writes_to_the_connections_rows(
    handler: Handler, connect: Connect
) -> None:
    @handler.hooks.before(HookType.CONNECT)
    def identify(ctx: HookContext) -> None:
        user = ctx.handshake.headers.get("x-user")
        if user is not None:
            ctx.connection.metadata["user_id"] = int(user)

    def own_posts(ctx: HookContext) -> None:
        user = ctx.connection.metadata.get("user_id")
        if user is not None and ctx.entity == "posts":
            ctx.add_filter(FilterOption("user_id", "eq", user))

    for hook_type in (HookType.READ, HookType.UPDATE, HookType.DELETE):
        handler.hooks.register_before(hook_type, own_posts)

    admin = await connect()
    ann = await create(admin, name="Ann")
    bob = await create(admin, name="Bob")
    for user in (ann, bob):
        await admin.ok(
            "create",
            "posts",
            data=[
                {"title": f"{user['name']}-{i}", "user_id": user["id"]}
                for i in range(3)
            ],
        )
    await subscribe(admin, "posts")
    as_ann = await connect(additional_headers={"x-user": str(ann["id"])})
    everything = {"filters": [{"column": "rank", "operator": "gte", "value": 0}]}

    updated = await as_ann.request(
        "update", "posts", data={"rank": 7}, options=everything
    )
    assert updated["success"] is True, updated
    assert sorted(r["title"] for r in updated["data"]) == ["Ann-0", "Ann-1", "Ann-2"]
    notes = await receive(admin, 3)
    assert {n["data"]["user_id"] for n in notes} == {ann["id"]}
    ranks = {r["title"]: r["rank"] for r in await read_all(admin, "posts")}
    assert ranks == {
        "Ann-0": 7,
        "Ann-1": 7,
        "Ann-2": 7,
        "Bob-0": 0,
        "Bob-1": 0,
        "Bob-2": 0,
    }

    # Moving rows out of what the connection may write is refused, and rolled back.
    stolen = await as_ann.request(
        "update", "posts", data={"user_id": bob["id"]}, options=everything
    )
    assert stolen["success"] is False
    assert stolen["error"]["code"] == "unauthorized"
    assert await admin.drain() == []

    deleted = await as_ann.request("delete", "posts", options=everything)
    assert deleted["success"] is True, deleted
    assert deleted["metadata"]["count"] == 3
    notes = await receive(admin, 3)
    assert {(n["operation"], n["data"]["user_id"]) for n in notes} == {
        ("delete", ann["id"])
    }
    left = await read_all(admin, "posts")
    assert sorted(r["title"] for r in left) == ["Bob-0", "Bob-1", "Bob-2"]
    assert await read_all(as_ann, "posts") == []
