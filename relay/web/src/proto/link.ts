// A paired peer's whole end-to-end state (PROTOCOL.md §10, §13, proto/src/link.rs): the current
// session (persisted: the peer may be offline for days, the relay queues the ciphertext), the
// delivery halves, and KKpsk2 renewal with WireGuard-style promotion.
//
// Renewal: the initiator switches to the new session when it reads the `SessionAccept` and
// confirms at once with an `Ack` under it; the responder keeps sending under the current session
// until a record under the new one arrives, then promotes it. A lost handshake therefore never
// strands a message: both sides still share the current session. The previous session is kept
// only until the peer's first record under the current one arrives (the relay delivers each
// sender's records in order), then dropped.
//
// Persistence rules for the caller (§13.5): persist the link (`toStored()`) after `send` and
// before sending the record; whenever `mustPersist()` is true after a call that sealed records,
// persist, then `markPersisted()`, before sending; persist after `receive` together with the
// effects of delivered messages, before sending its `Send` envelopes and before acknowledging the
// delivery to the relay; persist after `startRenewal` (its timestamp).
//
// When to renew, rekey and give up on a renewal is the schedule of §10.6 (`upkeep`, upkeep.ts):
// the caller runs it every few seconds and when the peer comes online, persists when it says so,
// then sends the renewal it started.
import { U64_MAX, base64UrlDecode, base64UrlEncode, bytesToHex, equalBytes, hexToBytes } from './bytes.ts';
import { type Content, ContentError, decodeContent, encodeContent } from './content.ts';
import {
  DeliveryError,
  Inbound,
  Outbound,
  type OutboxLimits,
  type StoredInbound,
  type StoredOutbound,
  StoredFormatError,
  defaultOutboxLimits,
  storedObject,
  storedU64,
} from './delivery.ts';
import { type Entropy, osEntropy } from './entropy.ts';
import { type Envelope, EnvelopeError, decodeEnvelope } from './envelope.ts';
import { type DeviceKey, PublicKey } from './identity.ts';
import { MAX_MESSAGE_LEN } from './message.ts';
import type { PairedPeer } from './pairing.ts';
import { RecordError, Session, type StoredSession } from './record.ts';
import { type PeerSecrets, SessionError, SessionInitiator, respond, winsCollision } from './session.ts';
import { type Attempt, Clock, EXHAUSTION_MARGIN, type Schedule, type StoredClock, type Upkeep, defaultSchedule } from './upkeep.ts';

export type LinkErrorKind =
  /** Not a valid envelope (`cause`: EnvelopeError). */
  | 'Envelope'
  /** A record that does not open under any session this link holds (`cause`: RecordError). */
  | 'Record'
  /** A record whose plaintext is malformed (`cause`: ContentError). */
  | 'Content'
  /** Impossible sequence numbers (`cause`: DeliveryError). */
  | 'Delivery'
  /** A session handshake message that failed (`cause`: SessionError). */
  | 'Session'
  /** A `SessionAccept` with no handshake of ours in progress. */
  | 'NoHandshakeInProgress'
  /** An envelope that has no place on an established link (pairing messages). */
  | 'Unexpected';

/**
 * Why an incoming envelope was refused. None of these change the link, with one exception: a
 * `SessionAccept` for our handshake that does not authenticate cancels that renewal (start
 * another; nothing is lost). `cause` is the underlying error for the wrapping kinds.
 */
export class LinkError extends Error {
  declare readonly cause: EnvelopeError | RecordError | ContentError | DeliveryError | SessionError | undefined;
  constructor(
    public readonly kind: LinkErrorKind,
    cause?: EnvelopeError | RecordError | ContentError | DeliveryError | SessionError,
  ) {
    super(
      cause
        ? `link: ${cause.message}`
        : kind === 'NoHandshakeInProgress'
          ? 'link: session accept without a handshake in progress'
          : 'link: unexpected envelope on an established link',
      cause ? { cause } : undefined,
    );
  }
}

/** Something the caller must act on after `Link.receive`. Events come in this order: ResyncNeeded, Message, AckDue, SessionRenewed, Send. */
export type LinkEvent =
  /** Deliver this application message (exactly once, in order). */
  | { type: 'Message'; seq: bigint; message: Uint8Array }
  /** Messages `from..=to` will never arrive: show that history is incomplete and resync. */
  | { type: 'ResyncNeeded'; from: bigint; to: bigint }
  /** Send these envelopes to the peer, in this order (nacks, resends, handshakes). */
  | { type: 'Send'; envelopes: Uint8Array[] }
  /** Data arrived: send `Link.ack()` soon (one ack covers everything; coalesce; outgoing data carries it too). */
  | { type: 'AckDue' }
  /** A new session is in use. */
  | { type: 'SessionRenewed' };

