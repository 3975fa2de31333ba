"""The relay on its own: order, duplicates, gaps, resets and sweeps, with no broker.

The change log here is a real in-memory implementation of the ``ChangeLog`` protocol
over lists (numbering, history, pruning, epochs), not a mock: the relay is fed changes
the way brokers feed it (out of order, twice, or not at all) and must deliver each
entity's committed changes once, in order, reading what it missed from the log, and say
``reset`` only when the log no longer reaches back.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from websocketspec.adapters.base import Change, ChangeLog
from websocketspec.broker.relay import Relay

USERS = "public.users"
POSTS = "public.posts"
THINGS = "public.things"
TIMEOUT = 5.0


@dataclass
class _Stream:
    seq: int = 0
    epoch: str = field(default_factory=lambda: uuid.uuid4().hex)
    held: list[Change] = field(default_factory=list)


class ListChangeLog:
    """The transactional outbox, in memory: per-entity numbering, history, pruning."""

    def __init__(self, entities: tuple[str, ...] = ()) -> None:
        self.streams: dict[str, _Stream] = {e: _Stream() for e in entities}
        """Registered entities have a stream from the start, as ``install()`` makes."""
        self.failing = False
        """While set, every read fails as a database that is down does."""
        self.reads = 0
        self.on_read: Callable[[], None] | None = None
        """Runs inside a read, before the log is looked at (what races a read)."""
        self.after_look: Callable[[], None] | None = None
        """Runs inside a read, after the log was looked at (commits it cannot see)."""

    def append(self, entity: str, operation: str = "create", **row: Any) -> Change:
        """Commit one change: the next number of its entity's stream."""
        stream = self.streams.setdefault(entity, _Stream())
        stream.seq += 1
        new = None if operation == "delete" else {"id": stream.seq, **row}
        old = None if operation == "create" else {"id": stream.seq, **row}
        change = Change(operation, entity, old, new, stream.seq, stream.epoch)
        stream.held.append(change)
        return change

    def prune(self, keep: int) -> None:
        """Forget all but the newest ``keep`` changes of every entity."""
        for stream in self.streams.values():
            stream.held = [c for c in stream.held if c.seq > stream.seq - keep]

    def replace_history(self, entity: str) -> _Stream:
        """The stream starts over under a new epoch (its table was recreated)."""
        stream = self.streams[entity] = _Stream()
        return stream

    def _read(self) -> None:
        self.reads += 1
        if self.failing:
            raise ConnectionError("the database is down")

    async def positions(self) -> dict[str, tuple[int, str]]:
        await asyncio.sleep(0)
        self._read()
        return {e: (s.seq, s.epoch) for e, s in self.streams.items()}

    async def changes_since(
        self, entity: str, after: int, limit: int = 1000
    ) -> tuple[int, list[Change]]:
        await asyncio.sleep(0)
        self._read()
        if self.on_read is not None:
            self.on_read()
        stream = self.streams.get(entity)
        if stream is None:
            return 0, []
        low = stream.held[0].seq if stream.held else 0
        found = [c for c in stream.held if c.seq > after][:limit]
        if self.after_look is not None:
            self.after_look()
        return low, found


