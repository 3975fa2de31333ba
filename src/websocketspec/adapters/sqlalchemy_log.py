"""The SQLAlchemy change log: a transactional outbox with per-entity sequence numbers.

Two tables, created when missing:

- ``websocketspec_streams (entity, seq, epoch)``: one row per entity. A write takes its
  sequence number with ``UPDATE … SET seq = seq + 1 … RETURNING``; the row lock it holds
  until commit makes sequence order equal commit order, across processes, with no gaps
  (a rolled-back write gives its number back).
- ``websocketspec_outbox (entity, seq, operation, old, new, created_at)``: the change
  itself, as JSON, written in the same transaction as the row it describes.

On PostgreSQL the write also calls ``pg_notify(channel, entity)``, which PostgreSQL
delivers only when, and once, the transaction commits. Writes made outside the API are
recorded the same way by the capture triggers (:mod:`websocketspec.capture`), which skip
transactions that the API marks with ``websocketspec.api = on``.

MariaDB/MySQL have no ``UPDATE … RETURNING``: there a write reads the stream row back
after its update (still holding the row's lock). Names and keys compare byte for byte
(``utf8mb4_bin``), not in the database's case-folding collation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from websocketspec.adapters.base import Change
from websocketspec.adapters.changelog import (
    OUTBOX_COLUMNS,
    load_changes,
    outbox_values,
    place,
)
from websocketspec.adapters.common import INSTALL_LOCK, new_epoch
from websocketspec.exceptions import MissingDependencyError
from websocketspec.registry import EntityInfo

if TYPE_CHECKING:
    from websocketspec.adapters.sqlalchemy_inline import InlineConnection

try:
    import sqlalchemy as sa
    from sqlalchemy.dialects import mysql
    from sqlalchemy.exc import DBAPIError, IntegrityError
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("sqlalchemy", "sqlalchemy") from exc

__all__ = ["KEYS", "OUTBOX", "STREAMS", "SQLAlchemyChangeLog", "log_metadata"]

log = logging.getLogger(__name__)

log_metadata = sa.MetaData()

_MYSQL = ("mysql", "mariadb")


def _name(length: int) -> sa.types.TypeEngine[str]:
    """A key column: on MariaDB/MySQL case-sensitive (``utf8mb4_bin``), not folded.

    ``utf8mb4_bin`` still pads with spaces there: keys differing only by trailing
    spaces are one key (MariaDB's ``utf8mb4_nopad_bin`` is unknown to MySQL).
    """
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"), *_MYSQL
    )


def _document() -> sa.types.TypeEngine[str]:
    """A JSON document as text: MariaDB/MySQL's TEXT stops at 64 KiB, LONGTEXT does not."""
    return sa.Text().with_variant(mysql.LONGTEXT(), *_MYSQL)


STREAMS = sa.Table(
    "websocketspec_streams",
    log_metadata,
    sa.Column("entity", _name(255), primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("epoch", sa.String(32), nullable=False),
)

OUTBOX = sa.Table(
    "websocketspec_outbox",
    log_metadata,
    sa.Column("entity", _name(255), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("operation", sa.String(16), nullable=False),
    sa.Column("old", _document()),
    sa.Column("new", _document()),
    sa.Column("txid", sa.String(32)),
    sa.Column("batch_index", sa.Integer),
    sa.Column("batch_size", sa.Integer),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
)

KEYS = sa.Table(
    "websocketspec_idempotency",
    sa.MetaData(),
    sa.Column("identity", _name(255), primary_key=True),
    sa.Column("key", _name(255), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("response", _document()),
    # Seconds since the epoch: MariaDB/MySQL's FLOAT is single precision (minutes here).
    sa.Column(
        "created_at", sa.Float().with_variant(mysql.DOUBLE(), *_MYSQL), nullable=False
    ),
)
"""Idempotency keys: the answer of each keyed write, per identity (created on first use)."""


async def lock_install(conn: AsyncConnection) -> None:
    """Serialise table creation between processes starting at once (``--workers``).

    Without it, two ``CREATE TABLE`` of the same name race on a fresh database and
    one process fails to start.
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(INSTALL_LOCK)))


class SQLAlchemyChangeLog:
    """The outbox of one database, read and written through an async engine.

    Args:
        engine: the adapter's engine.
        resolve: finds an entity's description by its canonical name (to decode rows).
        notify: the PostgreSQL channel each commit is signalled on, or ``None``.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        resolve: Callable[[str], EntityInfo | None],
        *,
        notify: str | None = None,
    ) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._resolve = resolve
        self.notify = notify if self.dialect == "postgresql" else None
        self.appended: dict[str, int] = {}
        """The last position each entity's writes in this process took."""

    async def install(self, entities: Sequence[EntityInfo]) -> None:
        """Create the tables when missing and a stream row for every entity."""
        for attempt in range(2):
            try:
                async with self.engine.begin() as conn:
                    await lock_install(conn)
                    await conn.run_sync(log_metadata.create_all, checkfirst=True)
                break
            except DBAPIError:
                # MariaDB/MySQL have no lock_install: another process starting at the
                # same time created a table first ("already exists"); look again.
                if attempt or self.dialect not in _MYSQL:
                    raise
        for entity in entities:
            await self._ensure_stream(entity.key)

    async def _ensure_stream(self, key: str) -> None:
        try:
            async with self.engine.begin() as conn:
                found = await conn.execute(
                    sa.select(STREAMS.c.seq).where(STREAMS.c.entity == key)
                )
                if found.first() is None:
                    await conn.execute(
                        sa.insert(STREAMS).values(entity=key, seq=0, epoch=new_epoch())
                    )
        except IntegrityError:
            pass  # another process created it first

    async def append(
        self, conn: AsyncConnection | InlineConnection, changes: Sequence[Change]
    ) -> list[Change]:
        """Record a transaction's changes of one entity; returns them with positions.

        Two statements whatever the number of rows: one takes the sequence numbers
        (and, on PostgreSQL, marks the transaction as the API's for capture triggers),
        one writes the outbox rows (and, on PostgreSQL, signals the last position).
        """
        if not changes:
            return []
        entity = changes[0].entity
        count = len(changes)
        stmt = (
            sa.update(STREAMS)
            .where(STREAMS.c.entity == entity)
            .values(seq=STREAMS.c.seq + count)
        )
        if self.dialect == "postgresql":
            # Capture triggers (deferred to commit) skip what the API records itself.
            mark = sa.select(sa.func.set_config("websocketspec.api", "on", True))
            stmt = stmt.where(mark.scalar_subquery().is_not(None))
        if conn.dialect.update_returning:
            stmt = stmt.returning(STREAMS.c.seq, STREAMS.c.epoch)
            row = (await conn.execute(stmt)).first()
        else:
            # MariaDB/MySQL: the update holds the row's lock until commit, and this
            # transaction reads its own new value back.
            await conn.execute(stmt)
            row = (
                await conn.execute(
                    sa.select(STREAMS.c.seq, STREAMS.c.epoch).where(
                        STREAMS.c.entity == entity
                    )
                )
            ).first()
        if row is None:
            epoch = new_epoch()
            await conn.execute(
                sa.insert(STREAMS).values(entity=entity, seq=count, epoch=epoch)
            )
            last = count
        else:
            last, epoch = int(row[0]), str(row[1])
        placed = place(changes, last, epoch)
        # This process publishes these itself right after commit: the broker need not
        # fetch them when their NOTIFY comes back (see PostgresBroker).
        self.appended[entity] = max(self.appended.get(entity, 0), last)
        rows = [
            dict(zip(OUTBOX_COLUMNS, outbox_values(c), strict=True)) for c in placed
        ]
        insert = sa.insert(OUTBOX).values(rows)
        if self.notify is not None:
            written = insert.returning(OUTBOX.c.seq).cte("written")
            signal = sa.select(
                sa.func.pg_notify(self.notify, f"{entity}:{last}")
            ).where(
                sa.select(sa.func.count()).select_from(written).scalar_subquery() > 0
            )
            await conn.execute(signal)
        else:
            await conn.execute(insert)
        return placed

    async def position(self, conn: AsyncConnection, entity: str) -> tuple[int, str]:
        """The stream position of ``entity`` as ``conn``'s transaction sees it."""
        row = (
            await conn.execute(
                sa.select(STREAMS.c.seq, STREAMS.c.epoch).where(
                    STREAMS.c.entity == entity
                )
            )
        ).first()
        return (0, "") if row is None else (int(row[0]), str(row[1]))

    async def positions(self) -> dict[str, tuple[int, str]]:
        """The latest ``(seq, epoch)`` of every stream."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(STREAMS.c.entity, STREAMS.c.seq, STREAMS.c.epoch)
                )
            ).all()
        return {str(e): (int(s), str(ep)) for e, s, ep in rows}

    async def changes_since(
        self, entity: str, after: int, limit: int = 1000
    ) -> tuple[int, list[Change]]:
        """The changes of ``entity`` after ``after``, and the lowest seq still held."""
        async with self.engine.connect() as conn:
            stream = (
                await conn.execute(
                    sa.select(STREAMS.c.epoch).where(STREAMS.c.entity == entity)
                )
            ).first()
            low = (
                await conn.execute(
                    sa.select(sa.func.min(OUTBOX.c.seq)).where(
                        OUTBOX.c.entity == entity
                    )
                )
            ).scalar()
            rows = (
                await conn.execute(
                    sa.select(
                        OUTBOX.c.seq,
                        OUTBOX.c.operation,
                        OUTBOX.c.old,
                        OUTBOX.c.new,
                        OUTBOX.c.txid,
                        OUTBOX.c.batch_index,
                        OUTBOX.c.batch_size,
                    )
                    .where(OUTBOX.c.entity == entity, OUTBOX.c.seq > after)
                    .order_by(OUTBOX.c.seq)
                    .limit(limit)
                )
            ).all()
        epoch = str(stream[0]) if stream is not None else ""
        changes = load_changes(entity, epoch, self._resolve(entity), rows)
        return (int(low) if low is not None else 0), changes

    async def prune(self, keep: int) -> int:
        """Delete all but the newest ``keep`` changes of each entity; returns how many."""
        removed = 0
        async with self.engine.begin() as conn:
            for entity, seq in (
                await conn.execute(sa.select(STREAMS.c.entity, STREAMS.c.seq))
            ).all():
                result = await conn.execute(
                    sa.delete(OUTBOX).where(
                        OUTBOX.c.entity == entity, OUTBOX.c.seq <= int(seq) - keep
                    )
                )
                removed += result.rowcount or 0
        return removed
