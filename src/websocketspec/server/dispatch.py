"""Request to hooks to adapter to response: the one place exceptions become errors.

Each decoded message is handled by :meth:`Dispatcher.handle`, which always answers:
either the operation's result or an error response with a stable code. Exceptions of
ours carry their code and client-safe message; database failures answer
``<operation>_error`` with a neutral message; anything unexpected is logged with its
traceback and answers ``<operation>_error`` (``internal_error`` outside an operation).

Ordering: a writer's response is queued before the change is published, and a
subscription joins the table only after its response is queued. Writes to one entity
are serialised from the write until the change is published, so that this process
publishes each entity's changes in commit order.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import msgspec

from websocketspec.adapters.base import (
    Adapter,
    Change,
    KeyTakenError,
    Remember,
    Write,
    WriteCheck,
)
from websocketspec.broker.relay import Relay
from websocketspec.exceptions import (
    HookError,
    InvalidMessageError,
    InvalidModelError,
    LimitError,
    NotFoundError,
    OperationError,
    ProtocolError,
    UnauthorizedError,
)
from websocketspec.hooks import HookContext, HookRegistry, HookType
from websocketspec.protocol.codec import (
    Decoded,
    encode,
    error_response,
    now,
    pong,
    response,
)
from websocketspec.protocol.filters import matches
from websocketspec.protocol.messages import (
    REQUEST_OPERATIONS,
    SUBSCRIPTION_OPERATIONS,
    ErrorInfo,
    Message,
    MessageType,
    Operation,
    QueryOptions,
)
from websocketspec.query import (
    build_read_query,
    build_where,
    parse_record_id,
    project,
    validate_columns,
    validate_data,
)
from websocketspec.registry import EntityInfo, ModelRegistry
from websocketspec.server.config import Config
from websocketspec.server.connection import Connection
from websocketspec.server.groups import GroupCommitter
from websocketspec.server.subscriptions import Fanout, Subscription, SubscriptionTable

__all__ = ["Authenticator", "Dispatcher", "error_info"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_fingerprint_encoder = msgspec.json.Encoder(order="sorted")
_CRUD = frozenset({"read", "create", "update", "delete"})
_OPERATIONS = {op.value: op for op in Operation}
_MAX_GROUP = 256
"""The most creates one grouped transaction holds."""


@dataclass(frozen=True, slots=True)
class _Create:
    """A create waiting for its group (see server/groups.py)."""

    conn: Connection
    msg: Message
    entity: EntityInfo
    write: Write
    check: WriteCheck


def error_info(exc: BaseException, operation: str | None) -> ErrorInfo:
    """Turn an exception into the error a client sees (and log what it must not)."""
    if isinstance(exc, HookError):
        log.error(
            "hook failed during %s",
            operation or "a message",
            exc_info=exc.__cause__ or exc,
        )
        return ErrorInfo(exc.code, exc.message, exc.details)
    if isinstance(exc, ProtocolError):
        return ErrorInfo(exc.code, exc.message, exc.details)
    if isinstance(exc, OperationError):
        return ErrorInfo(exc.code, exc.public_message)
    log.error("unexpected error during %s", operation or "a message", exc_info=exc)
    if operation in _CRUD:
        return ErrorInfo(f"{operation}_error", f"the {operation} failed")
    return ErrorInfo("internal_error", "an internal error occurred")


class Authenticator(Protocol):
    """Verifies the credentials of an ``auth`` message and sets the connection's identity."""

    async def authenticate(
        self, conn: Connection, credentials: dict[str, Any]
    ) -> dict[str, Any]:
        """Replace the connection's identity; returns the response's data.

        Raises:
            ProtocolError: the credentials are refused (``UnauthorizedError``).
        """
        ...


