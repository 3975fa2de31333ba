"""The PostgreSQL broker: ``LISTEN/NOTIFY`` over the database you already run.

Each write's transaction calls ``pg_notify(channel, "<entity>:<seq>")``, which PostgreSQL
delivers to every listener when, and only when, the transaction commits. The payload
names only the position: the change itself is read from the change log, so the 8000-byte
payload limit never truncates a row. This process's own changes are handed to the relay
right after commit and the echo of their notification is ignored.

The listening connection is watched: when it drops, the server keeps serving requests,
reconnects with exponential backoff, and then catches up every stream from the log, so
subscribers miss nothing; only when the log no longer reaches back do they get a
``reset`` notification. The log is also swept periodically.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from websocketspec.adapters.base import Change
from websocketspec.broker.base import Broker
from websocketspec.exceptions import BrokerError, MissingDependencyError

try:
    import asyncpg
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("asyncpg", "postgres") from exc

if TYPE_CHECKING:
    from websocketspec.broker.relay import Relay

__all__ = ["PostgresBroker"]

log = logging.getLogger(__name__)


def plain_dsn(url: str) -> str:
    """``postgresql+asyncpg://…`` → ``postgresql://…`` (asyncpg takes plain URLs)."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+')[0]}{sep}{rest}"


class PostgresBroker(Broker):
    """Share changes between processes through PostgreSQL ``LISTEN/NOTIFY``.

    Args:
        url: the PostgreSQL database the adapter writes to (``postgresql://…``).
        channel: the notification channel.
        sweep_interval: seconds between checks of the listener and sweeps of the log.
        max_backoff: the longest wait between reconnection attempts.
    """

    shared = True

    def __init__(
        self,
        url: str,
        *,
        channel: str = "websocketspec",
        sweep_interval: float = 1.0,
        max_backoff: float = 5.0,
    ) -> None:
        self.dsn = plain_dsn(url)
        self.notify_channel = channel
        self.sweep_interval = sweep_interval
        self.max_backoff = max_backoff
        self._relay: Relay | None = None
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self.reconnects = 0

    @property
    def listening(self) -> bool:
        """Whether the listener connection is up."""
        return self._listening.is_set()

    async def start(self, relay: Relay) -> None:
        """Start listening (waits briefly for the first connection)."""
        self._relay = relay
        self._task = asyncio.create_task(self._run(), name="websocketspec-pg-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), timeout=10)

    async def publish(self, change: Change) -> None:
        """Hand this process's change to the relay; other processes hear the NOTIFY."""
        if self._relay is None:
            raise BrokerError("the broker was not started")
        self._relay.offer(change)

    async def stop(self) -> None:
        """Stop listening."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._relay = None

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        relay = self._relay
        if relay is None:
            return
        entity, _, seq = payload.rpartition(":")
        if not entity or not seq.isdigit():
            return
        position = int(seq)
        if position <= relay.positions.get(entity, 0):
            return
        own = getattr(relay.log, "appended", None)
        if own is not None and position <= own.get(entity, 0):
            return  # this process's own write: it is published right after commit
        relay.catch_up_soon(entity)

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                conn = await asyncpg.connect(self.dsn, timeout=5)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                self._listening.clear()
                log.warning(
                    "cannot listen on PostgreSQL (%s); retrying in %.1fs", exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            delay = 0.1
            try:
                await self._listen(conn)
            except (
                OSError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                TimeoutError,
            ) as exc:
                log.warning("the PostgreSQL listener connection was lost (%s)", exc)
            finally:
                self._listening.clear()
                conn.terminate()
            self.reconnects += 1

    async def _listen(self, conn: Any) -> None:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        await conn.add_listener(self.notify_channel, self._on_notify)
        self._listening.set()
        if self._relay is not None:
            await self._relay.sweep()
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), self.sweep_interval)
            if lost.is_set():
                return
            await conn.fetchval("SELECT 1", timeout=self.sweep_interval * 2 + 1)
            if self._relay is not None:
                await self._relay.sweep()
