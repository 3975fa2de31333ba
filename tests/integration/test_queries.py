r"""Every query option over a real socket, with identical results on SQLite and PostgreSQL.

Rows are seeded straight into the database; every behaviour under test goes through
the socket. Expected results are exact sets (or lists, where order matters) of names.
The seeded names cover the awkward cases: case pairs (``Alice``/``alice`` patterns,
``Émile``/``émile``), LIKE's own characters (``%``, ``_``, ``\``) and code-point order
(``"B" < "Zed" < "a…"``).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.models import Post, Thing, User
from tests.support.wsclient import WSClient
from websocketspec import Config, Handler

Filter = dict[str, Any]

USER_COLUMNS = ("id", "name", "email", "status", "age", "score", "active")
USERS: list[dict[str, Any]] = [
    dict(zip(USER_COLUMNS, row, strict=True))
    for row in [
        (1, "Alice", "alice@example.com", "active", 30, 1.5, True),
        (2, "bob", None, "active", 25, None, True),
        (3, "Émile", "emile@example.fr", "inactive", None, 3.0, False),
        (4, "émile", "emile2@example.fr", "active", 41, 2.5, True),
        (5, "50% off", "sale@example.com", "banned", 30, 0.0, False),
        (6, "500 off", "five@example.com", "banned", None, None, True),
        (7, "a_b", "ab@example.com", "active", 19, 4.0, True),
        (8, "a\\b", "a.b@example.com", "inactive", 25, None, False),
        (9, "axb", None, "active", 60, 5.0, True),
        (10, "B", "b@example.com", "inactive", 19, 1.0, True),
        (11, "Zed", "ZED@EXAMPLE.COM", "active", None, 2.0, False),
    ]
]
ALL = {user["name"] for user in USERS}
NAME = {user["id"]: user["name"] for user in USERS}

POSTS: list[dict[str, Any]] = [
    {"id": 1, "title": "A1", "user_id": 1, "rank": 3, "content": "alpha"},
    {"id": 2, "title": "A2", "user_id": 1, "rank": 1, "content": "beta"},
    {"id": 3, "title": "A3", "user_id": 1, "rank": 2, "content": "gamma"},
    {"id": 4, "title": "A4", "user_id": 1, "rank": 0, "content": "delta"},
    {"id": 5, "title": "B1", "user_id": 2, "rank": 5, "content": ""},
    {"id": 6, "title": "B2", "user_id": 2, "rank": 5, "content": ""},
    {"id": 7, "title": "E1", "user_id": 4, "rank": 1, "content": "é"},
]

T1 = uuid.UUID("11111111-1111-4111-8111-111111111111")
T2 = uuid.UUID("22222222-2222-4222-8222-222222222222")
T3 = uuid.UUID("33333333-3333-4333-8333-333333333333")
THINGS: list[dict[str, Any]] = [
    {
        "id": T1,
        "label": "t1",
        "count": 1,
        "ratio": 0.5,
        "price": Decimal("12.50"),
        "flag": True,
        "day": dt.date(2024, 1, 1),
        "moment": dt.datetime(2024, 5, 1, 10, 30),  # naive: UTC
        "clock": dt.time(8, 0),
        "doc": {"k": 1},
    },
    {
        "id": T2,
        "label": "t2",
        "count": 2,
        "ratio": 0.05,
        "price": Decimal("9.99"),
        "flag": False,
        "day": dt.date(2024, 6, 1),
        "moment": dt.datetime(2024, 5, 1, 11, 0),
        "clock": dt.time(18, 30),
        "doc": None,
    },
    {
        "id": T3,
        "label": "t3",
        "count": None,
        "ratio": None,
        "price": None,
        "flag": None,
        "day": None,
        "moment": None,
        "clock": None,
        "doc": None,
    },
]


@pytest.fixture
def config(request: pytest.FixtureRequest) -> Config:
    """The default settings, or those a test passes with ``indirect=True``."""
    return getattr(request, "param", None) or Config()


LINGUISTIC_COLUMNS = [
    ("users", "name", "varchar(200)"),
    ("users", "email", "varchar(200)"),
    ("users", "status", "varchar(50)"),
    ("posts", "title", "varchar(200)"),
    ("posts", "content", "text"),
    ("things", "label", "varchar(100)"),
]


@pytest.fixture
async def seeded(handler: Handler, engine: AsyncEngine) -> None:
    """Users, posts and things, inserted directly (after the adapter set up the engine)."""
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Most real databases have a linguistic default collation ("a" < "B");
            # the test cluster's is C. Give the text columns one, so that code-point
            # order has to come from the adapter.
            for table, column, sql_type in LINGUISTIC_COLUMNS:
                await conn.exec_driver_sql(
                    f'ALTER TABLE {table} ALTER COLUMN {column} TYPE {sql_type} COLLATE "und-x-icu"'
                )
        # Stored out of key order, so that only the sort can put ties in key order.
        await conn.execute(sa.insert(User), USERS[::-1])
        await conn.execute(sa.insert(Post), POSTS[::-1])
        for thing in THINGS:
            # Left out rather than None: SQLAlchemy stores a None JSON value as 'null'.
            values = {k: v for k, v in thing.items() if v is not None}
            await conn.execute(sa.insert(Thing).values(values))


@pytest.fixture
async def db(seeded: None, client: WSClient) -> WSClient:
    """A client of a server over the seeded tables."""
    return client


def f(
    column: str, operator: str, value: Any = None, logic: str | None = None
) -> Filter:
    out: Filter = {"column": column, "operator": operator}
    if value is not None:
        out["value"] = value
    if logic is not None:
        out["logic_operator"] = logic
    return out


async def read(
    client: WSClient, entity: str = "users", **options: Any
) -> list[dict[str, Any]]:
    options.setdefault("limit", 1000)
    rows = await client.ok("read", entity, options=options)
    assert isinstance(rows, list)
    return rows


async def check(
    client: WSClient,
    cases: list[tuple[Filter | list[Filter], set[str]]],
    *,
    entity: str = "users",
    key: str = "name",
) -> None:
    """Run each filter case; assert every result set at once, so a diff shows all."""
    got: dict[str, set[str]] = {}
    want: dict[str, set[str]] = {}
    for index, (filters, expected) in enumerate(cases):
        flist = filters if isinstance(filters, list) else [filters]
        label = f"{index}: {json.dumps(flist, ensure_ascii=False)}"
        rows = await read(client, entity, filters=flist)
        got[label] = {row[key] for row in rows}
        want[label] = expected
    assert got == want


async def error_code(client: WSClient, **options: Any) -> str:
    answer = await client.request("read", "users", options=options)
    assert answer["success"] is False, answer
    return str(answer["error"]["code"])


# -- operators ----------------------------------------------------------------------


async def test_equality_operators_and_case_insensitive_names(db: WSClient) -> None:
    await check(
        db,
        [
            (f("age", "eq", 30), {"Alice", "50% off"}),
            (f("age", "EQ", 30), {"Alice", "50% off"}),
            (f("age", "Eq", 30), {"Alice", "50% off"}),
            (f("name", "eq", "bob"), {"bob"}),
            (f("name", "eq", "Bob"), set()),
            (f("name", "eq", "Émile"), {"Émile"}),
            (f("active", "eq", False), {"Émile", "50% off", "a\\b", "Zed"}),
            (f("active", "neq", True), {"Émile", "50% off", "a\\b", "Zed"}),
            (
                f("status", "NEQ", "active"),
                {"Émile", "50% off", "500 off", "a\\b", "B"},
            ),
            # NULL never matches neq
            (f("age", "neq", 30), {"bob", "émile", "a_b", "a\\b", "axb", "B"}),
            (
                f("email", "neq", "alice@example.com"),
                ALL - {"Alice", "bob", "axb"},
            ),
        ],
    )


async def test_eq_null_means_is_null(db: WSClient) -> None:
    rows = await read(db, filters=[{"column": "age", "operator": "eq", "value": None}])
    assert {row["name"] for row in rows} == {"Émile", "500 off", "Zed"}
    rows = await read(db, filters=[{"column": "email", "operator": "eq"}])
    assert {row["name"] for row in rows} == {"bob", "axb"}
    rows = await read(db, filters=[{"column": "age", "operator": "neq", "value": None}])
    assert {row["name"] for row in rows} == ALL - {"Émile", "500 off", "Zed"}


async def test_null_operators(db: WSClient) -> None:
    await check(
        db,
        [
            (f("email", "is_null"), {"bob", "axb"}),
            (f("email", "IS_NULL"), {"bob", "axb"}),
            (f("email", "is_not_null"), ALL - {"bob", "axb"}),
            (f("age", "is_null"), {"Émile", "500 off", "Zed"}),
            (f("age", "Is_Not_Null"), ALL - {"Émile", "500 off", "Zed"}),
            (f("name", "is_null"), set()),
        ],
    )


async def test_ordering_operators_on_numbers(db: WSClient) -> None:
    await check(
        db,
        [
            (f("age", "gt", 30), {"émile", "axb"}),
            (f("age", "gte", 30), {"Alice", "50% off", "émile", "axb"}),
            (f("age", "lt", 25), {"a_b", "B"}),
            (f("age", "LTE", 25), {"a_b", "B", "bob", "a\\b"}),
            (f("score", "gt", 2.0), {"Émile", "émile", "a_b", "axb"}),
            (f("score", "gt", 2), {"Émile", "émile", "a_b", "axb"}),
            (f("score", "lte", 1), {"50% off", "B"}),
            (f("age", "between", [25, 30]), {"Alice", "bob", "50% off", "a\\b"}),
            (f("age", "BETWEEN", [30, 25]), set()),
            (f("score", "between", [1.0, 2.5]), {"Alice", "émile", "B", "Zed"}),
            (f("age", "between", [19, 19]), {"a_b", "B"}),
        ],
    )


async def test_text_compares_by_code_point(db: WSClient) -> None:
    await check(
        db,
        [
            (f("name", "lt", "a"), {"50% off", "500 off", "Alice", "B", "Zed"}),
            (f("name", "gt", "Zed"), {"a\\b", "a_b", "axb", "bob", "Émile", "émile"}),
            (f("name", "gte", "bob"), {"bob", "Émile", "émile"}),
            (f("name", "lte", "B"), {"50% off", "500 off", "Alice", "B"}),
            (f("name", "gt", "z"), {"Émile", "émile"}),
            (f("name", "gt", "Émile"), {"émile"}),
            (f("name", "between", ["B", "a_b"]), {"B", "Zed", "a\\b", "a_b"}),
        ],
    )
    rows = await read(db, columns=["name"], sort=[{"column": "name"}])
    assert [row["name"] for row in rows] == [
        "50% off",
        "500 off",
        "Alice",
        "B",
        "Zed",
        "a\\b",
        "a_b",
        "axb",
        "bob",
        "Émile",
        "émile",
    ]


async def test_like_is_case_sensitive_and_ilike_is_not(db: WSClient) -> None:
    await check(
        db,
        [
            (f("name", "like", "alice"), set()),
            (f("name", "like", "Alice"), {"Alice"}),
            (f("name", "like", "%li%"), {"Alice"}),
            (f("name", "like", "%LI%"), set()),
            (f("name", "ilike", "alice"), {"Alice"}),
            (f("name", "ILIKE", "%LI%"), {"Alice"}),
            (f("name", "like", "b"), set()),
            (f("name", "like", "B"), {"B"}),
            (f("name", "ilike", "b"), {"B"}),
            (f("name", "ilike", "BOB"), {"bob"}),
            (
                f("email", "like", "%@example.com"),
                {"Alice", "50% off", "500 off", "a_b", "a\\b", "B"},
            ),
            (
                f("email", "ilike", "%@example.com"),
                {"Alice", "50% off", "500 off", "a_b", "a\\b", "B", "Zed"},
            ),
            (f("email", "ilike", "ZED@%"), {"Zed"}),
        ],
    )


async def test_like_and_ilike_on_non_ascii(db: WSClient) -> None:
    await check(
        db,
        [
            (f("name", "like", "É%"), {"Émile"}),
            (f("name", "like", "é%"), {"émile"}),
            (f("name", "like", "émile"), {"émile"}),
            (f("name", "like", "ÉMILE"), set()),
            (f("name", "like", "%mile"), {"Émile", "émile"}),
            (f("name", "ilike", "é%"), {"Émile", "émile"}),
            (f("name", "ilike", "É%"), {"Émile", "émile"}),
            (f("name", "ilike", "ÉMILE"), {"Émile", "émile"}),
            (f("name", "ilike", "_MILE"), {"Émile", "émile"}),
        ],
    )


async def test_like_wildcards_and_escape(db: WSClient) -> None:
    await check(
        db,
        [
            (f("name", "like", "a_b"), {"a_b", "a\\b", "axb"}),
            (f("name", "like", "a\\_b"), {"a_b"}),
            (f("name", "ilike", "A_B"), {"a_b", "a\\b", "axb"}),
            (f("name", "ilike", "A\\_B"), {"a_b"}),
            (f("name", "like", "a\\\\b"), {"a\\b"}),
            (f("name", "like", "50%"), {"50% off", "500 off"}),
            (f("name", "like", "50\\%%"), {"50% off"}),
            (f("name", "like", "50\\% off"), {"50% off"}),
            (f("name", "like", "%\\%%"), {"50% off"}),
            (f("name", "like", "_"), {"B"}),
            (f("name", "like", "___"), {"a_b", "a\\b", "axb", "bob", "Zed"}),
            (f("name", "like", "%"), ALL),
            (f("name", "like", "%o%f"), {"50% off", "500 off"}),
        ],
    )


async def test_contains_startswith_endswith_treat_wildcards_literally(
    db: WSClient,
) -> None:
    await check(
        db,
        [
            (f("name", "contains", "%"), {"50% off"}),
            (f("name", "contains", "_"), {"a_b"}),
            (f("name", "contains", "\\"), {"a\\b"}),
            (f("name", "contains", "mile"), {"Émile", "émile"}),
            (f("name", "contains", "LIC"), set()),
            (f("name", "contains", "lic"), {"Alice"}),
            (f("name", "CONTAINS", " "), {"50% off", "500 off"}),
            (f("name", "startswith", "a_"), {"a_b"}),
            (f("name", "startswith", "a\\"), {"a\\b"}),
            (f("name", "startswith", "a"), {"a_b", "a\\b", "axb"}),
            (f("name", "startswith", "50%"), {"50% off"}),
            (f("name", "startswith", "50"), {"50% off", "500 off"}),
            (f("name", "startswith", "É"), {"Émile"}),
            (f("name", "endswith", "\\b"), {"a\\b"}),
            (f("name", "endswith", "_b"), {"a_b"}),
            (f("name", "endswith", "b"), {"a_b", "a\\b", "axb", "bob"}),
            (f("name", "ENDSWITH", " off"), {"50% off", "500 off"}),
            (f("email", "endswith", ".fr"), {"Émile", "émile"}),
        ],
    )


async def test_in_and_not_in(db: WSClient) -> None:
    await check(
        db,
        [
            (f("name", "in", ["bob", "Zed", "nobody"]), {"bob", "Zed"}),
            (f("name", "IN", ["BOB"]), set()),
            (f("age", "in", [19, 60]), {"a_b", "B", "axb"}),
            (f("age", "in", [19, 19]), {"a_b", "B"}),
            (f("age", "in", []), set()),
            (f("name", "in", []), set()),
            # NULL never matches not_in
            (f("age", "not_in", [30, 25]), {"émile", "a_b", "axb", "B"}),
            (f("age", "not_in", []), ALL - {"Émile", "500 off", "Zed"}),
            (
                f("email", "NOT_IN", ["alice@example.com"]),
                ALL - {"Alice", "bob", "axb"},
            ),
        ],
    )


async def test_filter_values_are_coerced_to_the_column_type(db: WSClient) -> None:
    await check(
        db,
        [
            (f("moment", "eq", "2024-05-01T12:30:00+02:00"), {"t1"}),
            (f("moment", "eq", "2024-05-01T10:30:00Z"), {"t1"}),
            (f("moment", "eq", "2024-05-01T10:30:00"), {"t1"}),
            (f("moment", "gt", "2024-05-01T12:30:00+02:00"), {"t2"}),
            (f("moment", "gte", "2024-05-01T06:45:00-04:00"), {"t2"}),
            (f("moment", "lt", "2024-05-01T10:45:00Z"), {"t1"}),
            (
                f(
                    "moment",
                    "between",
                    ["2024-05-01T12:00:00+02:00", "2024-05-01T13:00:00+02:00"],
                ),
                {"t1", "t2"},
            ),
            (f("moment", "in", ["2024-05-01T13:00:00+02:00"]), {"t2"}),
            (f("price", "eq", "12.5"), {"t1"}),
            (f("price", "eq", "12.50"), {"t1"}),
            (f("price", "eq", 12.5), {"t1"}),
            (f("price", "gt", "10"), {"t1"}),
            (f("price", "lt", "10.00"), {"t2"}),
            (f("price", "in", ["9.99", "1"]), {"t2"}),
            (f("price", "is_null"), {"t3"}),
            (f("day", "gte", "2024-03-01"), {"t2"}),
            (f("day", "eq", "2024-01-01"), {"t1"}),
            (f("clock", "lt", "12:00:00"), {"t1"}),
            (f("clock", "eq", "18:30"), {"t2"}),
            (f("flag", "eq", False), {"t2"}),
            (f("flag", "neq", False), {"t1"}),
            (f("id", "eq", str(T1)), {"t1"}),
            (f("id", "eq", str(T1).upper()), {"t1"}),
            (f("id", "in", [str(T2), str(T3)]), {"t2", "t3"}),
            (f("ratio", "gt", 0.1), {"t1"}),
            (f("count", "gte", 1), {"t1", "t2"}),
            (f("doc", "is_null"), {"t2", "t3"}),
            (f("doc", "is_not_null"), {"t1"}),
        ],
        entity="things",
        key="label",
    )


async def test_bad_filters_are_refused(db: WSClient) -> None:
    async def code(*filters: Filter, entity: str = "users") -> str:
        answer = await db.request("read", entity, options={"filters": list(filters)})
        assert answer["success"] is False, answer
        return str(answer["error"]["code"])

    assert await code(f("age", "equals", 30)) == "invalid_filter"
    assert await code(f("age", "", 30)) == "invalid_filter"
    assert await code(f("nickname", "eq", "x")) == "invalid_column"
    assert await code(f("age", "eq", "thirty")) == "invalid_filter"
    assert await code(f("age", "eq", "30")) == "invalid_filter"
    assert await code(f("age", "eq", 1.5)) == "invalid_filter"
    assert await code(f("age", "in", 30)) == "invalid_filter"
    assert await code(f("age", "in", [30, "x"])) == "invalid_filter"
    assert await code(f("age", "between", [1])) == "invalid_filter"
    assert await code(f("age", "like", "3%")) == "invalid_filter"
    assert await code(f("active", "eq", "yes")) == "invalid_filter"
    assert await code(f("age", "eq", 1, logic="XOR")) == "invalid_filter"
    assert await code(f("moment", "eq", "yesterday"), entity="things") == (
        "invalid_filter"
    )
    assert await code(f("price", "eq", "cheap"), entity="things") == "invalid_filter"
    assert await code(f("id", "eq", "nope"), entity="things") == "invalid_filter"
    assert await code(f("doc", "eq", {"k": 1}), entity="things") == "invalid_filter"


# -- logic operators ----------------------------------------------------------------


async def test_or_groups_bind_tighter_than_and(db: WSClient) -> None:
    a = f("name", "eq", "50% off")  # inactive user
    b_or = f("name", "eq", "émile", logic="OR")
    c = f("active", "eq", True)
    await check(
        db,
        [
            ([a, b_or, c], {"émile"}),  # (A OR B) AND C, not A OR (B AND C)
            ([c, a, b_or], {"émile"}),
            ([a, b_or], {"50% off", "émile"}),
            ([a, f("name", "eq", "émile", logic="or")], {"50% off", "émile"}),
            (
                [
                    f("name", "eq", "Alice"),
                    f("name", "eq", "bob", logic="OR"),
                    f("name", "eq", "Zed", logic="OR"),
                ],
                {"Alice", "bob", "Zed"},
            ),
            (
                [
                    f("age", "eq", 19),
                    f("age", "eq", 60, logic="OR"),
                    f("status", "eq", "inactive"),
                    f("status", "eq", "banned", logic="OR"),
                ],
                {"B"},
            ),
            (
                [
                    f("age", "eq", 19),
                    f("age", "eq", 60, logic="AND"),
                    f("status", "eq", "inactive", logic="OR"),
                ],
                {"B"},  # 19 AND (60 OR inactive)
            ),
        ],
    )


async def test_total_counts_with_the_same_or_aware_where(db: WSClient) -> None:
    filters = [
        f("status", "eq", "banned"),
        f("age", "eq", 19, logic="OR"),
        f("active", "eq", True),
    ]
    answer = await db.request(
        "read",
        "users",
        options={"filters": filters, "limit": 2, "sort": [{"column": "id"}]},
    )
    assert answer["success"] is True
    assert [row["name"] for row in answer["data"]] == ["500 off", "a_b"]
    assert answer["metadata"] == {"total": 3, "count": 2, "limit": 2, "offset": 0}
    rest = await db.request(
        "read",
        "users",
        options={
            "filters": filters,
            "limit": 2,
            "offset": 2,
            "sort": [{"column": "id"}],
        },
    )
    assert [row["name"] for row in rest["data"]] == ["B"]
    assert rest["metadata"] == {"total": 3, "count": 1, "limit": 2, "offset": 2}


# -- columns ------------------------------------------------------------------------


async def test_columns_returns_exactly_the_keys_asked_for(db: WSClient) -> None:
    rows = await read(db, columns=["name", "age"], sort=[{"column": "id"}])
    assert rows == [{"name": u["name"], "age": u["age"]} for u in USERS]
    rows = await read(db, columns=["email"], filters=[f("name", "eq", "Alice")])
    assert rows == [{"email": "alice@example.com"}]
    row = await db.ok("read", "users", record_id="4", options={"columns": ["status"]})
    assert row == {"status": "active"}
    things = await read(
        db, "things", columns=["price", "moment"], sort=[{"column": "label"}]
    )
    assert things == [
        {"price": "12.50", "moment": "2024-05-01T10:30:00Z"},
        {"price": "9.99", "moment": "2024-05-01T11:00:00Z"},
        {"price": None, "moment": None},
    ]


async def test_unknown_columns_in_options_are_refused(db: WSClient) -> None:
    assert await error_code(db, columns=["name", "nickname"]) == "invalid_column"
    assert await error_code(db, sort=[{"column": "nickname"}]) == "invalid_column"
    assert await error_code(db, preload=[{"relation": "friends"}]) == "invalid_column"
    assert (
        await error_code(db, preload=[{"relation": "posts", "columns": ["nope"]}])
        == "invalid_column"
    )


# -- sort and paging ----------------------------------------------------------------


async def sorted_names(client: WSClient, *sort: tuple[str, str]) -> list[str]:
    rows = await read(
        client, columns=["name"], sort=[{"column": c, "direction": d} for c, d in sort]
    )
    return [row["name"] for row in rows]


async def test_multi_column_sort(db: WSClient) -> None:
    assert await sorted_names(db, ("status", "asc"), ("age", "desc")) == [
        "Zed",
        "axb",
        "émile",
        "Alice",
        "bob",
        "a_b",
        "500 off",
        "50% off",
        "Émile",
        "a\\b",
        "B",
    ]
    assert await sorted_names(db, ("active", "desc"), ("name", "desc")) == [
        "émile",
        "bob",
        "axb",
        "a_b",
        "B",
        "Alice",
        "500 off",
        "Émile",
        "a\\b",
        "Zed",
        "50% off",
    ]


async def test_nulls_last_ascending_first_descending(db: WSClient) -> None:
    assert await sorted_names(db, ("age", "asc")) == [
        "a_b",
        "B",
        "bob",
        "a\\b",
        "Alice",
        "50% off",
        "émile",
        "axb",
        "Émile",
        "500 off",
        "Zed",
    ]
    assert await sorted_names(db, ("age", "desc")) == [
        "Émile",
        "500 off",
        "Zed",
        "axb",
        "émile",
        "Alice",
        "50% off",
        "bob",
        "a\\b",
        "a_b",
        "B",
    ]
    emails = await read(db, columns=["email"], sort=[{"column": "email"}])
    assert [row["email"] for row in emails][-2:] == [None, None]
    emails = await read(
        db, columns=["email"], sort=[{"column": "email", "direction": "desc"}]
    )
    assert [row["email"] for row in emails][:2] == [None, None]
    assert None not in [row["email"] for row in emails][2:]


async def test_ties_are_broken_by_primary_key(db: WSClient) -> None:
    rows = await read(db, columns=["id", "status"], sort=[{"column": "status"}])
    assert [row["id"] for row in rows] == [1, 2, 4, 7, 9, 11, 5, 6, 3, 8, 10]
    rows = await read(
        db, columns=["id"], sort=[{"column": "status", "direction": "desc"}]
    )
    assert [row["id"] for row in rows] == [3, 8, 10, 5, 6, 1, 2, 4, 7, 9, 11]


STABLE_SORTS: list[list[dict[str, str]]] = [
    [{"column": "status"}],
    [{"column": "active", "direction": "desc"}],
    [{"column": "age"}],
    [{"column": "score", "direction": "desc"}, {"column": "status"}],
]


async def test_pages_are_stable(db: WSClient) -> None:
    """Paging through a sort with many ties and NULLs sees each row exactly once."""
    for sort in STABLE_SORTS:
        full = [row["id"] for row in await read(db, columns=["id"], sort=sort)]
        assert sorted(full) == sorted(NAME), sort
        for page_size in (2, 3):
            pages: list[int] = []
            for offset in range(0, len(USERS) + page_size, page_size):
                answer = await db.request(
                    "read",
                    "users",
                    options={
                        "columns": ["id"],
                        "sort": sort,
                        "limit": page_size,
                        "offset": offset,
                    },
                )
                assert answer["metadata"] == {
                    "total": len(USERS),
                    "count": len(answer["data"]),
                    "limit": page_size,
                    "offset": offset,
                }
                pages.extend(row["id"] for row in answer["data"])
            assert pages == full, (sort, page_size)


async def test_offset(db: WSClient) -> None:
    answer = await db.request(
        "read",
        "users",
        options={
            "columns": ["name"],
            "sort": [{"column": "name"}],
            "offset": 9,
        },
    )
    assert answer["data"] == [{"name": "Émile"}, {"name": "émile"}]
    assert answer["metadata"] == {"total": 11, "count": 2, "limit": 100, "offset": 9}
    past = await db.request("read", "users", options={"offset": 50})
    assert past["data"] == []
    assert past["metadata"] == {"total": 11, "count": 0, "limit": 100, "offset": 50}


async def test_negative_limit_or_offset_is_invalid_message(db: WSClient) -> None:
    assert await error_code(db, limit=-1) == "invalid_message"
    assert await error_code(db, offset=-1) == "invalid_message"
    assert (
        await error_code(db, preload=[{"relation": "posts", "limit": -1}])
        == "invalid_message"
    )


SMALL_PAGES = Config(default_page_size=5, max_page_size=10)


@pytest.mark.parametrize("config", [SMALL_PAGES], indirect=True, ids=["small"])
async def test_default_and_maximum_page_size(db: WSClient) -> None:
    ids = [u["id"] for u in USERS]
    answer = await db.request("read", "users", options={"columns": ["id"]})
    assert [row["id"] for row in answer["data"]] == ids[:5]
    assert answer["metadata"] == {"total": 11, "count": 5, "limit": 5, "offset": 0}

    clamped = await db.request(
        "read", "users", options={"columns": ["id"], "limit": 500}
    )
    assert [row["id"] for row in clamped["data"]] == ids[:10]
    assert clamped["metadata"] == {"total": 11, "count": 10, "limit": 10, "offset": 0}

    last = await db.request(
        "read", "users", options={"columns": ["id"], "limit": 11, "offset": 5}
    )
    assert [row["id"] for row in last["data"]] == ids[5:]
    assert last["metadata"] == {"total": 11, "count": 6, "limit": 10, "offset": 5}

    small = await db.request(
        "read", "users", options={"columns": ["id"], "limit": 3, "offset": 9}
    )
    assert [row["id"] for row in small["data"]] == ids[9:]
    assert small["metadata"] == {"total": 11, "count": 2, "limit": 3, "offset": 9}


# -- preload ------------------------------------------------------------------------


async def test_preload_of_a_one_relation(db: WSClient) -> None:
    rows = await read(
        db,
        "posts",
        columns=["title", "user_id"],
        sort=[{"column": "id"}],
        preload=[{"relation": "user", "columns": ["name", "status"]}],
    )
    assert rows == [
        {
            "title": p["title"],
            "user_id": p["user_id"],
            "user": {
                "name": NAME[p["user_id"]],
                "status": "active",
            },
        }
        for p in POSTS
    ]
    full = await db.ok(
        "read", "posts", record_id="7", options={"preload": [{"relation": "user"}]}
    )
    assert full == {**POSTS[6], "user": USERS[3]}


async def test_preload_of_a_one_relation_is_null_when_filtered_out(
    db: WSClient,
) -> None:
    rows = await read(
        db,
        "posts",
        columns=["title"],
        sort=[{"column": "title", "direction": "desc"}],
        preload=[
            {
                "relation": "user",
                "columns": ["name"],
                "filters": [f("name", "ilike", "ALICE")],
            }
        ],
    )
    assert rows == [
        {"title": "E1", "user": None},
        {"title": "B2", "user": None},
        {"title": "B1", "user": None},
        {"title": "A4", "user": {"name": "Alice"}},
        {"title": "A3", "user": {"name": "Alice"}},
        {"title": "A2", "user": {"name": "Alice"}},
        {"title": "A1", "user": {"name": "Alice"}},
    ]


async def test_preload_of_a_many_relation(db: WSClient) -> None:
    rows = await read(
        db,
        columns=["name"],
        filters=[f("name", "in", ["Alice", "bob", "émile", "Zed"])],
        sort=[{"column": "id"}],
        preload=[{"relation": "posts"}],
    )
    assert rows == [
        {"name": "Alice", "posts": POSTS[0:4]},
        {"name": "bob", "posts": POSTS[4:6]},
        {"name": "émile", "posts": [POSTS[6]]},
        {"name": "Zed", "posts": []},
    ]


async def test_preload_with_its_own_columns_filters_sort_and_limit(
    db: WSClient,
) -> None:
    titles = {
        "relation": "posts",
        "columns": ["title"],
        "sort": [{"column": "rank", "direction": "desc"}],
    }
    rows = await read(
        db,
        columns=["name"],
        filters=[f("name", "in", ["Alice", "bob", "émile", "Zed"])],
        sort=[{"column": "id"}],
        preload=[{**titles, "limit": 2}],
    )
    assert rows == [  # the limit applies per parent row; rank ties go by id
        {"name": "Alice", "posts": [{"title": "A1"}, {"title": "A3"}]},
        {"name": "bob", "posts": [{"title": "B1"}, {"title": "B2"}]},
        {"name": "émile", "posts": [{"title": "E1"}]},
        {"name": "Zed", "posts": []},
    ]
    rows = await read(
        db,
        columns=["name"],
        filters=[f("name", "in", ["Alice", "bob", "émile"])],
        sort=[{"column": "id"}],
        preload=[
            {
                "relation": "posts",
                "columns": ["title", "rank"],
                "filters": [f("rank", "gte", 1), f("rank", "lt", 5)],
                "sort": [{"column": "title", "direction": "desc"}],
            }
        ],
    )
    assert rows == [
        {
            "name": "Alice",
            "posts": [
                {"title": "A3", "rank": 2},
                {"title": "A2", "rank": 1},
                {"title": "A1", "rank": 3},
            ],
        },
        {"name": "bob", "posts": []},
        {"name": "émile", "posts": [{"title": "E1", "rank": 1}]},
    ]
    rows = await read(
        db,
        columns=["name"],
        filters=[f("name", "eq", "Alice")],
        preload=[
            {
                "relation": "posts",
                "columns": ["title"],
                "filters": [f("content", "like", "%a"), f("rank", "eq", 0, "OR")],
                "sort": [{"column": "content"}],
                "limit": 3,
            }
        ],
    )
    # content: alpha, beta, gamma, delta all end in "a"; sorted alpha beta delta gamma
    assert rows == [
        {"name": "Alice", "posts": [{"title": "A1"}, {"title": "A2"}, {"title": "A4"}]}
    ]


async def test_preload_when_columns_omit_the_join_column(db: WSClient) -> None:
    users = await read(
        db,
        columns=["name"],
        filters=[f("name", "in", ["Alice", "émile"])],
        sort=[{"column": "name"}],
        preload=[
            {"relation": "posts", "columns": ["title"], "sort": [{"column": "id"}]}
        ],
    )
    assert users == [
        {"name": "Alice", "posts": [{"title": t} for t in ("A1", "A2", "A3", "A4")]},
        {"name": "émile", "posts": [{"title": "E1"}]},
    ]
    posts = await read(
        db,
        "posts",
        columns=["title"],
        filters=[f("title", "in", ["A2", "B1", "E1"])],
        sort=[{"column": "id"}],
        preload=[{"relation": "user", "columns": ["email"]}],
    )
    assert posts == [
        {"title": "A2", "user": {"email": "alice@example.com"}},
        {"title": "B1", "user": {"email": None}},
        {"title": "E1", "user": {"email": "emile2@example.fr"}},
    ]
    one = await db.ok(
        "read",
        "users",
        record_id=2,
        options={
            "columns": ["status"],
            "preload": [{"relation": "posts", "columns": ["rank"]}],
        },
    )
    assert one == {"status": "active", "posts": [{"rank": 5}, {"rank": 5}]}


async def test_preload_does_not_change_the_parent_page(db: WSClient) -> None:
    answer = await db.request(
        "read",
        "users",
        options={
            "columns": ["name"],
            "filters": [f("status", "eq", "active")],
            "sort": [{"column": "id"}],
            "limit": 2,
            "offset": 1,
            "preload": [{"relation": "posts", "columns": ["title"], "limit": 1}],
        },
    )
    assert answer["data"] == [
        {"name": "bob", "posts": [{"title": "B1"}]},
        {"name": "émile", "posts": [{"title": "E1"}]},
    ]
    assert answer["metadata"] == {"total": 6, "count": 2, "limit": 2, "offset": 1}
