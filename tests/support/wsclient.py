"""A small test client over a real WebSocket: responses by id, notifications in order."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

TIMEOUT = 10.0


class WSClient:
    """Talks the wire protocol; every wait has a timeout."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self.notifications: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.unmatched: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, **kwargs: Any) -> WSClient:
        ws = await asyncio.wait_for(connect(url, **kwargs), TIMEOUT)
        return cls(ws)

    async def _read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            if message.get("type") == "notification":
                await self.notifications.put(message)
                continue
            future = self._waiting.pop(message.get("id"), None)
            if future is not None and not future.done():
                future.set_result(message)
            else:
                await self.unmatched.put(message)

    def next_id(self) -> str:
        return f"t-{next(self._ids)}"

    async def send_raw(self, frame: str | bytes) -> None:
        await self.ws.send(frame)

    def expect(self, msg_id: Any) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting[msg_id] = future
        return future

    async def call(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one message and wait for the answer with its id."""
        message = dict(message)
        message.setdefault("id", self.next_id())
        future = self.expect(message["id"])
        await self.ws.send(json.dumps(message))
        return await asyncio.wait_for(future, TIMEOUT)

    async def request(
        self, operation: str, entity: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "request", "operation": operation, **fields}
        if entity is not None:
            message["entity"] = entity
        return await self.call(message)

    async def ok(self, operation: str, entity: str | None = None, **fields: Any) -> Any:
        """A request that must succeed; returns its data."""
        answer = await self.request(operation, entity, **fields)
        assert answer["success"] is True, answer
        return answer.get("data")

    async def subscribe(self, entity: str, **fields: Any) -> str:
        answer = await self.call(
            {
                "type": "subscription",
                "operation": "subscribe",
                "entity": entity,
                **fields,
            }
        )
        assert answer["success"] is True, answer
        return str(answer["data"]["subscription_id"])

    async def unsubscribe(self, subscription_id: str) -> dict[str, Any]:
        return await self.call(
            {
                "type": "subscription",
                "operation": "unsubscribe",
                "subscription_id": subscription_id,
            }
        )

    async def notification(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        return await asyncio.wait_for(self.notifications.get(), timeout)

    async def next_unmatched(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        return await asyncio.wait_for(self.unmatched.get(), timeout)

    async def barrier(self) -> None:
        """Round-trip a ping: everything the server queued before it has arrived."""
        answer = await self.call({"type": "ping"})
        assert answer["type"] == "pong"

    async def drain(self) -> list[dict[str, Any]]:
        """The notifications that arrived before a barrier."""
        await self.barrier()
        out = []
        while not self.notifications.empty():
            out.append(self.notifications.get_nowait())
        return out

    async def close(self) -> None:
        await asyncio.wait_for(self.ws.close(), TIMEOUT)
        with contextlib.suppress(Exception):  # the reader ends with the socket
            await asyncio.wait_for(self._reader, TIMEOUT)
        for future in self._waiting.values():
            future.cancel()

    async def __aenter__(self) -> WSClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
