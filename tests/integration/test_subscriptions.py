"""Subscriptions over real sockets: responses, notifications and what each subscriber sees.

Delivery without after-read hooks is synchronous with the write: once the writer has
its response, every notification of that write is queued to its subscribers, so a
subscriber's ``drain()`` (a ping round trip) returns exactly what it was sent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import connect as ws_connect

from tests.support.wsclient import TIMEOUT, WSClient
from websocketspec import Handler, HookContext, HookType

Connect = Callable[..., Any]

NOTIFICATION_KEYS = {
    "type",
    "operation",
    "subscription_id",
    "schema",
    "entity",
    "data",
    "metadata",
    "timestamp",
}


def assert_utc_timestamp(value: Any) -> None:
    assert isinstance(value, str)
    assert value.endswith("Z"), value
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.utcoffset() == dt.timedelta(0)


def assert_notification(
    note: dict[str, Any],
    *,
    subscription_id: str,
    operation: str,
    data: dict[str, Any],
    metadata: dict[str, Any],
    entity: str = "users",
) -> None:
    assert set(note) == NOTIFICATION_KEYS, note
    assert note["type"] == "notification"
    assert note["subscription_id"] == subscription_id
    assert note["operation"] == operation
    assert note["schema"] == "public"
    assert note["entity"] == entity
    assert note["data"] == data
    # Other metadata keys (e.g. sequence numbers) may come along; these must be exact.
    assert {k: note["metadata"].get(k) for k in ("source_operation", "change")} == {
        "source_operation": metadata["source_operation"],
        "change": metadata.get("change"),
    }
    assert_utc_timestamp(note["timestamp"])


async def subscribe_call(client: WSClient, entity: str, **fields: Any) -> Any:
    return await client.call(
        {"type": "subscription", "operation": "subscribe", "entity": entity, **fields}
    )


async def test_subscribe_answers_subscription_id_schema_and_entity(
    client: WSClient,
) -> None:
    answer = await client.call(
        {
            "id": "sub-1",
            "type": "subscription",
            "operation": "subscribe",
            "schema": "public",
            "entity": "users",
            "options": {
                "filters": [{"column": "status", "operator": "eq", "value": "active"}]
            },
        }
    )
    assert answer["id"] == "sub-1"
    assert answer["type"] == "response"
    assert answer["success"] is True
    data = answer["data"]
    assert set(data) == {"subscription_id", "schema", "entity", "position"}
    assert isinstance(data["subscription_id"], str) and data["subscription_id"]
    assert data["schema"] == "public"
    assert data["entity"] == "users"
    # Where the stream stood: a client resumes from here if it hears nothing first.
    assert data["position"]["seq"] == 0
    assert isinstance(data["position"]["epoch"], str) and data["position"]["epoch"]
    assert_utc_timestamp(answer["timestamp"])

    # Without a schema the default one is used; each subscription has its own id.
    other = await subscribe_call(client, "users")
    assert other["success"] is True
    assert other["data"]["schema"] == "public"
    assert other["data"]["entity"] == "users"
    assert other["data"]["subscription_id"] != data["subscription_id"]


async def test_create_update_delete_notifications(
    client: WSClient, connect: Connect
) -> None:
    subscriber: WSClient = await connect()
    sub = await subscriber.subscribe("users")

    created = await client.ok(
        "create", "users", data={"name": "Ann", "email": "ann@example.com", "age": 30}
    )
    assert_notification(
        await subscriber.notification(),
        subscription_id=sub,
        operation="create",
        data=created,
        metadata={"source_operation": "create"},
    )

    updated = await client.ok(
        "update", "users", record_id=str(created["id"]), data={"age": 31}
    )
    assert updated["age"] == 31
    assert_notification(
        await subscriber.notification(),
        subscription_id=sub,
        operation="update",
        data=updated,
        metadata={"source_operation": "update", "change": "stay"},
    )

    deleted = await client.ok("delete", "users", record_id=str(created["id"]))
    assert deleted == updated
    assert_notification(
        await subscriber.notification(),
        subscription_id=sub,
        operation="delete",
        data=updated,
        metadata={"source_operation": "delete"},
    )
    assert await subscriber.drain() == []


async def test_unsubscribe_stops_notifications(
    client: WSClient, connect: Connect
) -> None:
    subscriber: WSClient = await connect()
    first = await subscriber.subscribe("users")
    second = await subscriber.subscribe("users")

    answer = await subscriber.unsubscribe(first)
    assert answer["success"] is True
    assert answer["data"] == {"unsubscribed": True, "subscription_id": first}

    row = await client.ok("create", "users", data={"name": "Ann"})
    await client.ok("update", "users", record_id=row["id"], data={"name": "Anna"})
    await client.ok("delete", "users", record_id=row["id"])
    notes = await subscriber.drain()
    assert [n["subscription_id"] for n in notes] == [second, second, second]
    assert [n["operation"] for n in notes] == ["create", "update", "delete"]

    again = await subscriber.unsubscribe(first)
    assert again["success"] is False
    assert again["error"]["code"] == "subscription_not_found"


async def test_unsubscribe_requires_an_id_this_connection_owns(
    client: WSClient, connect: Connect
) -> None:
    owner: WSClient = await connect()
    sub = await owner.subscribe("users")

    missing = await client.call({"type": "subscription", "operation": "unsubscribe"})
    assert missing["success"] is False
    assert missing["error"]["code"] == "missing_subscription_id"

    foreign = await client.unsubscribe(sub)
    assert foreign["success"] is False
    assert foreign["error"]["code"] == "subscription_not_found"

    # The owner's subscription survived the other connection's attempt.
    row = await client.ok("create", "users", data={"name": "Ann"})
    note = await owner.notification()
    assert note["subscription_id"] == sub
    assert note["data"] == row


async def test_filters_are_evaluated_by_the_server(
    client: WSClient, connect: Connect
) -> None:
    subscriber: WSClient = await connect()
    sub = await subscriber.subscribe(
        "users",
        options={
            "filters": [{"column": "status", "operator": "eq", "value": "active"}]
        },
    )
    await client.ok("create", "users", data={"name": "Ina", "status": "inactive"})
    assert await subscriber.drain() == []

    active = await client.ok(
        "create", "users", data={"name": "Ann", "status": "active"}
    )
    notes = await subscriber.drain()
    assert len(notes) == 1
    assert notes[0]["subscription_id"] == sub
    assert notes[0]["data"] == active


async def test_update_is_enter_stay_or_leave_for_each_subscriber(
    client: WSClient, connect: Connect
) -> None:
    actives: WSClient = await connect()
    inactives: WSClient = await connect()
    sub_active = await actives.subscribe(
        "users",
        options={
            "filters": [{"column": "status", "operator": "eq", "value": "active"}]
        },
    )
    sub_inactive = await inactives.subscribe(
        "users",
        options={
            "filters": [{"column": "status", "operator": "eq", "value": "inactive"}]
        },
    )

    row = await client.ok("create", "users", data={"name": "Ann", "status": "inactive"})
    assert await actives.drain() == []
    assert [n["operation"] for n in await inactives.drain()] == ["create"]

    # inactive -> active: enters one subscription, leaves the other.
    entered = await client.ok(
        "update",
        "users",
        record_id=str(row["id"]),
        data={"status": "active", "name": "Anna"},
    )
    [note] = await actives.drain()
    assert_notification(
        note,
        subscription_id=sub_active,
        operation="create",
        data=entered,
        metadata={"source_operation": "update", "change": "enter"},
    )
    [note] = await inactives.drain()
    assert_notification(
        note,
        subscription_id=sub_inactive,
        operation="delete",
        data=row,  # the old row: never the new values
        metadata={"source_operation": "update", "change": "leave"},
    )
    assert note["data"]["status"] == "inactive"
    assert note["data"]["name"] == "Ann"

    # Stays inside the active filter.
    stayed = await client.ok(
        "update", "users", record_id=str(row["id"]), data={"age": 40}
    )
    [note] = await actives.drain()
    assert_notification(
        note,
        subscription_id=sub_active,
        operation="update",
        data=stayed,
        metadata={"source_operation": "update", "change": "stay"},
    )
    assert await inactives.drain() == []

    # Leaves to a status neither subscription wants: only the one it left hears.
    await client.ok(
        "update", "users", record_id=str(row["id"]), data={"status": "banned"}
    )
    [note] = await actives.drain()
    assert_notification(
        note,
        subscription_id=sub_active,
        operation="delete",
        data=stayed,
        metadata={"source_operation": "update", "change": "leave"},
    )
    assert await inactives.drain() == []

    # Outside both: changes are nobody's business.
    await client.ok("update", "users", record_id=str(row["id"]), data={"age": 41})
    assert await actives.drain() == []
    assert await inactives.drain() == []


async def test_delete_notifies_the_old_row_to_matching_subscriptions(
    client: WSClient, connect: Connect
) -> None:
    subscriber: WSClient = await connect()
    sub = await subscriber.subscribe(
        "users",
        options={"filters": [{"column": "name", "operator": "eq", "value": "Ann"}]},
    )
    ann = await client.ok("create", "users", data={"name": "Ann", "age": 7})
    bob = await client.ok("create", "users", data={"name": "Bob"})
    assert [n["data"] for n in await subscriber.drain()] == [ann]

    await client.ok("delete", "users", record_id=str(bob["id"]))
    assert await subscriber.drain() == []

    await client.ok("delete", "users", record_id=str(ann["id"]))
    [note] = await subscriber.drain()
    assert_notification(
        note,
        subscription_id=sub,
        operation="delete",
        data=ann,
        metadata={"source_operation": "delete"},
    )


async def test_columns_limit_data_but_keep_the_primary_key(
    client: WSClient, connect: Connect
) -> None:
    subscriber: WSClient = await connect()
    await subscriber.subscribe("users", options={"columns": ["name", "status"]})
    row = await client.ok(
        "create", "users", data={"name": "Ann", "email": "a@x.org", "age": 3}
    )
    await client.ok("update", "users", record_id=str(row["id"]), data={"age": 4})
    await client.ok("delete", "users", record_id=str(row["id"]))
    notes = await subscriber.drain()
    assert [n["operation"] for n in notes] == ["create", "update", "delete"]
    for note in notes:
        assert note["data"] == {"id": row["id"], "name": "Ann", "status": "active"}


async def test_writer_gets_its_response_before_its_own_notification(
    server: str,
) -> None:
    async with asyncio.timeout(TIMEOUT), ws_connect(server) as ws:

        async def call(message: dict[str, Any]) -> None:
            await ws.send(json.dumps(message))

        await call(
            {
                "id": "s",
                "type": "subscription",
                "operation": "subscribe",
                "entity": "users",
            }
        )
        answer = json.loads(await ws.recv())
        assert answer["id"] == "s"
        sub = answer["data"]["subscription_id"]

        steps: list[tuple[str, str, dict[str, Any] | None]] = [
            ("c", "create", {"name": "Ann"}),
            ("u", "update", {"name": "Anna"}),
            ("d", "delete", None),
        ]
        row_id: Any = None
        for msg_id, operation, data in steps:
            message: dict[str, Any] = {
                "id": msg_id,
                "type": "request",
                "operation": operation,
                "entity": "users",
            }
            if row_id is not None:
                message["record_id"] = str(row_id)
            if data is not None:
                message["data"] = data
            await call(message)
            first = json.loads(await ws.recv())
            second = json.loads(await ws.recv())
            assert first["type"] == "response" and first["id"] == msg_id, first
            assert first["success"] is True, first
            assert second["type"] == "notification", second
            assert second["subscription_id"] == sub
            assert second["operation"] == operation
            assert second["data"] == first["data"]
            row_id = first["data"]["id"]


async def test_several_subscribers_each_get_exactly_their_matches(
    client: WSClient, connect: Connect
) -> None:
    filters: dict[str, list[dict[str, Any]]] = {
        "active": [{"column": "status", "operator": "eq", "value": "active"}],
        "older": [{"column": "age", "operator": "gt", "value": 30}],
        "named": [{"column": "name", "operator": "in", "value": ["Bo", "Cy", "Zed"]}],
        "a_and_young": [
            {"column": "name", "operator": "startswith", "value": "A"},
            {"column": "age", "operator": "lt", "value": 30},
        ],
    }
    subscribers: dict[str, tuple[WSClient, str]] = {}
    for name, flt in filters.items():
        subscriber: WSClient = await connect()
        sub = await subscriber.subscribe("users", options={"filters": flt})
        subscribers[name] = (subscriber, sub)

    people: list[dict[str, Any]] = [
        {"name": "Al", "status": "active", "age": 20},
        {"name": "Bo", "status": "inactive", "age": 40},
        {"name": "Cy", "status": "active", "age": 31},
        {"name": "Di", "status": "banned"},
        {"name": "Ava", "status": "inactive", "age": 35},
    ]
    for person in people:
        await client.ok("create", "users", data=person)

    expected = {
        "active": {"Al", "Cy"},
        "older": {"Bo", "Cy", "Ava"},
        "named": {"Bo", "Cy"},
        "a_and_young": {"Al"},
    }
    for name, (subscriber, sub) in subscribers.items():
        notes = await subscriber.drain()
        assert {n["subscription_id"] for n in notes} <= {sub}
        assert [n["data"]["name"] for n in notes] == [
            p["name"] for p in people if p["name"] in expected[name]
        ], name


async def test_users_and_public_users_are_one_entity(
    client: WSClient, connect: Connect
) -> None:
    subscriber: WSClient = await connect()
    short = await subscriber.subscribe("users")
    qualified = await subscriber.subscribe("public.users")
    with_schema = await subscriber.subscribe("users", schema="public")

    for fields in ({}, {"schema": "public"}):
        await client.ok("create", "users", data={"name": "Ann"}, **fields)
    await client.ok("create", "public.users", data={"name": "Bob"})

    notes = await subscriber.drain()
    assert len(notes) == 9
    for sub in (short, qualified, with_schema):
        mine = [n for n in notes if n["subscription_id"] == sub]
        assert [n["data"]["name"] for n in mine] == ["Ann", "Ann", "Bob"]
        assert all(n["schema"] == "public" and n["entity"] == "users" for n in mine)


async def test_subscriptions_are_removed_when_the_connection_closes(
    handler: Handler, client: WSClient, connect: Connect
) -> None:
    closed = asyncio.Event()

    def on_disconnect(ctx: HookContext) -> None:
        if ctx.connection.metadata.get("role") == "leaver":
            closed.set()

    def on_connect(ctx: HookContext) -> None:
        ctx.connection.metadata["role"] = ctx.handshake.headers.get("x-role")

    handler.hooks.register_before(HookType.CONNECT, on_connect)
    handler.hooks.register_after(HookType.DISCONNECT, on_disconnect)

    leaver: WSClient = await connect(additional_headers={"X-Role": "leaver"})
    await leaver.subscribe("users")
    await leaver.subscribe("public.users")
    await leaver.subscribe("posts")
    assert handler.stats()["subscriptions"] == {"public.users": 2, "public.posts": 1}

    await leaver.close()
    await asyncio.wait_for(closed.wait(), TIMEOUT)
    assert handler.stats()["subscriptions"] == {}

    # Writes after the subscriber left still work, and a new subscription is counted.
    await client.ok("create", "users", data={"name": "Ann"})
    await client.subscribe("users")
    assert handler.stats()["subscriptions"] == {"public.users": 1}


async def test_or_groups_in_subscription_filters(
    client: WSClient, connect: Connect
) -> None:
    filters = [
        {"column": "status", "operator": "eq", "value": "active"},
        {
            "column": "status",
            "operator": "eq",
            "value": "banned",
            "logic_operator": "OR",
        },
        {"column": "age", "operator": "gte", "value": 18},
    ]
    subscriber: WSClient = await connect()
    await subscriber.subscribe("users", options={"filters": filters})
    people = [
        {"name": "match-active", "status": "active", "age": 20},
        {"name": "match-banned", "status": "banned", "age": 30},
        {"name": "wrong-status", "status": "inactive", "age": 40},
        {"name": "too-young", "status": "active", "age": 10},
        {"name": "no-age", "status": "banned"},
    ]
    for person in people:
        await client.ok("create", "users", data=person)
    notes = await subscriber.drain()
    names = [n["data"]["name"] for n in notes]
    assert names == ["match-active", "match-banned"]

    # The same filters on a read select the same rows: (A OR B) AND C, not A OR (B AND C).
    rows = await client.ok("read", "users", options={"filters": filters})
    assert sorted(r["name"] for r in rows) == sorted(names)


BAD_SUBSCRIPTIONS: list[tuple[dict[str, Any], str]] = [
    ({"filters": [{"column": "nope", "operator": "eq", "value": 1}]}, "invalid_column"),
    (
        {"filters": [{"column": "age", "operator": "near", "value": 1}]},
        "invalid_filter",
    ),
    (
        {"filters": [{"column": "age", "operator": "eq", "value": "old"}]},
        "invalid_filter",
    ),
    ({"filters": [{"column": "age", "operator": "in", "value": 3}]}, "invalid_filter"),
    ({"columns": ["name", "nope"]}, "invalid_column"),
]


async def test_bad_subscriptions_are_refused(
    handler: Handler, client: WSClient
) -> None:
    for options, code in BAD_SUBSCRIPTIONS:
        answer = await subscribe_call(client, "users", options=options)
        assert answer["success"] is False, options
        assert answer["error"]["code"] == code, (options, answer)
    assert handler.stats()["subscriptions"] == {}
    await client.ok("create", "users", data={"name": "Ann", "age": 1})
    assert await client.drain() == []
