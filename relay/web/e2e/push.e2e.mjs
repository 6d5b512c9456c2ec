// Push notifications in the web client (docs/PUSH.md "Web client"): headless Chromium against a
// real relay and the real desktop agent, paired from the QR code, on 127.0.0.1 (a secure context:
// keys in IndexedDB).
//
// Stand-ins, and only these (docs/PUSH.md says why):
//   * Chrome's real push service is Google's and unreachable here. An init script replaces
//     `PushManager.prototype.subscribe` / `getSubscription` in the page: the subscription it returns
//     has an endpoint on a local push service this test runs (plain http on 127.0.0.1) and keys
//     this test made (P-256 + auth secret), so the test can read what the relay sends there.
//   * That local push service records the relay's POSTs; the test checks them (RFC 8030 headers,
//     the RFC 8292 VAPID JWT against the relay's key) and decrypts them itself (RFC 8291 with Node's
//     crypto: ECDH P-256, HKDF-SHA-256, AES-128-GCM), then hands the plaintext to the service
//     worker with the DevTools protocol's `ServiceWorker.deliverPushMessage` — what a browser's push
//     service would have delivered. That call carries text only, so the blob goes as base64url text
//     (the service worker takes both forms, pushview.ts); the raw bytes are also delivered once as a
//     `PushEvent` in the worker.
//   * Notification actions cannot be tapped in headless Chromium: a `NotificationEvent`
//     (`notificationclick`, action allow / deny) is dispatched in the service worker, on the real
//     notification it shows. Such an event may not open a window (`clients.openWindow` needs a
//     real tap), so for "no page open" the test opens the address the worker would have opened.
//   * The page's visibility is set by an init script (a headless page is always visible), so the
//     page sends the relay `Active` 0 / 1 as a phone's browser would when the tab goes away.
//
// W (the web side, always): the service worker is served as JavaScript at /sw.js with scope /; a
//   blob sealed in Node with a key in the page's IndexedDB shows the decrypted desktop, task and
//   step, Allow / Deny, tag = topic; an unknown key or garbage shows "Tandem / New activity"; Allow
//   with the page open decides the real pending approval through the page (the desktop's audit log
//   has it once, by this phone); Deny with no page open: the page opened at /#decide=… decides it
//   once; the same link again (or one nobody tapped) decides nothing.
// F (the whole chain; skipped when the relay has no `GET /v1/push`): the Notifications control turns
//   on (permission, the relay's VAPID key, PushSubscribe, a key per desktop); hidden, an approval
//   of a `demo` task makes the relay POST RFC 8291 ciphertext that holds none of the task's text;
//   decrypted and delivered, it shows the right text; Allow decides it once; visible (Active 1),
//   nothing is pushed; turned off, nothing is pushed and the keys are gone.
//
//   node --test e2e/push.e2e.mjs   (needs target/debug/tandem-relay and tandem, zbarimg, chromium)
import assert from 'node:assert/strict';
import { createECDH, createPublicKey, hkdfSync, createDecipheriv, randomBytes, verify as verifySig } from 'node:crypto';
import { readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import {
  Run,
  assertNoPageErrors,
  captureFrames,
  describePage,
  expectConn,
  expectScreen,
  expectVisible,
  launchBrowser,
  newPhone,
  open,
  protoModule,
  screenshot,
  sleep,
  taskEvents,
  waitFinished,
  waitUntil,
  zbarimg,
} from './harness.mjs';

const s = {
  run: null,
  browser: null,
  relay: null,
  agentDir: null,
  agent: null,
  phone: null,
  origin: null,
  desktopId: null,
  deviceId: null,
  push: null,
  sub: null,
  cdp: null,
  helper: null,
  regId: null,
  proto: null,
  relayPush: null,
  failed: false,
};

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

const b64u = (b) => Buffer.from(b).toString('base64url');

// ---------------------------------------------------------------------------
// the local push service (a stand-in for the browser vendor's; see the top)

function pushService() {
  const received = [];
  const server = createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      received.push({ method: req.method, path: req.url, headers: req.headers, body: Buffer.concat(chunks), at: Date.now() });
      res.writeHead(201, { location: `/msg/${received.length}` });
      res.end();
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, received, origin: `http://127.0.0.1:${server.address().port}` })));
}

