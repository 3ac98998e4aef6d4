// Headless-browser tests of Warren's management web UI.
//
// Starts the real broker binary (WARREN_BIN, default <repo>/target/debug/warren) on
// ephemeral ports with a fresh data directory, drives Debian's Chromium (CHROMIUM, default
// /usr/bin/chromium) through playwright-core, and checks what the UI shows against what
// the broker does (over AMQP with amqplib and over the management API).
// Full-page screenshots of every page land in tests/ui/screenshots/.
//
//   node --test tests/ui/ui.test.mjs        (or tests/run-ui.sh)
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import amqp from 'amqplib';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..', '..');
const WARREN_BIN = process.env.WARREN_BIN || path.join(ROOT, 'target', 'debug', 'warren');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOTS = path.join(HERE, 'screenshots');
const PORTS_DEADLINE_MS = 20_000;
const STOP_DEADLINE_MS = 10_000;
const UI_TIMEOUT_MS = 15_000;
const TEST_TIMEOUT_MS = 90_000;

const RUN = Math.random().toString(36).slice(2, 8);
const QUEUE = `ui-test-queue-${RUN}`;
const AMQP_PAYLOAD = `hello from amqplib ${RUN}`;
const UI_PAYLOAD = `hello from the UI ${RUN}`;

let broker; // { child, dir, log, ports }
let browser;
let page;
let base;
let amqpConn; // kept open so the Connections and Channels pages have something to show

// ------------------------------------------------------------------ helpers

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function brokerLogTail(bytes = 6000) {
  try {
    const text = fs.readFileSync(broker.log, 'utf8');
    return text.slice(-bytes);
  } catch {
    return '(no broker log)';
  }
}

async function startBroker() {
  assert.ok(fs.existsSync(WARREN_BIN), `broker binary ${WARREN_BIN} not found: build it with \`cargo build --bin warren\` or set WARREN_BIN`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'warren-ui-'));
  const dataDir = path.join(dir, 'data');
  fs.mkdirSync(dataDir);
  const portsFile = path.join(dir, 'ports.json');
  const log = path.join(dir, 'warren.log');
  const out = fs.openSync(log, 'w');
  const child = spawn(WARREN_BIN, [
    '--amqp-port', '0', '--mgmt-port', '0', '--metrics-port', '0',
    '--data-dir', dataDir, '--ports-file', portsFile,
  ], { stdio: ['ignore', out, out] });
  fs.closeSync(out);
  let exited = null;
  child.on('exit', (code, signal) => { exited = { code, signal }; });
  broker = { child, dir, log, ports: null, exited: () => exited };

  const deadline = Date.now() + PORTS_DEADLINE_MS;
  for (;;) {
    if (exited) throw new Error(`warren exited during startup (${JSON.stringify(exited)}):\n${brokerLogTail()}`);
    try {
      const p = JSON.parse(fs.readFileSync(portsFile, 'utf8'));
      if ([p.amqp, p.mgmt, p.metrics].every((n) => Number.isInteger(n) && n > 0)) {
        broker.ports = p;
        return;
      }
    } catch {
      // not written yet (or half written): keep polling until the deadline
    }
    if (Date.now() > deadline) throw new Error(`warren wrote no valid ports file within ${PORTS_DEADLINE_MS} ms:\n${brokerLogTail()}`);
    await sleep(25);
  }
}

async function stopBroker() {
  if (!broker) return;
  const { child } = broker;
  if (!broker.exited()) {
    const gone = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), STOP_DEADLINE_MS);
    await gone;
    clearTimeout(t);
  }
  if (process.env.KEEP_BROKER_DIR) console.log(`broker directory kept: ${broker.dir}`);
  else fs.rmSync(broker.dir, { recursive: true, force: true });
}

const amqpUrl = () => `amqp://guest:guest@127.0.0.1:${broker.ports.amqp}/%2F`;

