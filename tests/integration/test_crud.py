"""CRUD and meta over a real socket, on SQLite and PostgreSQL.

Create, read, update and delete answer the stored row re-read from the database;
update has patch semantics; a missing row is ``not_found`` and changes nothing; meta
describes columns with their portable types and relations. Thing has a UUID key, and
a module-local Membership model has a composite key.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tests.support.wsclient import WSClient
from websocketspec import Handler


class _CompositeBase(DeclarativeBase):
    pass


class Membership(_CompositeBase):
    """A row keyed by two columns, served only by this module."""

    __tablename__ = "crud_memberships"

    group_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    member: Mapped[str] = mapped_column(sa.String(50), primary_key=True)
    role: Mapped[str] = mapped_column(sa.String(50))


@pytest.fixture
async def handler(handler: Handler, engine: AsyncEngine) -> Handler:
    """The shared handler, also serving the composite-key model."""
    async with engine.begin() as conn:
        await conn.run_sync(_CompositeBase.metadata.drop_all)
        await conn.run_sync(_CompositeBase.metadata.create_all)
    handler.registry.register_model("public.memberships", Membership)
    return handler


async def error_code(
    client: WSClient, operation: str, entity: str, **fields: Any
) -> str:
    answer = await client.request(operation, entity, **fields)
    assert answer["success"] is False, answer
    assert answer["type"] == "response"
    return str(answer["error"]["code"])


async def all_rows(client: WSClient, entity: str) -> list[dict[str, Any]]:
    rows = await client.ok("read", entity, options={"limit": 1000})
    assert isinstance(rows, list)
    return rows


# -- create -------------------------------------------------------------------------


async def test_create_returns_the_stored_row_with_database_defaults(
    client: WSClient,
) -> None:
    user = await client.ok("create", "users", data={"name": "Ann"})
    assert isinstance(user["id"], int)
    assert user == {
        "id": user["id"],
        "name": "Ann",
        "email": None,
        "status": "active",
        "age": None,
        "score": None,
        "active": True,
    }
    post = await client.ok(
        "create", "posts", data={"title": "Hello", "user_id": user["id"]}
    )
    assert post == {
        "id": post["id"],
        "title": "Hello",
        "content": "",
        "user_id": user["id"],
        "rank": 0,
    }
    assert await client.ok("read", "posts", record_id=post["id"]) == post


async def test_create_stores_every_value_sent(client: WSClient) -> None:
    data = {
        "name": "Bea",
        "email": "bea@example.com",
        "status": "away",
        "age": 0,
        "score": 2.5,
        "active": False,
    }
    user = await client.ok("create", "users", data=data)
    assert user == {"id": user["id"], **data}
    assert await all_rows(client, "users") == [user]


async def test_create_refuses_a_missing_required_column_and_stores_nothing(
    client: WSClient,
) -> None:
    answer = await client.request("create", "users", data={"email": "x@example.com"})
    assert answer["success"] is False
    assert answer["error"]["code"] == "validation_error"
    assert answer["error"]["details"]["field"] == "name"
    assert await all_rows(client, "users") == []


# -- read ---------------------------------------------------------------------------


async def test_read_single_by_string_or_number_id_returns_an_object(
    client: WSClient,
) -> None:
    await client.ok("create", "users", data={"name": "Ann"})
    bob = await client.ok("create", "users", data={"name": "Bob"})
    by_string = await client.ok("read", "users", record_id=str(bob["id"]))
    by_number = await client.ok("read", "users", record_id=bob["id"])
    assert by_string == bob
    assert by_number == bob


async def test_read_single_of_a_missing_row_is_not_found(client: WSClient) -> None:
    await client.ok("create", "users", data={"name": "Ann"})
    assert await error_code(client, "read", "users", record_id="999") == "not_found"


async def test_read_list_returns_an_array_with_metadata(client: WSClient) -> None:
    created = [
        await client.ok("create", "users", data={"name": name})
        for name in ("Ann", "Bob", "Cid")
    ]
    answer = await client.request("read", "users")
    assert answer["success"] is True
    assert answer["data"] == created
    assert answer["metadata"] == {"total": 3, "count": 3, "limit": 100, "offset": 0}

    page = await client.request("read", "users", options={"limit": 2, "offset": 1})
    assert page["data"] == created[1:3]
    assert page["metadata"] == {"total": 3, "count": 2, "limit": 2, "offset": 1}


async def test_read_list_of_an_empty_table(client: WSClient) -> None:
    answer = await client.request("read", "users")
    assert answer["success"] is True
    assert answer["data"] == []
    assert answer["metadata"] == {"total": 0, "count": 0, "limit": 100, "offset": 0}


# -- update -------------------------------------------------------------------------


async def test_update_changes_only_the_keys_sent(client: WSClient) -> None:
    ann = await client.ok(
        "create",
        "users",
        data={"name": "Ann", "email": "ann@example.com", "age": 30, "score": 1.5},
    )
    other = await client.ok("create", "users", data={"name": "Bob", "age": 40})
    updated = await client.ok(
        "update", "users", record_id=str(ann["id"]), data={"age": 31}
    )
    assert updated == {**ann, "age": 31}
    assert await client.ok("read", "users", record_id=ann["id"]) == updated
    assert await client.ok("read", "users", record_id=other["id"]) == other


FALSY = [
    ("email", None),
    ("age", 0),
    ("score", 0.0),
    ("active", False),
    ("name", ""),
    ("status", ""),
]


async def test_update_can_set_each_falsy_value(client: WSClient) -> None:
    """Each key alone: null, 0, false and "" are values, not "leave unchanged"."""
    full = {
        "name": "Ann",
        "email": "ann@example.com",
        "status": "away",
        "age": 30,
        "score": 1.5,
        "active": True,
    }
    users = [await client.ok("create", "users", data=full) for _ in FALSY]
    for user, (column, value) in zip(users, FALSY, strict=True):
        updated = await client.ok(
            "update", "users", record_id=user["id"], data={column: value}
        )
        assert updated == {**user, column: value}, column
    stored = await all_rows(client, "users")
    assert stored == [
        {**user, column: value}
        for user, (column, value) in zip(users, FALSY, strict=True)
    ]
    for row, (column, value) in zip(stored, FALSY, strict=True):
        assert type(row[column]) is type(value), column


async def test_update_of_several_falsy_values_at_once_persists_each(
    client: WSClient,
) -> None:
    ann = await client.ok(
        "create",
        "users",
        data={"name": "Ann", "email": "a@example.com", "age": 5, "active": True},
    )
    data = {"email": None, "age": 0, "active": False, "name": ""}
    updated = await client.ok("update", "users", record_id=ann["id"], data=data)
    assert updated == {**ann, **data}
    assert await all_rows(client, "users") == [{**ann, **data}]


async def test_update_returns_the_reread_row(client: WSClient) -> None:
    """The answer shows the stored values, not the values sent (e.g. UTC datetimes)."""
    thing = await client.ok("create", "things", data={"label": "x"})
    updated = await client.ok(
        "update",
        "things",
        record_id=thing["id"],
        data={"moment": "2024-05-01T12:30:00+02:00", "price": 3},
    )
    assert updated["moment"] == "2024-05-01T10:30:00Z"
    assert updated["price"] == "3.00"
    assert updated == await client.ok("read", "things", record_id=thing["id"])


async def test_update_of_a_missing_row_is_not_found_and_changes_nothing(
    client: WSClient,
) -> None:
    ann = await client.ok("create", "users", data={"name": "Ann"})
    code = await error_code(
        client, "update", "users", record_id=ann["id"] + 1, data={"name": "Zed"}
    )
    assert code == "not_found"
    assert await all_rows(client, "users") == [ann]


async def test_update_refuses_to_change_the_primary_key(client: WSClient) -> None:
    ann = await client.ok("create", "users", data={"name": "Ann"})
    answer = await client.request(
        "update",
        "users",
        record_id=ann["id"],
        data={"id": ann["id"] + 100, "name": "Zed"},
    )
    assert answer["success"] is False
    assert answer["error"]["code"] == "validation_error"
    assert answer["error"]["details"]["field"] == "id"
    assert await all_rows(client, "users") == [ann]


async def test_update_naming_the_same_primary_key_is_allowed(client: WSClient) -> None:
    ann = await client.ok("create", "users", data={"name": "Ann"})
    updated = await client.ok(
        "update", "users", record_id=str(ann["id"]), data={"id": ann["id"], "age": 3}
    )
    assert updated == {**ann, "age": 3}


async def test_update_refuses_an_unknown_column_and_a_wrong_type(
    client: WSClient,
) -> None:
    ann = await client.ok("create", "users", data={"name": "Ann", "age": 3})
    unknown = await client.request(
        "update", "users", record_id=ann["id"], data={"nickname": "A"}
    )
    assert unknown["error"]["code"] == "validation_error"
    assert unknown["error"]["details"]["field"] == "nickname"
    wrong = await client.request(
        "update", "users", record_id=ann["id"], data={"age": "three", "name": "Z"}
    )
    assert wrong["error"]["code"] == "validation_error"
    assert wrong["error"]["details"]["field"] == "age"
    not_null = await client.request(
        "update", "users", record_id=ann["id"], data={"name": None}
    )
    assert not_null["error"]["code"] == "validation_error"
    assert not_null["error"]["details"]["field"] == "name"
    assert await all_rows(client, "users") == [ann]


# -- delete -------------------------------------------------------------------------


async def test_delete_returns_the_deleted_row_and_the_row_is_gone(
    client: WSClient,
) -> None:
    ann = await client.ok("create", "users", data={"name": "Ann", "age": 7})
    bob = await client.ok("create", "users", data={"name": "Bob"})
    deleted = await client.ok("delete", "users", record_id=str(ann["id"]))
    assert deleted == ann
    assert await error_code(client, "read", "users", record_id=ann["id"]) == (
        "not_found"
    )
    assert await all_rows(client, "users") == [bob]


async def test_delete_of_a_missing_row_is_not_found_and_changes_nothing(
    client: WSClient,
) -> None:
    ann = await client.ok("create", "users", data={"name": "Ann"})
    assert await error_code(client, "delete", "users", record_id="12345") == (
        "not_found"
    )
    assert await all_rows(client, "users") == [ann]
    await client.ok("delete", "users", record_id=ann["id"])
    assert await error_code(client, "delete", "users", record_id=ann["id"]) == (
        "not_found"
    )


async def test_a_record_id_that_does_not_fit_the_key_is_refused(
    client: WSClient,
) -> None:
    ann = await client.ok("create", "users", data={"name": "Ann"})
    for operation in ("read", "delete"):
        code = await error_code(client, operation, "users", record_id="abc")
        assert code == "invalid_message"
    code = await error_code(
        client, "update", "users", record_id="abc", data={"name": "Zed"}
    )
    assert code == "invalid_message"
    assert await all_rows(client, "users") == [ann]


# -- every column type, UUID and composite keys -------------------------------------

THING = {
    "count": 42,
    "ratio": 0.25,
    "price": "12.50",
    "label": "Ünïcode ✓",
    "body": "long text\nwith lines",
    "flag": False,
    "day": "2024-02-29",
    "moment": "2024-05-01T12:30:00+02:00",
    "clock": "13:45:10",
    "doc": {"a": [1, 2, None], "b": {"c": "d"}},
    "blob": base64.b64encode(b"\x00\x01\xffdata").decode(),
}

THING_STORED = {**THING, "moment": "2024-05-01T10:30:00Z"}


async def test_every_column_type_round_trips(client: WSClient) -> None:
    thing = await client.ok("create", "things", data=THING)
    assert str(uuid.UUID(thing["id"])) == thing["id"]
    assert thing == {"id": thing["id"], **THING_STORED}
    assert await client.ok("read", "things", record_id=thing["id"]) == thing


async def test_uuid_key_read_update_delete_by_string_id(client: WSClient) -> None:
    thing = await client.ok("create", "things", data=THING)
    other = await client.ok("create", "things", data={"label": "other"})
    key = thing["id"]
    assert await client.ok("read", "things", record_id=key.upper()) == thing
    updated = await client.ok(
        "update", "things", record_id=key, data={"label": None, "count": 0}
    )
    assert updated == {**thing, "label": None, "count": 0}
    assert await client.ok("read", "things", record_id=key) == updated
    assert await client.ok("delete", "things", record_id=key) == updated
    assert await all_rows(client, "things") == [other]
    missing = str(uuid.uuid4())
    assert await error_code(client, "read", "things", record_id=missing) == (
        "not_found"
    )
    assert (
        await error_code(
            client, "update", "things", record_id=missing, data={"count": 1}
        )
        == "not_found"
    )
    assert await error_code(client, "delete", "things", record_id=missing) == (
        "not_found"
    )
    assert await error_code(client, "read", "things", record_id="not-a-uuid") == (
        "invalid_message"
    )


async def test_a_client_chosen_uuid_key_is_kept(client: WSClient) -> None:
    key = str(uuid.uuid4())
    thing = await client.ok("create", "things", data={"id": key, "count": 1})
    assert thing["id"] == key
    assert await client.ok("read", "things", record_id=key) == thing


async def test_composite_key_read_update_delete(client: WSClient) -> None:
    a = await client.ok(
        "create", "memberships", data={"group_id": 1, "member": "ann", "role": "admin"}
    )
    b = await client.ok(
        "create", "memberships", data={"group_id": 1, "member": "bob", "role": "user"}
    )
    c = await client.ok(
        "create", "memberships", data={"group_id": 2, "member": "ann", "role": "user"}
    )
    assert a == {"group_id": 1, "member": "ann", "role": "admin"}
    key = {"group_id": "2", "member": "ann"}
    assert await client.ok("read", "memberships", record_id=key) == c
    updated = await client.ok(
        "update", "memberships", record_id=key, data={"role": "owner"}
    )
    assert updated == {**c, "role": "owner"}
    assert await client.ok("delete", "memberships", record_id=key) == updated
    assert await all_rows(client, "memberships") == [a, b]
    assert await error_code(client, "read", "memberships", record_id=key) == "not_found"
    assert (
        await error_code(client, "read", "memberships", record_id="1")
        == "invalid_message"
    )
    assert (
        await error_code(client, "read", "memberships", record_id={"group_id": 1})
        == "invalid_message"
    )
    refused = await client.request(
        "update",
        "memberships",
        record_id={"group_id": 1, "member": "bob"},
        data={"member": "cid"},
    )
    assert refused["error"]["code"] == "validation_error"
    assert refused["error"]["details"]["field"] == "member"
    assert await all_rows(client, "memberships") == [a, b]


# -- meta ---------------------------------------------------------------------------


async def test_meta_of_every_column_type(client: WSClient) -> None:
    meta = await client.ok("meta", "things")
    assert meta["schema"] == "public"
    assert meta["entity"] == "things"
    assert meta["primary_key"] == ["id"]
    assert meta["relations"] == []
    columns = {column["name"]: column for column in meta["columns"]}
    assert [column["name"] for column in meta["columns"]] == [
        "id",
        "count",
        "ratio",
        "price",
        "label",
        "body",
        "flag",
        "day",
        "moment",
        "clock",
        "doc",
        "blob",
    ]
    assert {name: c["type"] for name, c in columns.items()} == {
        "id": "uuid",
        "count": "integer",
        "ratio": "float",
        "price": "decimal",
        "label": "string",
        "body": "text",
        "flag": "boolean",
        "day": "date",
        "moment": "datetime",
        "clock": "time",
        "doc": "json",
        "blob": "bytes",
    }
    for column in meta["columns"]:
        assert set(column) == {"name", "type", "nullable", "primary_key", "default"}
    assert columns["id"]["primary_key"] is True
    assert columns["id"]["nullable"] is False
    for name, column in columns.items():
        if name != "id":
            assert column["primary_key"] is False, name
            assert column["nullable"] is True, name
            assert column["default"] is None, name


async def test_meta_of_users_and_posts(client: WSClient) -> None:
    users = await client.ok("meta", "users")
    assert users["schema"] == "public"
    assert users["entity"] == "users"
    assert users["primary_key"] == ["id"]
    assert [
        (c["name"], c["type"], c["nullable"], c["primary_key"], c["default"])
        for c in users["columns"]
    ] == [
        ("id", "integer", False, True, None),
        ("name", "string", False, False, None),
        ("email", "string", True, False, None),
        ("status", "string", False, False, "active"),
        ("age", "integer", True, False, None),
        ("score", "float", True, False, None),
        ("active", "boolean", False, False, True),
    ]
    posts = await client.ok("meta", "public.posts")
    assert posts["entity"] == "posts"
    assert [(c["name"], c["type"], c["default"]) for c in posts["columns"]] == [
        ("id", "integer", None),
        ("title", "string", None),
        ("content", "text", ""),
        ("user_id", "integer", None),
        ("rank", "integer", 0),
    ]

    def relations(meta: dict[str, Any]) -> list[dict[str, Any]]:
        keys = ("name", "kind", "entity", "local_columns", "remote_columns")
        for relation in meta["relations"]:
            assert set(relation) <= {*keys, "schema"}, relation
            assert relation.get("schema", "public") == "public"
        return [{k: r[k] for k in keys} for r in meta["relations"]]

    assert relations(users) == [
        {
            "name": "posts",
            "kind": "many",
            "entity": "posts",
            "local_columns": ["id"],
            "remote_columns": ["user_id"],
        }
    ]
    assert relations(posts) == [
        {
            "name": "user",
            "kind": "one",
            "entity": "users",
            "local_columns": ["user_id"],
            "remote_columns": ["id"],
        }
    ]


async def test_meta_of_a_composite_key(client: WSClient) -> None:
    meta = await client.ok("meta", "memberships", schema="public")
    assert meta["primary_key"] == ["group_id", "member"]
    assert [(c["name"], c["primary_key"]) for c in meta["columns"]] == [
        ("group_id", True),
        ("member", True),
        ("role", False),
    ]


async def test_unknown_entity_is_model_not_found(client: WSClient) -> None:
    for operation in ("read", "meta", "delete"):
        code = await error_code(client, operation, "nothing", record_id="1")
        assert code == "model_not_found"
    assert await error_code(client, "meta", "users", schema="other") == (
        "model_not_found"
    )


async def test_null_is_stored_as_null_in_every_column_type(client: WSClient) -> None:
    """A null sent for a JSON column is SQL NULL (found by is_null), not JSON 'null'."""
    nulls = {name: None for name in THING}
    created = await client.ok("create", "things", data={**nulls, "label": None})
    filled = await client.ok("create", "things", data=THING)
    cleared = await client.ok("update", "things", record_id=filled["id"], data=nulls)
    assert cleared == {"id": filled["id"], **nulls}
    for name in THING:
        rows = await client.ok(
            "read",
            "things",
            options={"filters": [{"column": name, "operator": "is_null"}]},
        )
        assert {row["id"] for row in rows} == {created["id"], filled["id"]}, name
        rows = await client.ok(
            "read",
            "things",
            options={"filters": [{"column": name, "operator": "is_not_null"}]},
        )
        assert rows == [], name