/** The subscription the page will get: keys this test holds, an endpoint on the local push service. */
function subscriptionKeys(origin) {
  const ecdh = createECDH('prime256v1');
  ecdh.generateKeys();
  return { ecdh, endpoint: `${origin}/push/${randomBytes(8).toString('hex')}`, p256dh: ecdh.getPublicKey(), auth: randomBytes(16) };
}

/** RFC 8291 (aes128gcm, RFC 8188), one record: the plaintext the push service would deliver. */
function decryptWebPush(body, sub) {
  const salt = body.subarray(0, 16);
  const rs = body.readUInt32BE(16);
  const idlen = body[20];
  const asPublic = body.subarray(21, 21 + idlen);
  assert.equal(idlen, 65, 'the key id is the sender\'s uncompressed P-256 key');
  const records = body.subarray(21 + idlen);
  assert.ok(records.length <= rs, `one record (${records.length} ≤ rs ${rs})`);
  const secret = sub.ecdh.computeSecret(asPublic);
  const info = Buffer.concat([Buffer.from('WebPush: info\0'), sub.p256dh, asPublic]);
  const ikm = Buffer.from(hkdfSync('sha256', secret, sub.auth, info, 32));
  const cek = Buffer.from(hkdfSync('sha256', ikm, salt, Buffer.from('Content-Encoding: aes128gcm\0'), 16));
  const nonce = Buffer.from(hkdfSync('sha256', ikm, salt, Buffer.from('Content-Encoding: nonce\0'), 12));
  const d = createDecipheriv('aes-128-gcm', cek, nonce);
  d.setAuthTag(records.subarray(records.length - 16));
  const padded = Buffer.concat([d.update(records.subarray(0, records.length - 16)), d.final()]);
  let end = padded.length;
  while (end > 0 && padded[end - 1] === 0) end--;
  assert.equal(padded[end - 1], 2, 'the last record ends with the 0x02 delimiter');
  return padded.subarray(0, end - 1);
}

/** RFC 8292: `vapid t=<ES256 JWT>, k=<the relay's key>`; the JWT verifies under it, for this push service. */
function checkVapid(headers, vapidKey, endpoint) {
  const m = /^vapid t=([^,\s]+),\s*k=([A-Za-z0-9_-]+)$/.exec(headers.authorization ?? '');
  assert.ok(m, `Authorization: vapid t=…, k=… (${headers.authorization})`);
  assert.equal(m[2], b64u(vapidKey), 'k= is the key GET /v1/push gives');
  const [h, p, sig] = m[1].split('.');
  const key = createPublicKey({ key: { kty: 'EC', crv: 'P-256', x: b64u(vapidKey.subarray(1, 33)), y: b64u(vapidKey.subarray(33)) }, format: 'jwk' });
  assert.ok(verifySig('sha256', Buffer.from(`${h}.${p}`), { key, dsaEncoding: 'ieee-p1363' }, Buffer.from(sig, 'base64url')), 'the VAPID JWT verifies');
  const header = JSON.parse(Buffer.from(h, 'base64url'));
  const claims = JSON.parse(Buffer.from(p, 'base64url'));
  assert.equal(header.alg, 'ES256');
  assert.equal(claims.aud, new URL(endpoint).origin, 'aud is the push service\'s origin');
  assert.ok(claims.exp > Date.now() / 1000 && claims.exp <= Date.now() / 1000 + 24 * 3600 + 60, `exp within 24 h: ${claims.exp}`);
  assert.ok(typeof claims.sub === 'string' && claims.sub.length > 0, 'a sub claim');
}

// ---------------------------------------------------------------------------
// the browser side

