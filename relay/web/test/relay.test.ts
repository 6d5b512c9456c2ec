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
    this.feedRaw(encodeFrame(f));
  }
  feedRaw(b: Uint8Array): void {
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
    ws.feed({ type: 'AuthOk', deviceId: key.public().deviceId(), queued: 0, pingIntervalMs: 30_000, storeEpoch: 1n });
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
    ws.feed({ type: 'AuthOk', deviceId: other, queued: 3, pingIntervalMs: 30_000, storeEpoch: 1n });
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

/** After the connection dropped: reconnect now and answer the new socket's Hello; returns it after its Auth. */
function reconnect(c: InstanceType<typeof RelayClient>, ws: FakeSocket): FakeSocket {
  ws.close(1006);
  ws.onclose?.({ code: 1006, reason: 'dropped by the test' });
  FakeSocket.made = [];
  c.retryNow();
  const next = FakeSocket.made[0]!;
  next.accept();
  next.feed({ type: 'Challenge', relayEphemeral: DeviceKey.generate().public(), nonce: new Uint8Array(32).fill(7), relayName: '127.0.0.1:7878' });
  assert.equal(next.sent[1]?.type, 'Auth');
  return next;
}

/** Let the client's delivery pump run. */
const settle = () => new Promise((r) => setTimeout(r, 0));

const acks = (ws: FakeSocket) => ws.sent.flatMap((f) => (f.type === 'Ack' ? [f.upTo] : []));

test('relay: a new store epoch resets the delivery cursor; the same epoch keeps dropping what was acknowledged', async () => {
  const key = DeviceKey.generate();
  const peer = DeviceKey.generate().public().deviceId();
  const { c, delivered } = client(key);
  try {
    const me = key.public().deviceId();
    let ws = handshake(c);
    ws.feed({ type: 'AuthOk', deviceId: me, queued: 2, pingIntervalMs: 30_000, storeEpoch: 5n });
    for (const id of [1n, 2n]) ws.feed({ type: 'Deliver', deliveryId: id, from: peer, payload: Uint8Array.of(Number(id)) });
    await settle();
    assert.equal(delivered.length, 2);
    assert.equal(acks(ws).at(-1), 2n);

    // Same epoch: a redelivery of an acknowledged id is dropped and acknowledged again.
    ws = reconnect(c, ws);
    ws.feed({ type: 'AuthOk', deviceId: me, queued: 1, pingIntervalMs: 30_000, storeEpoch: 5n });
    ws.feed({ type: 'Deliver', deliveryId: 2n, from: peer, payload: Uint8Array.of(2) });
    await settle();
    assert.equal(delivered.length, 2, 'the redelivery was not handed to the app');
    assert.deepEqual(acks(ws), [2n]);

    // A new epoch (the relay's data wiped or restored): its ids start low again, and are new frames.
    ws = reconnect(c, ws);
    ws.feed({ type: 'AuthOk', deviceId: me, queued: 2, pingIntervalMs: 30_000, storeEpoch: 6n });
    for (const id of [1n, 2n]) ws.feed({ type: 'Deliver', deliveryId: id, from: peer, payload: Uint8Array.of(10 + Number(id)) });
    await settle();
    assert.equal(delivered.length, 4, 'the new epoch\'s frames reached the app');
    assert.equal(acks(ws).at(-1), 2n);
    // And within it, duplicates are dropped again.
    const before = acks(ws).length;
    ws.feed({ type: 'Deliver', deliveryId: 1n, from: peer, payload: Uint8Array.of(11) });
    await settle();
    assert.equal(delivered.length, 4);
    assert.deepEqual(acks(ws).slice(before), [2n]);
  } finally {
    c.stop();
  }
});

/** How each request ended so far: 'ok', the RelayError's code, or absent while pending. */
function track(outcomes: Map<bigint, string>, id: bigint, p: Promise<void>): void {
  p.then(
    () => void outcomes.set(id, 'ok'),
    (e: { code: string }) => void outcomes.set(id, e.code),
  );
}

const sendIds = (ws: FakeSocket) => ws.sent.flatMap((f) => (f.type === 'Send' ? [f.sendId] : []));

test('relay: it says Hello{1, 3} (level 3: push frames); an Oks answers each pending Send it covers, never another request', async () => {
  const key = DeviceKey.generate();
  const { c } = client(key);
  try {
    const ws = handshake(c);
    const hello = ws.sent[0]!;
    assert.ok(hello.type === 'Hello' && hello.minVersion === 1 && hello.maxVersion === 3, JSON.stringify(hello));
    ws.feed({ type: 'AuthOk', deviceId: key.public().deviceId(), queued: 0, pingIntervalMs: 30_000, storeEpoch: 1n });
    const peer = DeviceKey.generate().public().deviceId();
    const outcomes = new Map<bigint, string>();
    for (let i = 0; i < 4; i++) {
      const p = c.send(peer, Uint8Array.of(i));
      track(outcomes, sendIds(ws).at(-1)!, p);
    }
    const authorize = c.authorize(peer);
    const auth = ws.sent.at(-1)!;
    assert.equal(auth.type, 'Authorize');
    const authId = auth.type === 'Authorize' ? auth.requestId : 0n;
    track(outcomes, authId, authorize);
    const [a, b, d, e] = sendIds(ws);
    assert.deepEqual([b! - a!, d! - b!, e! - d!], [1n, 1n, 1n]);

    // The first two and the fourth, plus ids nobody waits for (the authorisation's among them).
    ws.feed({ type: 'Oks', runs: [{ first: 0n, count: Number(b!) + 1 }, { first: e!, count: 1 }, { first: authId, count: 1 }, { first: 1n << 40n, count: 3 }] });
    await settle();
    assert.deepEqual([a, b, d, e, authId].map((id) => outcomes.get(id!)), ['ok', 'ok', undefined, 'ok', undefined]);
    ws.feed({ type: 'Oks', runs: [{ first: a!, count: 4 }] });
    ws.feed({ type: 'Ok', refId: authId });
    await settle();
    assert.deepEqual([a, b, d, e, authId].map((id) => outcomes.get(id!)), ['ok', 'ok', 'ok', 'ok', 'ok']);
    assert.equal(ws.closedWith, null);
  } finally {
    c.stop();
  }
});

test('relay: a malformed Oks drops the connection (malformed_frame); the Sends it carried fail, nothing is answered', async () => {
  const key = DeviceKey.generate();
  const { c, states } = client(key);
  try {
    const ws = handshake(c);
    ws.feed({ type: 'AuthOk', deviceId: key.public().deviceId(), queued: 0, pingIntervalMs: 30_000, storeEpoch: 1n });
    const peer = DeviceKey.generate().public().deviceId();
    const outcomes = new Map<bigint, string>();
    track(outcomes, 1n, c.send(peer, Uint8Array.of(1)));
    const [id] = sendIds(ws);
    // One run with count 0.
    const bad = encodeFrame({ type: 'Oks', runs: [{ first: id!, count: 1 }] });
    bad.set([0, 0, 0, 0], bad.length - 4);
    ws.feedRaw(bad);
    await settle();
    assert.equal(ws.closedWith, 4003);
    assert.equal(outcomes.get(1n), 'offline', 'failed with the connection, not answered Ok');
    assert.equal(states.at(-1)?.kind, 'waiting', JSON.stringify(states));
  } finally {
    c.stop();
  }
});
