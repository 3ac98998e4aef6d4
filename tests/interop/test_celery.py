"""A real Celery worker process (``celery -A celery_app worker``) against the broker.

What this exercises on the broker side (celery/kombu 5.7 over py-amqp):
* the task queue (durable; kombu declares a direct exchange of the same name and
  binds it) and the ``rpc://`` result backend: one reply queue per client, named
  by the app's oid, declared durable + auto_delete with ``x-expires`` =
  result_expires (86 400 000 ms); results are published to the default exchange
  with routing_key = that queue and correlation_id = task id;
* remote control (``app.control.ping``, ``celery inspect ping``): the
  ``celery.pidbox`` fanout exchange; the worker's exclusive
  ``<node>.celery.pidbox`` queue with ``x-message-ttl`` 300 000 and ``x-expires``
  10 000; the ``reply.celery.pidbox`` direct exchange and a non-durable,
  NON-exclusive, auto_delete reply queue with ``x-expires`` 10 000;
* mingle/gossip at worker startup: the ``celeryev`` topic exchange and exclusive
  ``celeryev.<uuid>`` queues with ``x-message-ttl`` 5 000 and ``x-expires`` 60 000;
* basic.qos: kombu sends ``global=True`` because the server says product
  "RabbitMQ" 3.x (3.3 <= version < 4.0), and Celery raises the prefetch on the
  live channel while it holds ETA/countdown tasks unacked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest
from celery import group

from celery_worker import running_worker
from conftest import INTEROP_DIR, _tail



@pytest.fixture(scope="module")
def celery_env(broker):
    env = dict(os.environ)
    env["WARREN_URL"] = broker.url
    env["WARREN_CELERY_QUEUE"] = f"interop.celery.{uuid.uuid4().hex[:8]}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(INTEROP_DIR), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    # The test process imports celery_app too: make it read the same settings.
    os.environ["WARREN_URL"] = env["WARREN_URL"]
    os.environ["WARREN_CELERY_QUEUE"] = env["WARREN_CELERY_QUEUE"]
    return env


@pytest.fixture(scope="module")
def celery_app(celery_env):
    sys.modules.pop("celery_app", None)  # pick up this module's env
    import celery_app as module

    yield module
    module.app.close()


@pytest.fixture(scope="module")
def worker(celery_env, celery_app):
    nodename = f"interop-{uuid.uuid4().hex[:8]}@warren"
    with running_worker(celery_app.app, "celery_app", celery_env,
                        celery_env["WARREN_CELERY_QUEUE"], nodename) as w:
        yield w
    log_path = w["log"]
    # Leave a shared broker as we found it: the task queue is durable.
    with celery_app.app.connection_for_write() as conn:
        conn.default_channel.queue_delete(celery_env["WARREN_CELERY_QUEUE"])
        conn.default_channel.exchange_delete(celery_env["WARREN_CELERY_QUEUE"])
    log_text = _tail(log_path, 200_000)
    assert "Traceback" not in log_text, f"worker logged a traceback:\n{_tail(log_path)}"
    log_path.unlink(missing_ok=True)


def test_ping_reply(worker, celery_app):
    replies = celery_app.app.control.ping(destination=[worker["nodename"]], timeout=2)
    assert replies == [{worker["nodename"]: {"ok": "pong"}}]


def test_add_delay(worker, celery_app):
    result = celery_app.add.delay(2, 3)
    assert result.get(timeout=30) == 5
    assert result.successful()


def test_delivery_info(worker, celery_app, celery_env):
    info = celery_app.delivery_info.delay().get(timeout=30)
    assert info == {"routing_key": celery_env["WARREN_CELERY_QUEUE"], "redelivered": False}


def test_group(worker, celery_app):
    job = group(celery_app.add.s(i, i) for i in range(10))
    assert job.apply_async().get(timeout=30) == [i + i for i in range(10)]


def test_countdown_task(worker, celery_app):
    # ETA/countdown tasks are held unacked by the worker, which raises basic.qos
    # (global=True on RabbitMQ 3.x) so other tasks keep flowing meanwhile.
    countdown = 3
    started = time.monotonic()
    eta = celery_app.add.apply_async((10, 20), countdown=countdown)
    quick = celery_app.add.delay(1, 1)
    assert quick.get(timeout=30) == 2
    if time.monotonic() - started < countdown - 0.5:  # skip the check on a very slow machine
        assert not eta.ready(), "countdown task ran before its ETA"
    assert eta.get(timeout=30) == 30
    assert time.monotonic() - started >= countdown - 0.1


def test_inspect_ping_cli(worker, celery_env):
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "celery_app", "inspect", "ping",
         "-d", worker["nodename"], "--timeout", "10"],
        cwd=str(INTEROP_DIR), env=celery_env, capture_output=True, text=True, timeout=60,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "pong" in out, out
    assert worker["nodename"] in out, out


def test_inspect_active_queues(worker, celery_app, celery_env):
    replies = celery_app.app.control.inspect(destination=[worker["nodename"]], timeout=5).active_queues()
    assert replies is not None, "no reply to inspect active_queues"
    queues = replies[worker["nodename"]]
    assert [q["name"] for q in queues] == [celery_env["WARREN_CELERY_QUEUE"]]
