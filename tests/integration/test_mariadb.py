"""MariaDB through the SQLAlchemy adapter, past what the conformance suite shows.

The conformance suite (``tests/conformance``, backend ``mariadb``) runs every behaviour
over a socket. These tests call the adapter directly on a MariaDB database of this
module's own (:mod:`tests.support.mariadb`), for what a few rows cannot show:

- ``ilike`` folds exactly like :meth:`str.lower` for every character that has a lower
  case (MariaDB's ``LOWER()`` misses 737 of them), ``İ`` and final sigmas included;
- text in other character sets than ``utf8mb4`` compares the same way;
- native UUID columns sort and compare in the in-memory matcher's order;
- every ``DATETIME`` holds UTC, also for a column declared with a time zone;
- concurrent writers with idempotency keys do not deadlock (READ COMMITTED);
- the path for servers without ``INSERT … RETURNING`` (MySQL, MariaDB < 10.5).
"""

# Look-alike letters (Greek, dotted I, Kelvin sign, long s) are the point of these tests.
# ruff: noqa: RUF001

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tests.support.mariadb import create_database, drop_database
from tests.support.models import MODELS, Base
from websocketspec import Handler
from websocketspec.adapters.base import Change, Remember, Write
from websocketspec.adapters.sqlalchemy import (
    SQLAlchemyAdapter,
    async_url,
    create_engine,
)
from websocketspec.adapters.sqlalchemy_log import KEYS
from websocketspec.protocol.filters import compile_filters, matches
from websocketspec.protocol.messages import FilterOption, QueryOptions, SortOption
from websocketspec.query import Limits, build_read_query, validate_data
from websocketspec.types import Record

TIMEOUT = 60.0
LIMITS = Limits(max_page_size=10_000, max_in=50)


class Extra(DeclarativeBase):
    pass


class Legacy(Extra):
    """Text in older character sets, as tables made before utf8mb4 have it."""

    __tablename__ = "legacy"
    __table_args__ = {"mysql_charset": "latin1"}  # noqa: RUF012 - SQLAlchemy's own

    id: Mapped[int] = mapped_column(primary_key=True)
    latin: Mapped[str | None] = mapped_column(sa.String(50))
    utf8: Mapped[str | None] = mapped_column(
        sa.String(50).with_variant(
            mysql.VARCHAR(50, charset="utf8mb3"), "mysql", "mariadb"
        )
    )


class Event(Extra):
    """A column declared with a time zone, which MariaDB's DATETIME does not keep."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))


@pytest.fixture(scope="module")
def mariadb_url() -> Iterator[str]:
    """A MariaDB database of this module's own, as a ``mysql://`` URL."""
    url = asyncio.run(asyncio.wait_for(create_database(), TIMEOUT))
    yield url
    asyncio.run(asyncio.wait_for(drop_database(url), TIMEOUT))


@pytest.fixture(params=["mysql", "mariadb"])
def scheme(request: pytest.FixtureRequest) -> str:
    """``mysql://`` (SQLAlchemy's ``mysql`` dialect) or ``mariadb://`` (``mariadb``)."""
    return str(request.param)


@pytest.fixture
async def handler(mariadb_url: str, scheme: str) -> AsyncIterator[Handler]:
    """The test models on empty tables, served by a started handler (no socket)."""
    url = f"{scheme}://{mariadb_url.partition('://')[2]}"
    adapter = SQLAlchemyAdapter(url)
    assert adapter.dialect == scheme
    async with asyncio.timeout(TIMEOUT), adapter.engine.begin() as conn:
        for metadata in (Base.metadata, Extra.metadata):
            await conn.run_sync(metadata.drop_all)
            await conn.run_sync(metadata.create_all)
    handler = Handler(adapter)
    for name, model in {
        **MODELS,
        "public.legacy": Legacy,
        "public.events": Event,
    }.items():
        handler.registry.register_model(name, model)
    async with asyncio.timeout(TIMEOUT):
        await handler.start()
    try:
        yield handler
    finally:
        async with asyncio.timeout(TIMEOUT):
            await handler.stop()


async def _accept(changes: list[Change]) -> list[Record | None]:
    return [c.new for c in changes]


async def create(handler: Handler, entity: str, rows: Sequence[Record]) -> list[Record]:
    info = handler.registry.get(entity)
    valid = tuple(validate_data(info, row, partial=False) for row in rows)
    async with asyncio.timeout(TIMEOUT):
        written = await handler.adapter.write(
            info, Write("create", rows=valid), _accept
        )
    assert written is not None
    return [c.new for c in written[1] if c.new is not None]


