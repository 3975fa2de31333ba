"""The change log's tables and rows, the same for every adapter, with no ORM.

The raw-SQL adapters (Django, Tortoise) create the tables with these statements, column
for column those of :mod:`websocketspec.adapters.sqlalchemy_log`; every adapter turns
changes into outbox rows, and outbox rows back into changes, with these functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import msgspec

from websocketspec.adapters.base import Change
from websocketspec.adapters.common import dump
from websocketspec.protocol.values import coerce_row
from websocketspec.registry import EntityInfo
from websocketspec.types import Record

__all__ = [
    "CHANGE_COLUMNS",
    "KEYS_DDL",
    "OUTBOX_COLUMNS",
    "OUTBOX_DDL",
    "STREAMS_DDL",
    "dump_row",
    "load_changes",
    "load_row",
    "outbox_ddl",
    "outbox_values",
    "place",
]

STREAMS_DDL = (
    "CREATE TABLE IF NOT EXISTS websocketspec_streams ("
    "entity VARCHAR(255) NOT NULL, seq BIGINT NOT NULL, epoch VARCHAR(32) NOT NULL, "
    "PRIMARY KEY (entity))"
)
OUTBOX_DDL = (
    "CREATE TABLE IF NOT EXISTS websocketspec_outbox ("
    "entity VARCHAR(255) NOT NULL, seq BIGINT NOT NULL, operation VARCHAR(16) NOT NULL, "
    '"old" TEXT, "new" TEXT, txid VARCHAR(32), batch_index INTEGER, batch_size INTEGER, '
    "created_at {created_at}, PRIMARY KEY (entity, seq))"
)
"""The outbox; ``{created_at}`` is the dialect's timestamp column (:func:`outbox_ddl`)."""
KEYS_DDL = (
    "CREATE TABLE IF NOT EXISTS websocketspec_idempotency ("
    'identity VARCHAR(255) NOT NULL, "key" VARCHAR(255) NOT NULL, '
    "fingerprint VARCHAR(64) NOT NULL, response TEXT, created_at FLOAT NOT NULL, "
    'PRIMARY KEY (identity, "key"))'
)
"""The idempotency keys: the answer of each keyed write, per identity."""

OUTBOX_COLUMNS = (
    "entity",
    "seq",
    "operation",
    "old",
    "new",
    "txid",
    "batch_index",
    "batch_size",
)
"""The outbox columns a write fills, in the order of :func:`outbox_values`."""

CHANGE_COLUMNS = ("seq", "operation", "old", "new", "txid", "batch_index", "batch_size")
"""The outbox columns a change is read back from, in the order of :func:`load_changes`."""


def outbox_ddl(pg: bool) -> str:
    """:data:`OUTBOX_DDL` for PostgreSQL (``pg``) or SQLite."""
    created_at = (
        "TIMESTAMP WITH TIME ZONE DEFAULT now()"
        if pg
        else "DATETIME DEFAULT CURRENT_TIMESTAMP"
    )
    return OUTBOX_DDL.format(created_at=created_at)


def dump_row(row: Record | None) -> str | None:
    """A row as the outbox stores it: JSON text, or ``None``."""
    return None if row is None else dump(row)


def load_row(info: EntityInfo | None, text: str | None) -> Record | None:
    """A row read back from the outbox, typed by its entity when known."""
    if text is None:
        return None
    raw: dict[str, Any] = msgspec.json.decode(text)
    return raw if info is None else coerce_row(raw, info.column_types)


def place(changes: Sequence[Change], last: int, epoch: str) -> list[Change]:
    """The changes with their stream positions: the last of them at ``last``."""
    count = len(changes)
    return [
        replace(c, seq=last - count + 1 + i, epoch=epoch) for i, c in enumerate(changes)
    ]


def outbox_values(change: Change) -> tuple[Any, ...]:
    """The outbox row of a placed change, in the order of :data:`OUTBOX_COLUMNS`.

    The batch fields are ``NULL`` for a single-row write (no ``txid``).
    """
    batched = bool(change.txid)
    return (
        change.entity,
        change.seq,
        change.operation,
        dump_row(change.old),
        dump_row(change.new),
        change.txid or None,
        change.batch_index if batched else None,
        change.batch_size if batched else None,
    )


def load_changes(
    entity: str,
    epoch: str,
    info: EntityInfo | None,
    rows: Iterable[Sequence[Any]],
) -> list[Change]:
    """The changes that outbox rows of ``entity`` record, in the stream ``epoch``.

    Each row holds the values of :data:`CHANGE_COLUMNS`, in that order.
    """
    return [
        Change(
            str(op),
            entity,
            load_row(info, old),
            load_row(info, new),
            int(seq),
            epoch,
            txid or "",
            batch_index or 0,
            batch_size or 0,
        )
        for seq, op, old, new, txid, batch_index, batch_size in rows
    ]
