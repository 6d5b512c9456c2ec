// The pairing QR link and its payload (PROTOCOL.md §9.1-9.2, proto/src/qr.rs).
import { Reader, base32Decode, base32Encode, concat, fromUtf8, u32be, utf8 } from './bytes.ts';
import { PublicKey } from './identity.ts';
import { label, mac } from './kdf.ts';

export const QR_VERSION = 1;
export const QR_FIXED_LEN = 69;
export const MAX_RELAY_URL_LEN = 128;

export type QrErrorKind =
  | { kind: 'NotALink'; why: string }
  | { kind: 'BadEncoding' }
  | { kind: 'WrongVersion'; version: number }
  | { kind: 'BadLength'; why: string }
  | { kind: 'Expired'; agoSecs: number };

export class QrError extends Error {
  constructor(public readonly detail: QrErrorKind) {
    super(`pairing link: ${JSON.stringify(detail)}`);
  }
}

export interface QrPayload {
  desktop: PublicKey;
  secret: Uint8Array;
  /** Unix seconds; refused at or after this instant. */
  expiresAt: number;
  relay?: string;
}

export function pairingId(secret: Uint8Array): Uint8Array {
  return mac(secret, label.PAIRING_ID, []).slice(0, 16);
}

export function validateRelay(relay: string): void {
  const n = utf8(relay).length;
  if (n > MAX_RELAY_URL_LEN) throw new QrError({ kind: 'BadLength', why: `relay URL of ${n} bytes` });
  let path: string;
  try {
    path = splitOrigin(relay)[1];
  } catch {
    path = 'x';
  }
  if (path !== '') throw new QrError({ kind: 'BadLength', why: 'relay URL must be http(s)://host[:port]' });
}

export function encodeQrPayload(p: QrPayload): Uint8Array {
  const parts = [Uint8Array.of(QR_VERSION), p.desktop.bytes, p.secret, u32be(p.expiresAt)];
  if (p.relay !== undefined) {
    const r = utf8(p.relay).slice(0, MAX_RELAY_URL_LEN);
    parts.push(Uint8Array.of(r.length), r);
  }
  return concat(...parts);
}

export function decodeQrPayload(bytes: Uint8Array): QrPayload {
  if (bytes.length < 1) throw new QrError({ kind: 'BadLength', why: 'empty' });
  if (bytes[0] !== QR_VERSION) throw new QrError({ kind: 'WrongVersion', version: bytes[0]! });
  if (bytes.length < QR_FIXED_LEN) throw new QrError({ kind: 'BadLength', why: `${bytes.length} bytes, expected ${QR_FIXED_LEN}` });
  const r = new Reader(bytes.subarray(1));
  const desktop = new PublicKey(r.take(32));
  const secret = r.take(32);
  const expiresAt = r.u32();
  const out: QrPayload = { desktop, secret, expiresAt };
  if (r.remaining > 0) {
    const n = r.u8();
    if (n > MAX_RELAY_URL_LEN) throw new QrError({ kind: 'BadLength', why: 'relay URL too long' });
    let relay: string;
    try {
      relay = fromUtf8(r.take(n));
    } catch {
      throw new QrError({ kind: 'BadLength', why: 'relay URL truncated or not UTF-8' });
    }
    validateRelay(relay);
    if (r.remaining !== 0) throw new QrError({ kind: 'BadLength', why: 'trailing bytes' });
    out.relay = relay;
  }
  return out;
}

/** Split `scheme://authority/path` into [`scheme://authority`, `/path`]. */
function splitOrigin(s: string): [string, string] {
  let rest: string;
  let plain: boolean;
  if (s.startsWith('https://')) {
    rest = s.slice(8);
    plain = false;
  } else if (s.startsWith('http://')) {
    rest = s.slice(7);
    plain = true;
  } else throw new QrError({ kind: 'NotALink', why: 'the scheme must be https (or http on a local network)' });
  const slash = rest.indexOf('/');
  const hostEnd = slash < 0 ? rest.length : slash;
  const host = rest.slice(0, hostEnd);
  if (host === '' || !/^[A-Za-z0-9\-.:[\]]+$/.test(host)) throw new QrError({ kind: 'NotALink', why: 'bad host' });
  if (plain && !isLocalHost(host)) throw new QrError({ kind: 'NotALink', why: 'plain http is only allowed for a relay on the local network' });
  const split = s.length - rest.length + hostEnd;
  return [s.slice(0, split), s.slice(split)];
}

