// End-to-end envelopes (PROTOCOL.md §7, proto/src/envelope.rs): version u8 ‖ kind u8 ‖ body.
import { CodecError, Reader, concat, u64be } from './bytes.ts';

export const ENVELOPE_VERSION = 1;
export const RECORD_HEADER_LEN = 18;
export const TAG_LEN = 16;
export const MAX_NOISE_LEN = 65535;

export const EnvelopeKind = { PairHello: 1, PairWelcome: 2, SessionInit: 3, SessionAccept: 4, Record: 5 } as const;

export type Envelope =
  | { kind: 'PairHello'; noise: Uint8Array }
  | { kind: 'PairWelcome'; noise: Uint8Array }
  | { kind: 'SessionInit'; handshakeId: Uint8Array; noise: Uint8Array }
  | { kind: 'SessionAccept'; handshakeId: Uint8Array; noise: Uint8Array }
  | { kind: 'Record'; sessionId: Uint8Array; counter: bigint; ciphertext: Uint8Array };

export type EnvelopeErrorKind =
  | { kind: 'TooShort' }
  | { kind: 'UnsupportedVersion'; version: number }
  | { kind: 'UnknownKind'; k: number }
  | { kind: 'Malformed'; what: string };

export class EnvelopeError extends Error {
  constructor(public readonly detail: EnvelopeErrorKind) {
    super(`envelope: ${JSON.stringify(detail)}`);
  }
}

/** The 18-byte record header, the AEAD associated data. */
export function recordHeader(sessionId: Uint8Array, counter: bigint): Uint8Array {
  if (sessionId.length !== 8) throw new RangeError('session id must be 8 bytes');
  return concat(Uint8Array.of(ENVELOPE_VERSION, EnvelopeKind.Record), sessionId, u64be(counter));
}

export function encodeEnvelope(e: Envelope): Uint8Array {
  const head = Uint8Array.of(ENVELOPE_VERSION, EnvelopeKind[e.kind]);
  switch (e.kind) {
    case 'PairHello':
    case 'PairWelcome':
      return concat(head, e.noise);
    case 'SessionInit':
    case 'SessionAccept':
      return concat(head, e.handshakeId, e.noise);
    case 'Record':
      return concat(recordHeader(e.sessionId, e.counter), e.ciphertext);
  }
}

export function decodeEnvelope(buf: Uint8Array): Envelope {
  if (buf.length < 1) throw new EnvelopeError({ kind: 'TooShort' });
  if (buf[0] !== ENVELOPE_VERSION) throw new EnvelopeError({ kind: 'UnsupportedVersion', version: buf[0]! });
  if (buf.length < 2) throw new EnvelopeError({ kind: 'TooShort' });
  const k = buf[1]!;
  const r = new Reader(buf.subarray(2));
  const noise = (): Uint8Array => {
    const n = r.rest();
    if (n.length === 0) throw new EnvelopeError({ kind: 'Malformed', what: 'empty noise message' });
    if (n.length > MAX_NOISE_LEN) throw new EnvelopeError({ kind: 'Malformed', what: 'noise message too long' });
    return n;
  };
  try {
    switch (k) {
      case 1:
        return { kind: 'PairHello', noise: noise() };
      case 2:
        return { kind: 'PairWelcome', noise: noise() };
      case 3:
        return { kind: 'SessionInit', handshakeId: r.take(8), noise: noise() };
      case 4:
        return { kind: 'SessionAccept', handshakeId: r.take(8), noise: noise() };
      case 5: {
        const sessionId = r.take(8);
        const counter = r.u64();
        const ciphertext = r.rest();
        if (ciphertext.length < TAG_LEN) throw new EnvelopeError({ kind: 'Malformed', what: 'record shorter than its tag' });
        return { kind: 'Record', sessionId, counter, ciphertext };
      }
      default:
        throw new EnvelopeError({ kind: 'UnknownKind', k });
    }
  } catch (e) {
    if (e instanceof CodecError) throw new EnvelopeError({ kind: 'Malformed', what: e.kind });
    throw e;
  }
}
