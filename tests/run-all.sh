#!/usr/bin/env bash
# Warren's whole test suite: the one command README and CI run.
#   1. clippy (warnings are errors)
#   2. unit, property and integration tests (cargo test)
#   3. promtool check metrics on both Prometheus endpoints (tests/check-metrics.sh)
#   4. interop: pika, aio-pika, Celery (a real worker) and amqplib against the
#      real binary (tests/run-interop.sh installs the pinned clients into
#      tests/interop/.venv and tests/interop/node_modules)
#   5. rabbitmqadmin v2 against the real binary (tests/run-rabbitmqadmin.sh
#      installs the pinned CLI into tests/tools once)
#   6. the web UI in headless Chromium (tests/run-ui.sh installs Debian's
#      chromium if missing and playwright-core into tests/ui/node_modules)
#   7. packaging (tests/run-packaging.sh): static musl build, hadolint on the
#      Dockerfile, `docker stack config` on docker-compose.yml
#   8. Swarm deployment (tests/run-swarm.sh): image from that binary, stack
#      deploy, confirmed publishes, AMQPS, rolling update, consume; one
#      "skipped" line where no Docker engine can be started as root
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Disk is the scarce resource on CI machines: no incremental state (a clean
# build gains nothing from it), and the free space is printed at the start and
# the end so a run that runs out says how much it had.
export CARGO_INCREMENTAL=0
echo "==> disk free: $(df -h --output=avail . | tail -1 | tr -d ' ') on $(df --output=target . | tail -1)"
trap 'echo "==> disk free at exit: $(df -h --output=avail . | tail -1 | tr -d " ")"' EXIT

echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

echo "==> cargo test"
cargo test --all-targets

echo "==> cargo build --bin warren"
cargo build --bin warren

echo "==> interop"
WARREN_BIN="$PWD/target/debug/warren" tests/run-interop.sh

echo "==> promtool check metrics"
WARREN_BIN="$PWD/target/debug/warren" tests/check-metrics.sh

echo "==> rabbitmqadmin"
WARREN_BIN="$PWD/target/debug/warren" tests/run-rabbitmqadmin.sh

echo "==> web UI (headless Chromium)"
WARREN_BIN="$PWD/target/debug/warren" tests/run-ui.sh

echo "==> packaging"
tests/run-packaging.sh

echo "==> Swarm deployment"
tests/run-swarm.sh
