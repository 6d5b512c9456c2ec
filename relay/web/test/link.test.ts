// Paired links end to end (src/proto/link.ts), mirroring proto/tests/link.rs: exactly-once in-order
// delivery across loss, duplication, reconnects and restarts (state persisted as JSON and
// restored); offline delivery; session renewal, collisions and lost handshakes; replayed and
// tampered records change nothing. Then the Rust golden vectors (pairing.json) driven through Link.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { bytesToHex, hexToBytes, u64be, utf8 } from '../src/proto/bytes.ts';
import { type Content, decodeContent, encodeContent } from '../src/proto/content.ts';
import { StoredFormatError } from '../src/proto/delivery.ts';
import { DeterministicEntropy } from '../src/proto/entropy.ts';
import { decodeEnvelope, encodeEnvelope } from '../src/proto/envelope.ts';
import { intoSession } from '../src/proto/handshake.ts';
import { DeviceKey, PublicKey } from '../src/proto/identity.ts';
import { hash } from '../src/proto/kdf.ts';
import { Link, LinkError, type LinkErrorKind, type LinkEvent, type StoredLink } from '../src/proto/link.ts';
import { MAX_MESSAGE_LEN, deviceInfoFromJson } from '../src/proto/message.ts';
import { HandshakeState } from '../src/proto/noise.ts';
import { type PairedPeer, PhonePairing, pairingPrologue } from '../src/proto/pairing.ts';
import type { QrPayload } from '../src/proto/qr.ts';
import { MAX_COUNTER, REKEY_INTERVAL, RecordError, Session } from '../src/proto/record.ts';
import { winsCollision } from '../src/proto/session.ts';
import { type Peer, b, ent, pairPeers } from './peers.ts';
import { loadVector } from './vectors.ts';

/** Simulate a crash and restart: the link is rebuilt from its persisted form, through JSON text. */
function restart(p: Peer): void {
  p.link = Link.fromStored(JSON.parse(JSON.stringify(p.link.toStored())));
}

function snapshot(l: Link): string {
  return JSON.stringify(l.toStored());
}

interface Delivered {
  msgs: Uint8Array[];
  replies: Uint8Array[];
  resyncs: [bigint, bigint][];
}

/** Deliver one envelope; errors are swallowed, as a device drops what it refuses. */
function deliver(to: Peer, bytes: Uint8Array, e: DeterministicEntropy): Delivered {
  const d: Delivered = { msgs: [], replies: [], resyncs: [] };
  let events: LinkEvent[];
  try {
    events = to.link.receive(to.key, bytes, e);
  } catch (err) {
    assert.ok(err instanceof LinkError, String(err));
    return d;
  }
  for (const ev of events) {
    if (ev.type === 'Message') d.msgs.push(ev.message);
    else if (ev.type === 'Send') d.replies.push(...ev.envelopes);
    else if (ev.type === 'ResyncNeeded') d.resyncs.push([ev.from, ev.to]);
  }
  return d;
}

function linkError(kind: LinkErrorKind, causeKind?: string) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof LinkError, String(err));
    assert.equal(err.kind, kind);
    if (causeKind !== undefined) {
      const c = err.cause as { kind?: string; detail?: { kind: string } } | undefined;
      assert.equal(c?.kind ?? c?.detail?.kind, causeKind);
    }
    return true;
  };
}

const text = (ms: Uint8Array[]): string[] => ms.map((m) => new TextDecoder().decode(m));

test('link: every message arrives once, in order, across loss, duplicates and restarts', () => {
  const e = ent(9);
  const { desk, phone } = pairPeers(e);
  const n = 200;
  const toPhone: Uint8Array[] = [];
  const toDesk: Uint8Array[] = [];
  for (let i = 0; i < n; i++) toPhone.push(desk.link.send(b(`event ${i}`)).record);
  const got: Uint8Array[] = [];
  let step = 0n;
  const faults = { lost: 0, dup: 0, restarts: 0, reconnects: 0 };
  while (got.length < n) {
    step += 1n;
    assert.ok(step < 20_000n, 'no progress');
    // A deterministic pseudo-random schedule of faults.
    const r = hash('schedule', [u64be(step)]);
    const k = r[0]! % 10;
    const rec = k === 2 || k === 3 ? undefined : toPhone.shift();
    if (k === 0 && rec) {
      faults.lost++; // lost in the network
    } else if (k === 1 && rec) {
      faults.dup++; // duplicated by a relay redelivery
      toPhone.push(rec);
      toPhone.unshift(rec);
    } else if (k === 2) {
      faults.restarts++;
      restart(phone); // phone app killed and restarted
    } else if (k === 3) {
      faults.restarts++;
      restart(desk); // agent killed and restarted
    } else if (rec) {
      const d = deliver(phone, rec, e);
      assert.deepEqual(d.resyncs, []);
      got.push(...d.msgs);
      toDesk.push(...d.replies);
      if (r[1]! % 4 === 0) toDesk.push(phone.link.ack());
    } else {
      faults.reconnects++;
      // Reconnect: the desktop resends everything unacknowledged.
      toPhone.push(...desk.link.resend(0n));
    }
    let x: Uint8Array | undefined;
    while ((x = toDesk.shift())) toPhone.push(...deliver(desk, x, e).replies);
  }
  assert.deepEqual(text(got), Array.from({ length: n }, (_, i) => `event ${i}`));
  assert.ok(faults.lost > 0 && faults.dup > 0 && faults.restarts > 0 && faults.reconnects > 0, JSON.stringify(faults));
  // Acks flow back: the outbox drains.
  deliver(desk, phone.link.ack(), e);
  assert.ok(desk.link.outbound().isEmpty());
});

