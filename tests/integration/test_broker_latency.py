"""The broker latency benchmark runs and counts every notification (no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_broker_latency_benchmark_runs_quickly_and_counts_everything() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "broker_latency.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    brokers = {row.split("|")[1].strip(): row for row in rows[1:]}
    assert set(brokers) == {"in-process", "redis", "postgresql"}
    for row in brokers.values():
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[1].endswith(" ms") and cells[2].endswith(" ms")
        # Each of the 20 changes reached the subscriber on the other server exactly once.
        assert cells[4] == "20"
