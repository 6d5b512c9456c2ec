// Domain-separated BLAKE2s hash and keyed MAC (PROTOCOL.md §3, proto/src/kdf.rs).
import { blake2s } from '@noble/hashes/blake2.js';
import { concat, utf8 } from './bytes.ts';

export const label = {
  DEVICE_ID: 'tandem device id v1',
  FINGERPRINT: 'tandem fingerprint v1',
  RELAY_AUTH_KEY: 'tandem relay auth key v1',
  RELAY_AUTH: 'tandem relay auth v1',
  PAIRING_ID: 'tandem pairing id v1',
  PAIR_PROLOGUE: 'tandem pair v1',
  SESSION_PROLOGUE: 'tandem session v1',
  SAS: 'tandem sas v1',
  SESSION_ID: 'tandem session id v1',
  TEST_ENTROPY: 'tandem test entropy v1',
} as const;

function framed(lbl: string, parts: Uint8Array[]): Uint8Array {
  return concat(utf8(lbl), Uint8Array.of(0), ...parts);
}

/** hash(label, parts) = BLAKE2s-256(label ‖ 0x00 ‖ parts...) */
export function hash(lbl: string, parts: Uint8Array[] = []): Uint8Array {
  return blake2s(framed(lbl, parts));
}

/** mac(key32, label, parts) = BLAKE2s-256 keyed mode (not HMAC). */
export function mac(key: Uint8Array, lbl: string, parts: Uint8Array[] = []): Uint8Array {
  if (key.length !== 32) throw new RangeError('mac key must be 32 bytes');
  return blake2s(framed(lbl, parts), { key, dkLen: 32 });
}
