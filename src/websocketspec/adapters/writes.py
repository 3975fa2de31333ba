"""What a write does the same on every adapter, with no ORM.

The row limit of a multi-row write, the changes an update makes, and the batch fields
of a multi-row write's changes; each adapter runs the statements.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from websocketspec.adapters.base import Change, Write
from websocketspec.exceptions import LimitError
from websocketspec.types import Record

__all__ = [
    "check_row_limit",
    "stamp_batch",
    "updated",
]


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
