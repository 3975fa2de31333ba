"""Reads by key on PostgreSQL through asyncpg directly (``AsyncpgKeyReader``).

The fast path must answer exactly what SQLAlchemy answers: the same values of the same
Python types for every column type, ``None`` for a missing key (also one beyond an
INTEGER column's range), and the same JSON on the wire. Its connections are made like
the engine's (``connect_args`` included), recover when the server kills them, are
dropped when a read is cancelled, and are closed by ``stop()``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tests.support.databases import admin_url
from tests.support.models import MODELS, Post, Thing, User
from tests.support.proxy import TCPProxy, running_proxy
from tests.support.servers import serve
from tests.support.wsclient import WSClient
from websocketspec import Handler, OperationError
from websocketspec.adapters.sqlalchemy import SQLAlchemyAdapter, create_engine
from websocketspec.adapters.sqlalchemy_asyncpg import AsyncpgKeyReader
from websocketspec.query import ReadQuery
from websocketspec.registry import EntityInfo

pytestmark = pytest.mark.parametrize("backend", ["postgresql"])

TIMEOUT = 10.0
APP = "wsspec-fast-reads"
"""The ``application_name`` of the fast path's own engine: its backends are found by it."""
QUERY = ReadQuery(where=None, columns=None, sort=(), limit=100, offset=0)


class Mood(enum.Enum):
    HAPPY = "happy"
    SAD = "sad"


class FastBase(DeclarativeBase):
    pass


class Sample(FastBase):
    """Every column type whose values SQLAlchemy converts or asyncpg decodes itself."""

    __tablename__ = "fast_samples"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    big: Mapped[int | None] = mapped_column(sa.BigInteger)
    small: Mapped[int | None] = mapped_column(sa.SmallInteger)
    ratio: Mapped[float | None] = mapped_column(sa.Float)
    single: Mapped[float | None] = mapped_column(sa.REAL)
    float_as_decimal: Mapped[Decimal | None] = mapped_column(sa.Float(asdecimal=True))
    price: Mapped[Decimal | None] = mapped_column(sa.Numeric(12, 2))
    exact: Mapped[Decimal | None] = mapped_column(sa.Numeric())
    numeric_as_float: Mapped[float | None] = mapped_column(
        sa.Numeric(10, 3, asdecimal=False)
    )
    label: Mapped[str | None] = mapped_column(sa.String(100))
    body: Mapped[str | None] = mapped_column(sa.Text)
    flag: Mapped[bool | None]
    day: Mapped[dt.date | None]
    naive: Mapped[dt.datetime | None] = mapped_column(sa.DateTime())
    aware: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    clock: Mapped[dt.time | None] = mapped_column(sa.Time)
    ident: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    ident_text: Mapped[str | None] = mapped_column(sa.Uuid(as_uuid=False))
    doc: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    docb: Mapped[Any] = mapped_column(JSONB, nullable=True)
    mood: Mapped[Mood | None] = mapped_column(sa.Enum(Mood, name="fast_mood"))
    letter: Mapped[str | None] = mapped_column(sa.Enum("a", "b", name="fast_letter"))
    blob: Mapped[bytes | None] = mapped_column(sa.LargeBinary)


class Code(FastBase):
    """A string-keyed entity."""

    __tablename__ = "fast_codes"

    code: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(100))


FAST_MODELS = {"public.fast_samples": Sample, "public.fast_codes": Code}

