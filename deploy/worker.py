"""Example task worker for the Swarm stack: consumes "tasks" with manual acks
(prefetch 10), reconnecting while Warren restarts or is upgraded."""
import os
import time

import pika

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")


def handle(ch, method, properties, body):
    print(f"task: {body[:80]!r}", flush=True)
    ch.basic_ack(delivery_tag=method.delivery_tag)


while True:
    try:
        conn = pika.BlockingConnection(pika.URLParameters(URL))
        ch = conn.channel()
        ch.basic_qos(prefetch_count=10)
        ch.queue_declare("tasks", durable=True)
        ch.basic_consume("tasks", handle)
        ch.start_consuming()
    except pika.exceptions.AMQPConnectionError as e:
        print(f"broker unavailable ({e!r}); retrying", flush=True)
        time.sleep(2)