/** Init script: the fake subscription (see the top) and a settable visibility. */
function pageStandIns({ endpoint, p256dh, auth }) {
  const bytes = (b64u) => Uint8Array.from(atob(b64u.replace(/-/g, '+').replace(/_/g, '/')), (c) => c.charCodeAt(0));
  let current = null;
  window.__push = { subscribeKeys: [], unsubscribed: 0 };
  const make = (options) => {
    const key = new Uint8Array(options.applicationServerKey);
    return {
      endpoint,
      expirationTime: null,
      options: { userVisibleOnly: options.userVisibleOnly, applicationServerKey: key.slice().buffer },
      getKey: (n) => (n === 'p256dh' ? bytes(p256dh).buffer : n === 'auth' ? bytes(auth).buffer : null),
      toJSON: () => ({ endpoint, keys: { p256dh, auth } }),
      unsubscribe: async () => {
        current = null;
        window.__push.unsubscribed++;
        return true;
      },
    };
  };
  PushManager.prototype.subscribe = async function (options) {
    if (options?.userVisibleOnly !== true) throw new DOMException('userVisibleOnly is required', 'NotAllowedError');
    window.__push.subscribeKeys.push(Array.from(new Uint8Array(options.applicationServerKey)));
    current = make(options);
    return current;
  };
  PushManager.prototype.getSubscription = async function () {
    return current;
  };
  let vis = 'visible';
  Object.defineProperty(Document.prototype, 'visibilityState', { configurable: true, get: () => vis });
  Object.defineProperty(Document.prototype, 'hidden', { configurable: true, get: () => vis === 'hidden' });
  window.__setVisibility = (v) => {
    vis = v;
    document.dispatchEvent(new Event('visibilitychange'));
  };
}

async function serviceWorker() {
  const { context } = s.phone;
  // The newest handle: a worker the browser stopped and started again has a new one.
  return waitUntil('the service worker', () => context.serviceWorkers().filter((w) => w.url() === `${s.origin}/sw.js`).at(-1), { timeout: 10_000 });
}

/** The notifications the service worker's registration shows now (read from the page, or the worker when no page is open). */
async function notifications() {
  const shown = (list) => list.map((n) => ({ title: n.title, body: n.body, tag: n.tag, renotify: n.renotify, actions: n.actions.map((a) => a.action), data: n.data }));
  const list = s.phone.page.isClosed()
    ? await (await serviceWorker()).evaluate(async () => (await self.registration.getNotifications()).map((n) => ({ title: n.title, body: n.body, tag: n.tag, renotify: n.renotify, actions: n.actions, data: n.data })))
    : await s.phone.page.evaluate(async () => (await (await navigator.serviceWorker.getRegistration('/')).getNotifications()).map((n) => ({ title: n.title, body: n.body, tag: n.tag, renotify: n.renotify, actions: n.actions, data: n.data })));
  return shown(list);
}

async function closeNotifications() {
  const w = await serviceWorker();
  await w.evaluate(async () => (await self.registration.getNotifications()).forEach((n) => n.close()));
}

/** Deliver a push message to the service worker (CDP), as the browser's push service would. */
async function deliver(data) {
  await s.cdp.send('ServiceWorker.deliverPushMessage', { origin: s.origin, registrationId: s.regId, data });
}

/** Tap an action of the notification tagged `tag` (a NotificationEvent in the worker; see the top). */
async function tapAction(tag, action) {
  const w = await serviceWorker();
  return w.evaluate(
    async ([t, a]) => {
      const [n] = await self.registration.getNotifications({ tag: t });
      if (!n) return false;
      self.dispatchEvent(new NotificationEvent('notificationclick', { action: a, notification: n }));
      return true;
    },
    [tag, action],
  );
}

/** A push key written where the page keeps them (pushkeys.ts), as turning notifications on does. */
async function storeKey(page, row) {
  await page.evaluate(async (r) => {
    const db = await new Promise((res, rej) => {
      const o = indexedDB.open('tandem-push', 1);
      o.onupgradeneeded = () => {
        const keys = o.result.createObjectStore('keys', { keyPath: 'keyId' });
        keys.createIndex('desktop', 'desktopId');
        o.result.createObjectStore('decisions');
        o.result.createObjectStore('settings');
      };
      o.onsuccess = () => res(o.result);
      o.onerror = () => rej(o.error);
    });
    await new Promise((res, rej) => {
      const tx = db.transaction('keys', 'readwrite');
      tx.objectStore('keys').put(r);
      tx.oncomplete = res;
      tx.onerror = () => rej(tx.error);
    });
    db.close();
  }, row);
}

