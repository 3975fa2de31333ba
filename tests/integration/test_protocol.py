"""The protocol over real sockets on each database: envelope, batches, every error code,
and how values travel."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.models import Base
from tests.support.wsclient import TIMEOUT, WSClient
from websocketspec import (
    Config,
    Handler,
    HookContext,
    HookType,
    UnauthorizedError,
    ValidationError,
)

MAX_BATCH = 5
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")

# Words that would betray database internals in an error message sent to a client.
LEAKS = [
    "sql",
    "insert",
    "update ",
    "delete from",
    "select",
    "foreign",
    "unique",
    "fkey",
    "pkey",
    "users",
    "posts",
    "things",
    "user_id",
    "table",
    "relation",
    "asyncpg",
    "aiosqlite",
    "sqlite",
    "postgres",
    "integrityerror",
    "traceback",
    "detail:",
    "[parameters",
    "$1",
]


@pytest.fixture
def config() -> Config:
    return Config(max_batch=MAX_BATCH)


def assert_timestamp(message: dict[str, Any]) -> None:
    stamp = message["timestamp"]
    assert isinstance(stamp, str)
    assert RFC3339_UTC.match(stamp), stamp
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs(datetime.now(UTC) - parsed) < timedelta(minutes=1)


def assert_error(answer: dict[str, Any], code: str, msg_id: Any) -> dict[str, Any]:
    """Check a failed response's envelope; returns its ``error`` object."""
    assert answer["type"] == "response", answer
    assert answer["id"] == msg_id, answer
    assert type(answer["id"]) is type(msg_id), answer
    assert answer["success"] is False, answer
    assert answer["error"]["code"] == code, answer
    assert isinstance(answer["error"]["message"], str)
    assert answer["error"]["message"], answer
    assert_timestamp(answer)
    error: dict[str, Any] = answer["error"]
    return error


def assert_no_leak(error: dict[str, Any]) -> None:
    text = json.dumps(error).lower()
    leaked = [word for word in LEAKS if word in text]
    assert leaked == [], error


async def assert_alive(client: WSClient) -> None:
    """A good request after a bad one still succeeds on the same connection."""
    answer = await client.request("read", "users", options={"limit": 1})
    assert answer["success"] is True, answer
    assert isinstance(answer["data"], list)


async def fails(client: WSClient, message: dict[str, Any], code: str) -> dict[str, Any]:
    """Send a message with an id; it must fail with ``code``; the socket must survive."""
    message = dict(message)
    message.setdefault("id", client.next_id())
    answer = await client.call(message)
    error = assert_error(answer, code, message["id"])
    await assert_alive(client)
    return error


async def fails_without_id(
    client: WSClient, frame: str | bytes, code: str = "invalid_message"
) -> dict[str, Any]:
    """Send a raw frame answered with ``id: null``; exactly one answer must come."""
    await client.send_raw(frame)
    answer = await client.next_unmatched()
    error = assert_error(answer, code, None)
    await client.barrier()
    assert client.unmatched.empty(), client.unmatched.get_nowait()
    await assert_alive(client)
    return error


async def count(client: WSClient, entity: str) -> int:
    answer = await client.request("read", entity)
    assert answer["success"] is True, answer
    total = answer["metadata"]["total"]
    assert isinstance(total, int)
    return total


def request(operation: str, entity: str | None = None, **fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "request", "operation": operation, **fields}
    if entity is not None:
        message["entity"] = entity
    return message


# -- envelope and correlation -------------------------------------------------------


async def test_string_and_integer_ids_are_echoed_unchanged(client: WSClient) -> None:
    await client.ok("create", "users", data={"name": "Ann"})
    for msg_id in ["r-1", 17, 0, -3, 2**53, "17", "ünï ✓"]:
        answer = await client.call(request("read", "users", id=msg_id))
        assert answer["id"] == msg_id
        assert type(answer["id"]) is type(msg_id)
        assert answer["type"] == "response"
        assert answer["success"] is True
        assert "error" not in answer
        assert [row["name"] for row in answer["data"]] == ["Ann"]
        assert_timestamp(answer)
    # Errors echo the id too, integer or string.
    await fails(client, request("read", "nope", id=99), "model_not_found")
    await fails(client, request("read", "nope", id="x-99"), "model_not_found")


