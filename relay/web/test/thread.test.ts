// The web client's per-task offset rule (src/app/thread.ts): repeats dropped,
// gaps filled once, paged history, pruned history, older pages, approvals.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { EventRow } from '../src/app/store.ts';
import { FILL_STALE_MS, PAGE, Thread } from '../src/app/thread.ts';

function ev(offset: number, type = 'progress', extra: Record<string, unknown> = {}): EventRow {
  return { desktopId: 'd', taskId: 't', offset, atMs: 1000 + offset, event: { type, text: `n=${offset}`, ...extra } };
}

test('repeats are dropped and a gap is filled once', () => {
  const t = Thread.fresh('d', 't');
  assert.deepEqual(t.observe(ev(0, 'accepted', { executor: 'jsonl', text: 'do it' })), { fresh: true, fill: null });
  assert.equal(t.row.title, 'do it');
  assert.deepEqual(t.observe(ev(0)), { fresh: false, fill: null });
  assert.deepEqual(t.observe(ev(1)), { fresh: true, fill: null });
  // Detached: 2..=4 skipped.
  assert.deepEqual(t.observe(ev(5)), { fresh: true, fill: 2 });
  assert.deepEqual(t.observe(ev(6)), { fresh: true, fill: null });
  assert.equal(t.row.next, 2);
  // The history replays 2..=6: the held ones are repeats.
  for (const o of [2, 3, 4]) assert.equal(t.observe(ev(o)).fresh, true);
  for (const o of [5, 6]) assert.equal(t.observe(ev(o)).fresh, false);
  assert.equal(t.row.next, 7);
  assert.equal(t.historyEnd(7, false), null);
  assert.equal(t.filling, false);
  assert.deepEqual(t.observe(ev(9)), { fresh: true, fill: 7 });
  assert.deepEqual(t.sorted().map((e) => e.offset), [0, 1, 2, 3, 4, 5, 6, 9]);
});

test('a paged reply asks for the rest; a reply behind the tail asks again', () => {
  const t = Thread.fresh('d', 't');
  t.observe(ev(0));
  assert.equal(t.observe(ev(600)).fill, 1);
  for (let o = 1; o < 257; o++) t.observe(ev(o));
  assert.equal(t.historyEnd(257, true), 257);
  for (let o = 257; o < 513; o++) t.observe(ev(o));
  assert.equal(t.historyEnd(513, true), 513);
  for (let o = 513; o < 601; o++) t.observe(ev(o));
  assert.equal(t.historyEnd(601, false), null);
  assert.equal(t.row.next, 601);
  assert.equal(t.events.size, 601);
});

test('first sight of a long task holds its newest page; older pages load on demand', () => {
  const t = Thread.fresh('d', 't');
  const r = t.observe(ev(1000));
  assert.equal(t.row.lo, 1000 - PAGE);
  assert.equal(r.fill, 1000 - PAGE);
  for (let o = 1000 - PAGE; o < 1000; o++) t.observe(ev(o));
  assert.equal(t.historyEnd(1001, false), null);
  assert.equal(t.row.next, 1001);
  assert.ok(t.hasOlder());
  const from = t.olderFrom();
  assert.equal(from, 1000 - 2 * PAGE);
  assert.equal(t.olderFrom(), null, 'one older page at a time');
  for (let o = from!; o < from! + PAGE; o++) t.observe(ev(o));
  // The older page's end is below the tail: nothing more to ask.
  assert.equal(t.historyEnd(from! + PAGE, true), null);
  assert.equal(t.row.lo, from);
  assert.equal(t.row.next, 1001);
});

test('pruned history: unavailable moves lo and next to the earliest kept', () => {
  const t = Thread.fresh('d', 't');
  t.observe(ev(50));
  t.unavailable(40);
  assert.equal(t.row.lo, 40);
  assert.equal(t.row.earliest, 40);
  for (let o = 40; o < 50; o++) t.observe(ev(o));
  assert.equal(t.row.next, 51);
  assert.equal(t.hasOlder(), false);
  assert.equal(t.olderFrom(), null);
  assert.equal(t.observe(ev(10)).fresh, false, 'older than the earliest kept');
});

test('task list rows start at the desktop offset and fetch their last page', () => {
  const t = Thread.fresh('d', 't');
  t.summary({ title: 'build', executor: 'jsonl', state: 'running', next_offset: 30, updated_ms: 5 });
  assert.equal(t.row.next, 30);
  assert.equal(t.row.state, 'running');
  assert.equal(t.behind(), null);
  assert.equal(t.olderFrom(), 0);
  const u = Thread.fresh('d', 'u');
  u.observe(ev(0));
  u.summary({ title: 'x', executor: 'jsonl', state: 'finished', status: 'succeeded', next_offset: 9, updated_ms: 5 });
  assert.equal(u.behind(), 1);
  assert.equal(u.behind(), null, 'once');
  assert.equal(u.row.state, 'finished');
});

