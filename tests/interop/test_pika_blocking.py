"""pika BlockingConnection against the broker: the synchronous client most Python
workers use. Routing checks publish on a confirm channel first, so by the time
``basic_publish`` returns the broker has enqueued (or dropped) the message and the
queues can be drained with ``basic_get`` without any waiting."""

from __future__ import annotations

import datetime
import time

import pika
import pika.exceptions
import pytest
from pika.spec import BasicProperties

from conftest import eventually, unique


@pytest.fixture
def conn(broker):
    c = pika.BlockingConnection(pika.URLParameters(broker.url))
    yield c
    if c.is_open:
        c.close()


@pytest.fixture
def ch(conn):
    return conn.channel()


@pytest.fixture
def cch(conn):
    """A channel in publisher-confirm mode."""
    c = conn.channel()
    c.confirm_delivery()
    return c


def declare_tmp_queue(channel, name: str = "", **kwargs) -> str:
    """Exclusive (auto-deleted with the connection) queue; server-named when name is ''."""
    ok = channel.queue_declare(queue=name, exclusive=True, **kwargs)
    return ok.method.queue


def drain(channel, queue: str) -> list[bytes]:
    """All bodies currently ready in ``queue`` (acknowledged), in order."""
    bodies = []
    while True:
        method, _props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)


def ready_count(channel, queue: str) -> int:
    return channel.queue_declare(queue=queue, passive=True).method.message_count


def test_server_properties_and_capabilities(conn):
    props = conn._impl.server_properties
    assert props["product"] in (b"RabbitMQ", "RabbitMQ")
    caps = props["capabilities"]
    # pika, kombu and amqplib switch features on these.
    for cap in ("publisher_confirms", "exchange_exchange_bindings", "basic.nack",
                "consumer_cancel_notify", "per_consumer_qos", "authentication_failure_close",
                "connection.blocked"):
        assert caps.get(cap) is True, f"capability {cap} not advertised: {caps}"


def test_publish_consume_round_trip_with_properties(ch):
    q = declare_tmp_queue(ch)
    ts = datetime.datetime(2024, 5, 17, 12, 30, 45, tzinfo=datetime.timezone.utc)
    headers = {
        "x-string": "välue",
        "x-int": 42,
        "x-negative": -7,
        "x-long": 2**40,
        "x-bool": True,
        "x-bytes": b"\x00\x01raw",
        "x-none": None,
        "x-nested": {"inner": "yes", "n": 1},
        "x-list": [1, "two", {"three": 3}],
        "x-timestamp": ts,
    }
    sent = BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers,
        delivery_mode=2,
        priority=3,
        correlation_id="corr-123",
        reply_to="reply.queue",
        message_id="msg-1",
        timestamp=1700000000,
        type="greeting",
        user_id="guest",
        app_id="interop",
    )
    body = b'{"hello": "warren", "bin": "\x00\xff"}'
    ch.basic_publish(exchange="", routing_key=q, body=body, properties=sent)

    received = []

    def on_message(channel, method, properties, rbody):
        received.append((method, properties, rbody))
        channel.basic_ack(method.delivery_tag)

    tag = ch.basic_consume(q, on_message)
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        ch.connection.process_data_events(time_limit=0.1)
    assert received, "no delivery within 10s"
    method, props, rbody = received[0]
    assert rbody == body
    assert method.consumer_tag == tag
    assert method.exchange == ""
    assert method.routing_key == q
    assert method.redelivered is False
    assert props.content_type == "application/json"
    assert props.content_encoding == "utf-8"
    assert props.delivery_mode == 2
    assert props.priority == 3
    assert props.correlation_id == "corr-123"
    assert props.reply_to == "reply.queue"
    assert props.message_id == "msg-1"
    assert props.timestamp == 1700000000
    assert props.type == "greeting"
    assert props.user_id == "guest"
    assert props.app_id == "interop"
    h = props.headers
    assert h["x-string"] == "välue"
    assert h["x-int"] == 42
    assert h["x-negative"] == -7
    assert h["x-long"] == 2**40
    assert h["x-bool"] is True
    assert h["x-bytes"] == b"\x00\x01raw"
    assert h["x-none"] is None
    assert h["x-nested"] == {"inner": "yes", "n": 1}
    assert h["x-list"] == [1, "two", {"three": 3}]
    assert h["x-timestamp"] == ts
    ch.basic_cancel(tag)
    assert eventually(lambda: ready_count(ch, q) == 0)


