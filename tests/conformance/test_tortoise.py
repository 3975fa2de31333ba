"""What the Tortoise adapter adds to the conformance suite, on SQLite and PostgreSQL.

The ORM inside a write's transaction (an after-hook's queries join it), rows shared
with Tortoise's own querysets in both directions, concurrent work on Tortoise's single
SQLite connection and on two connections, the example application as a process, and
the URL helper.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from tortoise.context import TortoiseContext

from tests.conformance.conftest import tortoise_handler
from tests.conformance.tortoise_models import MODELS, Post, Thing, User
from tests.support.databases import create_database, drop_database
from tests.support.servers import serve
from tests.support.wsclient import WSClient
from websocketspec import Config, Handler, HookContext, HookType, ValidationError
from websocketspec.adapters.base import Change, Write
from websocketspec.adapters.tortoise import TortoiseAdapter, tortoise_url
from websocketspec.protocol.filters import compile_filters
from websocketspec.protocol.messages import FilterOption

TIMEOUT = 30.0


async def test_an_after_hook_uses_the_orm_inside_the_write(database_url: str) -> None:
    """An after-hook's ORM calls join the write's transaction: they see the new row,
    and the hook's failure undoes both."""
    async with tortoise_handler(database_url, Config()) as handler:
        seen: list[int] = []

        async def audit(ctx: HookContext) -> None:
            if ctx.entity != "posts":
                return
            assert ctx.result is not None
            await User.filter(id=ctx.result["user_id"]).update(status="posted")
            seen.append(await Post.all().count())
            if ctx.result["title"] == "refused":
                raise ValidationError("no", field="title")

        handler.hooks.after(HookType.CREATE)(audit)
        async with serve("direct", handler) as base:
            client = await WSClient.connect(f"{base}/ws")
            try:
                user = await client.ok("create", "users", data={"name": "a"})
                await client.ok(
                    "create", "posts", data={"title": "ok", "user_id": user["id"]}
                )
                read = await client.ok("read", "users", record_id=user["id"])
                assert read["status"] == "posted"
                await client.ok(
                    "update", "users", record_id=user["id"], data={"status": "active"}
                )
                refused = await client.request(
                    "create", "posts", data={"title": "refused", "user_id": user["id"]}
                )
                assert refused["error"]["code"] == "validation_error"
                assert seen == [1, 2]  # the second post was visible to the hook…
                assert len(await client.ok("read", "posts")) == 1  # …and rolled back,
                read = await client.ok("read", "users", record_id=user["id"])
                assert read["status"] == "active"  # with the hook's own update
            finally:
                await client.close()


def _adapter(handler: Any) -> TortoiseAdapter:
    adapter = handler.adapter
    assert isinstance(adapter, TortoiseAdapter)
    return adapter


async def test_rows_are_shared_with_tortoises_own_querysets(database_url: str) -> None:
    """Values are stored as Tortoise stores them: each side reads the other's rows."""
    async with tortoise_handler(database_url, Config()) as handler:
        context = _adapter(handler).context
        assert context is not None
        async with serve("direct", handler) as base:
            client = await WSClient.connect(f"{base}/ws")
            try:
                key = str(uuid.uuid4())
                sent = {
                    "id": key,
                    "count": 7,
                    "ratio": 0.5,
                    "price": "12.30",
                    "label": "Ünï",
                    "body": "b",
                    "flag": True,
                    "day": "1999-12-31",
                    "moment": "2024-02-29T23:30:00.5+02:00",
                    "doc": {"a": [1, None]},
                    "blob": "AAE=",
                }
                await client.ok("create", "things", data=sent)
                with context:
                    async with asyncio.timeout(TIMEOUT):
                        thing = await Thing.get(id=key)
                        assert (thing.count, thing.ratio, thing.price) == (
                            7,
                            0.5,
                            Decimal("12.30"),
                        )
                        assert (thing.label, thing.flag, thing.doc, thing.blob) == (
                            "Ünï",
                            True,
                            {"a": [1, None]},
                            b"\x00\x01",
                        )
                        assert thing.day == dt.date(1999, 12, 31)
                        assert thing.moment == dt.datetime(
                            2024, 2, 29, 21, 30, 0, 500000, tzinfo=dt.UTC
                        )
                        made = await Thing.create(
                            count=-1,
                            price=Decimal("0.10"),
                            moment=dt.datetime(2000, 1, 1, 12, tzinfo=dt.UTC),
                            day=dt.date(2000, 1, 2),
                            doc=[1, "x"],
                            flag=False,
                        )
                rows = await client.ok(
                    "read",
                    "things",
                    options={
                        "filters": [
                            {"column": "price", "operator": "lt", "value": "1"},
                            {
                                "column": "moment",
                                "operator": "eq",
                                "value": "2000-01-01T12:00:00Z",
                            },
                            {"column": "day", "operator": "gt", "value": "2000-01-01"},
                        ]
                    },
                )
                assert rows == [
                    {
                        "id": str(made.id),
                        "count": -1,
                        "ratio": None,
                        "price": "0.10",
                        "label": None,
                        "body": None,
                        "flag": False,
                        "day": "2000-01-02",
                        "moment": "2000-01-01T12:00:00Z",
                        "clock": None,
                        "doc": [1, "x"],
                        "blob": None,
                    }
                ]
            finally:
                await client.close()