/** The management API as guest, from the test (not the browser). */
async function mgmt(method, apiPath, body) {
  const res = await fetch(`${base}${apiPath}`, {
    method,
    headers: {
      Authorization: `Basic ${Buffer.from('guest:guest').toString('base64')}`,
      ...(body === undefined ? {} : { 'Content-Type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  return { status: res.status, data };
}

/** Polls fn until it returns a truthy value, or fails with the last value after the deadline. */
async function eventually(what, fn, timeoutMs = UI_TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}; last value: ${JSON.stringify(last)}`);
    await sleep(100);
  }
}

async function shot(name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

/** Opens a page by its hash and waits until the app has rendered that route. */
async function go(hash) {
  await page.goto(`${base}/${hash}`);
  await page.waitForFunction((h) => document.getElementById('page').dataset.hash === h, hash, { timeout: UI_TIMEOUT_MS });
  await page.locator('#page h1').first().waitFor();
}

const waitHeading = (text) => waitText(page.locator('#page h1').first(), text);
const row = (testid, attrs) => page.locator(`[data-testid="${testid}"]${Object.entries(attrs).map(([k, v]) => `[data-${k}="${v}"]`).join('')}`);
const cell = (rowLocator, col) => rowLocator.locator(`td[data-col="${col}"]`);

/** Waits until the locator's trimmed text is `expected` (tables re-render, so it re-queries). */
async function waitText(locator, expected, timeoutMs = UI_TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  let got;
  for (;;) {
    got = await locator.textContent({ timeout: Math.max(1, deadline - Date.now()) }).catch(() => null);
    if (got !== null && got.trim() === expected) return;
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for text "${expected}"; last: ${JSON.stringify(got && got.trim())}`);
    await sleep(100);
  }
}

async function expectNoErrors() {
  const errors = await page.locator('[data-testid="message-error"]').allTextContents();
  assert.deepEqual(errors, [], `the UI reported errors: ${errors.join(' | ')}`);
}

async function expectOk(text) {
  await page.locator('[data-testid="message-ok"]', { hasText: text }).first().waitFor({ timeout: UI_TIMEOUT_MS });
}

/** test() that attaches a screenshot and the broker log tail to failures. */
function uiTest(name, fn) {
  test(name, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    try {
      await fn(t);
    } catch (e) {
      const file = `FAILED-${name.replace(/[^a-z0-9]+/gi, '-').toLowerCase()}`;
      if (page) await shot(file).catch(() => {});
      const errs = page ? await page.locator('[data-testid="message-error"]').allTextContents().catch(() => []) : [];
      e.message += `\n(screenshot: tests/ui/screenshots/${file}.png)`;
      if (errs.length) e.message += `\nUI error messages: ${errs.join(' | ')}`;
      if (broker && broker.exited()) e.message += `\nwarren exited: ${JSON.stringify(broker.exited())}\n${brokerLogTail()}`;
      throw e;
    }
  });
}

// ------------------------------------------------------------------ setup

before(async () => {
  fs.rmSync(SHOTS, { recursive: true, force: true });
  fs.mkdirSync(SHOTS, { recursive: true });
  await startBroker();
  base = `http://127.0.0.1:${broker.ports.mgmt}`;
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 }, acceptDownloads: true });
  page = await context.newPage();
  page.setDefaultTimeout(UI_TIMEOUT_MS);
  page.on('dialog', (d) => d.accept()); // confirm() before deleting/closing things
  page.on('pageerror', (e) => console.error(`browser page error: ${e.message}`));
  amqpConn = await amqp.connect(amqpUrl(), { clientProperties: { connection_name: `ui-test-${RUN}` } });
});

after(async () => {
  if (amqpConn) await amqpConn.close().catch(() => {});
  if (browser) await browser.close().catch(() => {});
  await stopBroker();
});

// ------------------------------------------------------------------ tests

uiTest('serves the UI files at /, /app.js and /app.css', async () => {
  for (const [p, file, type] of [['/', 'index.html', 'text/html'], ['/app.js', 'app.js', 'javascript'], ['/app.css', 'app.css', 'text/css']]) {
    const res = await fetch(`${base}${p}`);
    assert.equal(res.status, 200, `GET ${p}`);
    assert.match(res.headers.get('content-type') || '', new RegExp(type), `content-type of ${p}`);
    const served = await res.text();
    const onDisk = fs.readFileSync(path.join(ROOT, 'static', file), 'utf8');
    assert.ok(served === onDisk, `GET ${p} is not static/${file} as it is on disk (${served.length} vs ${onDisk.length} chars): the UI is compiled into the broker, rebuild ${WARREN_BIN}`);
  }
  const html = await (await fetch(`${base}/`)).text();
  assert.match(html, /<script src="\/app\.js"/);
  assert.match(html, /<link rel="stylesheet" href="\/app\.css">/);
});

