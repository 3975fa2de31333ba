"""Real databases for tests: a SQLite file, and a PostgreSQL database of the test run's own.

PostgreSQL is reached through ``WEBSOCKETSPEC_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``); each test session creates its own
database there and drops it at the end. When no server answers, the tests fail with a
message saying how to start one: ``scripts/test.sh`` starts a private instance.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SETUP_TIMEOUT = 60.0


def admin_url() -> str:
    return os.environ.get("WEBSOCKETSPEC_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


async def create_database() -> str:
    """Create a fresh PostgreSQL database; returns its URL."""
    url = admin_url()
    name = f"wsspec_test_{uuid.uuid4().hex[:12]}"
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        raise RuntimeError(
            f"PostgreSQL is not reachable at {url} ({exc}). Run the tests with "
            "scripts/test.sh, which starts a private PostgreSQL when none answers, "
            "or set WEBSOCKETSPEC_TEST_POSTGRES_URL."
        ) from exc
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(url, name)


async def drop_database(url: str) -> None:
    name = url.rpartition("/")[2]
    conn = await asyncpg.connect(admin_url(), timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@asynccontextmanager
async def models_database(sqlite_file: Path | None = None) -> AsyncIterator[str]:
    """A database of its own holding the test models' empty tables; yields its URL.

    PostgreSQL (created here, dropped after), or the SQLite file ``sqlite_file``.
    """
    from tests.support.models import Base
    from websocketspec.adapters.sqlalchemy import create_engine

    async with asyncio.timeout(SETUP_TIMEOUT):
        url = (
            f"sqlite:///{sqlite_file}"
            if sqlite_file is not None
            else await create_database()
        )
        engine = create_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
        finally:
            await engine.dispose()
    try:
        yield url
    finally:
        if sqlite_file is None:
            async with asyncio.timeout(SETUP_TIMEOUT):
                await drop_database(url)