test('pending approvals: resolved, expired and finished ones are not pending', () => {
  const t = Thread.fresh('d', 't');
  const later = Date.now() + 60_000;
  t.observe(ev(0, 'approval_request', { approval_id: 'a', summary: 'rm -rf build', detail: '', expires_at_ms: later }));
  t.observe(ev(1, 'approval_request', { approval_id: 'b', summary: 'old', detail: '', expires_at_ms: 1 }));
  t.observe(ev(2, 'approval_request', { approval_id: 'c', summary: 'push', detail: '', expires_at_ms: later }));
  t.observe(ev(3, 'approval_resolved', { approval_id: 'c', allow: true, by: 'desktop' }));
  assert.deepEqual(t.pending(Date.now()).map((p) => p.approvalId), ['a']);
  t.observe(ev(4, 'finished', { status: 'succeeded', summary: 'ok' }));
  assert.equal(t.row.state, 'finished');
  assert.deepEqual(t.pending(Date.now()), []);
});

test('a thread survives a JSON round trip of its rows', () => {
  const t = Thread.fresh('d', 't');
  for (let o = 0; o < 5; o++) t.observe(ev(o));
  const back = Thread.load(JSON.parse(JSON.stringify(t.row)), JSON.parse(JSON.stringify(t.sorted())));
  assert.equal(back.row.next, 5);
  assert.equal(back.observe(ev(3)).fresh, false);
  assert.equal(back.observe(ev(5)).fresh, true);
});

test('after a reload, events held in storage but not in memory are still repeats', () => {
  const t = Thread.fresh('d', 't');
  for (let o = 0; o < 5; o++) t.observe(ev(o));
  const reloaded = new Thread(JSON.parse(JSON.stringify(t.row)));
  assert.equal(reloaded.observe(ev(2)).fresh, false);
  assert.equal(reloaded.observe(ev(4)).fresh, false);
  assert.equal(reloaded.observe(ev(5)).fresh, true);
});

// A desktop's history reply from `from`: up to one page of a task of `total` events.
function page(total: number, from: number): { events: EventRow[]; next: number; more: boolean } {
  const events: EventRow[] = [];
  for (let o = from; o < Math.min(total, from + PAGE); o++) events.push(ev(o));
  const next = from + events.length;
  return { events, next, more: next < total };
}

// What the engine does with a reply: observe each event, then history_end.
function applyReply(t: Thread, r: ReturnType<typeof page>): number | null {
  let fill: number | null = null;
  for (const e of r.events) {
    const s = t.observe(e);
    if (s.fill !== null) fill = s.fill;
  }
  return t.historyEnd(r.next, r.more) ?? fill;
}

function fillUntilDone(t: Thread, total: number, from: number | null): number {
  let rounds = 0;
  while (from !== null && rounds < 20) {
    from = applyReply(t, page(total, from));
    rounds++;
  }
  return rounds;
}

test('a detached phone that held only the approval and the finish fills everything between', () => {
  // A first sight: 300, 301 and 331 of 332 events arrive (what a detached phone gets).
  const t = Thread.fresh('d', 't');
  let from: number | null = null;
  for (const o of [300, 301, 331]) from = t.observe(ev(o)).fill ?? from;
  fillUntilDone(t, 332, from);
  for (let o = t.row.lo; o < 332; o++) assert.ok(t.events.has(o), `offset ${o} held`);
  assert.equal(t.row.next, 332);
  // Not a first sight: 0..9 held, then 266, 267, 290 of 291.
  const u = Thread.fresh('d', 'u');
  for (let o = 0; o < 10; o++) u.observe(ev(o));
  let f: number | null = null;
  for (const o of [266, 267, 290]) f = u.observe(ev(o)).fill ?? f;
  fillUntilDone(u, 291, f);
  assert.equal(u.events.size, 291);
  assert.equal(u.row.next, 291);
});

