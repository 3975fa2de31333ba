"""Reads by primary key on PostgreSQL straight through asyncpg, for the SQLAlchemy adapter.

Through SQLAlchemy, a read by key on asyncpg costs a pool checkout and return, a
greenlet switch per driver call, a compiled-cache lookup and a result object around
one ``SELECT``; asyncpg alone needs one round trip (``fetchrow`` of a statement it has
prepared on that connection before). :class:`AsyncpgKeyReader` runs each entity's
by-key ``SELECT``, compiled once by the engine's dialect (``$1`` placeholders, the
key's cast), with ``fetchrow`` on asyncpg connections it holds, and converts the row
as SQLAlchemy would: each column type's result processor for the PostgreSQL type of
the column, then :func:`~websocketspec.protocol.values.normalize`.

Its connections come from a copy of the engine's pool (:meth:`Pool.recreate`), so
they are made exactly like the engine's: the same URL and ``connect_args``, the same
``connect`` events, and the dialect's JSON/JSONB codecs. They count against no limit of
the engine's own pool.

Theory of operation. The reader has ``size`` slots, kept in a last-in first-out queue;
a slot holds an open connection or ``None`` (free: connect when taken). A read takes a
slot, runs its one statement outside any transaction (autocommit, like the adapter's
other reads) and gives the slot back on top, so one connection never runs two
statements at once, a waiting read is woken by any returned slot, and a light load
keeps reusing the same connection rather than opening all of them. A connection is
dropped (terminated, its slot freed) when the server closed it, when the driver gave up
on it (a timeout, an interface error) or when the read was cancelled in the middle of
the statement; a query error on a healthy connection keeps it. When a reused
connection fails (most likely the server closed it while it was idle: a restart,
``pg_terminate_backend``), the read, which changes nothing, is retried on the next
slot; a timeout or a new connection's failure is final, and a read is tried at most
``size + 1`` times. :meth:`close` closes the idle connections at once and marks the
reader closed: a read that ends later drops its connection, and reads waiting for a
slot fail.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from websocketspec.exceptions import MissingDependencyError, OperationError
from websocketspec.protocol.values import normalize
from websocketspec.types import Record

try:
    import asyncpg
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("asyncpg", "postgres") from exc
try:
    import sqlalchemy as sa
    from sqlalchemy.engine.interfaces import Dialect
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.pool import PoolProxiedConnection
    from sqlalchemy.util import greenlet_spawn
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("sqlalchemy", "sqlalchemy") from exc

__all__ = ["AsyncpgKeyReader"]

log = logging.getLogger(__name__)

SIZE = 5
"""Connections held at most (fewer when the engine's pool is smaller)."""

_Convert = Callable[[Any], Any]

_DRIVER_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # e.g. a message the server sent as it hung up
    sa.exc.EmulatedDBAPIException,  # asyncpg's errors as SQLAlchemy raises them on connect
)
_HUNG_UP = (
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,  # pg_terminate_backend, a fast shutdown
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
)
"""Errors from the server after which the connection is gone, closed or not yet."""


