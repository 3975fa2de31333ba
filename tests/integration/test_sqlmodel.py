"""SQLModel models served through the SQLAlchemy adapter, over a real socket.

SQLModel classes are SQLAlchemy declarative models: ``SQLAlchemyAdapter`` serves them
as they are, on SQLite and PostgreSQL (``backend``), behind uvicorn. Their column
types are SQLModel's own (``AutoString``, ``UTCDateTime`` are TypeDecorators), which
the adapter describes by the type they store. The models are in
``tests/support/sqlmodel_models.py``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlmodel import SQLModel

from tests.support.servers import serve
from tests.support.sqlmodel_models import MODELS
from tests.support.wsclient import WSClient
from websocketspec import Handler
from websocketspec.adapters.sqlalchemy import SQLAlchemyAdapter, create_engine

Connect = Callable[..., Any]
TIMEOUT = 30.0


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[str]:
    """The SQLModel models on empty tables, served by uvicorn (overrides the root's)."""
    engine = create_engine(database_url)
    async with asyncio.timeout(TIMEOUT), engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.drop_all)
        await conn.run_sync(SQLModel.metadata.create_all)
    handler = Handler(SQLAlchemyAdapter(engine))
    for name, model in MODELS.items():
        handler.registry.register_model(name, model)
    try:
        async with serve("asgi", handler) as base:
            yield f"{base}/ws"
    finally:
        async with asyncio.timeout(TIMEOUT):
            await handler.stop()
            await engine.dispose()


def f(column: str, operator: str, value: Any = None) -> dict[str, Any]:
    return {"column": column, "operator": operator, "value": value}


def columns(meta: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    return {
        c["name"]: (c["type"], c["nullable"], c["primary_key"], c["default"])
        for c in meta["columns"]
    }


async def test_meta_describes_sqlmodel_types_and_relations(client: WSClient) -> None:
    users = await client.ok("meta", "users")
    assert users["primary_key"] == ["id"]
    assert columns(users) == {
        "id": ("integer", False, True, None),
        "name": ("string", False, False, None),
        "email": ("string", True, False, None),
        "status": ("string", False, False, "active"),
        "active": ("boolean", False, False, True),
        "age": ("integer", True, False, None),
        "score": ("float", True, False, None),
        "balance": ("decimal", True, False, None),
        "joined": ("datetime", True, False, None),
        "key": ("uuid", False, False, None),
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
    posts = await client.ok("meta", "posts")
    assert columns(posts) == {
        "id": ("integer", False, True, None),
        "title": ("string", False, False, None),
        "body": ("text", False, False, ""),
        "user_id": ("integer", False, False, None),
        "published": ("date", True, False, None),
    }
    assert [(r["name"], r["kind"], r["entity"]) for r in posts["relations"]] == [
        ("user", "one", "users")
    ]


async def test_crud_round_trips_sqlmodel_rows(client: WSClient) -> None:
    ann = await client.ok(
        "create",
        "users",
        data={
            "name": "Ann",
            "balance": "12.345",
            "joined": "2024-02-29T23:30:00-05:00",
            "score": 0.1,
        },
    )
    assert ann == {
        "id": ann["id"],
        "name": "Ann",
        "email": None,
        "status": "active",
        "active": True,
        "age": None,
        "score": 0.1,
        "balance": "12.35",
        "joined": "2024-03-01T04:30:00Z",
        "key": ann["key"],
    }
    assert uuid.UUID(ann["key"]).version == 4
    assert await client.ok("read", "users", record_id=str(ann["id"])) == ann
    bob = await client.ok("create", "users", data={"name": "bob", "age": 40})

    patched = await client.ok(
        "update", "users", record_id=ann["id"], data={"email": "a@x", "age": 0}
    )
    assert patched == {**ann, "email": "a@x", "age": 0}
    found = await client.ok(
        "read",
        "users",
        options={
            "filters": [f("joined", "gt", "2024-03-01T04:00:00Z")],
            "sort": [{"column": "name", "direction": "desc"}],
        },
    )
    assert [u["name"] for u in found] == ["Ann"]
    everyone = await client.ok(
        "read", "users", options={"sort": [{"column": "age", "direction": "asc"}]}
    )
    assert [u["name"] for u in everyone] == ["Ann", "bob"]

    post = await client.ok(
        "create",
        "posts",
        data={"title": "Hello", "user_id": bob["id"], "published": "2024-01-02"},
    )
    assert post == {
        "id": post["id"],
        "title": "Hello",
        "body": "",
        "user_id": bob["id"],
        "published": "2024-01-02",
    }
    orphan = await client.request("create", "posts", data={"title": "x", "user_id": 0})
    assert orphan["error"]["code"] == "create_error"
    too_long = await client.request("create", "users", data={"name": "x" * 101})
    assert too_long["error"]["code"] == "validation_error"
    assert too_long["error"]["details"]["field"] == "name"

    assert await client.ok("delete", "posts", record_id=post["id"]) == post
    assert await client.ok("delete", "users", record_id=bob["id"]) == bob
    gone = await client.request("read", "users", record_id=bob["id"])
    assert gone["error"]["code"] == "not_found"


async def test_a_filtered_subscription_is_notified(connect: Connect) -> None:
    client, watcher = await connect(), await connect()
    await watcher.subscribe("users", options={"filters": [f("status", "eq", "active")]})
    ann = await client.ok("create", "users", data={"name": "Ann"})
    await client.ok("create", "users", data={"name": "Zed", "status": "away"})
    await client.ok("update", "users", record_id=ann["id"], data={"age": 31})
    await client.ok("update", "users", record_id=ann["id"], data={"status": "gone"})
    await client.ok("update", "users", record_id=ann["id"], data={"status": "active"})
    await client.ok("delete", "users", record_id=ann["id"])
    notes = await watcher.drain()
    assert [
        (n["operation"], n["data"]["status"], n["metadata"].get("change"))
        for n in notes
    ] == [
        ("create", "active", None),
        ("update", "active", "stay"),
        ("delete", "active", "leave"),  # the old row
        ("create", "active", "enter"),
        ("delete", "active", None),
    ]
    assert {n["entity"] for n in notes} == {"users"}
    assert notes[0]["data"]["key"] == ann["key"]
    assert notes[1]["data"]["age"] == 31


async def test_preload_follows_sqlmodel_relationships(client: WSClient) -> None:
    ann = await client.ok("create", "users", data={"name": "Ann"})
    bob = await client.ok("create", "users", data={"name": "bob"})
    titles = ["a1", "b1", "a2", "a3"]
    owners = [ann, bob, ann, ann]
    await client.ok(
        "create",
        "posts",
        data=[
            {"title": t, "user_id": u["id"]}
            for t, u in zip(titles, owners, strict=True)
        ],
    )
    users = await client.ok(
        "read",
        "users",
        options={
            "columns": ["name"],
            "preload": [
                {
                    "relation": "posts",
                    "columns": ["title"],
                    "sort": [{"column": "title", "direction": "desc"}],
                    "limit": 2,
                }
            ],
        },
    )
    assert users == [
        {"name": "Ann", "posts": [{"title": "a3"}, {"title": "a2"}]},
        {"name": "bob", "posts": [{"title": "b1"}]},
    ]
    posts = await client.ok(
        "read",
        "posts",
        options={
            "columns": ["title"],
            "filters": [f("title", "like", "a%")],
            "preload": [{"relation": "user", "columns": ["name"]}],
        },
    )
    assert posts == [
        {"title": "a1", "user": {"name": "Ann"}},
        {"title": "a2", "user": {"name": "Ann"}},
        {"title": "a3", "user": {"name": "Ann"}},
    ]
