// The level-3 push frames (src/proto/push_frames.ts) and the `push_setup` message.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { bytesToHex, hexToBytes, utf8 } from '../src/proto/bytes.ts';
import { FrameError } from '../src/proto/frame.ts';
import { DeviceId } from '../src/proto/identity.ts';
import { MessageError, decodeMessage, encodeMessage } from '../src/proto/message.ts';
import { type PushFrame, decodePushFrame, encodePushFrame } from '../src/proto/push_frames.ts';
import { loadVector } from './vectors.ts';

const p256dh = Uint8Array.from({ length: 65 }, (_, i) => (i === 0 ? 4 : i));
const auth = Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i);
const to = new DeviceId(Uint8Array.from({ length: 16 }, (_, i) => i));
const dec = new TextDecoder();

test('PushSubscribe (0x60) Web Push: request_id ‖ 1 ‖ str16 endpoint ‖ p256dh ‖ auth', () => {
  const f: PushFrame = { type: 'PushSubscribe', requestId: 7n, sub: { kind: 'webpush', endpoint: 'https://push.example/x', p256dh, auth } };
  const b = encodePushFrame(f);
  const ep = utf8('https://push.example/x');
  assert.equal(bytesToHex(b.subarray(0, 11)), '01600000000000000007' + '01');
  assert.equal(bytesToHex(b.subarray(11, 13)), ep.length.toString(16).padStart(4, '0'));
  assert.deepEqual(b.subarray(13, 13 + ep.length), ep);
  assert.deepEqual(b.subarray(13 + ep.length, 13 + ep.length + 65), p256dh);
  assert.deepEqual(b.subarray(13 + ep.length + 65), auth);
  assert.deepEqual(decodePushFrame(b), f);
});

test('PushSubscribe remove / APNs / FCM; Notify; Active round-trip', () => {
  const frames: PushFrame[] = [
    { type: 'PushSubscribe', requestId: 1n, sub: { kind: 'remove' } },
    { type: 'PushSubscribe', requestId: 2n, sub: { kind: 'apns', token: new Uint8Array(32).fill(9) } },
    { type: 'PushSubscribe', requestId: 3n, sub: { kind: 'fcm', token: 'tok:en' } },
    { type: 'Notify', requestId: 4n, to, urgency: 'high', topic: new Uint8Array(16).fill(1), blob: Uint8Array.of(1, 2, 3) },
    { type: 'Active', active: false },
    { type: 'Active', active: true },
  ];
  for (const f of frames) assert.deepEqual(decodePushFrame(encodePushFrame(f)), f);
  assert.equal(bytesToHex(encodePushFrame({ type: 'PushSubscribe', requestId: 1n, sub: { kind: 'remove' } })), '0160000000000000000100');
  assert.equal(bytesToHex(encodePushFrame({ type: 'Active', active: false })), '016200');
  assert.equal(bytesToHex(encodePushFrame({ type: 'Active', active: true })), '016201');
  const n = encodePushFrame(frames[3]!);
  assert.equal(bytesToHex(n), '0161' + '0000000000000004' + bytesToHex(to.bytes) + '03' + '01'.repeat(16) + '010203');
});

test('push frames: bad values are refused both ways', () => {
  const malformed = (e: unknown) => e instanceof FrameError && e.code() === 3;
  assert.throws(() => encodePushFrame({ type: 'PushSubscribe', requestId: 1n, sub: { kind: 'webpush', endpoint: 'x', p256dh: p256dh.subarray(1), auth } }), malformed);
  assert.throws(() => encodePushFrame({ type: 'PushSubscribe', requestId: 1n, sub: { kind: 'webpush', endpoint: 'x'.repeat(1025), p256dh, auth } }), malformed);
  assert.throws(() => encodePushFrame({ type: 'PushSubscribe', requestId: 1n, sub: { kind: 'apns', token: new Uint8Array(0) } }), malformed);
  assert.throws(() => encodePushFrame({ type: 'Notify', requestId: 1n, to, urgency: 'low', topic: new Uint8Array(16), blob: new Uint8Array(3073) }), malformed);
  assert.throws(() => encodePushFrame({ type: 'Notify', requestId: 1n, to, urgency: 'low', topic: new Uint8Array(16), blob: new Uint8Array(0) }), malformed);
  for (const hex of ['016202', '01620100', '0162', '0160000000000000000104', '016000000000000000010000', '0161' + '00'.repeat(8) + '00'.repeat(16) + '04' + '00'.repeat(16) + '01']) {
    assert.throws(() => decodePushFrame(hexToBytes(hex)), malformed, hex);
  }
  assert.equal(decodePushFrame(hexToBytes('01130000000000000001')), null, 'an Ok is not a push frame');
});

// The crate's frames.json, once it has the level-3 frames: they round-trip through this codec.
test('frames.json: push_subscribe / notify / active vectors (when present) round-trip', () => {
  const frames = loadVector<{ name: string; hex: string }[]>('frames');
  for (const v of frames.filter((f) => ['push_subscribe', 'notify', 'active'].includes(f.name))) {
    const f = decodePushFrame(hexToBytes(v.hex));
    assert.ok(f, v.name);
    assert.equal(bytesToHex(encodePushFrame(f)), v.hex, v.name);
  }
});

test('push_setup: enabled with key id and key, field order, kinds optional; disabled alone', () => {
  const on = { kind: 'push_setup', enabled: true, key_id: '0123456789abcdef', key: 'ab'.repeat(32), approvals: true, finished: false };
  const json = dec.decode(encodeMessage(on));
  assert.equal(json, `{"v":1,"kind":"push_setup","enabled":true,"key_id":"0123456789abcdef","key":"${'ab'.repeat(32)}","approvals":true,"finished":false}`);
  const d = decodeMessage(utf8(json));
  assert.ok(d.known);
  assert.deepEqual(d.message, on);
  assert.equal(dec.decode(encodeMessage({ kind: 'push_setup', enabled: false })), '{"v":1,"kind":"push_setup","enabled":false}');
  const bad = (e: unknown) => e instanceof MessageError && e.kind === 'Malformed';
  assert.throws(() => encodeMessage({ kind: 'push_setup', enabled: true }), bad);
  assert.throws(() => encodeMessage({ kind: 'push_setup', enabled: true, key_id: '0123456789ABCDEF', key: 'ab'.repeat(32) }), bad);
  assert.throws(() => encodeMessage({ kind: 'push_setup', enabled: true, key_id: '0123456789abcdef', key: 'ab'.repeat(31) }), bad);
  assert.throws(() => decodeMessage(utf8('{"v":1,"kind":"push_setup","enabled":true,"key_id":"01"}')), bad);
  assert.throws(() => decodeMessage(utf8('{"v":1,"kind":"push_setup"}')), bad);
});
