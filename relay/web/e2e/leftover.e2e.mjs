// The keys an older version of the web client left in IndexedDB on `tandem up`'s plain-http origin
// (found by review r2). Before keys were kept in memory on such origins, the app kept the device key
// and every desktop's link in IndexedDB on `http://<lan address>:<port>` (the database `tandem`,
// the same name and schema the app still uses where it may keep keys). A page served at that
// address on another network (docs/SECURITY.md §3, O2 in origin.e2e.mjs) could read them, and the
// desktop still honours them. The app as it is now deletes that database on such an origin before
// anything else.
//
// L1 leaves such a database on the origin, as the older app did (its schema, a device key and a
// desktop row), from a page of the origin that is not the app; L2 opens a new code with the app as
// it is now, in the same browser profile, and shows that no page of the origin finds the database
// any more. (That `tandem up` names a web device the older app paired, so the user revokes it, is
// `tandem_up_warns_about_web_pages_that_kept_their_keys` in desktop-agent/tests/up.rs.)
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

describe('web client on `tandem up`: an older version\'s keys are gone from the origin', { concurrency: false }, () => {
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

  test('L1. an older app\'s database (device key, a desktop\'s link) is on this origin', { timeout: 90_000 }, async () => {
    const { context, page } = await phone(false);
    await page.goto(`http://${s.host}:${s.port}/healthz`);
    s.oldDevice = await page.evaluate(async () => {
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
      tx.objectStore('kv').put('11'.repeat(32), 'device-key');
      tx.objectStore('desktops').put({ id: 'desktop-of-the-older-app', name: 'build-box', platform: 'linux', relayUrl: location.origin, pairedAt: 1, link: { session: 'keys' } });
      await new Promise((res) => (tx.oncomplete = res));
      db.close();
      return (await indexedDB.databases()).map((d) => d.name);
    });
    assert.deepEqual(s.oldDevice, ['tandem'], 'the older app\'s database is on the origin');
    await context.close();
  });

  test('L2. the phone opens a new code with the app as it is now: no page of the origin finds the older app\'s keys any more', { timeout: 90_000 }, async () => {
    assert.ok(s.oldDevice, 'L1 left the database');
    // Nothing is paired: `tandem up` shows its first code.
    const link = withNonce(await nextCode());
    const { page } = await phone(false);
    await open(page, link);
    assert.equal(await page.evaluate(() => isSecureContext), false);
    await expectVisible(page, '[data-testid=ephemeral]', 'the memory-only note');
    await expectScreen(page, 'desktop', 30_000);
    await s.up.waitLine(/Paired with/);
    // The new app paired as ephemeral.
    assert.ok(peerFiles().every((p) => p.info.ephemeral === true), 'the new app pairs as ephemeral');
    // What a page of this origin (the attacker's on another network) reads now.
    const found = await page.evaluate(probe);
    s.stolen = found.tandem ?? null;
    assert.deepEqual(
      Object.keys(found),
      [],
      `the app on an origin that is not a secure context left the older version's database in place: ${JSON.stringify(found).slice(0, 400)}`,
    );
  });
});
