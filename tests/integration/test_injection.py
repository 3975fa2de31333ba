"""SQL injection through every field of a message, on each database and shell.

Identifiers (entity, schema, columns in filters, sort, columns and preload, relations,
operators, data keys) come only from the registry: any other text is refused with
``model_not_found``, ``invalid_column``, ``invalid_filter`` or ``validation_error``.
Values (filter values, LIKE patterns, ``in`` lists, ``between`` bounds, ``record_id``,
data values) are bound as parameters: they match or store exactly what was sent, or are
refused because they do not fit their column. After each test every table still exists
and holds exactly the rows it should, counted directly in the database.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.models import Post, Thing, User
from tests.support.wsclient import WSClient

# Classic payloads: quotes, comments, stacked statements, UNION, tautologies,
# backslashes, LIKE wildcards, NUL bytes and Unicode look-alikes.
PAYLOADS = [
    "'; DROP TABLE users; --",
    '" OR 1=1 --',
    "' OR '1'='1",
    "' OR 1=1 --",
    "id) OR (1=1",
    "1) OR 1=1 --",
    "1 UNION SELECT name, email FROM users --",
    "1 UNION SELECT sql FROM sqlite_master --",
    "1; SELECT pg_sleep(10); --",
    "name; DELETE FROM posts",
    "1=1",
    "*",
    "\\",
    "\\'",
    "\\\\'; DROP TABLE posts; --",
    "%",
    "_",
    "%' OR '1'='1",
    "a%b_c\\%",
    "/**/OR/**/1=1",
    "--",
    "#",
    "`id`",
    '"id"',
    "[id]",
    "id\x00",
    "\x00' OR 1=1 --",
    "\uff55\uff53\uff45\uff52\uff53",  # fullwidth "users"
    "n\u0430me",  # Cyrillic a
    "\u02bc OR 1=1 --",  # modifier letter apostrophe
    "\uff07 OR 1=1 --",  # fullwidth apostrophe
    "name\u202e",
    "\U0001f4a5",
]
# Payloads that can be stored as text (PostgreSQL text refuses NUL; we refuse it first).
STORABLE = [p for p in PAYLOADS if "\x00" not in p]
IDENTIFIERS = [
    *PAYLOADS,
    "rowid",
    "oid",
    "ctid",
    "xmin",
    "_ws_rank",
    "users.id",
    "public.users",
    "Name",
    "NAME",
    "name ",
    " name",
    "lower(name)",
    'name COLLATE "C"',
    "(SELECT 1)",
    "count(*)",
    "title",  # a column of another entity
    "__class__",
    "__table__",
    "metadata",
    "",
]
OPERATORS = [
    "= 1 OR 1=1 --",
    "eq; DROP TABLE users",
    "eq' OR '1'='1",
    "=",
    "==",
    "<>",
    "!=",
    "IS",
    "OR",
    "LIKE '%' --",
    "regexp",
    "glob",
    "match",
    "similar to",
    "~",
    "@@",
    "eq\x00",
    "\uff45\uff51",  # fullwidth "eq"
    "",
]

LEAKS = (
    "traceback",
    "sqlalchemy",
    "asyncpg",
    "aiosqlite",
    "sqlite3",
    "psycopg",
    "integrityerror",
    "operationalerror",
    "programmingerror",
    "syntax error",
    "near ",
    "[sql:",
    "sqlstate",
    "no such table",
    "no such column",
    "does not exist",
)

SEED_USERS = [
    {"id": 1, "name": "alice", "email": "alice@example.com", "age": 30},
    {"id": 2, "name": "Bob", "email": None, "age": None},
    {"id": 3, "name": "O'Brien", "email": "ob@example.com", "age": 41},
    {"id": 4, "name": 'say "hi"', "email": "hi@example.com", "age": 5},
    {"id": 5, "name": "back\\slash", "email": None, "age": 7},
    {"id": 6, "name": "100%", "email": None, "age": 100},
    {"id": 7, "name": "under_score", "email": None, "age": 8},
    {"id": 8, "name": "' OR 1=1 --", "email": "inj@example.com", "age": 9},
    {"id": 9, "name": "\uff55\uff53\uff45\uff52\uff53", "email": None, "age": 10},
]
SEED_POSTS = [
    {"id": 1, "title": "hello", "content": "x", "user_id": 1, "rank": 1},
    {"id": 2, "title": "' OR 1=1 --", "content": "y", "user_id": 1, "rank": 2},
    {"id": 3, "title": "%", "content": "z", "user_id": 3, "rank": 3},
]
TABLES = {"users": User, "posts": Post, "things": Thing}


# -- the database, read directly ------------------------------------------------------


async def snapshot(engine: AsyncEngine) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, read straight from the database."""
    async with engine.connect() as conn:
        names = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
        assert {"users", "posts", "things"} <= set(names), names
        out = {}
        for name, model in TABLES.items():
            table = model.__table__
            rows = (await conn.execute(sa.select(table).order_by(table.c.id))).all()
            out[name] = [dict(row._mapping) for row in rows]
        return out