FULL: dict[str, Any] = {
    "id": 1,
    "big": 2**62 + 7,
    "small": -32768,
    "ratio": 0.1,
    "single": 1.5,
    "float_as_decimal": 2.25,
    "price": Decimal("1234567890.12"),
    "exact": Decimal("3.14159265358979323846264338327950288"),
    "numeric_as_float": Decimal("2.125"),
    "label": "ünïcode ✓",
    "body": "line\nbreak 'quoted' \"double\"",
    "flag": False,
    "day": dt.date(1999, 12, 31),
    "naive": dt.datetime(2024, 2, 29, 23, 59, 59, 123456),
    "aware": dt.datetime(
        2024,
        2,
        29,
        23,
        59,
        59,
        1,
        tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)),
    ),
    "clock": dt.time(12, 34, 56, 789),
    "ident": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "ident_text": "87654321-4321-8765-4321-876543218765",
    "doc": {"a": [1, 2.5, None, True], "b": {"c": "d"}},
    "docb": [{"x": 1}, "y", 3],
    "mood": Mood.SAD,
    "letter": "b",
    "blob": b"\x00\x01\xff",
}
EMPTY = {"id": 2}
SCALARS = {"id": 3, "doc": "just a string", "docb": 42, "mood": Mood.HAPPY}
CODES = [
    {"code": "abc", "title": "plain"},
    {"code": 'o\'brien "x"', "title": "quotes"},
    {"code": "123", "title": "digits"},
    {"code": "ÄÖÜ ✓", "title": "non-ASCII"},
]

ROWS: list[tuple[type[Any], list[dict[str, Any]]]] = [
    (Sample, [FULL, EMPTY, SCALARS]),
    (Code, CODES),
    (
        User,
        [
            {"id": 1, "name": "Ann", "email": "ann@example.com", "age": 30},
            {"id": 2, "name": "Bob", "email": None, "score": 1.25, "active": False},
        ],
    ),
    (Post, [{"id": 1, "title": "t", "content": "c", "user_id": 1, "rank": 3}]),
    (
        Thing,
        [
            {
                "id": uuid.UUID(int=1),
                "count": 7,
                "ratio": 0.5,
                "price": Decimal("9.99"),
                "label": "l",
                "body": "b",
                "flag": True,
                "day": dt.date(2020, 1, 2),
                "moment": dt.datetime(2020, 1, 2, 3, 4, 5, 6),
                "clock": dt.time(1, 2, 3),
                "doc": {"k": [1, "v"]},
                "blob": b"\x10",
            },
            {"id": uuid.UUID(int=2)},
        ],
    ),
]


