"""The asyncio client: :mod:`websocketspec.protocol.correlation` driven by ``websockets``.

::

    async with connect("ws://127.0.0.1:8080/ws", token=get_token) as client:
        user = await client.create("users", {"name": "Ann", "email": "ann@example.com"})
        async for change in client.subscribe("users", filters=[("status", "eq", "active")]):
            ...

One supervisor task owns the socket: it reads every frame and hands it to the
:class:`~websocketspec.protocol.correlation.Correlation`, which says what it means
(a reply to wake a waiting request, a notification for a subscription, a token that
expired). When the socket dies the supervisor fails the requests whose outcome is
unknown, reconnects with exponential backoff and jitter (asking the token callable for
a fresh token), re-subscribes every live subscription — resuming from its last position
when the server can, otherwise telling the caller with a ``reset`` notification that
changes may have been missed — and then lets queued requests go.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import math
import random
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, TypeAlias

import msgspec

from websocketspec.exceptions import (
    ClientError,
    ConnectionClosedError,
    MissingDependencyError,
    RequestTimeoutError,
    ServerError,
)
from websocketspec.protocol.correlation import (
    RESET,
    Abandoned,
    Correlation,
    ErrorReply,
    Notify,
    Position,
    Reply,
    SubscriptionState,
    TokenExpired,
    Unroutable,
    build_options,
    metadata_of,
    notice,
)

try:
    from websockets.asyncio.client import ClientConnection
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("websockets", "client") from exc

__all__ = [
    "AsyncClient",
    "ConnectionState",
    "Notification",
    "Page",
    "Response",
    "SubscribeCall",
    "Subscription",
    "Token",
    "connect",
]

log = logging.getLogger("websocketspec.client")

Token: TypeAlias = str | Callable[[], str | Awaitable[str]] | None
"""A bearer token, or a plain or async callable returning a fresh one."""

OnChange: TypeAlias = Callable[["Notification"], Any]
"""A callback for a subscription's notifications (plain or async)."""

_DEFAULT = math.nan
"""Marks "use the client's default" for per-request timeouts."""


class ConnectionState(enum.StrEnum):
    """Where the client's connection stands."""

    IDLE = "idle"
    """Created; ``connect()`` not called yet."""
    OPEN = "open"
    RECONNECTING = "reconnecting"
    """The socket was lost; the client is connecting again."""
    CLOSED = "closed"
    """Closed by ``close()``, or the client gave up reconnecting."""


@dataclass(frozen=True, slots=True)
class Response:
    """A successful answer: its ``data`` and ``metadata``."""

    data: Any
    metadata: dict[str, Any]
    message: dict[str, Any]
    """The whole answer, as received."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list read: the rows and the paging facts."""

    rows: list[dict[str, Any]]
    total: int | None
    """Rows matching the filters, over all pages."""
    count: int
    limit: int | None
    """The page size the server applied."""
    offset: int | None


@dataclass(frozen=True, slots=True)
class Notification:
    """A change pushed for a subscription.

    ``operation`` is what the change means for the subscription: ``create``, ``update``
    or ``delete`` (apply it to a list kept in sync); ``reset`` (read again: changes may
    have been missed, ``metadata.reason`` says why — ``"reconnected"`` after a reconnect
    the server could not replay, ``"overflow"`` when the caller fell too far behind);
    ``revoked`` (the subscription ended; nothing follows).
    """

    operation: str
    data: Any
    metadata: dict[str, Any]
    subscription: Subscription
    message: dict[str, Any]
    """The notification as received (or as synthesised, for client-side resets)."""

    @property
    def entity(self) -> str:
        """The subscription's entity."""
        return self.subscription.entity

    @property
    def is_reset(self) -> bool:
        """Whether this says "changes may have been missed: read again"."""
        return self.operation == "reset"

    @property
    def position(self) -> Position | None:
        """The change's place in the entity's stream (``metadata.seq``/``epoch``)."""
        return Position.from_wire(self.metadata)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    """Fail a future; marked retrieved, as its waiter may have gone (timeout)."""
    if not future.done():
        future.set_exception(error)
        future.exception()


def _server_error(error: ErrorReply) -> ServerError:
    """The exception a caller gets for a ``success: false`` answer."""
    return ServerError(error.code, error.message, error.details)


def _no_answer(what: str, limit: float | None) -> RequestTimeoutError:
    return RequestTimeoutError(f"{what} got no answer within {limit} s")


def _notification(sub: Subscription, message: dict[str, Any]) -> Notification:
    """A received (or synthesised) notification message, as the caller sees it."""
    return Notification(
        str(message.get("operation")),
        message.get("data"),
        metadata_of(message),
        sub,
        message,
    )


