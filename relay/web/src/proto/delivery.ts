// Delivery (PROTOCOL.md §13.1–13.2, proto/src/delivery.rs): per-direction sequence numbers and
// cumulative acknowledgements, for exactly-once, in-order delivery to the application across
// reconnects and restarts — or an explicit "resync needed", never a silent gap.
//
// The sender (`Outbound`) numbers messages from 1 and keeps every one until the peer
// acknowledges it; on reconnect it resends what is unacknowledged (under new record counters).
// The receiver (`Inbound`) delivers the next expected number, drops anything at or below what it
// has delivered (a duplicate: acknowledge again), and answers a jump ahead with a `Nack` naming
// what it needs. Each data message also says the oldest number its sender still holds; if that is
// above what the receiver expects, the messages in between are gone for good (the sender's outbox
// overflowed) and the receiver reports `Receipt.resync` before going on.
//
// Both halves are plain data (`toStored` / `fromStored`, JSON-safe); a device persists them
// together with the effects of what it delivered, and before acknowledging to the relay.
import { U64_MAX, base64UrlDecode, base64UrlEncode } from './bytes.ts';

/** Outbox bounds: beyond them the oldest unacknowledged message is dropped (and the peer told, through `oldest`). */
export interface OutboxLimits {
  /** Most messages kept. */
  maxMessages: number;
  /** Most bytes kept. */
  maxBytes: number;
}

/** `OutboxLimits::default()`: 100 000 messages, 256 MiB. */
export function defaultOutboxLimits(): OutboxLimits {
  return { maxMessages: 100_000, maxBytes: 256 * 1024 * 1024 };
}

export type DeliveryErrorDetail =
  | { kind: 'ZeroSeq' }
  | { kind: 'OldestAboveSeq'; seq: bigint; oldest: bigint }
  | { kind: 'AckBeyondSent'; ack: bigint; last: bigint };

/** A peer said something impossible. Nothing changes when one is thrown. */
export class DeliveryError extends Error {
  readonly kind: DeliveryErrorDetail['kind'];
  constructor(public readonly detail: DeliveryErrorDetail) {
    super(
      detail.kind === 'ZeroSeq'
        ? 'delivery: sequence number 0 is invalid'
        : detail.kind === 'OldestAboveSeq'
          ? `delivery: oldest held (${detail.oldest}) is above the message's own number (${detail.seq})`
          : `delivery: acknowledgement ${detail.ack} is beyond the last sent message ${detail.last}`,
    );
    this.kind = detail.kind;
  }
}

/** The receiver's decision for one message. */
export type Action =
  /** Deliver it to the application. */
  | { type: 'Deliver' }
  /** Already delivered: drop it and acknowledge again. */
  | { type: 'Duplicate' }
  /** Ahead of what is expected: drop it; send a `Nack` for `expected` if `nack` (the first time this gap is seen). */
  | { type: 'Gap'; expected: bigint; nack: boolean };

/** What to do with a received data message. */
export interface Receipt {
  /** Messages `from..=to` can never arrive (the sender no longer holds them): resync before anything else. */
  resync: { from: bigint; to: bigint } | null;
  action: Action;
}

/** One queued message. `message` is never mutated (callers must not mutate what they get back either). */
export interface OutboxEntry {
  seq: bigint;
  message: Uint8Array;
}

/** Persisted form of `Outbound` (the Rust field names; u64 as decimal strings, messages as base64url). */
export interface StoredOutbound {
  next_seq: string;
  acked: string;
  unacked: { seq: string; message: string }[];
  bytes: number;
  limits: { max_messages: number; max_bytes: number };
  dropped: string;
}

/** Persisted form of `Inbound`. */
export interface StoredInbound {
  delivered: string;
  nacked: string;
}

/** The sending half. */
export class Outbound {
  private nextSeq = 1n;
  private ackedSeq = 0n;
  // A queue: items[head..] are the unacknowledged messages, oldest first.
  private items: OutboxEntry[] = [];
  private head = 0;
  private byteCount = 0;
  private droppedCount = 0n;
  readonly limits: OutboxLimits;

  /** An empty outbox. */
  constructor(limits: OutboxLimits = defaultOutboxLimits()) {
    checkLimits(limits);
    this.limits = { maxMessages: limits.maxMessages, maxBytes: limits.maxBytes };
  }

