// amqplib (promise API) against the broker, using node's built-in test runner.
//   WARREN_URL=amqp://guest:guest@127.0.0.1:PORT/%2F node --test tests/interop/amqplib.test.mjs
// tests/run-interop.sh starts a broker and sets WARREN_URL. WARREN_URL_OVERRIDE is
// honoured too, so the file runs against a reference RabbitMQ unchanged.
// Routing checks publish on a confirm channel and await the confirm, so queues can be
// drained with get() immediately; other waits are polls against a deadline.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';

import amqp from 'amqplib';

const URL = process.env.WARREN_URL_OVERRIDE || process.env.WARREN_URL;
if (!URL) {
  throw new Error('set WARREN_URL (or WARREN_URL_OVERRIDE) to the broker url');
}

const unique = (prefix) => `interop.${prefix}.${randomUUID().slice(0, 12)}`;

async function eventually(fn, { timeout = 10_000, interval = 20, message = '' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = new Error(`falsy value: ${JSON.stringify(v)}`);
    } catch (err) {
      last = err;
    }
    if (Date.now() >= deadline) {
      throw new Error(`condition not met within ${timeout}ms ${message}: ${last?.message}`);
    }
    await delay(interval);
  }
}

// Resolve with the next n deliveries a consumer callback pushes.
function collector() {
  const items = [];
  return {
    items,
    push(x) {
      items.push(x);
    },
    async waitFor(n, timeout = 10_000) {
      await eventually(() => items.length >= n, { timeout, message: `waiting for ${n} deliveries` });
      return items.slice(0, n);
    },
  };
}

async function drain(ch, queue) {
  const bodies = [];
  for (;;) {
    const msg = await ch.get(queue, { noAck: true });
    if (msg === false) return bodies;
    bodies.push(msg.content.toString());
  }
}

