#!/usr/bin/env bash
# Swarm deployment test (issue 7), run by the test command after
# tests/run-packaging.sh (the static musl binary) and tests/run-interop.sh
# (pika in tests/interop/.venv):
#   1. build the image (BuildKit, BINARY_FROM=prebuilt: no registry needed);
#   2. deploy docker-compose.yml as a stack (docker stack deploy
#      --resolve-image never, no workers: python:3.11-slim may not be pullable)
#      and wait for the task to be healthy;
#   3. publish persistent messages with confirms through the published port,
#      and check AMQPS (TLS material from Swarm secrets, a throwaway CA) too;
#   4. roll the service over to a new tag (stop-first): the old task must exit 0;
#   5. consume every confirmed message from the new task;
#   6. remove the stack, its volume and the image, leave the swarm if this
#      script created it, stop dockerd if this script started it.
# An engine already answering `docker info` is used as is. Otherwise, as root,
# dockerd is started on a private socket and data root under /tmp (installing
# Debian's docker.io first if there is no dockerd). Where no engine can be
# started the test prints one "swarm: skipped: <why>" line and exits 0.
#
# Environment: SWARM_MESSAGES (messages to publish, default 2000).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MESSAGES="${SWARM_MESSAGES:-2000}"
ENGINE_DEADLINE_S=60
HEALTHY_DEADLINE_S=120
UPDATE_DEADLINE_S=180
CONSUME_DEADLINE_S=60
CLEANUP_DEADLINE_S=60
BIN="target/x86_64-unknown-linux-musl/release/warren"
PY="tests/interop/.venv/bin/python"
STACK="warren-swarm-test-$$"
SVC="${STACK}_warren"
TAG="warren:swarm-test-$$"
TAG2="warren:swarm-test-$$-update"

skip() { echo "swarm: skipped: $*"; exit 0; }
die() { echo "swarm: FAILED: $*" >&2; exit 1; }
say() { echo "swarm: $*"; }
# Run a command, showing its output only when it fails.
quiet() {
  local out
  if ! out="$("$@" 2>&1)"; then
    printf '%s\n' "$out" >&2
    return 1
  fi
}
# A live (not zombie) process.
alive() {
  local s
  s="$(ps -o stat= -p "$1" 2>/dev/null)" && [[ -n "$s" && "$s" != Z* ]]
}

WORK=""
DOCKERD_PID=""
DK=""
SWARM_CREATED=""
GWBRIDGE_CREATED=""
BUILT=""
DEPLOYED=""
SECRETS=()