async def test_ping_is_answered_by_pong_with_id_and_timestamp(client: WSClient) -> None:
    for msg_id in ["p-1", 5]:
        answer = await client.call({"id": msg_id, "type": "ping"})
        assert set(answer) == {"id", "type", "timestamp"}
        assert answer["type"] == "pong"
        assert answer["id"] == msg_id
        assert type(answer["id"]) is type(msg_id)
        assert_timestamp(answer)


async def test_requests_in_flight_are_answered_by_id(client: WSClient) -> None:
    # Twenty requests leave before any answer is read; each answer finds its request.
    sent: dict[str, dict[str, Any]] = {}
    for i in range(20):
        msg_id = f"fly-{i}"
        if i % 3 == 0:
            message = request("meta", "posts" if i % 2 else "users", id=msg_id)
        elif i % 3 == 1:
            message = request("create", "users", id=msg_id, data={"name": f"u{i}"})
        else:
            message = {"id": msg_id, "type": "ping"}
        sent[msg_id] = message
    futures = {msg_id: client.expect(msg_id) for msg_id in sent}
    for message in sent.values():
        await client.send_raw(json.dumps(message))
    async with asyncio.timeout(TIMEOUT):
        answers = {msg_id: await future for msg_id, future in futures.items()}
    for msg_id, message in sent.items():
        answer = answers[msg_id]
        assert answer["id"] == msg_id
        if message["type"] == "ping":
            assert answer["type"] == "pong"
        elif message["operation"] == "meta":
            assert answer["data"]["entity"] == message["entity"]
        else:
            assert answer["data"]["name"] == message["data"]["name"]
    await client.barrier()
    assert client.unmatched.empty()
    assert await count(client, "users") == 7


# -- batches ------------------------------------------------------------------------


async def test_batch_elements_are_each_answered_by_their_own_frame(
    client: WSClient,
) -> None:
    batch = [
        request("create", "users", id="b-1", data={"name": "Ann"}),
        request("create", "users", id=2, data={"name": "Bob"}),
        request("meta", "users", id="b-3"),
        {"id": "b-4", "type": "ping"},
        request("read", "nope", id="b-5"),
    ]
    assert len(batch) == MAX_BATCH
    futures = {m["id"]: client.expect(m["id"]) for m in batch}
    await client.send_raw(json.dumps(batch))
    async with asyncio.timeout(TIMEOUT):
        answers = {msg_id: await future for msg_id, future in futures.items()}
    assert answers["b-1"]["success"] is True
    assert answers["b-1"]["data"]["name"] == "Ann"
    assert answers[2]["success"] is True
    assert answers[2]["data"]["name"] == "Bob"
    assert answers["b-3"]["data"]["entity"] == "users"
    assert answers["b-4"]["type"] == "pong"
    # One failing element fails alone: it is not atomic with the others.
    assert_error(answers["b-5"], "model_not_found", "b-5")
    await client.barrier()
    assert client.unmatched.empty()
    rows = await client.ok("read", "users", options={"sort": [{"column": "name"}]})
    assert [r["name"] for r in rows] == ["Ann", "Bob"]


async def test_malformed_element_of_a_batch_is_answered_with_its_id(
    client: WSClient,
) -> None:
    batch = [
        request("create", "users", id="ok", data={"name": "Ann"}),
        {"id": "bad", "type": "request", "operation": 5, "entity": "users"},
    ]
    futures = {m["id"]: client.expect(m["id"]) for m in batch}
    await client.send_raw(json.dumps(batch))
    async with asyncio.timeout(TIMEOUT):
        good, bad = futures["ok"], futures["bad"]
        assert (await good)["success"] is True
        assert_error(await bad, "invalid_message", "bad")
    assert await count(client, "users") == 1


def creates(n: int) -> list[dict[str, Any]]:
    return [
        request("create", "users", id=f"c-{i}", data={"name": f"u{i}"})
        for i in range(n)
    ]