@dataclass
class Seeded:
    engine: AsyncEngine
    before: dict[str, list[dict[str, Any]]]

    async def users(self) -> list[dict[str, Any]]:
        return (await snapshot(self.engine))["users"]

    async def assert_intact(
        self,
        created: dict[str, int] | None = None,
        deleted_users: frozenset[int] = frozenset(),
    ) -> None:
        """Every table exists, the seeded rows are unchanged (but for the users deleted
        on purpose) and the row counts moved only by the rows created."""
        created = created or {}
        after = await snapshot(self.engine)
        for name, rows in self.before.items():
            gone = deleted_users if name == "users" else frozenset()
            kept = [row for row in rows if row["id"] not in gone]
            seeded_ids = {row["id"] for row in rows}
            still = [row for row in after[name] if row["id"] in seeded_ids]
            assert still == kept, f"{name}: seeded rows changed"
            assert len(after[name]) == len(kept) + created.get(name, 0), (
                f"{name}: {len(after[name])} rows"
            )


@pytest.fixture
async def seeded(engine: AsyncEngine) -> AsyncIterator[Seeded]:
    async with engine.begin() as conn:
        await conn.execute(sa.insert(User), SEED_USERS)
        await conn.execute(sa.insert(Post), SEED_POSTS)
        await conn.execute(sa.insert(Thing).values(label="seed", count=1))
        if engine.dialect.name == "postgresql":
            # Explicit ids do not move PostgreSQL's sequences.
            for table in ("users", "posts"):
                await conn.execute(
                    sa.text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), 100)"
                    )
                )
    seeded = Seeded(engine, await snapshot(engine))
    yield seeded
    # Whatever a test did, no table may be gone or emptied.
    after = await snapshot(engine)
    assert after["posts"], "posts were emptied"


# -- the wire ------------------------------------------------------------------------


def assert_clean(error: dict[str, Any], sent: Any) -> None:
    """The error text names no SQL or driver internals (beyond what was sent)."""
    text = json.dumps(error, ensure_ascii=False).lower()
    echoed = json.dumps(sent, ensure_ascii=False).lower()
    found = [w for w in LEAKS if w in text and w not in echoed]
    assert not found, (found, error)


async def refused(client: WSClient, message: dict[str, Any], code: str) -> None:
    answer = await client.call(message)
    assert answer["success"] is False, (message, answer)
    assert answer["error"]["code"] == code, (message, answer)
    assert_clean(answer["error"], message)


def read(entity: str = "users", **options: Any) -> dict[str, Any]:
    return {
        "type": "request",
        "operation": "read",
        "entity": entity,
        "options": options,
    }


def flt(column: str, operator: str, value: Any = None) -> dict[str, Any]:
    return {"column": column, "operator": operator, "value": value}


async def rows_of(client: WSClient, message: dict[str, Any]) -> list[dict[str, Any]]:
    answer = await client.call(message)
    assert answer["success"] is True, (message, answer)
    data: list[dict[str, Any]] = answer["data"]
    assert answer["metadata"]["total"] == len(data), answer["metadata"]
    return data


def like(pattern: str, *, fold: bool = False) -> Callable[[str], bool]:
    r"""An independent LIKE: ``%``, ``_``, ``\`` escapes (a trailing ``\`` is literal);
    ``fold`` folds both sides with :meth:`str.lower`, as ``ilike`` does."""
    if fold:
        pattern = pattern.lower()
    out, chars = [], iter(pattern)
    for ch in chars:
        if ch == "\\":
            out.append(re.escape(next(chars, "\\")))
        elif ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            out.append(re.escape(ch))
    regex = re.compile("".join(out), re.DOTALL)
    return lambda value: regex.fullmatch(value.lower() if fold else value) is not None


