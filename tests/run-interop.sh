#!/usr/bin/env bash
# Warren interop suite: real client libraries against the real broker binary.
#
#   tests/run-interop.sh [extra pytest args...]
#
# 1. tests/interop/.venv with tests/interop/requirements.txt (reinstalled only when
#    the requirements or the Python version change),
# 2. tests/interop/node_modules via `npm ci` (only when package-lock.json changes),
# 3. pytest on tests/interop (pika, pika asyncio, aio-pika, celery), which starts
#    its own broker (tests/interop/conftest.py),
# 4. node --test tests/interop/amqplib.test.mjs against a broker started here.
# Exits non-zero if anything fails; every suite runs even when an earlier one fails.
#
# Environment:
#   WARREN_BIN           broker binary (default: target/debug/warren; built with
#                        `cargo build --bin warren` if missing, or always when WARREN_BUILD=1)
#   WARREN_URL_OVERRIDE  test an already running broker instead, e.g. a reference RabbitMQ:
#                        amqp://guest:guest@127.0.0.1:5672/%2F
#   INTEROP_ONLY         "python" or "node" to run one half
#   PYTHON               interpreter used to create the venv (default python3, needs >= 3.11)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

INTEROP="tests/interop"
VENV="$INTEROP/.venv"
PYTHON="${PYTHON:-python3}"
ONLY="${INTEROP_ONLY:-}"
PORTS_DEADLINE_S=20
STOP_DEADLINE_S=10

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'run-interop: %s\n' "$*" >&2; exit 2; }

sha() { sha256sum | cut -d' ' -f1; }

# ---------------------------------------------------------------- python env
setup_python() {
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  local want stamp="$VENV/.requirements.sha256"
  want="$( { cat "$INTEROP/requirements.txt"; "$VENV/bin/python" -c 'import sys; print(sys.version)'; } | sha)"
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    log "installing $INTEROP/requirements.txt into $VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q \
      -r "$INTEROP/requirements.txt"
    echo "$want" >"$stamp"
  fi
}