async def test_concurrent_work_shares_the_connection(database_url: str) -> None:
    """Reads and writes from many clients at once, idempotent twins among them: every
    one answers (on SQLite, Tortoise serialises them on its one connection)."""
    async with (
        tortoise_handler(database_url, Config()) as handler,
        serve("direct", handler) as base,
    ):
        clients = [await WSClient.connect(f"{base}/ws") for _ in range(4)]
        try:
            user = await clients[0].ok("create", "users", data={"name": "u"})
            key = {"metadata": {"idempotency_key": f"twin-{uuid.uuid4().hex}"}}

            async def work(i: int) -> None:
                client = clients[i % len(clients)]
                await client.ok("create", "users", data={"name": f"n{i}"})
                await client.ok(
                    "create", "posts", data={"title": f"{i}", "user_id": user["id"]}
                )
                await client.ok(
                    "update", "users", record_id=user["id"], data={"age": i}
                )
                await client.ok(
                    "read",
                    "users",
                    options={"preload": [{"relation": "posts", "limit": 2}]},
                )
                twin = await client.request(
                    "create", "users", data={"name": "twin"}, **key
                )
                assert twin["success"] is True, twin

            async with asyncio.timeout(TIMEOUT):
                await asyncio.gather(*(work(i) for i in range(24)))
            names = [
                r["name"]
                for r in await clients[0].ok("read", "users", options={"limit": 1000})
            ]
            assert names.count("twin") == 1
            assert len(names) == 1 + 24 + 1
            assert len(await clients[1].ok("read", "posts")) == 24
        finally:
            for client in clients:
                await client.close()


async def _accept(changes: list[Change]) -> None:
    return None


async def test_writers_on_two_connections_wait_for_each_other(
    database_url: str,
) -> None:
    """Two Tortoise contexts (as two processes would have): read-then-write units on
    one row take the write lock up front, so none fails with "database is locked"."""
    async with tortoise_handler(database_url, Config()) as first:
        adapter = _adapter(first)
        assert adapter.context is not None
        name = adapter.connection
        config = {
            "connections": {name: tortoise_url(database_url)},
            "apps": {
                "models": {
                    "models": ["tests.conformance.tortoise_models"],
                    "default_connection": name,
                }
            },
        }
        context = TortoiseContext()
        try:
            with context:
                async with asyncio.timeout(TIMEOUT):
                    await context.init(config=config)
            second = Handler(TortoiseAdapter(name, context=context))
            for key, model in MODELS.items():
                second.registry.register_model(key, model, bulk=True)
            users = [h.registry.get("users") for h in (first, second)]
            row = {"name": "x", "status": "s", "active": True}
            async with asyncio.timeout(TIMEOUT):
                await adapter.write(users[0], Write("create", rows=(row,)), _accept)
            where = compile_filters(
                [FilterOption("name", "eq", "x")], users[0].column_types
            )

            async def bump(handler: Handler, entity: Any) -> None:
                for i in range(40):
                    write = Write(
                        "update", data={"age": i}, where=where, bulk=True, limit=5
                    )
                    await handler.adapter.write(entity, write, _accept)

            async with asyncio.timeout(TIMEOUT):
                await asyncio.gather(bump(first, users[0]), bump(second, users[1]))
        finally:
            async with asyncio.timeout(TIMEOUT):
                await context.close_connections()


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tortoise_app" / "app.py"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _output(log: Path) -> str:
    return log.read_text(errors="replace")  # once, when the process ended


