"""Celery app used by test_celery_retry_dlx.py, both in the test process and in the
real ``celery -A celery_retry_app worker`` subprocess it starts.

Every name comes from the environment (set by the test before it imports this
module or starts the worker), so worker and client agree and repeated runs
against a shared broker do not collide:

* WARREN_URL                 broker URL (set by the ``broker`` fixture)
* WARREN_RETRY_QUEUE         task queue; its direct exchange and routing key share the name
* WARREN_RETRY_DLX           dead-letter exchange (direct), named in the queue's arguments
* WARREN_RETRY_DLQ_KEY       x-dead-letter-routing-key
* WARREN_RETRY_ATTEMPTS_DIR  each task run appends one JSON line (request.retries and
                             the delivery's exchange and routing key) to ``<dir>/<task id>``

The task queue carries ``x-dead-letter-exchange`` / ``x-dead-letter-routing-key``.
Tasks are ``acks_late`` and ``task_acks_on_failure`` is False, so a task that
finally fails has its message rejected with requeue=False (dead-lettered) instead
of acked; a retry acks the old message and publishes a new one (same task id,
``retries`` + 1, an ETA) to the same exchange and routing key. Note that Celery
publishes to a queue with a direct exchange through the default (anonymous)
exchange ``""`` with routing key = queue name, not through the queue's exchange.
"""

import json
import os

from celery import Celery
from kombu import Exchange, Queue

BROKER_URL = os.environ.get("WARREN_URL") or os.environ.get(
    "WARREN_URL_OVERRIDE", "amqp://guest:guest@127.0.0.1:5672/%2F"
)
QUEUE = os.environ.get("WARREN_RETRY_QUEUE", "interop.celery-retry")
DLX = os.environ.get("WARREN_RETRY_DLX", QUEUE + ".dlx")
DLQ_KEY = os.environ.get("WARREN_RETRY_DLQ_KEY", QUEUE + ".dlq")
ATTEMPTS_DIR = os.environ.get("WARREN_RETRY_ATTEMPTS_DIR", "")

TASK_EXCHANGE = Exchange(QUEUE, type="direct", durable=True)
TASK_QUEUE = Queue(
    QUEUE,
    TASK_EXCHANGE,
    routing_key=QUEUE,
    durable=True,
    queue_arguments={
        "x-dead-letter-exchange": DLX,
        "x-dead-letter-routing-key": DLQ_KEY,
    },
)

app = Celery("celery_retry_app", broker=BROKER_URL, backend="rpc://")
app.conf.update(
    task_queues=[TASK_QUEUE],
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    task_create_missing_queues=False,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=3,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    # With acks_late, a task that finally fails is rejected (requeue=False), not
    # acked, so the broker dead-letters it. This is the Celery 5.7 spelling of the
    # deprecated ``task_acks_on_failure_or_timeout = False`` (task.acks_on_failure
    # falls back to that one when this is None).
    task_acks_on_failure=False,
)


class FlakyError(Exception):
    """Raised by ``flaky`` on its first attempts."""


class AlwaysFails(Exception):
    """Raised by ``always_fails`` on every attempt."""


def _record_attempt(request):
    """Append one line per run, so the test counts real executions of the body."""
    if not ATTEMPTS_DIR:
        return 0
    info = request.delivery_info or {}
    line = json.dumps({"retries": request.retries, "exchange": info.get("exchange"),
                       "routing_key": info.get("routing_key")})
    path = os.path.join(ATTEMPTS_DIR, request.id)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
    with open(path, encoding="ascii") as f:
        return sum(1 for _ in f)


@app.task(
    name="interop.retry.flaky",
    bind=True,
    acks_late=True,
    autoretry_for=(FlakyError,),
    retry_kwargs={"max_retries": 3, "countdown": 1},
)
def flaky(self, fail_times, value):
    """Fail the first ``fail_times`` attempts, then return ``value`` and the counts."""
    attempts = _record_attempt(self.request)
    if attempts <= fail_times:
        raise FlakyError(f"attempt {attempts} of {fail_times + 1} fails on purpose")
    info = self.request.delivery_info or {}
    return {
        "value": value,
        "attempts": attempts,
        "retries": self.request.retries,
        "routing_key": info.get("routing_key"),
    }


@app.task(
    name="interop.retry.always_fails",
    bind=True,
    acks_late=True,
    autoretry_for=(AlwaysFails,),
    retry_kwargs={"max_retries": 1, "countdown": 1},
)
def always_fails(self, marker):
    attempts = _record_attempt(self.request)
    raise AlwaysFails(f"{marker}: attempt {attempts} (retries={self.request.retries}) fails")