  /**
   * Queue a message; returns its sequence number. If the outbox is over its limits afterwards,
   * the oldest messages are dropped (counted in `dropped()`; the peer will be told through
   * `oldest`). The message just pushed is never dropped by its own push. The bytes are copied.
   */
  push(message: Uint8Array): bigint {
    const seq = this.nextSeq;
    this.nextSeq += 1n;
    this.byteCount += message.length;
    this.items.push({ seq, message: message.slice() });
    while (this.len() > 1 && (this.len() > this.limits.maxMessages || this.byteCount > this.limits.maxBytes)) {
      const p = this.popFront();
      this.byteCount -= p.message.length;
      this.droppedCount += 1n;
    }
    return seq;
  }

  /**
   * The peer acknowledged everything up to `ack`; forget it. Returns how many messages were
   * removed. Throws `DeliveryError` (`AckBeyondSent`) for an ack of messages never sent (nothing changes).
   */
  onAck(ack: bigint): number {
    const last = this.nextSeq - 1n;
    if (ack > last) throw new DeliveryError({ kind: 'AckBeyondSent', ack, last });
    let n = 0;
    while (this.head < this.items.length && this.items[this.head]!.seq <= ack) {
      const p = this.popFront();
      this.byteCount -= p.message.length;
      n += 1;
    }
    if (ack > this.ackedSeq) this.ackedSeq = ack;
    return n;
  }

  /** The oldest sequence number still held (the next one if none is). */
  oldest(): bigint {
    return this.head < this.items.length ? this.items[this.head]!.seq : this.nextSeq;
  }

  /** The highest acknowledged sequence number. */
  acked(): bigint {
    return this.ackedSeq;
  }

  /** Unacknowledged messages from `from` on, in order: what to (re)send. */
  unackedFrom(from: bigint): OutboxEntry[] {
    const out: OutboxEntry[] = [];
    for (let i = this.head; i < this.items.length; i++) {
      const p = this.items[i]!;
      if (p.seq >= from) out.push(p);
    }
    return out;
  }

  /** The queued message with this number, if still held. */
  get(seq: bigint): Uint8Array | undefined {
    const first = this.oldest();
    if (seq < first || seq >= this.nextSeq) return undefined;
    // Numbers in the queue are consecutive: the oldest is dropped or acknowledged first.
    const p = this.items[this.head + Number(seq - first)];
    return p && p.seq === seq ? p.message : undefined;
  }

  /** How many messages wait for an acknowledgement. */
  len(): number {
    return this.items.length - this.head;
  }

  /** True when everything sent has been acknowledged. */
  isEmpty(): boolean {
    return this.len() === 0;
  }

  /** Sum of the queued messages' lengths. */
  bytes(): number {
    return this.byteCount;
  }

  /** Messages dropped unacknowledged because the outbox overflowed. */
  dropped(): bigint {
    return this.droppedCount;
  }

  /** The next sequence number `push` hands out. */
  nextSequence(): bigint {
    return this.nextSeq;
  }

  /** An independent copy (the queued messages themselves are shared: they are never mutated). */
  clone(): Outbound {
    const c = new Outbound(this.limits);
    c.nextSeq = this.nextSeq;
    c.ackedSeq = this.ackedSeq;
    c.items = this.items.slice(this.head);
    c.byteCount = this.byteCount;
    c.droppedCount = this.droppedCount;
    return c;
  }

  private popFront(): OutboxEntry {
    const p = this.items[this.head]!;
    this.items[this.head] = undefined as unknown as OutboxEntry;
    this.head += 1;
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return p;
  }

  toStored(): StoredOutbound {
    return {
      next_seq: String(this.nextSeq),
      acked: String(this.ackedSeq),
      unacked: this.items.slice(this.head).map((p) => ({ seq: String(p.seq), message: base64UrlEncode(p.message) })),
      bytes: this.byteCount,
      limits: { max_messages: this.limits.maxMessages, max_bytes: this.limits.maxBytes },
      dropped: String(this.droppedCount),
    };
  }

