// The phone engine (src/app/engine.ts) in Node against a relay the test drives (fake-relay.ts) and a
// desktop emulated with a real paired Link (peers.ts): what the relay does not accept is sent again
// on a timer until it does (issue 14 item 4), a desktop's Presence sends again only what the relay
// did not accept (item 5), and messages the desktop can no longer send become a notice saved with
// the link, with the task list and the history of the tasks behind asked for again (item 9).
import assert from 'node:assert/strict';
import { mock, test } from 'node:test';
import { ERROR_CODE_NAMES, type Frame } from '../src/proto/frame.ts';
import { type Message, decodeMessage, encodeMessage } from '../src/proto/message.ts';
import { FakeSocket, installBrowserGlobals } from './fake-relay.ts';
import { type Peer, ent, pairPeers } from './peers.ts';

// The engine's upkeep tick and the relay client's wake check are intervals: held still (they
// would keep the process alive and are not what these tests are about).
mock.timers.enable({ apis: ['setInterval'] });
installBrowserGlobals();
const { Engine } = await import('../src/app/engine.ts');

const ORIGIN = 'http://127.0.0.1:7878';
const code = (name: string): number => ERROR_CODE_NAMES.indexOf(name as (typeof ERROR_CODE_NAMES)[number]);
type Send = Extract<Frame, { type: 'Send' }>;
const isSend = (f: Frame): f is Send => f.type === 'Send';
const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

/**
 * An engine online on a fake relay, paired with an emulated desktop `desk`. `pairedKey`: the
 * engine uses the paired phone's device key (a session renewal needs it; the others never look).
 */
async function setup(seed: number, limits?: { maxMessages: number; maxBytes: number }, pairedKey = false) {
  const { desk, phone } = pairPeers(ent(seed), limits);
  const engine = await Engine.open();
  if (pairedKey) Object.defineProperty(engine, 'key', { value: phone.key });
  FakeSocket.made = [];
  const relay = engine.relay(ORIGIN);
  const ws = FakeSocket.made[0]!;
  ws.handshake('127.0.0.1:7878', engine.key);
  assert.ok(relay.online);
  const deskId = desk.key.public().deviceId();
  const row = { id: deskId.toString(), name: 'build-box', platform: 'linux', relayUrl: ORIGIN, pairedAt: 1, link: null };
  const d = await engine.adopt(row, phone.link, relay);
  // adopt asks for the task list in the background: let it go out.
  await settled(d);
  let delivery = 0n;
  const answered = new Set<bigint>();
  return {
    answered,
    engine,
    ws,
    d,
    desk,
    id: row.id,
    /** Answer every Send not answered yet with Ok. */
    okAll(): void {
      for (const f of ws.sent.filter(isSend)) if (!answered.has(f.sendId)) (answered.add(f.sendId), ws.feed({ type: 'Ok', refId: f.sendId }));
    },
    /** The desktop sends `m` (sealed under its link); delivered now unless `deliver` is false. */
    fromDesk(m: Message, deliver = true): void {
      const { record } = desk.link.send(encodeMessage(m));
      if (deliver) this.deliver([record]);
    },
    /** The relay delivers records from the desktop. */
    deliver(records: Uint8Array[]): void {
      for (const payload of records) ws.feed({ type: 'Deliver', deliveryId: ++delivery, from: deskId, payload });
    },
    get delivery() {
      return delivery;
    },
  };
}
/** What the desktop reads in the Sends it has not read yet, in order, but for `refused` ones (the relay dropped those). */
function deskReads(desk: Peer, ws: FakeSocket, refused: Set<bigint> = new Set(), replies: Uint8Array[] = []): Message[] {
  const out: Message[] = [];
  const sends = ws.sent.filter(isSend);
  const read = readUpTo.get(ws) ?? 0;
  readUpTo.set(ws, sends.length);
  for (const s of sends.slice(read)) {
    if (refused.has(s.sendId)) continue;
    try {
      for (const ev of desk.link.receive(desk.key, s.payload)) {
        if (ev.type === 'Send') replies.push(...ev.envelopes);
        if (ev.type !== 'Message') continue;
        const m = decodeMessage(ev.message);
        if (m.known) out.push(m.message);
      }
    } catch {
      /* a copy it has read already (a replay) */
    }
  }
  return out;
}
const readUpTo = new Map<FakeSocket, number>();

