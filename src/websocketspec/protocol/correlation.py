r"""Client bookkeeping as plain state: request ids, replies, subscriptions, positions.

A :class:`Correlation` is everything a client must remember about one logical session
with a server, with no I/O, no event loop and no futures, so that it can be tested by
feeding it messages. A client drives it like this (the call order matters)::

    corr = Correlation()
    message = corr.request("read", "users", options={...})   # builds + tracks the id
    ... send message ...
    for event in corr.receive(decoded_frame):                 # every inbound message
        ...                                                   # Reply, Notify, ...
    corr.forget(message["id"])                                # the caller gave up waiting
    lost = corr.connection_lost()                             # the socket died
    for message in corr.resubscribe():                        # once reconnected
        ... send message ...

Theory of operation
-------------------

**Requests.** Every message the client sends with an ``id`` is a :class:`Pending`
record until its answer arrives (``receive`` turns it into a :class:`Reply` and drops
the record), the caller gives up (``forget``), or the connection is lost
(``connection_lost`` returns the records whose outcome is now unknown). An answer whose
id is not pending (late, after ``forget``) becomes :class:`Unroutable`.

**Subscriptions.** A subscription has a stable local ``key`` (the caller's handle) and,
while the server holds it, the server's ``subscription_id`` (``server_id``), which
changes at every reconnect. Its states::

    subscribing --success--> active --connection_lost--> detached --resubscribe--> subscribing
        |                      |  \--revoked (token_expired)--> detached
        |                      \--revoked / unsubscribe / close()--> closed
        \--failure: closed (and a final "revoked" if it was ever active)

    A subscribe in flight when the connection is lost is detached too, and sent again.

Invariants: ``server_id`` is set exactly when the state is ``active``; a notification is
routed only through the ``server_id`` of an active subscription, so nothing from an old
connection or an ended subscription reaches the caller. The server binds the new
``server_id`` when the subscribe reply is *received* (not when a caller resumes), so a
notification right behind the reply is routed.

**Positions and gaps.** Each notification's ``metadata.seq``/``metadata.epoch`` is the
subscription's position in the entity's change stream; a notification at or before the
known position of the same epoch is a duplicate (a replay overlap) and is dropped. When
a subscription is re-established after a connection loss, the subscribe carries
``options.resume_from`` with that position. A server that knows positions (one that
put ``data.position`` in any subscribe answer, or answers ``data.resumed: true``) replays
what was missed or sends ``reset``, which closes the gap. With any other server the
client cannot know what it missed, and the caller gets a synthetic ``reset``
notification (``metadata.reason: "reconnected"``): never a silent gap.

**Abandoned subscribes.** A subscribe the caller stopped waiting for is remembered; if
its success reply comes late, :class:`Abandoned` tells the client to unsubscribe the
server's orphan.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

import msgspec

__all__ = [
    "Abandoned",
    "Correlation",
    "ErrorReply",
    "Event",
    "Notify",
    "Pending",
    "Position",
    "Reply",
    "SubscriptionState",
    "SubscriptionStatus",
    "TokenExpired",
    "Unroutable",
    "build_options",
    "normalize_record_id",
]

RESET = "reset"
REVOKED = "revoked"
TOKEN_EXPIRED = "token_expired"
RECONNECTED = "reconnected"
"""``metadata.reason`` of the client's own ``reset`` after a reconnect without replay."""


@dataclass(frozen=True, slots=True)
class Position:
    """A place in an entity's change stream: ``seq`` within ``epoch``."""

    seq: int
    epoch: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """The ``{"seq", "epoch"}`` object of ``options.resume_from``."""
        return {"seq": self.seq, "epoch": self.epoch}

    @classmethod
    def from_wire(cls, value: Any) -> Position | None:
        """Read ``{"seq": N, "epoch": "…"}``; ``None`` when it is not one."""
        if not isinstance(value, Mapping):
            return None
        seq = value.get("seq")
        epoch = value.get("epoch")
        if not isinstance(seq, int) or isinstance(seq, bool):
            return None
        return cls(seq, epoch if isinstance(epoch, str) else None)


