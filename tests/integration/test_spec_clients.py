"""The README's own client classes, unmodified, against the quickstart as a real process.

``tests/spec_clients/websocket_client.py`` and ``tests/js/websocket_client.ts`` are the spec's
Python and TypeScript ``WebSocketClient`` classes copied verbatim. Each test starts
``examples/quickstart.py`` as a subprocess on a free port and drives one of them over a real
socket the way the README's usage does: read users with a filter, subscribe to users with a
filter, create a user, and receive the notification. The Python client runs on SQLite over
both server shells (the default direct server and ``--asgi``) and on PostgreSQL given as a plain
``postgresql://`` URL; the TypeScript client runs under Node on SQLite over both shells.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.spec_clients.websocket_client import WebSocketClient
from tests.support.databases import create_database, drop_database

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.py"
JS_DIR = ROOT / "tests" / "js"
TIMEOUT = 10.0
STARTUP_TIMEOUT = 30.0
ACTIVE = [{"column": "status", "operator": "eq", "value": "active"}]


@dataclass
class Quickstart:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until_accepting(server: Quickstart, port: int) -> None:
    """Bounded loop of connection attempts; fails at once if the process exits."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if server.process.poll() is not None:
            pytest.fail(
                f"the quickstart exited with {server.process.returncode} before "
                f"accepting connections:\n{server.output()}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the quickstart did not accept connections on port {port} "
                    f"within {STARTUP_TIMEOUT} s:\n{server.output()}"
                )
            time.sleep(0.1)


@contextlib.contextmanager
def run_quickstart(database: str, log: Path, *args: str) -> Iterator[Quickstart]:
    """``python examples/quickstart.py --port <free> --database <database>`` as a subprocess."""
    port = _free_port()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                str(QUICKSTART),
                "--port",
                str(port),
                "--database",
                database,
                *args,
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = Quickstart(f"ws://127.0.0.1:{port}/ws", process, log)
    try:
        _wait_until_accepting(server, port)
        yield server
    except BaseException as exc:
        _stop(process)
        exc.add_note(f"quickstart output:\n{server.output()}")
        raise
    died = _stop(process)
    if died is not None:
        pytest.fail(f"the quickstart died with exit code {died}:\n{server.output()}")
    if "Traceback" in server.output():
        pytest.fail(f"the quickstart logged an exception:\n{server.output()}")


def _stop(process: subprocess.Popen[bytes]) -> int | None:
    """Terminate, wait, kill if needed; returns the exit code if it had already exited."""
    died = process.poll()
    if died is None:
        process.terminate()
        try:
            process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=TIMEOUT)
    return died


# The quickstart's default shell is the direct websockets server; --asgi serves the same
# handler with uvicorn. Both shells on SQLite, and the plain PostgreSQL URL on the default.
SHELLS = {"direct": (), "asgi": ("--asgi",)}


@contextlib.contextmanager
def serve(backend: str, shell: str, tmp_path: Path) -> Iterator[Quickstart]:
    """The quickstart on a new SQLite file or a new PostgreSQL database (dropped after)."""
    log = tmp_path / "server.log"
    if backend == "sqlite":
        with run_quickstart(
            f"sqlite:///{tmp_path / 'app.db'}", log, *SHELLS[shell]
        ) as server:
            yield server
        return
    url = asyncio.run(create_database())
    try:
        with run_quickstart(url, log, *SHELLS[shell]) as server:
            yield server
    finally:
        asyncio.run(drop_database(url))


@pytest.fixture(params=["sqlite-direct", "sqlite-asgi", "postgresql-direct"])
def quickstart(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Quickstart]:
    backend, shell = str(request.param).split("-")
    with serve(backend, shell, tmp_path) as server:
        yield server


@pytest.fixture(params=list(SHELLS))
def sqlite_quickstart(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Quickstart]:
    with serve("sqlite", str(request.param), tmp_path) as server:
        yield server


