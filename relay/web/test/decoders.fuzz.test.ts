// Property tests (fast-check) for every decoder the web client runs on bytes
// or text from the network or a QR code (issue 17, "the web client's
// decoders"): on arbitrary input, and on the vectors with bytes flipped,
// inserted and cut, each either returns a value that encodes back to exactly
// its input (the formats are canonical) or throws its own error class; never
// a TypeError, RangeError or anything else. The Rust decoders have the same
// checks as cargo-fuzz targets (fuzz/).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { bytesToHex, hexToBytes } from '../src/proto/bytes.ts';
import { ContentError, decodeContent, encodeContent } from '../src/proto/content.ts';
import { EnvelopeError, decodeEnvelope, encodeEnvelope } from '../src/proto/envelope.ts';
import { FrameError, decodeFrame, encodeFrame } from '../src/proto/frame.ts';
import { MessageError, decodeMessage, deviceInfoFromJson, deviceInfoToJson } from '../src/proto/message.ts';
import { QrError, decodeQrPayload, encodeQrPayload, parsePairingLink } from '../src/proto/qr.ts';
import { loadVector } from './vectors.ts';

// Runs per property: a few seconds in all in `npm test`. FC_RUNS raises it.
const RUNS = Number(process.env.FC_RUNS ?? 3000);

const frames = loadVector<{ hex: string }[]>('frames').map((v) => hexToBytes(v.hex));
const records = loadVector<{ contents: { hex: string }[]; records: { envelope: string }[] }>('records');
const pairing = loadVector<Record<string, unknown>>('pairing');
const envelopes = [
  ...records.records.map((r) => hexToBytes(r.envelope)),
  ...['pair_hello', 'pair_welcome', 'pair_confirm', 'pair_result', 'phone_first_data_record'].map((k) =>
    hexToBytes(pairing[k] as string),
  ),
];
const contents = records.contents.map((c) => hexToBytes(c.hex));
const messages = loadVector<{ json: string }[]>('messages').map((m) => new TextEncoder().encode(m.json));

/** A seed with bytes flipped, inserted and cut, or arbitrary bytes. */
function input(seeds: Uint8Array[]): fc.Arbitrary<Uint8Array> {
  const edit = fc.record({ at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }), op: fc.integer({ min: 0, max: 3 }) });
  const mutated = fc.tuple(fc.constantFrom(...seeds), fc.array(edit, { maxLength: 6 })).map(([seed, edits]) => {
    let b = Array.from(seed);
    for (const { at, byte, op } of edits) {
      const i = b.length === 0 ? 0 : at % (b.length + 1);
      if (op === 0 && i < b.length) b[i] = byte;
      else if (op === 1) b.splice(i, 0, byte);
      else if (op === 2) b = b.slice(0, i);
      else if (i < b.length) b[i] = b[i]! ^ (1 << (byte % 8));
    }
    return Uint8Array.from(b);
  });
  return fc.oneof(mutated, fc.uint8Array({ maxLength: 300 }));
}

/** `decode(b)`: its own error class, or a value `encode` gives `b` back from. */
function canonical<T>(
  decode: (b: Uint8Array) => T,
  encode: ((v: T) => Uint8Array) | null,
  errorClass: new (...a: never[]) => Error,
): (b: Uint8Array) => void {
  return (b) => {
    let v: T;
    try {
      v = decode(b);
    } catch (e) {
      if (e instanceof errorClass) return;
      throw e;
    }
    if (encode) assert.equal(bytesToHex(encode(v)), bytesToHex(b));
  };
}

test('decodeFrame: FrameError or a frame that re-encodes to its input', () => {
  fc.assert(fc.property(input(frames), canonical(decodeFrame, encodeFrame, FrameError)), { numRuns: RUNS });
});

test('decodeEnvelope: EnvelopeError or an envelope that re-encodes to its input', () => {
  fc.assert(fc.property(input(envelopes), canonical(decodeEnvelope, encodeEnvelope, EnvelopeError)), {
    numRuns: RUNS,
  });
});

test('decodeContent: ContentError or content that re-encodes to its input', () => {
  fc.assert(fc.property(input(contents), canonical(decodeContent, encodeContent, ContentError)), {
    numRuns: RUNS,
  });
});

test('decodeMessage: MessageError or a value, on bytes and on any JSON', () => {
  const json = fc.json().map((s) => new TextEncoder().encode(s));
  fc.assert(fc.property(fc.oneof(input(messages), json), canonical(decodeMessage, null, MessageError)), {
    numRuns: RUNS,
  });
});

test('deviceInfoFromJson: MessageError or info that round-trips', () => {
  const seeds = ['desktop_info_json', 'phone_info_json'].map((k) => new TextEncoder().encode(pairing[k] as string));
  fc.assert(
    fc.property(fc.oneof(input(seeds), fc.json().map((s) => new TextEncoder().encode(s))), (b) => {
      let d;
      try {
        d = deviceInfoFromJson(b);
      } catch (e) {
        if (e instanceof MessageError) return;
        throw e;
      }
      assert.deepEqual(deviceInfoFromJson(deviceInfoToJson(d)), d);
    }),
    { numRuns: RUNS },
  );
});

test('decodeQrPayload: QrError or a payload that re-encodes to its input', () => {
  const link = pairing.qr_link as string;
  const payload = parsePairingLink(link, Number(pairing.now_unix)).payload;
  fc.assert(
    fc.property(input([encodeQrPayload(payload)]), canonical(decodeQrPayload, encodeQrPayload, QrError)),
    { numRuns: RUNS },
  );
});

test('parsePairingLink: QrError or a link, on any text', () => {
  const link = pairing.qr_link as string;
  const now = Number(pairing.now_unix);
  const text = fc.oneof(
    fc.string({ maxLength: 200 }),
    fc.tuple(fc.nat(), fc.string({ maxLength: 4 }), fc.nat()).map(([at, s, cut]) => {
      const i = at % (link.length + 1);
      return (link.slice(0, i) + s + link.slice(i)).slice(0, link.length + 4 - (cut % 8));
    }),
  );
  fc.assert(
    fc.property(text, (s) => {
      try {
        parsePairingLink(s, now);
      } catch (e) {
        if (!(e instanceof QrError)) throw e;
      }
    }),
    { numRuns: RUNS },
  );
});
