"""The spec's Quick Start in Python: users and posts served at ws://127.0.0.1:8080/ws.

Run ``python examples/quickstart.py`` and connect any WebSocket client. Options:
``--port N``, ``--host H`` and ``--database URL`` (``sqlite:///app.db`` by default;
``postgresql://user@127.0.0.1:5432/app`` works too). A new database starts with empty
tables. ``--orm django`` serves the same two entities, with the same wire behaviour,
through Django's ORM (the models of ``examples/django_app/blog/models.py``) instead of
SQLAlchemy's; ``--orm tortoise`` through Tortoise ORM (``examples/tortoise_app/``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from websocketspec import Handler
from websocketspec.adapters.sqlalchemy import SQLAlchemyAdapter, create_engine
from websocketspec.broker import broker_from_url


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


ORMS = ("sqlalchemy", "django", "tortoise")
DJANGO_APP = Path(__file__).resolve().parent / "django_app"


def setup_django(database: str) -> None:
    """Configure Django for ``database`` with the example's ``blog`` app (once)."""
    import django
    from django.conf import settings

    if settings.configured:
        return
    sys.path.insert(0, str(DJANGO_APP))
    from project.database import database_settings

    settings.configure(
        DATABASES={"default": database_settings(database)},
        INSTALLED_APPS=["blog"],
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    )
    django.setup()


def build(
    database: str, broker: str = "memory://", orm: str = "sqlalchemy"
) -> tuple[Handler, Any]:
    """Create the handler for ``database`` with both models registered.

    Returns:
        The handler and the SQLAlchemy engine to dispose of (``None`` for Django).
    """
    if orm == "django":
        setup_django(database)
        from blog.models import Post as DjangoPost
        from blog.models import User as DjangoUser

        from websocketspec.adapters.django import DjangoAdapter

        handler = Handler(DjangoAdapter(), broker=broker_from_url(broker))
        handler.registry.register_model("public.users", DjangoUser)
        handler.registry.register_model("public.posts", DjangoPost)
        return handler, None
    if orm == "tortoise":
        from tortoise_app.app import build as build_tortoise

        # The models are registered once Tortoise is initialised (see opened()).
        return build_tortoise(broker_from_url(broker)), None
    if orm != "sqlalchemy":
        raise ValueError(f"expected --orm to be one of {', '.join(ORMS)}, got {orm!r}")
    engine = create_engine(database)
    handler = Handler(SQLAlchemyAdapter(engine), broker=broker_from_url(broker))
    handler.registry.register_model("public.users", User)
    handler.registry.register_model("public.posts", Post)
    return handler, engine


def app(
    database: str = "sqlite:///app.db",
    broker: str = "memory://",
    orm: str = "sqlalchemy",
) -> Any:
    """An ASGI app serving the handler at ``/ws``; creates the tables on startup."""
    handler, engine = build(database, broker, orm)

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "websocket" and scope["path"] != "/ws":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await handler(scope, receive, send)

    @contextlib.asynccontextmanager
    async def running() -> AsyncIterator[None]:
        await create_tables(database, orm)
        async with opened(handler, database, orm), handler.lifespan():
            yield
        if engine is not None:
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


def _create_django_tables() -> None:
    from blog.models import Post as DjangoPost
    from blog.models import User as DjangoUser
    from django.db import connection

    existing = set(connection.introspection.table_names())
    with connection.schema_editor() as editor:
        for model in (DjangoUser, DjangoPost):
            if model._meta.db_table not in existing:
                editor.create_model(model)


@contextlib.asynccontextmanager
async def opened(handler: Handler, database: str, orm: str) -> AsyncIterator[None]:
    """Initialise an ORM that is async (Tortoise) and register its models; close it after."""
    if orm != "tortoise":
        yield
        return
    from tortoise_app.app import serving

    async with serving(handler, database):
        yield


async def create_tables(database: str, orm: str = "sqlalchemy") -> None:
    """Create the quickstart's tables when missing."""
    if orm == "tortoise":
        from tortoise_app.app import create_tables as create_tortoise_tables

        await create_tortoise_tables(database)
        return
    if orm == "django":
        from asgiref.sync import sync_to_async

        setup_django(database)
        await sync_to_async(_create_django_tables, thread_sensitive=True)()
        return
    engine = create_engine(database)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    await engine.dispose()


async def serve_direct(args: argparse.Namespace) -> None:
    """Serve on the direct websockets server until SIGTERM/SIGINT."""
    from websocketspec.server.direct import DirectServer

    if not args.worker:
        await create_tables(args.database, args.orm)
    handler, engine = build(args.database, args.broker, args.orm)
    server = DirectServer(
        handler,
        args.host,
        args.port,
        path="/ws",
        ping_interval=20.0,
        ping_timeout=20.0,
        reuse_port=args.worker,
    )
    async with opened(handler, args.database, args.orm):
        await server.serve_forever()
    if engine is not None:
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
        "--orm",
        choices=ORMS,
        default="sqlalchemy",
        help="the ORM serving the models: sqlalchemy (default), django or tortoise",
    )
    parser.add_argument(
        "--broker",
        default="memory://",
        help="memory:// (default), redis://host:6379/0 or postgresql://… to share "
        "notifications between processes",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="processes sharing the port"
    )
    parser.add_argument(
        "--asgi",
        action="store_true",
        help="serve the ASGI app with uvicorn instead of the direct websockets server",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.workers > 1:
        if args.broker == "memory://":
            parser.error(
                "--workers needs a shared broker: with memory:// each process would "
                "notify only its own clients of its own writes; use --broker "
                "redis://… or --broker postgresql://…"
            )
        if args.asgi:
            parser.error("--workers runs the direct server; drop --asgi")
        from websocketspec.cli.main import run
        from websocketspec.cli.workers import supervise

        run(lambda: create_tables(args.database, args.orm))
        print(
            f"websocketspec quickstart: {args.workers} workers at "
            f"ws://{args.host}:{args.port}/ws on {args.database}, broker {args.broker}",
            flush=True,
        )
        worker = [sys.executable, __file__, *(argv or sys.argv[1:]), "--worker"]
        worker[worker.index("--workers") + 1] = "1"
        sys.exit(supervise(worker, args.workers))
    if not args.worker:
        print(
            f"websocketspec quickstart: ws://{args.host}:{args.port}/ws on {args.database}"
            + (f" ({args.orm})" if args.orm != "sqlalchemy" else ""),
            flush=True,
        )
    if not args.asgi:
        from websocketspec.cli.main import run

        run(lambda: serve_direct(args))
        return

    import uvicorn

    uvicorn.run(
        app(args.database, args.broker, args.orm),
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
