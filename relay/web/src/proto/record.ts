// Record layer (PROTOCOL.md §11, proto/src/record.rs + replay.rs): ChaCha20-Poly1305 with an
// explicit counter nonce, the 18-byte header as associated data, per-epoch key ratchet,
// counter reservation and a 1024-bit replay window.
import { chacha20poly1305 } from '@noble/ciphers/chacha.js';
import { bytesToHex, concat, equalBytes, hexToBytes, u64le } from './bytes.ts';
import { type Envelope, RECORD_HEADER_LEN, TAG_LEN, decodeEnvelope, recordHeader } from './envelope.ts';
import { MAX_PAYLOAD_LEN } from './frame.ts';

export const REKEY_INTERVAL = 1n << 20n;
export const MAX_COUNTER = 1n << 62n;
export const MAX_EPOCH_SKIP = 1n << 12n;
export const COUNTER_RESERVATION = 1n << 12n;
export const MAX_PLAINTEXT_LEN = MAX_PAYLOAD_LEN - RECORD_HEADER_LEN - TAG_LEN;
export const WINDOW_BITS = 1024n;

export type RecordErrorKind =
  | 'Exhausted'
  | 'PlaintextTooLarge'
  | 'WrongSession'
  | 'Duplicate'
  | 'TooOld'
  | 'TooFarAhead'
  | 'Decrypt'
  | 'NotARecord';

export class RecordError extends Error {
  constructor(public readonly kind: RecordErrorKind, detail = '') {
    super(`record: ${kind}${detail ? ` (${detail})` : ''}`);
  }
}

/** Noise nonce: 4 zero bytes ‖ u64le(counter). */
export function noiseNonce(counter: bigint): Uint8Array {
  return concat(new Uint8Array(4), u64le(counter));
}

/** Noise REKEY: ChaCha20-Poly1305-Encrypt(k, nonce 2^64-1, ad "", 0^32)[0..32]. */
export function rekey(key: Uint8Array): Uint8Array {
  const out = chacha20poly1305(key, noiseNonce((1n << 64n) - 1n), new Uint8Array(0)).encrypt(new Uint8Array(32));
  return out.slice(0, 32);
}

export class ReplayWindow {
  next = 0n;
  bits = new Array<bigint>(16).fill(0n);

  highest(): bigint | null {
    return this.next === 0n ? null : this.next - 1n;
  }
  /** Never changes state. */
  check(c: bigint): RecordErrorKind | null {
    if (c >= this.next) return null;
    if (this.next - c > WINDOW_BITS) return 'TooOld';
    return this.bit(c) ? 'Duplicate' : null;
  }
  accept(c: bigint): void {
    if (c >= this.next) {
      const advance = c - this.next + 1n;
      if (advance >= WINDOW_BITS) this.bits.fill(0n);
      else for (let x = this.next; x <= c; x++) this.setBit(x, false);
      this.next = c + 1n;
    }
    this.setBit(c, true);
  }
  private bit(c: bigint): boolean {
    const i = Number((c % WINDOW_BITS) / 64n);
    return ((this.bits[i]! >> (c % 64n)) & 1n) === 1n;
  }
  private setBit(c: bigint, on: boolean): void {
    const i = Number((c % WINDOW_BITS) / 64n);
    const m = 1n << (c % 64n);
    this.bits[i] = on ? this.bits[i]! | m : this.bits[i]! & ~m;
  }
}

/** Persisted form (JSON-safe: bigints and bytes as strings). */
export interface StoredSession {
  id: string;
  tx: { key: string; epoch: string; next_counter: string; reserved: string };
  rx: { key: string; epoch: string; prev_key: string | null; window: { next: string; bits: string[] } };
}

export class Session {
  private txKey: Uint8Array;
  private txEpoch = 0n;
  private txNext = 0n;
  private txReserved = 0n;
  private dirty = false;
  private rxKey: Uint8Array;
  private rxEpoch = 0n;
  private rxPrev: Uint8Array | null = null;
  private window = new ReplayWindow();

  constructor(
    public readonly id: Uint8Array,
    tx: Uint8Array,
    rx: Uint8Array,
  ) {
    if (id.length !== 8 || tx.length !== 32 || rx.length !== 32) throw new RangeError('bad session key sizes');
    this.txKey = tx.slice();
    this.rxKey = rx.slice();
  }

  nextCounter(): bigint {
    return this.txNext;
  }
  /** The sending key's epoch: `nextCounter / REKEY_INTERVAL` once a record was sealed in it (every rekey advances it). */
  sendEpoch(): bigint {
    return this.txEpoch;
  }
  needsRenewal(margin: bigint): boolean {
    return this.txNext + margin >= MAX_COUNTER;
  }
  mustPersist(): boolean {
    return this.dirty;
  }
  markPersisted(): void {
    this.dirty = false;
  }