test('link: messages sent while the peer is offline arrive when it returns', () => {
  const e = ent(1);
  const { desk, phone } = pairPeers(e);
  // The phone is offline: the relay queues; the desktop restarts meanwhile.
  const queue = [0, 1, 2, 3, 4].map((i) => desk.link.send(Uint8Array.of(i)).record);
  restart(desk);
  queue.push(desk.link.send(Uint8Array.of(5)).record);
  desk.link.rekeyNow(); // an hour passes: the sending key ratchets
  const r6 = desk.link.send(Uint8Array.of(6)).record;
  assert.equal(decodeEnvelope(r6).kind === 'Record' && decodeEnvelope(r6).kind, 'Record');
  const env6 = decodeEnvelope(r6);
  assert.ok(env6.kind === 'Record' && env6.counter === REKEY_INTERVAL);
  queue.push(r6);
  restart(phone);
  const got = queue.flatMap((q) => deliver(phone, q, e).msgs);
  assert.deepEqual(got, [0, 1, 2, 3, 4, 5, 6].map((i) => Uint8Array.of(i)));
});

test('link: replayed and tampered records change nothing', () => {
  const e = ent(2);
  const { desk, phone } = pairPeers(e);
  const rec = desk.link.send(b('run the tests')).record;
  assert.deepEqual(text(deliver(phone, rec, e).msgs), ['run the tests']);
  const before = snapshot(phone.link);
  // Replay.
  assert.throws(() => phone.link.receive(phone.key, rec, e), linkError('Record', 'Duplicate'));
  assert.equal(snapshot(phone.link), before);
  // Tamper with every byte of a fresh record.
  const rec2 = desk.link.send(b('second')).record;
  for (let i = 0; i < rec2.length; i++) {
    const t = rec2.slice();
    t[i]! ^= 0x04;
    assert.throws(() => phone.link.receive(phone.key, t, e), LinkError, `byte ${i}`);
    assert.equal(snapshot(phone.link), before, `byte ${i} changed state`);
  }
  // Truncation.
  assert.throws(() => phone.link.receive(phone.key, rec2.slice(0, -1), e), linkError('Record', 'Decrypt'));
  assert.throws(() => phone.link.receive(phone.key, rec2.slice(0, 5), e), linkError('Envelope'));
  assert.equal(snapshot(phone.link), before);
  // The genuine record still goes through afterwards.
  assert.deepEqual(text(deliver(phone, rec2, e).msgs), ['second']);
});

test('link: a record from another pairing is refused', () => {
  const e = ent(3);
  const { desk } = pairPeers(e);
  const { phone: other } = pairPeers(e);
  const rec = desk.link.send(b('x')).record;
  assert.throws(() => other.link.receive(other.key, rec, e), linkError('Record', 'WrongSession'));
});

test('link: authentic records with impossible content change nothing', () => {
  const e = ent(14);
  const { desk, phone } = pairPeers(e);
  // A copy of the desktop's sending state seals whatever content we like (its counter resumes
  // past the reservation, which the phone accepts).
  const forge = Session.fromStored(desk.link.toStored().current);
  const before = snapshot(phone.link);
  const cases: [Content | Uint8Array, LinkErrorKind, string?][] = [
    [{ type: 'Data', seq: 0n, oldest: 0n, ack: 0n, message: b('x') }, 'Delivery', 'ZeroSeq'],
    [{ type: 'Data', seq: 1n, oldest: 2n, ack: 0n, message: b('x') }, 'Delivery', 'OldestAboveSeq'],
    [{ type: 'Data', seq: 1n, oldest: 1n, ack: 5n, message: b('x') }, 'Delivery', 'AckBeyondSent'],
    [{ type: 'Ack', ack: 1n }, 'Delivery', 'AckBeyondSent'],
    [{ type: 'Nack', expected: 2n }, 'Delivery', 'AckBeyondSent'],
    [{ type: 'PairConfirm' }, 'Unexpected'],
    [Uint8Array.of(0x02, 0, 0), 'Content', 'Malformed'],
    [Uint8Array.of(0x7f), 'Content', 'UnknownType'],
    [new Uint8Array(0), 'Content', 'Empty'],
  ];
  for (const [c, kind, cause] of cases) {
    const rec = forge.seal(c instanceof Uint8Array ? c : encodeContent(c));
    assert.throws(() => phone.link.receive(phone.key, rec, e), linkError(kind, cause), JSON.stringify(c, (_, v) => (typeof v === 'bigint' ? String(v) : v)));
    assert.equal(snapshot(phone.link), before);
  }
  // A Nack for 1 acknowledges nothing and asks for everything: legal even with nothing sent.
  const d = deliver(phone, forge.seal(encodeContent({ type: 'Nack', expected: 1n })), e);
  assert.deepEqual(d.replies, []);
  // Pairing envelopes have no place on a link.
  assert.throws(() => phone.link.receive(phone.key, encodeEnvelope({ kind: 'PairHello', noise: Uint8Array.of(1) }), e), linkError('Unexpected'));
});