class SubscriptionStatus(StrEnum):
    """Where a subscription stands; see the module docstring's diagram."""

    SUBSCRIBING = "subscribing"
    ACTIVE = "active"
    DETACHED = "detached"
    CLOSED = "closed"


@dataclass(slots=True)
class SubscriptionState:
    """One subscription as the client remembers it across connections."""

    key: str
    """The caller's handle; never changes."""
    entity: str
    schema: str | None
    options: dict[str, Any]
    """The options the caller subscribed with (resubscribes send them again)."""
    status: SubscriptionStatus = SubscriptionStatus.SUBSCRIBING
    server_id: str | None = None
    """The server's ``subscription_id`` while active."""
    position: Position | None = None
    """The last position seen (a notification's, or a snapshot's)."""
    attempts: int = 0
    """Subscribe messages sent so far."""
    was_active: bool = False
    """Whether the server ever accepted it (a later subscribe is a re-subscribe)."""
    request_id: str | None = None
    """The id of the subscribe message in flight."""
    resuming: bool = False
    """Whether the subscribe in flight carries ``resume_from``."""
    snapshot: Any = None
    """``data.rows`` of the last subscribe reply, when a snapshot was asked for."""


@dataclass(frozen=True, slots=True)
class Pending:
    """A message sent with an ``id`` and not answered yet."""

    id: str
    type: str
    operation: str
    subscription: str | None = None
    """The local key, for ``subscribe`` and ``unsubscribe``."""
    internal: bool = False
    """Sent by the client itself (re-subscribe, token refresh), not by a caller."""


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """The ``error`` of a ``success: false`` answer."""

    code: str
    message: str
    details: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to a pending message (``response`` or ``pong``)."""

    pending: Pending
    message: dict[str, Any]

    @property
    def success(self) -> bool:
        """``True`` unless the server answered ``success: false``."""
        return self.message.get("success", True) is not False

    @property
    def data(self) -> Any:
        """The answer's ``data``."""
        return self.message.get("data")

    @property
    def metadata(self) -> dict[str, Any]:
        """The answer's ``metadata`` (empty when absent)."""
        return metadata_of(self.message)

    @property
    def error(self) -> ErrorReply | None:
        """The error of a failed answer, ``None`` on success."""
        if self.success:
            return None
        return error_of(self.message)


@dataclass(frozen=True, slots=True)
class Notify:
    """A notification for one subscription (by its local key).

    ``final`` means the subscription ended with it (``revoked``, or a re-subscribe the
    server refused).
    """

    key: str
    message: dict[str, Any]
    final: bool = False

    @property
    def operation(self) -> str:
        """``create``, ``update``, ``delete``, ``reset`` or ``revoked``."""
        return str(self.message.get("operation"))


@dataclass(frozen=True, slots=True)
class TokenExpired:
    """The server's ``token_expired`` notice: send an ``auth`` within the grace period."""

    grace_period: float | None
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Abandoned:
    """A subscribe the caller gave up on succeeded late: unsubscribe ``server_id``."""

    server_id: str


@dataclass(frozen=True, slots=True)
class Unroutable:
    """A message that belongs to nobody (late answer, unknown subscription, …)."""

    message: Any
    reason: str


Event: TypeAlias = Reply | Notify | TokenExpired | Abandoned | Unroutable


def error_of(message: Mapping[str, Any]) -> ErrorReply:
    """The :class:`ErrorReply` of a failed answer, tolerant of odd shapes."""
    error = message.get("error")
    if not isinstance(error, Mapping):
        return ErrorReply("unknown_error", "the server answered success: false")
    details = error.get("details")
    return ErrorReply(
        str(error.get("code") or "unknown_error"),
        str(error.get("message") or ""),
        dict(details) if isinstance(details, Mapping) else None,
    )