/** Persisted form of a `Link` (the Rust field names; JSON-safe). The pending renewal is not persisted, as in Rust. */
export interface StoredLink {
  /** The peer's pinned public key, unpadded base64url. */
  peer: string;
  /** The session PSK from pairing, hex. */
  psk: string;
  current: StoredSession;
  previous: StoredSession | null;
  /**
   * Responder side: a renewed session waiting for the initiator's first record, with its timestamp
   * and the `SessionAccept` sent for it (unpadded base64url; absent or empty in rows stored before
   * it was kept).
   */
  next: { session: StoredSession; ts: string; handshake_id: string; accept?: string } | null;
  last_init_ms: string;
  last_init_sent_ms: string;
  outbound: StoredOutbound;
  inbound: StoredInbound;
  /** The renewal and rekey schedule's state (§10.6); absent in rows stored before it existed (the clock starts at the next upkeep). */
  clock?: StoredClock;
}

interface Next {
  session: Session;
  ts: bigint;
  handshakeId: Uint8Array;
  /** The `SessionAccept` sent for it, sent again when the same init is delivered again (empty in links stored before it was kept). */
  accept: Uint8Array;
}

type Which = 'current' | 'previous' | 'next';
type Reply = { type: 'None' } | { type: 'Nack'; expected: bigint } | { type: 'Resend'; from: bigint };

/** Everything one device keeps about one paired peer. */
export class Link {
  private current: Session;
  private previous: Session | null = null;
  private next: Next | null = null;
  /** Newest session-init timestamp accepted from the peer. */
  private lastInitMs = 0n;
  /** Newest session-init timestamp we sent (ours stay strictly increasing even if the clock goes back). */
  private lastInitSentMs = 0n;
  private out: Outbound;
  private inb: Inbound;
  /** Not persisted: a renewal in progress is lost on restart. */
  private pending: SessionInitiator | null = null;
  /** The schedule's state (§10.6), persisted. */
  private clock: Clock;
  /** When renewals were started here (not persisted). */
  private attempt: Attempt = { pendingSinceMs: null, lastStartMs: null };

  private constructor(
    private readonly peerKey: PublicKey,
    private readonly psk: Uint8Array,
    current: Session,
    outbound: Outbound,
    inbound: Inbound,
  ) {
    if (psk.length !== 32) throw new RangeError('session psk must be 32 bytes');
    this.current = current;
    this.out = outbound;
    this.inb = inbound;
    this.clock = Clock.forSession(current.id);
  }

  /** The link right after pairing. */
  static fromPaired(paired: PairedPeer, limits: OutboxLimits = defaultOutboxLimits()): Link {
    return new Link(new PublicKey(paired.publicKey.bytes.slice()), paired.sessionPsk.slice(), paired.session, new Outbound(limits), new Inbound());
  }

  /** The peer's pinned key. */
  peer(): PublicKey {
    return this.peerKey;
  }

  /** The sending half (for inspection; do not mutate). */
  outbound(): Outbound {
    return this.out;
  }

  /** Everything up to this sequence number from the peer was delivered (what `ack()` acknowledges). */
  delivered(): bigint {
    return this.inb.ack();
  }

  /** The current session's id (8 bytes). */
  sessionId(): Uint8Array {
    return this.current.id.slice();
  }

  /** Whether the current session's counters are within `margin` of running out (renew first). */
  needsRenewal(margin: bigint): boolean {
    return this.current.needsRenewal(margin);
  }

  /** True when the link must be persisted before sending what was just sealed (the counter reservation grew). */
  mustPersist(): boolean {
    return this.current.mustPersist();
  }

  /** The caller persisted the link. */
  markPersisted(): void {
    this.current.markPersisted();
  }

  /**
   * Queue an application message and seal it for sending now. The message stays in the outbox
   * until the peer acknowledges it. Throws `RecordError` `PlaintextTooLarge` for a message over
   * `MAX_MESSAGE_LEN` (not queued); `Exhausted` when the session must be renewed first (the
   * message is queued and goes out with `resend` after the renewal).
   */
  send(message: Uint8Array): { seq: bigint; record: Uint8Array } {
    if (message.length > MAX_MESSAGE_LEN) throw new RecordError('PlaintextTooLarge', String(message.length));
    const seq = this.out.push(message);
    const record = this.sealData(seq);
    return { seq, record };
  }