uiTest('logs in with guest/guest (and refuses a wrong password)', async () => {
  await page.goto(`${base}/`);
  await page.locator('#login-form').waitFor();
  assert.equal(await page.locator('#mainnav').isVisible(), false, 'navigation hidden before login');
  await shot('login');

  await page.fill('#login-username', 'guest');
  await page.fill('#login-password', 'not-the-password');
  await page.click('#login-submit');
  await page.locator('[data-testid="message-error"]', { hasText: 'Login failed' }).waitFor();
  assert.equal(await page.locator('#login-view').isVisible(), true, 'still on the login screen');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('warren.auth')), null);

  await page.fill('#login-username', 'guest');
  await page.fill('#login-password', 'guest');
  await page.click('#login-submit');
  await page.locator('#mainnav').waitFor();
  assert.equal(await page.locator('#login-view').isVisible(), false);
  assert.equal((await page.locator('#current-user').textContent()).trim(), 'guest');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('warren.auth')), Buffer.from('guest:guest').toString('base64'));
  await waitHeading('Overview');
  // The overview shows the broker's totals.
  const { data: overview } = await mgmt('GET', '/api/overview');
  await waitText(page.locator('[data-testid="total-exchanges"] .card-value'), String(overview.object_totals.exchanges));
  assert.equal(await page.locator('[data-testid="message-error"]').count(), 0);

  // A reload keeps the session (sessionStorage), logout ends it.
  await page.reload();
  await page.locator('#mainnav').waitFor();
  await page.click('#logout');
  await page.locator('#login-form').waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem('warren.auth')), null);
  await page.fill('#login-username', 'guest');
  await page.fill('#login-password', 'guest');
  await page.click('#login-submit');
  await page.locator('#mainnav').waitFor();
});

uiTest('a durable queue declared and published to over AMQP appears on the Queues page', async () => {
  await go('#/queues');
  await waitHeading('Queues');
  const qrow = row('queue-row', { name: QUEUE, vhost: '/' });
  assert.equal(await qrow.count(), 0);

  // Declared after the page loaded: it must show up through the page's own refresh.
  const ch = await amqpConn.createConfirmChannel();
  await ch.assertQueue(QUEUE, { durable: true });
  ch.sendToQueue(QUEUE, Buffer.from(AMQP_PAYLOAD), { persistent: true, contentType: 'text/plain', headers: { 'x-origin': 'amqplib' } });
  await ch.waitForConfirms();
  await ch.close();

  await qrow.waitFor();
  await waitText(cell(qrow, 'ready'), '1');
  assert.equal((await cell(qrow, 'total').textContent()).trim(), '1');
  assert.equal((await cell(qrow, 'unacked').textContent()).trim(), '0');
  assert.equal((await cell(qrow, 'consumers').textContent()).trim(), '0');
  assert.equal((await cell(qrow, 'state').textContent()).trim(), 'running');
  assert.match(await cell(qrow, 'features').textContent(), /\bD\b/, 'durable flag shown');
  await expectNoErrors();
});

