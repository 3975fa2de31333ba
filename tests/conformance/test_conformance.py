"""The adapter conformance suite: one behaviour, every adapter, every database.

Each test runs once per adapter (``ADAPTERS`` in ``conftest.py``) and database (SQLite,
PostgreSQL), over a real socket to a real server, except the parity property tests,
which call the adapter directly. The tables are ``tests/support/models.py``'s, declared
in each ORM: ``users`` (registered with ``bulk=True``), ``posts`` (``user_id`` →
``users``, relations ``user`` and ``posts``) and ``things`` (one column of every
portable type).
"""

# Look-alike letters (dotless i, sharp s, Greek) are the point of several tests.
# ruff: noqa: RUF001

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.databases import create_database, drop_database
from tests.support.parity import TEXT_OPS, Column, like_escape, make_column
from tests.support.servers import serve
from tests.support.wsclient import WSClient
from websocketspec import Config, Handler, HookContext, HookType, ValidationError
from websocketspec.adapters.base import Change, Write
from websocketspec.protocol.filters import Op, compile_filters, matches
from websocketspec.protocol.messages import FilterOption, QueryOptions
from websocketspec.protocol.values import TEXT_TYPES, ColumnType
from websocketspec.query import Limits, build_read_query, validate_data
from websocketspec.types import Record

Connect = Callable[..., Any]
TIMEOUT = 30.0

CONSTRAINT = "the database refused the write: a constraint was violated"

PEOPLE: list[Record] = [
    {"name": "Ann", "email": "ann@example.com", "status": "active", "age": 30, "score": 1.5, "active": True},
    {"name": "bob", "email": None, "status": "inactive", "age": None, "score": None, "active": False},
    {"name": "Émile", "email": "émile@example.com", "status": "active", "age": 25, "score": -2.0, "active": True},
    {"name": "ZOE", "email": "zoe_50%@x", "status": "banned", "age": 30, "score": None, "active": True},
    {"name": "straße", "email": "a\\b", "status": "", "age": 0, "score": 0.0, "active": False},
    {"name": "İstanbul", "email": None, "status": "active", "age": 41, "score": 3.25, "active": True},
]  # fmt: skip
"""Seed users, created in this order (ids ascending)."""


def f(
    column: str, operator: str, value: Any = None, logic: str | None = None
) -> dict[str, Any]:
    option: dict[str, Any] = {"column": column, "operator": operator, "value": value}
    if logic is not None:
        option["logic_operator"] = logic
    return option


async def seed(client: WSClient) -> dict[str, int]:
    """Create :data:`PEOPLE` in one multi-row create; returns their ids by name."""
    rows = await client.ok("create", "users", data=PEOPLE)
    assert [r["name"] for r in rows] == [p["name"] for p in PEOPLE]
    return {r["name"]: r["id"] for r in rows}


async def names(
    client: WSClient, *filters: dict[str, Any], **options: Any
) -> list[str]:
    rows = await client.ok(
        "read", "users", options={"filters": list(filters), **options}
    )
    return [r["name"] for r in rows]


# -- CRUD -----------------------------------------------------------------------------


async def test_create_returns_the_stored_row_with_defaults(client: WSClient) -> None:
    row = await client.ok("create", "users", data={"name": "Ann"})
    assert row == {
        "id": row["id"],
        "name": "Ann",
        "email": None,
        "status": "active",
        "age": None,
        "score": None,
        "active": True,
    }
    assert isinstance(row["id"], int)
    post = await client.ok("create", "posts", data={"title": "t", "user_id": row["id"]})
    assert post == {
        "id": post["id"],
        "title": "t",
        "content": "",
        "user_id": row["id"],
        "rank": 0,
    }


async def test_read_one_and_not_found(client: WSClient) -> None:
    ids = await seed(client)
    row = await client.ok("read", "users", record_id=str(ids["bob"]))
    assert row["name"] == "bob" and row["email"] is None and row["active"] is False
    assert (await client.ok("read", "users", record_id=ids["Ann"]))["name"] == "Ann"
    missing = await client.request("read", "users", record_id="999999")
    assert missing["success"] is False and missing["error"]["code"] == "not_found"
    # A row outside the filters is not found either.
    outside = await client.request(
        "read",
        "users",
        record_id=ids["bob"],
        options={"filters": [f("active", "eq", True)]},
    )
    assert outside["error"]["code"] == "not_found"
    # An id past the column's range names no row (no driver overflow).
    huge = await client.request("read", "users", record_id=str(2**62))
    assert huge["error"]["code"] == "not_found"


async def test_update_changes_only_the_keys_sent(client: WSClient) -> None:
    ids = await seed(client)
    before = await client.ok("read", "users", record_id=ids["Ann"])
    after = await client.ok(
        "update",
        "users",
        record_id=ids["Ann"],
        data={"email": None, "age": 0, "active": False, "status": ""},
    )
    assert after == {**before, "email": None, "age": 0, "active": False, "status": ""}
    assert await client.ok("read", "users", record_id=ids["Ann"]) == after
    again = await client.ok(
        "update", "users", record_id=ids["Ann"], data={"score": 2.5}
    )
    assert again == {**after, "score": 2.5}
    missing = await client.request("update", "users", record_id=999999, data={"age": 1})
    assert missing["error"]["code"] == "not_found"
    # Other rows are untouched.
    assert (await client.ok("read", "users", record_id=ids["bob"]))[
        "status"
    ] == "inactive"


async def test_delete_returns_the_deleted_row(client: WSClient) -> None:
    ids = await seed(client)
    row = await client.ok("read", "users", record_id=ids["ZOE"])
    assert await client.ok("delete", "users", record_id=ids["ZOE"]) == row
    gone = await client.request("read", "users", record_id=ids["ZOE"])
    assert gone["error"]["code"] == "not_found"
    again = await client.request("delete", "users", record_id=ids["ZOE"])
    assert again["error"]["code"] == "not_found"
    assert len(await names(client)) == len(PEOPLE) - 1