  private sealData(seq: bigint): Uint8Array {
    const message = this.out.get(seq) ?? new Uint8Array(0);
    return this.seal({ type: 'Data', seq, oldest: this.out.oldest(), ack: this.inb.ack(), message });
  }

  /** Seal `content` under the current session, counting it for the schedule. */
  private seal(content: Content): Uint8Array {
    const record = this.current.seal(encodeContent(content));
    this.clock.count();
    return record;
  }

  /**
   * Seal every unacknowledged message from `from` again, under new counters: after a reconnect
   * (`from = 0n`) or a `Nack`. Throws `RecordError` `Exhausted` when the session must be renewed first.
   */
  resend(from: bigint = 0n): Uint8Array[] {
    return this.out.unackedFrom(from).map((p) => this.sealData(p.seq));
  }

  /** A bare acknowledgement of everything delivered so far. Throws `RecordError` `Exhausted`. */
  ack(): Uint8Array {
    return this.seal({ type: 'Ack', ack: this.inb.ack() });
  }

  /** A gap whose Nack (or its answer) was lost may be Nacked again: call on a timer while messages keep arriving out of order. */
  forgetNack(): void {
    this.inb.forgetNack();
  }

  /** Time-based rekeying (call hourly): ratchets the sending key now if it has been used. */
  rekeyNow(): void {
    this.current.rekeyNow();
  }

  /**
   * Start a KKpsk2 renewal; send the returned `SessionInit` envelope. Replaces any renewal already
   * in progress. The timestamp sent is `nowMs`, or one more than the last one sent if the clock
   * went back. Persist the link afterwards (§13.5 rule 4).
   */
  startRenewal(local: DeviceKey, nowMs: bigint | number, entropy: Entropy = osEntropy): Uint8Array {
    const now = millis(nowMs);
    const floor = this.lastInitSentMs < U64_MAX ? this.lastInitSentMs + 1n : U64_MAX;
    const ts = now > floor ? now : floor;
    const { state, init } = SessionInitiator.start(this.secrets(local), ts, entropy);
    this.lastInitSentMs = ts;
    this.pending = state;
    this.attempt.pendingSinceMs = now;
    this.attempt.lastStartMs = now;
    return init;
  }

  /**
   * Give up on a renewal that got no answer (call after a timeout, e.g. 30 s): while one is
   * pending, this side ignores the peer's own renewals when it wins collisions.
   */
  abandonRenewal(): void {
    this.pending = null;
    this.attempt.pendingSinceMs = null;
  }

  /** Whether a renewal started here is waiting for its answer. */
  renewalPending(): boolean {
    return this.pending !== null;
  }

  /**
   * Run the renewal and rekey schedule (PROTOCOL.md §10.6) at `nowMs` (Unix milliseconds, this
   * device's clock). Call it every few seconds and when the peer comes online; `peerOnline` says
   * whether the peer is connected to the relay now (and this device too). In order:
   *
   * 1. the schedule's clock starts when the current session is new to it (or the wall clock went back);
   * 2. a renewal pending for `renewalTimeoutMs` is abandoned;
   * 3. the sending key is ratcheted (`rekeyNow`) every `rekeyAfterMs`;
   * 4. while the peer is online and no renewal is pending, and none was started in the last
   *    `renewalTimeoutMs`, a renewal starts when the session is `renewAfterMs` old, has carried
   *    `renewAfterRecords` records, or is near the end of its counters.
   *
   * Persist the link when `upkeepMustPersist(result)`, then send `result.renewal`. Throws
   * `EntropyError` when no randomness is available for a renewal (the rest of the upkeep is done
   * and kept).
   */
  upkeep(local: DeviceKey, nowMs: bigint | number, peerOnline: boolean, schedule: Schedule = defaultSchedule(), entropy: Entropy = osEntropy): Upkeep {
    const now = millis(nowMs);
    const done: Upkeep = { renewal: null, rekeyed: false, abandoned: false, changed: this.clock.start(this.current.id, now) };
    const since = this.attempt.pendingSinceMs;
    if (since !== null && (now - since >= BigInt(schedule.renewalTimeoutMs) || since > now)) {
      this.abandonRenewal();
      done.abandoned = true;
    }
    if (now - this.clock.rekeyedMs >= BigInt(schedule.rekeyAfterMs)) {
      this.rekeyNow();
      this.clock.rekeyedMs = now;
      done.rekeyed = true;
    }
    const due =
      this.clock.ageMs(now) >= BigInt(schedule.renewAfterMs) ||
      this.clock.records >= BigInt(schedule.renewAfterRecords) ||
      this.current.needsRenewal(EXHAUSTION_MARGIN);
    const at = this.attempt.lastStartMs;
    const rested = at === null || now - at >= BigInt(schedule.renewalTimeoutMs) || at > now;
    if (peerOnline && due && rested && this.pending === null) {
      done.renewal = this.startRenewal(local, now, entropy);
    }
    return done;
  }

