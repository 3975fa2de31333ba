"""Run the benchmark suite: ``python bench/run.py`` (full) or ``--quick`` (tiny sizes).

See bench/README.md for what each scenario measures and the figures of a full run.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.suite import main

if __name__ == "__main__":
    sys.exit(main())
