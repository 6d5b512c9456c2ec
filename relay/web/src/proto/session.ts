// Session handshakes between paired devices (PROTOCOL.md §10.2, proto/src/session.rs): KKpsk2,
// both static keys pinned at pairing, the session PSK from pairing.
import { concat, u64be, utf8 } from './bytes.ts';
import { type Entropy, osEntropy } from './entropy.ts';
import { decodeEnvelope, encodeEnvelope, type Envelope } from './envelope.ts';
import { intoSession } from './handshake.ts';
import type { DeviceId, DeviceKey, PublicKey } from './identity.ts';
import { label } from './kdf.ts';
import { HandshakeState, NoiseError } from './noise.ts';
import type { Session } from './record.ts';
import { equalBytes } from './bytes.ts';

export type SessionErrorKind = 'Handshake' | 'Stale' | 'UnexpectedEnvelope' | 'HandshakeIdMismatch' | 'BadPayload';
export class SessionError extends Error {
  constructor(public readonly kind: SessionErrorKind, detail = '') {
    super(`session: ${kind}${detail ? ` (${detail})` : ''}`);
  }
}

export interface PeerSecrets {
  local: DeviceKey;
  remote: PublicKey;
  psk: Uint8Array;
}

/** "tandem session v1" ‖ initiator_id[16] ‖ responder_id[16] ‖ handshake_id[8] (57 bytes). */
export function sessionPrologue(initiator: DeviceId, responder: DeviceId, handshakeId: Uint8Array): Uint8Array {
  return concat(utf8(label.SESSION_PROLOGUE), initiator.bytes, responder.bytes, handshakeId);
}

function env(e: Uint8Array | Envelope): Envelope {
  return e instanceof Uint8Array ? decodeEnvelope(e) : e;
}

function wrap<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof NoiseError) throw new SessionError('Handshake', e.message);
    throw e;
  }
}

export class SessionInitiator {
  private constructor(
    private readonly hs: HandshakeState,
    readonly handshakeId: Uint8Array,
  ) {}

  /** Draws handshake_id (8 bytes, one block) then the ephemeral; returns the SessionInit envelope. */
  static start(peer: PeerSecrets, nowMs: bigint, entropy: Entropy = osEntropy): { state: SessionInitiator; init: Uint8Array } {
    const handshakeId = entropy.fill(8);
    const prologue = sessionPrologue(peer.local.public().deviceId(), peer.remote.deviceId(), handshakeId);
    const hs = new HandshakeState({
      pattern: 'KKpsk2',
      initiator: true,
      localPrivate: peer.local.toBytes(),
      remotePublic: peer.remote.bytes,
      psk: peer.psk,
      prologue,
      ephemeralPrivate: entropy.fill(32),
    });
    const msg = wrap(() => hs.writeMessage(u64be(nowMs)));
    return { state: new SessionInitiator(hs, handshakeId), init: encodeEnvelope({ kind: 'SessionInit', handshakeId, noise: msg }) };
  }

  finish(accept: Uint8Array | Envelope): Session {
    const e = env(accept);
    if (e.kind !== 'SessionAccept') throw new SessionError('UnexpectedEnvelope');
    if (!equalBytes(e.handshakeId, this.handshakeId)) throw new SessionError('HandshakeIdMismatch');
    wrap(() => this.hs.readMessage(e.noise));
    return intoSession(this.hs);
  }
}

/** Answer a SessionInit; returns the new session, the SessionAccept envelope and the accepted timestamp. */
export function respond(
  peer: PeerSecrets,
  init: Uint8Array | Envelope,
  lastTimestampMs: bigint,
  entropy: Entropy = osEntropy,
): { session: Session; accept: Uint8Array; timestampMs: bigint } {
  const e = env(init);
  if (e.kind !== 'SessionInit') throw new SessionError('UnexpectedEnvelope');
  const prologue = sessionPrologue(peer.remote.deviceId(), peer.local.public().deviceId(), e.handshakeId);
  const hs = new HandshakeState({
    pattern: 'KKpsk2',
    initiator: false,
    localPrivate: peer.local.toBytes(),
    remotePublic: peer.remote.bytes,
    psk: peer.psk,
    prologue,
    ephemeralPrivate: entropy.fill(32),
  });
  const payload = wrap(() => hs.readMessage(e.noise));
  if (payload.length !== 8) throw new SessionError('BadPayload');
  const ts = new DataView(payload.buffer, payload.byteOffset, 8).getBigUint64(0, false);
  if (ts <= lastTimestampMs) throw new SessionError('Stale', `${ts} <= ${lastTimestampMs}`);
  const msg = wrap(() => hs.writeMessage(new Uint8Array(0)));
  return { session: intoSession(hs), accept: encodeEnvelope({ kind: 'SessionAccept', handshakeId: e.handshakeId, noise: msg }), timestampMs: ts };
}

/** Collision rule (§10.4): the device with the lower id keeps its own handshake. */
export function winsCollision(local: DeviceId, remote: DeviceId): boolean {
  return local.compare(remote) < 0;
}
