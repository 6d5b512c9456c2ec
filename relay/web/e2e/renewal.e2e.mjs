// Sessions renew in the page (PROTOCOL §10.6): a phone (headless chromium, its clock under the
// test's control) paired with a real `tandem run` through a real relay, moved forward an hour at a
// time with Playwright's clock (as a laptop lid closed for an hour). The first hour passes while
// the relay is down: the page ratchets its sending key, a task is sent from the old session, the
// relay comes back (killed with -9, restarted on the same port and data) and the page renews its
// session with the agent; the second hour passes online and it renews again. Every WebSocket
// frame the page receives is captured, and the links stored in IndexedDB before and after each
// renewal are tried, in Node with the page's own protocol code, against the desktop's records: a
// link from before a renewal opens none of the records sent after it, and one from after opens
// none of those captured before.
//
//   npm run e2e        (needs target/debug/tandem-relay and target/debug/tandem, zbarimg and
//                       chromium; see e2e/README.md)
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
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
  progressNumbers,
  protoModule,
  storedState,
  taskEvents,
  waitFinished,
  waitUntil,
  zbarimg,
} from './harness.mjs';

const s = {
  run: null,
  browser: null,
  relay: null,
  relayData: null,
  agentDir: null,
  agent: null,
  phone: null,
  frames: null,
  desktopId: null,
  /** Stored states (`storedState`) at the moments the checks name. */
  snaps: {},
  /** Task ids submitted, in order. */
  tasks: [],
  failed: false,
};

/** The desktop's row in a stored state. */
function row(state) {
  const r = state.desktops.find((d) => d.id === s.desktopId);
  assert.ok(r, `IndexedDB holds the desktop's row\n${JSON.stringify(state.desktops.map((d) => d.id))}`);
  return r;
}

const sessionOf = (state) => row(state).link.current.id;
/** The renewal schedule times the current session (its clock started when the page switched to it). */
const timed = (state) => row(state).link.clock?.session_id === sessionOf(state) && row(state).link.clock.since_ms !== '0';
const sendEpochOf = (state) => BigInt(row(state).link.current.tx.epoch);

/**
 * Move the page's clock `by` forward, as a lid closed that long and opened again: due timers fire
 * once; then time runs on at the real pace.
 */
async function lidClosedFor(page, by) {
  await page.clock.fastForward(by);
  await page.clock.resume();
}

/** Submit a task from the desktop screen (reached inside the app: a navigation would reset the page's clock); resolves on its task screen. */
async function submit(page, text) {
  if ((await page.evaluate(() => document.getElementById('app')?.dataset.screen)) === 'task') {
    await (await expectVisible(page, '[data-testid=back]', 'task screen: back to the desktop')).tap();
  }
  await expectScreen(page, 'desktop');
  await (await expectVisible(page, '[data-testid=compose]', 'desktop screen: the task box')).fill(text);
  await (await expectVisible(page, '[data-testid=send]', 'desktop screen: the send button')).tap();
  await expectScreen(page, 'task');
  const id = new URL(page.url()).searchParams.get('task');
  assert.ok(id, `the task screen names the task: ${page.url()}`);
  s.tasks.push(id);
  return id;
}

/** `count N 20` ran to the end on the page: every n once. */
async function finishedCount(page, n, what) {
  assert.equal(await waitFinished(page, what, 30_000), 'succeeded', `${what}: [data-testid=finished] data-status`);
  await waitUntil(`${what}: ${n} progress events`, async () => progressNumbers(await taskEvents(page)).length >= n, { timeout: 10_000 });
  assert.deepEqual(progressNumbers(await taskEvents(page)), [...Array(n).keys()], `${what}: n=0..${n - 1} once each`);
}

/** Wait until the stored link satisfies `ok`; returns that state. */
async function waitStored(page, what, ok, timeout = 30_000) {
  let last;
  return waitUntil(
    what,
    async () => {
      last = await storedState(page);
      return ok(last) ? last : null;
    },
    { timeout, every: 200, detail: async () => `${await describePage(page)}\nstored link: ${JSON.stringify(last && row(last).link.current.id)} epoch ${last && row(last).link.current.tx.epoch}` },
  );
}

/** The desktop's records the page received, each once, in order: `{ at, session, payload }`. */
async function desktopRecords() {
  const P = await protoModule();
  const seen = new Set();
  const out = [];
  for (const f of s.frames.received) {
    let frame;
    try {
      frame = P.decodeFrame(new Uint8Array(f.bytes));
    } catch {
      continue;
    }
    if (frame.type !== 'Deliver' || frame.from.toString() !== s.desktopId) continue;
    const env = P.decodeEnvelope(frame.payload);
    if (env.kind !== 'Record') continue;
    const hex = P.bytesToHex(frame.payload);
    if (seen.has(hex)) continue; // a redelivery after the relay restart
    seen.add(hex);
    out.push({ at: f.at, session: P.bytesToHex(env.sessionId), payload: frame.payload });
  }
  return out;
}

