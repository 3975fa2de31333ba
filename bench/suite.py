"""The benchmark suite's orchestrator (``python bench/run.py``).

Order of a run: the SQLite phase (servers raw, direct and asgi started once, then read
by pk, create, and fan-out on the same processes), the PostgreSQL phase (read by pk and
create, in a database of the run's own), memory per idle connection (fresh processes),
matching (in a child process) and notification throughput through a shared Redis
broker. Everything runs inside this one foreground command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import AsyncIterator
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec

from bench.common import (
    ROOT,
    Receivers,
    Report,
    Row,
    Server,
    Settings,
    create_postgres_database,
    drop_postgres_database,
    redis_url,
    seed,
    spread,
    temp_dir,
)

__all__ = ["main"]

SCENARIOS = ("read", "create", "fanout", "memory", "matching", "broker")
KINDS = ("raw", "direct", "asgi")


@contextlib.asynccontextmanager
async def _servers(
    database: str, logdir: Path, label: str
) -> AsyncIterator[dict[str, Server]]:
    started = await asyncio.gather(
        *(
            Server.start(kind, database, logdir=logdir, name=f"{label}-{kind}")
            for kind in KINDS
        ),
        return_exceptions=True,
    )
    servers = {s.kind: s for s in started if isinstance(s, Server)}
    try:
        for s in started:
            if isinstance(s, BaseException):
                raise s
        yield servers
    finally:
        await asyncio.gather(*(s.stop() for s in servers.values()))


def _fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "n/a"
    if unit in ("req/s", "changes/s"):
        return f"{value:,.0f}"
    if unit == "µs":
        return f"{value:,.2f}"
    return f"{value:,.1f}"


def _cell(values: list[float] | None, unit: str) -> str:
    if not values:
        return "—"
    fmt = {"req/s": "{:,.0f}", "changes/s": "{:,.0f}", "µs": "{:,.2f}"}.get(
        unit, "{:,.1f}"
    )
    return f"{spread(values, fmt)} {unit}"


def table(rows: list[Row]) -> str:
    lines = [
        "| scenario | route | framework (median [min-max]) | raw baseline | "
        "framework/raw | target | met | notifications | details |",
        "|---|---|---|---|---:|---|---|---|---|",
    ]
    for row in rows:
        ratio = row.ratio
        met = "" if row.meets is None else ("yes" if row.meets else "**no**")
        details = "; ".join(
            d
            for d in (
                f"fw: {row.fw_detail}" if row.fw_detail else "",
                f"raw: {row.raw_detail}" if row.raw_detail else "",
                row.extra,
            )
            if d
        )
        lines.append(
            f"| {row.scenario} | {row.route} | {_cell(row.framework, row.unit)} | "
            f"{_cell(row.raw, row.unit)} | "
            f"{'—' if ratio is None else f'{ratio:.2f}'} | {row.target} | {met} | "
            f"{row.notifications} | {details} |"
        )
    return "\n".join(lines)


async def _versions() -> list[str]:
    out = [
        f"Python {platform.python_version()} on {platform.system()} {platform.release()}",
        f"CPU: {os.cpu_count()} x {_cpu_model()}; load average at start "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
    ]
    names = [
        "websockets",
        "uvicorn",
        "uvloop",
        "msgspec",
        "SQLAlchemy",
        "aiosqlite",
        "asyncpg",
        "redis",
    ]
    versions = []
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{name} {metadata.version(name)}")
    out.append(", ".join(versions))
    out.append(_revision())
    with contextlib.suppress(Exception):
        import asyncpg

        from bench.common import admin_postgres_url

        conn = await asyncpg.connect(admin_postgres_url(), timeout=5)
        try:
            version = await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()
        out.append(f"PostgreSQL {version} (loopback TCP)")
    with contextlib.suppress(Exception):
        import redis.asyncio as aioredis

        client = aioredis.from_url(redis_url())
        try:
            info = await client.info("server")
        finally:
            await client.aclose()
        out.append(f"Redis {info.get('redis_version')} (loopback TCP)")
    return out


async def _preflight(only: set[str], profile: bool) -> None:
    """Fail early, saying how to fix it, when a service the run needs is missing."""
    from bench.common import admin_postgres_url

    if profile or only & {"read", "create", "broker"}:
        import asyncpg

        try:
            conn = await asyncpg.connect(admin_postgres_url(), timeout=10)
        except (OSError, asyncpg.PostgresError) as exc:
            raise SystemExit(
                f"PostgreSQL is not reachable at {admin_postgres_url()} ({exc}); "
                "start it or set WEBSOCKETSPEC_TEST_POSTGRES_URL"
            ) from exc
        await conn.close()
    if "broker" in only:
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        client = aioredis.from_url(redis_url(), socket_connect_timeout=5)
        try:
            await client.ping()
        except (OSError, RedisError) as exc:
            raise SystemExit(
                f"Redis is not reachable at {redis_url()} ({exc}); "
                "start it or set WEBSOCKETSPEC_TEST_REDIS_URL"
            ) from exc
        finally:
            await client.aclose()


def _revision() -> str:
    """The commit measured, and whether src/ had uncommitted changes."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "log", "-1", "--format=%h %cI"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "src"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "websocketspec: not a git checkout"
    changed = len(dirty.splitlines())
    return f"websocketspec at {head}" + (
        f" with {changed} uncommitted file(s) under src/" if changed else ""
    )


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _plot(curve: dict[str, dict[int, dict[str, float]]], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install -e '.[bench]')"
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {
        "raw": ("black", "-", "o"),
        "direct": ("tab:blue", "-", "s"),
        "direct + masking hook": ("tab:blue", "--", "^"),
        "asgi": ("tab:orange", "-", "s"),
        "asgi + masking hook": ("tab:orange", "--", "^"),
    }
    for name, points in curve.items():
        sizes = sorted(points)
        color, line, marker = styles.get(name, ("gray", ":", "x"))
        label = "raw websockets.broadcast" if name == "raw" else f"websocketspec {name}"
        left.plot(
            sizes,
            [points[n]["all"] for n in sizes],
            color=color,
            linestyle=line,
            marker=marker,
            label=label,
        )
        right.plot(
            sizes,
            [points[n]["p50"] for n in sizes],
            color=color,
            linestyle=line,
            marker=marker,
            label=label,
        )
    left.set_title("all subscribers reached (ms after the create request)")
    right.set_title("median subscriber (p50, ms)")
    for ax in (left, right):
        ax.set_xlabel("subscribed connections")
        ax.set_ylabel("ms")
        ax.grid(True, alpha=0.3)
    left.axhline(200, color="red", linewidth=0.8, linestyle=":", label="200 ms target")
    left.legend(fontsize=8)
    fig.suptitle(
        "websocketspec fan-out of one change vs raw websockets (2 shared vCPUs)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot written to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}"


async def run(args: argparse.Namespace) -> int:
    settings = Settings.tiny() if args.quick else Settings.full()
    only = set(args.only.split(",")) if args.only else set(SCENARIOS)
    unknown = only - set(SCENARIOS)
    if unknown:
        raise SystemExit(
            f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}"
        )
    await _preflight(only, args.profile)
    report = Report()
    tmp = temp_dir()
    logdir = tmp / "logs"
    logdir.mkdir()
    started = time.monotonic()
    header = await _versions()
    print(
        "websocketspec benchmark" + (" (quick: tiny sizes)" if settings.quick else "")
    )
    for line in header:
        print(f"  {line}")
    print(f"  logs: {logdir}", flush=True)
    receivers = await Receivers.start(settings.receiver_processes, logdir=logdir)
    sqlite = f"sqlite:///{tmp / 'bench.db'}"
    postgres: str | None = None
    ok = False
    try:
        if only & {"read", "create", "fanout", "memory"} or args.profile:
            await seed(sqlite)
        if args.profile:
            from bench.scenarios.profile import run_profiles

            postgres = await create_postgres_database("profile")
            await seed(postgres)
            for text in await run_profiles(
                sqlite, postgres, receivers, settings, logdir
            ):
                print()
                print(text)
            ok = True
            return 0
        from bench.scenarios.requests import run_creates, run_reads

        if only & {"read", "create", "fanout"}:
            _phase("SQLite: read by pk, create, fan-out")
            async with _servers(sqlite, logdir, "sqlite") as servers:
                if "read" in only:
                    await run_reads(servers, "SQLite", settings, report)
                if "create" in only:
                    _phase("SQLite: create")
                    await run_creates(servers, "SQLite", settings, report)
                if "fanout" in only:
                    _phase("SQLite: fan-out")
                    from bench.scenarios.fanout import run_fanout

                    await run_fanout(servers, receivers, settings, report)
        if only & {"read", "create"}:
            _phase("PostgreSQL: read by pk, create")
            postgres = await create_postgres_database("requests")
            await seed(postgres)
            async with _servers(postgres, logdir, "postgres") as servers:
                if "read" in only:
                    await run_reads(servers, "PostgreSQL", settings, report)
                if "create" in only:
                    _phase("PostgreSQL: create")
                    await run_creates(servers, "PostgreSQL", settings, report)
        if "memory" in only:
            _phase("memory per idle subscribed connection")
            from bench.scenarios.memory import run_memory

            await run_memory(sqlite, receivers, settings, report, logdir)
        if "matching" in only:
            _phase("matching")
            from bench.scenarios.matching import run_matching

            await run_matching(settings, report, logdir)
        if "broker" in only:
            _phase("notification throughput through a shared Redis broker")
            from bench.scenarios.broker import run_broker

            await run_broker(receivers, settings, report, logdir)
        _phase("done")
        ok = True
    finally:
        await receivers.stop()
        if postgres is not None:
            await drop_postgres_database(postgres)
        if ok and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return _finish(report, settings, args, started)