async def test_bad_batch_gets_one_invalid_message_and_runs_nothing(
    client: WSClient,
) -> None:
    bad_batches: list[list[Any]] = [
        [],
        [*creates(2), 5],
        [*creates(2), "ping"],
        [*creates(2), None],
        [*creates(2), [request("create", "users", data={"name": "nested"})]],
        creates(MAX_BATCH + 1),
    ]
    for batch in bad_batches:
        # The elements' ids are not awaited: any answer to them would land in
        # `unmatched`, which must hold exactly the one error.
        await fails_without_id(client, json.dumps(batch))
    assert await count(client, "users") == 0
    # A batch of exactly max_batch elements runs them all.
    batch = creates(MAX_BATCH)
    futures = [client.expect(m["id"]) for m in batch]
    await client.send_raw(json.dumps(batch))
    async with asyncio.timeout(TIMEOUT):
        for future in futures:
            assert (await future)["success"] is True
    assert await count(client, "users") == MAX_BATCH


# -- frames that are not messages ------------------------------------------------


async def test_binary_frame_is_invalid_message_and_the_connection_lives(
    client: WSClient,
) -> None:
    body = json.dumps(request("create", "users", id="bin", data={"name": "X"}))
    error = await fails_without_id(client, body.encode())
    assert "binary" in error["message"].lower()
    assert await count(client, "users") == 0


async def test_frame_that_is_not_a_json_message_is_invalid_message_with_null_id(
    client: WSClient,
) -> None:
    for frame in ["not json", "{", '{"id": "a",}', "", "42", '"ping"', "null", "true"]:
        await fails_without_id(client, frame)
    # Messages packed with newlines (as the Go server did) are one bad frame.
    one = json.dumps(request("create", "users", id="n-1", data={"name": "A"}))
    two = json.dumps(request("create", "users", id="n-2", data={"name": "B"}))
    await fails_without_id(client, f"{one}\n{two}")
    assert await count(client, "users") == 0


# -- invalid_message -------------------------------------------------------------


async def test_missing_id_is_invalid_message(client: WSClient) -> None:
    for message in [
        request("create", "users", data={"name": "Ann"}),
        request("create", "users", id=None, data={"name": "Ann"}),
        {"type": "subscription", "operation": "subscribe", "entity": "users"},
    ]:
        await fails_without_id(client, json.dumps(message))
    # An empty id is no id either; it is echoed as sent.
    await fails(
        client,
        request("create", "users", id="", data={"name": "Ann"}),
        "invalid_message",
    )
    assert await count(client, "users") == 0
    # Nor was a subscription made: a create notifies no one.
    await client.ok("create", "users", data={"name": "Bob"})
    assert await client.drain() == []


async def test_missing_type_operation_or_entity_is_invalid_message(
    client: WSClient,
) -> None:
    await fails(client, {"operation": "read", "entity": "users"}, "invalid_message")
    await fails(client, {"type": "request", "entity": "users"}, "invalid_message")
    await fails(client, {"type": "subscription", "entity": "users"}, "invalid_message")
    for operation in ["read", "create", "update", "delete", "meta"]:
        error = await fails(
            client,
            request(operation, record_id="1", data={"name": "Ann"}),
            "invalid_message",
        )
        assert "entity" in error["message"]
    await fails(
        client,
        {"type": "subscription", "operation": "subscribe"},
        "invalid_message",
    )
    await fails(client, request("read", ""), "invalid_message")
    assert await count(client, "users") == 0


async def test_field_of_the_wrong_type_is_invalid_message_with_the_id(
    client: WSClient,
) -> None:
    for message in [
        request("read", "users", id="w-1", options={"limit": "ten"}),
        request("read", "users", id=8, options={"columns": "name"}),
        {"id": "w-3", "type": "request", "operation": ["read"], "entity": "users"},
        {"id": "w-4", "type": "request", "operation": "read", "entity": 7},
        request("create", "users", id="w-5", data={"name": "A"}, record_id=[1]),
    ]:
        await fails(client, message, "invalid_message")
    assert await count(client, "users") == 0


# -- invalid_message_type and invalid_operation -----------------------------------