  seal(plaintext: Uint8Array): Uint8Array {
    if (plaintext.length > MAX_PLAINTEXT_LEN) throw new RecordError('PlaintextTooLarge', String(plaintext.length));
    const c = this.txNext;
    if (c >= MAX_COUNTER) throw new RecordError('Exhausted');
    const epoch = c / REKEY_INTERVAL;
    while (this.txEpoch < epoch) {
      this.txKey = rekey(this.txKey);
      this.txEpoch++;
    }
    if (c >= this.txReserved) {
      this.txReserved = c + COUNTER_RESERVATION < MAX_COUNTER ? c + COUNTER_RESERVATION : MAX_COUNTER;
      this.dirty = true;
    }
    const header = recordHeader(this.id, c);
    const ct = chacha20poly1305(this.txKey, noiseNonce(c), header).encrypt(plaintext);
    this.txNext = c + 1n;
    return concat(header, ct);
  }

  rekeyNow(): void {
    if (this.txNext <= this.txEpoch * REKEY_INTERVAL) return;
    const e1 = (this.txEpoch + 1n) * REKEY_INTERVAL;
    const n = e1 < MAX_COUNTER ? e1 : MAX_COUNTER;
    this.txNext = n;
    while (this.txEpoch < n / REKEY_INTERVAL) {
      this.txKey = rekey(this.txKey);
      this.txEpoch++;
    }
    if (n >= this.txReserved) {
      this.txReserved = n;
      this.dirty = true;
    }
  }

  /** Opens a Record envelope (bytes or decoded). A record that fails changes no state. */
  open(envelope: Uint8Array | Envelope): Uint8Array {
    const env = envelope instanceof Uint8Array ? decodeEnvelope(envelope) : envelope;
    if (env.kind !== 'Record') throw new RecordError('NotARecord');
    if (!equalBytes(env.sessionId, this.id)) throw new RecordError('WrongSession');
    const c = env.counter;
    if (c >= MAX_COUNTER) throw new RecordError('TooFarAhead');
    const replay = this.window.check(c);
    if (replay) throw new RecordError(replay, String(c));
    const epoch = c / REKEY_INTERVAL;
    let key: Uint8Array;
    let prev: Uint8Array | null = null;
    let ratchet = false;
    if (epoch === this.rxEpoch) key = this.rxKey;
    else if (epoch + 1n === this.rxEpoch) {
      if (!this.rxPrev) throw new RecordError('TooOld', String(c));
      key = this.rxPrev;
    } else if (epoch > this.rxEpoch) {
      if (epoch - this.rxEpoch > MAX_EPOCH_SKIP) throw new RecordError('TooFarAhead');
      let k = this.rxKey;
      prev = k;
      for (let e = this.rxEpoch; e < epoch; e++) {
        prev = k;
        k = rekey(k);
      }
      key = k;
      ratchet = true;
    } else throw new RecordError('TooOld', String(c));
    let pt: Uint8Array;
    try {
      pt = chacha20poly1305(key, noiseNonce(c), recordHeader(this.id, c)).decrypt(env.ciphertext);
    } catch {
      throw new RecordError('Decrypt');
    }
    this.window.accept(c);
    if (ratchet) {
      this.rxPrev = prev;
      this.rxKey = key;
      this.rxEpoch = epoch;
    }
    this.prunePrevKey();
    return pt;
  }

  private prunePrevKey(): void {
    const high = this.window.highest();
    if (high === null) return;
    const start = this.rxEpoch * REKEY_INTERVAL;
    const low = high > WINDOW_BITS ? high - WINDOW_BITS : 0n;
    if (low >= start && this.rxPrev) {
      this.rxPrev.fill(0);
      this.rxPrev = null;
    }
  }

  /** Persisted form (tx: key, epoch, next_counter, reserved; rx: key, epoch, prev_key, window). */
  toStored(): StoredSession {
    return {
      id: bytesToHex(this.id),
      tx: { key: bytesToHex(this.txKey), epoch: String(this.txEpoch), next_counter: String(this.txNext), reserved: String(this.txReserved) },
      rx: {
        key: bytesToHex(this.rxKey),
        epoch: String(this.rxEpoch),
        prev_key: this.rxPrev ? bytesToHex(this.rxPrev) : null,
        window: { next: String(this.window.next), bits: this.window.bits.map(String) },
      },
    };
  }

  /** Loading resumes past the stored reservation and re-ratchets the key (§11.5). */
  static fromStored(s: StoredSession): Session {
    if (s.rx.window.bits.length !== 16) throw new Error('replay window must hold 16 words');
    const out = new Session(hexToBytes(s.id), hexToBytes(s.tx.key), hexToBytes(s.rx.key));
    out.txEpoch = BigInt(s.tx.epoch);
    const a = BigInt(s.tx.next_counter);
    const b = BigInt(s.tx.reserved);
    const n = a > b ? a : b;
    out.txNext = n;
    out.txReserved = n;
    while (out.txEpoch < n / REKEY_INTERVAL) {
      out.txKey = rekey(out.txKey);
      out.txEpoch++;
    }
    out.rxEpoch = BigInt(s.rx.epoch);
    out.rxPrev = s.rx.prev_key === null ? null : hexToBytes(s.rx.prev_key);
    out.window.next = BigInt(s.rx.window.next);
    out.window.bits = s.rx.window.bits.map((x) => BigInt(x));
    return out;
  }
}
