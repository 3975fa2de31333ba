# shellcheck shell=bash
# ensure_redis: a redis-server binary (the broker fault tests start private ones) and a
# Redis answering at WEBSOCKETSPEC_TEST_REDIS_URL (default redis://127.0.0.1:6379/0):
# the running one, or else a private instance on a free port, stopped on exit.
_redis_answers() {
  .venv/bin/python - "$1" <<'PY' >/dev/null 2>&1
import sys
import redis
redis.Redis.from_url(sys.argv[1], socket_connect_timeout=3).ping()
PY
}

ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
      echo "redis-server is needed by the broker tests: apt-get install redis-server" >&2
      exit 1
    fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  export WEBSOCKETSPEC_TEST_REDIS_URL=${WEBSOCKETSPEC_TEST_REDIS_URL:-redis://127.0.0.1:6379/0}
  if _redis_answers "$WEBSOCKETSPEC_TEST_REDIS_URL"; then
    echo "Redis: using the server at $WEBSOCKETSPEC_TEST_REDIS_URL"
    return
  fi
  local port dir
  port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  dir=$(mktemp -d /tmp/websocketspec-redis.XXXXXX)
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/log"
  _REDIS_DIR=$dir
  # Chain onto any exit trap already set (the private PostgreSQL/MariaDB stops).
  local previous
  previous=$(trap -p EXIT | sed -E "s/^trap -- '(.*)' EXIT$/\1/")
  trap "${previous:+$previous; }_redis_stop_private" EXIT
  export WEBSOCKETSPEC_TEST_REDIS_URL="redis://127.0.0.1:$port/0"
  for _ in $(seq 50); do
    _redis_answers "$WEBSOCKETSPEC_TEST_REDIS_URL" && break
    sleep 0.1
  done
  echo "Redis: private instance at $WEBSOCKETSPEC_TEST_REDIS_URL"
}

_redis_stop_private() {
  if [ -n "${_REDIS_DIR:-}" ] && [ -f "$_REDIS_DIR/redis.pid" ]; then
    kill "$(cat "$_REDIS_DIR/redis.pid")" 2>/dev/null || true
    rm -rf "$_REDIS_DIR"
  fi
}
