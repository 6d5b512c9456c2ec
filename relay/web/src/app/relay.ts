// The relay connection (PROTOCOL §4–§7), as tandem-client does it: Hello,
// Challenge, Auth; pings; Send/Ok; Deliver/Ack; reconnect with full-jitter
// backoff; a probe after the page wakes up. It speaks protocol level 2: the
// relay may answer Sends with one `Oks` for many. Deliveries are handed to the app
// one at a time and acknowledged only once the app has saved them.
import {
  DeviceId,
  type DeviceKey,
  type Frame,
  LEVEL,
  decodeFrame,
  encodeFrame,
  errorCodeFromClose,
  errorCodeName,
  prove,
} from '../proto/index.ts';
import { LEVEL_PUSH, type PushSubscription, encodePushFrame } from '../proto/push_frames.ts';

/** Where the connection stands, for the banner. */
export type ConnState =
  | { kind: 'connecting'; attempt: number }
  | { kind: 'online' }
  | { kind: 'waiting'; retryAt: number; reason: string; offline: boolean }
  | { kind: 'stopped'; code: string; reason: string };

/** What the connection reports to the app. */
export interface RelayHandlers {
  state(s: ConnState): void;
  /**
   * Authenticated. `storeChanged`: the relay's store is not the one the
   * last connection saw (its `AuthOk` store epoch differs, or none is known:
   * the page's first connection, or a relay that sends no epoch), so what
   * it accepted before may be gone and everything unacknowledged must go
   * again; false: only what it did not accept.
   */
  connected(storeChanged: boolean): void;
  /** The relay reported something that answers no request (an `Error` with `ref_id` 0). */
  notice(code: string, message: string): void;
  /**
   * Records in delivery order. Resolve with how many, from the front, are
   * saved: those are acknowledged; the rest are delivered again.
   */
  deliver(batch: Array<{ from: DeviceId; payload: Uint8Array }>): Promise<number>;
  presence(peer: DeviceId, online: boolean): void;
  pairMessage(pairingId: Uint8Array, peer: DeviceId, payload: Uint8Array): void;
}

/** A request the relay refused, or that could not be sent. */
export class RelayError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 30_000;
const STABLE_MS = 10_000;
const PONG_TIMEOUT_MS = 10_000;
const WAKE_PONG_TIMEOUT_MS = 3_000;
const WAKE_SAMPLE_MS = 2_000;
const WAKE_JUMP_MS = 10_000;
const HANDSHAKE_TIMEOUT_MS = 10_000;
const REQUEST_TIMEOUT_MS = 10_000;
/** Most deliveries handed to the app (and saved) at once. */
const DELIVERY_BATCH = 128;

/** Codes after which reconnecting cannot help. */
const FINAL = new Set(['revoked', 'auth_failed', 'unsupported_version', 'replaced']);

/** ws(s)://host/v1/connect for an http(s) origin. */
export function connectUrl(origin: string): string {
  return `${origin.replace(/^http/, 'ws')}/v1/connect`;
}

function jitter(ms: number): number {
  return ms * (0.8 + Math.random() * 0.4);
}

function randomU64(): bigint {
  const b = crypto.getRandomValues(new Uint8Array(8));
  return new DataView(b.buffer).getBigUint64(0);
}

interface Pending {
  /** A Send (which an `Oks` may answer), not another request. */
  send: boolean;
  resolve(): void;
  reject(e: RelayError): void;
  timer: ReturnType<typeof setTimeout>;
}

