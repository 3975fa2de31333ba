"""Real servers for tests: uvicorn serving an ASGI app on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from websocketspec import Handler
from websocketspec.server.direct import DirectServer


@contextlib.asynccontextmanager
async def serve_asgi(app: Any, **options: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 and a free port; yields the ws:// base URL."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        ws=options.pop("ws", "websockets-sansio"),
        lifespan=options.pop("lifespan", "off"),
        log_level=options.pop("log_level", "warning"),
        ws_per_message_deflate=False,
        **options,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        async with asyncio.timeout(15):
            await task


@contextlib.asynccontextmanager
async def serve_direct(handler: Handler, **options: Any) -> AsyncIterator[str]:
    """Serve ``handler`` with the direct ``websockets`` shell; yields the ws:// base URL."""
    server = DirectServer(handler, "127.0.0.1", 0, path="/ws", **options)
    await server.start()
    try:
        yield f"ws://127.0.0.1:{server.port}"
    finally:
        async with asyncio.timeout(15):
            await server.stop(timeout=5)


@contextlib.asynccontextmanager
async def serve(shell: str, handler: Handler, **options: Any) -> AsyncIterator[str]:
    """Serve ``handler`` over ``shell`` (``asgi`` or ``direct``); yields the ws:// base URL."""
    runner = serve_asgi if shell == "asgi" else serve_direct
    async with runner(handler, **options) as base:
        yield base
