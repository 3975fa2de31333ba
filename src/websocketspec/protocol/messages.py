"""Typed wire messages and their enums.

Every inbound frame is decoded once into :class:`Message` (or a list of them, for a
batch). Query options are decoded into :class:`QueryOptions`, a mutable value that
becomes the hooks' working copy of a request's options.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import msgspec

__all__ = [
    "ErrorInfo",
    "FilterOption",
    "Message",
    "MessageType",
    "Operation",
    "Position",
    "PreloadOption",
    "QueryOptions",
    "SortOption",
]


class MessageType(StrEnum):
    """The ``type`` of a message."""

    REQUEST = "request"
    RESPONSE = "response"
    NOTIFICATION = "notification"
    SUBSCRIPTION = "subscription"
    PING = "ping"
    PONG = "pong"


class Operation(StrEnum):
    """The ``operation`` of a request or subscription message."""

    READ = "read"
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    META = "meta"
    AUTH = "auth"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"


REQUEST_OPERATIONS = frozenset(
    {
        Operation.READ,
        Operation.CREATE,
        Operation.UPDATE,
        Operation.DELETE,
        Operation.META,
        Operation.AUTH,
    }
)
SUBSCRIPTION_OPERATIONS = frozenset({Operation.SUBSCRIBE, Operation.UNSUBSCRIBE})


class FilterOption(msgspec.Struct, omit_defaults=True):
    """One filter: ``column operator value``, joined to the previous one by ``logic_operator``.

    Example:
        ``FilterOption("user_id", "eq", 42)``
    """

    column: str
    operator: str
    value: Any = None
    logic_operator: str | None = None


class SortOption(msgspec.Struct, omit_defaults=True):
    """Sort by ``column`` in ``direction`` (``asc`` or ``desc``)."""

    column: str
    direction: str = "asc"


class PreloadOption(msgspec.Struct, omit_defaults=True):
    """Nest a relation's rows in each result row, with its own query options."""

    relation: str
    columns: list[str] | None = None
    filters: list[FilterOption] = msgspec.field(default_factory=list)
    sort: list[SortOption] = msgspec.field(default_factory=list)
    limit: int | None = None


class Position(msgspec.Struct, omit_defaults=True):
    """A position in an entity's change stream (``metadata.seq`` and ``.epoch``)."""

    seq: int
    epoch: str = ""


class QueryOptions(msgspec.Struct, omit_defaults=True):
    """Filters, columns, sort, paging and preloads of a read or a subscription.

    Hooks receive a mutable copy as ``ctx.options``.
    """

    filters: list[FilterOption] = msgspec.field(default_factory=list)
    columns: list[str] | None = None
    sort: list[SortOption] = msgspec.field(default_factory=list)
    limit: int | None = None
    offset: int | None = None
    preload: list[PreloadOption] = msgspec.field(default_factory=list)
    snapshot: bool = False
    """Subscribe: answer with the current matching rows (``data.rows``) and their
    position, with no change between them and the first notification."""
    resume_from: Position | None = None
    """Subscribe: replay the changes after this position before the live ones."""


class Message(msgspec.Struct, omit_defaults=True):
    """An inbound message, as the client sent it.

    Fields are loosely typed where the protocol allows several forms (``id`` and
    ``record_id`` may be strings or numbers); the dispatcher validates what each
    operation needs.
    """

    id: str | int | None = None
    type: str | None = None
    operation: str | None = None
    schema: str | None = None
    entity: str | None = None
    record_id: str | int | dict[str, Any] | None = None
    data: Any = None
    options: QueryOptions | None = None
    subscription_id: str | None = None
    metadata: dict[str, Any] | None = None


class ErrorInfo(msgspec.Struct, omit_defaults=True):
    """The ``error`` object of a failed response."""

    code: str
    message: str
    details: dict[str, Any] | None = None
