#!/usr/bin/env bash
# Issue 8 benchmark: Warren against RabbitMQ in the same run, with both load
# generators (../shared/bench/amqp-bench, the independent yardstick, and
# `warren perf`). For every scenario and run, RabbitMQ and then a freshly
# started Warren (new data dir, so memory figures start from an empty
# broker) get the same load; every result line goes to a JSONL file and the
# medians with Warren/RabbitMQ ratios are printed as a Markdown table.
#
#   benches/side-by-side.sh [scenario ...]
#
# Scenarios: transient durable-confirm fanout latency backlog connections
# queues churn (default: all). queues and churn have no amqp-bench
# counterpart. Environment: RUNS (3), SECONDS_PER_RUN (10), OUT (results
# file, default /tmp/side-by-side.jsonl), BENCH (amqp-bench binary),
# WARREN_BIN (release binary), RABBIT_URI, RABBIT_PID.
#
# RabbitMQ: `apt-get install -y rabbitmq-server && rabbitmq-server -detached`
# (port 5672; Warren runs on ephemeral ports). Build first:
# `cargo build --release` and `(cd ../shared/bench/amqp-bench && cargo build --release)`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="${BENCH:-$ROOT/../shared/bench/amqp-bench/target/release/amqp-bench}"
WARREN="${WARREN_BIN:-$ROOT/target/release/warren}"
RUNS="${RUNS:-3}"
SECS="${SECONDS_PER_RUN:-10}"
OUT="${OUT:-/tmp/side-by-side.jsonl}"
RABBIT_URI="${RABBIT_URI:-amqp://guest:guest@127.0.0.1:5672/%2f}"
RABBIT_PID="${RABBIT_PID:-$(rabbitmqctl status 2>/dev/null | awk '/OS PID/ {print $3}')}"
[[ -x "$BENCH" ]] || { echo "amqp-bench missing: $BENCH (cargo build --release in ../shared/bench/amqp-bench)" >&2; exit 2; }
[[ -x "$WARREN" ]] || { echo "warren missing: $WARREN (cargo build --release)" >&2; exit 2; }
[[ -n "$RABBIT_PID" ]] || { echo "RabbitMQ is not running (rabbitmq-server -detached)" >&2; exit 2; }
SCENARIOS=("$@")
[[ ${#SCENARIOS[@]} -gt 0 ]] || SCENARIOS=(transient durable-confirm fanout latency backlog connections queues churn)

WORK="$(mktemp -d)"
PID=""
stop_warren() {
  if [[ -n "$PID" ]]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi
}
trap 'stop_warren; rm -rf "$WORK"' EXIT
start_warren() {
  stop_warren
  rm -rf "$WORK/data" "$WORK/ports.json"
  "$WARREN" --amqp-port 0 --mgmt-port 0 --metrics-port 0 --data-dir "$WORK/data" \
    --ports-file "$WORK/ports.json" --log-level warn >>"$WORK/warren.log" 2>&1 &
  PID=$!
  local deadline=$((SECONDS + 20))
  until [[ -s "$WORK/ports.json" ]]; do (( SECONDS < deadline )) || { echo "warren did not start" >&2; exit 1; }; sleep 0.05; done
  local amqp
  amqp="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["amqp"])' "$WORK/ports.json")"
  WARREN_URI="amqp://guest:guest@127.0.0.1:$amqp/%2f"
}

# The scenario's arguments for each tool; empty: the tool has no such scenario.
bench_args() {
  case "$1" in
    transient) echo "transient --seconds $SECS" ;;
    durable-confirm) echo "durable-confirm --confirm-window 256 --prefetch 100 --seconds $SECS" ;;
    fanout) echo "fanout --queues 10 --seconds $SECS" ;;
    latency) echo "latency --rate 1000 --seconds $SECS" ;;
    backlog) echo "backlog --messages 1000000 --size 100" ;;
    connections) echo "connections --connections 10000 --parallel 16" ;;
  esac
}
perf_args() {
  case "$1" in
    transient) echo "throughput --autoack --size 16 --seconds $SECS" ;;
    durable-confirm) echo "throughput --persistent --size 1024 --confirm 256 --prefetch 100 --seconds $SECS" ;;
    fanout) echo "fanout --queues 10 --seconds $SECS" ;;
    latency) echo "latency --rate 1000 --seconds $SECS" ;;
    backlog) echo "backlog --messages 1000000 --size 100" ;;
    connections) echo "connections --connections 10000 --parallel 16" ;;
    queues) echo "queues --queues 100000 --parallel 16 --pipeline 100" ;;
    churn) echo "churn --parallel 16 --seconds $SECS" ;;
  esac
}

# One measurement: tags the tool's JSON line with broker, tool, scenario, run.
measure() { # broker uri pid tool scenario run
  local broker="$1" uri="$2" pid="$3" tool="$4" scenario="$5" run="$6" args line
  if [[ "$tool" == amqp-bench ]]; then
    args="$(bench_args "$scenario")"
    [[ -n "$args" ]] || return 0
    # shellcheck disable=SC2086
    line="$("$BENCH" $args --uri "$uri" --broker-pid "$pid" --label "$broker" 2>"$WORK/err")" || true
  else
    args="$(perf_args "$scenario")"
    # shellcheck disable=SC2086
    line="$("$WARREN" perf $args --uri "$uri" --broker-pid "$pid" --quiet 2>"$WORK/err")" || true
  fi
  if [[ "$line" != "{"* ]]; then
    echo "  $broker $tool $scenario run $run FAILED: $(tail -3 "$WORK/err")" >&2
    line='{"failed":true}'
  fi
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r.update(broker=sys.argv[2], tool=sys.argv[3], bench=sys.argv[4], run=int(sys.argv[5])); print(json.dumps(r))' \
    "$line" "$broker" "$tool" "$scenario" "$run" | tee -a "$OUT" | cut -c1-160
}

echo "==> results: $OUT (RabbitMQ pid $RABBIT_PID, $RUNS runs, scenarios: ${SCENARIOS[*]})"
for scenario in "${SCENARIOS[@]}"; do
  for run in $(seq "$RUNS"); do
    for tool in amqp-bench "warren perf"; do
      measure rabbitmq "$RABBIT_URI" "$RABBIT_PID" "$tool" "$scenario" "$run"
      start_warren
      measure warren "$WARREN_URI" "$PID" "$tool" "$scenario" "$run"
    done
  done
done
stop_warren
python3 "$ROOT/benches/summarize.py" "$OUT"