uiTest('publishes and gets messages on the queue page', async () => {
  await go('#/queues');
  await row('queue-row', { name: QUEUE }).locator('a').click();
  await page.waitForURL(`**/#/queues/%2F/${QUEUE}`);
  await waitHeading(`Queue ${QUEUE}`);
  // The implicit default-exchange binding is listed.
  await row('binding-row', { source: '', 'routing-key': QUEUE }).waitFor();

  await page.fill('#publish-payload', UI_PAYLOAD);
  await page.selectOption('#publish-delivery-mode', '2');
  await page.fill('#publish-properties', '{"content_type": "text/plain", "correlation_id": "ui-corr"}');
  await page.click('#publish-submit');
  await expectOk('Message published and routed.');
  const count = (key) => page.locator(`[data-testid="queue-counts"] tr[data-key="${key}"] td[data-col="value"]`);
  await waitText(count('ready'), '2');
  // Both are persistent (delivery mode 2 in a durable queue); neither was
  // paged out of memory.
  await waitText(count('persistent'), '2');
  assert.equal((await count('paged').textContent()).trim(), '0');

  // Get one and requeue it: the queue still holds both.
  await page.selectOption('#get-ackmode', 'ack_requeue_true');
  await page.fill('#get-count', '1');
  await page.click('#get-submit');
  const msgs = page.locator('[data-testid="get-message"]');
  await msgs.first().waitFor();
  assert.equal(await msgs.count(), 1);
  assert.equal((await msgs.first().locator('[data-testid="get-message-payload"]').textContent()), AMQP_PAYLOAD);
  const first = await msgs.first().textContent();
  assert.match(first, /text\/plain/, 'content_type property shown');
  assert.match(first, /x-origin/, 'headers shown');
  assert.match(first, /amqplib/);
  assert.equal((await mgmt('GET', `/api/queues/%2F/${QUEUE}`)).data.messages, 2);

  // Get both with automatic ack: both payloads shown and the queue is empty afterwards.
  await page.selectOption('#get-ackmode', 'ack_requeue_false');
  await page.fill('#get-count', '5');
  await page.click('#get-submit');
  await page.locator('[data-testid="get-message-payload"]', { hasText: UI_PAYLOAD }).waitFor();
  const payloads = await page.locator('[data-testid="get-message-payload"]').allTextContents();
  assert.deepEqual(payloads, [AMQP_PAYLOAD, UI_PAYLOAD]);
  const all = await page.locator('[data-testid="get-message"]').allTextContents();
  assert.match(all[0], /Redelivered\s*yes/, 'the requeued message comes back redelivered');
  assert.match(all[1], /Redelivered\s*no/);
  assert.match(all[1], /correlation_id\s*ui-corr/);
  assert.match(all[1], /delivery_mode\s*2/);
  await eventually('the queue to be empty', async () => (await mgmt('GET', `/api/queues/%2F/${QUEUE}`)).data.messages === 0);
  await waitText(count('ready'), '0');
  await waitText(count('total'), '0');

  // And an empty queue says so.
  await page.click('#get-submit');
  await page.locator('[data-testid="get-empty"]').waitFor();
  await expectNoErrors();
  await shot('queue-detail');
});

uiTest('binds the queue to an exchange, publishes through it, unbinds', async () => {
  await go(`#/queues/%2F/${encodeURIComponent(QUEUE)}`);
  await page.fill('#binding-add-exchange', 'amq.direct');
  await page.fill('#binding-add-routing-key', `rk-${RUN}`);
  await page.click('#binding-add-submit');
  const brow = row('binding-row', { source: 'amq.direct', 'routing-key': `rk-${RUN}` });
  await brow.waitFor();
  const { data: bindings } = await mgmt('GET', `/api/queues/%2F/${QUEUE}/bindings`);
  assert.ok(bindings.some((b) => b.source === 'amq.direct' && b.routing_key === `rk-${RUN}`), JSON.stringify(bindings));

  // The exchange's page lists the binding and routes a message published there.
  await go('#/exchanges/%2F/amq.direct');
  await waitHeading('Exchange amq.direct');
  await row('binding-row', { destination: QUEUE }).waitFor();
  await page.fill('#exchange-publish-routing-key', `rk-${RUN}`);
  await page.fill('#exchange-publish-payload', 'via amq.direct');
  await page.click('#exchange-publish-submit');
  await expectOk('Message published and routed.');
  await page.fill('#exchange-publish-routing-key', `nowhere-${RUN}`);
  await page.click('#exchange-publish-submit');
  await expectOk('Message published, but not routed.');
  await eventually('the routed message in the queue', async () => (await mgmt('GET', `/api/queues/%2F/${QUEUE}`)).data.messages === 1);
  await expectNoErrors();
  await shot('exchange-detail');

  // Unbind from the queue page, then purge.
  await go(`#/queues/%2F/${encodeURIComponent(QUEUE)}`);
  await brow.locator('[data-testid="binding-unbind"]').click();
  await brow.waitFor({ state: 'detached' });
  const after = (await mgmt('GET', `/api/queues/%2F/${QUEUE}/bindings`)).data;
  assert.ok(!after.some((b) => b.source === 'amq.direct'), JSON.stringify(after));
  await page.click('#queue-purge');
  await expectOk(`Queue ${QUEUE} purged.`);
  assert.equal((await mgmt('GET', `/api/queues/%2F/${QUEUE}`)).data.messages, 0);
  await expectNoErrors();
});

