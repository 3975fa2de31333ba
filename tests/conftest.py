"""Fixtures: real databases (a SQLite file, a PostgreSQL database), a real uvicorn
server on a loopback port serving the handler, and real WebSocket clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.databases import create_database, drop_database
from tests.support.models import MODELS, Base
from tests.support.servers import serve
from tests.support.wsclient import WSClient
from websocketspec import Config, Handler
from websocketspec.adapters.sqlalchemy import SQLAlchemyAdapter, create_engine

BACKENDS = ["sqlite", "postgresql"]
SHELLS = ["asgi", "direct"]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database of this test session's own."""
    url = asyncio.run(create_database())
    yield url
    asyncio.run(drop_database(url))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on empty tables of the test models."""
    engine = create_engine(database_url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    yield engine
    await engine.dispose()


@pytest.fixture
def config() -> Config:
    """Override in a test module to serve with other settings."""
    return Config()


@pytest.fixture
def handler(engine: AsyncEngine, config: Config) -> Handler:
    handler = Handler(SQLAlchemyAdapter(engine), config=config)
    for name, model in MODELS.items():
        handler.registry.register_model(name, model)
    return handler


@pytest.fixture(params=SHELLS)
def shell(request: pytest.FixtureRequest) -> str:
    """Which shell serves the handler: uvicorn (ASGI) or the direct websockets server."""
    return str(request.param)


@pytest.fixture
async def server(handler: Handler, shell: str) -> AsyncIterator[str]:
    """The handler served over a real loopback socket; yields the endpoint's ws:// URL."""
    async with serve(shell, handler) as base:
        yield f"{base}/ws"
    await handler.stop()


@pytest.fixture
async def connect(server: str) -> AsyncIterator[Callable[..., Any]]:
    """Open more clients to the server; all are closed at the end of the test."""
    clients: list[WSClient] = []

    async def open_client(**kwargs: Any) -> WSClient:
        client = await WSClient.connect(server, **kwargs)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        await client.close()


@pytest.fixture
async def client(connect: Callable[..., Any]) -> WSClient:
    return await connect()  # type: ignore[no-any-return]


# Property tests are derandomized everywhere so that main never turns red by chance;
# each test states its example count. `--hypothesis-profile=explore` searches afresh.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "default",
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "explore", derandomize=False, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile("default")