async def test_constraint_violations_are_neutral_operation_errors(
    client: WSClient,
) -> None:
    ids = await seed(client)
    orphan = await client.request(
        "create", "posts", data={"title": "t", "user_id": 999999}
    )
    assert orphan["error"] == {"code": "create_error", "message": CONSTRAINT}
    twin = await client.request("create", "users", data={"id": ids["Ann"], "name": "x"})
    assert twin["error"] == {"code": "create_error", "message": CONSTRAINT}
    post = await client.ok(
        "create", "posts", data={"title": "t", "user_id": ids["Ann"]}
    )
    moved = await client.request(
        "update", "posts", record_id=post["id"], data={"user_id": 999999}
    )
    assert moved["error"] == {"code": "update_error", "message": CONSTRAINT}
    parent = await client.request("delete", "users", record_id=ids["Ann"])
    assert parent["error"] == {"code": "delete_error", "message": CONSTRAINT}
    assert len(await client.ok("read", "posts")) == 1
    assert await client.ok("read", "posts", record_id=post["id"]) == post


# -- transaction boundaries ------------------------------------------------------------


async def test_a_failing_after_hook_rolls_the_write_back(
    handler: Handler, connect: Connect
) -> None:
    client, watcher = await connect(), await connect()
    ids = await seed(client)
    await watcher.subscribe("users")
    refuse: set[str] = set()

    async def veto(ctx: HookContext) -> None:
        if ctx.operation in refuse:
            raise ValidationError("refused after the write", field="name")

    for hook_type in (HookType.CREATE, HookType.UPDATE, HookType.DELETE):
        handler.hooks.after(hook_type)(veto)
    refuse.update({"create", "update", "delete"})
    created = await client.request("create", "users", data={"name": "late"})
    assert created["error"]["code"] == "validation_error"
    updated = await client.request(
        "update", "users", record_id=ids["Ann"], data={"age": 99}
    )
    assert updated["error"]["code"] == "validation_error"
    deleted = await client.request("delete", "users", record_id=ids["bob"])
    assert deleted["error"]["code"] == "validation_error"
    bulk = await client.request(
        "update",
        "users",
        data={"age": 1},
        options={"filters": [f("age", "is_not_null")]},
    )
    assert bulk["error"]["code"] == "validation_error"
    rows = await client.ok("read", "users")
    assert sorted(r["name"] for r in rows) == sorted(p["name"] for p in PEOPLE)
    assert {r["name"]: r["age"] for r in rows} == {p["name"]: p["age"] for p in PEOPLE}
    assert await watcher.drain() == []
    refuse.clear()
    await client.ok("update", "users", record_id=ids["Ann"], data={"age": 99})
    notes = await watcher.drain()
    assert [(n["operation"], n["data"]["age"]) for n in notes] == [("update", 99)]


async def test_a_multi_row_create_is_all_or_nothing(connect: Connect) -> None:
    client, watcher = await connect(), await connect()
    ids = await seed(client)
    await watcher.subscribe("users")
    rows = [{"name": "new-1"}, {"id": ids["Ann"], "name": "dup"}, {"name": "new-2"}]
    answer = await client.request("create", "users", data=rows)
    assert answer["error"] == {"code": "create_error", "message": CONSTRAINT}
    assert len(await names(client)) == len(PEOPLE)
    assert await watcher.drain() == []


async def test_multi_row_updates_and_deletes_by_filters(connect: Connect) -> None:
    client, watcher = await connect(), await connect()
    ids = await seed(client)
    await watcher.subscribe("users")
    answer = await client.request(
        "update",
        "users",
        data={"status": "checked"},
        options={"filters": [f("age", "gte", 30)]},
    )
    assert answer["success"] is True, answer
    assert sorted(r["name"] for r in answer["data"]) == ["Ann", "ZOE", "İstanbul"]
    assert all(r["status"] == "checked" for r in answer["data"])
    assert answer["metadata"]["count"] == 3
    txid = answer["metadata"]["txid"]
    notes = await watcher.drain()
    assert [n["metadata"]["txid"] for n in notes] == [txid] * 3
    assert [n["metadata"]["batch_index"] for n in notes] == [0, 1, 2]
    assert {n["metadata"]["batch_size"] for n in notes} == {3}
    assert [n["data"]["id"] for n in notes] == sorted(
        [ids["Ann"], ids["ZOE"], ids["İstanbul"]]
    )
    assert await names(client, f("status", "eq", "checked")) == [
        "Ann",
        "ZOE",
        "İstanbul",
    ]

    deleted = await client.request(
        "delete", "users", options={"filters": [f("active", "eq", False)]}
    )
    assert sorted(r["name"] for r in deleted["data"]) == ["bob", "straße"]
    assert [n["operation"] for n in await watcher.drain()] == ["delete", "delete"]
    assert sorted(await names(client)) == sorted(["Ann", "Émile", "ZOE", "İstanbul"])


@pytest.mark.parametrize("config", [Config(max_bulk_rows=3)])
async def test_a_multi_row_write_past_the_limit_changes_nothing(
    client: WSClient,
) -> None:
    for chunk in (PEOPLE[:3], PEOPLE[3:]):
        await client.ok("create", "users", data=chunk)
    answer = await client.request(
        "update", "users", data={"age": 7}, options={"filters": [f("age", "gte", 0)]}
    )
    assert answer["error"]["code"] == "too_many_rows"
    assert answer["error"]["details"] == {"max_rows": 3}
    gone = await client.request(
        "delete", "users", options={"filters": [f("name", "is_not_null")]}
    )
    assert gone["error"]["code"] == "too_many_rows"
    assert len(await names(client, f("age", "eq", 7))) == 0
    assert len(await names(client)) == len(PEOPLE)


# -- operators -------------------------------------------------------------------------

