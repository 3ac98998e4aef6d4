"""Celery app used by test_celery.py, both in the test process and in the real
``celery -A celery_app worker`` subprocess it starts.

The broker URL comes from WARREN_URL (set by the ``broker`` fixture), so worker,
client and CLI all talk to the same broker. The task queue name comes from
WARREN_CELERY_QUEUE so concurrent or repeated runs against a shared broker do
not pick up each other's tasks.
"""

import os

from celery import Celery

BROKER_URL = os.environ.get("WARREN_URL") or os.environ.get(
    "WARREN_URL_OVERRIDE", "amqp://guest:guest@127.0.0.1:5672/%2F"
)
QUEUE = os.environ.get("WARREN_CELERY_QUEUE", "celery")

app = Celery("celery_app", broker=BROKER_URL, backend="rpc://")
app.conf.update(
    task_default_queue=QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    # Fail fast instead of retrying forever when the broker is gone.
    broker_connection_max_retries=3,
    worker_hijack_root_logger=False,
    task_acks_late=False,
)


@app.task(name="interop.add")
def add(x, y):
    return x + y


@app.task(name="interop.delivery_info", bind=True)
def delivery_info(self):
    info = self.request.delivery_info or {}
    return {"routing_key": info.get("routing_key"), "redelivered": bool(info.get("redelivered"))}
