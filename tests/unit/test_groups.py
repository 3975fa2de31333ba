"""GroupCommitter: what arrives during a commit goes in the next group, in order.

No database here: ``run`` records the groups it is handed, as a write would see them.
"""

from __future__ import annotations

import asyncio

import pytest

from websocketspec.server.groups import GroupCommitter


class Recorder:
    def __init__(self, fail: set[int] | None = None, crash: bool = False) -> None:
        self.groups: list[list[int]] = []
        self.fail = fail or set()
        self.crash = crash
        self.gate = asyncio.Event()
        self.gate.set()

    async def run(self, key: str, items: list[int]) -> list[BaseException | None]:
        self.groups.append(items)
        await self.gate.wait()
        if self.crash:
            raise RuntimeError("the database went away")
        return [ValueError(i) if i in self.fail else None for i in items]


async def test_items_arriving_during_a_commit_form_the_next_group() -> None:
    rec = Recorder()
    rec.gate.clear()
    groups = GroupCommitter(rec.run, max_group=100)
    first = asyncio.create_task(groups.submit("users", 0))
    await asyncio.sleep(0)  # the committer takes item 0 alone and waits in run
    await asyncio.sleep(0)
    rest = [asyncio.create_task(groups.submit("users", i)) for i in range(1, 8)]
    await asyncio.sleep(0)
    rec.gate.set()
    await asyncio.gather(first, *rest)
    assert rec.groups == [[0], [1, 2, 3, 4, 5, 6, 7]]


async def test_groups_are_bounded_and_keep_arrival_order() -> None:
    rec = Recorder()
    groups = GroupCommitter(rec.run, max_group=3)
    await asyncio.gather(*(groups.submit("users", i) for i in range(8)))
    assert [i for g in rec.groups for i in g] == list(range(8))
    assert max(len(g) for g in rec.groups) == 3


async def test_each_item_gets_its_own_error() -> None:
    rec = Recorder(fail={2, 5})
    groups = GroupCommitter(rec.run, max_group=10)
    outcomes = await asyncio.gather(
        *(groups.submit("users", i) for i in range(7)), return_exceptions=True
    )
    assert [type(o).__name__ for o in outcomes] == [
        "NoneType",
        "NoneType",
        "ValueError",
        "NoneType",
        "NoneType",
        "ValueError",
        "NoneType",
    ]


async def test_a_failing_run_fails_its_group_and_the_next_group_runs() -> None:
    rec = Recorder(crash=True)
    groups = GroupCommitter(rec.run, max_group=10)
    outcomes = await asyncio.gather(
        *(groups.submit("users", i) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    rec.crash = False
    await groups.submit("users", 9)
    assert rec.groups[-1] == [9]


async def test_a_cancelled_item_is_skipped_before_its_group_runs() -> None:
    rec = Recorder()
    rec.gate.clear()
    groups = GroupCommitter(rec.run, max_group=10)
    first = asyncio.create_task(groups.submit("users", 0))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    doomed = asyncio.create_task(groups.submit("users", 1))
    kept = asyncio.create_task(groups.submit("users", 2))
    await asyncio.sleep(0)
    doomed.cancel()
    rec.gate.set()
    await asyncio.gather(first, kept)
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert rec.groups == [[0], [2]]


async def test_entities_commit_independently() -> None:
    rec = Recorder()
    rec.gate.clear()
    groups = GroupCommitter(rec.run, max_group=10)
    tasks = [
        asyncio.create_task(groups.submit(key, i))
        for i, key in enumerate(["users", "posts"])
    ]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert sorted(rec.groups) == [[0], [1]]  # both running at once
    rec.gate.set()
    await asyncio.gather(*tasks)


async def test_stop_waits_for_the_group_being_written() -> None:
    rec = Recorder()
    rec.gate.clear()
    groups = GroupCommitter(rec.run, max_group=10)
    task = asyncio.create_task(groups.submit("users", 0))
    await asyncio.sleep(0)
    stopping = asyncio.create_task(groups.stop())
    await asyncio.sleep(0.01)
    assert not stopping.done()
    rec.gate.set()
    await stopping
    await task


async def test_a_run_breaking_its_contract_answers_every_waiter() -> None:
    async def short(key: str, items: list[int]) -> list[BaseException | None]:
        return [None]  # one outcome, whatever the group's size

    groups: GroupCommitter[int] = GroupCommitter(short, max_group=10)
    outcomes = await asyncio.gather(
        *(groups.submit("users", i) for i in range(4)), return_exceptions=True
    )
    assert outcomes[0] is None
    assert all(isinstance(o, RuntimeError) for o in outcomes[1:]), outcomes
    await groups.submit("users", 9)  # the next group is served
