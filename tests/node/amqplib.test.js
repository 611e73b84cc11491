// Behaviour tests with amqplib, the Node AMQP 0-9-1 client: connect,
// publisher confirms, consume and ack, update-secret, dead-lettering and
// exclusive-queue errors. Each also passes against RabbitMQ
// (WARREN_TEST_ADDR=127.0.0.1:5672 npm test), except where marked.
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const amqp = require('amqplib');

const { startBroker, waitFor, uniqueName } = require('./broker');

let broker;

before(async () => {
  broker = await startBroker();
});

after(async () => {
  const panics = await broker.stop();
  assert.deepEqual(panics, [], 'panic in the broker log');
});

// A connection that records its 'error' and 'close' events.
async function connect() {
  const conn = await amqp.connect(broker.url);
  conn.events = [];
  conn.on('error', (e) => conn.events.push(['error', e]));
  conn.on('close', (e) => conn.events.push(['close', e]));
  return conn;
}

test('connects and sees a RabbitMQ-compatible server', async () => {
  const conn = await connect();
  const props = conn.connection.serverProperties;
  assert.equal(props.product, 'RabbitMQ');
  assert.equal(props.capabilities.publisher_confirms, true);
  const ch = await conn.createChannel();
  const q = await ch.assertQueue('', { exclusive: true });
  assert.match(q.queue, /^amq\.gen-/);
  ch.sendToQueue(q.queue, Buffer.from('hello'), { headers: { 'x-app': 'node' } });
  let msg = false;
  assert.ok(await waitFor(async () => (msg = await ch.get(q.queue, { noAck: true }))));
  assert.equal(msg.content.toString(), 'hello');
  assert.equal(msg.properties.headers['x-app'], 'node');
  await conn.close();
});

test('publisher confirms for persistent messages on a durable queue', async () => {
  const conn = await connect();
  const ch = await conn.createConfirmChannel();
  const name = uniqueName('confirm');
  await ch.assertQueue(name, { durable: true });
  const acks = [];
  for (let i = 0; i < 200; i++) {
    ch.sendToQueue(name, Buffer.from(`m${i}`), { persistent: true }, (err) => acks.push(err));
  }
  await ch.waitForConfirms();
  assert.equal(acks.length, 200);
  assert.ok(acks.every((e) => e === null || e === undefined));
  assert.ok(await waitFor(async () => (await ch.checkQueue(name)).messageCount === 200));
  await ch.deleteQueue(name);
  await conn.close();
});

test('consume with prefetch, ack, and every message arrives once in order', async () => {
  const conn = await connect();
  const ch = await conn.createChannel();
  const name = uniqueName('consume');
  await ch.assertQueue(name, { exclusive: true });
  await ch.prefetch(10);
  const got = [];
  await ch.consume(name, (msg) => {
    got.push(msg.content.toString());
    ch.ack(msg);
  });
  for (let i = 0; i < 500; i++) ch.sendToQueue(name, Buffer.from(String(i)));
  assert.ok(await waitFor(() => got.length === 500));
  assert.deepEqual(got, Array.from({ length: 500 }, (_, i) => String(i)));
  assert.ok(await waitFor(async () => (await ch.checkQueue(name)).messageCount === 0));
  await conn.close();
});

test('update-secret with the right secret keeps the connection', async () => {
  const conn = await connect();
  await conn.updateSecret(Buffer.from('guest'), 'token refresh');
  const ch = await conn.createChannel();
  await ch.assertQueue('', { exclusive: true });
  assert.deepEqual(conn.events, []);
  await conn.close();
});

test('update-secret accepts any secret of an internal user, as RabbitMQ', async () => {
  const conn = await connect();
  // What amqplib's own suite sends.
  await conn.updateSecret(Buffer.from('new secret'), 'no reason');
  const ch = await conn.createChannel();
  const { queue } = await ch.assertQueue('', { exclusive: true });
  ch.sendToQueue(queue, Buffer.from('after'));
  let msg = false;
  assert.ok(await waitFor(async () => (msg = await ch.get(queue, { noAck: true }))));
  assert.equal(msg.content.toString(), 'after');
  assert.deepEqual(conn.events, []);
  await conn.close();
});

test('a dead-lettered message arrives from the dead-letter exchange', async () => {
  const conn = await connect();
  const ch = await conn.createChannel();
  const name = uniqueName('dl');
  const dlx = `${name}-dlx`;
  const dlq = `${name}-dlq`;
  await ch.assertExchange(dlx, 'direct', { autoDelete: true });
  await ch.assertQueue(dlq, { exclusive: true });
  await ch.bindQueue(dlq, dlx, 'dead');
  await ch.assertQueue(name, {
    exclusive: true,
    deadLetterExchange: dlx,
    deadLetterRoutingKey: 'dead',
  });
  ch.sendToQueue(name, Buffer.from('doomed'));
  let msg = false;
  assert.ok(await waitFor(async () => (msg = await ch.get(name))));
  ch.reject(msg, false);
  let dead = false;
  assert.ok(await waitFor(async () => (dead = await ch.get(dlq, { noAck: true }))));
  assert.equal(dead.content.toString(), 'doomed');
  assert.equal(dead.fields.exchange, dlx);
  assert.equal(dead.fields.routingKey, 'dead');
  const death = dead.properties.headers['x-death'][0];
  assert.equal(death.reason, 'rejected');
  assert.equal(death.queue, name);
  assert.equal(death.exchange, '');
  assert.deepEqual(death['routing-keys'], [name]);
  await conn.close();
});

test('an exclusive queue is locked for other connections (405), with a 255-octet name', async () => {
  const owner = await connect();
  const other = await connect();
  const name = `${uniqueName('excl')}-`.padEnd(255, 'x');
  const och = await owner.createChannel();
  await och.assertQueue(name, { exclusive: true });
  const ch = await other.createChannel();
  const closed = new Promise((resolve) => ch.on('error', resolve));
  await assert.rejects(ch.assertQueue(name), (err) => {
    assert.equal(err.code, 405);
    return true;
  });
  const err = await closed;
  assert.match(err.message, /RESOURCE_LOCKED - cannot obtain exclusive access to locked queue/);
  // The other connection is still open and works.
  const ch2 = await other.createChannel();
  await ch2.assertQueue('', { exclusive: true });
  assert.deepEqual(other.events, []);
  await other.close();
  await owner.close();
});

test('consuming from an exclusive queue of another connection is refused', async () => {
  const owner = await connect();
  const other = await connect();
  const name = uniqueName('excl-consume');
  await (await owner.createChannel()).assertQueue(name, { exclusive: true });
  const ch = await other.createChannel();
  ch.on('error', () => {});
  await assert.rejects(ch.consume(name, () => {}), (err) => {
    assert.equal(err.code, 405);
    return true;
  });
  await other.close();
  await owner.close();
});
