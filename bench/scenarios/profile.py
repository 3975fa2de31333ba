"""Where the framework's time goes: cProfile of the direct route's server process.

``python bench/run.py --profile`` runs, each against a fresh direct server whose
profiler is on only while the load runs: read by primary key on SQLite and on
PostgreSQL (1 connection x 64 in flight), and fan-out of single changes to 1,000
subscribers. It prints, per run, the functions with the most time of their own
(``tottime``) and the framework functions with the most time including callees
(``cumtime``). cProfile slows Python calls down, so the shares matter, not the totals.
"""

from __future__ import annotations

import pstats
from pathlib import Path

from bench.common import Receivers, Server, Settings
from bench.scenarios.fanout import SUBSCRIBE, _Trigger
from bench.scenarios.requests import measure_rate, read_check, read_request

__all__ = ["run_profiles"]

_TOP = 22


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def summarize(path: Path, title: str) -> str:
    """The top functions of a profile, by own time and (framework) by cumulative."""
    stats = pstats.Stats(str(path))
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_cc, _nc, tt, _ct, _callers) in entries.values())
    rows = sorted(entries.items(), key=lambda kv: kv[1][2], reverse=True)
    lines = [f"### {title}", "", f"total own time {total:.2f} s", ""]
    lines.append("| own time | share | cumulative | calls | function |")
    lines.append("|---:|---:|---:|---:|---|")
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in rows[:_TOP]:
        lines.append(
            f"| {tt * 1000:,.0f} ms | {tt / total:.1%} | {ct * 1000:,.0f} ms | {nc:,} "
            f"| `{func}` {_short(filename)}:{line} |"
        )
    ours = [
        kv
        for kv in entries.items()
        if "websocketspec" in kv[0][0] and "/bench/" not in kv[0][0]
    ]
    ours.sort(key=lambda kv: kv[1][3], reverse=True)
    lines += ["", "websocketspec functions by cumulative time:", ""]
    lines.append("| cumulative | share | own | calls | function |")
    lines.append("|---:|---:|---:|---:|---|")
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in ours[:_TOP]:
        lines.append(
            f"| {ct * 1000:,.0f} ms | {ct / total:.1%} | {tt * 1000:,.0f} ms | {nc:,} "
            f"| `{func}` {_short(filename)}:{line} |"
        )
    return "\n".join(lines)


async def _profile_reads(
    database: str, label: str, logdir: Path, seconds: float
) -> str:
    path = logdir / f"profile-read-{label}.prof"
    server = await Server.start(
        "direct", database, logdir=logdir, name=f"profile-{label}", profile=str(path)
    )
    try:
        await measure_rate(
            server,
            read_request,
            read_check,
            connections=1,
            inflight=64,
            duration=0.5,
            warmup=0.0,
        )
        await server.profile(True)
        rate, _ = await measure_rate(
            server,
            read_request,
            read_check,
            connections=1,
            inflight=64,
            duration=seconds,
            warmup=0.0,
        )
        await server.profile(False)
    finally:
        await server.stop()
    return summarize(
        path, f"read by pk, {label}, direct, 1 conn x 64 ({rate:,.0f} req/s profiled)"
    )


async def _profile_fanout(
    database: str, receivers: Receivers, logdir: Path, size: int, changes: int
) -> str:
    path = logdir / "profile-fanout.prof"
    server = await Server.start(
        "direct", database, logdir=logdir, name="profile-fanout", profile=str(path)
    )
    trigger = _Trigger()
    try:
        await receivers.connect(
            "profile", server.port, size, subscribe=SUBSCRIBE, record=True
        )
        await trigger.open(server.port)
        await server.profile(True)
        for i in range(changes):
            tag = f"profile-{i}"
            trigger.send(tag)
            await receivers.wait_tag("profile", tag, timeout=30)
        await server.profile(False)
        await receivers.verify("profile", [f"profile-{i}" for i in range(changes)])
    finally:
        if trigger.client is not None:
            trigger.client.close()
        await receivers.close("profile")
        await server.stop()
    return summarize(
        path, f"fan-out of {changes} changes to {size:,} subscribers, direct"
    )


async def _profile_memory(
    database: str, receivers: Receivers, logdir: Path, size: int
) -> str:
    """Which allocation sites hold the memory of idle subscribed connections."""
    from bench.scenarios.memory import SUBSCRIBE as MEMORY_SUBSCRIBE

    server = await Server.start(
        "direct", database, logdir=logdir, name="profile-memory"
    )
    try:
        await receivers.connect(
            "warm", server.port, 20, subscribe=MEMORY_SUBSCRIBE, eq_column="id"
        )
        await receivers.close("warm")
        await server.child.call(cmd="alloc", action="start")
        await receivers.connect(
            "idle",
            server.port,
            size,
            subscribe=MEMORY_SUBSCRIBE,
            eq_column="id",
            eq_start=1,
        )
        answer = await server.child.call(
            timeout=600, cmd="alloc", action="diff", top=25
        )
    finally:
        await receivers.close("idle")
        await server.stop()
    total = int(answer["total"])
    lines = [
        f"### memory of {size:,} idle subscribed connections, direct (tracemalloc)",
        "",
        f"Python allocations grew by {total / 1024:,.0f} KiB, "
        f"{total / size / 1024:.1f} KiB per connection (RSS adds allocator and "
        "kernel-side buffers). Largest sites, innermost frame first:",
        "",
        "| per connection | objects per connection | where |",
        "|---:|---:|---|",
    ]
    for size_diff, count_diff, frames in answer["rows"]:
        where = " < ".join(f"`{f}`" for f in list(reversed(frames))[:4])
        lines.append(
            f"| {size_diff / size:,.0f} B | {count_diff / size:.1f} | {where} |"
        )
    return "\n".join(lines)


async def run_profiles(
    sqlite: str,
    postgres: str | None,
    receivers: Receivers,
    settings: Settings,
    logdir: Path,
) -> list[str]:
    seconds = 1.0 if settings.quick else 5.0
    out = [await _profile_reads(sqlite, "SQLite", logdir, seconds)]
    if postgres is not None:
        out.append(await _profile_reads(postgres, "PostgreSQL", logdir, seconds))
    size = settings.fanout_sizes[0] if settings.quick else 1_000
    out.append(
        await _profile_memory(
            sqlite, receivers, logdir, 50 if settings.quick else 2_000
        )
    )
    out.append(
        await _profile_fanout(
            sqlite, receivers, logdir, size, 5 if settings.quick else 30
        )
    )
    return out
