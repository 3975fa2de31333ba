"""The raw baseline: a plain ``websockets`` server doing the same work with no framework.

It speaks just enough of the protocol for the benchmark's drivers: ``read`` by primary
key, ``create`` and ``subscribe`` on ``users``. Each request frame is parsed with msgspec
(as the framework does), handled in a task of its own (requests of one connection run
concurrently, as in the framework), and answered with the same response shape and
timestamp format. Reads and inserts use the same drivers as the framework's SQLAlchemy
engine (aiosqlite, asyncpg) directly, with a small pool; a create answers the writer and
then sends one notification to every subscriber with ``websockets.broadcast`` (the same
bytes to all). With ``--broker redis://…#channel`` the notification goes through Redis
pub/sub instead, and every process broadcasts what it hears to its own subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

__all__ = ["RawServer"]

_COLUMNS = ("id", "name", "email", "status")


class _Request(msgspec.Struct):
    id: str | int | None = None
    type: str | None = None
    operation: str | None = None
    entity: str | None = None
    record_id: str | int | None = None
    data: dict[str, Any] | None = None
    options: dict[str, Any] | None = None


_decode = msgspec.json.Decoder(_Request).decode
_encode = msgspec.json.Encoder().encode


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Sqlite:
    """aiosqlite: a pool of reader connections and one writer (SQLite has one)."""

    def __init__(self, path: str, readers: int = 5) -> None:
        self.path = path
        self.size = readers
        self.readers: asyncio.Queue[Any] = asyncio.Queue()
        self.writer: Any = None

    async def open(self) -> None:
        import aiosqlite

        for _ in range(self.size + 1):
            conn = await aiosqlite.connect(self.path, isolation_level=None)
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            if self.writer is None:
                self.writer = conn
            else:
                self.readers.put_nowait(conn)

    async def close(self) -> None:
        while not self.readers.empty():
            await self.readers.get_nowait().close()
        if self.writer is not None:
            await self.writer.close()

    async def get(self, key: int) -> dict[str, Any] | None:
        conn = await self.readers.get()
        try:
            rows = await conn.execute_fetchall(
                "SELECT id, name, email, status FROM users WHERE id = ?", (key,)
            )
        finally:
            self.readers.put_nowait(conn)
        for row in rows:
            return dict(zip(_COLUMNS, row, strict=True))
        return None

    async def insert(self, data: dict[str, Any]) -> dict[str, Any]:
        rows = await self.writer.execute_fetchall(
            "INSERT INTO users (name, email, status) VALUES (?, ?, ?) "
            "RETURNING id, name, email, status",
            (data["name"], data["email"], data.get("status", "active")),
        )
        return dict(zip(_COLUMNS, next(iter(rows)), strict=True))


class _Postgres:
    """asyncpg with a pool (prepared statements cached per connection)."""

    def __init__(self, url: str, size: int = 5) -> None:
        self.url = url
        self.size = size
        self.pool: Any = None

    async def open(self) -> None:
        import asyncpg

        self.pool = await asyncpg.create_pool(
            self.url, min_size=self.size, max_size=self.size
        )

    async def close(self) -> None:
        await self.pool.close()

    async def get(self, key: int) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(
            "SELECT id, name, email, status FROM users WHERE id = $1", key
        )
        return None if row is None else dict(row)

    async def insert(self, data: dict[str, Any]) -> dict[str, Any]:
        row = await self.pool.fetchrow(
            "INSERT INTO users (name, email, status) VALUES ($1, $2, $3) "
            "RETURNING id, name, email, status",
            data["name"],
            data["email"],
            data.get("status", "active"),
        )
        return dict(row)


def _database(url: str) -> _Sqlite | _Postgres:
    scheme, _, rest = url.partition("://")
    if scheme.startswith("sqlite"):
        return _Sqlite(rest[1:] if rest.startswith("/") else rest)
    return _Postgres(f"postgresql://{rest}")


class RawServer:
    """The baseline server (see the module docstring)."""

    def __init__(self, database: str, broker: str | None = None) -> None:
        self.db = _database(database)
        self.broker = broker
        self.subscribers: set[ServerConnection] = set()
        self.marks: list[tuple[str, float, float]] = []
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._redis: Any = None
        self._channel = ""
        self._listener: asyncio.Task[None] | None = None

    def hook(self, on: bool) -> None:
        """The baseline has no hooks."""

    async def start(self, port: int) -> int:
        await self.db.open()
        if self.broker:
            await self._start_redis()
        self._server = await serve(
            self._serve,
            "127.0.0.1",
            port,
            compression=None,
            ping_interval=None,
            max_size=16 * 1024 * 1024,
            backlog=1024,
        )
        return int(next(iter(self._server.sockets)).getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 10)
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(BaseException):
                await self._listener
        if self._redis is not None:
            await self._redis.aclose()
        await self.db.close()

    # -- connections ------------------------------------------------------------------

    async def _serve(self, ws: ServerConnection) -> None:
        tasks = self._tasks
        try:
            async for text in ws:
                task = asyncio.create_task(self._handle(ws, text))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except ConnectionClosed:
            pass
        finally:
            self.subscribers.discard(ws)

    async def _handle(self, ws: ServerConnection, text: str | bytes) -> None:
        msg = _decode(text)
        try:
            if msg.operation == "read":
                row = await self.db.get(int(msg.record_id or 0))
                if row is None:
                    answer = _error(msg.id, "not_found", "no such row")
                else:
                    answer = _response(msg.id, row)
                await ws.send(answer)
            elif msg.operation == "create":
                row = await self.db.insert(msg.data or {})
                await ws.send(_response(msg.id, row))
                await self._notify(row)
            elif msg.operation == "subscribe":
                self.subscribers.add(ws)
                data = {
                    "subscription_id": f"sub-{id(ws)}",
                    "schema": "public",
                    "entity": "users",
                }
                await ws.send(_response(msg.id, data))
            else:
                await ws.send(_error(msg.id, "invalid_operation", "not supported"))
        except ConnectionClosed:
            pass

    # -- notifications ----------------------------------------------------------------

    def _broadcast(self, row: dict[str, Any]) -> None:
        start = time.monotonic()
        text = _encode(
            {
                "type": "notification",
                "operation": "create",
                "subscription_id": "sub-raw",
                "schema": "public",
                "entity": "users",
                "data": row,
                "metadata": {"source_operation": "create"},
                "timestamp": _now(),
            }
        ).decode()
        broadcast(self.subscribers, text)
        self.marks.append((str(row.get("name")), start, time.monotonic()))

    async def _notify(self, row: dict[str, Any]) -> None:
        if self._redis is None:
            self._broadcast(row)
            return
        await self._redis.publish(self._channel, _encode(row))

    async def _start_redis(self) -> None:
        import redis.asyncio as aioredis

        assert self.broker is not None
        url, _, channel = self.broker.partition("#")
        self._channel = channel or "wsspec-bench-raw"
        self._redis = aioredis.from_url(url)
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self._channel)
        row_decode = msgspec.json.Decoder(dict[str, Any]).decode

        async def listen() -> None:
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    self._broadcast(row_decode(message["data"]))

        self._listener = asyncio.create_task(listen())


def _response(msg_id: Any, data: Any) -> str:
    return _encode(
        {
            "id": msg_id,
            "type": "response",
            "success": True,
            "data": data,
            "timestamp": _now(),
        }
    ).decode()


def _error(msg_id: Any, code: str, message: str) -> str:
    return _encode(
        {
            "id": msg_id,
            "type": "response",
            "success": False,
            "error": {"code": code, "message": message},
            "timestamp": _now(),
        }
    ).decode()
