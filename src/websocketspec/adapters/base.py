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

__all__ = ["Adapter", "Change", "ChangeLog", "WriteCheck"]


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


WriteCheck: TypeAlias = Callable[[Change], Awaitable[Any]]
"""Called inside a write's transaction with its change; returns the data to answer."""


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
    async def create(
        self, entity: EntityInfo, data: Record, check: WriteCheck
    ) -> tuple[Any, Change]:
        """Insert a row, re-read it and run ``check`` in one transaction.

        Returns:
            What ``check`` returned, and the change to publish after commit.
        """

    @abstractmethod
    async def update(
        self,
        entity: EntityInfo,
        key: tuple[Any, ...],
        data: Record,
        where: Expr | None,
        check: WriteCheck,
    ) -> tuple[Any, Change] | None:
        """Change the columns in ``data`` of the row ``key`` if it matches ``where``.

        Returns:
            ``None`` when no such row exists, else as :meth:`create`.
        """

    @abstractmethod
    async def delete(
        self,
        entity: EntityInfo,
        key: tuple[Any, ...],
        where: Expr | None,
        check: WriteCheck,
    ) -> tuple[Any, Change] | None:
        """Delete the row ``key`` if it matches ``where``; as :meth:`update`."""
