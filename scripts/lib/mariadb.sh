# shellcheck shell=bash
# ensure_mariadb: make WEBSOCKETSPEC_TEST_MYSQL_URL point at a MariaDB that answers.
# Uses the server at the URL (default mysql://root@127.0.0.1:3306/test) when it answers;
# otherwise installs mariadb-server with apt-get if missing and starts a private instance
# as the mysql user on a free port in a temporary directory, stopped when the calling
# script exits. Tests create and drop databases of their own there (wsspec_test_*).
_mariadb_answers() {
  .venv/bin/python - "$1" <<'PY' >/dev/null 2>&1
import asyncio, sys
from urllib.parse import unquote, urlsplit
import asyncmy
async def main() -> None:
    url = urlsplit(sys.argv[1])
    conn = await asyncio.wait_for(
        asyncmy.connect(
            host=url.hostname or "127.0.0.1",
            port=url.port or 3306,
            user=unquote(url.username or "root"),
            password=unquote(url.password or ""),
            connect_timeout=3,
        ),
        5,
    )
    await asyncio.wait_for(conn.ensure_closed(), 5)
asyncio.run(main())
PY
}

_mariadb_stop_private() {
  if [ -n "${_MARIADB_DIR:-}" ] && [ -d "$_MARIADB_DIR" ]; then
    if [ -f "$_MARIADB_DIR/pid" ]; then
      local pid
      pid=$(cat "$_MARIADB_DIR/pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
    fi
    rm -rf "$_MARIADB_DIR"
  fi
}

# Add _mariadb_stop_private to the EXIT trap without dropping one already set (the
# private PostgreSQL's).
_mariadb_trap_exit() {
  local previous
  previous=$(trap -p EXIT)
  previous=${previous#"trap -- '"}
  previous=${previous%"' EXIT"}
  trap "${previous:+$previous; }_mariadb_stop_private" EXIT
}

ensure_mariadb() {
  export WEBSOCKETSPEC_TEST_MYSQL_URL=${WEBSOCKETSPEC_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}
  if _mariadb_answers "$WEBSOCKETSPEC_TEST_MYSQL_URL"; then
    echo "MariaDB: using the server at $WEBSOCKETSPEC_TEST_MYSQL_URL"
    return
  fi
  echo "MariaDB: nothing answers at $WEBSOCKETSPEC_TEST_MYSQL_URL; starting a private instance"
  local server
  server=$(command -v mariadbd || ls /usr/sbin/mariadbd 2>/dev/null || true)
  if [ -z "$server" ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "MariaDB is not installed; install it (apt-get install mariadb-server) or run as root" >&2
      exit 1
    fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server >/dev/null
    server=/usr/sbin/mariadbd
  fi
  _MARIADB_DIR=$(mktemp -d /tmp/websocketspec-mariadb.XXXXXX)
  chmod 755 "$_MARIADB_DIR"
  local as=()
  if [ "$(id -u)" = 0 ]; then
    # mariadbd refuses to run as root: it drops to the mysql user, who owns the data.
    chown mysql "$_MARIADB_DIR"
    as=(--user=mysql)
  fi
  local port
  port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # root without a password, over TCP (not the unix_socket plugin of packaged servers).
  mariadb-install-db --no-defaults "${as[@]}" --datadir="$_MARIADB_DIR/data" \
    --auth-root-authentication-method=normal --skip-test-db >"$_MARIADB_DIR/install.log" 2>&1
  _mariadb_trap_exit
  "$server" --no-defaults "${as[@]}" --datadir="$_MARIADB_DIR/data" \
    --socket="$_MARIADB_DIR/sock" --pid-file="$_MARIADB_DIR/pid" \
    --port="$port" --bind-address=127.0.0.1 --skip-log-bin --skip-name-resolve \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci \
    --innodb-buffer-pool-size=64M --innodb-flush-log-at-trx-commit=0 \
    --log-error="$_MARIADB_DIR/log" >/dev/null 2>&1 &
  export WEBSOCKETSPEC_TEST_MYSQL_URL="mysql://root@127.0.0.1:$port/test"
  for _ in $(seq 1 120); do
    if _mariadb_answers "$WEBSOCKETSPEC_TEST_MYSQL_URL"; then
      echo "MariaDB: private instance at $WEBSOCKETSPEC_TEST_MYSQL_URL"
      return
    fi
    sleep 0.5
  done
  echo "MariaDB did not start; its log:" >&2
  cat "$_MARIADB_DIR/log" >&2 || true
  exit 1
}
