// The inner seal of pushes (src/proto/push.ts): round trip, tampering, limits, the topic, and
// proto/vectors/push.json (made by the Rust crate) when it is there.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { test } from 'node:test';
import { xchacha20poly1305 } from '@noble/ciphers/chacha.js';
import { blake2s } from '@noble/hashes/blake2.js';
import { bytesToHex, concat, hexToBytes, utf8 } from '../src/proto/bytes.ts';
import {
  MAX_PUSH_BLOB_LEN,
  MAX_SEALED_LEN,
  type PushNotification,
  PushError,
  encodePushNotification,
  openPush,
  openPushBytes,
  parsePushNotification,
  pushBlobKeyId,
  pushTopic,
  sealPush,
} from '../src/proto/push.ts';
import { VECTORS_DIR, loadVector } from './vectors.ts';

const key = hexToBytes('00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff');
const keyId = hexToBytes('0123456789abcdef');
const nonce = new Uint8Array(24).fill(7);
const note: PushNotification = {
  kind: 'approval',
  desktop: 'build-box',
  title: 'Fix the flaky test',
  body: 'edit src/lib.rs',
  task_id: '8f0e2a4c6b1d3e5f7a9c0b2d4e6f8a1c',
  approval_id: 'a1',
  expires_at_ms: 1_765_000_300_000,
  can_decide: true,
  at_ms: 1_765_000_000_000,
};

/** `padded` sealed as is (no padding added): to try what the seal itself never makes. */
function sealRaw(padded: Uint8Array): Uint8Array {
  const ct = xchacha20poly1305(key, nonce, concat(utf8('tandem push v1'), keyId)).encrypt(padded);
  return concat(Uint8Array.of(1), keyId, nonce, ct);
}

const isPush = (kind: string) => (e: unknown) => e instanceof PushError && e.kind === kind;

test('seal → open round trip; the layout is 0x01 ‖ key_id ‖ nonce ‖ ciphertext of 256-byte padding', () => {
  const blob = sealPush(key, keyId, note, nonce);
  assert.equal(blob[0], 1);
  assert.equal(bytesToHex(blob.subarray(1, 9)), '0123456789abcdef');
  assert.deepEqual(blob.subarray(9, 33), nonce);
  assert.equal(blob.length, 33 + 256 + 16);
  assert.deepEqual(pushBlobKeyId(blob), keyId);
  assert.deepEqual(openPush(key, keyId, blob), note);
  // No plaintext in the blob.
  const hay = Buffer.from(blob).toString('latin1');
  for (const s of ['build-box', 'flaky', 'src/lib.rs']) assert.ok(!hay.includes(s), s);
  // A fresh nonce each time when none is given.
  assert.notDeepEqual(sealPush(key, keyId, note), sealPush(key, keyId, note));
});

test('padding: to the next multiple of 256, at most 2048 bytes', () => {
  const big = { ...note, body: 'x'.repeat(600), title: 'y'.repeat(120) };
  const json = encodePushNotification(big);
  const blob = sealPush(key, keyId, big, nonce);
  assert.equal(blob.length - 33 - 16, Math.ceil(json.length / 256) * 256);
  assert.deepEqual(openPush(key, keyId, blob), big);
  // Exactly 256 bytes of JSON stay 256.
  const exact = utf8(`{"kind":"missing","desktop":"d","title":"","body":"${'b'.repeat(256 - 63)}","at_ms":1}`);
  assert.equal(exact.length, 256);
  assert.equal(sealPush(key, keyId, exact, nonce).length, 33 + 256 + 16);
  assert.throws(() => sealPush(key, keyId, utf8(`{"x":"${'z'.repeat(2100)}"}`), nonce), isPush('TooLarge'));
  assert.throws(() => sealPush(key, keyId, Uint8Array.of(0x7b, 0, 0x7d), nonce), isPush('BadNotification'));
  assert.equal(MAX_SEALED_LEN, 2097);
  assert.equal(MAX_PUSH_BLOB_LEN, 2560);
});

test('tampering, a wrong key, a wrong key id, damage and garbage are refused', () => {
  const blob = sealPush(key, keyId, note, nonce);
  for (let i = 9; i < blob.length; i += 37) {
    const bad = blob.slice();
    bad[i]! ^= 1;
    assert.throws(() => openPush(key, keyId, bad), isPush('Decrypt'), `byte ${i}`);
  }
  // The key id is authenticated (aad): the same key under another id does not open it.
  const relabelled = blob.slice();
  relabelled.set(hexToBytes('ffffffffffffffff'), 1);
  assert.throws(() => openPush(key, hexToBytes('ffffffffffffffff'), relabelled), isPush('Decrypt'));
  assert.throws(() => openPush(key, hexToBytes('ffffffffffffffff'), blob), isPush('WrongKey'));
  const other = key.slice();
  other[0]! ^= 0x80;
  assert.throws(() => openPush(other, keyId, blob), isPush('Decrypt'));
  const v2 = blob.slice();
  v2[0] = 2;
  assert.throws(() => openPush(key, keyId, v2), isPush('UnknownVersion'));
  assert.throws(() => openPush(key, keyId, blob.subarray(0, 40)), isPush('Malformed'));
  assert.throws(() => openPush(key, keyId, new Uint8Array(0)), isPush('Malformed'));
  assert.throws(() => openPush(key, keyId, new Uint8Array(3073).fill(1)), isPush('TooLarge'));
  // Padding that is not zeros after the JSON, or not a multiple of 256: refused after opening.
  assert.throws(() => openPush(key, keyId, sealRaw(Uint8Array.from([...utf8('{"kind":"missing"}'), 0, 1, ...new Array(237).fill(0)]))), isPush('Malformed'));
  assert.throws(() => openPush(key, keyId, sealRaw(new Uint8Array(300).fill(0x20))), isPush('Malformed'));
  // Sealed JSON that is not a notification opens but does not parse; a kind from a newer desktop is `other`.
  const notNote = sealPush(key, keyId, utf8('{"kind":"approval","desktop":"d","title":"t","body":"b"}'), nonce);
  assert.equal(new TextDecoder().decode(openPushBytes(key, keyId, notNote)).slice(0, 18), '{"kind":"approval"');
  assert.throws(() => openPush(key, keyId, notNote), isPush('BadNotification'));
  const newer = sealPush(key, keyId, utf8('{"kind":"reminder","desktop":"d","title":"t","body":"b","at_ms":1}'), nonce);
  assert.equal(openPush(key, keyId, newer).kind, 'other');
});

