#!/usr/bin/env bash
# rabbitmqadmin v2 (the Rust CLI from crates.io, pinned) against the real
# warren binary: lists, declares, binds, publishes, gets, deletes, manages
# users/permissions/policies, exports and re-imports definitions. Every step
# must exit 0 and, where it shows data, show what the step before created.
#
#   tests/run-rabbitmqadmin.sh
#
# rabbitmqadmin is installed once into tests/tools (git-ignored) with
# `cargo install --locked` (HTTP only: no TLS backend is needed on loopback).
# WARREN_BIN: the broker binary (default target/debug/warren).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VERSION=2.35.0
TOOLS="$ROOT/tests/tools"
ADMIN="$TOOLS/bin/rabbitmqadmin"
WARREN_BIN="${WARREN_BIN:-$ROOT/target/debug/warren}"

[[ -x "$WARREN_BIN" ]] || { echo "run-rabbitmqadmin: $WARREN_BIN missing (cargo build --bin warren)" >&2; exit 2; }
if [[ ! -x "$ADMIN" ]] || [[ "$("$ADMIN" --version 2>/dev/null)" != *"$VERSION"* ]]; then
  echo "==> cargo install rabbitmqadmin $VERSION into tests/tools" >&2
  cargo install rabbitmqadmin --version "$VERSION" --locked --no-default-features --root "$TOOLS"
fi

WORK="$(mktemp -d)"
BROKER_PID=""
cleanup() {
  if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

"$WARREN_BIN" --amqp-port 0 --mgmt-port 0 --metrics-port 0 --data-dir "$WORK/data" \
  --ports-file "$WORK/ports.json" --log-level warn >"$WORK/broker.log" 2>&1 &
BROKER_PID=$!
deadline=$((SECONDS + 20))
until [[ -s "$WORK/ports.json" ]]; do
  kill -0 "$BROKER_PID" 2>/dev/null || { cat "$WORK/broker.log" >&2; echo "broker died" >&2; exit 1; }
  (( SECONDS < deadline )) || { echo "broker did not write its ports file in 20 s" >&2; exit 1; }
  sleep 0.05
done
MGMT="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["mgmt"])' "$WORK/ports.json")"

admin() {
  "$ADMIN" --non-interactive --host 127.0.0.1 --port "$MGMT" --username guest --password guest "$@"
}
failures=0
step() { # step <description> <expected substring or ""> -- <args...>
  local what="$1" want="$2"; shift 3
  local out
  if ! out="$(admin "$@" 2>&1)"; then
    echo "FAIL: $what: rabbitmqadmin $* exited non-zero:" >&2; echo "$out" >&2; failures=$((failures + 1)); return
  fi
  if [[ -n "$want" && "$out" != *"$want"* ]]; then
    echo "FAIL: $what: output lacks '$want':" >&2; echo "$out" >&2; failures=$((failures + 1)); return
  fi
  echo "ok: $what"
}

step "show overview"            "" -- show overview
step "declare a queue"          "" -- queues declare --name adm.q --durable true
step "declare an exchange"      "" -- exchanges declare --name adm.x --type direct --durable true
step "bind them"                "" -- bindings declare --source adm.x --destination-type queue --destination adm.q --routing-key k
step "list queues"              "adm.q" -- queues list
step "list exchanges"           "adm.x" -- exchanges list
step "list bindings"            "adm.q" -- bindings list
step "publish a message"        "" -- publish message --exchange adm.x --routing-key k --payload "hello-from-rabbitmqadmin"
step "get it back"              "hello-from-rabbitmqadmin" -- get messages --queue adm.q --count 1 --ack-mode ack_requeue_false
step "declare a user"           "" -- users declare --name adm.user --password pw --tags monitoring
step "grant permissions"        "" -- permissions declare --user adm.user --configure "^adm" --write "^adm" --read ".*"
step "list users"               "adm.user" -- users list
step "list permissions"         "adm.user" -- permissions list
step "declare a policy"         "" -- policies declare --name adm.p --pattern "^adm\\." --apply-to queues --definition '{"max-length": 10}' --priority 1
step "list policies"            "adm.p" -- policies list
step "list vhosts"              "/" -- vhosts list
step "list nodes"               "" -- nodes list
step "list connections"         "" -- connections list
step "export definitions"       "" -- definitions export --file "$WORK/defs.json"
grep -q '"adm.q"' "$WORK/defs.json" || { echo "FAIL: the export lacks adm.q" >&2; failures=$((failures + 1)); }
step "delete the queue"         "" -- queues delete --name adm.q
step "delete the exchange"      "" -- exchanges delete --name adm.x
step "delete the user"          "" -- users delete --name adm.user
step "import definitions"       "" -- definitions import --file "$WORK/defs.json"
step "queue is back"            "adm.q" -- queues list
step "binding is back"          "adm.x" -- bindings list
step "user is back"             "adm.user" -- users list
step "health: alarms"           "" -- health_check local_alarms

if (( failures > 0 )); then
  echo "run-rabbitmqadmin: $failures step(s) failed; broker log:" >&2
  tail -50 "$WORK/broker.log" >&2
  exit 1
fi
echo "run-rabbitmqadmin: all steps passed"