/** Everything the engine queued on desktop `d` so far, and what that sent, has run. */
async function settled(d: { serial<T>(f: () => Promise<T>): Promise<T> }): Promise<void> {
  for (let i = 0; i < 3; i++) {
    await d.serial(async () => undefined);
    await turn();
  }
}

test('engine: a send the relay refuses is sent again on a timer, without a reconnection, until the relay accepts it; the user is told meanwhile', async () => {
  const t = await setup(1);
  try {
    t.okAll();
    const before = t.ws.sent.length;
    await t.engine.submit(t.id, 'hello');
    const first = (await t.ws.next(isSend, before)) as Send;
    t.answered.add(first.sendId);
    t.ws.feed({ type: 'Error', code: code('queue_full'), refId: first.sendId, message: 'the recipient queue is full' });
    // The same record goes again on the timer: no reconnection happened.
    const again = (await t.ws.next((f) => isSend(f) && f.sendId !== first.sendId && Buffer.from(f.payload).equals(Buffer.from(first.payload)), before)) as Send;
    assert.equal(FakeSocket.made.length, 1, 'no reconnection');
    // Until the relay accepts it, the user is told.
    const refused = t.engine.notices(t.id).find((n) => n.kind === 'refused');
    assert.ok(refused, `a refused notice: ${JSON.stringify(t.engine.notices(t.id))}`);
    assert.match(refused.text, /has not accepted 1 message to build-box yet: the recipient queue is full \(queue_full\)\. Tandem tries again (in \d+ s|now); nothing is lost\./);
    t.ws.feed({ type: 'Ok', refId: again.sendId });
    t.answered.add(again.sendId);
    await turn();
    assert.deepEqual(t.engine.notices(t.id), [], 'accepted: the notice is gone');
    assert.equal(t.d.sender.pending, 0);
    assert.equal(deskReads(t.desk, t.ws, new Set([first.sendId])).find((m) => m.kind === 'task_submit')?.text, 'hello');
  } finally {
    t.engine.stepAside();
  }
});

test('engine: a send that fails while the socket is up (no answer in time, or not written) is retried the same way', async () => {
  const t = await setup(2);
  try {
    t.okAll();
    const before = t.ws.sent.length;
    // The socket reports closing: the write fails, the connection is not lost yet.
    t.ws.readyState = FakeSocket.CLOSING;
    await t.engine.submit(t.id, 'while closing');
    await turn();
    assert.equal(t.ws.sent.length, before, 'nothing written');
    t.ws.readyState = FakeSocket.OPEN;
    const sent = (await t.ws.next(isSend, before)) as Send;
    assert.equal(deskReads(t.desk, t.ws).find((m) => m.kind === 'task_submit')?.text, 'while closing');
    assert.equal(t.engine.notices(t.id)[0]?.kind, 'refused', 'told until the relay accepts it');
    t.ws.feed({ type: 'Ok', refId: sent.sendId });
    await turn();
    assert.deepEqual(t.engine.notices(t.id), []);
  } finally {
    t.engine.stepAside();
  }
});

