#!/usr/bin/env bash
# Issue 6 benchmark: does the management API disturb the message flow?
# Starts the release binary, declares 1,000 queues, then alternates
# (3 times) a 1→1 transient flow measured by ../shared/bench/amqp-bench
# alone and the same flow while a poller asks GET /api/queues 100 times a
# second. Prints each run and the medians: msg/s without and with the
# poller, the drop in %, and the poller's achieved rate and latency.
#
#   benches/mgmt-api-load.sh [amqp-bench binary]   (default /tmp/amqp-bench/target/release/amqp-bench)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="${1:-/tmp/amqp-bench/target/release/amqp-bench}"
WARREN="${WARREN_BIN:-$ROOT/target/release/warren}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-10}"
[[ -x "$BENCH" ]] || { echo "build amqp-bench first: (cd ../shared/bench/amqp-bench && cargo build --release)" >&2; exit 2; }
[[ -x "$WARREN" ]] || { echo "build warren first: cargo build --release" >&2; exit 2; }
WORK="$(mktemp -d)"
trap 'kill $PID 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$WARREN" --amqp-port 0 --mgmt-port 0 --metrics-port 0 --data-dir "$WORK/data" --ports-file "$WORK/ports.json" \
  --log-level warn >"$WORK/log" 2>&1 &
PID=$!
deadline=$((SECONDS + 20))
until [[ -s "$WORK/ports.json" ]]; do (( SECONDS < deadline )) || exit 1; sleep 0.05; done
read -r AMQP MGMT < <(python3 -c 'import json,sys; p=json.load(open(sys.argv[1])); print(p["amqp"], p["mgmt"])' "$WORK/ports.json")

python3 - "$MGMT" <<'PY'
import base64, http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
auth = {"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode(), "content-type": "application/json"}
for i in range(1000):
    c.request("PUT", f"/api/queues/%2F/load-{i:04d}", body='{"durable":false}', headers=auth)
    r = c.getresponse(); r.read()
    assert r.status in (201, 204), r.status
PY

cat >"$WORK/poller.py" <<'PY'
import base64, http.client, json, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
auth = {"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()}
lat, start, n = [], time.monotonic(), 0
while time.monotonic() - start < seconds:
    due = start + n / 100.0
    now = time.monotonic()
    if due > now:
        time.sleep(due - now)
    t = time.monotonic()
    c.request("GET", "/api/queues", headers=auth)
    r = c.getresponse(); body = r.read()
    # Status and size only: parsing 1.5 MB of JSON 100 times a second would
    # measure the poller's CPU (on the same 2 cores), not the broker's.
    assert r.status == 200 and len(body) > 1000 * 1000, (r.status, len(body))
    lat.append((time.monotonic() - t) * 1000)
    n += 1
lat.sort()
print(json.dumps({"requests": n, "rps": n / (time.monotonic() - start),
                  "p50_ms": lat[len(lat) // 2], "p99_ms": lat[int(len(lat) * 0.99)]}))
PY

URI="amqp://guest:guest@127.0.0.1:$AMQP/%2f"
run() { "$BENCH" transient --uri "$URI" --broker-pid "$PID" --seconds "$SECONDS_PER_RUN" --label "$1"; }
for i in 1 2 3; do
  run quiet | tee -a "$WORK/quiet.jsonl"
  python3 "$WORK/poller.py" "$MGMT" $((SECONDS_PER_RUN + 3)) >"$WORK/poll.$i.json" &
  POLL=$!
  run polled | tee -a "$WORK/polled.jsonl"
  wait $POLL
  cat "$WORK/poll.$i.json" | tee -a "$WORK/poll.jsonl"
done
python3 - "$WORK" <<'PY'
import json, statistics, sys
w = sys.argv[1]
def load(n): return [json.loads(l) for l in open(f"{w}/{n}.jsonl") if l.strip()]
def rate(r):
    for k in ("consumed_per_s", "published_per_s"):
        if k in r: return r[k]
    raise SystemExit(f"no rate field in {sorted(r)}")
q = statistics.median(rate(r) for r in load("quiet"))
p = statistics.median(rate(r) for r in load("polled"))
polls = load("poll")
print(json.dumps({"quiet_msgs_per_sec": q, "polled_msgs_per_sec": p, "drop_pct": round((q - p) / q * 100, 2),
                  "poll_rps": statistics.median(x["rps"] for x in polls),
                  "poll_p50_ms": statistics.median(x["p50_ms"] for x in polls),
                  "poll_p99_ms": statistics.median(x["p99_ms"] for x in polls)}))
PY
