"""Shared pieces of the benchmark: results, statistics, child processes, databases.

Every server and every group of fan-out receivers runs in a child process of its own,
driven by JSON lines: commands on its standard input, answers (and a first ``ready``
line) on its standard output. The orchestrator (``bench/run.py``) keeps the event loop
that talks to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import statistics
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parent.parent
"""The repository root (so that ``bench`` and ``examples`` import in children)."""

USERS = 10_000
"""Rows seeded in ``users`` for the read benchmarks."""

HOST = "127.0.0.1"
PATH = "/ws"

_json = msgspec.json.Encoder()
_decode = msgspec.json.Decoder()


# -- results ------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table."""

    scenario: str
    route: str
    unit: str
    framework: list[float]
    raw: list[float] | None
    higher_is_better: bool
    target: str = ""
    meets: bool | None = None
    notifications: str = "—"
    extra: str = ""
    fw_detail: str = ""
    raw_detail: str = ""

    @property
    def fw_median(self) -> float:
        return median(self.framework)

    @property
    def raw_median(self) -> float | None:
        return None if not self.raw else median(self.raw)

    @property
    def ratio(self) -> float | None:
        raw = self.raw_median
        if raw is None or raw == 0:
            return None
        return self.fw_median / raw


@dataclass
class Counted:
    """Notifications expected and received in one scenario (per route)."""

    expected: int = 0
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0

    def add(self, other: Counted) -> None:
        self.expected += other.expected
        self.received += other.received
        self.lost += other.lost
        self.duplicated += other.duplicated
        self.unexpected += other.unexpected

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.unexpected == 0

    def __str__(self) -> str:
        if self.expected == 0 and self.received == 0:
            return "—"
        text = f"{self.received:,}/{self.expected:,}"
        if self.ok:
            return f"{text} ok"
        return (
            f"{text} LOST {self.lost:,} DUP {self.duplicated:,} "
            f"UNEXPECTED {self.unexpected:,}"
        )


@dataclass
class Report:
    """Everything a run measured."""

    rows: list[Row] = field(default_factory=list)
    counted: dict[str, Counted] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def count(self, key: str) -> Counted:
        return self.counted.setdefault(key, Counted())


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


def spread(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    """``median [min-max]``."""
    if not values:
        return "n/a"
    mid = fmt.format(median(values))
    if len(values) == 1:
        return mid
    return f"{mid} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def rss_kib(pid: int) -> int:
    """The resident set size of a process, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def rotate(items: Sequence[str], by: int) -> list[str]:
    """``items`` rotated left by ``by``: interleaving rounds in a different order."""
    by %= len(items)
    return [*items[by:], *items[:by]]


# -- child processes ----------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p
    )
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def quickstart() -> Any:
    """The quickstart's module (``users`` and ``posts`` models: ``User``, ``Post``).

    Imported by name: mypy checks ``examples/quickstart.py`` as a top-level module.
    """
    return importlib.import_module("examples.quickstart")


def _open_log(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


class Child:
    """A child process spoken to in JSON lines."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(cls, name: str, module: str, *args: str, logdir: Path) -> Child:
        log = logdir / f"{name}.log"
        err = _open_log(log)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                module,
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                cwd=str(ROOT),
                env=child_env(),
                limit=1 << 26,
            )
        finally:
            os.close(err)
        return cls(name, proc, log)

    async def read(self, timeout: float = 120.0) -> dict[str, Any]:
        """The next JSON line the child prints."""
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
        answer = _decode.decode(line)
        if not isinstance(answer, dict):
            raise RuntimeError(f"{self.name} printed {line!r}")
        if "error" in answer:
            raise RuntimeError(f"{self.name}: {answer['error']}\n{self.tail()}")
        return answer

    async def call(self, timeout: float = 120.0, **command: Any) -> dict[str, Any]:
        """Send a command and wait for its answer."""
        async with self._lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write(_json.encode(command) + b"\n")
            await self.proc.stdin.drain()
            return await self.read(timeout)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self, timeout: float = 20.0) -> None:
        """Ask the child to stop; kill it if it does not."""
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.call(timeout=timeout, cmd="stop")
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


