"""Capture of writes made outside the API (PostgreSQL triggers feeding the change log).

``websocketspec capture install DATABASE users`` (the real command, in a subprocess)
puts a deferred trigger on the table. Then writes made with a plain asyncpg connection,
as ``psql``, a job or another service would make them (insert, update, delete, a
multi-row UPDATE in one transaction, and a transaction rolled back), must reach the
subscribers of every server process exactly as a write through the API does: same
notification shape, same filters, after-read hooks applied, in commit order, once; the
rolled-back one never. A write through the API is recorded by the API alone, never a
second time by the trigger. ``websocketspec capture remove`` stops it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tests.integration.test_brokers import (
    PrivateRedis,
    database,
    make_broker,
    module_redis,
    running_node,
)
from tests.integration.test_scaleout import (
    GOLD,
    ROOT,
    TIMEOUT,
    Cluster,
    Committed,
    Subscriber,
    cluster,
    committed,
)
from websocketspec import Handler, HookContext, HookType
from websocketspec import capture as capture_module

__all__ = ["cluster", "database", "module_redis"]  # fixtures of the other suites

Row = dict[str, Any]


def cli(*args: str) -> str:
    """Run ``websocketspec`` as a user would; returns what it printed."""
    result = subprocess.run(
        [sys.executable, "-m", "websocketspec", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result
    return result.stdout


@contextlib.asynccontextmanager
async def outside(database: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection, knowing nothing of websocketspec; all it does is bounded."""
    async with asyncio.timeout(TIMEOUT):
        conn = await asyncpg.connect(database, timeout=TIMEOUT)
        try:
            yield conn
        finally:
            await conn.close(timeout=TIMEOUT)


def assert_same_shape(captured: dict[str, Any], api: dict[str, Any]) -> None:
    """Two notifications differ in values only: same keys, same types, same metadata."""
    assert captured.keys() == api.keys()
    assert captured["metadata"].keys() == api["metadata"].keys()
    assert {k: type(v) for k, v in captured["data"].items()} == {
        k: type(v) for k, v in api["data"].items()
    }
    for key in ("type", "operation", "subscription_id", "schema", "entity"):
        assert captured[key] == api[key]


async def test_outside_writes_reach_every_process_like_api_writes(
    cluster: Cluster,
) -> None:
    a, b = cluster.start(2)
    assert cli("capture", "install", cluster.database, "users").split("\n")[0] == (
        "capturing public.users"
    )
    everything_a = await Subscriber.on(cluster, a, None)
    everything_b = await Subscriber.on(cluster, b, None)
    gold_b = await Subscriber.on(cluster, b, GOLD)
    subscribers = (everything_a, everything_b, gold_b)
    api_a, api_b = await cluster.client(a), await cluster.client(b)

    # What happened, in commit order: (operation, row the change carries).
    done: list[tuple[str, Row]] = []
    first = await api_a.ok(
        "create", "users", data={"name": "api-1", "email": "a@x.org", "status": "gold"}
    )
    done.append(("create", first))
    async with outside(cluster.database) as conn:
        inserted = dict(
            await conn.fetchrow(
                "INSERT INTO users (name, email, status) "
                "VALUES ('outside-1', 'o@x.org', 'gold') RETURNING *"
            )
        )
        done.append(("create", inserted))
        updated = dict(
            await conn.fetchrow(
                "UPDATE users SET status = 'plain' WHERE id = $1 RETURNING *",
                inserted["id"],
            )
        )
        done.append(("update", updated))
        deleted = dict(
            await conn.fetchrow(
                "DELETE FROM users WHERE id = $1 RETURNING *", inserted["id"]
            )
        )
        done.append(("delete", deleted))
        async with conn.transaction():
            for i in range(3):
                row = await conn.fetchrow(
                    "INSERT INTO users (name, email, status) "
                    "VALUES ($1, 'm@x.org', 'plain') RETURNING *",
                    f"multi-{i}",
                )
                done.append(("create", dict(row)))
        async with conn.transaction():  # one statement, three rows, one commit
            rows = await conn.fetch(
                "UPDATE users SET status = 'gold' WHERE name LIKE 'multi-%' RETURNING *"
            )
        assert len(rows) == 3
        # In the order the rows were updated, which is the order their triggers fire.
        done.extend(("update", dict(r)) for r in rows)
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO users (name, email, status) "
                    "VALUES ('ghost', 'g@x.org', 'gold')"
                )
                await conn.execute("UPDATE users SET status = 'silver'")
                raise RuntimeError("roll back")
    multi = done[4][1]
    last = await api_b.ok(
        "update", "users", record_id=str(multi["id"]), data={"status": "plain"}
    )
    done.append(("update", last))

    changes = await committed(cluster.database)
    assert_is(changes, done)
    for sub in subscribers:
        await sub.check(changes)
    # Same shape as a write through the API, on every process.
    for sub in (everything_a, everything_b):
        api_note, captured_note = sub.seen[0], sub.seen[1]
        assert captured_note["data"] == inserted
        assert_same_shape(captured_note, api_note)
    gold_notes = {n["metadata"]["seq"]: n for n in gold_b.seen}
    assert gold_notes[3]["operation"] == "delete"  # left the filter: the old row
    assert gold_notes[3]["metadata"]["change"] == "leave"
    assert gold_notes[3]["data"]["status"] == "gold"

    # Removing is one command too; outside writes are then not captured.
    assert cli("capture", "remove", cluster.database, "users").strip() == (
        "no longer capturing public.users"
    )
    async with outside(cluster.database) as conn:
        assert await capture_module.installed(cluster.database) == []
        await conn.execute(
            "INSERT INTO users (name, email, status) VALUES ('unseen', 'u@x.org', 'gold')"
        )
    after = await api_a.ok(
        "create", "users", data={"name": "api-2", "email": "a@x.org", "status": "gold"}
    )
    done.append(("create", after))
    changes = await committed(cluster.database)
    assert_is(changes, done)
    for sub in subscribers:
        await sub.check(changes)


