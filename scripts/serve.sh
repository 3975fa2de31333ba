#!/usr/bin/env bash
# Install websocketspec into a local virtual environment (.venv) and start the
# quickstart server at ws://127.0.0.1:8080/ws on an embedded SQLite database (app.db).
# Extra arguments go to examples/quickstart.py (--port N, --database URL, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/venv.sh
ensure_venv '.[all]'
exec .venv/bin/python examples/quickstart.py "$@"