OPERATOR_CASES: list[tuple[list[dict[str, Any]], set[str]]] = [
    ([f("name", "eq", "Ann")], {"Ann"}),
    ([f("name", "EQ", "ann")], set()),
    ([f("status", "eq", "")], {"straße"}),
    ([f("email", "neq", "ann@example.com")], {"Émile", "ZOE", "straße"}),
    ([f("age", "gt", 25)], {"Ann", "ZOE", "İstanbul"}),
    ([f("age", "gte", 30)], {"Ann", "ZOE", "İstanbul"}),
    ([f("age", "lt", 30)], {"Émile", "straße"}),
    ([f("age", "lte", 25)], {"Émile", "straße"}),
    ([f("age", "lt", 2**40)], {"Ann", "Émile", "ZOE", "straße", "İstanbul"}),
    ([f("age", "gt", -(2**63))], {"Ann", "Émile", "ZOE", "straße", "İstanbul"}),
    ([f("age", "eq", 2**62)], set()),
    ([f("age", "between", [25, 30])], {"Ann", "Émile", "ZOE"}),
    ([f("age", "in", [0, 41, 99])], {"straße", "İstanbul"}),
    ([f("age", "in", [])], set()),
    ([f("age", "not_in", [30])], {"Émile", "straße", "İstanbul"}),
    ([f("age", "not_in", [])], {"Ann", "Émile", "ZOE", "straße", "İstanbul"}),
    ([f("email", "is_null")], {"bob", "İstanbul"}),
    ([f("email", "is_not_null")], {"Ann", "Émile", "ZOE", "straße"}),
    ([f("email", "eq", None)], {"bob", "İstanbul"}),
    ([f("email", "neq", None)], {"Ann", "Émile", "ZOE", "straße"}),
    ([f("score", "gt", 0)], {"Ann", "İstanbul"}),
    ([f("score", "eq", 0)], {"straße"}),
    ([f("active", "eq", False)], {"bob", "straße"}),
    ([f("active", "neq", True)], {"bob", "straße"}),
    # Text compares by code point: upper case < lower case < accented letters.
    ([f("name", "gt", "Z")], {"bob", "Émile", "ZOE", "straße", "İstanbul"}),
    ([f("name", "lt", "a")], {"Ann", "ZOE"}),
    ([f("name", "between", ["b", "z"])], {"bob", "straße"}),
    ([f("name", "gte", "É")], {"Émile", "İstanbul"}),
    # like is case-sensitive, ilike folds with str.lower(), non-ASCII included.
    ([f("name", "like", "A%")], {"Ann"}),
    ([f("name", "like", "a%")], set()),
    ([f("name", "like", "%e")], {"Émile", "straße"}),
    ([f("name", "like", "_OE")], {"ZOE"}),
    ([f("name", "like", "é%")], set()),
    ([f("name", "LIKE", "É%")], {"Émile"}),
    ([f("name", "ilike", "a%")], {"Ann"}),
    ([f("name", "ilike", "ÉMILE")], {"Émile"}),
    ([f("name", "ilike", "zoe")], {"ZOE"}),
    ([f("name", "ilike", "STRASSE")], set()),
    ([f("name", "ilike", "STRAẞE")], {"straße"}),
    ([f("name", "ilike", "İSTANBUL")], {"İstanbul"}),
    ([f("name", "ilike", "istanbul")], set()),
    ([f("name", "ilike", "İ%")], {"İstanbul"}),
    # %, _ and \ in patterns and in values.
    ([f("email", "like", "zoe\\_50\\%@x")], {"ZOE"}),
    ([f("email", "like", "zoe_50%")], {"ZOE"}),
    ([f("email", "like", "a\\\\b")], {"straße"}),
    ([f("email", "like", "a\\b")], set()),
    ([f("email", "like", "a%\\")], set()),
    ([f("email", "contains", "\\")], {"straße"}),
    ([f("email", "contains", "_5")], {"ZOE"}),
    ([f("email", "contains", "%")], {"ZOE"}),
    ([f("email", "contains", "Example")], set()),
    ([f("email", "startswith", "zoe_")], {"ZOE"}),
    ([f("email", "endswith", "@example.com")], {"Ann", "Émile"}),
    ([f("name", "startswith", "É")], {"Émile"}),
    ([f("name", "endswith", "ße")], {"straße"}),
]


@pytest.mark.parametrize(
    ("filters", "expected"), OPERATOR_CASES, ids=[str(c[0]) for c in OPERATOR_CASES]
)
def test_operator_cases_match_in_memory(
    filters: list[dict[str, Any]], expected: set[str]
) -> None:
    """The expectations of OPERATOR_CASES are the in-memory matcher's (no database)."""
    expr = compile_filters([FilterOption(**o) for o in _wire(filters)], USER_TYPES)
    assert {p["name"] for p in PEOPLE if matches(expr, p)} == expected


USER_TYPES = {
    "id": ColumnType.INTEGER,
    "name": ColumnType.STRING,
    "email": ColumnType.STRING,
    "status": ColumnType.STRING,
    "age": ColumnType.INTEGER,
    "score": ColumnType.FLOAT,
    "active": ColumnType.BOOLEAN,
}


def _wire(filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "column": o["column"],
            "operator": o["operator"],
            "value": o["value"],
            "logic_operator": o.get("logic_operator"),
        }
        for o in filters
    ]


async def test_every_operator(client: WSClient) -> None:
    await seed(client)
    failures = []
    for filters, expected in OPERATOR_CASES:
        answer = await client.request("read", "users", options={"filters": filters})
        assert answer["success"] is True, (filters, answer)
        found = {r["name"] for r in answer["data"]}
        if found != expected or answer["metadata"]["total"] != len(expected):
            failures.append((filters, sorted(found), sorted(expected)))
    assert failures == []


async def test_filters_refused_before_the_database(client: WSClient) -> None:
    await seed(client)
    cases = [
        (f("nope", "eq", 1), "invalid_column"),
        (f("age", "nope", 1), "invalid_filter"),
        (f("age", "eq", "x"), "invalid_filter"),
        (f("age", "in", 3), "invalid_filter"),
        (f("age", "like", "3%"), "invalid_filter"),
        (f("age", "eq", 2**64), "invalid_filter"),
    ]
    for option, code in cases:
        answer = await client.request("read", "users", options={"filters": [option]})
        assert answer["error"]["code"] == code, (option, answer)


