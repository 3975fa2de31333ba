"""Capture writes made outside the API (PostgreSQL): triggers that feed the change log.

``install`` puts a deferred constraint trigger on each table. At commit time it records
the row change in the change log (``websocketspec_outbox``) with the entity's next
sequence number and signals ``pg_notify``, exactly as a write through the API does, so
a row inserted, updated or deleted with ``psql``, a job or another service reaches
subscribers with the same notification shape, filters and hooks. Transactions made
through the API mark themselves (``websocketspec.api = on``) and are skipped by the
trigger, so they are never notified twice. ``remove`` takes the triggers away.

Capture needs a shared broker (``--broker postgresql://…`` delivers captured changes at
once; ``redis://…`` picks them up at its next sweep of the log). Rows are captured with
``to_jsonb``: their keys are the table's column names, which must be the names the
model uses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from websocketspec.adapters.sqlalchemy import create_engine
from websocketspec.adapters.sqlalchemy_log import lock_install, log_metadata
from websocketspec.exceptions import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["install", "installed", "remove"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")

FUNCTION = """
CREATE OR REPLACE FUNCTION websocketspec_capture() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_entity text := TG_ARGV[0];
    v_channel text := TG_ARGV[1];
    v_seq bigint;
BEGIN
    IF coalesce(current_setting('websocketspec.api', true), '') = 'on' THEN
        RETURN NULL;
    END IF;
    INSERT INTO websocketspec_streams (entity, seq, epoch)
    VALUES (v_entity, 1, md5(random()::text || clock_timestamp()::text))
    ON CONFLICT (entity) DO UPDATE SET seq = websocketspec_streams.seq + 1
    RETURNING seq INTO v_seq;
    INSERT INTO websocketspec_outbox (entity, seq, operation, old, new)
    VALUES (
        v_entity,
        v_seq,
        CASE TG_OP WHEN 'INSERT' THEN 'create' WHEN 'UPDATE' THEN 'update' ELSE 'delete' END,
        CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD)::text END,
        CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW)::text END
    );
    PERFORM pg_notify(v_channel, v_entity || ':' || v_seq);
    RETURN NULL;
END
$$
"""

TRIGGER = "websocketspec_capture"


def _check(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigurationError(f"not a plain table or entity name: {name!r}")
    return name


def _quote(table: str) -> str:
    return ".".join(f'"{part}"' for part in table.split("."))


async def install(
    url: str,
    tables: Sequence[str],
    *,
    entities: Mapping[str, str] | None = None,
    channel: str = "websocketspec",
    schema: str = "public",
) -> list[str]:
    """Install capture triggers on ``tables`` of the PostgreSQL database at ``url``.

    Args:
        url: the database (``postgresql://…``).
        tables: table names (``users`` or ``public.users``).
        entities: the registered entity name of a table when it is not
            ``schema.table`` (``{"users": "public.people"}``).
        channel: the broker's ``NOTIFY`` channel.
        schema: the schema of tables named without one.

    Returns:
        The tables now captured.
    """
    engine = create_engine(url)
    if engine.dialect.name != "postgresql":
        await engine.dispose()
        raise ConfigurationError("capture of outside writes needs PostgreSQL")
    done: list[str] = []
    try:
        async with engine.begin() as conn:
            await lock_install(conn)
            await conn.run_sync(log_metadata.create_all, checkfirst=True)
            await conn.exec_driver_sql(FUNCTION)
            for table in tables:
                qualified = _check(table if "." in table else f"{schema}.{table}")
                entity = _check((entities or {}).get(table, qualified))
                await conn.exec_driver_sql(
                    f"DROP TRIGGER IF EXISTS {TRIGGER} ON {_quote(qualified)}"
                )
                await conn.exec_driver_sql(
                    f"CREATE CONSTRAINT TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE "
                    f"ON {_quote(qualified)} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
                    f"EXECUTE FUNCTION websocketspec_capture('{entity}', '{_check(channel)}')"
                )
                done.append(qualified)
    finally:
        await engine.dispose()
    return done


async def remove(
    url: str, tables: Sequence[str] = (), *, schema: str = "public"
) -> list[str]:
    """Remove capture triggers from ``tables`` (every captured table when empty)."""
    engine = create_engine(url)
    removed: list[str] = []
    try:
        async with engine.begin() as conn:
            targets = list(tables) or await _captured(conn)
            for table in targets:
                qualified = _check(table if "." in table else f"{schema}.{table}")
                await conn.exec_driver_sql(
                    f"DROP TRIGGER IF EXISTS {TRIGGER} ON {_quote(qualified)}"
                )
                removed.append(qualified)
            if not tables:
                await conn.exec_driver_sql(
                    "DROP FUNCTION IF EXISTS websocketspec_capture()"
                )
    finally:
        await engine.dispose()
    return removed


async def installed(url: str) -> list[str]:
    """The tables that have a capture trigger."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await _captured(conn)
    finally:
        await engine.dispose()


async def _captured(conn: AsyncConnection) -> list[str]:
    result = await conn.exec_driver_sql(
        "SELECT n.nspname || '.' || c.relname FROM pg_trigger t "
        "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE t.tgname = '{TRIGGER}' ORDER BY 1"
    )
    return [str(row[0]) for row in result.all()]
