"""aio-pika (on aiormq/pamqp) against the broker: robust connection, iterator
consumption, and three request/reply styles:

* aio_pika.patterns.RPC. In aio-pika 10.x this does NOT use direct reply-to: the
  caller declares an auto-delete result queue (on a robust channel aio-pika names it
  itself, ``amq_<uuid>``), declares a headers
  exchange ``rpc.dlx`` (auto-delete) and binds the result queue to it with
  ``{"x-match": "any", "From": <result queue>}``; the callee's method queue is
  declared with ``x-dead-letter-exchange: rpc.dlx``; calls are published with
  ``mandatory=True``, ``priority`` and ``reply_to``/``correlation_id``; the result
  consumer is ``exclusive`` and ``no_ack``.
* classic RPC: exclusive server-named reply queue + reply_to + correlation_id.
* RabbitMQ direct reply-to (``amq.rabbitmq.reply-to``, a pseudo-queue). This one
  exercises a RabbitMQ extension explicitly; see rabbitmq-semantics.md §2.8.
"""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
from aio_pika import DeliveryMode, Message
from aio_pika.patterns import RPC

from conftest import unique

TIMEOUT = 15


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def _round_trip(url: str) -> None:
    connection = await aio_pika.connect_robust(url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=10)
        queue = await channel.declare_queue(unique("aio"), auto_delete=True)

        n = 5
        for i in range(n):
            await channel.default_exchange.publish(
                Message(
                    f"payload-{i}".encode(),
                    content_type="text/plain",
                    headers={"i": i, "tag": "aio"},
                    correlation_id=f"corr-{i}",
                    delivery_mode=DeliveryMode.PERSISTENT,
                ),
                routing_key=queue.name,
            )

        seen = []
        async with queue.iterator() as it:
            async for message in it:
                assert message.content_type == "text/plain"
                assert message.delivery_mode == DeliveryMode.PERSISTENT
                assert message.headers["tag"] == "aio"
                assert message.correlation_id == f"corr-{message.headers['i']}"
                assert message.redelivered is False
                seen.append(message.body.decode())
                await message.ack()
                if len(seen) == n:
                    break
        assert seen == [f"payload-{i}" for i in range(n)]

        # Everything acked: nothing ready, and the iterator's consumer is gone.
        declared = await channel.declare_queue(queue.name, passive=True)
        assert declared.declaration_result.message_count == 0
        assert declared.declaration_result.consumer_count == 0
        await queue.delete(if_unused=False, if_empty=False)


def test_aio_pika_robust_round_trip(broker):
    run(_round_trip(broker.url))


async def _rpc_pattern(url: str) -> None:
    server_conn = await aio_pika.connect_robust(url)
    client_conn = await aio_pika.connect_robust(url)
    async with server_conn, client_conn:
        method = unique("rpc-multiply")

        async def multiply(*, x: int, y: int) -> int:
            return x * y

        server = await RPC.create(await server_conn.channel())
        await server.register(method, multiply, auto_delete=True)

        client = await RPC.create(await client_conn.channel())
        assert await asyncio.wait_for(client.call(method, kwargs={"x": 6, "y": 7}), TIMEOUT) == 42
        results = await asyncio.wait_for(
            asyncio.gather(*(client.call(method, kwargs={"x": i, "y": i}) for i in range(10))),
            TIMEOUT,
        )
        assert results == [i * i for i in range(10)]

        await client.close()
        await server.close()


def test_aio_pika_rpc_pattern(broker):
    run(_rpc_pattern(broker.url))


async def _classic_rpc(url: str) -> None:
    server_conn = await aio_pika.connect_robust(url)
    # Plain (non-robust) connection: a robust channel names "anonymous" queues itself
    # (amq_<uuid>) so it can redeclare them after reconnecting; here we want the
    # broker to pick the name (queue.declare with queue="").
    client_conn = await aio_pika.connect(url)
    async with server_conn, client_conn:
        request_queue_name = unique("rpc-requests")

        # Server: consume requests, publish the reply to reply_to with the same correlation_id.
        s_channel = await server_conn.channel()
        requests = await s_channel.declare_queue(request_queue_name, auto_delete=True)

        async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                n = int(message.body)
                await s_channel.default_exchange.publish(
                    Message(str(n + 1).encode(), correlation_id=message.correlation_id),
                    routing_key=message.reply_to,
                )

        await requests.consume(handle)

        # Client: exclusive server-named callback queue.
        c_channel = await client_conn.channel()
        callback_queue = await c_channel.declare_queue(exclusive=True)
        assert callback_queue.name.startswith("amq.gen-")
        loop = asyncio.get_running_loop()
        pending: dict[str, asyncio.Future] = {}

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            fut = pending.pop(message.correlation_id, None)
            if fut is not None and not fut.done():
                fut.set_result(int(message.body))

        await callback_queue.consume(on_reply, no_ack=True)

        async def call(n: int) -> int:
            cid = str(uuid.uuid4())
            pending[cid] = loop.create_future()
            await c_channel.default_exchange.publish(
                Message(str(n).encode(), correlation_id=cid, reply_to=callback_queue.name),
                routing_key=request_queue_name,
            )
            return await asyncio.wait_for(pending[cid], TIMEOUT)

        assert await call(1) == 2
        assert await asyncio.gather(*(call(i) for i in range(20))) == [i + 1 for i in range(20)]
        assert pending == {}


def test_aio_pika_classic_rpc_reply_queue(broker):
    run(_classic_rpc(broker.url))


async def _direct_reply_to(url: str) -> None:
    # RabbitMQ extension: direct reply-to. The requester consumes the pseudo-queue
    # amq.rabbitmq.reply-to (no declare, no_ack=True) and publishes with
    # reply_to="amq.rabbitmq.reply-to" ON THE SAME CHANNEL; the broker rewrites
    # reply_to to amq.rabbitmq.reply-to.<token>, and a publish to that name through
    # the default exchange goes straight to the requester's consumer.
    server_conn = await aio_pika.connect_robust(url)
    client_conn = await aio_pika.connect_robust(url)
    async with server_conn, client_conn:
        request_queue_name = unique("drt-requests")
        s_channel = await server_conn.channel()
        requests = await s_channel.declare_queue(request_queue_name, auto_delete=True)
        seen_reply_to: list[str] = []

        async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                seen_reply_to.append(message.reply_to)
                await s_channel.default_exchange.publish(
                    Message(message.body.upper(), correlation_id=message.correlation_id),
                    routing_key=message.reply_to,
                )

        await requests.consume(handle)

        c_channel = await client_conn.channel()
        reply_queue = await c_channel.get_queue("amq.rabbitmq.reply-to", ensure=False)
        got: asyncio.Future = asyncio.get_running_loop().create_future()

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            if not got.done():
                got.set_result(message)

        await reply_queue.consume(on_reply, no_ack=True)
        await c_channel.default_exchange.publish(
            Message(b"shout", correlation_id="drt-1", reply_to="amq.rabbitmq.reply-to"),
            routing_key=request_queue_name,
        )
        reply = await asyncio.wait_for(got, TIMEOUT)
        assert reply.body == b"SHOUT"
        assert reply.correlation_id == "drt-1"
        assert seen_reply_to and seen_reply_to[0].startswith("amq.rabbitmq.reply-to.")


def test_aio_pika_direct_reply_to(broker):
    run(_direct_reply_to(broker.url))
