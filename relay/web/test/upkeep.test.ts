// The renewal and rekey schedule (`Link.upkeep`, PROTOCOL §10.6) over simulated hours, mirroring
// proto/tests/upkeep.rs: two paired links, a relay that keeps each sender's order, traffic both
// ways, the phone dropping off and coming back, both sides restarting from their persisted state.
// Sessions renew on schedule, the sending epoch advances, nothing is lost or repeated, and a copy of
// a link taken on one side of a renewal cannot open the other side's records.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { bytesToHex } from '../src/proto/bytes.ts';
import type { DeterministicEntropy } from '../src/proto/entropy.ts';
import { type DeviceKey } from '../src/proto/identity.ts';
import { Link, LinkError, type LinkEvent } from '../src/proto/link.ts';
import { RecordError } from '../src/proto/record.ts';
import { type Schedule, defaultSchedule, upkeepMustPersist } from '../src/proto/upkeep.ts';
import { NOW, b, ent, pairPeers } from './peers.ts';

const SECOND = 1_000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
/** Seconds simulated. */
const STEPS = 2 * 3_600 + 300;

interface Side {
  key: DeviceKey;
  link: Link;
  /** This side's clock runs `skew` ahead of the simulation's. */
  skew: number;
  got: string[];
  sent: number;
  renewalsStarted: number;
  renewed: number;
  epochs: Set<bigint>;
}

function pair(e: DeterministicEntropy): { desk: Side; phone: Side } {
  const { desk, phone } = pairPeers(e);
  const side = (p: { key: DeviceKey; link: Link }, skew: number): Side => ({
    key: p.key,
    link: p.link,
    skew,
    got: [],
    sent: 0,
    renewalsStarted: 0,
    renewed: 0,
    epochs: new Set(),
  });
  return { desk: side(desk, 0), phone: side(phone, 5 * MINUTE) };
}

/** A kill -9 and restart: the link comes back from its persisted form (the caller persisted after every operation, before sending anything). */
function restart(s: Side): void {
  s.link = Link.fromStored(JSON.parse(JSON.stringify(s.link.toStored())));
}

/** Deliver one envelope; replies go to `back`. */
function deliver(to: Side, bytes: Uint8Array, back: Uint8Array[], e: DeterministicEntropy): void {
  let events: LinkEvent[];
  try {
    events = to.link.receive(to.key, bytes, e);
  } catch {
    return;
  }
  let ackDue = false;
  for (const ev of events) {
    switch (ev.type) {
      case 'Message':
        to.got.push(new TextDecoder().decode(ev.message));
        break;
      case 'Send':
        back.push(...ev.envelopes);
        break;
      case 'ResyncNeeded':
        assert.fail(`lost ${ev.from}..=${ev.to}`);
        break;
      case 'AckDue':
        ackDue = true;
        break;
      case 'SessionRenewed':
        to.renewed++;
        break;
    }
  }
  if (ackDue) back.push(to.link.ack());
}

/** A record as a recording of the relay's traffic holds it. */
interface Captured {
  session: string;
  record: Uint8Array;
}

function send(from: Side, text: string, wire: Uint8Array[], log: Captured[]): void {
  const { record } = from.link.send(b(text));
  from.sent++;
  log.push({ session: bytesToHex(from.link.sessionId()), record });
  wire.push(record);
}

function tick(side: Side, now: number, online: boolean, schedule: Schedule, e: DeterministicEntropy): Uint8Array | null {
  const done = side.link.upkeep(side.key, now + side.skew, online, schedule, e);
  side.epochs.add(side.link.sendEpoch());
  if (done.renewal) {
    assert.ok(online, 'a renewal started while the peer was offline');
    side.renewalsStarted++;
  }
  return done.renewal;
}

interface Run {
  desk: Side;
  phone: Side;
  /** Records the desktop sealed, as the relay saw them. */
  deskRecords: Captured[];
  /** The phone's link at 10 minutes (before any renewal). */
  earlyPhone: string;
  /** Session ids the desktop used, in order. */
  deskSessions: string[];
}

