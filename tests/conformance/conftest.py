"""The adapter conformance suite's fixtures: one handler per adapter and database.

Every test of ``test_conformance.py`` runs once per ``adapter_kind`` and ``backend``
(SQLite file, PostgreSQL database, and MariaDB database for adapters that list it in
their ``databases``). An adapter plugs in by adding one
:class:`AdapterFactory` to :data:`ADAPTERS`: a name and an async context manager that,
given a database URL and a :class:`~websocketspec.Config`, creates empty ``users``,
``posts`` and ``things`` tables (the columns of ``tests/support/models.py``) in that
database with its ORM, and yields a :class:`~websocketspec.Handler` serving its own
models of them as ``public.users`` (registered with ``bulk=True``), ``public.posts``
and ``public.things``. The suite then talks to that handler over a real socket (the
direct shell) and, for the parity property test, calls its adapter directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from tests.support.servers import serve
from websocketspec import Config, Handler

TIMEOUT = 30.0


@dataclass(frozen=True)
class AdapterFactory:
    """How to serve the conformance tables with one adapter."""

    name: str
    open: Callable[[str, Config], AbstractAsyncContextManager[Handler]]
    """``open(database_url, config)``: empty tables, a handler with the three models."""
    databases: tuple[str, ...] = ("sqlite", "postgresql")
    """The backends it is tested on: ``sqlite``, ``postgresql``, ``mariadb``."""


# -- SQLAlchemy -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def sqlalchemy_handler(url: str, config: Config) -> AsyncIterator[Handler]:
    from tests.support.models import MODELS, Base
    from websocketspec.adapters.sqlalchemy import SQLAlchemyAdapter, create_engine

    engine = create_engine(url)
    async with asyncio.timeout(TIMEOUT), engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    handler = Handler(SQLAlchemyAdapter(engine), config=config)
    for name, model in MODELS.items():
        handler.registry.register_model(name, model, bulk=name == "public.users")
    try:
        yield handler
    finally:
        await handler.stop()
        await engine.dispose()


# -- Django -------------------------------------------------------------------------------


def configure_django() -> None:
    """Configure Django once per test process: the test app, no default database.

    Each test adds a database alias of its own (:func:`django_database`).
    """
    import django
    from django.conf import settings

    if settings.configured:
        return
    settings.configure(
        DATABASES={},
        INSTALLED_APPS=["tests.conformance.django_models"],
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    )
    django.setup()


def django_database(url: str) -> dict[str, Any]:
    """Django's ``DATABASES`` entry for a plain database URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+")[0]
    if scheme == "sqlite":
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": url[len("sqlite:///") :],
        }
    if scheme in ("postgresql", "postgres"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": parts.path.lstrip("/"),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
        }
    raise ValueError(f"unsupported database URL {url!r}")


def _create_django_tables(alias: str) -> None:
    from django.db import connections

    from tests.conformance.django_models.models import MODELS

    conn = connections[alias]
    cascade = " CASCADE" if conn.vendor == "postgresql" else ""
    with conn.cursor() as cursor:
        for table in ("posts", "users", "things"):
            cursor.execute(f"DROP TABLE IF EXISTS {table}{cascade}")
    with conn.schema_editor() as editor:
        for model in MODELS.values():
            editor.create_model(model)


def _forget_alias(alias: str) -> None:
    from django.db import connections

    connections[alias].close()
    del connections[alias]


@contextlib.asynccontextmanager
async def django_handler(url: str, config: Config) -> AsyncIterator[Handler]:
    configure_django()
    from asgiref.sync import sync_to_async
    from django.db import connections

    from tests.conformance.django_models.models import MODELS
    from websocketspec.adapters.django import DjangoAdapter

    alias = f"conformance_{uuid.uuid4().hex[:12]}"
    # configure_settings fills in Django's defaults; it wants a "default" entry too.
    connections.databases[alias] = connections.configure_settings(
        {"default": {}, alias: django_database(url)}
    )[alias]
    async with asyncio.timeout(TIMEOUT):
        await sync_to_async(_create_django_tables, thread_sensitive=True)(alias)
    handler = Handler(DjangoAdapter(alias), config=config)
    for name, model in MODELS.items():
        handler.registry.register_model(name, model, bulk=name == "public.users")
    try:
        yield handler
    finally:
        await handler.stop()
        async with asyncio.timeout(TIMEOUT):
            await sync_to_async(_forget_alias, thread_sensitive=True)(alias)
        del connections.databases[alias]


