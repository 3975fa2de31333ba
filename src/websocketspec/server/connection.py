"""One client connection: its identity, subscriptions and bounded outbox.

Theory of operation. A connection is OPEN from the accepted handshake until either
side closes. Everything sent to the client goes through :meth:`Connection.send`, which
never blocks: it appends the encoded frame to the outbox and wakes the writer task
(owned by the shell that accepted the socket). When the outbox exceeds its message or
byte bound the connection is marked CLOSING with code 1013: the writer sends what it
must and closes, so a slow client never makes the server grow without bound nor holds
back anyone else, and a client that stays connected never misses a message silently.
Once CLOSING or CLOSED, :meth:`send` drops frames: the client is gone or going.

A shell that can write without awaiting (the direct ``websockets`` server) gives the
connection a :class:`FrameSink` instead: frames are written to the socket at once, and
the bound applies to the transport's write buffer.

The task reading the client's frames registers with :meth:`Connection.watch`: once the
server decides to close (or a write finds the socket dead), that task is cancelled, so
that the connection is released at once even if the client never answers the close.
Nothing waits per idle connection but that reader and, on ASGI, the writer (on a bare
future, not an event): the outbox exists only while frames wait in it, and a
direct-route connection never has one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from websocketspec.hooks import Handshake
from websocketspec.protocol.codec import encode

if TYPE_CHECKING:
    from websocketspec.server.limits import TokenBucket
    from websocketspec.server.subscriptions import Subscription

__all__ = ["Connection", "FrameSink", "State"]


class State(Enum):
    """Where a connection is in its life."""

    OPEN = 1
    CLOSING = 2
    CLOSED = 3


class FrameSink(Protocol):
    """Writes frames to a socket without awaiting."""

    def write(self, text: str) -> int:
        """Write one text frame; returns the bytes now waiting in the write buffer."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake with ``code`` and ``reason``."""
        ...


class Connection:
    """The server side of one WebSocket connection.

    Args:
        handshake: the request that opened it.
        max_queue: messages waiting to be sent before the connection is closed.
        max_queue_bytes: bytes waiting to be sent before the connection is closed.
    """

    def __init__(
        self, handshake: Handshake, *, max_queue: int, max_queue_bytes: int
    ) -> None:
        self.id = uuid.uuid4().hex
        self.handshake = handshake
        self.metadata: dict[str, Any] = {}
        """Free storage for hooks: identity, roles, anything."""
        self.subscriptions: dict[str, Subscription] = {}
        self.state = State.OPEN
        self.close_code = 1000
        self.close_reason = ""
        self.sent = 0
        self.received = 0
        self.last_activity = time.monotonic()
        """When a frame last went either way (for the idle timeout)."""
        self._outbox: list[str] | None = None
        self._queued_bytes = 0
        self._max_queue = max_queue
        self._max_queue_bytes = max_queue_bytes
        self._woken = False
        """Whether the writer has something to do since it last took the outbox."""
        self._waiter: asyncio.Future[None] | None = None
        self._closing: asyncio.Event | None = None
        self._reader: asyncio.Task[Any] | None = None
        self._interrupting = False
        self._interrupted = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.rate: TokenBucket | None = None
        """The message-rate limit, when one is configured."""
        self.sink: FrameSink | None = None
        """Set by shells that write frames directly instead of through the outbox."""

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.state.name}>"

    @property
    def closing(self) -> asyncio.Event:
        """Set once the server decided to close this connection (or it closed)."""
        if self._closing is None:
            self._closing = asyncio.Event()
            if self.state is not State.OPEN:
                self._closing.set()
        return self._closing

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message for the client; never blocks."""
        self.send_text(encode(message))

    def send_text(self, text: str) -> None:
        """Queue an encoded frame for the client; never blocks."""
        if self.state is not State.OPEN:
            return
        self.last_activity = time.monotonic()
        if self.sink is not None:
            try:
                buffered = self.sink.write(text)
            except Exception:  # noqa: BLE001 - a dead socket: the reader will see it close
                self.state = State.CLOSED
                self._wake_all()
                return
            self.sent += 1
            if buffered > self._max_queue_bytes:
                self.close(1013, "send queue full: the client reads too slowly")
            return
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = []
        outbox.append(text)
        self._queued_bytes += len(text)
        if len(outbox) > self._max_queue or self._queued_bytes > self._max_queue_bytes:
            self._outbox = None
            self._queued_bytes = 0
            self.close(1013, "send queue full: the client reads too slowly")
            return
        self._wake_writer()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Ask the writer to close the connection after what is queued."""
        if self.state is State.OPEN:
            self.state = State.CLOSING
            self.close_code = code
            self.close_reason = reason
            if self.sink is not None:
                self.sink.close(code, reason)
        self._wake_all()

    def _wake_all(self) -> None:
        """Wake the writer and whoever waits for the close; interrupt the reader."""
        if self._closing is not None:
            self._closing.set()
        self._wake_writer()
        self._interrupt_reader()

    def _interrupt_reader(self) -> None:
        reader = self._reader
        if reader is not None and not self._interrupting:
            self._interrupting = True
            # Deferred, as an event's waiters are: the reader itself may be closing.
            reader.get_loop().call_soon(self._interrupt, reader)

    def _interrupt(self, reader: asyncio.Task[Any]) -> None:
        if self._reader is reader:  # not yet ended
            self._interrupted = True
            reader.cancel()

    def watch(self, reader: asyncio.Task[Any]) -> None:
        """Cancel ``reader`` (the task reading frames) once the server decides to close.

        The reader calls :meth:`unwatch` when it ends, and on ``CancelledError`` takes
        the cancellation back when :meth:`unwatch` says that it was this one (as
        ``asyncio.timeout`` does).
        """
        self._reader = reader
        self._interrupting = self._interrupted = False
        if self.state is not State.OPEN:
            self._interrupt_reader()

    def unwatch(self) -> bool:
        """Stop watching the reader; returns whether a close cancelled it."""
        interrupted = self._interrupted
        self._reader = None
        self._interrupting = self._interrupted = False
        return interrupted

    def _wake_writer(self) -> None:
        self._woken = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self) -> list[str]:
        """Take every queued frame (for the writer)."""
        frames = self._outbox
        self._outbox = None
        self._queued_bytes = 0
        self._woken = False
        return frames if frames is not None else []

    async def wait(self) -> None:
        """Wait until there is something to send or the connection is closing."""
        if self._woken:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    @property
    def queued(self) -> int:
        """Frames waiting in the outbox."""
        return len(self._outbox) if self._outbox is not None else 0