async def read(
    handler: Handler,
    entity: str,
    filters: Sequence[FilterOption] = (),
    sort: Sequence[SortOption] = (),
) -> list[Record]:
    info = handler.registry.get(entity)
    options = QueryOptions(
        filters=list(filters), sort=list(sort), limit=LIMITS.max_page_size
    )
    query = build_read_query(handler.registry, info, options, [], LIMITS)
    async with asyncio.timeout(TIMEOUT):
        rows, total = await handler.adapter.read_many(info, query)
    assert total == len(rows)
    return rows


async def assert_as_in_memory(
    handler: Handler, entity: str, stored: list[Record], filters: list[FilterOption]
) -> None:
    """The rows SQL finds are the rows the subscription matcher accepts."""
    types = handler.registry.get(entity).column_types
    expr = compile_filters(filters, types, max_in=LIMITS.max_in)
    expected = sorted(row["id"] for row in stored if matches(expr, row))
    found = sorted(row["id"] for row in await read(handler, entity, filters))
    assert found == expected, (filters, [r for r in stored if r["id"] in found])


# -- ilike ---------------------------------------------------------------------------------

CASED = [
    chr(cp)
    for cp in range(0x110000)
    if not 0xD800 <= cp <= 0xDFFF and chr(cp).lower() != chr(cp)
]
"""Every character that :meth:`str.lower` changes (1433 in Unicode 14)."""


@pytest.mark.parametrize("scheme", ["mysql"])
async def test_ilike_folds_every_character_as_python_does(handler: Handler) -> None:
    lowered = sorted({c.lower() for c in CASED})
    texts = CASED + [x for x in lowered if x not in CASED]
    stored = await create(
        handler, "users", [{"name": t, "status": "", "active": True} for t in texts]
    )
    by_name = {row["name"]: row["id"] for row in stored}
    failures = []
    info = handler.registry.get("users")
    for pattern in lowered:
        filters = [FilterOption("name", "ilike", pattern)]
        query = build_read_query(
            handler.registry, info, QueryOptions(filters=filters), [], LIMITS
        )
        async with asyncio.timeout(TIMEOUT):
            rows, _ = await handler.adapter.read_many(info, query)
        expected = {t for t in texts if t.lower() == pattern}
        if {row["name"] for row in rows} != expected:
            failures.append((pattern, sorted(r["name"] for r in rows), expected))
    assert failures == []
    assert len(by_name) == len(texts) > 2800


CONTEXTS = [
    "Σ", "ΑΣ", "ΑΣΑ", "ΑΣ Σ", "Α'Σ", "ΑΣ'", "ΑΣ'Α", "ΑΣΣ", "Α.Σ.Σ", "ʰΣ", "ΑʰΣ",
    "ΑΣʰ", "ΑΣ\u0301", "Α\u0301Σ", "ΣΑ", "ΑΣ1", "aΣb", "ᏴΣ", "ΑΣ\u00ad", "σς", "ΣΣΣ",
    "İ", "Iİ", "İΣ", "ΑİΣ", "i\u0307", "I\u0307", "KELVIN K", "ſ", "STRAẞE", "straße",
]  # fmt: skip
"""Texts whose lowering depends on context (final sigma) or changes length (İ)."""


@pytest.mark.parametrize("scheme", ["mysql"])
async def test_ilike_follows_final_sigma_and_dotted_i(handler: Handler) -> None:
    stored = await create(
        handler, "users", [{"name": t, "status": "", "active": True} for t in CONTEXTS]
    )
    patterns = {p for t in CONTEXTS for p in (t, t.lower(), t.upper(), t.swapcase())}
    patterns |= {"%ς", "%σ", "%ς%", "%σ%", "_ς", "%σ_", "_", "__", "___", "i%"}
    patterns |= {"%\u0307", "%\u0307%", "i\u0307", "i_", "_\u0307", "%k%", "s", "%ss%"}
    for pattern in sorted(patterns):
        await assert_as_in_memory(
            handler, "users", stored, [FilterOption("name", "ilike", pattern)]
        )
        await assert_as_in_memory(
            handler, "users", stored, [FilterOption("name", "like", pattern)]
        )


TRICKY = "ΣσςΑαİiI'ʰ\u0301\u0307 .ẞßKkKſsᏴꮼ%_\\"


