// The web client end to end: a phone (headless chromium, 390×844, touch)
// opens the link from the agent's QR code on a real standalone relay, pairs,
// runs tasks on the desktop agent's jsonl fixture executor, survives a reload,
// a relay killed with -9 and restarted, shows pairing errors, an idle detach;
// a second phone pairs (the secret leaves the address bar and the history) and
// scrolls back through a long task's history; follow-up, cancel, deny; the
// desktop offline and a task sent meanwhile; two tabs of one browser (one owns
// the state, "use here" takes it back); forgetting a desktop. Selectors are the
// DOM contract of the web client (README.md, "DOM contract"). The checks run in
// order and share one relay, desktop and phone.
//
//   npm run e2e        (needs target/debug/tandem-relay and target/debug/tandem,
//                       zbarimg and chromium; see e2e/README.md)
import assert from 'node:assert/strict';
import { existsSync, readFileSync, realpathSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import {
  Run,
  WAIT,
  assertNoPageErrors,
  attr,
  contiguous,
  craftLink,
  describePage,
  expectConn,
  expectHidden,
  expectScreen,
  expectVisible,
  launchBrowser,
  newPhone,
  open,
  progressNumbers,
  screenshot,
  sleep,
  taskEvents,
  waitFinished,
  waitUntil,
  zbarimg,
} from './harness.mjs';

/** The agent's idle time before it detaches a silent phone, for check 6. */
const IDLE_DETACH_SECS = 4;
/** Events per history page: the desktop's HISTORY_PAGE and the web client's PAGE. */
const PAGE = 256;

const s = {
  run: null,
  browser: null,
  relay: null, // the relay Proc (replaced when restarted)
  relayData: null,
  agentDir: null,
  agent: null, // `tandem run`
  phone: null, // { page, context, errors, consoleErrors }
  link: null, // the link from the first QR code (used)
  desktopId: null,
  demoEvents: null,
  phone2: null, // a second phone paired to the same desktop (check 7)
  longTask: null, // { id, total }: the long task the first phone ran, for the second to scroll back through
  failed: false,
};

// ---------------------------------------------------------------------------
// helpers (every wait bounded; failures name the contract selector)

async function expectPairError(page, code, what, timeout = WAIT) {
  const el = await expectVisible(page, '[data-testid=pair-error]', what, timeout);
  const got = await el.getAttribute('data-code');
  const want = Array.isArray(code) ? code : [code];
  assert.ok(want.includes(got), `${what}: [data-testid=pair-error] data-code is ${got}, want ${want.join(' or ')}\n${await describePage(page)}`);
  return got;
}

/** Every `n=i` for i < count exactly once, in order, and the offsets contiguous. */
function checkCount(events, count, what) {
  const ns = progressNumbers(events);
  const want = Array.from({ length: count }, (_, i) => i);
  assert.deepEqual(ns, want, `${what}: progress n=0..${count - 1} each exactly once, in order`);
  assert.ok(contiguous(events), `${what}: [data-testid=event] data-offset must run 0,1,2… once each; got ${events.map((e) => e.offset).join(',')}`);
}

/** Back from the task screen to the desktop screen (the back button, else the URL). */
async function openDesktop(page) {
  if ((await attr(page, '#app', 'data-screen')) === 'desktop') return;
  const back = page.locator('[data-testid=back]');
  if (await back.isVisible()) await back.tap();
  try {
    await expectScreen(page, 'desktop', 3000);
  } catch {
    await open(page, `http://${s.relay.addr}/p?desktop=${encodeURIComponent(s.desktopId)}`);
    await expectScreen(page, 'desktop');
  }
}

/** Submit a task from the desktop screen; resolves on its task screen with its id. */
async function submit(page, text) {
  await openDesktop(page);
  const compose = await expectVisible(page, '[data-testid=compose]', 'desktop screen: the task box');
  await compose.fill(text);
  await (await expectVisible(page, '[data-testid=send]', 'desktop screen: the send button')).tap();
  await expectScreen(page, 'task');
  const taskId = new URL(page.url()).searchParams.get('task');
  assert.ok(taskId, `the task screen's URL names the task (?task=…): ${page.url()}`);
  return taskId;
}

/** With E2E_TRACE=1: what each check is doing, with the time since the run started. */
const T0 = Date.now();
function trace(msg) {
  if (process.env.E2E_TRACE) console.log(`# +${((Date.now() - T0) / 1000).toFixed(1)}s ${msg}`);
}

/** Stop `tandem run` (SIGTERM) and start it again; resolves once it is connected. */
async function restartAgent(name, env = {}) {
  await s.agent?.stop();
  s.agent = s.run.tandem(name, s.agentDir, ['run'], { env });
  return s.agent.waitLine(/Connected\. (\d+) paired device/);
}

/** What the desktop recorded for a task (`tandem tasks ID`: one line per event). */
async function desktopEvents(taskId) {
  const p = s.run.tandem(`tasks-${taskId.slice(0, 8)}`, s.agentDir, ['tasks', taskId]);
  const code = await p.wait(10_000);
  assert.equal(code, 0, `tandem tasks ${taskId} exits 0\n${p.tail()}`);
  return p.lines.slice();
}

/** The desktop's task list (`tandem tasks`): one line per task, ending with its text. */
async function desktopTasks() {
  const p = s.run.tandem('tasks-list', s.agentDir, ['tasks']);
  const code = await p.wait(10_000);
  assert.equal(code, 0, `tandem tasks exits 0\n${p.tail()}`);
  return p.lines.slice();
}

/** On the page: a task accepted and finished once, `n=0..N-1` once each, offsets contiguous. */
async function checkShownOnce(page, N, what) {
  await waitUntil(`${what}: all ${N} progress events`, async () => progressNumbers(await taskEvents(page)).length >= N, {
    timeout: 10_000,
    detail: async () => `seen n: ${progressNumbers(await taskEvents(page)).join(',')}`,
  });
  const events = await taskEvents(page);
  checkCount(events, N, what);
  assert.equal(events.filter((e) => e.type === 'accepted').length, 1, `${what}: [data-testid=event][data-type=accepted] once`);
  assert.equal(events.filter((e) => e.type === 'finished').length, 1, `${what}: [data-testid=event][data-type=finished] once`);
}

/** On the desktop (`tandem tasks ID`): the task accepted, run and finished once. */
async function checkRanOnce(id, N, what) {
  const recorded = await desktopEvents(id);
  const kinds = recorded.map((l) => /#\d+\s+(\S+)/.exec(l)?.[1]).filter(Boolean);
  assert.equal(kinds.filter((k) => k === 'accepted').length, 1, `${what}: tandem tasks ${id}: accepted once\n${recorded.join('\n')}`);
  assert.equal(kinds.filter((k) => k === 'finished').length, 1, `${what}: tandem tasks ${id}: finished once\n${recorded.join('\n')}`);
  assert.equal(recorded.length, N + 2, `${what}: tandem tasks ${id}: accepted, ${N} progress lines, finished\n${recorded.join('\n')}`);
}

/** A second tab (page) in a phone's browser context: same storage, its own errors. */
async function newTab(phone, name) {
  const page = await phone.context.newPage();
  const tab = { name, page, errors: [], consoleErrors: [] };
  page.on('pageerror', (e) => tab.errors.push(`${e.name}: ${e.message}\n${e.stack ?? ''}`));
  page.on('console', (m) => {
    if (m.type() === 'error') tab.consoleErrors.push(m.text());
  });
  return tab;
}

/** This tab stepped aside: the banner is offline, says why, and offers [data-testid=use-here]. */
async function expectSteppedAside(page, what) {
  await expectVisible(page, '[data-testid=conn] [data-testid=use-here]', `${what}: the banner offers "use here"`, 10_000);
  await expectConn(page, ['offline'], what, 5000);
  const text = await page.locator('[data-testid=conn]').textContent();
  assert.ok(
    (text ?? '').includes('Tandem is open in another tab or window.'),
    `${what}: [data-testid=conn] says "Tandem is open in another tab or window.": ${JSON.stringify(text)}`,
  );
}

/** The relay's log lines without colours. */
function relayLog() {
  return s.relay.lines.map((l) => l.replace(/\x1b\[[0-9;]*m/g, ''));
}

/** Every URL in the tab's session history (Chromium's own list, through CDP). */
async function historyUrls(phone) {
  const cdp = await phone.context.newCDPSession(phone.page);
  try {
    const h = await cdp.send('Page.getNavigationHistory');
    return { index: h.currentIndex, urls: h.entries.map((e) => e.url) };
  } finally {
    await cdp.detach().catch(() => undefined);
  }
}

/** Runs `fn` with the page's scroll position for failure messages. */
function scrollInfo(page) {
  return page.evaluate(() => `scrollY=${Math.round(scrollY)} of ${document.body.scrollHeight - innerHeight}`);
}

function needPaired(t) {
  if (!s.desktopId) {
    t.skip('pairing did not succeed');
    return false;
  }
  return true;
}

/** Runs a check; remembers failures so the scratch directory (logs) is kept. */
function check(name, fn, timeout = 60_000) {
  test(name, { timeout }, async (t) => {
    try {
      await fn(t);
      if (s.phone) assertNoPageErrors(s.phone);
      if (s.phone2) assertNoPageErrors(s.phone2);
    } catch (e) {
      s.failed = true;
      throw e;
    }
  });
}

// ---------------------------------------------------------------------------

describe('web client end to end', { concurrency: false }, () => {
  before(async () => {
    s.run = new Run();
    s.relayData = join(s.run.dir, 'relay-data');
    s.agentDir = join(s.run.dir, 'desktop');
    s.relay = await s.run.relay('relay', s.relayData);
    s.browser = await launchBrowser();
    s.phone = await newPhone(s.browser, 'phone');
  });

  after(async () => {
    for (const p of [s.phone, s.phone2]) {
      if (p?.consoleErrors.length) {
        console.log(`# console errors on ${p.name} (reported, not failures):\n#   ${p.consoleErrors.slice(0, 20).join('\n#   ')}`);
      }
    }
    await s.browser?.close().catch(() => undefined);
    await s.run?.cleanup();
    if (s.failed || process.env.E2E_KEEP) {
      console.log(`# logs kept in ${s.run?.logs}`);
    } else if (s.run) {
      rmSync(s.run.dir, { recursive: true, force: true });
    }
  });

  check('1. pair from the QR code: same code on both screens, then the desktop screen, online', async () => {
    const { run, relay, phone } = s;
    const { page } = phone;
    const png = join(run.dir, 'qr.png');
    // No --yes: the code is compared on screen (and photographed) before the desktop confirms.
    const pair = run.tandem(
      'pair',
      s.agentDir,
      ['pair', '--relay', `ws://${relay.addr}/v1/connect`, '--qr-png', png, '--print-url', '--no-terminal-qr'],
      { stdin: true },
    );
    const printed = (await pair.waitLine(/pairing link: (\S+)/))[1];
    assert.ok(existsSync(png), `tandem pair wrote no QR code to ${png}`);
    const scanned = zbarimg(png);
    assert.equal(scanned, printed, 'the QR code carries the printed link');
    // On plain http every code opens its own address: /p?n=<8 base32 characters>.
    assert.ok(scanned.startsWith(`http://${relay.addr}/p?n=`), `the link opens the relay's /p: ${scanned}`);
    assert.match(scanned, /\/p\?n=[A-Z2-7]{8}#/, `a fresh nonce in the query: ${scanned}`);
    s.link = scanned;

    await open(page, scanned);
    await expectScreen(page, 'pair');
    const code = (await pair.waitLine(/Code: (\d{3} \d{3})/))[1];
    const sas = await expectVisible(page, '[data-testid=sas]', 'pairing screen: the 6-digit code');
    const shown = ((await sas.textContent()) ?? '').trim();
    assert.match(shown, /^\d{3} \d{3}$/, `[data-testid=sas] reads like "042 917": ${JSON.stringify(shown)}`);
    assert.equal(shown, code, 'the phone shows the code the desktop printed');
    assert.ok(await page.locator('[data-testid=pair-step]').isVisible(), '[data-testid=pair-step] says what is happening');
    await screenshot(page, 'pair-code');

    pair.write('y\n');
    await pair.waitLine(/Paired with/);
    assert.equal(await pair.wait(), 0, `tandem pair exits 0\n${pair.tail()}`);
    await expectScreen(page, 'desktop');
    s.desktopId = new URL(page.url()).searchParams.get('desktop');
    assert.ok(s.desktopId, `the desktop screen's URL names the desktop (?desktop=…): ${page.url()}`);

    s.agent = run.tandem('agent', s.agentDir, ['run']);
    await s.agent.waitLine(/Connected\. 1 paired device/);
    await expectConn(page, ['online'], 'after pairing');

    // The desktops screen lists it, online.
    await (await expectVisible(page, '[data-testid=back]', 'desktop screen: back to the desktops')).tap();
    await expectScreen(page, 'desktops');
    const row = await expectVisible(page, `[data-testid=desktop][data-id="${s.desktopId}"]`, 'desktops screen: the new desktop');
    assert.equal(await page.locator('[data-testid=desktop]').count(), 1, 'one [data-testid=desktop] per paired desktop');
    await waitUntil(
      '[data-testid=desktop] data-state=online once `tandem run` is connected',
      async () => (await row.getAttribute('data-state')) === 'online',
      { detail: () => describePage(page) },
    );
    await screenshot(page, 'desktops');
    await row.tap();
    await expectScreen(page, 'desktop');
  });

  check('2. a task streams progress, a collapsed tool call with its result, an approval; allowed, it succeeds', async (t) => {
    if (!needPaired(t)) return;
    const { page } = s.phone;
    await submit(page, 'demo');
    await waitUntil(
      'a progress [data-testid=event] "reading crates/foo"',
      async () => (await taskEvents(page)).some((e) => e.type === 'progress' && e.text.includes('reading crates/foo')),
      { detail: () => describePage(page) },
    );

    const tool = await expectVisible(page, '[data-testid=tool]', 'task screen: the tool call');
    assert.equal(await tool.evaluate((el) => el.tagName), 'DETAILS', '[data-testid=tool] is a <details>');
    assert.equal(await tool.getAttribute('data-call-id'), 'c1', '[data-testid=tool] data-call-id');
    assert.equal(await tool.evaluate((el) => el.open), false, 'the tool call is collapsed by default (details not open)');
    const result = tool.locator('[data-testid=tool-result]');
    await waitUntil('[data-testid=tool-result] inside the tool call', async () => (await result.count()) > 0, {
      detail: () => describePage(page),
    });
    assert.match((await result.first().textContent()) ?? '', /1 failed/, 'the tool result shows its output');
    assert.match((await tool.textContent()) ?? '', /bash/, 'the tool call names the tool');

    const approval = await expectVisible(page, '[data-testid=approval][data-state=pending]', 'task screen: a pending approval');
    assert.match((await approval.textContent()) ?? '', /edit src\/lib\.rs/, 'the approval shows its summary');
    await screenshot(page, 'approval', '[data-testid=approval]');
    const allow = approval.locator('[data-testid=allow]');
    await allow.tap();
    // One tap: the buttons are disabled (or gone once the approval resolves).
    const once = await allow.evaluate((b) => b.disabled).catch(() => true);
    assert.ok(once, '[data-testid=allow] is disabled after one tap');
    await expectVisible(page, '[data-testid=approval][data-state=allowed]', 'the approval turns allowed');

    const status = await waitFinished(page, 'demo task');
    assert.equal(status, 'succeeded', '[data-testid=finished] data-status');
    const events = await taskEvents(page);
    const types = events.map((e) => e.type);
    for (const ty of ['progress', 'tool_call', 'approval_request', 'finished']) {
      assert.ok(types.includes(ty), `a [data-testid=event][data-type=${ty}] is shown; types: ${types.join(',')}`);
    }
    assert.ok(events.some((e) => e.text.includes('allowed: editing')), 'the progress after the decision is shown');
    assert.ok(contiguous(events), `event offsets 0,1,2… once each: ${events.map((e) => e.offset).join(',')}`);
    // The finish names the tool whose result was an error (finished.failed).
    assert.equal(await page.locator('[data-testid=finished] [data-testid=failed]').innerText(), 'Failed: bash');
    s.demoEvents = events;
    await screenshot(page, 'finished', '[data-testid=finished]');
  });

  check('3. a reload shows the same thread again: same events, same offsets, no duplicates', async (t) => {
    if (!needPaired(t) || !s.demoEvents) return t.skip('no finished task to reload');
    const { page } = s.phone;
    const url = page.url();
    await page.reload();
    await expectScreen(page, 'task');
    assert.equal(page.url(), url, 'the reload stays on the task');
    await waitFinished(page, 'reloaded thread');
    await waitUntil(
      `${s.demoEvents.length} events after the reload`,
      async () => (await taskEvents(page)).length >= s.demoEvents.length,
      { detail: async () => JSON.stringify(await taskEvents(page)) },
    );
    await sleep(300); // nothing more arrives (duplicates)
    const again = await taskEvents(page);
    const key = (es) => es.map((e) => `${e.offset}:${e.type}`);
    assert.deepEqual(key(again), key(s.demoEvents), 'the same events at the same offsets, each once');
    for (const [i, e] of again.entries()) {
      if (e.type === 'progress') assert.equal(e.text, s.demoEvents[i].text, `progress text at offset ${e.offset}`);
    }
  });

  check('4. the relay killed with -9 mid-task and restarted: the thread catches up, every event once', async (t) => {
    if (!needPaired(t)) return;
    const { run, phone } = s;
    const { page } = phone;
    const N = 60;
    await submit(page, `count ${N} 50`);
    await waitUntil(
      'progress n=5 streaming in',
      async () => progressNumbers(await taskEvents(page)).includes(5),
      { detail: () => describePage(page) },
    );
    await screenshot(page, 'task-streaming');

    const addr = s.relay.addr;
    await s.relay.kill9();
    await expectConn(page, ['connecting', 'offline'], 'relay killed', 15_000);
    await screenshot(page, 'reconnecting', '[data-testid=conn]');
    await sleep(1500); // the agent keeps running the task meanwhile
    s.relay = await run.relay('relay-restarted', s.relayData, addr);

    await expectConn(page, ['online'], 'relay restarted', 30_000);
    const status = await waitFinished(page, 'count task after the relay restart', 30_000);
    assert.equal(status, 'succeeded', '[data-testid=finished] data-status');
    await waitUntil(
      `all ${N} progress events`,
      async () => progressNumbers(await taskEvents(page)).length >= N,
      { timeout: 10_000, detail: async () => `seen n: ${progressNumbers(await taskEvents(page)).join(',')}` },
    );
    await sleep(300);
    checkCount(await taskEvents(page), N, 'after the relay restart');
  });

  check('5. pairing errors: already_used, refused, invalid, expired, unreachable', async () => {
    const { run, browser } = s;
    const relay = s.relay;
    const fresh = [];
    const phone = async (name) => {
      const p = await newPhone(browser, name);
      fresh.push(p);
      return p;
    };
    try {
      // A second desktop shows a code and waits for confirmation; one phone claims it.
      const pair2 = run.tandem(
        'pair-2',
        join(run.dir, 'desktop-2'),
        ['pair', '--relay', `ws://${relay.addr}/v1/connect`, '--print-url', '--no-terminal-qr'],
        { stdin: true, desktopName: 'other-box' },
      );
      const link2 = (await pair2.waitLine(/pairing link: (\S+)/))[1];
      const a = await phone('phone-a');
      await open(a.page, link2);
      await expectVisible(a.page, '[data-testid=sas]', 'phone A claims the second desktop\'s code');
      await pair2.waitLine(/Code: \d{3} \d{3}/);

      trace('already_used');
      // already_used: a second phone opens the same, claimed, link.
      const b = await phone('phone-b');
      await open(b.page, link2);
      await expectPairError(b.page, 'already_used', 'a link another phone already claimed');
      await screenshot(b.page, 'pair-error');

      trace('refused');
      // refused: the desktop says no.
      pair2.write('n\n');
      await expectPairError(a.page, 'refused', 'the desktop refused');
      await pair2.stop();

      trace('invalid');
      // invalid: a damaged link (opened, and pasted).
      const c = await phone('phone-c');
      await open(c.page, `http://${relay.addr}/p#NOTAPAIRINGCODE`);
      await expectPairError(c.page, 'invalid', 'a damaged link opened');
      await open(c.page, `http://${relay.addr}/p`);
      await expectScreen(c.page, 'pair');
      const box = await expectVisible(c.page, '[data-testid=pair-link]', 'pairing screen: the paste box');
      const pairButton = await expectVisible(c.page, '[data-testid=pair-start]', 'pairing screen: the pair button');
      // Cut short, as a bad copy would be.
      await box.fill(link2.slice(0, link2.indexOf('#') + 20));
      await pairButton.tap();
      await expectPairError(c.page, 'invalid', 'a truncated link pasted');
      // Not a link at all (on a fresh page): the app's error, or the browser's own check of
      // an <input type=url>, which keeps the form from being submitted.
      await open(c.page, `http://${relay.addr}/p`);
      await expectScreen(c.page, 'pair');
      const box2 = await expectVisible(c.page, '[data-testid=pair-link]', 'pairing screen: the paste box');
      await box2.fill('hello, not a link');
      await (await expectVisible(c.page, '[data-testid=pair-start]', 'pairing screen: the pair button')).tap();
      await waitUntil(
        'a pasted non-link refused: [data-testid=pair-error][data-code=invalid], or [data-testid=pair-link] :invalid',
        async () =>
          (await box2.evaluate((i) => i.matches(':invalid'))) ||
          (await attr(c.page, '[data-testid=pair-error]:not([hidden])', 'data-code')) === 'invalid',
        { timeout: 5000, detail: () => describePage(c.page) },
      );

      trace('expired');
      // expired: a link past its expiry (client-side check) …
      const d = await phone('phone-d');
      await open(d.page, craftLink(s.link ?? link2, { expiresAt: Date.now() / 1000 - 60 }));
      await expectPairError(d.page, 'expired', 'a link past its expiry');
      trace('used link');
      // … and the first QR code again: its pairing is done and its mailbox closed, so the
      // relay no longer knows it (pairing_not_found, shown as expired).
      if (s.link) {
        const e = await phone('phone-e');
        await open(e.page, s.link);
        await expectPairError(e.page, ['expired', 'already_used'], 'the first QR code, used already');
      }

      trace('unreachable');
      // unreachable: a relay that is down.
      const down = await run.relay('relay-down', join(run.dir, 'relay-down'));
      const f = await phone('phone-f');
      await open(f.page, `http://${down.addr}/p`);
      await expectScreen(f.page, 'pair');
      await down.kill9();
      await (await expectVisible(f.page, '[data-testid=pair-link]', 'pairing screen: the paste box')).fill(
        craftLink(link2, { origin: `http://${down.addr}` }),
      );
      await (await expectVisible(f.page, '[data-testid=pair-start]', 'pairing screen: the pair button')).tap();
      await expectPairError(f.page, 'unreachable', 'a relay that is down', 30_000);

      for (const p of fresh) assertNoPageErrors(p);
    } finally {
      for (const p of fresh) await p.context.close().catch(() => undefined);
    }
  });

  check('6. an idle phone is detached; reattach brings live events back', async (t) => {
    if (!needPaired(t)) return;
    const { run, phone } = s;
    const { page } = phone;
    await s.agent.stop();
    s.agent = run.tandem('agent-idle', s.agentDir, ['run'], { env: { TANDEM_IDLE_DETACH_SECS: String(IDLE_DETACH_SECS) } });
    await s.agent.waitLine(/Connected\. 1 paired device/);
    await openDesktop(page);
    const N = 200;
    await submit(page, `count ${N} 60`); // 12 s: the phone is detached IDLE_DETACH_SECS after it last spoke
    await expectVisible(page, '[data-testid=detached]', 'the idle phone is told it is detached', (IDLE_DETACH_SECS + 6) * 1000);
    await screenshot(page, 'detached', '[data-testid=detached]');
    await sleep(500);
    const before = Math.max(-1, ...progressNumbers(await taskEvents(page)));
    assert.ok(before < N - 1, `the task still runs when the phone is detached (saw n=${before})`);

    await (await expectVisible(page, '[data-testid=reattach]', 'the detached banner: reattach')).tap();
    await expectHidden(page, '[data-testid=detached]', 'reattached', 5000);
    await waitUntil(
      `live progress after n=${before} once reattached`,
      async () => Math.max(-1, ...progressNumbers(await taskEvents(page))) > before + 1,
      { timeout: 5000, detail: () => describePage(page) },
    );
    const status = await waitFinished(page, 'count task after reattaching', 30_000);
    assert.equal(status, 'succeeded', '[data-testid=finished] data-status');
    await waitUntil(
      `all ${N} progress events`,
      async () => progressNumbers(await taskEvents(page)).length >= N,
      { timeout: 10_000, detail: async () => `seen n: ${progressNumbers(await taskEvents(page)).join(',')}` },
    );
    await sleep(300);
    checkCount(await taskEvents(page), N, 'after the detach');
  });

  check('7. the pairing secret leaves the address bar at once; no history entry keeps it', async (t) => {
    if (!needPaired(t)) return;
    const { run, phone } = s;
    // For check 8: the first phone runs a long task while it is the only phone, so a
    // phone paired afterwards has none of it and must load it from the desktop's history.
    const N = 600;
    const longId = await submit(phone.page, `count ${N} 0`);
    assert.equal(await waitFinished(phone.page, `count ${N} 0 on the first phone`, 30_000), 'succeeded', '[data-testid=finished] data-status');
    const fin = (await taskEvents(phone.page)).find((e) => e.type === 'finished');
    s.longTask = { id: longId, total: fin.offset + 1, count: N };

    // A fresh QR code from the desktop (the agent stopped: `tandem pair` needs its data dir).
    await s.agent.stop();
    const png = join(run.dir, 'qr-2.png');
    const pair = run.tandem('pair-phone-2', s.agentDir, [
      'pair', '--relay', `ws://${s.relay.addr}/v1/connect`, '--qr-png', png, '--print-url', '--no-terminal-qr', '--yes',
    ]);
    await pair.waitLine(/pairing link: (\S+)/);
    const link = zbarimg(png);
    const secret = link.slice(link.indexOf('#') + 1);
    assert.ok(secret.length > 40, `the QR link carries its secret in the fragment: ${link}`);
    const leaks = (u) => u.includes('#') || u.includes(secret);

    s.phone2 = await newPhone(s.browser, 'phone-2');
    const { page } = s.phone2;
    // A page before the link, as a real tab has one: going back must leave the app
    // without stopping at an entry that still holds the secret.
    const before = `http://${s.relay.addr}/icon.svg`;
    await open(page, before);
    await open(page, link);
    const href = await page.evaluate(() => location.href);
    assert.ok(!leaks(href), `right after the QR link is opened, location.href has no #fragment: ${href}`);
    assert.ok(!leaks(page.url()), `right after the QR link is opened, page.url() has no #fragment: ${page.url()}`);
    let h = await historyUrls(s.phone2);
    assert.ok(!h.urls.some(leaks), `no session history entry holds the fragment (while pairing): ${h.urls.join(' | ')}`);

    await expectScreen(page, 'desktop', WAIT);
    assert.equal(await pair.wait(), 0, `tandem pair --yes exits 0\n${pair.tail()}`);
    assert.equal(new URL(page.url()).searchParams.get('desktop'), s.desktopId, 'the second phone paired with the same desktop');
    h = await historyUrls(s.phone2);
    assert.ok(!h.urls.some(leaks), `no session history entry holds the fragment (paired): ${h.urls.join(' | ')}`);

    // Back: every stop is fragment-free, and it ends on the page before the link.
    for (let i = 0; i < 5 && page.url() !== before; i++) {
      const cur = page.url();
      assert.ok(!leaks(cur), `going back, an entry holds the fragment: ${cur}`);
      // Scheduled, not run inside evaluate: the navigation it starts would
      // otherwise destroy the context evaluate is still answering from.
      await page.evaluate(() => {
        setTimeout(() => history.back(), 0);
      });
      await waitUntil(`history.back() from ${cur} moves`, async () => page.url() !== cur, { timeout: 5000, detail: () => describePage(page) });
    }
    assert.equal(page.url(), before, 'going back leaves the app for the page before the link');
    // Forward again: the app's entry opens the desktop, no pairing is started again.
    await page.goForward({ waitUntil: 'load' });
    await expectScreen(page, 'desktop', 10_000);
    const again = await page.evaluate(() => location.href);
    assert.ok(!leaks(again), `forward again, location.href has no #fragment: ${again}`);

    const m = await restartAgent('agent-2');
    assert.equal(m[1], '2', 'the desktop now has two paired phones');
    await expectConn(page, ['online'], 'the second phone, agent back');
  });

  check('8. the second phone opens the long task: the newest page first, older pages on scrolling back, each event once', async (t) => {
    if (!s.phone2 || !s.longTask) return t.skip('no second phone or no long task (check 7 failed)');
    const { page } = s.phone2;
    const { id, total, count } = s.longTask;
    await openDesktop(page);
    const item = await expectVisible(
      page,
      `[data-testid=task][data-id="${id}"]`,
      "the second phone's desktop screen lists the first phone's task (the desktop's task_list)",
    );
    await waitUntil('the listed task is [data-state=finished]', async () => (await item.getAttribute('data-state')) === 'finished', {
      detail: () => describePage(page),
    });
    trace('8: open the long task');
    await item.tap();
    await expectScreen(page, 'task');
    assert.equal(new URL(page.url()).searchParams.get('task'), id, 'the tapped task opens');
    const offsets = async () => (await taskEvents(page)).map((e) => e.offset);
    const range = (a, b) => Array.from({ length: b - a }, (_, i) => a + i);

    // The newest page only, with load-older.
    const newest = total - PAGE;
    await waitUntil(
      `the newest page: offsets ${newest}..${total - 1} (${PAGE} events, the finish last)`,
      async () => (await offsets()).length >= PAGE && (await page.locator('[data-testid=finished]').count()) > 0,
      { detail: async () => `${await describePage(page)}\n  offsets held: ${(await offsets()).length}, from ${(await offsets())[0]}` },
    );
    trace('8: newest page in');
    await sleep(300);
    const first = await offsets();
    assert.deepEqual(first, range(newest, total), `at first only the newest page is shown (offsets ${newest}..${total - 1}), got ${first.length} from ${first[0]}`);
    await expectVisible(page, '[data-testid=load-older]', 'older history exists: [data-testid=load-older]', 5000);

    // Scrolled to the top, the page before loads by itself.
    await page.evaluate(() => scrollTo(0, 0));
    await waitUntil(
      `scrolled to the top: older events (before ${newest}) load by themselves`,
      async () => (await offsets())[0] < newest,
      { timeout: 10_000, detail: async () => `${await describePage(page)}\n  ${await scrollInfo(page)}; first offset ${(await offsets())[0]}` },
    );
    // The rest: scrolling up again, else a tap on load-older, until the start. A page
    // is in once the held events run without a hole to the end (a tap while a page is
    // on its way is ignored, so each waits for the one before).
    const settled = async () => {
      const got = await offsets();
      return got.length === total - got[0];
    };
    for (let i = 0; i < 8; i++) {
      await waitUntil('an older page fully in (held offsets contiguous to the end)', settled, {
        timeout: 15_000,
        detail: async () => `held ${(await offsets()).length}, from ${(await offsets())[0]}`,
      });
      const lo = (await offsets())[0];
      trace(`8: held from ${lo}`);
      if (lo === 0) break;
      await sleep(200); // its history_end
      await page.evaluate(() => scrollTo(0, 0));
      const byScroll = await waitUntil(`events before ${lo}`, async () => (await offsets())[0] < lo, { timeout: 1500 }).catch(() => false);
      if (byScroll) continue;
      let loaded = false;
      for (let tap = 0; tap < 3 && !loaded; tap++) {
        const older = await expectVisible(page, '[data-testid=load-older]', `events before ${lo} exist: [data-testid=load-older]`, 5000);
        await older.tap();
        loaded = await waitUntil(`events before ${lo}`, async () => (await offsets())[0] < lo, { timeout: 3000 }).catch(() => false);
      }
      assert.ok(loaded, `[data-testid=load-older] tapped 3 times: no events before offset ${lo} loaded\n${await describePage(page)}`);
    }
    await waitUntil(`all ${total} events`, async () => (await offsets()).length >= total, {
      timeout: 10_000,
      detail: async () => `held ${(await offsets()).length}, from ${(await offsets())[0]}`,
    });
    await expectHidden(page, '[data-testid=load-older]', 'at the start of the task, no more load-older', 5000);
    await sleep(300);
    const events = await taskEvents(page);
    assert.equal(events.length, total, `${total} [data-testid=event] elements, each offset once`);
    checkCount(events, count, 'the long task on the second phone');
    assert.equal(events[0].type, 'accepted', 'offset 0 is the accepted event');
    await screenshot(page, 'history-loaded');
  }, 90_000);

  check('8b. the desktop offers its agents and projects; the ones picked run the task, in that directory', async (t) => {
    if (!needPaired(t)) return;
    const { page } = s.phone;
    await openDesktop(page);
    const agent = await expectVisible(page, '[data-testid=pick-executor]', 'desktop screen: the agent picker');
    const project = await expectVisible(page, '[data-testid=pick-project]', 'desktop screen: the project picker');
    const options = (sel) => sel.evaluate((el) => [...el.options].map((o) => o.value));
    assert.deepEqual(await options(agent), ['fixture', 'other', 'claude'], 'every configured executor, the default first');
    assert.deepEqual(await options(project), ['home', 'site'], 'every configured project, the default first');
    assert.equal(await project.inputValue(), 'home', 'the default project is picked at first');
    await agent.selectOption('other');
    await project.selectOption('site');
    await screenshot(page, 'picks', 'form.compose');
    await submit(page, 'where');
    const status = await waitFinished(page, 'where task');
    assert.equal(status, 'succeeded');
    const accepted = await expectVisible(page, '[data-testid=accepted]', 'task screen: who accepted it');
    assert.match((await accepted.textContent()) ?? '', /Accepted by other in site/, 'the thread says which agent runs it, and where');
    const finished = (await page.locator('[data-testid=finished]').textContent()) ?? '';
    assert.ok(finished.includes(realpathSync(s.run.projects.site)), `it ran in the project's directory: ${finished}`);
  });

  check('8c. a file edit shows as a collapsed diff: the file, +1 −1, and each line with its line numbers', async (t) => {
    if (!needPaired(t)) return;
    const { page } = s.phone;
    await submit(page, 'edit');
    assert.equal(await waitFinished(page, 'edit task'), 'succeeded');
    const diff = await expectVisible(page, '[data-testid=diff]', 'task screen: the diff');
    assert.equal(await diff.getAttribute('data-path'), 'notes.txt', 'named relative to the project');
    assert.equal(await diff.evaluate((el) => el.open), false, 'collapsed by default');
    assert.match((await diff.locator('summary').textContent()) ?? '', /notes\.txt \+1 −1/);
    await diff.locator('summary').tap();
    const rows = await diff.locator('.diff-line').evaluateAll((els) =>
      els.map((el) => [...el.children].map((c) => c.textContent).concat(el.className)),
    );
    assert.deepEqual(rows.find((r) => r.includes('diff-line del')), ['7', '', '-', 'line 7', 'diff-line del'], JSON.stringify(rows));
    assert.deepEqual(rows.find((r) => r.includes('diff-line add')), ['', '7', '+', 'line seven', 'diff-line add'], JSON.stringify(rows));
    assert.deepEqual(rows[0], ['4', '4', ' ', 'line 4', 'diff-line ctx'], 'three lines of context, numbered');
    await screenshot(page, 'diff', '[data-testid=diff]');
  });

  check('8d. the agent\'s text is safe Markdown: bold, code, lists; HTML stays text; a link is inert until tapped', async (t) => {
    if (!needPaired(t)) return;
    const { page } = s.phone;
    await submit(page, 'md');
    assert.equal(await waitFinished(page, 'md task'), 'succeeded');
    const md = await expectVisible(page, '.progress [data-testid=md]', 'task screen: the progress as Markdown');
    assert.equal(await md.locator('strong').textContent(), 'bold');
    assert.equal(await md.locator('code').textContent(), 'code');
    assert.equal(await md.locator('b').count(), 0, 'no HTML element from the text');
    assert.match((await md.textContent()) ?? '', /<b>raw<\/b>/, 'the HTML shows as text');
    const link = md.locator('a.link');
    assert.equal(await link.textContent(), 'the docs');
    assert.equal(await link.getAttribute('href'), null, 'no href: inert');
    assert.equal(await link.getAttribute('data-href'), 'https://example.org/docs');
    const items = await page.locator('[data-testid=finished] [data-testid=md] li').allTextContents();
    assert.deepEqual(items, ['one', 'two'], 'the summary\'s list');
  });

  check('8e. "always allow": allowed once without scope rules; with it a rule is added and the next identical tool use is allowed by the rule; a Claude Code session listed and continued', async (t) => {
    if (!needPaired(t)) return;
    const { page } = s.phone;
    /** On the desktop screen: the fake Claude Code, in project home. */
    const pickClaude = async () => {
      await openDesktop(page);
      await (await expectVisible(page, '[data-testid=pick-executor]', 'desktop screen: the agent picker')).selectOption('claude');
      await page.locator('[data-testid=pick-project]').selectOption('home');
    };
    /** Run the recorded session, whose `cargo test -p foo` (Bash) asks; tap "always allow". */
    const alwaysAllow = async (what) => {
      await pickClaude();
      await submit(page, 'fix the tests');
      const approval = await expectVisible(page, '[data-testid=approval][data-state=pending]', `${what}: Bash needs an approval`);
      assert.match((await approval.textContent()) ?? '', /cargo test -p foo/, 'the approval shows the command');
      await approval.locator('[data-testid=allow-always]').tap();
      return approval;
    };
    // (a) With scope approve (a pairing's): allowed once, and the desktop's reason shown on the approval.
    await alwaysAllow('scope approve');
    const once = await expectVisible(page, '[data-testid=rule-note][data-state=refused]', 'the desktop allowed once and said why');
    assert.equal(((await once.textContent()) ?? '').trim(), 'allowed once: this device may not add rules on this computer');
    assert.equal(await waitFinished(page, 'the claude task allowed once'), 'succeeded');
    assert.equal(await page.locator('[data-testid=rule-added]').count(), 0, 'no rule was added');
    const device = await attr(page, '#app', 'data-device');
    const scope = s.run.tandem('scope-rules', s.agentDir, ['scope', device, 'rules']);
    assert.equal(await scope.wait(10_000), 0, `tandem scope ${device} rules exits 0\n${scope.tail()}`);
    // With scope rules: the rule is added and shown.
    await alwaysAllow('scope rules');
    const added = await expectVisible(page, '[data-testid=rule-added]', 'the thread shows the rule the approval added');
    assert.equal(((await added.textContent()) ?? '').trim(), '· Always allowed in this project: Bash(cargo test -p foo)');
    await screenshot(page, 'always-allow', '[data-testid=approval]');
    assert.equal(await waitFinished(page, 'the claude task that added the rule'), 'succeeded');
    assert.equal(await attr(page, '[data-testid=approval]', 'data-state'), 'allowed');
    // The same tool use again: the desktop's new rule answers, nobody is asked.
    await pickClaude();
    await submit(page, 'fix the tests');
    assert.equal(await waitFinished(page, 'the second claude task'), 'succeeded');
    const resolved = await expectVisible(page, '[data-testid=resolved]', 'the approval was resolved');
    assert.match((await resolved.textContent()) ?? '', /^Allowed by the desktop's rule "allow Bash\(cargo test -p foo\)"/, 'allowed by the rule, not by a tap');
    assert.equal(await page.locator('[data-testid=allow-always]:visible, [data-testid=allow]:visible').count(), 0, 'no button to tap');

    // (b) A jsonl executor cannot list sessions; Claude Code's store can.
    await openDesktop(page);
    await (await expectVisible(page, '[data-testid=sessions-open]', 'desktop screen: continue a session')).tap();
    const nope = await expectVisible(page, '[data-testid=sessions-note][data-code=not_supported]', 'the fixture executor cannot list sessions');
    assert.equal(((await nope.textContent()) ?? '').trim(), 'This agent (fixture) cannot list sessions.');
    await page.locator('[data-testid=sessions-close]').tap();
    const session = '5b0e7a2c-1d3f-4e6a-9b8c-7d6e5f4a3b2c';
    s.run.claudeSession(realpathSync(s.run.projects.home), session, 'Fix the flaky login test', 'the login test fails one time in ten');
    await pickClaude();
    await page.locator('[data-testid=sessions-open]').tap();
    const row = await expectVisible(page, `[data-testid=session][data-id="${session}"]`, 'the session from the store is listed');
    assert.match((await row.textContent()) ?? '', /^Fix the flaky login test/, 'listed by its summary');
    await screenshot(page, 'sessions', '[data-testid=sessions]');
    await row.tap();
    assert.match((await (await expectVisible(page, '[data-testid=resume]', 'the picked session')).textContent()) ?? '', /Continues: Fix the flaky login test/);
    await submit(page, 'go on with it');
    assert.equal(await waitFinished(page, 'the continued session'), 'succeeded');
    assert.equal(await attr(page, '[data-testid=resumed]', 'data-session'), session, 'the thread says which session it continues');
    assert.match((await page.locator('[data-testid=finished]').textContent()) ?? '', new RegExp(`resumed ${session}`));
    const argv = readFileSync(s.run.claudeArgv, 'utf8').trim().split('\n').map((l) => JSON.parse(l).argv);
    const last = argv.at(-1);
    assert.equal(last[last.indexOf('--resume') + 1], session, `claude ran with --resume ${session}: ${JSON.stringify(last)}`);
    assert.equal(last.at(-1), 'go on with it', 'the text is the next prompt');
  });

  check('9. a follow-up shows in the thread as a follow_up event; cancel ends the task as cancelled', async (t) => {
    if (!needPaired(t)) return;
    const { page } = s.phone;
    const N = 400;
    await submit(page, `count ${N} 50`); // 20 s unless cancelled
    await waitUntil('progress n=3 streaming in', async () => progressNumbers(await taskEvents(page)).includes(3), {
      detail: () => describePage(page),
    });
    const text = 'also run the doc tests';
    const box = await expectVisible(page, '[data-testid=followup]', 'task screen: the follow-up box');
    await box.fill(text);
    await (await expectVisible(page, '[data-testid=followup-send]', 'task screen: the follow-up send button')).tap();
    await waitUntil(
      `a [data-testid=event][data-type=follow_up] reading "${text}"`,
      async () => (await taskEvents(page)).some((e) => e.type === 'follow_up' && e.text === text),
      { timeout: 10_000, detail: async () => `${await describePage(page)}\n  types: ${[...new Set((await taskEvents(page)).map((e) => e.type))].join(',')}` },
    );
    assert.equal(await box.inputValue(), '', 'the follow-up box is emptied once sent');
    await screenshot(page, 'follow-up', '[data-testid=event][data-type=follow_up]');

    const cancel = await expectVisible(page, '[data-testid=cancel]', 'task screen: cancel while running');
    await cancel.tap();
    const status = await waitFinished(page, 'the cancelled task', 15_000);
    assert.equal(status, 'cancelled', '[data-testid=finished] data-status');
    await expectHidden(page, '[data-testid=cancel]', 'no cancel once the task finished', 5000);
    await sleep(300);
    const events = await taskEvents(page);
    assert.equal(events.filter((e) => e.type === 'follow_up').length, 1, 'the follow-up is shown once');
    const ns = progressNumbers(events);
    assert.ok(ns.length < N, `cancel stopped the task before its end (saw ${ns.length} of ${N})`);
    assert.deepEqual(ns, ns.map((_, i) => i), 'the progress before the cancel, each once, in order');
    assert.ok(contiguous(events), `event offsets 0,1,2… once each: ${events.map((e) => e.offset).join(',')}`);
  });

  check('10. deny an approval: it turns denied, the executor is told, the task finishes', async (t) => {
    if (!needPaired(t)) return;
    const { page } = s.phone;
    await submit(page, 'demo');
    const approval = await expectVisible(page, '[data-testid=approval][data-state=pending]', 'task screen: a pending approval');
    const deny = approval.locator('[data-testid=deny]');
    await deny.tap();
    const once = await deny.evaluate((b) => b.disabled).catch(() => true);
    assert.ok(once, '[data-testid=deny] is disabled after one tap');
    await expectVisible(page, '[data-testid=approval][data-state=denied]', 'the approval turns denied');
    // The demo fixture reports the decision ("denied") and finishes succeeded.
    const status = await waitFinished(page, 'demo task after the denial');
    assert.equal(status, 'succeeded', '[data-testid=finished] data-status (the demo fixture finishes after reporting the decision)');
    await sleep(300);
    const events = await taskEvents(page);
    const texts = events.filter((e) => e.type === 'progress').map((e) => e.text);
    assert.ok(texts.includes('denied'), `the executor was told: a progress "denied"; progress: ${texts.join(' | ')}`);
    assert.ok(!texts.some((x) => x.includes('allowed')), `nothing was allowed; progress: ${texts.join(' | ')}`);
    assert.ok(events.some((e) => e.type === 'approval_resolved'), 'an approval_resolved event is shown');
    assert.equal(await attr(page, '[data-testid=approval]', 'data-state'), 'denied', 'the approval stays denied once the task finished');
    // The finish names what was denied: a success with denials is not a plain success.
    const denied = await expectVisible(page, '[data-testid=finished] [data-testid=denied]', 'the finish names the denied tool');
    assert.equal(await denied.innerText(), 'Denied: edit src/lib.rs', 'the finish says "Denied: <tool>"');
    assert.ok(contiguous(events), `event offsets 0,1,2… once each: ${events.map((e) => e.offset).join(',')}`);
  });

  check('11. the desktop shows offline when its agent dies; a task sent meanwhile runs once it is back, exactly once', async (t) => {
    if (!needPaired(t)) return;
    const { page } = s.phone;
    await openDesktop(page);
    const state = (sel) => attr(page, sel, 'data-state');
    await waitUntil('[data-testid=desktop-state] online before the kill', async () => ['online', 'busy'].includes(await state('[data-testid=desktop-state]')), {
      detail: () => describePage(page),
    });
    await s.agent.kill9();
    await waitUntil(
      '[data-testid=desktop-state] data-state=offline once the agent is killed',
      async () => (await state('[data-testid=desktop-state]')) === 'offline',
      { timeout: 10_000, detail: () => describePage(page) },
    );
    await (await expectVisible(page, '[data-testid=back]', 'desktop screen: back to the desktops')).tap();
    await expectScreen(page, 'desktops');
    const row = `[data-testid=desktop][data-id="${s.desktopId}"]`;
    await expectVisible(page, row, 'desktops screen: the desktop');
    assert.equal(await state(row), 'offline', `${row} data-state while the agent is down`);
    await screenshot(page, 'desktop-offline', row);
    await page.locator(row).tap();
    await expectScreen(page, 'desktop');

    const N = 7;
    const text = `count ${N} 20`;
    const id = await submit(page, text);
    await sleep(1000);
    assert.ok(!(await taskEvents(page)).some((e) => e.type === 'accepted'), 'nothing is accepted while the agent is down');

    s.agent = s.run.tandem('agent-back', s.agentDir, ['run']);
    await s.agent.waitLine(/Connected\. \d+ paired device/);
    const status = await waitFinished(page, 'the task sent while the desktop was offline', 30_000);
    assert.equal(status, 'succeeded', '[data-testid=finished] data-status');
    await waitUntil(`all ${N} progress events`, async () => progressNumbers(await taskEvents(page)).length >= N, {
      timeout: 10_000,
      detail: async () => `seen n: ${progressNumbers(await taskEvents(page)).join(',')}`,
    });
    await sleep(1000); // a second run would show by now
    const events = await taskEvents(page);
    checkCount(events, N, 'the task sent while offline');
    assert.equal(events.filter((e) => e.type === 'accepted').length, 1, 'accepted once');
    assert.equal(events.filter((e) => e.type === 'finished').length, 1, 'finished once');
    // The desktop's own record: one task with this text, run once.
    const recorded = await desktopEvents(id);
    const kinds = recorded.map((l) => /#\d+\s+(\S+)/.exec(l)?.[1]).filter(Boolean);
    assert.equal(kinds.filter((k) => k === 'accepted').length, 1, `tandem tasks ${id}: accepted once\n${recorded.join('\n')}`);
    assert.equal(kinds.filter((k) => k === 'finished').length, 1, `tandem tasks ${id}: finished once\n${recorded.join('\n')}`);
    assert.equal(recorded.length, N + 2, `tandem tasks ${id}: accepted, ${N} progress lines, finished\n${recorded.join('\n')}`);
    await openDesktop(page);
    await waitUntil('[data-testid=desktop-state] online again', async () => ['online', 'busy'].includes(await state('[data-testid=desktop-state]')), {
      timeout: 10_000,
      detail: () => describePage(page),
    });
    const items = await page.$$eval('[data-testid=task]', (els) => els.map((e) => [e.getAttribute('data-id'), e.textContent ?? '']));
    const same = items.filter(([, tx]) => tx.includes(text));
    assert.deepEqual(same.map(([i]) => i), [id], `one [data-testid=task] "${text}" on the desktop screen: ${JSON.stringify(same)}`);
  });

  check('12. two tabs: the newest owns the state, the older steps aside; "use here" takes it back; each task runs once', async (t) => {
    if (!needPaired(t)) return;
    const a = s.phone.page;
    const url = `http://${s.relay.addr}/p?desktop=${encodeURIComponent(s.desktopId)}`;
    await openDesktop(a);
    await expectConn(a, ['online'], 'the first tab before the second opens');
    const b = await newTab(s.phone, 'phone-tab-2');
    try {
      // A second tab of the same browser (same IndexedDB) opens: it claims the state.
      await open(b.page, url);
      await expectScreen(b.page, 'desktop');
      await expectSteppedAside(a, 'the first tab, once a second tab opened');
      await screenshot(a, 'other-tab', '[data-testid=conn]');
      await expectConn(b.page, ['online'], 'the second tab');
      const nB = 4;
      const textB = `count ${nB} 20`;
      const idB = await submit(b.page, textB);
      assert.equal(await waitFinished(b.page, `${textB} in the second tab`), 'succeeded', '[data-testid=finished] data-status (second tab)');
      await checkShownOnce(b.page, nB, `${textB} (second tab)`);
      assert.equal(await attr(a, '[data-testid=conn]', 'data-state'), 'offline', 'the first tab stays aside while the second works');

      // "Use here" on the first tab: it reloads and owns the state again.
      trace('12: use here');
      const loaded = a.waitForEvent('load', { timeout: WAIT });
      await (await expectVisible(a, '[data-testid=use-here]', 'the first tab: use here')).tap();
      await loaded.catch(async (e) => {
        throw new Error(`[data-testid=use-here] did not reload the first tab: ${e.message.split('\n')[0]}\n${await describePage(a)}`);
      });
      await expectScreen(a, 'desktop');
      await expectHidden(a, '[data-testid=use-here]', 'the first tab owns the state again', 5000);
      await expectConn(a, ['online'], 'the first tab after "use here"');
      await expectSteppedAside(b.page, 'the second tab, once the first took over');
      // The first tab holds what the second one saved: its task, once.
      const listed = await a.$$eval('[data-testid=task]', (els) => els.map((e) => e.getAttribute('data-id')));
      assert.equal(listed.filter((x) => x === idB).length, 1, `the first tab lists the second tab's task ${idB} once: ${listed.join(',')}`);

      const nA = 5;
      const textA = `count ${nA} 20`;
      const idA = await submit(a, textA);
      assert.equal(await waitFinished(a, `${textA} in the first tab`), 'succeeded', '[data-testid=finished] data-status (first tab)');
      await sleep(1000); // a second run would show by now
      await checkShownOnce(a, nA, `${textA} (first tab, after use here)`);

      // The desktop saw each task once: the second tab's did not run again when the
      // first one took over (its outbox, its links), the first tab's ran once.
      trace('12: the desktop');
      await checkRanOnce(idB, nB, `${textB} (second tab)`);
      await checkRanOnce(idA, nA, `${textA} (first tab)`);
      const all = await desktopTasks();
      for (const [id, text] of [[idB, textB], [idA, textA]]) {
        const same = all.filter((l) => l.trimEnd().endsWith(`  ${text}`));
        assert.equal(same.length, 1, `the desktop has one task "${text}" (tandem tasks)\n${all.join('\n')}`);
        assert.ok(same[0].startsWith(id), `the desktop's task "${text}" is ${id}: ${same[0]}`);
      }
      // The second tab stayed aside meanwhile (it does not reconnect by itself).
      await expectSteppedAside(b.page, 'the second tab, still aside');
      assertNoPageErrors(b);
    } finally {
      if (b.consoleErrors.length) console.log(`# console errors on ${b.name} (reported, not failures):\n#   ${b.consoleErrors.slice(0, 20).join('\n#   ')}`);
      await b.page.close().catch(() => undefined);
      // Failed half way: the first tab takes the state back, for the checks after this one.
      if (await a.locator('[data-testid=use-here]').isVisible().catch(() => false)) await a.reload().catch(() => undefined);
    }
  });

  check('13. forget a desktop: it is gone (after a reload too), its data removed, the relay revoked the route', async (t) => {
    if (!s.phone2) return t.skip('no second phone (check 7 failed)');
    const { page } = s.phone2;
    const device = await attr(page, '#app', 'data-device');
    assert.ok(device, `#app data-device names this browser's device: ${await describePage(page)}`);
    await openDesktop(page);
    await expectConn(page, ['online'], 'the second phone before forgetting');
    const revoked = () => relayLog().filter((l) => /route revoked/.test(l) && l.includes(`device=${device}`));
    assert.equal(revoked().length, 0, `no revoke by ${device} in the relay's log yet`);

    // Cancelled in the confirmation dialog: nothing happens.
    let asked = null;
    page.once('dialog', (d) => {
      asked = d.message();
      void d.dismiss();
    });
    await (await expectVisible(page, '[data-testid=forget]', 'desktop screen: forget')).tap();
    await waitUntil('[data-testid=forget] asks for confirmation (window.confirm)', async () => asked !== null, { timeout: 5000 });
    await sleep(300);
    assert.equal(await attr(page, '#app', 'data-screen'), 'desktop', `dismissing the confirmation keeps the desktop screen\n${await describePage(page)}`);

    // Confirmed.
    asked = null;
    page.once('dialog', (d) => {
      asked = d.message();
      void d.accept();
    });
    await (await expectVisible(page, '[data-testid=forget]', 'desktop screen: forget')).tap();
    await waitUntil('[data-testid=forget] asks for confirmation again', async () => asked !== null, { timeout: 5000 });
    assert.match(asked, /Forget/, `the confirmation says what it does: ${JSON.stringify(asked)}`);
    // Its only desktop gone, the app shows the pairing screen (a desktops list would be empty).
    await waitUntil(
      '#app[data-screen=pair] (no desktop left) or [data-screen=desktops] without it',
      async () => {
        const sc = await attr(page, '#app', 'data-screen');
        return sc === 'pair' || (sc === 'desktops' && (await page.locator(`[data-testid=desktop][data-id="${s.desktopId}"]`).count()) === 0);
      },
      { timeout: 10_000, detail: () => describePage(page) },
    );
    assert.equal(await page.locator('[data-testid=desktop]').count(), 0, 'no [data-testid=desktop] left');

    // The relay: the route between this phone and the desktop is revoked (the app's Revoke frame).
    await waitUntil(
      `the relay logs "route revoked device=${device} peer=${s.desktopId}"`,
      async () => revoked().some((l) => l.includes(`peer=${s.desktopId}`)),
      { timeout: 10_000, detail: () => relayLog().slice(-10).join('\n') },
    );

    // After a reload, and opening the desktop's own address: still forgotten.
    await page.reload();
    await expectScreen(page, 'pair');
    await open(page, `http://${s.relay.addr}/p?desktop=${encodeURIComponent(s.desktopId)}`);
    await expectScreen(page, 'pair');
    assert.equal(await page.locator('[data-testid=desktop]').count(), 0, 'no [data-testid=desktop] after a reload');
    // Nothing about it is left in storage: no desktop row, no tasks, no events.
    const left = await page.evaluate(
      (id) =>
        new Promise((resolve, reject) => {
          const r = indexedDB.open('tandem');
          r.onerror = () => reject(r.error);
          r.onsuccess = () => {
            const db = r.result;
            const tx = db.transaction(['desktops', 'tasks', 'events']);
            const range = IDBKeyRange.bound([id], [id, []]);
            const out = {};
            const count = (name, q) => {
              const c = tx.objectStore(name).count(q);
              c.onsuccess = () => (out[name] = c.result);
            };
            count('desktops', undefined);
            count('tasks', range);
            count('events', range);
            tx.oncomplete = () => {
              db.close();
              resolve(out);
            };
            tx.onerror = () => reject(tx.error);
          };
        }),
      s.desktopId,
    );
    assert.deepEqual(left, { desktops: 0, tasks: 0, events: 0 }, `IndexedDB holds nothing of the forgotten desktop ${s.desktopId}`);

    // The first phone is not affected.
    await openDesktop(s.phone.page);
    await expectConn(s.phone.page, ['online'], 'the first phone after the second forgot the desktop', 10_000);
  });
});
