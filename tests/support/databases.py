"""Real databases for tests: a SQLite file, and a PostgreSQL database of the test run's own.

PostgreSQL is reached through ``WEBSOCKETSPEC_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``); each test session creates its own
database there and drops it at the end. When no server answers, the tests fail with a
message saying how to start one: ``scripts/test.sh`` starts a private instance.
"""

from __future__ import annotations

import os
import uuid

import asyncpg

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


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
