// When a link renews its session and rekeys: the schedule every endpoint runs (PROTOCOL.md §10.6,
// proto/src/upkeep.rs), sans I/O.
//
// The caller owns the timer. It calls `Link.upkeep` with the time (Unix milliseconds, its own
// clock) and whether the peer is online, every few seconds and whenever the peer comes online,
// then:
//
// 1. if `upkeepMustPersist(done)`, durably persists the link;
// 2. sends `done.renewal` (a `SessionInit` envelope), if any, to the peer.
//
// The link keeps what the schedule needs (`Clock`) in its persisted state, so the schedule
// survives restarts. A renewal in progress does not: after a restart the answer to it is refused
// and a new renewal starts.
import { MAX_COUNTER } from './record.ts';

/** The default age after which a session is renewed: one hour. */
export const DEFAULT_RENEW_AFTER_MS = 3_600_000;
/** The default number of records (sealed plus opened) after which a session is renewed. */
export const DEFAULT_RENEW_AFTER_RECORDS = 50_000;
/** The default interval of time-based rekeying: one hour. */
export const DEFAULT_REKEY_AFTER_MS = 3_600_000;
/** The default time a renewal may wait for its answer before it is abandoned (and the earliest another one starts). */
export const DEFAULT_RENEWAL_TIMEOUT_MS = 30_000;
/** Counters left in a session when it is renewed whatever its age. */
export const EXHAUSTION_MARGIN = MAX_COUNTER / 4n;

/** When to renew and rekey. Every field is in milliseconds or records. */
export interface Schedule {
  /** Renew a session this old (by this device's clock, from when it first saw the session as current). */
  renewAfterMs: number;
  /** Renew a session after this many records sealed or opened under it. */
  renewAfterRecords: number;
  /** Ratchet the sending key (`rekeyNow`) this often. */
  rekeyAfterMs: number;
  /** Abandon a renewal that got no answer within this; also the least time between two renewals this device starts. */
  renewalTimeoutMs: number;
}

/** The defaults of §10.6 (`Schedule::default()`). */
export function defaultSchedule(): Schedule {
  return {
    renewAfterMs: DEFAULT_RENEW_AFTER_MS,
    renewAfterRecords: DEFAULT_RENEW_AFTER_RECORDS,
    rekeyAfterMs: DEFAULT_REKEY_AFTER_MS,
    renewalTimeoutMs: DEFAULT_RENEWAL_TIMEOUT_MS,
  };
}

/** What one call of `Link.upkeep` did. */
export interface Upkeep {
  /** A `SessionInit` to send to the peer, after persisting the link. */
  renewal: Uint8Array | null;
  /** The sending key was ratcheted (its old value is gone from memory; persist to erase it from storage). */
  rekeyed: boolean;
  /** A renewal that got no answer in time was abandoned. */
  abandoned: boolean;
  /** The persisted state changed: persist before sending anything sealed under the link (and before `renewal`). */
  changed: boolean;
}

/** Whether the link must be persisted now (`Upkeep::must_persist`). */
export function upkeepMustPersist(u: Upkeep): boolean {
  return u.changed || u.rekeyed || u.renewal !== null;
}

/** Persisted form of a `Clock` (the Rust field names; JSON-safe). */
export interface StoredClock {
  /** Hex, 8 bytes. */
  session_id: string;
  since_ms: string;
  rekeyed_ms: string;
  records: string;
}

/** The schedule's persisted state, kept in the link. */
export class Clock {
  constructor(
    /** The session `sinceMs` is about; when the link's current session is another one, the clock starts again. */
    public sessionId: Uint8Array = new Uint8Array(8),
    /** When this device first saw the session as current (0: not yet). */
    public sinceMs = 0n,
    /** When the sending key was last ratcheted by time (or `sinceMs`). */
    public rekeyedMs = 0n,
    /** Records sealed or opened under the session. */
    public records = 0n,
  ) {}

  /** A clock for a session this device has just switched to; started by the next upkeep. */
  static forSession(sessionId: Uint8Array): Clock {
    return new Clock(sessionId.slice());
  }

  /** Start (or restart) the clock at `nowMs` when the session changed, was never timed, or the clock went back. Returns whether it changed. */
  start(sessionId: Uint8Array, nowMs: bigint): boolean {
    if (!sameId(this.sessionId, sessionId)) {
      this.sessionId = sessionId.slice();
      this.sinceMs = 0n;
      this.rekeyedMs = 0n;
      this.records = 0n;
    }
    if (this.sinceMs === 0n || this.sinceMs > nowMs) {
      this.sinceMs = nowMs;
      this.rekeyedMs = nowMs;
      return true;
    }
    if (this.rekeyedMs > nowMs) {
      this.rekeyedMs = nowMs;
      return true;
    }
    return false;
  }

  /** Count one record sealed or opened under the current session. */
  count(): void {
    if (this.records < (1n << 64n) - 1n) this.records++;
  }

  /** How long the session has been current. */
  ageMs(nowMs: bigint): bigint {
    return nowMs > this.sinceMs ? nowMs - this.sinceMs : 0n;
  }
}

/** What the link remembers about its own renewals between calls (not persisted). */
export interface Attempt {
  /** When the pending renewal was started. */
  pendingSinceMs: bigint | null;
  /** When this device last started a renewal. */
  lastStartMs: bigint | null;
}

function sameId(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