uiTest('creates a user on the Users page, lists it, deletes it', async () => {
  const user = `ui-user-${RUN}`;
  await go('#/users');
  await waitHeading('Users');
  await row('user-row', { name: 'guest' }).waitFor();
  assert.equal(await row('user-row', { name: user }).count(), 0);

  await page.fill('#user-add-name', user);
  await page.fill('#user-add-password', 's3cret-pw');
  await page.fill('#user-add-tags', 'monitoring');
  await page.click('#user-add-submit');
  const urow = row('user-row', { name: user });
  await urow.waitFor();
  assert.equal((await cell(urow, 'tags').textContent()).trim(), 'monitoring');
  assert.equal((await cell(urow, 'can-access-virtual-hosts').textContent()).trim(), 'No access');
  const created = await mgmt('GET', `/api/users/${encodeURIComponent(user)}`);
  assert.equal(created.status, 200);
  assert.deepEqual(created.data.tags, ['monitoring']);
  // The password set in the form works.
  const who = await fetch(`${base}/api/whoami`, { headers: { Authorization: `Basic ${Buffer.from(`${user}:s3cret-pw`).toString('base64')}` } });
  assert.equal(who.status, 200);

  // Give it permissions in / through the form; the row shows the vhost.
  await page.selectOption('#permission-user', user);
  await page.selectOption('#permission-vhost', '/');
  await page.fill('#permission-configure', '^ui-');
  await page.click('#permission-submit');
  const prow = row('permission-row', { user, vhost: '/' });
  await prow.waitFor();
  assert.equal((await cell(prow, 'configure').textContent()).trim(), '^ui-');
  await waitText(cell(urow, 'can-access-virtual-hosts'), '/');
  const perm = await mgmt('GET', `/api/permissions/%2F/${encodeURIComponent(user)}`);
  assert.equal(perm.status, 200);
  assert.deepEqual({ c: perm.data.configure, w: perm.data.write, r: perm.data.read }, { c: '^ui-', w: '.*', r: '.*' });
  await shot('users');

  await urow.locator('[data-testid="user-delete"]').click();
  await urow.waitFor({ state: 'detached' });
  await expectOk(`User ${user} deleted.`);
  assert.equal((await mgmt('GET', `/api/users/${encodeURIComponent(user)}`)).status, 404);
  await row('user-row', { name: 'guest' }).waitFor();
  await expectNoErrors();
});

