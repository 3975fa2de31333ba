"""The adapter interface: everything the handler asks of a database.

An adapter describes models for the registry and runs validated reads and writes. It
never sees client text as identifiers: every column, sort and relation arrives checked
against the registry (:mod:`websocketspec.query`), every value coerced to its column's
type. Writes run in one transaction each: the write, the re-read of the row, and the
handler's ``check`` callback (after-hooks, row-security checks), which may raise to
roll everything back. The :class:`Change` a write returns is published only after the
transaction commits.

Writing a new adapter: subclass :class:`Adapter`, implement ``describe`` (columns with
portable types, primary key, relations) and the five data methods, translate driver
exceptions into :class:`~websocketspec.exceptions.OperationError` (never let a driver
exception or its text escape), and return rows as plain dicts normalised with
:func:`websocketspec.protocol.values.normalize`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from websocketspec.exceptions import ConfigurationError
from websocketspec.protocol.filters import Expr
from websocketspec.query import ReadQuery
from websocketspec.registry import EntityInfo, ModelDescription
from websocketspec.types import Record

__all__ = [
    "Adapter",
    "Change",
    "ChangeLog",
    "KeyTakenError",
    "Remember",
    "Write",
    "WriteCheck",
]


@dataclass(frozen=True, slots=True)
class Change:
    """One committed change of one row, as subscribers are told of it.

    ``old`` is the row before (updates, deletes), ``new`` after (creates, updates);
    both hold every column.
    """

    operation: str
    entity: str
    """The canonical ``schema.entity`` name."""
    old: Record | None
    new: Record | None
    seq: int = 0
    """Position in the entity's change stream, in commit order (0: not yet assigned)."""
    epoch: str = ""
    """Names the stream's history; it changes when that history is lost."""
    txid: str = ""
    """The transaction of a multi-row write (empty for a single-row write)."""
    batch_index: int = 0
    """This row's place among the transaction's changes (from 0)."""
    batch_size: int = 0
    """How many rows the transaction changed (0 for a single-row write)."""


class ChangeLog(Protocol):
    """A durable, ordered record of committed changes (the transactional outbox).

    Adapters that keep one write each change in the write's own transaction, with a
    per-entity sequence number assigned in commit order.
    """

    async def positions(self) -> dict[str, tuple[int, str]]:
        """The latest ``(seq, epoch)`` of every entity's stream."""
        ...

    async def changes_since(
        self, entity: str, after: int, limit: int = 1000
    ) -> tuple[int, list[Change]]:
        """Changes of ``entity`` with ``seq > after``, in order, at most ``limit``.

        Returns:
            The lowest sequence number still held for the entity (0 when none is
            held), so that a caller can tell whether the history reaches back, and
            the changes.
        """
        ...


WriteCheck: TypeAlias = Callable[[list[Change]], Awaitable[Any]]
"""Called inside a write's transaction with its changes; returns the data to answer."""


@dataclass(frozen=True, slots=True)
class Remember:
    """An idempotency key to record with a write's answer."""

    identity: str
    key: str
    fingerprint: str
    """A digest of the request, to refuse the same key with another payload."""
    window: float
    """Seconds a key is remembered."""


@dataclass(frozen=True, slots=True)
class Write:
    """One write, validated: what to change and where.

    - ``create``: ``rows`` (one or more).
    - ``update``: ``data`` applied to the row ``key`` or, without a key, to every row
      matching ``where``.
    - ``delete``: the row ``key``, or every row matching ``where``.
    """

    operation: str
    rows: tuple[Record, ...] = ()
    data: Record | None = None
    key: tuple[Any, ...] | None = None
    where: Expr | None = None
    limit: int | None = None
    """The most rows a multi-row update or delete may change."""
    bulk: bool = False
    """A multi-row write: its changes carry ``txid``, ``batch_index``, ``batch_size``."""
    remember: Remember | None = None


class KeyTakenError(Exception):
    """A concurrent write took the same idempotency key first."""


class Adapter(ABC):
    """Runs validated operations against one database through one ORM."""

    @abstractmethod
    def describe(self, model: Any) -> ModelDescription:
        """Describe a model's columns (with portable types) and relations."""

    async def start(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Prepare for work (open pools, register functions)."""

    async def stop(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Release every resource."""

    async def enable_log(
        self, entities: Sequence[EntityInfo], *, notify: str | None
    ) -> ChangeLog:
        """Keep a durable change log from now on, for brokers shared by processes.

        Creates what the log needs (tables) when missing. Each write then records its
        change, with the entity's next sequence number, in its own transaction.

        Args:
            entities: the registered entities, whose streams are prepared.
            notify: a PostgreSQL ``NOTIFY`` channel to signal each commit on, if any.

        Raises:
            ConfigurationError: this adapter cannot keep a log.
        """
        raise ConfigurationError(f"{type(self).__name__} cannot keep a change log")

    @abstractmethod
    async def read_many(
        self, entity: EntityInfo, query: ReadQuery
    ) -> tuple[list[Record], int]:
        """Return one page of rows and the total count of rows matching ``query.where``."""

    async def snapshot(
        self, entity: EntityInfo, query: ReadQuery
    ) -> tuple[list[Record], int, tuple[int, str] | None]:
        """Read a page together with the entity's change-log position, atomically.

        Returns:
            The rows, the total, and the ``(seq, epoch)`` the rows reflect, or ``None``
            when the adapter keeps no log (the caller then holds writes back instead).
        """
        rows, total = await self.read_many(entity, query)
        return rows, total, None

    @abstractmethod
    async def read_one(
        self, entity: EntityInfo, key: tuple[Any, ...], query: ReadQuery
    ) -> Record | None:
        """Return the row with primary key ``key`` if it matches ``query.where``."""

    @abstractmethod
    async def write(
        self, entity: EntityInfo, write: Write, check: WriteCheck
    ) -> tuple[Any, list[Change]] | None:
        """Run one write in one transaction.

        The transaction holds the statement(s), the re-read of every row changed,
        ``check`` (after-hooks, row security) and, when kept, the change log and the
        idempotency record.

        Returns:
            What ``check`` returned and the changes to publish after commit, in order;
            ``None`` when ``write.key`` names no row (matching ``write.where``).

        Raises:
            KeyTakenError: ``write.remember``'s key was used by a concurrent write.
            LimitError: more than ``write.limit`` rows would change (nothing changes).
        """

    groups_creates = False
    """Whether :meth:`create_group` is implemented."""

    async def create_group(
        self, entity: EntityInfo, items: Sequence[tuple[Write, WriteCheck]]
    ) -> list[tuple[Any, list[Change]]]:
        """Run several single-row creates of ``entity`` in one transaction.

        The handler groups creates that arrive while others are being written (group
        commit), but only when no after-hook runs for them, so each ``check`` is pure
        and may run again. All or none: when any insert or check fails, the error is
        raised. When it says that nothing was written (a ``ProtocolError`` from a
        check, an ``OperationError`` with ``refused``) the handler runs each create
        alone; any other error (a connection lost, perhaps at commit) is the answer to
        every create of the group, never retried, so that no row is written twice.

        Returns:
            Each create's ``check`` result and change, in the order of ``items``.
        """
        raise ConfigurationError(f"{type(self).__name__} cannot group creates")

    async def remembered(self, remember: Remember) -> tuple[str, Any] | None:
        """The fingerprint and answer stored for an idempotency key, within its window."""
        raise ConfigurationError(f"{type(self).__name__} cannot keep idempotency keys")