  /** Throws `StoredFormatError` for anything malformed or inconsistent. */
  static fromStored(s: unknown): Outbound {
    const o = storedObject(s, 'outbound');
    const l = storedObject(o.limits, 'outbound.limits');
    const limits = { maxMessages: count(l.max_messages, 'limits.max_messages'), maxBytes: count(l.max_bytes, 'limits.max_bytes') };
    const out = new Outbound(limits);
    out.nextSeq = storedU64(o.next_seq, 'outbound.next_seq');
    out.ackedSeq = storedU64(o.acked, 'outbound.acked');
    out.droppedCount = storedU64(o.dropped, 'outbound.dropped');
    if (out.nextSeq === 0n) throw new StoredFormatError('outbound.next_seq is 0');
    if (!Array.isArray(o.unacked)) throw new StoredFormatError('outbound.unacked is not an array');
    let prev = 0n;
    let bytes = 0;
    for (const [i, raw] of o.unacked.entries()) {
      const p = storedObject(raw, `outbound.unacked[${i}]`);
      const seq = storedU64(p.seq, `outbound.unacked[${i}].seq`);
      if (seq === 0n || seq >= out.nextSeq || (prev !== 0n && seq !== prev + 1n)) {
        throw new StoredFormatError(`outbound.unacked[${i}].seq out of order`);
      }
      const message = typeof p.message === 'string' ? base64UrlDecode(p.message) : null;
      if (!message) throw new StoredFormatError(`outbound.unacked[${i}].message is not base64url`);
      out.items.push({ seq, message });
      bytes += message.length;
      prev = seq;
    }
    if (o.bytes !== undefined && o.bytes !== bytes) throw new StoredFormatError('outbound.bytes does not match the queued messages');
    out.byteCount = bytes;
    return out;
  }
}

/** The receiving half. */
export class Inbound {
  private delivered = 0n;
  /**
   * The last `expected` a Nack was requested for: one Nack per gap, not one per out-of-order
   * message (a burst after a loss would otherwise make the sender resend the burst once per message).
   */
  private nacked = 0n;

  /** Allow the next gap to be Nacked again (call on a timer while a gap persists). */
  forgetNack(): void {
    this.nacked = 0n;
  }

  /** The cumulative acknowledgement to send: everything up to here was delivered. */
  ack(): bigint {
    return this.delivered;
  }

  /**
   * Decide about message `seq` whose sender still holds everything from `oldest`. A gap whose
   * Nack was lost is filled by the sender's resend on reconnect, or by the caller asking again
   * (`forgetNack`). Throws `DeliveryError` for impossible numbers (nothing changes).
   */
  onData(seq: bigint, oldest: bigint): Receipt {
    if (seq === 0n) throw new DeliveryError({ kind: 'ZeroSeq' });
    if (oldest > seq) throw new DeliveryError({ kind: 'OldestAboveSeq', seq, oldest });
    if (seq <= this.delivered) return { resync: null, action: { type: 'Duplicate' } };
    let resync: Receipt['resync'] = null;
    if (oldest > this.delivered + 1n) {
      resync = { from: this.delivered + 1n, to: oldest - 1n };
      this.delivered = oldest - 1n;
    }
    let action: Action;
    if (seq === this.delivered + 1n) {
      this.delivered = seq;
      action = { type: 'Deliver' };
    } else {
      const expected = this.delivered + 1n;
      const nack = this.nacked !== expected;
      this.nacked = expected;
      action = { type: 'Gap', expected, nack };
    }
    return { resync, action };
  }

  clone(): Inbound {
    const c = new Inbound();
    c.delivered = this.delivered;
    c.nacked = this.nacked;
    return c;
  }

  toStored(): StoredInbound {
    return { delivered: String(this.delivered), nacked: String(this.nacked) };
  }

  /** `nacked` may be missing (serde default, 0). Throws `StoredFormatError`. */
  static fromStored(s: unknown): Inbound {
    const o = storedObject(s, 'inbound');
    const i = new Inbound();
    i.delivered = storedU64(o.delivered, 'inbound.delivered');
    i.nacked = o.nacked === undefined ? 0n : storedU64(o.nacked, 'inbound.nacked');
    return i;
  }
}

// ---- stored-form helpers (shared with link.ts) ----

/** A persisted `Outbound` / `Inbound` / `Link` that cannot be loaded. */
export class StoredFormatError extends Error {
  constructor(what: string) {
    super(`stored state: ${what}`);
  }
}

/** @internal */
export function storedObject(v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new StoredFormatError(`${what} is not an object`);
  return v as Record<string, unknown>;
}

/** @internal A u64 stored as a canonical decimal string. */
export function storedU64(v: unknown, what: string): bigint {
  if (typeof v !== 'string' || !/^(0|[1-9][0-9]{0,19})$/.test(v)) throw new StoredFormatError(`${what} is not a u64 string`);
  const n = BigInt(v);
  if (n > U64_MAX) throw new StoredFormatError(`${what} is above 2^64 - 1`);
  return n;
}

function count(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new StoredFormatError(`${what} is not a count`);
  return v;
}

function checkLimits(l: OutboxLimits): void {
  for (const [k, v] of Object.entries(l)) {
    if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`outbox limit ${k} must be a non-negative integer`);
  }
}