/** One relay connection that keeps itself up. */
export class RelayClient {
  private ws: WebSocket | null = null;
  private authed = false;
  private stopped = false;
  /** Stopped (by `stop()` or a final error) until `start()`. */
  get halted(): boolean {
    return this.stopped;
  }
  private attempt = 0;
  private connectedAt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private pingTimer: ReturnType<typeof setTimeout> | null = null;
  private pongTimer: ReturnType<typeof setTimeout> | null = null;
  private pingIntervalMs = 30_000;
  private nextId = 1n;
  private pending = new Map<bigint, Pending>();
  private waiters: Array<{ ok(): void; fail(e: RelayError): void }> = [];
  /** Deliveries for the app, each with the store epoch its id belongs to. */
  private inbox: Array<{ id: bigint; from: DeviceId; payload: Uint8Array; epoch: bigint | null }> = [];
  private pumping = false;
  /** Highest delivery id queued for the app (or acknowledged), in `epoch`. */
  private queuedUpTo = 0n;
  private acked = 0n;
  /**
   * The relay's store epoch from the last AuthOk (PROTOCOL §6.6): delivery
   * ids compare only within one epoch, so the cursor restarts when it changes.
   */
  private epoch: bigint | null = null;
  private restartHintMs: number | null = null;
  /** The store epoch of the last `AuthOk` (undefined: none seen, or the relay sends none). */
  private storeEpoch: unknown = undefined;
  private wakeTimer: ReturnType<typeof setInterval> | null = null;
  private lastWall = Date.now();
  private lastMono = performance.now();
  private generation = 0;
  private readonly dialed: string;
  private readonly url: string;
  /** This device's id, which `AuthOk` must name. */
  private readonly deviceId: DeviceId;
  private readonly onOnline = (): void => this.retryNow();
  private readonly onVisible = (): void => {
    this.sendActive();
    if (document.visibilityState === 'visible') this.probe();
  };
  /**
   * The relay sends push notifications (its `GET /v1/push` answered): it hears `Active` when the
   * page is hidden or shown, so it pushes only while nobody looks at the page (level 3).
   */
  private pushCapable = false;

  /** The relay serves push (`GET /v1/push` answered): from now on it hears `Active`. */
  speaksPush(): void {
    if (this.pushCapable) return;
    this.pushCapable = true;
    this.sendActive(true);
  }

  constructor(
    readonly origin: string,
    private readonly key: DeviceKey,
    private readonly handlers: RelayHandlers,
  ) {
    this.url = connectUrl(origin);
    this.dialed = new URL(this.url).host;
    this.deviceId = key.public().deviceId();
  }

  /** Connect, and keep connecting until stopped. */
  start(): void {
    if (!this.stopped && this.ws) return;
    this.stopped = false;
    this.unlisten();
    addEventListener('online', this.onOnline);
    document.addEventListener('visibilitychange', this.onVisible);
    this.wakeTimer = setInterval(() => this.sampleClocks(), WAKE_SAMPLE_MS);
    this.open();
  }

  /** Close for good (until start()). */
  stop(): void {
    this.stopped = true;
    this.unlisten();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.drop('stopped', 1000);
  }

  private unlisten(): void {
    removeEventListener('online', this.onOnline);
    document.removeEventListener('visibilitychange', this.onVisible);
    if (this.wakeTimer) clearInterval(this.wakeTimer);
    this.wakeTimer = null;
  }

  get online(): boolean {
    return this.authed;
  }

  /** Reconnect now if waiting in backoff. */
  retryNow(): void {
    if (this.stopped || this.ws) return;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.open();
  }

  /** A record for `to`; resolves on the relay's Ok. */
  send(to: DeviceId, payload: Uint8Array): Promise<void> {
    return this.request((sendId) => ({ type: 'Send', sendId, to, payload }), false);
  }

  /** Claim a pairing mailbox (waits for the connection). */
  pairClaim(pairingId: Uint8Array, payload: Uint8Array): Promise<void> {
    return this.request((requestId) => ({ type: 'PairClaim', requestId, pairingId, payload }), true);
  }

  /** A message into a claimed pairing mailbox. */
  pairMessage(pairingId: Uint8Array, peer: DeviceId, payload: Uint8Array): void {
    this.write({ type: 'PairMessage', pairingId, peer, payload });
  }

  /** Stop `peer` from sending to this device (forgetting it). */
  revoke(peer: DeviceId): Promise<void> {
    return this.request((requestId) => ({ type: 'Revoke', requestId, peer }), false);
  }

  /**
   * Register (or, with `remove`, drop) this device's push subscription with the relay
   * (`PushSubscribe`, level 3); waits for the connection; resolves on the relay's Ok.
   */
  pushSubscribe(sub: PushSubscription): Promise<void> {
    return this.request((requestId) => encodePushFrame({ type: 'PushSubscribe', requestId, sub }), true);
  }

