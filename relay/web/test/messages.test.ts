import assert from 'node:assert/strict';
import { test } from 'node:test';
import { utf8 } from '../src/proto/bytes.ts';
import { MessageError, decodeMessage, deviceInfoFromJson, deviceInfoToJson, encodeMessage } from '../src/proto/message.ts';
import { loadVector } from './vectors.ts';

const msgs = loadVector<{ json: string }[]>('messages');
const dec = new TextDecoder();

for (const [i, m] of msgs.entries()) {
  const kind = JSON.parse(m.json).kind as string;
  test(`messages.json #${i} (${kind}) decodes and re-encodes byte-exact`, () => {
    const d = decodeMessage(utf8(m.json));
    assert.ok(d.known, `unknown kind ${kind}`);
    if (d.known) assert.equal(dec.decode(encodeMessage(d.message)), m.json);
  });
}

test('message decoding rules (§15.2)', () => {
  assert.throws(() => decodeMessage(utf8('[]')), (e: unknown) => e instanceof MessageError && e.kind === 'NotJson');
  assert.throws(() => decodeMessage(utf8('{"kind":"cancel"}')), (e: unknown) => e instanceof MessageError && e.kind === 'NoVersion');
  assert.throws(() => decodeMessage(utf8('{"v":0,"kind":"cancel"}')), (e: unknown) => e instanceof MessageError && e.kind === 'NoVersion');
  assert.throws(() => decodeMessage(utf8('{"v":1}')), (e: unknown) => e instanceof MessageError && e.kind === 'NoKind');
  assert.deepEqual(decodeMessage(utf8('{"v":2,"kind":"new_thing"}')), { known: false, v: 2, kind: 'new_thing' });
  assert.deepEqual(decodeMessage(utf8('{"v":1,"kind":"task_event","task_id":"t","offset":0,"at_ms":0,"event":{"type":"x"}}')), {
    known: false,
    v: 1,
    kind: 'task_event/x',
  });
  assert.throws(() => decodeMessage(utf8('{"v":1,"kind":"cancel"}')), (e: unknown) => e instanceof MessageError && e.kind === 'Malformed');
  // unknown fields ignored, null read as absent
  const d = decodeMessage(utf8('{"v":1,"kind":"history_end","task_id":"t","next_offset":3,"more":null,"extra":1}'));
  assert.ok(d.known && dec.decode(encodeMessage(d.message)) === '{"v":1,"kind":"history_end","task_id":"t","next_offset":3}');
  assert.throws(() => decodeMessage(utf8('{"v":1,"kind":"device_info","name":"a\\u0007","platform":"web","app_version":"1"}')), (e: unknown) => e instanceof MessageError && e.kind === 'TooLarge');
});

test('DeviceInfo.ephemeral (§15.4): written only when true, last; absent reads as false', () => {
  const ok = { name: "Ana's phone", platform: 'web', app_version: '0.1.0' };
  assert.equal(dec.decode(deviceInfoToJson(ok)), '{"v":1,"name":"Ana\'s phone","platform":"web","app_version":"0.1.0"}');
  assert.equal(dec.decode(deviceInfoToJson({ ...ok, ephemeral: false })), dec.decode(deviceInfoToJson(ok)));
  const web = deviceInfoToJson({ ...ok, ephemeral: true });
  assert.ok(dec.decode(web).endsWith(',"ephemeral":true}'), dec.decode(web));
  assert.equal(deviceInfoFromJson(web).ephemeral, true);
  assert.equal(deviceInfoFromJson(deviceInfoToJson(ok)).ephemeral, false);
  assert.throws(() => deviceInfoFromJson(utf8('{"v":1,"name":"a","platform":"web","app_version":"1","ephemeral":"yes"}')), (e: unknown) => e instanceof MessageError && e.kind === 'Malformed');
  // The device_info message carries it the same way.
  const m = decodeMessage(utf8('{"v":1,"kind":"device_info","name":"a","platform":"web","app_version":"1","ephemeral":true}'));
  assert.ok(m.known && m.message.ephemeral === true);
  if (m.known) assert.equal(dec.decode(encodeMessage(m.message)), '{"v":1,"kind":"device_info","name":"a","platform":"web","app_version":"1","ephemeral":true}');
});

test('finished.denied (§15.3.1): read and written back, only when not empty; anything but strings refused', () => {
  const wire = '{"v":1,"kind":"task_event","task_id":"t","offset":3,"at_ms":4,"event":{"type":"finished","status":"succeeded","summary":"s","denied":["Bash","edit a"]}}';
  const d = decodeMessage(utf8(wire));
  assert.ok(d.known);
  if (!d.known) return;
  assert.deepEqual((d.message.event as { denied?: unknown }).denied, ['Bash', 'edit a']);
  assert.equal(dec.decode(encodeMessage(d.message)), wire);
  // Absent (older desktops) reads as none, and an empty list is not written.
  const none = decodeMessage(utf8('{"v":1,"kind":"task_event","task_id":"t","offset":3,"at_ms":4,"event":{"type":"finished","status":"failed","summary":"s"}}'));
  assert.ok(none.known && Array.isArray(none.message.event && (none.message.event as { denied?: unknown }).denied));
  if (none.known) assert.ok(!dec.decode(encodeMessage(none.message)).includes('denied'));
  for (const bad of ['"Bash"', '[1]', '{}']) {
    const m = `{"v":1,"kind":"task_event","task_id":"t","offset":3,"at_ms":4,"event":{"type":"finished","status":"succeeded","summary":"s","denied":${bad}}}`;
    assert.throws(() => decodeMessage(utf8(m)), (e: unknown) => e instanceof MessageError && e.kind === 'Malformed', bad);
  }
});
