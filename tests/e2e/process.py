"""Processes for the JavaScript client's tests: a server that can restart on its port, the
Node.js tools they need, and the browser driver spoken to line by line."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
JS_DIR = ROOT / "clients" / "js"
ARTIFACTS = ROOT / "test-artifacts"
TIMEOUT = 10.0
STARTUP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """A server command run as a process on a fixed port, stopped and started at will."""

    def __init__(self, args: list[str], port: int, log: Path) -> None:
        self.args = args
        self.port = port
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self._runs = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def output(self) -> str:
        return "\n---\n".join(
            path.read_text(errors="replace")
            for path in sorted(self.log.parent.glob(f"{self.log.stem}-*.log"))
        )

    def start(self) -> None:
        if self.process is not None:
            raise RuntimeError("the server is already running")
        self._runs += 1
        log = self.log.with_name(f"{self.log.stem}-{self._runs}.log")
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, *self.args, "--port", str(self.port)],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                pytest.fail(f"the server exited with {code}:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(
                        f"the server did not listen on {self.port} within "
                        f"{STARTUP_TIMEOUT} s:\n{self.output()}"
                    )
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=TIMEOUT)

    def check_log(self) -> None:
        if "Traceback" in self.output():
            pytest.fail(f"the server logged an exception:\n{self.output()}")


def node() -> list[str]:
    """``node`` (>= 20) with the flag that gives Node 20 and 21 a global WebSocket."""
    path = shutil.which("node")
    if path is None:
        pytest.fail(
            "Node.js >= 20 is needed for the TypeScript client's tests; scripts/test.sh "
            "installs it (scripts/lib/node.sh), or: apt-get install -y nodejs npm"
        )
    version = subprocess.run(
        [path, "-p", "process.versions.node"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    ).stdout.strip()
    major = int(version.split(".")[0])
    if major < 20:
        pytest.fail(f"Node.js >= 20 is needed, found {version} at {path}")
    return [path, "--experimental-websocket"] if major < 22 else [path]


def npm() -> str:
    path = shutil.which("npm")
    if path is None:
        pytest.fail("npm is needed for the TypeScript client: apt-get install -y npm")
    if not (JS_DIR / "node_modules" / "typescript").is_dir():
        pytest.fail(
            f"the client's dev dependencies are not installed: cd {JS_DIR} && npm ci "
            "(scripts/test.sh does it through scripts/lib/node.sh)"
        )
    return path


def chromium() -> str:
    path = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not Path(path).is_file():
        pytest.fail(
            f"no Chromium at {path}: apt-get install -y chromium (scripts/test.sh does it "
            "through scripts/lib/node.sh), or set CHROMIUM to its path"
        )
    return path


class BrowserDriver:
    """``clients/js/build/test/browser/driver.js``: one JSON command, one JSON answer."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, browser: str) -> BrowserDriver:
        script = JS_DIR / "build" / "test" / "browser" / "driver.js"
        process = await asyncio.create_subprocess_exec(
            *node(),
            str(script),
            cwd=JS_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "CHROMIUM": browser},
        )
        return cls(process)

    async def call(self, timeout: float = TIMEOUT, **command: Any) -> dict[str, Any]:
        """Send a command; fails the test with what the page shows if it fails."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        command.setdefault("timeout", int(timeout * 1000))
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await asyncio.wait_for(self.process.stdin.drain(), TIMEOUT)
        # The driver's own timeout ends its wait first; this one only guards the pipe.
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout + 30)
        if not line:
            stderr = b""
            if self.process.stderr is not None:
                stderr = await asyncio.wait_for(self.process.stderr.read(), TIMEOUT)
            pytest.fail(
                f"the browser driver exited:\n{stderr.decode(errors='replace')}"
            )
        answer: dict[str, Any] = json.loads(line)
        if not answer["ok"]:
            pytest.fail(
                f"browser: {command['cmd']} failed: {answer['error']}\n"
                f"the page shows: {json.dumps(answer.get('page'), indent=1)}\n"
                f"console: {answer.get('console')}"
            )
        return answer

    async def close(self) -> None:
        if self.process.returncode is None:
            try:
                await self.call(cmd="close")
                if self.process.stdin is not None:
                    self.process.stdin.close()
                await asyncio.wait_for(self.process.wait(), TIMEOUT)
            finally:
                if self.process.returncode is None:
                    self.process.kill()
                    await asyncio.wait_for(self.process.wait(), TIMEOUT)