def test_user_id_mismatch_is_refused(conn):
    ch = conn.channel()
    q = declare_tmp_queue(ch)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.basic_publish("", q, b"x", BasicProperties(user_id="someone-else"))
        ch.queue_declare(q, passive=True)  # synchronous round trip to observe the close
    assert ei.value.reply_code == 406
    assert ei.value.reply_text == (
        "PRECONDITION_FAILED - user_id property set to 'someone-else' "
        "but authenticated user was 'guest'"
    )


def test_basic_get(ch):
    q = declare_tmp_queue(ch)
    ch.basic_publish("", q, b"first")
    ch.basic_publish("", q, b"second")
    method, props, body = eventually(lambda: (lambda r: r if r[0] else None)(ch.basic_get(q)))
    assert body == b"first"
    assert method.message_count == 1  # messages left after this one
    assert method.redelivered is False
    ch.basic_ack(method.delivery_tag)
    method, props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"second"
    assert method.message_count == 0
    assert ch.basic_get(q) == (None, None, None)


def test_nack_requeue_sets_redelivered(cch):
    ch = cch
    q = declare_tmp_queue(ch)
    ch.basic_publish("", q, b"again")
    method, _, body = ch.basic_get(q)
    assert body == b"again" and method.redelivered is False
    ch.basic_nack(method.delivery_tag, requeue=True)
    method2, _, body2 = eventually(lambda: (lambda r: r if r[0] else None)(ch.basic_get(q)))
    assert body2 == b"again"
    assert method2.redelivered is True
    # reject without requeue drops it
    ch.basic_reject(method2.delivery_tag, requeue=False)
    assert eventually(lambda: ready_count(ch, q) == 0)
    assert ch.basic_get(q) == (None, None, None)


def test_multiple_ack_and_nack(cch):
    ch = cch
    q = declare_tmp_queue(ch)
    for i in range(5):
        ch.basic_publish("", q, str(i).encode())
    tags = []
    for _ in range(5):
        m, _, _ = ch.basic_get(q)
        tags.append(m.delivery_tag)
    assert tags == sorted(tags)
    ch.basic_ack(tags[2], multiple=True)  # acks 0,1,2
    ch.basic_nack(tags[4], multiple=True, requeue=True)  # requeues 3,4
    got = eventually(lambda: (lambda d: d if len(d) == 2 else None)(drain(ch, q)))
    assert sorted(got) == [b"3", b"4"]


def test_confirm_mandatory_unroutable_raises(cch):
    ch = cch
    q = declare_tmp_queue(ch)
    # Routable: confirmed, no exception.
    ch.basic_publish("", q, b"ok", mandatory=True)
    # Unroutable but not mandatory: silently dropped, still acked.
    ch.basic_publish("", unique("nowhere"), b"dropped")
    # Unroutable and mandatory: basic.return then basic.ack -> UnroutableError.
    missing = unique("nowhere")
    with pytest.raises(pika.exceptions.UnroutableError) as ei:
        ch.basic_publish("", missing, b"bounce", mandatory=True)
    returned = ei.value.messages
    assert len(returned) == 1
    assert returned[0].method.reply_code == 312
    assert returned[0].method.reply_text == "NO_ROUTE"
    assert returned[0].method.routing_key == missing
    assert returned[0].body == b"bounce"
    # Publishing to a missing exchange closes the channel with 404.
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei2:
        ch.basic_publish(unique("no-exchange"), "k", b"x")
    assert ei2.value.reply_code == 404
    assert ei2.value.reply_text.startswith("NOT_FOUND - no exchange")


def test_passive_declare_missing_queue_404(conn):
    ch = conn.channel()
    name = unique("missing")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.queue_declare(name, passive=True)
    assert ei.value.reply_code == 404
    assert ei.value.reply_text.startswith("NOT_FOUND - no queue")
    assert ei.value.reply_text == f"NOT_FOUND - no queue '{name}' in vhost '/'"
    assert ch.is_closed
    # A channel error leaves the connection usable.
    ch2 = conn.channel()
    q = declare_tmp_queue(ch2)
    assert ch2.queue_declare(q, passive=True).method.queue == q