class Server:
    """A server under test: ``raw``, ``direct`` or ``asgi`` (see bench/servers.py)."""

    def __init__(self, kind: str, child: Child, port: int) -> None:
        self.kind = kind
        self.child = child
        self.port = port

    @classmethod
    async def start(
        cls,
        kind: str,
        database: str,
        *,
        logdir: Path,
        name: str | None = None,
        broker: str | None = None,
        profile: str | None = None,
        port: int = 0,
    ) -> Server:
        args = ["--kind", kind, "--database", database, "--port", str(port)]
        if broker:
            args += ["--broker", broker]
        if profile:
            args += ["--profile", profile]
        child = await Child.start(
            name or f"server-{kind}", "bench.servers", *args, logdir=logdir
        )
        ready = await child.read(timeout=60)
        return cls(kind, child, int(ready["port"]))

    @property
    def pid(self) -> int:
        return self.child.pid

    async def hook(self, on: bool) -> None:
        await self.child.call(cmd="hook", on=on)

    async def profile(self, on: bool) -> None:
        await self.child.call(cmd="profile", on=on)

    async def marks(self) -> dict[str, tuple[float, float]]:
        """By row ``name``: when the change entered the server's fan-out, and when the
        call delivering it returned (see bench/servers.py)."""
        answer = await self.child.call(cmd="marks")
        return {str(k): (float(a), float(b)) for k, a, b in answer["marks"]}

    async def stop(self) -> None:
        await self.child.stop()


class Receivers:
    """Processes holding many idle client connections that record notifications."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children
        self.sizes: dict[str, list[int]] = {}

    @classmethod
    async def start(cls, processes: int, *, logdir: Path) -> Receivers:
        children = await asyncio.gather(
            *(
                Child.start(f"receivers-{i}", "bench.receivers", logdir=logdir)
                for i in range(processes)
            )
        )
        await asyncio.gather(*(c.read(timeout=60) for c in children))
        return cls(list(children))

    async def connect(
        self,
        group: str,
        port: int,
        n: int,
        *,
        subscribe: dict[str, Any] | None,
        eq_column: str | None = None,
        eq_start: int = 0,
        record: bool = False,
    ) -> None:
        """Add ``n`` connections to ``group``, spread over the processes."""
        shares = [n // len(self.children)] * len(self.children)
        for i in range(n % len(self.children)):
            shares[i] += 1
        sizes = self.sizes.setdefault(group, [0] * len(self.children))
        starts = []
        offset = eq_start + sum(sizes)
        for share in shares:
            starts.append(offset)
            offset += share
        answers = await asyncio.gather(
            *(
                child.call(
                    timeout=600,
                    cmd="connect",
                    group=group,
                    host=HOST,
                    port=port,
                    path=PATH,
                    n=share,
                    subscribe=subscribe,
                    eq_column=eq_column,
                    eq_start=start,
                    record=record,
                )
                for child, share, start in zip(
                    self.children, shares, starts, strict=True
                )
                if share
            )
        )
        failed = sum(int(a["failed"]) for a in answers)
        if failed:
            errors = [e for a in answers for e in a["errors"]]
            raise RuntimeError(
                f"{failed} of {n} connections of {group} failed: {errors[:3]}"
            )
        for i, share in enumerate(shares):
            sizes[i] += share

    async def wait_tag(self, group: str, tag: str, timeout: float) -> list[float]:
        """Arrival times of ``tag`` on every connection of the group (or until timeout)."""
        answers = await asyncio.gather(
            *(
                child.call(
                    timeout=timeout + 30,
                    cmd="wait",
                    group=group,
                    tag=tag,
                    deadline=timeout,
                )
                for child, size in zip(self.children, self.sizes[group], strict=True)
                if size
            )
        )
        times = [float(t) for a in answers for t in a["times"]]
        return times

    async def wait_count(self, group: str, count: int, timeout: float) -> float:
        """Wait until every connection holds ``count`` notifications; the last arrival."""
        answers = await asyncio.gather(
            *(
                child.call(
                    timeout=timeout + 30,
                    cmd="wait_count",
                    group=group,
                    count=count,
                    deadline=timeout,
                )
                for child, size in zip(self.children, self.sizes[group], strict=True)
                if size
            )
        )
        return max(float(a["last"]) for a in answers)

    async def verify(
        self, group: str, tags: Sequence[str], *, final: bool = False
    ) -> Counted:
        """Count, per connection, each of ``tags`` exactly once (then forget them).

        With ``final``, whatever else a connection received is counted as unexpected.
        """
        answers = await asyncio.gather(
            *(
                child.call(
                    timeout=120, cmd="verify", group=group, tags=list(tags), final=final
                )
                for child, size in zip(self.children, self.sizes[group], strict=True)
                if size
            )
        )
        counted = Counted()
        for a in answers:
            counted.add(
                Counted(
                    expected=int(a["expected"]),
                    received=int(a["received"]),
                    lost=int(a["lost"]),
                    duplicated=int(a["duplicated"]),
                    unexpected=int(a["unexpected"]),
                )
            )
        return counted

    async def close(self, group: str) -> None:
        if group not in self.sizes:
            return
        await asyncio.gather(
            *(
                child.call(timeout=120, cmd="close", group=group)
                for child, size in zip(self.children, self.sizes[group], strict=True)
                if size
            )
        )
        del self.sizes[group]

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.children))


# -- databases ----------------------------------------------------------------------


def admin_postgres_url() -> str:
    """The PostgreSQL server to create bench databases on (as the tests do)."""
    return os.environ.get(
        "WEBSOCKETSPEC_TEST_POSTGRES_URL",
        "postgresql://postgres@127.0.0.1:5432/postgres",
    )


def redis_url() -> str:
    return os.environ.get("WEBSOCKETSPEC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def create_postgres_database(tag: str) -> str:
    """Create a database of this run's own; returns its URL."""
    import asyncpg

    url = admin_postgres_url()
    name = f"wsspec_bench_{tag}_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"{url.rpartition('/')[0]}/{name}"


