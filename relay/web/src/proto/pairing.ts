// Pairing, phone side (PROTOCOL.md §9.4, proto/src/pairing.rs PhonePairing): IKpsk2 initiator.
import { concat, u32be, utf8 } from './bytes.ts';
import { type Content, decodeContent, encodeContent } from './content.ts';
import { type Entropy, osEntropy } from './entropy.ts';
import { decodeEnvelope, encodeEnvelope, type Envelope } from './envelope.ts';
import { intoSession } from './handshake.ts';
import { type DeviceKey, PublicKey } from './identity.ts';
import { label } from './kdf.ts';
import { type DeviceInfo, deviceInfoFromJson, deviceInfoToJson, validateDeviceInfo } from './message.ts';
import { HandshakeState, NoiseError } from './noise.ts';
import { type QrPayload, pairingId } from './qr.ts';
import { RecordError, type Session } from './record.ts';
import { Sas } from './sas.ts';

export class PairingError extends Error {
  constructor(
    public readonly kind: 'Handshake' | 'Unexpected' | 'DeviceInfo' | 'Record' | 'Content' | 'Refused',
    public readonly reason = '',
  ) {
    super(`pairing: ${kind}${reason ? ` (${reason})` : ''}`);
  }
}

/** pairing prologue = "tandem pair v1" ‖ pairing_id[16] ‖ u32be(expires_at) (34 bytes). */
export function pairingPrologue(qr: QrPayload): Uint8Array {
  return concat(utf8(label.PAIR_PROLOGUE), pairingId(qr.secret), u32be(qr.expiresAt));
}

export interface PairedPeer {
  publicKey: PublicKey;
  info: DeviceInfo;
  sessionPsk: Uint8Array;
  /** The pairing session: becomes the link's first session (counter 1 next). */
  session: Session;
  sas: Sas;
}

function env(e: Uint8Array | Envelope): Envelope {
  return e instanceof Uint8Array ? decodeEnvelope(e) : e;
}

export class PhonePairing {
  private constructor(
    private readonly hs: HandshakeState,
    private readonly desktop: PublicKey,
  ) {}

  /** Returns the state and the PairHello envelope to send in a PairClaim. Expiry is checked by parsePairingLink. */
  static start(key: DeviceKey, qr: QrPayload, ownInfo: DeviceInfo, entropy: Entropy = osEntropy): { state: PhonePairing; hello: Uint8Array } {
    try {
      validateDeviceInfo(ownInfo);
    } catch (e) {
      throw new PairingError('DeviceInfo', String(e));
    }
    const hs = new HandshakeState({
      pattern: 'IKpsk2',
      initiator: true,
      localPrivate: key.toBytes(),
      remotePublic: qr.desktop.bytes,
      psk: qr.secret,
      prologue: pairingPrologue(qr),
      ephemeralPrivate: entropy.fill(32),
    });
    const msg = hs.writeMessage(deviceInfoToJson(ownInfo));
    return { state: new PhonePairing(hs, qr.desktop), hello: encodeEnvelope({ kind: 'PairHello', noise: msg }) };
  }

  /** Reads the PairWelcome; returns the next state and the PairConfirm record to send. */
  onWelcome(welcome: Uint8Array | Envelope): { state: PhoneAwaitingResult; confirm: Uint8Array } {
    const w = env(welcome);
    if (w.kind !== 'PairWelcome') throw new PairingError('Unexpected');
    let payload: Uint8Array;
    try {
      payload = this.hs.readMessage(w.noise);
    } catch (e) {
      if (e instanceof NoiseError) throw new PairingError('Handshake', e.message);
      throw e;
    }
    let info: DeviceInfo;
    try {
      info = deviceInfoFromJson(payload);
    } catch (e) {
      throw new PairingError('DeviceInfo', String(e));
    }
    const sas = Sas.fromHandshakeHash(this.hs.handshakeHash());
    const session = intoSession(this.hs);
    const confirm = session.seal(encodeContent({ type: 'PairConfirm' }));
    return { state: new PhoneAwaitingResult(this.desktop, info, session, sas), confirm };
  }
}

export class PhoneAwaitingResult {
  constructor(
    private readonly desktop: PublicKey,
    readonly desktopInfo: DeviceInfo,
    private readonly session: Session,
    readonly sas: Sas,
  ) {}

  onResult(result: Uint8Array | Envelope): PairedPeer {
    let plain: Uint8Array;
    try {
      plain = this.session.open(env(result));
    } catch (e) {
      if (e instanceof RecordError) throw new PairingError('Record', e.kind);
      throw e;
    }
    let c: Content;
    try {
      c = decodeContent(plain);
    } catch (e) {
      throw new PairingError('Content', String(e));
    }
    if (c.type !== 'PairResult') throw new PairingError('Unexpected');
    if (!c.accepted) throw new PairingError('Refused', c.reason);
    return { publicKey: new PublicKey(this.desktop.bytes), info: this.desktopInfo, sessionPsk: c.sessionPsk, session: this.session, sas: this.sas };
  }
}
