"""The in-process broker: the default, with no extra service."""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING

from websocketspec.adapters.base import Change
from websocketspec.broker.base import Broker
from websocketspec.exceptions import BrokerError

if TYPE_CHECKING:
    from websocketspec.broker.relay import Relay

__all__ = ["MemoryBroker"]


class MemoryBroker(Broker):
    """Numbers each entity's changes and hands them to this process's relay at once.

    It cannot share changes between processes: use it with one server process. It
    keeps the last ``history`` changes of each entity in memory.

    Args:
        history: changes kept per entity.
    """

    def __init__(self, history: int = 1000) -> None:
        self.history_size = history
        self.epoch = uuid.uuid4().hex
        """Changes with each start of the process: history does not survive it."""
        self._relay: Relay | None = None
        self._seq: dict[str, int] = {}
        self.history: dict[str, deque[Change]] = {}

    async def start(self, relay: Relay) -> None:
        """Remember the relay; the relay reads history from this broker."""
        self._relay = relay
        relay.log = self
        relay.default_epoch = self.epoch

    async def publish(self, change: Change) -> None:
        """Number the change and hand it to the relay."""
        if self._relay is None:
            raise BrokerError("the broker was not started")
        seq = self._seq.get(change.entity, 0) + 1
        self._seq[change.entity] = seq
        change = replace(change, seq=seq, epoch=self.epoch)
        kept = self.history.get(change.entity)
        if kept is None:
            kept = self.history[change.entity] = deque(maxlen=self.history_size)
        kept.append(change)
        self._relay.offer(change)

    async def positions(self) -> dict[str, tuple[int, str]]:
        """The latest ``(seq, epoch)`` of every entity that changed."""
        return {entity: (seq, self.epoch) for entity, seq in self._seq.items()}

    async def changes_since(
        self, entity: str, after: int, limit: int = 1000
    ) -> tuple[int, list[Change]]:
        """The kept changes of ``entity`` after ``after``, and the lowest kept seq."""
        kept = self.history.get(entity)
        if not kept:
            return 0, []
        return kept[0].seq, [c for c in kept if c.seq > after][:limit]

    async def stop(self) -> None:
        """Forget the relay."""
        self._relay = None