def test_redeclare_with_different_arguments_406(conn):
    ch = conn.channel()
    name = unique("inequivalent")
    ch.queue_declare(name, durable=False, auto_delete=True)
    ch2 = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch2.queue_declare(name, durable=True, auto_delete=True)
    assert ei.value.reply_code == 406
    assert ei.value.reply_text == (
        f"PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{name}' in vhost '/': "
        "received 'true' but current is 'false'"
    )
    ch.queue_delete(name)


def test_exclusive_queue_locked_to_other_connection(broker, ch):
    q = declare_tmp_queue(ch)
    other = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        och = other.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
            och.basic_consume(q, lambda *a: None)
        assert ei.value.reply_code == 405
        assert ei.value.reply_text == (
            f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'."
            " It could be originally declared on another connection or the exclusive property"
            " value does not match that of the original declaration."
        )
    finally:
        other.close()


def test_qos_prefetch_one(conn):
    ch = conn.channel()
    q = declare_tmp_queue(ch)
    ch.basic_publish("", q, b"m1")
    ch.basic_publish("", q, b"m2")
    observer = conn.channel()
    eventually(lambda: ready_count(observer, q) == 2)

    ch.basic_qos(prefetch_count=1)
    received = []
    ch.basic_consume(q, lambda c, m, p, b: received.append((m, b)))

    eventually(lambda: conn.process_data_events(time_limit=0) or received)
    # Round trips on both channels: a second delivery would have arrived by now.
    assert ready_count(observer, q) == 1
    assert ch.queue_declare(q, passive=True).method.consumer_count == 1
    conn.process_data_events(time_limit=0)
    assert [b for _, b in received] == [b"m1"]

    ch.basic_ack(received[0][0].delivery_tag)
    eventually(lambda: conn.process_data_events(time_limit=0) or len(received) == 2)
    assert [b for _, b in received] == [b"m1", b"m2"]
    assert received[1][0].delivery_tag == received[0][0].delivery_tag + 1
    assert ready_count(observer, q) == 0
    ch.basic_ack(received[1][0].delivery_tag)


def test_topic_exchange(cch):
    ch = cch
    ex = unique("topic")
    ch.exchange_declare(ex, exchange_type="topic", auto_delete=True)
    patterns = {"star": "a.*.c", "hash": "a.#", "all": "#", "second": "*.b", "exact": "a.b.c"}
    queues = {}
    for label, pattern in patterns.items():
        queues[label] = declare_tmp_queue(ch)
        ch.queue_bind(queues[label], ex, routing_key=pattern)

    for key in ["a.b.c", "a", "x.b", "a.b", "a.b.c.d", "a.x.c", "b"]:
        ch.basic_publish(ex, key, key.encode())

    got = {label: [b.decode() for b in drain(ch, q)] for label, q in queues.items()}
    assert got["star"] == ["a.b.c", "a.x.c"]
    assert got["hash"] == ["a.b.c", "a", "a.b", "a.b.c.d", "a.x.c"]
    assert got["all"] == ["a.b.c", "a", "x.b", "a.b", "a.b.c.d", "a.x.c", "b"]
    assert got["second"] == ["x.b", "a.b"]
    assert got["exact"] == ["a.b.c"]


def test_topic_exchange_hash_in_middle(cch):
    ch = cch
    ex = unique("topic-mid")
    ch.exchange_declare(ex, exchange_type="topic", auto_delete=True)
    q = declare_tmp_queue(ch)
    ch.queue_bind(q, ex, routing_key="a.#.z")
    for key in ["a.z", "a.b.z", "a.b.c.z", "a.b", "b.z"]:
        ch.basic_publish(ex, key, key.encode())
    assert [b.decode() for b in drain(ch, q)] == ["a.z", "a.b.z", "a.b.c.z"]


def test_direct_exchange_multiple_bindings(cch):
    ch = cch
    ex = unique("direct")
    ch.exchange_declare(ex, exchange_type="direct", auto_delete=True)
    q1, q2 = declare_tmp_queue(ch), declare_tmp_queue(ch)
    ch.queue_bind(q1, ex, "red")
    ch.queue_bind(q1, ex, "green")
    ch.queue_bind(q2, ex, "green")
    for key in ["red", "green", "blue"]:
        ch.basic_publish(ex, key, key.encode())
    assert drain(ch, q1) == [b"red", b"green"]
    assert drain(ch, q2) == [b"green"]
    ch.queue_unbind(q1, ex, "red")
    ch.basic_publish(ex, "red", b"red2")
    assert drain(ch, q1) == []


