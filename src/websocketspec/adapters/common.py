"""What every adapter shares, with no ORM.

SQLite's LIKE functions, decimal rounding, the change log's constants and the JSON of
its rows.

The change log's tables (``websocketspec_streams``, ``websocketspec_outbox``,
``websocketspec_idempotency``) are the same for every adapter, so that the brokers and
``websocketspec capture`` work whichever ORM wrote them.
"""

from __future__ import annotations

import contextlib
import uuid
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import msgspec

from websocketspec.protocol.filters import like_regex

__all__ = [
    "INSTALL_LOCK",
    "dump",
    "new_epoch",
    "round_decimal",
    "sqlite_ilike",
    "sqlite_like",
]

INSTALL_LOCK = 0x77737370656331
"""The PostgreSQL advisory lock that serialises creating the change log's tables, so
that processes starting at once (``--workers``) never race on ``CREATE TABLE``."""

_encoder = msgspec.json.Encoder(decimal_format="string")


def dump(value: Any) -> str:
    """JSON text of a row or an answer (decimals as strings, as on the wire)."""
    return _encoder.encode(value).decode()


def new_epoch() -> str:
    """A fresh epoch name for a change stream."""
    return uuid.uuid4().hex


def round_decimal(value: Decimal, scale: int) -> Decimal:
    """Round to a column's scale, half away from zero, as PostgreSQL stores it.

    A value too long to round is returned as it is, for the database to refuse.
    """
    with contextlib.suppress(InvalidOperation):
        return value.quantize(Decimal(1).scaleb(-scale), ROUND_HALF_UP)
    return value


def sqlite_like(value: str | None, pattern: str | None) -> int | None:
    """SQLite's ``ws_like``: the matcher's own case-sensitive LIKE."""
    if value is None or pattern is None:
        return None
    return 1 if like_regex(pattern).fullmatch(value) is not None else 0


def sqlite_ilike(value: str | None, pattern: str | None) -> int | None:
    """SQLite's ``ws_ilike``: LIKE after folding with :meth:`str.lower`."""
    if value is None or pattern is None:
        return None
    return 1 if like_regex(pattern).fullmatch(value.lower()) is not None else 0