def _overflow(sub: Subscription) -> dict[str, Any]:
    return notice(
        sub._state,
        RESET,
        "overflow",
        f"more than {sub.max_queue} notifications waited to be "
        "consumed; they were dropped: read again",
    )


class Subscription:
    """A live subscription: iterate it, or let its ``on_change`` callback run.

    The handle stays the same across reconnects (``server_id`` changes). Iterating
    ends after a ``revoked`` notification or ``unsubscribe()``; it raises
    :class:`~websocketspec.exceptions.ConnectionClosedError` if the client gave up.
    """

    def __init__(
        self,
        client: AsyncClient,
        state: SubscriptionState,
        on_change: OnChange | None,
        max_queue: int,
    ) -> None:
        self._client = client
        self._state = state
        self.on_change = on_change
        self.max_queue = max_queue
        self._queue: deque[Notification] = deque()
        self._wake = asyncio.Event()
        self._ended = False
        self._error: BaseException | None = None
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pump: asyncio.Task[None] | None = None
        if on_change is not None:
            self._pump = asyncio.create_task(
                self._run_callbacks(), name=f"websocketspec-subscription-{self.id}"
            )

    def __repr__(self) -> str:
        return f"<Subscription {self.id} {self.entity} {self._state.status}>"

    @property
    def id(self) -> str:
        """The client's handle for this subscription; never changes."""
        return self._state.key

    @property
    def entity(self) -> str:
        """The entity subscribed to."""
        return self._state.entity

    @property
    def schema(self) -> str | None:
        """The schema, if one was given."""
        return self._state.schema

    @property
    def options(self) -> dict[str, Any]:
        """The subscribe options (filters, columns, …)."""
        return self._state.options

    @property
    def server_id(self) -> str | None:
        """The server's ``subscription_id`` on the current connection."""
        return self._state.server_id

    @property
    def position(self) -> Position | None:
        """The last position seen in the entity's stream."""
        return self._state.position

    @property
    def snapshot(self) -> Any:
        """``data.rows`` of the subscribe answer, when ``snapshot=True`` was asked."""
        return self._state.snapshot

    @property
    def closed(self) -> bool:
        """Whether the subscription has ended."""
        return self._ended

    async def unsubscribe(self, *, timeout: float = _DEFAULT) -> None:
        """End the subscription (on the server too, when connected)."""
        await self._client._unsubscribe(self, timeout)

    async def _unsubscribe_quietly(self) -> None:
        """Unsubscribe when leaving a block or a loop, ignoring client errors."""
        with contextlib.suppress(ClientError):
            await self.unsubscribe()

    # -- delivery -----------------------------------------------------------------

    def _push(self, notification: Notification) -> None:
        if self._ended:
            return
        if len(self._queue) >= self.max_queue:
            self._queue.clear()
            notification = _notification(self, _overflow(self))
        self._queue.append(notification)
        self._wake.set()

    def _end(self, error: BaseException | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        self._error = error
        self._wake.set()
        _fail(self._ready, error or ConnectionClosedError("the subscription ended"))

    async def _next(self) -> Notification:
        while not self._queue:
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
        return self._queue.popleft()

    def __aiter__(self) -> AsyncIterator[Notification]:
        if self.on_change is not None:
            raise TypeError(
                "this subscription delivers to its on_change callback; "
                "subscribe without on_change to iterate"
            )
        return self

    async def __anext__(self) -> Notification:
        return await self._next()

    async def _run_callbacks(self) -> None:
        callback = self.on_change
        if callback is None:  # pragma: no cover - only started with a callback
            return
        while True:
            try:
                notification = await self._next()
            except StopAsyncIteration:
                return
            except ClientError:
                return
            try:
                outcome = callback(notification)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception("the on_change callback of %s failed", self.id)

    async def _stop_callbacks(self) -> None:
        task = self._pump
        if task is None or task is asyncio.current_task():
            return
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._unsubscribe_quietly()


class SubscribeCall:
    """What :meth:`AsyncClient.subscribe` returns: await it, iterate it, or enter it.

    - ``sub = await client.subscribe(...)`` subscribes and returns the
      :class:`Subscription`.
    - ``async for change in client.subscribe(...)`` subscribes on the first step and
      unsubscribes when the loop ends (``break`` included).
    - ``async with client.subscribe(...) as sub`` unsubscribes on exit.
    """

    def __init__(self, start: Callable[[], Awaitable[Subscription]]) -> None:
        self._start = start
        self._sub: Subscription | None = None

    async def _subscription(self) -> Subscription:
        if self._sub is None:
            self._sub = await self._start()
        return self._sub

    def __await__(self) -> Generator[Any, None, Subscription]:
        return self._subscription().__await__()

    async def __aenter__(self) -> Subscription:
        return await self._subscription()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sub is not None:
            await self._sub._unsubscribe_quietly()

    def __aiter__(self) -> AsyncIterator[Notification]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Notification]:
        sub = await self._subscription()
        try:
            async for change in sub:
                yield change
        finally:
            await sub._unsubscribe_quietly()


