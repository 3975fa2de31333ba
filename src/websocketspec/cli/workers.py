"""Run N copies of a server command as worker processes sharing one port.

The workers listen with ``SO_REUSEPORT``, so the kernel spreads connections among them.
The supervisor forwards SIGTERM and SIGINT to every worker (each then shuts down
gracefully) and exits with the first non-zero code of a worker. A worker that dies
unexpectedly stops the whole group rather than leaving it half-served.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

__all__ = ["supervise"]


def supervise(argv: Sequence[str], workers: int) -> int:
    """Start ``workers`` processes running ``argv`` and wait for them.

    Args:
        argv: the worker's command line (it must listen with ``reuse_port``).
        workers: how many to start.

    Returns:
        The exit code for the supervisor.
    """
    env = dict(os.environ, WEBSOCKETSPEC_WORKER="1")
    children = [subprocess.Popen(list(argv), env=env) for _ in range(workers)]
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    previous = {
        sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        while True:
            codes = [child.poll() for child in children]
            if all(code is not None for code in codes):
                break
            if not stopping and any(code is not None for code in codes):
                sys.stderr.write(
                    "websocketspec: a worker exited; stopping the others\n"
                )
                forward(signal.SIGTERM, None)
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    failures = [code for code in (child.returncode for child in children) if code]
    return failures[0] if failures else 0
