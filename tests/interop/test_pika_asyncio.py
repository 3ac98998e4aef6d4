"""pika's callback-style AsyncioConnection adapter, bridged to asyncio futures."""

from __future__ import annotations

import asyncio

import pika
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.spec import Basic, BasicProperties

TIMEOUT = 15


class Client:
    """Minimal promise layer over pika's callback API."""

    def __init__(self, url: str):
        self.url = url
        self.loop = asyncio.get_running_loop()
        self.conn: AsyncioConnection | None = None
        self.closed = self.loop.create_future()

    def _settle(self, fut: asyncio.Future, value=None, exc: BaseException | None = None):
        if not fut.done():
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(value)

    async def open(self) -> None:
        opened = self.loop.create_future()
        self.conn = AsyncioConnection(
            pika.URLParameters(self.url),
            on_open_callback=lambda c: self._settle(opened, c),
            on_open_error_callback=lambda c, err: self._settle(
                opened, exc=err if isinstance(err, BaseException) else RuntimeError(str(err))),
            on_close_callback=lambda c, reason: self._settle(self.closed, reason),
            custom_ioloop=self.loop,
        )
        await asyncio.wait_for(opened, TIMEOUT)

    async def channel(self):
        fut = self.loop.create_future()
        self.conn.channel(on_open_callback=lambda ch: self._settle(fut, ch))
        return await asyncio.wait_for(fut, TIMEOUT)

    async def call(self, fn, *args, **kwargs):
        """Invoke a pika method that takes a ``callback=`` and await that callback."""
        fut = self.loop.create_future()
        fn(*args, callback=lambda frame: self._settle(fut, frame), **kwargs)
        return await asyncio.wait_for(fut, TIMEOUT)

    async def close(self) -> None:
        if self.conn is not None and not (self.conn.is_closed or self.conn.is_closing):
            self.conn.close()
        await asyncio.wait_for(self.closed, TIMEOUT)


async def _round_trip(url: str) -> None:
    client = Client(url)
    await client.open()
    try:
        ch = await client.channel()
        ok = await client.call(ch.queue_declare, "", exclusive=True)
        queue = ok.method.queue
        assert queue.startswith("amq.gen-")

        got = client.loop.create_future()

        def on_message(channel, method, properties, body):
            channel.basic_ack(method.delivery_tag)
            client._settle(got, (method, properties, body))

        consume_ok = client.loop.create_future()
        tag = ch.basic_consume(queue, on_message,
                               callback=lambda frame: client._settle(consume_ok, frame))
        frame = await asyncio.wait_for(consume_ok, TIMEOUT)
        assert frame.method.consumer_tag == tag

        ch.basic_publish("", queue, b"async-hello",
                         BasicProperties(content_type="text/plain", correlation_id="c-1",
                                         headers={"n": 1}))
        method, props, body = await asyncio.wait_for(got, TIMEOUT)
        assert body == b"async-hello"
        assert method.routing_key == queue
        assert props.content_type == "text/plain"
        assert props.correlation_id == "c-1"
        assert props.headers == {"n": 1}

        cancel = await client.call(ch.basic_cancel, tag)
        assert cancel.method.consumer_tag == tag
        declared = await client.call(ch.queue_declare, queue, passive=True)
        assert declared.method.message_count == 0
        assert declared.method.consumer_count == 0
    finally:
        await client.close()


async def _confirm(url: str) -> None:
    client = Client(url)
    await client.open()
    try:
        ch = await client.channel()
        queue = (await client.call(ch.queue_declare, "", exclusive=True)).method.queue

        confirms: list = []
        all_confirmed = client.loop.create_future()
        returned = client.loop.create_future()
        n = 20

        def on_confirm(frame):
            confirms.append(frame.method)
            if max(m.delivery_tag for m in confirms) >= n + 1:
                client._settle(all_confirmed)

        ch.add_on_return_callback(lambda c, method, props, body: client._settle(returned, (method, body)))
        await client.call(ch.confirm_delivery, on_confirm)
        for i in range(n):
            ch.basic_publish("", queue, f"m{i}".encode())
        ch.basic_publish("", "interop.no-such-queue-for-asyncio", b"bounce", mandatory=True)
        await asyncio.wait_for(all_confirmed, TIMEOUT)

        assert all(isinstance(m, Basic.Ack) for m in confirms), confirms
        # Confirms cover tags 1..n+1 exactly once (possibly aggregated with multiple=True).
        covered: set[int] = set()
        last = 0
        for m in sorted(confirms, key=lambda m: m.delivery_tag):
            if m.multiple:
                covered.update(range(last + 1, m.delivery_tag + 1))
            else:
                covered.add(m.delivery_tag)
            last = max(last, m.delivery_tag)
        assert covered == set(range(1, n + 2))

        method, body = await asyncio.wait_for(returned, TIMEOUT)
        assert method.reply_code == 312 and method.reply_text == "NO_ROUTE"
        assert body == b"bounce"

        declared = await client.call(ch.queue_declare, queue, passive=True)
        assert declared.method.message_count == n
    finally:
        await client.close()


def test_asyncio_publish_consume_round_trip(broker):
    asyncio.run(_round_trip(broker.url))


def test_asyncio_publisher_confirms(broker):
    asyncio.run(_confirm(broker.url))