for (const initiator of ['phone', 'desktop'] as const) {
  test(`link: renewal (${initiator} initiates) switches both sides; in-flight records still open`, () => {
    const e = ent(initiator === 'phone' ? 4 : 27);
    const peers = pairPeers(e);
    const [ini, res] = initiator === 'phone' ? [peers.phone, peers.desk] : [peers.desk, peers.phone];
    const oldId = bytesToHex(res.link.sessionId());
    const inFlight = res.link.send(b('sent under the old session')).record;
    const init = ini.link.startRenewal(ini.key, 1_000, e);
    assert.ok(ini.link.renewalPending());
    const accept = deliver(res, init, e).replies;
    assert.equal(accept.length, 1);
    // The responder keeps its current session until the initiator confirms.
    assert.equal(bytesToHex(res.link.sessionId()), oldId);
    const confirmEvents = ini.link.receive(ini.key, accept[0]!, e);
    assert.deepEqual(confirmEvents.map((x) => x.type), ['SessionRenewed', 'Send']);
    assert.ok(!ini.link.renewalPending());
    assert.notEqual(bytesToHex(ini.link.sessionId()), oldId);
    const confirm = confirmEvents[1]!.type === 'Send' ? confirmEvents[1]!.envelopes : [];
    assert.deepEqual(res.link.receive(res.key, confirm[0]!, e), [{ type: 'SessionRenewed' }]);
    assert.equal(bytesToHex(res.link.sessionId()), bytesToHex(ini.link.sessionId()));
    assert.equal(res.link.toStored().last_init_ms, '1000');
    // The old session's record, delivered late, still opens.
    assert.deepEqual(text(deliver(ini, inFlight, e).msgs), ['sent under the old session']);
    // New traffic flows under the new session both ways.
    assert.deepEqual(text(deliver(ini, res.link.send(b('new')).record, e).msgs), ['new']);
    assert.deepEqual(text(deliver(res, ini.link.send(b('reply')).record, e).msgs), ['reply']);
    // A replayed init (the relay re-queues it) is stale.
    assert.throws(() => res.link.receive(res.key, init, e), linkError('Session', 'Stale'));
  });
}

test('link: a stale init answered after a restart replaces next; the renewal converges on the next attempt', () => {
  const e = ent(15);
  const { desk, phone } = pairPeers(e);
  const oldRec = phone.link.send(b('old 1')).record;
  const oldRec2 = phone.link.send(b('old 2')).record;
  const init = desk.link.startRenewal(desk.key, 5_000, e);
  restart(desk); // the pending renewal is lost: no answer will be taken
  assert.ok(!desk.link.renewalPending());
  assert.equal(desk.link.toStored().last_init_sent_ms, '5000');
  const init2 = desk.link.startRenewal(desk.key, 5_000, e); // same clock: 5001 is sent
  assert.equal(desk.link.toStored().last_init_sent_ms, '5001');
  const accept = deliver(phone, init2, e).replies;
  assert.equal(accept.length, 1);
  restart(phone); // `next` is persisted on the responder
  assert.notEqual(phone.link.toStored().next, null);
  // The old init is answered too (5000 > last accepted 0): its session replaces `next`; the
  // initiator no longer has it, so the accept for it is refused as another handshake's.
  const staleAccept = deliver(phone, init, e).replies;
  assert.equal(staleAccept.length, 1);
  assert.throws(() => desk.link.receive(desk.key, staleAccept[0]!, e), linkError('Session', 'HandshakeIdMismatch'));
  assert.ok(desk.link.renewalPending(), 'a mismatched accept keeps the pending handshake');
  // The genuine accept still switches the desktop (S1), but the phone's `next` is now the stale
  // init's session: the desktop's confirmation does not open there.
  const confirm = deliver(desk, accept[0]!, e).replies;
  assert.equal(confirm.length, 1);
  assert.throws(() => phone.link.receive(phone.key, confirm[0]!, e), linkError('Record', 'WrongSession'));
  // The phone still seals under S0, which the desktop keeps as `previous`; a fresh renewal from
  // the phone converges.
  assert.deepEqual(text(deliver(desk, oldRec, e).msgs), ['old 1']);
  const init3 = phone.link.startRenewal(phone.key, 9_000, e);
  const accept3 = deliver(desk, init3, e).replies;
  assert.equal(accept3.length, 1);
  const confirm3 = deliver(phone, accept3[0]!, e).replies;
  deliver(desk, confirm3[0]!, e);
  assert.equal(bytesToHex(desk.link.sessionId()), bytesToHex(phone.link.sessionId()));
  // The desktop's `previous` is now S1, so S0 is gone there; on the phone, a record under the
  // current session erases `previous` (S0).
  const r = desk.link.send(b('after')).record;
  assert.deepEqual(text(deliver(phone, r, e).msgs), ['after']);
  assert.equal(phone.link.toStored().previous, null);
  assert.throws(() => desk.link.receive(desk.key, oldRec2, e), linkError('Record', 'WrongSession'));
  // oldRec2 is still in the phone's outbox and goes out again under the new session.
  const again = phone.link.resend(0n);
  assert.deepEqual(text(again.flatMap((x) => deliver(desk, x, e).msgs)), ['old 2']);
});

