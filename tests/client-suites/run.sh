#!/usr/bin/env bash
# Runs aio-pika 10.2.1's and aiormq 7.2.4's own test suites, unchanged (their
# PyPI sdists, hashes checked), against the release build of Warren. Their
# fixtures start a broker through the Docker API; docker_api.py answers those
# calls by starting Warren processes. Not part of the test command: it takes
# about 15 minutes and both suites carry a close-path race that fails a few
# tests intermittently against any fast broker (README, Known gaps).
#
#   tests/client-suites/run.sh [aio-pika|aiormq]...   (default: both)
#
# Everything it downloads and creates lives in tests/client-suites/.work.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$here/.work
index=${PIP_INDEX_URL:-https://pypi.org/simple}
api_port=${DOCKER_API_PORT:-2375}
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(aio-pika aiormq)
mkdir -p "$work"

fetch_sdist() { # name file sha256
  local name=$1 file=$2 sum=$3
  if [ ! -d "$work/${file%.tar.gz}" ]; then
    local url
    url=$(curl -fsSL "$index/$name/" | grep -o "href=\"[^\"]*$file[^\"]*\"" | head -1 | sed 's/^href="//; s/"$//; s/#.*//')
    [ -n "$url" ] || { echo "cannot find $file in $index" >&2; exit 1; }
    curl -fsSL "$url" -o "$work/$file"
    echo "$sum  $work/$file" | sha256sum -c --quiet
    tar -xzf "$work/$file" -C "$work"
  fi
}
fetch_sdist aio-pika aio_pika-10.2.1.tar.gz e4f77afd9179a3cca5a904c3b0a1190256a36d9f90650db908b1b2245eb27487
fetch_sdist aiormq aiormq-7.2.4.tar.gz 5fd20bb9583d73de85572198496b65cf028f27527c1733c9840d458e0b40e8fa

if [ ! -x "$work/venv/bin/python" ]; then
  python3.11 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q aio-pika==10.2.1 aiormq==7.2.4 pamqp==4.0.1 \
    aiomisc==18.0.37 aiomisc-pytest==2.0.0 pytest==9.2.0 pytest-cov==7.1.0 pytest-rst==0.2.3 \
    shortuuid timeout-decorator coverage
fi

(cd "$root" && cargo build --release --quiet)
WARREN_BIN=$root/target/release/warren WARREN_CERTS=$work/aiormq-7.2.4/tests/certs WORK_DIR=$work \
  DOCKER_API_PORT=$api_port "$work/venv/bin/python" "$here/docker_api.py" &
api=$!
trap 'kill $api 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  (echo >"/dev/tcp/127.0.0.1/$api_port") 2>/dev/null && break
  sleep 0.1
done

export DOCKER_HOST=tcp://127.0.0.1:$api_port
status=0
for s in "${suites[@]}"; do
  case $s in
    aio-pika)
      (cd "$work/aio_pika-10.2.1" && "$work/venv/bin/python" -m pytest tests -q -p no:cacheprovider \
        -o log_cli=false -rf) || status=1 ;;
    aiormq)
      (cd "$work/aiormq-7.2.4" && PYTHONPATH=$here "$work/venv/bin/python" -m pytest tests -q \
        -p no:cacheprovider -p aiormq_fixtures -rf) || status=1 ;;
    *) echo "unknown suite: $s" >&2; exit 2 ;;
  esac
done
exit $status
