"""A minimal WebSocket client on a bare asyncio protocol, for load generation.

The benchmark's clients must cost as little CPU as possible: they share two cores with
the server under test. This client does the opening handshake, parses unmasked server
frames in ``data_received`` and hands each text payload to a callback together with the
arrival time of the chunk that carried it (one clock read per chunk). Client frames are
masked with the all-zero key, which RFC 6455 allows and which makes masking a no-op.
Ping frames are answered; a close frame is echoed and the transport closed.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from collections.abc import Callable
from typing import cast

__all__ = ["WSClient", "connect", "frame"]

OnMessage = Callable[["WSClient", bytes, float], None]

_ZERO_MASK = b"\x00\x00\x00\x00"


def frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client frame (mask key 0) carrying ``payload``."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + _ZERO_MASK + payload


class WSClient(asyncio.Protocol):
    """One client connection; ``on_message(client, payload, arrival_time)`` per text frame."""

    def __init__(self, on_message: OnMessage, request: bytes) -> None:
        self.on_message = on_message
        self._request = request
        self._buffer = bytearray()
        self._open = False
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.state: object = None
        """Free slot for the owner's per-connection state."""
        self.on_chunk: Callable[[WSClient], None] | None = None
        """Called after the frames of one received chunk were handed over."""

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        self._open = False
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buf = self._buffer
        buf += data
        if not self._open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[:end]).split(b"\r\n", 1)[0]
            del buf[: end + 4]
            if b" 101 " not in status + b" ":
                if not self.opened.done():
                    self.opened.set_exception(
                        ConnectionError(f"handshake refused: {status.decode()}")
                    )
                if self.transport is not None:
                    self.transport.close()
                return
            self._open = True
            self.opened.set_result(None)
        pos = 0
        size = len(buf)
        on_message = self.on_message
        while size - pos >= 2:
            b0 = buf[pos]
            length = buf[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > size:
                break
            opcode = b0 & 0x0F
            if opcode == 1:
                on_message(self, bytes(buf[start:end]), now)
            elif opcode == 9 and self.transport is not None:
                self.transport.write(frame(bytes(buf[start:end]), opcode=10))
            elif opcode == 8:
                self.close()
            pos = end
        if pos:
            del buf[:pos]
        if self.on_chunk is not None:
            self.on_chunk(self)

    # -- API --------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether the handshake succeeded and the connection is still up."""
        return self._open

    def send(self, payload: bytes) -> None:
        """Send one text frame."""
        if self.transport is not None:
            self.transport.write(frame(payload))

    def send_many(self, payloads: list[bytes]) -> None:
        """Send several text frames in one write."""
        if self.transport is not None:
            self.transport.write(b"".join(frame(p) for p in payloads))

    def close(self) -> None:
        """Send a close frame (1000) and close the transport."""
        if self.transport is not None and not self.transport.is_closing():
            if self._open:
                self.transport.write(frame(struct.pack("!H", 1000), opcode=8))
            self.transport.close()
        self._open = False


async def connect(
    host: str, port: int, path: str, on_message: OnMessage, *, timeout: float = 30.0
) -> WSClient:
    """Open a connection and complete the opening handshake."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    _, client = await asyncio.wait_for(
        loop.create_connection(lambda: WSClient(on_message, request), host, port),
        timeout,
    )
    await asyncio.wait_for(client.opened, timeout)
    return client
