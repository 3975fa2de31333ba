"""``websocketspec serve``: run a handler on the direct ``websockets`` server (or uvicorn)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from websocketspec.exceptions import ConfigurationError, MissingDependencyError

try:
    import click
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("click", "cli") from exc

__all__ = ["main", "run"]


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a coroutine on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


@click.group()
@click.version_option(package_name="websocketspec")
def main() -> None:
    """Serve database models over one WebSocket."""


@main.command()
@click.argument("target", required=False)
@click.option(
    "--models",
    "models_module",
    help="Serve every SQLAlchemy model of this module (with --database).",
)
@click.option("--database", help="Database URL for --models, e.g. sqlite:///app.db.")
@click.option(
    "--create-tables", is_flag=True, help="With --models: create missing tables first."
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--path", default="/ws", show_default=True, help="The WebSocket endpoint's path."
)
@click.option("--ping-interval", default=20.0, show_default=True, type=float)
@click.option("--ping-timeout", default=20.0, show_default=True, type=float)
@click.option(
    "--max-size",
    default=16 * 1024 * 1024,
    show_default=True,
    type=int,
    help="Largest frame (bytes).",
)
@click.option(
    "--broker",
    default="memory://",
    show_default=True,
    help="memory://, redis://… or postgresql://… (for --models).",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=int,
    help="Processes sharing the port (needs a shared broker).",
)
@click.option("--log-level", default="info", show_default=True)
def serve(
    target: str | None,
    models_module: str | None,
    database: str | None,
    create_tables: bool,
    host: str,
    port: int,
    path: str,
    ping_interval: float,
    ping_timeout: float,
    max_size: int,
    broker: str,
    workers: int,
    log_level: str,
) -> None:
    """Serve TARGET ('module:handler') or the models of --models on --database.

    SIGTERM and SIGINT stop gracefully: requests in flight finish, connections close with
    1001 and disconnect hooks run before the database is released.
    """
    logging.basicConfig(
        level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    from websocketspec.broker import broker_from_url
    from websocketspec.cli.loading import load_handler, models_of
    from websocketspec.server.app import Handler
    from websocketspec.server.direct import DirectServer

    if (target is None) == (models_module is None):
        raise click.UsageError("give either TARGET (module:handler) or --models MODULE")
    worker = os.environ.get("WEBSOCKETSPEC_WORKER") == "1"
    if workers > 1:
        from websocketspec.cli.workers import supervise

        if target is None and broker == "memory://":
            raise click.UsageError(
                "--workers needs a shared broker: with memory:// each process would notify "
                "only its own clients of its own writes; use --broker redis://… or postgresql://…"
            )
        argv = [sys.executable, "-m", "websocketspec", *sys.argv[1:]]
        argv[argv.index("--workers") + 1] = "1"
        sys.exit(supervise(argv, workers))

    async def start() -> None:
        handler: Handler
        if target is not None:
            handler = load_handler(target)
            if worker and not handler.broker.shared:
                raise ConfigurationError(
                    "--workers needs the handler to use a shared broker (Redis or PostgreSQL)"
                )
        else:
            if not database:
                raise click.UsageError("--models needs --database")
            from websocketspec.adapters.sqlalchemy import SQLAlchemyAdapter

            models = models_of(str(models_module))
            adapter = SQLAlchemyAdapter(database)
            if create_tables and not worker:
                metadata = models[0].metadata
                async with adapter.engine.begin() as conn:
                    await conn.run_sync(metadata.create_all)
            handler = Handler(adapter, broker=broker_from_url(broker))
            for model in models:
                handler.registry.register_model(f"public.{model.__tablename__}", model)
        server = DirectServer(
            handler,
            host,
            port,
            path=path,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            max_size=max_size,
            reuse_port=worker,
        )
        click.echo(f"websocketspec: serving ws://{host}:{port}{path}", err=True)
        await server.serve_forever()

    try:
        run(start)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        click.echo(f"websocketspec: {exc}", err=True)
        sys.exit(1)


@main.group()
def capture() -> None:
    """Push writes made outside the API (PostgreSQL triggers)."""


@capture.command("install")
@click.argument("database")
@click.argument("tables", nargs=-1, required=True)
@click.option(
    "--channel",
    default="websocketspec",
    show_default=True,
    help="The broker's NOTIFY channel.",
)
def capture_install(database: str, tables: tuple[str, ...], channel: str) -> None:
    """Capture inserts, updates and deletes on TABLES of DATABASE.

    A table is captured as the entity 'schema.table'; write TABLE=ENTITY to name
    another (users=public.people).
    """
    from websocketspec import capture as capture_module

    names = [t.partition("=")[0] for t in tables]
    entities = {t.partition("=")[0]: t.partition("=")[2] for t in tables if "=" in t}

    async def go() -> None:
        done = await capture_module.install(
            database, names, entities=entities, channel=channel
        )
        for table in done:
            click.echo(f"capturing {table}")

    try:
        run(go)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None


@capture.command("remove")
@click.argument("database")
@click.argument("tables", nargs=-1)
def capture_remove(database: str, tables: tuple[str, ...]) -> None:
    """Stop capturing TABLES of DATABASE (every captured table when none is named)."""
    from websocketspec import capture as capture_module

    async def go() -> None:
        for table in await capture_module.remove(database, list(tables)):
            click.echo(f"no longer capturing {table}")

    try:
        run(go)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
