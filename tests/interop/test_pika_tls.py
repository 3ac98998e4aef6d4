"""pika over AMQPS (an ``ssl.SSLContext`` as users write it) and the
management API over HTTPS, against a Warren started with TLS material from a
throwaway CA. The broker verifies client certificates when they are offered."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.request

import pika
import pytest

from conftest import eventually, unique


def _params(tls, context: ssl.SSLContext) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host="127.0.0.1",
        port=tls.broker.amqps_port,
        credentials=pika.PlainCredentials("guest", "guest"),
        ssl_options=pika.SSLOptions(context, "localhost"),
    )


def _https_json(tls, path: str):
    context = ssl.create_default_context(cafile=str(tls.ca_file))
    req = urllib.request.Request(f"https://localhost:{tls.broker.mgmt_port}{path}")
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(req, context=context, timeout=10) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def test_pika_publishes_with_confirms_and_consumes_over_amqps(tls_broker):
    context = ssl.create_default_context(cafile=str(tls_broker.ca_file))
    conn = pika.BlockingConnection(_params(tls_broker, context))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        q = unique("tls")
        ch.queue_declare(q, auto_delete=True)
        for i in range(50):
            ch.basic_publish("", q, f"m{i}".encode(), mandatory=True)  # raises unless confirmed
        got = []
        for method, _props, body in ch.consume(q, inactivity_timeout=5):
            assert method is not None, f"only {len(got)} of 50 arrived"
            ch.basic_ack(method.delivery_tag)
            got.append(body.decode())
            if len(got) == 50:
                break
        ch.cancel()
        assert got == [f"m{i}" for i in range(50)]
        # Management (over HTTPS) shows the connection as TLS.
        conns = eventually(lambda: [c for c in _https_json(tls_broker, "/api/connections") if c["ssl"]],
                           message="a TLS connection listed")
        assert conns[0]["ssl_protocol"].startswith("tlsv1.")
    finally:
        conn.close()


def test_pika_with_a_client_certificate(tls_broker):
    context = ssl.create_default_context(cafile=str(tls_broker.ca_file))
    client = tls_broker.ca.issue_cert("warren-interop-client")
    client.configure_cert(context)
    conn = pika.BlockingConnection(_params(tls_broker, context))
    try:
        ch = conn.channel()
        q = unique("tls-client-cert")
        ch.queue_declare(q, auto_delete=True)
        ch.basic_publish("", q, b"with a client certificate")
        method, _props, body = ch.basic_get(q, auto_ack=True)
        assert body == b"with a client certificate"
    finally:
        conn.close()


def test_a_certificate_from_another_ca_is_refused(tls_broker):
    import trustme

    context = ssl.create_default_context(cafile=str(tls_broker.ca_file))
    trustme.CA().issue_cert("stranger").configure_cert(context)
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(_params(tls_broker, context))