def test_fanout_exchange(cch):
    ch = cch
    ex = unique("fanout")
    ch.exchange_declare(ex, exchange_type="fanout", auto_delete=True)
    q1, q2 = declare_tmp_queue(ch), declare_tmp_queue(ch)
    ch.queue_bind(q1, ex, routing_key="ignored-1")
    ch.queue_bind(q2, ex)
    ch.basic_publish(ex, "whatever", b"to-all")
    ch.basic_publish(ex, "", b"again")
    assert drain(ch, q1) == [b"to-all", b"again"]
    assert drain(ch, q2) == [b"to-all", b"again"]


def test_headers_exchange_any_all(cch):
    ch = cch
    ex = unique("headers")
    ch.exchange_declare(ex, exchange_type="headers", auto_delete=True)
    q_all, q_any, q_default = declare_tmp_queue(ch), declare_tmp_queue(ch), declare_tmp_queue(ch)
    ch.queue_bind(q_all, ex, arguments={"x-match": "all", "format": "pdf", "type": "report"})
    ch.queue_bind(q_any, ex, arguments={"x-match": "any", "format": "pdf", "type": "log"})
    ch.queue_bind(q_default, ex, arguments={"format": "pdf", "type": "report"})  # default: all

    def pub(body, headers):
        ch.basic_publish(ex, "rk-ignored", body, BasicProperties(headers=headers))

    pub(b"pdf-report", {"format": "pdf", "type": "report", "extra": 1})
    pub(b"pdf-only", {"format": "pdf"})
    pub(b"log", {"type": "log"})
    pub(b"zip", {"format": "zip", "type": "report"})
    pub(b"none", None)

    assert drain(ch, q_all) == [b"pdf-report"]
    assert drain(ch, q_default) == [b"pdf-report"]
    assert drain(ch, q_any) == [b"pdf-report", b"pdf-only", b"log"]


def test_exchange_to_exchange_binding(cch):
    ch = cch
    src, dst = unique("e2e-src"), unique("e2e-dst")
    # The source is not auto-delete: it must survive losing its last binding below.
    ch.exchange_declare(src, exchange_type="topic")
    ch.exchange_declare(dst, exchange_type="fanout", auto_delete=True)
    q = declare_tmp_queue(ch)
    ch.queue_bind(q, dst)
    ch.exchange_bind(destination=dst, source=src, routing_key="logs.#")

    ch.basic_publish(src, "logs.error", b"routed")
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish(src, "metrics.cpu", b"not-routed", mandatory=True)
    assert drain(ch, q) == [b"routed"]

    ch.exchange_unbind(destination=dst, source=src, routing_key="logs.#")
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish(src, "logs.error", b"after-unbind", mandatory=True)
    assert drain(ch, q) == []
    ch.exchange_delete(src)
    ch.exchange_delete(dst)


def test_auto_delete_exchange_goes_with_last_binding(cch):
    ch = cch
    src, dst = unique("ad-src"), unique("ad-dst")
    ch.exchange_declare(src, exchange_type="direct", auto_delete=True)
    ch.exchange_declare(dst, exchange_type="fanout", auto_delete=True)
    q = declare_tmp_queue(ch)
    ch.queue_bind(q, src, "k")
    ch.exchange_bind(destination=dst, source=src, routing_key="k")
    ch.queue_unbind(q, src, "k")
    ch.exchange_declare(src, passive=True)  # still has the e2e binding
    ch.exchange_unbind(destination=dst, source=src, routing_key="k")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.exchange_declare(src, passive=True)
    assert ei.value.reply_code == 404
    assert ei.value.reply_text == f"NOT_FOUND - no exchange '{src}' in vhost '/'"
    ch2 = ch.connection.channel()
    ch2.exchange_delete(dst)  # only ever a destination, so auto-delete never fires


def test_dead_letter_on_reject(cch):
    ch = cch
    dlq = declare_tmp_queue(ch)
    q = declare_tmp_queue(ch, arguments={
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dlq,
    })
    ch.basic_publish("", q, b"doomed", BasicProperties(headers={"k": "v"}))
    method, _, _ = ch.basic_get(q)
    ch.basic_reject(method.delivery_tag, requeue=False)
    method, props, body = eventually(lambda: (lambda r: r if r[0] else None)(ch.basic_get(dlq, auto_ack=True)))
    assert body == b"doomed"
    assert props.headers["k"] == "v"
    death = props.headers["x-death"][0]
    assert death["queue"] == q
    assert death["reason"] == "rejected"
    assert death["count"] == 1
    assert death["exchange"] == ""
    assert death["routing-keys"] == [q]
    assert props.headers["x-first-death-reason"] == "rejected"
    assert props.headers["x-first-death-queue"] == q
    assert props.headers["x-first-death-exchange"] == ""