  /**
   * How long the current session has been current by this device's clock at `nowMs` (0 before the
   * first `upkeep`), and the records sealed or opened under it.
   */
  sessionAge(nowMs: bigint | number): { ageMs: bigint; records: bigint } {
    if (this.clock.sinceMs === 0n || !equalBytes(this.clock.sessionId, this.current.id)) return { ageMs: 0n, records: this.clock.records };
    return { ageMs: this.clock.ageMs(millis(nowMs)), records: this.clock.records };
  }

  /** The current session's sending epoch (advanced by every rekey). */
  sendEpoch(): bigint {
    return this.current.sendEpoch();
  }

  private secrets(local: DeviceKey): PeerSecrets {
    return { local, remote: this.peerKey, psk: this.psk };
  }

  /**
   * Handle one envelope from the peer. Throws `LinkError` for anything not authentic, replayed or
   * malformed; then nothing changed (but see `LinkError`): the caller drops the envelope and may
   * still acknowledge it to the relay, since nothing in it can ever be accepted.
   */
  receive(local: DeviceKey, bytes: Uint8Array, entropy: Entropy = osEntropy): LinkEvent[] {
    let e: Envelope;
    try {
      e = decodeEnvelope(bytes);
    } catch (err) {
      throw wrapError(err);
    }
    switch (e.kind) {
      case 'Record':
        return this.receiveRecord(e);
      case 'SessionInit': {
        if (this.next && equalBytes(this.next.handshakeId, e.handshakeId)) {
          // The same init again (a relay redelivery, or this device restarted before its answer
          // left): answering anew would replace `next` with a session the initiator does not
          // have, so the same answer goes out again.
          if (this.next.accept.length === 0) return [];
          return [{ type: 'Send', envelopes: [this.next.accept.slice()] }];
        }
        if (this.pending && winsCollision(local.public().deviceId(), this.peerKey.deviceId())) {
          // Our own init wins; the peer will answer it.
          return [];
        }
        let r: ReturnType<typeof respond>;
        try {
          r = respond(this.secrets(local), e, this.lastInitMs, entropy);
        } catch (err) {
          throw wrapError(err);
        }
        this.abandonRenewal();
        this.next = { session: r.session, ts: r.timestampMs, handshakeId: e.handshakeId.slice(), accept: r.accept.slice() };
        return [{ type: 'Send', envelopes: [r.accept] }];
      }
      case 'SessionAccept': {
        const init = this.pending;
        if (!init) throw new LinkError('NoHandshakeInProgress');
        if (!equalBytes(e.handshakeId, init.handshakeId)) {
          // Another handshake's answer: ours stays pending.
          throw new LinkError('Session', new SessionError('HandshakeIdMismatch'));
        }
        this.pending = null; // taken: a message 2 that does not authenticate cancels the renewal
        this.attempt.pendingSinceMs = null;
        let session: Session;
        try {
          session = init.finish(e);
        } catch (err) {
          throw wrapError(err);
        }
        this.clock = Clock.forSession(session.id);
        this.previous = this.current;
        this.current = session;
        this.next = null;
        // Key confirmation: the responder promotes the session on this. A fresh session cannot be
        // exhausted, so this seal succeeds.
        const events: LinkEvent[] = [{ type: 'SessionRenewed' }];
        try {
          events.push({ type: 'Send', envelopes: [this.ack()] });
        } catch (err) {
          if (!(err instanceof RecordError)) throw err;
        }
        return events;
      }
      case 'PairHello':
      case 'PairWelcome':
        throw new LinkError('Unexpected');
    }
  }