test('an event at next read from storage advances next; history requests do not loop', () => {
  const before = Thread.fresh('d', 't');
  for (let o = 0; o < 10; o++) before.observe(ev(o));
  before.observe(ev(15));
  const t = new Thread(JSON.parse(JSON.stringify(before.row)));
  for (let o = 10; o < 15; o++) t.observe(ev(o));
  // The thread's stored events are read in the middle of the fill.
  t.merge(before.sorted());
  assert.equal(t.row.next, 16);
  let again = applyReply(t, { events: [15, 16, 17, 18, 19].map((o) => ev(o)), next: 20, more: false });
  assert.equal(again, null);
  assert.equal(t.row.next, 20);
  // A desktop that keeps answering without progress is not asked forever.
  t.observe(ev(30));
  let asks = 0;
  again = 20;
  while (again !== null && asks < 10) {
    again = t.historyEnd(20, false);
    asks++;
  }
  assert.ok(asks < 3, `asked ${asks} times without progress`);
});

test('a follow-up resumes a finished task: it runs again and its approvals can be answered', () => {
  const t = Thread.fresh('d', 't');
  t.observe(ev(0, 'accepted', { executor: 'claude', text: 'fix it' }));
  t.observe(ev(1, 'approval_request', { approval_id: 'old', summary: 'x', detail: '', expires_at_ms: Date.now() + 60_000 }));
  t.observe(ev(2, 'finished', { status: 'succeeded', summary: 'done' }));
  assert.equal(t.row.state, 'finished');
  assert.deepEqual(t.pending(Date.now()), [], 'overtaken by the finish');
  t.observe(ev(3, 'follow_up', { text: 'also run the tests' }));
  t.observe(ev(4, 'approval_request', { approval_id: 'a1', summary: 'cargo test', detail: '', expires_at_ms: Date.now() + 60_000 }));
  assert.equal(t.row.state, 'running');
  assert.equal(t.row.status, undefined);
  assert.deepEqual(t.pending(Date.now()).map((p) => p.approvalId), ['a1']);
  assert.equal(t.closedBy(1), true);
  assert.equal(t.closedBy(4), false);
  t.observe(ev(5, 'finished', { status: 'failed', summary: '1 test failed' }));
  assert.equal(t.row.state, 'finished');
  assert.equal(t.row.status, 'failed');
  // An older page arriving later does not change the state.
  const u = Thread.fresh('d', 'u');
  u.observe(ev(10, 'finished', { status: 'succeeded', summary: '' }));
  u.observe(ev(5));
  assert.equal(u.row.state, 'finished');
});

test('the task list wins when the desktop knows more', () => {
  const t = Thread.fresh('d', 't');
  t.observe(ev(0, 'accepted', { executor: 'claude', text: 'fix it' }));
  t.observe(ev(1, 'finished', { status: 'succeeded', summary: 'done' }));
  t.summary({ title: 'fix it', executor: 'claude', state: 'running', next_offset: 3, updated_ms: Date.now() });
  assert.equal(t.row.state, 'running');
  assert.equal(t.behind(), 2);
  // An older list does not undo what the events say.
  const u = Thread.fresh('d', 'u');
  for (let o = 0; o < 5; o++) u.observe(ev(o));
  u.observe(ev(5, 'finished', { status: 'succeeded', summary: '' }));
  u.summary({ title: '', executor: 'x', state: 'running', next_offset: 3, updated_ms: 0 });
  assert.equal(u.row.state, 'finished');
});

test('lost messages while a fill is on its way: not asked twice, and its end asks again even without progress', () => {
  const t = Thread.fresh('d', 't');
  for (let o = 0; o < 10; o++) t.observe(ev(o));
  // The desktop dropped 10..=73: its newest events arrive past the gap.
  assert.equal(t.observe(ev(74)).fill, 10);
  // A loss is reported per record the desktop dropped: the fill on its way is not asked for again.
  for (let i = 0; i < 5; i++) {
    t.lost();
    assert.equal(t.behind(), null, 'no second fill while one is on its way');
  }
  for (let o = 75; o < 80; o++) assert.equal(t.observe(ev(o)).fill, null);
  // Its answer was lost too (only its end came): nothing new, but a loss since the ask, so ask again.
  assert.equal(t.historyEnd(80, false), 10);
  // This one arrives in part: progress, ask for the rest.
  for (let o = 10; o < 40; o++) t.observe(ev(o));
  assert.equal(t.historyEnd(80, false), 40);
  // Nothing new and no loss since: stop (the next live event or opening the thread asks again).
  assert.equal(t.historyEnd(80, false), null);
  assert.equal(t.behind(), 40, 'nothing on its way: asked again');
});

test('a fill whose answer never came is asked for again once it is stale', (ctx) => {
  ctx.mock.timers.enable({ apis: ['Date'], now: 1_000_000 });
  const t = Thread.fresh('d', 't');
  t.observe(ev(0));
  assert.equal(t.observe(ev(5)).fill, 1);
  assert.equal(t.behind(), null);
  ctx.mock.timers.tick(FILL_STALE_MS);
  assert.equal(t.behind(), 1);
});