# -- identifiers are refused ---------------------------------------------------------


async def test_column_names_are_refused_everywhere(
    client: WSClient, seeded: Seeded
) -> None:
    for name in IDENTIFIERS:
        # "title" is a column of posts, not of users: ask posts for "email" instead.
        other = "email" if name == "title" else name
        for message in (
            read(filters=[flt(name, "eq", 1)]),
            read(
                filters=[
                    flt("name", "eq", "x"),
                    {**flt(name, "eq", 1), "logic_operator": "OR"},
                ]
            ),
            read(filters=[flt(name, "is_null")]),
            read(sort=[{"column": name, "direction": "asc"}]),
            read(columns=["id", name]),
            read(preload=[{"relation": "posts", "columns": ["id", other]}]),
            read(preload=[{"relation": "posts", "filters": [flt(other, "eq", 1)]}]),
            read(preload=[{"relation": "posts", "sort": [{"column": other}]}]),
            {
                "type": "subscription",
                "operation": "subscribe",
                "entity": "users",
                "options": {"filters": [flt(name, "eq", 1)]},
            },
            {
                "type": "request",
                "operation": "update",
                "entity": "users",
                "record_id": "1",
                "data": {"age": 31},
                "options": {"filters": [flt(name, "eq", 1)]},
            },
            {
                "type": "request",
                "operation": "delete",
                "entity": "users",
                "record_id": "1",
                "options": {"filters": [flt(name, "eq", 1)]},
            },
        ):
            await refused(client, message, "invalid_column")
    await seeded.assert_intact()


async def test_relation_names_are_refused(client: WSClient, seeded: Seeded) -> None:
    for name in [*IDENTIFIERS, "name", "user", "Posts", "posts ", "posts.user"]:
        await refused(client, read(preload=[{"relation": name}]), "invalid_column")
    for name in [*IDENTIFIERS, "title", "posts", "User", "user ", "user.posts"]:
        await refused(
            client, read("posts", preload=[{"relation": name}]), "invalid_column"
        )
    await seeded.assert_intact()


async def test_entity_and_schema_names_are_refused(
    client: WSClient, seeded: Seeded
) -> None:
    schemas = [*PAYLOADS, "main", "temp", "pg_catalog", "information_schema", "PUBLIC"]
    for name in [*IDENTIFIERS, "sqlite_master", "pg_class", "Users", "users "]:
        for entity, schema in (
            (name, None),
            (f"public.{name}", None),
            (f"{name}.users", None),
            ("users", name),
        ):
            if not name or (name == "public.users" and entity == name):
                continue  # the default schema, spelt out or left empty
            for operation in ("read", "create", "meta"):
                message: dict[str, Any] = {
                    "type": "request",
                    "operation": operation,
                    "entity": entity,
                    "data": {"name": "x"},
                }
                if schema is not None:
                    message["schema"] = schema
                await refused(client, message, "model_not_found")
    for schema in schemas:
        await refused(
            client,
            {
                "type": "request",
                "operation": "read",
                "entity": "users",
                "schema": schema,
            },
            "model_not_found",
        )
    await seeded.assert_intact()


async def test_operators_and_logic_operators_are_refused(
    client: WSClient, seeded: Seeded
) -> None:
    for operator in [*OPERATORS, *PAYLOADS]:
        await refused(
            client, read(filters=[flt("name", operator, "x")]), "invalid_filter"
        )
        await refused(
            client,
            read(
                preload=[
                    {"relation": "posts", "filters": [flt("title", operator, "x")]}
                ]
            ),
            "invalid_filter",
        )
        if operator.upper() not in ("", "AND", "OR"):  # "" is the default, AND
            await refused(
                client,
                read(
                    filters=[
                        flt("name", "eq", "x"),
                        {**flt("name", "eq", "y"), "logic_operator": operator},
                    ]
                ),
                "invalid_filter",
            )
    for direction in PAYLOADS:
        await refused(
            client,
            read(sort=[{"column": "name", "direction": direction}]),
            "invalid_message",
        )
    await seeded.assert_intact()