cleanup() {
  local rc=$? end
  set +e
  trap - EXIT INT TERM
  if [[ $rc -ne 0 && -n "$DOCKERD_PID" && -s "$WORK/dockerd.log" ]]; then
    echo "---- dockerd log (last 10 lines)" >&2
    tail -n 10 "$WORK/dockerd.log" >&2
  fi
  if [[ -n "$DEPLOYED" ]]; then
    if [[ $rc -ne 0 ]]; then
      echo "---- docker service ps $SVC" >&2
      "$DK" service ps --no-trunc "$SVC" >&2
      local c
      for c in $("$DK" ps -aq --filter "label=com.docker.swarm.service.name=$SVC"); do
        echo "---- docker logs $c (last 20 lines)" >&2
        "$DK" logs --tail 20 "$c" >&2 2>&1
      done
    fi
    "$DK" stack rm "$STACK" >/dev/null 2>&1
    # Containers, the network and the volume go away asynchronously.
    end=$((SECONDS + CLEANUP_DEADLINE_S))
    while [[ -n "$("$DK" ps -aq --filter "label=com.docker.stack.namespace=$STACK" 2>/dev/null)" ]] \
      && ((SECONDS < end)); do sleep 0.2; done
    while "$DK" volume inspect "${STACK}_warren-data" >/dev/null 2>&1 && ((SECONDS < end)); do
      "$DK" volume rm "${STACK}_warren-data" >/dev/null 2>&1 || sleep 0.5
    done
    while "$DK" network inspect "${STACK}_default" >/dev/null 2>&1 && ((SECONDS < end)); do
      "$DK" network rm "${STACK}_default" >/dev/null 2>&1 || sleep 0.5
    done
    if "$DK" volume inspect "${STACK}_warren-data" >/dev/null 2>&1; then
      echo "swarm: warning: volume ${STACK}_warren-data not removed" >&2
    fi
  fi
  if ((${#SECRETS[@]})); then
    "$DK" secret rm "${SECRETS[@]}" >/dev/null 2>&1 || echo "swarm: warning: secrets ${SECRETS[*]} not removed" >&2
  fi
  if [[ -n "$BUILT" ]]; then
    "$DK" image rm "$TAG" "$TAG2" >/dev/null 2>&1
  fi
  if [[ -n "$SWARM_CREATED" ]]; then
    "$DK" swarm leave --force >/dev/null 2>&1 || echo "swarm: warning: could not leave the swarm" >&2
    # swarm init created this bridge; leave the host as we found it.
    [[ -n "$GWBRIDGE_CREATED" ]] && "$DK" network rm docker_gwbridge >/dev/null 2>&1
  fi
  if [[ -n "$DOCKERD_PID" ]]; then
    kill -TERM "$DOCKERD_PID" 2>/dev/null
    end=$((SECONDS + 30))
    while alive "$DOCKERD_PID" && ((SECONDS < end)); do sleep 0.2; done
    alive "$DOCKERD_PID" && kill -KILL "$DOCKERD_PID" 2>/dev/null
    wait "$DOCKERD_PID" 2>/dev/null
  fi
  if [[ -n "$WORK" ]]; then
    # Mounts dockerd may leave behind (network namespaces, overlays).
    findmnt -rn -o TARGET 2>/dev/null | grep "^$WORK/" | sort -r | while read -r m; do
      umount -l "$m" 2>/dev/null
    done
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- engine
# Short path: dockerd's unix sockets live under it (108-byte limit).
WORK="$(mktemp -d /tmp/wsw.XXXXXX)"
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  ENGINE="the running engine"
else
  [[ "$(id -u)" == 0 ]] || skip "no Docker engine answers and starting dockerd needs root"
  DOCKERD="$(command -v dockerd || true)"
  [[ -z "$DOCKERD" && -x /usr/sbin/dockerd ]] && DOCKERD=/usr/sbin/dockerd
  if [[ -z "$DOCKERD" ]] || ! command -v docker >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || skip "no dockerd here and no apt-get to install docker.io"
    if ! DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq docker.io >"$WORK/apt.log" 2>&1; then
      DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -qq >>"$WORK/apt.log" 2>&1 || true
      DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq docker.io >>"$WORK/apt.log" 2>&1 \
        || skip "no dockerd here and 'apt-get install docker.io' failed: $(tail -n 1 "$WORK/apt.log")"
    fi
    DOCKERD="$(command -v dockerd || echo /usr/sbin/dockerd)"
  fi
  ENGINE="dockerd started on $WORK/docker.sock"
fi

[[ -f "$BIN" ]] || die "$BIN is missing: build it first (tests/run-packaging.sh, or cargo build --release --target x86_64-unknown-linux-musl)"
[[ -x "$PY" ]] && "$PY" -c 'import pika' 2>/dev/null \
  || die "$PY with pika is missing: run tests/run-interop.sh first (it creates tests/interop/.venv)"

if [[ "$ENGINE" != "the running engine" ]]; then
  "$DOCKERD" --data-root "$WORK/data" --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" \
    -H "unix://$WORK/docker.sock" >"$WORK/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  export DOCKER_HOST="unix://$WORK/docker.sock"
  end=$((SECONDS + ENGINE_DEADLINE_S))
  until docker info >/dev/null 2>&1; do
    if ! alive "$DOCKERD_PID"; then
      why="$(tail -n 1 "$WORK/dockerd.log" | cut -c1-200)"
      DOCKERD_PID=""
      skip "dockerd exited at start: $why"
    fi
    if ((SECONDS >= end)); then
      why="$(tail -n 1 "$WORK/dockerd.log" | cut -c1-200)"
      skip "dockerd did not answer within ${ENGINE_DEADLINE_S} s${why:+: $why}"
    fi
    sleep 0.2
  done
fi

# The build needs a CLI with BuildKit (buildx, or a pre-23 CLI with it built
# in); the deployment one that reads this stack file (`stack config`), else
# any with `stack`.
BUILD_DOCKER=""
STACK_ANY=""
for d in $(type -ap docker); do
  d="$(readlink -f "$d")"
  if [[ -z "$DK" ]] && "$d" stack config -c docker-compose.yml >/dev/null 2>&1; then
    DK="$d"
  elif [[ -z "$STACK_ANY" ]] && "$d" stack deploy --help >/dev/null 2>&1; then
    STACK_ANY="$d"  # older CLIs (20.10) have no `stack config`
  fi
  if [[ -z "$BUILD_DOCKER" ]]; then
    if "$d" buildx version >/dev/null 2>&1; then
      BUILD_DOCKER="$d"
    else
      v="$("$d" version --format '{{.Client.Version}}' 2>/dev/null || true)"
      if [[ "$v" =~ ^([0-9]+)\. ]] && ((BASH_REMATCH[1] < 23)); then
        BUILD_DOCKER="$d"
      fi
    fi
  fi
done
DK="${DK:-$STACK_ANY}"
[[ -n "$DK" ]] || die "no docker CLI here has 'docker stack'"
[[ -n "$BUILD_DOCKER" ]] || die "no docker CLI here can build with BuildKit (needs buildx, or a CLI older than 23.0)"
say "engine: $ENGINE ($("$DK" version --format '{{.Server.Version}}')); build CLI $BUILD_DOCKER, stack CLI $DK"

# ---------------------------------------------------------------- swarm
case "$("$DK" info --format '{{.Swarm.LocalNodeState}}')" in
  inactive)
    "$DK" network inspect docker_gwbridge >/dev/null 2>&1 || GWBRIDGE_CREATED=1
    SWARM_CREATED=1
    quiet "$DK" swarm init --advertise-addr 127.0.0.1
    ;;
  active)
    [[ "$("$DK" info --format '{{.Swarm.ControlAvailable}}')" == true ]] \
      || die "this node is a swarm worker; the test needs a manager"
    nodes="$("$DK" info --format '{{.Swarm.Nodes}}')"
    # Host-mode ports are checked on 127.0.0.1: the task must run here.
    [[ "$nodes" == 1 ]] || die "this node is in a swarm of $nodes nodes; the test needs a single-node swarm"
    ;;
  *) die "this node's swarm state is $("$DK" info --format '{{.Swarm.LocalNodeState}}')" ;;
esac

# ---------------------------------------------------------------- image
BUILT=1
quiet env DOCKER_BUILDKIT=1 "$BUILD_DOCKER" build -q --build-arg BINARY_FROM=prebuilt -t "$TAG" .
"$DK" tag "$TAG" "$TAG2"
say "image $TAG built ($("$DK" image inspect -f '{{.Size}}' "$TAG") bytes)"

# ---------------------------------------------------------------- deploy
# TLS material as Swarm secrets, from a throwaway CA (trustme, pinned in
# tests/interop/requirements.txt).
TLS_DIR="$WORK/tls"
mkdir -p "$TLS_DIR"
"$PY" - "$TLS_DIR" <<'EOF'
import sys
import trustme
d = sys.argv[1]
ca = trustme.CA()
cert = ca.issue_cert("localhost", "127.0.0.1")
ca.cert_pem.write_to_path(f"{d}/ca.pem")
cert.cert_chain_pems[0].write_to_path(f"{d}/cert.pem")
cert.private_key_pem.write_to_path(f"{d}/key.pem")
EOF
SECRETS=("$STACK-tls-cert" "$STACK-tls-key")
quiet "$DK" secret create "${SECRETS[0]}" "$TLS_DIR/cert.pem"
quiet "$DK" secret create "${SECRETS[1]}" "$TLS_DIR/key.pem"

read -r AMQP_PORT AMQPS_PORT MGMT_PORT METRICS_PORT < <("$PY" -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("", 0))
print(*(s.getsockname()[1] for s in socks))
') || true
[[ -n "${METRICS_PORT:-}" ]] || die "could not pick free ports"

# Waits until the service's task running image $1 is running with a healthy
# container; sets TASK and CONTAINER.
wait_healthy() {
  local image=$1 end=$((SECONDS + HEALTHY_DEADLINE_S)) t state cid img
  while :; do
    for t in $("$DK" service ps -q --filter desired-state=running "$SVC" 2>/dev/null || true); do
      read -r state cid img < <("$DK" inspect -f \
        '{{.Status.State}} {{.Status.ContainerStatus.ContainerID}} {{.Spec.ContainerSpec.Image}}' "$t" 2>/dev/null) \
        || continue
      [[ "$state" == running && ("$img" == "$image" || "$img" == "$image@"*) ]] || continue
      if [[ "$("$DK" inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$cid" 2>/dev/null)" == healthy ]]; then
        TASK="$t"
        CONTAINER="$cid"
        return 0
      fi
    done
    ((SECONDS < end)) || return 1
    sleep 0.5
  done
}

start=$SECONDS
DEPLOYED=1
quiet env WARREN_IMAGE="$TAG" WORKER_REPLICAS=0 AMQP_PORT="$AMQP_PORT" AMQPS_PORT="$AMQPS_PORT" \
  MGMT_PORT="$MGMT_PORT" METRICS_PORT="$METRICS_PORT" TLS_CERT_SECRET="${SECRETS[0]}" \
  TLS_KEY_SECRET="${SECRETS[1]}" "$DK" stack deploy --resolve-image never -c docker-compose.yml "$STACK"
wait_healthy "$TAG" || die "no healthy task of $SVC within ${HEALTHY_DEADLINE_S} s"
OLD_TASK="$TASK"
OLD_CONTAINER="$CONTAINER"
say "stack $STACK deployed, task healthy after $((SECONDS - start)) s (AMQP on 127.0.0.1:$AMQP_PORT)"

# ---------------------------------------------------------------- publish
IDS="$WORK/confirmed.txt"
CONFIRMED="$("$PY" - "$AMQP_PORT" "$MESSAGES" "$IDS" "$STACK" <<'EOF'
import sys
import pika

port, count, out, run = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
params = pika.ConnectionParameters(
    "127.0.0.1", port, "/", pika.PlainCredentials("app", "app-secret"),
    connection_attempts=10, retry_delay=1)
conn = pika.BlockingConnection(params)
ch = conn.channel()
ch.queue_declare("tasks", passive=True)  # from the definitions secret
ch.confirm_delivery()
confirmed = 0
with open(out, "w") as f:
    for i in range(count):
        mid = f"{run}-{i}"
        try:
            ch.basic_publish(
                "", "tasks", mid.encode(),
                pika.BasicProperties(delivery_mode=2, message_id=mid),
                mandatory=True)
        except (pika.exceptions.NackError, pika.exceptions.UnroutableError):
            continue
        f.write(mid + "\n")
        confirmed += 1
conn.close()
print(confirmed)
EOF
)" || die "the publisher failed"
((CONFIRMED > 0)) || die "no publish was confirmed"
say "$CONFIRMED of $MESSAGES persistent messages confirmed"

# AMQPS through its published port, verifying the certificate from the secret.
READY="$("$PY" - "$AMQPS_PORT" "$TLS_DIR/ca.pem" <<'EOF'
import ssl
import sys
import pika

port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
params = pika.ConnectionParameters(
    "127.0.0.1", port, "/", pika.PlainCredentials("app", "app-secret"),
    ssl_options=pika.SSLOptions(ctx, "localhost"), connection_attempts=10, retry_delay=1)
conn = pika.BlockingConnection(params)
print(conn.channel().queue_declare("tasks", passive=True).method.message_count)
conn.close()
EOF
)" || die "AMQPS on 127.0.0.1:$AMQPS_PORT failed"
((READY >= CONFIRMED)) || die "over AMQPS, tasks holds $READY messages, fewer than the $CONFIRMED confirmed"
say "AMQPS on 127.0.0.1:$AMQPS_PORT: certificate verified, tasks holds $READY messages"

