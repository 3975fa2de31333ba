# shellcheck shell=bash
# ensure_postgres: make WEBSOCKETSPEC_TEST_POSTGRES_URL point at a PostgreSQL that answers.
# Uses the server at the URL (default 127.0.0.1:5432, user postgres) when it answers;
# otherwise installs PostgreSQL with apt-get if missing and starts a private instance
# on a free port in a temporary directory, stopped when the calling script exits.
_pg_answers() {
  .venv/bin/python - "$1" <<'PY' >/dev/null 2>&1
import asyncio, sys
import asyncpg
async def main() -> None:
    conn = await asyncpg.connect(sys.argv[1], timeout=3)
    await conn.close()
asyncio.run(main())
PY
}

_pg_stop_private() {
  if [ -n "${_PG_DIR:-}" ] && [ -d "$_PG_DIR" ]; then
    _pg_run "$_PG_BIN/pg_ctl" -D "$_PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$_PG_DIR"
  fi
}

_pg_run() {
  if [ "$(id -u)" = 0 ]; then
    # initdb and postgres refuse to run as root.
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

ensure_postgres() {
  export WEBSOCKETSPEC_TEST_POSTGRES_URL=${WEBSOCKETSPEC_TEST_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
  if _pg_answers "$WEBSOCKETSPEC_TEST_POSTGRES_URL"; then
    echo "PostgreSQL: using the server at $WEBSOCKETSPEC_TEST_POSTGRES_URL"
    return
  fi
  echo "PostgreSQL: nothing answers at $WEBSOCKETSPEC_TEST_POSTGRES_URL; starting a private instance"
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
      echo "PostgreSQL is not installed; install it (apt-get install postgresql) or run as root" >&2
      exit 1
    fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  _PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  _PG_DIR=$(mktemp -d /tmp/websocketspec-pg.XXXXXX)
  chmod 755 "$_PG_DIR"
  if [ "$(id -u)" = 0 ]; then chown postgres "$_PG_DIR"; fi
  local port
  port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  _pg_run "$_PG_BIN/initdb" -D "$_PG_DIR/data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 >/dev/null
  trap _pg_stop_private EXIT
  _pg_run "$_PG_BIN/pg_ctl" -D "$_PG_DIR/data" -w -l "$_PG_DIR/log" \
    -o "-p $port -k $_PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
  export WEBSOCKETSPEC_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:$port/postgres"
  echo "PostgreSQL: private instance at $WEBSOCKETSPEC_TEST_POSTGRES_URL"
}
