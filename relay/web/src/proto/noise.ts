// A minimal Noise implementation of exactly the two patterns Tandem uses (PROTOCOL.md §8):
//   Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s (pairing; initiator = phone; responder also provided)
//   Noise_KKpsk2_25519_ChaChaPoly_BLAKE2s (sessions; both sides)
// HKDF over HMAC-BLAKE2s as in the Noise spec §4.3; Split() returns the raw (k1, k2).
import { chacha20poly1305 } from '@noble/ciphers/chacha.js';
import { x25519 } from '@noble/curves/ed25519.js';
import { blake2s } from '@noble/hashes/blake2.js';
import { hmac } from '@noble/hashes/hmac.js';
import { concat, utf8 } from './bytes.ts';
import { x25519Dh } from './identity.ts';
import { noiseNonce } from './record.ts';

export const PAIRING_NOISE = 'Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s';
export const SESSION_NOISE = 'Noise_KKpsk2_25519_ChaChaPoly_BLAKE2s';
const DHLEN = 32;
const HASHLEN = 32;
const MAX_MSG = 65535;

export class NoiseError extends Error {}

function hmacB2s(key: Uint8Array, data: Uint8Array): Uint8Array {
  return hmac(blake2s, key, data);
}

/** Noise HKDF(chaining_key, input_key_material, n) for n = 2 or 3. */
export function hkdf(ck: Uint8Array, ikm: Uint8Array, n: 2 | 3): Uint8Array[] {
  const temp = hmacB2s(ck, ikm);
  const o1 = hmacB2s(temp, Uint8Array.of(1));
  const o2 = hmacB2s(temp, concat(o1, Uint8Array.of(2)));
  if (n === 2) return [o1, o2];
  return [o1, o2, hmacB2s(temp, concat(o2, Uint8Array.of(3)))];
}

class CipherState {
  k: Uint8Array | null = null;
  n = 0n;
  init(k: Uint8Array): void {
    this.k = k;
    this.n = 0n;
  }
  encrypt(ad: Uint8Array, pt: Uint8Array): Uint8Array {
    if (!this.k) return pt;
    const ct = chacha20poly1305(this.k, noiseNonce(this.n), ad).encrypt(pt);
    this.n++;
    return ct;
  }
  decrypt(ad: Uint8Array, ct: Uint8Array): Uint8Array {
    if (!this.k) return ct;
    let pt: Uint8Array;
    try {
      pt = chacha20poly1305(this.k, noiseNonce(this.n), ad).decrypt(ct);
    } catch {
      throw new NoiseError('decrypt failed');
    }
    this.n++;
    return pt;
  }
}

class SymmetricState {
  ck: Uint8Array;
  h: Uint8Array;
  cs = new CipherState();
  constructor(protocolName: string) {
    const name = utf8(protocolName);
    if (name.length <= HASHLEN) {
      this.h = new Uint8Array(HASHLEN);
      this.h.set(name);
    } else this.h = blake2s(name);
    this.ck = this.h.slice();
  }
  mixHash(data: Uint8Array): void {
    this.h = blake2s(concat(this.h, data));
  }
  mixKey(ikm: Uint8Array): void {
    const [ck, k] = hkdf(this.ck, ikm, 2);
    this.ck = ck!;
    this.cs.init(k!);
  }
  mixKeyAndHash(ikm: Uint8Array): void {
    const [ck, th, k] = hkdf(this.ck, ikm, 3);
    this.ck = ck!;
    this.mixHash(th!);
    this.cs.init(k!);
  }
  encryptAndHash(pt: Uint8Array): Uint8Array {
    const ct = this.cs.encrypt(this.h, pt);
    this.mixHash(ct);
    return ct;
  }
  decryptAndHash(ct: Uint8Array): Uint8Array {
    const pt = this.cs.decrypt(this.h, ct);
    this.mixHash(ct);
    return pt;
  }
  split(): [Uint8Array, Uint8Array] {
    const [k1, k2] = hkdf(this.ck, new Uint8Array(0), 2);
    return [k1!, k2!];
  }
}

type Token = 'e' | 's' | 'ee' | 'es' | 'se' | 'ss' | 'psk';
const PATTERNS: Record<'IKpsk2' | 'KKpsk2', { pre: { i: boolean; r: boolean }; msgs: Token[][] }> = {
  IKpsk2: { pre: { i: false, r: true }, msgs: [['e', 'es', 's', 'ss'], ['e', 'ee', 'se', 'psk']] },
  KKpsk2: { pre: { i: true, r: true }, msgs: [['e', 'es', 'ss'], ['e', 'ee', 'se', 'psk']] },
};

export interface HandshakeSpec {
  pattern: 'IKpsk2' | 'KKpsk2';
  initiator: boolean;
  /** Our static X25519 secret. */
  localPrivate: Uint8Array;
  /** The peer's static public key when known in advance (IK initiator, KK both). */
  remotePublic?: Uint8Array;
  psk: Uint8Array;
  prologue: Uint8Array;
  /** Our ephemeral secret (32 random bytes). */
  ephemeralPrivate: Uint8Array;
}

