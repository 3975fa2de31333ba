"""The Tortoise adapter's change log: the transactional outbox, in raw SQL.

The tables are :mod:`websocketspec.adapters.sqlalchemy_log`'s, column for column
(``websocketspec_streams``, ``websocketspec_outbox`` and the idempotency keys'
``websocketspec_idempotency``), so that the brokers, the relay and ``websocketspec
capture`` work unchanged on a database served through Tortoise. A write takes its
sequence number with ``UPDATE … SET seq = seq + 1 … RETURNING`` in its own transaction:
the row lock makes sequence order commit order, with no gaps. On PostgreSQL the write
also marks its transaction for the capture triggers and calls ``pg_notify``.

This module imports no ORM: statements run through any client with Tortoise's
``execute_query_dict`` (the adapter passes its transaction), written with
:class:`Params`, which numbers placeholders the way the database wants them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from websocketspec.adapters.base import Change
from websocketspec.adapters.changelog import (
    CHANGE_COLUMNS,
    KEYS_DDL,
    OUTBOX_DDL,
    STREAMS_DDL,
    load_changes,
    outbox_ddl,
    outbox_values,
    place,
)
from websocketspec.adapters.common import INSTALL_LOCK, new_epoch
from websocketspec.registry import EntityInfo

__all__ = ["KEYS_DDL", "OUTBOX_DDL", "STREAMS_DDL", "Params", "TortoiseChangeLog"]


class Params:
    """The parameters of one statement, and their placeholders.

    SQLite numbers ``?`` by position in the text, so placeholders must be asked for in
    the order they appear; PostgreSQL (asyncpg) takes ``$n``, optionally with a cast.
    """

    __slots__ = ("pg", "values")

    def __init__(self, pg: bool) -> None:
        self.pg = pg
        self.values: list[Any] = []

    def __call__(self, value: Any, cast: str = "") -> str:
        """Bind ``value``; returns its placeholder (``cast`` like ``"::int8"``, PostgreSQL)."""
        self.values.append(value)
        if not self.pg:
            return "?"
        return f"${len(self.values)}{cast}"


class Database(Protocol):
    """What the log needs of a Tortoise client (a connection or a transaction)."""

    async def execute_query_dict(
        self, query: str, values: list[Any] | None = None
    ) -> list[dict[str, Any]]:
        """Run one statement; rows as dicts."""
        ...


class Units(Protocol):
    """Opens units of work on the adapter's database, translating its errors."""

    pg: bool

    def unit(
        self, operation: str, *, lock: str | None = None
    ) -> AbstractAsyncContextManager[Database]:
        """One transaction; driver errors leave it as ``OperationError``.

        ``lock`` names a table through which SQLite's write lock is taken first.
        """
        ...


async def lock_install(db: Database, pg: bool) -> None:
    """Serialise table creation between processes starting at once (``--workers``)."""
    if pg:
        p = Params(pg)
        await db.execute_query_dict(
            f"SELECT pg_advisory_xact_lock({p(INSTALL_LOCK, '::int8')})", p.values
        )