test('engine: the desktop coming online (Presence) sends again only what the relay has not accepted, never copies of what it queued', async () => {
  const t = await setup(3);
  try {
    await t.engine.submit(t.id, 'queued at the relay');
    await settled(t.d);
    t.okAll();
    // The desktop lists its tasks (so Presence asks for nothing new); the phone acks it.
    t.fromDesk({ kind: 'task_list', tasks: [] });
    await t.ws.next((f) => f.type === 'Ack' && f.upTo === t.delivery);
    await settled(t.d);
    t.okAll();
    for (let i = 0; i < 5; i++) {
      const before = t.ws.sent.filter(isSend).length;
      t.ws.feed({ type: 'Presence', peer: t.desk.key.public().deviceId(), online: false });
      t.ws.feed({ type: 'Presence', peer: t.desk.key.public().deviceId(), online: true });
      await settled(t.d);
      assert.equal(t.ws.sent.filter(isSend).length, before, `flap ${i}: nothing sent again (the relay accepted everything)`);
    }
    // One record the relay did not accept: that one, and only that one, goes on Presence.
    const before = t.ws.sent.length;
    await t.engine.cancel(t.id, 'x');
    const cancel = (await t.ws.next(isSend, before)) as Send;
    t.answered.add(cancel.sendId);
    t.ws.feed({ type: 'Error', code: code('internal'), refId: cancel.sendId, message: 'store unavailable' });
    await turn();
    const mark = t.ws.sent.length;
    t.ws.feed({ type: 'Presence', peer: t.desk.key.public().deviceId(), online: true });
    await settled(t.d);
    const resent = t.ws.sent.slice(mark).filter(isSend);
    assert.equal(resent.length, 1, 'only the record the relay refused');
    assert.ok(Buffer.from(resent[0]!.payload).equals(Buffer.from(cancel.payload)), 'the same record, not a new copy');
  } finally {
    t.engine.stepAside();
  }
});

test('engine: messages the desktop could no longer send become a saved notice naming how many and which task; the task list and history are asked for again', async () => {
  // The desktop keeps 2 messages: 6 sent while the phone heard none of the first 5 lose 4.
  const t = await setup(4, { maxMessages: 2, maxBytes: 1 << 20 });
  try {
    t.okAll();
    const task = 'ab'.repeat(16);
    const ev = (offset: number): Message => ({ kind: 'task_event', task_id: task, offset, at_ms: 1000 + offset, event: { type: 'progress', text: `n=${offset}` } });
    for (let i = 0; i < 5; i++) t.fromDesk(ev(i), false);
    const before = t.ws.sent.length;
    t.fromDesk(ev(5));
    await t.ws.next((f) => f.type === 'Ack' && f.upTo === t.delivery, before);
    // Saved with the link before the relay heard the Ack.
    const row = (await t.engine.store.desktops()).find((r) => r.id === t.id);
    assert.deepEqual(row?.lost?.map((r) => [r.from, r.to]), [[1, 4]]);
    let notice = t.engine.notices(t.id).find((n) => n.kind === 'lost');
    assert.ok(notice, JSON.stringify(t.engine.notices(t.id)));
    assert.match(notice.text, /^4 messages from build-box never arrived/);
    assert.equal(notice.recover, true);
    // What to do was done: the task list was asked for. The phone also
    // Nacked message 5, which the desktop still holds: it comes again.
    await settled(t.d);
    t.okAll();
    const replies: Uint8Array[] = [];
    const asks = deskReads(t.desk, t.ws, new Set(), replies).filter((m) => m.kind === 'history_request');
    assert.ok(asks.some((m) => m.task_id === undefined && m.from_offset === 0), `the task list: ${JSON.stringify(asks)}`);
    assert.ok(replies.length > 0, 'the desktop resends what the phone Nacked');
    const mark = t.delivery;
    t.deliver(replies);
    await t.ws.next((f) => f.type === 'Ack' && f.upTo === mark + BigInt(replies.length), before);
    await settled(t.d);
    t.okAll();
    // Offsets 4 and 5 arrived, 0..3 are behind: the task's history is asked for.
    const more = deskReads(t.desk, t.ws).filter((m) => m.kind === 'history_request');
    assert.ok(more.some((m) => m.task_id === task && m.from_offset === 0), `the task's history: ${JSON.stringify(more)}`);
    t.okAll();
    // The task list names the task behind: the notice says which.
    t.fromDesk({ kind: 'task_list', tasks: [{ task_id: task, title: 'count 40 0', executor: 'fixture', state: 'running', next_offset: 6, updated_ms: 2000 }] });
    await t.ws.next((f) => f.type === 'Ack' && f.upTo === t.delivery);
    notice = t.engine.notices(t.id).find((n) => n.kind === 'lost');
    assert.match(notice?.text ?? '', /The history of 1 task was asked for again: “count 40 0”/);
    // Still there after a reload (the stored row), gone once dismissed.
    assert.equal((await t.engine.store.desktops()).find((r) => r.id === t.id)?.lost?.[0]?.tasks[0], 'count 40 0');
    await settled(t.d);
    t.okAll();
    await t.engine.dismissLost(t.id);
    assert.equal(t.engine.notices(t.id).length, 0);
    assert.equal((await t.engine.store.desktops()).find((r) => r.id === t.id)?.lost, undefined);
  } finally {
    t.engine.stepAside();
  }
});