async def test_data_keys_are_refused(client: WSClient, seeded: Seeded) -> None:
    for name in IDENTIFIERS:
        for message in (
            {
                "type": "request",
                "operation": "create",
                "entity": "users",
                "data": {"name": "x", name: 1},
            },
            {
                "type": "request",
                "operation": "update",
                "entity": "users",
                "record_id": "1",
                "data": {name: "x"},
            },
        ):
            answer = await client.call(message)
            assert answer["success"] is False, answer
            assert answer["error"]["code"] == "validation_error", answer
            assert answer["error"]["details"]["field"] == name, answer
            assert_clean(answer["error"], message)
    await seeded.assert_intact()


# -- values are data -----------------------------------------------------------------


# Each text operator with a payload as its value, and what it must match in Python.
TEXT_CASES: list[tuple[str, Callable[[str], Any], Callable[[str, str], bool]]] = [
    ("eq", lambda p: p, lambda n, p: n == p),
    ("neq", lambda p: p, lambda n, p: n != p),
    ("in", lambda p: [p, "nobody"], lambda n, p: n in (p, "nobody")),
    ("not_in", lambda p: [p], lambda n, p: n != p),
    ("between", lambda p: [p, p], lambda n, p: n == p),
    ("gte", lambda p: p, lambda n, p: n >= p),
    ("lt", lambda p: p, lambda n, p: n < p),
    ("like", lambda p: p, lambda n, p: like(p)(n)),
    ("ilike", lambda p: p, lambda n, p: like(p, fold=True)(n)),
    ("contains", lambda p: p, lambda n, p: p in n),
    ("startswith", lambda p: p, lambda n, p: n.startswith(p)),
    ("endswith", lambda p: p, lambda n, p: n.endswith(p)),
]


async def test_filter_values_match_exactly_what_was_sent(
    client: WSClient, seeded: Seeded
) -> None:
    users = await seeded.users()
    names = {u["id"]: u["name"] for u in users}
    for payload in STORABLE:
        for operator, value, predicate in TEXT_CASES:
            option = flt("name", operator, value(payload))
            found = await rows_of(client, read(filters=[option]))
            expected = {i for i, n in names.items() if predicate(n, payload)}
            assert {r["id"] for r in found} == expected, (option, found)
    # The payload stored as a name matches only itself.
    exact = await rows_of(client, read(filters=[flt("name", "eq", "' OR 1=1 --")]))
    assert [r["id"] for r in exact] == [8]
    await seeded.assert_intact()


async def test_values_that_do_not_fit_are_refused_not_run(
    client: WSClient, seeded: Seeded
) -> None:
    for payload in PAYLOADS:
        for option in (
            flt("age", "eq", payload),
            flt("age", "in", [1, payload]),
            flt("age", "between", [payload, 10]),
            flt("active", "eq", payload),
            flt("id", "gt", payload),
        ):
            await refused(client, read(filters=[option]), "invalid_filter")
        await refused(
            client,
            read(
                preload=[{"relation": "posts", "filters": [flt("rank", "eq", payload)]}]
            ),
            "invalid_filter",
        )
        if "\x00" in payload:
            await refused(
                client, read(filters=[flt("name", "eq", payload)]), "invalid_filter"
            )
        for operation in ("read", "update", "delete"):
            message: dict[str, Any] = {
                "type": "request",
                "operation": operation,
                "entity": "users",
                "record_id": payload,
                "data": {"age": 1},
            }
            await refused(client, message, "invalid_message")
            await refused(client, {**message, "entity": "things"}, "invalid_message")
            await refused(
                client, {**message, "record_id": {payload: 1}}, "invalid_message"
            )
        await refused(
            client,
            {
                "type": "request",
                "operation": "create",
                "entity": "users",
                "data": {"name": "x", "age": payload},
            },
            "validation_error",
        )
    await seeded.assert_intact()


