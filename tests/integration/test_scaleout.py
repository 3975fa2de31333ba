"""Scale-out with real server processes: the quickstart, several times, on one database.

Each server is ``python examples/quickstart.py --port N --database postgresql://…
--broker URL`` in its own process (or ``--workers 2`` on one port). Writers on every
process, subscribers with different filters on every process; every subscriber must
receive exactly the committed changes matching its filter, in commit order, once.

The oracle is the database itself: after the writes, the transactional outbox
(``websocketspec_outbox``) lists every committed change in commit order, and it is
first checked against what the writers were answered. Processes that die are killed
with SIGKILL, so nothing is flushed on the way out: what they committed but never
published must still reach the other processes (through the periodic sweep).

Redis is always a private ``redis-server`` of the test's own; PostgreSQL a fresh
database on the shared server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.integration.test_brokers import PrivateRedis, free_port
from tests.support.databases import create_database, drop_database
from tests.support.wsclient import WSClient

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.py"
TIMEOUT = 30.0
"""The longest any single wait may take (the machine may be busy)."""
WRITERS = 4
WRITES_PER_WRITER = 500

Row = dict[str, Any]


# -- processes ------------------------------------------------------------------------


class ServerProcess:
    """A quickstart server in a process of its own (its own session: killable whole)."""

    def __init__(self, port: int, args: list[str], logs: Path) -> None:
        self.port = port
        self.args = args
        self.logs = logs
        self.url = f"ws://127.0.0.1:{port}/ws"
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        self.runs += 1
        log_path = self.logs / f"server-{self.port}-{self.runs}.log"
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(QUICKSTART), "--port", str(self.port), *self.args],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.log_path = log_path

    def wait_ready(self) -> None:
        """A bounded poll until the port accepts (the handler has started by then)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the server exited with {self.process.returncode}:\n"
                    + self.log_path.read_text(errors="replace")[-3000:]
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"no server on port {self.port} after {TIMEOUT}s"
                    ) from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the process (and, for ``--workers``, its whole group)."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=TIMEOUT)

    def stop(self) -> int | None:
        """SIGTERM and wait for a graceful exit; SIGKILL if it does not come."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError("the server ignored SIGTERM") from None
        # Workers of a supervisor, should any outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        self.process = None
        return process.returncode


@dataclass
class Cluster:
    """Server processes on one database and one broker, and the clients of a test."""

    database: str
    broker: str
    logs: Path
    servers: list[ServerProcess] = field(default_factory=list)
    clients: list[WSClient] = field(default_factory=list)

    def server(self, *extra: str) -> ServerProcess:
        server = ServerProcess(
            free_port(),
            ["--database", self.database, "--broker", self.broker, *extra],
            self.logs,
        )
        self.servers.append(server)
        return server

    def start(self, count: int) -> list[ServerProcess]:
        """``count`` servers; one after the other, so that one creates the tables."""
        started = []
        for _ in range(count):
            server = self.server()
            server.start()
            server.wait_ready()
            started.append(server)
        return started

    async def client(self, server: ServerProcess) -> WSClient:
        client = await WSClient.connect(server.url)
        self.clients.append(client)
        return client

    def warnings(self) -> str:
        """What the servers logged above INFO (for failure messages)."""
        lines = []
        for path in sorted(self.logs.glob("server-*.log")):
            for line in path.read_text(errors="replace").splitlines():
                if not line.startswith(("INFO", "DEBUG")):
                    lines.append(f"{path.name}: {line}")
        return "\n".join(lines[-40:])

    async def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):  # its server may have been killed
                await client.close()
        for server in self.servers:
            server.stop()


@pytest.fixture(params=["redis", "postgresql"])
async def cluster(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Cluster]:
    """A fresh database and a private broker; the servers are started by the test."""
    async with asyncio.timeout(TIMEOUT):
        database = await create_database()
    with contextlib.ExitStack() as stack:
        if request.param == "redis":
            redis = stack.enter_context(PrivateRedis(tmp_path))
            broker = redis.url
        else:
            broker = database
        cluster = Cluster(database, broker, tmp_path)
        try:
            yield cluster
        finally:
            await cluster.close()
            async with asyncio.timeout(TIMEOUT):
                await drop_database(database)


# -- the oracle: the outbox, in commit order ------------------------------------------


@dataclass(frozen=True)
class Committed:
    seq: int
    operation: str
    old: Row | None
    new: Row | None


async def committed(database: str, entity: str = "public.users") -> list[Committed]:
    """Every change of ``entity`` in commit order, once no write is in flight.

    Taking the stream row's lock waits for any transaction still holding it: a
    write's last step takes it, and holds it until commit or rollback.
    """
    conn = await asyncpg.connect(database, timeout=TIMEOUT)
    try:
        async with conn.transaction():
            await conn.execute(
                "SELECT seq FROM websocketspec_streams WHERE entity = $1 FOR UPDATE",
                entity,
                timeout=TIMEOUT,
            )
        rows = await conn.fetch(
            "SELECT seq, operation, old, new FROM websocketspec_outbox "
            "WHERE entity = $1 ORDER BY seq",
            entity,
            timeout=TIMEOUT,
        )
    finally:
        await conn.close(timeout=TIMEOUT)
    return [
        Committed(
            int(r["seq"]),
            str(r["operation"]),
            None if r["old"] is None else json.loads(r["old"]),
            None if r["new"] is None else json.loads(r["new"]),
        )
        for r in rows
    ]


@dataclass(frozen=True)
class Filter:
    """A subscription filter, and the same as a Python predicate."""

    column: str
    operator: str
    value: str

    def options(self) -> dict[str, Any]:
        return {
            "filters": [
                {"column": self.column, "operator": self.operator, "value": self.value}
            ]
        }

    def __call__(self, row: Row) -> bool:
        value = str(row[self.column])
        if self.operator == "eq":
            return value == self.value
        if self.operator == "neq":
            return value != self.value
        if self.operator == "startswith":
            return value.startswith(self.value)
        raise ValueError(self.operator)


def expected(
    flt: Filter | None, changes: list[Committed]
) -> list[tuple[int, str, Row]]:
    """(seq, operation, row) a subscription with ``flt`` is told, per DESIGN.md."""
    out: list[tuple[int, str, Row]] = []
    for c in changes:
        before = c.old is not None and (flt is None or flt(c.old))
        after = c.new is not None and (flt is None or flt(c.new))
        if c.operation == "create" and after and c.new is not None:
            out.append((c.seq, "create", c.new))
        elif c.operation == "delete" and before and c.old is not None:
            out.append((c.seq, "delete", c.old))
        elif c.operation == "update":
            if before and after and c.new is not None:
                out.append((c.seq, "update", c.new))
            elif after and c.new is not None:
                out.append((c.seq, "create", c.new))
            elif before and c.old is not None:
                out.append((c.seq, "delete", c.old))
    return out


@dataclass
class Subscriber:
    client: WSClient
    flt: Filter | None
    id: str
    seen: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    async def on(
        cls, cluster: Cluster, server: ServerProcess, flt: Filter | None
    ) -> Subscriber:
        client = await cluster.client(server)
        options = flt.options() if flt is not None else {}
        return cls(client, flt, await client.subscribe("users", options=options))

    async def take(self, count: int) -> list[dict[str, Any]]:
        """``count`` more notifications (each within the timeout)."""
        more = [await self.client.notification(TIMEOUT) for _ in range(count)]
        self.seen.extend(more)
        return more

    async def check(self, changes: list[Committed], since: int = 0) -> int:
        """Receive and compare everything the subscription must be told after
        ``since``: exactly that, in seq order, once; then nothing before a barrier."""
        want = [w for w in expected(self.flt, changes) if w[0] > since]
        await self.take(len(want) - len(self.seen))
        odd = [n for n in self.seen if "seq" not in n["metadata"]]
        assert not odd, f"notifications that are no change: {odd[:3]}"
        got = [(n["metadata"]["seq"], n["operation"], n["data"]) for n in self.seen]
        assert got == want, first_difference(got, want)
        assert await self.client.drain() == []
        for note in self.seen:
            assert note["subscription_id"] == self.id
            assert (note["type"], note["schema"], note["entity"]) == (
                "notification",
                "public",
                "users",
            )
        return len(want)


def first_difference(got: list[Any], want: list[Any]) -> str:
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        if g != w:
            return f"at {i}: got {g}, want {w}"
    return f"got {len(got)} notifications, want {len(want)}"


# -- writers --------------------------------------------------------------------------


async def write_script(
    client: WSClient, tag: str, writes: int
) -> list[tuple[str, Row]]:
    """``writes`` writes on rows of the writer's own: creates, updates moving rows in
    and out of the filters, deletes. Returns what it was answered, in order."""
    answered: list[tuple[str, Row]] = []
    mine: list[int] = []
    step = 0
    while len(answered) < writes:
        step += 1
        kind = step % 5
        if kind in (1, 2) or not mine:
            status = "gold" if step % 3 == 0 else "plain"
            row = await client.ok(
                "create",
                "users",
                data={
                    "name": f"{tag}-{step}",
                    "email": f"{tag}{step}@x.org",
                    "status": status,
                },
            )
            mine.append(row["id"])
            answered.append(("create", row))
        elif kind in (3, 4):
            key = mine[step % len(mine)]
            status = "gold" if step % 2 == 0 else "silver"
            row = await client.ok(
                "update", "users", record_id=str(key), data={"status": status}
            )
            answered.append(("update", row))
        else:
            key = mine.pop(0)
            row = await client.ok("delete", "users", record_id=str(key))
            answered.append(("delete", row))
    return answered


def assert_outbox_is_what_was_answered(
    changes: list[Committed], answered: list[tuple[str, Row]]
) -> None:
    """The oracle itself: one outbox change per acknowledged write, numbered on."""
    first = changes[0].seq if changes else 1
    assert [c.seq for c in changes] == list(range(first, first + len(changes)))
    logged = sorted(
        (c.operation, json.dumps(c.new if c.new is not None else c.old, sort_keys=True))
        for c in changes
    )
    acked = sorted((op, json.dumps(row, sort_keys=True)) for op, row in answered)
    assert logged == acked


GOLD = Filter("status", "eq", "gold")
NOT_GOLD = Filter("status", "neq", "gold")
WRITER_1 = Filter("name", "startswith", "w1-")


# -- tests ----------------------------------------------------------------------------


async def test_two_processes_deliver_thousands_of_changes_in_order_once(
    cluster: Cluster,
) -> None:
    """Two processes, two writers and three subscribers with different filters on each;
    2,000 changes: every subscriber gets exactly what matches, in seq order, once."""
    a, b = cluster.start(2)
    subscribers = [
        await Subscriber.on(cluster, a, None),
        await Subscriber.on(cluster, a, GOLD),
        await Subscriber.on(cluster, a, WRITER_1),
        await Subscriber.on(cluster, b, None),
        await Subscriber.on(cluster, b, NOT_GOLD),
        await Subscriber.on(cluster, b, GOLD),
    ]
    writers = [await cluster.client(s) for s in (a, b, a, b)]
    async with asyncio.timeout(120):
        results = await asyncio.gather(
            *(
                write_script(w, f"w{i}", WRITES_PER_WRITER)
                for i, w in enumerate(writers)
            )
        )
    answered = [item for result in results for item in result]
    assert len(answered) == WRITERS * WRITES_PER_WRITER
    changes = await committed(cluster.database)
    assert changes[0].seq == 1
    assert_outbox_is_what_was_answered(changes, answered)
    delivered = 0
    for sub in subscribers:
        try:
            delivered += await sub.check(changes)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nservers said:\n{cluster.warnings()}") from exc
    assert delivered > 2 * len(changes)


@dataclass
class Workers:
    """The worker processes of a ``--workers`` supervisor, seen through /proc."""

    supervisor: int
    port: int

    def pids(self) -> list[int]:
        children = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                ppid = int(stat.rpartition(")")[2].split()[1])
                if ppid == self.supervisor:
                    children.append(int(entry.name))
        return sorted(children)

    def _sockets(self, state: str) -> set[str]:
        """Inodes of IPv4 TCP sockets on our port in ``state`` (0A listen, 01 open)."""
        found = set()
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            port = int(fields[1].rpartition(":")[2], 16)
            if port == self.port and fields[3] == state:
                found.add(fields[9])
        return found

    def count(self, pid: int, state: str) -> int:
        inodes = self._sockets(state)
        total = 0
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        total += 1
        return total

    def wait_listening(self, workers: int) -> list[int]:
        """A bounded poll until ``workers`` processes listen on the port."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            pids = self.pids()
            if len(pids) == workers and all(self.count(p, "0A") for p in pids):
                return pids
            if time.monotonic() > deadline:
                raise AssertionError(f"workers {pids} do not all listen on {self.port}")
            time.sleep(0.05)