async def drop_postgres_database(url: str) -> None:
    import asyncpg

    name = url.rpartition("/")[2]
    conn = await asyncpg.connect(admin_postgres_url(), timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def seed(url: str, users: int = USERS) -> None:
    """Create the quickstart's tables and ``users`` rows 1..users."""
    models = quickstart()
    Base, User = models.Base, models.User  # noqa: N806 - the model classes
    from sqlalchemy import insert

    from websocketspec.adapters.sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
            rows = [
                {
                    "id": i,
                    "name": f"user {i}",
                    "email": f"user{i}@example.com",
                    "status": "active",
                }
                for i in range(1, users + 1)
            ]
            if rows:
                await conn.execute(insert(User), rows)
        if rows and url.startswith("postgresql"):
            async with engine.begin() as conn:
                from sqlalchemy import text

                # Later inserts must not collide with the seeded ids.
                await conn.execute(
                    text(
                        "SELECT setval(pg_get_serial_sequence('users', 'id'), "
                        "(SELECT max(id) FROM users))"
                    )
                )
    finally:
        await engine.dispose()


def temp_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="wsspec-bench-"))


@dataclass(frozen=True)
class Settings:
    """Sizes of one run (``--quick`` shrinks everything)."""

    quick: bool
    rounds: int
    duration: float
    """Seconds each measured request round lasts."""
    warmup: float
    """Seconds of load before each measured window."""
    warm_rounds: int
    """Unmeasured rounds before the measured ones."""
    fanout_sizes: tuple[int, ...]
    fanout_timeout: float
    receiver_processes: int
    memory_connections: int
    memory_rounds: int
    matching_subscriptions: int
    matching_changes: int
    broker_processes: int
    broker_subscribers: int
    """Subscribed connections per server process."""
    broker_changes: int
    broker_rounds: int

    @classmethod
    def full(cls) -> Settings:
        return cls(
            quick=False,
            rounds=5,
            duration=2.0,
            warmup=0.5,
            warm_rounds=1,
            fanout_sizes=(1_000, 2_500, 5_000, 10_000),
            fanout_timeout=30.0,
            receiver_processes=4,
            memory_connections=5_000,
            memory_rounds=3,
            matching_subscriptions=100_000,
            matching_changes=20_000,
            broker_processes=2,
            broker_subscribers=50,
            broker_changes=1_000,
            broker_rounds=3,
        )

    @classmethod
    def tiny(cls) -> Settings:
        return cls(
            quick=True,
            rounds=2,
            duration=0.15,
            warmup=0.05,
            warm_rounds=0,
            fanout_sizes=(20,),
            fanout_timeout=15.0,
            receiver_processes=2,
            memory_connections=50,
            memory_rounds=1,
            matching_subscriptions=2_000,
            matching_changes=500,
            broker_processes=2,
            broker_subscribers=3,
            broker_changes=20,
            broker_rounds=1,
        )