  private receiveRecord(e: Extract<Envelope, { kind: 'Record' }>): LinkEvent[] {
    // Pick the session; work on copies; commit only when everything checks out.
    let which: Which;
    let target: Session;
    if (equalBytes(e.sessionId, this.current.id)) {
      which = 'current';
      target = this.current;
    } else if (this.next && equalBytes(this.next.session.id, e.sessionId)) {
      which = 'next';
      target = this.next.session;
    } else if (this.previous && equalBytes(this.previous.id, e.sessionId)) {
      which = 'previous';
      target = this.previous;
    } else {
      throw new LinkError('Record', new RecordError('WrongSession'));
    }
    // A trial copy: its receiving state equals the target's (loading changes only the sending
    // side, which opening never touches). The target itself is opened only at the commit.
    const trial = Session.fromStored(target.toStored());
    let plain: Uint8Array;
    let content: ReturnType<typeof decodeContent>;
    try {
      plain = trial.open(e);
      content = decodeContent(plain);
    } catch (err) {
      throw wrapError(err);
    }
    const outbound = this.out.clone();
    const inbound = this.inb.clone();
    const events: LinkEvent[] = [];
    let reply: Reply = { type: 'None' };
    try {
      switch (content.type) {
        case 'Data': {
          outbound.onAck(content.ack);
          const receipt = inbound.onData(content.seq, content.oldest);
          if (receipt.resync) events.push({ type: 'ResyncNeeded', from: receipt.resync.from, to: receipt.resync.to });
          const a = receipt.action;
          if (a.type === 'Deliver') {
            events.push({ type: 'Message', seq: content.seq, message: content.message });
            events.push({ type: 'AckDue' });
          } else if (a.type === 'Duplicate') {
            events.push({ type: 'AckDue' });
          } else if (a.nack) {
            reply = { type: 'Nack', expected: a.expected };
          } else if (receipt.resync) {
            events.push({ type: 'AckDue' });
          }
          break;
        }
        case 'Ack':
          outbound.onAck(content.ack);
          break;
        case 'Nack':
          outbound.onAck(content.expected > 0n ? content.expected - 1n : 0n);
          reply = { type: 'Resend', from: content.expected };
          break;
        case 'PairConfirm':
        case 'PairResult':
          throw new LinkError('Unexpected');
      }
    } catch (err) {
      throw wrapError(err);
    }
    // Authenticated and consistent: commit. Opening the target succeeds exactly as the trial did.
    target.open(e);
    switch (which) {
      case 'current':
        this.clock.count();
        // The peer has moved on to the current session; its records under the previous one were
        // delivered before this (the relay keeps each sender's order), so drop the old keys.
        this.previous = null;
        break;
      case 'previous':
        break;
      case 'next': {
        const next = this.next!;
        if (next.ts > this.lastInitMs) this.lastInitMs = next.ts;
        this.next = null;
        this.clock = Clock.forSession(next.session.id);
        this.clock.count();
        // The initiator switched before it sealed this record, and the relay keeps each sender's
        // order: nothing it sealed under the old session is still to come, so the old keys go now.
        this.previous = null;
        this.current = next.session;
        events.push({ type: 'SessionRenewed' });
        break;
      }
    }
    this.out = outbound;
    this.inb = inbound;
    // Replies are sealed after the commit; if the session is exhausted they are skipped (a
    // reconnect resends everything unacknowledged).
    try {
      if (reply.type === 'Nack') {
        events.push({ type: 'Send', envelopes: [this.seal({ type: 'Nack', expected: reply.expected })] });
      } else if (reply.type === 'Resend') {
        events.push({ type: 'Send', envelopes: this.resend(reply.from) });
      }
    } catch (err) {
      if (!(err instanceof RecordError)) throw err;
    }
    return events;
  }

  /** The persisted form (JSON-safe: `JSON.stringify` it or keep it in IndexedDB as is). Contains key material. */
  toStored(): StoredLink {
    return {
      peer: this.peerKey.toString(),
      psk: bytesToHex(this.psk),
      current: this.current.toStored(),
      previous: this.previous ? this.previous.toStored() : null,
      next: this.next
        ? { session: this.next.session.toStored(), ts: String(this.next.ts), handshake_id: bytesToHex(this.next.handshakeId), accept: base64UrlEncode(this.next.accept) }
        : null,
      last_init_ms: String(this.lastInitMs),
      last_init_sent_ms: String(this.lastInitSentMs),
      outbound: this.out.toStored(),
      inbound: this.inb.toStored(),
      clock: {
        session_id: bytesToHex(this.clock.sessionId),
        since_ms: String(this.clock.sinceMs),
        rekeyed_ms: String(this.clock.rekeyedMs),
        records: String(this.clock.records),
      },
    };
  }

