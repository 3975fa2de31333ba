"""Group commit: writes of one entity arriving during another's commit go together.

Theory of operation. Each entity has a queue and, while the queue is not empty, one
committer task. A request appends its item and waits for it; the committer takes
everything queued (up to ``max_group`` items, in arrival order), hands the group to
``run`` and resolves each item with what ``run`` says of it. Under no load a group is
one item and waits for nothing; under load the group grows by itself to whatever
arrived during the previous commit, which is what makes one transaction (one ``BEGIN``,
one ``COMMIT``, one statement) serve many requests.

An item whose request was cancelled before its group was taken is skipped. The
committer runs in a task of its own, so a request's connection closing never cuts a
group short; should ``run`` itself fail, every item of the group gets that error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["GroupCommitter"]

log = logging.getLogger(__name__)

T = TypeVar("T")

Run = Callable[[str, list[T]], Awaitable[list[BaseException | None]]]
"""Writes one group of an entity; returns each item's error, or ``None``."""


class _Queued(Generic[T]):
    __slots__ = ("done", "item")

    def __init__(self, item: T, done: asyncio.Future[None]) -> None:
        self.item = item
        self.done = done


class GroupCommitter(Generic[T]):
    """Queues items per entity key and runs them in groups, one group at a time.

    Args:
        run: writes a group (see :data:`Run`).
        max_group: the most items in one group.
    """

    def __init__(self, run: Run[T], *, max_group: int) -> None:
        self._run = run
        self._max_group = max_group
        self._queues: dict[str, list[_Queued[T]]] = {}
        self._committers: dict[str, asyncio.Task[None]] = {}

    async def submit(self, key: str, item: T) -> None:
        """Queue ``item`` for the entity ``key`` and wait until it is written.

        Raises:
            Whatever error ``run`` reported for this item.
        """
        queued = _Queued(item, asyncio.get_running_loop().create_future())
        self._queues.setdefault(key, []).append(queued)
        if key not in self._committers:
            self._committers[key] = asyncio.create_task(self._commit(key))
        await queued.done

    async def stop(self) -> None:
        """Wait for the groups being written."""
        if self._committers:
            await asyncio.gather(*self._committers.values(), return_exceptions=True)

    async def _commit(self, key: str) -> None:
        queue = self._queues[key]
        group: list[_Queued[T]] = []
        try:
            while queue:
                taken = queue[: self._max_group]
                del queue[: self._max_group]
                group = [q for q in taken if not q.done.done()]
                if not group:
                    continue
                try:
                    errors = await self._run(key, [q.item for q in group])
                except Exception as exc:
                    log.error("a group of writes failed", exc_info=exc)
                    errors = [exc] * len(group)
                for queued, error in zip(group, errors, strict=True):
                    if queued.done.done():
                        continue
                    if error is None:
                        queued.done.set_result(None)
                    else:
                        queued.done.set_exception(error)
                group = []
        finally:
            # Cancelled (the loop is closing), or ``run`` broke its contract: nobody may
            # wait forever, nor go unanswered.
            for queued in (*group, *queue):
                if not queued.done.done():
                    queued.done.set_exception(RuntimeError("the write was not run"))
            queue.clear()
            del self._committers[key]
            del self._queues[key]
