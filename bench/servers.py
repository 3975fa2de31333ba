"""A server under test, in a child process of its own.

``python -m bench.servers --kind KIND --database URL [--broker URL] [--profile FILE]``

Kinds:

- ``direct``: websocketspec's :class:`~websocketspec.server.direct.DirectServer` (the
  ``websockets`` library, frames written synchronously);
- ``asgi``: the same :class:`~websocketspec.Handler` as an ASGI app under uvicorn with
  ``ws="websockets-sansio"``;
- ``raw``: the baseline, a plain ``websockets`` server with no framework
  (:mod:`bench.raw.server`).

All run on uvloop with keepalive pings and compression off, and serve the quickstart's
``users`` and ``posts`` models. The first line printed is ``{"port": N}``; then commands
arrive as JSON lines on standard input:

- ``hook``: register (``on: true``) or remove the masking after-read hook (framework),
  declared per identity: it looks at the row only;
- ``marks``: when each change entered the server's fan-out and when the call that
  delivers it returned, by its row's ``name`` (framework: the relay's sink, wrapped;
  with an after-read hook the call only queues the change; raw: around encoding the
  notification and ``broadcast``);
- ``gc``: the garbage collector's statistics (``freeze: true`` first freezes every
  object alive now, a diagnostic);
- ``alloc``: tracemalloc ``start``, then ``diff``: the allocation sites that grew;
- ``profile``: start (``on: true``) or stop the profiler (with ``--profile FILE``);
- ``stop``: stop gracefully (and write the profile).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine on uvloop."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def _mask(ctx: Any) -> None:
    """The masking after-read hook of the fan-out scenario: hides ``email``.

    It reads nothing but the row, so it is registered ``per_identity``.
    """
    result = ctx.result
    if isinstance(result, dict) and "email" in result:
        result["email"] = "***"


class _Framework:
    """The websocketspec handler served directly or over ASGI."""

    def __init__(self, kind: str, database: str, broker: str | None) -> None:
        from bench.common import quickstart
        from websocketspec import Handler
        from websocketspec.adapters.sqlalchemy import SQLAlchemyAdapter, create_engine
        from websocketspec.broker.memory import MemoryBroker

        self.kind = kind
        self.engine = create_engine(database)
        if broker:
            from websocketspec.broker.redis import RedisBroker

            url, _, channel = broker.partition("#")
            chosen: Any = RedisBroker(url, channel=channel or "wsspec-bench")
        else:
            chosen = MemoryBroker()
        self.handler = Handler(SQLAlchemyAdapter(self.engine), broker=chosen)
        models = quickstart()
        self.handler.registry.register_model("public.users", models.User)
        self.handler.registry.register_model("public.posts", models.Post)
        self.marks: list[tuple[str, float, float]] = []
        self._wrap_sink()
        self._stop: Callable[[], Coroutine[Any, Any, None]] | None = None

    def _wrap_sink(self) -> None:
        relay = getattr(self.handler, "relay", None)
        sink = getattr(relay, "sink", None)
        if relay is None or sink is None:
            return
        marks = self.marks
        clock = time.monotonic

        def timed(change: Any) -> None:
            new = change.new or change.old or {}
            start = clock()
            sink(change)
            marks.append((str(new.get("name")), start, clock()))

        relay.sink = timed

    def hook(self, on: bool) -> None:
        from websocketspec import HookType

        self.handler.hooks.clear()
        if on:
            self.handler.hooks.register_after(HookType.READ, _mask, per_identity=True)

    async def start(self, port: int) -> int:
        if self.kind == "direct":
            from websocketspec.server.direct import DirectServer

            server = DirectServer(
                self.handler,
                "127.0.0.1",
                port,
                path="/ws",
                ping_interval=None,
                ping_timeout=None,
            )
            await server.start()

            async def stop_direct() -> None:
                await server.stop(timeout=5)
                await self.engine.dispose()

            self._stop = stop_direct
            return server.port
        import uvicorn

        config = uvicorn.Config(
            self.handler,
            host="127.0.0.1",
            port=port,
            ws="websockets-sansio",
            ws_per_message_deflate=False,
            ws_ping_interval=None,
            ws_ping_timeout=None,
            lifespan="on",
            log_level="warning",
        )
        uv = uvicorn.Server(config)
        task = asyncio.create_task(uv.serve())
        while not uv.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)

        async def stop_asgi() -> None:
            uv.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 15)
            await self.engine.dispose()

        self._stop = stop_asgi
        return int(uv.servers[0].sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._stop is not None:
            await self._stop()


_snapshot: list[Any] = []


def _alloc(action: str, top: int) -> dict[str, Any]:
    """Diagnostics: tracemalloc ``start`` (and a first snapshot), or ``diff`` against it."""
    import tracemalloc

    if action == "start":
        tracemalloc.start(8)
        _snapshot[:] = [tracemalloc.take_snapshot()]
        return {"ok": True}
    gc.collect()
    now = tracemalloc.take_snapshot()
    stats = now.compare_to(_snapshot[0], "traceback")
    rows = []
    for stat in stats[:top]:
        frames = [
            f"{frame.filename.rsplit('site-packages/', 1)[-1].rsplit('/src/', 1)[-1]}"
            f":{frame.lineno}"
            for frame in stat.traceback
        ]
        rows.append([stat.size_diff, stat.count_diff, frames])
    total = sum(s.size_diff for s in stats)
    tracemalloc.stop()
    return {"rows": rows, "total": total}


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=["raw", "direct", "asgi"], required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--broker", default=None, help="redis://…#channel")
    parser.add_argument("--profile", default=None, help="write cProfile stats here")
    args = parser.parse_args(argv)

    server: Any
    if args.kind == "raw":
        from bench.raw.server import RawServer

        server = RawServer(args.database, args.broker)
    else:
        server = _Framework(args.kind, args.database, args.broker)
    port = await server.start(args.port)

    profiler = cProfile.Profile() if args.profile else None
    out = sys.stdout.buffer
    out.write(_encode({"port": port}) + b"\n")
    out.flush()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd = _decode(line)
            name = cmd.get("cmd")
            answer: dict[str, Any]
            if name == "hook":
                server.hook(bool(cmd["on"]))
                answer = {"ok": True}
            elif name == "profile":
                if profiler is None:
                    answer = {"error": "started without --profile"}
                else:
                    if cmd["on"]:
                        profiler.enable()
                    else:
                        profiler.disable()
                    answer = {"ok": True}
            elif name == "gc":
                # Diagnostics: collections per generation; optionally freeze what
                # exists now (connections, subscriptions) out of future collections.
                if cmd.get("freeze"):
                    gc.collect()
                    gc.freeze()
                answer = {"stats": gc.get_stats(), "frozen": gc.get_freeze_count()}
            elif name == "alloc":
                answer = _alloc(str(cmd["action"]), int(cmd.get("top", 25)))
            elif name == "marks":
                answer = {"marks": list(server.marks)}
                server.marks.clear()
            elif name == "stop":
                break
            else:
                answer = {"error": f"unknown command {name!r}"}
            out.write(_encode(answer) + b"\n")
            out.flush()
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        await server.stop()
    out.write(_encode({"stopped": True}) + b"\n")
    out.flush()


if __name__ == "__main__":
    run(main())