test('link: previous is kept for in-flight records and erased on the first record under current', () => {
  const e = ent(16);
  const { desk, phone } = pairPeers(e);
  const inFlight = desk.link.send(b('in flight')).record;
  const init = phone.link.startRenewal(phone.key, 1, e);
  const confirm = deliver(phone, deliver(desk, init, e).replies[0]!, e).replies;
  deliver(desk, confirm[0]!, e);
  assert.notEqual(phone.link.toStored().previous, null);
  restart(phone); // previous survives a restart
  assert.notEqual(phone.link.toStored().previous, null);
  const fresh = desk.link.send(b('fresh')).record;
  assert.deepEqual(text(deliver(phone, fresh, e).msgs), []); // a gap: 1 is still missing
  assert.equal(phone.link.toStored().previous, null, 'a record under current erases previous');
  // The record under the erased session is refused; the resend after the Nack fills the gap.
  assert.throws(() => phone.link.receive(phone.key, inFlight, e), linkError('Record', 'WrongSession'));
  const resent = desk.link.resend(0n);
  assert.deepEqual(text(resent.flatMap((x) => deliver(phone, x, e).msgs)), ['in flight', 'fresh']);
});

test('link: simultaneous renewals resolve to one session (the lower device id wins)', () => {
  const seen = new Set<boolean>();
  for (const seed of [5, 17, 18, 19, 20, 21]) {
    const e = ent(seed);
    const { desk, phone } = pairPeers(e);
    const fromDesk = desk.link.startRenewal(desk.key, 10, e);
    const fromPhone = phone.link.startRenewal(phone.key, 10, e);
    const a = deliver(desk, fromPhone, e).replies;
    const bb = deliver(phone, fromDesk, e).replies;
    // Exactly one side answered: the one that loses the collision.
    assert.equal(a.length + bb.length, 1);
    const deskWins = winsCollision(desk.key.public().deviceId(), phone.key.public().deviceId());
    seen.add(deskWins);
    assert.equal(a.length, deskWins ? 0 : 1);
    assert.equal(desk.link.renewalPending(), deskWins);
    assert.equal(phone.link.renewalPending(), !deskWins);
    const wire: [boolean, Uint8Array][] = [...a.map((x) => [false, x] as [boolean, Uint8Array]), ...bb.map((x) => [true, x] as [boolean, Uint8Array])];
    let w: [boolean, Uint8Array] | undefined;
    while ((w = wire.pop())) {
      const [toDesk, bytes] = w;
      const replies = deliver(toDesk ? desk : phone, bytes, e).replies;
      wire.push(...replies.map((r) => [!toDesk, r] as [boolean, Uint8Array]));
    }
    assert.equal(bytesToHex(desk.link.sessionId()), bytesToHex(phone.link.sessionId()));
    const r = desk.link.send(b('ok')).record;
    assert.deepEqual(text(deliver(phone, r, e).msgs), ['ok']);
    const r2 = phone.link.send(b('ok too')).record;
    assert.deepEqual(text(deliver(desk, r2, e).msgs), ['ok too']);
  }
  assert.equal(seen.size, 2, 'both collision orders were exercised');
});

test('link: a winner that abandoned its renewal answers the peer', () => {
  const e = ent(22);
  let { desk, phone } = pairPeers(e);
  if (!winsCollision(desk.key.public().deviceId(), phone.key.public().deviceId())) [desk, phone] = [phone, desk];
  // `desk` now wins collisions.
  desk.link.startRenewal(desk.key, 10, e);
  const fromPhone = phone.link.startRenewal(phone.key, 10, e);
  assert.deepEqual(desk.link.receive(desk.key, fromPhone, e), []);
  desk.link.abandonRenewal();
  assert.ok(!desk.link.renewalPending());
  // The same init again is now answered (it was ignored, never answered).
  const accept = deliver(desk, fromPhone, e).replies;
  assert.equal(accept.length, 1);
  const confirm = deliver(phone, accept[0]!, e).replies;
  deliver(desk, confirm[0]!, e);
  assert.equal(bytesToHex(desk.link.sessionId()), bytesToHex(phone.link.sessionId()));
});

test('link: a renewal lost to a restart strands nothing', () => {
  const e = ent(6);
  const { desk, phone } = pairPeers(e);
  const init = phone.link.startRenewal(phone.key, 10, e);
  const accept = deliver(desk, init, e).replies;
  restart(phone); // the in-progress handshake is not persisted
  assert.throws(() => phone.link.receive(phone.key, accept[0]!, e), linkError('NoHandshakeInProgress'));
  // Both still share the current session.
  assert.deepEqual(text(deliver(phone, desk.link.send(b('still here')).record, e).msgs), ['still here']);
  assert.deepEqual(text(deliver(desk, phone.link.send(b('me too')).record, e).msgs), ['me too']);
});

