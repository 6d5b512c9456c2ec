// Review r2 (proof of concept): the keys an older version of the web client left in IndexedDB on
// `tandem up`'s plain-http origin. Before the change under review the app kept the device key and
// every desktop's link in IndexedDB on `http://<lan address>:<port>` (the database `tandem`, the
// same name and schema the app still uses on secure contexts). The new app keeps its keys in
// memory on such an origin but never removes what an older version stored there, so after the
// upgrade a page served at that address on another network (docs/SECURITY.md §3, O2 in
// origin.e2e.mjs) still reads a device key and a link that the desktop still honours: a lasting,
// non-ephemeral device with `approve` scope, never forgotten.
//
// The older version is reproduced by the same app code running where it used IndexedDB:
// Chromium's `--unsafely-treat-insecure-origin-as-secure` for the LAN origin makes the page a
// secure context, so it stores what the older app stored (same database, same rows) and pairs
// without `ephemeral`, as the older app did. Then the same browser profile, without the flag, runs
// the app as it is now.
//
//   node --test e2e/leftover.e2e.mjs   (needs target/debug/tandem, zbarimg and chromium)
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, readdirSync, rmSync } from 'node:fs';
import { createServer as createTcpServer } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { PHONE, Run, WAIT, chromiumPath, expectScreen, expectVisible, lanHost, open, waitFinished, zbarimg } from './harness.mjs';

const s = { run: null, host: null, port: 0, agentDir: null, up: null, profile: null, stolen: null, oldDevice: null, contexts: [] };
const bare = (h) => h.replace(/^\[|\]$/g, '');

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

const withNonce = (link) => {
  const [base, payload] = link.split('#');
  return /[?&]n=/.test(base) ? link : `${base}?n=${randomBytes(5).toString('hex')}#${payload}`;
};

/** The next code `tandem up` shows (Enter shows one), read from its QR code. */
async function nextCode() {
  const m = await s.up.waitLine(/pairing link: (\S+)/);
  const scanned = zbarimg(join(s.run.dir, 'up.png'));
  assert.equal(scanned, m[1]);
  return scanned;
}

/** A persistent browser profile (the phone's browser across the upgrade). */
async function phone(secureFlag) {
  const { chromium } = await import('playwright-core');
  const origin = `http://${s.host}:${s.port}`;
  const args = secureFlag ? [`--unsafely-treat-insecure-origin-as-secure=${origin}`] : [];
  const context = await chromium.launchPersistentContext(s.profile, { executablePath: chromiumPath(), headless: true, args, ...PHONE });
  context.setDefaultTimeout(WAIT);
  s.contexts.push(context);
  return { context, page: context.pages()[0] ?? (await context.newPage()) };
}

/** Every IndexedDB database of the page's origin, every row of every store (what an attacker's script reads). */
function probe() {
  return (async () => {
    const out = {};
    for (const { name } of await indexedDB.databases()) {
      const db = await new Promise((res, rej) => {
        const r = indexedDB.open(name);
        r.onsuccess = () => res(r.result);
        r.onerror = () => rej(r.error);
      });
      out[name] = {};
      for (const store of db.objectStoreNames) {
        out[name][store] = await new Promise((res) => {
          const tx = db.transaction(store);
          const keys = tx.objectStore(store).getAllKeys();
          const vals = tx.objectStore(store).getAll();
          tx.oncomplete = () => res(keys.result.map((k, i) => [k, vals.result[i]]));
        });
      }
      db.close();
    }
    return out;
  })();
}

function peerFiles() {
  const dir = join(s.agentDir, 'peers');
  return readdirSync(dir)
    .filter((f) => /^[a-z2-7]+\.json$/.test(f))
    .map((f) => JSON.parse(readFileSync(join(dir, f), 'utf8')).peer);
}

