"""Server memory per idle subscribed connection.

A fresh server process per measurement: 20 connections come and go first (imports,
pools and first-use allocations happen then), the resident set size is read from
``/proc/<pid>/status``, N receivers connect and each subscribes to ``users`` with an
equality filter on a distinct ``id`` (for the raw baseline the subscription is just
membership of the broadcast set), and after half a second of idleness the RSS is read
again. The figure is the growth divided by N: everything a connection costs the server
(socket buffers in user space, protocol state, framework state, allocator slack).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.common import Receivers, Report, Row, Server, Settings, rotate, rss_kib

__all__ = ["run_memory"]

SUBSCRIBE = {"type": "subscription", "operation": "subscribe", "entity": "users"}
KINDS = ["raw", "direct", "asgi"]


async def run_memory(
    database: str,
    receivers: Receivers,
    settings: Settings,
    report: Report,
    logdir: Path,
) -> None:
    n = settings.memory_connections
    per: dict[str, list[float]] = {kind: [] for kind in KINDS}
    base: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for r in range(settings.memory_rounds):
        for kind in rotate(KINDS, r):
            server = await Server.start(
                kind, database, logdir=logdir, name=f"memory-{kind}-{r}"
            )
            try:
                await receivers.connect(
                    "warm", server.port, 20, subscribe=SUBSCRIBE, eq_column="id"
                )
                await receivers.close("warm")
                await asyncio.sleep(0.5)
                before = rss_kib(server.pid)
                await receivers.connect(
                    "idle",
                    server.port,
                    n,
                    subscribe=SUBSCRIBE,
                    eq_column="id",
                    eq_start=1,
                )
                await asyncio.sleep(0.5)
                after = rss_kib(server.pid)
                per[kind].append((after - before) / n)
                base[kind].append(before / 1024)
            finally:
                await receivers.close("idle")
                await receivers.close("warm")
                await server.stop()
    for kind in ("direct", "asgi"):
        row = Row(
            scenario=f"memory per idle subscribed connection ({n:,} connections)",
            route=kind,
            unit="KiB",
            framework=per[kind],
            raw=per["raw"],
            higher_is_better=False,
            target="≤ 20 KiB" if kind == "direct" else "(reported)",
            fw_detail=f"base RSS {min(base[kind]):.0f} MiB",
            raw_detail=f"base RSS {min(base['raw']):.0f} MiB",
        )
        if kind == "direct":
            row.meets = row.fw_median <= 20.0
        report.rows.append(row)
