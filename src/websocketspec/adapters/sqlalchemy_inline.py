"""SQLite work in the event loop's own thread, for the SQLAlchemy adapter.

aiosqlite runs every statement in a thread of its own: the hop there and back costs
about 200 µs, while a read by key or an insert costs tens. For SQLite *file*
databases the adapter therefore keeps two stdlib ``sqlite3`` connections used directly
in the event loop's thread:

- :class:`InlineReader`, read-only: WAL readers never wait for writers.
- :class:`InlineWriter`, for groups of writes that never await anything else
  (:meth:`SQLAlchemyAdapter.create_group`): the transaction begins, runs and commits in
  one step of the event loop, so nothing else can run inside it.

Neither ever waits on a lock: their busy timeout is 0, and work that would wait (another
writer holds the database, a checkpoint) raises :class:`Busy` at once, and the caller
takes the thread path, which waits as usual.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError

from websocketspec.adapters.common import sqlite_ilike, sqlite_like

__all__ = ["Busy", "InlineConnection", "InlineReader", "InlineWriter", "file_path"]


class Busy(Exception):  # noqa: N818 - a signal, not an error: fall back to the thread
    """The inline connection would have to wait for a lock."""


def file_path(database: str | None) -> str | None:
    """The file of a SQLite database name, or ``None`` for an in-memory database."""
    if not database or database == ":memory:" or "mode=memory" in database:
        return None
    return database.removeprefix("file:").partition("?")[0]


def _locked(exc: DBAPIError) -> bool:
    text = str(exc.orig)
    return "locked" in text or "busy" in text


class InlineConnection:
    """Gives a sync connection the ``await conn.execute()`` shape; never yields."""

    __slots__ = ("_conn",)

    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn

    @property
    def dialect(self) -> sa.Dialect:
        return self._conn.dialect

    async def execute(
        self, stmt: sa.Executable, params: Any = None
    ) -> sa.CursorResult[Any]:
        return self._conn.execute(stmt, params)


class _Inline:
    """One stdlib connection, opened on first use, behind a SQLAlchemy engine."""

    def __init__(self, path: str, *, readonly: bool, pragmas: tuple[str, ...]) -> None:
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(
                f"file:{path}?mode=ro" if readonly else path,
                uri=readonly,
                timeout=0,
                check_same_thread=False,
                isolation_level=None,
            )
            conn.create_function("ws_like", 2, sqlite_like, deterministic=True)
            conn.create_function("ws_ilike", 2, sqlite_ilike, deterministic=True)
            for pragma in pragmas:
                conn.execute(pragma)
            return conn

        self.engine = sa.create_engine(
            "sqlite://", creator=connect, poolclass=sa.pool.StaticPool
        )
        self._conn: sa.Connection | None = None

    def connection(self) -> sa.Connection:
        if self._conn is None:
            self._conn = self.engine.connect()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.engine.dispose()


class InlineReader(_Inline):
    """A read-only connection.

    Each read runs outside any transaction, so it sees every committed write.
    """

    def __init__(self, path: str) -> None:
        super().__init__(path, readonly=True, pragmas=())

    @contextlib.contextmanager
    def reading(self) -> Iterator[InlineConnection]:
        conn = self.connection()
        try:
            yield InlineConnection(conn)
        except DBAPIError as exc:
            conn.rollback()
            if _locked(exc):
                raise Busy from exc
            raise
        else:
            conn.rollback()


class InlineWriter(_Inline):
    """A read-write connection whose transactions take the write lock up front.

    Only for work that never yields to the event loop between ``BEGIN`` and
    ``COMMIT``; a second transaction while one is open raises :class:`Busy` (the
    caller's thread path then serialises as usual) rather than nesting.
    """

    def __init__(self, path: str, *, synchronous: str) -> None:
        super().__init__(
            path,
            readonly=False,
            pragmas=(
                "PRAGMA journal_mode=WAL",
                f"PRAGMA synchronous={synchronous}",
                "PRAGMA foreign_keys=ON",
            ),
        )

        @event.listens_for(self.engine, "begin")
        def begin(conn: sa.Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    @contextlib.contextmanager
    def writing(self) -> Iterator[InlineConnection]:
        conn = self.connection()
        if conn.in_transaction():
            raise Busy
        try:
            with conn.begin():
                yield InlineConnection(conn)
        except DBAPIError as exc:
            if _locked(exc):
                raise Busy from exc
            raise
