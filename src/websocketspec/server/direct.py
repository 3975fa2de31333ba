"""The direct shell: the handler served by the ``websockets`` library, without ASGI.

This is the fast route, used by ``websocketspec serve`` and the quickstart. Frames are
written to each socket synchronously (as ``websockets.broadcast`` does), so fan-out never
awaits a client; a connection whose transport write buffer outgrows
``Config.max_queue_bytes`` is closed with 1013. The server owns its shutdown: it stops
accepting, lets requests in flight finish, closes every connection with 1001 and runs the
disconnect hooks before releasing the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine, Sequence
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from websocketspec.exceptions import (
    MissingDependencyError,
    ProtocolError,
)
from websocketspec.hooks import Handshake
from websocketspec.protocol.codec import encode
from websocketspec.server.app import (
    Handler,
    parse_cookies,
    parse_query,
    refusal_status,
)

try:
    from websockets.asyncio.server import Server, ServerConnection, serve
    from websockets.exceptions import ConnectionClosed
    from websockets.http11 import Request, Response
    from websockets.protocol import State as WSState
    from websockets.typing import Subprotocol
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("websockets", "server") from exc

__all__ = ["DirectServer"]

log = logging.getLogger(__name__)


class _Sink:
    """Writes frames straight into one connection's transport, and reads its frames."""

    __slots__ = ("_ws",)

    def __init__(self, ws: ServerConnection) -> None:
        self._ws = ws

    async def read(self) -> str | bytes | None:
        """The next frame, or ``None`` once the connection is closed."""
        try:
            return await self._ws.recv()
        except ConnectionClosed:
            return None

    def write(self, text: str) -> int:
        ws = self._ws
        if ws.protocol.state is not WSState.OPEN:
            raise ConnectionError("the connection is not open")
        ws.protocol.send_text(text.encode())
        ws.send_data()
        return ws.transport.get_write_buffer_size()

    def close(self, code: int, reason: str) -> None:
        ws = self._ws
        if ws.protocol.state is WSState.OPEN:
            ws.protocol.send_close(code, reason)
            ws.send_data()


def _handshake(ws: ServerConnection, request: Request) -> Handshake:
    headers: dict[str, str] = {}
    for name, value in request.headers.raw_items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    parts = urlsplit(request.path)
    remote = ws.remote_address
    return Handshake(
        path=parts.path,
        headers=headers,
        query_params=parse_query(parts.query),
        cookies=parse_cookies(headers.get("cookie")),
        client=(str(remote[0]), int(remote[1])) if remote else None,
        subprotocols=tuple(
            p.strip()
            for value in request.headers.get_all("Sec-WebSocket-Protocol")
            for p in value.split(",")
            if p.strip()
        ),
    )


class DirectServer:
    """Serve a :class:`Handler` with the ``websockets`` library.

    Args:
        handler: what to serve.
        host: the address to listen on.
        port: the port (0 picks a free one; see :attr:`port`).
        path: the endpoint's path; other paths answer 404 (``None`` serves every path).
        ping_interval: seconds between keepalive pings (``None`` for none).
        ping_timeout: seconds to wait for a pong before closing (1011).
        max_size: the largest frame the WebSocket layer accepts; larger ones close the
            connection with 1009.
        reuse_port: listen with ``SO_REUSEPORT`` so that several processes share the port.
    """

    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        path: str | None = "/ws",
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        max_size: int = 16 * 1024 * 1024,
        reuse_port: bool = False,
    ) -> None:
        self.handler = handler
        self.host = host
        self._port = port
        self.path = path
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_size = max_size
        self.reuse_port = reuse_port
        self._server: Server | None = None

    @property
    def port(self) -> int:
        """The port actually listened on."""
        if self._server is None:
            return self._port
        for sock in self._server.sockets:
            return int(sock.getsockname()[1])
        return self._port

    async def start(self) -> None:
        """Start the handler and begin accepting connections."""
        await self.handler.start()
        self._server = await serve(
            self._serve,
            self.host,
            self._port,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            compression=None,
            max_size=self.max_size,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            close_timeout=5,
            reuse_port=self.reuse_port or None,
        )

    async def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: stop accepting, finish requests, close with 1001, release."""
        server = self._server
        if server is None:
            return
        self._server = None
        server.close(close_connections=False)
        grace = self.handler.config.close_timeout if timeout is None else timeout
        # Requests that arrive meanwhile are in flight too: wait until none is left
        # (within the grace), then close at once, so that none runs unanswered.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while pending := [
            t for c in self.handler.connections.values() for t in c.tasks
        ]:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await asyncio.wait(pending, timeout=remaining)
        for conn in list(self.handler.connections.values()):
            conn.close(1001, "server shutting down")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), timeout=grace)
        await self.handler.stop()

    async def serve_forever(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop gracefully."""
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
        try:
            await stop.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            log.info("shutting down: finishing requests, closing connections")
            await self.stop()

    async def __aenter__(self) -> DirectServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- handshake ------------------------------------------------------------------

    async def _process_request(
        self, ws: ServerConnection, request: Request
    ) -> Response | None:
        if self.path is not None and urlsplit(request.path).path != self.path:
            return ws.respond(
                HTTPStatus.NOT_FOUND,
                f"no WebSocket endpoint at this path; use {self.path}\n",
            )
        try:
            admitted = await self.handler.admit(_handshake(ws, request))
        except ProtocolError as exc:
            status = HTTPStatus(refusal_status(exc))
            body = encode({"error": {"code": exc.code, "message": exc.message}})
            response = ws.respond(status, body)
            response.headers["Content-Type"] = "application/json"
            return response
        # Kept on the connection object itself: nothing outlives a failed handshake.
        ws.websocketspec_admitted = admitted  # type: ignore[attr-defined]
        return None

    def _select_subprotocol(
        self, ws: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        admitted = getattr(ws, "websocketspec_admitted", None)
        wanted = admitted[1].subprotocol if admitted is not None else None
        if wanted is None or wanted not in offered:
            return None
        return Subprotocol(wanted)

    # -- connection -----------------------------------------------------------------

    async def _serve(self, ws: ServerConnection) -> None:
        serving = self._serving(ws)
        if serving is None:  # pragma: no cover - process_request always admits first
            return
        await serving
        with contextlib.suppress(ConnectionClosed, OSError):
            await ws.wait_closed()

    def _serving(self, ws: ServerConnection) -> Coroutine[Any, Any, None] | None:
        # Not a coroutine: nothing but serve_connection holds the connect context,
        # which it drops once the connect hooks ran.
        admitted = getattr(ws, "websocketspec_admitted", None)
        if admitted is None:
            return None
        delattr(ws, "websocketspec_admitted")
        conn, ctx = admitted
        sink = _Sink(ws)
        conn.sink = sink
        return self.handler.serve_connection(conn, ctx, sink.read)
