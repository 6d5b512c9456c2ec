import assert from 'node:assert/strict';
import { test } from 'node:test';
import { bytesToHex, hexToBytes } from '../src/proto/bytes.ts';
import { FrameError, LEVEL_PUSH, MAX_FRAME_LEN, MAX_PAYLOAD_LEN, decodeFrame, encodeFrame, webPushData } from '../src/proto/frame.ts';
import { DeviceId } from '../src/proto/identity.ts';
import { loadVector } from './vectors.ts';

const frames = loadVector<{ name: string; debug: string; hex: string }[]>('frames');

test('frames.json: one vector per frame type of §4.2', () => {
  assert.equal(frames.length, 23);
});

for (const v of frames) {
  test(`frame vector ${v.name} round-trips byte-exact`, () => {
    const f = decodeFrame(hexToBytes(v.hex));
    const snake = f.type.replace(/([a-z])([A-Z])/g, '$1_$2').toLowerCase();
    assert.equal(snake, v.name);
    assert.equal(bytesToHex(encodeFrame(f)), v.hex);
  });
}

test('frame decode errors map to the §5 codes in §4.4 order', () => {
  const code = (b: Uint8Array): number => {
    try {
      decodeFrame(b);
    } catch (e) {
      assert.ok(e instanceof FrameError);
      return e.code();
    }
    return 0;
  };
  assert.equal(code(new Uint8Array(MAX_FRAME_LEN + 1)), 4);
  assert.equal(code(Uint8Array.of(1)), 3);
  assert.equal(code(Uint8Array.of(2, 1)), 1);
  assert.equal(code(Uint8Array.of(1, 0x7f)), 2);
  assert.equal(code(hexToBytes('01010201')), 3); // truncated Hello
  assert.equal(code(hexToBytes('0101020102')), 3); // min > max
  assert.equal(code(hexToBytes('0101010103')), 3); // bad role
  assert.equal(code(hexToBytes('010101010200')), 3); // trailing byte
  // a Send whose payload is over MAX_PAYLOAD_LEN decodes as malformed, not too large
  const big = new Uint8Array(2 + 24 + MAX_PAYLOAD_LEN + 1);
  big.set([1, 0x10]);
  assert.equal(code(big), 3);
});

test('Oks: the §4.4 checks, on decode and on encode', () => {
  const code = (hex: string): number => {
    try {
      decodeFrame(hexToBytes(hex));
    } catch (e) {
      assert.ok(e instanceof FrameError);
      assert.equal(e.detail.kind === 'Malformed' && e.detail.frameType, 'Oks');
      return e.code();
    }
    return 0;
  };
  const run = (first: bigint, count: number): string => first.toString(16).padStart(16, '0') + count.toString(16).padStart(8, '0');
  assert.equal(code('01150001' + run(7n, 3)), 0);
  assert.equal(code('01150000'), 3); // no runs
  assert.equal(code('01151001'), 3); // 4097 runs
  assert.equal(code('01150001' + run(7n, 0)), 3); // count 0
  assert.equal(code('01150001' + run((1n << 64n) - 3n, 3)), 3); // past u64::MAX
  assert.equal(code('01150001' + run((1n << 64n) - 4n, 3)), 0); // up to it
  assert.equal(code('01150002' + run(7n, 1)), 3); // truncated
  assert.equal(code('01150001' + run(7n, 1) + '00'), 3); // trailing byte
  const f = decodeFrame(hexToBytes('01150001' + run((1n << 64n) - 4n, 3)));
  assert.deepEqual(f, { type: 'Oks', runs: [{ first: (1n << 64n) - 4n, count: 3 }] });
  for (const runs of [[], [{ first: 1n, count: 0 }], [{ first: (1n << 64n) - 1n, count: 1 }], Array.from({ length: 4097 }, () => ({ first: 1n, count: 1 }))]) {
    assert.throws(() => encodeFrame({ type: 'Oks', runs }), FrameError);
  }
  assert.equal(encodeFrame({ type: 'Oks', runs: Array.from({ length: 4096 }, () => ({ first: 1n, count: 0xffff_ffff })) }).length, 4 + 12 * 4096);
});

test('encode refuses oversize payloads and truncates Error.message on a char boundary', () => {
  const to = new DeviceId(new Uint8Array(16));
  assert.throws(() => encodeFrame({ type: 'Send', sendId: 1n, to, payload: new Uint8Array(MAX_PAYLOAD_LEN + 1) }), FrameError);
  encodeFrame({ type: 'Send', sendId: 1n, to, payload: new Uint8Array(MAX_PAYLOAD_LEN) });
  const msg = 'é'.repeat(200); // 400 bytes
  const f = decodeFrame(encodeFrame({ type: 'Error', code: 8, refId: 0n, message: msg }));
  assert.equal(f.type, 'Error');
  if (f.type === 'Error') assert.equal(f.message, 'é'.repeat(128));
  const unknown = decodeFrame(encodeFrame({ type: 'Error', code: 999, refId: 1n, message: '' }));
  assert.equal(unknown.type === 'Error' && unknown.code, 999);
});

test('push frames (level 3): PushSubscribe, Notify, Active', () => {
  assert.equal(LEVEL_PUSH, 3);
  const p256dh = new Uint8Array(65).fill(0x66);
  p256dh[0] = 4;
  const data = webPushData('https://push.example.com/w/1', p256dh, new Uint8Array(16).fill(0x77));
  const sub = decodeFrame(encodeFrame({ type: 'PushSubscribe', requestId: 8n, kind: 1, data }));
  assert.deepEqual(sub, { type: 'PushSubscribe', requestId: 8n, kind: 1, data });
  // the same bytes as the Rust vector
  const v = frames.find((x) => x.name === 'push_subscribe')!;
  assert.equal(bytesToHex(encodeFrame({ type: 'PushSubscribe', requestId: 8n, kind: 1, data })), v.hex);
  assert.throws(() => webPushData('https://x/', new Uint8Array(65), new Uint8Array(16)), RangeError);
  const to = new DeviceId(new Uint8Array(16).fill(0xb2));
  const n = { type: 'Notify' as const, requestId: 9n, to, urgency: 3, topic: new Uint8Array(16).fill(0x88), blob: Uint8Array.of(1, 0x99, 0x99) };
  const back = decodeFrame(encodeFrame(n));
  assert.equal(back.type, 'Notify');
  assert.equal(bytesToHex(encodeFrame(back)), frames.find((x) => x.name === 'notify')!.hex);
  assert.deepEqual(decodeFrame(hexToBytes('016201')), { type: 'Active', active: true });
  assert.deepEqual(decodeFrame(hexToBytes('016200')), { type: 'Active', active: false });
  const code = (hex: string): number => {
    try {
      decodeFrame(hexToBytes(hex));
    } catch (e) {
      assert.ok(e instanceof FrameError);
      return e.code();
    }
    return 0;
  };
  assert.equal(code('016202'), 3); // active is 0 or 1
  assert.equal(code('0162'), 3); // truncated
  assert.equal(code('01620100'), 3); // trailing byte
  assert.equal(code('0161' + '00'.repeat(8 + 16 + 1 + 15)), 3); // truncated topic
  assert.equal(code('0161' + '00'.repeat(8 + 16 + 1 + 16)), 0); // an empty blob decodes; the relay answers it
});
