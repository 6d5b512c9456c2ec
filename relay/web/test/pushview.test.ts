// What the service worker shows (src/app/pushview.ts), the key rotation rule and decision links
// (src/app/pushkeys.ts), and when the page offers notifications (src/app/push.ts), in Node.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { base64UrlEncode, bytesToHex, hexToBytes, utf8 } from '../src/proto/bytes.ts';
import { type PushNotification, pushTopic, sealPush } from '../src/proto/push.ts';
import { parsePushInfo, pushUnavailable } from '../src/app/push.ts';
import { type PushKeyRow, decisionRef, keysToDrop, parseDecisionRef } from '../src/app/pushkeys.ts';
import { blobFromPushData, genericView, notificationView } from '../src/app/pushview.ts';

const key = hexToBytes('11'.repeat(32));
const keyId = hexToBytes('22'.repeat(8));
const now = 1_765_000_000_000;
const approval: PushNotification = {
  kind: 'approval',
  desktop: 'build-box',
  title: 'Fix the flaky test',
  body: 'edit src/lib.rs',
  task_id: 'aa'.repeat(16),
  approval_id: 'ap1',
  expires_at_ms: now + 300_000,
  can_decide: true,
  at_ms: now,
};

test('the blob in a push message: raw, or its base64 / base64url text; nothing else', () => {
  const blob = sealPush(key, keyId, approval);
  assert.deepEqual(blobFromPushData(blob), blob);
  assert.deepEqual(blobFromPushData(utf8(base64UrlEncode(blob))), blob);
  assert.deepEqual(blobFromPushData(utf8(Buffer.from(blob).toString('base64'))), blob);
  assert.equal(blobFromPushData(new Uint8Array(0)), null);
  assert.equal(blobFromPushData(utf8('hello')), null);
  assert.equal(blobFromPushData(Uint8Array.of(0xff, 0xfe, 2)), null);
  assert.equal(blobFromPushData(utf8(base64UrlEncode(Uint8Array.of(2, 3, 4)))), null);
});

test('an approval the device may decide: desktop and title, the step, Allow / Deny, tag = topic, renotify', () => {
  const v = notificationView(approval, key, 'desk1', 'stored-name', now);
  assert.equal(v.title, 'stored-name: Fix the flaky test', 'the name this phone knows, not the one in the push');
  assert.equal(v.options.body, 'edit src/lib.rs');
  assert.equal(v.options.tag, bytesToHex(pushTopic(key, approval.task_id)));
  assert.equal(v.options.renotify, true);
  assert.equal(v.options.requireInteraction, true);
  assert.deepEqual(v.options.actions?.map((a) => a.action), ['allow', 'deny']);
  assert.deepEqual(v.options.data, { kind: 'approval', desktop: 'desk1', task_id: approval.task_id, approval_id: 'ap1' });
});

test('no actions without can_decide or once expired; finished replaces quietly; missing has no tag', () => {
  assert.equal(notificationView({ ...approval, can_decide: false }, key, 'd', 'n', now).options.actions, undefined);
  assert.equal(notificationView({ ...approval, can_decide: undefined }, key, 'd', 'n', now).options.actions, undefined);
  const expired = notificationView(approval, key, 'd', 'n', now + 400_000);
  assert.equal(expired.options.actions, undefined);
  assert.equal(expired.options.body, 'edit src/lib.rs (expired)');
  const fin = notificationView({ kind: 'finished', desktop: '', title: 'Fix', body: 'succeeded', task_id: approval.task_id, at_ms: now }, key, 'd', 'stored-name', now);
  assert.equal(fin.title, 'stored-name: Fix');
  assert.equal(fin.options.tag, bytesToHex(pushTopic(key, approval.task_id)), 'the same tag as the approval: it replaces it');
  assert.equal(fin.options.renotify, false);
  const missing = notificationView({ kind: 'missing', desktop: 'build-box', title: '', body: '3 messages lost', at_ms: now }, key, 'd', 'n', now);
  assert.equal(missing.options.tag, undefined);
  assert.equal(missing.title, 'n');
  assert.deepEqual(genericView().title, 'Tandem');
  assert.deepEqual(genericView().options.body, 'New activity');
});

test('key rotation keeps the newest three of a desktop', () => {
  const row = (id: string, createdMs: number): PushKeyRow => ({ keyId: id, key: '00'.repeat(32), desktopId: 'd', desktopName: 'n', createdMs });
  const rows = [row('a', 1), row('b', 5), row('c', 3), row('d', 4), row('e', 2)];
  assert.deepEqual(keysToDrop(rows).map((r) => r.keyId), ['e', 'a']);
  assert.deepEqual(keysToDrop(rows, 1).map((r) => r.keyId), ['d', 'c', 'e', 'a']);
  assert.deepEqual(keysToDrop(rows.slice(0, 3)), []);
});

test('decision links: desktop:task:approval:allow|deny, nothing else', () => {
  const d = { desktop: 'abc', taskId: 't1', approvalId: 'a1', allow: true };
  assert.equal(decisionRef(d), 'abc:t1:a1:allow');
  assert.deepEqual(parseDecisionRef('abc:t1:a1:allow'), d);
  assert.deepEqual(parseDecisionRef('abc:t1:a1:deny'), { ...d, allow: false });
  for (const bad of ['', 'abc:t1:a1', 'abc:t1:a1:yes', ':t1:a1:allow', 'a:b:c:d:allow']) assert.equal(parseDecisionRef(bad), null, bad);
});

test('GET /v1/push: a 65-byte uncompressed VAPID key, Web Push among the kinds', () => {
  const k = new Uint8Array(65).fill(3);
  k[0] = 4;
  assert.deepEqual(parsePushInfo({ vapid_public_key: base64UrlEncode(k), kinds: ['webpush', 'apns'] }), k);
  assert.deepEqual(parsePushInfo({ vapid_public_key: base64UrlEncode(k) }), k);
  assert.equal(parsePushInfo({ vapid_public_key: base64UrlEncode(k), kinds: ['apns'] }), null);
  assert.equal(parsePushInfo({ vapid_public_key: base64UrlEncode(k.subarray(1)) }), null);
  assert.equal(parsePushInfo({ vapid_public_key: 'not base64!' }), null);
  assert.equal(parsePushInfo(null), null);
});

test('notifications are offered only on a lasting, secure page with the Push API', () => {
  const full = { isSecureContext: true, navigator: { serviceWorker: {} }, PushManager: {}, Notification: {} };
  assert.equal(pushUnavailable({ ephemeral: false }, full), null);
  assert.match(pushUnavailable({ ephemeral: true }, full) ?? '', /tandem up/);
  assert.match(pushUnavailable({ ephemeral: false }, { ...full, isSecureContext: false }) ?? '', /no web push/);
  assert.match(pushUnavailable({ ephemeral: false }, { ...full, navigator: {} }) ?? '', /.+/);
  const { PushManager: _, ...noPush } = full;
  assert.match(pushUnavailable({ ephemeral: false }, noPush) ?? '', /home screen/);
});
