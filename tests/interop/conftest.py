"""Shared fixtures for Warren's interop tests.

The ``broker`` fixture starts the real ``warren`` binary once per test session
(``WARREN_BIN``, default ``<repo>/target/debug/warren``) on ephemeral ports and
yields its address. Set ``WARREN_URL_OVERRIDE`` (for example
``amqp://guest:guest@127.0.0.1:5672/%2F``) to run the same tests against an
already running broker, such as a reference RabbitMQ, without starting Warren.

Nothing here sleeps blindly: waits are polls against a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TypeVar

import pytest

T = TypeVar("T")

INTEROP_DIR = Path(__file__).resolve().parent
REPO_ROOT = INTEROP_DIR.parent.parent

PORTS_FILE_POLL_INTERVAL_S = 0.02
PORTS_FILE_DEADLINE_S = 20.0
SHUTDOWN_DEADLINE_S = 10.0
LOG_TAIL_BYTES = 8000


def eventually(fn: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
               message: str = "") -> T:
    """Call ``fn`` until it returns a truthy value without raising, or time runs out.

    Returns the first truthy value. ``AssertionError`` and other exceptions raised
    by ``fn`` count as "not yet"; on timeout the last one is re-raised inside an
    ``AssertionError`` (with ``message``), so a failing condition reads clearly.
    """
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    last_value: Any = None
    while True:
        try:
            last_value = fn()
            if last_value:
                return last_value
            last_exc = None
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f"last exception: {last_exc!r}" if last_exc else f"last value: {last_value!r}"
            raise AssertionError(
                f"condition not met within {timeout}s{': ' + message if message else ''} ({detail})"
            ) from last_exc
        time.sleep(interval)


def unique(prefix: str) -> str:
    """A name that no other test (or earlier run against a shared broker) uses."""
    return f"interop.{prefix}.{uuid.uuid4().hex[:12]}"


def _tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    if len(data) > limit:
        data = b"...\n" + data[-limit:]
    return data.decode("utf-8", "replace")


@dataclass
class Broker:
    host: str
    port: int
    url: str
    mgmt_port: Optional[int] = None
    process: Optional[subprocess.Popen] = None
    log_path: Optional[Path] = None
    data_dir: Optional[Path] = None
    amqps_port: Optional[int] = None

    @property
    def managed(self) -> bool:
        """True when this session started the broker process itself."""
        return self.process is not None

    def died(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def log_tail(self) -> str:
        return _tail(self.log_path) if self.log_path else "<no log: external broker>"

    def death_report(self) -> str:
        assert self.process is not None
        return (
            f"warren (pid {self.process.pid}) exited unexpectedly with status "
            f"{self.process.returncode}; log tail ({self.log_path}):\n{self.log_tail()}"
        )


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM us if pytest dies, so no orphan
    broker outlives a killed test run. Best effort; ignored where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:  # noqa: BLE001
        pass


def _url_for(host: str, port: int) -> str:
    return f"amqp://guest:guest@{host}:{port}/%2F"


def _external_broker(url: str) -> Broker:
    parsed = urllib.parse.urlparse(url)
    host = parsed.hostname or "127.0.0.1"
    port = parsed.port or 5672
    return Broker(host=host, port=port, url=url)


def _start_warren(work_dir: Path, extra_args: tuple[str, ...] = ()) -> Broker:
    binary = Path(os.environ.get("WARREN_BIN", REPO_ROOT / "target" / "debug" / "warren"))
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.exit(
            f"warren binary not found or not executable at {binary}; build it with "
            f"`cargo build`, point WARREN_BIN at it, or set WARREN_URL_OVERRIDE to test "
            f"an already running broker",
            returncode=2,
        )
    data_dir = work_dir / "data"
    data_dir.mkdir()
    ports_file = work_dir / "ports.json"
    log_path = work_dir / "warren.log"
    log_file = open(log_path, "wb")
    cmd = [
        str(binary),
        "--amqp-port", "0",
        "--mgmt-port", "0", "--metrics-port", "0",
        "--data-dir", str(data_dir),
        "--ports-file", str(ports_file),
        "--log-level", os.environ.get("WARREN_LOG_LEVEL", "info"),
        "--set", "amqp.tls_port=0",
        *extra_args,
    ]
    process = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=str(work_dir),
        start_new_session=True,  # a Ctrl-C on pytest must not hit the broker first
        preexec_fn=_die_with_parent,
    )
    log_file.close()  # the child holds its own descriptor

    deadline = time.monotonic() + PORTS_FILE_DEADLINE_S
    ports: Optional[dict] = None
    while True:
        if process.poll() is not None:
            pytest.exit(
                f"warren exited during startup with status {process.returncode}\n"
                f"command: {' '.join(cmd)}\nlog tail:\n{_tail(log_path)}",
                returncode=3,
            )
        try:
            ports = json.loads(ports_file.read_text())
            if isinstance(ports.get("amqp"), int) and ports["amqp"] > 0:
                break
        except (OSError, ValueError, AttributeError):
            pass  # not written yet (or, against the contract, written non-atomically)
        if time.monotonic() >= deadline:
            process.kill()
            process.wait()
            pytest.exit(
                f"warren did not write a valid ports file {ports_file} within "
                f"{PORTS_FILE_DEADLINE_S}s\nlog tail:\n{_tail(log_path)}",
                returncode=3,
            )
        time.sleep(PORTS_FILE_POLL_INTERVAL_S)

    host = "127.0.0.1"
    return Broker(
        host=host,
        port=ports["amqp"],
        url=_url_for(host, ports["amqp"]),
        mgmt_port=ports.get("mgmt"),
        process=process,
        log_path=log_path,
        data_dir=data_dir,
        amqps_port=ports.get("amqps") or None,
    )


def _stop_warren(broker: Broker) -> Optional[str]:
    """SIGTERM the broker; returns a failure description if it had already died."""
    proc = broker.process
    assert proc is not None
    if proc.poll() is not None:
        return broker.death_report()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=SHUTDOWN_DEADLINE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        print(f"\nWARNING: warren ignored SIGTERM for {SHUTDOWN_DEADLINE_S}s and was killed; "
              f"log tail:\n{broker.log_tail()}")
    return None


_BROKER_FAILURE: list[str] = []


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    override = os.environ.get("WARREN_URL_OVERRIDE")
    if override:
        os.environ["WARREN_URL"] = override  # for subprocesses (celery worker, CLI)
        yield _external_broker(override)
        return
    # pytest keeps the last few of these dirs (data dir + warren.log) for post-mortems.
    work_dir = tmp_path_factory.mktemp("warren")
    b = _start_warren(work_dir)
    os.environ["WARREN_URL"] = b.url  # for subprocesses (celery worker, CLI)
    try:
        yield b
    finally:
        failure = _stop_warren(b)
        if failure and not _BROKER_FAILURE:
            _BROKER_FAILURE.append(failure)
            pytest.fail(failure, pytrace=False)


@dataclass
class TlsBroker:
    broker: Broker
    ca: Any  # trustme.CA
    ca_file: Path


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    """A second Warren with AMQPS and HTTPS management, its certificate from a
    throwaway CA (trustme); client certificates are verified when offered."""
    if os.environ.get("WARREN_URL_OVERRIDE"):
        pytest.skip("TLS tests start their own Warren (WARREN_URL_OVERRIDE is set)")
    import trustme

    work_dir = tmp_path_factory.mktemp("warren-tls")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    cert, key, ca_file = work_dir / "cert.pem", work_dir / "key.pem", work_dir / "ca.pem"
    server.private_key_pem.write_to_path(str(key))
    server.cert_chain_pems[0].write_to_path(str(cert))
    ca.cert_pem.write_to_path(str(ca_file))
    b = _start_warren(work_dir, (
        "--set", f"tls.cert_file={cert}", "--set", f"tls.key_file={key}",
        "--set", f"tls.ca_file={ca_file}", "--set", "tls.verify_peer=true",
        "--set", "management.tls=true",
    ))
    try:
        yield TlsBroker(broker=b, ca=ca, ca_file=ca_file)
    finally:
        failure = _stop_warren(b)
        if failure:
            pytest.fail(failure, pytrace=False)


@pytest.fixture(autouse=True)
def _broker_still_alive(request: pytest.FixtureRequest):
    """After each test that used the broker: if the broker process died, stop the
    whole session at once with its log tail (instead of every later test failing
    with connection errors)."""
    yield
    if "broker" not in request.fixturenames:
        return
    b: Broker = request.getfixturevalue("broker")
    if b.died() and not _BROKER_FAILURE:
        msg = f"during or after {request.node.nodeid}: {b.death_report()}"
        _BROKER_FAILURE.append(msg)
        pytest.exit(msg, returncode=1)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _BROKER_FAILURE and session.exitstatus == 0:
        session.exitstatus = 1  # broker death must fail the run even if every test passed


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    for msg in _BROKER_FAILURE[:1]:
        terminalreporter.section("warren broker died", sep="!", red=True)
        terminalreporter.write_line(msg)


@pytest.fixture
def amqp_url(broker: Broker) -> str:
    return broker.url