@pytest.fixture
async def tables(engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    """The test models' tables and this module's, with rows in each."""
    async with engine.begin() as conn:
        await conn.run_sync(FastBase.metadata.drop_all)
        await conn.run_sync(FastBase.metadata.create_all)
        for model, rows in ROWS:
            for row in rows:  # one by one: each row names other columns
                await conn.execute(sa.insert(model).values(row))
    yield engine
    async with engine.begin() as conn:
        await conn.run_sync(FastBase.metadata.drop_all)


def served(adapter: SQLAlchemyAdapter) -> tuple[Handler, SQLAlchemyAdapter]:
    handler = Handler(adapter)
    for name, model in {**MODELS, **FAST_MODELS}.items():
        handler.registry.register_model(name, model)
    return handler, adapter


def typed(row: dict[str, Any] | None) -> Any:
    """A row with each value's type beside it: 1 == 1.0 == Decimal(1) must not pass."""
    if row is None:
        return None
    return {name: (type(value), value) for name, value in row.items()}


def keys_of(entity: EntityInfo) -> list[tuple[Any, ...]]:
    keys: dict[str, list[tuple[Any, ...]]] = {
        "users": [(1,), (2,), (3,), (2**31,), (2**63 - 1,), (-(2**63),)],
        "posts": [(1,), (2,)],
        "things": [(uuid.UUID(int=1),), (uuid.UUID(int=2),), (uuid.UUID(int=3),)],
        "fast_samples": [(1,), (2,), (3,), (4,), (2**31,), (2**40,), (2**63 - 1,)],
        "fast_codes": [(c["code"],) for c in CODES] + [("missing",), ("",)],
    }
    return keys[entity.name]


async def test_every_column_type_reads_as_sqlalchemy_reads_it(
    tables: AsyncEngine,
) -> None:
    fast, fast_adapter = served(SQLAlchemyAdapter(tables))
    slow, slow_adapter = served(SQLAlchemyAdapter(tables, inline_reads=False))
    assert fast_adapter._key_reader is not None
    assert slow_adapter._key_reader is None
    try:
        found = 0
        for entity in fast.registry:
            other = slow.registry.get(entity.name)
            for key in keys_of(entity):
                async with asyncio.timeout(TIMEOUT):
                    got = await fast_adapter.read_one(entity, key, QUERY)
                    expected = await slow_adapter.read_one(other, key, QUERY)
                assert typed(got) == typed(expected), (entity.name, key)
                if expected is not None:
                    assert list(got or ()) == list(expected), "column order"
                    found += 1
        assert found == 2 + 1 + 2 + 3 + 4  # users, posts, things, samples, codes
        # The values themselves, as inserted (JSON decoded, enums as enums).
        samples = fast.registry.get("fast_samples")
        row = await fast_adapter.read_one(samples, (1,), QUERY)
        assert row is not None
        assert row["doc"] == FULL["doc"]
        assert row["docb"] == FULL["docb"]
        assert row["mood"] is Mood.SAD
        assert row["numeric_as_float"] == 2.125
        assert isinstance(row["numeric_as_float"], float)
        assert row["float_as_decimal"] == Decimal("2.25")
        assert row["aware"] == FULL["aware"]
        assert row["aware"].tzinfo == dt.UTC
        assert row["naive"] == FULL["naive"].replace(tzinfo=dt.UTC)
        assert row["exact"] == FULL["exact"]
        scalars = await fast_adapter.read_one(samples, (3,), QUERY)
        assert scalars is not None
        assert (scalars["doc"], scalars["docb"]) == ("just a string", 42)
    finally:
        await fast_adapter.stop()
        await slow_adapter.stop()


async def test_same_answers_on_the_wire(tables: AsyncEngine) -> None:
    fast, _ = served(SQLAlchemyAdapter(tables))
    slow, _ = served(SQLAlchemyAdapter(tables, inline_reads=False))
    requests: list[tuple[str, Any]] = [
        ("fast_samples", 1),
        ("fast_samples", "2"),
        ("fast_samples", 3),
        ("fast_samples", 4),
        ("fast_samples", str(2**31)),  # beyond INTEGER: not found, not an error
        ("fast_samples", 2**63 - 1),
        ("fast_samples", str(2**64)),  # beyond 64 bits: refused before the database
        ("fast_codes", "abc"),
        ("fast_codes", 123),  # a number for a text key
        ("fast_codes", 'o\'brien "x"'),
        ("fast_codes", "nope"),
        ("fast_codes", "nul \x00 byte"),  # refused before the database
        ("things", str(uuid.UUID(int=1))),
        ("things", str(uuid.UUID(int=9))),
        ("things", "not-a-uuid"),
        ("users", 1),
        ("users", 2),
    ]
    answers: dict[str, list[Any]] = {}
    for name, handler in (("fast", fast), ("slow", slow)):
        async with serve("direct", handler) as base:
            client = await WSClient.connect(f"{base}/ws")
            try:
                answers[name] = []
                for entity, record_id in requests:
                    async with asyncio.timeout(TIMEOUT):
                        answer = await client.request(
                            "read", entity, record_id=record_id
                        )
                    answer.pop("id", None)
                    answer.pop("timestamp", None)
                    answers[name].append(answer)
            finally:
                await client.close()
        await handler.stop()
    assert answers["fast"] == answers["slow"]
    outcomes = [
        a["data"]["title"] if a["success"] and "title" in a["data"] else a["success"]
        for a in answers["fast"]
    ]
    codes = [a["error"]["code"] for a in answers["fast"] if not a["success"]]
    assert outcomes.count(False) == 8, outcomes
    assert sorted(codes) == sorted(["not_found"] * 5 + ["invalid_message"] * 3), codes
    assert outcomes[8] == "digits"


@pytest.fixture
async def fast_engine(
    tables: AsyncEngine, postgres_url: str
) -> AsyncIterator[AsyncEngine]:
    """An engine of its own for the fast path, never used directly: every backend
    named ``APP`` belongs to the fast path's connections."""
    engine = create_engine(
        postgres_url, connect_args={"server_settings": {"application_name": APP}}
    )
    yield engine
    await engine.dispose()


async def backends(name: str = APP) -> list[int]:
    conn = await asyncpg.connect(admin_url(), timeout=TIMEOUT)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1", name
        )
    finally:
        await conn.close()
    return [r["pid"] for r in rows]