test('link: an accept that does not authenticate cancels the renewal; nothing else changes', () => {
  const e = ent(23);
  const { desk, phone } = pairPeers(e);
  const init = phone.link.startRenewal(phone.key, 10, e);
  const accept = deliver(desk, init, e).replies[0]!;
  const before = snapshot(phone.link);
  const t = accept.slice();
  t[t.length - 1]! ^= 1;
  assert.throws(() => phone.link.receive(phone.key, t, e), linkError('Session', 'Handshake'));
  assert.ok(!phone.link.renewalPending());
  assert.equal(snapshot(phone.link), before);
  assert.throws(() => phone.link.receive(phone.key, accept, e), linkError('NoHandshakeInProgress'));
  // The responder's `next` never gets confirmed; traffic goes on under the current session.
  assert.deepEqual(text(deliver(phone, desk.link.send(b('fine')).record, e).msgs), ['fine']);
  assert.deepEqual(text(deliver(desk, phone.link.send(b('fine too')).record, e).msgs), ['fine too']);
});

test('link: an overflowed outbox is reported as resync, never a silent gap', () => {
  const e = ent(7);
  const { desk, phone } = pairPeers(e, { maxMessages: 3, maxBytes: 1 << 20 });
  for (let i = 0; i < 10; i++) desk.link.send(Uint8Array.of(i));
  assert.equal(desk.link.outbound().dropped(), 7n);
  // The phone was away; only what the desktop still holds is resent.
  const resent = desk.link.resend(0n);
  assert.equal(resent.length, 3);
  const first = phone.link.receive(phone.key, resent[0]!, e);
  assert.deepEqual(first.map((x) => x.type), ['ResyncNeeded', 'Message', 'AckDue']);
  assert.deepEqual(first[0], { type: 'ResyncNeeded', from: 1n, to: 7n });
  assert.deepEqual(first[1], { type: 'Message', seq: 8n, message: Uint8Array.of(7) });
  const rest = resent.slice(1).flatMap((r) => deliver(phone, r, e).msgs);
  assert.deepEqual(rest, [Uint8Array.of(8), Uint8Array.of(9)]);
});

test('link: a gap is answered with one Nack and filled by a resend', () => {
  const e = ent(8);
  const { desk, phone } = pairPeers(e);
  desk.link.send(b('1')); // lost
  const r2 = desk.link.send(b('2')).record;
  const r3 = desk.link.send(b('3')).record;
  const d = deliver(phone, r2, e);
  assert.deepEqual(d.msgs, []);
  assert.equal(d.replies.length, 1);
  // The same gap again: no second Nack, and no AckDue.
  assert.deepEqual(phone.link.receive(phone.key, r3, e), []);
  const resend = deliver(desk, d.replies[0]!, e).replies;
  assert.equal(resend.length, 3);
  assert.deepEqual(text(resend.flatMap((r) => deliver(phone, r, e).msgs)), ['1', '2', '3']);
  assert.equal(phone.link.delivered(), 3n);
  // forgetNack allows a new Nack for a persisting gap.
  desk.link.send(b('4')); // lost
  const r5 = desk.link.send(b('5')).record;
  const r5b = desk.link.resend(5n)[0]!;
  assert.equal(deliver(phone, r5, e).replies.length, 1);
  assert.equal(deliver(phone, r5b, e).replies.length, 0);
  phone.link.forgetNack();
  const r5c = desk.link.resend(5n)[0]!;
  assert.equal(deliver(phone, r5c, e).replies.length, 1);
});

test('link: a clock that goes back does not block renewal', () => {
  const e = ent(10);
  const { desk, phone } = pairPeers(e);
  for (const now of [5_000, 1_000]) {
    const init = phone.link.startRenewal(phone.key, now, e);
    const accept = deliver(desk, init, e).replies;
    assert.equal(accept.length, 1, `renewal at clock ${now} was refused`);
    const confirm = deliver(phone, accept[0]!, e).replies;
    const events = desk.link.receive(desk.key, confirm[0]!, e);
    assert.ok(events.some((x) => x.type === 'SessionRenewed'));
    assert.equal(bytesToHex(desk.link.sessionId()), bytesToHex(phone.link.sessionId()));
  }
  assert.equal(desk.link.toStored().last_init_ms, '5001');
});

test('link: oversized messages are refused and not queued; exhausted sessions keep the message', () => {
  const e = ent(11);
  const { desk, phone } = pairPeers(e);
  assert.throws(() => desk.link.send(new Uint8Array(MAX_MESSAGE_LEN + 1)), (x: unknown) => x instanceof RecordError && x.kind === 'PlaintextTooLarge');
  assert.ok(desk.link.outbound().isEmpty());
  desk.link.send(new Uint8Array(MAX_MESSAGE_LEN)); // exactly the limit fits
  // A session whose counters are used up: the message is queued, sealing fails.
  const s: StoredLink = JSON.parse(JSON.stringify(phone.link.toStored()));
  s.current.tx.next_counter = s.current.tx.reserved = String(MAX_COUNTER);
  s.current.tx.epoch = String(MAX_COUNTER / REKEY_INTERVAL);
  const spent: Peer = { key: phone.key, link: Link.fromStored(s) };
  assert.ok(spent.link.needsRenewal(0n));
  assert.throws(() => spent.link.send(b('later')), (x: unknown) => x instanceof RecordError && x.kind === 'Exhausted');
  assert.equal(spent.link.outbound().len(), 1);
  assert.throws(() => spent.link.ack(), (x: unknown) => x instanceof RecordError && x.kind === 'Exhausted');
  // Receiving still works; a reply that cannot be sealed is skipped, the state is committed.
  desk.link.send(b('lost'));
  const gap = desk.link.send(b('gap')).record;
  assert.deepEqual(spent.link.receive(spent.key, gap, e), []);
  const nack = spent.link.toStored().inbound.nacked;
  assert.equal(nack, '1');
});