async def test_python_spec_client(quickstart: Quickstart) -> None:
    """The README's Python client: read, subscribe with a filter, create, be notified."""
    client = WebSocketClient(quickstart.url)
    await asyncio.wait_for(client.connect(), TIMEOUT)
    # connect() starts its listen task without keeping it; find it to await its end.
    (listener,) = [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "") == "WebSocketClient.listen"
    ]
    try:
        users = await asyncio.wait_for(
            client.request("read", "users", options={"filters": ACTIVE, "limit": 10}),
            TIMEOUT,
        )
        assert users == []

        notifications: list[dict[str, Any]] = []
        notified = asyncio.Event()

        def on_user_change(notification: dict[str, Any]) -> None:
            notifications.append(notification)
            notified.set()

        sub_id = await asyncio.wait_for(
            client.subscribe("users", on_user_change, filters=ACTIVE), TIMEOUT
        )
        assert isinstance(sub_id, str)
        assert sub_id

        created = await asyncio.wait_for(
            client.request(
                "create",
                "users",
                data={
                    "name": "Alice",
                    "email": "alice@example.com",
                    "status": "active",
                },
            ),
            TIMEOUT,
        )
        assert isinstance(created["id"], int)
        assert created == {
            "id": created["id"],
            "name": "Alice",
            "email": "alice@example.com",
            "status": "active",
        }

        await asyncio.wait_for(notified.wait(), TIMEOUT)
        (note,) = notifications
        assert note["type"] == "notification"
        assert note["operation"] == "create"
        assert note["subscription_id"] == sub_id
        assert note["schema"] == "public"
        assert note["entity"] == "users"
        assert note["data"] == created

        users = await asyncio.wait_for(
            client.request("read", "users", options={"filters": ACTIVE}), TIMEOUT
        )
        assert users == [created]
        single = await asyncio.wait_for(
            client.request("read", "users", record_id=str(created["id"])), TIMEOUT
        )
        assert single == created
    finally:
        ws: Any = client.ws  # the client's websockets connection; it has no close()
        await asyncio.wait_for(ws.close(), TIMEOUT)
        await asyncio.wait_for(listener, TIMEOUT)


def _node() -> list[str]:
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "Node.js (>= 20) is needed to run the spec's TypeScript client; "
            "scripts/test.sh installs it (see scripts/lib/node.sh)"
        )
    version = subprocess.run(
        [node, "-p", "process.versions.node"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    ).stdout.strip()
    major = int(version.split(".")[0])
    if major < 20:
        pytest.fail(f"Node.js >= 20 is needed, found {version} at {node}")
    if not (JS_DIR / "node_modules" / "typescript").is_dir():
        pytest.fail(
            f"TypeScript is not installed in {JS_DIR}; run `npm ci` there "
            "(scripts/test.sh does it through scripts/lib/node.sh)"
        )
    return [node, "--experimental-websocket"] if major < 22 else [node]


def test_typescript_spec_client(sqlite_quickstart: Quickstart) -> None:
    """The README's TypeScript client, transpiled unmodified, run by Node."""
    node = _node()
    try:
        run = subprocess.run(
            [*node, str(JS_DIR / "run_spec_client.mjs"), sqlite_quickstart.url],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=3 * TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the Node spec client did not finish: {exc}")
    assert run.returncode == 0, (
        f"the Node spec client failed ({run.returncode}):\n"
        f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    )
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    assert [line["step"] for line in lines] == [
        "read",
        "subscribe",
        "create",
        "notification",
    ], run.stdout
    read, subscribed, created_line, notification = lines

    assert isinstance(read["result"], list)
    assert read["result"] == []

    sub_id = subscribed["subscription_id"]
    assert isinstance(sub_id, str)
    assert sub_id

    created = created_line["result"]
    assert isinstance(created["id"], int)
    assert created == {
        "id": created["id"],
        "name": "Alice",
        "email": "alice@example.com",
        "status": "active",
    }

    note = notification["notification"]
    assert note["type"] == "notification"
    assert note["operation"] == "create"
    assert note["subscription_id"] == sub_id
    assert note["entity"] == "users"
    assert note["data"] == created