# -- Tortoise ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def tortoise_handler(url: str, config: Config) -> AsyncIterator[Handler]:
    """A Tortoise context of the test's own, with Tortoise's tables for the three models."""
    from tortoise.context import TortoiseContext

    from tests.conformance import tortoise_models
    from websocketspec.adapters.tortoise import TortoiseAdapter, tortoise_url

    # A connection name per database: Tortoise caches its own statements per name.
    connection = f"conformance_{urlsplit(url).scheme}"
    context = TortoiseContext()
    try:
        # Tortoise resolves models through the current context while it initialises.
        with context:
            async with asyncio.timeout(TIMEOUT):
                await context.init(
                    config={
                        "connections": {connection: tortoise_url(url)},
                        "apps": {
                            "models": {
                                "models": [tortoise_models.__name__],
                                "default_connection": connection,
                            }
                        },
                    }
                )
                client = context.connections.get(connection)
                cascade = (
                    " CASCADE" if client.capabilities.dialect == "postgres" else ""
                )
                for table in ("posts", "users", "things"):
                    await client.execute_script(
                        f'DROP TABLE IF EXISTS "{table}"{cascade}'
                    )
                await context.generate_schemas(safe=False)
        handler = Handler(TortoiseAdapter(connection, context=context), config=config)
        for name, model in tortoise_models.MODELS.items():
            handler.registry.register_model(name, model, bulk=name == "public.users")
        try:
            yield handler
        finally:
            await handler.stop()
    finally:
        async with asyncio.timeout(TIMEOUT):
            await context.close_connections()


ADAPTERS: list[AdapterFactory] = [
    AdapterFactory(
        "sqlalchemy", sqlalchemy_handler, ("sqlite", "postgresql", "mariadb")
    ),
    AdapterFactory("django", django_handler),
    AdapterFactory("tortoise", tortoise_handler),
]
"""Every adapter the suite runs against: add one factory to test a new adapter."""


# -- fixtures -----------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test that uses ``adapter_kind`` once per adapter and database it supports.

    As if the test were marked ``parametrize(("adapter_kind", "backend"), …)``: the
    mark, added before pytest's own hooks run (``tryfirst``) and applied by them, also
    keeps the root conftest's ``backend`` params off these tests. Tests without an
    adapter keep those params.
    """
    if "adapter_kind" in metafunc.fixturenames:
        pairs = [
            pytest.param(a, db, id=f"{a.name}-{db}")
            for a in ADAPTERS
            for db in a.databases
        ]
        metafunc.definition.add_marker(
            pytest.mark.parametrize(("adapter_kind", "backend"), pairs)
        )


@pytest.fixture(scope="session")
def mariadb_url() -> Iterator[str]:
    """A MariaDB database of this test session's own."""
    from tests.support.mariadb import create_database, drop_database

    url = asyncio.run(create_database())
    yield url
    asyncio.run(drop_database(url))


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The root conftest's database, and MariaDB (overrides the root conftest's)."""
    if backend == "mariadb":
        return str(request.getfixturevalue("mariadb_url"))
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def handler(
    adapter_kind: AdapterFactory, database_url: str, config: Config
) -> AsyncIterator[Handler]:
    """The adapter's handler on empty tables (overrides the root conftest's)."""
    async with adapter_kind.open(database_url, config) as handler:
        yield handler


@pytest.fixture
async def server(handler: Handler) -> AsyncIterator[str]:
    """The handler on the direct shell (the shells themselves are covered elsewhere)."""
    async with serve("direct", handler) as base:
        yield f"{base}/ws"