class Dispatcher:
    """Handles the messages of every connection."""

    def __init__(
        self,
        *,
        registry: ModelRegistry,
        hooks: HookRegistry,
        adapter: Adapter,
        table: SubscriptionTable,
        publish: Callable[[Change], Any],
        config: Config,
        fanout: Fanout,
    ) -> None:
        self.registry = registry
        self.hooks = hooks
        self.adapter = adapter
        self.table = table
        self._publish = publish
        self.config = config
        self.limits = config.limits
        self._locks: dict[str, asyncio.Lock] = {}
        self._groups: GroupCommitter[_Create] = GroupCommitter(
            self._create_group, max_group=_MAX_GROUP
        )
        self._abandoned: set[asyncio.Future[Any]] = set()
        self.relay: Relay | None = None
        """Stream positions and history (set by the handler)."""
        self.fanout: Fanout = fanout
        self.authenticator: Authenticator | None = None
        """Verifies the credentials of ``auth`` messages (see websocketspec.auth)."""

    async def handle(self, conn: Connection, item: Decoded) -> None:
        """Answer one decoded message on ``conn``; never raises."""
        msg = item.message
        if msg is None:
            error = item.error or InvalidMessageError("invalid message")
            conn.send(error_response(item.id, error_info(error, None)))
            return
        operation = msg.operation if isinstance(msg.operation, str) else None
        try:
            answer = await self._route(conn, msg)
            # Encoding is inside the try: a result that cannot be encoded (a hook put
            # a non-JSON value in it) must still get an answer.
            if answer is not None:
                self._reply(conn, answer)
        except Exception as exc:  # noqa: BLE001 - the one place errors become responses
            conn.send(error_response(msg.id, error_info(exc, operation)))

    def _reply(self, conn: Connection, answer: dict[str, Any]) -> None:
        """Send an answer, or ``response_too_large`` when it exceeds the limit."""
        text = encode(answer)
        limit = self.config.max_response_size
        # In bytes, as clients' frame limits are: UTF-8 takes up to 4 per character.
        size = len(text) if text.isascii() else len(text.encode())
        if size > limit:
            error = LimitError(
                f"the response would be {size} bytes, more than {limit}; "
                "ask for fewer rows (limit) or columns",
                code="response_too_large",
                details={"max_response_size": limit},
            )
            text = encode(error_response(answer.get("id"), error_info(error, None)))
        conn.send_text(text)

    def _reply_committed(
        self,
        conn: Connection,
        msg: Message,
        result: Any,
        operation: str,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Answer a committed write; its change is published whatever happens here."""
        try:
            self._reply(conn, response(msg.id, result, metadata))
        except Exception as exc:
            log.error(
                "the result of a committed %s could not be encoded",
                operation,
                exc_info=exc,
            )
            error = ErrorInfo(
                f"{operation}_error",
                f"the {operation} was applied, but its result could not be sent",
            )
            conn.send(error_response(msg.id, error))

    async def _bounded(self, operation: str, work: Awaitable[T]) -> T:
        """Await database work, failing with ``<operation>_error`` at the timeout.

        The answer does not wait for the cancelled work to unwind (a driver may take
        seconds to close a connection it was cut off on): the work is cancelled in the
        background and awaited by :meth:`stop`.
        """
        task = asyncio.ensure_future(work)
        try:
            done, _ = await asyncio.wait({task}, timeout=self.config.request_timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task in done:
            return task.result()
        task.cancel()
        self._abandoned.add(task)
        task.add_done_callback(self._forget)
        log.warning("%s timed out after %ss", operation, self.config.request_timeout)
        raise OperationError(
            operation, "timed out", public_message=f"the {operation} timed out"
        )

    def _forget(self, task: asyncio.Future[Any]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug(
                "abandoned database work ended with an error", exc_info=task.exception()
            )

    async def stop(self) -> None:
        """Wait for grouped writes, and for database work abandoned at its timeout."""
        await self._groups.stop()
        if self._abandoned:
            await asyncio.gather(*self._abandoned, return_exceptions=True)

    async def _route(self, conn: Connection, msg: Message) -> dict[str, Any] | None:
        kind = msg.type
        if kind is None:
            raise InvalidMessageError("type is required")
        if kind == MessageType.PING:
            return pong(msg.id)
        if kind not in (MessageType.REQUEST, MessageType.SUBSCRIPTION):
            raise InvalidMessageError(
                f"type must be 'request', 'subscription' or 'ping', got {kind!r}",
                code="invalid_message_type",
            )
        if msg.id is None or msg.id == "":
            raise InvalidMessageError("id is required")
        if not msg.operation:
            raise InvalidMessageError("operation is required")
        op = _OPERATIONS.get(msg.operation)
        allowed = (
            REQUEST_OPERATIONS
            if kind == MessageType.REQUEST
            else SUBSCRIPTION_OPERATIONS
        )
        if op is None or op not in allowed:
            names = ", ".join(sorted(str(o) for o in allowed))
            raise InvalidMessageError(
                f"operation {msg.operation!r} is not valid for type {kind!r}; expected one of {names}",
                code="invalid_operation",
            )
        if op is Operation.UNSUBSCRIBE:
            return await self._unsubscribe(conn, msg)
        if op is Operation.AUTH:
            return await self._auth(conn, msg)
        if not msg.entity:
            raise InvalidMessageError("entity is required")
        entity = self.registry.get(msg.entity, msg.schema)
        if op is Operation.UPDATE and not isinstance(msg.data, dict):
            raise InvalidModelError("data must be an object holding the row's columns")
        if op is Operation.CREATE and not isinstance(msg.data, (dict, list)):
            raise InvalidModelError(
                "data must be an object holding the row's columns (or a list of them)"
            )
        ctx = HookContext(
            connection=conn,
            operation=op.value,
            schema=entity.schema,
            entity=entity.name,
            record_id=msg.record_id,
            options=msg.options if msg.options is not None else QueryOptions(),
            data=msg.data if isinstance(msg.data, (dict, list)) else None,
            message=msg,
        )
        if op is Operation.SUBSCRIBE:
            original = msgspec.convert(msgspec.to_builtins(ctx.options), QueryOptions)
            await self.hooks.run_before(HookType.HANDLE, ctx)
            await self._subscribe(conn, msg, entity, ctx, original)
            return None
        await self.hooks.run_before(HookType.HANDLE, ctx)
        await self.hooks.run_before(HookType(op.value), ctx)
        if op is Operation.READ:
            return await self._read(msg, entity, ctx)
        if op is Operation.META:
            return await self._meta(msg, entity, ctx)
        await self._write(conn, msg, op, entity, ctx)
        return None

    # -- reads --------------------------------------------------------------------

    async def _read(
        self, msg: Message, entity: EntityInfo, ctx: HookContext
    ) -> dict[str, Any]:
        query = build_read_query(
            self.registry, entity, ctx.options, ctx.security_filters, self.limits
        )
        keep = tuple(p.relation.name for p in query.preload)
        if ctx.record_id is not None:
            key = parse_record_id(entity, ctx.record_id)
            row = await self._bounded("read", self.adapter.read_one(entity, key, query))
            if row is None:
                raise NotFoundError(f"no {entity.name} row has id {ctx.record_id!r}")
            ctx.result = project(row, query.columns, keep)
            await self.hooks.run_after(HookType.READ, ctx)
            await self.hooks.run_after(HookType.HANDLE, ctx)
            return response(msg.id, ctx.result)
        rows, total = await self._bounded("read", self.adapter.read_many(entity, query))
        ctx.result = [project(row, query.columns, keep) for row in rows]
        await self.hooks.run_after(HookType.READ, ctx)
        await self.hooks.run_after(HookType.HANDLE, ctx)
        result = ctx.result if ctx.result is not None else []
        count = len(result) if isinstance(result, list) else 1
        metadata = {
            "total": total,
            "count": count,
            "limit": query.limit,
            "offset": query.offset,
        }
        return response(msg.id, result, metadata)

    async def _meta(
        self, msg: Message, entity: EntityInfo, ctx: HookContext
    ) -> dict[str, Any]:
        relations = []
        for rel in entity.relations.values():
            target = self.registry.for_model(rel.target)
            if target is None:
                continue
            relations.append(
                {
                    "name": rel.name,
                    "kind": rel.kind,
                    "schema": target.schema,
                    "entity": target.name,
                    "local_columns": list(rel.local_columns),
                    "remote_columns": list(rel.remote_columns),
                }
            )
        ctx.result = {
            "schema": entity.schema,
            "entity": entity.name,
            "primary_key": list(entity.primary_key),
            "columns": [
                {
                    "name": c.name,
                    "type": c.type.value,
                    "nullable": c.nullable,
                    "primary_key": c.primary_key,
                    "default": c.default,
                }
                for c in entity.columns.values()
            ],
            "relations": relations,
        }
        await self.hooks.run_after(HookType.META, ctx)
        await self.hooks.run_after(HookType.HANDLE, ctx)
        return response(msg.id, ctx.result)

    # -- writes -------------------------------------------------------------------

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def _write(
        self,
        conn: Connection,
        msg: Message,
        op: Operation,
        entity: EntityInfo,
        ctx: HookContext,
    ) -> None:
        write = self._plan(op, entity, ctx)
        remember = self._idempotency(conn, msg, entity, ctx)
        if remember is not None:
            stored = await self.adapter.remembered(remember)
            if stored is not None:
                self._answer_stored(conn, msg, remember, stored)
                return
            write = replace(write, remember=remember)
        guard = build_where(entity, [], ctx.security_filters, self.limits)
        hook_type = HookType(op.value)

        async def check(changes: list[Change]) -> Any:
            for change in changes:
                if change.new is not None and not matches(guard, change.new):
                    raise UnauthorizedError(
                        "the row would be outside what this connection may write"
                    )
            rows = [c.new if c.new is not None else c.old for c in changes]
            if write.bulk:
                ctx.result = [dict(row) for row in rows if row is not None]
            else:
                row = rows[0]
                ctx.result = dict(row) if row is not None else None
                if row is not None and ctx.record_id is None:
                    ctx.record_id = _key_of(entity, row)
            await self.hooks.run_after(hook_type, ctx)
            await self.hooks.run_after(HookType.HANDLE, ctx)
            return ctx.result

        if (
            op is Operation.CREATE
            and not write.bulk
            and write.remember is None
            and self.adapter.groups_creates
            # Grouped checks may run twice (see Adapter.create_group): hooks never do.
            and not self.hooks.has_after(HookType.CREATE)
            and not self.hooks.has_after(HookType.HANDLE)
        ):
            await self._groups.submit(
                entity.key, _Create(conn, msg, entity, write, check)
            )
            return
        async with self._lock(entity.key):
            try:
                outcome = await self._bounded(
                    op.value, self.adapter.write(entity, write, check)
                )
            except KeyTakenError:
                stored = await self.adapter.remembered(remember) if remember else None
                if remember is None or stored is None:
                    raise
                self._answer_stored(conn, msg, remember, stored)
                return
            if outcome is None:
                raise NotFoundError(f"no {entity.name} row has id {ctx.record_id!r}")
            await self._committed(conn, msg, write, *outcome)

    async def _committed(
        self,
        conn: Connection,
        msg: Message,
        write: Write,
        result: Any,
        changes: list[Change],
    ) -> None:
        """Answer a committed write, then publish its changes (under the entity's lock)."""
        metadata = (
            {"count": len(changes), "txid": changes[0].txid if changes else None}
            if write.bulk
            else None
        )
        self._reply_committed(conn, msg, result, write.operation, metadata)
        for change in changes:
            await self._publish(change)

    async def _create_group(
        self, key: str, creates: list[_Create]
    ) -> list[BaseException | None]:
        """Commit queued creates of one entity together (see server/groups.py)."""
        entity = creates[0].entity
        async with self._lock(key):
            try:
                outcomes = await self._bounded(
                    "create",
                    self.adapter.create_group(
                        entity, [(c.write, c.check) for c in creates]
                    ),
                )
            except Exception as exc:  # noqa: BLE001 - handed to the request(s)
                if len(creates) > 1 and _nothing_written(exc):
                    # One of them was refused and none was written: each alone.
                    return [await self._create_alone(entity, c) for c in creates]
                # Written or not, no one can tell (a timeout, a connection lost at
                # commit): running them again could write rows twice.
                return [exc] * len(creates)
            for create, (result, changes) in zip(creates, outcomes, strict=True):
                await self._committed(
                    create.conn, create.msg, create.write, result, changes
                )
        return [None] * len(creates)

    async def _create_alone(
        self, entity: EntityInfo, create: _Create
    ) -> BaseException | None:
        try:
            outcome = await self._bounded(
                "create", self.adapter.write(entity, create.write, create.check)
            )
        except Exception as exc:  # noqa: BLE001 - the request's own error
            return exc
        if outcome is not None:
            await self._committed(create.conn, create.msg, create.write, *outcome)
        return None

    def _plan(self, op: Operation, entity: EntityInfo, ctx: HookContext) -> Write:
        """Validate a write's data, key and filters into a :class:`Write`."""
        max_rows = self.config.max_bulk_rows
        if op is Operation.CREATE:
            if isinstance(ctx.data, list):
                if not ctx.data:
                    raise InvalidModelError("data must hold at least one row")
                if len(ctx.data) > max_rows:
                    raise LimitError(
                        f"a create may hold at most {max_rows} rows, got {len(ctx.data)}",
                        code="too_many_rows",
                        details={"max_rows": max_rows},
                    )
                rows = []
                for index, item in enumerate(ctx.data):
                    try:
                        rows.append(validate_data(entity, item, partial=False))
                    except ProtocolError as exc:
                        exc.details = {**(exc.details or {}), "index": index}
                        raise
                return Write("create", rows=tuple(rows), bulk=True)
            return Write(
                "create", rows=(validate_data(entity, ctx.data, partial=False),)
            )
        where = build_where(
            entity, ctx.options.filters, ctx.security_filters, self.limits
        )
        if ctx.record_id is None:
            if not entity.bulk:
                raise InvalidMessageError(
                    "record_id is required: multi-row updates and deletes are not "
                    f"enabled for {entity.name}",
                    details={"field": "record_id"},
                )
            if not ctx.options.filters:
                raise InvalidMessageError(
                    "a multi-row update or delete needs filters naming its rows",
                    details={"field": "options.filters"},
                )
            data = (
                validate_data(entity, ctx.data, partial=True)
                if op is Operation.UPDATE
                else None
            )
            return Write(op.value, data=data, where=where, limit=max_rows, bulk=True)
        key = parse_record_id(entity, ctx.record_id)
        data = (
            validate_data(entity, ctx.data, partial=True, key=key)
            if op is Operation.UPDATE
            else None
        )
        return Write(op.value, data=data, key=key, where=where)

    def _idempotency(
        self, conn: Connection, msg: Message, entity: EntityInfo, ctx: HookContext
    ) -> Remember | None:
        key = (msg.metadata or {}).get("idempotency_key")
        if key is None:
            return None
        if not isinstance(key, str) or not key or len(key) > 255:
            raise InvalidMessageError(
                "metadata.idempotency_key must be a string of 1 to 255 characters",
                details={"field": "metadata.idempotency_key"},
            )
        identity = self.config.identity_of(conn)
        payload = [
            msg.operation,
            entity.key,
            msg.record_id,
            msg.data,
            msgspec.to_builtins(msg.options) if msg.options is not None else None,
        ]
        fingerprint = hashlib.sha256(_fingerprint_encoder.encode(payload)).hexdigest()
        return Remember(
            identity="" if identity is None else str(identity),
            key=key,
            fingerprint=fingerprint,
            window=self.config.idempotency_window,
        )

    def _answer_stored(
        self,
        conn: Connection,
        msg: Message,
        remember: Remember,
        stored: tuple[str, Any],
    ) -> None:
        fingerprint, result = stored
        if fingerprint != remember.fingerprint:
            raise ProtocolError(
                "this idempotency key was used for a different request",
                code="idempotency_conflict",
                details={"idempotency_key": remember.key},
            )
        self._reply(conn, response(msg.id, result, {"replayed": True}))

    # -- subscriptions ------------------------------------------------------------

    async def _subscribe(
        self,
        conn: Connection,
        msg: Message,
        entity: EntityInfo,
        ctx: HookContext,
        original: QueryOptions,
    ) -> None:
        # A subscription is a standing read: before-read hooks (row security) apply.
        await self.hooks.run_before(HookType.READ, ctx)
        await self.hooks.run_before(HookType.SUBSCRIBE, ctx)
        options = ctx.options
        if options.snapshot and options.resume_from is not None:
            raise InvalidMessageError(
                "snapshot and resume_from exclude each other: resume, or start afresh"
            )
        where = build_where(entity, options.filters, ctx.security_filters, self.limits)
        columns = validate_columns(entity, options.columns)
        query = (
            build_read_query(
                self.registry, entity, options, ctx.security_filters, self.limits
            )
            if options.snapshot
            else None
        )
        if len(conn.subscriptions) >= self.config.max_subscriptions:
            raise LimitError(
                f"a connection may hold at most {self.config.max_subscriptions} subscriptions",
                code="too_many_subscriptions",
            )
        sub = Subscription(
            id=f"sub-{uuid.uuid4().hex}",
            connection=conn,
            entity=entity,
            where=where,
            columns=columns,
            options=original,
        )
        ctx.subscription_id = sub.id
        ctx.result = {
            "subscription_id": sub.id,
            "schema": entity.schema,
            "entity": entity.name,
        }
        relay = self.relay
        key = entity.key
        # Local writes to the entity hold this lock from their write to their publish, so
        # under it the relay's position is exactly what the snapshot read sees (without
        # a change log), and no change can slip between the answer and the subscription.
        async with self._lock(key):
            delivered = relay.positions.get(key, 0) if relay is not None else 0
            epoch = relay.epochs.get(key, "") if relay is not None else ""
            epoch = epoch or (relay.default_epoch if relay is not None else "")
            resume = options.resume_from
            if query is not None:
                rows, total, position = await self._bounded(
                    "read", self.adapter.snapshot(entity, query)
                )
                seq, epoch = position if position is not None else (delivered, epoch)
                # The key always, as in notifications: the client merges them by it.
                keep = (
                    *entity.primary_key,
                    *(p.relation.name for p in query.preload),
                )
                ctx.result["rows"] = [project(row, query.columns, keep) for row in rows]
                ctx.result["position"] = {"seq": seq, "epoch": epoch}
                ctx.result["total"] = total
                sub.since = seq
            elif resume is not None:
                sub.since = resume.seq
                ctx.result["resumed"] = True
                # Every answer carries the head (docs/protocol.md); the replay follows.
                ctx.result["position"] = {"seq": delivered, "epoch": epoch}
            else:
                sub.since = delivered
                ctx.result["position"] = {"seq": delivered, "epoch": epoch}
            await self.hooks.run_after(HookType.SUBSCRIBE, ctx)
            await self.hooks.run_after(HookType.HANDLE, ctx)
            replay = (
                relay is not None
                and relay.log is not None
                # Now, not ``delivered``: changes of other processes may have been
                # delivered while the snapshot was read, before this joins the table.
                and (resume is not None or sub.since < relay.positions.get(key, 0))
            )
            if replay:
                sub.held = []
            self._reply(conn, response(msg.id, ctx.result))
            conn.subscriptions[sub.id] = sub
            self.table.add(sub)
        if replay:
            await self._catch_up(
                sub, resume.epoch if resume is not None else None, epoch
            )

    async def _catch_up(
        self, sub: Subscription, wanted: str | None, epoch: str
    ) -> None:
        """Replay what a subscription missed since ``sub.since``, or tell it to reset."""
        relay = self.relay
        if (
            relay is None or relay.log is None
        ):  # pragma: no cover - checked by the caller
            return
        key = sub.entity.key
        head = relay.positions.get(key, 0)
        if sub.since > head:
            # This process may not have heard of the latest changes yet (a client
            # resuming here from another server's position): the log is the judge.
            try:
                logged = (await relay.log.positions()).get(key)
            except Exception as exc:  # then the relay's head decides
                log.warning("reading the stream's head failed", exc_info=exc)
                logged = None
            if logged is not None and (not epoch or logged[1] == epoch):
                head = max(head, logged[0])
        changes: list[Change] = []
        reason: str | None = None
        if wanted and epoch and wanted != epoch:
            reason = "the change stream's history was replaced; read again"
        elif sub.since > head:
            reason = "that position is not in this change stream; read again"
        else:
            try:
                after = sub.since
                while True:
                    _, batch = await relay.log.changes_since(key, after)
                    if batch and batch[0].seq != after + 1:
                        reason = (
                            "the history no longer reaches back that far; read again"
                        )
                        break
                    if not batch:
                        if after < head:
                            reason = "the history no longer reaches back that far; read again"
                        break
                    changes.extend(batch)
                    after = batch[-1].seq
            except Exception as exc:
                log.warning("replay for %s failed", sub.id, exc_info=exc)
                reason = "the missed changes could not be read; read again"
        if reason is not None:
            self.fanout.reset_one(sub, reason)
            # From the head this subscription joined at: a ``since`` from another
            # epoch (or beyond the head) would swallow the next live changes.
            sub.since = head
            changes = []
        await self.fanout.replay(sub, changes)

    async def _unsubscribe(self, conn: Connection, msg: Message) -> dict[str, Any]:
        if not msg.subscription_id:
            raise NotFoundError(
                "subscription_id is required", code="missing_subscription_id"
            )
        sub = conn.subscriptions.get(msg.subscription_id)
        if sub is None:
            raise NotFoundError(
                f"this connection has no subscription {msg.subscription_id!r}",
                code="subscription_not_found",
            )
        ctx = HookContext(
            connection=conn,
            operation=Operation.UNSUBSCRIBE.value,
            schema=sub.entity.schema,
            entity=sub.entity.name,
            message=msg,
            subscription_id=sub.id,
        )
        await self.hooks.run_before(HookType.HANDLE, ctx)
        await self.hooks.run_before(HookType.UNSUBSCRIBE, ctx)
        self.drop_subscription(conn, sub.id)
        ctx.result = {"unsubscribed": True, "subscription_id": sub.id}
        await self.hooks.run_after(HookType.UNSUBSCRIBE, ctx)
        await self.hooks.run_after(HookType.HANDLE, ctx)
        return response(msg.id, ctx.result)

    async def _auth(self, conn: Connection, msg: Message) -> dict[str, Any]:
        if self.authenticator is None:
            raise InvalidMessageError(
                "this server does not accept auth messages", code="invalid_operation"
            )
        if not isinstance(msg.data, dict):
            raise InvalidModelError(
                'data must hold the credentials, e.g. {"token": "..."}'
            )
        data = await self.authenticator.authenticate(conn, msg.data)
        await self.revalidate(conn)
        return response(msg.id, data)

    async def revalidate(self, conn: Connection) -> None:
        """Re-run the subscribe hooks of every subscription for a changed identity.

        A subscription the hooks now refuse is revoked with a notification; one they
        accept takes the (possibly different) security filters of the new identity.
        """
        for sub in list(conn.subscriptions.values()):
            options = sub.options or QueryOptions()
            ctx = HookContext(
                connection=conn,
                operation=Operation.SUBSCRIBE.value,
                schema=sub.entity.schema,
                entity=sub.entity.name,
                options=msgspec.convert(msgspec.to_builtins(options), QueryOptions),
                subscription_id=sub.id,
            )
            try:
                for hook_type in (HookType.HANDLE, HookType.READ, HookType.SUBSCRIBE):
                    await self.hooks.run_before(hook_type, ctx)
                where = build_where(
                    sub.entity, ctx.options.filters, ctx.security_filters, self.limits
                )
                columns = validate_columns(sub.entity, ctx.options.columns)
            except ProtocolError as exc:
                self.revoke(conn, sub, exc.code, exc.message)
                continue
            self.table.remove(sub.id)
            sub.where, sub.columns = where, columns
            self.table.add(sub)

    def revoke(
        self, conn: Connection, sub: Subscription, code: str, message: str
    ) -> None:
        """End a subscription and tell its client why (``operation: "revoked"``)."""
        self.drop_subscription(conn, sub.id)
        conn.send(
            {
                "type": "notification",
                "operation": "revoked",
                "subscription_id": sub.id,
                "schema": sub.entity.schema,
                "entity": sub.entity.name,
                "data": None,
                "metadata": {"reason": code, "message": message},
                "timestamp": now(),
            }
        )

    def drop_subscription(self, conn: Connection, sub_id: str) -> None:
        """Remove one subscription of a connection."""
        conn.subscriptions.pop(sub_id, None)
        self.table.remove(sub_id)


def _nothing_written(exc: BaseException) -> bool:
    """Whether a failed write certainly wrote nothing (so it may be run again)."""
    return isinstance(exc, ProtocolError) or (
        isinstance(exc, OperationError) and exc.refused
    )


def _key_of(entity: EntityInfo, row: dict[str, Any]) -> Any:
    if len(entity.primary_key) == 1:
        return row.get(entity.primary_key[0])
    return {name: row.get(name) for name in entity.primary_key}
