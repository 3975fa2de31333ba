"""The subscription table and fan-out: which subscriptions a change reaches, and how.

Subscriptions are indexed by entity and, where their filter has a top-level equality
condition, by that ``(column, value)``: a change is tested only against the
subscriptions indexed under its old and new values plus the entity's residual
(unindexed) ones. Each candidate is evaluated in memory with the same operator table
as the SQL path, against the row before and after the change, and told what the change
means for it: ``create`` (the row entered), ``update`` (it stayed) or ``delete`` (it
left, with the old row).

Fan-out never awaits a client. Changes are processed in the order they arrive; when
after-read hooks exist (masking), each subscriber's copy passes through them first,
still in order. When every after-read hook is declared per identity, subscribers of one
identity told the same thing (operation, enter/stay/leave, columns) share one run of the
hooks and one encoded body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from websocketspec.adapters.base import Change
from websocketspec.exceptions import HookError, ProtocolError
from websocketspec.hooks import HookContext, HookRegistry, HookType
from websocketspec.protocol.codec import encode, now
from websocketspec.protocol.filters import Condition, Expr, Group, Op, matches
from websocketspec.protocol.messages import QueryOptions
from websocketspec.query import project
from websocketspec.registry import EntityInfo
from websocketspec.server.config import Config
from websocketspec.server.connection import Connection

__all__ = ["Fanout", "Subscription", "SubscriptionTable"]

log = logging.getLogger(__name__)


class Subscription:
    """One client's standing interest in an entity's changes.

    Thousands of these live per process, mostly idle: each holds what matching needs
    and, for re-running the hooks when the identity changes, the client's options as
    the bytes of their JSON (decoded only then).
    """

    __slots__ = (
        "_options",
        "columns",
        "connection",
        "entity",
        "held",
        "id",
        "index_key",
        "since",
        "where",
    )

    def __init__(
        self,
        id: str,
        connection: Connection,
        entity: EntityInfo,
        where: Expr | None,
        columns: tuple[str, ...] | None,
        index_key: tuple[str, Any] | None = None,
        options: QueryOptions | None = None,
        since: int = 0,
        held: list[tuple[int, str, Any, dict[str, Any]]] | None = None,
    ) -> None:
        self.id = id
        self.connection = connection
        self.entity = entity
        self.where = where
        self.columns = columns
        self.index_key = index_key
        self.options = options
        self.since = since
        """Changes at or before this position of the stream are not for this
        subscription (the snapshot it was given, or where it resumed from)."""
        self.held = held
        """While a replay runs, live notifications wait here."""

    @property
    def options(self) -> QueryOptions | None:
        """The client's own options, kept to re-run the hooks when the identity changes.

        Each read decodes a fresh copy.
        """
        raw = self._options
        return None if raw is None else _decode_options(raw)

    @options.setter
    def options(self, value: QueryOptions | None) -> None:
        self._options = None if value is None else _encode_options(value)

    def __repr__(self) -> str:
        return (
            f"Subscription(id={self.id!r}, entity={self.entity.key!r}, "
            f"where={self.where!r}, columns={self.columns!r}, since={self.since!r})"
        )


_encode_options = msgspec.json.Encoder().encode
_decode_options = msgspec.json.Decoder(QueryOptions).decode


def _index_key(where: Expr | None) -> tuple[str, Any] | None:
    """Pick an equality condition that every matching row must satisfy."""
    candidates: tuple[Expr, ...]
    if isinstance(where, Condition):
        candidates = (where,)
    elif isinstance(where, Group) and where.kind == "and":
        candidates = where.items
    else:
        return None
    for item in candidates:
        if isinstance(item, Condition) and item.op is Op.EQ:
            try:
                hash(item.value)
            except TypeError:
                continue
            return item.column, item.value
    return None


@dataclass(slots=True)
class _EntitySubscriptions:
    indexed: dict[str, dict[Any, dict[str, Subscription]]] = field(default_factory=dict)
    residual: dict[str, Subscription] = field(default_factory=dict)
    count: int = 0


class SubscriptionTable:
    """Every live subscription of this process, indexed for matching."""

    def __init__(self) -> None:
        self._entities: dict[str, _EntitySubscriptions] = {}
        self._by_id: dict[str, Subscription] = {}

    def add(self, sub: Subscription) -> None:
        """Add a subscription to the index."""
        sub.index_key = _index_key(sub.where)
        bucket = self._entities.setdefault(sub.entity.key, _EntitySubscriptions())
        if sub.index_key is None:
            bucket.residual[sub.id] = sub
        else:
            column, value = sub.index_key
            bucket.indexed.setdefault(column, {}).setdefault(value, {})[sub.id] = sub
        bucket.count += 1
        self._by_id[sub.id] = sub

    def remove(self, sub_id: str) -> Subscription | None:
        """Remove a subscription; returns it, or ``None`` if unknown."""
        sub = self._by_id.pop(sub_id, None)
        if sub is None:
            return None
        bucket = self._entities[sub.entity.key]
        if sub.index_key is None:
            bucket.residual.pop(sub.id, None)
        else:
            column, value = sub.index_key
            by_value = bucket.indexed[column]
            subs = by_value[value]
            subs.pop(sub.id, None)
            if not subs:
                del by_value[value]
                if not by_value:
                    del bucket.indexed[column]
        bucket.count -= 1
        if bucket.count == 0:
            del self._entities[sub.entity.key]
        return sub

    def candidates(self, change: Change) -> Iterator[Subscription]:
        """Subscriptions that the change may concern (a superset of the matches)."""
        bucket = self._entities.get(change.entity)
        if bucket is None:
            return
        yield from bucket.residual.values()
        for column, by_value in bucket.indexed.items():
            seen: Any = _MISSING
            for row in (change.old, change.new):
                if row is None:
                    continue
                value = row.get(column)
                if value is None or value == seen:
                    continue
                seen = value
                try:
                    subs = by_value.get(value)
                except TypeError:
                    continue
                if subs:
                    yield from subs.values()

    def of_entity(self, key: str) -> Iterator[Subscription]:
        """Every subscription of one entity."""
        bucket = self._entities.get(key)
        if bucket is None:
            return
        yield from bucket.residual.values()
        for by_value in bucket.indexed.values():
            for subs in by_value.values():
                yield from subs.values()

    def counts(self) -> dict[str, int]:
        """Live subscriptions per entity."""
        return {key: bucket.count for key, bucket in self._entities.items()}

    def __len__(self) -> int:
        return len(self._by_id)


_MISSING = object()


def classify(
    sub: Subscription, change: Change
) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
    """What a change means for one subscription: (operation, row, metadata), or ``None``."""
    source = change.operation
    before = change.old is not None and matches(sub.where, change.old)
    after = change.new is not None and matches(sub.where, change.new)
    if source == "create":
        if after and change.new is not None:
            return "create", change.new, {"source_operation": source}
        return None
    if source == "delete":
        if before and change.old is not None:
            return "delete", change.old, {"source_operation": source}
        return None
    if before and after and change.new is not None:
        return "update", change.new, {"source_operation": source, "change": "stay"}
    if after and change.new is not None:
        return "create", change.new, {"source_operation": source, "change": "enter"}
    if before and change.old is not None:
        return "delete", change.old, {"source_operation": source, "change": "leave"}
    return None


@dataclass(frozen=True, slots=True)
class _Reset:
    entity: str
    reason: str


class Fanout:
    """Delivers committed changes to matching subscriptions, in order.

    Args:
        table: the subscriptions to match against.
        hooks: after-read hooks shape each subscriber's copy.
        identity: who a connection is, for after-read hooks declared per identity
            (default: :meth:`Config.identity_of` of the default settings).
    """

    def __init__(
        self,
        table: SubscriptionTable,
        hooks: HookRegistry,
        *,
        identity: Callable[[Connection], Any] | None = None,
    ) -> None:
        self.table = table
        self.hooks = hooks
        self.identity = identity or Config().identity_of
        self._pending: deque[Change | _Reset] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0

    async def start(self) -> None:
        """Start the worker that handles changes needing async hooks."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="websocketspec-fanout")

    async def stop(self) -> None:
        """Stop the worker."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Connections are closing: what is pending has nobody left to reach.
        self._pending.clear()

    def deliver(self, change: Change) -> None:
        """Accept a committed change (a broker's sink); never blocks."""
        if not self._pending and not self.hooks.has_after(HookType.READ):
            self._deliver_sync(change)
            return
        self._pending.append(change)
        self._wake.set()

    def reset(self, entity: str, reason: str) -> None:
        """Tell every subscriber of ``entity`` to read again (``operation: "reset"``)."""
        item = _Reset(entity, reason)
        if not self._pending:
            self._send_reset(item)
            return
        self._pending.append(item)
        self._wake.set()

    def _send_reset(self, item: _Reset) -> None:
        for sub in list(self.table.of_entity(item.entity)):
            self.reset_one(sub, item.reason)

    def reset_one(self, sub: Subscription, reason: str) -> None:
        """Tell one subscription to read again."""
        sub.connection.send(
            {
                "type": "notification",
                "operation": "reset",
                "subscription_id": sub.id,
                "schema": sub.entity.schema,
                "entity": sub.entity.name,
                "data": None,
                "metadata": {"reason": reason},
                "timestamp": now(),
            }
        )

    def _deliver_sync(self, change: Change) -> None:
        # Encode once per shape, not once per subscriber: subscribers told the same
        # thing (same operation and change, same columns) share one encoded body, and
        # only their subscription_id is spliced in front of it. What unfiltered
        # subscribers are told depends on their columns only: worked out once.
        candidates = list(self.table.candidates(change))
        if not candidates:
            return
        stamp = now()
        bodies: dict[tuple[str, Any, tuple[str, ...] | None], str] = {}
        unfiltered: dict[tuple[str, ...] | None, tuple[str, str] | None] = {}
        seq = change.seq
        for sub in candidates:
            conn = sub.connection
            if sub.held is not None or sub.id not in conn.subscriptions:
                prepared = prepare(sub, change)
                if prepared is not None:
                    self._send(sub, *prepared, seq)
                continue
            if seq and seq <= sub.since:
                continue
            if sub.where is not None:
                told = _tell(sub, change, stamp, bodies)
            elif sub.columns in unfiltered:
                told = unfiltered[sub.columns]
            else:
                told = unfiltered[sub.columns] = _tell(sub, change, stamp, bodies)
            if told is None:
                continue
            head, body = told
            # Subscription ids are "sub-" and hex digits: nothing to escape.
            conn.send_text(f'{head}{sub.id}",{body}')
            self.delivered += 1

    def _matches(
        self, change: Change
    ) -> Iterator[tuple[Subscription, str, dict[str, Any], dict[str, Any]]]:
        for sub in list(self.table.candidates(change)):
            prepared = prepare(sub, change)
            if prepared is not None:
                yield (sub, *prepared)

    def _send(
        self,
        sub: Subscription,
        operation: str,
        data: Any,
        meta: dict[str, Any],
        seq: int = 0,
        *,
        replaying: bool = False,
    ) -> None:
        if sub.id not in sub.connection.subscriptions:
            return
        if sub.held is not None and not replaying:
            sub.held.append((seq, operation, data, meta))
            return
        sub.connection.send(
            {
                "type": "notification",
                "operation": operation,
                "subscription_id": sub.id,
                "schema": sub.entity.schema,
                "entity": sub.entity.name,
                "data": data,
                "metadata": meta,
                "timestamp": now(),
            }
        )
        self.delivered += 1

    async def replay(self, sub: Subscription, changes: list[Change]) -> None:
        """Send one subscription the changes it missed, then what arrived meanwhile.

        The subscription must be in the table with ``held`` set to a list, so that live
        changes wait while this runs; they are released after the replay, without the
        ones the replay already covered.
        """
        last = sub.since
        try:
            for change in changes:
                prepared = prepare(sub, change)
                last = max(last, change.seq)
                if prepared is None:
                    continue
                operation, row, meta = prepared
                data = await self._shape(sub, row)
                if data is not None:
                    self._send(sub, operation, data, meta, change.seq, replaying=True)
        finally:
            held, sub.held = sub.held or [], None
            sub.since = last
            for seq, operation, data, meta in held:
                if seq == 0 or seq > last:
                    self._send(sub, operation, data, meta, seq)

    async def _shape(
        self, sub: Subscription, row: dict[str, Any], *, sharing: int = 1
    ) -> Any:
        """Run the after-read hooks on one subscriber's copy; ``None`` withholds it.

        With per-identity hooks the copy is that of ``sharing`` subscribers, ``sub``
        being one of them.
        """
        others = "" if sharing == 1 else f" and {sharing - 1} more of its identity"
        if not self.hooks.has_after(HookType.READ):
            return row
        ctx = HookContext(
            connection=sub.connection,
            operation="read",
            schema=sub.entity.schema,
            entity=sub.entity.name,
            record_id=None,
            result=dict(row),
            subscription_id=sub.id,
        )
        try:
            await self.hooks.run_after(HookType.READ, ctx)
        except HookError as exc:
            log.error(
                "an after-read hook failed; notification withheld from %s%s",
                sub.id,
                others,
                exc_info=exc.__cause__,
            )
            return None
        except ProtocolError as exc:
            log.info(
                "an after-read hook withheld a notification from %s%s: %s",
                sub.id,
                others,
                exc.message,
            )
            return None
        return ctx.result

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                item = self._pending[0]
                try:
                    if isinstance(item, _Reset):
                        self._send_reset(item)
                    else:
                        await self._deliver_hooked(item)
                except Exception:
                    log.exception("fan-out of a change to %s failed", item.entity)
                self._pending.popleft()

    async def _deliver_hooked(self, change: Change) -> None:
        if not self.hooks.has_after(HookType.READ):
            self._deliver_sync(change)
            return
        if self.hooks.is_after_per_identity(HookType.READ):
            await self._deliver_per_identity(change)
            return
        for sub, operation, row, meta in list(self._matches(change)):
            data = await self._shape(sub, row)
            if data is not None:
                self._send(sub, operation, data, meta, change.seq)

    async def _deliver_per_identity(self, change: Change) -> None:
        # The hooks promised that their outcome depends on the row and the identity
        # only, so subscribers of one identity told the same thing form a group: the
        # hooks run once, on its first subscriber's copy, and the body is encoded once,
        # each subscription_id spliced in as in _deliver_sync. Hooks may await: whether
        # a subscription is still live, held or past this change is decided at sending.
        seq = change.seq
        groups: dict[tuple[Any, ...], tuple[_Told, list[Subscription]]] = {}
        unfiltered: dict[tuple[str, ...] | None, _Told | None] = {}
        unknown = 0
        for sub in list(self.table.candidates(change)):
            if sub.id not in sub.connection.subscriptions:
                continue
            if sub.where is not None:
                told = prepare(sub, change)
            elif seq and seq <= sub.since:
                continue
            elif sub.columns in unfiltered:
                told = unfiltered[sub.columns]
            else:
                told = unfiltered[sub.columns] = prepare(sub, change)
            if told is None:
                continue
            try:
                identity = self.identity(sub.connection)
                hash(identity)
            except Exception:  # noqa: BLE001 - one bad identity must not stop a fan-out
                # Not knowing who it is, the hooks run for this connection alone.
                identity = (_UNKNOWN, sub.connection.id)
                unknown += 1
            operation, _, meta = told
            key = (identity, operation, meta.get("change"), sub.columns)
            group = groups.get(key)
            if group is None:
                groups[key] = (told, [sub])
            else:
                group[1].append(sub)
        if unknown:
            log.warning(
                "the identity of %d subscriber(s) could not be determined; "
                "their after-read hooks ran per connection",
                unknown,
            )
        stamp = now()
        for (operation, row, meta), subs in groups.values():
            data = await self._shape(subs[0], row, sharing=len(subs))
            if data is None:
                continue
            entity = subs[0].entity
            head = (
                f'{{"type":"notification","operation":"{operation}","subscription_id":"'
            )
            body: str | None = None
            for sub in subs:
                conn = sub.connection
                if sub.id not in conn.subscriptions:
                    continue
                if sub.held is not None:
                    sub.held.append((seq, operation, data, dict(meta)))
                    continue
                if seq and seq <= sub.since:
                    continue
                if body is None:
                    body = encode(
                        {
                            "schema": entity.schema,
                            "entity": entity.name,
                            "data": data,
                            "metadata": meta,
                            "timestamp": stamp,
                        }
                    )[1:]
                # Subscription ids are "sub-" and hex digits: nothing to escape.
                conn.send_text(f'{head}{sub.id}",{body}')
                self.delivered += 1


_Told = tuple[str, dict[str, Any], dict[str, Any]]
"""What a subscription is told of a change: (operation, data, metadata)."""

_UNKNOWN = object()


def _tell(
    sub: Subscription,
    change: Change,
    stamp: str,
    bodies: dict[tuple[str, Any, tuple[str, ...] | None], str],
) -> tuple[str, str] | None:
    """A notification's text before the subscription id, and its encoded rest."""
    prepared = prepare(sub, change)
    if prepared is None:
        return None
    operation, data, meta = prepared
    shape = (operation, meta.get("change"), sub.columns)
    body = bodies.get(shape)
    if body is None:
        body = bodies[shape] = encode(
            {
                "schema": sub.entity.schema,
                "entity": sub.entity.name,
                "data": data,
                "metadata": meta,
                "timestamp": stamp,
            }
        )[1:]
    return (
        f'{{"type":"notification","operation":"{operation}","subscription_id":"',
        body,
    )


def prepare(
    sub: Subscription, change: Change
) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
    """What one subscription is told of a change: (operation, data, metadata), or ``None``."""
    if change.seq and change.seq <= sub.since:
        return None
    outcome = classify(sub, change)
    if outcome is None:
        return None
    operation, row, meta = outcome
    if change.seq:
        meta["seq"] = change.seq
        meta["epoch"] = change.epoch
    if change.batch_size:
        meta["txid"] = change.txid
        meta["batch_index"] = change.batch_index
        meta["batch_size"] = change.batch_size
    return operation, project(row, sub.columns, sub.entity.primary_key), meta
