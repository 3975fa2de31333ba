"""The ASGI application: ``/ws`` to websocketspec, everything else to Django.

A tiny router, no Django Channels: WebSocket connections to ``/ws`` go to the
websocketspec handler (other paths are refused), HTTP goes to Django's own ASGI app,
and the lifespan (which Django's app does not speak) starts and stops the handler.
Serve it with any ASGI server: ``uvicorn project.asgi:application``.
"""

from __future__ import annotations

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_app = get_asgi_application()  # sets Django up: models can be imported now

from blog.models import Post, User  # noqa: E402

from websocketspec import Handler  # noqa: E402
from websocketspec.adapters.django import DjangoAdapter  # noqa: E402

handler = Handler(DjangoAdapter())
handler.registry.register_model("public.users", User)
handler.registry.register_model("public.posts", Post)


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Route one ASGI connection."""
    if scope["type"] == "websocket":
        if scope["path"] == "/ws":
            await handler(scope, receive, send)
        else:
            await send({"type": "websocket.close", "code": 1008})
    elif scope["type"] == "lifespan":
        await _lifespan(receive, send)
    else:
        await django_app(scope, receive, send)


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await handler.start()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await handler.stop()
            await send({"type": "lifespan.shutdown.complete"})
            return