function parseIpv4(h: string): number[] | null {
  const parts = h.split('.');
  if (parts.length !== 4) return null;
  const out: number[] = [];
  for (const p of parts) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(p)) return null;
    const n = Number(p);
    if (n > 255) return null;
    out.push(n);
  }
  return out;
}

/** First 16-bit segment of an IPv6 literal, or null when it is not one. */
function ipv6First(h: string): { first: number; loopback: boolean } | null {
  if (!h.includes(':') || !/^[0-9a-f:.]+$/.test(h)) return null;
  let norm: string;
  try {
    norm = new URL(`http://[${h}]/`).hostname.slice(1, -1);
  } catch {
    return null;
  }
  const first = norm.startsWith('::') ? 0 : parseInt(norm.split(':')[0]!, 16);
  return { first, loopback: norm === '::1' };
}

/** Whether `authority` (host[:port]) names a host on the local network. */
export function isLocalHost(authority: string): boolean {
  let host: string;
  if (authority.startsWith('[')) host = authority.slice(1).split(']')[0]!;
  else {
    const i = authority.lastIndexOf(':');
    host = i < 0 ? authority : authority.slice(0, i);
  }
  host = host.replace(/[A-Z]/g, (c) => c.toLowerCase());
  if (host === 'localhost' || host.endsWith('.local') || host.endsWith('.home.arpa')) return true;
  const v4 = parseIpv4(host);
  if (v4) {
    const [a, b] = v4 as [number, number];
    return a === 127 || a === 10 || (a === 172 && b >= 16 && b < 32) || (a === 192 && b === 168) || (a === 169 && b === 254) || (a === 100 && b >= 64 && b < 128);
  }
  const v6 = ipv6First(host);
  if (v6) return v6.loopback || (v6.first & 0xfe00) === 0xfc00 || (v6.first & 0xffc0) === 0xfe80;
  return false;
}

export interface PairingLink {
  origin: string;
  path: string;
  /** The query with its `?` (`?n=…`, a nonce `tandem up` adds on plain http), or ''. Not used by pairing. */
  query: string;
  payload: QrPayload;
}

// Rust's str::trim (Unicode White_Space).
function trimWs(s: string): string {
  return s.replace(/^[\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+|[\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$/g, '');
}

/** PairingLink::parse(link, nowUnix). */
export function parsePairingLink(link: string, nowUnix: number): PairingLink {
  const t = trimWs(link);
  const hash = t.indexOf('#');
  if (hash < 0) throw new QrError({ kind: 'NotALink', why: 'no #payload' });
  const before = t.slice(0, hash);
  const q = before.indexOf('?');
  const query = q < 0 ? '' : before.slice(q);
  const [origin, path] = splitOrigin(q < 0 ? before : before.slice(0, q));
  if (!/^[A-Za-z0-9/\-_.~]*$/.test(path)) throw new QrError({ kind: 'NotALink', why: 'unexpected characters in the path' });
  if (!/^[A-Za-z0-9\-_.~=&]*$/.test(query.slice(1))) throw new QrError({ kind: 'NotALink', why: 'unexpected characters in the query' });
  const frag = t.slice(hash + 1).replace(/[a-z]/g, (c) => c.toUpperCase());
  const bytes = base32Decode(frag);
  if (!bytes) throw new QrError({ kind: 'BadEncoding' });
  const payload = decodeQrPayload(bytes);
  if (nowUnix >= payload.expiresAt) throw new QrError({ kind: 'Expired', agoSecs: nowUnix - payload.expiresAt });
  return { origin, path, query, payload };
}

/** The relay to connect to: the payload's relay URL, else the link's origin. */
export function relayOrigin(l: PairingLink): string {
  return l.payload.relay ?? l.origin;
}

/** `base#BASE32(payload)` (what the desktop shows). */
export function pairingLinkString(base: string, p: QrPayload): string {
  return `${base}#${base32Encode(encodeQrPayload(p))}`;
}