async def test_workers_share_one_port_and_their_notifications(cluster: Cluster) -> None:
    """``--workers 2``: the kernel spreads connections over both processes, and a write
    through either reaches the subscribers of both."""
    server = cluster.server("--workers", "2")
    server.start()
    workers = Workers(server.pid, server.port)
    pids = workers.wait_listening(2)
    subscribers: list[Subscriber] = []
    per_worker = [0 for _ in pids]
    async with asyncio.timeout(TIMEOUT):
        while len(subscribers) < 64:
            subscribers.append(await Subscriber.on(cluster, server, None))
            per_worker = [workers.count(p, "01") for p in pids]
            if len(subscribers) >= 6 and min(per_worker) >= 3:
                break
    assert min(per_worker) >= 3, f"connections per worker: {per_worker}"
    answered = [
        (
            "create",
            await sub.client.ok(
                "create", "users", data={"name": f"via {i}", "email": "v@x.org"}
            ),
        )
        for i, sub in enumerate(subscribers)
    ]
    changes = await committed(cluster.database)
    assert_outbox_is_what_was_answered(changes, answered)
    for sub in subscribers:
        await sub.check(changes)
    # SIGTERM reaches both workers through the supervisor; each closes gracefully (1001).
    assert await asyncio.to_thread(server.stop) == 0
    for sub in subscribers:
        await asyncio.wait_for(sub.client.ws.wait_closed(), TIMEOUT)
        assert sub.client.ws.close_code == 1001


