// Two devices paired for real, for the link and upkeep tests: the phone side is PhonePairing; the
// desktop side (not ported: the web client is never a desktop) is emulated at the Noise level
// exactly as DesktopPairing does it.
import assert from 'node:assert/strict';
import { utf8 } from '../src/proto/bytes.ts';
import { decodeContent, encodeContent } from '../src/proto/content.ts';
import { type OutboxLimits, defaultOutboxLimits } from '../src/proto/delivery.ts';
import { DeterministicEntropy } from '../src/proto/entropy.ts';
import { decodeEnvelope, encodeEnvelope } from '../src/proto/envelope.ts';
import { intoSession } from '../src/proto/handshake.ts';
import { DeviceKey, PublicKey } from '../src/proto/identity.ts';
import { Link } from '../src/proto/link.ts';
import { deviceInfoFromJson, deviceInfoToJson } from '../src/proto/message.ts';
import { HandshakeState } from '../src/proto/noise.ts';
import { type PairedPeer, PhonePairing, pairingPrologue } from '../src/proto/pairing.ts';
import type { QrPayload } from '../src/proto/qr.ts';

export const NOW = 1_800_000_000;
export const b = (s: string): Uint8Array => utf8(s);
export const ent = (n: number): DeterministicEntropy => new DeterministicEntropy(new Uint8Array(32).fill(n));

export interface Peer {
  key: DeviceKey;
  link: Link;
}

/**
 * A real pairing: the phone side is PhonePairing; the desktop side (not ported: the web client is
 * never a desktop) is emulated at the Noise level exactly as DesktopPairing does it.
 */
export function pairPeers(e: DeterministicEntropy, limits: OutboxLimits = defaultOutboxLimits()): { desk: Peer; phone: Peer; deskPaired: PairedPeer } {
  const dk = new DeviceKey(e.fill(32));
  const pk = new DeviceKey(e.fill(32));
  const qr: QrPayload = { desktop: dk.public(), secret: e.fill(32), expiresAt: NOW + 120 };
  const phoneInfo = deviceInfoFromJson(b('{"v":1,"name":"phone","platform":"web","app_version":"0"}'));
  const deskInfo = deviceInfoFromJson(b('{"v":1,"name":"desk","platform":"linux","app_version":"0"}'));
  const { state, hello } = PhonePairing.start(pk, qr, phoneInfo, e);
  const hs = new HandshakeState({
    pattern: 'IKpsk2',
    initiator: false,
    localPrivate: dk.toBytes(),
    psk: qr.secret,
    prologue: pairingPrologue(qr),
    ephemeralPrivate: e.fill(32),
  });
  const h = decodeEnvelope(hello);
  assert.equal(h.kind, 'PairHello');
  if (h.kind !== 'PairHello') throw new Error('unreachable');
  hs.readMessage(h.noise);
  const welcome = encodeEnvelope({ kind: 'PairWelcome', noise: hs.writeMessage(deviceInfoToJson(deskInfo)) });
  const deskSession = intoSession(hs);
  const { state: waiting, confirm } = state.onWelcome(welcome);
  assert.deepEqual(decodeContent(deskSession.open(confirm)), { type: 'PairConfirm' });
  const psk = e.fill(32);
  const result = deskSession.seal(encodeContent({ type: 'PairResult', accepted: true, sessionPsk: psk, reason: '' }));
  const phonePaired = waiting.onResult(result);
  const deskPaired: PairedPeer = { publicKey: new PublicKey(hs.remoteStatic()!), info: phoneInfo, sessionPsk: psk, session: deskSession, sas: waiting.sas };
  return {
    desk: { key: dk, link: Link.fromPaired(deskPaired, limits) },
    phone: { key: pk, link: Link.fromPaired(phonePaired, limits) },
    deskPaired,
  };
}