async def terminate(name: str = APP) -> int:
    """Kill the fast path's backends from another connection; how many."""
    pids = await backends(name)
    conn = await asyncpg.connect(admin_url(), timeout=TIMEOUT)
    try:
        killed = await conn.fetchval(
            "SELECT count(*) FROM unnest($1::int[]) AS pid "
            "WHERE pg_terminate_backend(pid)",
            pids,
        )
    finally:
        await conn.close()
    return int(killed)


async def gone(name: str = APP) -> bool:
    """Whether the server has let go of every backend of that name (bounded wait)."""
    deadline = time.monotonic() + TIMEOUT
    while await backends(name):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_killed_connections_are_replaced(fast_engine: AsyncEngine) -> None:
    handler, adapter = served(SQLAlchemyAdapter(fast_engine))
    users = handler.registry.get("users")
    samples = handler.registry.get("fast_samples")
    try:
        async with asyncio.timeout(TIMEOUT):
            # Enough reads at once to open every connection the reader holds.
            rows = await asyncio.gather(
                *(adapter.read_one(users, (1 + i % 2,), QUERY) for i in range(40))
            )
        assert all(r is not None for r in rows)
        assert 1 < len(await backends()) <= 5, "connect_args reach the fast path"

        # Killed while idle: the next reads never fail.
        assert await terminate() > 1
        async with asyncio.timeout(TIMEOUT):
            for _ in range(3):
                again = await adapter.read_one(users, (1,), QUERY)
                assert again is not None and again["name"] == "Ann"
            rows = await asyncio.gather(
                *(adapter.read_one(samples, (1,), QUERY) for _ in range(40))
            )
        assert all(r is not None and r["mood"] is Mood.SAD for r in rows)

        # Killed under load: reads in flight may fail (neutrally), later ones work.
        done = asyncio.Event()
        reached = asyncio.Event()
        results: list[Any] = []
        target = 100

        async def reader(i: int) -> None:
            while not done.is_set():
                try:
                    results.append(await adapter.read_one(users, (1 + i % 2,), QUERY))
                except OperationError as exc:
                    results.append(exc)
                if len(results) >= target:
                    reached.set()

        async with asyncio.timeout(TIMEOUT):
            load = [asyncio.create_task(reader(i)) for i in range(32)]
            await reached.wait()  # 32 readers at once: every connection is open
            before = set(await backends())
            assert len(before) == 5
            assert await terminate() == 5
            reached.clear()
            target = len(results) + 200
            await reached.wait()
            done.set()
            await asyncio.gather(*load)
        assert all(isinstance(r, (dict, OperationError)) for r in results)
        async with asyncio.timeout(TIMEOUT):
            for i in range(20):
                assert await adapter.read_one(users, (1 + i % 2,), QUERY) is not None
        now = set(await backends())
        assert 1 <= len(now) <= 5
        assert not now & before, "every killed connection was replaced"
    finally:
        await adapter.stop()
    assert await gone(), "stop() closes the fast path's connections"


async def test_a_refused_statement_keeps_its_connection(
    fast_engine: AsyncEngine,
) -> None:
    handler, adapter = served(SQLAlchemyAdapter(fast_engine))
    codes = handler.registry.get("fast_codes")
    try:
        async with asyncio.timeout(TIMEOUT):
            assert await adapter.read_one(codes, ("abc",), QUERY) is not None
            pids = await backends()
            with pytest.raises(OperationError) as refused:
                await adapter.read_one(codes, ("nul \x00",), QUERY)
            assert refused.value.code == "read_error"
            row = await adapter.read_one(codes, ("abc",), QUERY)
        assert row == {"code": "abc", "title": "plain"}
        assert await backends() == pids
    finally:
        await adapter.stop()


async def test_stop_during_reads(fast_engine: AsyncEngine) -> None:
    handler, adapter = served(SQLAlchemyAdapter(fast_engine))
    users = handler.registry.get("users")
    async with asyncio.timeout(TIMEOUT):
        load = [
            asyncio.create_task(adapter.read_one(users, (1,), QUERY))
            for _ in range(200)
        ]
        await asyncio.sleep(0)
        await adapter.stop()
        results = await asyncio.gather(*load, return_exceptions=True)
    for result in results:
        assert isinstance(result, (dict, OperationError)), result
    assert await gone()