@pytest.mark.parametrize(
    "command",
    [
        [str(QUICKSTART), "--workers", "2"],
        [
            "-m",
            "websocketspec",
            "serve",
            "--models",
            "app",
            "--database",
            "sqlite:///unused.db",
            "--workers",
            "2",
        ],
    ],
    ids=["quickstart", "serve"],
)
def test_workers_refuse_the_memory_broker(command: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, *command],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 2, result
    assert "--workers needs a shared broker" in result.stderr
    assert "redis://" in result.stderr and "postgresql://" in result.stderr
    assert not list(tmp_path.iterdir()), "nothing was started or created"


@pytest.mark.parametrize("grouped", [False, True], ids=["one-by-one", "grouped"])
async def test_a_process_killed_mid_write_and_restarted_loses_nothing(
    cluster: Cluster, grouped: bool
) -> None:
    """Writes are in flight on A when it is SIGKILLed: whatever it committed (some of it
    answered, none of it necessarily published) reaches B's subscribers, in order,
    once. A restarts on its port; writers on both keep going; nothing is lost."""
    a, b = cluster.start(2)
    on_b = [
        await Subscriber.on(cluster, b, None),
        await Subscriber.on(cluster, b, GOLD),
    ]
    writer_a = await cluster.client(a)
    # Fifty creates in one frame, A dies at the answer to c9. With idempotency keys
    # they are never grouped: they commit one after another (in no set order: each
    # first looks its key up), and the kill lands between two of them, or between a
    # commit and its publish. Without, all but the first commit as one group, and the
    # kill lands while the group's answers and notifications go out.
    batch = [
        {
            "id": f"c{i}",
            "type": "request",
            "operation": "create",
            "entity": "users",
            "data": {"name": f"batch-{i}", "email": "b@x.org", "status": "gold"},
            **({} if grouped else {"metadata": {"idempotency_key": f"batch-{i}"}}),
        }
        for i in range(50)
    ]
    tenth = writer_a.expect("c9")
    await writer_a.send_raw(json.dumps(batch))
    answer = await asyncio.wait_for(tenth, TIMEOUT)
    assert answer["success"] is True, answer
    a.kill()
    changes = await committed(cluster.database)
    if grouped:
        assert 10 <= len(changes) <= 50
    else:
        assert 1 <= len(changes) < 50, "the kill came too late to cut the batch"
    for sub in on_b:
        await sub.check(changes)

    # A comes back on its port; writers on both processes; a subscriber on the new A.
    a.start()
    a.wait_ready()
    on_a = await Subscriber.on(cluster, a, None)
    since = len(changes)
    writers = [await cluster.client(a), await cluster.client(b)]
    async with asyncio.timeout(60):
        results = await asyncio.gather(
            *(write_script(w, f"r{i}", 100) for i, w in enumerate(writers))
        )
    changes = await committed(cluster.database)
    assert len(changes) == since + 200
    assert_outbox_is_what_was_answered(
        changes[since:], [item for result in results for item in result]
    )
    for sub in on_b:
        await sub.check(changes)
    await on_a.check(changes, since=since)
