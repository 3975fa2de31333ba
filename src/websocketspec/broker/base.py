"""The broker interface between the write path and the subscription matchers.

A broker receives every committed :class:`~websocketspec.adapters.base.Change` and hands
it, in commit order, to the sink of every process that serves subscriptions. The
in-memory broker does this within one process; other brokers carry changes between
processes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TypeAlias

from websocketspec.adapters.base import Change

__all__ = ["Broker", "ChangeSink"]

ChangeSink: TypeAlias = Callable[[Change], None]
"""Receives each change once, in order; must not block."""


class Broker(ABC):
    """Carries committed changes to the subscription matchers."""

    @abstractmethod
    async def start(self, sink: ChangeSink) -> None:
        """Begin delivering changes to ``sink``."""

    @abstractmethod
    async def publish(self, change: Change) -> None:
        """Publish a committed change."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop delivering and release resources."""
