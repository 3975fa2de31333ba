"""The benchmark suite keeps working: ``bench/run.py --quick`` runs once, in tiny sizes.

No figure is asserted (a benchmark is never a test with a time limit): only that every
scenario ran on both routes against its raw baseline, printed its table row, and that
every notification was counted, none lost and none duplicated. It uses the PostgreSQL
of ``WEBSOCKETSPEC_TEST_POSTGRES_URL`` (a database of its own, dropped afterwards) and
the Redis at ``WEBSOCKETSPEC_TEST_REDIS_URL`` (default 127.0.0.1:6379, channels of its
own).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCENARIOS = [
    "read by pk, SQLite, 1 conn x 64 in flight",
    "read by pk, SQLite, 4 conn x 16 in flight",
    "read by pk, PostgreSQL, 1 conn x 64 in flight",
    "read by pk, PostgreSQL, 4 conn x 16 in flight",
    "create (insert + notify 1 subscriber), SQLite",
    "create (insert + notify 1 subscriber), PostgreSQL",
    "fan-out to 20 subscribers, all received",
    "memory per idle subscribed connection",
    "matching, 2,000 subscriptions on one entity: no subscription matches",
    "matching, 2,000 subscriptions on one entity: one subscription matches",
    "notification throughput, 2 processes x 3 subscribers, Redis broker",
]


def test_quick_benchmark_runs_and_counts_every_notification() -> None:
    # A guard against a hang, not a timing assertion.
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout
    assert result.returncode == 0, f"{output}\n{result.stderr}"
    assert "| scenario | route | framework" in output
    lines = output.splitlines()
    for scenario in SCENARIOS:
        rows = [line for line in lines if line.startswith(f"| {scenario}")]
        routes = {row.split("|")[2].strip() for row in rows}
        assert {"direct", "asgi"} <= routes or routes == {"in-process"}, (
            scenario,
            rows,
        )
        for row in rows:
            assert "n/a" not in row.split("|")[3], row
    fanout = [line for line in lines if line.startswith("| fan-out to 20")]
    assert {row.split("|")[2].strip() for row in fanout} == {
        "direct",
        "direct + masking hook",
        "asgi",
        "asgi + masking hook",
    }
    # Every notification scenario reports a count, and all of them came out right.
    for row in lines:
        if row.startswith(("| create", "| fan-out", "| notification throughput")):
            cell = row.split("|")[8]
            assert " ok (raw " in cell and cell.strip().endswith("ok)"), row
    assert "none lost, none duplicated, none unexpected" in output
    assert "LOST" not in output and "DUP" not in output
