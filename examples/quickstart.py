"""The spec's Quick Start in Python: users and posts served at ws://127.0.0.1:8080/ws.

Run ``python examples/quickstart.py`` and connect any WebSocket client. Options:
``--port N``, ``--host H`` and ``--database URL`` (``sqlite:///app.db`` by default;
``postgresql://user@127.0.0.1:5432/app`` works too). A new database starts with empty
tables.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from websocketspec import Handler
from websocketspec.adapters.sqlalchemy import SQLAlchemyAdapter, create_engine


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(50), default="active")
    posts: Mapped[list[Post]] = relationship(back_populates="user")


class Post(Base):
    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    content: Mapped[str] = mapped_column(default="")
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    user: Mapped[User] = relationship(back_populates="posts")


def build(database: str) -> tuple[Handler, Any]:
    """Create the handler for ``database`` with both models registered."""
    engine = create_engine(database)
    handler = Handler(SQLAlchemyAdapter(engine))
    handler.registry.register_model("public.users", User)
    handler.registry.register_model("public.posts", Post)
    return handler, engine


def app(database: str = "sqlite:///app.db") -> Any:
    """An ASGI app serving the handler at ``/ws``; creates the tables on startup."""
    handler, engine = build(database)

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "websocket" and scope["path"] != "/ws":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await handler(scope, receive, send)

    @contextlib.asynccontextmanager
    async def running() -> AsyncIterator[None]:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        async with handler.lifespan():
            yield
        await engine.dispose()

    async def _lifespan(receive: Any, send: Any) -> None:
        stack = contextlib.AsyncExitStack()
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await stack.enter_async_context(running())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await stack.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    asgi.handler = handler  # type: ignore[attr-defined]
    return asgi


async def serve_direct(database: str, host: str, port: int) -> None:
    """Create the tables, then serve on the direct websockets server until SIGTERM/SIGINT."""
    from websocketspec.server.direct import DirectServer

    handler, engine = build(database)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    server = DirectServer(
        handler, host, port, path="/ws", ping_interval=20.0, ping_timeout=20.0
    )
    await server.serve_forever()
    await engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--database",
        default="sqlite:///app.db",
        help="database URL (default: sqlite:///app.db)",
    )
    parser.add_argument(
        "--asgi",
        action="store_true",
        help="serve the ASGI app with uvicorn instead of the direct websockets server",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    print(
        f"websocketspec quickstart: ws://{args.host}:{args.port}/ws on {args.database}",
        flush=True,
    )
    if not args.asgi:
        from websocketspec.cli.main import run

        run(lambda: serve_direct(args.database, args.host, args.port))
        return

    import uvicorn

    uvicorn.run(
        app(args.database),
        host=args.host,
        port=args.port,
        ws="websockets-sansio",
        ws_max_size=16 * 1024 * 1024,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        ws_per_message_deflate=False,
        lifespan="on",
        log_level="info",
    )


if __name__ == "__main__":
    main()
