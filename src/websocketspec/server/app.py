"""The ASGI application: a :class:`Handler` serves one WebSocket endpoint.

Mount it anywhere an ASGI app goes (Starlette/FastAPI ``WebSocketRoute``, Litestar,
Django's ASGI router) or serve it directly with uvicorn. It answers ``lifespan`` scopes
itself; where a host app does not forward lifespan, use :meth:`Handler.lifespan` or
let the handler start lazily on its first connection.

Per connection the handler runs one reader (this coroutine) and one writer task. The
reader decodes frames and starts a task per message, at most ``max_in_flight`` at once:
past that it stops reading, which pushes back on the client through TCP. The writer
drains the connection's outbox.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from http.cookies import SimpleCookie
from typing import Any, TypeAlias
from urllib.parse import parse_qsl

from websocketspec.adapters.base import Adapter, Change
from websocketspec.broker.base import Broker
from websocketspec.broker.memory import MemoryBroker
from websocketspec.broker.relay import Relay
from websocketspec.exceptions import (
    InvalidMessageError,
    LimitError,
    ProtocolError,
    UnauthorizedError,
)
from websocketspec.hooks import Handshake, HookContext, HookRegistry, HookType
from websocketspec.protocol.codec import Decoded, decode, encode, error_response
from websocketspec.protocol.values import coerce_row
from websocketspec.registry import ModelRegistry
from websocketspec.server.config import Config
from websocketspec.server.connection import Connection, State
from websocketspec.server.dispatch import Dispatcher, error_info
from websocketspec.server.limits import TokenBucket, is_origin_allowed
from websocketspec.server.subscriptions import Fanout, SubscriptionTable
from websocketspec.types import ASGIReceive, ASGISend, Scope

__all__ = [
    "FrameSource",
    "Handler",
    "handshake_from_scope",
    "parse_cookies",
    "parse_query",
]

FrameSource: TypeAlias = Callable[[], Awaitable[str | bytes | None]]
"""Returns the next frame (text, or bytes for a binary frame), or ``None`` at the end."""

log = logging.getLogger(__name__)


def parse_query(query: str) -> dict[str, str]:
    """Query-string parameters (the last of repeated names wins)."""
    return dict(parse_qsl(query, keep_blank_values=True))


def parse_cookies(header: str | None) -> dict[str, str]:
    """Cookies of a ``Cookie`` header; a malformed header gives none."""
    if not header:
        return {}
    jar: SimpleCookie = SimpleCookie()
    with suppress(Exception):
        jar.load(header)
    return {key: morsel.value for key, morsel in jar.items()}


def handshake_from_scope(scope: Scope) -> Handshake:
    """Read the handshake facts hooks may need from an ASGI websocket scope."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    client = scope.get("client")
    return Handshake(
        path=scope.get("path", ""),
        headers=headers,
        query_params=parse_query(scope.get("query_string", b"").decode("latin-1")),
        cookies=parse_cookies(headers.get("cookie")),
        client=(str(client[0]), int(client[1])) if client else None,
        subprotocols=tuple(scope.get("subprotocols", ())),
    )


def refusal_status(exc: ProtocolError) -> int:
    """The HTTP status that refuses a handshake for ``exc``."""
    if isinstance(exc, UnauthorizedError):
        return 401
    if isinstance(exc, LimitError):
        return 429
    return 403


