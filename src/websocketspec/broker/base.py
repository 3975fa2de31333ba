"""The broker interface between the write path and the subscription matchers.

A broker carries each committed :class:`~websocketspec.adapters.base.Change` to the
:class:`~websocketspec.broker.relay.Relay` of every process that serves subscriptions.
The in-memory broker does this within one process and numbers the changes itself.
Shared brokers (``shared = True``) carry changes between processes: the adapter then
keeps a change log (a transactional outbox) that numbers each entity's changes in
commit order and holds them for catching up, so that a broker is only a fast signal
and nothing is lost when a process dies between commit and publish.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, TypeAlias

from websocketspec.adapters.base import Change

if TYPE_CHECKING:
    from websocketspec.broker.relay import Relay

__all__ = ["Broker", "ChangeSink"]

ChangeSink: TypeAlias = Callable[[Change], None]
"""Receives each change once, in order; must not block."""


class Broker(ABC):
    """Carries committed changes to the subscription matchers of every process."""

    shared: ClassVar[bool] = False
    """Whether changes travel between processes (the adapter then keeps a change log)."""
    notify_channel: str | None = None
    """A PostgreSQL ``NOTIFY`` channel the write transaction signals, if the broker listens."""

    @abstractmethod
    async def start(self, relay: Relay) -> None:
        """Begin handing changes to ``relay``."""

    @abstractmethod
    async def publish(self, change: Change) -> None:
        """Publish a committed change (called right after commit, in commit order)."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop and release resources."""