async def test_or_groups_and_total(client: WSClient) -> None:
    await seed(client)
    banned_or_inactive_and_active = [
        f("status", "eq", "banned"),
        f("status", "eq", "inactive", "OR"),
        f("active", "eq", True),
    ]
    assert await names(client, *banned_or_inactive_and_active) == ["ZOE"]
    two_groups = [
        f("age", "lt", 26),
        f("age", "gt", 40, "or"),
        f("email", "is_null"),
        f("active", "eq", False, "Or"),
    ]
    assert await names(client, *two_groups) == ["straße", "İstanbul"]
    first_or = [f("name", "eq", "Ann", "OR"), f("name", "eq", "bob", "OR")]
    assert await names(client, *first_or) == ["Ann", "bob"]
    answer = await client.request(
        "read",
        "users",
        options={
            "filters": [f("age", "gte", 0), f("age", "is_null", logic="OR")],
            "limit": 2,
        },
    )
    assert answer["metadata"] == {"total": 6, "count": 2, "limit": 2, "offset": 0}


# -- sort, limit, offset, columns ----------------------------------------------------


async def test_sort_puts_nulls_last_ascending_and_ends_with_the_key(
    client: WSClient,
) -> None:
    await seed(client)
    up = await names(client, sort=[{"column": "age", "direction": "asc"}])
    assert up == ["straße", "Émile", "Ann", "ZOE", "İstanbul", "bob"]
    down = await names(client, sort=[{"column": "age", "direction": "DESC"}])
    assert down == ["bob", "İstanbul", "Ann", "ZOE", "Émile", "straße"]
    by_name = await names(client, sort=[{"column": "name", "direction": "asc"}])
    assert by_name == ["Ann", "ZOE", "bob", "straße", "Émile", "İstanbul"]
    two_keys = await names(
        client,
        sort=[
            {"column": "active", "direction": "desc"},
            {"column": "score", "direction": "asc"},
        ],
    )
    assert two_keys == ["Émile", "Ann", "İstanbul", "ZOE", "straße", "bob"]
    assert await names(client) == [p["name"] for p in PEOPLE]  # by primary key


async def test_pages_are_stable_and_counted(client: WSClient) -> None:
    await seed(client)
    sort = [{"column": "age", "direction": "asc"}]
    everything = await names(client, sort=sort)
    pages: list[str] = []
    for offset in (0, 2, 4):
        answer = await client.request(
            "read", "users", options={"sort": sort, "limit": 2, "offset": offset}
        )
        assert answer["metadata"] == {
            "total": 6,
            "count": 2,
            "limit": 2,
            "offset": offset,
        }
        pages += [r["name"] for r in answer["data"]]
    assert pages == everything
    past = await client.request("read", "users", options={"offset": 100, "limit": 5})
    assert past["data"] == [] and past["metadata"]["total"] == 6
    huge = await client.request("read", "users", options={"offset": 2**63 - 1})
    assert huge["data"] == [] and huge["metadata"]["total"] == 6
    none = await client.request("read", "users", options={"limit": 0})
    assert none["data"] == [] and none["metadata"]["total"] == 6
    filtered = await client.request(
        "read",
        "users",
        options={"filters": [f("active", "eq", True)], "limit": 1, "offset": 1},
    )
    assert [r["name"] for r in filtered["data"]] == ["Émile"]
    assert filtered["metadata"]["total"] == 4


async def test_columns_return_exactly_the_keys_asked_for(client: WSClient) -> None:
    ids = await seed(client)
    rows = await client.ok(
        "read", "users", options={"columns": ["email", "name"], "limit": 2}
    )
    assert rows == [
        {"email": "ann@example.com", "name": "Ann"},
        {"email": None, "name": "bob"},
    ]
    row = await client.ok(
        "read", "users", record_id=ids["ZOE"], options={"columns": ["age"]}
    )
    assert row == {"age": 30}
    bad = await client.request("read", "users", options={"columns": ["nope"]})
    assert bad["error"]["code"] == "invalid_column"


# -- preload ---------------------------------------------------------------------------


async def test_preload_one_and_many_with_a_per_parent_limit(client: WSClient) -> None:
    ids = await seed(client)
    posts = [
        {"title": f"{name}-{n}", "user_id": ids[name], "rank": n}
        for n, name in enumerate(["Ann", "bob", "Ann", "ZOE", "Ann"])
    ]
    created = await client.ok("create", "posts", data=posts)
    assert [p["rank"] for p in created] == [0, 1, 2, 3, 4]

    users = await client.ok(
        "read",
        "users",
        options={
            "filters": [f("name", "in", ["Ann", "bob", "Émile"])],
            "preload": [
                {
                    "relation": "posts",
                    "sort": [{"column": "rank", "direction": "desc"}],
                    "limit": 2,
                    "columns": ["rank"],
                }
            ],
        },
    )
    assert {u["name"]: u["posts"] for u in users} == {
        "Ann": [{"rank": 4}, {"rank": 2}],
        "bob": [{"rank": 1}],
        "Émile": [],
    }
    filtered = await client.ok(
        "read",
        "users",
        record_id=ids["Ann"],
        options={"preload": [{"relation": "posts", "filters": [f("rank", "lt", 3)]}]},
    )
    assert [p["rank"] for p in filtered["posts"]] == [0, 2]
    assert filtered["posts"][0] == created[0]

    with_user = await client.ok(
        "read",
        "posts",
        options={
            "preload": [{"relation": "user", "columns": ["name"]}],
            "columns": ["title"],
            "sort": [{"column": "rank", "direction": "asc"}],
        },
    )
    assert with_user == [
        {"title": "Ann-0", "user": {"name": "Ann"}},
        {"title": "bob-1", "user": {"name": "bob"}},
        {"title": "Ann-2", "user": {"name": "Ann"}},
        {"title": "ZOE-3", "user": {"name": "ZOE"}},
        {"title": "Ann-4", "user": {"name": "Ann"}},
    ]
    outside = await client.ok(
        "read",
        "posts",
        record_id=created[1]["id"],
        options={
            "preload": [{"relation": "user", "filters": [f("active", "eq", True)]}]
        },
    )
    assert outside["user"] is None
    bad = await client.request(
        "read", "users", options={"preload": [{"relation": "nope"}]}
    )
    assert bad["error"]["code"] == "invalid_column"


