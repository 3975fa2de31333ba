"""A TCP proxy on a loopback port that a test can sever, hold and restore.

Faults for database tests without touching the database server itself: point an
engine at :attr:`TCPProxy.port` instead of the real port, then

- :meth:`TCPProxy.sever` closes every proxied connection at once and refuses new
  ones (accepted and closed at once, so clients fail fast, as when a server dies);
- :meth:`TCPProxy.hold` stops forwarding bytes in both directions (a database that
  hangs): connections stay open, new ones are accepted, nothing moves;
- :meth:`TCPProxy.restore` undoes both: held bytes flow again, new connections pass.

Every task the proxy starts is owned by it and cancelled and awaited in :meth:`close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

__all__ = ["TCPProxy", "running_proxy"]

_CHUNK = 64 * 1024


class _Link:
    """One client connection and its upstream connection, pumped both ways."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        """Drop both sockets at once (no flushing: the peer sees a reset or EOF)."""
        for _, writer in (self.client, self.upstream):
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for _, writer in (self.client, self.upstream):
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()


class TCPProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port``.

    Args:
        target_host: where connections are forwarded.
        target_port: the target's port.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._refusing = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.accepted = 0
        """Connections accepted and forwarded so far."""
        self.refused = 0
        """Connections refused while severed."""

    @property
    def port(self) -> int:
        """The loopback port to connect to instead of the target's."""
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        return int(self._server.sockets[0].getsockname()[1])

    def is_refusing(self) -> bool:
        """Whether new connections are refused (severed, not yet restored)."""
        return self._refusing

    @property
    def live(self) -> int:
        """Proxied connections currently open."""
        return len(self._links)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def close(self) -> None:
        """Stop listening and drop every connection; waits for all its tasks."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self._flowing.set()
        await self._drop_all()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    def sever(self) -> None:
        """Close every proxied connection now and refuse new ones until restored."""
        self._refusing = True
        for link in list(self._links):
            link.abort()

    def hold(self) -> None:
        """Stop forwarding bytes (both ways, every connection) until restored."""
        self._flowing.clear()

    def restore(self) -> None:
        """Forward again: held bytes flow, new connections pass."""
        self._refusing = False
        self._flowing.set()

    async def _drop_all(self) -> None:
        links = list(self._links)
        for link in links:
            link.abort()
        for link in links:
            await link.wait_closed()

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._handle(reader, writer)
        finally:
            self._handlers.discard(task)

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self.is_refusing():
            self.refused += 1
            await _close(writer, abort=True)
            return
        try:
            upstream = await asyncio.wait_for(
                asyncio.open_connection(self.target_host, self.target_port), 5
            )
        except (OSError, TimeoutError):
            await _close(writer, abort=True)
            return
        if self.is_refusing():  # severed while connecting upstream
            self.refused += 1
            await _close(upstream[1], abort=True)
            await _close(writer, abort=True)
            return
        self.accepted += 1
        for _, w in ((reader, writer), upstream):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link((reader, writer), upstream)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pump(reader, upstream[1])),
            asyncio.create_task(self._pump(upstream[0], writer)),
        ]
        try:
            # Either direction ending ends the link: the proxy is a dumb pipe.
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
            link.abort()
            await link.wait_closed()
        finally:
            self._links.discard(link)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while True:
                data = await source.read(_CHUNK)
                if not data:
                    return
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()


async def _close(writer: asyncio.StreamWriter, *, abort: bool) -> None:
    if abort:
        writer.transport.abort()
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


@contextlib.asynccontextmanager
async def running_proxy(target_host: str, target_port: int) -> AsyncIterator[TCPProxy]:
    """A started :class:`TCPProxy`, closed on exit."""
    proxy = TCPProxy(target_host, target_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        async with asyncio.timeout(10):
            await proxy.close()
