"""Notification throughput through several server processes sharing a Redis broker.

Per route, P server processes share one PostgreSQL database (of that route's own) and
one Redis channel (of this run's own). Each process holds S subscribers on ``users``
(receiver processes). One writer connection per server process sends ``create``s, 16 in
flight, C changes in all per round. The round ends when every subscriber of every
process has all C notifications; throughput is C divided by the time from the first
write to the last arrival (deliveries/s = that x P x S). Every subscriber must receive
each change exactly once.

Framework: ``RedisBroker`` (the change log written in each write's transaction, the
change published after commit, the relay ordering and de-duplicating). Raw baseline:
``INSERT … RETURNING`` with asyncpg, ``PUBLISH`` of the row, and every process
broadcasting what it hears on the channel to its own subscribers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from bench.common import (
    Counted,
    Receivers,
    Report,
    Row,
    Server,
    Settings,
    create_postgres_database,
    drop_postgres_database,
    median,
    redis_url,
    rotate,
    seed,
)
from bench.scenarios.requests import Load, create_check, create_request

__all__ = ["run_broker"]

SUBSCRIBE = {"type": "subscription", "operation": "subscribe", "entity": "users"}
KINDS = ["raw", "direct", "asgi"]
INFLIGHT = 16


async def run_broker(
    receivers: Receivers, settings: Settings, report: Report, logdir: Path
) -> None:
    p = settings.broker_processes
    s = settings.broker_subscribers
    c = settings.broker_changes
    run_id = uuid.uuid4().hex[:8]
    databases: dict[str, str] = {}
    servers: dict[str, list[Server]] = {}
    rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
    counted: dict[str, Counted] = {kind: Counted() for kind in KINDS}
    errors = dict.fromkeys(KINDS, 0)
    try:

        async def prepare(kind: str) -> None:
            databases[kind] = await create_postgres_database(f"broker_{kind}")
            await seed(databases[kind], users=0)
            channel = f"wsspec-bench:{run_id}:{kind}"
            # One after the other: the first creates the change log's tables.
            servers[kind] = []
            for i in range(p):
                servers[kind].append(
                    await Server.start(
                        kind,
                        databases[kind],
                        logdir=logdir,
                        name=f"broker-{kind}-{i}",
                        broker=f"{redis_url()}#{channel}",
                    )
                )

        await asyncio.gather(*(prepare(kind) for kind in KINDS))
        for kind in KINDS:
            for server in servers[kind]:
                await receivers.connect(
                    f"broker-{kind}", server.port, s, subscribe=SUBSCRIBE
                )
        received = dict.fromkeys(KINDS, 0)
        warm = settings.warm_rounds
        for r in range(settings.broker_rounds + warm):
            for kind in rotate(KINDS, r):
                prefix = f"b-{kind}-{r}-"
                per_writer = c // p
                total = per_writer * p
                loads = []
                for w, server in enumerate(servers[kind]):
                    writer_prefix = f"{prefix}{w}-"
                    load = Load(
                        create_request(writer_prefix),
                        create_check(writer_prefix),
                        INFLIGHT,
                        total=per_writer,
                    )
                    await load.open(server.port, 1)
                    loads.append((writer_prefix, load))
                start = time.monotonic()
                for _, load in loads:
                    load.begin()
                for _, load in loads:
                    await asyncio.wait_for(load.done.wait(), 300)
                    load.close()
                received[kind] += total
                last = await receivers.wait_count(
                    f"broker-{kind}", received[kind], timeout=60
                )
                tags = [
                    f"{wp}{seq}"
                    for wp, load in loads
                    for seq in range(1, per_writer + 1)
                ]
                got = await receivers.verify(f"broker-{kind}", tags)
                counted[kind].add(got)
                errors[kind] += sum(load.errors for _, load in loads)
                if r >= warm and last > start:
                    rates[kind].append(total / (last - start))
        for kind in KINDS:
            counted[kind].add(await receivers.verify(f"broker-{kind}", [], final=True))
    finally:
        for kind, group in servers.items():
            await receivers.close(f"broker-{kind}")
            for server in group:
                await server.stop()
        for url in databases.values():
            await drop_postgres_database(url)
    for kind in KINDS:
        report.count(f"broker {kind}").add(counted[kind])
    for kind in ("direct", "asgi"):
        deliveries = p * s
        row = Row(
            scenario=(
                f"notification throughput, {p} processes x {s} subscribers, "
                f"Redis broker, PostgreSQL"
            ),
            route=kind,
            unit="changes/s",
            framework=rates[kind],
            raw=rates["raw"],
            higher_is_better=True,
            target="(reported)",
            notifications=f"{counted[kind]} (raw {counted['raw']})",
            fw_detail=f"{deliveries * median(rates[kind]):,.0f} deliveries/s",
            raw_detail=f"{deliveries * median(rates['raw']):,.0f} deliveries/s",
        )
        if errors[kind] or errors["raw"]:
            row.extra = f"errors: framework {errors[kind]}, raw {errors['raw']}"
            report.count("request errors").lost += errors[kind] + errors["raw"]
        report.rows.append(row)