test('notification JSON: field order, optional fields, checks', () => {
  assert.equal(
    new TextDecoder().decode(encodePushNotification(note)),
    '{"kind":"approval","desktop":"build-box","title":"Fix the flaky test","body":"edit src/lib.rs","task_id":"8f0e2a4c6b1d3e5f7a9c0b2d4e6f8a1c","approval_id":"a1","expires_at_ms":1765000300000,"can_decide":true,"at_ms":1765000000000}',
  );
  const minimal: PushNotification = { kind: 'missing', desktop: 'd', title: 't', body: 'b', at_ms: 5 };
  assert.equal(new TextDecoder().decode(encodePushNotification(minimal)), '{"kind":"missing","desktop":"d","title":"t","body":"b","at_ms":5}');
  assert.deepEqual(parsePushNotification(utf8('{"kind":"finished","desktop":"d","title":"t","body":"b","at_ms":5,"extra":[1],"task_id":null}')), {
    kind: 'finished',
    desktop: 'd',
    title: 't',
    body: 'b',
    at_ms: 5,
  });
  for (const bad of ['[]', 'null', '{"kind":"approval"}', '{"kind":7,"desktop":"d","title":"t","body":"b","at_ms":5}', '{"kind":"approval","desktop":"d","title":"t","body":"b","at_ms":-1}', '{"kind":"approval","desktop":"d","title":"t","body":"b","at_ms":1,"can_decide":"yes"}', '{"kind":"approval","desktop":"d","title":"t","body":"b","at_ms":1,"task_id":7}', 'not json']) {
    assert.throws(() => parsePushNotification(utf8(bad)), isPush('BadNotification'), bad);
  }
});

test('topic: the kdf MAC of the task id, first 16 bytes; zeros without a task; differs per key and task', () => {
  const t = pushTopic(key, note.task_id);
  assert.equal(t.length, 16);
  assert.deepEqual(pushTopic(key, note.task_id), t);
  assert.notDeepEqual(pushTopic(key, 'other'), t);
  const other = key.slice();
  other[31]! ^= 1;
  assert.notDeepEqual(pushTopic(other, note.task_id), t);
  assert.deepEqual(pushTopic(key), new Uint8Array(16));
  assert.deepEqual(pushTopic(key, null), new Uint8Array(16));
  assert.throws(() => pushTopic(new Uint8Array(16), 'x'), RangeError);
  // mac(key, "tandem push topic v1", task_id) = keyed BLAKE2s-256 of label ‖ 0x00 ‖ task_id.
  assert.deepEqual(t, blake2s(concat(utf8('tandem push topic v1'), Uint8Array.of(0), utf8(note.task_id!)), { key, dkLen: 32 }).slice(0, 16));
});

// ---- the Rust crate's vectors (proto/vectors/push.json), once the crate writes them ----

const HAVE_VECTORS = existsSync(resolve(VECTORS_DIR, 'push.json'));

test('push.json: the crate\'s blobs open to its notifications, re-seal byte-exact with their nonces; topics match', { skip: HAVE_VECTORS ? false : 'proto/vectors/push.json not written yet' }, () => {
  const v = loadVector<{ key_id: string; key: string; topics: { task_id: string; topic: string }[]; sealed: { name: string; notification: PushNotification; blob: string }[] }>('push');
  const k = hexToBytes(v.key);
  const id = hexToBytes(v.key_id);
  assert.ok(v.sealed.length > 0 && v.topics.length > 0, 'push.json has blobs and topics');
  for (const c of v.sealed) {
    const blob = hexToBytes(c.blob);
    assert.deepEqual(pushBlobKeyId(blob), id, c.name);
    assert.deepEqual(openPush(k, id, blob), c.notification, `${c.name} opens to its notification`);
    // The same JSON (field order, escapes), padding and layout: sealed again with its nonce, the same bytes.
    assert.equal(bytesToHex(sealPush(k, id, c.notification, blob.subarray(9, 33))), c.blob, `${c.name} re-seals byte-exact`);
  }
  for (const t of v.topics) assert.equal(bytesToHex(pushTopic(k, t.task_id)), t.topic, `topic of ${JSON.stringify(t.task_id)}`);
});