test('engine: a desktop that keeps dropping messages (a loss per record) is asked for a gap once, not once per loss; the notice names the task at once', async () => {
  // The desktop keeps 1 message and never hears the phone here: what it sends while the phone is not reading is dropped.
  const t = await setup(5, { maxMessages: 1, maxBytes: 1 << 20 });
  try {
    t.okAll();
    const task = 'ab'.repeat(16);
    const other = 'cd'.repeat(16);
    const ev = (id: string, offset: number): Message => ({
      kind: 'task_event',
      task_id: id,
      offset,
      at_ms: 1000 + offset,
      event: offset === 0 ? { type: 'accepted', executor: 'fixture', text: 'count 40 0' } : { type: 'progress', text: `n=${offset}` },
    });
    t.fromDesk(ev(task, 0));
    t.fromDesk(ev(task, 1));
    // 2..=8 never arrive; 9 does, past the gap: a loss, and the task is behind.
    for (let o = 2; o < 9; o++) t.fromDesk(ev(task, o), false);
    t.fromDesk(ev(task, 9));
    await settled(t.d);
    t.okAll();
    // Then a loss per record, as a desktop whose answers overflow its outbox reports them.
    for (let i = 0; i < 6; i++) {
      t.fromDesk(ev(other, 3 * i), false);
      t.fromDesk(ev(other, 3 * i + 1), false);
      t.fromDesk(ev(other, 3 * i + 2));
      await settled(t.d);
      t.okAll();
    }
    const lost = (await t.engine.store.desktops()).find((r) => r.id === t.id)?.lost ?? [];
    assert.ok(lost.length >= 1 && lost.reduce((n, r) => n + r.to - r.from + 1, 0) >= 7, JSON.stringify(lost));
    const read = deskReads(t.desk, t.ws);
    const asks = read.filter((m) => m.kind === 'history_request' && m.task_id === task);
    assert.deepEqual(asks.map((m) => m.from_offset), [2], `one fill for the gap while it is on its way: ${JSON.stringify(asks)}`);
    // Named without waiting for a task list (whose answer may be lost as well).
    const notice = t.engine.notices(t.id).find((n) => n.kind === 'lost');
    assert.match(notice?.text ?? '', /“count 40 0”/, notice?.text);
  } finally {
    t.engine.stepAside();
  }
});

