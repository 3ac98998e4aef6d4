#!/usr/bin/env bash
# Warren web UI suite: the management UI (static/) in headless Chromium against the real broker.
#
#   tests/run-ui.sh [extra node --test args, e.g. --test-name-pattern=Users]
#
# 1. Debian's chromium (apt-get, with sudo when not root) if /usr/bin/chromium is missing,
# 2. tests/ui/node_modules via `npm ci` (only when package-lock.json changes),
# 3. node --test tests/ui/ui.test.mjs, which starts its own broker on ephemeral ports and
#    writes full-page screenshots to tests/ui/screenshots/.
#
# The UI files are compiled into the broker binary, so build it after changing static/.
#
# Environment:
#   WARREN_BIN   broker binary (default: target/debug/warren; `cargo build --bin warren`)
#   CHROMIUM     browser executable (default: /usr/bin/chromium)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

UI="tests/ui"
DEFAULT_CHROMIUM="/usr/bin/chromium"

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'run-ui: %s\n' "$*" >&2; exit 2; }

sha() { sha256sum | cut -d' ' -f1; }

# ---------------------------------------------------------------- browser
setup_chromium() {
  CHROMIUM="${CHROMIUM:-$DEFAULT_CHROMIUM}"
  if [[ ! -x "$CHROMIUM" ]]; then
    [[ "$CHROMIUM" == "$DEFAULT_CHROMIUM" ]] || die "CHROMIUM=$CHROMIUM not found or not executable"
    command -v apt-get >/dev/null || die "$CHROMIUM missing and apt-get not found: install Chromium and set CHROMIUM"
    local sudo=""
    if [[ "$(id -u)" -ne 0 ]]; then
      command -v sudo >/dev/null || die "$CHROMIUM missing; installing it needs root or sudo"
      sudo="sudo"
    fi
    log "installing Debian's chromium"
    $sudo apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
    [[ -x "$CHROMIUM" ]] || die "chromium installed but $CHROMIUM is still missing"
  fi
  export CHROMIUM
}

# ---------------------------------------------------------------- node env
setup_node() {
  command -v node >/dev/null || die "node not found (Node 20+ required)"
  command -v npm >/dev/null || die "npm not found"
  node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' \
    || die "Node 20+ required, found $(node --version)"
  local want stamp="$UI/node_modules/.package-lock.sha256"
  want="$(sha <"$UI/package-lock.json")"
  if [[ ! -d "$UI/node_modules" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    log "npm ci in $UI"
    (cd "$UI" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" >"$stamp"
  fi
}

# ---------------------------------------------------------------- broker binary
setup_broker_binary() {
  WARREN_BIN="${WARREN_BIN:-$ROOT/target/debug/warren}"
  [[ -x "$WARREN_BIN" ]] \
    || die "broker binary $WARREN_BIN not found or not executable: build it with \`cargo build --bin warren\` (or set WARREN_BIN)"
  export WARREN_BIN
}

setup_broker_binary
setup_chromium
setup_node

log "node --test $UI/ui.test.mjs (broker: $WARREN_BIN, browser: $CHROMIUM)"
rc=0
node --test --test-timeout=300000 --test-reporter=spec "$@" "$UI/ui.test.mjs" || rc=$?
if ((rc == 0)); then
  log "UI suite passed; screenshots in $UI/screenshots/"
else
  log "UI suite FAILED (node exit $rc); screenshots in $UI/screenshots/"
fi
exit "$rc"
