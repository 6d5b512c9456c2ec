// Relay authentication, device side (PROTOCOL.md §6.2, proto/src/relay_auth.rs).
import { u16be, utf8 } from './bytes.ts';
import { type Frame, MAX_RELAY_NAME_LEN, VERSION, decodeFrame, encodeFrame } from './frame.ts';
import { type DeviceKey, PublicKey, ROLE_BYTE, type Role } from './identity.ts';
import { label, mac } from './kdf.ts';

export type RelayAuthError =
  | { kind: 'NotAChallenge' }
  | { kind: 'WrongRelay'; got: string; expected: string }
  | { kind: 'BadKey' }
  | { kind: 'NameTooLong' };

export class RelayAuthFailure extends Error {
  constructor(public readonly detail: RelayAuthError) {
    super(`relay auth: ${detail.kind}`);
  }
}

/** trim (Unicode White_Space), ASCII lower-case, drop one trailing '.', ≤ 255 bytes or null. */
export function normalizeName(name: string): string | null {
  // Not JS trim(): that also strips U+FEFF, which Rust's str::trim keeps.
  let s = trimWhiteSpace(name);
  s = s.replace(/[A-Z]/g, (c) => c.toLowerCase());
  if (s.endsWith('.')) s = s.slice(0, -1);
  if (utf8(s).length > MAX_RELAY_NAME_LEN) return null;
  return s;
}

// Unicode White_Space property (what Rust's char::is_whitespace uses).
const WS = new Set([
  0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006,
  0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000,
]);
function trimWhiteSpace(s: string): string {
  let a = 0;
  let b = s.length;
  while (a < b && WS.has(s.charCodeAt(a))) a++;
  while (b > a && WS.has(s.charCodeAt(b - 1))) b--;
  return s.slice(a, b);
}

export function computeProof(
  shared: Uint8Array,
  role: Role,
  nonce: Uint8Array,
  relayEphemeral: Uint8Array,
  devicePublic: Uint8Array,
  relayName: string,
): Uint8Array {
  const k = mac(shared, label.RELAY_AUTH_KEY, []);
  const r = utf8(relayName);
  return mac(k, label.RELAY_AUTH, [Uint8Array.of(VERSION, ROLE_BYTE[role]), nonce, relayEphemeral, devicePublic, u16be(r.length), r]);
}

/**
 * prove(key, role, dialed, challengeFrame) -> the encoded Auth frame.
 * `dialed` is the host[:port] the device sent as its Host header.
 */
export function prove(key: DeviceKey, role: Role, dialed: string, challengeFrame: Uint8Array | Frame): Uint8Array {
  let frame: Frame;
  try {
    frame = challengeFrame instanceof Uint8Array ? decodeFrame(challengeFrame) : challengeFrame;
  } catch {
    throw new RelayAuthFailure({ kind: 'NotAChallenge' });
  }
  if (frame.type !== 'Challenge') throw new RelayAuthFailure({ kind: 'NotAChallenge' });
  const expected = normalizeName(dialed);
  if (expected === null) throw new RelayAuthFailure({ kind: 'NameTooLong' });
  const got = normalizeName(frame.relayName);
  if (got === null) throw new RelayAuthFailure({ kind: 'NameTooLong' });
  if (got !== expected) throw new RelayAuthFailure({ kind: 'WrongRelay', got: frame.relayName, expected });
  const shared = key.diffieHellman(frame.relayEphemeral);
  if (!shared) throw new RelayAuthFailure({ kind: 'BadKey' });
  const pub = key.public();
  const proof = computeProof(shared, role, frame.nonce, frame.relayEphemeral.bytes, pub.bytes, expected);
  return encodeFrame({ type: 'Auth', publicKey: new PublicKey(pub.bytes), proof });
}

