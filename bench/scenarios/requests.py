"""Request/response scenarios: read by primary key, and create (insert + notify).

The driver runs in the orchestrator on the bare-protocol client (:mod:`bench.wsclient`):
each connection keeps ``inflight`` requests outstanding, sending the next one as soon
as a response arrives (all sends of one received chunk in one write). Every response is
checked (``success`` and the expected row); only responses inside the measured window
count towards the rate. Servers run in their own processes; rounds interleave the
framework's routes and the raw baseline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgspec

from bench.common import (
    HOST,
    PATH,
    USERS,
    Counted,
    Report,
    Row,
    Server,
    Settings,
    rotate,
)
from bench.wsclient import WSClient, connect

__all__ = ["Load", "Subscriber", "run_creates", "run_reads"]


class _Response(msgspec.Struct):
    type: str = ""
    id: int | str | None = None
    success: bool | None = None
    data: Any = None
    error: Any = None


_decode = msgspec.json.Decoder(_Response).decode
_encode = msgspec.json.Encoder().encode


def read_request(seq: int) -> bytes:
    return (
        b'{"id":%d,"type":"request","operation":"read","entity":"users",'
        b'"record_id":"%d"}' % (seq, seq % USERS + 1)
    )


def read_check(seq: int, data: Any) -> bool:
    return isinstance(data, dict) and data.get("id") == seq % USERS + 1


def create_request(prefix: str) -> Callable[[int], bytes]:
    head = prefix.encode()

    def make(seq: int) -> bytes:
        return (
            b'{"id":%d,"type":"request","operation":"create","entity":"users",'
            b'"data":{"name":"%s%d","email":"c%d@example.com","status":"active"}}'
            % (seq, head, seq, seq)
        )

    return make


def create_check(prefix: str) -> Callable[[int, Any], bool]:
    def check(seq: int, data: Any) -> bool:
        return isinstance(data, dict) and data.get("name") == f"{prefix}{seq}"

    return check


class Load:
    """Closed-loop load: ``inflight`` requests outstanding per connection."""

    def __init__(
        self,
        make: Callable[[int], bytes],
        check: Callable[[int, Any], bool],
        inflight: int,
        total: int | None = None,
    ) -> None:
        self.make = make
        self.check = check
        self.inflight = inflight
        self.total = total
        self.seq = 0
        self.sent = 0
        self.ok = 0
        self.errors = 0
        self.first_error: Any = None
        self.stopped = False
        self.done = asyncio.Event()
        self.clients: list[WSClient] = []
        self.succeeded: list[int] = []
        self.keep_ok = False

    def _next(self) -> bytes | None:
        if self.stopped or (self.total is not None and self.sent >= self.total):
            return None
        self.seq += 1
        self.sent += 1
        return self.make(self.seq)

    def on_message(self, client: WSClient, payload: bytes, now: float) -> None:
        r = _decode(payload)
        if r.type != "response":
            return
        seq = r.id if isinstance(r.id, int) else -1
        if r.success and self.check(seq, r.data):
            self.ok += 1
            if self.keep_ok:
                self.succeeded.append(seq)
        else:
            self.errors += 1
            if self.first_error is None:
                self.first_error = r.error or r.data
        pending = client.state
        assert isinstance(pending, list)
        following = self._next()
        if following is not None:
            pending.append(following)
        if self.ok + self.errors >= self.sent and (
            self.stopped or (self.total is not None and self.sent >= self.total)
        ):
            self.done.set()

    @staticmethod
    def flush(client: WSClient) -> None:
        pending = client.state
        if isinstance(pending, list) and pending:
            client.send_many(pending)
            pending.clear()

    async def open(self, port: int, connections: int) -> None:
        for _ in range(connections):
            client = await connect(HOST, port, PATH, self.on_message)
            client.state = []
            client.on_chunk = self.flush
            self.clients.append(client)

    def begin(self) -> None:
        for client in self.clients:
            batch = [m for m in (self._next() for _ in range(self.inflight)) if m]
            if batch:
                client.send_many(batch)

    async def finish(self, timeout: float = 30.0) -> None:
        self.stopped = True
        if self.ok + self.errors >= self.sent:
            self.done.set()
        await asyncio.wait_for(self.done.wait(), timeout)

    def close(self) -> None:
        for client in self.clients:
            client.close()


async def measure_rate(
    server: Server,
    make: Callable[[int], bytes],
    check: Callable[[int, Any], bool],
    *,
    connections: int,
    inflight: int,
    duration: float,
    warmup: float,
) -> tuple[float, Load]:
    """Requests per second completed inside the measured window."""
    load = Load(make, check, inflight)
    await load.open(server.port, connections)
    try:
        load.begin()
        await asyncio.sleep(warmup)
        start_ok, start = load.ok, time.monotonic()
        await asyncio.sleep(duration)
        end_ok, end = load.ok, time.monotonic()
        await load.finish()
    finally:
        load.close()
    return (end_ok - start_ok) / (end - start), load


class Subscriber:
    """One subscribed connection that counts notifications by the row's ``name``."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.acked = asyncio.Event()
        self.client: WSClient | None = None

    def on_message(self, client: WSClient, payload: bytes, now: float) -> None:
        r = _decode(payload)
        if r.type == "notification" and isinstance(r.data, dict):
            name = str(r.data.get("name"))
            self.seen[name] = self.seen.get(name, 0) + 1
        elif r.type == "response" and r.success:
            self.acked.set()

    async def open(self, port: int) -> None:
        self.client = await connect(HOST, port, PATH, self.on_message)
        self.client.send(
            b'{"id":"s","type":"subscription","operation":"subscribe","entity":"users"}'
        )
        await asyncio.wait_for(self.acked.wait(), 30)

    def count(self, names: list[str]) -> Counted:
        counted = Counted(expected=len(names))
        wanted = set(names)
        for name in names:
            n = self.seen.pop(name, 0)
            if n:
                counted.received += 1
                counted.duplicated += n - 1
            else:
                counted.lost += 1
        counted.unexpected = sum(n for k, n in self.seen.items() if k not in wanted)
        self.seen.clear()
        return counted

    async def wait_for(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(n in self.seen for n in names):
                return
            await asyncio.sleep(0.02)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def _ratio_target(db: str, operation: str) -> tuple[str, float]:
    if operation == "create":
        return "≥ 0.5", 0.5
    return ("≥ 0.6", 0.6) if db == "PostgreSQL" else ("≥ 0.5", 0.5)


async def run_reads(
    servers: dict[str, Server], db: str, settings: Settings, report: Report
) -> None:
    """Read by primary key: 1 connection x 64 in flight, then 4 x 16."""
    for connections, inflight in ((1, 64), (4, 16)):
        rates: dict[str, list[float]] = {kind: [] for kind in servers}
        errors: dict[str, int] = dict.fromkeys(servers, 0)
        first: dict[str, Any] = {}
        for server in servers.values() if settings.warm_rounds else ():
            await measure_rate(
                server,
                read_request,
                read_check,
                connections=connections,
                inflight=inflight,
                duration=settings.warmup,
                warmup=0.0,
            )
        for r in range(settings.rounds):
            for kind in rotate(list(servers), r):
                rate, load = await measure_rate(
                    servers[kind],
                    read_request,
                    read_check,
                    connections=connections,
                    inflight=inflight,
                    duration=settings.duration,
                    warmup=settings.warmup,
                )
                rates[kind].append(rate)
                errors[kind] += load.errors
                if load.first_error is not None:
                    first.setdefault(kind, load.first_error)
        target, threshold = _ratio_target(db, "read")
        name = f"read by pk, {db}, {connections} conn x {inflight} in flight"
        for kind in ("direct", "asgi"):
            row = Row(
                scenario=name,
                route=kind,
                unit="req/s",
                framework=rates[kind],
                raw=rates["raw"],
                higher_is_better=True,
                target=f"ratio {target}" if kind == "direct" else "(reported)",
            )
            ratio = row.ratio
            if kind == "direct":
                row.meets = ratio is not None and ratio >= threshold
            if errors[kind] or errors["raw"]:
                row.extra = (
                    f"errors: framework {errors[kind]}, raw {errors['raw']} "
                    f"({first.get(kind) or first.get('raw')!r})"
                )
                report.notes.append(f"{name} {kind}: {row.extra}")
                report.count("request errors").lost += errors[kind] + errors["raw"]
            report.rows.append(row)


async def run_creates(
    servers: dict[str, Server], db: str, settings: Settings, report: Report
) -> None:
    """Create (insert + notify one subscriber): 1 connection x 64 in flight."""
    connections, inflight = 1, 64
    subscribers: dict[str, Subscriber] = {}
    for kind, server in servers.items():
        subscribers[kind] = Subscriber()
        await subscribers[kind].open(server.port)
    rates: dict[str, list[float]] = {kind: [] for kind in servers}
    counted: dict[str, Counted] = {kind: Counted() for kind in servers}
    errors: dict[str, int] = dict.fromkeys(servers, 0)
    try:
        warm = settings.warm_rounds
        for r in range(settings.rounds + warm):
            for kind in rotate(list(servers), r):
                prefix = f"c-{db[:2]}-{kind}-{r}-"
                load_rate, load = await _create_round(
                    servers[kind], prefix, connections, inflight, settings, r < warm
                )
                names = [f"{prefix}{seq}" for seq in load.succeeded]
                await subscribers[kind].wait_for(names, timeout=30)
                counted[kind].add(subscribers[kind].count(names))
                errors[kind] += load.errors
                if r >= warm:
                    rates[kind].append(load_rate)
    finally:
        for sub in subscribers.values():
            sub.close()
    name = (
        f"create (insert + notify 1 subscriber), {db}, {connections} conn x {inflight}"
    )
    target, threshold = _ratio_target(db, "create")
    for kind in ("direct", "asgi"):
        row = Row(
            scenario=name,
            route=kind,
            unit="req/s",
            framework=rates[kind],
            raw=rates["raw"],
            higher_is_better=True,
            target=f"ratio {target}" if kind == "direct" else "(reported)",
            notifications=f"{counted[kind]} (raw {counted['raw']})",
        )
        ratio = row.ratio
        if kind == "direct":
            row.meets = ratio is not None and ratio >= threshold
        if errors[kind] or errors["raw"]:
            row.extra = f"errors: framework {errors[kind]}, raw {errors['raw']}"
            report.count("request errors").lost += errors[kind] + errors["raw"]
        report.rows.append(row)
    for kind in servers:
        report.count(f"create {db} {kind}").add(counted[kind])


async def _create_round(
    server: Server,
    prefix: str,
    connections: int,
    inflight: int,
    settings: Settings,
    warm: bool,
) -> tuple[float, Load]:
    load = Load(create_request(prefix), create_check(prefix), inflight)
    load.keep_ok = True
    await load.open(server.port, connections)
    try:
        load.begin()
        if warm:
            await asyncio.sleep(settings.warmup)
            await load.finish()
            return 0.0, load
        await asyncio.sleep(settings.warmup)
        start_ok, start = load.ok, time.monotonic()
        await asyncio.sleep(settings.duration)
        end_ok, end = load.ok, time.monotonic()
        await load.finish()
    finally:
        load.close()
    return (end_ok - start_ok) / (end - start), load