test('engine: what the relay accepted but an online desktop leaves unacknowledged for 2 minutes is sealed and sent again (the relay may have expired it)', async () => {
  const t = await setup(6);
  try {
    await t.engine.submit(t.id, 'expired at the relay');
    await settled(t.d);
    t.okAll();
    t.ws.feed({ type: 'Presence', peer: t.desk.key.public().deviceId(), online: true });
    await settled(t.d);
    t.okAll();
    const before = t.ws.sent.length;
    // Not yet: the outbox has been unacknowledged for less than 2 minutes.
    await t.engine.upkeep(t.d);
    await turn();
    assert.equal(t.ws.sent.length, before, 'nothing before the 2 minutes');
    // The relay expired what it queued (the desktop never got it); 2 minutes pass.
    t.d.acked = { seq: t.d.acked.seq, sinceMs: Date.now() - 121_000 };
    await t.engine.upkeep(t.d);
    await settled(t.d);
    const again = t.ws.sent.slice(before).filter(isSend);
    assert.ok(again.length > 0, 'sent again');
    assert.ok(deskReads(t.desk, t.ws, new Set(t.ws.sent.slice(0, before).filter(isSend).map((f) => f.sendId))).some((m) => m.kind === 'task_submit' && m.text === 'expired at the relay'), 'sealed again: the desktop reads the task');
  } finally {
    t.engine.stepAside();
  }
});

test('engine: an Error from the relay that answers no request is shown, not only logged', async () => {
  const t = await setup(5);
  try {
    t.ws.feed({ type: 'Error', code: code('internal'), refId: 0n, message: 'queued frames expired' });
    const n = t.engine.notices(t.id).find((x) => x.kind === 'relay');
    assert.equal(n?.text, 'The relay reports: queued frames expired (internal).');
  } finally {
    t.engine.stepAside();
  }
});

test('engine: push hooks — adopt, a renewed session and forget are reported; sendPushSetup reaches the desktop', async () => {
  const seen: string[] = [];
  const t = await setup(8, undefined, true);
  try {
    t.engine.linkWatchers.add((what, d) => seen.push(`${what}:${d.id}`));
    t.okAll();
    await t.engine.sendPushSetup(t.id, { enabled: true, key_id: '0123456789abcdef', key: 'cd'.repeat(32) });
    await settled(t.d);
    t.okAll();
    const setupMsg = deskReads(t.desk, t.ws).find((m) => m.kind === 'push_setup');
    assert.deepEqual(setupMsg, { kind: 'push_setup', enabled: true, key_id: '0123456789abcdef', key: 'cd'.repeat(32) });
    // The desktop renews the session: the phone answers, the desktop confirms, the phone switches.
    const before = t.ws.sent.length;
    t.deliver([t.desk.link.startRenewal(t.desk.key, Date.now(), ent(60))]);
    const accept = (await t.ws.next(isSend, before)) as Send;
    t.ws.feed({ type: 'Ok', refId: accept.sendId });
    t.answered.add(accept.sendId);
    const confirm: Uint8Array[] = [];
    for (const ev of t.desk.link.receive(t.desk.key, accept.payload, ent(61))) if (ev.type === 'Send') confirm.push(...ev.envelopes);
    assert.equal(confirm.length, 1, 'the desktop confirms');
    readUpTo.set(t.ws, t.ws.sent.filter(isSend).length);
    t.deliver(confirm);
    await settled(t.d);
    assert.deepEqual(seen, [`renewed:${t.id}`], 'the switch is reported once');
    await t.engine.forget(t.id).catch(() => undefined);
    assert.deepEqual(seen, [`renewed:${t.id}`, `forgotten:${t.id}`]);
  } finally {
    t.engine.stepAside();
  }
});

