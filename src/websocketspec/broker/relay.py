"""The relay: every committed change to the sink once, in each entity's commit order.

Brokers hand the relay changes as they arrive, from this process (right after commit)
or from others (through Redis, PostgreSQL ``NOTIFY``, ...), possibly twice and out of
order. The relay keeps the last delivered position of each entity's stream and:

- delivers a change whose ``seq`` is the next one at once;
- drops one it has delivered already;
- holds one that arrives early, and fills the gap from the change log (the
  transactional outbox is the source of truth, the broker only a fast signal);
- when the log no longer reaches back to the gap (its history was pruned), or the
  stream's epoch changed, tells every subscriber of the entity to read again
  (``reset``) and carries on from the present.

``sweep`` compares every stream's position in the log with what was delivered and
catches up: brokers call it after reconnecting and periodically, so a change whose
writer died between commit and publish still arrives.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from websocketspec.adapters.base import Change, ChangeLog
from websocketspec.broker.base import ChangeSink

__all__ = ["Relay", "ResetSink"]

log = logging.getLogger(__name__)

ResetSink = Callable[[str, str], None]
"""Tells the subscribers of an entity to read again: ``reset(entity, reason)``."""


class Relay:
    """Orders and de-duplicates changes per entity; fills gaps from the log.

    Args:
        sink: receives each change once, in order.
        reset: tells subscribers of an entity that they must read again.
        log: the durable change log, when the broker is shared by processes.
        batch: how many changes to read from the log at a time.
    """

    def __init__(
        self,
        sink: ChangeSink,
        reset: ResetSink,
        log: ChangeLog | None = None,
        *,
        batch: int = 1000,
    ) -> None:
        self.sink = sink
        self.reset = reset
        self.log = log
        self.batch = batch
        self.default_epoch = ""
        """The epoch of a stream that has no change yet."""
        self.positions: dict[str, int] = {}
        self.epochs: dict[str, str] = {}
        self._early: dict[str, dict[int, Change]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start from the present position of every stream."""
        if self.log is not None:
            for entity, (seq, epoch) in (await self.log.positions()).items():
                self.positions[entity] = seq
                self.epochs[entity] = epoch

    async def stop(self) -> None:
        """Cancel catch-ups in progress."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def offer(self, change: Change) -> None:
        """Take a change from any source; never blocks."""
        entity = change.entity
        if change.seq <= 0:
            self.sink(change)
            return
        last = self.positions.get(entity)
        if last is None and self.log is not None:
            # A stream that began after start(): its history is in the log from 1.
            last = self.positions[entity] = 0
        epoch = self.epochs.get(entity)
        if last is None or (epoch and change.epoch and change.epoch != epoch):
            if last is not None:
                self.reset(entity, "the change stream's history was replaced")
            self.positions[entity] = change.seq
            self.epochs[entity] = change.epoch
            self._early.pop(entity, None)
            self.sink(change)
            return
        if change.seq <= last:
            return
        if change.seq == last + 1:
            self._deliver(change)
            return
        self._early.setdefault(entity, {})[change.seq] = change
        self.catch_up_soon(entity)

    def _deliver(self, change: Change) -> None:
        self.positions[change.entity] = change.seq
        if change.epoch:
            self.epochs[change.entity] = change.epoch
        self.sink(change)
        self._drain(change.entity)

    def _drain(self, entity: str) -> None:
        """Deliver held changes that are now next; forget those already passed."""
        early = self._early.get(entity)
        if not early:
            return
        while True:
            following = early.pop(self.positions[entity] + 1, None)
            if following is None:
                break
            self.positions[entity] = following.seq
            self.sink(following)
        for seq in [s for s in early if s <= self.positions[entity]]:
            del early[seq]

    def catch_up_soon(self, entity: str) -> None:
        """Schedule a catch-up of ``entity`` from the log."""
        if self.log is None:
            return
        task = asyncio.get_running_loop().create_task(self.catch_up(entity))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def catch_up(self, entity: str, until: int = 0) -> None:
        """Deliver what the log holds beyond this entity's position, in order.

        Args:
            entity: the stream.
            until: a position the log showed the stream at: when the log holds
                nothing beyond this entity's position although it reached that far,
                the history was pruned and subscribers are told to read again.
        """
        if self.log is None:
            return
        lock = self._locks.setdefault(entity, asyncio.Lock())
        async with lock:
            try:
                while True:
                    last = self.positions.get(entity, 0)
                    # Held before the read: committed before it, so it must see them.
                    held = set(self._early.get(entity, ()))
                    low, changes = await self.log.changes_since(
                        entity, last, self.batch
                    )
                    # The broker may have delivered more while the log was read.
                    last = self.positions.get(entity, 0)
                    if not changes:
                        early = self._early.get(entity, {})
                        missing = [seq for seq in held if seq in early]
                        if missing:
                            self._lost(entity, min(missing) - 1)
                            self._drain(entity)
                            continue
                        if early:
                            continue  # arrived during the read: read again
                        if until > last:
                            self._lost(entity, until)
                        return
                    if changes[0].seq > last + 1 or (low and low > last + 1):
                        self._lost(entity, changes[0].seq - 1)
                    for change in changes:
                        if change.seq == self.positions.get(entity, 0) + 1:
                            self._deliver(change)
                    if len(changes) < self.batch and not self._early.get(entity):
                        return
            except Exception:
                log.warning(
                    "catching up %s from the change log failed; will retry",
                    entity,
                    exc_info=True,
                )

    def _lost(self, entity: str, position: int) -> None:
        """History before ``position`` is gone: subscribers must read again."""
        log.warning(
            "changes of %s up to %s are no longer in the log: reset", entity, position
        )
        self.reset(
            entity, "changes were missed and are no longer available; read again"
        )
        self.positions[entity] = position
        early = self._early.get(entity)
        if early:
            for seq in [s for s in early if s <= position]:
                del early[seq]

    async def sweep(self) -> None:
        """Catch up every stream that the log shows ahead of what was delivered."""
        if self.log is None:
            return
        try:
            streams = await self.log.positions()
        except Exception:
            log.warning("reading the change log failed; will retry", exc_info=True)
            return
        for entity, (seq, epoch) in streams.items():
            known = self.epochs.get(entity)
            if known and epoch != known:
                self.reset(entity, "the change stream's history was replaced")
                self.positions[entity] = seq
                self.epochs[entity] = epoch
                continue
            if seq > self.positions.get(entity, 0):
                await self.catch_up(entity, until=seq)