def assert_is(changes: list[Committed], done: list[tuple[str, Row]]) -> None:
    """The log holds exactly what was done, once each, in order: no API write twice,
    nothing of the rolled-back transaction, nothing written after ``remove``."""
    logged = [(c.operation, c.new if c.new is not None else c.old) for c in changes]
    assert [c.seq for c in changes] == list(range(1, len(changes) + 1))
    assert logged == [(op, json.loads(json.dumps(row))) for op, row in done]


# -- hooks, in-process servers --------------------------------------------------------


def mask_emails(handler: Handler) -> None:
    @handler.hooks.after(HookType.READ)
    def mask(ctx: HookContext) -> None:
        if isinstance(ctx.result, dict) and ctx.result.get("email"):
            ctx.result["email"] = "***"
        elif isinstance(ctx.result, list):
            for row in ctx.result:
                if row.get("email"):
                    row["email"] = "***"


@pytest.mark.parametrize("kind", ["postgresql", "redis"])
async def test_captured_writes_pass_through_after_read_hooks_and_filters(
    kind: str, database: str, module_redis: PrivateRedis
) -> None:
    """Masking (after-read hooks) and filters shape captured changes on every server
    as they shape API writes; typed columns (int, float, bool) arrive as the API's."""
    first = make_broker(kind, database, module_redis)
    second = make_broker(kind, database, module_redis)
    if hasattr(first, "channel") and hasattr(second, "channel"):
        second.channel = first.channel
    async with (
        running_node(database, first, mask_emails) as a,
        running_node(database, second, mask_emails) as b,
    ):
        async with asyncio.timeout(TIMEOUT):
            captured = await capture_module.install(database, ["users"])
        assert captured == ["public.users"]
        subscribed = []
        for node in (a, b):
            client = await node.client()
            await client.subscribe(
                "users",
                options={
                    "filters": [{"column": "age", "operator": "gte", "value": 18}]
                },
            )
            subscribed.append(client)
        api = await a.client()
        adult = await api.ok(
            "create",
            "users",
            data={"name": "api", "email": "x@y.org", "age": 40, "score": 0.5},
        )
        async with outside(database) as conn:
            child = await conn.fetchval(
                "INSERT INTO users (name, email, age, score, active, status) "
                "VALUES ('kid', 'k@y.org', 9, 1.5, false, 'new') RETURNING id"
            )
            grown = await conn.fetchval(
                "INSERT INTO users (name, email, age, score, active, status) "
                "VALUES ('grown', 'g@y.org', 30, 2.5, true, 'new') RETURNING id"
            )
            await conn.execute("UPDATE users SET age = 18 WHERE id = $1", child)
        read = {r["id"]: r for r in await api.ok("read", "users")}
        assert read[grown]["email"] == "***"
        for client in subscribed:
            notes = [await client.notification(TIMEOUT) for _ in range(3)]
            assert await client.drain() == []
            assert [(n["operation"], n["data"]["id"]) for n in notes] == [
                ("create", adult["id"]),
                ("create", grown),
                ("create", child),  # the update brought it into the filter
            ]
            assert notes[0]["data"] == {**adult, "email": "***"}
            assert notes[1]["data"] == read[grown]  # masked, typed as the API's
            assert notes[2]["data"] == read[child]
            assert notes[2]["metadata"]["change"] == "enter"
            assert_same_shape(notes[1], notes[0])
        async with asyncio.timeout(TIMEOUT):
            assert await capture_module.remove(database) == ["public.users"]
            assert await capture_module.installed(database) == []