async def test_written_payloads_round_trip_exactly(
    client: WSClient, seeded: Seeded
) -> None:
    created: list[int] = []
    for payload in STORABLE:
        data = {"name": payload, "email": payload, "status": payload[:50]}
        row = await client.ok("create", "users", data=data)
        created.append(row["id"])
        assert {k: row[k] for k in data} == data, row
        again = await client.ok("read", "users", record_id=str(row["id"]))
        assert {k: again[k] for k in data} == data, again
        found = await rows_of(client, read(filters=[flt("name", "eq", payload)]))
        assert row["id"] in {r["id"] for r in found}
        assert all(r["name"] == payload for r in found), found
        post = await client.ok(
            "create",
            "posts",
            data={"title": payload[:200], "content": payload, "user_id": row["id"]},
        )
        nested = await rows_of(
            client,
            read(
                filters=[flt("id", "eq", row["id"])],
                preload=[
                    {"relation": "posts", "filters": [flt("title", "eq", payload)]}
                ],
            ),
        )
        assert [p["id"] for p in nested[0]["posts"]] == [post["id"]], nested
        assert nested[0]["posts"][0]["content"] == payload
        thing = await client.ok(
            "create",
            "things",
            data={
                "label": payload[:100],
                "body": payload,
                "doc": {payload: [payload, {"k": payload}]},
                "blob": base64.b64encode(payload.encode()).decode(),
            },
        )
        stored = await client.ok("read", "things", record_id=thing["id"])
        assert stored["body"] == payload
        assert stored["doc"] == {payload: [payload, {"k": payload}]}
        assert base64.b64decode(stored["blob"]).decode() == payload
        # An update with the payload as the value changes just that row.
        updated = await client.ok(
            "update", "users", record_id=str(row["id"]), data={"email": payload + "!"}
        )
        assert updated["email"] == payload + "!"
    for payload in PAYLOADS:
        if "\x00" in payload:
            message = {
                "type": "request",
                "operation": "create",
                "entity": "users",
                "data": {"name": payload},
            }
            await refused(client, message, "validation_error")
    count = len(STORABLE)
    await seeded.assert_intact({"users": count, "posts": count, "things": count})
    # Only the rows written were touched: the seeded ones are unchanged (checked
    # above) and each written one holds its own payload.
    users = {u["id"]: u for u in await seeded.users()}
    for row_id, payload in zip(created, STORABLE, strict=True):
        assert users[row_id]["name"] == payload
        assert users[row_id]["email"] == payload + "!"


async def test_guarded_writes_with_payload_filters_touch_nothing(
    client: WSClient, seeded: Seeded
) -> None:
    for payload in STORABLE:
        # Row 1 is alice: no payload names her, so nothing may be written.
        for operation in ("update", "delete"):
            answer = await client.call(
                {
                    "type": "request",
                    "operation": operation,
                    "entity": "users",
                    "record_id": "1",
                    "data": {"age": 99},
                    "options": {"filters": [flt("name", "eq", payload)]},
                }
            )
            assert answer["success"] is False, answer
            assert answer["error"]["code"] == "not_found", answer
    await seeded.assert_intact()
    # The row whose name is the payload is the only one an injection filter reaches.
    deleted = await client.ok(
        "delete",
        "users",
        record_id="8",
        options={"filters": [flt("name", "eq", "' OR 1=1 --")]},
    )
    assert deleted["name"] == "' OR 1=1 --"
    await seeded.assert_intact(deleted_users=frozenset({8}))
    users = await seeded.users()
    assert [u["id"] for u in users] == [1, 2, 3, 4, 5, 6, 7, 9]


async def test_subscription_filters_with_payloads_match_exactly(
    connect: Callable[..., Any], seeded: Seeded
) -> None:
    watcher: WSClient = await connect()
    writer: WSClient = await connect()
    exact = await watcher.subscribe(
        "users", options={"filters": [flt("name", "eq", "' OR 1=1 --")]}
    )
    pattern = await watcher.subscribe(
        "users", options={"filters": [flt("name", "like", "%' OR '1'='1")]}
    )
    listed = await watcher.subscribe(
        "users", options={"filters": [flt("name", "in", ["'; DROP TABLE users; --"])]}
    )
    names = [
        "' OR 1=1 --",
        "x' OR '1'='1",
        "'; DROP TABLE users; --",
        "' OR 1=1",
        "OR 1=1",
        "anything",
    ]
    for name in names:
        await writer.ok("create", "users", data={"name": name})
    # Changes are delivered in commit order: once the last one (which matches) has
    # arrived, every notification of the earlier ones has too.
    await writer.ok("create", "users", data={"name": "' OR 1=1 --"})
    seen: dict[str, list[str]] = {}
    while len(seen.get(exact, [])) < 2:
        note = await watcher.notification()
        seen.setdefault(note["subscription_id"], []).append(note["data"]["name"])
    assert seen == {
        exact: ["' OR 1=1 --"] * 2,
        pattern: ["x' OR '1'='1"],
        listed: ["'; DROP TABLE users; --"],
    }
    await seeded.assert_intact({"users": len(names) + 1})