test('engine: sessions hand-off — listSessions asks for the picked agent and project, the answer (or a refusal naming no task) lands on the desktop, a submit carries resume', async () => {
  const t = await setup(9);
  try {
    t.okAll();
    await t.engine.listSessions(t.id, { executor: 'claude', project: 'site' });
    await settled(t.d);
    t.okAll();
    assert.deepEqual(deskReads(t.desk, t.ws).find((m) => m.kind === 'sessions_request'), { kind: 'sessions_request', executor: 'claude', workspace: 'site' });
    assert.ok(t.d.sessions && !t.d.sessions.answer && !t.d.sessions.refused, 'asked, no answer yet');
    // An answer for another agent (an older ask) is not this one's.
    t.fromDesk({ kind: 'sessions', executor: 'other', sessions: [{ id: 'x', title: 'old', updated_ms: 1 }] });
    await settled(t.d);
    assert.equal(t.d.sessions?.answer, undefined, 'an answer for another executor is ignored');
    const list = [{ id: '2d6f', title: 'fix the tests', updated_ms: 1000, task_id: 'abc' }];
    t.fromDesk({ kind: 'sessions', executor: 'claude', workspace: 'site', sessions: list });
    await settled(t.d);
    assert.deepEqual(t.d.sessions?.answer, { executor: 'claude', workspace: 'site', sessions: list });
    // A refusal naming no task while a list is asked for: the list's.
    t.okAll();
    await t.engine.listSessions(t.id, { executor: 'fixture' });
    await settled(t.d);
    t.fromDesk({ kind: 'refused', code: 'not_supported', message: 'fixture cannot list sessions' });
    await settled(t.d);
    assert.deepEqual(t.d.sessions?.refused, { code: 'not_supported', message: 'fixture cannot list sessions' });
    assert.equal(t.d.sessions?.answer, undefined);
    t.okAll();
    const task = await t.engine.submit(t.id, 'go on', { executor: 'claude', project: 'site', resume: '2d6f' });
    await settled(t.d);
    t.okAll();
    const read = deskReads(t.desk, t.ws);
    assert.deepEqual(read.find((m) => m.kind === 'task_submit'), { kind: 'task_submit', task_id: task, text: 'go on', workspace: 'site', executor: 'claude', resume: '2d6f' });
  } finally {
    t.engine.stepAside();
  }
});

test('engine: "always allow" sends allow with remember; the rule the desktop added clears it, a scope refusal is kept on that approval', async () => {
  const t = await setup(10);
  try {
    t.okAll();
    const task = 'task-remember';
    await t.engine.decide(t.id, task, 'a1', true, true);
    await t.engine.decide(t.id, task, 'a2', false, true);
    await settled(t.d);
    t.okAll();
    const decisions = deskReads(t.desk, t.ws).filter((m) => m.kind === 'approval_decision');
    assert.deepEqual(decisions, [
      { kind: 'approval_decision', task_id: task, approval_id: 'a1', allow: true, remember: true },
      { kind: 'approval_decision', task_id: task, approval_id: 'a2', allow: false, remember: false },
    ], 'remember only with allow');
    const th = t.d.thread(task);
    assert.deepEqual([...th.remembered], ['a1']);
    // The desktop allows once and refuses the rule (this device's scope).
    const resolved = (id: string, rule?: string) => ({
      kind: 'task_event', task_id: task, offset: id === 'a1' ? 0 : 1, at_ms: 5,
      event: { type: 'approval_resolved', approval_id: id, allow: true, by: 'phone:me', ...(rule ? { rule } : {}) },
    });
    t.fromDesk(resolved('a1'));
    t.fromDesk({ kind: 'refused', task_id: task, code: 'scope', message: 'allowed once: this device may not add rules on this computer' });
    await settled(t.d);
    assert.deepEqual(th.refusals, [{ code: 'scope', message: 'allowed once: this device may not add rules on this computer', approvalId: 'a1' }]);
    assert.equal(th.remembered.size, 0);
    // Another remembered approval: the rule is added, so a later refusal of the task is its own.
    await t.engine.decide(t.id, task, 'a3', true, true);
    await settled(t.d);
    t.fromDesk({ ...resolved('a3', 'allow Bash(cargo test)'), offset: 2 });
    await settled(t.d);
    assert.equal(th.remembered.size, 0, 'the rule came: nothing awaits it');
    t.fromDesk({ kind: 'refused', task_id: task, code: 'scope', message: 'view only' });
    await settled(t.d);
    assert.deepEqual(th.refusals.at(-1), { code: 'scope', message: 'view only' });
  } finally {
    t.engine.stepAside();
  }
});
