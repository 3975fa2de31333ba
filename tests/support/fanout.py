"""A fan-out over real :class:`Connection` objects whose sinks record every frame.

For unit tests of what each subscriber of a change is told, without sockets.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from websocketspec.hooks import Handshake, HookRegistry
from websocketspec.protocol.filters import Condition, Op
from websocketspec.protocol.values import ColumnType
from websocketspec.registry import EntityInfo
from websocketspec.server.connection import Connection
from websocketspec.server.subscriptions import Fanout, Subscription, SubscriptionTable

HANDSHAKE = Handshake(
    path="/ws", headers={}, query_params={}, cookies={}, client=None, subprotocols=()
)
USERS = EntityInfo(
    schema="public",
    name="users",
    model=None,
    columns={},
    relations={},
    primary_key=("id",),
)


class Sink:
    """Records the frames written to one connection, decoded."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    def write(self, text: str) -> int:
        self.frames.append(json.loads(text))
        return 0

    def close(self, code: int, reason: str) -> None:
        pass


class World:
    """A subscription table, its fan-out, and a connection per subscription."""

    def __init__(self, identity: Callable[[Connection], Any] | None = None) -> None:
        self.hooks = HookRegistry()
        self.table = SubscriptionTable()
        self.fanout = Fanout(self.table, self.hooks, identity=identity)
        self.sinks: dict[str, Sink] = {}

    def subscribe(
        self,
        sub_id: str,
        user: Any = None,
        where: Condition | None = None,
        columns: tuple[str, ...] | None = None,
        since: int = 0,
    ) -> Subscription:
        """A subscription on a connection of its own, of identity ``user`` if any."""
        conn = Connection(HANDSHAKE, max_queue=100, max_queue_bytes=1 << 20)
        if user is not None:
            conn.metadata["user_id"] = user
        conn.sink = self.sinks[sub_id] = Sink()
        sub = Subscription(sub_id, conn, USERS, where, columns, since=since)
        conn.subscriptions[sub.id] = sub
        self.table.add(sub)
        return sub

    def told(self, sub_id: str) -> list[dict[str, Any]]:
        return self.sinks[sub_id].frames


def status_is(value: str) -> Condition:
    return Condition("status", Op.EQ, value, ColumnType.STRING)
