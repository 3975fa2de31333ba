"""The quickstart's users and posts, served through Tortoise ORM.

Run ``python examples/tortoise_app/app.py`` and connect any WebSocket client to
ws://127.0.0.1:8080/ws. Options: ``--port N``, ``--host H`` and ``--database URL``
(``sqlite:///app.db`` by default; ``postgresql://user@127.0.0.1:5432/app`` works too).
A new database starts with empty tables. ``examples/quickstart.py --orm tortoise`` serves
the same through this module.

The steps every Tortoise application takes::

    await Tortoise.init(db_url=tortoise_url(database), modules={"models": [MODELS]})
    handler = Handler(TortoiseAdapter())
    handler.registry.register_model("public.users", User)   # after Tortoise.init
    handler.registry.register_model("public.posts", Post)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from tortoise import Tortoise
from tortoise.context import TortoiseContext

from websocketspec import Handler
from websocketspec.adapters.tortoise import TortoiseAdapter, tortoise_url
from websocketspec.broker import Broker, broker_from_url

MODELS = "tortoise_app.models"
"""The models' module, as Tortoise imports it (``examples/`` on ``sys.path``)."""


def build(broker: Broker | None = None) -> Handler:
    """A handler on the Tortoise adapter; :func:`serving` registers the models."""
    return Handler(TortoiseAdapter(), broker=broker)


async def create_tables(database: str) -> None:
    """Create the tables when missing (in a Tortoise context of their own)."""
    async with TortoiseContext() as context:
        await context.init(db_url=tortoise_url(database), modules={"models": [MODELS]})
        await context.generate_schemas(safe=True)


@contextlib.asynccontextmanager
async def serving(handler: Handler, database: str) -> AsyncIterator[Handler]:
    """Tortoise initialised for ``database`` and the models registered on ``handler``.

    The connections are closed on exit.
    """
    await Tortoise.init(db_url=tortoise_url(database), modules={"models": [MODELS]})
    try:
        from tortoise_app.models import Post, User

        if not handler.registry.entities:
            handler.registry.register_model("public.users", User)
            handler.registry.register_model("public.posts", Post)
        yield handler
    finally:
        await Tortoise.close_connections()


async def serve(host: str, port: int, database: str) -> None:
    """Serve on the direct websockets server until SIGTERM/SIGINT."""
    from websocketspec.server.direct import DirectServer

    await create_tables(database)
    handler = build(broker_from_url("memory://"))
    async with serving(handler, database):
        server = DirectServer(
            handler, host, port, path="/ws", ping_interval=20.0, ping_timeout=20.0
        )
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--database",
        default="sqlite:///app.db",
        help="database URL (default: sqlite:///app.db)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    # Run as a script, this file's folder is on sys.path, not the package's parent.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from websocketspec.cli.main import run

    print(
        f"websocketspec on Tortoise: ws://{args.host}:{args.port}/ws on {args.database}",
        flush=True,
    )
    run(lambda: serve(args.host, args.port, args.database))


if __name__ == "__main__":
    main()