  /**
   * Load a persisted link. Sessions resume past their stored counter reservation (§11.5); no
   * renewal is pending. Throws `StoredFormatError` for anything malformed.
   */
  static fromStored(stored: unknown): Link {
    const s = storedObject(stored, 'link');
    const peer = typeof s.peer === 'string' ? base64UrlDecode(s.peer) : null;
    if (!peer || peer.length !== 32) throw new StoredFormatError('link.peer is not a public key');
    const psk = hex(s.psk, 'link.psk', 32);
    const link = new Link(new PublicKey(peer), psk, session(s.current, 'link.current'), Outbound.fromStored(s.outbound), Inbound.fromStored(s.inbound));
    link.previous = s.previous === null || s.previous === undefined ? null : session(s.previous, 'link.previous');
    if (s.next !== null && s.next !== undefined) {
      const n = storedObject(s.next, 'link.next');
      let accept: Uint8Array = new Uint8Array(0);
      if (n.accept !== undefined && n.accept !== '') {
        const a = typeof n.accept === 'string' ? base64UrlDecode(n.accept) : null;
        if (!a) throw new StoredFormatError('link.next.accept is not base64url');
        accept = a;
      }
      link.next = { session: session(n.session, 'link.next.session'), ts: storedU64(n.ts, 'link.next.ts'), handshakeId: hex(n.handshake_id, 'link.next.handshake_id', 8), accept };
    }
    link.lastInitMs = storedU64(s.last_init_ms, 'link.last_init_ms');
    link.lastInitSentMs = storedU64(s.last_init_sent_ms, 'link.last_init_sent_ms');
    // Rows stored before the schedule existed: a clock for no session, started (for the current
    // one) by the next upkeep, as serde's default does in Rust.
    link.clock = new Clock();
    if (s.clock !== undefined) {
      const c = storedObject(s.clock, 'link.clock');
      link.clock = new Clock(hex(c.session_id, 'link.clock.session_id', 8), storedU64(c.since_ms, 'link.clock.since_ms'), storedU64(c.rekeyed_ms, 'link.clock.rekeyed_ms'), storedU64(c.records, 'link.clock.records'));
    }
    return link;
  }
}

/** Unix milliseconds as a u64: a `number` (`Date.now()`, which a page's clock may give with a fraction) is floored. */
function millis(v: bigint | number): bigint {
  if (typeof v === 'bigint') return v;
  if (!Number.isFinite(v) || v < 0) throw new RangeError(`not a time in milliseconds: ${v}`);
  return BigInt(Math.floor(v));
}

function wrapError(err: unknown): unknown {
  if (err instanceof LinkError) return err;
  if (err instanceof EnvelopeError) return new LinkError('Envelope', err);
  if (err instanceof RecordError) return new LinkError('Record', err);
  if (err instanceof ContentError) return new LinkError('Content', err);
  if (err instanceof DeliveryError) return new LinkError('Delivery', err);
  if (err instanceof SessionError) return new LinkError('Session', err);
  return err;
}

function hex(v: unknown, what: string, len: number): Uint8Array {
  if (typeof v !== 'string' || v.length !== len * 2 || !/^[0-9a-f]*$/.test(v)) throw new StoredFormatError(`${what} is not ${len} bytes of hex`);
  return hexToBytes(v);
}

function session(v: unknown, what: string): Session {
  const o = storedObject(v, what);
  const tx = storedObject(o.tx, `${what}.tx`);
  const rx = storedObject(o.rx, `${what}.rx`);
  const w = storedObject(rx.window, `${what}.rx.window`);
  hex(o.id, `${what}.id`, 8);
  hex(tx.key, `${what}.tx.key`, 32);
  hex(rx.key, `${what}.rx.key`, 32);
  if (rx.prev_key !== null) hex(rx.prev_key, `${what}.rx.prev_key`, 32);
  for (const k of ['epoch', 'next_counter', 'reserved']) storedU64(tx[k], `${what}.tx.${k}`);
  storedU64(rx.epoch, `${what}.rx.epoch`);
  storedU64(w.next, `${what}.rx.window.next`);
  if (!Array.isArray(w.bits) || w.bits.length !== 16) throw new StoredFormatError(`${what}.rx.window.bits must hold 16 words`);
  w.bits.forEach((b, i) => storedU64(b, `${what}.rx.window.bits[${i}]`));
  return Session.fromStored(o as unknown as StoredSession);
}
