// What the user is told (src/app/notices.ts) and the records kept for the relay (src/app/sender.ts),
// sans DOM: lost ranges merge and stay bounded, the texts say how many and what to do, a refused
// record is retried with a bounded backoff until accepted, a record the relay can never accept is
// given up and said so.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DeviceKey } from '../src/proto/identity.ts';
import { MAX_LOST, addLost, lostNotice, nameTask, readableLost, refusedNotice } from '../src/app/notices.ts';
import { RETRY_MAX_MS, Sender, type Timers } from '../src/app/sender.ts';

test('notices: lost ranges merge when adjacent, stay bounded, and name the tasks fetched again', () => {
  let l = addLost(undefined, 1n, 4n, 10);
  l = addLost(l, 5n, 6n, 20);
  assert.deepEqual(l.map((r) => [r.from, r.to]), [[1, 6]]);
  l = addLost(l, 10n, 10n, 30);
  assert.deepEqual(l.map((r) => [r.from, r.to]), [[1, 6], [10, 10]]);
  l = nameTask(l, 'count 40 0');
  l = nameTask(l, 'count 40 0');
  assert.deepEqual(l.at(-1)?.tasks, ['count 40 0']);
  for (let i = 0; i < 40; i++) l = addLost(l, BigInt(100 + 3 * i), BigInt(100 + 3 * i), 40 + i);
  assert.equal(l.length, MAX_LOST);
  // Nothing is forgotten by merging: the count covers every lost message (and what lay between merged ranges).
  const n = lostNotice('build-box', l);
  assert.match(n.text, /^\d+ messages from build-box never arrived/);
  assert.equal(lostNotice('box', [{ from: 3, to: 3, atMs: 0, tasks: [] }]).text.startsWith('1 message from box never arrived: the computer no longer had it'), true);
  assert.equal(n.recover, true);
});

test('notices: a damaged stored row shows what reads as ranges and never throws', () => {
  const garbage = [null, 3, 'x', { from: 0, to: 2 }, { from: 5, to: 4 }, { from: 1.5, to: 2 }, { from: 2, to: 3, tasks: [7, 'a'] }];
  assert.deepEqual(readableLost(garbage), [{ from: 2, to: 3, atMs: 0, tasks: ['a'] }]);
  assert.deepEqual(readableLost({ from: 1 }), []);
  assert.match(lostNotice('box', garbage as never).text, /^2 messages from box never arrived/);
  assert.deepEqual(addLost(garbage as never, 4n, 4n, 1).map((r) => [r.from, r.to]), [[2, 4]]);
});

test('notices: a refusal says how many wait, why, and when Tandem tries again', () => {
  const n = refusedNotice('box', { code: 'rate_limited', message: 'too many frames', waiting: 3, retryAt: 5_000 }, 1_000);
  assert.equal(n.text, 'The relay has not accepted 3 messages to box yet: too many frames (rate_limited). Tandem tries again in 4 s; nothing is lost.');
  const off = refusedNotice('box', { code: 'offline', message: 'not connected to the relay', waiting: 1, retryAt: null }, 0);
  assert.equal(off.text, 'The relay has not accepted 1 message to box yet: not connected to the relay. Tandem tries again when the relay is reachable again; nothing is lost.');
});

/** Timers the test fires by hand. */
function manualTimers() {
  const due: Array<{ f: () => void; ms: number }> = [];
  const timers: Timers = {
    set: (f, ms) => {
      const t = { f, ms };
      due.push(t);
      return t;
    },
    clear: (t) => {
      const i = due.indexOf(t as { f: () => void; ms: number });
      if (i >= 0) due.splice(i, 1);
    },
    now: () => 0,
  };
  return { timers, due };
}
const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

test('sender: refused records are retried with a backoff that stops growing at its bound, until accepted', async () => {
  const { timers, due } = manualTimers();
  let refuse = true;
  const sends: number[] = [];
  const port = {
    send: (_to: unknown, p: Uint8Array) => {
      sends.push(p[0]!);
      return refuse ? Promise.reject(Object.assign(new Error('queue full'), { code: 'queue_full' })) : Promise.resolve();
    },
  };
  let changes = 0;
  const s = new Sender(port, DeviceKey.generate().public().deviceId(), () => void changes++, timers);
  s.push([Uint8Array.of(7)]);
  await turn();
  const waits: number[] = [];
  for (let i = 0; i < 30; i++) {
    assert.equal(due.length, 1, 'one timer');
    waits.push(due[0]!.ms);
    due.shift()!.f();
    await turn();
  }
  assert.ok(waits.every((w) => w > 0 && w <= RETRY_MAX_MS), `bounded: ${waits}`);
  assert.equal(s.refusal?.code, 'queue_full');
  assert.equal(sends.length, 31);
  refuse = false;
  due.shift()!.f();
  await turn();
  assert.equal(s.pending, 0);
  assert.equal(s.refusal, null);
  assert.equal(due.length, 0, 'no timer once accepted');
  assert.ok(changes > 0);
});

test('sender: a record the relay can never accept is given up (and counted for the notice), the rest go on', async () => {
  const { timers, due } = manualTimers();
  const port = {
    send: (_to: unknown, p: Uint8Array) =>
      p[0] === 1 ? Promise.reject(Object.assign(new Error('too large'), { code: 'frame_too_large' })) : Promise.resolve(),
  };
  const s = new Sender(port, DeviceKey.generate().public().deviceId(), () => undefined, timers);
  s.push([Uint8Array.of(1), Uint8Array.of(2)]);
  await turn();
  assert.equal(s.pending, 0);
  assert.equal(s.givenUp, 1);
  assert.equal(due.length, 0);
});

test('sender: a bare ack waiting for the relay is replaced by a newer one; other records are kept', async () => {
  const { timers, due } = manualTimers();
  let refuse = true;
  const sent: number[] = [];
  const port = {
    send: (_to: unknown, p: Uint8Array) => {
      sent.push(p[0]!);
      return refuse ? Promise.reject(Object.assign(new Error('full'), { code: 'queue_full' })) : Promise.resolve();
    },
  };
  const s = new Sender(port, DeviceKey.generate().public().deviceId(), () => undefined, timers);
  s.push([Uint8Array.of(1)], true);
  s.push([Uint8Array.of(2)]);
  await turn();
  s.push([Uint8Array.of(3)], true);
  s.push([Uint8Array.of(4)], true);
  await turn();
  assert.equal(s.pending, 2, 'the data record and the newest ack');
  refuse = false;
  sent.length = 0;
  due.shift()!.f();
  await turn();
  assert.deepEqual(sent, [2, 4]);
  assert.equal(s.pending, 0);
});