class _Plan:
    """One by-key statement: its SQL for asyncpg and how to turn a row into a record."""

    __slots__ = ("bind", "convert", "names", "sql", "statement", "types")

    def __init__(self, statement: sa.Select[Any], dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        binds = list(compiled.binds.values())
        if len(binds) != 1:
            raise ValueError(
                f"expected a statement with one parameter (the key), got {len(binds)}"
            )
        self.statement = statement
        """Kept so that the statement's id, the plan's key, is never reused."""
        self.sql = compiled.string
        self.bind = binds[0].type.dialect_impl(dialect).bind_processor(dialect)
        self.names = tuple(statement.selected_columns.keys())
        self.types = [c.type.dialect_impl(dialect) for c in statement.selected_columns]
        self.convert: list[tuple[str, _Convert]] | None = None
        """Result processors by column name, once the row's PostgreSQL types are known."""

    def learn(self, dialect: Dialect, oids: Sequence[int]) -> None:
        """Pick each column's result processor for its PostgreSQL type, as SQLAlchemy does."""
        convert: list[tuple[str, _Convert]] = []
        for name, kind, oid in zip(self.names, self.types, oids, strict=True):
            processor = kind.result_processor(dialect, oid)
            if processor is not None:
                convert.append((name, processor))
        self.convert = convert

    def record(self, values: Any) -> Record:
        row = dict(zip(self.names, values, strict=True))
        for name, processor in self.convert or ():
            row[name] = processor(row[name])
        return {name: normalize(value) for name, value in row.items()}


class _Held:
    """An open connection: SQLAlchemy's handle on it and the asyncpg connection."""

    __slots__ = ("driver", "handle", "reused")

    def __init__(self, handle: PoolProxiedConnection) -> None:
        self.handle = handle
        self.driver: Any = handle.driver_connection
        self.reused = False


class AsyncpgKeyReader:
    """Read rows by primary key with asyncpg, on connections made like the engine's.

    Args:
        engine: an async engine on the ``postgresql+asyncpg`` dialect whose pool is a
            queue pool or a null pool (see :meth:`supports`).
        size: connections held at most.
    """

    def __init__(self, engine: AsyncEngine, *, size: int = SIZE) -> None:
        if not self.supports(engine):
            raise ValueError(
                "expected an asyncpg engine with a QueuePool or NullPool, got "
                f"{engine.dialect.name}+{engine.dialect.driver} with "
                f"{type(engine.sync_engine.pool).__name__}"
            )
        pool = engine.sync_engine.pool
        if isinstance(pool, sa.pool.QueuePool) and pool.size() > 0:
            # The copy has the engine's pool size; never wait on its overflow.
            size = min(size, pool.size())
        self._dialect = engine.dialect
        self._pool = pool.recreate()
        self._size = size
        self._slots: asyncio.LifoQueue[_Held | None] = asyncio.LifoQueue()
        for _ in range(size):
            self._slots.put_nowait(None)
        self._plans: dict[int, _Plan] = {}
        self._closed = False

    @staticmethod
    def supports(engine: AsyncEngine) -> bool:
        """Whether an engine can be read from this way.

        The pool must hand out distinct connections (not a ``StaticPool``) and the
        engine must not rewrite schemas per execution (``schema_translate_map``):
        statements are compiled here once, without the engine.
        """
        return (
            engine.dialect.name == "postgresql"
            and engine.dialect.driver == "asyncpg"
            and isinstance(
                engine.sync_engine.pool, (sa.pool.QueuePool, sa.pool.NullPool)
            )
            and not engine.get_execution_options().get("schema_translate_map")
        )

    async def read(self, statement: sa.Select[Any], key: Any) -> Record | None:
        """Run a by-key ``SELECT`` for ``key``: the row as a record, or ``None``.

        Args:
            statement: a ``SELECT`` whose one parameter is the key; compiled on its
                first use and remembered (pass the same object each time).
            key: the key's value, bound as the parameter's type binds it.

        Raises:
            OperationError: the database failed (``read_error``).
        """
        plan = self._plans.get(id(statement))
        if plan is None:
            plan = self._plans[id(statement)] = _Plan(statement, self._dialect)
        if plan.bind is not None:
            key = plan.bind(key)
        for attempt in range(self._size + 1):
            held = await self._take()
            try:
                if plan.convert is None:
                    found = await self._learn(plan, held, key)
                else:
                    found = await held.driver.fetchrow(plan.sql, key)
            except _DRIVER_ERRORS as exc:
                if (
                    isinstance(exc, asyncpg.PostgresError)
                    and not isinstance(exc, _HUNG_UP)
                    and not held.driver.is_closed()
                ):
                    self._give(held)  # the statement failed, the connection is fine
                    raise _failed(exc) from exc
                self._drop(held)
                if (
                    held.reused
                    and attempt < self._size
                    and not isinstance(exc, TimeoutError)
                ):
                    # Most likely closed by the server while idle (a restart,
                    # pg_terminate_backend), unnoticed until now: try the next one.
                    log.info("dropped a connection that failed: %r", exc)
                    continue
                raise _failed(exc) from exc
            except BaseException:
                # Cancelled in the middle of the statement: the connection still owes
                # its answer, so it cannot serve the next read.
                self._drop(held)
                raise
            self._give(held)
            return None if found is None else plan.record(found)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _learn(self, plan: _Plan, held: _Held, key: Any) -> Any:
        """The first run of a statement: prepared, to learn its columns' types."""
        prepared = await held.driver.prepare(plan.sql)
        plan.learn(self._dialect, [a.type.oid for a in prepared.get_attributes()])
        return await prepared.fetchrow(key)

    async def _take(self) -> _Held:
        while True:
            held = await self._slots.get()
            if self._closed:
                if held is not None:
                    held.handle.invalidate()
                self._slots.put_nowait(None)  # wakes the next waiter, to fail too
                raise OperationError("read", "the adapter is stopped")
            if held is None:
                return await self._connect()
            if not held.driver.is_closed():
                held.reused = True
                return held
            # Closed by the server while idle (a restart, pg_terminate_backend).
            self._drop(held)

    async def _connect(self) -> _Held:
        try:
            handle = await greenlet_spawn(self._pool.connect)
        except _DRIVER_ERRORS as exc:
            self._slots.put_nowait(None)
            raise _failed(exc) from exc
        except BaseException:
            self._slots.put_nowait(None)
            raise
        return _Held(handle)

    def _give(self, held: _Held) -> None:
        if self._closed:
            self._drop(held)  # a read that ended after close()
        else:
            self._slots.put_nowait(held)

    def _drop(self, held: _Held) -> None:
        """Terminate a connection and free its slot."""
        # Outside a greenlet, SQLAlchemy terminates the asyncpg connection at once
        # (no graceful close that a hung server could hold up).
        held.handle.invalidate()
        self._slots.put_nowait(None)

    async def close(self) -> None:
        """Close the idle connections; a read still running drops its own as it ends.

        Reads waiting for a connection, and any read after this, fail with
        :class:`OperationError`.
        """
        self._closed = True
        idle = []
        while not self._slots.empty():
            held = self._slots.get_nowait()
            if held is not None:
                idle.append(held)
        self._slots.put_nowait(None)  # wakes a waiting read, which wakes the next
        for held in idle:
            await greenlet_spawn(held.handle.close)
        await greenlet_spawn(self._pool.dispose)


def _failed(exc: BaseException) -> OperationError:
    log.error("read failed in the database: %s", exc)
    return OperationError("read", str(exc))