async def test_unknown_or_server_only_type_is_invalid_message_type(
    client: WSClient,
) -> None:
    for kind in ["query", "response", "notification", "pong", "subscribe"]:
        message = request("create", "users", data={"name": "Ann"})
        message["type"] = kind
        await fails(client, message, "invalid_message_type")
    assert await count(client, "users") == 0


async def test_operation_not_valid_for_its_type_is_invalid_operation(
    client: WSClient,
) -> None:
    for kind, operation in [
        ("request", "subscribe"),
        ("request", "unsubscribe"),
        ("subscription", "read"),
        ("subscription", "create"),
        ("request", "drop"),
        ("subscription", "resubscribe"),
    ]:
        error = await fails(
            client,
            {
                "type": kind,
                "operation": operation,
                "entity": "users",
                "data": {"name": "Ann"},
                "subscription_id": "sub-x",
            },
            "invalid_operation",
        )
        assert operation in error["message"]
    assert await count(client, "users") == 0
    # `subscribe` sent as a request made no subscription.
    await client.ok("create", "users", data={"name": "Bob"})
    assert await client.drain() == []


# -- model_not_found ---------------------------------------------------------------


async def test_unknown_entity_or_schema_is_model_not_found(client: WSClient) -> None:
    for message in [
        request("read", "nope"),
        request("create", "nope", data={"name": "Ann"}),
        request("meta", "nope"),
        request("read", "users", schema="other"),
        request("read", "other.users"),
        request("read", "public.nope"),
        request("delete", "users", schema="private", record_id="1"),
        {"type": "subscription", "operation": "subscribe", "entity": "nope"},
        {"type": "subscription", "operation": "subscribe", "entity": "x.users"},
    ]:
        await fails(client, message, "model_not_found")


async def test_users_and_public_users_are_the_same_entity(client: WSClient) -> None:
    created = await client.ok("create", "public.users", data={"name": "Ann"})
    same = [
        await client.ok("read", "users"),
        await client.ok("read", "public.users"),
        await client.ok("read", "users", schema="public"),
    ]
    assert same == [[created]] * 3
    one = await client.ok(
        "read", "users", schema="public", record_id=str(created["id"])
    )
    assert one == created
    assert (await client.ok("meta", "public.users"))["entity"] == "users"
    assert (await client.ok("meta", "users"))["schema"] == "public"
    # A subscription to `users` sees a write to `public.users`, and the other way round.
    sub_short = await client.subscribe("users")
    sub_long = await client.subscribe("users", schema="public")
    await client.ok("update", "public.users", record_id=created["id"], data={"age": 3})
    notes = [await client.notification(), await client.notification()]
    assert await client.drain() == []
    assert sorted(n["subscription_id"] for n in notes) == sorted([sub_short, sub_long])
    assert all(n["entity"] == "users" and n["schema"] == "public" for n in notes)


# -- invalid_model -----------------------------------------------------------------


async def test_missing_or_non_object_data_is_invalid_model(client: WSClient) -> None:
    created = await client.ok("create", "users", data={"name": "Ann"})
    key = created["id"]
    for data in [None, [], [5], ["name=Bob"], "name=Bob", 5, True]:
        create = request("create", "users")
        if data is not None:
            create["data"] = data
        await fails(client, create, "invalid_model")
    # A list of rows is a multi-row create; an update takes one object only.
    for patch in [None, [], [{"name": "Bob"}], "name=Bob", 5, True]:
        update = request("update", "users", record_id=key)
        if patch is not None:
            update["data"] = patch
        await fails(client, update, "invalid_model")
    # Explicit JSON null is "missing" too.
    await fails(client, request("create", "users", data=None), "invalid_model")
    assert await client.ok("read", "users") == [created]


# -- validation_error --------------------------------------------------------------


