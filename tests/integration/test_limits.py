"""Limits over real sockets: each one answers its stable code (or closes where only
closing is safe), and the connection keeps working afterwards.

Each test states the settings it runs with (``configured(...)``); the WebSocket
server's own options (its frame limit) are set the same way (``server_options(...)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.servers import serve
from tests.support.wsclient import TIMEOUT, WSClient
from websocketspec import Config, Handler, HookContext, HookType

Connect = Callable[..., Any]


def configured(**settings: Any) -> pytest.MarkDecorator:
    """Serve the test's handler with ``Config(**settings)``."""
    return pytest.mark.parametrize(
        "config", [Config(**settings)], indirect=True, ids=["config"]
    )


def server_options(**options: Any) -> pytest.MarkDecorator:
    """Start the test's server with these options (``max_size``: its frame limit)."""
    return pytest.mark.parametrize(
        "server_options", [options], indirect=True, ids=["server"]
    )


@pytest.fixture
def config(request: pytest.FixtureRequest) -> Config:
    return getattr(request, "param", Config())


@pytest.fixture(name="server_options")
def server_options_fixture(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(getattr(request, "param", {}))


@pytest.fixture
async def server(
    handler: Handler, shell: str, server_options: dict[str, Any]
) -> AsyncIterator[str]:
    options = dict(server_options)
    if shell == "asgi" and "max_size" in options:
        options["ws_max_size"] = options.pop("max_size")
    async with serve(shell, handler, **options) as base:
        yield f"{base}/ws"
    await handler.stop()


async def create_users(client: WSClient, names: list[str]) -> list[dict[str, Any]]:
    batch = [
        {
            "id": f"seed-{i}",
            "type": "request",
            "operation": "create",
            "entity": "users",
            "data": {"name": name, "age": i},
        }
        for i, name in enumerate(names)
    ]
    futures = [client.expect(m["id"]) for m in batch]
    await client.send_raw(json.dumps(batch))
    answers = await asyncio.wait_for(asyncio.gather(*futures), TIMEOUT)
    for answer in answers:
        assert answer["success"] is True, answer
    return [a["data"] for a in answers]


async def assert_still_works(client: WSClient) -> None:
    """The connection still answers a real database request."""
    answer = await client.request("read", "users", options={"limit": 1})
    assert answer["success"] is True, answer


def nested(depth: int) -> Any:
    """A JSON value of ``depth`` nested lists around a number."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# -- frames ---------------------------------------------------------------------------


@configured(max_message_size=10_000)
@server_options(max_size=50_000)
async def test_frame_over_the_application_limit_answers_message_too_large(
    client: WSClient, connect: Connect
) -> None:
    frame = json.dumps({"type": "ping", "id": "big", "data": "x" * 20_000})
    await client.send_raw(frame)
    answer = await client.next_unmatched()
    assert answer["success"] is False
    assert answer["error"]["code"] == "message_too_large"
    assert answer["error"]["details"] == {"max_message_size": 10_000}
    assert "10000" in answer["error"]["message"]
    await assert_still_works(client)

    # Just under the limit is handled normally.
    small = {"type": "ping", "id": "fits", "data": "x" * 9_900}
    assert (await client.call(small))["type"] == "pong"

    # The limit counts bytes: 4,000 euro signs are 12,000 bytes of UTF-8.
    await client.send_raw(
        json.dumps({"type": "ping", "data": "€" * 4_000}, ensure_ascii=False)
    )
    answer = await client.next_unmatched()
    assert answer["error"]["code"] == "message_too_large"
    await assert_still_works(client)

    # Over the WebSocket server's own limit, only closing is safe: 1009.
    await client.send_raw(json.dumps({"type": "ping", "data": "x" * 60_000}))
    await asyncio.wait_for(client.ws.wait_closed(), TIMEOUT)
    assert client.ws.close_code == 1009
    # The server itself is fine.
    await assert_still_works(await connect())


async def test_default_limits_answer_a_frame_over_one_mib_without_closing(
    client: WSClient,
) -> None:
    # With the defaults the application's limit (1 MiB) is below the server's, so
    # an oversized frame is answered, not punished with a close.
    mib = 1024 * 1024
    await client.send_raw(json.dumps({"type": "ping", "data": "x" * mib}))
    answer = await client.next_unmatched()
    assert answer["error"]["code"] == "message_too_large"
    assert answer["error"]["details"] == {"max_message_size": mib}
    almost = {"type": "ping", "id": "almost", "data": "x" * (mib - 100)}
    assert (await client.call(almost))["type"] == "pong"
    await assert_still_works(client)


@configured(max_depth=6)
async def test_message_nested_too_deep_answers_message_too_deep(
    client: WSClient,
) -> None:
    # The envelope is level 1, data level 2, the doc column's value level 3.
    fits = await client.request("create", "things", data={"doc": nested(3)})
    assert fits["success"] is True, fits
    assert fits["data"]["doc"] == nested(3)

    deep = await client.request("create", "things", data={"doc": nested(5)})
    assert deep["success"] is False
    assert deep["error"]["code"] == "message_too_deep"
    assert deep["error"]["details"] == {"max_depth": 6}

    # Far deeper than any parser's recursion: still an answer, not a crash.
    await client.send_raw("[" * 100_000 + "]" * 100_000)
    answer = await client.next_unmatched()
    assert answer["error"]["code"] == "message_too_deep"

    listed = await client.request("read", "things")
    assert listed["metadata"]["total"] == 1
    await assert_still_works(client)


@configured(max_batch=3)
async def test_batch_over_max_batch_runs_nothing(client: WSClient) -> None:
    batch = [
        {
            "id": f"b-{i}",
            "type": "request",
            "operation": "create",
            "entity": "users",
            "data": {"name": f"user {i}"},
        }
        for i in range(4)
    ]
    await client.send_raw(json.dumps(batch))
    answer = await client.next_unmatched()
    assert answer["success"] is False
    assert answer["error"]["code"] == "invalid_message"
    assert answer["error"]["details"] == {"max_batch": 3}
    listed = await client.request("read", "users")
    assert listed["metadata"]["total"] == 0

    created = await create_users(client, ["a", "b", "c"])
    assert len(created) == 3


# -- per-connection limits ------------------------------------------------------------


@configured(max_subscriptions=2)
async def test_too_many_subscriptions(client: WSClient, connect: Connect) -> None:
    first = await client.subscribe("users")
    second = await client.subscribe("posts")
    refused = await client.call(
        {"type": "subscription", "operation": "subscribe", "entity": "users"}
    )
    assert refused["success"] is False
    assert refused["error"]["code"] == "too_many_subscriptions"
    assert "2" in refused["error"]["message"]

    # The subscriptions held still deliver.
    writer: WSClient = await connect()
    await writer.ok("create", "users", data={"name": "Ann"})
    note = await client.notification()
    assert note["subscription_id"] == first
    assert note["data"]["name"] == "Ann"

    # Another connection has its own allowance.
    await writer.subscribe("users")
    await writer.subscribe("users")

    # Freeing one makes room again.
    assert (await client.unsubscribe(second))["success"] is True
    await client.subscribe("posts")


@configured(max_filters=3, max_in=4)
async def test_too_many_filters_and_values(client: WSClient) -> None:
    await create_users(client, ["a", "b", "c", "d", "e"])

    def gt(value: int) -> dict[str, Any]:
        return {"column": "age", "operator": "gte", "value": value}

    three = await client.request("read", "users", options={"filters": [gt(0)] * 3})
    assert three["metadata"]["total"] == 5
    four = await client.request("read", "users", options={"filters": [gt(0)] * 4})
    assert four["success"] is False
    assert four["error"]["code"] == "too_many_filters"
    assert four["error"]["details"]["max_filters"] == 3

    refused = await client.call(
        {
            "type": "subscription",
            "operation": "subscribe",
            "entity": "users",
            "options": {"filters": [gt(0)] * 4},
        }
    )
    assert refused["error"]["code"] == "too_many_filters"

    names = ["a", "b", "c", "d"]
    fits = await client.request(
        "read",
        "users",
        options={"filters": [{"column": "name", "operator": "in", "value": names}]},
    )
    assert fits["metadata"]["total"] == 4
    for operator in ("in", "not_in"):
        over = await client.request(
            "read",
            "users",
            options={
                "filters": [
                    {"column": "name", "operator": operator, "value": [*names, "e"]}
                ]
            },
        )
        assert over["success"] is False, operator
        assert over["error"]["code"] == "too_many_values"
        assert over["error"]["details"]["max_in"] == 4
        assert over["error"]["details"]["field"] == "name"
    await assert_still_works(client)


@configured(max_messages_per_second=20, rate_burst=5)
async def test_rate_limit_refuses_past_the_burst_and_refills(
    client: WSClient, connect: Connect
) -> None:
    # One frame holding six messages: all six are counted at the same instant, so
    # exactly the burst passes and the sixth is refused.
    pings = [{"type": "ping", "id": f"p-{i}"} for i in range(6)]
    futures = [client.expect(p["id"]) for p in pings]
    sent = time.monotonic()
    await client.send_raw(json.dumps(pings))
    answers = await asyncio.wait_for(asyncio.gather(*futures), TIMEOUT)
    assert [a["type"] for a in answers[:5]] == ["pong"] * 5
    assert answers[5]["success"] is False
    assert answers[5]["error"]["code"] == "rate_limited"
    assert answers[5]["error"]["details"] == {"max_messages_per_second": 20}

    # Tokens come back at the rate (one per 50 ms): a later message passes, but not
    # before a token has had time to return.
    async with asyncio.timeout(TIMEOUT):
        while True:
            answer = await client.call({"type": "ping"})
            if answer["type"] == "pong":
                break
            assert answer["error"]["code"] == "rate_limited"
    assert time.monotonic() - sent >= 0.04

    # Each connection has its own bucket.
    other: WSClient = await connect()
    futures = [other.expect(p["id"]) for p in pings[:5]]
    await other.send_raw(json.dumps(pings[:5]))
    answers = await asyncio.wait_for(asyncio.gather(*futures), TIMEOUT)
    assert [a["type"] for a in answers] == ["pong"] * 5


async def test_rate_limit_is_off_by_default(client: WSClient) -> None:
    pings = [{"type": "ping", "id": f"p-{i}"} for i in range(100)]
    for _ in range(3):
        futures = [client.expect(p["id"]) for p in pings]
        await client.send_raw(json.dumps(pings))
        answers = await asyncio.wait_for(asyncio.gather(*futures), TIMEOUT)
        assert all(a["type"] == "pong" for a in answers)


@configured(max_connections_per_client=2)
async def test_too_many_connections_from_one_address(
    handler: Handler, server: str, connect: Connect
) -> None:
    gone = asyncio.Event()
    handler.hooks.register_after(HookType.DISCONNECT, lambda ctx: gone.set())

    first: WSClient = await connect()
    second: WSClient = await connect()
    await first.barrier()
    await second.barrier()
    with pytest.raises(InvalidStatus) as refused:
        await WSClient.connect(server)
    response = refused.value.response
    assert response.status_code == 429
    assert json.loads(response.body)["error"]["code"] == "too_many_connections"
    await assert_still_works(first)

    await first.close()
    await asyncio.wait_for(gone.wait(), TIMEOUT)
    third: WSClient = await connect()
    await assert_still_works(third)


async def is_served(client: WSClient) -> bool:
    """Whether the server answers this client, rather than closing it."""
    ping = {"type": "ping", "id": "served?"}
    answer = client.expect(ping["id"])
    closed = asyncio.ensure_future(client.ws.wait_closed())
    with contextlib.suppress(ConnectionClosed):
        await client.send_raw(json.dumps(ping))
    either: set[asyncio.Future[Any]] = {answer, closed}
    done, _ = await asyncio.wait(
        either, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED
    )
    closed.cancel()
    assert done, "neither answered nor closed"
    return answer in done


@configured(max_connections_per_client=2)
async def test_concurrent_handshakes_cannot_pass_the_connection_limit_together(
    handler: Handler, server: str
) -> None:
    @handler.hooks.before(HookType.CONNECT)
    async def verify_slowly(ctx: HookContext) -> None:
        # Like a token check against a database: handshakes overlap here.
        for _ in range(20):
            await asyncio.sleep(0)

    async def attempt() -> WSClient | int:
        try:
            return await WSClient.connect(server)
        except InvalidStatus as exc:
            return exc.response.status_code

    outcomes = await asyncio.gather(*(attempt() for _ in range(8)))
    clients = [o for o in outcomes if isinstance(o, WSClient)]
    try:
        assert all(o == 429 for o in outcomes if not isinstance(o, WSClient))
        served = [c for c in clients if await is_served(c)]
        assert len(served) == 2
        for client in clients:
            if client not in served:
                assert client.ws.close_code == 1013
    finally:
        for client in clients:
            await client.close()


async def test_many_connections_from_one_address_by_default(connect: Connect) -> None:
    clients: list[WSClient] = await asyncio.wait_for(
        asyncio.gather(*(connect() for _ in range(40))), TIMEOUT
    )
    for client in clients:
        await client.barrier()


async def test_64_requests_in_flight_by_default_and_more_wait(
    handler: Handler, client: WSClient
) -> None:
    in_flight = 64
    extra = 16
    arrived = 0
    all_in = asyncio.Event()
    release = asyncio.Event()

    @handler.hooks.before(HookType.READ)
    async def hold(ctx: HookContext) -> None:
        nonlocal arrived
        arrived += 1
        if arrived == in_flight:
            all_in.set()
        await asyncio.wait_for(release.wait(), TIMEOUT)

    await create_users(client, ["Ann"])
    reads = [
        {"id": f"r-{i}", "type": "request", "operation": "read", "entity": "users"}
        for i in range(in_flight + extra)
    ]
    futures = [client.expect(r["id"]) for r in reads]
    for read in reads:
        await client.send_raw(json.dumps(read))
    # All 64 are running at once (each is held until the 64th arrives).
    await asyncio.wait_for(all_in.wait(), TIMEOUT)
    assert not any(f.done() for f in futures)
    release.set()
    # Past the limit the server stopped reading; it refused nothing.
    answers = await asyncio.wait_for(asyncio.gather(*futures), TIMEOUT)
    for answer in answers:
        assert answer["success"] is True, answer
        assert answer["data"][0]["name"] == "Ann"
    assert arrived == in_flight + extra


# -- pages and responses --------------------------------------------------------------


@configured(default_page_size=3, max_page_size=5)
async def test_a_limit_above_the_maximum_is_clamped(client: WSClient) -> None:
    await create_users(client, [f"user {i}" for i in range(8)])
    big = await client.request("read", "users", options={"limit": 1000})
    assert big["success"] is True
    assert len(big["data"]) == 5
    assert big["metadata"] == {"total": 8, "count": 5, "limit": 5, "offset": 0}
    default = await client.request("read", "users")
    assert len(default["data"]) == 3
    assert default["metadata"]["limit"] == 3
    last = await client.request("read", "users", options={"limit": 50, "offset": 5})
    assert [row["name"] for row in last["data"]] == ["user 5", "user 6", "user 7"]


@configured(max_response_size=3_000)
async def test_response_too_large_asks_for_a_smaller_page(client: WSClient) -> None:
    rows = await create_users(client, [f"{i:02d}" + "n" * 150 for i in range(30)])
    too_big = await client.request("read", "users")
    assert too_big["success"] is False
    assert too_big["error"]["code"] == "response_too_large"
    assert too_big["error"]["details"] == {"max_response_size": 3_000}
    assert "limit" in too_big["error"]["message"]

    page = await client.request("read", "users", options={"limit": 5})
    assert page["success"] is True
    assert page["metadata"]["total"] == 30
    single = await client.request("read", "users", record_id=str(rows[0]["id"]))
    assert single["data"]["name"] == rows[0]["name"]

    # The limit counts bytes: 10 rows of 100 euro signs are ~1,300 characters but
    # ~3,500 bytes of UTF-8.
    await client.ok("delete", "users", record_id=str(rows[0]["id"]))
    euros = await create_users(client, ["€" * 100 for _ in range(10)])
    wide = await client.request(
        "read",
        "users",
        options={
            "filters": [{"column": "name", "operator": "startswith", "value": "€"}]
        },
    )
    assert wide["success"] is False
    assert wide["error"]["code"] == "response_too_large"
    single = await client.request("read", "users", record_id=str(euros[0]["id"]))
    assert single["data"]["name"] == "€" * 100


# -- timeouts -------------------------------------------------------------------------


@configured(request_timeout=0.2)
async def test_request_timeout_fails_a_write_and_rolls_it_back(
    handler: Handler, client: WSClient
) -> None:
    stuck = asyncio.Event()
    never = asyncio.Event()

    @handler.hooks.after(HookType.CREATE)
    async def slow(ctx: HookContext) -> None:
        # Runs inside the write's transaction and inside its deadline.
        if ctx.data and ctx.data.get("name") == "slow":
            stuck.set()
            await asyncio.wait_for(never.wait(), TIMEOUT)

    answer = await client.request("create", "users", data={"name": "slow"})
    assert stuck.is_set()
    assert answer["success"] is False
    assert answer["error"]["code"] == "create_error"
    assert "timed out" in answer["error"]["message"]
    listed = await client.request("read", "users")
    assert listed["metadata"]["total"] == 0

    created = await client.ok("create", "users", data={"name": "quick"})
    assert created["name"] == "quick"


@pytest.mark.parametrize("backend", ["postgresql"])
@configured(request_timeout=0.3)
async def test_request_timeout_fails_a_read_blocked_by_a_table_lock(
    engine: AsyncEngine, client: WSClient
) -> None:
    # Narrowed to PostgreSQL: SQLite runs in WAL mode, where nothing blocks a reader.
    await create_users(client, ["Ann"])
    async with engine.connect() as db:
        transaction = await db.begin()
        await db.execute(text("LOCK TABLE users IN ACCESS EXCLUSIVE MODE"))
        answer = await client.request("read", "users")
        await transaction.rollback()
    assert answer["success"] is False
    assert answer["error"]["code"] == "read_error"
    assert answer["error"]["message"] == "the read timed out"
    listed = await client.request("read", "users")
    assert [row["name"] for row in listed["data"]] == ["Ann"]


@configured(idle_timeout=0.3)
async def test_idle_timeout_closes_a_silent_connection(client: WSClient) -> None:
    last = time.monotonic()
    await client.barrier()
    await asyncio.wait_for(client.ws.wait_closed(), TIMEOUT)
    # The server heard the ping after `last`, so it waited at least the timeout.
    assert time.monotonic() - last >= 0.29
    assert client.ws.close_code == 1000
    assert client.ws.close_reason == "idle timeout"


@configured(idle_timeout=0.3)
async def test_idle_timeout_spares_requests_in_flight_and_listening_subscribers(
    handler: Handler, connect: Callable[..., Any]
) -> None:
    # A request slower than the idle timeout is still answered on the same connection,
    # and a subscriber that only receives notifications is not idle either.
    release = asyncio.Event()

    @handler.hooks.after(HookType.READ)
    async def slow(ctx: HookContext) -> None:
        if ctx.subscription_id is None and ctx.options.limit == 7:
            await asyncio.wait_for(release.wait(), TIMEOUT)

    reader = await connect()
    listener = await connect()
    await listener.subscribe("users")
    answer = asyncio.ensure_future(
        reader.request("read", "users", options={"limit": 7})
    )
    writer = await connect()
    started = time.monotonic()
    while time.monotonic() - started < 0.9:  # three idle timeouts
        await writer.ok("create", "users", data={"name": "tick"})
        note = await listener.notification()
        assert note["data"]["name"] == "tick"
    assert reader.ws.close_code is None
    assert listener.ws.close_code is None
    release.set()
    read = await asyncio.wait_for(answer, TIMEOUT)
    assert read["success"] is True
    assert read["metadata"]["limit"] == 7
