"""Group commit: creates of one entity that arrive together commit together.

Over real sockets on SQLite and PostgreSQL. A burst of creates is answered in full,
each row once, notified once in commit order; on PostgreSQL it takes far fewer
transactions than creates. A create that fails inside a group (a foreign key, a
row-security check) fails alone. After-create hooks opt out of grouping, so they run
once per create. On SQLite, creates wait for a write lock held by another connection
instead of failing.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.models import MODELS
from tests.support.servers import serve
from tests.support.wsclient import WSClient
from websocketspec import Handler
from websocketspec.adapters.sqlalchemy import SQLAlchemyAdapter
from websocketspec.exceptions import OperationError, ValidationError
from websocketspec.hooks import HookContext, HookType
from websocketspec.protocol.messages import FilterOption

BURST = 300


async def burst(client: WSClient, entity: str, rows: list[dict[str, Any]]) -> list[Any]:
    """Send every create at once (pipelined); the answers in the order sent."""
    return list(
        await asyncio.gather(*(client.request("create", entity, data=r) for r in rows))
    )


async def notified(watcher: WSClient, count: int) -> list[dict[str, Any]]:
    return [await watcher.notification() for _ in range(count)]


async def test_a_burst_of_creates_is_answered_notified_and_stored_once(
    connect: Callable[..., Any], engine: AsyncEngine
) -> None:
    watcher, writer = await connect(), await connect()
    await watcher.subscribe("users")
    answers = await burst(
        writer,
        "users",
        [{"name": f"u{i}", "email": f"u{i}@example.com"} for i in range(BURST)],
    )
    assert all(a["success"] for a in answers), [a for a in answers if not a["success"]]
    rows = [a["data"] for a in answers]
    assert [r["name"] for r in rows] == [f"u{i}" for i in range(BURST)]
    assert len({r["id"] for r in rows}) == BURST
    notes = await notified(watcher, BURST)
    assert await watcher.drain() == []
    # Commit order: keys are taken in the order the rows were written.
    ids = [n["data"]["id"] for n in notes]
    assert ids == sorted(ids)
    assert sorted(ids) == sorted(r["id"] for r in rows)
    assert {n["data"]["name"] for n in notes} == {r["name"] for r in rows}
    async with engine.connect() as conn:
        stored = (await conn.execute(sa.text("SELECT count(*) FROM users"))).scalar()
    assert stored == BURST


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_burst_of_creates_takes_few_transactions(
    connect: Callable[..., Any], engine: AsyncEngine
) -> None:
    commits = 0

    def count(_conn: Any) -> None:
        nonlocal commits
        commits += 1

    event.listen(engine.sync_engine, "commit", count)
    try:
        writer = await connect()
        answers = await burst(
            writer, "users", [{"name": f"t{i}"} for i in range(BURST)]
        )
    finally:
        event.remove(engine.sync_engine, "commit", count)
    assert all(a["success"] for a in answers)
    # One transaction per create before; a group takes what arrived meanwhile.
    assert commits <= BURST // 4, commits


async def test_a_failing_create_in_a_burst_fails_alone(
    connect: Callable[..., Any], engine: AsyncEngine
) -> None:
    watcher, writer = await connect(), await connect()
    owner = await writer.ok("create", "users", data={"name": "owner"})
    await watcher.subscribe("posts")
    rows = [{"title": f"p{i}", "user_id": owner["id"]} for i in range(60)]
    rows[30]["user_id"] = 999_999  # no such user: the foreign key refuses it
    answers = await burst(writer, "posts", rows)
    bad = answers.pop(30)
    assert bad["success"] is False
    assert bad["error"]["code"] == "create_error"
    assert "999" not in bad["error"]["message"]  # no SQL text leaks
    assert all(a["success"] for a in answers)
    notes = await notified(watcher, 59)
    assert await watcher.drain() == []
    assert sorted(n["data"]["title"] for n in notes) == sorted(
        f"p{i}" for i in range(60) if i != 30
    )
    async with engine.connect() as conn:
        titles = (await conn.execute(sa.text("SELECT title FROM posts"))).scalars()
        assert sorted(titles) == sorted(n["data"]["title"] for n in notes)


async def test_row_security_refuses_its_rows_alone_in_a_burst(
    handler: Handler, connect: Callable[..., Any]
) -> None:
    @handler.hooks.before(HookType.CREATE)
    def own_rows_only(ctx: HookContext) -> None:
        ctx.add_filter(FilterOption(column="status", operator="eq", value="active"))

    writer = await connect()
    rows = [
        {"name": f"r{i}", "status": "active" if i % 5 else "banned"} for i in range(40)
    ]
    answers = await burst(writer, "users", rows)
    for row, answer in zip(rows, answers, strict=True):
        if row["status"] == "banned":
            assert answer["error"]["code"] == "unauthorized", answer
        else:
            assert answer["success"] is True, answer
    stored = await writer.ok("read", "users", options={"limit": 100})
    assert sorted(r["name"] for r in stored) == sorted(
        r["name"] for r in rows if r["status"] == "active"
    )


async def test_after_create_hooks_run_once_per_create(
    handler: Handler, connect: Callable[..., Any]
) -> None:
    seen: list[str] = []

    @handler.hooks.after(HookType.CREATE)
    def audit(ctx: HookContext) -> None:
        seen.append(ctx.result["name"])
        if ctx.result["name"] == "a20":
            raise ValidationError("a20 is refused", field="name")

    writer = await connect()
    rows = [{"name": f"a{i}"} for i in range(40)]
    answers = await burst(writer, "users", rows)
    assert [a["success"] for a in answers] == [i != 20 for i in range(40)]
    assert answers[20]["error"]["code"] == "validation_error"
    # Grouped, the hooks of the rows before the refused one would run twice.
    assert sorted(seen) == sorted(f"a{i}" for i in range(40))
    stored = await writer.ok("read", "users", options={"limit": 100})
    assert len(stored) == 39


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_creates_wait_for_a_write_lock_held_elsewhere(
    connect: Callable[..., Any], database_url: str
) -> None:
    writer = await connect()
    await writer.ok("create", "users", data={"name": "first"})  # WAL is on
    other = sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=0)
    other.isolation_level = None
    other.execute("BEGIN IMMEDIATE")
    try:
        pending = asyncio.gather(
            *(
                writer.request("create", "users", data={"name": f"w{i}"})
                for i in range(20)
            )
        )
        await asyncio.sleep(0.3)
        assert not pending.done()  # waiting for the lock, not failed
    finally:
        other.execute("COMMIT")
        other.close()
    answers = await pending
    assert all(a["success"] for a in answers), answers
    stored = await writer.ok("read", "users", options={"limit": 100})
    assert len(stored) == 21


async def test_each_answer_is_its_own_row_whatever_columns_it_names(
    connect: Callable[..., Any],
) -> None:
    writer = await connect()
    rows: list[dict[str, Any]] = []
    for i in range(90):
        row: dict[str, Any] = {"label": f"l{i}", "count": i}
        if i % 3 == 0:
            row["price"] = f"{i}.25"
        if i % 4 == 0:
            row["doc"] = {"n": i, "tags": ["x", str(i)]}
        rows.append(row)
    answers = await burst(writer, "things", rows)
    for row, answer in zip(rows, answers, strict=True):
        assert answer["success"] is True, answer
        data = answer["data"]
        assert (data["label"], data["count"]) == (row["label"], row["count"])
        assert data["price"] == row.get("price")
        assert data["doc"] == row.get("doc")
        again = await writer.ok("read", "things", record_id=data["id"])
        assert again == data


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    "options",
    [{"inline_writes": False}, {"sqlite_synchronous": "FULL"}],
    ids=["thread", "full-durability"],
)
async def test_grouped_creates_through_aiosqlite_thread(
    engine: AsyncEngine, shell: str, options: dict[str, Any]
) -> None:
    """Without inline writes (turned off, or FULL durability, which never syncs the
    disk in the event loop) groups go through aiosqlite's thread, with the same
    answers, notifications and rows."""
    handler = Handler(SQLAlchemyAdapter(engine, **options))
    for name, model in MODELS.items():
        handler.registry.register_model(name, model)
    async with serve(shell, handler) as base:
        watcher = await WSClient.connect(f"{base}/ws")
        writer = await WSClient.connect(f"{base}/ws")
        try:
            await watcher.subscribe("users")
            answers = await burst(
                writer, "users", [{"name": f"s{i}"} for i in range(100)]
            )
            assert all(a["success"] for a in answers)
            notes = await notified(watcher, 100)
            assert sorted(n["data"]["id"] for n in notes) == sorted(
                a["data"]["id"] for a in answers
            )
            assert await watcher.drain() == []
            async with engine.connect() as conn:
                mode = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar()
                count = (
                    await conn.execute(sa.text("SELECT count(*) FROM users"))
                ).scalar()
            assert count == 100
            assert mode == (2 if options.get("sqlite_synchronous") == "FULL" else 1)
        finally:
            await watcher.close()
            await writer.close()
    await handler.stop()


class LostAtCommit(SQLAlchemyAdapter):
    """Commits each group, then reports a lost connection (as when the commit's
    acknowledgement never arrives): whether the rows were written is unknown."""

    async def create_group(self, entity: Any, items: Any) -> Any:
        await super().create_group(entity, items)
        raise OperationError("create", "connection lost at commit")


async def test_a_group_whose_commit_is_uncertain_is_never_written_again(
    engine: AsyncEngine, shell: str
) -> None:
    handler = Handler(LostAtCommit(engine))
    for name, model in MODELS.items():
        handler.registry.register_model(name, model)
    async with serve(shell, handler) as base:
        writer = await WSClient.connect(f"{base}/ws")
        try:
            answers = await burst(
                writer, "users", [{"name": f"u{i}"} for i in range(50)]
            )
        finally:
            await writer.close()
    await handler.stop()
    assert {a["error"]["code"] for a in answers} == {"create_error"}
    async with engine.connect() as conn:
        names = (await conn.execute(sa.text("SELECT name FROM users"))).scalars().all()
    # Every group was committed once; none was run again create by create.
    assert sorted(names) == sorted(f"u{i}" for i in range(50))