def test_consumer_cancel(conn):
    ch = conn.channel()
    q = declare_tmp_queue(ch)
    received = []
    tag = ch.basic_consume(q, lambda c, m, p, b: received.append(b), auto_ack=True)
    ch.basic_publish("", q, b"one")
    eventually(lambda: conn.process_data_events(time_limit=0) or received)
    assert received == [b"one"]
    assert ch.queue_declare(q, passive=True).method.consumer_count == 1

    ch.basic_cancel(tag)
    assert ch.queue_declare(q, passive=True).method.consumer_count == 0
    ch.basic_publish("", q, b"two")
    assert eventually(lambda: ready_count(ch, q) == 1)
    conn.process_data_events(time_limit=0)
    assert received == [b"one"]
    assert drain(ch, q) == [b"two"]


def test_server_cancels_consumer_when_queue_deleted(conn):
    ch = conn.channel()
    name = unique("cancel-notify")
    ch.queue_declare(name, auto_delete=False)
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = ch.basic_consume(name, lambda *a: None)

    admin = conn.channel()
    admin.queue_delete(name)
    eventually(lambda: conn.process_data_events(time_limit=0) or cancelled)
    assert cancelled == [tag]
    assert ch.is_open


def test_tx_select_commit_rollback(conn):
    ch = conn.channel()
    q = declare_tmp_queue(ch)
    observer = conn.channel()
    ch.tx_select()

    ch.basic_publish("", q, b"committed")
    assert ready_count(observer, q) == 0  # not visible before commit
    ch.tx_commit()
    assert ready_count(observer, q) == 1  # commit-ok means it is enqueued

    ch.basic_publish("", q, b"rolled-back")
    ch.tx_rollback()
    assert ready_count(observer, q) == 1

    # Acks are transactional too.
    method, _, body = ch.basic_get(q)
    assert body == b"committed"
    ch.basic_ack(method.delivery_tag)
    ch.tx_commit()
    assert ready_count(observer, q) == 0
    assert observer.queue_declare(q, passive=True).method.message_count == 0
    assert drain(observer, q) == []


def test_queue_purge_and_delete_counts(cch):
    ch = cch
    name = unique("purge")
    ch.queue_declare(name)
    for i in range(3):
        ch.basic_publish("", name, str(i).encode())
    assert ch.queue_purge(name).method.message_count == 3
    ch.basic_publish("", name, b"x")
    assert ch.queue_delete(name).method.message_count == 1
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.queue_declare(name, passive=True)
    assert ei.value.reply_code == 404


def test_rpc_with_reply_queue_and_correlation_id(broker):
    """The classic pika RPC pattern: an exclusive server-named reply queue,
    reply_to + correlation_id on the request, the server answering through the
    default exchange; the client matches replies by correlation_id."""
    server = pika.BlockingConnection(pika.URLParameters(broker.url))
    client = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        sch = server.channel()
        requests = unique("rpc-requests")
        sch.queue_declare(requests, auto_delete=True)

        cch = client.channel()
        callback = cch.queue_declare("", exclusive=True).method.queue
        assert callback.startswith("amq.gen-")
        replies = {}

        def on_reply(_ch, _method, props, body):
            replies[props.correlation_id] = body

        cch.basic_consume(callback, on_reply, auto_ack=True)
        for n in (3, 7):
            cch.basic_publish("", requests, str(n).encode(),
                              BasicProperties(reply_to=callback, correlation_id=f"call-{n}"))

        def serve_one():
            method, props, body = sch.basic_get(requests, auto_ack=False)
            if method is None:
                return False
            sch.basic_publish("", props.reply_to, str(int(body) ** 2).encode(),
                              BasicProperties(correlation_id=props.correlation_id))
            sch.basic_ack(method.delivery_tag)
            return True

        eventually(serve_one, message="first request")
        eventually(serve_one, message="second request")
        eventually(lambda: client.process_data_events(time_limit=0) or len(replies) == 2,
                   message="both replies")
        assert replies == {"call-3": b"9", "call-7": b"49"}
    finally:
        client.close()
        server.close()