# -- meta ------------------------------------------------------------------------------


def _columns(meta: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    return {
        c["name"]: (c["type"], c["nullable"], c["primary_key"], c["default"])
        for c in meta["columns"]
    }


async def test_meta_describes_types_nullability_keys_and_relations(
    client: WSClient,
) -> None:
    users = await client.ok("meta", "users")
    assert users["primary_key"] == ["id"]
    assert _columns(users) == {
        "id": ("integer", False, True, None),
        "name": ("string", False, False, None),
        "email": ("string", True, False, None),
        "status": ("string", False, False, "active"),
        "age": ("integer", True, False, None),
        "score": ("float", True, False, None),
        "active": ("boolean", False, False, True),
    }
    assert users["relations"] == [
        {
            "name": "posts",
            "kind": "many",
            "schema": "public",
            "entity": "posts",
            "local_columns": ["id"],
            "remote_columns": ["user_id"],
        }
    ]
    posts = await client.ok("meta", "public.posts")
    assert _columns(posts) == {
        "id": ("integer", False, True, None),
        "title": ("string", False, False, None),
        "content": ("text", False, False, ""),
        "user_id": ("integer", False, False, None),
        "rank": ("integer", False, False, 0),
    }
    assert posts["relations"] == [
        {
            "name": "user",
            "kind": "one",
            "schema": "public",
            "entity": "users",
            "local_columns": ["user_id"],
            "remote_columns": ["id"],
        }
    ]
    things = await client.ok("meta", "things")
    assert things["primary_key"] == ["id"]
    assert {name: c[:3] for name, c in _columns(things).items()} == {
        "id": ("uuid", False, True),
        "count": ("integer", True, False),
        "ratio": ("float", True, False),
        "price": ("decimal", True, False),
        "label": ("string", True, False),
        "body": ("text", True, False),
        "flag": ("boolean", True, False),
        "day": ("date", True, False),
        "moment": ("datetime", True, False),
        "clock": ("time", True, False),
        "doc": ("json", True, False),
        "blob": ("bytes", True, False),
    }
    assert things["relations"] == []


async def test_validation_follows_the_described_columns(client: WSClient) -> None:
    cases = [
        ({"title": "no user"}, "user_id"),
        ({"title": "x" * 201, "user_id": 1}, "title"),
        ({"title": "t", "user_id": 2**31}, "user_id"),
        ({"title": "t", "user_id": 1, "nope": 1}, "nope"),
    ]
    for data, field in cases:
        answer = await client.request("create", "posts", data=data)
        assert answer["error"]["code"] == "validation_error", answer
        assert answer["error"]["details"]["field"] == field
    price = await client.request("create", "things", data={"price": "100000000000"})
    assert price["error"]["details"]["field"] == "price"


# -- values ----------------------------------------------------------------------------


async def test_every_type_round_trips(client: WSClient) -> None:
    key = str(uuid.uuid4())
    sent = {
        "id": key,
        "count": -(2**31),
        "ratio": 0.1,
        "price": "12.345",  # rounded half away from zero to the column's 2 places
        "label": "Ünïcødé ✓ 中文",
        "body": "line\nbreak % _ \\",
        "flag": False,
        "day": "1999-12-31",
        "moment": "2024-02-29T23:30:00.123456-05:30",  # stored and returned in UTC
        "clock": "23:59:59.5",
        "doc": {"a": [1, None, "x"], "b": {"c": True}},
        "blob": base64.b64encode(b"\x00\xff\x10").decode(),
    }
    row = await client.ok("create", "things", data=sent)
    expected = {
        **sent,
        "price": "12.35",
        "moment": "2024-03-01T05:00:00.123456Z",
        "clock": "23:59:59.500000",
    }
    assert row == expected
    assert await client.ok("read", "things", record_id=key) == expected
    default_key = await client.ok("create", "things", data={})
    assert uuid.UUID(default_key["id"]).version == 4
    assert default_key["doc"] is None
    for column, operator, value in [
        ("moment", "eq", "2024-03-01T05:00:00.123456Z"),
        ("moment", "gt", "2024-03-01T06:00:00+02:00"),
        ("day", "lt", "2000-01-01"),
        ("clock", "gte", "23:59:59"),
        ("price", "eq", "12.35"),
        ("price", "gt", "12.349"),
        ("id", "eq", key),
        ("blob", "eq", sent["blob"]),
        ("flag", "eq", False),
        ("ratio", "eq", 0.1),
        ("doc", "is_not_null", None),
    ]:
        rows = await client.ok(
            "read", "things", options={"filters": [f(column, operator, value)]}
        )
        assert [r["id"] for r in rows] == [key], (column, operator, value)
    patched = await client.ok(
        "update", "things", record_id=key, data={"doc": None, "price": "0.005"}
    )
    assert patched["doc"] is None and patched["price"] == "0.01"
    rows = await client.ok("read", "things", options={"filters": [f("doc", "is_null")]})
    assert sorted(r["id"] for r in rows) == sorted([key, default_key["id"]])


# -- subscriptions, idempotency, change log ----------------------------------------------


async def test_filtered_subscriptions_see_the_adapters_rows(connect: Connect) -> None:
    client, watcher = await connect(), await connect()
    ids = await seed(client)
    await watcher.subscribe("users", options={"filters": [f("name", "ilike", "é%")]})
    await client.ok("create", "users", data={"name": "éa"})
    await client.ok("update", "users", record_id=ids["Émile"], data={"age": 26})
    await client.ok("update", "users", record_id=ids["Émile"], data={"name": "Emile"})
    await client.ok("update", "users", record_id=ids["Ann"], data={"name": "Élan"})
    await client.ok("delete", "users", record_id=ids["Ann"])
    await client.ok("update", "users", record_id=ids["bob"], data={"age": 1})
    notes = await watcher.drain()
    seen = [
        (n["operation"], n["data"]["name"], n["metadata"].get("change")) for n in notes
    ]
    assert seen == [
        ("create", "éa", None),
        ("update", "Émile", "stay"),
        ("delete", "Émile", "leave"),  # the old row, never the new values
        ("create", "Élan", "enter"),
        ("delete", "Élan", None),
    ]
    assert notes[1]["data"]["age"] == 26 and notes[2]["data"]["age"] == 26


async def test_an_idempotent_create_is_applied_once(client: WSClient) -> None:
    key = {"metadata": {"idempotency_key": f"conformance-{uuid.uuid4().hex}"}}
    first = await client.request("create", "users", data={"name": "once"}, **key)
    assert first["success"] is True, first
    retry = await client.request("create", "users", data={"name": "once"}, **key)
    assert (retry["data"], retry["metadata"]) == (first["data"], {"replayed": True})
    conflict = await client.request("create", "users", data={"name": "twice"}, **key)
    assert conflict["error"]["code"] == "idempotency_conflict"
    assert await names(client) == ["once"]


async def test_the_change_log_records_each_committed_change(
    handler: Handler, client: WSClient
) -> None:
    async with asyncio.timeout(30):
        change_log = await handler.adapter.enable_log(
            list(handler.registry), notify=None
        )
        before = (await change_log.positions())["public.users"]
        posts_before = (await change_log.positions())["public.posts"]
        ids = await seed(client)
        await client.ok("update", "users", record_id=ids["Ann"], data={"age": 31})
        failing = await client.request(
            "create", "posts", data={"title": "t", "user_id": 0}
        )
        assert failing["success"] is False
        await client.ok("delete", "users", record_id=ids["bob"])
        seq, epoch = (await change_log.positions())["public.users"]
        assert seq == before[0] + len(PEOPLE) + 2
        _, changes = await change_log.changes_since("public.users", before[0])
        assert [c.operation for c in changes] == ["create"] * len(PEOPLE) + [
            "update",
            "delete",
        ]
        assert [c.seq for c in changes] == list(range(before[0] + 1, seq + 1))
        assert {c.epoch for c in changes} == {epoch}
        assert changes[0].txid and {c.txid for c in changes[: len(PEOPLE)]} == {
            changes[0].txid
        }
        update = changes[len(PEOPLE)]
        assert update.old is not None and update.new is not None
        assert (update.old["age"], update.new["age"]) == (30, 31)
        assert changes[-1].old is not None and changes[-1].old["name"] == "bob"
        assert (await change_log.positions())["public.posts"] == posts_before
        entity = handler.registry.get("users")
        query = build_read_query(handler.registry, entity, QueryOptions(), [], Limits())
        _, total, position = await handler.adapter.snapshot(entity, query)
        assert (total, position) == (len(PEOPLE) - 1, (seq, epoch))


# -- the parity property test --------------------------------------------------------------

LIMITS = Limits(max_page_size=10_000, max_in=50)
EXAMPLES = 100
MAX_ROWS = 8
FILTER_LISTS = 3

WORDS = [
    "", "ann", "Ann", "ANN", "annabel", "émile", "Émile", "ÉMILE", "straße", "STRASSE",
    "STRAẞE", "İstanbul", "istanbul", "ıi", "ΣΟΦΟΣ", "σοφος", "σοφοσ", "中文", "50%",
    "5_0", "a\\b", "a\\\\", "%", "_", "\\", "Z", "a", "é",
]  # fmt: skip
ALPHABET = "abzABZ09 àÀéÉßẞİıIiΣσςЖж中%_\\"
texts = st.one_of(st.sampled_from(WORDS), st.text(ALPHABET, max_size=6))
INT64 = 2**63
row_ints = st.one_of(st.integers(-3, 3), st.integers(-(2**31), 2**31 - 1))
filter_ints = st.one_of(
    row_ints, st.sampled_from([2**31, -(2**31) - 1, INT64 - 1, -INT64])
)
floats = st.one_of(
    st.sampled_from([0.0, -0.0, 0.1, 1.5, -2.25, 1e-300, 1.7e308]),
    st.floats(allow_nan=False, allow_infinity=False),
)
prices = st.decimals(
    min_value=Decimal("-9999999999.99"), max_value=Decimal("9999999999.99"), places=2
)
long_prices = st.decimals(
    min_value=Decimal("-99999999.999"), max_value=Decimal("99999999.999"), places=3
)
moments = st.datetimes(
    min_value=datetime(1900, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
    ),
).map(lambda d: d.isoformat())
USER_COLUMNS = [
    make_column(
        "id", ColumnType.INTEGER, st.nothing(), nullable=False, filters=filter_ints
    ),
    make_column("name", ColumnType.STRING, texts, nullable=False),
    make_column("email", ColumnType.STRING, texts),
    make_column("status", ColumnType.STRING, texts, nullable=False),
    make_column("age", ColumnType.INTEGER, row_ints, filters=filter_ints),
    make_column("score", ColumnType.FLOAT, floats),
    make_column("active", ColumnType.BOOLEAN, st.booleans(), nullable=False),
]
THING_COLUMNS = [
    make_column("count", ColumnType.INTEGER, row_ints, filters=filter_ints),
    make_column("ratio", ColumnType.FLOAT, floats),
    make_column("price", ColumnType.DECIMAL, st.one_of(prices, long_prices).map(str)),
    make_column("label", ColumnType.STRING, texts),
    make_column("body", ColumnType.TEXT, texts),
    make_column("flag", ColumnType.BOOLEAN, st.booleans()),
    make_column("day", ColumnType.DATE, st.dates().map(date.isoformat)),
    make_column("moment", ColumnType.DATETIME, moments),
    make_column("clock", ColumnType.TIME, st.times().map(time.isoformat)),
    make_column(
        "doc",
        ColumnType.JSON,
        st.one_of(st.integers(-2, 2), st.text(max_size=2), st.just({"a": [1, None]})),
    ),
    make_column(
        "blob",
        ColumnType.BYTES,
        st.sampled_from([b"", b"\x00", b"a", b"\xff\x00"]).map(
            lambda b: base64.b64encode(b).decode()
        ),
    ),
]


@st.composite
def text_operand(draw: st.DrawFn, op: Op, col: Column, seen: Sequence[str]) -> str:
    if not seen or draw(st.integers(0, 3)) == 0:
        fresh: str = draw(col.filter_values)
        return fresh
    text = draw(st.sampled_from(seen))
    recasings: list[Callable[[str], str]] = [
        str,
        str,
        str.upper,
        str.lower,
        str.swapcase,
    ]
    recase = draw(st.sampled_from(recasings))
    if op in (Op.LIKE, Op.ILIKE):
        out = []
        for ch in text:
            action = draw(
                st.sampled_from(["keep", "keep", "escape", "one", "many", "case"])
            )
            out.append(
                {
                    "keep": ch,
                    "escape": like_escape(ch),
                    "one": "_",
                    "many": "%",
                    "case": like_escape(ch.swapcase()),
                }[action]
            )
        pattern = "".join(out)
        return pattern + "\\" if draw(st.integers(0, 5)) == 0 else pattern
    start = draw(st.integers(0, len(text)))
    end = draw(st.integers(start, len(text)))
    part = {Op.STARTSWITH: text[:end], Op.ENDSWITH: text[start:]}.get(
        op, text[start:end]
    )
    return recase(part)


@st.composite
def filter_option(
    draw: st.DrawFn, columns: Sequence[Column], rows: Sequence[Record]
) -> FilterOption:
    col = draw(st.sampled_from(columns))
    seen = [row[col.name] for row in rows if row.get(col.name) is not None]
    op = draw(st.sampled_from(col.operators))
    if col.type in TEXT_TYPES and draw(st.booleans()):
        op = draw(st.sampled_from(TEXT_OPS))
    operand = (
        st.one_of(st.sampled_from(seen), col.filter_values)
        if seen
        else col.filter_values
    )
    value: Any
    null_eq = op in (Op.EQ, Op.NEQ) and col.nullable and draw(st.integers(0, 5)) == 0
    if op in (Op.IS_NULL, Op.IS_NOT_NULL) or null_eq:
        value = None
    elif op in (Op.IN, Op.NOT_IN):
        value = draw(st.lists(operand, max_size=3))
    elif op is Op.BETWEEN:
        value = draw(st.lists(operand, min_size=2, max_size=2))
    elif op in TEXT_OPS:
        value = draw(text_operand(op, col, seen))
    else:
        value = draw(operand)
    logic = draw(st.sampled_from([None, None, "AND", "OR", "or"]))
    return FilterOption(col.name, op.value, value, logic)


@dataclass(frozen=True)
class Case:
    rows: list[Record]
    filter_lists: list[list[FilterOption]]


@st.composite
def cases(draw: st.DrawFn, columns: Sequence[Column]) -> Case:
    rows: list[Record] = []
    for _ in range(draw(st.integers(1, MAX_ROWS))):
        row: Record = {}
        for col in columns:
            if col.name == "id":
                continue
            null = col.nullable and draw(st.integers(0, 4)) == 0
            row[col.name] = None if null else draw(col.row_values)
        rows.append(row)
    lists = [
        draw(st.lists(filter_option(columns, rows), min_size=1, max_size=4))
        for _ in range(FILTER_LISTS)
    ]
    return Case(rows, lists)


async def _accept(changes: list[Change]) -> None:
    return None


async def check_parity(handler: Handler, entity_name: str, case: Case) -> None:
    registry, adapter = handler.registry, handler.adapter
    entity = registry.get(entity_name)
    async with asyncio.timeout(60):
        await handler.start()
        await adapter.write(entity, Write("delete"), _accept)  # every row
        rows = tuple(validate_data(entity, row, partial=False) for row in case.rows)
        written = await adapter.write(entity, Write("create", rows=rows), _accept)
        assert written is not None
        stored = [c.new for c in written[1] if c.new is not None]
        assert len(stored) == len(rows)
        for filters in case.filter_lists:
            options = QueryOptions(filters=filters, limit=LIMITS.max_page_size)
            query = build_read_query(registry, entity, options, [], LIMITS)
            found, total = await adapter.read_many(entity, query)
            expr = compile_filters(filters, entity.column_types, max_in=LIMITS.max_in)
            in_memory = [row["id"] for row in stored if matches(expr, row)]
            in_sql = [row["id"] for row in found]
            assert sorted(in_sql, key=str) == sorted(in_memory, key=str), (
                f"filters {filters}: SQL {in_sql}, memory {in_memory}, rows {stored}"
            )
            assert total == len(in_memory)


TABLES = {"public.users": USER_COLUMNS, "public.things": THING_COLUMNS}
table_cases = st.sampled_from(sorted(TABLES)).flatmap(
    lambda name: cases(TABLES[name]).map(lambda case: (name, case))
)


# 100 (EXAMPLES) examples per adapter and database, derandomized (the hypothesis profile
# of tests/conftest.py): each draws a table (users: text, numbers, booleans; things:
# every portable type), 1-8 rows with NULLs, non-ASCII text, %, _ and \, and 3 lists
# of 1-4 filters over every operator, OR groups included.
@settings(max_examples=EXAMPLES)
@given(example=table_cases)
async def test_sql_filtering_equals_subscription_matching(
    handler: Handler, example: tuple[str, Case]
) -> None:
    await check_parity(handler, *example)


# -- the quickstart, served by each ORM -------------------------------------------------

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"
QUICKSTART_ORMS = ["sqlalchemy", "django", "tortoise"]
"""The quickstart's ``--orm`` choices, each held to ``sqlalchemy``'s answers."""
STARTUP_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _output(log: Path) -> str:
    return log.read_text(errors="replace")  # once, when the process died


@contextlib.asynccontextmanager
async def quickstart(orm: str, database: str, log: Path) -> AsyncIterator[str]:
    """``examples/quickstart.py --orm ORM`` as a real process; yields its ws:// URL."""
    port = _free_port()
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(QUICKSTART),
            "--orm",
            orm,
            "--port",
            str(port),
            "--database",
            database,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        async with asyncio.timeout(STARTUP_TIMEOUT):
            while True:  # it gives no other sign of listening
                if proc.returncode is not None:
                    raise AssertionError(f"quickstart exited:\n{_output(log)}")
                try:
                    probe = await WSClient.connect(url, open_timeout=2)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                await probe.close()
                break
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), STARTUP_TIMEOUT)


