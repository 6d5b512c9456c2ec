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

const ok = (wire: string) => {
  const d = decodeMessage(utf8(wire));
  assert.ok(d.known, wire);
  return d.known ? d.message : ({} as never);
};
const malformed = (wire: string) =>
  assert.throws(() => decodeMessage(utf8(wire)), (e: unknown) => e instanceof MessageError && e.kind === 'Malformed', wire);

test('session hand-off (§15.3): sessions_request, sessions, task_submit.resume, accepted.resumed round-trip byte-exact', () => {
  for (const wire of [
    '{"v":1,"kind":"sessions_request"}',
    '{"v":1,"kind":"sessions_request","executor":"claude","workspace":"site"}',
    '{"v":1,"kind":"sessions","executor":"claude","sessions":[]}',
    '{"v":1,"kind":"sessions","executor":"claude","workspace":"site","sessions":[{"id":"2d6f","title":"fix the tests","updated_ms":1700000000000,"task_id":"t-1"},{"id":"9a","title":"","updated_ms":0}]}',
    '{"v":1,"kind":"task_submit","task_id":"t","text":"go on","workspace":"site","executor":"claude","resume":"2d6f"}',
    '{"v":1,"kind":"task_event","task_id":"t","offset":0,"at_ms":1,"event":{"type":"accepted","executor":"claude","project":"site","text":"go on","resumed":"2d6f"}}',
  ]) {
    assert.equal(dec.decode(encodeMessage(ok(wire))), wire);
  }
  const s = ok('{"v":1,"kind":"sessions","executor":"claude","sessions":[{"id":"a","title":"t","updated_ms":5,"extra":[1]}],"more":true}');
  assert.deepEqual(s, { kind: 'sessions', executor: 'claude', sessions: [{ id: 'a', title: 't', updated_ms: 5 }] }, 'unknown fields ignored, at both levels');
  // A submit without resume writes none (older desktops read it as before).
  assert.equal(dec.decode(encodeMessage({ kind: 'task_submit', task_id: 't', text: 'x', resume: undefined })), '{"v":1,"kind":"task_submit","task_id":"t","text":"x"}');
  for (const bad of [
    '{"v":1,"kind":"sessions","sessions":[]}',
    '{"v":1,"kind":"sessions","executor":"claude"}',
    '{"v":1,"kind":"sessions","executor":"claude","sessions":{}}',
    '{"v":1,"kind":"sessions","executor":"claude","sessions":[1]}',
    '{"v":1,"kind":"sessions","executor":"claude","sessions":[{"id":"a","title":"t"}]}',
    '{"v":1,"kind":"sessions","executor":"claude","sessions":[{"id":"a","title":"t","updated_ms":-1}]}',
    '{"v":1,"kind":"sessions","executor":"claude","sessions":[{"id":1,"title":"t","updated_ms":1}]}',
    '{"v":1,"kind":"sessions","executor":"claude","sessions":[{"id":"a","title":"t","updated_ms":1,"task_id":7}]}',
    '{"v":1,"kind":"sessions_request","executor":3}',
    '{"v":1,"kind":"task_submit","task_id":"t","text":"x","resume":true}',
    '{"v":1,"kind":"task_event","task_id":"t","offset":0,"at_ms":1,"event":{"type":"accepted","executor":"c","resumed":1}}',
  ]) {
    malformed(bad);
  }
  assert.throws(() => encodeMessage({ kind: 'sessions', executor: 'c', sessions: [{ id: 'a', title: 't', updated_ms: 1.5 }] }), (e: unknown) => e instanceof MessageError && e.kind === 'Malformed');
});

test('rules from a phone (§15.3): approval_decision.remember written only when true, approval_resolved.rule; refused unknown_session', () => {
  const yes = '{"v":1,"kind":"approval_decision","task_id":"t","approval_id":"a","allow":true,"remember":true}';
  assert.equal(dec.decode(encodeMessage(ok(yes))), yes);
  const plain = '{"v":1,"kind":"approval_decision","task_id":"t","approval_id":"a","allow":true}';
  assert.equal(ok(plain).remember, false, 'absent reads as false');
  assert.equal(dec.decode(encodeMessage(ok(plain))), plain);
  assert.equal(dec.decode(encodeMessage({ kind: 'approval_decision', task_id: 't', approval_id: 'a', allow: false, remember: false })), '{"v":1,"kind":"approval_decision","task_id":"t","approval_id":"a","allow":false}');
  malformed('{"v":1,"kind":"approval_decision","task_id":"t","approval_id":"a","allow":true,"remember":"yes"}');
  const rule = '{"v":1,"kind":"task_event","task_id":"t","offset":4,"at_ms":5,"event":{"type":"approval_resolved","approval_id":"a","allow":true,"by":"phone:abc","rule":"allow Bash(cargo test --lib)"}}';
  const m = ok(rule);
  assert.equal((m.event as { rule?: string }).rule, 'allow Bash(cargo test --lib)');
  assert.equal(dec.decode(encodeMessage(m)), rule);
  const none = ok('{"v":1,"kind":"task_event","task_id":"t","offset":4,"at_ms":5,"event":{"type":"approval_resolved","approval_id":"a","allow":true,"by":"rule:allow Bash(x)"}}');
  assert.equal((none.event as { rule?: string }).rule, undefined);
  malformed('{"v":1,"kind":"task_event","task_id":"t","offset":4,"at_ms":5,"event":{"type":"approval_resolved","approval_id":"a","allow":true,"by":"x","rule":["allow"]}}');
  // A new refusal code is just a code: read as any other.
  const refused = '{"v":1,"kind":"refused","task_id":"t","code":"unknown_session","message":"no session 9 for claude in site"}';
  assert.equal(dec.decode(encodeMessage(ok(refused))), refused);
  const noTask = '{"v":1,"kind":"refused","code":"not_supported","message":"jsonl cannot list sessions"}';
  assert.equal(dec.decode(encodeMessage(ok(noTask))), noTask);
});

test('finished.failed and finished.expired (§15.3.1): read and written back after denied, only when not empty', () => {
  const wire = '{"v":1,"kind":"task_event","task_id":"t","offset":3,"at_ms":4,"event":{"type":"finished","status":"succeeded","summary":"s","denied":["edit a"],"failed":["Bash"],"expired":["edit a"]}}';
  const m = ok(wire);
  assert.deepEqual((m.event as { failed?: unknown }).failed, ['Bash']);
  assert.deepEqual((m.event as { expired?: unknown }).expired, ['edit a']);
  assert.equal(dec.decode(encodeMessage(m)), wire);
  const none = ok('{"v":1,"kind":"task_event","task_id":"t","offset":3,"at_ms":4,"event":{"type":"finished","status":"failed","summary":"s","failed":[]}}');
  assert.ok(!dec.decode(encodeMessage(none)).includes('"failed":'), 'an empty list is not written');
  malformed('{"v":1,"kind":"task_event","task_id":"t","offset":3,"at_ms":4,"event":{"type":"finished","status":"failed","summary":"s","expired":"x"}}');
});