class Recorder:
    """The relay's sink and reset callback; waits are bounded."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, int]] = []
        self._changed = asyncio.Event()

    def sink(self, change: Change) -> None:
        self.events.append(("change", change.entity, change.seq))
        self._changed.set()

    def reset(self, entity: str, reason: str) -> None:
        assert reason
        self.events.append(("reset", entity, 0))
        self._changed.set()

    def seqs(self, entity: str = USERS) -> list[int]:
        return [s for kind, e, s in self.events if kind == "change" and e == entity]

    def resets(self, entity: str = USERS) -> int:
        return sum(1 for kind, e, _ in self.events if kind == "reset" and e == entity)

    async def until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not done():
                self._changed.clear()
                await self._changed.wait()


async def started(log: ListChangeLog | None, recorder: Recorder) -> Relay:
    checked: ChangeLog | None = log
    relay = Relay(recorder.sink, recorder.reset, checked, batch=4)
    async with asyncio.timeout(TIMEOUT):
        await relay.start()
    return relay


async def stop(relay: Relay) -> None:
    async with asyncio.timeout(TIMEOUT):
        await relay.stop()


async def settle(relay: Relay) -> None:
    """Wait for every catch-up the relay scheduled."""
    async with asyncio.timeout(TIMEOUT):
        while relay._tasks:
            await asyncio.gather(*list(relay._tasks))


# -- delivery -------------------------------------------------------------------------


async def test_changes_offered_in_order_are_delivered_at_once_in_order() -> None:
    log, rec = ListChangeLog((USERS, POSTS)), Recorder()
    relay = await started(log, rec)
    for _ in range(5):
        relay.offer(log.append(USERS))
    assert rec.seqs() == [1, 2, 3, 4, 5]
    assert log.reads == 1  # only start() read the log: nothing was missing
    await stop(relay)


async def test_duplicates_are_dropped() -> None:
    log, rec = ListChangeLog((USERS, POSTS)), Recorder()
    relay = await started(log, rec)
    first, second = log.append(USERS), log.append(USERS)
    for change in (first, first, second, first, second, second):
        relay.offer(change)
    assert rec.seqs() == [1, 2]
    await stop(relay)


async def test_entities_are_ordered_independently() -> None:
    log, rec = ListChangeLog((USERS, POSTS)), Recorder()
    relay = await started(log, rec)
    u1, p1, u2, p2 = (log.append(e) for e in (USERS, POSTS, USERS, POSTS))
    for change in (p1, u1, p2, u2):
        relay.offer(change)
    assert rec.seqs(USERS) == [1, 2]
    assert rec.seqs(POSTS) == [1, 2]
    await stop(relay)


async def test_a_relay_starts_from_the_present() -> None:
    log, rec = ListChangeLog((USERS, POSTS)), Recorder()
    old = [log.append(USERS) for _ in range(3)]
    relay = await started(log, rec)
    for change in old:  # a late echo of what came before this process started
        relay.offer(change)
    relay.offer(log.append(USERS))
    assert rec.seqs() == [4]
    await stop(relay)


async def test_an_early_change_waits_for_the_gap_to_be_filled_from_the_log() -> None:
    log, rec = ListChangeLog((USERS, POSTS)), Recorder()
    relay = await started(log, rec)
    changes = [log.append(USERS, name=f"u{i}") for i in range(6)]
    relay.offer(changes[0])
    relay.offer(changes[3])  # 2 and 3 were published elsewhere and not heard yet
    relay.offer(changes[5])
    assert rec.seqs() == [1]  # held, not delivered out of order
    await rec.until(lambda: len(rec.seqs()) == 6)
    await settle(relay)
    assert rec.seqs() == [1, 2, 3, 4, 5, 6]
    assert rec.resets() == 0
    # What the log delivered is not delivered again when the broker brings it late.
    for change in changes:
        relay.offer(change)
    assert rec.seqs() == [1, 2, 3, 4, 5, 6]
    await stop(relay)


async def test_a_gap_filled_by_the_broker_before_the_log_is_read_is_not_doubled() -> (
    None
):
    log, rec = ListChangeLog((USERS, POSTS)), Recorder()
    relay = await started(log, rec)
    one, two, three = (log.append(USERS) for _ in range(3))
    relay.offer(one)
    relay.offer(three)
    relay.offer(two)  # arrives before the scheduled catch-up runs
    assert rec.seqs() == [1, 2, 3]
    await settle(relay)
    assert rec.seqs() == [1, 2, 3]
    assert rec.resets() == 0
    await stop(relay)


async def test_catching_up_reads_the_log_in_batches() -> None:
    log, rec = ListChangeLog((USERS, POSTS)), Recorder()
    relay = await started(log, rec)
    changes = [log.append(USERS) for _ in range(11)]  # batch is 4
    relay.offer(changes[-1])
    await rec.until(lambda: len(rec.seqs()) == 11)
    await settle(relay)
    assert rec.seqs() == list(range(1, 12))
    assert rec.resets() == 0
    await stop(relay)


async def test_a_stream_that_began_after_start_is_read_from_its_beginning() -> None:
    log, rec = ListChangeLog((USERS, POSTS)), Recorder()
    relay = await started(log, rec)  # no stream of things exists yet
    changes = [log.append(THINGS) for _ in range(3)]
    relay.offer(changes[2])  # heard first, of a stream this relay never saw
    await rec.until(lambda: len(rec.seqs(THINGS)) == 3)
    await settle(relay)
    assert rec.seqs(THINGS) == [1, 2, 3]
    assert rec.resets(THINGS) == 0
    await stop(relay)


async def test_without_a_log_every_change_of_an_unknown_stream_is_delivered() -> None:
    """The in-process broker numbers changes itself and has no log to read."""
    log, rec = ListChangeLog((USERS, POSTS)), Recorder()
    relay = await started(None, rec)
    changes = [log.append(USERS) for _ in range(3)]
    for change in changes:
        relay.offer(change)
    relay.offer(changes[1])
    assert rec.seqs() == [1, 2, 3]
    relay.offer(Change("create", USERS, None, {"id": 9}))  # not numbered at all
    assert rec.seqs() == [1, 2, 3, 0]
    await stop(relay)


# -- resets ---------------------------------------------------------------------------


async def test_reset_when_the_log_no_longer_reaches_back() -> None:
    log, rec = ListChangeLog((USERS, POSTS)), Recorder()
    relay = await started(log, rec)
    relay.offer(log.append(USERS))
    relay.offer(log.append(USERS))
    missed = [log.append(USERS) for _ in range(8)]  # seq 3..10, never heard
    log.prune(keep=3)  # only 8, 9, 10 are left
    relay.offer(missed[-1])
    await rec.until(lambda: rec.seqs()[-1:] == [10])
    await settle(relay)
    assert rec.events == [
        ("change", USERS, 1),
        ("change", USERS, 2),
        ("reset", USERS, 0),
        ("change", USERS, 8),
        ("change", USERS, 9),
        ("change", USERS, 10),
    ]
    relay.offer(log.append(USERS))  # and then new changes flow again, in order
    assert rec.seqs()[-1] == 11
    await stop(relay)


async def test_reset_when_the_whole_history_is_gone_and_a_later_change_arrives() -> (
    None
):
    log, rec = ListChangeLog((USERS, POSTS)), Recorder()
    relay = await started(log, rec)
    relay.offer(log.append(USERS))
    missed = [log.append(USERS) for _ in range(4)]  # 2..5
    log.prune(keep=0)  # nothing is left, not even the change just heard of
    relay.offer(missed[-1])
    await rec.until(lambda: rec.resets() == 1 and rec.seqs()[-1:] == [5])
    await settle(relay)
    assert rec.events == [
        ("change", USERS, 1),
        ("reset", USERS, 0),
        ("change", USERS, 5),
    ]
    assert relay.positions[USERS] == 5
    await stop(relay)


async def test_a_sweep_resets_when_the_whole_history_is_gone() -> None:
    log, rec = ListChangeLog((USERS, POSTS)), Recorder()
    relay = await started(log, rec)
    relay.offer(log.append(USERS))
    for _ in range(4):
        log.append(USERS)
    log.prune(keep=0)
    async with asyncio.timeout(TIMEOUT):
        await relay.sweep()
    assert rec.events == [("change", USERS, 1), ("reset", USERS, 0)]
    assert relay.positions[USERS] == 5
    async with asyncio.timeout(TIMEOUT):
        await relay.sweep()  # once told, not told again
    relay.offer(log.append(USERS))
    assert rec.events[-1] == ("change", USERS, 6)
    assert rec.resets() == 1
    await stop(relay)


async def test_no_reset_when_the_broker_filled_the_gap_while_the_log_was_read() -> None:
    """A prune racing a catch-up removes only what was delivered: nothing was missed."""
    log, rec = ListChangeLog((USERS, POSTS)), Recorder()
    relay = await started(log, rec)
    changes = [log.append(USERS) for _ in range(10)]
    for change in changes[:5]:
        relay.offer(change)
    relay.offer(changes[6])  # 7 is early: a catch-up from 5 is scheduled

    def broker_then_prune() -> None:
        log.on_read = None
        relay.offer(changes[5])  # 6 arrives (7 follows) while the log is read...
        log.prune(keep=3)  # ...and the log drops everything up to 7

    log.on_read = broker_then_prune
    await settle(relay)
    # The read raced: it began at 5 and saw 8..10 only, but 6 and 7 had arrived.
    assert rec.resets() == 0
    assert rec.seqs() == list(range(1, 11))
    await stop(relay)


async def test_no_reset_when_a_change_arrives_while_the_log_is_read() -> None:
    """A read that began before a commit cannot see it: a change heard during that
    read is not missing from the log, it is just newer than the read."""
    log, rec = ListChangeLog((USERS, POSTS)), Recorder()
    relay = await started(log, rec)
    for _ in range(3):
        relay.offer(log.append(USERS))

    def commit_during_the_read() -> None:
        log.after_look = None
        log.append(USERS)  # 4, by another process: not heard yet
        relay.offer(log.append(USERS))  # 5, this process's own, heard at once

    log.after_look = commit_during_the_read
    relay.catch_up_soon(USERS)  # a signal that turns out to bring nothing new
    await rec.until(lambda: rec.seqs()[-1:] == [5])
    await settle(relay)
    assert rec.events == [("change", USERS, seq) for seq in range(1, 6)]
    await stop(relay)


async def test_a_new_epoch_offered_means_reset_then_the_new_history() -> None:
    log, rec = ListChangeLog((USERS, POSTS)), Recorder()
    relay = await started(log, rec)
    relay.offer(log.append(USERS))
    relay.offer(log.append(USERS))
    log.replace_history(USERS)
    relay.offer(log.append(USERS))  # seq 1 again, under a new epoch
    assert rec.events == [
        ("change", USERS, 1),
        ("change", USERS, 2),
        ("reset", USERS, 0),
        ("change", USERS, 1),
    ]
    relay.offer(log.append(USERS))
    assert rec.seqs()[-1] == 2
    await stop(relay)


async def test_a_new_epoch_found_by_a_sweep_means_reset() -> None:
    log, rec = ListChangeLog((USERS, POSTS)), Recorder()
    relay = await started(log, rec)
    relay.offer(log.append(USERS))
    stream = log.replace_history(USERS)
    log.append(USERS)
    async with asyncio.timeout(TIMEOUT):
        await relay.sweep()
    assert rec.resets() == 1
    assert relay.epochs[USERS] == stream.epoch
    relay.offer(log.append(USERS))
    assert rec.seqs()[-1] == 2
    await stop(relay)


# -- sweeps ---------------------------------------------------------------------------


async def test_a_sweep_delivers_what_no_broker_announced() -> None:
    """The writer died between commit and publish: only the log knows."""
    log, rec = ListChangeLog((USERS, POSTS)), Recorder()
    relay = await started(log, rec)
    for _ in range(3):
        log.append(USERS)
    log.append(POSTS)
    async with asyncio.timeout(TIMEOUT):
        await relay.sweep()
    assert rec.seqs(USERS) == [1, 2, 3]
    assert rec.seqs(POSTS) == [1]
    reads = log.reads
    async with asyncio.timeout(TIMEOUT):
        await relay.sweep()  # nothing new: one look at the positions, no more
    assert log.reads == reads + 1
    assert len(rec.events) == 4
    await stop(relay)


async def test_a_sweep_survives_a_log_that_is_down_and_catches_up_later() -> None:
    log, rec = ListChangeLog((USERS, POSTS)), Recorder()
    relay = await started(log, rec)
    for _ in range(3):
        log.append(USERS)
    log.failing = True
    async with asyncio.timeout(TIMEOUT):
        await relay.sweep()  # must not raise: brokers sweep from their listener loop
    assert rec.events == []
    log.failing = False
    async with asyncio.timeout(TIMEOUT):
        await relay.sweep()
    assert rec.seqs() == [1, 2, 3]
    await stop(relay)


@pytest.mark.parametrize("order", ["forward", "backward", "interleaved"])
async def test_any_arrival_order_delivers_each_change_once_in_order(
    order: str,
) -> None:
    log, rec = ListChangeLog((USERS, POSTS)), Recorder()
    relay = await started(log, rec)
    changes = [log.append(USERS) for _ in range(30)]
    if order == "backward":
        arrivals = changes[::-1]
    elif order == "interleaved":
        arrivals = changes[1::2] + changes[::2] + changes[::3]
    else:
        arrivals = changes + changes
    for change in arrivals:
        relay.offer(change)
    await rec.until(lambda: len(rec.seqs()) >= 30)
    await settle(relay)
    assert rec.seqs() == list(range(1, 31))
    assert rec.resets() == 0
    await stop(relay)