test('link: delivered and duplicate data ask for an ack', () => {
  const e = ent(12);
  const { desk, phone } = pairPeers(e);
  const r = desk.link.send(b('m')).record;
  const events = phone.link.receive(phone.key, r, e);
  assert.ok(events.some((x) => x.type === 'AckDue'));
  // The same message resent under a new counter is a duplicate: ack again.
  const again = desk.link.resend(0n);
  assert.deepEqual(phone.link.receive(phone.key, again[0]!, e), [{ type: 'AckDue' }]);
  assert.deepEqual(desk.link.receive(desk.key, phone.link.ack(), e), []);
  assert.ok(desk.link.outbound().isEmpty());
  assert.equal(desk.link.outbound().acked(), 1n);
});

test('link: data going the other way carries the ack', () => {
  const e = ent(24);
  const { desk, phone } = pairPeers(e);
  deliver(phone, desk.link.send(b('a')).record, e);
  deliver(phone, desk.link.send(b('b')).record, e);
  assert.equal(desk.link.outbound().len(), 2);
  deliver(desk, phone.link.send(b('reply')).record, e);
  assert.ok(desk.link.outbound().isEmpty());
});

test('link: a session init delivered twice gets the same answer', () => {
  const e = ent(13);
  const { desk, phone } = pairPeers(e);
  const init = phone.link.startRenewal(phone.key, 1_000, e);
  const accept = deliver(desk, init, e).replies;
  assert.equal(accept.length, 1);
  // The relay redelivers the init before the initiator's confirm arrives (or the responder
  // restarted before its answer left): the same answer goes out again, and the pending session is
  // not replaced.
  restart(desk);
  const again = deliver(desk, init, e).replies;
  assert.deepEqual(again.map(bytesToHex), accept.map(bytesToHex), 'a redelivered init must get the same accept');
  // The first accept lost: the repeated one completes the renewal.
  const confirm = deliver(phone, again[0]!, e).replies;
  // The other copy then finds no handshake in progress: refused, harmless.
  assert.throws(() => phone.link.receive(phone.key, accept[0]!, e), linkError('NoHandshakeInProgress'));
  deliver(desk, confirm[0]!, e);
  assert.equal(bytesToHex(desk.link.sessionId()), bytesToHex(phone.link.sessionId()));
  assert.deepEqual(text(deliver(desk, phone.link.send(b('after')).record, e).msgs), ['after']);
});

test('link: a responder stored before the accept was kept answers a repeated init with nothing, as before', () => {
  const e = ent(14);
  const { desk, phone } = pairPeers(e);
  const init = phone.link.startRenewal(phone.key, 1_000, e);
  const accept = deliver(desk, init, e).replies;
  const old = desk.link.toStored();
  delete old.next!.accept;
  desk.link = Link.fromStored(JSON.parse(JSON.stringify(old)));
  assert.equal(deliver(desk, init, e).replies.length, 0, 'no kept accept: no answer, and next is not replaced');
  const confirm = deliver(phone, accept[0]!, e).replies;
  deliver(desk, confirm[0]!, e);
  assert.equal(bytesToHex(desk.link.sessionId()), bytesToHex(phone.link.sessionId()));
});

test('link: the responder erases the old session when it promotes the new one', () => {
  const e = ent(15);
  const { desk, phone } = pairPeers(e);
  const old = bytesToHex(desk.link.sessionId());
  deliver(desk, phone.link.send(b('hello')).record, e);
  const init = phone.link.startRenewal(phone.key, 1_000, e);
  const accept = deliver(desk, init, e).replies;
  const confirm = deliver(phone, accept[0]!, e).replies;
  deliver(desk, confirm[0]!, e);
  assert.notEqual(bytesToHex(desk.link.sessionId()), old);
  // A copy of the desktop's link holds no key of the old session, even if the phone says nothing more.
  assert.equal(desk.link.toStored().previous ?? null, null);
});

test('link: counter reservation — mustPersist after a seal that grew it, never again until the next block', () => {
  const e = ent(25);
  const { desk, phone } = pairPeers(e);
  // The phone sealed its PairConfirm at counter 0 during pairing: that reserved 0..4096.
  assert.ok(phone.link.mustPersist());
  phone.link.markPersisted();
  for (let i = 0; i < 100; i++) phone.link.send(b(`${i}`));
  assert.ok(!phone.link.mustPersist());
  restart(phone); // resumes at counter 4096
  assert.ok(!phone.link.mustPersist());
  const r = phone.link.send(b('after restart')).record;
  assert.ok(phone.link.mustPersist());
  const env = decodeEnvelope(r);
  assert.ok(env.kind === 'Record' && env.counter === 4096n);
  phone.link.markPersisted();
  assert.ok(!phone.link.mustPersist());
  // Everything still arrives (the outbox went through the restart).
  const got = phone.link.resend(0n).flatMap((x) => deliver(desk, x, e).msgs);
  assert.equal(got.length, 101);
  phone.link.rekeyNow();
  assert.ok(phone.link.mustPersist());
});