async def test_values_that_do_not_fit_are_validation_errors_naming_the_field(
    client: WSClient,
) -> None:
    user = await client.ok("create", "users", data={"name": "Ann"})
    key = user["id"]
    cases: list[tuple[str, dict[str, Any], str]] = [
        # unknown column
        ("create", {"name": "Bob", "nickname": "b"}, "nickname"),
        ("update", {"nickname": "b"}, "nickname"),
        # wrong type
        ("create", {"name": 5}, "name"),
        ("create", {"name": "Bob", "age": "ten"}, "age"),
        ("create", {"name": "Bob", "age": 1.5}, "age"),
        ("create", {"name": "Bob", "active": 1}, "active"),
        ("create", {"name": "Bob", "age": True}, "age"),
        ("create", {"name": "Bob", "score": "1.5"}, "score"),
        ("update", {"email": ["a@b.c"]}, "email"),
        ("update", {"active": "false"}, "active"),
        # missing required field
        ("create", {"email": "bob@example.com"}, "name"),
        ("create", {}, "name"),
        # null into a non-nullable column
        ("create", {"name": None}, "name"),
        ("update", {"name": None}, "name"),
        ("update", {"active": None}, "active"),
        # the primary key cannot change
        ("update", {"id": key + 1}, "id"),
    ]
    for operation, data, field in cases:
        message = request(operation, "users", data=data)
        if operation == "update":
            message["record_id"] = key
        error = await fails(client, message, "validation_error")
        assert error["details"]["field"] == field, (data, error)
    # A post needs its title and its user.
    error = await fails(
        client, request("create", "posts", data={"user_id": key}), "validation_error"
    )
    assert error["details"]["field"] == "title"
    error = await fails(
        client, request("create", "posts", data={"title": "T"}), "validation_error"
    )
    assert error["details"]["field"] == "user_id"
    assert await client.ok("read", "users") == [user]
    assert await count(client, "posts") == 0
    # The counterpart of the null checks: null, 0, false and "" are values.
    other = await client.ok(
        "create",
        "users",
        data={"name": "", "email": None, "age": 0, "active": False},
    )
    assert (other["name"], other["email"], other["age"], other["active"]) == (
        "",
        None,
        0,
        False,
    )


# -- invalid_filter and invalid_column --------------------------------------------


def with_filter(**filter_: Any) -> dict[str, Any]:
    return {"filters": [filter_]}


async def test_bad_filters_are_invalid_filter(client: WSClient) -> None:
    ann = await client.ok("create", "users", data={"name": "Ann", "age": 30})
    # Good filters first, so that the refusals below are about the values alone.
    for operator, value in [
        ("eq", 30),
        ("GTE", 30),
        ("In", [30, 31]),
        ("between", [1, 30]),
    ]:
        rows = await client.ok(
            "read",
            "users",
            options=with_filter(column="age", operator=operator, value=value),
        )
        assert [r["name"] for r in rows] == ["Ann"]
    bad = [
        with_filter(column="age", operator="approx", value=30),
        with_filter(column="age", operator="", value=30),
        with_filter(column="age", operator="eq", value="thirty"),
        with_filter(column="age", operator="gt", value="30"),
        with_filter(column="age", operator="eq", value=True),
        with_filter(column="active", operator="eq", value="yes"),
        with_filter(column="age", operator="in", value="30,31"),
        with_filter(column="age", operator="in", value=30),
        with_filter(column="age", operator="not_in", value={"a": 30}),
        with_filter(column="age", operator="in", value=[30, None]),
        with_filter(column="age", operator="in", value=[30, "x"]),
        with_filter(column="age", operator="between", value=[1]),
        with_filter(column="age", operator="between", value=[1, 2, 3]),
        with_filter(column="age", operator="between", value=10),
        with_filter(column="age", operator="like", value="3%"),
        with_filter(column="name", operator="gt", value=None),
        with_filter(column="age", operator="eq", value=1, logic_operator="XOR"),
        {"filters": "age = 30"},
        {"filters": [{"column": "age", "value": 30}]},
    ]
    for options in bad:
        await fails(client, request("read", "users", options=options), "invalid_filter")
    # The same checks guard subscriptions, updates, deletes and preloads.
    await fails(
        client,
        {
            "type": "subscription",
            "operation": "subscribe",
            "entity": "users",
            "options": with_filter(column="age", operator="eq", value="x"),
        },
        "invalid_filter",
    )
    await fails(
        client,
        request(
            "update",
            "users",
            record_id=ann["id"],
            data={"name": "Bob"},
            options=with_filter(column="age", operator="approx", value=1),
        ),
        "invalid_filter",
    )
    await fails(
        client,
        request(
            "delete",
            "users",
            record_id=ann["id"],
            options=with_filter(column="age", operator="eq", value="x"),
        ),
        "invalid_filter",
    )
    await fails(
        client,
        request(
            "read",
            "users",
            options={
                "preload": [
                    {
                        "relation": "posts",
                        "filters": [{"column": "rank", "operator": "eq", "value": "x"}],
                    }
                ]
            },
        ),
        "invalid_filter",
    )
    # Nothing was changed by the refused update and delete.
    assert await client.ok("read", "users") == [ann]
    # A subscription refused made no subscription.
    await client.ok("create", "users", data={"name": "Bob"})
    assert await client.drain() == []