/** Two simulated hours and five minutes, one step per second. */
function run(schedule: Schedule, seed: number): Run {
  const e = ent(seed);
  const { desk, phone } = pair(e);
  let toPhone: Uint8Array[] = [];
  const toDesk: Uint8Array[] = [];
  const deskRecords: Captured[] = [];
  const phoneRecords: Captured[] = [];
  let earlyPhone = '';
  const deskSessions = [bytesToHex(desk.link.sessionId())];
  const start = NOW * 1_000;
  for (let s = 0; s < STEPS; s++) {
    const now = start + s * SECOND;
    // The phone is away for 3 minutes every 25 (sleep, a tunnel).
    const phoneOnline = !(s % 1_500 >= 1_200 && s % 1_500 < 1_380);
    const cameBack = s % 1_500 === 1_380;
    // A task streams an event every 10 s; the phone asks every 90 s.
    if (s % 10 === 0) send(desk, `event ${s}`, toPhone, deskRecords);
    if (s % 90 === 0 && phoneOnline) send(phone, `request ${s}`, toDesk, phoneRecords);
    // Each side restarts now and then (kill -9, update, crash).
    if (s % 1_777 === 1_000) restart(desk);
    if (s % 2_333 === 2_000) restart(phone);
    if (cameBack) {
      toDesk.push(...phone.link.resend(0n));
      toPhone.push(...desk.link.resend(0n));
    }
    const di = tick(desk, now, phoneOnline, schedule, e);
    if (di) toPhone.push(di);
    const pi = tick(phone, now, phoneOnline, schedule, e);
    if (pi) toDesk.push(pi);
    if (s === 600) earlyPhone = JSON.stringify(phone.link.toStored());
    // The relay: the desktop is always reachable, the phone when online.
    while (toDesk.length) deliver(desk, toDesk.shift()!, toPhone, e);
    while (phoneOnline && toPhone.length) {
      deliver(phone, toPhone.shift()!, toDesk, e);
      while (toDesk.length) deliver(desk, toDesk.shift()!, toPhone, e);
    }
    const id = bytesToHex(desk.link.sessionId());
    if (deskSessions[deskSessions.length - 1] !== id) deskSessions.push(id);
  }
  // Everything left is delivered once the phone is back.
  for (let i = 0; i < 4; i++) {
    toPhone.push(...desk.link.resend(0n));
    while (toPhone.length) {
      deliver(phone, toPhone.shift()!, toDesk, e);
      while (toDesk.length) deliver(desk, toDesk.shift()!, toPhone, e);
    }
  }
  toPhone = [];
  const expect: string[] = [];
  for (let s = 0; s < STEPS; s += 10) expect.push(`event ${s}`);
  assert.deepEqual(phone.got, expect, 'every event once, in order');
  assert.equal(desk.got.length, phone.sent, 'every request once');
  return { desk, phone, deskRecords, earlyPhone, deskSessions };
}

test('upkeep: two hours with the default schedule renew twice and rekey', () => {
  const r = run(defaultSchedule(), 21);
  // Renewed at about one hour and about two hours (the desktop's clock is behind, so the phone
  // starts; a restart can lose one, the next tick starts another).
  assert.ok(r.deskSessions.length >= 3, `sessions: ${r.deskSessions.length}`);
  assert.ok(r.phone.renewalsStarted + r.desk.renewalsStarted >= 1);
  assert.ok(r.phone.renewed >= 1 && r.desk.renewed >= 1);
  // Hourly rekeying moved the pairing session's sending key before the renewal.
  assert.ok(r.desk.epochs.size > 1, `epochs seen: ${[...r.desk.epochs].join(',')}`);
});

test('upkeep: sessions renew and epochs advance on a short schedule', () => {
  const schedule: Schedule = { renewAfterMs: 20 * MINUTE, renewAfterRecords: 1_000_000, rekeyAfterMs: 5 * MINUTE, renewalTimeoutMs: 30 * SECOND };
  const r = run(schedule, 22);
  // Two hours of 20-minute sessions: about six, whatever the absences.
  assert.ok(r.deskSessions.length >= 5, `sessions: ${r.deskSessions.length}`);
  // Four rekeys in each session: epochs 0..=3 at least.
  assert.ok([...r.desk.epochs].some((x) => x >= 3n), `epochs seen: ${[...r.desk.epochs].join(',')}`);
  assert.ok([...r.phone.epochs].some((x) => x >= 3n), `epochs seen: ${[...r.phone.epochs].join(',')}`);
});