test('link: stored form is JSON-safe, round-trips exactly, and bad forms are refused', () => {
  const e = ent(26);
  const { desk, phone } = pairPeers(e);
  phone.link.send(b('queued \u00e9'));
  const init = phone.link.startRenewal(phone.key, 42, e);
  deliver(desk, init, e); // desk now has `next`
  desk.link.send(Uint8Array.of(0, 255));
  for (const p of [desk, phone]) {
    const s = p.link.toStored();
    const text = JSON.stringify(s);
    const back = Link.fromStored(JSON.parse(text));
    // Loading resumes past the reservation; everything else is identical.
    const s2 = back.toStored();
    assert.equal(JSON.stringify({ ...s2, current: null }), JSON.stringify({ ...s, current: null }));
    assert.equal(s2.current.tx.next_counter, s.current.tx.reserved);
    assert.deepEqual(s2.current.rx, s.current.rx);
    assert.ok(back.peer().equals(p.link.peer()));
    assert.ok(!back.renewalPending());
  }
  const s = desk.link.toStored();
  assert.notEqual(s.next, null);
  assert.equal(s.next!.ts, '42');
  assert.equal(s.next!.handshake_id.length, 16);
  assert.deepEqual(Object.keys(s), ['peer', 'psk', 'current', 'previous', 'next', 'last_init_ms', 'last_init_sent_ms', 'outbound', 'inbound', 'clock']);
  assert.deepEqual(Object.keys(s.next!), ['session', 'ts', 'handshake_id', 'accept']);
  assert.equal(s.peer, phone.key.public().toString());
  const bad: unknown[] = [
    undefined,
    'x',
    { ...s, peer: 'AAAA' },
    { ...s, psk: s.psk.slice(2) },
    { ...s, current: { ...s.current, id: 'zz' } },
    { ...s, current: { ...s.current, rx: { ...s.current.rx, window: { next: '0', bits: [] } } } },
    { ...s, previous: 5 },
    { ...s, next: { ...s.next, ts: 42 } },
    { ...s, last_init_ms: undefined },
    { ...s, outbound: { ...s.outbound, unacked: null } },
    { ...s, inbound: null },
    { ...s, next: { ...s.next, accept: 5 } },
    { ...s, next: { ...s.next, accept: '!!' } },
    { ...s, clock: null },
    { ...s, clock: { ...s.clock, session_id: 'zz' } },
    { ...s, clock: { ...s.clock, since_ms: -1 } },
    { ...s, clock: { ...s.clock, records: undefined } },
  ];
  for (const x of bad) assert.throws(() => Link.fromStored(x), StoredFormatError, JSON.stringify(x)?.slice(0, 80));
});

// ---- golden vectors (proto/vectors/pairing.json) through Link ----

const v = loadVector('pairing');
const seed = (h: string): DeterministicEntropy => new DeterministicEntropy(hexToBytes(h));

/** The phone's link after the vector's pairing transcript. */
function vectorPhone(): Peer {
  const phone = new DeviceKey(hexToBytes(v.phone_secret));
  const desktop = new DeviceKey(hexToBytes(v.desktop_secret));
  const qr: QrPayload = { desktop: desktop.public(), secret: hexToBytes(v.qr_secret), expiresAt: v.qr_expires_at };
  const { state } = PhonePairing.start(phone, qr, deviceInfoFromJson(utf8(v.phone_info_json)), seed(v.phone_entropy_seed));
  const { state: waiting } = state.onWelcome(hexToBytes(v.pair_welcome));
  return { key: phone, link: Link.fromPaired(waiting.onResult(hexToBytes(v.pair_result))) };
}

/** The desktop's link after the same transcript (its side emulated at the Noise level). */
function vectorDesk(): Peer {
  const desktop = new DeviceKey(hexToBytes(v.desktop_secret));
  const qr: QrPayload = { desktop: desktop.public(), secret: hexToBytes(v.qr_secret), expiresAt: v.qr_expires_at };
  const hs = new HandshakeState({
    pattern: 'IKpsk2',
    initiator: false,
    localPrivate: desktop.toBytes(),
    psk: qr.secret,
    prologue: pairingPrologue(qr),
    ephemeralPrivate: hexToBytes(v.desktop_ephemeral_secret),
  });
  const hello = decodeEnvelope(hexToBytes(v.pair_hello));
  if (hello.kind !== 'PairHello') throw new Error('not a hello');
  hs.readMessage(hello.noise);
  assert.equal(bytesToHex(Uint8Array.of(1, 2, ...hs.writeMessage(utf8(v.desktop_info_json)))), v.pair_welcome);
  const session = intoSession(hs);
  assert.deepEqual(decodeContent(session.open(hexToBytes(v.pair_confirm))), { type: 'PairConfirm' });
  const psk = hexToBytes(v.session_psk);
  const result = session.seal(encodeContent({ type: 'PairResult', accepted: true, sessionPsk: psk, reason: '' }));
  assert.equal(bytesToHex(result), v.pair_result);
  const paired: PairedPeer = {
    publicKey: new PublicKey(hs.remoteStatic()!),
    info: deviceInfoFromJson(utf8(v.phone_info_json)),
    sessionPsk: psk,
    session,
    sas: undefined as unknown as PairedPeer['sas'],
  };
  return { key: desktop, link: Link.fromPaired(paired) };
}

