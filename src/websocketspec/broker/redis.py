"""The Redis broker: changes published on a Redis channel, the change log behind it.

After commit the writing process hands its change to its own relay and publishes it
(the whole change, so other processes need no database read). Every process subscribes
and offers what it hears to its relay, which drops duplicates and restores order. Redis
is only the fast path: the change log is swept periodically and after every reconnect,
so a change whose publish failed (Redis down, or the writer died right after commit)
still reaches every subscriber, in order, once. Only when the log no longer reaches back
are subscribers told to ``reset``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from websocketspec.adapters.base import Change
from websocketspec.broker.base import Broker
from websocketspec.exceptions import BrokerError, MissingDependencyError

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("redis", "redis") from exc

if TYPE_CHECKING:
    from websocketspec.broker.relay import Relay

__all__ = ["RedisBroker"]

log = logging.getLogger(__name__)


class _Wire(msgspec.Struct):
    entity: str
    seq: int
    epoch: str
    operation: str
    old: dict[str, Any] | None = None
    new: dict[str, Any] | None = None
    txid: str = ""
    batch_index: int = 0
    batch_size: int = 0


_encoder = msgspec.json.Encoder(decimal_format="string")
_decoder = msgspec.json.Decoder(_Wire)


class RedisBroker(Broker):
    """Share changes between processes through Redis pub/sub and the change log.

    Args:
        url: ``redis://host:port/db``.
        channel: the pub/sub channel.
        sweep_interval: seconds between sweeps of the change log.
        max_backoff: the longest wait between reconnection attempts.
    """

    shared = True

    def __init__(
        self,
        url: str,
        *,
        channel: str = "websocketspec:changes",
        sweep_interval: float = 1.0,
        max_backoff: float = 5.0,
    ) -> None:
        self.url = url
        self.channel = channel
        self.sweep_interval = sweep_interval
        self.max_backoff = max_backoff
        self._relay: Relay | None = None
        self._client: aioredis.Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self.decode_row: Callable[[str, dict[str, Any]], dict[str, Any]] = (
            lambda _e, row: row
        )
        """Turns a row from JSON into typed values (the handler sets it)."""
        self.reconnects = 0

    @property
    def listening(self) -> bool:
        """Whether the subscription to Redis is up."""
        return self._listening.is_set()

    async def start(self, relay: Relay) -> None:
        """Connect and subscribe (waits briefly for the first connection)."""
        self._relay = relay
        self._client = aioredis.from_url(
            self.url, socket_connect_timeout=5, socket_timeout=10
        )
        self._task = asyncio.create_task(
            self._run(), name="websocketspec-redis-listener"
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), timeout=10)

    async def publish(self, change: Change) -> None:
        """Hand the change to this process's relay, then publish it to the others."""
        if self._relay is None or self._client is None:
            raise BrokerError("the broker was not started")
        self._relay.offer(change)
        wire = _Wire(
            change.entity,
            change.seq,
            change.epoch,
            change.operation,
            change.old,
            change.new,
            change.txid,
            change.batch_index,
            change.batch_size,
        )
        try:
            await self._client.publish(self.channel, _encoder.encode(wire))
        except (RedisError, OSError) as exc:
            log.warning(
                "publishing to Redis failed (%s); other processes will catch up from the log",
                exc,
            )

    async def stop(self) -> None:
        """Unsubscribe and close."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        self._relay = None

    def _on_message(self, data: bytes) -> None:
        relay = self._relay
        if relay is None:
            return
        try:
            wire = _decoder.decode(data)
        except msgspec.DecodeError:
            log.warning("ignored a malformed message on %s", self.channel)
            return
        known = relay.epochs.get(wire.entity)
        if known and wire.epoch != known:
            # Not this log's history: another deployment on the same channel (pub/sub
            # ignores the database number), or one replaced since, which the next
            # sweep of the log finds and resets. Never deliver it as ours.
            return
        if wire.seq <= relay.positions.get(wire.entity, 0):
            return
        relay.offer(
            Change(
                wire.operation,
                wire.entity,
                None if wire.old is None else self.decode_row(wire.entity, wire.old),
                None if wire.new is None else self.decode_row(wire.entity, wire.new),
                wire.seq,
                wire.epoch,
                wire.txid,
                wire.batch_index,
                wire.batch_size,
            )
        )

    async def _run(self) -> None:
        delay = 0.1
        while True:
            client = self._client
            if client is None:
                return
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                delay = 0.1
                self._listening.set()
                if self._relay is not None:
                    await self._relay.sweep()
                loop = asyncio.get_running_loop()
                next_sweep = loop.time() + self.sweep_interval
                while True:
                    wait = max(0.0, next_sweep - loop.time())
                    message = await pubsub.get_message(timeout=wait)
                    if message is not None and message.get("type") == "message":
                        self._on_message(message["data"])
                    # On a clock, not when idle: a busy channel must not starve it.
                    if loop.time() >= next_sweep:
                        if self._relay is not None:
                            await self._relay.sweep()
                        next_sweep = loop.time() + self.sweep_interval
            except (RedisError, OSError) as exc:
                self._listening.clear()
                self.reconnects += 1
                log.warning(
                    "the Redis subscription was lost (%s); retrying in %.1fs",
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
