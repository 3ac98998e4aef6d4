#!/usr/bin/env bash
# Runs `promtool check metrics` (Debian package prometheus, installed here if
# missing) on both Prometheus endpoints of a real broker.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN="${WARREN_BIN:-$PWD/target/debug/warren}"
if ! command -v promtool >/dev/null; then
  echo "==> installing promtool (Debian package prometheus)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
dir=$(mktemp -d)
"$BIN" --amqp-port 0 --mgmt-port 0 --metrics-port 0 --bind 127.0.0.1 --log-level warn \
  --data-dir "$dir/data" --ports-file "$dir/ports.json" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 200); do [ -s "$dir/ports.json" ] && break; sleep 0.05; done   # poll for the ports file
[ -s "$dir/ports.json" ] || { echo "broker did not start"; exit 1; }
port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metrics"])' "$dir/ports.json")
for path in /metrics /metrics/per-object; do
  python3 -c 'import sys,urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())' \
    "http://127.0.0.1:$port$path" > "$dir/metrics.txt"
  grep -q '^# TYPE rabbitmq_queue_messages_ready gauge' "$dir/metrics.txt" || { echo "$path: no rabbitmq_queue_messages_ready family"; exit 1; }
  promtool check metrics < "$dir/metrics.txt"
  echo "promtool check metrics $path: ok"
done