_T0 = time.monotonic()


def _phase(name: str) -> None:
    print(f"-- {time.monotonic() - _T0:6.1f}s {name}", file=sys.stderr, flush=True)


def _finish(
    report: Report, settings: Settings, args: argparse.Namespace, started: float
) -> int:
    print()
    print(table(report.rows))
    print()
    elapsed = time.monotonic() - started
    print(
        f"Run took {elapsed:,.0f} s; load average at end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}. Rounds interleave the "
        f"routes; {settings.rounds} measured rounds per request/fan-out figure."
    )
    for note in report.notes:
        print(f"note: {note}")
    problems = {k: c for k, c in report.counted.items() if not c.ok}
    total = sum(c.received for c in report.counted.values())
    if problems:
        print("NOTIFICATIONS OR REQUESTS WENT WRONG:")
        for key, counted in problems.items():
            print(f"  {key}: {counted}")
    else:
        print(
            f"notifications: {total:,} counted, none lost, none duplicated, "
            "none unexpected"
        )
    results = {
        "settings": dataclasses.asdict(settings),
        "rows": [
            {
                "scenario": r.scenario,
                "route": r.route,
                "unit": r.unit,
                "framework": r.framework,
                "raw": r.raw,
                "ratio": r.ratio,
                "target": r.target,
                "meets": r.meets,
                "notifications": r.notifications,
                "details": [r.fw_detail, r.raw_detail, r.extra],
            }
            for r in report.rows
        ],
        "counted": {k: str(c) for k, c in report.counted.items()},
        "raw": report.raw,
    }
    json_path = args.json or (
        None if settings.quick else ROOT / "bench" / "results.json"
    )
    if json_path:
        Path(json_path).write_bytes(msgspec.json.format(msgspec.json.encode(results)))
    curve: dict[str, Any] = report.raw.get("fanout_curve", {})
    plot_path = args.plot or (None if settings.quick else ROOT / "bench" / "fanout.png")
    if plot_path and curve:
        print(_plot(curve, Path(plot_path)))
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/run.py",
        description="Benchmark websocketspec against a raw websockets baseline.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the test)")
    parser.add_argument(
        "--only", default=None, help=f"comma-separated subset of {','.join(SCENARIOS)}"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the direct route (read by pk, fan-out) instead of benchmarking",
    )
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--plot", default=None, help="write the fan-out plot here")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory and logs"
    )
    args = parser.parse_args(argv)
    from bench.servers import run as run_on_uvloop

    code = 0

    async def go() -> None:
        nonlocal code
        code = await run(args)

    run_on_uvloop(go())
    return code
