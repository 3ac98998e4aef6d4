"""Access control and policies as a pika worker meets them: an operator grants a
user narrow permissions and sets a dead-lettering policy over the management
API (plain HTTP, as scripts do), then the worker's publishes and consumes see
RabbitMQ's refusals and the policy's effects."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import pika
import pika.exceptions
import pytest

from conftest import eventually, unique


def api(broker, method: str, path: str, body=None, auth=("guest", "guest")):
    if broker.mgmt_port is None:
        pytest.skip("no management port for this broker")
    req = urllib.request.Request(
        f"http://{broker.host}:{broker.mgmt_port}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json",
                 "authorization": "Basic " + base64.b64encode(":".join(auth).encode()).decode()},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, (json.loads(raw) if raw else None)


def test_narrow_permissions_refuse_with_rabbitmq_texts(broker):
    user = unique("worker")
    assert api(broker, "PUT", f"/api/users/{user}", {"password": "pw", "tags": ""})[0] == 201
    # Unanchored, as RabbitMQ matches: "pw-" anywhere in the name.
    perms = {"configure": "pw-", "write": "pw-", "read": "pw-"}
    assert api(broker, "PUT", f"/api/permissions/%2F/{user}", perms)[0] == 201
    params = pika.URLParameters(broker.url)
    params.credentials = pika.PlainCredentials(user, "pw")
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        q = ch.queue_declare(queue=unique("pw-q")).method.queue
        ch.exchange_declare(exchange=unique("pw-x"), exchange_type="fanout")
        other = unique("other")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            ch.queue_declare(queue=other)
        assert refused.value.reply_code == 403
        assert refused.value.reply_text.startswith(f"ACCESS_REFUSED - configure access to queue '{other}'")
        assert refused.value.reply_text.endswith(f"in vhost '/' refused for user '{user}'")
        ch = conn.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            ch.basic_publish(exchange="", routing_key=q, body=b"x")
        assert (refused.value.reply_code, refused.value.reply_text) == (
            403, f"ACCESS_REFUSED - write access to exchange 'amq.default' in vhost '/' refused for user '{user}'")
    finally:
        if conn.is_open:
            conn.close()
        api(broker, "DELETE", f"/api/users/{user}")


def test_a_policy_dead_letters_expired_messages_with_x_death(broker):
    work, dead, name = unique("pol-work"), unique("pol-dead"), unique("pol")
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        ch = conn.channel()
        ch.queue_declare(queue=work)
        ch.queue_declare(queue=dead)
        policy = {"pattern": f"^{work}$", "apply-to": "queues",
                  "definition": {"message-ttl": 30, "dead-letter-exchange": "",
                                 "dead-letter-routing-key": dead}}
        assert api(broker, "PUT", f"/api/policies/%2F/{name}", policy)[0] == 201
        status, q = api(broker, "GET", f"/api/queues/%2F/{work}")
        assert status == 200 and q["policy"] == name
        ch.confirm_delivery()
        ch.basic_publish(exchange="", routing_key=work, body=b"late",
                         properties=pika.BasicProperties(message_id="m1"))

        def dead_lettered():
            method, props, body = ch.basic_get(dead, auto_ack=True)
            return (method, props, body) if method else None

        _method, props, body = eventually(dead_lettered, message="the expired message reaches the DLQ")
        assert body == b"late" and props.message_id == "m1"
        death = props.headers["x-death"][0]
        assert (death["reason"], death["queue"], death["count"]) == ("expired", work, 1)
        assert death["routing-keys"] == [work]
        assert props.headers["x-first-death-reason"] == "expired"
    finally:
        api(broker, "DELETE", f"/api/policies/%2F/{name}")
        if conn.is_open:
            conn.close()
