// Record content types (PROTOCOL.md §12, proto/src/content.rs): content_type u8 ‖ body.
import { CodecError, Reader, concat, truncateUtf8, u16be, u64be } from './bytes.ts';

export const MAX_REASON_LEN = 256;

export type Content =
  | { type: 'Data'; seq: bigint; oldest: bigint; ack: bigint; message: Uint8Array }
  | { type: 'Ack'; ack: bigint }
  | { type: 'Nack'; expected: bigint }
  | { type: 'PairConfirm' }
  | { type: 'PairResult'; accepted: boolean; sessionPsk: Uint8Array; reason: string };

export class ContentError extends Error {
  constructor(public readonly kind: 'Empty' | 'UnknownType' | 'Malformed', detail = '') {
    super(`content: ${kind}${detail ? ` (${detail})` : ''}`);
  }
}

export function encodeContent(c: Content): Uint8Array {
  switch (c.type) {
    case 'Data':
      return concat(Uint8Array.of(0x01), u64be(c.seq), u64be(c.oldest), u64be(c.ack), c.message);
    case 'Ack':
      return concat(Uint8Array.of(0x02), u64be(c.ack));
    case 'Nack':
      return concat(Uint8Array.of(0x03), u64be(c.expected));
    case 'PairConfirm':
      return Uint8Array.of(0x10);
    case 'PairResult': {
      if (c.sessionPsk.length !== 32) throw new RangeError('session psk must be 32 bytes');
      const r = truncateUtf8(c.reason, MAX_REASON_LEN);
      return concat(Uint8Array.of(0x11, c.accepted ? 1 : 0), c.sessionPsk, u16be(r.length), r);
    }
  }
}

export function decodeContent(buf: Uint8Array): Content {
  if (buf.length === 0) throw new ContentError('Empty');
  const t = buf[0]!;
  const r = new Reader(buf.subarray(1));
  try {
    let c: Content;
    switch (t) {
      case 0x01:
        return { type: 'Data', seq: r.u64(), oldest: r.u64(), ack: r.u64(), message: r.rest() };
      case 0x02:
        c = { type: 'Ack', ack: r.u64() };
        break;
      case 0x03:
        c = { type: 'Nack', expected: r.u64() };
        break;
      case 0x10:
        c = { type: 'PairConfirm' };
        break;
      case 0x11: {
        const a = r.u8();
        if (a > 1) throw new ContentError('Malformed', 'accepted not 0/1');
        c = { type: 'PairResult', accepted: a === 1, sessionPsk: r.take(32), reason: r.str16(MAX_REASON_LEN) };
        break;
      }
      default:
        throw new ContentError('UnknownType', String(t));
    }
    r.finish();
    return c;
  } catch (e) {
    if (e instanceof CodecError) throw new ContentError('Malformed', e.kind);
    throw e;
  }
}