test('upkeep: a snapshot on one side of a renewal cannot open the other side\'s records', () => {
  const r = run({ ...defaultSchedule(), renewAfterMs: 20 * MINUTE }, 23);
  const first = r.deskSessions[0]!;
  assert.ok(r.deskSessions.length >= 3);
  const wrongSession = (got: unknown): boolean => got instanceof LinkError && got.kind === 'Record' && got.cause instanceof RecordError && got.cause.kind === 'WrongSession';
  // Before: the phone's link at 10 minutes opens nothing the desktop sealed under a later session.
  let later = 0;
  for (const c of r.deskRecords.filter((c) => c.session !== first)) {
    const early = Link.fromStored(JSON.parse(r.earlyPhone));
    assert.throws(() => early.receive(r.phone.key, c.record, ent(1)), wrongSession, 'an early snapshot opened a later record');
    later++;
  }
  assert.ok(later > 100, `${later}`);
  // The check is not vacuous: the early snapshot opens the desktop's next record of its own session.
  const own = r.deskRecords.filter((c) => c.session === first);
  const early = Link.fromStored(JSON.parse(r.earlyPhone));
  assert.ok(own.some((c) => {
    try {
      return early.receive(r.phone.key, c.record, ent(1)).some((ev) => ev.type === 'Message');
    } catch {
      return false;
    }
  }), 'the early snapshot opens records of its own session');
  // After: the phone's link at the end holds none of the desktop's earlier sessions, so no record
  // sealed under them opens, whatever its replay window says.
  const now = JSON.stringify(r.phone.link.toStored());
  const last = r.deskSessions[r.deskSessions.length - 1]!;
  let earlier = 0;
  for (const c of r.deskRecords.filter((c) => c.session !== last)) {
    const late = Link.fromStored(JSON.parse(now));
    assert.throws(() => late.receive(r.phone.key, c.record, ent(1)), wrongSession, 'a late snapshot opened an earlier record');
    earlier++;
  }
  assert.ok(earlier > 100, `${earlier}`);
  for (const old of r.deskSessions.slice(0, -1)) assert.ok(!now.includes(old), "an old session is still in the phone's state");
});

test('upkeep: no renewal while the peer is offline, and a silent peer is given up on', () => {
  const e = ent(24);
  const { desk } = pair(e);
  const schedule = defaultSchedule();
  const t0 = NOW * 1_000;
  assert.ok(desk.link.upkeep(desk.key, t0, false, schedule, e).changed);
  // An hour later, the peer offline: no renewal.
  const later = t0 + HOUR;
  assert.equal(desk.link.upkeep(desk.key, later, false, schedule, e).renewal, null);
  // Online: one renewal, then nothing while it is pending.
  const first = desk.link.upkeep(desk.key, later + 1, true, schedule, e);
  assert.ok(first.renewal !== null && upkeepMustPersist(first));
  assert.ok(desk.link.renewalPending());
  assert.equal(desk.link.upkeep(desk.key, later + 10 * SECOND, true, schedule, e).renewal, null);
  // No answer within the timeout: abandoned, and another starts.
  const retry = desk.link.upkeep(desk.key, later + 1 + schedule.renewalTimeoutMs, true, schedule, e);
  assert.ok(retry.abandoned);
  assert.ok(retry.renewal !== null, 'a new renewal after the abandoned one');
});

test('upkeep: many records renew a young session', () => {
  const e = ent(25);
  const { desk, phone } = pair(e);
  const schedule = { ...defaultSchedule(), renewAfterRecords: 100 };
  const t0 = NOW * 1_000;
  desk.link.upkeep(desk.key, t0, true, schedule, e);
  const wire: Uint8Array[] = [];
  for (let i = 0; i < 60; i++) deliver(phone, desk.link.send(b(`m${i}`)).record, wire, e);
  assert.equal(desk.link.upkeep(desk.key, t0 + 1, true, schedule, e).renewal, null);
  // The phone's acks count too.
  while (wire.length) deliver(desk, wire.shift()!, [], e);
  assert.equal(desk.link.sessionAge(t0 + 1).records, 120n);
  assert.ok(desk.link.upkeep(desk.key, t0 + 2, true, schedule, e).renewal !== null);
});

