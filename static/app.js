// Warren management UI: plain ES2020, no framework, no build step.
// Talks to the broker's RabbitMQ-compatible management API under /api (same origin),
// with HTTP Basic credentials kept in sessionStorage.
'use strict';

(() => {
  const OVERVIEW_POLL_MS = 2000;
  const LIST_POLL_MS = 5000;
  const CHART_WINDOW_MS = 5 * 60 * 1000;
  const AUTH_KEY = 'warren.auth';
  const USER_KEY = 'warren.user';
  const SUCCESS_TTL_MS = 6000;
  const MAX_MESSAGES = 6;
  const MAX_SUCCESS_MESSAGES = 3;
  const MAX_ROWS = 500;

  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

  // ------------------------------------------------------------------ DOM helpers

  const PROPS = new Set(['value', 'checked', 'disabled', 'hidden', 'selected', 'required', 'multiple', 'readOnly']);

  /** h('tag', {attr: value, onclick: fn}, ...children) -> Element. Text is always set as text. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === undefined || v === null || v === false) continue;
        if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
        else if (k === 'class') el.className = v;
        else if (PROPS.has(k)) el[k] = v;
        else el.setAttribute(k, v === true ? '' : String(v));
      }
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const c of children) {
      if (c === undefined || c === null || c === false) continue;
      if (Array.isArray(c)) append(el, c);
      else el.append(c instanceof Node ? c : String(c));
    }
  }

  function section(title, testid, ...children) {
    const id = `sec-${testid}`;
    return h('section', { class: 'panel', 'aria-labelledby': id, 'data-testid': testid },
      h('h2', { id }, title), ...children);
  }

  function field(label, input, hint) {
    return h('div', { class: 'field' },
      h('label', { for: input.id }, label), input, hint ? h('p', { class: 'hint' }, hint) : null);
  }

  function checkboxField(label, input) {
    return h('div', { class: 'field field-check' }, input, h('label', { for: input.id }, label));
  }

  function select(id, options, value) {
    const s = h('select', { id, name: id });
    for (const o of options) {
      const [v, text] = Array.isArray(o) ? o : [o, o];
      s.append(h('option', { value: v, selected: v === value }, text));
    }
    return s;
  }

  function button(text, attrs = {}) {
    return h('button', { type: 'button', class: 'btn', ...attrs }, text);
  }

  function dl(pairs) {
    const d = h('dl', { class: 'kv' });
    for (const [k, v] of pairs) {
      if (v === undefined) continue;
      d.append(h('dt', null, k), h('dd', null, v === null || v === '' ? '—' : v));
    }
    return d;
  }

  // ------------------------------------------------------------------ formatting

  const numberFmt = new Intl.NumberFormat();
  const fmtNum = (n) => (typeof n === 'number' && Number.isFinite(n) ? numberFmt.format(n) : '—');
  const fmtRate = (r) => (r === null || r === undefined || !Number.isFinite(r) ? '—' : `${r < 10 ? r.toFixed(1) : Math.round(r)}/s`);
  const yesNo = (b) => (b ? 'yes' : 'no');

  function fmtBytes(n) {
    if (typeof n !== 'number' || !Number.isFinite(n)) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
  }

  function fmtTime(ms) {
    if (typeof ms !== 'number') return '—';
    const d = new Date(ms);
    return Number.isNaN(d.getTime()) ? '—' : d.toLocaleString();
  }

  function fmtJson(v) {
    if (v === undefined || v === null) return '';
    if (typeof v === 'object' && Object.keys(v).length === 0) return '';
    return JSON.stringify(v);
  }

  const exchangeLabel = (name) => (name === '' ? '(AMQP default)' : name);
  const exchangePathName = (name) => (name === '' ? 'amq.default' : name);

  // ------------------------------------------------------------------ messages area

  const messagesEl = () => $('messages');

  function showMessage(kind, text) {
    const box = messagesEl();
    for (const existing of box.children) {
      if (existing.dataset.text === text) {
        const n = Number(existing.dataset.count || '1') + 1;
        existing.dataset.count = String(n);
        existing.querySelector('.msg-count').textContent = ` (×${n})`;
        return existing;
      }
    }
    const item = h('div', {
      class: `msg msg-${kind}`, role: kind === 'error' ? 'alert' : null,
      'data-testid': kind === 'error' ? 'message-error' : 'message-ok',
    },
    h('span', { class: 'msg-text' }, text), h('span', { class: 'msg-count' }),
    button('Dismiss', { class: 'btn btn-link msg-close', 'aria-label': 'Dismiss message', onclick: () => item.remove() }));
    item.dataset.text = text;
    item.dataset.at = String(Date.now());
    box.append(item);
    const oks = box.querySelectorAll('.msg-ok');
    for (let i = 0; i < oks.length - MAX_SUCCESS_MESSAGES; i++) oks[i].remove();
    while (box.children.length > MAX_MESSAGES) box.firstElementChild.remove();
    if (kind !== 'error') setTimeout(() => item.remove(), SUCCESS_TTL_MS);
    return item;
  }

  const ok = (text) => showMessage('ok', text);

  function showError(e) {
    if (e && e.silent) return;
    if (e instanceof ApiError) {
      const what = e.error && e.reason ? `${e.error}: ${e.reason}` : e.reason || e.error || `HTTP ${e.status}`;
      showMessage('error', `${e.method} ${e.path} failed (${e.status || 'no response'}) — ${what}`);
    } else {
      showMessage('error', e && e.message ? e.message : String(e));
    }
  }

  function clearMessages() { messagesEl().replaceChildren(); }

  /** On navigation: success notes from earlier pages go; errors stay until dismissed. */
  function dropOldSuccessMessages() {
    const cutoff = Date.now() - 1500;
    for (const m of [...messagesEl().querySelectorAll('.msg-ok')]) if (Number(m.dataset.at) < cutoff) m.remove();
  }

  // ------------------------------------------------------------------ API client

  class ApiError extends Error {
    constructor(status, error, reason, method, path) {
      super(`${method} ${path}: ${status} ${error} ${reason}`);
      this.status = status;
      this.error = error;
      this.reason = reason;
      this.method = method;
      this.path = path;
    }
  }

  let auth = sessionStorage.getItem(AUTH_KEY);

  function basicAuth(user, pass) {
    const bytes = new TextEncoder().encode(`${user}:${pass}`);
    let bin = '';
    for (const b of bytes) bin += String.fromCharCode(b);
    return btoa(bin);
  }

  async function rawRequest(method, path, body, authValue, extraHeaders) {
    const headers = { Accept: 'application/json', ...extraHeaders };
    if (authValue) headers.Authorization = `Basic ${authValue}`;
    const opts = { method, headers, credentials: 'omit', cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      opts.body = typeof body === 'string' ? body : JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, opts);
    } catch (err) {
      throw new ApiError(0, 'network_error', `cannot reach the broker (${err.message})`, method, path);
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch { data = text; }
    }
    if (!res.ok) {
      const obj = data && typeof data === 'object' ? data : {};
      const err = new ApiError(res.status, obj.error || res.statusText || 'error',
        obj.reason || (typeof data === 'string' ? data.slice(0, 300) : ''), method, path);
      throw err;
    }
    return { status: res.status, data, headers: res.headers };
  }

  /** Calls the API with the session's credentials; a 401 "Login failed" ends the session. */
  async function api(method, path, body, extraHeaders) {
    if (!auth) {
      const e = new ApiError(401, 'not_authorized', 'Not logged in', method, path);
      e.silent = true;
      throw e;
    }
    try {
      return (await rawRequest(method, path, body, auth, extraHeaders)).data;
    } catch (e) {
      // 401 "not_authorised" (British spelling) is RabbitMQ's "you lack the tag"; anything else
      // at 401 means the credentials no longer work.
      if (e instanceof ApiError && e.status === 401 && e.error !== 'not_authorised') {
        sessionExpired(e);
        e.silent = true;
      }
      throw e;
    }
  }

  const get = (path) => api('GET', path);

  // ------------------------------------------------------------------ session

  function setSession(authValue, user) {
    auth = authValue;
    sessionStorage.setItem(AUTH_KEY, authValue);
    sessionStorage.setItem(USER_KEY, user);
  }

  function clearSession() {
    auth = null;
    sessionStorage.removeItem(AUTH_KEY);
    sessionStorage.removeItem(USER_KEY);
  }

  function sessionExpired(e) {
    if (!auth) return;
    clearSession();
    showLogin();
    showMessage('error', `Logged out: the broker rejected the credentials (${e.reason || e.error}). Please log in again.`);
  }

  function showLogin() {
    stopPage();
    $('page').hidden = true;
    $('page').replaceChildren();
    $('mainnav').hidden = true;
    $('session').hidden = true;
    $('cluster-name').textContent = '';
    $('login-view').hidden = false;
    document.title = 'Log in · Warren management';
    $('login-password').value = '';
    $('login-username').focus();
  }

  function showApp() {
    $('login-view').hidden = true;
    $('page').hidden = false;
    $('mainnav').hidden = false;
    $('session').hidden = false;
    $('current-user').textContent = sessionStorage.getItem(USER_KEY) || '';
    get('/api/overview').then((o) => {
      if (o && o.cluster_name) $('cluster-name').textContent = o.cluster_name;
    }).catch(() => {});
    route();
  }

  async function login(evt) {
    evt.preventDefault();
    const user = $('login-username').value;
    const pass = $('login-password').value;
    const submit = $('login-submit');
    submit.disabled = true;
    try {
      const value = basicAuth(user, pass);
      const { data } = await rawRequest('GET', '/api/whoami', undefined, value);
      clearMessages();
      setSession(value, (data && data.name) || user);
      showApp();
    } catch (e) {
      if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
        showMessage('error', `Login failed: ${e.reason || e.error}`);
      } else {
        showError(e);
      }
    } finally {
      submit.disabled = false;
    }
  }

  function logout() {
    clearSession();
    clearMessages();
    showLogin();
  }

  // ------------------------------------------------------------------ page lifecycle

  let current = null;

  function stopPage() {
    if (!current) return;
    current.alive = false;
    for (const t of current.timers) clearInterval(t);
    for (const f of current.cleanups) f();
    current = null;
  }

  function newContext() {
    const ctx = {
      alive: true,
      timers: [],
      cleanups: [],
      /** Runs fn now and every `ms` while the page is shown and the tab is visible. */
      every(ms, fn) {
        const run = () => {
          if (ctx.alive && !document.hidden && auth) fn();
        };
        run();
        ctx.timers.push(setInterval(run, ms));
      },
      onCleanup(f) { ctx.cleanups.push(f); },
    };
    return ctx;
  }

  /** Wraps a refresh function: no overlapping runs, errors shown, nothing written after leaving. */
  function poller(ctx, fn) {
    let running = false;
    return async () => {
      if (running || !ctx.alive) return;
      running = true;
      try {
        await fn();
      } catch (e) {
        if (ctx.alive) showError(e);
      } finally {
        running = false;
      }
    };
  }

  const ROUTES = [
    [/^\/?$/, 'overview', pageOverview],
    [/^\/connections\/?$/, 'connections', pageConnections],
    [/^\/channels\/?$/, 'channels', pageChannels],
    [/^\/exchanges\/?$/, 'exchanges', pageExchanges],
    [/^\/exchanges\/([^/]+)\/([^/]+)$/, 'exchanges', pageExchange],
    [/^\/queues\/?$/, 'queues', pageQueues],
    [/^\/queues\/([^/]+)\/([^/]+)$/, 'queues', pageQueue],
    [/^\/users\/?$/, 'users', pageUsers],
    [/^\/vhosts\/?$/, 'vhosts', pageVhosts],
    [/^\/policies\/?$/, 'policies', pagePolicies],
    [/^\/definitions\/?$/, 'definitions', pageDefinitions],
  ];

  let firstRoute = true;

  function route() {
    if (!auth) { showLogin(); return; }
    stopPage();
    dropOldSuccessMessages();
    const hash = location.hash.replace(/^#/, '') || '/';
    const page = $('page');
    page.replaceChildren();
    let matched = null;
    for (const [re, name, fn] of ROUTES) {
      const m = hash.match(re);
      if (m) {
        let params;
        try { params = m.slice(1).map((s) => decodeURIComponent(s)); } catch { break; }
        matched = { name, fn, params };
        break;
      }
    }
    for (const a of document.querySelectorAll('#mainnav a')) {
      if (matched && a.dataset.route === matched.name) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    current = newContext();
    if (!matched) {
      page.append(h('h1', null, 'Not found'), h('p', null, 'No such page. ', h('a', { href: '#/' }, 'Go to the overview.')));
      document.title = 'Not found · Warren management';
      return;
    }
    page.dataset.page = matched.name;
    page.dataset.hash = location.hash || '#/';
    matched.fn(current, page, ...matched.params);
    const h1 = page.querySelector('h1');
    document.title = `${h1 ? h1.textContent : matched.name} · Warren management`;
    if (!firstRoute && h1) {
      h1.tabIndex = -1;
      h1.focus({ preventScroll: true });
    }
    firstRoute = false;
  }

  // ------------------------------------------------------------------ shared widgets

  /**
   * A table whose body is rebuilt only when its rows change (so polling does not
   * disturb focus or clicks). columns: [{label, cell(row) -> Node|string, num}]
   */
  function dataTable({ testid, caption, columns, rowAttrs, empty }) {
    const tbody = h('tbody');
    const table = h('table', { class: 'data', 'data-testid': testid },
      caption ? h('caption', { class: 'visually-hidden' }, caption) : null,
      h('thead', null, h('tr', null, columns.map((c) => h('th', { scope: 'col', class: c.num ? 'num' : null }, c.label)))),
      tbody);
    const emptyEl = h('p', { class: 'empty', 'data-testid': `${testid}-empty`, hidden: true }, empty || 'Nothing to show.');
    const wrap = h('div', { class: 'table-wrap' }, table, emptyEl);
    let last = null;
    return {
      el: wrap,
      update(rows) {
        const sig = JSON.stringify(rows);
        if (sig === last) return;
        last = sig;
        const frag = document.createDocumentFragment();
        for (const row of rows) {
          const tr = h('tr', rowAttrs ? rowAttrs(row) : null);
          for (const c of columns) tr.append(h('td', { class: c.num ? 'num' : null, 'data-col': colKey(c) }, c.cell(row)));
          frag.append(tr);
        }
        tbody.replaceChildren(frag);
        table.hidden = rows.length === 0;
        emptyEl.hidden = rows.length !== 0;
      },
    };
  }

  const colKey = (c) => c.key || c.label.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');

  /** A text filter above a list; calls onChange(text) as the user types. */
  function filterBox(id, label, onChange) {
    const input = h('input', { id, type: 'search', placeholder: 'Filter by name', autocomplete: 'off' });
    input.addEventListener('input', () => onChange(input.value.trim().toLowerCase()));
    return h('div', { class: 'filter' }, h('label', { for: id }, label), input);
  }

  function byVhostName(a, b) {
    return (a.vhost || '').localeCompare(b.vhost || '') || (a.name || '').localeCompare(b.name || '');
  }

  /** A list page: fetch + filter + table, refreshed every LIST_POLL_MS. */
  function listView(ctx, { url, load, testid, caption, columns, rowAttrs, empty, filterLabel, sort, nameOf }) {
    let rows = [];
    let filter = '';
    const table = dataTable({ testid, caption, columns, rowAttrs, empty });
    const status = h('p', { class: 'list-status', 'data-testid': `${testid}-status` });
    const show = () => {
      const name = nameOf || ((r) => r.name || '');
      const matching = filter ? rows.filter((r) => name(r).toLowerCase().includes(filter)) : rows;
      const shown = matching.slice(0, MAX_ROWS);
      table.update(shown);
      let text = filter ? `${matching.length} of ${rows.length} match` : `${rows.length} total`;
      if (shown.length < matching.length) text += `; showing the first ${MAX_ROWS}, filter to narrow down`;
      status.textContent = text;
    };
    const refresh = poller(ctx, async () => {
      const data = load ? await load() : await get(url);
      if (!ctx.alive) return;
      rows = Array.isArray(data) ? data.slice().sort(sort || byVhostName) : [];
      show();
    });
    const el = h('div', { class: 'list' },
      h('div', { class: 'list-head' },
        filterBox(`${testid}-filter`, filterLabel || 'Filter', (f) => { filter = f; show(); }), status),
      table.el);
    return { el, refresh };
  }

  /** A <select> of the virtual hosts (filled asynchronously). */
  function vhostSelect(id, ctx) {
    const s = h('select', { id, name: id, required: true });
    get('/api/vhosts').then((vhosts) => {
      if (!ctx.alive) return;
      const prev = s.value;
      s.replaceChildren(...vhosts.map((v) => h('option', { value: v.name }, v.name)));
      if (prev) s.value = prev;
      else if (vhosts.some((v) => v.name === '/')) s.value = '/';
    }).catch(showError);
    return s;
  }

  function parseJsonObject(input, label, { required = false } = {}) {
    const text = input.value.trim();
    input.removeAttribute('aria-invalid');
    if (!text) {
      if (required) {
        input.setAttribute('aria-invalid', 'true');
        throw new Error(`${label}: a JSON object is required.`);
      }
      return {};
    }
    let v;
    try {
      v = JSON.parse(text);
    } catch (e) {
      input.setAttribute('aria-invalid', 'true');
      throw new Error(`${label}: not valid JSON (${e.message}).`);
    }
    if (v === null || typeof v !== 'object' || Array.isArray(v)) {
      input.setAttribute('aria-invalid', 'true');
      throw new Error(`${label}: must be a JSON object, like {"key": "value"}.`);
    }
    return v;
  }

  function jsonArea(id, placeholder, rows = 2) {
    return h('textarea', { id, name: id, rows, class: 'mono', placeholder, spellcheck: 'false' });
  }

  /** Form submit handling: prevents default, disables the buttons while busy, reports errors. */
  function onSubmit(form, fn) {
    form.addEventListener('submit', async (evt) => {
      evt.preventDefault();
      const buttons = form.querySelectorAll('button');
      buttons.forEach((b) => { b.disabled = true; });
      try {
        await fn(evt);
      } catch (e) {
        showError(e);
      } finally {
        buttons.forEach((b) => { b.disabled = false; });
      }
    });
    return form;
  }

  /** A button running an async action with a confirmation prompt. */
  function actionButton(text, attrs, confirmText, fn) {
    const b = button(text, attrs);
    b.addEventListener('click', async () => {
      if (confirmText && !window.confirm(confirmText)) return;
      b.disabled = true;
      try {
        await fn();
      } catch (e) {
        showError(e);
      } finally {
        b.disabled = false;
      }
    });
    return b;
  }

  function link(href, text, attrs) { return h('a', { href, ...attrs }, text); }
  const queueHref = (v, q) => `#/queues/${enc(v)}/${enc(q)}`;
  const exchangeHref = (v, x) => `#/exchanges/${enc(v)}/${enc(exchangePathName(x))}`;

  function features(o) {
    const f = [];
    if (o.durable) f.push(h('abbr', { title: 'durable', class: 'tag' }, 'D'));
    if (o.auto_delete) f.push(h('abbr', { title: 'auto-delete', class: 'tag' }, 'AD'));
    if (o.internal) f.push(h('abbr', { title: 'internal', class: 'tag' }, 'I'));
    if (o.exclusive) f.push(h('abbr', { title: 'exclusive', class: 'tag' }, 'Excl'));
    const args = o.arguments || {};
    for (const k of Object.keys(args)) f.push(h('abbr', { title: `${k}: ${JSON.stringify(args[k])}`, class: 'tag tag-arg' }, k));
    return f;
  }

  function pageHeader(title, sub) {
    return h('div', { class: 'page-head' }, h('h1', null, title), sub ? h('p', { class: 'sub' }, sub) : null);
  }

  // ------------------------------------------------------------------ overview

  // Samples survive navigation so the charts keep their history while the session lasts.
  const overviewSamples = [];

  const RATE_SERIES = [
    { key: 'publish', label: 'Publish', color: '--c1' },
    { key: 'deliver_get', label: 'Deliver / get', color: '--c2' },
    { key: 'ack', label: 'Ack', color: '--c3' },
  ];
  const DEPTH_SERIES = [
    { key: 'ready', label: 'Ready', color: '--c1' },
    { key: 'unacked', label: 'Unacked', color: '--c4' },
  ];

  function recordSample(o) {
    const ms = o.message_stats || {};
    const qt = o.queue_totals || {};
    const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
    overviewSamples.push({
      t: Date.now(),
      publish: num(ms.publish),
      deliver_get: num(ms.deliver_get),
      ack: num(ms.ack),
      ready: num(qt.messages_ready),
      unacked: num(qt.messages_unacknowledged),
    });
    const cutoff = Date.now() - CHART_WINDOW_MS - 60000;
    while (overviewSamples.length && overviewSamples[0].t < cutoff) overviewSamples.shift();
  }

  /** Per-second rates from consecutive counter samples; null across gaps and counter resets. */
  function ratePoints() {
    const pts = [];
    for (let i = 1; i < overviewSamples.length; i++) {
      const a = overviewSamples[i - 1];
      const b = overviewSamples[i];
      const dt = (b.t - a.t) / 1000;
      const values = {};
      for (const s of RATE_SERIES) {
        const d = b[s.key] - a[s.key];
        values[s.key] = dt <= 0 || dt > (OVERVIEW_POLL_MS * 3) / 1000 || d < 0 ? null : d / dt;
      }
      pts.push({ t: b.t, values });
    }
    return pts;
  }

  function depthPoints() {
    return overviewSamples.map((s, i) => {
      const prev = overviewSamples[i - 1];
      const gap = prev && s.t - prev.t > OVERVIEW_POLL_MS * 3;
      return { t: s.t, gap, values: { ready: s.ready, unacked: s.unacked } };
    });
  }

  function niceCeil(v) {
    if (!(v > 0)) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function fmtAxis(v) {
    if (v >= 1e6) return `${+(v / 1e6).toFixed(2)}M`;
    if (v >= 1e3) return `${+(v / 1e3).toFixed(2)}k`;
    return `${+v.toFixed(2)}`;
  }

  /** A hand-drawn line chart on a canvas, sized for the device pixel ratio. */
  function lineChart({ id, testid, title, series, unit, minMax }) {
    const canvas = h('canvas', { id, 'data-testid': testid, role: 'img', 'aria-label': title, height: 220 });
    const legend = h('ul', { class: 'legend', 'data-testid': `${testid}-legend` });
    const items = {};
    for (const s of series) {
      const value = h('span', { class: 'legend-value', 'data-testid': `${testid}-${s.key}` }, '—');
      items[s.key] = value;
      legend.append(h('li', null, h('span', { class: 'swatch', 'data-color': s.color }), `${s.label}: `, value));
    }
    const el = h('figure', { class: 'chart' }, h('figcaption', null, title), canvas, legend);
    let lastPoints = [];

    function colors() {
      const cs = getComputedStyle(document.documentElement);
      const c = (n, d) => cs.getPropertyValue(n).trim() || d;
      return { fg: c('--muted', '#666'), grid: c('--grid', '#ddd'), series: (n) => c(n, '#06c') };
    }

    function draw(points) {
      lastPoints = points;
      const now = Date.now();
      const dpr = window.devicePixelRatio || 1;
      const cssW = canvas.clientWidth || 600;
      const cssH = 220;
      if (canvas.width !== Math.round(cssW * dpr) || canvas.height !== Math.round(cssH * dpr)) {
        canvas.width = Math.round(cssW * dpr);
        canvas.height = Math.round(cssH * dpr);
      }
      const g = canvas.getContext('2d');
      g.setTransform(dpr, 0, 0, dpr, 0, 0);
      g.clearRect(0, 0, cssW, cssH);
      const col = colors();
      for (const sw of legend.querySelectorAll('.swatch')) sw.style.background = col.series(sw.dataset.color);

      const left = 48;
      const right = 10;
      const top = 10;
      const bottom = 24;
      const w = cssW - left - right;
      const hgt = cssH - top - bottom;
      const t0 = now - CHART_WINDOW_MS;
      const visible = points.filter((p) => p.t >= t0);
      let max = 0;
      for (const p of visible) for (const s of series) if (p.values[s.key] > max) max = p.values[s.key];
      const yMax = niceCeil(Math.max(max, minMax || 1));
      const x = (t) => left + ((t - t0) / CHART_WINDOW_MS) * w;
      const y = (v) => top + hgt - (v / yMax) * hgt;

      g.font = '11px system-ui, sans-serif';
      g.lineWidth = 1;
      g.strokeStyle = col.grid;
      g.fillStyle = col.fg;
      g.textAlign = 'right';
      g.textBaseline = 'middle';
      for (let i = 0; i <= 4; i++) {
        const v = (yMax * i) / 4;
        const yy = Math.round(y(v)) + 0.5;
        g.beginPath(); g.moveTo(left, yy); g.lineTo(left + w, yy); g.stroke();
        g.fillText(fmtAxis(v), left - 6, yy);
      }
      g.textAlign = 'center';
      g.textBaseline = 'top';
      for (let m = 0; m <= 5; m++) {
        const t = t0 + m * 60000;
        const xx = Math.round(x(t)) + 0.5;
        g.beginPath(); g.moveTo(xx, top); g.lineTo(xx, top + hgt); g.stroke();
        g.fillText(m === 5 ? 'now' : `-${5 - m} min`, Math.min(Math.max(xx, left + 16), left + w - 14), top + hgt + 6);
      }

      g.lineWidth = 2;
      g.lineJoin = 'round';
      for (const s of series) {
        g.strokeStyle = col.series(s.color);
        g.beginPath();
        let pen = false;
        for (const p of visible) {
          const v = p.values[s.key];
          if (v === null || v === undefined || p.gap) { pen = false; if (v === null || v === undefined) continue; }
          const px = x(p.t);
          const py = y(v);
          if (pen) g.lineTo(px, py); else g.moveTo(px, py);
          pen = true;
        }
        g.stroke();
      }

      const lastP = visible[visible.length - 1];
      const parts = [];
      for (const s of series) {
        const v = lastP ? lastP.values[s.key] : null;
        const text = v === null || v === undefined ? '—' : unit === 'rate' ? fmtRate(v) : fmtNum(v);
        items[s.key].textContent = text;
        parts.push(`${s.label} ${text}`);
      }
      canvas.setAttribute('aria-label', `${title}, last 5 minutes. Latest: ${parts.join(', ')}`);
    }

    return { el, draw, redraw: () => draw(lastPoints) };
  }

  function pageOverview(ctx, page) {
    const totals = h('div', { class: 'cards', 'data-testid': 'overview-totals' });
    const counters = dataTable({
      testid: 'overview-message-stats',
      caption: 'Message counters',
      columns: [
        { label: 'Counter', cell: (r) => r.label },
        { label: 'Total', num: true, cell: (r) => fmtNum(r.total) },
        { label: 'Rate', num: true, cell: (r) => fmtRate(r.rate) },
      ],
      rowAttrs: (r) => ({ 'data-key': r.key }),
    });
    const listeners = dataTable({
      testid: 'overview-listeners',
      caption: 'Listeners',
      columns: [
        { label: 'Protocol', cell: (r) => r.protocol },
        { label: 'Bound to', cell: (r) => r.ip_address },
        { label: 'Port', num: true, cell: (r) => String(r.port) },
      ],
      empty: 'No listeners reported.',
    });
    const info = h('div', { 'data-testid': 'overview-node' });
    const rates = lineChart({ id: 'chart-rates', testid: 'chart-rates', title: 'Message rates (per second)', series: RATE_SERIES, unit: 'rate' });
    const depth = lineChart({ id: 'chart-depth', testid: 'chart-depth', title: 'Queued messages', series: DEPTH_SERIES, unit: 'count', minMax: 4 });

    page.append(
      pageHeader('Overview'),
      section('Totals', 'totals', totals),
      h('div', { class: 'charts' }, rates.el, depth.el),
      section('Message counters', 'message-stats',
        h('p', { class: 'hint' }, 'Rates are computed in the browser from the change in each counter between polls (every 2 seconds).'),
        counters.el),
      h('div', { class: 'two-col' }, section('Node', 'node', info), section('Listeners', 'listeners', listeners.el)),
    );

    const card = (key, label, value) => h('div', { class: 'card', 'data-testid': `total-${key}` },
      h('div', { class: 'card-value' }, fmtNum(value)), h('div', { class: 'card-label' }, label));

    const COUNTERS = [
      ['publish', 'Published'], ['confirm', 'Confirmed'], ['deliver_get', 'Delivered + got'],
      ['deliver', 'Delivered (consume, ack)'], ['deliver_no_ack', 'Delivered (consume, no ack)'],
      ['get', 'Got (ack)'], ['get_no_ack', 'Got (no ack)'], ['get_empty', 'Get (empty)'],
      ['ack', 'Acknowledged'], ['redeliver', 'Redelivered'],
      ['return_unroutable', 'Returned unroutable'], ['drop_unroutable', 'Dropped unroutable'],
    ];

    let lastSignature = '';
    const refresh = poller(ctx, async () => {
      const o = await get('/api/overview');
      if (!ctx.alive) return;
      const prev = overviewSamples[overviewSamples.length - 1];
      recordSample(o);
      const cur = overviewSamples[overviewSamples.length - 1];
      const ot = o.object_totals || {};
      const qt = o.queue_totals || {};
      const sig = JSON.stringify([ot, qt.messages, qt.messages_ready, qt.messages_unacknowledged]);
      if (sig !== lastSignature) {
        lastSignature = sig;
        totals.replaceChildren(
          card('connections', 'Connections', ot.connections),
          card('channels', 'Channels', ot.channels),
          card('exchanges', 'Exchanges', ot.exchanges),
          card('queues', 'Queues', ot.queues),
          card('consumers', 'Consumers', ot.consumers),
          card('messages', 'Messages', qt.messages),
          card('messages-ready', 'Ready', qt.messages_ready),
          card('messages-unacked', 'Unacked', qt.messages_unacknowledged),
        );
      }
      const ms = o.message_stats || {};
      const dt = prev ? (cur.t - prev.t) / 1000 : 0;
      counters.update(COUNTERS.map(([key, label]) => {
        const total = typeof ms[key] === 'number' ? ms[key] : 0;
        let rate = null;
        if (prev && prev.raw && dt > 0 && dt <= (OVERVIEW_POLL_MS * 3) / 1000) {
          const d = total - (prev.raw[key] || 0);
          rate = d >= 0 ? d / dt : null;
        }
        return { key, label, total, rate };
      }));
      cur.raw = Object.fromEntries(COUNTERS.map(([k]) => [k, typeof ms[k] === 'number' ? ms[k] : 0]));
      listeners.update(o.listeners || []);
      const infoSig = JSON.stringify([o.node, o.cluster_name, o.product_name, o.product_version, o.management_version, o.erlang_full_version]);
      if (info.dataset.sig !== infoSig) {
        info.dataset.sig = infoSig;
        info.replaceChildren(dl([
          ['Node', o.node], ['Cluster', o.cluster_name],
          ['Product', [o.product_name, o.product_version].filter(Boolean).join(' ') || undefined],
          ['Management API', o.management_version], ['Runtime', o.erlang_full_version || o.erlang_version],
        ]));
      }
      rates.draw(ratePoints());
      depth.draw(depthPoints());
    });
    ctx.every(OVERVIEW_POLL_MS, refresh);
    const onResize = () => { rates.redraw(); depth.redraw(); };
    window.addEventListener('resize', onResize);
    ctx.onCleanup(() => window.removeEventListener('resize', onResize));
    // Draw whatever history there already is straight away.
    requestAnimationFrame(() => { if (ctx.alive) { rates.draw(ratePoints()); depth.draw(depthPoints()); } });
  }

  // ------------------------------------------------------------------ connections & channels

  function pageConnections(ctx, page) {
    const list = listView(ctx, {
      url: '/api/connections',
      testid: 'connections-table',
      caption: 'Connections',
      filterLabel: 'Filter connections',
      empty: 'No connections.',
      nameOf: (c) => `${c.name} ${c.user_provided_name || ''} ${c.user || ''}`,
      rowAttrs: (c) => ({ 'data-testid': 'connection-row', 'data-name': c.name }),
      columns: [
        { label: 'Name', cell: (c) => [c.name, c.user_provided_name ? h('div', { class: 'sub' }, c.user_provided_name) : null] },
        { label: 'Virtual host', cell: (c) => c.vhost },
        { label: 'User', cell: (c) => c.user },
        { label: 'State', cell: (c) => c.state },
        { label: 'Protocol', cell: (c) => c.protocol },
        { label: 'Client', cell: (c) => clientName(c.client_properties) },
        { label: 'Channels', num: true, cell: (c) => fmtNum(c.channels) },
        { label: 'Received', num: true, cell: (c) => fmtBytes(c.recv_oct) },
        { label: 'Sent', num: true, cell: (c) => fmtBytes(c.send_oct) },
        { label: 'Connected at', cell: (c) => fmtTime(c.connected_at) },
        {
          label: 'Actions',
          cell: (c) => actionButton('Close', { class: 'btn btn-danger btn-small', 'data-testid': 'connection-close', 'aria-label': `Close connection ${c.name}` },
            `Close connection "${c.name}"?`, async () => {
              await api('DELETE', `/api/connections/${enc(c.name)}`, undefined, { 'X-Reason': 'Closed via management UI' });
              ok(`Connection ${c.name} closed.`);
              list.refresh();
            }),
        },
      ],
    });
    page.append(pageHeader('Connections'), section('All connections', 'connections', list.el));
    ctx.every(LIST_POLL_MS, list.refresh);
  }

  function clientName(props) {
    if (!props) return '';
    return [props.product, props.version].filter(Boolean).join(' ');
  }

  function pageChannels(ctx, page) {
    const list = listView(ctx, {
      url: '/api/channels',
      testid: 'channels-table',
      caption: 'Channels',
      filterLabel: 'Filter channels',
      empty: 'No channels.',
      sort: (a, b) => (a.name || '').localeCompare(b.name || ''),
      rowAttrs: (c) => ({ 'data-testid': 'channel-row', 'data-name': c.name }),
      columns: [
        { label: 'Channel', cell: (c) => c.name },
        { label: 'Virtual host', cell: (c) => c.vhost },
        { label: 'User', cell: (c) => c.user },
        { label: 'Mode', cell: (c) => [c.confirm ? h('abbr', { title: 'confirm', class: 'tag' }, 'C') : null, c.transactional ? h('abbr', { title: 'transactional', class: 'tag' }, 'T') : null] },
        { label: 'State', cell: (c) => c.state },
        { label: 'Prefetch', num: true, cell: (c) => fmtNum(c.prefetch_count) },
        { label: 'Unacked', num: true, cell: (c) => fmtNum(c.messages_unacknowledged) },
        { label: 'Unconfirmed', num: true, cell: (c) => fmtNum(c.messages_unconfirmed) },
        { label: 'Consumers', num: true, cell: (c) => fmtNum(c.consumer_count) },
        { label: 'Published', num: true, cell: (c) => fmtNum((c.message_stats || {}).publish || 0) },
        { label: 'Delivered', num: true, cell: (c) => fmtNum((c.message_stats || {}).deliver_get || 0) },
        { label: 'Acked', num: true, cell: (c) => fmtNum((c.message_stats || {}).ack || 0) },
      ],
    });
    page.append(pageHeader('Channels'), section('All channels', 'channels', list.el));
    ctx.every(LIST_POLL_MS, list.refresh);
  }

  // ------------------------------------------------------------------ exchanges

  function pageExchanges(ctx, page) {
    const list = listView(ctx, {
      url: '/api/exchanges',
      testid: 'exchanges-table',
      caption: 'Exchanges',
      filterLabel: 'Filter exchanges',
      empty: 'No exchanges.',
      rowAttrs: (x) => ({ 'data-testid': 'exchange-row', 'data-name': x.name, 'data-vhost': x.vhost }),
      columns: [
        { label: 'Virtual host', cell: (x) => x.vhost },
        { label: 'Name', cell: (x) => link(exchangeHref(x.vhost, x.name), exchangeLabel(x.name)) },
        { label: 'Type', cell: (x) => x.type },
        { label: 'Features', cell: (x) => features(x) },
        { label: 'Policy', cell: (x) => x.policy || '' },
        { label: 'Published in', num: true, cell: (x) => fmtNum((x.message_stats || {}).publish_in || 0) },
        { label: 'Published out', num: true, cell: (x) => fmtNum((x.message_stats || {}).publish_out || 0) },
      ],
    });

    const vhost = vhostSelect('exchange-add-vhost', ctx);
    const name = h('input', { id: 'exchange-add-name', name: 'name', required: true, autocomplete: 'off' });
    const type = select('exchange-add-type', ['direct', 'fanout', 'topic', 'headers'], 'direct');
    get('/api/overview').then((o) => {
      const types = (o.exchange_types || []).filter((t) => t.enabled !== false).map((t) => t.name);
      if (types.length && ctx.alive) {
        const v = type.value;
        type.replaceChildren(...types.map((t) => h('option', { value: t }, t)));
        type.value = types.includes(v) ? v : types[0];
      }
    }).catch(() => {});
    const durable = select('exchange-add-durable', [['true', 'Durable'], ['false', 'Transient']], 'true');
    const autoDelete = h('input', { id: 'exchange-add-auto-delete', type: 'checkbox' });
    const internal = h('input', { id: 'exchange-add-internal', type: 'checkbox' });
    const args = jsonArea('exchange-add-arguments', '{"alternate-exchange": "my-ae"}');
    const form = onSubmit(h('form', { id: 'exchange-add-form', 'data-testid': 'exchange-add-form', class: 'form grid' },
      field('Virtual host', vhost), field('Name', name), field('Type', type), field('Durability', durable),
      checkboxField('Auto delete', autoDelete), checkboxField('Internal', internal),
      field('Arguments (JSON object)', args),
      h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'btn', id: 'exchange-add-submit' }, 'Add exchange'))),
    async () => {
      const body = {
        type: type.value, durable: durable.value === 'true', auto_delete: autoDelete.checked,
        internal: internal.checked, arguments: parseJsonObject(args, 'Arguments'),
      };
      await api('PUT', `/api/exchanges/${enc(vhost.value)}/${enc(name.value)}`, body);
      ok(`Exchange ${name.value} declared in ${vhost.value}.`);
      name.value = '';
      list.refresh();
    });

    page.append(pageHeader('Exchanges'), section('All exchanges', 'exchanges', list.el),
      section('Add a new exchange', 'exchange-add', form));
    ctx.every(LIST_POLL_MS, list.refresh);
  }

  function publishFields(prefix, { routingKey }) {
    const rk = routingKey ? h('input', { id: `${prefix}-routing-key`, name: 'routing_key', autocomplete: 'off' }) : null;
    const mode = select(`${prefix}-delivery-mode`, [['1', '1 - Non-persistent'], ['2', '2 - Persistent']], '1');
    const headers = jsonArea(`${prefix}-headers`, '{"x-my-header": "value"}');
    const props = jsonArea(`${prefix}-properties`, '{"content_type": "text/plain", "correlation_id": "42"}');
    const encoding = select(`${prefix}-payload-encoding`, [['string', 'String'], ['base64', 'Base64']], 'string');
    const payload = h('textarea', { id: `${prefix}-payload`, name: 'payload', rows: 5, class: 'mono' });
    const fields = [
      rk ? field('Routing key', rk) : null,
      field('Delivery mode', mode),
      field('Headers (JSON object)', headers),
      field('Properties (JSON object)', props, 'AMQP basic properties: content_type, correlation_id, reply_to, expiration, message_id, priority, type, …'),
      field('Payload encoding', encoding),
      field('Payload', payload),
    ];
    const body = (routing) => {
      const properties = parseJsonObject(props, 'Properties');
      const hdrs = parseJsonObject(headers, 'Headers');
      properties.delivery_mode = Number(mode.value);
      if (Object.keys(hdrs).length) properties.headers = { ...(properties.headers || {}), ...hdrs };
      return {
        properties,
        routing_key: routing !== undefined ? routing : rk.value,
        payload: payload.value,
        payload_encoding: encoding.value,
      };
    };
    return { fields, body };
  }

  function routedMessage(res) {
    return res && res.routed ? 'Message published and routed.' : 'Message published, but not routed.';
  }

  function pageExchange(ctx, page, vhost, xname) {
    const name = xname === 'amq.default' ? '' : xname;
    const apiPath = `/api/exchanges/${enc(vhost)}/${enc(exchangePathName(name))}`;
    const details = h('div', { 'data-testid': 'exchange-details' }, 'Loading…');
    const isDefault = name === '';

    const bindings = dataTable({
      testid: 'exchange-bindings',
      caption: 'Bindings from this exchange',
      empty: isDefault ? 'The default exchange is implicitly bound to every queue, with the queue name as routing key.' : 'No bindings.',
      rowAttrs: (b) => ({ 'data-testid': 'binding-row', 'data-destination': b.destination }),
      columns: [
        { label: 'To', cell: (b) => (b.destination_type === 'queue' ? link(queueHref(b.vhost, b.destination), b.destination) : link(exchangeHref(b.vhost, b.destination), exchangeLabel(b.destination))) },
        { label: 'Type', cell: (b) => b.destination_type },
        { label: 'Routing key', cell: (b) => b.routing_key },
        { label: 'Arguments', cell: (b) => h('code', null, fmtJson(b.arguments)) },
        {
          label: 'Actions',
          cell: (b) => actionButton('Unbind', { class: 'btn btn-secondary btn-small', 'data-testid': 'binding-unbind' }, null, async () => {
            await api('DELETE', `/api/bindings/${enc(b.vhost)}/e/${enc(exchangePathName(b.source))}/${b.destination_type === 'queue' ? 'q' : 'e'}/${enc(b.destination)}/${enc(b.properties_key)}`);
            ok(`Unbound ${b.destination} (routing key "${b.routing_key}").`);
            refresh();
          }),
        },
      ],
    });

    const refresh = poller(ctx, async () => {
      const [x, bs] = await Promise.all([get(apiPath), get(`${apiPath}/bindings/source`)]);
      if (!ctx.alive) return;
      const sig = JSON.stringify(x);
      if (details.dataset.sig !== sig) {
        details.dataset.sig = sig;
        const stats = x.message_stats || {};
        details.replaceChildren(dl([
          ['Type', x.type], ['Durable', yesNo(x.durable)], ['Auto delete', yesNo(x.auto_delete)],
          ['Internal', yesNo(x.internal)], ['Arguments', h('code', null, fmtJson(x.arguments))],
          ['Policy', x.policy || ''], ['Published in', fmtNum(stats.publish_in || 0)],
          ['Published out', fmtNum(stats.publish_out || 0)],
        ]));
      }
      bindings.update(isDefault ? [] : bs);
    });

    const content = [pageHeader(`Exchange ${exchangeLabel(name)}`, `Virtual host ${vhost}`),
      section('Details', 'exchange-details-section', details),
      section('Bindings', 'exchange-bindings-section', bindings.el)];

    if (!isDefault) {
      const destType = select('exchange-bind-destination-type', [['q', 'To queue'], ['e', 'To exchange']], 'q');
      const dest = h('input', { id: 'exchange-bind-destination', required: true, autocomplete: 'off' });
      const rk = h('input', { id: 'exchange-bind-routing-key', autocomplete: 'off' });
      const args = jsonArea('exchange-bind-arguments', '{"x-match": "all"}');
      content.push(section('Add binding from this exchange', 'exchange-bind', onSubmit(
        h('form', { id: 'exchange-bind-form', 'data-testid': 'exchange-bind-form', class: 'form grid' },
          field('Destination type', destType), field('Destination', dest), field('Routing key', rk),
          field('Arguments (JSON object)', args),
          h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'btn', id: 'exchange-bind-submit' }, 'Bind'))),
        async () => {
          await api('POST', `/api/bindings/${enc(vhost)}/e/${enc(name)}/${destType.value}/${enc(dest.value)}`,
            { routing_key: rk.value, arguments: parseJsonObject(args, 'Arguments') });
          ok(`Bound ${dest.value} to ${name}.`);
          refresh();
        })));
    }

    const pub = publishFields('exchange-publish', { routingKey: true });
    content.push(section('Publish message', 'exchange-publish', onSubmit(
      h('form', { id: 'exchange-publish-form', 'data-testid': 'exchange-publish-form', class: 'form' }, pub.fields,
        h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'btn', id: 'exchange-publish-submit' }, 'Publish message'))),
      async () => {
        const res = await api('POST', `${apiPath}/publish`, pub.body());
        ok(routedMessage(res));
      })));

    if (!isDefault) {
      content.push(section('Delete this exchange', 'exchange-delete-section',
        actionButton('Delete exchange', { class: 'btn btn-danger', id: 'exchange-delete', 'data-testid': 'exchange-delete' },
          `Delete exchange "${name}" in virtual host "${vhost}"?`, async () => {
            await api('DELETE', apiPath);
            ok(`Exchange ${name} deleted.`);
            location.hash = '#/exchanges';
          })));
    }
    page.append(...content);
    ctx.every(LIST_POLL_MS, refresh);
  }

  // ------------------------------------------------------------------ queues

  function pageQueues(ctx, page) {
    const list = listView(ctx, {
      url: '/api/queues',
      testid: 'queues-table',
      caption: 'Queues',
      filterLabel: 'Filter queues',
      empty: 'No queues.',
      rowAttrs: (q) => ({ 'data-testid': 'queue-row', 'data-name': q.name, 'data-vhost': q.vhost }),
      columns: [
        { label: 'Virtual host', cell: (q) => q.vhost },
        { label: 'Name', cell: (q) => link(queueHref(q.vhost, q.name), q.name, { 'data-testid': 'queue-link' }) },
        { label: 'Type', cell: (q) => q.type || 'classic' },
        { label: 'Features', cell: (q) => features(q) },
        { label: 'Policy', cell: (q) => [q.policy || '', q.operator_policy ? h('div', { class: 'sub' }, `operator: ${q.operator_policy}`) : null] },
        { label: 'State', cell: (q) => q.state || '' },
        { label: 'Ready', num: true, cell: (q) => fmtNum(q.messages_ready) },
        { label: 'Unacked', num: true, cell: (q) => fmtNum(q.messages_unacknowledged) },
        { label: 'Total', num: true, cell: (q) => fmtNum(q.messages) },
        { label: 'Consumers', num: true, cell: (q) => fmtNum(q.consumers) },
      ],
    });

    const vhost = vhostSelect('queue-add-vhost', ctx);
    const name = h('input', { id: 'queue-add-name', name: 'name', required: true, autocomplete: 'off' });
    const durable = select('queue-add-durable', [['true', 'Durable'], ['false', 'Transient']], 'true');
    const autoDelete = h('input', { id: 'queue-add-auto-delete', type: 'checkbox' });
    const args = jsonArea('queue-add-arguments', '{"x-message-ttl": 60000, "x-dead-letter-exchange": "dlx"}');
    const form = onSubmit(h('form', { id: 'queue-add-form', 'data-testid': 'queue-add-form', class: 'form grid' },
      field('Virtual host', vhost), field('Name', name), field('Durability', durable),
      checkboxField('Auto delete', autoDelete),
      field('Arguments (JSON object)', args, 'x-message-ttl, x-expires, x-max-length, x-overflow, x-dead-letter-exchange, x-dead-letter-routing-key, x-max-priority, x-queue-type, …'),
      h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'btn', id: 'queue-add-submit' }, 'Add queue'))),
    async () => {
      const body = { durable: durable.value === 'true', auto_delete: autoDelete.checked, arguments: parseJsonObject(args, 'Arguments') };
      await api('PUT', `/api/queues/${enc(vhost.value)}/${enc(name.value)}`, body);
      ok(`Queue ${name.value} declared in ${vhost.value}.`);
      name.value = '';
      list.refresh();
    });

    page.append(pageHeader('Queues'), section('All queues', 'queues', list.el), section('Add a new queue', 'queue-add', form));
    ctx.every(LIST_POLL_MS, list.refresh);
  }

  function pageQueue(ctx, page, vhost, qname) {
    const apiPath = `/api/queues/${enc(vhost)}/${enc(qname)}`;
    const details = h('div', { 'data-testid': 'queue-details' }, 'Loading…');
    const counts = dataTable({
      testid: 'queue-counts',
      caption: 'Message counts and counters',
      columns: [
        { label: 'Messages', key: 'label', cell: (r) => r.label },
        { label: 'Count', key: 'value', num: true, cell: (r) => (r.bytes ? fmtBytes(r.value) : fmtNum(r.value)) },
      ],
      rowAttrs: (r) => ({ 'data-key': r.key }),
    });
    const consumers = dataTable({
      testid: 'queue-consumers',
      caption: 'Consumers',
      empty: 'No consumers.',
      rowAttrs: (c) => ({ 'data-testid': 'consumer-row', 'data-tag': c.consumer_tag }),
      columns: [
        { label: 'Channel', cell: (c) => (c.channel_details || {}).name || '' },
        { label: 'Consumer tag', cell: (c) => c.consumer_tag },
        { label: 'Ack required', cell: (c) => yesNo(c.ack_required) },
        { label: 'Exclusive', cell: (c) => yesNo(c.exclusive) },
        { label: 'Prefetch', num: true, cell: (c) => fmtNum(c.prefetch_count) },
        { label: 'Active', cell: (c) => c.activity_status || yesNo(c.active) },
        { label: 'Arguments', cell: (c) => h('code', null, fmtJson(c.arguments)) },
      ],
    });
    const bindings = dataTable({
      testid: 'queue-bindings',
      caption: 'Bindings',
      empty: 'No bindings.',
      rowAttrs: (b) => ({ 'data-testid': 'binding-row', 'data-source': b.source, 'data-routing-key': b.routing_key }),
      columns: [
        { label: 'From', cell: (b) => (b.source === '' ? '(Default exchange binding)' : link(exchangeHref(b.vhost, b.source), b.source)) },
        { label: 'Routing key', cell: (b) => b.routing_key },
        { label: 'Arguments', cell: (b) => h('code', null, fmtJson(b.arguments)) },
        {
          label: 'Actions',
          cell: (b) => (b.source === '' ? '' : actionButton('Unbind', { class: 'btn btn-secondary btn-small', 'data-testid': 'binding-unbind', 'aria-label': `Unbind from ${b.source} with routing key ${b.routing_key}` }, null, async () => {
            await api('DELETE', `/api/bindings/${enc(vhost)}/e/${enc(b.source)}/q/${enc(qname)}/${enc(b.properties_key)}`);
            ok(`Unbound from ${b.source} (routing key "${b.routing_key}").`);
            refresh();
          })),
        },
      ],
    });

    let missing = false;
    const refresh = poller(ctx, async () => {
      let q;
      try {
        q = await get(apiPath);
      } catch (e) {
        if (e instanceof ApiError && e.status === 404) {
          if (!missing && ctx.alive) {
            missing = true;
            details.replaceChildren(h('p', { class: 'empty', 'data-testid': 'queue-missing' }, `Queue ${qname} does not exist in virtual host ${vhost}.`));
          }
          return;
        }
        throw e;
      }
      missing = false;
      const bs = await get(`${apiPath}/bindings`);
      if (!ctx.alive) return;
      const sig = JSON.stringify([q.type, q.state, q.durable, q.auto_delete, q.exclusive, q.arguments, q.policy, q.operator_policy, q.effective_policy_definition, q.consumers, q.node, q.consumer_utilisation]);
      if (details.dataset.sig !== sig) {
        details.dataset.sig = sig;
        details.replaceChildren(dl([
          ['Type', q.type || 'classic'], ['State', q.state], ['Durable', yesNo(q.durable)],
          ['Auto delete', yesNo(q.auto_delete)], ['Exclusive', yesNo(q.exclusive)],
          ['Arguments', h('code', null, fmtJson(q.arguments))],
          ['Policy', q.policy || ''], ['Operator policy', q.operator_policy || ''],
          ['Effective policy definition', h('code', null, fmtJson(q.effective_policy_definition))],
          ['Consumers', fmtNum(q.consumers)], ['Node', q.node],
        ]));
      }
      const st = q.message_stats || {};
      counts.update([
        { key: 'ready', label: 'Ready', value: q.messages_ready },
        { key: 'unacked', label: 'Unacked', value: q.messages_unacknowledged },
        { key: 'total', label: 'Total', value: q.messages },
        { key: 'bytes', label: 'Message bytes', value: q.message_bytes, bytes: true },
        { key: 'persistent', label: 'Persistent', value: q.messages_persistent },
        { key: 'paged', label: 'Paged out', value: q.messages_paged_out },
        { key: 'publish', label: 'Published (counter)', value: st.publish || 0 },
        { key: 'deliver_get', label: 'Delivered / got (counter)', value: st.deliver_get || 0 },
        { key: 'ack', label: 'Acknowledged (counter)', value: st.ack || 0 },
        { key: 'redeliver', label: 'Redelivered (counter)', value: st.redeliver || 0 },
      ]);
      consumers.update(q.consumer_details || []);
      bindings.update(Array.isArray(bs) ? bs : []);
    });

    // Add binding
    const bindSource = h('input', { id: 'binding-add-exchange', required: true, autocomplete: 'off', list: 'binding-add-exchanges' });
    const bindList = h('datalist', { id: 'binding-add-exchanges' });
    get(`/api/exchanges/${enc(vhost)}`).then((xs) => {
      if (ctx.alive) bindList.replaceChildren(...xs.filter((x) => x.name !== '').map((x) => h('option', { value: x.name })));
    }).catch(() => {});
    const bindKey = h('input', { id: 'binding-add-routing-key', autocomplete: 'off' });
    const bindArgs = jsonArea('binding-add-arguments', '{"x-match": "any"}');
    const bindForm = onSubmit(h('form', { id: 'binding-add-form', 'data-testid': 'binding-add-form', class: 'form grid' },
      field('From exchange', bindSource), bindList, field('Routing key', bindKey), field('Arguments (JSON object)', bindArgs),
      h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'btn', id: 'binding-add-submit' }, 'Bind'))),
    async () => {
      await api('POST', `/api/bindings/${enc(vhost)}/e/${enc(bindSource.value)}/q/${enc(qname)}`,
        { routing_key: bindKey.value, arguments: parseJsonObject(bindArgs, 'Arguments') });
      ok(`Bound ${qname} to exchange ${bindSource.value}.`);
      refresh();
    });

    // Publish through the default exchange
    const pub = publishFields('publish', { routingKey: false });
    const pubForm = onSubmit(h('form', { id: 'publish-form', 'data-testid': 'publish-form', class: 'form' },
      h('p', { class: 'hint' }, 'Published through the default exchange with routing key ', h('code', null, qname), '.'),
      pub.fields,
      h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'btn', id: 'publish-submit', 'data-testid': 'publish-submit' }, 'Publish message'))),
    async () => {
      const res = await api('POST', `/api/exchanges/${enc(vhost)}/amq.default/publish`, pub.body(qname));
      ok(routedMessage(res));
      refresh();
    });

    // Get messages
    const getCount = h('input', { id: 'get-count', type: 'number', min: 1, value: '1', required: true });
    const ackmode = select('get-ackmode', [
      ['ack_requeue_true', 'Nack message requeue true'],
      ['ack_requeue_false', 'Automatic ack'],
      ['reject_requeue_true', 'Reject requeue true'],
    ], 'ack_requeue_true');
    const encoding = select('get-encoding', [['auto', 'Auto string / base64'], ['base64', 'Base64']], 'auto');
    const results = h('div', { id: 'get-results', 'data-testid': 'get-results', 'aria-live': 'polite' });
    const getForm = onSubmit(h('form', { id: 'get-form', 'data-testid': 'get-form', class: 'form grid' },
      h('p', { class: 'hint wide' }, 'Getting messages is destructive when the ack mode does not requeue them.'),
      field('Ack mode', ackmode), field('Encoding', encoding), field('Messages', getCount),
      h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'btn', id: 'get-submit', 'data-testid': 'get-submit' }, 'Get message(s)'))),
    async () => {
      const msgs = await api('POST', `${apiPath}/get`, {
        count: Math.max(1, Number(getCount.value) || 1), ackmode: ackmode.value, encoding: encoding.value, truncate: 50000,
      });
      renderMessages(results, Array.isArray(msgs) ? msgs : []);
      refresh();
    });

    const purge = actionButton('Purge messages', { class: 'btn btn-secondary', id: 'queue-purge', 'data-testid': 'queue-purge' },
      `Purge all ready messages from queue "${qname}"?`, async () => {
        await api('DELETE', `${apiPath}/contents`);
        ok(`Queue ${qname} purged.`);
        refresh();
      });
    const del = actionButton('Delete queue', { class: 'btn btn-danger', id: 'queue-delete', 'data-testid': 'queue-delete' },
      `Delete queue "${qname}" in virtual host "${vhost}"?`, async () => {
        await api('DELETE', apiPath);
        ok(`Queue ${qname} deleted.`);
        location.hash = '#/queues';
      });

    page.append(
      pageHeader(`Queue ${qname}`, `Virtual host ${vhost}`),
      h('div', { class: 'two-col' }, section('Details', 'queue-details-section', details),
        section('Messages', 'queue-counts-section', counts.el)),
      section('Consumers', 'queue-consumers-section', consumers.el),
      section('Bindings', 'queue-bindings-section', bindings.el, h('h3', null, 'Add binding to this queue'), bindForm),
      section('Publish message', 'queue-publish-section', pubForm),
      section('Get messages', 'queue-get-section', getForm, results),
      section('Purge and delete', 'queue-danger-section', h('div', { class: 'actions' }, purge, del)),
    );
    ctx.every(LIST_POLL_MS, refresh);
  }

  function renderMessages(container, msgs) {
    if (!msgs.length) {
      container.replaceChildren(h('p', { class: 'empty', 'data-testid': 'get-empty' }, 'Queue is empty.'));
      return;
    }
    container.replaceChildren(...msgs.map((m, i) => {
      const props = m.properties || {};
      const propPairs = Object.entries(props).map(([k, v]) => [k, typeof v === 'object' ? h('code', null, JSON.stringify(v)) : String(v)]);
      return h('article', { class: 'message', 'data-testid': 'get-message' },
        h('h3', null, `Message ${i + 1}`),
        h('p', { class: 'sub' }, `The server reported ${fmtNum(m.message_count)} message${m.message_count === 1 ? '' : 's'} remaining.`),
        dl([
          ['Exchange', exchangeLabel(m.exchange || '')], ['Routing key', m.routing_key], ['Redelivered', yesNo(m.redelivered)],
          ['Payload', `${fmtNum(m.payload_bytes)} bytes, encoding: ${m.payload_encoding}`],
        ]),
        h('h4', null, 'Properties'),
        propPairs.length ? dl(propPairs) : h('p', { class: 'empty' }, 'No properties.'),
        h('h4', null, 'Payload'),
        h('pre', { class: 'payload', 'data-testid': 'get-message-payload' }, m.payload));
    }));
  }

  // ------------------------------------------------------------------ users & permissions

  function pageUsers(ctx, page) {
    let userNames = [];
    const permTable = dataTable({
      testid: 'permissions-table',
      caption: 'Permissions',
      empty: 'No permissions.',
      rowAttrs: (p) => ({ 'data-testid': 'permission-row', 'data-user': p.user, 'data-vhost': p.vhost }),
      columns: [
        { label: 'User', cell: (p) => p.user },
        { label: 'Virtual host', cell: (p) => p.vhost },
        { label: 'Configure', cell: (p) => h('code', null, p.configure) },
        { label: 'Write', cell: (p) => h('code', null, p.write) },
        { label: 'Read', cell: (p) => h('code', null, p.read) },
        {
          label: 'Actions',
          cell: (p) => actionButton('Clear', { class: 'btn btn-secondary btn-small', 'data-testid': 'permission-clear', 'aria-label': `Clear permissions of ${p.user} in ${p.vhost}` },
            `Clear the permissions of "${p.user}" in virtual host "${p.vhost}"?`, async () => {
              await api('DELETE', `/api/permissions/${enc(p.vhost)}/${enc(p.user)}`);
              ok(`Permissions of ${p.user} in ${p.vhost} cleared.`);
              list.refresh();
            }),
        },
      ],
    });

    const permUser = h('select', { id: 'permission-user', required: true });
    function fillUserOptions() {
      const sig = userNames.join('\n');
      if (permUser.dataset.sig === sig) return;
      permUser.dataset.sig = sig;
      const prev = permUser.value;
      permUser.replaceChildren(...userNames.map((n) => h('option', { value: n }, n)));
      if (userNames.includes(prev)) permUser.value = prev;
    }

    // One poll loads users and permissions: the users table shows each user's vhosts.
    const list = listView(ctx, {
      load: async () => {
        const [users, perms] = await Promise.all([get('/api/users'), get('/api/permissions')]);
        if (!ctx.alive) return users;
        const byUser = {};
        for (const p of perms) (byUser[p.user] = byUser[p.user] || []).push(p.vhost);
        permTable.update(perms.slice().sort((a, b) => a.user.localeCompare(b.user) || a.vhost.localeCompare(b.vhost)));
        userNames = users.map((u) => u.name).sort();
        fillUserOptions();
        return users.map((u) => ({ ...u, vhosts_with_access: (byUser[u.name] || []).sort().join(', ') }));
      },
      testid: 'users-table',
      caption: 'Users',
      filterLabel: 'Filter users',
      empty: 'No users.',
      sort: (a, b) => a.name.localeCompare(b.name),
      rowAttrs: (u) => ({ 'data-testid': 'user-row', 'data-name': u.name }),
      columns: [
        { label: 'Name', cell: (u) => u.name },
        { label: 'Tags', cell: (u) => (Array.isArray(u.tags) ? u.tags : String(u.tags || '').split(',')).filter(Boolean).map((t) => h('span', { class: 'tag' }, t)) },
        { label: 'Can access virtual hosts', cell: (u) => u.vhosts_with_access || 'No access' },
        { label: 'Has password', cell: (u) => yesNo(!!u.password_hash) },
        {
          label: 'Actions',
          cell: (u) => actionButton('Delete', { class: 'btn btn-danger btn-small', 'data-testid': 'user-delete', 'aria-label': `Delete user ${u.name}` },
            `Delete user "${u.name}"?`, async () => {
              await api('DELETE', `/api/users/${enc(u.name)}`);
              ok(`User ${u.name} deleted.`);
              list.refresh();
            }),
        },
      ],
    });

    const name = h('input', { id: 'user-add-name', name: 'username', required: true, autocomplete: 'off' });
    const password = h('input', { id: 'user-add-password', name: 'new-password', type: 'password', autocomplete: 'new-password', required: true });
    const noPassword = h('input', { id: 'user-add-no-password', type: 'checkbox' });
    noPassword.addEventListener('change', () => {
      password.required = !noPassword.checked;
      password.disabled = noPassword.checked;
      if (noPassword.checked) password.value = '';
    });
    const tags = h('input', { id: 'user-add-tags', name: 'tags', autocomplete: 'off', placeholder: 'administrator, monitoring' });
    const tagButtons = h('div', { class: 'tag-buttons' }, 'Add tag: ',
      ['administrator', 'monitoring', 'policymaker', 'management', 'impersonator'].map((t) => button(t, {
        class: 'btn btn-link',
        onclick: () => {
          const cur = tags.value.split(',').map((s) => s.trim()).filter(Boolean);
          if (!cur.includes(t)) cur.push(t);
          tags.value = cur.join(', ');
        },
      })),
      button('clear', { class: 'btn btn-link', onclick: () => { tags.value = ''; } }));
    const userForm = onSubmit(h('form', { id: 'user-add-form', 'data-testid': 'user-add-form', class: 'form grid' },
      field('Username', name),
      field('Password', password, 'Saving an existing user replaces its password and tags.'),
      checkboxField('No password (cannot log in with a password)', noPassword),
      field('Tags (comma separated)', tags), tagButtons,
      h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'btn', id: 'user-add-submit', 'data-testid': 'user-add-submit' }, 'Add / update user'))),
    async () => {
      const body = { tags: tags.value.split(',').map((s) => s.trim()).filter(Boolean).join(',') };
      if (noPassword.checked) body.password_hash = '';
      else body.password = password.value;
      await api('PUT', `/api/users/${enc(name.value)}`, body);
      ok(`User ${name.value} saved.`);
      name.value = '';
      password.value = '';
      tags.value = '';
      list.refresh();
    });

    const permVhost = vhostSelect('permission-vhost', ctx);
    const configure = h('input', { id: 'permission-configure', value: '.*', autocomplete: 'off', class: 'mono' });
    const write = h('input', { id: 'permission-write', value: '.*', autocomplete: 'off', class: 'mono' });
    const read = h('input', { id: 'permission-read', value: '.*', autocomplete: 'off', class: 'mono' });
    const permForm = onSubmit(h('form', { id: 'permission-form', 'data-testid': 'permission-form', class: 'form grid' },
      field('User', permUser), field('Virtual host', permVhost), field('Configure regexp', configure),
      field('Write regexp', write), field('Read regexp', read),
      h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'btn', id: 'permission-submit' }, 'Set permission'))),
    async () => {
      await api('PUT', `/api/permissions/${enc(permVhost.value)}/${enc(permUser.value)}`,
        { configure: configure.value, write: write.value, read: read.value });
      ok(`Permissions of ${permUser.value} in ${permVhost.value} set.`);
      list.refresh();
    });

    page.append(pageHeader('Users'),
      section('All users', 'users', list.el),
      section('Add or update a user', 'user-add', userForm),
      section('Permissions', 'permissions', permTable.el, h('h3', null, 'Set permission'), permForm));
    ctx.every(LIST_POLL_MS, list.refresh);
  }

  // ------------------------------------------------------------------ vhosts

  function pageVhosts(ctx, page) {
    const list = listView(ctx, {
      url: '/api/vhosts',
      testid: 'vhosts-table',
      caption: 'Virtual hosts',
      filterLabel: 'Filter virtual hosts',
      empty: 'No virtual hosts.',
      sort: (a, b) => a.name.localeCompare(b.name),
      rowAttrs: (v) => ({ 'data-testid': 'vhost-row', 'data-name': v.name }),
      columns: [
        { label: 'Name', cell: (v) => v.name },
        { label: 'Description', cell: (v) => v.description || '' },
        { label: 'Tags', cell: (v) => (Array.isArray(v.tags) ? v.tags : []).map((t) => h('span', { class: 'tag' }, t)) },
        { label: 'Default queue type', cell: (v) => v.default_queue_type || '' },
        { label: 'State', cell: (v) => Object.values(v.cluster_state || {}).join(', ') },
        { label: 'Ready', num: true, cell: (v) => fmtNum(v.messages_ready) },
        { label: 'Unacked', num: true, cell: (v) => fmtNum(v.messages_unacknowledged) },
        { label: 'Total', num: true, cell: (v) => fmtNum(v.messages) },
        {
          label: 'Actions',
          cell: (v) => actionButton('Delete', { class: 'btn btn-danger btn-small', 'data-testid': 'vhost-delete', 'aria-label': `Delete virtual host ${v.name}` },
            `Delete virtual host "${v.name}" and everything in it?`, async () => {
              await api('DELETE', `/api/vhosts/${enc(v.name)}`);
              ok(`Virtual host ${v.name} deleted.`);
              list.refresh();
            }),
        },
      ],
    });
    const name = h('input', { id: 'vhost-add-name', required: true, autocomplete: 'off' });
    const description = h('input', { id: 'vhost-add-description', autocomplete: 'off' });
    const tags = h('input', { id: 'vhost-add-tags', autocomplete: 'off', placeholder: 'production, eu' });
    const form = onSubmit(h('form', { id: 'vhost-add-form', 'data-testid': 'vhost-add-form', class: 'form grid' },
      field('Name', name), field('Description', description), field('Tags (comma separated)', tags),
      h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'btn', id: 'vhost-add-submit' }, 'Add virtual host'))),
    async () => {
      await api('PUT', `/api/vhosts/${enc(name.value)}`, {
        description: description.value, tags: tags.value.split(',').map((s) => s.trim()).filter(Boolean).join(','),
      });
      ok(`Virtual host ${name.value} added.`);
      name.value = '';
      description.value = '';
      tags.value = '';
      list.refresh();
    });
    page.append(pageHeader('Virtual hosts'), section('All virtual hosts', 'vhosts', list.el), section('Add a new virtual host', 'vhost-add', form));
    ctx.every(LIST_POLL_MS, list.refresh);
  }

  // ------------------------------------------------------------------ policies

  function pagePolicies(ctx, page) {
    const list = listView(ctx, {
      url: '/api/policies',
      testid: 'policies-table',
      caption: 'Policies',
      filterLabel: 'Filter policies',
      empty: 'No policies.',
      rowAttrs: (p) => ({ 'data-testid': 'policy-row', 'data-name': p.name, 'data-vhost': p.vhost }),
      columns: [
        { label: 'Virtual host', cell: (p) => p.vhost },
        { label: 'Name', cell: (p) => p.name },
        { label: 'Pattern', cell: (p) => h('code', null, p.pattern) },
        { label: 'Apply to', cell: (p) => p['apply-to'] },
        { label: 'Definition', cell: (p) => h('code', null, JSON.stringify(p.definition)) },
        { label: 'Priority', num: true, cell: (p) => fmtNum(p.priority) },
        {
          label: 'Actions',
          cell: (p) => actionButton('Delete', { class: 'btn btn-danger btn-small', 'data-testid': 'policy-delete', 'aria-label': `Delete policy ${p.name}` },
            `Delete policy "${p.name}" in virtual host "${p.vhost}"?`, async () => {
              await api('DELETE', `/api/policies/${enc(p.vhost)}/${enc(p.name)}`);
              ok(`Policy ${p.name} deleted.`);
              list.refresh();
            }),
        },
      ],
    });
    const vhost = vhostSelect('policy-vhost', ctx);
    const name = h('input', { id: 'policy-name', required: true, autocomplete: 'off' });
    const pattern = h('input', { id: 'policy-pattern', required: true, autocomplete: 'off', class: 'mono', placeholder: '^orders\\.' });
    const applyTo = select('policy-apply-to', [['all', 'Exchanges and queues'], ['queues', 'Queues'], ['exchanges', 'Exchanges']], 'all');
    const priority = h('input', { id: 'policy-priority', type: 'number', value: '0' });
    const definition = jsonArea('policy-definition', '{"max-length": 1000, "dead-letter-exchange": "dlx"}', 4);
    definition.required = true;
    const form = onSubmit(h('form', { id: 'policy-form', 'data-testid': 'policy-form', class: 'form grid' },
      field('Virtual host', vhost), field('Name', name), field('Pattern (regular expression)', pattern),
      field('Apply to', applyTo), field('Priority', priority),
      field('Definition (JSON object)', definition, 'message-ttl, expires, max-length, max-length-bytes, overflow, dead-letter-exchange, dead-letter-routing-key, alternate-exchange, …'),
      h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'btn', id: 'policy-submit' }, 'Add / update policy'))),
    async () => {
      const body = {
        pattern: pattern.value, definition: parseJsonObject(definition, 'Definition', { required: true }),
        priority: Number(priority.value) || 0, 'apply-to': applyTo.value,
      };
      await api('PUT', `/api/policies/${enc(vhost.value)}/${enc(name.value)}`, body);
      ok(`Policy ${name.value} saved in ${vhost.value}.`);
      list.refresh();
    });
    page.append(pageHeader('Policies'), section('User policies', 'policies', list.el), section('Add or update a policy', 'policy-add', form));
    ctx.every(LIST_POLL_MS, list.refresh);
  }

  // ------------------------------------------------------------------ definitions

  function pageDefinitions(_ctx, page) {
    const summary = h('div', { 'data-testid': 'definitions-summary' });
    const download = actionButton('Download broker definitions', { class: 'btn', id: 'definitions-download', 'data-testid': 'definitions-download' }, null, async () => {
      const defs = await get('/api/definitions');
      const blob = new Blob([JSON.stringify(defs, null, 2)], { type: 'application/json' });
      const url = URL.createObjectURL(blob);
      const stamp = new Date().toISOString().slice(0, 19).replace(/[:T]/g, '-');
      const a = h('a', { href: url, download: `warren-definitions-${stamp}.json`, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      summary.replaceChildren(h('p', null, `Exported: ${describeDefinitions(defs)}.`));
      ok('Definitions downloaded.');
    });

    const file = h('input', { id: 'definitions-file', type: 'file', accept: '.json,application/json', required: true });
    const form = onSubmit(h('form', { id: 'definitions-upload-form', 'data-testid': 'definitions-upload-form', class: 'form' },
      field('Definitions file (JSON)', file),
      h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'btn', id: 'definitions-upload', 'data-testid': 'definitions-upload' }, 'Upload broker definitions'))),
    async () => {
      const f = file.files && file.files[0];
      if (!f) throw new Error('Choose a definitions file first.');
      const text = await f.text();
      let defs;
      try { defs = JSON.parse(text); } catch (e) { throw new Error(`${f.name} is not valid JSON (${e.message}).`); }
      if (!defs || typeof defs !== 'object' || Array.isArray(defs)) throw new Error(`${f.name} does not contain a JSON object.`);
      await api('POST', '/api/definitions', defs);
      ok(`Definitions imported from ${f.name}: ${describeDefinitions(defs)}.`);
      file.value = '';
    });

    page.append(pageHeader('Definitions'),
      section('Export definitions', 'definitions-export',
        h('p', null, 'Users, virtual hosts, permissions, policies, exchanges, queues and bindings as one JSON file.'),
        h('div', { class: 'actions' }, download), summary),
      section('Import definitions', 'definitions-import',
        h('p', null, 'Objects in the file are created or updated; nothing is deleted.'), form));
  }

  function describeDefinitions(d) {
    const keys = ['users', 'vhosts', 'permissions', 'policies', 'queues', 'exchanges', 'bindings'];
    return keys.filter((k) => Array.isArray(d[k])).map((k) => `${d[k].length} ${k}`).join(', ') || 'no objects';
  }

  // ------------------------------------------------------------------ start

  function start() {
    $('login-form').addEventListener('submit', login);
    $('logout').addEventListener('click', logout);
    window.addEventListener('hashchange', () => { if (auth) route(); });
    if (!auth) { showLogin(); return; }
    rawRequest('GET', '/api/whoami', undefined, auth).then(({ data }) => {
      if (data && data.name) sessionStorage.setItem(USER_KEY, data.name);
      showApp();
    }).catch((e) => {
      if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
        clearSession();
        showLogin();
        showMessage('error', `Please log in again (${e.reason || e.error}).`);
      } else {
        showApp();
        showError(e);
      }
    });
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
