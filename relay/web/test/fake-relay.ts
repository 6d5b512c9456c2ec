// A relay the test drives, for the app's parts that talk to one (relay.ts, engine.ts) in Node: a
// fake WebSocket that records what the client sends and takes frames by hand, the few browser
// globals those modules touch, and a wait on what the client sends (a signal, not a sleep).
import { type Frame, decodeFrame, encodeFrame } from '../src/proto/frame.ts';
import { DeviceKey } from '../src/proto/identity.ts';

/** A WebSocket the test drives: what the client sends is recorded; frames are fed to it by hand. */
export class FakeSocket {
  static readonly CONNECTING = 0;
  static readonly OPEN = 1;
  static readonly CLOSING = 2;
  static readonly CLOSED = 3;
  static made: FakeSocket[] = [];
  readyState = 0;
  binaryType = '';
  sent: Frame[] = [];
  closedWith: number | null = null;
  onopen: (() => void) | null = null;
  onmessage: ((m: { data: ArrayBuffer }) => void) | null = null;
  onclose: ((c: { code: number; reason: string }) => void) | null = null;
  onerror: (() => void) | null = null;
  private watchers: Array<() => void> = [];
  constructor(readonly url: string) {
    FakeSocket.made.push(this);
  }
  send(data: Uint8Array): void {
    this.sent.push(decodeFrame(new Uint8Array(data)));
    for (const w of [...this.watchers]) w();
  }
  close(code = 1000): void {
    this.closedWith = code;
    this.readyState = 3;
  }
  accept(): void {
    this.readyState = 1;
    this.onopen?.();
  }
  feed(f: Frame): void {
    const b = encodeFrame(f);
    this.onmessage?.({ data: b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer });
  }
  /** Answer the Hello with a Challenge for `name` and the Auth with an AuthOk for `device`. */
  handshake(name: string, device: DeviceKey): void {
    this.accept();
    this.feed({ type: 'Challenge', relayEphemeral: DeviceKey.generate().public(), nonce: new Uint8Array(32).fill(7), relayName: name });
    this.feed({ type: 'AuthOk', deviceId: device.public().deviceId(), queued: 0, pingIntervalMs: 30_000 });
  }
  /**
   * The first frame sent from index `from` on that matches `pred`, as soon as it is sent (a
   * signal); rejects after `ms` (a bound, so a missing frame fails the test instead of hanging it).
   */
  next(pred: (f: Frame) => boolean, from = 0, ms = 10_000): Promise<Frame> {
    return new Promise((resolve, reject) => {
      const look = (): boolean => {
        const f = this.sent.slice(from).find(pred);
        if (!f) return false;
        this.watchers = this.watchers.filter((w) => w !== watch);
        clearTimeout(t);
        resolve(f);
        return true;
      };
      const watch = (): void => void look();
      const t = setTimeout(() => {
        this.watchers = this.watchers.filter((w) => w !== watch);
        reject(new Error(`no matching frame sent within ${ms} ms; sent: ${this.sent.map((f) => f.type).join(', ')}`));
      }, ms);
      if (!look()) this.watchers.push(watch);
    });
  }
}

/** Install the fake WebSocket and the browser globals relay.ts and engine.ts touch. */
export function installBrowserGlobals(): void {
  const g = globalThis as Record<string, unknown>;
  g.WebSocket = FakeSocket;
  g.addEventListener = () => undefined;
  g.removeEventListener = () => undefined;
  g.document = { addEventListener: () => undefined, removeEventListener: () => undefined, visibilityState: 'visible' };
  if (!('navigator' in globalThis)) g.navigator = { onLine: true };
}