async def test_unknown_columns_and_relations_are_invalid_column(
    client: WSClient,
) -> None:
    await client.ok("create", "users", data={"name": "Ann"})
    cases: list[tuple[dict[str, Any], str]] = [
        (with_filter(column="nope", operator="eq", value=1), "nope"),
        (
            {
                "filters": [
                    {"column": "name", "operator": "eq", "value": "Ann"},
                    {
                        "column": "Name",
                        "operator": "eq",
                        "value": "x",
                        "logic_operator": "OR",
                    },
                ]
            },
            "Name",
        ),
        ({"sort": [{"column": "nope", "direction": "asc"}]}, "nope"),
        ({"columns": ["id", "nope"]}, "nope"),
        ({"preload": [{"relation": "comments"}]}, "comments"),
        ({"preload": [{"relation": "posts", "columns": ["id", "nope"]}]}, "nope"),
        ({"preload": [{"relation": "posts", "sort": [{"column": "nope"}]}]}, "nope"),
        (
            {
                "preload": [
                    {
                        "relation": "posts",
                        "filters": [{"column": "nope", "operator": "eq", "value": 1}],
                    }
                ]
            },
            "nope",
        ),
        # A column of the related entity is not a relation.
        ({"preload": [{"relation": "name"}]}, "name"),
    ]
    for options, field in cases:
        error = await fails(
            client, request("read", "users", options=options), "invalid_column"
        )
        assert error["details"]["field"] == field, (options, error)
    for options in [
        with_filter(column="nope", operator="eq", value=1),
        {"columns": ["nope"]},
    ]:
        await fails(
            client,
            {
                "type": "subscription",
                "operation": "subscribe",
                "entity": "users",
                "options": options,
            },
            "invalid_column",
        )
    await client.ok("create", "users", data={"name": "Bob"})
    assert await client.drain() == []


# -- not_found -------------------------------------------------------------------


async def test_missing_record_is_not_found(client: WSClient) -> None:
    user = await client.ok("create", "users", data={"name": "Ann"})
    missing = user["id"] + 1000
    for record_id in [missing, str(missing)]:
        await fails(client, request("read", "users", record_id=record_id), "not_found")
        await fails(
            client,
            request("update", "users", record_id=record_id, data={"name": "X"}),
            "not_found",
        )
        await fails(
            client, request("delete", "users", record_id=record_id), "not_found"
        )
    thing = str(uuid.uuid4())
    await fails(client, request("read", "things", record_id=thing), "not_found")
    # A record that was there and is gone.
    await client.ok("delete", "users", record_id=user["id"])
    await fails(client, request("delete", "users", record_id=user["id"]), "not_found")
    await fails(client, request("read", "users", record_id=user["id"]), "not_found")
    assert await count(client, "users") == 0


# -- subscriptions: missing_subscription_id and subscription_not_found ----------------


def unsubscribe(**fields: Any) -> dict[str, Any]:
    return {"type": "subscription", "operation": "unsubscribe", **fields}


async def test_unsubscribe_without_subscription_id_is_missing_subscription_id(
    client: WSClient,
) -> None:
    sub = await client.subscribe("users")
    await fails(client, unsubscribe(), "missing_subscription_id")
    await fails(client, unsubscribe(subscription_id=""), "missing_subscription_id")
    await fails(client, unsubscribe(subscription_id=None), "missing_subscription_id")
    # The subscription is untouched.
    await client.ok("create", "users", data={"name": "Ann"})
    note = await client.notification()
    assert note["subscription_id"] == sub


