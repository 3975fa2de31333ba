#!/usr/bin/env bash
# Install everything into a local virtual environment (.venv) and run every check:
# ruff (lint and format), mypy --strict, and the whole test suite against SQLite,
# PostgreSQL, MariaDB and Redis over real WebSocket connections. Each service is the one
# at its WEBSOCKETSPEC_TEST_*_URL (defaults: the usual local ports) or, when none answers,
# a private instance started for the run (installed with apt-get when missing).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/venv.sh
source scripts/lib/postgres.sh
source scripts/lib/node.sh

ensure_venv '.[dev]'
ensure_postgres
source scripts/lib/mariadb.sh; ensure_mariadb
source scripts/lib/redis.sh; ensure_redis
ensure_node

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy --strict"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest "$@"