test('upkeep: the schedule survives a restart and a clock that goes back', () => {
  const e = ent(26);
  let { desk } = pair(e);
  const schedule = defaultSchedule();
  const t0 = NOW * 1_000;
  desk.link.upkeep(desk.key, t0, true, schedule, e);
  restart(desk);
  assert.equal(desk.link.sessionAge(t0 + 40 * MINUTE).ageMs, BigInt(40 * MINUTE));
  // Restarted 59 minutes in: not yet due; due at the hour.
  assert.equal(desk.link.upkeep(desk.key, t0 + 59 * MINUTE, true, schedule, e).renewal, null);
  restart(desk);
  assert.ok(desk.link.upkeep(desk.key, t0 + HOUR, true, schedule, e).renewal !== null);
  // A clock set back a day restarts the clock instead of waiting a day.
  ({ desk } = pair(e));
  desk.link.upkeep(desk.key, t0, true, schedule, e);
  const back = t0 - 24 * HOUR;
  assert.ok(desk.link.upkeep(desk.key, back, true, schedule, e).changed);
  assert.ok(desk.link.upkeep(desk.key, back + HOUR, true, schedule, e).renewal !== null);
});

test('upkeep: a link stored before the schedule existed still loads; its clock starts at the next upkeep and is kept from then on', () => {
  const e = ent(27);
  const { desk, phone } = pair(e);
  deliver(desk, phone.link.send(b('hello')).record, [], e);
  const t0 = NOW * 1_000;
  // A row as the web client stored it before this change: no `clock`, no `next.accept`.
  const old = desk.link.toStored();
  delete old.clock;
  const loaded = Link.fromStored(JSON.parse(JSON.stringify(old)));
  assert.deepEqual(loaded.sessionAge(t0), { ageMs: 0n, records: 0n });
  const first = loaded.upkeep(desk.key, t0, true, defaultSchedule(), e);
  assert.ok(first.changed && upkeepMustPersist(first), 'the clock started: persist');
  assert.equal(first.renewal, null);
  // The new clock fields round-trip through the stored form exactly.
  const stored = loaded.toStored();
  assert.deepEqual(stored.clock, { session_id: bytesToHex(loaded.sessionId()), since_ms: String(t0), rekeyed_ms: String(t0), records: '0' });
  const again = Link.fromStored(JSON.parse(JSON.stringify(stored)));
  assert.deepEqual(again.toStored().clock, stored.clock);
  assert.equal(again.upkeep(desk.key, t0 + 1, true, defaultSchedule(), e).changed, false, 'a loaded clock does not start again');
  assert.ok(again.upkeep(desk.key, t0 + HOUR, true, defaultSchedule(), e).renewal !== null, 'due an hour after the first upkeep');
});

test('upkeep: a rekey ratchets the sending key at once and needs a persist; an idle key is left alone', () => {
  const e = ent(28);
  const { desk, phone } = pair(e);
  const schedule = defaultSchedule();
  const t0 = NOW * 1_000;
  desk.link.upkeep(desk.key, t0, false, schedule, e);
  const epoch = desk.link.sendEpoch();
  deliver(phone, desk.link.send(b('used')).record, [], e);
  const done = desk.link.upkeep(desk.key, t0 + HOUR, false, schedule, e);
  assert.ok(done.rekeyed && upkeepMustPersist(done) && done.renewal === null);
  assert.equal(desk.link.sendEpoch(), epoch + 1n);
  // The peer still opens what is sealed in the new epoch.
  const got: Side = { ...phone, link: phone.link, key: phone.key, got: [] };
  deliver(got, desk.link.send(b('after rekey')).record, [], e);
  assert.deepEqual(got.got, ['after rekey']);
  // An hour with nothing sealed: the key is not ratcheted again.
  desk.link.upkeep(desk.key, t0 + 2 * HOUR + 5, false, schedule, e);
  desk.link.upkeep(desk.key, t0 + 3 * HOUR + 10, false, schedule, e);
  assert.equal(desk.link.sendEpoch(), epoch + 2n);
});

test('upkeep: a time with a fraction of a millisecond (a page clock\'s Date.now) is taken, floored', () => {
  const e = ent(29);
  const { desk } = pair(e);
  const t0 = NOW * 1_000 + 0.75;
  assert.ok(desk.link.upkeep(desk.key, t0, true, defaultSchedule(), e).changed);
  assert.deepEqual(desk.link.sessionAge(t0 + 1_000.5), { ageMs: 1_001n, records: 0n }); // floor(t0 + 1000.5) − floor(t0)
  assert.ok(desk.link.upkeep(desk.key, t0 + HOUR + 0.1, true, defaultSchedule(), e).renewal !== null);
  assert.throws(() => desk.link.upkeep(desk.key, Number.NaN, true, defaultSchedule(), e), RangeError);
});