  /** Tell a push-capable relay whether the page is in view (`Active`; a connection starts active). */
  private sendActive(initial = false): void {
    if (!this.pushCapable || !this.authed) return;
    const active = document.visibilityState !== 'hidden';
    if (initial && active) return;
    this.write(encodePushFrame({ type: 'Active', active }));
  }

  /** Let `peer` send to this device. */
  authorize(peer: DeviceId): Promise<void> {
    return this.request((requestId) => ({ type: 'Authorize', requestId, peer }), true);
  }

  private async request(make: (id: bigint) => Frame | Uint8Array, wait: boolean): Promise<void> {
    if (!this.authed) {
      if (!wait) throw new RelayError('offline', 'not connected to the relay');
      await this.whenOnline(REQUEST_TIMEOUT_MS);
    }
    const id = this.nextId++;
    const frame = make(id);
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new RelayError('timeout', 'the relay did not answer'));
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(id, { send: !(frame instanceof Uint8Array) && frame.type === 'Send', resolve, reject, timer });
      if (!this.write(frame)) {
        clearTimeout(timer);
        this.pending.delete(id);
        reject(new RelayError('offline', 'not connected to the relay'));
      }
    });
  }

  private whenOnline(ms: number): Promise<void> {
    if (this.authed) return Promise.resolve();
    this.retryNow();
    return new Promise((resolve, reject) => {
      const w = {
        ok: (): void => {
          clearTimeout(t);
          resolve();
        },
        fail: (e: RelayError): void => {
          clearTimeout(t);
          reject(e);
        },
      };
      const t = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(new RelayError('unreachable', `cannot reach the relay at ${this.origin}`));
      }, ms);
      this.waiters.push(w);
    });
  }

  private write(f: Frame | Uint8Array): boolean {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send((f instanceof Uint8Array ? f : encodeFrame(f)) as Uint8Array<ArrayBuffer>);
    return true;
  }

  private open(): void {
    if (this.stopped) return;
    this.attempt++;
    this.handlers.state({ kind: 'connecting', attempt: this.attempt });
    const gen = ++this.generation;
    let ws: WebSocket;
    try {
      ws = new WebSocket(this.url);
    } catch (e) {
      this.scheduleRetry(`cannot open ${this.url}: ${String(e)}`);
      return;
    }
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    const handshake = setTimeout(() => {
      if (gen === this.generation && !this.authed) this.drop('the relay did not finish the handshake', 4000 + 18);
    }, HANDSHAKE_TIMEOUT_MS);
    ws.onopen = () => {
      if (gen !== this.generation) return;
      // Level 3 adds only the push frames (sent only to a relay that serves `GET /v1/push`); a
      // relay at level 2 settles on 2.
      this.write({ type: 'Hello', minVersion: 1, maxVersion: Math.max(LEVEL, LEVEL_PUSH), role: 'phone' });
    };
    ws.onmessage = (m) => {
      if (gen !== this.generation || !(m.data instanceof ArrayBuffer)) return;
      let f: Frame;
      try {
        f = decodeFrame(new Uint8Array(m.data));
      } catch (e) {
        this.drop(`a malformed frame from the relay: ${String(e)}`, 4000 + 3);
        return;
      }
      this.alive();
      this.onFrame(f, handshake);
    };
    ws.onclose = (c) => {
      clearTimeout(handshake);
      if (gen !== this.generation) return;
      const code = errorCodeFromClose(c.code);
      const name = code === null ? '' : errorCodeName(code);
      this.lost(name, c.reason || (name ? name.replace(/_/g, ' ') : `connection closed (${c.code})`));
    };
    ws.onerror = () => undefined;
  }

  private onFrame(f: Frame, handshake: ReturnType<typeof setTimeout>): void {
    switch (f.type) {
      case 'Challenge': {
        try {
          this.ws?.send(prove(this.key, 'phone', this.dialed, f) as Uint8Array<ArrayBuffer>);
        } catch (e) {
          // The relay answered for another name (or with a bad key):
          // retrying cannot help.
          this.stopWith('wrong_relay', `the relay at ${this.origin} is not the relay this link names: ${String(e)}`);
        }
        return;
      }
      case 'AuthOk': {
        clearTimeout(handshake);
        if (!f.deviceId.equals(this.deviceId)) {
          // The relay says it authenticated another device (§6.1): it is
          // broken or hostile. Nothing is sent or taken on this connection;
          // close it and try again later, as tandem-client does.
          this.drop(`the relay confirmed device ${f.deviceId}, not this device (${this.deviceId})`, 1000);
          return;
        }
        this.authed = true;
        this.connectedAt = Date.now();
        this.resetCursorOnNewEpoch(f.storeEpoch);
        this.pingIntervalMs = Math.max(1000, f.pingIntervalMs);
        this.schedulePing();
        this.handlers.state({ kind: 'online' });
        for (const w of this.waiters.splice(0)) w.ok();
        this.sendActive(true);
        this.handlers.connected(!this.sameStore(f));
        return;
      }
      case 'Deliver': {
        const { deliveryId, from, payload } = f;
        if (deliveryId <= this.acked) {
          // Processed already; the ack was lost with a connection.
          this.write({ type: 'Ack', upTo: this.acked });
          return;
        }
        // A redelivery of what is still waiting in the inbox.
        if (deliveryId <= this.queuedUpTo) return;
        this.queuedUpTo = deliveryId;
        this.inbox.push({ id: deliveryId, from, payload, epoch: this.epoch });
        void this.pump();
        return;
      }
      case 'Ok':
        this.answer(f.refId, null);
        return;
      case 'Oks':
        // Each pending Send a run covers, as by `Ok`; other ids are not this answer's.
        for (const [id, p] of [...this.pending]) {
          if (p.send && f.runs.some((r) => id >= r.first && id < r.first + BigInt(r.count))) this.answer(id, null);
        }
        return;
      case 'Error': {
        const name = errorCodeName(f.code);
        if (f.refId !== 0n && this.pending.has(f.refId)) {
          this.answer(f.refId, new RelayError(name, f.message || name.replace(/_/g, ' ')));
        } else {
          this.handlers.notice(name, f.message);
        }
        return;
      }
      case 'Ping':
        this.write({ type: 'Pong', nonce: f.nonce });
        return;
      case 'Pong':
        return;
      case 'Presence':
        this.handlers.presence(f.peer, f.online);
        return;
      case 'PairMessage':
        this.handlers.pairMessage(f.pairingId, f.peer, f.payload);
        return;
      case 'Restarting':
        this.restartHintMs = f.reconnectAfterMs;
        return;
      default:
        return;
    }
  }

  /** Whether this `AuthOk` names the store the last one named (never when it names none). */
  private sameStore(f: Frame): boolean {
    const epoch = (f as { storeEpoch?: unknown }).storeEpoch;
    const same = epoch !== undefined && epoch === this.storeEpoch;
    this.storeEpoch = epoch;
    return same;
  }

  /**
   * The relay's delivery ids went back (its data wiped, restored or moved:
   * a new store epoch, PROTOCOL §6.6): forget the cursor, or every new
   * frame would be dropped as a redelivery. What waits in the inbox is
   * still handed to the app, but never acknowledged with its old id.
   */
  private resetCursorOnNewEpoch(epoch: bigint): void {
    if (this.epoch === epoch) return;
    if (this.epoch !== null) console.info('the relay\'s store epoch changed: delivery cursor reset');
    this.epoch = epoch;
    this.acked = 0n;
    this.queuedUpTo = 0n;
  }

  /** Hand queued deliveries to the app in batches; ack what it saved. */
  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.inbox.length > 0) {
        const batch = this.inbox.splice(0, DELIVERY_BATCH);
        let saved = 0;
        try {
          saved = await this.handlers.deliver(batch);
        } catch (e) {
          console.warn('delivery failed', e);
        }
        const last = saved > 0 ? batch[saved - 1] : undefined;
        // An ack of an older store epoch would acknowledge other frames now.
        if (last && last.epoch === this.epoch && last.id > this.acked) {
          this.acked = last.id;
          this.write({ type: 'Ack', upTo: last.id });
        }
        if (saved < batch.length) {
          // Not saved: forget the rest and reconnect, so the relay
          // delivers it again.
          this.inbox = [];
          this.queuedUpTo = this.acked;
          this.drop('could not save a delivery; asking the relay again', 1000);
          break;
        }
      }
    } finally {
      this.pumping = false;
    }
  }

  private answer(id: bigint, err: RelayError | null): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    if (err) p.reject(err);
    else p.resolve();
  }

  /** Anything from the relay proves the connection alive. */
  private alive(): void {
    if (this.pongTimer) clearTimeout(this.pongTimer);
    this.pongTimer = null;
  }

  private schedulePing(): void {
    if (this.pingTimer) clearTimeout(this.pingTimer);
    this.pingTimer = setTimeout(() => this.ping(PONG_TIMEOUT_MS), jitter(this.pingIntervalMs));
  }

  private ping(timeoutMs: number): void {
    if (!this.authed) return;
    this.schedulePing();
    if (this.pongTimer) return;
    this.write({ type: 'Ping', nonce: randomU64() });
    this.pongTimer = setTimeout(() => this.drop('the relay did not answer a ping', 4000 + 20), timeoutMs);
  }

  /** After sleep or a tab coming back: check the connection now. */
  probe(): void {
    if (this.authed) {
      if (this.pongTimer) clearTimeout(this.pongTimer);
      this.pongTimer = null;
      this.ping(WAKE_PONG_TIMEOUT_MS);
    } else {
      this.retryNow();
    }
  }

  private sampleClocks(): void {
    const wall = Date.now();
    const mono = performance.now();
    const jump = Math.max(wall - this.lastWall, mono - this.lastMono) - WAKE_SAMPLE_MS;
    this.lastWall = wall;
    this.lastMono = mono;
    if (jump >= WAKE_JUMP_MS) this.probe();
  }

  /** Close this socket and go through `lost`. */
  private drop(reason: string, code: number): void {
    const ws = this.ws;
    this.generation++;
    if (ws) {
      try {
        ws.close(code >= 4000 || code === 1000 ? code : 1000);
      } catch {
        /* already closed */
      }
    }
    const c = errorCodeFromClose(code);
    this.lost(c === null ? '' : errorCodeName(c), reason);
  }

  private lost(code: string, reason: string): void {
    const was = this.authed;
    this.ws = null;
    this.authed = false;
    for (const t of [this.pingTimer, this.pongTimer]) if (t) clearTimeout(t);
    this.pingTimer = this.pongTimer = null;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new RelayError('offline', 'the connection to the relay was lost'));
      this.pending.delete(id);
    }
    if (this.stopped) return;
    if (FINAL.has(code)) {
      this.stopWith(code, reason);
      return;
    }
    if (was && Date.now() - this.connectedAt >= STABLE_MS) this.attempt = 0;
    // Whoever waits for this connection (pairing) hears at once that the
    // relay cannot be reached, rather than after a timeout.
    if (!was) for (const w of this.waiters.splice(0)) w.fail(new RelayError('unreachable', `cannot reach the relay at ${this.origin}: ${reason}`));
    this.scheduleRetry(reason);
  }

  private stopWith(code: string, reason: string): void {
    if (this.ws) {
      this.generation++;
      try {
        this.ws.close(1000);
      } catch {
        /* closed */
      }
      this.ws = null;
      this.authed = false;
    }
    this.stopped = true;
    this.unlisten();
    for (const w of this.waiters.splice(0)) w.fail(new RelayError(code, reason));
    this.handlers.state({ kind: 'stopped', code, reason });
  }

  private scheduleRetry(reason: string): void {
    const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(this.attempt, 16));
    let wait = BACKOFF_MIN_MS + Math.random() * (cap - BACKOFF_MIN_MS);
    if (this.restartHintMs !== null) {
      // The relay's hint plus up to 20 % (spread the reconnections out).
      wait = this.restartHintMs * (1 + Math.random() * 0.2);
      this.restartHintMs = null;
    }
    const retryAt = Date.now() + wait;
    this.handlers.state({ kind: 'waiting', retryAt, reason, offline: navigator.onLine === false });
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.open();
    }, wait);
  }
}
