import assert from 'node:assert/strict';
import { test } from 'node:test';
import { bytesToHex, hexToBytes } from '../src/proto/bytes.ts';
import { decodeFrame, encodeFrame } from '../src/proto/frame.ts';
import { DeviceId, DeviceKey, PublicKey } from '../src/proto/identity.ts';
import { DeterministicEntropy } from '../src/proto/entropy.ts';
import { pairingId } from '../src/proto/qr.ts';
import { RelayAuthFailure, normalizeName, prove } from '../src/proto/relayAuth.ts';
import { Sas } from '../src/proto/sas.ts';
import { loadVector } from './vectors.ts';

const v = loadVector('identity');

test('identity.json: key, device id, display forms, fingerprint, X25519', () => {
  const key = new DeviceKey(hexToBytes(v.device_secret));
  const pub = key.public();
  assert.equal(bytesToHex(pub.bytes), v.device_public);
  assert.equal(pub.toString(), v.device_public_display);
  assert.ok(PublicKey.parse(v.device_public_display).equals(pub));
  const id = pub.deviceId();
  assert.equal(bytesToHex(id.bytes), v.device_id);
  assert.equal(id.toString(), v.device_id_display);
  assert.ok(DeviceId.parse(v.device_id_display).equals(id));
  assert.equal(pub.fingerprint(), v.fingerprint);
  const shared = key.diffieHellman(new PublicKey(hexToBytes(v.other_public)));
  assert.ok(shared);
  assert.equal(bytesToHex(shared!), v.x25519_with_other);
});

test('device id and public key parsing is strict', () => {
  assert.throws(() => DeviceId.parse(v.device_id_display.toUpperCase()));
  assert.throws(() => DeviceId.parse(v.device_id_display.slice(0, 25)));
  // last char carries 2 unused bits: 'f' (00101) has them non-zero → not canonical
  assert.throws(() => DeviceId.parse(v.device_id_display.slice(0, 25) + 'f'));
  assert.throws(() => PublicKey.parse(v.device_public_display + 'A'));
});

test('identity.json: pairing id and SAS', () => {
  assert.equal(bytesToHex(pairingId(hexToBytes(v.pairing_secret))), v.pairing_id);
  assert.equal(Sas.fromHandshakeHash(new Uint8Array(32).fill(7)).digits(), v.sas_for_hash_of_0x07);
});

test('identity.json: relay auth challenge, proof and Auth frame', () => {
  const ra = v.relay_auth;
  const ent = new DeterministicEntropy(new Uint8Array(32).fill(0x77));
  assert.equal(bytesToHex(ent.fill(32)), ra.relay_ephemeral_secret);
  assert.equal(bytesToHex(ent.fill(32)), ra.nonce);
  assert.equal(bytesToHex(new DeviceKey(hexToBytes(ra.relay_ephemeral_secret)).public().bytes), ra.relay_ephemeral_public);
  const ch = decodeFrame(hexToBytes(ra.challenge_frame));
  assert.equal(ch.type, 'Challenge');
  if (ch.type !== 'Challenge') return;
  assert.equal(bytesToHex(ch.nonce), ra.nonce);
  assert.equal(ch.relayName, ra.relay_name);
  assert.equal(bytesToHex(encodeFrame(ch)), ra.challenge_frame);
  const key = new DeviceKey(hexToBytes(v.device_secret));
  const auth = prove(key, ra.role, 'Relay.Example.COM.', hexToBytes(ra.challenge_frame));
  assert.equal(bytesToHex(auth), ra.auth_frame);
  const f = decodeFrame(auth);
  assert.equal(f.type === 'Auth' && bytesToHex(f.proof), ra.proof);
  assert.throws(
    () => prove(key, ra.role, 'other.example.com', hexToBytes(ra.challenge_frame)),
    (e: unknown) => e instanceof RelayAuthFailure && e.detail.kind === 'WrongRelay',
  );
  assert.throws(
    () => prove(key, ra.role, ra.relay_name, hexToBytes('0101010102')),
    (e: unknown) => e instanceof RelayAuthFailure && e.detail.kind === 'NotAChallenge',
  );
  // a proof made as a phone differs
  assert.notEqual(bytesToHex(prove(key, 'phone', ra.relay_name, hexToBytes(ra.challenge_frame))), ra.auth_frame);
});

test('relay name normalisation', () => {
  assert.equal(normalizeName('  Relay.Example.COM. '), 'relay.example.com');
  assert.equal(normalizeName('relay.example.com:8443'), 'relay.example.com:8443');
  assert.equal(normalizeName('a'.repeat(256)), null);
});
