"""Keepalive: a client that stops answering ping frames is closed; one that answers stays.

The pings are WebSocket ping frames sent by the server (the direct server's
``ping_interval``/``ping_timeout``; uvicorn's ``ws_ping_interval``/``ws_ping_timeout``
on the ASGI route). The silent client is a raw TCP socket that completes the handshake
and then never answers, as a vanished peer would.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import AsyncIterator

import pytest

from tests.support.servers import serve
from tests.support.wsclient import TIMEOUT, WSClient
from websocketspec import Handler, HookType

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@pytest.fixture
async def pinging_server(handler: Handler, shell: str) -> AsyncIterator[str]:
    options = (
        {"ping_interval": 0.2, "ping_timeout": 0.3}
        if shell == "direct"
        else {"ws_ping_interval": 0.2, "ws_ping_timeout": 0.3}
    )
    async with serve(shell, handler, **options) as base:
        yield f"{base}/ws"
    await handler.stop()


async def silent_client(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, _, rest = url.removeprefix("ws://").partition(":")
    port = int(rest.partition("/")[0])
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port), TIMEOUT
    )
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def close_code(reader: asyncio.StreamReader) -> int | None:
    """Read frames (pings included, never answered) until a close frame or EOF."""
    while True:
        try:
            first, second = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
        except asyncio.IncompleteReadError:
            return None
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await reader.readexactly(8))
        payload = await reader.readexactly(length)
        if first & 0x0F == 0x8:
            return (
                int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else None
            )


async def test_a_client_that_misses_pongs_is_closed(
    pinging_server: str, handler: Handler
) -> None:
    gone = asyncio.Event()
    handler.hooks.register_after(HookType.DISCONNECT, lambda _ctx: gone.set())
    reader, writer = await silent_client(pinging_server)
    try:
        # Both routes close with 1011 ("keepalive ping timeout"), then the server
        # releases everything the connection held and runs the disconnect hooks.
        assert await close_code(reader) == 1011
        await asyncio.wait_for(gone.wait(), TIMEOUT)
        assert not handler.connections
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_client_that_answers_pings_stays(pinging_server: str) -> None:
    client = await WSClient.connect(pinging_server)
    try:
        # Several ping intervals pass; the connection still works afterwards.
        for _ in range(5):
            await client.barrier()
            await asyncio.sleep(0.2)
        assert await client.ok("read", "users") == []
        assert client.ws.close_code is None
    finally:
        await client.close()
