"""What a write does the same on every adapter, with no ORM.

The row limit of a multi-row write, the changes an update makes, the batch fields of a
multi-row write's changes, and the error a refused statement becomes; each adapter runs
the statements.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from websocketspec.adapters.base import Change, Write
from websocketspec.exceptions import LimitError, OperationError
from websocketspec.types import Record

__all__ = [
    "check_row_limit",
    "refused",
    "stamp_batch",
    "updated",
]

log = logging.getLogger(__name__)


def refused(
    operation: str, exc: BaseException, what: str = "a constraint was violated"
) -> OperationError:
    """The error for a statement the database refused (nothing was written).

    The database's own words go to the log only; the client reads ``what``.
    """
    log.info("%s refused by the database: %s", operation, exc)
    return OperationError(
        operation,
        str(exc),
        public_message=f"the database refused the write: {what}",
        refused=True,
    )


def check_row_limit(write: Write, rows: Sequence[Record]) -> None:
    """Refuse a write whose locked rows are more than its ``limit``.

    Raises:
        LimitError: ``too_many_rows``, with the limit as ``max_rows``.
    """
    if write.limit is not None and len(rows) > write.limit:
        raise LimitError(
            f"the {write.operation} would change more than {write.limit} rows; "
            "narrow the filters",
            code="too_many_rows",
            details={"max_rows": write.limit},
        )


def updated(
    entity: str,
    olds: Sequence[Record],
    keys: Sequence[Any],
    news: Mapping[Any, Record],
) -> list[Change]:
    """The changes of an update: each old row with the new row of the same key.

    ``keys`` are the old rows' keys, in their order; ``news`` the new rows by key.
    """
    return [
        Change("update", entity, old, news[key])
        for old, key in zip(olds, keys, strict=True)
    ]


def stamp_batch(changes: Sequence[Change]) -> list[Change]:
    """A multi-row write's changes, sharing a fresh ``txid``, each with its place."""
    txid = uuid.uuid4().hex
    size = len(changes)
    return [
        replace(c, txid=txid, batch_index=i, batch_size=size)
        for i, c in enumerate(changes)
    ]