async def test_unsubscribe_with_an_unknown_id_is_subscription_not_found(
    client: WSClient, connect: Callable[..., Any]
) -> None:
    await fails(
        client, unsubscribe(subscription_id="sub-nope"), "subscription_not_found"
    )
    other: WSClient = await connect()
    theirs = await other.subscribe("users")
    # Another connection's subscription cannot be ended from here.
    await fails(client, unsubscribe(subscription_id=theirs), "subscription_not_found")
    await client.ok("create", "users", data={"name": "Ann"})
    note = await other.notification()
    assert note["subscription_id"] == theirs
    # Unsubscribing twice: the second time it is gone.
    mine = await client.subscribe("users")
    answer = await client.call(unsubscribe(subscription_id=mine))
    assert answer["success"] is True
    assert answer["data"] == {"unsubscribed": True, "subscription_id": mine}
    await fails(client, unsubscribe(subscription_id=mine), "subscription_not_found")
    await client.ok("create", "users", data={"name": "Bob"})
    assert await client.drain() == []


# -- database failures: <operation>_error with a neutral message ---------------------


async def test_constraint_violations_are_operation_errors_that_leak_nothing(
    client: WSClient,
) -> None:
    user = await client.ok("create", "users", data={"name": "Ann"})
    post = await client.ok(
        "create", "posts", data={"title": "T", "user_id": user["id"]}
    )
    missing_user = user["id"] + 1000
    await client.subscribe("users")
    await client.subscribe("posts")
    # A foreign key naming no row.
    error = await fails(
        client,
        request("create", "posts", data={"title": "X", "user_id": missing_user}),
        "create_error",
    )
    assert_no_leak(error)
    # A duplicate primary key.
    error = await fails(
        client,
        request("create", "users", data={"id": user["id"], "name": "Dup"}),
        "create_error",
    )
    assert_no_leak(error)
    # An update breaking the foreign key.
    error = await fails(
        client,
        request(
            "update", "posts", record_id=post["id"], data={"user_id": missing_user}
        ),
        "update_error",
    )
    assert_no_leak(error)
    # A delete of a row that others still reference.
    error = await fails(
        client, request("delete", "users", record_id=user["id"]), "delete_error"
    )
    assert_no_leak(error)
    # Every failed write was rolled back, and notified no one.
    assert await client.ok("read", "users") == [user]
    assert await client.ok("read", "posts") == [post]
    assert await client.drain() == []


async def test_database_failure_in_a_read_is_read_error(
    client: WSClient, engine: AsyncEngine
) -> None:
    await client.ok("create", "things", data={"count": 1})
    # The table disappears under the server: every read of it fails in the database.
    table = Base.metadata.tables["things"]
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync_conn: table.drop(sync_conn))
    error = await fails(client, request("read", "things"), "read_error")
    assert_no_leak(error)
    error = await fails(
        client,
        request("read", "things", record_id=str(uuid.uuid4())),
        "read_error",
    )
    assert_no_leak(error)
    error = await fails(
        client, request("create", "things", data={"count": 2}), "create_error"
    )
    assert_no_leak(error)


# -- hooks: unauthorized, a hook's own code, hook_error -------------------------------


async def test_hook_errors_reach_the_client_with_their_codes(
    handler: Handler, client: WSClient
) -> None:
    @handler.hooks.before(HookType.READ)
    def guard(ctx: HookContext) -> None:
        if ctx.entity == "posts":
            raise UnauthorizedError("posts are private")

    @handler.hooks.before(HookType.CREATE)
    async def check(ctx: HookContext) -> None:
        data = ctx.data or {}
        if data.get("name") == "boom":
            raise RuntimeError("secret internal detail")
        if data.get("email") == "bad":
            raise ValidationError("email is not an address", field="email")

    error = await fails(client, request("read", "posts"), "unauthorized")
    assert error["message"] == "posts are private"
    error = await fails(
        client,
        request("create", "users", data={"name": "Ann", "email": "bad"}),
        "validation_error",
    )
    assert error["details"] == {"field": "email"}
    error = await fails(
        client, request("create", "users", data={"name": "boom"}), "hook_error"
    )
    assert "secret" not in json.dumps(error)
    assert await count(client, "users") == 0


