// Byte helpers shared by every codec: hex, big-endian integers, a bounds-checked reader,
// RFC 4648 base32 / base64url, UTF-8. Mirrors proto/src/codec.rs and identity.rs display forms.

export class CodecError extends Error {
  constructor(public readonly kind: 'Truncated' | 'TrailingBytes' | 'TooLong' | 'NotUtf8' | 'BadValue', detail = '') {
    super(detail ? `${kind}: ${detail}` : kind);
  }
}

export function hexToBytes(hex: string): Uint8Array {
  if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) throw new Error('bad hex');
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function bytesToHex(b: Uint8Array): string {
  let s = '';
  for (const x of b) s += x.toString(16).padStart(2, '0');
  return s;
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i]! ^ b[i]!;
  return d === 0;
}

/** Lexicographic byte-string comparison (device ids, §10.4). */
export function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return a.length - b.length;
}

export function u8(v: number): Uint8Array {
  return Uint8Array.of(v & 0xff);
}
export function u16be(v: number): Uint8Array {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff) throw new RangeError('u16 out of range');
  return Uint8Array.of(v >>> 8, v & 0xff);
}
export function u32be(v: number): Uint8Array {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new RangeError('u32 out of range');
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v, false);
  return b;
}
export const U64_MAX = (1n << 64n) - 1n;
export function u64be(v: bigint): Uint8Array {
  if (v < 0n || v > U64_MAX) throw new RangeError('u64 out of range');
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, false);
  return b;
}
export function u64le(v: bigint): Uint8Array {
  if (v < 0n || v > U64_MAX) throw new RangeError('u64 out of range');
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, true);
  return b;
}

const utf8Enc = new TextEncoder();
const utf8Dec = new TextDecoder('utf-8', { fatal: true });
export function utf8(s: string): Uint8Array {
  return utf8Enc.encode(s);
}
/** Strict UTF-8 decode; throws CodecError('NotUtf8'). */
export function fromUtf8(b: Uint8Array): string {
  try {
    return utf8Dec.decode(b);
  } catch {
    throw new CodecError('NotUtf8');
  }
}

/** Longest prefix of `s` whose UTF-8 encoding is at most `max` bytes (cut on a char boundary). */
export function truncateUtf8(s: string, max: number): Uint8Array {
  const b = utf8(s);
  if (b.length <= max) return b;
  let end = max;
  // back up over continuation bytes (10xxxxxx)
  while (end > 0 && (b[end]! & 0xc0) === 0x80) end--;
  return b.slice(0, end);
}

/** `len u16 ‖ bytes`, refusing values over `max` bytes. */
export function str16(s: string, max: number): Uint8Array {
  const b = utf8(s);
  if (b.length > max) throw new CodecError('TooLong', `${b.length} > ${max}`);
  return concat(u16be(b.length), b);
}

/** Bounds-checked big-endian reader. */
export class Reader {
  private off = 0;
  constructor(private readonly buf: Uint8Array) {}
  get remaining(): number {
    return this.buf.length - this.off;
  }
  take(n: number): Uint8Array {
    if (this.remaining < n) throw new CodecError('Truncated');
    const out = this.buf.slice(this.off, this.off + n);
    this.off += n;
    return out;
  }
  u8(): number {
    return this.take(1)[0]!;
  }
  u16(): number {
    const b = this.take(2);
    return (b[0]! << 8) | b[1]!;
  }
  u32(): number {
    const b = this.take(4);
    return new DataView(b.buffer, b.byteOffset, 4).getUint32(0, false);
  }
  u64(): bigint {
    const b = this.take(8);
    return new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0, false);
  }
  /** str16 with a per-field maximum; length checked before UTF-8. */
  str16(max: number): string {
    const n = this.u16();
    if (n > max) throw new CodecError('TooLong', `${n} > ${max}`);
    return fromUtf8(this.take(n));
  }
  rest(): Uint8Array {
    return this.take(this.remaining);
  }
  finish(): void {
    if (this.remaining !== 0) throw new CodecError('TrailingBytes');
  }
}

// ---- RFC 4648 base32 (no padding) ----
const B32_UPPER = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

export function base32Encode(data: Uint8Array, lower = false): string {
  let out = '';
  let buf = 0;
  let bits = 0;
  for (const byte of data) {
    buf = (buf << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += B32_UPPER[(buf >>> (bits - 5)) & 31];
      bits -= 5;
    }
    buf &= (1 << bits) - 1;
  }
  if (bits > 0) out += B32_UPPER[(buf << (5 - bits)) & 31];
  return lower ? out.toLowerCase() : out;
}

/**
 * Canonical unpadded base32 decode in the given case only; returns null on any
 * invalid character, impossible length or non-zero trailing bits.
 */
export function base32Decode(s: string, lower = false): Uint8Array | null {
  const alpha = lower ? B32_UPPER.toLowerCase() : B32_UPPER;
  const rem = s.length % 8;
  if (rem === 1 || rem === 3 || rem === 6) return null;
  const out = new Uint8Array(Math.floor((s.length * 5) / 8));
  let buf = 0;
  let bits = 0;
  let o = 0;
  for (const ch of s) {
    const v = alpha.indexOf(ch);
    if (v < 0) return null;
    buf = ((buf << 5) | v) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      out[o++] = (buf >>> (bits - 8)) & 0xff;
      bits -= 8;
    }
  }
  if (bits > 0 && (buf & ((1 << bits) - 1)) !== 0) return null;
  return out;
}

// ---- base64url, unpadded ----
const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
export function base64UrlEncode(data: Uint8Array): string {
  let out = '';
  let buf = 0;
  let bits = 0;
  for (const byte of data) {
    buf = ((buf << 8) | byte) & 0xffff;
    bits += 8;
    while (bits >= 6) {
      out += B64URL[(buf >>> (bits - 6)) & 63];
      bits -= 6;
    }
  }
  if (bits > 0) out += B64URL[(buf << (6 - bits)) & 63];
  return out;
}
export function base64UrlDecode(s: string): Uint8Array | null {
  if (s.length % 4 === 1) return null;
  const out = new Uint8Array(Math.floor((s.length * 6) / 8));
  let buf = 0;
  let bits = 0;
  let o = 0;
  for (const ch of s) {
    const v = B64URL.indexOf(ch);
    if (v < 0) return null;
    buf = ((buf << 6) | v) & 0xffff;
    bits += 6;
    if (bits >= 8) {
      out[o++] = (buf >>> (bits - 8)) & 0xff;
      bits -= 8;
    }
  }
  if (bits > 0 && (buf & ((1 << bits) - 1)) !== 0) return null;
  return out;
}