# ---------------------------------------------------------------- update
start=$SECONDS
UPDATE_LOG="$WORK/update.log"
if ! timeout "$UPDATE_DEADLINE_S" "$DK" service update --detach=false --image "$TAG2" "$SVC" >"$UPDATE_LOG" 2>&1; then
  tail -n 20 "$UPDATE_LOG" >&2
  die "docker service update --image $TAG2 $SVC failed or took over ${UPDATE_DEADLINE_S} s"
fi
state="$("$DK" service inspect -f '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}' "$SVC")"
[[ "$state" == completed ]] || die "update state is '$state', expected 'completed'"
wait_healthy "$TAG2" || die "no healthy task on $TAG2 after the update"
[[ "$TASK" != "$OLD_TASK" ]] || die "the update did not replace the task"
read -r ostate oexit < <("$DK" inspect -f '{{.Status.State}} {{.Status.ContainerStatus.ExitCode}}' "$OLD_TASK") || true
[[ ("$ostate" == shutdown || "$ostate" == complete) && "$oexit" == 0 ]] \
  || die "the old task ended as '$ostate' with exit code '$oexit', expected shutdown and 0"
# stop-first: the new broker starts only after the old one exited.
old_end="$("$DK" inspect -f '{{.State.FinishedAt}}' "$OLD_CONTAINER" 2>/dev/null || true)"
new_start="$("$DK" inspect -f '{{.State.StartedAt}}' "$CONTAINER")"
if [[ -n "$old_end" ]] && (($(date -d "$new_start" +%s%N) < $(date -d "$old_end" +%s%N))); then
  die "the new task started ($new_start) before the old one stopped ($old_end): not stop-first"