async def test_result_that_cannot_be_encoded_still_gets_an_answer(
    handler: Handler, client: WSClient
) -> None:
    # A hook author's mistake: a value JSON cannot hold. The client must get an
    # answer (the operation's code inside a read, internal_error for meta), not wait.
    @handler.hooks.after(HookType.READ)
    def unencodable_read(ctx: HookContext) -> None:
        if ctx.entity == "posts":
            ctx.result = [{"secret": object()}]

    @handler.hooks.after(HookType.META)
    def unencodable_meta(ctx: HookContext) -> None:
        ctx.result = {"secret": object()}

    error = await fails(client, request("read", "posts"), "read_error")
    assert "secret" not in json.dumps(error)
    error = await fails(client, request("meta", "users"), "internal_error")
    assert "secret" not in json.dumps(error)
    assert "object" not in error["message"]


# -- values on the wire ------------------------------------------------------------


async def test_values_of_every_type_travel_as_the_contract_says(
    client: WSClient,
) -> None:
    thing_id = str(uuid.uuid4())
    sent = {
        "id": thing_id,
        "count": 42,
        "ratio": 0.5,
        "price": "12.50",
        "label": "naïve ✓",
        "body": "line\nline",
        "flag": False,
        "day": "2024-02-29",
        "moment": "2024-05-06T07:08:09",
        "clock": "07:08:09",
        "doc": {"list": [1, 2.5, None, "x"], "nested": {"ok": True}},
        "blob": "AP9oaQ==",
    }
    expected = {
        **sent,
        "moment": "2024-05-06T07:08:09Z",  # a naive datetime is taken as UTC
    }
    created = await client.ok("create", "things", data=sent)
    assert created == expected
    assert await client.ok("read", "things", record_id=thing_id) == expected
    assert await client.ok("read", "things") == [expected]


async def test_datetimes_with_an_offset_come_back_in_utc(client: WSClient) -> None:
    created = await client.ok(
        "create", "things", data={"moment": "2024-05-06T09:08:09.250000+02:00"}
    )
    assert created["moment"] == "2024-05-06T07:08:09.250000Z"
    updated = await client.ok(
        "update",
        "things",
        record_id=created["id"],
        data={"moment": "2024-12-31T23:30:00-01:00"},
    )
    assert updated["moment"] == "2025-01-01T00:30:00Z"
    # Filters take offsets too, and compare instants.
    for value in ["2025-01-01T00:30:00Z", "2025-01-01T02:30:00+02:00"]:
        rows = await client.ok(
            "read",
            "things",
            options=with_filter(column="moment", operator="eq", value=value),
        )
        assert [r["id"] for r in rows] == [created["id"]]


async def test_server_generated_values_are_encoded_too(client: WSClient) -> None:
    created = await client.ok("create", "things", data={})
    # The UUID key came from the model's default: a string on the wire.
    assert isinstance(created["id"], str)
    assert str(uuid.UUID(created["id"])) == created["id"]
    assert {k: v for k, v in created.items() if k != "id"} == {
        "count": None,
        "ratio": None,
        "price": None,
        "label": None,
        "body": None,
        "flag": None,
        "day": None,
        "moment": None,
        "clock": None,
        "doc": None,
        "blob": None,
    }
    # Decimals are strings whether sent as a string or as a number.
    updated = await client.ok(
        "update", "things", record_id=created["id"], data={"price": 3}
    )
    assert updated["price"] == "3.00"


async def test_bad_values_for_typed_columns_are_validation_errors(
    client: WSClient,
) -> None:
    for field, value in [
        ("moment", "yesterday"),
        ("moment", 1_700_000_000),
        ("day", "2024-02-30"),
        ("clock", "25:00:00"),
        ("price", "abc"),
        ("price", True),
        ("blob", "not base64!"),
        ("id", "not-a-uuid"),
        ("flag", 0),
        ("ratio", "0.5"),
    ]:
        error = await fails(
            client, request("create", "things", data={field: value}), "validation_error"
        )
        assert error["details"]["field"] == field
    assert await count(client, "things") == 0
