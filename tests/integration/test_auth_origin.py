"""Origin checks and bearer-token authentication over real sockets.

Origin checks happen in the handshake, before any database work, so they run on one
database (SQLite) and both shells. Authentication changes what hooks see and what
subscriptions deliver, so it runs on both databases.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from websockets.exceptions import InvalidStatus

from tests.support.wsclient import TIMEOUT, WSClient
from websocketspec import (
    Config,
    FilterOption,
    Handler,
    HookContext,
    HookType,
    UnauthorizedError,
)
from websocketspec.auth import BearerAuth

Connect = Callable[..., Any]

# The database plays no part in a handshake's Origin check.
database_irrelevant = pytest.mark.parametrize("backend", ["sqlite"])


def configured(**settings: Any) -> pytest.MarkDecorator:
    """Serve the test's handler with ``Config(**settings)``."""
    return pytest.mark.parametrize(
        "config", [Config(**settings)], indirect=True, ids=["config"]
    )


@pytest.fixture
def config(request: pytest.FixtureRequest) -> Config:
    return getattr(request, "param", Config())


async def refused(url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """Connect, expecting the handshake to be refused; the status and JSON error."""
    with pytest.raises(InvalidStatus) as caught:
        client = await WSClient.connect(url, **kwargs)
        await client.close()
    response = caught.value.response
    return response.status_code, json.loads(response.body)["error"]


# -- Origin ---------------------------------------------------------------------------


@database_irrelevant
async def test_cross_origin_browsers_are_refused_and_told_how_to_allow_them(
    handler: Handler, server: str
) -> None:
    port = urlsplit(server).port
    for origin in (
        "https://evil.example",
        f"http://127.0.0.1:{(port or 0) + 1}",  # same host, another port
        f"http://localhost:{port}",  # another host name
        "null",  # sandboxed frames and file:// pages
    ):
        status, error = await refused(server, origin=origin)
        assert status == 403, origin
        assert error["code"] == "origin_not_allowed"
        assert "Config(allowed_origins=" in error["message"]
        assert origin in error["message"]
    assert handler.stats()["connections"] == 0


@database_irrelevant
async def test_same_origin_and_originless_clients_pass(
    server: str, connect: Connect
) -> None:
    port = urlsplit(server).port
    for kwargs in ({}, {"origin": f"http://127.0.0.1:{port}"}):
        client: WSClient = await connect(**kwargs)
        assert (await client.request("read", "users"))["success"] is True


@database_irrelevant
@configured(allowed_origins=("https://app.example", "http://admin.example:8000"))
async def test_allowed_origins_pass(server: str, connect: Connect) -> None:
    for origin in (
        "https://app.example",
        "https://APP.example:443",
        "http://admin.example:8000",
    ):
        client: WSClient = await connect(origin=origin)
        assert (await client.request("read", "users"))["success"] is True
    for origin in (
        "http://app.example",  # the scheme is part of the origin
        "https://app.example:8443",
        "http://admin.example",
        "https://evil.example",
    ):
        status, error = await refused(server, origin=origin)
        assert status == 403, origin
        assert error["code"] == "origin_not_allowed"


@database_irrelevant
@configured(allowed_origins=("*",))
async def test_a_star_allows_every_origin(connect: Connect) -> None:
    for origin in ("https://evil.example", "null"):
        client: WSClient = await connect(origin=origin)
        assert (await client.request("read", "users"))["success"] is True


# -- bearer tokens --------------------------------------------------------------------


class Tokens:
    """A token issuer for tests: opaque tokens mapped to metadata and an expiry."""

    def __init__(self) -> None:
        self.known: dict[str, dict[str, Any]] = {}
        self.verified: list[str] = []

    def issue(self, ttl: float | None = None, **metadata: Any) -> str:
        token = f"tok-{uuid.uuid4().hex}"
        if ttl is not None:
            metadata["exp"] = time.time() + ttl
        self.known[token] = metadata
        return token

    async def verify(self, token: str) -> dict[str, Any] | None:
        self.verified.append(token)
        return self.known.get(token)


def bearer(token: str) -> dict[str, Any]:
    return {"additional_headers": {"Authorization": f"Bearer {token}"}}


def watch_identity(handler: Handler) -> list[Any]:
    """Record the user_id every request's hooks see."""
    seen: list[Any] = []

    @handler.hooks.before(HookType.HANDLE)
    def record(ctx: HookContext) -> None:
        seen.append(ctx.connection.metadata.get("user_id"))

    return seen


def install_row_security(handler: Handler) -> None:
    """Posts are private to their author; only admins may watch users."""

    @handler.hooks.before(HookType.READ)
    def own_posts(ctx: HookContext) -> None:
        if ctx.entity == "posts":
            user_id = ctx.connection.metadata.get("user_id")
            ctx.add_filter(FilterOption("user_id", "eq", user_id))

    @handler.hooks.before(HookType.SUBSCRIBE)
    def admins_watch_users(ctx: HookContext) -> None:
        if ctx.entity == "users" and not ctx.connection.metadata.get("admin"):
            raise UnauthorizedError("only admins may watch users")


async def auth(client: WSClient, token: Any) -> dict[str, Any]:
    return await client.request("auth", data={"token": token})


async def test_the_handshake_needs_a_valid_token(handler: Handler, server: str) -> None:
    tokens = Tokens()
    BearerAuth(tokens.verify).install(handler)
    expired = tokens.issue(ttl=-1, user_id=1)

    status, error = await refused(server)
    assert status == 401
    assert error["code"] == "unauthorized"
    assert "Authorization: Bearer" in error["message"]

    for kwargs in (
        bearer("tok-forged"),
        {"additional_headers": {"Authorization": "Basic dXNlcjpwYXNz"}},
        {"subprotocols": ["websocketspec", "bearer.tok-forged"]},
        {"subprotocols": ["websocketspec"]},
        bearer(expired),
    ):
        status, error = await refused(server, **kwargs)
        assert status == 401, kwargs
        assert error["code"] == "unauthorized"
    assert handler.stats()["connections"] == 0


async def test_a_token_in_the_authorization_header(
    handler: Handler, connect: Connect
) -> None:
    tokens = Tokens()
    BearerAuth(tokens.verify).install(handler)
    seen = watch_identity(handler)
    token = tokens.issue(user_id=7)

    client: WSClient = await connect(**bearer(token))
    assert client.ws.subprotocol is None
    assert (await client.request("read", "users"))["success"] is True
    assert seen == [7]
    assert tokens.verified == [token]


async def test_a_token_in_the_subprotocols_is_never_echoed(
    handler: Handler, connect: Connect
) -> None:
    tokens = Tokens()
    BearerAuth(tokens.verify).install(handler)
    seen = watch_identity(handler)
    token = tokens.issue(user_id=8)

    # What a browser does: it cannot set headers, so it offers the token as a
    # subprotocol next to the fixed one.
    client: WSClient = await connect(subprotocols=["websocketspec", f"bearer.{token}"])
    assert client.ws.subprotocol == "websocketspec"
    response = client.ws.response
    assert response is not None
    assert response.headers.get_all("Sec-WebSocket-Protocol") == ["websocketspec"]
    assert all(token not in value for _, value in response.headers.raw_items())
    assert (await client.request("read", "users"))["success"] is True
    assert seen == [8]


@pytest.mark.parametrize("query_param", [None, "access_token"])
async def test_a_token_in_the_query_string_only_when_enabled(
    handler: Handler, server: str, connect: Connect, query_param: str | None
) -> None:
    tokens = Tokens()
    BearerAuth(tokens.verify, query_param=query_param).install(handler)
    seen = watch_identity(handler)
    token = tokens.issue(user_id=9)
    url = f"{server}?access_token={token}"
    if query_param is None:
        status, error = await refused(url)
        assert status == 401
        assert error["code"] == "unauthorized"
        assert tokens.verified == []
        return
    client: WSClient = await WSClient.connect(url)
    try:
        assert (await client.request("read", "users"))["success"] is True
    finally:
        await client.close()
    assert seen == [9]


async def test_in_band_auth_replaces_the_identity_and_rechecks_subscriptions(
    handler: Handler, connect: Connect
) -> None:
    tokens = Tokens()
    BearerAuth(tokens.verify).install(handler)
    install_row_security(handler)
    seen = watch_identity(handler)

    writer: WSClient = await connect(**bearer(tokens.issue(user_id=0, admin=True)))
    ann = (await writer.ok("create", "users", data={"name": "Ann"}))["id"]
    bob = (await writer.ok("create", "users", data={"name": "Bob"}))["id"]
    await writer.ok("create", "posts", data={"title": "ann 1", "user_id": ann})
    await writer.ok("create", "posts", data={"title": "bob 1", "user_id": bob})

    client: WSClient = await connect(**bearer(tokens.issue(user_id=ann, admin=True)))
    users_sub = await client.subscribe("users")
    posts_sub = await client.subscribe("posts")
    titles = [p["title"] for p in await client.ok("read", "posts")]
    assert titles == ["ann 1"]

    answer = await auth(client, tokens.issue(user_id=bob))
    assert answer["success"] is True, answer
    assert answer["data"] == {"authenticated": True, "expires_at": None}

    # Bob is no admin: the users subscription is revoked, and says why.
    revoked = await client.notification()
    assert revoked["operation"] == "revoked"
    assert revoked["subscription_id"] == users_sub
    assert revoked["entity"] == "users"
    assert revoked["metadata"]["reason"] == "unauthorized"
    assert revoked["metadata"]["message"] == "only admins may watch users"
    gone = await client.unsubscribe(users_sub)
    assert gone["error"]["code"] == "subscription_not_found"

    # Hooks see Bob now: reads and the kept subscription follow his filter.
    titles = [p["title"] for p in await client.ok("read", "posts")]
    assert titles == ["bob 1"]
    assert seen[-1] == bob
    await writer.ok("create", "users", data={"name": "Cid"})
    await writer.ok("create", "posts", data={"title": "ann 2", "user_id": ann})
    await writer.ok("create", "posts", data={"title": "bob 2", "user_id": bob})
    note = await client.notification()
    assert note["subscription_id"] == posts_sub
    assert note["operation"] == "create"
    assert note["data"]["title"] == "bob 2"

    # A refused token changes nothing: Bob stays, and so does his subscription.
    bad = await auth(client, "tok-forged")
    assert bad["success"] is False
    assert bad["error"]["code"] == "unauthorized"
    empty = await auth(client, "")
    assert empty["error"]["code"] == "validation_error"
    titles = [p["title"] for p in await client.ok("read", "posts")]
    assert titles == ["bob 1", "bob 2"]
    await writer.ok("create", "posts", data={"title": "bob 3", "user_id": bob})
    note = await client.notification()
    assert note["data"]["title"] == "bob 3"
    assert await client.drain() == []


async def test_an_expired_token_can_be_refreshed_during_the_grace_period(
    handler: Handler, connect: Connect
) -> None:
    tokens = Tokens()
    BearerAuth(tokens.verify, grace_period=0.6).install(handler)
    install_row_security(handler)

    writer: WSClient = await connect(**bearer(tokens.issue(user_id=0, admin=True)))
    ann = (await writer.ok("create", "users", data={"name": "Ann"}))["id"]
    client: WSClient = await connect(**bearer(tokens.issue(user_id=ann)))
    posts_sub = await client.subscribe("posts")

    answer = await auth(client, tokens.issue(ttl=0.5, user_id=ann))
    assert answer["data"]["expires_at"].endswith("Z")
    warning = await client.notification()
    assert warning["operation"] == "token_expired"
    assert warning["subscription_id"] is None
    assert warning["data"] == {"grace_period": 0.6}

    during = await client.request("read", "posts")
    assert during["success"] is False
    assert during["error"]["code"] == "unauthorized"
    assert "auth" in during["error"]["message"]

    # A new token in time keeps the connection and its subscriptions. It expires
    # again after the first grace period has ended, so a second warning (rather
    # than a revocation and a close) proves the first grace period was called off.
    refreshed = await auth(client, tokens.issue(ttl=0.8, user_id=ann))
    assert refreshed["success"] is True, refreshed
    assert (await client.request("read", "posts"))["success"] is True
    await writer.ok("create", "posts", data={"title": "hello", "user_id": ann})
    note = await client.notification()
    assert note["subscription_id"] == posts_sub
    assert note["data"]["title"] == "hello"
    again = await client.notification()
    assert again["operation"] == "token_expired"

    assert (await auth(client, tokens.issue(user_id=ann)))["success"] is True
    assert (await client.request("read", "posts"))["success"] is True
    assert client.ws.close_code is None


async def test_without_a_new_token_subscriptions_are_revoked_and_the_connection_closes(
    handler: Handler, connect: Connect
) -> None:
    tokens = Tokens()
    BearerAuth(tokens.verify, grace_period=0.5).install(handler)
    client: WSClient = await connect(**bearer(tokens.issue(user_id=1)))
    subs = {await client.subscribe("users"), await client.subscribe("posts")}

    assert (await auth(client, tokens.issue(ttl=0.5, user_id=1)))["success"] is True
    warning = await client.notification()
    assert warning["operation"] == "token_expired"
    refused_subscribe = await client.call(
        {"type": "subscription", "operation": "subscribe", "entity": "users"}
    )
    assert refused_subscribe["error"]["code"] == "unauthorized"

    revoked = [await client.notification(), await client.notification()]
    assert {n["subscription_id"] for n in revoked} == subs
    for note in revoked:
        assert note["operation"] == "revoked"
        assert note["metadata"]["reason"] == "token_expired"
    await asyncio.wait_for(client.ws.wait_closed(), TIMEOUT)
    assert client.ws.close_code == 4001
    assert client.ws.close_reason == "authentication expired"
    assert sum(handler.stats()["subscriptions"].values()) == 0
