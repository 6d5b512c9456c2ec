// Messages the desktop can no longer send are shown, not only logged (issue 14 item 9): a phone
// (headless chromium, keys in IndexedDB on 127.0.0.1) whose desktop dropped messages for it while
// it was away. Real processes: a relay that queues at most QUEUE_FRAMES frames per device
// (`TANDEM_RELAY_QUEUE_MAX_FRAMES`) and the agent paired with an outbox of OUTBOX messages
// (`TANDEM_OUTBOX_MAX_MESSAGES`). The phone starts `count N MS` and closes its page; the relay
// queues the first frames and refuses the rest (`queue_full`), the agent keeps only its newest
// OUTBOX messages: the messages between are gone for good. Back, the phone gets what the relay
// queued, then what the agent still holds, whose `oldest` lies past the gap (`ResyncNeeded`).
//
// G1 the banner [data-testid=notice][data-kind=lost] says how many messages from the desktop never
//    arrived and that the task's history was asked for again, naming the task; the thread then
//    holds every event once (n=0..N-1, offsets contiguous, finished) from the desktop's history.
// G1b its answers overflow the desktop's outbox as well (a loss per record dropped): the page asks
//    for the gap again once per answer, not once per loss, and the thread fills in completely.
// G2 the notice survives a reload (saved with the link); "ask again" answers; dismissed, it is gone,
//    also after another reload.
//
//   node --test e2e/lost.e2e.mjs   (needs target/debug/tandem-relay and tandem, zbarimg, chromium)
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import {
  Run,
  assertNoPageErrors,
  contiguous,
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
  taskEvents,
  waitFinished,
  waitUntil,
  zbarimg,
} from './harness.mjs';

/** Frames the relay queues for one device. */
const QUEUE_FRAMES = 12;
/** Messages the agent keeps for the phone until acknowledged. */
const OUTBOX = 8;
/** Progress events of the task: far more than both together. */
const N = 80;

const s = { run: null, browser: null, relay: null, agentDir: null, agent: null, phone: null, desktopId: null, taskId: null, failed: false };

