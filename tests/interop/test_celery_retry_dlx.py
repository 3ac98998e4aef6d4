"""Celery retries and dead-lettering with a real ``celery -A celery_retry_app worker``.

The task queue is declared by kombu (``task_queues``) with
``x-dead-letter-exchange`` / ``x-dead-letter-routing-key``; the tasks are
``acks_late`` with ``autoretry_for``. What this exercises on the broker side:

* a retry: the worker publishes a new message (same task id, ``retries`` header
  + 1, an ``eta`` header) to the task exchange and then basic.ack's the old one,
  holding the new one unacked until its ETA (raising the global basic.qos);
* a final failure with ``task_acks_on_failure = False``: the worker sends
  basic.reject(requeue=False), and the broker dead-letters the message to the DLX
  with the queue's dead-letter routing key, adding ``x-death`` (reason
  ``rejected``, queue, exchange, routing-keys, count, time) and the
  ``x-first-death-*`` headers, and keeping the message's own properties;
* retries that were acked must NOT be dead-lettered.

The dead-letter exchange and queue are declared (durable, bound) before the worker
starts; the test reads the DLQ with basic.get, polling against a deadline.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from kombu import Exchange, Queue

from celery_worker import running_worker
from conftest import INTEROP_DIR, _tail, eventually

RESULT_TIMEOUT_S = 60.0
DLQ_DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def retry_env(broker):
    base = f"interop.celery-retry.{uuid.uuid4().hex[:8]}"
    attempts_dir = tempfile.mkdtemp(prefix="celery-retry-attempts-")
    env = dict(os.environ)
    env["WARREN_URL"] = broker.url
    env["WARREN_RETRY_QUEUE"] = base
    env["WARREN_RETRY_DLX"] = base + ".dlx"
    env["WARREN_RETRY_DLQ_KEY"] = base + ".dead"
    env["WARREN_RETRY_ATTEMPTS_DIR"] = attempts_dir
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(INTEROP_DIR), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    # The test process imports celery_retry_app too: make it read the same settings.
    for key in ("WARREN_URL", "WARREN_RETRY_QUEUE", "WARREN_RETRY_DLX",
                "WARREN_RETRY_DLQ_KEY", "WARREN_RETRY_ATTEMPTS_DIR"):
        os.environ[key] = env[key]
    yield {
        "env": env,
        "queue": base,
        "dlx": base + ".dlx",
        "dlq": base + ".dlq",
        "dlq_key": base + ".dead",
        "attempts_dir": Path(attempts_dir),
    }
    for p in Path(attempts_dir).iterdir():
        p.unlink()
    Path(attempts_dir).rmdir()


@pytest.fixture(scope="module")
def retry_app(retry_env):
    sys.modules.pop("celery_retry_app", None)  # pick up this module's env
    import celery_retry_app as module

    assert module.QUEUE == retry_env["queue"]
    yield module
    module.app.close()


@pytest.fixture(scope="module")
def dlq(retry_env, retry_app):
    """The dead-letter exchange and queue, declared before the worker starts."""
    exchange = Exchange(retry_env["dlx"], type="direct", durable=True)
    queue = Queue(retry_env["dlq"], exchange, routing_key=retry_env["dlq_key"], durable=True)
    with retry_app.app.connection_for_write() as conn:
        queue.bind(conn.default_channel).declare()
    yield queue
    with retry_app.app.connection_for_write() as conn:
        ch = conn.default_channel
        ch.queue_delete(retry_env["dlq"])
        ch.exchange_delete(retry_env["dlx"])


@pytest.fixture(scope="module")
def worker(retry_env, retry_app, dlq):
    nodename = f"interop-retry-{uuid.uuid4().hex[:8]}@warren"
    with running_worker(retry_app.app, "celery_retry_app", retry_env["env"], retry_env["queue"],
                        nodename, extra_args=("--without-gossip", "--without-mingle")) as w:
        yield w
    log_path = w["log"]
    # Leave a shared broker as we found it: the task queue is durable.
    with retry_app.app.connection_for_write() as conn:
        conn.default_channel.queue_delete(retry_env["queue"])
        conn.default_channel.exchange_delete(retry_env["queue"])
    # The failing task logs its traceback on purpose; anything about the broker
    # connection or channel going away is not expected.
    log_text = _tail(log_path, 200_000)
    for bad in ("Connection to broker lost", "consumer: Cannot connect",
                "PreconditionFailed", "NotFound", "ChannelError", "ConnectionError"):
        assert bad not in log_text, f"worker log mentions {bad!r}:\n{_tail(log_path)}"
    log_path.unlink(missing_ok=True)


def _attempts(retry_env, task_id) -> list[dict]:
    """One record per real execution of the task body (written by the worker)."""
    path = retry_env["attempts_dir"] / task_id
    try:
        return [json.loads(line) for line in path.read_text().splitlines()]
    except FileNotFoundError:
        return []


def _drain(retry_app, dlq) -> list:
    """basic.get (and ack) everything now in the DLQ."""
    out = []
    with retry_app.app.connection_for_write() as conn:
        q = dlq.bind(conn.default_channel)
        while (msg := q.get(no_ack=False)) is not None:
            msg.ack()
            out.append(msg)
    return out


def _wait_dead_letter(retry_app, dlq, timeout: float):
    """Poll the DLQ with basic.get until a message arrives; ack and return it."""
    with retry_app.app.connection_for_write() as conn:
        q = dlq.bind(conn.default_channel)

        def get_one():
            msg = q.get(no_ack=False)
            if msg is not None:
                msg.ack()
            return msg

        return eventually(get_one, timeout=timeout, interval=0.1,
                          message=f"no message dead-lettered to {dlq.name}")


def _short(msg) -> dict:
    return {"headers": {k: v for k, v in (msg.headers or {}).items() if k in
                        ("id", "task", "retries", "x-death", "x-first-death-reason")},
            "delivery_info": {k: msg.delivery_info.get(k) for k in ("exchange", "routing_key")}}


def test_autoretry_then_success(worker, retry_app, retry_env, dlq):
    """Fails twice (two retries, each acked + republished with a 1 s countdown),
    succeeds on the third attempt; nothing is dead-lettered."""
    started = time.monotonic()
    result = retry_app.flaky.delay(2, "done")
    value = result.get(timeout=RESULT_TIMEOUT_S)
    elapsed = time.monotonic() - started

    assert value == {"value": "done", "attempts": 3, "retries": 2,
                     "routing_key": retry_env["queue"]}
    assert result.successful()
    # One record per real execution of the task body, with request.retries 0, 1, 2,
    # every one delivered from the task queue.
    attempts = _attempts(retry_env, result.id)
    assert [a["retries"] for a in attempts] == [0, 1, 2], attempts
    assert {a["routing_key"] for a in attempts} == {retry_env["queue"]}, attempts
    # Two retries with countdown=1 each: the ETA was honoured (small slack for clocks).
    assert elapsed >= 2 - 0.2, f"two 1 s retry countdowns finished in {elapsed:.2f}s"

    # Retries ack the old message; a finally successful task is acked too. Nothing of
    # this task may reach the dead-letter queue.
    leaked = [m for m in _drain(retry_app, dlq) if (m.headers or {}).get("id") == result.id]
    assert not leaked, f"retried/succeeded task was dead-lettered: {[_short(m) for m in leaked]}"


def test_final_failure_is_dead_lettered(worker, retry_app, retry_env, dlq):
    """max_retries=1: two attempts, then reject(requeue=False) -> DLX -> DLQ with x-death."""
    marker = uuid.uuid4().hex
    result = retry_app.always_fails.delay(marker)

    msg = _wait_dead_letter(retry_app, dlq, DLQ_DEADLINE_S)
    headers = msg.headers or {}
    queue = retry_env["queue"]

    # It is this task's message (protocol 2: the task id and name are headers), the
    # last attempt's (retries=1), with its own properties kept.
    assert headers.get("id") == result.id, f"unexpected dead letter: {_short(msg)}"
    assert headers.get("task") == "interop.retry.always_fails"
    assert headers.get("retries") == 1
    assert msg.properties.get("correlation_id") == result.id
    assert msg.content_type == "application/json"
    args, kwargs, _embed = msg.decode()
    assert (args, kwargs) == ([marker], {})

    # Republished by the broker to the DLX with the queue's dead-letter routing key.
    assert msg.delivery_info["exchange"] == retry_env["dlx"]
    assert msg.delivery_info["routing_key"] == retry_env["dlq_key"]

    # The task ran exactly twice (first attempt + 1 retry).
    attempts = _attempts(retry_env, result.id)
    assert [a["retries"] for a in attempts] == [0, 1], attempts
    last = attempts[-1]
    # Celery publishes to a queue whose exchange is direct through the default
    # exchange "" with routing key = queue name (celery/app/amqp.py), retries too.
    assert (last["exchange"], last["routing_key"]) == ("", queue), last

    # x-death: one entry, reason rejected, for the task queue, naming the exchange and
    # routing keys the rejected (retried) message was published with.
    x_death = headers.get("x-death")
    assert isinstance(x_death, list) and len(x_death) == 1, f"x-death: {x_death!r}"
    death = x_death[0]
    assert death.get("reason") == "rejected", death
    assert death.get("queue") == queue, death
    assert death.get("exchange") == last["exchange"], death
    assert death.get("routing-keys") == [last["routing_key"]], death
    assert death.get("count") == 1, death
    assert isinstance(death.get("time"), datetime.datetime), death
    assert headers.get("x-first-death-reason") == "rejected", headers
    assert headers.get("x-first-death-queue") == queue, headers
    assert headers.get("x-first-death-exchange") == last["exchange"], headers

    # The result backend saw the final failure.
    assert result.get(timeout=RESULT_TIMEOUT_S, propagate=False) is not None
    assert result.failed(), result.state
    assert marker in str(result.result)

    # Exactly one dead letter: the first attempt's message was acked on retry, and the
    # rejected one is not left behind in the task queue.
    extra = _drain(retry_app, dlq)
    assert not extra, f"more dead letters than expected: {[_short(m) for m in extra]}"
    with retry_app.app.connection_for_write() as conn:
        _name, ready, _consumers = conn.default_channel.queue_declare(queue, passive=True)
    assert ready == 0, f"{ready} message(s) left in {queue}"
