import assert from 'node:assert/strict';
import { test } from 'node:test';
import { bytesToHex, hexToBytes, utf8 } from '../src/proto/bytes.ts';
import { encodeContent } from '../src/proto/content.ts';
import { DeterministicEntropy } from '../src/proto/entropy.ts';
import { DeviceKey, PublicKey } from '../src/proto/identity.ts';
import { deviceInfoFromJson, deviceInfoToJson } from '../src/proto/message.ts';
import { PhonePairing, pairingPrologue } from '../src/proto/pairing.ts';
import { HandshakeState } from '../src/proto/noise.ts';
import { decodeEnvelope } from '../src/proto/envelope.ts';
import { QrError, pairingId, pairingLinkString, parsePairingLink, relayOrigin } from '../src/proto/qr.ts';
import { SessionInitiator, respond } from '../src/proto/session.ts';
import { loadVector } from './vectors.ts';

const v = loadVector('pairing');
const seed = (hex: string): DeterministicEntropy => new DeterministicEntropy(hexToBytes(hex));

test('pairing.json: the QR link parses (phone at now + 1)', () => {
  const link = parsePairingLink(v.qr_link, v.now_unix + 1);
  const desktop = new DeviceKey(hexToBytes(v.desktop_secret)).public();
  assert.ok(link.payload.desktop.equals(desktop));
  assert.equal(bytesToHex(link.payload.secret), v.qr_secret);
  assert.equal(link.payload.expiresAt, v.qr_expires_at);
  assert.equal(bytesToHex(pairingId(link.payload.secret)), v.pairing_id);
  assert.equal(relayOrigin(link), 'https://relay.example.com');
  assert.equal(link.path, '/p');
  assert.equal(pairingLinkString('https://relay.example.com/p', link.payload), v.qr_link);
  // lower-case fragment accepted; expiry; plain http only on a local network
  parsePairingLink(v.qr_link.replace(/#.*/, (m: string) => m.toLowerCase()), v.now_unix);
  assert.throws(() => parsePairingLink(v.qr_link, v.qr_expires_at), (e: unknown) => e instanceof QrError && e.detail.kind === 'Expired');
  assert.throws(() => parsePairingLink(v.qr_link.replace('https://', 'http://'), v.now_unix), (e: unknown) => e instanceof QrError && e.detail.kind === 'NotALink');
  parsePairingLink(v.qr_link.replace('https://relay.example.com', 'http://192.168.1.5:7878'), v.now_unix);
  parsePairingLink(v.qr_link.replace('https://relay.example.com', 'http://[fd00::1]:7878'), v.now_unix);
  assert.throws(() => parsePairingLink(v.qr_link.slice(0, -1), v.now_unix), (e: unknown) => e instanceof QrError);
  // the desktop's QR secret is block 0 of its stream
  assert.equal(bytesToHex(seed(v.desktop_entropy_seed).fill(32)), v.qr_secret);
});

test('a query before the payload (the nonce of tandem up on plain http) is kept and ignored', () => {
  const base = 'http://192.168.1.5:7878/p?n=K3VQ7ZTA';
  const plain = parsePairingLink(v.qr_link, v.now_unix);
  const link = parsePairingLink(pairingLinkString(base, plain.payload), v.now_unix);
  assert.equal(link.origin, 'http://192.168.1.5:7878');
  assert.equal(link.path, '/p');
  assert.equal(link.query, '?n=K3VQ7ZTA');
  assert.equal(relayOrigin(link), 'http://192.168.1.5:7878');
  assert.equal(bytesToHex(link.payload.secret), v.qr_secret);
  assert.equal(pairingLinkString(`${link.origin}${link.path}${link.query}`, link.payload), pairingLinkString(base, plain.payload));
  assert.equal(plain.query, '');
  for (const bad of ['https://x/p?n=a b', 'https://x/p?n=%41', 'https://x/p?n=<', 'https://x/p?a?b']) {
    assert.throws(
      () => parsePairingLink(pairingLinkString(bad, plain.payload), v.now_unix),
      (e: unknown) => e instanceof QrError && e.detail.kind === 'NotALink' && e.detail.why === 'unexpected characters in the query',
      bad,
    );
  }
  assert.throws(() => parsePairingLink(pairingLinkString('http://8.8.8.8/p?n=AAAAAAAA', plain.payload), v.now_unix), (e: unknown) => e instanceof QrError && e.detail.kind === 'NotALink');
});

test('pairing.json: the phone side of the transcript, byte-exact', () => {
  const link = parsePairingLink(v.qr_link, v.now_unix + 1);
  const phone = new DeviceKey(hexToBytes(v.phone_secret));
  const phoneInfo = deviceInfoFromJson(utf8(v.phone_info_json));
  assert.equal(new TextDecoder().decode(deviceInfoToJson(phoneInfo)), v.phone_info_json);
  const ent = seed(v.phone_entropy_seed);
  const { state, hello } = PhonePairing.start(phone, link.payload, phoneInfo, ent);
  assert.equal(bytesToHex(hello), v.pair_hello);
  // the hello starts with the ephemeral public key drawn from block 0
  const ePub = new DeviceKey(hexToBytes(v.phone_ephemeral_secret)).public();
  assert.equal(bytesToHex(hello.slice(2, 34)), bytesToHex(ePub.bytes));

  const { state: waiting, confirm } = state.onWelcome(hexToBytes(v.pair_welcome));
  assert.equal(bytesToHex(confirm), v.pair_confirm);
  assert.equal(waiting.sas.digits(), v.sas);
  assert.equal(JSON.stringify(waiting.desktopInfo), JSON.stringify(deviceInfoFromJson(utf8(v.desktop_info_json))));

  const peer = waiting.onResult(hexToBytes(v.pair_result));
  assert.equal(bytesToHex(peer.sessionPsk), v.session_psk);
  assert.equal(bytesToHex(peer.session.id), v.session_id);
  assert.ok(peer.publicKey.equals(new DeviceKey(hexToBytes(v.desktop_secret)).public()));
  assert.equal(peer.session.nextCounter(), 1n);
  assert.equal(bytesToHex(peer.session.seal(hexToBytes(v.phone_first_data_plaintext))), v.phone_first_data_record);
});

test('pairing.json: renewal (KKpsk2), phone initiator and desktop responder, byte-exact', () => {
  const r = v.renewal;
  const phone = new DeviceKey(hexToBytes(v.phone_secret));
  const desktop = new DeviceKey(hexToBytes(v.desktop_secret));
  const psk = hexToBytes(v.session_psk);
  const pEnt = seed(r.phone_entropy_seed);
  const { state, init } = SessionInitiator.start({ local: phone, remote: desktop.public(), psk }, BigInt(r.timestamp_ms), pEnt);
  assert.equal(bytesToHex(state.handshakeId), r.handshake_id);
  assert.equal(bytesToHex(init), r.session_init);

  const dRes = respond({ local: desktop, remote: phone.public(), psk }, init, 0n, seed(r.desktop_entropy_seed));
  assert.equal(bytesToHex(dRes.accept), r.session_accept);
  assert.equal(dRes.timestampMs, BigInt(r.timestamp_ms));
  assert.equal(bytesToHex(dRes.session.id), r.new_session_id);

  const session = state.finish(hexToBytes(r.session_accept));
  assert.equal(bytesToHex(session.id), r.new_session_id);
  const rec = session.seal(encodeContent({ type: 'Ack', ack: 0n }));
  assert.equal(bytesToHex(rec), r.first_record_from_phone);
  assert.deepEqual(dRes.session.open(rec), encodeContent({ type: 'Ack', ack: 0n }));

  // a replayed init (timestamp not newer) is stale; a wrong PSK fails the handshake
  assert.throws(() => respond({ local: desktop, remote: phone.public(), psk }, init, BigInt(r.timestamp_ms), seed(r.desktop_entropy_seed)), /Stale/);
  const wrong = new Uint8Array(32).fill(1);
  const d2 = respond({ local: desktop, remote: phone.public(), psk: wrong }, init, 0n, seed(r.desktop_entropy_seed));
  assert.throws(() => state.finish(d2.accept), /Handshake/);
  assert.ok(new PublicKey(phone.public().bytes));
});

test('pairing: a tampered welcome or a wrong QR secret fails the handshake', () => {
  const link = parsePairingLink(v.qr_link, v.now_unix + 1);
  const phone = new DeviceKey(hexToBytes(v.phone_secret));
  const info = deviceInfoFromJson(utf8(v.phone_info_json));
  const a = PhonePairing.start(phone, link.payload, info, seed(v.phone_entropy_seed));
  const w = hexToBytes(v.pair_welcome);
  w[w.length - 1]! ^= 1;
  assert.throws(() => a.state.onWelcome(w), /Handshake/);
  const wrongSecret = { ...link.payload, secret: new Uint8Array(32).fill(9) };
  const b = PhonePairing.start(phone, wrongSecret, info, seed(v.phone_entropy_seed));
  assert.throws(() => b.state.onWelcome(hexToBytes(v.pair_welcome)), /Handshake/);
  const c = PhonePairing.start(phone, link.payload, info, seed(v.phone_entropy_seed));
  assert.throws(() => c.state.onWelcome(hexToBytes(v.pair_hello)), /Unexpected/);
});

test('noise: the IKpsk2 responder reproduces pair_welcome (desktop side, Noise level only)', () => {
  const link = parsePairingLink(v.qr_link, v.now_unix + 1);
  const hs = new HandshakeState({
    pattern: 'IKpsk2',
    initiator: false,
    localPrivate: hexToBytes(v.desktop_secret),
    psk: link.payload.secret,
    prologue: pairingPrologue(link.payload),
    ephemeralPrivate: hexToBytes(v.desktop_ephemeral_secret),
  });
  const hello = decodeEnvelope(hexToBytes(v.pair_hello));
  assert.equal(hello.kind, 'PairHello');
  if (hello.kind !== 'PairHello') return;
  assert.equal(new TextDecoder().decode(hs.readMessage(hello.noise)), v.phone_info_json);
  assert.equal(bytesToHex(hs.remoteStatic()!), bytesToHex(new DeviceKey(hexToBytes(v.phone_secret)).public().bytes));
  const welcome = hs.writeMessage(utf8(v.desktop_info_json));
  assert.equal(bytesToHex(Uint8Array.of(1, 2, ...welcome)), v.pair_welcome);
});