class Handler:
    """Serves registered models over one WebSocket endpoint (an ASGI application).

    Args:
        adapter: does the database work (e.g. ``SQLAlchemyAdapter(engine)``).
        broker: carries changes between processes; in-process by default.
        config: limits and timeouts.

    Example:
        ``handler = Handler(SQLAlchemyAdapter(engine))``, then
        ``handler.registry.register_model("public.users", User)``.
    """

    def __init__(
        self,
        adapter: Adapter,
        *,
        broker: Broker | None = None,
        config: Config | None = None,
    ) -> None:
        self.adapter = adapter
        self.config = config or Config()
        self.registry = ModelRegistry(adapter)
        self.hooks = HookRegistry()
        self.broker = broker or MemoryBroker()
        self.subscriptions = SubscriptionTable()
        self.fanout = Fanout(
            self.subscriptions, self.hooks, identity=self.config.identity_of
        )
        self.relay = Relay(self.fanout.deliver, self.fanout.reset)
        self.dispatcher = Dispatcher(
            registry=self.registry,
            hooks=self.hooks,
            adapter=adapter,
            table=self.subscriptions,
            publish=self._publish,
            config=self.config,
            fanout=self.fanout,
        )
        self.dispatcher.relay = self.relay
        self.connections: dict[str, Connection] = {}
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._received = 0
        self._sent = 0

    # -- life cycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Start the adapter, the fan-out and the broker (idempotent)."""
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            await self.adapter.start()
            await self.fanout.start()
            if self.broker.shared:
                self.relay.log = await self.adapter.enable_log(
                    list(self.registry), notify=self.broker.notify_channel
                )
            await self.relay.start()
            if hasattr(self.broker, "decode_row"):
                self.broker.decode_row = self._decode_row
            await self.broker.start(self.relay)
            self._started = True

    async def stop(self) -> None:
        """Close every connection (1001), then stop the broker, fan-out and adapter."""
        if not self._started:
            return
        self._started = False
        for conn in list(self.connections.values()):
            conn.close(1001, "server shutting down")
        await self.broker.stop()
        await self.relay.stop()
        await self.fanout.stop()
        await self.dispatcher.stop()
        await self.adapter.stop()

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[Handler]:
        """Start on entry and stop on exit, for hosts that do not forward lifespan."""
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    def _decode_row(self, entity: str, raw: dict[str, Any]) -> dict[str, Any]:
        info = self.registry.entities.get(entity)
        return raw if info is None else coerce_row(raw, info.column_types)

    async def _publish(self, change: Change) -> None:
        await self.broker.publish(change)

    def stats(self) -> dict[str, Any]:
        """Open connections, subscriptions per entity and message counts."""
        return {
            "connections": len(self.connections),
            "subscriptions": self.subscriptions.counts(),
            "messages": {
                "received": self._received
                + sum(c.received for c in self.connections.values()),
                "sent": self._sent + sum(c.sent for c in self.connections.values()),
                "notifications": self.fanout.delivered,
            },
        }

    # -- ASGI -------------------------------------------------------------------------

    async def __call__(
        self, scope: Scope, receive: ASGIReceive, send: ASGISend
    ) -> None:
        """The ASGI entry point."""
        kind = scope["type"]
        if kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            await send(
                {
                    "type": "http.response.start",
                    "status": 426,
                    "headers": [(b"content-type", b"text/plain")],
                }
            )
            await send(
                {
                    "type": "http.response.body",
                    "body": b"this endpoint speaks WebSocket only\n",
                }
            )

    async def _lifespan(self, receive: ASGIReceive, send: ASGISend) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _refuse(self, scope: Scope, send: ASGISend, exc: ProtocolError) -> None:
        status = refusal_status(exc)
        if "websocket.http.response" in scope.get("extensions", {}):
            body = encode(
                {"error": {"code": exc.code, "message": exc.message}}
            ).encode()
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send(
                {"type": "websocket.close", "code": 1008, "reason": exc.message[:120]}
            )

    async def admit(self, handshake: Handshake) -> tuple[Connection, HookContext]:
        """Run the connect hooks for a handshake; the shells call this before upgrading.

        Raises:
            ProtocolError: a hook refused the connection.
        """
        await self.start()
        config = self.config
        if not is_origin_allowed(
            handshake.origin, handshake.headers.get("host"), config.allowed_origins
        ):
            log.info("refused a cross-origin handshake from %s", handshake.origin)
            raise ProtocolError(
                f"cross-origin WebSocket connections from {handshake.origin} are "
                "refused; allow the origin with Config(allowed_origins=(...))",
                code="origin_not_allowed",
            )
        if config.max_connections_per_client is not None and handshake.client:
            held = self._held(handshake.client[0])
            if held >= config.max_connections_per_client:
                raise LimitError(
                    f"this address holds {held} connections, the most allowed",
                    code="too_many_connections",
                )
        conn = Connection(
            handshake,
            max_queue=config.max_queue,
            max_queue_bytes=config.max_queue_bytes,
        )
        if config.max_messages_per_second is not None:
            conn.rate = TokenBucket(config.max_messages_per_second, config.rate_burst)
        ctx = HookContext(connection=conn, operation="connect")
        try:
            await self.hooks.run_before(HookType.CONNECT, ctx)
        except ProtocolError as exc:
            info = error_info(exc, "connect")
            log.info("connection refused by a connect hook: %s", info.message)
            raise
        return conn, ctx

    def _held(self, address: str) -> int:
        """Connections registered from one client address."""
        return sum(
            1
            for c in self.connections.values()
            if c.handshake.client and c.handshake.client[0] == address
        )

    async def serve_connection(
        self, conn: Connection, ctx: HookContext, next_frame: FrameSource
    ) -> None:
        """Serve an accepted connection until it closes, then release all it held.

        Args:
            conn: the connection :meth:`admit` returned, now upgraded.
            ctx: the connect hooks' context.
            next_frame: returns the next frame's text (bytes for a binary frame),
                or ``None`` once the client has gone.
        """
        self.connections[conn.id] = conn
        try:
            limit = self.config.max_connections_per_client
            client = conn.handshake.client
            if limit is not None and client and self._held(client[0]) > limit:
                # Handshakes admitted concurrently (connect hooks may await) can pass
                # admit()'s check together; those registered past the limit close.
                conn.close(1013, "too many connections from this address")
                return
            try:
                await self.hooks.run_after(HookType.CONNECT, ctx)
            except ProtocolError as exc:
                error_info(exc, "connect")
                conn.close(1008, exc.message[:120])
            del ctx  # not kept for the connection's life
            if conn.state is State.OPEN:
                await self._reader(conn, next_frame)
        finally:
            await self._release(conn)

    async def _websocket(
        self, scope: Scope, receive: ASGIReceive, send: ASGISend
    ) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        try:
            admitted = await self.admit(handshake_from_scope(scope))
        except ProtocolError as exc:
            await self._refuse(scope, send, exc)
            return
        conn = admitted[0]
        await send({"type": "websocket.accept", "subprotocol": admitted[1].subprotocol})
        writer = asyncio.create_task(
            self._writer(conn, send), name=f"websocketspec-writer-{conn.id}"
        )

        async def next_frame() -> str | bytes | None:
            while True:
                event = await receive()
                if event["type"] == "websocket.disconnect":
                    return None
                if event["type"] == "websocket.receive":
                    text = event.get("text")
                    return (
                        text if text is not None else bytes(event.get("bytes") or b"")
                    )

        # Only serve_connection holds the connect context, and lets go of it once the
        # connect hooks ran.
        serving = self.serve_connection(*admitted, next_frame)
        del admitted
        try:
            await serving
        finally:
            with suppress(
                asyncio.TimeoutError, OSError, RuntimeError, asyncio.CancelledError
            ):
                await asyncio.wait_for(asyncio.shield(writer), timeout=1.0)
            if not writer.done():
                writer.cancel()
                with suppress(asyncio.CancelledError, Exception):
                    await writer

    async def _reader(self, conn: Connection, next_frame: FrameSource) -> None:
        """Read until the client goes, the server closes, or the idle timeout.

        An idle connection costs this coroutine and the shell's read, nothing more: no
        task watches for the close. The connection cancels this reader when the server
        decides to close (:meth:`Connection.watch`), and the cancellation is taken back
        here; the idle timeout is a timer that closes the connection the same way.
        """
        reader = asyncio.current_task()
        if reader is None:  # pragma: no cover - a coroutine awaited outside a task
            raise RuntimeError("the reader must run in a task")
        config = self.config
        slots = asyncio.Semaphore(config.max_in_flight)
        timeout = config.idle_timeout
        idle = None if timeout is None else _IdleTimer(conn, timeout)
        conn.watch(reader)
        try:
            while True:
                frame = await next_frame()
                if frame is None:
                    conn.state = State.CLOSED
                    return
                # Once closing, a frame that arrived meanwhile is not run: its answer
                # could no longer be sent, so a write would commit unacknowledged.
                if conn.state is not State.OPEN:
                    return
                conn.received += 1
                conn.last_activity = time.monotonic()
                items = self._items(conn, frame)
                # Nothing of the last frame stays referenced while the connection idles.
                frame = None
                while items:
                    await slots.acquire()
                    self._spawn(conn, items.pop(0), slots)
        except asyncio.CancelledError:
            # Ours (the server closes) unless the task was also cancelled from outside.
            if not conn.unwatch() or reader.uncancel() > 0:
                raise
        finally:
            conn.unwatch()
            if idle is not None:
                idle.cancel()

    def _items(self, conn: Connection, frame: str | bytes) -> list[Decoded]:
        """Decode a frame, answering at once what must not run."""
        config = self.config
        if isinstance(frame, bytes):
            conn.send(error_response(None, error_info(_binary_error(), None)))
            return []
        # The limit is in bytes, as frames are: UTF-8 takes up to 4 per character.
        size = len(frame) if frame.isascii() else len(frame.encode())
        if size > config.max_message_size:
            error = LimitError(
                f"the message is larger than {config.max_message_size} bytes",
                code="message_too_large",
                details={"max_message_size": config.max_message_size},
            )
            conn.send(error_response(None, error_info(error, None)))
            return []
        items = decode(frame, max_batch=config.max_batch, max_depth=config.max_depth)
        if conn.rate is not None:
            for item in items:
                if item.message is not None and not conn.rate.take():
                    item.message = None
                    item.error = LimitError(
                        "too many messages; slow down",
                        code="rate_limited",
                        details={
                            "max_messages_per_second": config.max_messages_per_second
                        },
                    )
        return items

    def _spawn(self, conn: Connection, item: Decoded, slots: asyncio.Semaphore) -> None:
        task = asyncio.create_task(self.dispatcher.handle(conn, item))
        conn.tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            conn.tasks.discard(t)
            slots.release()

        task.add_done_callback(done)

    async def _writer(self, conn: Connection, send: ASGISend) -> None:
        try:
            while True:
                await conn.wait()
                for text in conn.take():
                    await send({"type": "websocket.send", "text": text})
                    conn.sent += 1
                text = ""  # the last frame is not kept while the connection idles
                if conn.state is State.CLOSING:
                    await send(
                        {
                            "type": "websocket.close",
                            "code": conn.close_code,
                            "reason": conn.close_reason,
                        }
                    )
                    conn.state = State.CLOSED
                    return
                if conn.state is State.CLOSED:
                    return
        except (OSError, RuntimeError, asyncio.CancelledError):
            conn.state = State.CLOSED
            raise
        except Exception:
            log.debug("writer of %s stopped", conn.id, exc_info=True)
            conn.state = State.CLOSED

    async def _release(self, conn: Connection) -> None:
        for sub_id in list(conn.subscriptions):
            self.dispatcher.drop_subscription(conn, sub_id)
        if conn.tasks:
            _, pending = await asyncio.wait(
                set(conn.tasks), timeout=self.config.close_timeout
            )
            for task in pending:
                task.cancel()
        # Also wakes the writer when the client already disconnected (state CLOSED):
        # otherwise it waits for frames that never come.
        conn.close(1000)
        self.connections.pop(conn.id, None)
        self._received += conn.received
        self._sent += conn.sent
        ctx = HookContext(connection=conn, operation="disconnect")
        try:
            await self.hooks.run_before(HookType.DISCONNECT, ctx)
            await self.hooks.run_after(HookType.DISCONNECT, ctx)
        except ProtocolError as exc:
            error_info(exc, "disconnect")


class _IdleTimer:
    """Closes a connection once it had no traffic either way for ``idle_timeout``.

    Requests in flight and messages sent (notifications included) count as traffic.
    """

    __slots__ = ("_conn", "_handle", "_timeout")

    def __init__(self, conn: Connection, timeout: float) -> None:
        self._conn = conn
        self._timeout = timeout
        self._handle = asyncio.get_running_loop().call_later(self._timeout, self._check)

    def _check(self) -> None:
        conn = self._conn
        if conn.tasks:
            delay = self._timeout
        else:
            quiet = time.monotonic() - conn.last_activity
            if quiet >= self._timeout:
                conn.close(1000, "idle timeout")
                return
            # Due again when the last traffic is ``idle_timeout`` old.
            delay = max(self._timeout - quiet, 0.001)
        self._handle = asyncio.get_running_loop().call_later(delay, self._check)

    def cancel(self) -> None:
        self._handle.cancel()


def _binary_error() -> ProtocolError:
    return InvalidMessageError("binary frames are not accepted; send JSON text frames")