def metadata_of(message: Mapping[str, Any]) -> dict[str, Any]:
    """A message's ``metadata`` object (empty when absent or not an object)."""
    meta = message.get("metadata")
    return meta if isinstance(meta, dict) else {}


def normalize_record_id(record_id: Any) -> str | dict[str, Any]:
    """``record_id`` as the wire wants it: a string, or an object for composite keys."""
    if isinstance(record_id, Mapping):
        return dict(record_id)
    if isinstance(record_id, bool) or record_id is None:
        raise TypeError(
            f"expected a record id (str, int or mapping), got {record_id!r}"
        )
    return str(record_id)


def _builtins(value: Any) -> Any:
    return msgspec.to_builtins(value)


def _filter(item: Any) -> dict[str, Any]:
    if isinstance(item, tuple | list):
        if len(item) not in (2, 3):
            raise ValueError(
                f"expected a filter (column, operator[, value]), got {item!r}"
            )
        column, operator, *rest = item
        result: dict[str, Any] = {"column": column, "operator": operator}
        if rest:
            result["value"] = _builtins(rest[0])
        return result
    built = _builtins(item)
    if not isinstance(built, dict):
        raise TypeError(f"expected a filter mapping or FilterOption, got {item!r}")
    return built


def _sort(item: Any) -> dict[str, Any]:
    if isinstance(item, str):
        if item.startswith("-"):
            return {"column": item[1:], "direction": "desc"}
        return {"column": item, "direction": "asc"}
    built = _builtins(item)
    if not isinstance(built, dict):
        raise TypeError(f"expected a sort column, mapping or SortOption, got {item!r}")
    return built


def build_options(
    options: Mapping[str, Any] | Any | None = None,
    *,
    filters: Iterable[Any] | None = None,
    columns: Sequence[str] | None = None,
    sort: Iterable[Any] | str | None = None,
    limit: int | None = None,
    offset: int | None = None,
    preload: Iterable[Any] | None = None,
) -> dict[str, Any] | None:
    """Merge an ``options`` value and keyword options into the wire's ``options`` object.

    Filters may be mappings, ``FilterOption`` values or ``(column, operator, value)``
    tuples; sort entries may be ``"name"`` / ``"-name"`` (descending), mappings or
    ``SortOption`` values. Keywords win over keys of ``options``. Returns ``None`` when
    nothing is set.
    """
    merged: dict[str, Any] = {}
    if options is not None:
        built = _builtins(options)
        if not isinstance(built, dict):
            raise TypeError(f"expected options to be a mapping, got {options!r}")
        merged.update(built)
    if filters is not None:
        merged["filters"] = [_filter(item) for item in filters]
    if columns is not None:
        if isinstance(columns, str):
            raise TypeError("expected columns to be a list of names, got a string")
        merged["columns"] = list(columns)
    if sort is not None:
        merged["sort"] = (
            [_sort(sort)] if isinstance(sort, str) else list(map(_sort, sort))
        )
    if limit is not None:
        merged["limit"] = limit
    if offset is not None:
        merged["offset"] = offset
    if preload is not None:
        merged["preload"] = [_builtins(item) for item in preload]
    return merged or None


def notice(
    sub: SubscriptionState, operation: str, reason: str, text: str, data: Any = None
) -> dict[str, Any]:
    """A notification the client makes up itself for ``sub`` (``reset``, ``revoked``).

    It has the shape of the server's, with ``metadata.reason`` and ``metadata.message``.
    """
    return {
        "type": "notification",
        "operation": operation,
        "subscription_id": sub.server_id,
        "schema": sub.schema,
        "entity": sub.entity,
        "data": data,
        "metadata": {"reason": reason, "message": text},
    }


def _reconnected_notice(sub: SubscriptionState, rows: Any) -> dict[str, Any]:
    return notice(
        sub,
        RESET,
        RECONNECTED,
        "the connection was re-established; changes made meanwhile "
        "may have been missed: read again",
        None if rows is None else {"rows": rows},
    )