async def transcript(url: str) -> list[Any]:
    """The same conversation with a quickstart server; answers without timestamps."""
    client, watcher = await WSClient.connect(url), await WSClient.connect(url)
    said: list[Any] = []

    async def say(operation: str, entity: str | None = None, **fields: Any) -> None:
        answer = await client.request(operation, entity, **fields)
        said.append({k: v for k, v in answer.items() if k not in ("id", "timestamp")})

    try:
        await watcher.subscribe(
            "users", options={"filters": [f("status", "eq", "active")]}
        )
        await say("create", "users", data={"name": "Ann", "email": "ann@example.com"})
        await say(
            "create", "users", data={"name": "Bob", "email": "b@x", "status": "away"}
        )
        await say("create", "users", data={"name": "no email"})
        await say("create", "posts", data={"title": "Hello", "user_id": 1})
        await say("create", "posts", data={"title": "Orphan", "user_id": 999})
        await say("read", "users", options={"filters": [f("name", "ilike", "a%")]})
        await say(
            "read", "posts", record_id="1", options={"preload": [{"relation": "user"}]}
        )
        await say(
            "read",
            "users",
            options={
                "columns": ["name"],
                "preload": [{"relation": "posts", "columns": ["title"]}],
                "sort": [{"column": "name", "direction": "desc"}],
                "limit": 1,
                "offset": 1,
            },
        )
        await say("update", "users", record_id=2, data={"status": "active"})
        await say("update", "users", record_id=1, data={"status": "gone"})
        await say("update", "posts", record_id="1", data={"content": "body"})
        await say("delete", "users", record_id=1)
        await say("delete", "posts", record_id=1)
        await say("delete", "users", record_id=1)
        await say("read", "users", record_id=1)
        await say("meta", "users")
        await say("meta", "public.posts")
        await say("read", "users", options={"filters": [f("nope", "eq", 1)]})
        for note in await watcher.drain():
            note["metadata"].pop(
                "epoch"
            )  # names a stream's history: random per database
            said.append(
                {
                    k: v
                    for k, v in note.items()
                    if k not in ("timestamp", "subscription_id")
                }
            )
    finally:
        await client.close()
        await watcher.close()
    return said