async function storedKeys(page) {
  return page.evaluate(async () => {
    const db = await new Promise((res, rej) => {
      const o = indexedDB.open('tandem-push');
      o.onsuccess = () => res(o.result);
      o.onerror = () => rej(o.error);
    });
    if (!db.objectStoreNames.contains('keys')) return [];
    const rows = await new Promise((res) => {
      const r = db.transaction('keys').objectStore('keys').getAll();
      r.onsuccess = () => res(r.result);
    });
    db.close();
    return rows;
  });
}

// ---------------------------------------------------------------------------
// the desktop side

/** The desktop's audit entries deciding approval `approvalId` of `taskId`. */
function auditDecisions(taskId, approvalId) {
  const files = readdirSync(s.agentDir).filter((f) => f === 'audit.log' || f.startsWith('audit.log.'));
  const out = [];
  for (const f of files) {
    for (const line of readFileSync(join(s.agentDir, f), 'utf8').split('\n')) {
      if (!line.includes('approval_decided')) continue;
      const m = /\{.*\}/.exec(line);
      let e;
      try {
        e = JSON.parse(m ? m[0] : line);
      } catch {
        continue;
      }
      const ev = e.event === 'approval_decided' ? e : Object.values(e).find((v) => v && v.event === 'approval_decided');
      if (ev && ev.task_id === taskId && ev.approval_id === approvalId) out.push(ev);
    }
  }
  return out;
}

/** Send `demo` from the desktop screen; wait for its pending approval; the task id. */
async function demoTask(page) {
  await open(page, `${s.origin}/p?desktop=${encodeURIComponent(s.desktopId)}`);
  await expectScreen(page, 'desktop');
  const compose = await expectVisible(page, '[data-testid=compose]', 'the task box');
  await compose.fill('demo');
  await (await expectVisible(page, '[data-testid=send]', 'the send button')).tap();
  await expectScreen(page, 'task');
  const taskId = new URL(page.url()).searchParams.get('task');
  await expectVisible(page, '[data-testid=approval][data-state=pending]', 'the demo task\'s pending approval', 30_000);
  return taskId;
}

async function sealed(key, keyId, n) {
  return s.proto.sealPush(Buffer.from(key, 'hex'), Buffer.from(keyId, 'hex'), n);
}