@dataclass(slots=True)
class _Session:
    """One socket's lifetime."""

    ws: ClientConnection
    lost: asyncio.Event = field(default_factory=asyncio.Event)


class AsyncClient:
    """A websocketspec client over one WebSocket, reconnecting by itself.

    Args:
        url: the endpoint, e.g. ``ws://127.0.0.1:8080/ws``.
        token: a bearer token, or a (plain or async) callable returning a fresh one.
            It is sent as ``Authorization: Bearer`` in every handshake, and in an
            ``auth`` message when the server says ``token_expired``.
        request_timeout: seconds a request may take, waiting while disconnected
            included (``None``: no limit). Each call may pass its own ``timeout``.
        connect_timeout: seconds for one opening handshake.
        reconnect: reconnect when the connection is lost.
        reconnect_interval: the first delay before reconnecting; it doubles at each
            failed attempt up to ``max_reconnect_interval``, randomised by ``jitter``.
        max_reconnect_interval: the largest delay between attempts.
        jitter: each delay is drawn from ``[delay * (1 - jitter), delay]``.
        max_reconnect_attempts: give up (state ``CLOSED``) after this many failed
            attempts in a row; ``None`` never gives up.
        when_disconnected: ``"queue"`` — requests made while reconnecting wait for
            the connection (at most ``max_queued`` of them, each within its timeout);
            ``"fail"`` — they raise ``ConnectionClosedError`` at once.
        max_queued: the bound of the queue.
        resume: re-subscribe with ``options.resume_from`` (the server replays what
            was missed, or sends ``reset``).
        headers: more handshake headers.
        ping_interval, ping_timeout: WebSocket keepalive (``None`` disables it).
        max_size: the largest frame accepted from the server, in bytes.
        id_prefix: prefix of message ids.
    """

    def __init__(
        self,
        url: str,
        *,
        token: Token = None,
        request_timeout: float | None = 30.0,
        connect_timeout: float = 10.0,
        reconnect: bool = True,
        reconnect_interval: float = 0.5,
        max_reconnect_interval: float = 30.0,
        jitter: float = 0.5,
        max_reconnect_attempts: int | None = None,
        when_disconnected: Literal["queue", "fail"] = "queue",
        max_queued: int = 1000,
        resume: bool = True,
        headers: Mapping[str, str] | None = None,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        max_size: int | None = 16 * 1024 * 1024,
        id_prefix: str = "c",
    ) -> None:
        if when_disconnected not in ("queue", "fail"):
            raise ValueError(
                f"expected when_disconnected to be 'queue' or 'fail', got {when_disconnected!r}"
            )
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"expected jitter between 0 and 1, got {jitter!r}")
        self.url = url
        self.token = token
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.reconnect = reconnect
        self.reconnect_interval = reconnect_interval
        self.max_reconnect_interval = max_reconnect_interval
        self.jitter = jitter
        self.max_reconnect_attempts = max_reconnect_attempts
        self.when_disconnected = when_disconnected
        self.max_queued = max_queued
        self.headers = dict(headers or {})
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_size = max_size
        self.reconnects = 0
        """How many times the connection was re-established."""
        self.token_refreshes = 0
        """How many ``auth`` messages the client sent after ``token_expired``."""
        self._corr = Correlation(prefix=id_prefix, resume=resume)
        self._state = ConnectionState.IDLE
        self._changed = asyncio.Event()
        self._session: _Session | None = None
        self._waiters: dict[str, asyncio.Future[Reply]] = {}
        self._subs: dict[str, Subscription] = {}
        self._queued = 0
        self._resubscribing: set[str] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._random = random.Random()
        self._close_reason: BaseException | None = None

    # -- lifetime -----------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """The connection's state."""
        return self._state

    @property
    def is_connected(self) -> bool:
        """Whether the socket is open now."""
        return self._state is ConnectionState.OPEN

    @property
    def queued(self) -> int:
        """Requests waiting for the connection (``when_disconnected="queue"``)."""
        return self._queued

    @property
    def subscriptions(self) -> list[Subscription]:
        """The live subscriptions."""
        return list(self._subs.values())

    async def connect(self) -> AsyncClient:
        """Open the connection (once; failures raise instead of retrying).

        Raises:
            ServerError: the server refused the handshake with HTTP 401
                (``unauthorized``) or 403 (``forbidden``).
            ConnectionClosedError: the server could not be reached.
        """
        if self._state is not ConnectionState.IDLE:
            raise RuntimeError(f"connect() on a client that is {self._state}")
        ws = await self._open()
        self._supervisor = asyncio.create_task(
            self._supervise(ws), name="websocketspec-client"
        )
        await self.wait_state(ConnectionState.OPEN, ConnectionState.CLOSED)
        if not self.is_connected:  # pragma: no cover - lost as it opened
            raise self._closed_error()
        return self

    async def close(self) -> None:
        """Close the connection and end every subscription; idempotent."""
        if self._state is ConnectionState.CLOSED and self._supervisor is None:
            return
        self._closing.set()
        session = self._session
        if session is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.ws.close(), self.connect_timeout)
        task, self._supervisor = self._supervisor, None
        if task is not None:
            try:
                await asyncio.wait_for(task, self.connect_timeout)
            except TimeoutError:  # pragma: no cover - the socket would not close
                log.warning("the client's connection did not close in time")
        subs = list(self._subs.values())
        self._shutdown(ConnectionClosedError("the client was closed"), by_user=True)
        for sub in subs:
            await sub._stop_callbacks()
        tasks = list(self._tasks)
        for pending_task in tasks:
            pending_task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> AsyncClient:
        if self._state is ConnectionState.IDLE:
            await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def wait_state(
        self, *states: ConnectionState, timeout: float | None = None
    ) -> ConnectionState:
        """Wait until the client is in one of ``states``; returns it.

        Raises:
            RequestTimeoutError: not within ``timeout`` seconds.
        """
        try:
            async with asyncio.timeout(timeout):
                while self._state not in states:
                    await self._changed.wait()
        except TimeoutError:
            raise RequestTimeoutError(
                f"the client did not reach {', '.join(states)} within {timeout} s "
                f"(it is {self._state})"
            ) from None
        return self._state

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the connection is open.

        Raises:
            RequestTimeoutError: not within ``timeout`` seconds.
            ConnectionClosedError: the client is closed.
        """
        state = await self.wait_state(
            ConnectionState.OPEN, ConnectionState.CLOSED, timeout=timeout
        )
        if state is ConnectionState.CLOSED:
            raise self._closed_error()

    def _set_state(self, state: ConnectionState) -> None:
        self._state = state
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _closed_error(self) -> ConnectionClosedError:
        reason = self._close_reason
        if isinstance(reason, ConnectionClosedError):
            return reason
        error = ConnectionClosedError("the client is closed")
        error.__cause__ = reason
        return error

    # -- the socket ---------------------------------------------------------------

    async def _token(self) -> str | None:
        token = self.token
        if token is None or isinstance(token, str):
            return token
        value = token()
        if inspect.isawaitable(value):
            value = await value
        if not isinstance(value, str):
            raise TypeError(f"the token callable returned {value!r}, not a string")
        return value

    async def _open(self) -> ClientConnection:
        headers = dict(self.headers)
        token = await self._token()
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            return await ws_connect(
                self.url,
                additional_headers=headers,
                open_timeout=self.connect_timeout,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_timeout,
                max_size=self.max_size,
                compression=None,
            )
        except InvalidURI as exc:
            raise ValueError(f"not a WebSocket URL: {self.url!r}") from exc
        except InvalidStatus as exc:
            status = exc.response.status_code
            code, message = "handshake_refused", f"HTTP {status}"
            if status == 401:
                code = "unauthorized"
            elif status == 403:
                code = "forbidden"
            with contextlib.suppress(Exception):
                body = msgspec.json.decode(exc.response.body or b"")
                error = body.get("error") if isinstance(body, dict) else None
                if isinstance(error, dict):
                    code = str(error.get("code") or code)
                    message = str(error.get("message") or message)
            raise ServerError(code, message, {"status": status}) from exc
        except (OSError, TimeoutError, ConnectionClosed) as exc:
            raise ConnectionClosedError(
                f"could not connect to {self.url}: {str(exc) or type(exc).__name__}"
            ) from exc
        except Exception as exc:  # the handshake failed in another way
            raise ConnectionClosedError(
                f"could not connect to {self.url}: {exc}"
            ) from exc

    async def _supervise(self, ws: ClientConnection) -> None:
        try:
            while True:
                await self._serve(ws)
                if self._closing.is_set() or not self.reconnect:
                    self._close_reason = ConnectionClosedError("the connection closed")
                    return
                opened = await self._reconnect()
                if opened is None:
                    return
                if self._closing.is_set():  # close() came during the handshake
                    await opened.close()
                    return
                ws = opened
                self.reconnects += 1
        finally:
            if not self._closing.is_set():
                self._shutdown(self._closed_error(), by_user=False)

    async def _reconnect(self) -> ClientConnection | None:
        attempt = 0
        while not self._closing.is_set():
            delay = min(
                self.max_reconnect_interval, self.reconnect_interval * 2.0**attempt
            )
            delay *= 1.0 - self.jitter * self._random.random()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay)
            if self._closing.is_set():
                return None
            attempt += 1
            try:
                return await self._open()
            except ServerError as exc:
                log.warning("reconnecting to %s: %s", self.url, exc)
                if exc.code == "unauthorized" and not callable(self.token):
                    # The same token will be refused again.
                    self._close_reason = exc
                    return None
                self._close_reason = exc
            except (ClientError, TypeError) as exc:
                log.info("reconnecting to %s failed: %s", self.url, exc)
                self._close_reason = exc
            except Exception as exc:
                log.warning("the token callable failed", exc_info=exc)
                self._close_reason = exc
            if (
                self.max_reconnect_attempts is not None
                and attempt >= self.max_reconnect_attempts
            ):
                log.warning(
                    "giving up on %s after %d attempts",
                    self.url,
                    self.max_reconnect_attempts,
                )
                return None
        return None

    async def _serve(self, ws: ClientConnection) -> None:
        session = _Session(ws)
        self._session = session
        try:
            # Requests wait until every subscription is back, so that a write queued
            # during the outage reaches the caller's own subscriptions.
            messages = self._corr.resubscribe()
            self._resubscribing = {message["id"] for message in messages}
            for message in messages:
                await ws.send(self._encode(message))
            self._check_resubscribed()
            async for raw in ws:
                self._receive(raw)
        except ConnectionClosed as exc:
            log.info("connection to %s lost: %s", self.url, exc)
        finally:
            self._session = None
            self._resubscribing.clear()
            if not self._closing.is_set():
                self._set_state(ConnectionState.RECONNECTING)
            lost = self._corr.connection_lost()
            for record in lost:
                waiter = self._waiters.pop(record.id, None)
                if waiter is not None:
                    _fail(
                        waiter,
                        ConnectionClosedError(
                            f"the connection closed before the {record.operation} "
                            "was answered; it may or may not have been applied"
                        ),
                    )
            session.lost.set()

    def _check_resubscribed(self) -> None:
        """Open the gate for requests once no re-subscribe is in flight."""
        self._resubscribing.intersection_update(self._corr.pending)
        if (
            not self._resubscribing
            and self._session is not None
            and self._state is not ConnectionState.OPEN
            and not self._closing.is_set()
        ):
            self._set_state(ConnectionState.OPEN)

    def _shutdown(self, error: ClientError, *, by_user: bool) -> None:
        """Fail everything still waiting, end every subscription."""
        if self._close_reason is None or by_user:
            self._close_reason = error
        self._set_state(ConnectionState.CLOSED)
        for waiter in self._waiters.values():
            _fail(waiter, self._closed_error())
        self._waiters.clear()
        self._corr.close()
        for sub in list(self._subs.values()):
            sub._end(None if by_user else self._closed_error())
        self._subs.clear()

    @staticmethod
    def _encode(message: dict[str, Any]) -> str:
        return msgspec.json.encode(message).decode()

    # -- inbound ------------------------------------------------------------------

    def _receive(self, raw: str | bytes) -> None:
        try:
            message = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            log.warning("the server sent a frame that is not JSON")
            return
        for event in self._corr.receive(message):
            if isinstance(event, Reply):
                self._on_reply(event)
            elif isinstance(event, Notify):
                self._on_notify(event)
            elif isinstance(event, TokenExpired):
                self._spawn(self._refresh_token(event), "token refresh")
            elif isinstance(event, Abandoned):
                self._spawn(self._drop_orphan(event.server_id), "orphan unsubscribe")
            elif isinstance(event, Unroutable):
                log.debug("ignored a message (%s): %r", event.reason, event.message)

    def _on_reply(self, reply: Reply) -> None:
        pending = reply.pending
        if pending.operation == "subscribe" and pending.subscription is not None:
            sub = self._subs.get(pending.subscription)
            if sub is not None and not sub._ready.done():
                error = reply.error
                if error is None and sub._state.server_id is not None:
                    sub._ready.set_result(None)
                else:
                    self._subs.pop(sub.id, None)
                    sub._end(
                        _server_error(error)
                        if error is not None
                        else ClientError("the subscribe answer was malformed")
                    )
            if self._resubscribing:
                self._check_resubscribed()
            return
        waiter = self._waiters.pop(pending.id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    def _on_notify(self, event: Notify) -> None:
        sub = self._subs.get(event.key)
        if sub is None:
            return
        sub._push(_notification(sub, event.message))
        if event.final:
            self._subs.pop(sub.id, None)
            sub._end()

    def _spawn(self, coro: Awaitable[Any], what: str) -> None:
        async def run() -> None:
            try:
                await coro
            except ClientError as exc:
                log.warning("%s failed: %s", what, exc)
            except Exception:
                log.exception("%s failed", what)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh_token(self, event: TokenExpired) -> None:
        if not callable(self.token):
            log.warning(
                "the server says the token expired; pass a callable as token= "
                "to refresh it (the server will close the connection)"
            )
            return
        token = await self._token()
        if token is None:
            return
        await self.authenticate(token, timeout=event.grace_period or _DEFAULT)
        self.token_refreshes += 1

    async def _drop_orphan(self, server_id: str) -> None:
        session = self._session
        if session is None:
            return
        await self._send_quietly(session, self._corr.unsubscribe_orphan(server_id))

    # -- outbound -----------------------------------------------------------------

    async def _send_quietly(self, session: _Session, message: dict[str, Any]) -> None:
        """Send ``message``; a socket that just died is left to the supervisor."""
        with contextlib.suppress(ConnectionClosed):
            await session.ws.send(self._encode(message))

    def _timeout(self, timeout: float) -> float | None:
        if math.isnan(timeout):
            return self.request_timeout
        if math.isinf(timeout):
            return None
        return timeout

    async def _usable_session(self) -> _Session:
        """The open session; waits for one (queue mode) or fails at once."""
        queued = False
        try:
            while True:
                if self._state is ConnectionState.CLOSED:
                    raise self._closed_error()
                if self._state is ConnectionState.IDLE:
                    raise ConnectionClosedError(
                        "the client is not connected: await client.connect() first"
                    )
                session = self._session
                if self._state is ConnectionState.OPEN and session is not None:
                    return session
                if self.when_disconnected == "fail":
                    raise ConnectionClosedError(
                        f"not connected to {self.url} (reconnecting)"
                    )
                if not queued:
                    if self._queued >= self.max_queued:
                        raise ConnectionClosedError(
                            f"not connected to {self.url}, and {self.max_queued} "
                            "requests already wait for the connection"
                        )
                    self._queued += 1
                    queued = True
                await self._changed.wait()
        finally:
            if queued:
                self._queued -= 1

    async def _exchange(self, build: Callable[[], dict[str, Any]]) -> Reply:
        """Send a tracked message when connected and wait for its answer."""
        while True:
            session = await self._usable_session()
            message = build()
            msg_id = message["id"]
            waiter = self._wait_for(msg_id)
            try:
                try:
                    await session.ws.send(self._encode(message))
                except ConnectionClosed:
                    # Not sent: wait for the next connection (or fail fast).
                    self._forget(msg_id)
                    await session.lost.wait()
                    continue
                return await waiter
            except BaseException:
                self._forget(msg_id)
                raise

    def _wait_for(self, msg_id: str) -> asyncio.Future[Reply]:
        """A future the reader resolves with the answer to ``msg_id``."""
        waiter: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiters[msg_id] = waiter
        return waiter

    def _forget(self, msg_id: str) -> None:
        self._corr.forget(msg_id)
        waiter = self._waiters.pop(msg_id, None)
        if waiter is not None and not waiter.done():
            waiter.cancel()

    async def _call(
        self,
        build: Callable[[], dict[str, Any]],
        timeout: float,
        what: str,
    ) -> Response:
        limit = self._timeout(timeout)
        try:
            async with asyncio.timeout(limit):
                reply = await self._exchange(build)
        except TimeoutError:
            raise _no_answer(what, limit) from None
        error = reply.error
        if error is not None:
            raise _server_error(error)
        return Response(reply.data, reply.metadata, reply.message)

    async def request(
        self,
        operation: str,
        entity: str | None = None,
        *,
        schema: str | None = None,
        record_id: Any = None,
        data: Any = None,
        options: Mapping[str, Any] | None = None,
        timeout: float = _DEFAULT,
    ) -> Response:
        """Send any ``type: "request"`` message and return the successful answer.

        Raises:
            ServerError: the server answered ``success: false`` (``.code``).
            RequestTimeoutError: no answer within the timeout.
            ConnectionClosedError: the connection closed first (or is down, with
                ``when_disconnected="fail"``).
        """
        return await self._call(
            lambda: self._corr.request(
                operation,
                entity,
                schema=schema,
                record_id=record_id,
                data=data,
                options=options,
            ),
            timeout,
            f"{operation} {entity or ''}".strip(),
        )

    # -- operations ---------------------------------------------------------------

    async def read(
        self,
        entity: str,
        record_id: Any = None,
        *,
        schema: str | None = None,
        filters: Iterable[Any] | None = None,
        columns: Sequence[str] | None = None,
        sort: Iterable[Any] | str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        preload: Iterable[Any] | None = None,
        options: Mapping[str, Any] | Any | None = None,
        timeout: float = _DEFAULT,
    ) -> Any:
        """Read one row (``record_id``) or a list of rows.

        Filters are mappings, ``FilterOption`` values or ``(column, operator, value)``
        tuples; ``sort`` entries are ``"name"``, ``"-name"`` (descending), mappings or
        ``SortOption`` values.

        Returns:
            The row (a dict) for a ``record_id``, else the list of rows.

        Raises:
            ServerError: e.g. ``not_found``, ``invalid_filter``, ``model_not_found``.
        """
        built = build_options(
            options,
            filters=filters,
            columns=columns,
            sort=sort,
            limit=limit,
            offset=offset,
            preload=preload,
        )
        response = await self.request(
            "read",
            entity,
            schema=schema,
            record_id=record_id,
            options=built,
            timeout=timeout,
        )
        return response.data

    async def read_page(
        self,
        entity: str,
        *,
        schema: str | None = None,
        filters: Iterable[Any] | None = None,
        columns: Sequence[str] | None = None,
        sort: Iterable[Any] | str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        preload: Iterable[Any] | None = None,
        options: Mapping[str, Any] | Any | None = None,
        timeout: float = _DEFAULT,
    ) -> Page:
        """A list read with its paging facts (``total``, ``count``, ``limit``, ``offset``)."""
        built = build_options(
            options,
            filters=filters,
            columns=columns,
            sort=sort,
            limit=limit,
            offset=offset,
            preload=preload,
        )
        response = await self.request(
            "read", entity, schema=schema, options=built, timeout=timeout
        )
        meta = response.metadata
        rows = response.data if isinstance(response.data, list) else []
        return Page(
            rows,
            meta.get("total"),
            int(meta.get("count", len(rows))),
            meta.get("limit"),
            meta.get("offset"),
        )

    async def create(
        self,
        entity: str,
        data: Mapping[str, Any],
        *,
        schema: str | None = None,
        timeout: float = _DEFAULT,
    ) -> Any:
        """Create a row; returns the stored row (database defaults included)."""
        response = await self.request(
            "create", entity, schema=schema, data=dict(data), timeout=timeout
        )
        return response.data

    async def update(
        self,
        entity: str,
        record_id: Any,
        data: Mapping[str, Any],
        *,
        schema: str | None = None,
        filters: Iterable[Any] | None = None,
        timeout: float = _DEFAULT,
    ) -> Any:
        """Change only the keys in ``data``; returns the re-read row.

        ``filters`` make the update conditional (``not_found`` when the row does not
        match them).
        """
        response = await self.request(
            "update",
            entity,
            schema=schema,
            record_id=record_id,
            data=dict(data),
            options=build_options(filters=filters),
            timeout=timeout,
        )
        return response.data

    async def delete(
        self,
        entity: str,
        record_id: Any,
        *,
        schema: str | None = None,
        timeout: float = _DEFAULT,
    ) -> Any:
        """Delete a row; returns the deleted row."""
        response = await self.request(
            "delete", entity, schema=schema, record_id=record_id, timeout=timeout
        )
        return response.data

    async def meta(
        self, entity: str, *, schema: str | None = None, timeout: float = _DEFAULT
    ) -> Any:
        """The entity's description: primary key, columns, relations."""
        response = await self.request("meta", entity, schema=schema, timeout=timeout)
        return response.data

    async def ping(self, *, timeout: float = _DEFAULT) -> None:
        """Send a ``ping`` message and wait for its ``pong``."""
        await self._call(self._corr.ping, timeout, "ping")

    async def authenticate(
        self, token: str | None = None, *, timeout: float = _DEFAULT
    ) -> Any:
        """Replace the connection's identity in-band (the ``auth`` message).

        Args:
            token: the new token; by default a fresh one from the ``token`` callable.
            timeout: seconds to wait for the answer (default ``request_timeout``).

        Returns:
            The server's answer, e.g. ``{"authenticated": true, "expires_at": …}``.
        """
        if token is None:
            token = await self._token()
            if token is None:
                raise ValueError(
                    "no token to send: pass one, or give the client token="
                )
        chosen = token
        response = await self._call(lambda: self._corr.auth(chosen), timeout, "auth")
        return response.data

    # -- subscriptions ------------------------------------------------------------

    def subscribe(
        self,
        entity: str,
        *,
        schema: str | None = None,
        filters: Iterable[Any] | None = None,
        columns: Sequence[str] | None = None,
        options: Mapping[str, Any] | Any | None = None,
        snapshot: bool = False,
        on_change: OnChange | None = None,
        max_queue: int = 10_000,
        timeout: float = _DEFAULT,
    ) -> SubscribeCall:
        """Subscribe to an entity's changes that match ``filters``.

        Await the result for a :class:`Subscription`, iterate it directly
        (``async for change in client.subscribe(...)``), or use it as an async context
        manager. With ``on_change`` every notification is passed to the callback (plain
        or async, called in order) instead.

        Args:
            entity: the entity (``"users"`` or ``"public.users"``).
            schema: its schema, when not in ``entity`` (default ``public``).
            filters: as for :meth:`read`; only matching changes are pushed.
            columns: the keys of each notification's ``data`` (the primary key is
                always included).
            options: more subscribe options, as a mapping.
            snapshot: ask for the current matching rows in the answer
                (``subscription.snapshot``) and the stream position they reflect.
            on_change: called with each :class:`Notification`, in order.
            max_queue: notifications kept for a slow iterator or callback; past it
                they are dropped and replaced by one ``reset`` (``reason: "overflow"``).
            timeout: seconds to wait for the answer (default ``request_timeout``).

        Raises:
            ServerError: the server refused the subscription (``.code``).
            RequestTimeoutError: no answer within the timeout.
        """
        built = build_options(options, filters=filters, columns=columns) or {}
        if snapshot:
            built["snapshot"] = True
        if max_queue < 1:
            raise ValueError(f"expected max_queue >= 1, got {max_queue!r}")

        async def start() -> Subscription:
            return await self._subscribe(
                entity, schema, built, on_change, max_queue, timeout
            )

        return SubscribeCall(start)

    async def _subscribe(
        self,
        entity: str,
        schema: str | None,
        options: dict[str, Any],
        on_change: OnChange | None,
        max_queue: int,
        timeout: float,
    ) -> Subscription:
        limit = self._timeout(timeout)
        sub: Subscription | None = None
        try:
            async with asyncio.timeout(limit):
                session = await self._usable_session()
                state, message = self._corr.subscribe(
                    entity, schema=schema, options=options
                )
                sub = Subscription(self, state, on_change, max_queue)
                self._subs[sub.id] = sub
                # Not sent when the socket just died: the subscription is detached
                # with the connection and sent again once reconnected.
                await self._send_quietly(session, message)
                # Shielded: a timeout must not cancel the future the reader resolves.
                await asyncio.shield(sub._ready)
                return sub
        except TimeoutError:
            if sub is not None:
                await self._abandon(sub)
            raise _no_answer(f"subscribe {entity}", limit) from None
        except BaseException:
            if sub is not None and not sub._ready.done():
                await self._abandon(sub)
            raise

    async def _end_locally(
        self, sub: Subscription, error: BaseException | None
    ) -> dict[str, Any] | None:
        """End ``sub`` on the client; the unsubscribe message to send, if any."""
        self._subs.pop(sub.id, None)
        message = self._corr.unsubscribe(sub.id)
        self._check_resubscribed()
        sub._end(error)
        await sub._stop_callbacks()
        return message

    async def _abandon(self, sub: Subscription) -> None:
        message = await self._end_locally(
            sub, RequestTimeoutError("the subscribe was abandoned")
        )
        session = self._session
        if message is not None and session is not None:
            self._corr.forget(message["id"])
            await self._send_quietly(session, message)

    async def _unsubscribe(self, sub: Subscription, timeout: float) -> None:
        if sub._ended:
            await sub._stop_callbacks()
            return
        # Closed locally at once: nothing more reaches the caller.
        message = await self._end_locally(sub, None)
        session = self._session
        if message is None or session is None:
            return
        msg_id = message["id"]
        waiter = self._wait_for(msg_id)
        limit = self._timeout(timeout)
        try:
            await session.ws.send(self._encode(message))
            async with asyncio.timeout(limit):
                reply = await waiter
        except ConnectionClosed:
            return  # the server dropped the subscription with the connection
        except ConnectionClosedError:
            return
        except TimeoutError:
            raise _no_answer("unsubscribe", limit) from None
        finally:
            self._forget(msg_id)
        error = reply.error
        if error is not None and error.code != "subscription_not_found":
            raise _server_error(error)


class _Connect:
    """``await connect(...)`` or ``async with connect(...) as client``."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def __await__(self) -> Generator[Any, None, AsyncClient]:
        return self._client.connect().__await__()

    async def __aenter__(self) -> AsyncClient:
        return await self._client.connect()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._client.close()


def connect(url: str, *, token: Token = None, **options: Any) -> _Connect:
    """Connect to a websocketspec server.

    ``client = await connect(url)`` (close it with ``await client.close()``) or
    ``async with connect(url) as client:``. Keyword options are those of
    :class:`AsyncClient`.

    Raises:
        ServerError: the handshake was refused (``unauthorized``, ``forbidden``).
        ConnectionClosedError: the server could not be reached.
    """
    return _Connect(AsyncClient(url, token=token, **options))