/** One two-message handshake. write()/read() alternate starting with the initiator's write. */
export class HandshakeState {
  private ss: SymmetricState;
  private s: Uint8Array;
  private sPub: Uint8Array;
  private e: Uint8Array;
  private ePub: Uint8Array;
  private rs: Uint8Array | null;
  private re: Uint8Array | null = null;
  private msgIndex = 0;
  private readonly psk: Uint8Array;
  private readonly tokens: Token[][];
  readonly initiator: boolean;

  constructor(spec: HandshakeSpec) {
    const p = PATTERNS[spec.pattern];
    if (spec.psk.length !== 32) throw new NoiseError('psk must be 32 bytes');
    this.ss = new SymmetricState(spec.pattern === 'IKpsk2' ? PAIRING_NOISE : SESSION_NOISE);
    this.initiator = spec.initiator;
    this.tokens = p.msgs;
    this.psk = spec.psk.slice();
    this.s = spec.localPrivate.slice();
    this.sPub = x25519.getPublicKey(this.s);
    this.e = spec.ephemeralPrivate.slice();
    this.ePub = x25519.getPublicKey(this.e);
    this.rs = spec.remotePublic ? spec.remotePublic.slice() : null;
    this.ss.mixHash(spec.prologue);
    // pre-messages: initiator's s first (KK), then responder's s (IK and KK)
    if (p.pre.i) {
      const initS = this.initiator ? this.sPub : this.rs;
      if (!initS) throw new NoiseError('missing initiator static key');
      this.ss.mixHash(initS);
    }
    if (p.pre.r) {
      const respS = this.initiator ? this.rs : this.sPub;
      if (!respS) throw new NoiseError('missing responder static key');
      this.ss.mixHash(respS);
    }
  }

  private dh(priv: Uint8Array, pub: Uint8Array | null): Uint8Array {
    if (!pub) throw new NoiseError('missing key for DH');
    const out = x25519Dh(priv, pub);
    if (!out) throw new NoiseError('DH not contributory');
    return out;
  }

  private token(t: Token, writing: boolean, out: Uint8Array[], r: { buf: Uint8Array; off: number }): void {
    const init = this.initiator;
    switch (t) {
      case 'e':
        if (writing) {
          out.push(this.ePub);
          this.ss.mixHash(this.ePub);
          this.ss.mixKey(this.ePub); // psk handshake: e also mixes into the key
        } else {
          if (r.buf.length - r.off < DHLEN) throw new NoiseError('message too short');
          this.re = r.buf.slice(r.off, r.off + DHLEN);
          r.off += DHLEN;
          this.ss.mixHash(this.re);
          this.ss.mixKey(this.re);
        }
        break;
      case 's':
        if (writing) out.push(this.ss.encryptAndHash(this.sPub));
        else {
          const len = this.ss.cs.k ? DHLEN + 16 : DHLEN;
          if (r.buf.length - r.off < len) throw new NoiseError('message too short');
          this.rs = this.ss.decryptAndHash(r.buf.slice(r.off, r.off + len));
          r.off += len;
        }
        break;
      case 'ee':
        this.ss.mixKey(this.dh(this.e, this.re));
        break;
      case 'es':
        this.ss.mixKey(init ? this.dh(this.e, this.rs) : this.dh(this.s, this.re));
        break;
      case 'se':
        this.ss.mixKey(init ? this.dh(this.s, this.re) : this.dh(this.e, this.rs));
        break;
      case 'ss':
        this.ss.mixKey(this.dh(this.s, this.rs));
        break;
      case 'psk':
        this.ss.mixKeyAndHash(this.psk);
        break;
    }
  }

  private myTurn(): boolean {
    return (this.msgIndex % 2 === 0) === this.initiator;
  }

  writeMessage(payload: Uint8Array): Uint8Array {
    if (this.msgIndex >= this.tokens.length || !this.myTurn()) throw new NoiseError('not our turn to write');
    const out: Uint8Array[] = [];
    for (const t of this.tokens[this.msgIndex]!) this.token(t, true, out, { buf: new Uint8Array(0), off: 0 });
    out.push(this.ss.encryptAndHash(payload));
    this.msgIndex++;
    const msg = concat(...out);
    if (msg.length > MAX_MSG) throw new NoiseError('message too long');
    return msg;
  }

  readMessage(message: Uint8Array): Uint8Array {
    if (this.msgIndex >= this.tokens.length || this.myTurn()) throw new NoiseError('not our turn to read');
    if (message.length > MAX_MSG) throw new NoiseError('message too long');
    const r = { buf: message, off: 0 };
    for (const t of this.tokens[this.msgIndex]!) this.token(t, false, [], r);
    const rest = message.slice(r.off);
    if (this.ss.cs.k && rest.length < 16) throw new NoiseError('message too short');
    const pt = this.ss.decryptAndHash(rest);
    this.msgIndex++;
    return pt;
  }

  isFinished(): boolean {
    return this.msgIndex >= this.tokens.length;
  }
  handshakeHash(): Uint8Array {
    return this.ss.h.slice();
  }
  remoteStatic(): Uint8Array | null {
    return this.rs ? this.rs.slice() : null;
  }
  /** Noise Split(): (k1, k2). Initiator tx = k1, rx = k2; responder the reverse. */
  split(): [Uint8Array, Uint8Array] {
    if (!this.isFinished()) throw new NoiseError('handshake not finished');
    return this.ss.split();
  }
}