async def test_stop_closes_and_later_reads_use_sqlalchemy(
    fast_engine: AsyncEngine,
) -> None:
    handler, adapter = served(SQLAlchemyAdapter(fast_engine))
    users = handler.registry.get("users")
    async with asyncio.timeout(TIMEOUT):
        assert await adapter.read_one(users, (1,), QUERY) is not None
    assert len(await backends()) == 1
    await adapter.stop()
    assert await gone()
    async with asyncio.timeout(TIMEOUT):
        assert await adapter.read_one(users, (1,), QUERY) is not None


@pytest.fixture
async def proxy() -> AsyncIterator[TCPProxy]:
    target = urlsplit(admin_url())
    async with running_proxy(target.hostname or "127.0.0.1", target.port or 5432) as p:
        yield p


async def test_cancelled_read_drops_its_connection(
    tables: AsyncEngine, postgres_url: str, proxy: TCPProxy
) -> None:
    url = urlsplit(postgres_url)
    user, at, _ = url.netloc.rpartition("@")
    proxied = create_engine(
        urlunsplit(url._replace(netloc=f"{user}{at}127.0.0.1:{proxy.port}"))
    )
    handler, adapter = served(SQLAlchemyAdapter(proxied))
    users = handler.registry.get("users")
    try:
        async with asyncio.timeout(TIMEOUT):
            assert await adapter.read_one(users, (1,), QUERY) is not None
        opened = proxy.accepted
        proxy.hold()
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(adapter.read_one(users, (1,), QUERY), 0.3)
        # Dropped at once: no graceful close for the held server to run out.
        assert time.monotonic() - started < 2.0
        proxy.restore()
        async with asyncio.timeout(TIMEOUT):
            for _ in range(3):
                assert await adapter.read_one(users, (2,), QUERY) is not None
        assert proxy.accepted == opened + 1, (
            proxy.accepted,
            opened,
            "one new connection replaced the dropped one",
        )

        proxy.sever()
        with pytest.raises(OperationError) as failed:
            async with asyncio.timeout(TIMEOUT):
                await adapter.read_one(users, (1,), QUERY)
        assert failed.value.code == "read_error"
        proxy.restore()
        async with asyncio.timeout(TIMEOUT):
            assert await adapter.read_one(users, (1,), QUERY) is not None
    finally:
        await adapter.stop()
        await proxied.dispose()


async def test_only_engines_it_can_serve(
    tables: AsyncEngine, postgres_url: str
) -> None:
    assert AsyncpgKeyReader.supports(tables)
    static = create_engine(postgres_url, poolclass=sa.pool.StaticPool)
    translated = tables.execution_options(schema_translate_map={None: "other"})
    try:
        assert not AsyncpgKeyReader.supports(static)
        assert SQLAlchemyAdapter(static)._key_reader is None
        assert not AsyncpgKeyReader.supports(translated)
        with pytest.raises(ValueError, match="StaticPool"):
            AsyncpgKeyReader(static)
    finally:
        await static.dispose()


async def test_small_and_null_pools(tables: AsyncEngine, postgres_url: str) -> None:
    """Never more connections than the engine's pool size; a NullPool works too."""
    small = create_engine(
        postgres_url,
        pool_size=2,
        max_overflow=0,
        connect_args={"server_settings": {"application_name": APP}},
    )
    unpooled = create_engine(postgres_url, poolclass=sa.pool.NullPool)
    try:
        for engine in (small, unpooled):
            handler, adapter = served(SQLAlchemyAdapter(engine))
            users = handler.registry.get("users")
            try:
                async with asyncio.timeout(TIMEOUT):
                    rows = await asyncio.gather(
                        *(adapter.read_one(users, (1,), QUERY) for _ in range(50))
                    )
                assert all(r is not None and r["name"] == "Ann" for r in rows)
                if engine is small:
                    assert len(await backends()) == 2
            finally:
                await adapter.stop()
        assert await gone()
    finally:
        await small.dispose()
        await unpooled.dispose()