describe('amqplib interop', () => {
  let conn;

  before(async () => {
    conn = await amqp.connect(URL);
    conn.on('error', (err) => {
      // Surface unexpected connection errors in the test output.
      console.error('connection error', err);
    });
  });

  after(async () => {
    await conn.close();
  });

  test('server properties advertise RabbitMQ capabilities', () => {
    const props = conn.connection.serverProperties;
    assert.equal(props.product, 'RabbitMQ');
    for (const cap of ['publisher_confirms', 'exchange_exchange_bindings', 'basic.nack',
      'consumer_cancel_notify', 'authentication_failure_close', 'per_consumer_qos']) {
      assert.equal(props.capabilities[cap], true, `capability ${cap}`);
    }
  });

  test('assertQueue / sendToQueue / consume / ack with properties', async () => {
    const ch = await conn.createChannel();
    const { queue, messageCount, consumerCount } = await ch.assertQueue('', { exclusive: true });
    assert.match(queue, /^amq\.gen-/);
    assert.equal(messageCount, 0);
    assert.equal(consumerCount, 0);

    const got = collector();
    const { consumerTag } = await ch.consume(queue, (msg) => {
      got.push(msg);
      ch.ack(msg);
    });
    assert.ok(consumerTag);

    const ok = ch.sendToQueue(queue, Buffer.from('hello from node'), {
      contentType: 'text/plain',
      contentEncoding: 'utf-8',
      headers: { 'x-num': 7, 'x-str': 'value', 'x-bool': false, 'x-nested': { a: 1 } },
      correlationId: 'corr-node',
      messageId: 'mid-1',
      replyTo: 'somewhere',
      persistent: true,
      priority: 1,
      timestamp: 1700000000,
      type: 'greeting',
      appId: 'interop-node',
    });
    assert.equal(ok, true);

    const [msg] = await got.waitFor(1);
    assert.equal(msg.content.toString(), 'hello from node');
    assert.equal(msg.fields.consumerTag, consumerTag);
    assert.equal(msg.fields.exchange, '');
    assert.equal(msg.fields.routingKey, queue);
    assert.equal(msg.fields.redelivered, false);
    const p = msg.properties;
    assert.equal(p.contentType, 'text/plain');
    assert.equal(p.contentEncoding, 'utf-8');
    assert.deepEqual(p.headers, { 'x-num': 7, 'x-str': 'value', 'x-bool': false, 'x-nested': { a: 1 } });
    assert.equal(p.correlationId, 'corr-node');
    assert.equal(p.messageId, 'mid-1');
    assert.equal(p.replyTo, 'somewhere');
    assert.equal(p.deliveryMode, 2);
    assert.equal(p.priority, 1);
    assert.equal(p.timestamp, 1700000000);
    assert.equal(p.type, 'greeting');
    assert.equal(p.appId, 'interop-node');

    await ch.cancel(consumerTag);
    const after = await ch.checkQueue(queue);
    assert.equal(after.messageCount, 0);
    assert.equal(after.consumerCount, 0);
    await ch.close();
  });

  test('confirm channel: waitForConfirms, per-message callbacks and mandatory return', async () => {
    const ch = await conn.createConfirmChannel();
    const { queue } = await ch.assertQueue('', { exclusive: true });
    const acked = [];
    const n = 50;
    for (let i = 0; i < n; i++) {
      ch.sendToQueue(queue, Buffer.from(`m${i}`), { persistent: true }, (err) => {
        acked.push(err ?? null);
      });
    }
    await ch.waitForConfirms();
    assert.equal(acked.length, n);
    assert.ok(acked.every((e) => e === null));
    assert.equal((await ch.checkQueue(queue)).messageCount, n);

    const returned = new Promise((resolve) => ch.once('return', resolve));
    const missing = unique('nowhere');
    ch.publish('', missing, Buffer.from('bounce'), { mandatory: true });
    await ch.waitForConfirms();
    const ret = await returned;
    assert.equal(ret.fields.replyCode, 312);
    assert.equal(ret.fields.replyText, 'NO_ROUTE');
    assert.equal(ret.fields.routingKey, missing);
    assert.equal(ret.content.toString(), 'bounce');
    await ch.close();
  });

  test('prefetch(1) holds back the second message until the first is acked', async () => {
    const ch = await conn.createChannel();
    const observer = await conn.createChannel();
    const { queue } = await ch.assertQueue('', { exclusive: true });
    ch.sendToQueue(queue, Buffer.from('m1'));
    ch.sendToQueue(queue, Buffer.from('m2'));
    await eventually(async () => (await observer.checkQueue(queue)).messageCount === 2);

    await ch.prefetch(1);
    const got = collector();
    await ch.consume(queue, (msg) => got.push(msg));
    const [first] = await got.waitFor(1);
    assert.equal(first.content.toString(), 'm1');
    // Round trips on both channels: a second delivery would have arrived by now.
    assert.equal((await observer.checkQueue(queue)).messageCount, 1);
    assert.equal((await ch.checkQueue(queue)).consumerCount, 1);
    assert.equal(got.items.length, 1);

    ch.ack(first);
    const [, second] = await got.waitFor(2);
    assert.equal(second.content.toString(), 'm2');
    assert.equal(second.fields.deliveryTag, first.fields.deliveryTag + 1);
    ch.ack(second);
    await eventually(async () => (await observer.checkQueue(queue)).messageCount === 0);
    await ch.close();
    await observer.close();
  });

  test('checkQueue on a missing queue rejects with 404 and closes the channel', async () => {
    const ch = await conn.createChannel();
    const channelErrors = [];
    ch.on('error', (err) => channelErrors.push(err));
    const closed = new Promise((resolve) => ch.once('close', resolve));
    const name = unique('missing');
    await assert.rejects(ch.checkQueue(name), (err) => {
      assert.equal(err.code, 404);
      assert.match(err.message, /NOT_FOUND - no queue/);
      assert.ok(err.message.includes(`NOT_FOUND - no queue '${name}' in vhost '/'`), err.message);
      return true;
    });
    await closed;
    assert.equal(channelErrors.length, 1);
    assert.equal(channelErrors[0].code, 404);
    // The connection survives a channel error.
    const ch2 = await conn.createChannel();
    const { queue } = await ch2.assertQueue('', { exclusive: true });
    assert.equal((await ch2.checkQueue(queue)).queue, queue);
    await ch2.close();
  });

  test('topic exchange routing with * and #', async () => {
    const ch = await conn.createConfirmChannel();
    const ex = unique('topic');
    await ch.assertExchange(ex, 'topic', { durable: false, autoDelete: true });
    const patterns = { star: 'a.*.c', hash: 'a.#', all: '#', second: '*.b' };
    const queues = {};
    for (const [label, pattern] of Object.entries(patterns)) {
      queues[label] = (await ch.assertQueue('', { exclusive: true })).queue;
      await ch.bindQueue(queues[label], ex, pattern);
    }
    const keys = ['a.b.c', 'a', 'x.b', 'a.b', 'a.b.c.d', 'a.x.c', 'b'];
    for (const key of keys) ch.publish(ex, key, Buffer.from(key));
    await ch.waitForConfirms();

    assert.deepEqual(await drain(ch, queues.star), ['a.b.c', 'a.x.c']);
    assert.deepEqual(await drain(ch, queues.hash), ['a.b.c', 'a', 'a.b', 'a.b.c.d', 'a.x.c']);
    assert.deepEqual(await drain(ch, queues.all), keys);
    assert.deepEqual(await drain(ch, queues.second), ['x.b', 'a.b']);

    await ch.unbindQueue(queues.star, ex, 'a.*.c');
    ch.publish(ex, 'a.b.c', Buffer.from('after-unbind'));
    await ch.waitForConfirms();
    assert.deepEqual(await drain(ch, queues.star), []);
    await ch.close();
  });

  test('get / nack requeue sets redelivered; get on empty queue is false', async () => {
    const ch = await conn.createConfirmChannel();
    const { queue } = await ch.assertQueue('', { exclusive: true });
    ch.sendToQueue(queue, Buffer.from('first'));
    ch.sendToQueue(queue, Buffer.from('second'));
    await ch.waitForConfirms();

    const m1 = await ch.get(queue);
    assert.notEqual(m1, false);
    assert.equal(m1.content.toString(), 'first');
    assert.equal(m1.fields.redelivered, false);
    assert.equal(m1.fields.messageCount, 1);

    ch.nack(m1, false, true);
    const again = await eventually(async () => {
      const m = await ch.get(queue);
      return m === false ? false : m;
    });
    assert.equal(again.content.toString(), 'first');
    assert.equal(again.fields.redelivered, true);
    ch.ack(again);

    const m2 = await ch.get(queue);
    assert.equal(m2.content.toString(), 'second');
    ch.nack(m2, false, false); // dropped
    assert.equal(await ch.get(queue), false);
    assert.equal((await ch.checkQueue(queue)).messageCount, 0);
    await ch.close();
  });

  test('deleting a queue cancels its consumer (consumer_cancel_notify)', async () => {
    const ch = await conn.createChannel();
    const admin = await conn.createChannel();
    const name = unique('cancel');
    await ch.assertQueue(name, { durable: false, autoDelete: false });
    const got = collector();
    await ch.consume(name, (msg) => got.push(msg)); // server cancel delivers null
    await admin.deleteQueue(name);
    const [msg] = await got.waitFor(1);
    assert.equal(msg, null);
    await ch.close();
    await admin.close();
  });
});
