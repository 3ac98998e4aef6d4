#!/usr/bin/env bash
# Issue 4 benchmark: durable-confirm against RabbitMQ in the same run.
# Starts the release binary on a fresh data dir, then alternates (RUNS times,
# default 3) ../shared/bench/amqp-bench `durable-confirm` (1 KiB persistent,
# confirms window 256, prefetch 100, manual ack) against RabbitMQ and against
# Warren, and prints each run and the medians with the ratio.
#
#   RABBIT_URI=amqp://guest:guest@127.0.0.1:5672/%2f RABBIT_PID=<pid> \
#     benches/durable-confirm.sh [amqp-bench binary]
#
# RabbitMQ: `apt-get install -y rabbitmq-server && rabbitmq-server -detached`
# (its pid: `rabbitmqctl status | grep 'OS PID'`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="${1:-/tmp/amqp-bench/target/release/amqp-bench}"
WARREN="${WARREN_BIN:-$ROOT/target/release/warren}"
RUNS="${RUNS:-3}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-15}"
RABBIT_URI="${RABBIT_URI:-amqp://guest:guest@127.0.0.1:5672/%2f}"
RABBIT_PID="${RABBIT_PID:-$(rabbitmqctl status 2>/dev/null | awk '/OS PID/ {print $3}')}"
[[ -x "$BENCH" ]] || { echo "build amqp-bench first: (cd ../shared/bench/amqp-bench && cargo build --release)" >&2; exit 2; }
[[ -x "$WARREN" ]] || { echo "build warren first: cargo build --release" >&2; exit 2; }
[[ -n "$RABBIT_PID" ]] || { echo "RabbitMQ is not running (rabbitmq-server -detached)" >&2; exit 2; }
WORK="$(mktemp -d)"
trap 'kill $PID 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$WARREN" --amqp-port 0 --mgmt-port 0 --metrics-port 0 --data-dir "$WORK/data" --ports-file "$WORK/ports.json" \
  --log-level warn >"$WORK/log" 2>&1 &
PID=$!
deadline=$((SECONDS + 20))
until [[ -s "$WORK/ports.json" ]]; do (( SECONDS < deadline )) || exit 1; sleep 0.05; done
AMQP="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["amqp"])' "$WORK/ports.json")"
WARREN_URI="amqp://guest:guest@127.0.0.1:$AMQP/%2f"

run() { # label uri pid
  "$BENCH" durable-confirm --uri "$2" --broker-pid "$3" --confirm-window 256 --prefetch 100 \
    --seconds "$SECONDS_PER_RUN" --label "$1" | tee -a "$WORK/results.jsonl"
}
for _ in $(seq "$RUNS"); do
  run rabbitmq "$RABBIT_URI" "$RABBIT_PID"
  run warren "$WARREN_URI" "$PID"
done
python3 - "$WORK/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def med(label, key):
    return statistics.median(r[key] for r in rows if r["label"] == label and r.get(key) is not None)
out = {}
for label in ("rabbitmq", "warren"):
    for key in ("confirmed_per_s", "consumed_per_s", "broker_cpu_us_per_msg"):
        out[f"{label}_{key}"] = round(med(label, key), 3)
out["confirmed_ratio"] = round(out["warren_confirmed_per_s"] / out["rabbitmq_confirmed_per_s"], 2)
print(json.dumps(out))
PY
