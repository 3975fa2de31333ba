#!/usr/bin/env bash
# Install everything into a local virtual environment (.venv) and run every check:
# ruff (lint and format), mypy --strict, and the whole test suite against SQLite and
# PostgreSQL over real WebSocket connections. Uses the PostgreSQL at
# WEBSOCKETSPEC_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres)
# or starts a private one. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/venv.sh
source scripts/lib/postgres.sh
source scripts/lib/node.sh

ensure_venv '.[dev]'
ensure_postgres
source scripts/lib/mariadb.sh; ensure_mariadb
ensure_node

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy --strict"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest "$@"