fi
say "rolling update to $TAG2 done in $((SECONDS - start)) s; the old task exited 0 before the new one started"

# ---------------------------------------------------------------- consume
read -r want got missing dups extra < <("$PY" - "$AMQP_PORT" "$IDS" "$CONSUME_DEADLINE_S" <<'EOF'
import sys
import time
import pika

port, ids, deadline = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
with open(ids) as f:
    want = set(f.read().split())
params = pika.ConnectionParameters(
    "127.0.0.1", port, "/", pika.PlainCredentials("app", "app-secret"),
    connection_attempts=10, retry_delay=1)
conn = pika.BlockingConnection(params)
ch = conn.channel()
ch.basic_qos(prefetch_count=500)
seen, dups, extra = set(), 0, 0
end = time.monotonic() + deadline
for method, _props, body in ch.consume("tasks", auto_ack=False, inactivity_timeout=1):
    if method is not None:
        mid = body.decode()
        if mid in seen:
            dups += 1
        elif mid in want:
            seen.add(mid)
        else:
            extra += 1
        ch.basic_ack(method.delivery_tag)
    if len(seen) == len(want) or time.monotonic() > end:
        break
ch.cancel()
conn.close()
print(len(want), len(seen), len(want - seen), dups, extra)
EOF
) || true
[[ -n "${missing:-}" ]] || die "the consumer failed"
note=""
((dups == 0)) || note="$note, $dups duplicates"
((extra == 0)) || note="$note, $extra unexpected messages"
say "$want confirmed before the update, $got consumed after it, $missing missing$note"
((missing == 0)) || die "$missing confirmed messages were not consumed after the update"