# ---------------------------------------------------------------- node env
setup_node() {
  command -v node >/dev/null || die "node not found (Node 20+ required)"
  command -v npm >/dev/null || die "npm not found"
  node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' \
    || die "Node 20+ required, found $(node --version)"
  local want stamp="$INTEROP/node_modules/.package-lock.sha256"
  want="$(sha <"$INTEROP/package-lock.json")"
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    log "npm ci in $INTEROP"
    (cd "$INTEROP" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" >"$stamp"
  fi
}

# ---------------------------------------------------------------- broker binary
setup_broker_binary() {
  if [[ -n "${WARREN_URL_OVERRIDE:-}" ]]; then
    log "WARREN_URL_OVERRIDE set: testing the broker at ${WARREN_URL_OVERRIDE}, not starting warren"
    return
  fi
  if [[ -z "${WARREN_BIN:-}" ]]; then
    WARREN_BIN="$ROOT/target/debug/warren"
    if [[ "${WARREN_BUILD:-0}" == 1 || ! -x "$WARREN_BIN" ]]; then
      command -v cargo >/dev/null || die "$WARREN_BIN missing and cargo not found"
      log "cargo build --bin warren"
      cargo build --bin warren
    fi
  fi
  [[ -x "$WARREN_BIN" ]] || die "broker binary $WARREN_BIN not found or not executable"
  export WARREN_BIN
}

# ---------------------------------------------------------------- broker for node
BROKER_PID=""
BROKER_DIR=""

stop_broker() {
  [[ -n "$BROKER_PID" ]] || return 0
  if kill -0 "$BROKER_PID" 2>/dev/null; then
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    local i
    for ((i = 0; i < STOP_DEADLINE_S * 20; i++)); do
      kill -0 "$BROKER_PID" 2>/dev/null || break
      sleep 0.05
    done
    if kill -0 "$BROKER_PID" 2>/dev/null; then
      printf 'run-interop: warren ignored SIGTERM for %ss; killing it\n' "$STOP_DEADLINE_S" >&2
      kill -KILL "$BROKER_PID" 2>/dev/null || true
    fi
  fi
  wait "$BROKER_PID" 2>/dev/null || true
  BROKER_PID=""
}

cleanup() {
  stop_broker
  if [[ -n "$BROKER_DIR" && -d "$BROKER_DIR" ]]; then
    rm -rf "$BROKER_DIR"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

broker_log_tail() {
  printf -- '--- warren log tail (%s) ---\n' "$BROKER_DIR/warren.log" >&2
  tail -c 8000 "$BROKER_DIR/warren.log" >&2 || true
  printf -- '--- end of warren log ---\n' >&2
}

# Starts warren on ephemeral ports and exports WARREN_URL once its ports file appears.
start_broker() {
  BROKER_DIR="$(mktemp -d -t warren-interop-node-XXXXXX)"
  mkdir "$BROKER_DIR/data"
  local ports_file="$BROKER_DIR/ports.json"
  "$WARREN_BIN" --amqp-port 0 --mgmt-port 0 --metrics-port 0 \
    --data-dir "$BROKER_DIR/data" --ports-file "$ports_file" \
    --log-level "${WARREN_LOG_LEVEL:-info}" \
    </dev/null >"$BROKER_DIR/warren.log" 2>&1 &
  BROKER_PID=$!

  local deadline=$((SECONDS + PORTS_DEADLINE_S)) port=""
  while :; do
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
      wait "$BROKER_PID" && rc=0 || rc=$?
      BROKER_PID=""
      printf 'run-interop: warren exited during startup (status %s)\n' "$rc" >&2
      broker_log_tail
      return 1
    fi
    if [[ -s "$ports_file" ]]; then
      port="$(node -e '
        const p = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
        if (Number.isInteger(p.amqp) && p.amqp > 0) console.log(p.amqp); else process.exit(1);
      ' "$ports_file" 2>/dev/null)" && break
    fi
    if ((SECONDS >= deadline)); then
      printf 'run-interop: warren wrote no valid ports file within %ss\n' "$PORTS_DEADLINE_S" >&2
      broker_log_tail
      return 1
    fi
    sleep 0.02
  done
  export WARREN_URL="amqp://guest:guest@127.0.0.1:${port}/%2F"
  log "warren (pid $BROKER_PID) listening: $WARREN_URL"
}

# ---------------------------------------------------------------- suites
py_status="skipped"
node_status="skipped"
failed=0

run_python() {
  setup_python
  log "pytest $INTEROP"
  local rc=0
  "$VENV/bin/python" -m pytest "$INTEROP" --timeout=120 "$@" || rc=$?
  if ((rc == 0)); then py_status="passed"; else py_status="FAILED (pytest exit $rc)"; failed=1; fi
}

run_node() {
  setup_node
  if [[ -n "${WARREN_URL_OVERRIDE:-}" ]]; then
    export WARREN_URL="$WARREN_URL_OVERRIDE"
  elif ! start_broker; then
    node_status="FAILED (broker did not start)"
    failed=1
    return
  fi
  log "node --test $INTEROP/amqplib.test.mjs"
  local rc=0 died=""
  node --test --test-timeout=60000 --test-reporter=spec "$INTEROP/amqplib.test.mjs" || rc=$?
  if [[ -n "$BROKER_PID" ]] && ! kill -0 "$BROKER_PID" 2>/dev/null; then
    printf 'run-interop: warren died during the node tests\n' >&2
    broker_log_tail
    BROKER_PID=""
    died="; warren died"
  fi
  stop_broker
  if ((rc == 0)) && [[ -z "$died" ]]; then
    node_status="passed"
  else
    node_status="FAILED (node exit $rc$died)"
    failed=1
  fi
}

case "$ONLY" in
  "" | python | node) ;;
  *) die "INTEROP_ONLY must be python or node, not '$ONLY'" ;;
esac

setup_broker_binary
[[ "$ONLY" == node ]] || run_python "$@"
[[ "$ONLY" == python ]] || run_node

log "interop summary: python (pytest): $py_status; node (amqplib): $node_status"
exit "$failed"
