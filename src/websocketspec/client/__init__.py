"""The Python clients: :class:`AsyncClient` (asyncio) and a small blocking wrapper.

::

    from websocketspec.client import connect

    async with connect("ws://127.0.0.1:8080/ws", token=get_token) as client:
        users = await client.read("users", filters=[("status", "eq", "active")])
        async for change in client.subscribe("users"):
            print(change.operation, change.data)

The blocking client lives in :mod:`websocketspec.client.sync` (``Client``,
``connect``). Both need the ``websockets`` package (``pip install
'websocketspec[cli]'``).
"""

from __future__ import annotations

from websocketspec.client.asyncio import (
    AsyncClient,
    ConnectionState,
    Notification,
    Page,
    Response,
    SubscribeCall,
    Subscription,
    Token,
    connect,
)
from websocketspec.exceptions import (
    ClientError,
    ConnectionClosedError,
    RequestTimeoutError,
    ServerError,
)
from websocketspec.protocol.correlation import Position

__all__ = [
    "AsyncClient",
    "ClientError",
    "ConnectionClosedError",
    "ConnectionState",
    "Notification",
    "Page",
    "Position",
    "RequestTimeoutError",
    "Response",
    "ServerError",
    "SubscribeCall",
    "Subscription",
    "Token",
    "connect",
]
