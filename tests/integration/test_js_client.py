"""The TypeScript client (clients/js): its own test suite, its example, and a real browser.

- ``npm run build`` compiles the package (ES modules and ``.d.ts``) and its tests; ``npm test``
  runs them with node's test runner against the repository's Python servers, which the tests
  start, stop and restart themselves (the quickstart on the direct server, and
  ``tests/e2e/server.py`` under uvicorn with bearer tokens), over both the ``ws`` package and
  Node's global WebSocket.
- ``examples/client_js/node_example.mjs`` runs against the quickstart.
- Debian's Chromium, driven by playwright-core, opens the live-users page that the server
  itself serves (same origin: the page, the built client and ``/ws``). This test creates,
  updates and deletes users over its own socket and waits for the page to show each change;
  then it stops the server, writes a row into the database while nothing serves it, starts the
  server again on the same port, and waits for the page to reconnect and show the rows anew.
  Screenshots are kept in ``test-artifacts/``.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.process import (
    ARTIFACTS,
    JS_DIR,
    ROOT,
    TIMEOUT,
    BrowserDriver,
    ServerProcess,
    chromium,
    free_port,
    node,
    npm,
)
from tests.support.wsclient import WSClient

BUILD_TIMEOUT = 180.0
SUITE_TIMEOUT = 240.0


def _run(
    args: list[str], timeout: float, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            args,
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **kwargs,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"{' '.join(args)} did not finish within {timeout} s: {exc.output!r}"
        )


@pytest.fixture(scope="module")
def built() -> None:
    """``npm run build`` (dist/) and the tests' build (build/)."""
    for script in ("build", "build:test"):
        run = _run([npm(), "run", script], BUILD_TIMEOUT)
        assert run.returncode == 0, (
            f"npm run {script} failed:\n{run.stdout}\n{run.stderr}"
        )
    assert (JS_DIR / "dist" / "index.js").is_file()
    assert (JS_DIR / "dist" / "index.d.ts").is_file()


def test_typescript_client_suite(built: None) -> None:
    """``npm test``: node's test runner over the client's tests, against real servers."""
    run = _run(
        [npm(), "test", "--ignore-scripts"],  # built already: skip the pretest rebuild
        SUITE_TIMEOUT,
        env={**os.environ, "WEBSOCKETSPEC_PYTHON": sys.executable},
    )
    output = f"{run.stdout}\n{run.stderr}"
    counts = {
        key: int(value) for key, value in re.findall(r"\u2139 (\w+) (\d+)", run.stdout)
    }
    assert run.returncode == 0, f"npm test failed ({run.returncode}):\n{output}"
    assert counts.get("fail") == 0, output
    assert counts.get("cancelled") == 0, output
    assert counts.get("skipped") == 0, output
    assert counts.get("tests", 0) >= 30, f"too few tests ran: {counts}\n{output}"
    assert counts.get("pass") == counts.get("tests"), output


@pytest.fixture
def quickstart(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(
        [
            str(ROOT / "examples" / "quickstart.py"),
            "--database",
            f"sqlite:///{tmp_path / 'app.db'}",
        ],
        free_port(),
        tmp_path / "quickstart.log",
    )
    server.start()
    yield server
    server.stop()
    server.check_log()


def test_node_example(built: None, quickstart: ServerProcess) -> None:
    """examples/client_js/node_example.mjs, as its header says to run it."""
    run = _run(
        [
            *node(),
            str(ROOT / "examples" / "client_js" / "node_example.mjs"),
            quickstart.url,
        ],
        3 * TIMEOUT,
    )
    assert run.returncode == 0, f"the example failed:\n{run.stdout}\n{run.stderr}"
    lines = run.stdout.splitlines()
    assert "state: open" in lines
    assert "notified: create, update, delete" in lines, run.stdout
    assert "read: 1 of 1 users named Ann*" in lines, run.stdout
    assert "refused: validation_error (field email): " in run.stdout, run.stdout
    assert lines[-1] == "state: closed", run.stdout


def _row(user: dict[str, Any]) -> list[str]:
    """A user as the page's table shows it."""
    return [str(user["id"]), user["name"], user["email"], user["status"]]


def _insert_offline(database: Path, name: str) -> dict[str, Any]:
    """Write a row straight into the database file, as another program would."""
    with sqlite3.connect(database) as db:
        cursor = db.execute(
            "insert into users (name, email, status) values (?, ?, 'active')",
            (name, f"{name.lower()}@example.com"),
        )
        row_id = cursor.lastrowid
    db.close()
    return {
        "id": row_id,
        "name": name,
        "email": f"{name.lower()}@example.com",
        "status": "active",
    }


async def test_browser_live_list_follows_changes_and_recovers_from_a_restart(
    built: None, tmp_path: Path
) -> None:
    browser = chromium()
    database = tmp_path / "app.db"
    server = ServerProcess(
        ["-m", "tests.e2e.server", "--database", f"sqlite:///{database}"],
        free_port(),
        tmp_path / "server.log",
    )
    server.start()
    ARTIFACTS.mkdir(exist_ok=True)
    driver = await BrowserDriver.start(browser)
    writer: WSClient | None = None
    try:
        await driver.call(
            cmd="open", url=f"http://127.0.0.1:{server.port}/", timeout=30
        )
        await driver.call(cmd="wait", state="open", rows=[])

        writer = await WSClient.connect(server.url)
        alice = await writer.ok(
            "create",
            "users",
            data={"name": "Alice", "email": "alice@example.com", "status": "active"},
        )
        await driver.call(cmd="wait", rows=[_row(alice)])
        bob = await writer.ok(
            "create", "users", data={"name": "Bob", "email": "bob@example.com"}
        )
        await driver.call(cmd="wait", rows=[_row(alice), _row(bob)])
        alice = await writer.ok(
            "update",
            "users",
            record_id=str(alice["id"]),
            data={"name": "Alice Liddell", "status": "away"},
        )
        await driver.call(cmd="wait", rows=[_row(alice), _row(bob)])
        await writer.ok("delete", "users", record_id=str(bob["id"]))
        await driver.call(cmd="wait", rows=[_row(alice)])
        await driver.call(
            cmd="screenshot", path=str(ARTIFACTS / "js-client-live-users.png")
        )
        await asyncio.wait_for(writer.close(), TIMEOUT)
        writer = None

        # The server goes away; the page notices and keeps trying.
        server.stop()
        await driver.call(cmd="wait", stateIn=["reconnecting", "connecting"])
        carol = _insert_offline(database, "Carol")
        server.start()

        # Back: the page reconnects, subscribes again and shows the rows anew, Carol too.
        await driver.call(
            cmd="wait", state="open", minResyncs=1, rows=[_row(alice), _row(carol)]
        )
        writer = await WSClient.connect(server.url)
        dave = await writer.ok(
            "create", "users", data={"name": "Dave", "email": "dave@example.com"}
        )
        carol = await writer.ok(
            "update", "users", record_id=str(carol["id"]), data={"status": "inactive"}
        )
        await driver.call(cmd="wait", rows=[_row(alice), _row(carol), _row(dave)])
        await driver.call(
            cmd="screenshot", path=str(ARTIFACTS / "js-client-live-users-recovered.png")
        )
    finally:
        if writer is not None:
            await asyncio.wait_for(writer.close(), TIMEOUT)
        await driver.close()
        server.stop()
    server.check_log()
    assert (ARTIFACTS / "js-client-live-users-recovered.png").stat().st_size > 0