describe('review r2: an older version\'s keys on `tandem up`\'s origin', { concurrency: false }, () => {
  before(async () => {
    s.run = new Run();
    s.agentDir = join(s.run.dir, 'desktop');
    s.profile = join(s.run.dir, 'phone-profile');
    s.host = lanHost();
    assert.ok(s.host, 'needs a private IPv4 or IPv6 ULA address');
    s.port = await freePort(s.host);
    const png = join(s.run.dir, 'up.png');
    s.up = s.run.tandem('up', s.agentDir, ['up', '--listen', `${s.host}:${s.port}`, '--yes', '--qr-png', png, '--print-url', '--no-terminal-qr'], { stdin: true });
  });

  after(async () => {
    for (const c of s.contexts) await c.close().catch(() => undefined);
    await s.run?.cleanup();
    if (process.env.E2E_KEEP) console.log(`# logs kept in ${s.run?.logs}`);
    else if (s.run) rmSync(s.run.dir, { recursive: true, force: true });
  });

  test('L1. the older app (keys in IndexedDB on this origin) pairs: a lasting device with approve scope', { timeout: 90_000 }, async () => {
    const link = withNonce(await nextCode());
    const { context, page } = await phone(true);
    await open(page, link);
    assert.equal(await page.evaluate(() => isSecureContext), true, 'the older app stored its keys here');
    await expectScreen(page, 'desktop', 30_000);
    await s.up.waitLine(/Paired with/);
    const peers = peerFiles();
    assert.equal(peers.length, 1);
    assert.equal(peers[0].info.ephemeral ?? false, false);
    assert.equal(peers[0].scope, 'approve');
    s.oldDevice = await page.evaluate(() => document.getElementById('app').dataset.device);
    await context.close();
  });

  test('L2. the phone opens a new code with the app as it is now: no page of the origin finds the older app\'s keys any more', { timeout: 90_000 }, async () => {
    assert.ok(s.oldDevice, 'L1 paired');
    s.up.write('\n');
    const link = withNonce(await nextCode());
    const { page } = await phone(false);
    await open(page, link);
    assert.equal(await page.evaluate(() => isSecureContext), false);
    await expectVisible(page, '[data-testid=ephemeral]', 'the memory-only note');
    await expectScreen(page, 'desktop', 30_000);
    await s.up.waitLine(/Paired with/);
    // The new app's device is ephemeral; the older one is still paired, lasting, approve.
    const peers = peerFiles();
    const old = peers.find((p) => !(p.info.ephemeral ?? false));
    assert.ok(old && old.scope === 'approve', `the older device is still paired: ${JSON.stringify(peers.map((p) => p.info))}`);
    // What a page of this origin (the attacker's on another network) reads now.
    const found = await page.evaluate(probe);
    s.stolen = found.tandem ?? null;
    assert.deepEqual(
      Object.keys(found),
      [],
      `the app on an origin that is not a secure context left the older version's database in place: ${JSON.stringify(found).slice(0, 400)}`,
    );
  });

  test('L3. impact: the rows left there drive the desktop from another browser (a task runs with the older device\'s keys)', { timeout: 90_000 }, async (t) => {
    // Only when L2 found something to steal (the app as it was).
    if (!s.stolen) return t.skip('nothing was left to steal');
    const kv = new Map(s.stolen.kv);
    assert.ok(typeof kv.get('device-key') === 'string', 'a device key was left');
    // The thief's browser: another profile; the stolen rows written where the app looks for them.
    s.profile = join(s.run.dir, 'thief-profile');
    const { page } = await phone(true);
    await page.goto(`http://${s.host}:${s.port}/healthz`);
    await page.evaluate(async (stolen) => {
      const db = await new Promise((res, rej) => {
        const r = indexedDB.open('tandem', 1);
        r.onupgradeneeded = () => {
          const d = r.result;
          d.createObjectStore('kv');
          d.createObjectStore('desktops', { keyPath: 'id' });
          d.createObjectStore('tasks', { keyPath: ['desktopId', 'taskId'] });
          d.createObjectStore('events', { keyPath: ['desktopId', 'taskId', 'offset'] });
        };
        r.onsuccess = () => res(r.result);
        r.onerror = () => rej(r.error);
      });
      const tx = db.transaction(['kv', 'desktops'], 'readwrite');
      for (const [k, v] of stolen.kv) if (k === 'device-key') tx.objectStore('kv').put(v, k);
      for (const [, row] of stolen.desktops) tx.objectStore('desktops').put(row);
      await new Promise((res) => (tx.oncomplete = res));
      db.close();
    }, s.stolen);
    const desktopId = s.stolen.desktops[0][1].id;
    await page.goto(`http://${s.host}:${s.port}/p?desktop=${desktopId}`);
    await expectScreen(page, 'desktop', 30_000);
    assert.equal(await page.evaluate(() => document.getElementById('app').dataset.device), s.oldDevice, 'the thief runs as the older device');
    await (await expectVisible(page, '[data-testid=compose]', 'the task box')).fill('count 2 10');
    await (await expectVisible(page, '[data-testid=send]', 'send')).tap();
    assert.equal(await waitFinished(page, 'the thief\'s task', 30_000), 'succeeded', 'the desktop ran a task for the stolen keys');
  });
});