uiTest('every page renders without errors (screenshots of each)', async () => {
  // Overview: totals, and the charts draw once a few polls have gone by.
  await go('#/');
  await waitHeading('Overview');
  await page.locator('[data-testid="total-queues"]').waitFor();
  const { data: ov } = await mgmt('GET', '/api/overview');
  await waitText(page.locator('[data-testid="total-queues"] .card-value'), String(ov.object_totals.queues));
  // Rates come from counter deltas between two polls: publishing shows up as a non-zero rate,
  // and the queued messages in the depth chart's legend and as a line in its first colour.
  await page.waitForFunction(() => document.querySelector('[data-testid="chart-rates-publish"]')?.textContent.endsWith('/s'), null, { timeout: UI_TIMEOUT_MS });
  const pubCh = await amqpConn.createConfirmChannel();
  for (let i = 0; i < 20; i++) pubCh.sendToQueue(QUEUE, Buffer.from(`chart ${i}`));
  await pubCh.waitForConfirms();
  await pubCh.close();
  await page.waitForFunction(() => {
    const t = document.querySelector('[data-testid="chart-rates-publish"]')?.textContent || '';
    return /\/s$/.test(t) && parseFloat(t) > 0;
  }, null, { timeout: UI_TIMEOUT_MS, polling: 50 });
  await waitText(page.locator('[data-testid="chart-depth-ready"]'), '20');
  const linePixels = await page.evaluate(() => {
    const c = document.getElementById('chart-depth');
    const rgb = getComputedStyle(document.documentElement).getPropertyValue('--c1').trim();
    const want = [1, 3, 5].map((i) => parseInt(rgb.slice(i, i + 2), 16));
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) {
      if (d[i + 3] > 200 && Math.abs(d[i] - want[0]) + Math.abs(d[i + 1] - want[1]) + Math.abs(d[i + 2] - want[2]) < 40) n++;
    }
    return n;
  });
  assert.ok(linePixels > 10, `the depth chart draws the ready line (${linePixels} pixels in its colour)`);
  assert.equal((await mgmt('DELETE', `/api/queues/%2F/${QUEUE}/contents`)).status, 204);
  await page.locator('[data-testid="overview-listeners"] tbody tr').first().waitFor();
  await expectNoErrors();
  await shot('overview');

  // Connections: ours is listed; a second one is closed from the UI.
  await go('#/connections');
  await waitHeading('Connections');
  await page.locator('[data-testid="connection-row"]', { hasText: `ui-test-${RUN}` }).waitFor();
  const victim = await amqp.connect(amqpUrl(), { clientProperties: { connection_name: `ui-victim-${RUN}` } });
  const closed = new Promise((resolve) => { victim.on('close', resolve); victim.on('error', () => {}); });
  const vrow = page.locator('[data-testid="connection-row"]', { hasText: `ui-victim-${RUN}` });
  await vrow.waitFor();
  await shot('connections');
  await vrow.locator('[data-testid="connection-close"]').click();
  const why = await Promise.race([closed, sleep(UI_TIMEOUT_MS).then(() => 'timeout')]);
  assert.notEqual(why, 'timeout', 'the AMQP client saw its connection closed');
  await vrow.waitFor({ state: 'detached' });
  await expectNoErrors();

  // Channels: open one so there is a row.
  const ch = await amqpConn.createChannel();
  await ch.prefetch(7);
  await go('#/channels');
  await waitHeading('Channels');
  const chRow = page.locator('[data-testid="channel-row"]', { has: page.locator('td[data-col="prefetch"]', { hasText: /^7$/ }) });
  await chRow.first().waitFor();
  await expectNoErrors();
  await shot('channels');
  await ch.close();

  // Exchanges: the predeclared ones are listed; add one through the form, then delete it.
  await go('#/exchanges');
  await waitHeading('Exchanges');
  await row('exchange-row', { name: 'amq.topic', vhost: '/' }).waitFor();
  await row('exchange-row', { name: '', vhost: '/' }).getByText('(AMQP default)').waitFor();
  const xname = `ui-x-${RUN}`;
  await page.fill('#exchange-add-name', xname);
  await page.selectOption('#exchange-add-type', 'topic');
  await page.click('#exchange-add-submit');
  const xrow = row('exchange-row', { name: xname });
  await xrow.waitFor();
  assert.equal((await cell(xrow, 'type').textContent()).trim(), 'topic');
  assert.equal((await mgmt('GET', `/api/exchanges/%2F/${xname}`)).data.type, 'topic');
  await expectNoErrors();
  await shot('exchanges');
  await xrow.locator('a').click();
  await waitHeading(`Exchange ${xname}`);
  await page.click('#exchange-delete');
  await page.waitForURL('**/#/exchanges');
  await expectOk(`Exchange ${xname} deleted.`);
  assert.equal((await mgmt('GET', `/api/exchanges/%2F/${xname}`)).status, 404);

  // Queues list (the test queue is there) and adding a queue through the form.
  await go('#/queues');
  await row('queue-row', { name: QUEUE }).waitFor();
  const q2 = `ui-form-queue-${RUN}`;
  await page.fill('#queue-add-name', q2);
  await page.fill('#queue-add-arguments', '{"x-max-length": 10}');
  await page.click('#queue-add-submit');
  const q2row = row('queue-row', { name: q2 });
  await q2row.waitFor();
  assert.match(await cell(q2row, 'features').textContent(), /x-max-length/);
  const q2api = (await mgmt('GET', `/api/queues/%2F/${q2}`)).data;
  assert.equal(q2api.durable, true);
  assert.deepEqual(q2api.arguments, { 'x-max-length': 10 });
  // A bad arguments field is reported, not sent.
  await page.fill('#queue-add-name', `${q2}-bad`);
  await page.fill('#queue-add-arguments', '{not json');
  await page.click('#queue-add-submit');
  await page.locator('[data-testid="message-error"]', { hasText: 'Arguments: not valid JSON' }).waitFor();
  assert.equal((await mgmt('GET', `/api/queues/%2F/${q2}-bad`)).status, 404);
  await page.locator('[data-testid="message-error"] button').first().click();
  await expectNoErrors();
  await shot('queues');
  // Deleting a queue from its page.
  await q2row.locator('a').click();
  await page.click('#queue-delete');
  await page.waitForURL('**/#/queues');
  assert.equal((await mgmt('GET', `/api/queues/%2F/${q2}`)).status, 404);

  // Virtual hosts: add and delete.
  await go('#/vhosts');
  await waitHeading('Virtual hosts');
  await row('vhost-row', { name: '/' }).waitFor();
  const vh = `ui-vhost-${RUN}`;
  await page.fill('#vhost-add-name', vh);
  await page.fill('#vhost-add-description', 'made by the UI test');
  await page.click('#vhost-add-submit');
  const vrow2 = row('vhost-row', { name: vh });
  await vrow2.waitFor();
  assert.equal((await cell(vrow2, 'description').textContent()).trim(), 'made by the UI test');
  assert.equal((await mgmt('GET', `/api/vhosts/${encodeURIComponent(vh)}`)).status, 200);
  await expectNoErrors();
  await shot('vhosts');
  await vrow2.locator('[data-testid="vhost-delete"]').click();
  await vrow2.waitFor({ state: 'detached' });
  assert.equal((await mgmt('GET', `/api/vhosts/${encodeURIComponent(vh)}`)).status, 404);

  // Policies: add (applied to the matching queue) and delete.
  await go('#/policies');
  await waitHeading('Policies');
  const pol = `ui-policy-${RUN}`;
  await page.fill('#policy-name', pol);
  await page.fill('#policy-pattern', `^${QUEUE}$`);
  await page.selectOption('#policy-apply-to', 'queues');
  await page.fill('#policy-priority', '3');
  await page.fill('#policy-definition', '{"max-length": 100}');
  await page.click('#policy-submit');
  const prow = row('policy-row', { name: pol, vhost: '/' });
  await prow.waitFor();
  assert.equal((await cell(prow, 'apply-to').textContent()).trim(), 'queues');
  const papi = (await mgmt('GET', `/api/policies/%2F/${pol}`)).data;
  assert.deepEqual({ d: papi.definition, p: papi.priority, a: papi['apply-to'] }, { d: { 'max-length': 100 }, p: 3, a: 'queues' });
  await eventually('the policy applied to the queue', async () => (await mgmt('GET', `/api/queues/%2F/${QUEUE}`)).data.policy === pol);
  await expectNoErrors();
  await shot('policies');
  await go('#/queues');
  await waitText(cell(row('queue-row', { name: QUEUE }), 'policy'), pol);
  await go('#/policies');
  await prow.locator('[data-testid="policy-delete"]').click();
  await prow.waitFor({ state: 'detached' });
  assert.equal((await mgmt('GET', `/api/policies/%2F/${pol}`)).status, 404);

  // Definitions: download (holds the durable test queue), upload (creates a queue).
  await go('#/definitions');
  await waitHeading('Definitions');
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#definitions-download')]);
  assert.match(download.suggestedFilename(), /^warren-definitions-.*\.json$/);
  const exported = JSON.parse(fs.readFileSync(await download.path(), 'utf8'));
  assert.ok(exported.queues.some((q) => q.name === QUEUE && q.vhost === '/' && q.durable === true), 'the export lists the durable test queue');
  assert.ok(exported.users.some((u) => u.name === 'guest'));
  const imported = `ui-imported-${RUN}`;
  const file = path.join(broker.dir, 'definitions.json');
  fs.writeFileSync(file, JSON.stringify({
    queues: [{ name: imported, vhost: '/', durable: true, auto_delete: false, arguments: {} }],
    exchanges: [], bindings: [],
  }));
  await page.setInputFiles('#definitions-file', file);
  await page.click('#definitions-upload');
  await expectOk('Definitions imported');
  assert.equal((await mgmt('GET', `/api/queues/%2F/${imported}`)).status, 200);
  await expectNoErrors();
  await shot('definitions');
});

uiTest('a session whose credentials stop working goes back to the login screen', async () => {
  const user = `ui-temp-${RUN}`;
  assert.ok([201, 204].includes((await mgmt('PUT', `/api/users/${user}`, { password: 'pw', tags: 'administrator' })).status));
  await page.click('#logout');
  await page.fill('#login-username', user);
  await page.fill('#login-password', 'pw');
  await page.click('#login-submit');
  await page.locator('#mainnav').waitFor();
  await go('#/queues');
  assert.equal((await mgmt('DELETE', `/api/users/${user}`)).status, 204);
  // The next refresh gets 401 and the app asks for credentials again.
  await page.locator('#login-form').waitFor({ timeout: UI_TIMEOUT_MS });
  await page.locator('[data-testid="message-error"]', { hasText: 'Logged out' }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem('warren.auth')), null);
});