describe('web client: push notifications', { concurrency: false }, () => {
  before(async () => {
    s.run = new Run();
    s.agentDir = join(s.run.dir, 'desktop');
    s.push = await pushService();
    // The local push service is plain http on loopback: the relay sends there only because this
    // configuration allows its origin (docs/PUSH.md).
    const config = join(s.run.dir, 'relay.toml');
    writeFileSync(config, `[push]\nwebpush_origins = [${JSON.stringify(s.push.origin)}]\n`);
    // A relay without push refuses the [push] table: it runs without it (the F checks then skip).
    s.relay = await s.run
      .relay('relay', join(s.run.dir, 'relay-data'), '127.0.0.1:0', { TANDEM_RELAY_CONFIG: config })
      .catch(() => s.run.relay('relay-nopush', join(s.run.dir, 'relay-data')));
    s.origin = `http://${s.relay.addr}`;
    s.sub = subscriptionKeys(s.push.origin);
    s.proto = await protoModule();
    s.browser = await launchBrowser();
    s.phone = await newPhone(s.browser, 'phone');
    await s.phone.context.grantPermissions(['notifications'], { origin: s.origin });
    await s.phone.context.addInitScript(pageStandIns, { endpoint: s.sub.endpoint, p256dh: b64u(s.sub.p256dh), auth: b64u(s.sub.auth) });
    s.frames = captureFrames(s.phone.page);
    if (process.env.E2E_DEBUG) {
      const log = (w) => w.on('console', (m) => console.log(`# [sw] ${m.type()}: ${m.text()}`));
      s.phone.context.on('serviceworker', log);
      s.phone.page.on('console', (m) => console.log(`# [page] ${m.type()}: ${m.text()}`));
      s.phone.page.on('pageerror', (e) => console.log(`# [pageerror] ${e.message}`));
    }
    const r = await fetch(`${s.origin}/v1/push`).catch(() => null);
    s.relayPush = r && r.ok ? await r.json() : null;
  });

  after(async () => {
    if (s.phone?.consoleErrors.length) console.log(`# console errors (reported, not failures):\n#   ${s.phone.consoleErrors.slice(0, 20).join('\n#   ')}`);
    await s.browser?.close().catch(() => undefined);
    await s.run?.cleanup();
    s.push?.server.close();
    if (s.failed || process.env.E2E_KEEP) console.log(`# logs kept in ${s.run?.logs}`);
    else if (s.run) rmSync(s.run.dir, { recursive: true, force: true });
  });

  check('W1. paired; the service worker is served as JavaScript at /sw.js (no-store) and controls scope /', async () => {
    const { run, relay } = s;
    const png = join(run.dir, 'qr.png');
    const pair = run.tandem('pair', s.agentDir, ['pair', '--relay', `ws://${relay.addr}/v1/connect`, '--qr-png', png, '--print-url', '--no-terminal-qr', '--yes']);
    await pair.waitLine(/pairing link: (\S+)/);
    const page = s.phone.page;
    await open(page, zbarimg(png));
    await pair.waitLine(/Paired with/);
    assert.equal(await pair.wait(), 0, pair.tail());
    await expectScreen(page, 'desktop');
    s.desktopId = new URL(page.url()).searchParams.get('desktop');
    s.deviceId = await page.evaluate(() => document.getElementById('app')?.dataset.device);
    s.agent = run.tandem('agent', s.agentDir, ['run']);
    await s.agent.waitLine(/Connected\. 1 paired device/);
    await expectConn(page, ['online'], 'after pairing');

    const res = await fetch(`${s.origin}/sw.js`);
    assert.equal(res.status, 200, 'GET /sw.js');
    assert.match(res.headers.get('content-type') ?? '', /^text\/javascript/, 'served as JavaScript');
    assert.equal(res.headers.get('cache-control'), 'no-store');
    assert.match(await res.text(), /notificationclick/);

    // The registration the page makes when notifications are turned on; its id for CDP.
    s.helper = await s.phone.context.newPage();
    s.cdp = await s.phone.context.newCDPSession(s.helper);
    const regs = [];
    s.cdp.on('ServiceWorker.workerRegistrationUpdated', (e) => regs.push(...e.registrations));
    await s.cdp.send('ServiceWorker.enable');
    const scope = await page.evaluate(async () => {
      const r = await navigator.serviceWorker.register('/sw.js', { scope: '/' });
      await navigator.serviceWorker.ready;
      return r.scope;
    });
    assert.equal(scope, `${s.origin}/`);
    s.regId = await waitUntil('the registration id (CDP)', () => regs.find((r) => r.scopeURL === `${s.origin}/` && !r.isDeleted)?.registrationId, { timeout: 10_000 });
    await serviceWorker();
  });

  check('W2. a sealed push shows the decrypted desktop, task and step with Allow / Deny; unknown key or garbage: "Tandem / New activity"', async () => {
    const page = s.phone.page;
    const key = randomBytes(32).toString('hex');
    const keyId = randomBytes(8).toString('hex');
    s.wKey = { keyId, key };
    await storeKey(page, { keyId, key, desktopId: s.desktopId, desktopName: 'build-box', createdMs: Date.now() });
    const taskId = 'ab'.repeat(16);
    const n = { kind: 'approval', desktop: 'build-box', title: 'Fix the flaky test', body: 'edit src/lib.rs', task_id: taskId, approval_id: 'x1', expires_at_ms: Date.now() + 300_000, can_decide: true, at_ms: Date.now() };
    await deliver(b64u(await sealed(key, keyId, n)));
    const tag = Buffer.from(s.proto.pushTopic(Buffer.from(key, 'hex'), taskId)).toString('hex');
    const [shown] = await waitUntil('the notification', async () => (await notifications()).filter((x) => x.tag === tag).length && (await notifications()).filter((x) => x.tag === tag));
    assert.equal(shown.title, 'build-box: Fix the flaky test');
    assert.equal(shown.body, 'edit src/lib.rs');
    assert.deepEqual(shown.actions, ['allow', 'deny']);
    assert.equal(shown.renotify, true);
    assert.deepEqual(shown.data, { kind: 'approval', desktop: s.desktopId, task_id: taskId, approval_id: 'x1' });
    await closeNotifications();

    // The raw bytes (what a real push service hands over) as a PushEvent in the worker.
    const raw = [...(await sealed(key, keyId, { ...n, title: 'Raw bytes', can_decide: false }))];
    const w = await serviceWorker();
    await w.evaluate((bytes) => self.dispatchEvent(new PushEvent('push', { data: new Uint8Array(bytes) })), raw);
    const [rawShown] = await waitUntil('the raw push', async () => (await notifications()).filter((x) => x.title === 'build-box: Raw bytes').length && (await notifications()));
    assert.deepEqual(rawShown.actions, [], 'no actions without can_decide');
    await closeNotifications();

    // A key this phone does not have, a damaged blob, garbage: still a notification, saying nothing.
    const otherKey = randomBytes(32).toString('hex');
    const damaged = Buffer.from(await sealed(key, keyId, n));
    damaged[damaged.length - 5] ^= 1;
    for (const data of [b64u(await sealed(otherKey, randomBytes(8).toString('hex'), n)), b64u(damaged), 'garbage']) {
      await deliver(data);
      const got = await waitUntil(`the generic notification for ${data.slice(0, 12)}…`, async () => {
        const all = await notifications();
        return all.length && all;
      });
      assert.deepEqual(got.map((x) => [x.title, x.body]), [['Tandem', 'New activity']]);
      await closeNotifications();
    }
  });

  check('W3. Allow on the notification with the page open: the page decides through its link; the desktop has it once', async () => {
    const page = s.phone.page;
    const taskId = await demoTask(page);
    const { keyId, key } = s.wKey;
    const n = { kind: 'approval', desktop: 'build-box', title: 'demo', body: 'edit src/lib.rs', task_id: taskId, approval_id: 'a1', expires_at_ms: Date.now() + 300_000, can_decide: true, at_ms: Date.now() };
    await deliver(b64u(await sealed(key, keyId, n)));
    const tag = Buffer.from(s.proto.pushTopic(Buffer.from(key, 'hex'), taskId)).toString('hex');
    await waitUntil('the approval notification', async () => (await notifications()).some((x) => x.tag === tag), {
      detail: async () => `tag ${tag}; shown: ${JSON.stringify(await notifications().catch((e) => e.message))}; workers: ${s.phone.context.serviceWorkers().map((w) => w.url())}`,
    });
    // Somewhere else in the app meanwhile: the decision brings the task back.
    await open(page, `${s.origin}/p`);
    assert.ok(await tapAction(tag, 'allow'), 'the notification is there to tap');
    await expectScreen(page, 'task');
    await expectVisible(page, '[data-testid=flash]', 'the page says what the notification did');
    assert.match((await page.locator('[data-testid=flash]').textContent()) ?? '', /Allowed from the notification/);
    await expectVisible(page, '[data-testid=approval][data-state=allowed]', 'the approval turns allowed');
    assert.equal(await waitFinished(page, 'the demo task after Allow'), 'succeeded');
    const events = await taskEvents(page);
    assert.ok(events.some((e) => e.text.includes('allowed: editing')), 'the executor was told: allowed');
    assert.equal(events.filter((e) => e.type === 'approval_resolved').length, 1, 'one approval_resolved');
    assert.equal((await notifications()).filter((x) => x.tag === tag).length, 0, 'the notification is gone');
    await sleep(1000);
    const audit = auditDecisions(taskId, 'a1');
    assert.equal(audit.length, 1, `decided once in the audit log: ${JSON.stringify(audit)}`);
    assert.equal(audit[0].allow, true);
    assert.equal(audit[0].by, `phone:${s.deviceId}`, 'decided by this phone (its scope was checked)');
    await screenshot(page, 'push-decided', '[data-testid=flash]');
  });

  check('W4. Deny with no page open: the page opened at /#decide=… decides once; the link again decides nothing', async () => {
    let page = s.phone.page;
    const taskId = await demoTask(page);
    const { keyId, key } = s.wKey;
    await page.close();
    const n = { kind: 'approval', desktop: 'build-box', title: 'demo', body: 'edit src/lib.rs', task_id: taskId, approval_id: 'a1', can_decide: true, at_ms: Date.now() };
    await deliver(b64u(await sealed(key, keyId, n)));
    const tag = Buffer.from(s.proto.pushTopic(Buffer.from(key, 'hex'), taskId)).toString('hex');
    await waitUntil('the approval notification', async () => (await notifications()).some((x) => x.tag === tag));
    const opened = s.phone.context.waitForEvent('page', { timeout: 3000 }).catch(() => null);
    assert.ok(await tapAction(tag, 'deny'));
    const link = `${s.origin}/#decide=${encodeURIComponent(`${s.desktopId}:${taskId}:a1:deny`)}`;
    // The worker could not open a window for a dispatched event: open what it would have opened.
    page = (await opened) ?? (await s.phone.context.newPage());
    page.on('pageerror', (e) => s.phone.errors.push(`${e.name}: ${e.message}\n${e.stack ?? ''}`));
    s.phone.page = page;
    s.frames = captureFrames(page);
    if (!page.url().includes('#decide=')) await page.goto(link);
    await expectScreen(page, 'task');
    assert.ok(!page.url().includes('#decide'), 'the fragment is gone from the address bar');
    await expectVisible(page, '[data-testid=approval][data-state=denied]', 'the approval turns denied');
    assert.match((await page.locator('[data-testid=flash]').textContent()) ?? '', /Denied from the notification/);
    assert.equal(await waitFinished(page, 'the demo task after Deny'), 'succeeded');
    // The same link again (a reload from history, or someone else's link): the worker's record is
    // gone, so nothing is decided; the page shows the thread instead.
    await page.goto(link);
    await expectScreen(page, 'task');
    await expectVisible(page, '[data-testid=flash][data-kind=warn]', 'the page asks to decide on the thread');
    await sleep(1000);
    const audit = auditDecisions(taskId, 'a1');
    assert.equal(audit.length, 1, `decided once: ${JSON.stringify(audit)}`);
    assert.equal(audit[0].allow, false);
    await closeNotifications();
  });

  // ---- the whole chain: needs the relay's push part (GET /v1/push) and the desktop's ----

  const full = () => (s.relayPush ? false : 'the relay has no GET /v1/push (its push part is not in this build)');

  check('F1. Notifications on: permission, the relay\'s VAPID key, PushSubscribe, a key for the desktop', async (t) => {
    if (full()) return t.skip(full());
    const page = s.phone.page;
    await open(page, `${s.origin}/p`);
    await expectScreen(page, 'desktops');
    const toggle = await expectVisible(page, '[data-testid=push][data-state=off] [data-testid=push-toggle]', 'the Notifications control');
    await screenshot(page, 'notifications-off', '[data-testid=push]');
    await toggle.tap();
    await expectVisible(page, '[data-testid=push][data-state=on]', 'notifications on', 20_000);
    const keys = await page.evaluate(() => window.__push.subscribeKeys);
    assert.deepEqual(Buffer.from(keys.at(-1)).toString('base64url'), s.relayPush.vapid_public_key, 'subscribed under the relay\'s VAPID key');
    const rows = (await storedKeys(page)).filter((r) => r.desktopId === s.desktopId && r.keyId !== s.wKey.keyId);
    assert.equal(rows.length, 1, 'one new key for the desktop');
    s.fKey = rows[0];
    await screenshot(page, 'notifications-on', '[data-testid=push]');
  });

  check('F2. hidden, an approval is pushed: RFC 8291 ciphertext without the task\'s text; decrypted and delivered, it shows the text; Allow decides it once', async (t) => {
    if (full()) return t.skip(full());
    const page = s.phone.page;
    const before = s.push.received.length;
    // In view (a connection starts active): the approval is not pushed.
    await demoTask(page);
    await sleep(2000);
    assert.equal(s.push.received.length, before, 'nothing pushed while the page is in view');
    await page.locator('[data-testid=approval][data-state=pending] [data-testid=allow]').tap();
    await waitFinished(page, 'the task decided in the page');
    // Away (the tab hidden: Active 0 on the wire), a second task's approval is pushed.
    await open(page, `${s.origin}/p?desktop=${encodeURIComponent(s.desktopId)}`);
    const compose = await expectVisible(page, '[data-testid=compose]', 'the task box');
    await compose.fill('demo');
    await page.evaluate(() => window.__setVisibility('hidden'));
    await waitUntil('Active 0 on the wire', () => s.frames.sent.some((f) => f.bytes.length === 3 && f.bytes[0] === 1 && f.bytes[1] === 0x62 && f.bytes[2] === 0));
    await (await expectVisible(page, '[data-testid=send]', 'the send button')).tap();
    await expectScreen(page, 'task');
    const task2 = new URL(page.url()).searchParams.get('task');
    const post = await waitUntil('the relay\'s POST to the push service', () => s.push.received.slice(before).find((r) => r.path === new URL(s.sub.endpoint).pathname), { timeout: 30_000 });
    assert.equal(post.method, 'POST');
    assert.equal(post.headers['content-encoding'], 'aes128gcm');
    assert.ok(Number(post.headers.ttl) >= 0, `TTL: ${post.headers.ttl}`);
    assert.equal(post.headers.urgency, 'high', 'an approval is urgent');
    const topic = Buffer.from(s.proto.pushTopic(Buffer.from(s.fKey.key, 'hex'), task2)).toString('hex');
    assert.equal(post.headers.topic, topic, 'Topic: the task\'s keyed topic');
    checkVapid(post.headers, Buffer.from(s.relayPush.vapid_public_key, 'base64url'), s.sub.endpoint);
    for (const canary of ['demo', 'edit src/lib.rs', 'build-box']) assert.ok(!post.body.includes(canary), `no "${canary}" in what the push service got`);
    const plain = decryptWebPush(post.body, s.sub);
    for (const canary of ['edit src/lib.rs', 'build-box']) assert.ok(!plain.includes(canary), `no "${canary}" even decrypted: the inner seal`);
    const blob = plain[0] === 1 ? plain : Buffer.from(plain.toString('utf8'), 'base64url');
    assert.equal(Buffer.from(blob.subarray(1, 9)).toString('hex'), s.fKey.keyId, 'sealed with the key the page gave');
    await closeNotifications();
    await deliver(b64u(blob));
    const [shown] = await waitUntil('the notification', async () => {
      const all = (await notifications()).filter((x) => x.tag === topic);
      return all.length && all;
    });
    // The desktop's texts (desktop-agent daemon/push.rs): "Approve? <step>", the task's title.
    assert.equal(shown.title, 'build-box: Approve? edit src/lib.rs');
    assert.equal(shown.body, 'demo');
    assert.deepEqual(shown.actions, ['allow', 'deny'], 'this phone may decide');
    assert.ok(await tapAction(topic, 'allow'));
    await expectVisible(page, '[data-testid=approval][data-state=allowed]', 'allowed from the notification');
    assert.equal(await waitFinished(page, 'the pushed task'), 'succeeded');
    await sleep(1000);
    assert.equal(auditDecisions(task2, 'a1').length, 1, 'decided once');
    await page.evaluate(() => window.__setVisibility('visible'));
  }, 120_000);

  check('F3. Notifications off: push_setup off, PushSubscribe removed, unsubscribed, keys gone; nothing more is pushed', async (t) => {
    if (full()) return t.skip(full());
    const page = s.phone.page;
    await open(page, `${s.origin}/p`);
    await (await expectVisible(page, '[data-testid=push][data-state=on] [data-testid=push-toggle]', 'the control, on')).tap();
    await expectVisible(page, '[data-testid=push][data-state=off]', 'notifications off', 20_000);
    assert.deepEqual(await storedKeys(page), [], 'no key kept');
    const before = s.push.received.length;
    await page.evaluate(() => window.__setVisibility('hidden'));
    await demoTask(page);
    await sleep(3000);
    assert.equal(s.push.received.length, before, 'nothing pushed once off');
    await page.evaluate(() => window.__setVisibility('visible'));
  });

});
