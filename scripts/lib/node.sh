# shellcheck shell=bash
# ensure_node: Node.js >= 20 for the JavaScript client tests, and their npm packages.
ensure_node() {
  local major=0
  if command -v node >/dev/null 2>&1; then
    major=$(node -p 'process.versions.node.split(".")[0]')
  fi
  if [ "$major" -lt 20 ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "Node.js >= 20 is needed for the JavaScript client tests; install it" >&2
      exit 1
    fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    major=$(node -p 'process.versions.node.split(".")[0]')
    if [ "$major" -lt 20 ]; then
      npm install --global --silent n >/dev/null && n 20 >/dev/null && hash -r
    fi
  fi
  ensure_chromium
  local dir
  for dir in tests/js clients/js; do
    if [ -f "$dir/package-lock.json" ]; then
      (cd "$dir" && npm ci --silent --no-audit --no-fund)
    fi
  done
}

# ensure_chromium: Debian's Chromium for the TypeScript client's browser test (playwright-core
# drives it; no browser is downloaded). Set CHROMIUM to use another binary.
ensure_chromium() {
  local chromium="${CHROMIUM:-/usr/bin/chromium}"
  if [ -x "$chromium" ]; then
    return
  fi
  if [ "$(id -u)" != 0 ] || [ -n "${CHROMIUM:-}" ]; then
    echo "Chromium is needed for the browser test: apt-get install -y chromium (as root)," >&2
    echo "or set CHROMIUM to a Chromium binary; none at $chromium" >&2
    exit 1
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
}
