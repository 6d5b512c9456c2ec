// Device identity (PROTOCOL.md §2, proto/src/identity.rs): X25519 key pair, device id,
// display forms, fingerprint.
import { x25519 } from '@noble/curves/ed25519.js';
import {
  base32Decode,
  base32Encode,
  base64UrlDecode,
  base64UrlEncode,
  bytesToHex,
  compareBytes,
  equalBytes,
} from './bytes.ts';
import { hash, label } from './kdf.ts';

export class IdentityError extends Error {
  constructor(public readonly kind: 'BadDeviceId' | 'BadPublicKey') {
    super(kind);
  }
}

export type Role = 'desktop' | 'phone';
export const ROLE_BYTE: Record<Role, number> = { desktop: 1, phone: 2 };
export function roleFromByte(b: number): Role | null {
  return b === 1 ? 'desktop' : b === 2 ? 'phone' : null;
}

export class DeviceId {
  constructor(public readonly bytes: Uint8Array) {
    if (bytes.length !== 16) throw new IdentityError('BadDeviceId');
  }
  /** 26 characters of lower-case unpadded base32. */
  toString(): string {
    return base32Encode(this.bytes, true);
  }
  static parse(s: string): DeviceId {
    if (s.length !== 26) throw new IdentityError('BadDeviceId');
    const b = base32Decode(s, true);
    if (!b || b.length !== 16) throw new IdentityError('BadDeviceId');
    return new DeviceId(b);
  }
  equals(o: DeviceId): boolean {
    return equalBytes(this.bytes, o.bytes);
  }
  compare(o: DeviceId): number {
    return compareBytes(this.bytes, o.bytes);
  }
}

export class PublicKey {
  constructor(public readonly bytes: Uint8Array) {
    if (bytes.length !== 32) throw new IdentityError('BadPublicKey');
  }
  deviceId(): DeviceId {
    return new DeviceId(hash(label.DEVICE_ID, [this.bytes]).slice(0, 16));
  }
  fingerprint(): string {
    const h = hash(label.FINGERPRINT, [this.bytes]).slice(0, 10);
    const groups: string[] = [];
    for (let i = 0; i < 10; i += 2) groups.push(bytesToHex(h.slice(i, i + 2)));
    return groups.join('-');
  }
  /** Unpadded base64url, 43 characters. */
  toString(): string {
    return base64UrlEncode(this.bytes);
  }
  static parse(s: string): PublicKey {
    if (s.length !== 43) throw new IdentityError('BadPublicKey');
    const b = base64UrlDecode(s);
    if (!b || b.length !== 32) throw new IdentityError('BadPublicKey');
    return new PublicKey(b);
  }
  equals(o: PublicKey): boolean {
    return equalBytes(this.bytes, o.bytes);
  }
}

/** X25519 DH; null when the result is not contributory (all zero: low-order point). */
export function x25519Dh(secret: Uint8Array, theirPublic: Uint8Array): Uint8Array | null {
  let out: Uint8Array;
  try {
    out = x25519.getSharedSecret(secret, theirPublic);
  } catch {
    return null; // noble refuses an all-zero result
  }
  let acc = 0;
  for (const b of out) acc |= b;
  return acc === 0 ? null : out;
}

export class DeviceKey {
  private readonly secret: Uint8Array;
  constructor(secret: Uint8Array) {
    if (secret.length !== 32) throw new RangeError('device secret must be 32 bytes');
    this.secret = secret.slice();
  }
  static generate(random: (n: number) => Uint8Array = (n) => crypto.getRandomValues(new Uint8Array(n))): DeviceKey {
    return new DeviceKey(random(32));
  }
  toBytes(): Uint8Array {
    return this.secret.slice();
  }
  public(): PublicKey {
    return new PublicKey(x25519.getPublicKey(this.secret));
  }
  diffieHellman(their: PublicKey): Uint8Array | null {
    return x25519Dh(this.secret, their.bytes);
  }
}