def _ended_notice(sub: SubscriptionState, error: ErrorReply) -> dict[str, Any]:
    # Made once the subscription is closed, so its subscription_id is None.
    return notice(sub, REVOKED, error.code, error.message)


@dataclass(slots=True)
class Correlation:
    """The pure state of one client session; see the module docstring.

    Args:
        prefix: prepended to every generated id (``"c1"``, ``"c2"``, …), to tell
            several clients apart in server logs.
        resume: send ``options.resume_from`` when re-subscribing with a known position.
    """

    prefix: str = "c"
    resume: bool = True
    pending: dict[str, Pending] = field(default_factory=dict)
    subscriptions: dict[str, SubscriptionState] = field(default_factory=dict)
    duplicates: int = 0
    """Notifications dropped because their position was already seen."""
    server_resumes: bool = False
    """Whether the server answered a subscribe with ``data.position``: such a server
    honours ``resume_from`` (it replays, or sends ``reset``)."""
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _sub_keys: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _by_server: dict[str, str] = field(default_factory=dict)
    _abandoned: set[str] = field(default_factory=set)

    # -- ids and requests ---------------------------------------------------------

    def next_id(self) -> str:
        """A fresh message id, unique for this session."""
        return f"{self.prefix}{next(self._ids)}"

    def track(
        self,
        message: dict[str, Any],
        *,
        subscription: str | None = None,
        internal: bool = False,
    ) -> Pending:
        """Remember ``message`` (which gets an ``id`` if it has none) until answered."""
        if "id" not in message or message["id"] is None:
            message["id"] = self.next_id()
        msg_id = message["id"]
        if not isinstance(msg_id, str):
            raise TypeError(f"expected a string id, got {msg_id!r}")
        if msg_id in self.pending:
            raise ValueError(f"id {msg_id!r} is already pending")
        record = Pending(
            msg_id,
            str(message.get("type")),
            str(message.get("operation", message.get("type"))),
            subscription,
            internal,
        )
        self.pending[msg_id] = record
        return record

    def request(
        self,
        operation: str,
        entity: str | None = None,
        *,
        schema: str | None = None,
        record_id: Any = None,
        data: Any = None,
        options: Mapping[str, Any] | None = None,
        internal: bool = False,
    ) -> dict[str, Any]:
        """Build a ``type: "request"`` message and track it; returns the message."""
        message: dict[str, Any] = {
            "id": self.next_id(),
            "type": "request",
            "operation": operation,
        }
        if schema is not None:
            message["schema"] = schema
        if entity is not None:
            message["entity"] = entity
        if record_id is not None:
            message["record_id"] = normalize_record_id(record_id)
        if data is not None:
            message["data"] = data
        if options:
            message["options"] = dict(options)
        self.track(message, internal=internal)
        return message

    def ping(self) -> dict[str, Any]:
        """Build and track a ``ping`` message (answered by ``pong``)."""
        message: dict[str, Any] = {"id": self.next_id(), "type": "ping"}
        self.track(message)
        return message

    def auth(self, token: str) -> dict[str, Any]:
        """Build and track the in-band ``auth`` request that refreshes the token."""
        return self.request("auth", data={"token": token}, internal=True)

    def forget(self, msg_id: str) -> Pending | None:
        """Stop waiting for ``msg_id``'s answer (timeout, cancellation)."""
        record = self.pending.pop(msg_id, None)
        if record is not None and record.operation == "subscribe":
            self._abandoned.add(msg_id)
        return record

    # -- subscriptions ------------------------------------------------------------

    def subscribe(
        self,
        entity: str,
        *,
        schema: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> tuple[SubscriptionState, dict[str, Any]]:
        """Create a subscription and build its first subscribe message (tracked)."""
        key = f"s{next(self._sub_keys)}"
        sub = SubscriptionState(key, entity, schema, dict(options or {}))
        self.subscriptions[key] = sub
        return sub, self._subscribe_message(sub)

    def _subscribe_message(self, sub: SubscriptionState) -> dict[str, Any]:
        options = dict(sub.options)
        sub.resuming = False
        if self.resume and sub.position is not None and sub.was_active:
            options.pop("snapshot", None)
            options["resume_from"] = sub.position.to_wire()
            sub.resuming = True
        message: dict[str, Any] = {
            "id": self.next_id(),
            "type": "subscription",
            "operation": "subscribe",
        }
        if sub.schema is not None:
            message["schema"] = sub.schema
        message["entity"] = sub.entity
        if options:
            message["options"] = options
        sub.status = SubscriptionStatus.SUBSCRIBING
        sub.server_id = None
        sub.attempts += 1
        sub.request_id = message["id"]
        self.track(message, subscription=sub.key, internal=sub.was_active)
        return message

    def resubscribe(self) -> list[dict[str, Any]]:
        """Subscribe messages for every detached subscription (after a reconnect)."""
        return [
            self._subscribe_message(sub)
            for sub in list(self.subscriptions.values())
            if sub.status is SubscriptionStatus.DETACHED
        ]

    def unsubscribe(self, key: str) -> dict[str, Any] | None:
        """Close a subscription locally; the unsubscribe message to send, if any.

        From now on nothing is routed to ``key``. Returns ``None`` when the server holds
        nothing to unsubscribe (the subscription was not active).
        """
        sub = self.subscriptions.pop(key, None)
        if sub is None:
            return None
        server_id = sub.server_id
        if sub.status is SubscriptionStatus.SUBSCRIBING and sub.request_id is not None:
            self.forget(sub.request_id)
        self._close(sub)
        if server_id is None:
            return None
        return self._unsubscribe_message(server_id, subscription=key)

    def unsubscribe_orphan(self, server_id: str) -> dict[str, Any]:
        """The (tracked, internal) unsubscribe of an :class:`Abandoned` subscription."""
        return self._unsubscribe_message(server_id, internal=True)

    def _unsubscribe_message(
        self,
        server_id: str,
        *,
        subscription: str | None = None,
        internal: bool = False,
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "id": self.next_id(),
            "type": "subscription",
            "operation": "unsubscribe",
            "subscription_id": server_id,
        }
        self.track(message, subscription=subscription, internal=internal)
        return message

    def _close(self, sub: SubscriptionState) -> None:
        self._unbind(sub, SubscriptionStatus.CLOSED)
        self.subscriptions.pop(sub.key, None)

    def _detach(self, sub: SubscriptionState) -> None:
        self._unbind(sub, SubscriptionStatus.DETACHED)

    def _unbind(self, sub: SubscriptionState, status: SubscriptionStatus) -> None:
        """Take ``sub`` off the server's ids: nothing is routed to it any more."""
        if sub.server_id is not None:
            self._by_server.pop(sub.server_id, None)
        sub.server_id = None
        sub.request_id = None
        sub.status = status

    # -- connection ---------------------------------------------------------------

    def connection_lost(self) -> list[Pending]:
        """The socket is gone: detach every subscription, drop every pending record.

        Returns the records a caller is waiting for (not the client's own), whose
        outcome is now unknown. Subscribes in flight are not among them: their
        subscriptions are detached and re-subscribed like the active ones.
        """
        lost = [
            record
            for record in self.pending.values()
            if not record.internal and record.operation != "subscribe"
        ]
        self.pending.clear()
        self._abandoned.clear()
        for sub in self.subscriptions.values():
            self._detach(sub)
        return lost

    def close(self) -> list[SubscriptionState]:
        """End the session: every subscription is closed; returns them."""
        subs = list(self.subscriptions.values())
        for sub in subs:
            self._close(sub)
        self.pending.clear()
        self._abandoned.clear()
        return subs

    # -- inbound ------------------------------------------------------------------

    def receive(self, message: Any) -> list[Event]:
        """Route one decoded inbound message; returns what it means, in order."""
        if not isinstance(message, dict):
            return [Unroutable(message, "not a JSON object")]
        kind = message.get("type")
        if kind == "notification":
            return self._notification(message)
        if kind in ("response", "pong"):
            return self._answer(message)
        return [Unroutable(message, f"unexpected message type {kind!r}")]

    def _answer(self, message: dict[str, Any]) -> list[Event]:
        msg_id = message.get("id")
        record = self.pending.pop(msg_id, None) if isinstance(msg_id, str) else None
        if record is None:
            if isinstance(msg_id, str) and msg_id in self._abandoned:
                self._abandoned.discard(msg_id)
                data = message.get("data")
                if message.get("success") is True and isinstance(data, dict):
                    server_id = data.get("subscription_id")
                    if isinstance(server_id, str):
                        return [Abandoned(server_id)]
                return []
            return [Unroutable(message, "no request is waiting for this id")]
        reply = Reply(record, message)
        if record.operation == "subscribe" and record.subscription is not None:
            return self._subscribed(reply)
        return [reply]

    def _subscribed(self, reply: Reply) -> list[Event]:
        key = reply.pending.subscription
        sub = self.subscriptions.get(key) if key is not None else None
        if sub is None or sub.request_id != reply.pending.id:
            return [reply]
        events: list[Event] = [reply]
        data = reply.data if isinstance(reply.data, dict) else {}
        server_id = data.get("subscription_id")
        if reply.success and not isinstance(server_id, str):
            error: ErrorReply | None = ErrorReply(
                "invalid_message", "the subscribe answer carried no subscription_id"
            )
        else:
            error = reply.error
        if error is not None or not isinstance(server_id, str):
            self._close(sub)
            if sub.was_active and error is not None:
                events.append(Notify(sub.key, _ended_notice(sub, error), final=True))
            return events
        resubscribed = sub.was_active
        sub.server_id = server_id
        sub.was_active = True
        sub.status = SubscriptionStatus.ACTIVE
        sub.request_id = None
        self._by_server[server_id] = sub.key
        rows = data.get("rows")
        if "rows" in data:
            sub.snapshot = rows
        position = Position.from_wire(data.get("position"))
        if position is not None:
            self.server_resumes = True
        resumed = sub.resuming and (self.server_resumes or data.get("resumed") is True)
        if resumed:
            # The replay follows; the reply's position is the stream's head, which
            # would mark the replayed notifications as duplicates.
            return events
        if position is not None:
            sub.position = position
        if resubscribed:
            events.append(Notify(sub.key, _reconnected_notice(sub, rows)))
        return events

    def _notification(self, message: dict[str, Any]) -> list[Event]:
        server_id = message.get("subscription_id")
        operation = message.get("operation")
        if server_id is None:
            if operation == TOKEN_EXPIRED:
                data = message.get("data")
                grace = data.get("grace_period") if isinstance(data, dict) else None
                return [
                    TokenExpired(
                        float(grace)
                        if isinstance(grace, int | float)
                        and not isinstance(grace, bool)
                        else None,
                        message,
                    )
                ]
            return [Unroutable(message, "a connection-level notification")]
        key = self._by_server.get(server_id) if isinstance(server_id, str) else None
        sub = self.subscriptions.get(key) if key is not None else None
        if sub is None:
            return [Unroutable(message, "no live subscription has this id")]
        if operation == REVOKED:
            meta = message.get("metadata")
            reason = meta.get("reason") if isinstance(meta, dict) else None
            if reason == TOKEN_EXPIRED:
                # The server revokes everything and closes with 4001 when a token was
                # not refreshed in time; the reconnect (with a fresh token) brings the
                # subscription back, and the caller hears of the gap then.
                self._detach(sub)
                return []
            self._close(sub)
            return [Notify(sub.key, message, final=True)]
        if operation == RESET:
            sub.position = None
            return [Notify(sub.key, message)]
        meta = message.get("metadata")
        position = Position.from_wire(meta) if isinstance(meta, dict) else None
        if position is not None:
            last = sub.position
            if (
                last is not None
                and last.epoch == position.epoch
                and position.seq <= last.seq
            ):
                self.duplicates += 1
                return []
            sub.position = position
        return [Notify(sub.key, message)]
