"""Connections over real sockets: stats, isolation, concurrency, failures and cleanup."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.wsclient import TIMEOUT, WSClient
from websocketspec import Config, Handler, HookContext, HookType

Connect = Callable[..., Any]

CLOSE_TIMEOUT = 0.5


@pytest.fixture
def config() -> Config:
    # Requests still running when their client has gone are cancelled this soon.
    return Config(close_timeout=CLOSE_TIMEOUT)


def track_disconnects(handler: Handler) -> asyncio.Queue[str | None]:
    """Name each connection from its X-Name header; report names as they disconnect."""
    gone: asyncio.Queue[str | None] = asyncio.Queue()

    def name(ctx: HookContext) -> None:
        ctx.connection.metadata["name"] = ctx.handshake.headers.get("x-name")

    def bye(ctx: HookContext) -> None:
        gone.put_nowait(ctx.connection.metadata.get("name"))

    handler.hooks.register_before(HookType.CONNECT, name)
    handler.hooks.register_after(HookType.DISCONNECT, bye)
    return gone


async def send_without_waiting(
    client: WSClient, messages: list[dict[str, Any]]
) -> list[asyncio.Future[dict[str, Any]]]:
    futures = [client.expect(m["id"]) for m in messages]
    async with asyncio.timeout(TIMEOUT):
        for message in messages:
            await client.send_raw(json.dumps(message))
    return futures


async def test_stats_count_connections_subscriptions_and_messages(
    handler: Handler, connect: Connect
) -> None:
    gone = track_disconnects(handler)
    assert handler.stats()["connections"] == 0

    first: WSClient = await connect(additional_headers={"X-Name": "first"})
    second: WSClient = await connect(additional_headers={"X-Name": "second"})
    await first.barrier()
    await second.barrier()
    stats = handler.stats()
    assert stats["connections"] == 2
    assert stats["subscriptions"] == {}
    base = stats["messages"]

    await first.subscribe("users")
    await first.subscribe("posts")
    await second.subscribe(
        "users",
        options={"filters": [{"column": "name", "operator": "eq", "value": "Ann"}]},
    )
    assert handler.stats()["subscriptions"] == {"public.users": 2, "public.posts": 1}

    await second.ok("create", "users", data={"name": "Ann"})
    await second.ok("create", "users", data={"name": "Bob"})
    await first.barrier()
    await second.barrier()
    messages = handler.stats()["messages"]
    # first: 2 subscribes + ping; second: subscribe + 2 creates + ping.
    assert messages["received"] - base["received"] == 7
    # Ann reached both users subscriptions, Bob only the unfiltered one.
    assert messages["notifications"] - base["notifications"] == 3
    # 5 responses and 3 notifications, and up to 3 pongs (counted once written).
    assert 8 <= messages["sent"] - base["sent"] <= 11

    await first.close()
    assert await asyncio.wait_for(gone.get(), TIMEOUT) == "first"
    stats = handler.stats()
    assert stats["connections"] == 1
    assert stats["subscriptions"] == {"public.users": 1}
    # Counts of closed connections are kept.
    assert stats["messages"]["received"] >= messages["received"]
    assert stats["messages"]["sent"] >= messages["sent"]


async def test_connection_metadata_is_isolated(
    handler: Handler, connect: Connect
) -> None:
    @handler.hooks.before(HookType.CONNECT)
    def start(ctx: HookContext) -> None:
        ctx.connection.metadata["name"] = ctx.handshake.headers.get("x-name")
        ctx.connection.metadata["seen"] = []

    @handler.hooks.before(HookType.HANDLE)
    async def note(ctx: HookContext) -> None:
        ctx.connection.metadata["seen"].append(ctx.operation)

    @handler.hooks.after(HookType.META)
    def reveal(ctx: HookContext) -> None:
        assert isinstance(ctx.result, dict)
        ctx.result["me"] = {
            "name": ctx.connection.metadata["name"],
            "seen": list(ctx.connection.metadata["seen"]),
        }

    ann: WSClient = await connect(additional_headers={"X-Name": "ann"})
    bob: WSClient = await connect(additional_headers={"X-Name": "bob"})
    anonymous: WSClient = await connect()

    await asyncio.gather(
        ann.ok("read", "users"),
        ann.ok("create", "users", data={"name": "x"}),
        bob.ok("read", "posts"),
    )
    ann_meta, bob_meta, anon_meta = await asyncio.gather(
        ann.ok("meta", "users"), bob.ok("meta", "posts"), anonymous.ok("meta", "users")
    )
    assert ann_meta["me"]["name"] == "ann"
    assert sorted(ann_meta["me"]["seen"]) == ["create", "meta", "read"]
    assert bob_meta["me"] == {"name": "bob", "seen": ["read", "meta"]}
    assert anon_meta["me"] == {"name": None, "seen": ["meta"]}


async def test_many_requests_in_flight_on_one_connection(
    handler: Handler, client: WSClient
) -> None:
    count = 50
    arrived = 0
    everyone_in = asyncio.Event()

    @handler.hooks.before(HookType.CREATE)
    async def gather_all(ctx: HookContext) -> None:
        # Proves they are in flight together: none proceeds before all 50 arrived.
        nonlocal arrived
        arrived += 1
        if arrived == count:
            everyone_in.set()
        await asyncio.wait_for(everyone_in.wait(), TIMEOUT)

    creates = [
        {
            "id": f"create-{i}",
            "type": "request",
            "operation": "create",
            "entity": "users",
            "data": {"name": f"user {i}", "age": i},
        }
        for i in range(count)
    ]
    futures = await send_without_waiting(client, creates)
    answers = await asyncio.wait_for(asyncio.gather(*futures), TIMEOUT)
    rows: dict[int, Any] = {}
    for i, answer in enumerate(answers):
        assert answer["id"] == f"create-{i}"
        assert answer["success"] is True, answer
        assert answer["data"]["name"] == f"user {i}"
        assert answer["data"]["age"] == i
        rows[answer["data"]["id"]] = answer["data"]
    assert len(rows) == count

    reads = [
        {
            "id": f"read-{key}",
            "type": "request",
            "operation": "read",
            "entity": "users",
            "record_id": str(key),
        }
        for key in rows
    ]
    futures = await send_without_waiting(client, reads)
    answers = await asyncio.wait_for(asyncio.gather(*futures), TIMEOUT)
    for key, answer in zip(rows, answers, strict=True):
        assert answer["id"] == f"read-{key}"
        assert answer["data"] == rows[key]

    listed = await client.request("read", "users", options={"limit": 1000})
    assert listed["metadata"]["total"] == count


async def test_a_failing_message_harms_no_other(
    handler: Handler, connect: Connect
) -> None:
    slow = 5
    slow_in = 0
    all_slow_in = asyncio.Event()
    release = asyncio.Event()

    @handler.hooks.before(HookType.HANDLE)
    async def trouble(ctx: HookContext) -> None:
        nonlocal slow_in
        msg_id = str(ctx.message.id) if ctx.message is not None else ""
        if msg_id == "boom":
            raise RuntimeError("boom")
        if msg_id.startswith("slow-"):
            slow_in += 1
            if slow_in == slow:
                all_slow_in.set()
            await asyncio.wait_for(release.wait(), TIMEOUT)

    first: WSClient = await connect()
    second: WSClient = await connect()
    sub = await second.subscribe("users")
    row = await first.ok("create", "users", data={"name": "Ann"})
    await second.notification()

    pending = await send_without_waiting(
        first,
        [
            {
                "id": f"slow-{i}",
                "type": "request",
                "operation": "update",
                "entity": "users",
                "record_id": str(row["id"]),
                "data": {"age": i},
            }
            for i in range(slow)
        ],
    )
    await asyncio.wait_for(all_slow_in.wait(), TIMEOUT)

    boom = await first.call(
        {"id": "boom", "type": "request", "operation": "read", "entity": "users"}
    )
    assert boom["success"] is False
    assert boom["error"]["code"] == "hook_error"
    assert not any(f.done() for f in pending)

    # Other requests on both connections go on while those are held.
    assert await first.ok("read", "users", record_id=str(row["id"])) == row
    other = await second.ok("create", "users", data={"name": "Bob"})
    assert (await second.notification())["data"] == other

    release.set()
    answers = await asyncio.wait_for(asyncio.gather(*pending), TIMEOUT)
    assert all(a["success"] is True for a in answers), answers
    assert sorted(a["data"]["age"] for a in answers) == list(range(slow))
    notes = [await second.notification() for _ in range(slow)]
    assert all(n["subscription_id"] == sub for n in notes)
    assert sorted(n["data"]["age"] for n in notes) == list(range(slow))


async def test_closing_releases_everything_the_connection_held(
    handler: Handler, connect: Connect
) -> None:
    gone = track_disconnects(handler)
    stayer: WSClient = await connect(additional_headers={"X-Name": "stayer"})
    leaver: WSClient = await connect(additional_headers={"X-Name": "leaver"})
    kept = await stayer.subscribe("users")
    for entity in ("users", "users", "posts", "things"):
        await leaver.subscribe(entity)
    await stayer.barrier()
    assert handler.stats()["connections"] == 2
    assert handler.stats()["subscriptions"] == {
        "public.users": 3,
        "public.posts": 1,
        "public.things": 1,
    }

    await leaver.close()
    assert await asyncio.wait_for(gone.get(), TIMEOUT) == "leaver"
    assert handler.stats()["connections"] == 1
    assert handler.stats()["subscriptions"] == {"public.users": 1}

    row = await stayer.ok("create", "users", data={"name": "Ann"})
    [note] = await stayer.drain()
    assert note["subscription_id"] == kept
    assert note["data"] == row


async def test_abrupt_disconnect_with_requests_in_flight(
    handler: Handler, connect: Connect
) -> None:
    gone = track_disconnects(handler)
    stuck = 4
    entered = 0
    all_entered = asyncio.Event()
    never = asyncio.Event()

    @handler.hooks.before(HookType.HANDLE)
    async def hold(ctx: HookContext) -> None:
        nonlocal entered
        if ctx.connection.metadata.get("name") != "victim":
            return
        if ctx.operation == "subscribe":
            return
        entered += 1
        if entered == stuck + 1:
            all_entered.set()
        await asyncio.wait_for(never.wait(), TIMEOUT)

    observer: WSClient = await connect(additional_headers={"X-Name": "observer"})
    victim: WSClient = await connect(additional_headers={"X-Name": "victim"})
    await victim.subscribe("users")
    await observer.subscribe("users")
    messages: list[dict[str, Any]] = [
        {"id": f"r{i}", "type": "request", "operation": "read", "entity": "users"}
        for i in range(stuck)
    ]
    messages.append(
        {
            "id": "c",
            "type": "request",
            "operation": "create",
            "entity": "users",
            "data": {"name": "never stored"},
        }
    )
    await send_without_waiting(victim, messages)
    await asyncio.wait_for(all_entered.wait(), TIMEOUT)

    victim.ws.transport.abort()  # no closing handshake: the TCP connection just dies
    # The stuck requests are cancelled after close_timeout; then the connection is gone.
    assert await asyncio.wait_for(gone.get(), TIMEOUT) == "victim"
    stats = handler.stats()
    assert stats["connections"] == 1
    assert stats["subscriptions"] == {"public.users": 1}

    # The server carries on, for the connection that stayed and for new ones.
    assert await observer.ok("read", "users") == []
    newcomer: WSClient = await connect(additional_headers={"X-Name": "newcomer"})
    row = await newcomer.ok("create", "users", data={"name": "Ann"})
    assert await newcomer.ok("read", "users") == [row]
    notes = await observer.drain()
    assert [n["data"] for n in notes] == [row]
