#!/usr/bin/env bash
# Differential probe: the same AMQP operations against a running RabbitMQ
# and a fresh Warren release build, every frame each sends compared
# (reply codes and texts, channel or connection scope, header types and
# order, counts, delivery order). Prints the differences. Not part of the
# test command: it needs a RabbitMQ (apt-get install rabbitmq-server;
# rabbitmq-server -detached) and tests/interop/.venv (made by the test
# command) for pika's codec.
#
#   tests/differential/run.sh [scenario-substring ...]
#
# Env: RABBIT_PORT (5672), WARREN_PORT (5674), RESULTS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="$ROOT/tests/interop/.venv/bin/python3"
[[ -x "$PY" ]] || { echo "tests/interop/.venv missing: run the test command (or tests/run-interop.sh) once" >&2; exit 2; }
(cd "$ROOT" && cargo build --release --quiet)
PORT="${WARREN_PORT:-5674}"
DATA="$(mktemp -d)"
"$ROOT/target/release/warren" --amqp-port "$PORT" --mgmt-port 0 --metrics-port 0 --data-dir "$DATA" --log-level warn >"$DATA/warren.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DATA"' EXIT
deadline=$((SECONDS + 20))
until (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do
  (( SECONDS < deadline )) || { echo "warren did not start" >&2; cat "$DATA/warren.log" >&2; exit 1; }
  sleep 0.1
done
WARREN_PORT="$PORT" "$PY" "$ROOT/tests/differential/probe.py" "$@"
