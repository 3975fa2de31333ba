"""The adapter conformance suite's fixtures: one handler per adapter and database.

Every test of ``test_conformance.py`` runs once per ``adapter_kind`` and ``backend``
(SQLite file, PostgreSQL database). An adapter plugs in by adding one
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
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
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


ADAPTERS: list[AdapterFactory] = [
    AdapterFactory("sqlalchemy", sqlalchemy_handler),
    AdapterFactory("django", django_handler),
]
"""Every adapter the suite runs against: add one factory to test a new adapter."""


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(params=ADAPTERS, ids=[a.name for a in ADAPTERS])
def adapter_kind(request: pytest.FixtureRequest) -> AdapterFactory:
    factory: AdapterFactory = request.param
    return factory


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