test('pairing.json through Link: the phone\'s first Data record and the renewal are byte-exact', () => {
  const phone = vectorPhone();
  assert.equal(bytesToHex(phone.link.sessionId()), v.session_id);
  // Data{seq 1, oldest 1, ack 0, message}: the vector's plaintext.
  const plain = hexToBytes(v.phone_first_data_plaintext);
  const c = decodeContent(plain);
  assert.equal(c.type, 'Data');
  if (c.type !== 'Data') return;
  assert.deepEqual([c.seq, c.oldest, c.ack], [1n, 1n, 0n]);
  const { seq, record } = phone.link.send(c.message);
  assert.equal(seq, 1n);
  assert.equal(bytesToHex(record), v.phone_first_data_record);

  const r = v.renewal;
  assert.equal(r.initiator, 'phone');
  const init = phone.link.startRenewal(phone.key, BigInt(r.timestamp_ms), seed(r.phone_entropy_seed));
  assert.equal(bytesToHex(init), r.session_init);
  const events = phone.link.receive(phone.key, hexToBytes(r.session_accept), seed('00'.repeat(32)));
  // SessionRenewed, then the key confirmation: a bare Ack{0} under the new session.
  assert.deepEqual(events, [{ type: 'SessionRenewed' }, { type: 'Send', envelopes: [hexToBytes(r.first_record_from_phone)] }]);
  assert.equal(bytesToHex(phone.link.sessionId()), r.new_session_id);
  assert.equal(phone.link.toStored().previous?.id, v.session_id);
});

test('pairing.json through Link: the desktop side answers the renewal byte-exact and promotes on the confirmation', () => {
  const desk = vectorDesk();
  const r = v.renewal;
  const first = desk.link.receive(desk.key, hexToBytes(v.phone_first_data_record), seed('00'.repeat(32)));
  const c = decodeContent(hexToBytes(v.phone_first_data_plaintext));
  assert.ok(c.type === 'Data');
  assert.deepEqual(first, [{ type: 'Message', seq: 1n, message: c.type === 'Data' ? c.message : null }, { type: 'AckDue' }]);
  // A replay of it is refused.
  assert.throws(() => desk.link.receive(desk.key, hexToBytes(v.phone_first_data_record), seed('00'.repeat(32))), linkError('Record', 'Duplicate'));
  const events = desk.link.receive(desk.key, hexToBytes(r.session_init), seed(r.desktop_entropy_seed));
  assert.deepEqual(events, [{ type: 'Send', envelopes: [hexToBytes(r.session_accept)] }]);
  assert.equal(bytesToHex(desk.link.sessionId()), v.session_id); // still sealing under S0
  assert.equal(desk.link.toStored().next?.session.id, r.new_session_id);
  restart(desk);
  assert.deepEqual(desk.link.receive(desk.key, hexToBytes(r.first_record_from_phone), seed('00'.repeat(32))), [{ type: 'SessionRenewed' }]);
  assert.equal(bytesToHex(desk.link.sessionId()), r.new_session_id);
  assert.equal(desk.link.toStored().last_init_ms, String(r.timestamp_ms));
  // A replayed init is now stale.
  assert.throws(() => desk.link.receive(desk.key, hexToBytes(r.session_init), seed(r.desktop_entropy_seed)), linkError('Session', 'Stale'));
});

test('pairing.json through Link: both vector links talk to each other after the renewal', () => {
  const phone = vectorPhone();
  const desk = vectorDesk();
  const r = v.renewal;
  const e = ent(30);
  const first = decodeContent(hexToBytes(v.phone_first_data_plaintext));
  assert.ok(first.type === 'Data');
  const sent = phone.link.send(first.message).record;
  assert.equal(bytesToHex(sent), v.phone_first_data_record);
  assert.deepEqual(deliver(desk, sent, e).msgs, [first.message]);
  const init = phone.link.startRenewal(phone.key, BigInt(r.timestamp_ms), seed(r.phone_entropy_seed));
  const accept = deliver(desk, init, seed(r.desktop_entropy_seed)).replies;
  assert.equal(bytesToHex(accept[0]!), r.session_accept);
  const confirm = deliver(phone, accept[0]!, e).replies;
  assert.equal(bytesToHex(confirm[0]!), r.first_record_from_phone);
  deliver(desk, confirm[0]!, e);
  assert.deepEqual(text(deliver(phone, desk.link.send(b('{"v":1}')).record, e).msgs), ['{"v":1}']);
  assert.ok(phone.link.outbound().isEmpty(), 'the desktop\'s data carried the ack');
});