async def _connect(url: str, proc: asyncio.subprocess.Process, log: Path) -> WSClient:
    """Connect once the process listens (it gives no other sign of it)."""
    while True:
        assert proc.returncode is None, _output(log)
        try:
            return await WSClient.connect(url)
        except OSError:
            await asyncio.sleep(0.05)


async def test_the_example_app_serves_users_and_posts(
    backend: str, tmp_path: Path
) -> None:
    """``python examples/tortoise_app/app.py`` as a real process, on a new database."""
    if backend == "sqlite":
        database, made = f"sqlite:///{tmp_path / 'app.db'}", None
    else:
        database = made = await asyncio.wait_for(create_database(), TIMEOUT)
    port = _free_port()
    log = tmp_path / "app.log"
    try:
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(EXAMPLE),
                "--port",
                str(port),
                "--database",
                database,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        try:
            async with asyncio.timeout(60):
                client = await _connect(f"ws://127.0.0.1:{port}/ws", proc, log)
                try:
                    user = await client.ok(
                        "create", "users", data={"name": "Ann", "email": "a@x"}
                    )
                    assert user == {
                        "id": 1,
                        "name": "Ann",
                        "email": "a@x",
                        "status": "active",
                    }
                    await client.ok(
                        "create", "posts", data={"title": "t", "user_id": 1}
                    )
                    rows = await client.ok(
                        "read", "posts", options={"preload": [{"relation": "user"}]}
                    )
                    assert rows == [
                        {
                            "id": 1,
                            "title": "t",
                            "content": "",
                            "user_id": 1,
                            "user": user,
                        }
                    ]
                finally:
                    await client.close()
        finally:
            if proc.returncode is None:
                proc.terminate()
            code = await asyncio.wait_for(proc.wait(), TIMEOUT)
        output = _output(log)
        assert code == 0, output
        assert "Traceback" not in output, output
    finally:
        if made is not None:
            await asyncio.wait_for(drop_database(made), TIMEOUT)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///app.db", "sqlite://app.db"),
        ("sqlite:////srv/data/app.db", "sqlite:///srv/data/app.db"),
        ("sqlite+aiosqlite:///app.db", "sqlite://app.db"),
        ("sqlite:///:memory:", "sqlite://:memory:"),
        ("postgresql://u:p@127.0.0.1:5432/app", "postgres://u:p@127.0.0.1:5432/app"),
        ("postgresql+asyncpg://u@h/app", "postgres://u@h/app"),
        ("postgres://u@h/app?ssl=true", "postgres://u@h/app?ssl=true"),
    ],
)
def test_plain_urls_become_tortoises(url: str, expected: str) -> None:
    assert tortoise_url(url) == expected


@pytest.mark.parametrize("url", ["app.db", "mysql://u@h/db", "redis://h"])
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        tortoise_url(url)


def test_missing_tortoise_names_the_extra_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['tortoise'] = None\n"
        "from websocketspec import MissingDependencyError\n"
        "try:\n"
        "    import websocketspec.adapters.tortoise\n"
        "except MissingDependencyError as exc:\n"
        "    assert exc.extra == 'tortoise', exc.extra\n"
        "    assert exc.package == 'tortoise-orm', exc.package\n"
        '    assert "websocketspec[tortoise]" in str(exc), str(exc)\n'
        "else:\n"
        "    raise SystemExit('no MissingDependencyError')\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