@st.composite
def ilike_case(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    texts = draw(st.lists(st.text(TRICKY, max_size=6), min_size=1, max_size=8))
    patterns = []
    for _ in range(3):
        base = draw(st.sampled_from(texts))
        out = []
        for ch in base:
            action = draw(st.sampled_from(["keep", "keep", "one", "many", "case"]))
            out.append(
                {
                    "keep": ch,
                    "one": "_",
                    "many": "%",
                    "case": ch.swapcase(),
                }[action]
            )
        patterns.append("".join(out))
    return texts, patterns


# 100 derandomized examples (the profile of tests/conftest.py): 1-8 texts over letters
# whose lowering is special, 3 patterns derived from them (wildcards, case swapped).
@pytest.mark.parametrize("scheme", ["mariadb"])
@settings(max_examples=100)
@given(case=ilike_case())
async def test_ilike_equals_the_matcher_on_tricky_text(
    handler: Handler, case: tuple[list[str], list[str]]
) -> None:
    texts, patterns = case
    users = handler.registry.get("users")
    async with asyncio.timeout(TIMEOUT):
        await handler.adapter.write(users, Write("delete"), _accept)  # every row
    stored = await create(
        handler, "users", [{"name": t, "status": "", "active": True} for t in texts]
    )
    for pattern in patterns:
        for op in ("ilike", "like"):
            await assert_as_in_memory(
                handler, "users", stored, [FilterOption("name", op, pattern)]
            )


# -- other character sets, UUIDs, time zones ------------------------------------------------


async def test_text_in_older_character_sets_compares_by_code_point(
    handler: Handler,
) -> None:
    words = ["a", "A", "a ", "ä", "Ä", "ab", "B", "é", "É", "", "zz", "ß"]
    stored = await create(
        handler, "legacy", [{"latin": w, "utf8": w + "\u20ac"} for w in words]
    )
    assert [(r["latin"], r["utf8"]) for r in stored] == [(w, w + "€") for w in words]
    for column in ("latin", "utf8"):
        for op, value in [
            ("eq", "a"),
            ("eq", "ä€"),
            ("eq", "中"),
            ("in", ["中", "a", "😀"]),
            ("neq", "😀"),
            ("neq", "A"),
            ("in", ["a", "Ä€", "b"]),
            ("not_in", ["a", "a€"]),
            ("gt", "a"),
            ("lt", "a€"),
            ("between", ["A", "b"]),
            ("like", "a%"),
            ("like", "Ä%"),
            ("ilike", "ä%"),
            ("ilike", "A_"),
            ("contains", " "),
        ]:
            await assert_as_in_memory(
                handler, "legacy", stored, [FilterOption(column, op, value)]
            )
        ordered = await read(handler, "legacy", sort=[SortOption(column, "asc")])
        assert [r[column] for r in ordered] == sorted(r[column] for r in stored)


async def test_uuids_sort_and_compare_as_the_matcher_does(handler: Handler) -> None:
    keys = sorted(
        [uuid.uuid4() for _ in range(12)] + [uuid.uuid1() for _ in range(6)],
        key=lambda u: u.hex[::-1],  # some order other than the sorted one
    )
    stored = await create(handler, "things", [{"id": str(k)} for k in keys])
    ascending = await read(handler, "things", sort=[SortOption("id", "asc")])
    assert [str(r["id"]) for r in ascending] == sorted(str(k) for k in keys)
    descending = await read(handler, "things", sort=[SortOption("id", "desc")])
    assert [str(r["id"]) for r in descending] == sorted(
        (str(k) for k in keys), reverse=True
    )
    middle = str(sorted(keys)[len(keys) // 2])
    for op in ("gt", "gte", "lt", "lte", "eq", "neq"):
        await assert_as_in_memory(
            handler, "things", stored, [FilterOption("id", op, middle)]
        )
    await assert_as_in_memory(
        handler,
        "things",
        stored,
        [FilterOption("id", "between", [str(min(keys)), middle])],
    )


async def test_datetimes_are_stored_in_utc_without_a_time_zone(
    handler: Handler,
) -> None:
    (row,) = await create(handler, "events", [{"at": "2024-05-01T12:30:00+02:00"}])
    assert row["at"] == dt.datetime(2024, 5, 1, 10, 30, tzinfo=dt.UTC)
    for value in ("2024-05-01T10:30:00Z", "2024-05-01T05:30:00-05:00"):
        found = await read(handler, "events", [FilterOption("at", "eq", value)])
        assert [r["id"] for r in found] == [row["id"]]
    (moment,) = await create(
        handler, "things", [{"moment": "2024-02-29T23:30:00.123456-05:30"}]
    )
    assert moment["moment"] == dt.datetime(2024, 3, 1, 5, 0, 0, 123456, tzinfo=dt.UTC)


# -- writes --------------------------------------------------------------------------------


async def test_concurrent_idempotent_writes_do_not_deadlock(handler: Handler) -> None:
    """Under InnoDB's REPEATABLE READ, most of these die of gap-lock deadlocks."""
    users = handler.registry.get("users")
    identity = uuid.uuid4().hex  # the keys table outlives each test's tables

    async def keyed(n: int) -> Any:
        row = validate_data(users, {"name": f"n{n}"}, partial=False)
        remember = Remember(identity, f"key-{n}", f"print-{n}", 60.0)
        write = Write("create", rows=(row,), remember=remember)
        return await handler.adapter.write(users, write, _accept)

    async with asyncio.timeout(TIMEOUT):
        results = await asyncio.gather(*(keyed(n) for n in range(30)))
    assert all(r is not None for r in results)
    assert len(await read(handler, "users")) == 30
    async with asyncio.timeout(TIMEOUT):
        found = await handler.adapter.remembered(Remember(identity, "key-7", "", 60.0))
    assert found is not None and found[0] == "print-7"


@pytest.mark.parametrize("scheme", ["mysql"])
async def test_idempotency_keys_keep_their_time_to_the_second(handler: Handler) -> None:
    """MariaDB's FLOAT would round the epoch seconds to 128: keys would expire early."""
    users = handler.registry.get("users")
    remember = Remember(uuid.uuid4().hex, "key", "print", 2.0)
    row = validate_data(users, {"name": "once"}, partial=False)
    before = time.time()
    async with asyncio.timeout(TIMEOUT):
        await handler.adapter.write(
            users, Write("create", rows=(row,), remember=remember), _accept
        )
        assert await handler.adapter.remembered(remember) is not None
        adapter = handler.adapter
        assert isinstance(adapter, SQLAlchemyAdapter)
        async with adapter.engine.connect() as conn:
            stored = (
                await conn.execute(
                    sa.select(KEYS.c.created_at).where(
                        KEYS.c.identity == remember.identity
                    )
                )
            ).scalar_one()
    assert before <= stored <= time.time()


@pytest.mark.parametrize("scheme", ["mysql"])
async def test_writes_without_insert_returning(handler: Handler) -> None:
    """MySQL and MariaDB < 10.5 have no ``INSERT … RETURNING``: the adapter then
    re-reads each row by the key the insert took. SQLAlchemy derives the capability
    from the server's version; turning it off here runs that path on this server."""
    adapter = handler.adapter
    assert isinstance(adapter, SQLAlchemyAdapter)
    assert adapter.engine.dialect.insert_returning  # MariaDB >= 10.5, read on connect
    adapter.engine.dialect.insert_returning = False
    users = await create(
        handler, "users", [{"name": "ann"}, {"name": "bob", "status": "away"}]
    )
    assert [(u["name"], u["status"], u["active"]) for u in users] == [
        ("ann", "active", True),
        ("bob", "away", True),
    ]
    assert users[1]["id"] == users[0]["id"] + 1
    (post,) = await create(
        handler, "posts", [{"title": "t", "user_id": users[0]["id"]}]
    )
    assert (post["content"], post["rank"]) == ("", 0)
    (thing,) = await create(handler, "things", [{"label": "x"}])
    assert isinstance(thing["id"], uuid.UUID) and thing["id"].version == 4
    assert await read(handler, "things", [FilterOption("id", "eq", thing["id"])]) == [
        thing
    ]


@pytest.mark.parametrize("returning", [True, False])
async def test_grouped_creates_answer_each_its_own_row(
    handler: Handler, returning: bool
) -> None:
    """A group of creates: one statement per run of rows naming the same columns
    where the server returns rows in order, one statement per row otherwise."""
    adapter = handler.adapter
    assert isinstance(adapter, SQLAlchemyAdapter)
    adapter.engine.dialect.insert_returning = returning
    info = handler.registry.get("users")
    rows = [
        {"name": f"g{i}", **({"status": "away"} if i % 3 == 0 else {})}
        for i in range(40)
    ]
    items = [
        (Write("create", rows=(validate_data(info, row, partial=False),)), _accept)
        for row in rows
    ]
    async with asyncio.timeout(TIMEOUT):
        outcomes = await adapter.create_group(info, items)
    created = [result[0] for result, _ in outcomes]
    assert [(u["name"], u["status"]) for u in created] == [
        (row["name"], row.get("status", "active")) for row in rows
    ]
    assert [u["id"] for u in created] == sorted(u["id"] for u in created)
    assert sorted(await read(handler, "users"), key=lambda u: u["id"]) == created


def test_plain_urls_name_asyncmy() -> None:
    assert async_url("mysql://u:p@127.0.0.1:3306/app") == (
        "mysql+asyncmy://u:p@127.0.0.1:3306/app"
    )
    assert async_url("mariadb://u@h/app") == "mariadb+asyncmy://u@h/app"
    assert async_url("mysql+aiomysql://u@h/app") == "mysql+aiomysql://u@h/app"
    engine = create_engine("mariadb://u@h/app")
    assert (engine.dialect.name, engine.dialect.driver) == ("mariadb", "asyncmy")
