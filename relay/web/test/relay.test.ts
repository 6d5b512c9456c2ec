// The relay connection (src/app/relay.ts) against a fake WebSocket in Node: the handshake as
// tandem-client does it, and the check that AuthOk names this device (PROTOCOL §6.1): an AuthOk
// for another device id closes the connection before anything is sent or handed to the app, and
// the client tries again later instead of going online.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type Frame, decodeFrame, encodeFrame } from '../src/proto/frame.ts';
import { DeviceKey } from '../src/proto/identity.ts';

/** A WebSocket the test drives: what the client sends is recorded; frames are fed to it by hand. */
class FakeSocket {
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
  constructor(readonly url: string) {
    FakeSocket.made.push(this);
  }
  send(data: Uint8Array): void {
    this.sent.push(decodeFrame(new Uint8Array(data)));
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
}

// The few browser globals relay.ts touches.
const g = globalThis as Record<string, unknown>;
g.WebSocket = FakeSocket;
g.addEventListener = () => undefined;
g.removeEventListener = () => undefined;
g.document = { addEventListener: () => undefined, removeEventListener: () => undefined, visibilityState: 'visible' };
if (!('navigator' in globalThis)) g.navigator = { onLine: true };
const { RelayClient } = await import('../src/app/relay.ts');

type State = { kind: string; code?: string };

function client(key: DeviceKey) {
  const states: State[] = [];
  let connected = 0;
  const delivered: unknown[] = [];
  const c = new RelayClient('http://127.0.0.1:7878', key, {
    state: (s) => states.push(s),
    connected: () => void connected++,
    deliver: async (batch) => {
      delivered.push(...batch);
      return batch.length;
    },
    presence: () => undefined,
    pairMessage: () => undefined,
    notice: () => undefined,
  });
  return { c, states, delivered, connected: () => connected };
}

/** Start the client and answer its Hello with a Challenge for the name it dialed; returns the socket after its Auth. */
function handshake(c: InstanceType<typeof RelayClient>): FakeSocket {
  FakeSocket.made = [];
  c.start();
  const ws = FakeSocket.made[0]!;
  ws.accept();
  assert.equal(ws.sent[0]?.type, 'Hello');
  ws.feed({ type: 'Challenge', relayEphemeral: DeviceKey.generate().public(), nonce: new Uint8Array(32).fill(7), relayName: '127.0.0.1:7878' });
  assert.equal(ws.sent[1]?.type, 'Auth');
  return ws;
}

test('relay: an AuthOk naming this device brings the connection online', () => {
  const key = DeviceKey.generate();
  const { c, states, connected } = client(key);
  try {
    const ws = handshake(c);
    ws.feed({ type: 'AuthOk', deviceId: key.public().deviceId(), queued: 0, pingIntervalMs: 30_000 });
    assert.ok(c.online);
    assert.equal(connected(), 1);
    assert.equal(states.at(-1)?.kind, 'online');
    assert.equal(ws.closedWith, null);
  } finally {
    c.stop();
  }
});

test('relay: an AuthOk naming another device closes the connection; nothing goes online, nothing is delivered', () => {
  const key = DeviceKey.generate();
  const other = DeviceKey.generate().public().deviceId();
  const { c, states, delivered, connected } = client(key);
  try {
    const ws = handshake(c);
    ws.feed({ type: 'AuthOk', deviceId: other, queued: 3, pingIntervalMs: 30_000 });
    assert.equal(c.online, false);
    assert.equal(connected(), 0, 'the app was not told it is connected');
    assert.notEqual(ws.closedWith, null, 'the connection was closed');
    assert.ok(!states.some((s) => s.kind === 'online'), JSON.stringify(states));
    // Not a final refusal: the client tries again later, as tandem-client does.
    assert.equal(states.at(-1)?.kind, 'waiting', JSON.stringify(states));
    // Whatever that socket still carries is ignored.
    ws.feed({ type: 'Deliver', deliveryId: 1n, from: other, payload: Uint8Array.of(1) });
    assert.equal(delivered.length, 0);
    assert.equal(ws.sent.length, 2, 'nothing was sent after the Auth');
  } finally {
    c.stop();
  }
});
