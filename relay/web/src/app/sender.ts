// Records sealed for one desktop that the relay has not accepted yet
// (PROTOCOL §6.5: `Ok` means the relay took responsibility for the record).
// A record the relay refused (`queue_full`, `rate_limited`, `internal`, …),
// that timed out, or that could not be written while the socket was up is
// sent again on a timer with a bounded backoff until the relay `Ok`s it, not
// only on the next reconnection. On the desktop's `Presence` and after a
// reconnection to the same relay store, only these records go out again:
// what the relay accepted is in its durable queue already (a desktop that
// flaps does not fill its queue with copies). Sans DOM; the timers are
// injectable for tests.
import type { DeviceId } from '../proto/index.ts';

/** The first retry after a failure, in milliseconds (then doubling, with jitter). */
export const RETRY_MIN_MS = 500;
/** The longest wait between two retries, in milliseconds. */
export const RETRY_MAX_MS = 30_000;
/**
 * Most records kept waiting for the relay. Past it the oldest are dropped:
 * a data message among them stays in the link's outbox until the desktop
 * acknowledges it, so the next `resend(0)` (a relay whose store changed) or
 * the desktop's Nack carries it again.
 */
export const MAX_WAITING = 1024;

/** What a `Sender` needs from the relay connection. */
export interface SendPort {
  /** Resolves on the relay's `Ok`; rejects with a `RelayError` (`code`, `message`). */
  send(to: DeviceId, payload: Uint8Array): Promise<void>;
}

/** Why the relay has not accepted the oldest waiting record. */
export interface Refusal {
  /** The relay's error code name (§5.1), or `offline` / `timeout`. */
  code: string;
  message: string;
  /** Records waiting. */
  waiting: number;
  /** When the next try is due (ms since the epoch), or null (waits for the connection). */
  retryAt: number | null;
}

/** A refusal that retrying cannot cure: the record is given up (its message stays in the link's outbox). */
const HOPELESS = new Set(['frame_too_large', 'malformed_frame']);

interface Waiting {
  record: Uint8Array;
  inFlight: boolean;
  /** A bare acknowledgement: a newer one covers it (acks are cumulative, §13.2). */
  ack: boolean;
}

/** The timers a `Sender` uses (the page's, or a test's). */
export interface Timers {
  set(f: () => void, ms: number): unknown;
  clear(t: unknown): void;
  now(): number;
}

const PAGE_TIMERS: Timers = {
  set: (f, ms) => setTimeout(f, ms),
  clear: (t) => clearTimeout(t as ReturnType<typeof setTimeout>),
  now: () => Date.now(),
};

/** The records for one desktop that the relay has not accepted, retried until it does. */
export class Sender {
  private waiting: Waiting[] = [];
  private timer: unknown = null;
  private failures = 0;
  /** Why the relay has not accepted what is waiting (null: nothing refused). */
  refusal: Refusal | null = null;
  /** Records given up because the relay can never accept them. */
  givenUp = 0;

  constructor(
    private readonly port: SendPort,
    private readonly to: DeviceId,
    /** Called when `refusal` or `givenUp` changed (the notices). */
    private readonly changed: () => void = () => undefined,
    private readonly timers: Timers = PAGE_TIMERS,
  ) {}

  /** Records not accepted by the relay yet. */
  get pending(): number {
    return this.waiting.length;
  }

  /**
   * Send records (in order); each is kept until the relay accepts it. `ack`:
   * they are bare acknowledgements, which replace any older one still
   * waiting (not on its way): a newer ack says all an older one said.
   */
  push(records: Uint8Array[], ack = false): void {
    if (ack && records.length) this.waiting = this.waiting.filter((w) => !w.ack || w.inFlight);
    for (const record of records) {
      const w = { record, inFlight: false, ack };
      this.waiting.push(w);
      this.attempt(w);
    }
    while (this.waiting.length > MAX_WAITING) this.waiting.shift();
  }

  /** Send again, now, everything the relay has not accepted (a reconnection, the desktop's Presence). */
  retry(): void {
    if (this.timer !== null) this.timers.clear(this.timer);
    this.timer = null;
    for (const w of [...this.waiting]) this.attempt(w);
  }

  /** Stop the timer (the desktop is forgotten, the tab stepped aside). */
  stop(): void {
    if (this.timer !== null) this.timers.clear(this.timer);
    this.timer = null;
    this.waiting = [];
  }

  private attempt(w: Waiting): void {
    if (w.inFlight) return;
    w.inFlight = true;
    this.port.send(this.to, w.record).then(
      () => this.accepted(w),
      (e: unknown) => this.failed(w, e),
    );
  }

  private accepted(w: Waiting): void {
    const i = this.waiting.indexOf(w);
    if (i >= 0) this.waiting.splice(i, 1);
    this.failures = 0;
    if (this.waiting.length === 0 && this.refusal) {
      this.refusal = null;
      if (this.timer !== null) this.timers.clear(this.timer);
      this.timer = null;
      this.changed();
    } else if (this.refusal) {
      this.refusal = { ...this.refusal, waiting: this.waiting.length };
      this.changed();
    }
  }

  private failed(w: Waiting, e: unknown): void {
    w.inFlight = false;
    const at = this.waiting.indexOf(w);
    if (at < 0) return;
    const err = e as { code?: unknown; message?: unknown } | null;
    const code = typeof err?.code === 'string' ? err.code : 'other';
    const message = typeof err?.message === 'string' ? err.message : String(e);
    if (HOPELESS.has(code)) {
      this.waiting.splice(at, 1);
      this.givenUp++;
      this.changed();
      return;
    }
    // An ack that a newer waiting ack covers is not worth sending again.
    if (w.ack && this.waiting.some((x, i) => i > at && x.ack)) {
      this.waiting.splice(at, 1);
      if (this.waiting.length === 0) {
        this.refusal = null;
        this.changed();
        return;
      }
    }
    this.failures++;
    // Full jitter over a doubling cap: many pages refused at once do not
    // come back at once.
    const cap = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** Math.min(this.failures - 1, 16));
    const wait = Math.max(RETRY_MIN_MS / 2, Math.random() * cap);
    if (this.timer === null) {
      this.timer = this.timers.set(() => {
        this.timer = null;
        this.retry();
      }, wait);
      this.refusal = { code, message, waiting: this.waiting.length, retryAt: this.timers.now() + wait };
    } else {
      this.refusal = { code, message, waiting: this.waiting.length, retryAt: this.refusal?.retryAt ?? null };
    }
    this.changed();
  }
}
