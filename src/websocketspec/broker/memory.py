"""The in-process broker: the default, with no extra service."""

from __future__ import annotations

from websocketspec.adapters.base import Change
from websocketspec.broker.base import Broker, ChangeSink
from websocketspec.exceptions import BrokerError

__all__ = ["MemoryBroker"]


class MemoryBroker(Broker):
    """Delivers each change synchronously to the one process's sink.

    It cannot share changes between processes; use it with one server process.
    """

    def __init__(self) -> None:
        self._sink: ChangeSink | None = None

    async def start(self, sink: ChangeSink) -> None:
        """Remember the sink."""
        self._sink = sink

    async def publish(self, change: Change) -> None:
        """Hand the change to the sink at once."""
        if self._sink is None:
            raise BrokerError("the broker was not started")
        self._sink(change)

    async def stop(self) -> None:
        """Forget the sink."""
        self._sink = None
