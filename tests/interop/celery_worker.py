"""A real `celery worker` subprocess for the Celery interop tests.

`running_worker` starts it (solo pool), waits until it answers a remote-control
ping (polling with a deadline), yields it, then stops it with SIGTERM and
fails the test if it died early, never became ready or ignored the signal.
"""
from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import INTEROP_DIR, _tail

WORKER_READY_DEADLINE_S = 60.0


@contextlib.contextmanager
def running_worker(app, module: str, env: dict, queue: str, nodename: str, extra_args=()):
    log_path = Path(tempfile.mkstemp(prefix=f"{module}-worker-", suffix=".log")[1])
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", module, "worker",
         "--pool", "solo", "--concurrency", "1", "--loglevel", "INFO",
         *extra_args, "-n", nodename, "-Q", queue],
        cwd=str(INTEROP_DIR), env=env,
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()

    def fail(why: str):
        pytest.fail(f"celery worker {why}; worker log tail ({log_path}):\n{_tail(log_path)}",
                    pytrace=False)

    deadline = time.monotonic() + WORKER_READY_DEADLINE_S
    while True:
        if proc.poll() is not None:
            fail(f"exited with status {proc.returncode} before it was ready")
        # ping broadcasts on the pidbox fanout and waits up to `timeout` for replies.
        replies = app.control.ping(destination=[nodename], timeout=0.5)
        if any(nodename in r for r in replies):
            break
        if time.monotonic() >= deadline:
            proc.kill()
            proc.wait()
            fail(f"did not answer ping within {WORKER_READY_DEADLINE_S}s")

    yield {"nodename": nodename, "proc": proc, "log": log_path}

    # Warm shutdown on SIGTERM; the worker should finish and exit cleanly.
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            fail("ignored SIGTERM for 30s")
    else:
        fail(f"died during the tests (status {proc.returncode})")