/** Try a stored state's link on `payload`: 'opened' (a message or an ack), or the refusal. */
async function tryOpen(state, payload) {
  const P = await protoModule();
  const link = P.Link.fromStored(row(state).link);
  const key = new P.DeviceKey(P.hexToBytes(state.deviceKey));
  try {
    link.receive(key, payload, P.osEntropy);
    return 'opened';
  } catch (e) {
    if (e instanceof P.LinkError && e.kind === 'Record') return e.cause?.kind ?? 'Record';
    return `${e.kind ?? e.name}`;
  }
}

function check(name, fn, timeout = 120_000) {
  test(name, { timeout }, async () => {
    try {
      await fn();
      if (s.phone) assertNoPageErrors(s.phone);
    } catch (e) {
      s.failed = true;
      throw e;
    }
  });
}

describe('web client: sessions renew and rekey in the page', { concurrency: false }, () => {
  before(async () => {
    s.run = new Run();
    s.relayData = join(s.run.dir, 'relay-data');
    s.agentDir = join(s.run.dir, 'desktop');
    s.relay = await s.run.relay('relay', s.relayData);
    s.browser = await launchBrowser();
    s.phone = await newPhone(s.browser, 'phone');
    // The page's time is the test's: Date, timers and performance.now are faked (and run on at
    // the real pace until moved).
    await s.phone.page.clock.install();
    s.frames = captureFrames(s.phone.page);
  });

  after(async () => {
    if (s.phone?.consoleErrors.length) console.log(`# console errors (reported, not failures):\n#   ${s.phone.consoleErrors.slice(0, 20).join('\n#   ')}`);
    await s.browser?.close().catch(() => undefined);
    await s.run?.cleanup();
    if (s.failed || process.env.E2E_KEEP) console.log(`# logs kept in ${s.run?.logs}`);
    else if (s.run) rmSync(s.run.dir, { recursive: true, force: true });
  });

  check('R1. pair from the QR code (IndexedDB on 127.0.0.1), run a task under the pairing session', async () => {
    const { run, relay } = s;
    const { page } = s.phone;
    const png = join(run.dir, 'qr.png');
    const pair = run.tandem('pair', s.agentDir, ['pair', '--relay', `ws://${relay.addr}/v1/connect`, '--qr-png', png, '--print-url', '--no-terminal-qr', '--yes']);
    await pair.waitLine(/pairing link: (\S+)/);
    await open(page, zbarimg(png));
    await pair.waitLine(/Paired with/);
    assert.equal(await pair.wait(), 0, `tandem pair exits 0\n${pair.tail()}`);
    await expectScreen(page, 'desktop');
    s.desktopId = new URL(page.url()).searchParams.get('desktop');
    assert.equal(await page.evaluate(() => isSecureContext), true, 'http://127.0.0.1 is a secure context: the keys are in IndexedDB');
    s.agent = run.tandem('agent', s.agentDir, ['run']);
    await s.agent.waitLine(/Connected\. 1 paired device/);
    await expectConn(page, ['online'], 'after pairing');
    s.snaps.paired = await storedState(page);

    await submit(page, 'count 5 20');
    await finishedCount(page, 5, 'first task');
    s.snaps.beforeRenewal = await storedState(page);
    assert.equal(sessionOf(s.snaps.beforeRenewal), sessionOf(s.snaps.paired), 'still the pairing session');
  });

  check('R2. an hour passes with the relay down: the key is ratcheted; back online, the session renews; a task sent meanwhile runs once', async () => {
    const { run } = s;
    const { page } = s.phone;
    const first = sessionOf(s.snaps.beforeRenewal);
    const epoch = sendEpochOf(s.snaps.beforeRenewal);
    const addr = s.relay.addr;
    await s.relay.kill9();
    await expectConn(page, ['connecting', 'offline'], 'relay killed', 15_000);

    await lidClosedFor(page, '01:00:00');
    // Offline: no renewal can start, but the hourly rekey does, and is saved at once.
    const rekeyed = await waitStored(page, 'the stored link ratchets its sending key', (st) => sendEpochOf(st) > epoch);
    assert.equal(sessionOf(rekeyed), first, 'no renewal while the desktop is unreachable');
    s.snaps.rekeyed = rekeyed;

    // Traffic from the ratcheted key, while the relay is down.
    await submit(page, 'count 3 20');
    s.relay = await run.relay('relay-restarted', s.relayData, addr);
    await lidClosedFor(page, '00:00:30'); // the page's reconnection backoff, cut short
    await expectConn(page, ['online'], 'relay restarted', 30_000);

    const renewed = await waitStored(page, 'the stored link is on a new session, timed from the switch', (st) => sessionOf(st) !== first && timed(st));
    s.snaps.renewed = renewed;
    await finishedCount(page, 3, 'the task sent while the relay was down');
    await submit(page, 'count 5 20');
    await finishedCount(page, 5, 'a task after the renewal');
    s.snaps.afterRenewal = await storedState(page);
    const link = row(s.snaps.afterRenewal).link;
    assert.equal(link.current.id, sessionOf(renewed), 'one renewal');
    assert.equal(link.previous, null, 'the old session is gone once the desktop sent under the new one');
    assert.equal(link.clock.session_id, link.current.id, 'the schedule times the new session');
  });

  check('R3. a second hour, online: the session renews again; a task runs', async () => {
    assert.ok(s.snaps.afterRenewal, 'the first renewal happened (R2)');
    const { page } = s.phone;
    const second = sessionOf(s.snaps.afterRenewal);
    await lidClosedFor(page, '01:00:00');
    await waitStored(page, 'the stored link is on a third session', (st) => sessionOf(st) !== second && timed(st));
    await submit(page, 'count 5 20');
    await finishedCount(page, 5, 'a task after the second renewal');
    s.snaps.end = await storedState(page);
    assert.equal(row(s.snaps.end).link.previous, null);
    // The desktop ran each task once.
    const p = s.run.tandem('tasks-list', s.agentDir, ['tasks']);
    assert.equal(await p.wait(10_000), 0, p.tail());
    for (const id of s.tasks) assert.equal(p.lines.filter((l) => l.includes(id.slice(0, 8))).length, 1, `tandem tasks lists ${id} once\n${p.lines.join('\n')}`);
  });

  check('R4. a link copied before a renewal opens nothing sent after it; one copied after opens nothing captured before', async () => {
    assert.ok(s.snaps.end, 'both renewals happened (R2, R3)');
    const sessions = [s.snaps.paired, s.snaps.afterRenewal, s.snaps.end].map(sessionOf);
    assert.equal(new Set(sessions).size, 3, `three sessions: ${sessions.join(', ')}`);
    assert.ok(sendEpochOf(s.snaps.rekeyed) > sendEpochOf(s.snaps.beforeRenewal), 'the send epoch advanced');
    const records = await desktopRecords();
    const bySession = (id) => records.filter((r) => r.session === id);
    for (const [i, id] of sessions.entries()) assert.ok(bySession(id).length >= 5, `the desktop sent records under session ${i}: ${bySession(id).length}`);
    assert.deepEqual([...new Set(records.map((r) => r.session))], sessions, 'on the wire, the desktop moved from one session to the next, never back');

    // Not vacuous: the link copied at pairing decrypts the desktop's later records of its own
    // session (it then refuses most of them whole, as a rolled-back link does, because they
    // acknowledge messages it never sent: 'Delivery'; those it had seen are replays).
    const own = [];
    for (const r of bySession(sessions[0])) own.push(await tryOpen(s.snaps.paired, r.payload));
    assert.ok(own.filter((k) => k === 'opened' || k === 'Delivery').length >= 5, `the pairing-time copy decrypts records of its session: ${own.join(',')}`);
    // Before → after: nothing.
    for (const [snap, from] of [
      [s.snaps.paired, 1],
      [s.snaps.beforeRenewal, 1],
      [s.snaps.rekeyed, 1],
      [s.snaps.afterRenewal, 2],
    ]) {
      for (const r of records.filter((x) => sessions.indexOf(x.session) >= from)) {
        assert.equal(await tryOpen(snap, r.payload), 'WrongSession', 'a copy from before a renewal opened a record sent after it');
      }
    }
    // After → before: nothing either.
    for (const [snap, upto] of [
      [s.snaps.afterRenewal, 1],
      [s.snaps.end, 2],
    ]) {
      const earlier = records.filter((x) => sessions.indexOf(x.session) < upto);
      assert.ok(earlier.length >= 5);
      for (const r of earlier) assert.equal(await tryOpen(snap, r.payload), 'WrongSession', 'a copy from after a renewal opened a record captured before it');
      const text = JSON.stringify(row(snap).link);
      for (const old of sessions.slice(0, upto)) assert.ok(!text.includes(old), 'an old session id is still in the stored link');
    }
  });
});
