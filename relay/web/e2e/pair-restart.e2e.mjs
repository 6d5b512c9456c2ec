// Pairing the web client across a relay restart (PROTOCOL §9.4, "Interruptions"): a standalone
// relay built with its crash points (`FAILPOINTS`, the `failpoints` feature the test command
// builds it with) aborts at one exact step of a pairing and is started again on the same port and
// data; `tandem pair --yes` on the desktop, the app in headless chromium on the phone.
//
// P1: the relay dies with the page's claim in flight (`relay.pair_claim`): the page claims again
// once the relay is back, and both sides end paired.
// P2: the relay dies with the desktop's result in flight (`relay.pair_message`, the third pairing
// message): the page, reconnected, claims the mailbox again with its confirmation, the desktop
// sends its result again, and both sides end paired; never the desktop alone.
//
//   node --test e2e/pair-restart.e2e.mjs   (needs target/debug/tandem-relay built with
//                                           --features tandem-relay/failpoints, target/debug/tandem,
//                                           chromium)
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { Run, assertNoPageErrors, describePage, expectScreen, launchBrowser, newPhone, open } from './harness.mjs';

const s = { run: null, browser: null };

/** A relay that aborts at `failpoints`; resolves once it listens. */
async function failingRelay(name, dataDir, failpoints) {
  const p = s.run.start(name, join(s.run.bin, 'tandem-relay'), ['--listen', '127.0.0.1:0', '--data-dir', dataDir, '--tls', 'off'], {
    env: { TANDEM_RELAY_LOG: process.env.TEST_LOG ?? 'info', FAILPOINTS: failpoints },
  });
  const m = await p.waitLine(/tandem-relay listening on ws:\/\/(\S+)\/v1\/connect/);
  p.addr = m[1];
  return p;
}

/** One pairing whose relay aborts at `failpoints` and is restarted: both sides must end paired. */
async function pairAcrossACrash(name, failpoints) {
  const data = join(s.run.dir, `${name}-relay`);
  const relay = await failingRelay(`${name}-relay`, data, failpoints);
  const pair = s.run.tandem(`${name}-pair`, join(s.run.dir, `${name}-desktop`), [
    'pair',
    '--relay',
    `ws://${relay.addr}/v1/connect`,
    '--yes',
    '--print-url',
    '--no-terminal-qr',
  ]);
  const link = (await pair.waitLine(/pairing link: (\S+)/))[1];
  const phone = await newPhone(s.browser, name);
  await open(phone.page, link);
  // The crash point aborts the relay; it comes back on the same port and data, without it.
  const died = await relay.exited;
  assert.notEqual(died, 0, `the relay aborted at its crash point (${failpoints})\n${relay.tail()}`);
  await s.run.relay(`${name}-relay-restarted`, data, relay.addr);
  await pair.waitLine(/Paired with/, 60_000);
  assert.equal(await pair.wait(60_000), 0, `tandem pair exits 0\n${pair.tail()}`);
  await expectScreen(phone.page, 'desktop', 60_000).catch(async (e) => {
    throw new Error(`${e.message}\nthe phone did not end paired while the desktop did\n${await describePage(phone.page)}`);
  });
  assertNoPageErrors(phone);
  return pair;
}

describe('web client: pairing across a relay restart', { concurrency: false }, () => {
  before(async () => {
    s.run = new Run();
    s.browser = await launchBrowser();
  });

  after(async () => {
    await s.browser?.close();
    await s.run?.cleanup();
    if (process.env.E2E_KEEP) console.log(`# logs kept in ${s.run?.logs}`);
    else if (s.run) rmSync(s.run.dir, { recursive: true, force: true });
  });

  test('P1. the relay dies with the claim in flight: the page claims again and both sides pair', { timeout: 120_000 }, async () => {
    await pairAcrossACrash('p1', 'relay.pair_claim=return');
  });

  test('P2. the relay dies with the desktop\'s result in flight: it is sent again and both sides pair', { timeout: 120_000 }, async () => {
    const pair = await pairAcrossACrash('p2', 'relay.pair_message=2*off->return');
    assert.ok(pair.lines.some((l) => l.includes('asked for the pairing answer again')), `the desktop answered the repeated claim\n${pair.tail()}`);
  });
});
