"""Broker URLs name their channel: ``redis://…?channel=shop``, ``postgresql://…?channel=shop``.

Parsing is checked on its own; then a server started with such a URL publishes its
changes on that channel of the real Redis, and notifies on that channel of the real
PostgreSQL, where a plain listener hears them.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.support.databases import models_database
from tests.support.models import MODELS
from tests.support.servers import serve
from tests.support.wsclient import WSClient
from websocketspec import Handler
from websocketspec.adapters.sqlalchemy import SQLAlchemyAdapter
from websocketspec.broker import broker_from_url
from websocketspec.broker.postgres import PostgresBroker
from websocketspec.broker.redis import RedisBroker
from websocketspec.exceptions import ConfigurationError

REDIS_URL = os.environ.get("WEBSOCKETSPEC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TIMEOUT = 10.0


@pytest.mark.parametrize(
    ("url", "expected_url", "channel"),
    [
        ("redis://h:6379/0?channel=shop", "redis://h:6379/0", "shop"),
        (
            "redis://u:p%40ss@h:6379/2?health_check_interval=5&channel=a%3Ab&ssl_cert_reqs=none",
            "redis://u:p%40ss@h:6379/2?health_check_interval=5&ssl_cert_reqs=none",
            "a:b",
        ),
        ("redis://h:6379/0", "redis://h:6379/0", "websocketspec:changes"),
        ("redis://h:6379/0?db=1", "redis://h:6379/0?db=1", "websocketspec:changes"),
    ],
)
def test_redis_urls_name_their_channel(
    url: str, expected_url: str, channel: str
) -> None:
    broker = broker_from_url(url)
    assert isinstance(broker, RedisBroker)
    assert (broker.url, broker.channel) == (expected_url, channel)


def test_postgresql_urls_name_their_channel() -> None:
    broker = broker_from_url("postgresql+asyncpg://u@h/db?channel=shop&sslmode=disable")
    assert isinstance(broker, PostgresBroker)
    assert broker.dsn == "postgresql://u@h/db?sslmode=disable"
    assert broker.notify_channel == "shop"
    default = broker_from_url("postgresql://u@h/db")
    assert isinstance(default, PostgresBroker)
    assert default.notify_channel == "websocketspec"


@pytest.mark.parametrize(
    "url", ["redis://h/0?channel=", "redis://h/0?channel=a&channel=b"]
)
def test_an_empty_or_repeated_channel_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="channel"):
        broker_from_url(url)


@pytest.fixture
async def database() -> AsyncIterator[str]:
    async with models_database() as url:
        yield url


async def create_through(broker_url: str, database: str) -> dict[str, Any]:
    """Serve ``database`` with the broker of ``broker_url`` and create one user."""
    handler = Handler(SQLAlchemyAdapter(database), broker=broker_from_url(broker_url))
    for name, model in MODELS.items():
        handler.registry.register_model(name, model)
    async with serve("direct", handler) as base:
        client = await WSClient.connect(f"{base}/ws")
        try:
            row = await client.ok("create", "users", data={"name": "carol"})
        finally:
            await client.close()
    await handler.stop()
    assert isinstance(row, dict)
    return row


async def test_a_redis_url_channel_carries_the_changes(database: str) -> None:
    channel = f"wsspec-test-url-{uuid.uuid4().hex}"
    redis = aioredis.from_url(REDIS_URL)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)
    try:
        row = await create_through(f"{REDIS_URL}?channel={channel}", database)
        async with asyncio.timeout(TIMEOUT):
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    break
        assert str(row["id"]) in message["data"].decode()
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await redis.aclose()


async def test_a_postgresql_url_channel_carries_the_notifications(
    database: str,
) -> None:
    channel = f"wsspec_test_{uuid.uuid4().hex}"
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(database.replace("+asyncpg", ""))
    await listener.add_listener(channel, lambda *args: heard.put_nowait(args[3]))
    try:
        await create_through(f"{database}?channel={channel}", database)
        payload = await asyncio.wait_for(heard.get(), TIMEOUT)
        assert payload == "public.users:1"  # the entity and position of the change
    finally:
        await listener.close()
