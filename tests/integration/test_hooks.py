"""Hooks over real sockets: every hook type, what hooks see and change, row security,
transactions, error codes and the handshake."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from tests.support.wsclient import TIMEOUT, WSClient
from websocketspec import (
    FilterOption,
    Handler,
    HookContext,
    HookType,
    ProtocolError,
    QueryOptions,
    UnauthorizedError,
    ValidationError,
)

Connect = Callable[..., Any]


# -- every hook type, in order --------------------------------------------------------


async def test_every_hook_type_runs_before_and_after_in_registration_order(
    handler: Handler, connect: Connect
) -> None:
    calls: list[tuple[str, str, str]] = []
    disconnected = asyncio.Event()

    for hook_type in HookType:
        for when in ("before", "after"):
            register = (
                handler.hooks.register_before
                if when == "before"
                else handler.hooks.register_after
            )

            def plain(
                ctx: HookContext, when: str = when, t: HookType = hook_type
            ) -> None:
                calls.append((when, t.value, "plain"))

            async def coroutine(
                ctx: HookContext, when: str = when, t: HookType = hook_type
            ) -> None:
                calls.append((when, t.value, "async"))

            def last(
                ctx: HookContext, when: str = when, t: HookType = hook_type
            ) -> None:
                calls.append((when, t.value, "last"))
                if t is HookType.DISCONNECT and when == "after":
                    disconnected.set()

            register(hook_type, plain)
            register(hook_type, coroutine)
            register(hook_type, last)

    def chain(when: str, name: str) -> list[tuple[str, str, str]]:
        return [(when, name, kind) for kind in ("plain", "async", "last")]

    def taken() -> list[tuple[str, str, str]]:
        out = list(calls)
        calls.clear()
        return out

    client: WSClient = await connect()
    await client.barrier()
    assert taken() == chain("before", "connect") + chain("after", "connect")

    def around(name: str, *inner: str) -> list[tuple[str, str, str]]:
        names = (*inner, name)
        return (
            chain("before", "handle")
            + [c for n in names for c in chain("before", n)]
            + chain("after", name)
            + chain("after", "handle")
        )

    row = await client.ok("create", "users", data={"name": "Ann"})
    assert taken() == around("create")
    await client.ok("read", "users")
    assert taken() == around("read")
    await client.ok("read", "users", record_id=str(row["id"]))
    assert taken() == around("read")
    await client.ok("update", "users", record_id=str(row["id"]), data={"age": 2})
    assert taken() == around("update")
    await client.ok("meta", "users")
    assert taken() == around("meta")
    sub = await client.subscribe("posts")
    # A subscription is a standing read: the before-read hooks (row security) run too.
    assert taken() == around("subscribe", "read")
    assert (await client.unsubscribe(sub))["success"] is True
    assert taken() == around("unsubscribe")
    await client.ok("delete", "users", record_id=str(row["id"]))
    assert taken() == around("delete")

    await client.close()
    await asyncio.wait_for(disconnected.wait(), TIMEOUT)
    assert taken() == chain("before", "disconnect") + chain("after", "disconnect")


# -- what hooks see -------------------------------------------------------------------


async def test_hook_context_fields(handler: Handler, connect: Connect) -> None:
    seen: dict[str, dict[str, Any]] = {}

    @handler.hooks.before(HookType.CONNECT)
    def identify(ctx: HookContext) -> None:
        ctx.connection.metadata["user"] = ctx.handshake.headers.get("x-user")

    def capture(label: str) -> Callable[[HookContext], None]:
        def hook(ctx: HookContext) -> None:
            seen[label] = {
                "metadata": dict(ctx.connection.metadata),
                "operation": ctx.operation,
                "schema": ctx.schema,
                "entity": ctx.entity,
                "record_id": ctx.record_id,
                "options": ctx.options,
                "data": ctx.data,
                "result": ctx.result,
                "subscription_id": ctx.subscription_id,
            }

        return hook

    for hook_type in (
        HookType.READ,
        HookType.CREATE,
        HookType.UPDATE,
        HookType.DELETE,
        HookType.SUBSCRIBE,
    ):
        handler.hooks.register_before(hook_type, capture(f"before {hook_type}"))
        handler.hooks.register_after(hook_type, capture(f"after {hook_type}"))

    client: WSClient = await connect(additional_headers={"X-User": "ann"})

    created = await client.ok("create", "users", data={"name": "Ann", "age": 5})
    before, after = seen["before create"], seen["after create"]
    assert before["metadata"] == {"user": "ann"}
    assert (before["operation"], before["schema"], before["entity"]) == (
        "create",
        "public",
        "users",
    )
    assert isinstance(before["options"], QueryOptions)
    assert type(before["data"]) is dict
    assert before["data"] == {"name": "Ann", "age": 5}
    assert type(after["result"]) is dict
    assert after["result"] == created
    assert after["record_id"] == created["id"]

    await client.ok(
        "update",
        "users",
        schema="public",
        record_id=str(created["id"]),
        data={"email": None},
        options={"filters": [{"column": "age", "operator": "eq", "value": 5}]},
    )
    before = seen["before update"]
    assert before["operation"] == "update"
    assert before["record_id"] == str(created["id"])
    assert before["data"] == {"email": None}
    assert type(before["data"]) is dict
    assert before["options"].filters == [FilterOption("age", "eq", 5)]
    assert type(seen["after update"]["result"]) is dict
    assert seen["after update"]["result"]["id"] == created["id"]

    # A request without options still hands hooks a working copy, never None.
    rows = await client.ok("read", "users")
    before = seen["before read"]
    assert isinstance(before["options"], QueryOptions)
    assert before["options"].filters == []
    assert before["record_id"] is None
    assert type(seen["after read"]["result"]) is list
    assert seen["after read"]["result"] == rows
    assert all(type(r) is dict for r in seen["after read"]["result"])

    one = await client.ok("read", "users", record_id=str(created["id"]))
    single: Any = seen["after read"]["result"]
    assert type(single) is dict
    assert single == one

    sub = await client.subscribe("users")
    assert seen["before subscribe"]["entity"] == "users"
    assert seen["after subscribe"]["subscription_id"] == sub

    deleted = await client.ok("delete", "users", record_id=created["id"])
    assert seen["before delete"]["record_id"] == created["id"]
    assert seen["after delete"]["result"] == deleted
    assert seen["after delete"]["metadata"] == {"user": "ann"}


async def test_before_hooks_change_options_and_data(
    handler: Handler, client: WSClient
) -> None:
    @handler.hooks.before(HookType.READ)
    def cap_pages(ctx: HookContext) -> None:
        ctx.options.limit = 2

    @handler.hooks.before(HookType.CREATE)
    async def stamp(ctx: HookContext) -> None:
        assert ctx.data is not None
        ctx.data["status"] = "stamped"

    @handler.hooks.before(HookType.UPDATE)
    def shout(ctx: HookContext) -> None:
        assert ctx.data is not None
        if "name" in ctx.data:
            ctx.data["name"] = str(ctx.data["name"]).upper()

    rows = [
        await client.ok("create", "users", data={"name": name, "status": "x"})
        for name in ("a", "b", "c", "d")
    ]
    assert all(row["status"] == "stamped" for row in rows)
    row = rows[-1]

    answer = await client.request("read", "users", options={"limit": 10})
    assert len(answer["data"]) == 2
    assert answer["metadata"]["limit"] == 2
    assert answer["metadata"]["total"] == 4

    updated = await client.ok(
        "update", "users", record_id=row["id"], data={"name": "zed"}
    )
    assert updated["name"] == "ZED"
    stored = await client.ok("read", "users", record_id=row["id"])
    assert stored["name"] == "ZED"
    assert stored["status"] == "stamped"


async def test_after_hooks_change_the_response(
    handler: Handler, client: WSClient
) -> None:
    @handler.hooks.after(HookType.READ)
    def summarise(ctx: HookContext) -> None:
        if isinstance(ctx.result, list):
            ctx.result = [
                {"id": r["id"], "label": r["name"].upper()} for r in ctx.result
            ]

    @handler.hooks.after(HookType.CREATE)
    async def greet(ctx: HookContext) -> None:
        assert isinstance(ctx.result, dict)
        ctx.result["greeting"] = f"hello {ctx.result['name']}"

    created = await client.ok("create", "users", data={"name": "Ann"})
    assert created["greeting"] == "hello Ann"
    assert await client.ok("read", "users") == [{"id": created["id"], "label": "ANN"}]
    # The after hook shaped the answer, not the stored row.
    one = await client.ok("read", "users", record_id=created["id"])
    assert one["name"] == "Ann"
    assert "greeting" not in one


# -- row-level security ---------------------------------------------------------------


def install_row_security(handler: Handler) -> None:
    """Each connection sees and writes only its own posts (user from a header)."""

    @handler.hooks.before(HookType.CONNECT)
    def identify(ctx: HookContext) -> None:
        user = ctx.handshake.headers.get("x-user-id")
        if user is None:
            raise UnauthorizedError("who are you?")
        ctx.connection.metadata["user_id"] = int(user)

    def own_posts(ctx: HookContext) -> None:
        if ctx.entity == "posts":
            ctx.add_filter(
                FilterOption("user_id", "eq", ctx.connection.metadata["user_id"])
            )

    for hook_type in (HookType.READ, HookType.CREATE, HookType.UPDATE, HookType.DELETE):
        handler.hooks.register_before(hook_type, own_posts)


async def two_users(connect: Connect) -> tuple[WSClient, WSClient, int, int]:
    ann: WSClient = await connect(additional_headers={"X-User-Id": "1"})
    bob: WSClient = await connect(additional_headers={"X-User-Id": "2"})
    a = await ann.ok("create", "users", data={"id": 1, "name": "Ann"})
    b = await bob.ok("create", "users", data={"id": 2, "name": "Bob"})
    return ann, bob, a["id"], b["id"]


async def test_row_security_on_reads(handler: Handler, connect: Connect) -> None:
    install_row_security(handler)
    ann, bob, ann_id, bob_id = await two_users(connect)
    mine = [
        await ann.ok("create", "posts", data={"title": f"ann {i}", "user_id": ann_id})
        for i in range(2)
    ]
    theirs = await bob.ok("create", "posts", data={"title": "bob", "user_id": bob_id})

    answer = await ann.request("read", "posts")
    assert answer["data"] == mine
    assert answer["metadata"]["total"] == 2
    assert await bob.ok("read", "posts") == [theirs]

    assert await ann.ok("read", "posts", record_id=str(mine[0]["id"])) == mine[0]
    refused = await ann.request("read", "posts", record_id=str(theirs["id"]))
    assert refused["success"] is False
    assert refused["error"]["code"] == "not_found"

    # Asking for Bob's posts by name finds nothing.
    others = await ann.ok(
        "read",
        "posts",
        options={"filters": [{"column": "user_id", "operator": "eq", "value": bob_id}]},
    )
    assert others == []


BYPASSES: list[list[dict[str, Any]]] = [
    [{"column": "user_id", "operator": "eq", "value": 2, "logic_operator": "OR"}],
    [
        {"column": "title", "operator": "eq", "value": "nothing"},
        {"column": "user_id", "operator": "eq", "value": 2, "logic_operator": "OR"},
    ],
    [
        {"column": "id", "operator": "gt", "value": 0},
        {"column": "user_id", "operator": "neq", "value": 1, "logic_operator": "OR"},
    ],
    [
        {"column": "user_id", "operator": "in", "value": [1, 2]},
        {"column": "user_id", "operator": "is_not_null", "logic_operator": "OR"},
    ],
]


async def test_row_security_cannot_be_bypassed_with_or(
    handler: Handler, connect: Connect
) -> None:
    install_row_security(handler)
    ann, bob, ann_id, bob_id = await two_users(connect)
    mine = await ann.ok("create", "posts", data={"title": "ann", "user_id": ann_id})
    theirs = await bob.ok("create", "posts", data={"title": "bob", "user_id": bob_id})
    subs = [await ann.subscribe("posts", options={"filters": f}) for f in BYPASSES]

    for filters in BYPASSES:
        rows = await ann.ok("read", "posts", options={"filters": filters})
        assert all(r["user_id"] == ann_id for r in rows), (filters, rows)
        single = await ann.request(
            "read", "posts", record_id=str(theirs["id"]), options={"filters": filters}
        )
        assert single["success"] is False and single["error"]["code"] == "not_found"
        update = await ann.request(
            "update",
            "posts",
            record_id=str(theirs["id"]),
            data={"title": "pwned"},
            options={"filters": filters},
        )
        assert update["success"] is False and update["error"]["code"] == "not_found"
        delete = await ann.request(
            "delete", "posts", record_id=str(theirs["id"]), options={"filters": filters}
        )
        assert delete["success"] is False and delete["error"]["code"] == "not_found"

    assert await bob.ok("read", "posts") == [theirs]
    # Bob's writes never reach Ann's subscription, whatever filter she gave it.
    await bob.ok("update", "posts", record_id=str(theirs["id"]), data={"rank": 9})
    await bob.ok("create", "posts", data={"title": "bob 2", "user_id": bob_id})
    await ann.ok("update", "posts", record_id=str(mine["id"]), data={"rank": 1})
    notes = await ann.drain()
    # Only the subscriptions whose own filter matches Ann's row hear of her update.
    assert sorted(n["subscription_id"] for n in notes) == sorted(subs[2:])
    assert all(n["data"]["id"] == mine["id"] for n in notes)


async def test_row_security_on_updates_and_deletes(
    handler: Handler, connect: Connect
) -> None:
    install_row_security(handler)
    ann, bob, _, bob_id = await two_users(connect)
    theirs = await bob.ok("create", "posts", data={"title": "bob", "user_id": bob_id})

    update = await ann.request(
        "update", "posts", record_id=str(theirs["id"]), data={"title": "pwned"}
    )
    assert update["success"] is False
    assert update["error"]["code"] == "not_found"
    delete = await ann.request("delete", "posts", record_id=str(theirs["id"]))
    assert delete["success"] is False
    assert delete["error"]["code"] == "not_found"
    assert await bob.ok("read", "posts", record_id=str(theirs["id"])) == theirs


async def test_writes_outside_the_hook_filters_are_refused_and_rolled_back(
    handler: Handler, connect: Connect
) -> None:
    install_row_security(handler)
    ann, bob, ann_id, bob_id = await two_users(connect)
    await bob.subscribe("posts")
    mine = await ann.ok("create", "posts", data={"title": "ann", "user_id": ann_id})

    forged = await ann.request(
        "create", "posts", data={"title": "forged", "user_id": bob_id}
    )
    assert forged["success"] is False
    assert forged["error"]["code"] == "unauthorized"
    given = await ann.request(
        "update", "posts", record_id=str(mine["id"]), data={"user_id": bob_id}
    )
    assert given["success"] is False
    assert given["error"]["code"] == "unauthorized"

    assert await bob.ok("read", "posts") == []
    assert await ann.ok("read", "posts") == [mine]
    assert await bob.drain() == []


async def test_subscriptions_never_receive_other_users_rows(
    handler: Handler, connect: Connect
) -> None:
    install_row_security(handler)
    ann, bob, ann_id, bob_id = await two_users(connect)
    ann_sub = await ann.subscribe("posts")
    bob_sub = await bob.subscribe("posts")

    a = await ann.ok("create", "posts", data={"title": "a", "user_id": ann_id})
    b = await bob.ok("create", "posts", data={"title": "b", "user_id": bob_id})
    b = await bob.ok("update", "posts", record_id=b["id"], data={"title": "b2"})
    a = await ann.ok("update", "posts", record_id=a["id"], data={"title": "a2"})
    await bob.ok("delete", "posts", record_id=b["id"])

    ann_notes = await ann.drain()
    bob_notes = await bob.drain()
    assert [(n["subscription_id"], n["operation"]) for n in ann_notes] == [
        (ann_sub, "create"),
        (ann_sub, "update"),
    ]
    assert all(n["data"]["user_id"] == ann_id for n in ann_notes)
    assert [(n["subscription_id"], n["operation"]) for n in bob_notes] == [
        (bob_sub, "create"),
        (bob_sub, "update"),
        (bob_sub, "delete"),
    ]
    assert all(n["data"]["user_id"] == bob_id for n in bob_notes)


async def test_after_read_masking_shapes_notifications(
    handler: Handler, client: WSClient, connect: Connect
) -> None:
    def strip(row: Any) -> None:
        if isinstance(row, dict):
            row.pop("email", None)

    @handler.hooks.before(HookType.CONNECT)
    def role(ctx: HookContext) -> None:
        ctx.connection.metadata["role"] = ctx.handshake.headers.get("x-role")

    @handler.hooks.after(HookType.READ)
    async def mask_email(ctx: HookContext) -> None:
        # Judged per subscriber: the connection is the one being notified.
        if ctx.entity != "users" or ctx.connection.metadata["role"] == "admin":
            return
        if isinstance(ctx.result, list):
            for row in ctx.result:
                strip(row)
        else:
            strip(ctx.result)

    subscriber: WSClient = await connect()
    admin: WSClient = await connect(additional_headers={"X-Role": "admin"})
    sub = await subscriber.subscribe("users")
    narrow = await subscriber.subscribe("users", options={"columns": ["name", "email"]})
    admin_sub = await admin.subscribe("users")
    created = await client.ok(
        "create", "users", data={"name": "Ann", "email": "secret@example.com"}
    )
    assert created["email"] == "secret@example.com"  # the writer's own answer
    await client.ok("delete", "users", record_id=created["id"])

    notes = [await subscriber.notification() for _ in range(4)]
    expected_full = {k: v for k, v in created.items() if k != "email"}
    by_sub = {
        s: [(n["operation"], n["data"]) for n in notes if n["subscription_id"] == s]
        for s in (sub, narrow)
    }
    assert by_sub[sub] == [("create", expected_full), ("delete", expected_full)]
    slim = {"id": created["id"], "name": "Ann"}
    assert by_sub[narrow] == [("create", slim), ("delete", slim)]
    assert "secret@example.com" not in json.dumps(notes)
    admin_notes = [await admin.notification() for _ in range(2)]
    assert [(n["subscription_id"], n["operation"], n["data"]) for n in admin_notes] == [
        (admin_sub, "create", created),
        (admin_sub, "delete", created),
    ]

    # Reads are masked by the same hook, list and single.
    again = await client.ok("create", "users", data={"name": "Bo", "email": "b@x.org"})
    assert await subscriber.ok("read", "users") == [
        {k: v for k, v in again.items() if k != "email"}
    ]
    assert "email" not in await subscriber.ok("read", "users", record_id=again["id"])


# -- after-write hooks run inside the transaction -------------------------------------


async def test_after_write_hook_failure_rolls_back_and_notifies_nothing(
    handler: Handler, client: WSClient, connect: Connect
) -> None:
    @handler.hooks.after(HookType.CREATE)
    @handler.hooks.after(HookType.UPDATE)
    @handler.hooks.after(HookType.DELETE)
    async def veto(ctx: HookContext) -> None:
        assert isinstance(ctx.result, dict)
        if ctx.result.get("name") == f"veto {ctx.operation}":
            raise RuntimeError("after-hook exploded")

    subscriber: WSClient = await connect()
    await subscriber.subscribe("users")

    refused = await client.request("create", "users", data={"name": "veto create"})
    assert refused["success"] is False
    assert refused["error"]["code"] == "hook_error"
    assert await client.ok("read", "users") == []

    ann = await client.ok("create", "users", data={"name": "Ann", "age": 1})
    refused = await client.request(
        "update", "users", record_id=ann["id"], data={"name": "veto update", "age": 2}
    )
    assert refused["success"] is False
    assert refused["error"]["code"] == "hook_error"
    assert await client.ok("read", "users", record_id=ann["id"]) == ann

    keep = await client.ok("create", "users", data={"name": "veto delete"})
    refused = await client.request("delete", "users", record_id=keep["id"])
    assert refused["success"] is False
    assert refused["error"]["code"] == "hook_error"
    assert await client.ok("read", "users", record_id=keep["id"]) == keep

    await client.ok("delete", "users", record_id=ann["id"])
    # Only the committed writes were notified, in order.
    notes = await subscriber.drain()
    assert [(n["operation"], n["data"]["name"]) for n in notes] == [
        ("create", "Ann"),
        ("create", "veto delete"),
        ("delete", "Ann"),
    ]
    assert await client.ok("read", "users") == [keep]


# -- errors from hooks ----------------------------------------------------------------


async def test_hook_errors_reach_the_client_with_their_codes(
    handler: Handler, client: WSClient
) -> None:
    secret = "password=hunter2 at db.internal:5432"

    @handler.hooks.before(HookType.CREATE)
    def require_email(ctx: HookContext) -> None:
        assert ctx.data is not None
        if not ctx.data.get("email"):
            raise ValidationError("email is required", field="email")

    @handler.hooks.before(HookType.DELETE)
    async def no_deletes(ctx: HookContext) -> None:
        raise UnauthorizedError("deletes are not allowed")

    @handler.hooks.before(HookType.READ)
    def crash(ctx: HookContext) -> None:
        if ctx.options.limit == 13:
            raise RuntimeError(secret)

    @handler.hooks.after(HookType.META)
    async def crash_later(ctx: HookContext) -> None:
        raise KeyError(secret)

    invalid = await client.request("create", "users", data={"name": "Ann"})
    assert invalid["success"] is False
    assert invalid["error"] == {
        "code": "validation_error",
        "message": "email is required",
        "details": {"field": "email"},
    }
    assert await client.ok("read", "users") == []
    row = await client.ok("create", "users", data={"name": "Ann", "email": "a@x.org"})

    refused = await client.request("delete", "users", record_id=row["id"])
    assert refused["success"] is False
    assert refused["error"]["code"] == "unauthorized"
    assert refused["error"]["message"] == "deletes are not allowed"
    assert await client.ok("read", "users") == [row]

    for answer in (
        await client.request("read", "users", options={"limit": 13}),
        await client.request("meta", "users"),
    ):
        assert answer["success"] is False
        assert answer["error"]["code"] == "hook_error"
        assert "hunter2" not in json.dumps(answer)
        assert "db.internal" not in json.dumps(answer)

    # The connection is still good.
    assert await client.ok("read", "users") == [row]


# -- the handshake ----------------------------------------------------------------------


async def test_before_connect_sees_headers_query_and_cookies(
    handler: Handler, server: str
) -> None:
    seen: dict[str, Any] = {}

    @handler.hooks.before(HookType.CONNECT)
    def look(ctx: HookContext) -> None:
        hs = ctx.handshake
        seen.update(
            path=hs.path,
            token=hs.headers.get("x-token"),
            query=dict(hs.query_params),
            cookies=dict(hs.cookies),
            client=hs.client,
        )
        ctx.connection.metadata["session"] = hs.cookies.get("session")

    @handler.hooks.after(HookType.META)
    def who(ctx: HookContext) -> None:
        assert isinstance(ctx.result, dict)
        ctx.result["session"] = ctx.connection.metadata["session"]

    async with await WSClient.connect(
        f"{server}?token=abc&lang=fr",
        additional_headers={"X-Token": "t-1", "Cookie": "session=s-1; theme=dark"},
    ) as client:
        meta = await client.ok("meta", "users")
    assert meta["session"] == "s-1"
    assert seen["path"] == "/ws"
    assert seen["token"] == "t-1"
    assert seen["query"] == {"token": "abc", "lang": "fr"}
    assert seen["cookies"] == {"session": "s-1", "theme": "dark"}
    assert seen["client"][0] == "127.0.0.1"


async def test_before_connect_refuses_with_401_or_403(
    handler: Handler, server: str
) -> None:
    @handler.hooks.before(HookType.CONNECT)
    def gate(ctx: HookContext) -> None:
        token = ctx.handshake.query_params.get("token")
        if token is None:
            raise UnauthorizedError("a token is required")
        if token == "banned":
            raise ProtocolError("this token is banned", code="forbidden")
        if token == "crash":
            raise RuntimeError("s3cret-connect")

    for suffix, status, code in (
        ("", 401, "unauthorized"),
        ("?token=banned", 403, "forbidden"),
        ("?token=crash", 403, "hook_error"),
    ):
        with pytest.raises(InvalidStatus) as refused:
            await WSClient.connect(server + suffix)
        response = refused.value.response
        assert response.status_code == status, suffix
        assert json.loads(response.body)["error"]["code"] == code
        assert b"s3cret" not in response.body

    async with await WSClient.connect(f"{server}?token=good") as client:
        await client.barrier()
        assert handler.stats()["connections"] == 1


async def test_disconnect_hook_runs_when_the_client_closes(
    handler: Handler, connect: Connect
) -> None:
    gone: asyncio.Queue[str] = asyncio.Queue()

    @handler.hooks.before(HookType.CONNECT)
    def name(ctx: HookContext) -> None:
        ctx.connection.metadata["name"] = ctx.handshake.headers["x-name"]

    @handler.hooks.after(HookType.DISCONNECT)
    async def bye(ctx: HookContext) -> None:
        await gone.put(ctx.connection.metadata["name"])

    first: WSClient = await connect(additional_headers={"X-Name": "first"})
    second: WSClient = await connect(additional_headers={"X-Name": "second"})
    await first.barrier()
    await second.barrier()
    assert gone.empty()

    await first.close()
    assert await asyncio.wait_for(gone.get(), TIMEOUT) == "first"
    await second.ok("read", "users")
    assert gone.empty()