async def test_the_quickstart_answers_alike_with_each_orm(
    backend: str, tmp_path: Path
) -> None:
    """``python examples/quickstart.py --orm django`` has ``--orm sqlalchemy``'s wire
    behaviour, each on a new database of its own."""
    transcripts = {}
    for orm in QUICKSTART_ORMS:
        if backend == "sqlite":
            database, made = f"sqlite:///{tmp_path / f'{orm}.db'}", None
        else:
            database = made = await asyncio.wait_for(create_database(), TIMEOUT)
        try:
            async with quickstart(orm, database, tmp_path / f"{orm}.log") as url:
                transcripts[orm] = await asyncio.wait_for(transcript(url), TIMEOUT)
        finally:
            if made is not None:
                await asyncio.wait_for(drop_database(made), TIMEOUT)
    for orm in QUICKSTART_ORMS:
        assert transcripts[orm] == transcripts["sqlalchemy"], orm
    notes = [t for t in transcripts["sqlalchemy"] if t.get("type") == "notification"]
    assert [(n["operation"], n["data"]["name"]) for n in notes] == [
        ("create", "Ann"),
        ("create", "Bob"),
        ("delete", "Ann"),
    ]


# -- Django: the ORM inside a write's transaction -------------------------------------------


async def test_a_django_after_hook_uses_the_orm_inside_the_write(
    database_url: str,
) -> None:
    """An after-hook calling the ORM through ``sync_to_async`` runs in the write's own
    thread and transaction: it sees the uncommitted row, and its failure undoes both."""
    from asgiref.sync import sync_to_async

    from tests.conformance.conftest import configure_django, django_handler

    configure_django()
    from tests.conformance.django_models.models import Post, User

    async with django_handler(database_url, Config()) as handler:
        alias = handler.adapter.using  # type: ignore[attr-defined]
        seen: list[int] = []

        async def audit(ctx: HookContext) -> None:
            if ctx.entity != "posts":
                return
            assert ctx.result is not None
            user_id = ctx.result["user_id"]
            users = User.objects.using(alias)
            await sync_to_async(users.filter(id=user_id).update)(status="posted")
            seen.append(await sync_to_async(Post.objects.using(alias).count)())
            if ctx.result["title"] == "refused":
                raise ValidationError("no", field="title")

        handler.hooks.after(HookType.CREATE)(audit)
        async with serve("direct", handler) as base:
            client = await WSClient.connect(f"{base}/ws")
            try:
                user = await client.ok("create", "users", data={"name": "a"})
                await client.ok(
                    "create", "posts", data={"title": "ok", "user_id": user["id"]}
                )
                refused = await client.request(
                    "create", "posts", data={"title": "refused", "user_id": user["id"]}
                )
                assert refused["error"]["code"] == "validation_error"
                assert seen == [1, 2]  # the second post was visible to the hook…
                assert len(await client.ok("read", "posts")) == 1  # …and rolled back
                read = await client.ok("read", "users", record_id=user["id"])
                assert read["status"] == "posted"
            finally:
                await client.close()