class TortoiseChangeLog:
    """The outbox of one database, written in the adapter's transactions.

    Args:
        units: the adapter, which opens transactions on its database.
        resolve: finds an entity's description by its canonical name (to decode rows).
        notify: the PostgreSQL channel each commit is signalled on, or ``None``.
    """

    def __init__(
        self,
        units: Units,
        resolve: Callable[[str], EntityInfo | None],
        *,
        notify: str | None = None,
    ) -> None:
        self.units = units
        self.pg = units.pg
        self._resolve = resolve
        self.notify = notify if units.pg else None
        self.appended: dict[str, int] = {}
        """The last position each entity's writes in this process took."""

    async def install(self, entities: Sequence[EntityInfo]) -> None:
        """Create the tables when missing and a stream row for every entity."""
        async with self.units.unit("create") as db:
            await lock_install(db, self.pg)
            await db.execute_query_dict(STREAMS_DDL)
            await db.execute_query_dict(outbox_ddl(self.pg))
        # On SQLite the tables may have existed, and their check read first: take the
        # write lock before writing, or another process's commit could refuse ours.
        async with self.units.unit("create", lock="websocketspec_streams") as db:
            for entity in entities:
                p = Params(self.pg)
                await db.execute_query_dict(
                    "INSERT INTO websocketspec_streams (entity, seq, epoch) "
                    f"VALUES ({p(entity.key)}, 0, {p(new_epoch())}) "
                    "ON CONFLICT (entity) DO NOTHING",
                    p.values,
                )

    async def append(self, db: Database, changes: Sequence[Change]) -> list[Change]:
        """Record a transaction's changes of one entity; returns them with positions.

        Two statements whatever the number of rows: one takes the sequence numbers
        (and, on PostgreSQL, marks the transaction as the API's for capture triggers),
        one writes the outbox rows (and, on PostgreSQL, signals the last position).
        """
        if not changes:
            return []
        entity = changes[0].entity
        count = len(changes)
        p = Params(self.pg)
        statement = (
            f"UPDATE websocketspec_streams SET seq = seq + {p(count, '::int8')} "
            f"WHERE entity = {p(entity)}"
        )
        if self.pg:
            # Capture triggers (deferred to commit) skip what the API records itself.
            statement += (
                " AND (SELECT set_config('websocketspec.api', 'on', true)) IS NOT NULL"
            )
        found = await db.execute_query_dict(
            f"{statement} RETURNING seq, epoch", p.values
        )
        if found:
            last, epoch = int(found[0]["seq"]), str(found[0]["epoch"])
        else:
            last, epoch = count, new_epoch()
            p = Params(self.pg)
            await db.execute_query_dict(
                "INSERT INTO websocketspec_streams (entity, seq, epoch) "
                f"VALUES ({p(entity)}, {p(last)}, {p(epoch)})",
                p.values,
            )
        placed = place(changes, last, epoch)
        # This process publishes these itself right after commit: the broker need not
        # fetch them when their NOTIFY comes back (see PostgresBroker).
        self.appended[entity] = max(self.appended.get(entity, 0), last)
        p = Params(self.pg)
        rows = ", ".join(
            f"({', '.join(p(v) for v in outbox_values(c))})" for c in placed
        )
        insert = (
            "INSERT INTO websocketspec_outbox (entity, seq, operation, "
            f'"old", "new", txid, batch_index, batch_size) VALUES {rows}'
        )
        if self.notify is None:
            await db.execute_query_dict(insert, p.values)
        else:
            signal = f"{p(self.notify)}, {p(f'{entity}:{last}')}"
            await db.execute_query_dict(
                f"WITH written AS ({insert} RETURNING seq) SELECT pg_notify({signal}) "
                "WHERE (SELECT count(*) FROM written) > 0",
                p.values,
            )
        return placed

    async def position(self, db: Database, entity: str) -> tuple[int, str]:
        """The stream position of ``entity`` as ``db``'s transaction sees it."""
        p = Params(self.pg)
        found = await db.execute_query_dict(
            f"SELECT seq, epoch FROM websocketspec_streams WHERE entity = {p(entity)}",
            p.values,
        )
        return (0, "") if not found else (int(found[0]["seq"]), str(found[0]["epoch"]))

    async def positions(self) -> dict[str, tuple[int, str]]:
        """The latest ``(seq, epoch)`` of every stream."""
        async with self.units.unit("read") as db:
            rows = await db.execute_query_dict(
                "SELECT entity, seq, epoch FROM websocketspec_streams"
            )
        return {str(r["entity"]): (int(r["seq"]), str(r["epoch"])) for r in rows}

    async def changes_since(
        self, entity: str, after: int, limit: int = 1000
    ) -> tuple[int, list[Change]]:
        """The changes of ``entity`` after ``after``, and the lowest seq still held."""
        async with self.units.unit("read") as db:
            p = Params(self.pg)
            stream = await db.execute_query_dict(
                f"SELECT epoch FROM websocketspec_streams WHERE entity = {p(entity)}",
                p.values,
            )
            p = Params(self.pg)
            low = await db.execute_query_dict(
                "SELECT min(seq) AS low FROM websocketspec_outbox "
                f"WHERE entity = {p(entity)}",
                p.values,
            )
            p = Params(self.pg)
            rows = await db.execute_query_dict(
                'SELECT seq, operation, "old", "new", txid, batch_index, batch_size '
                f"FROM websocketspec_outbox WHERE entity = {p(entity)} "
                f"AND seq > {p(after, '::int8')} ORDER BY seq LIMIT {p(limit, '::int8')}",
                p.values,
            )
        epoch = str(stream[0]["epoch"]) if stream else ""
        lowest = low[0]["low"] if low else None
        changes = load_changes(
            entity,
            epoch,
            self._resolve(entity),
            ([r[name] for name in CHANGE_COLUMNS] for r in rows),
        )
        return (int(lowest) if lowest is not None else 0), changes

    async def prune(self, keep: int) -> int:
        """Delete all but the newest ``keep`` changes of each entity; returns how many."""
        removed = 0
        async with self.units.unit("delete", lock="websocketspec_outbox") as db:
            streams = await db.execute_query_dict(
                "SELECT entity, seq FROM websocketspec_streams"
            )
            for stream in streams:
                p = Params(self.pg)
                gone = await db.execute_query_dict(
                    "DELETE FROM websocketspec_outbox WHERE entity = "
                    f"{p(stream['entity'])} AND seq <= {p(int(stream['seq']) - keep, '::int8')} "
                    "RETURNING seq",
                    p.values,
                )
                removed += len(gone)
        return removed