function check(name, fn, timeout = 90_000) {
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

/** The desktop's record of a task (`tandem tasks ID`): one line per event. */
async function desktopEvents(taskId) {
  const p = s.run.tandem(`tasks-${Date.now()}`, s.agentDir, ['tasks', taskId]);
  assert.equal(await p.wait(10_000), 0, p.tail());
  return p.lines.slice();
}

async function lostNotice(page, what) {
  const el = await expectVisible(page, '[data-testid=notice][data-kind=lost]', what, 30_000);
  return ((await el.textContent()) ?? '').replace(/\s+/g, ' ');
}

describe('web client: messages the desktop could no longer send', { concurrency: false }, () => {
  before(async () => {
    s.run = new Run();
    s.agentDir = join(s.run.dir, 'desktop');
    s.relay = await s.run.relay('relay', join(s.run.dir, 'relay-data'), '127.0.0.1:0', { TANDEM_RELAY_QUEUE_MAX_FRAMES: String(QUEUE_FRAMES) });
    s.browser = await launchBrowser();
    s.phone = await newPhone(s.browser, 'phone');
  });

  after(async () => {
    if (s.phone?.consoleErrors.length) console.log(`# console errors (reported, not failures):\n#   ${s.phone.consoleErrors.slice(0, 20).join('\n#   ')}`);
    await s.browser?.close().catch(() => undefined);
    await s.run?.cleanup();
    if (s.failed || process.env.E2E_KEEP) console.log(`# logs kept in ${s.run?.logs}`);
    else if (s.run) rmSync(s.run.dir, { recursive: true, force: true });
  });

  check('G1. messages lost while the phone was away: a banner says how many and which task; its history fills the thread', async () => {
    const { run, relay } = s;
    const env = { TANDEM_OUTBOX_MAX_MESSAGES: String(OUTBOX) };
    const png = join(run.dir, 'qr.png');
    const pair = run.tandem('pair', s.agentDir, ['pair', '--relay', `ws://${relay.addr}/v1/connect`, '--qr-png', png, '--print-url', '--no-terminal-qr', '--yes'], { env });
    await pair.waitLine(/pairing link: (\S+)/);
    let page = s.phone.page;
    await open(page, zbarimg(png));
    await pair.waitLine(/Paired with/);
    assert.equal(await pair.wait(), 0, pair.tail());
    await expectScreen(page, 'desktop');
    s.desktopId = new URL(page.url()).searchParams.get('desktop');
    s.agent = run.tandem('agent', s.agentDir, ['run'], { env });
    await s.agent.waitLine(/Connected\. 1 paired device/);
    await expectConn(page, ['online'], 'after pairing');

    // The task starts; the phone sees it begin, then goes away (the page closes).
    const compose = await expectVisible(page, '[data-testid=compose]', 'the task box');
    await compose.fill(`count ${N} 40`);
    await (await expectVisible(page, '[data-testid=send]', 'the send button')).tap();
    await expectScreen(page, 'task');
    s.taskId = new URL(page.url()).searchParams.get('task');
    await waitUntil('the first progress event', async () => progressNumbers(await taskEvents(page)).length > 0, { detail: () => describePage(page) });
    await page.close();

    // The task runs to its end with the phone away.
    await waitUntil('the desktop finished the task', async () => (await desktopEvents(s.taskId)).some((l) => /#\d+\s+finished/.test(l)), { timeout: 30_000, every: 500 });

    // Back: what the relay queued, then what the agent still holds, past a gap.
    page = await s.phone.context.newPage();
    page.on('pageerror', (e) => s.phone.errors.push(`${e.name}: ${e.message}\n${e.stack ?? ''}`));
    s.phone.page = page;
    await open(page, `http://${relay.addr}/p?desktop=${encodeURIComponent(s.desktopId)}&task=${encodeURIComponent(s.taskId)}`);
    await expectScreen(page, 'task');
    const text = await lostNotice(page, 'the lost-messages banner');
    const m = /(\d+) messages from build-box never arrived/.exec(text);
    assert.ok(m, `the banner says how many messages from which computer never arrived: ${text}`);
    const lost = Number(m[1]);
    assert.ok(lost > 0, `a count: ${lost}`);
    assert.match(text, /the computer no longer had them to send/, 'it says why');
    await expectVisible(page, '[data-testid=notice][data-kind=lost] [data-testid=notice-recover]', 'the banner offers to ask again');
    // What to do was done: the task list came, named the task, and its history was fetched.
    await waitUntil('the banner names the task whose history was asked for again', async () => (await lostNotice(page, 'banner')).includes(`“count ${N} 40”`), {
      detail: async () => `banner: ${await lostNotice(page, 'banner')}`,
    });
    await waitFinished(page, 'the thread after the gap');
    await screenshot(page, 'lost-messages', '[data-testid=notice]');
  });

  // The desktop's answers overflow its outbox of OUTBOX too (a loss reported per
  // record it drops): the page asks for the gap again only when an answer ends,
  // not once per loss, so the fill catches up instead of feeding the losses.
  check('G1b. the thread fills in after the loss: n=0..N-1 once each, in order', async () => {
    assert.ok(s.taskId, 'G1 ran');
    const { page } = s.phone;
    await waitUntil(`all ${N} progress events`, async () => progressNumbers(await taskEvents(page)).length >= N, {
      timeout: 45_000,
      detail: async () => `seen n: ${progressNumbers(await taskEvents(page)).join(',')}`,
    });
    const events = await taskEvents(page);
    assert.deepEqual(progressNumbers(events), Array.from({ length: N }, (_, i) => i), 'n=0..N-1 once each, in order');
    assert.ok(contiguous(events), `offsets 0,1,2… once each: ${events.map((e) => e.offset).join(',')}`);
  });

  check('G2. the banner survives a reload; "ask again" answers; dismissed, it stays gone', async () => {
    assert.ok(s.taskId, 'G1 ran');
    const { page } = s.phone;
    await page.reload();
    await expectScreen(page, 'task');
    const text = await lostNotice(page, 'the banner after a reload');
    assert.match(text, /messages from build-box never arrived/);
    await expectConn(page, ['online'], 'after the reload');
    await (await expectVisible(page, '[data-testid=notice-recover]', 'ask again')).tap();
    await waitUntil('"ask again" says it asked', async () => /Asked at /.test((await lostNotice(page, 'banner')) ?? ''), { detail: () => describePage(page) });
    await (await expectVisible(page, '[data-testid=notice-dismiss]', 'dismiss')).tap();
    await expectHidden(page, '[data-testid=notice][data-kind=lost]', 'dismissed');
    await page.reload();
    await expectScreen(page, 'task');
    await waitFinished(page, 'the thread after a second reload');
    assert.equal(await page.locator('[data-testid=notice][data-kind=lost]').count(), 0, 'still gone after a reload');
  });
});
