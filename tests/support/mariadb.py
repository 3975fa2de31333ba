"""A MariaDB (or MySQL) database of the test run's own.

The server is reached through ``WEBSOCKETSPEC_TEST_MYSQL_URL`` (default
``mysql://root@127.0.0.1:3306/test``); each test session creates a database of its own
there (``wsspec_test_<random>``) and drops it at the end. The database's default
collation is the server's usual ``utf8mb4_general_ci``, which folds case and pads with
spaces, so that the tests show that the adapter compares text by code point anyway.
When no server answers, the tests fail with a message saying how to start one:
``scripts/test.sh`` starts a private instance (``scripts/lib/mariadb.sh``).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from urllib.parse import unquote, urlsplit

import asyncmy

DEFAULT_MYSQL_URL = "mysql://root@127.0.0.1:3306/test"
TIMEOUT = 10.0


def admin_url() -> str:
    return os.environ.get("WEBSOCKETSPEC_TEST_MYSQL_URL", DEFAULT_MYSQL_URL)


def with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


async def _connect(url: str) -> asyncmy.Connection:
    parts = urlsplit(url)
    try:
        return await asyncio.wait_for(
            asyncmy.connect(
                host=parts.hostname or "127.0.0.1",
                port=parts.port or 3306,
                user=unquote(parts.username or "root"),
                password=unquote(parts.password or ""),
                charset="utf8mb4",
                connect_timeout=TIMEOUT,
            ),
            TIMEOUT,
        )
    except (OSError, TimeoutError, asyncmy.Error) as exc:
        raise RuntimeError(
            f"MariaDB is not reachable at {url} ({exc!r}). Run the tests with "
            "scripts/test.sh, which starts a private MariaDB when none answers, "
            "or set WEBSOCKETSPEC_TEST_MYSQL_URL to a server's URL "
            "(mysql://user:password@host:port/database)."
        ) from exc


async def _execute(url: str, sql: str) -> None:
    conn = await _connect(url)
    try:
        async with conn.cursor() as cursor:
            await asyncio.wait_for(cursor.execute(sql), TIMEOUT)
    finally:
        # Waits for the socket to close: asyncio.run() ends the loop right after.
        await asyncio.wait_for(conn.ensure_closed(), TIMEOUT)


async def create_database() -> str:
    """Create a fresh database (utf8mb4, case-folding collation); returns its URL."""
    url = admin_url()
    name = f"wsspec_test_{uuid.uuid4().hex[:12]}"
    await _execute(
        url,
        f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci",
    )
    return with_database(url, name)


async def drop_database(url: str) -> None:
    name = url.rpartition("/")[2]
    await _execute(admin_url(), f"DROP DATABASE IF EXISTS `{name}`")
