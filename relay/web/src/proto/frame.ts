// Relay frames (PROTOCOL.md §4, proto/src/frame.rs): version u8 ‖ type u8 ‖ body.
import { CodecError, Reader, U64_MAX, concat, str16, truncateUtf8, u16be, u32be, u64be, u8 } from './bytes.ts';
import { DeviceId, PublicKey, ROLE_BYTE, type Role, roleFromByte } from './identity.ts';

export const VERSION = 1;
/**
 * The newest protocol level this client speaks (PROTOCOL.md §6.1): Hello's
 * [minVersion, maxVersion] names levels, every frame's version byte stays 1.
 * Level 2 adds `Oks`; level 3 (LEVEL_PUSH) the push frames, which this codec knows: the client
 * says level 3 once it sends them (it must then also accept them being refused by older relays).
 */
export const LEVEL = 2;
/** The level from which a relay takes PushSubscribe, Notify and Active. */
export const LEVEL_PUSH = 3;
/** Largest Notify blob a relay accepts (PROTOCOL.md §6.14). */
export const MAX_PUSH_BLOB = 2560;
/** Longest Web Push endpoint URL, in bytes. */
export const MAX_ENDPOINT_LEN = 1024;
/** PushSubscribe kinds. */
export const PushKind = { Remove: 0, WebPush: 1, Apns: 2, Fcm: 3 } as const;
/** Most runs in one `Oks` frame. */
export const MAX_OK_RUNS = 4096;
export const MAX_FRAME_LEN = 64 * 1024;
export const MAX_PAYLOAD_LEN = MAX_FRAME_LEN - 34;
export const MAX_ERROR_MESSAGE_LEN = 256;
export const MAX_RELAY_NAME_LEN = 255;

export const FrameType = {
  Hello: 0x01,
  Challenge: 0x02,
  Auth: 0x03,
  AuthOk: 0x04,
  Send: 0x10,
  Deliver: 0x11,
  Ack: 0x12,
  Ok: 0x13,
  Presence: 0x14,
  Oks: 0x15,
  Ping: 0x20,
  Pong: 0x21,
  PairOpen: 0x30,
  PairClaim: 0x31,
  PairMessage: 0x32,
  PairClose: 0x33,
  Authorize: 0x40,
  Revoke: 0x41,
  PushSubscribe: 0x60,
  Notify: 0x61,
  Active: 0x62,
  Error: 0x50,
  Restarting: 0x51,
} as const;
export type FrameTypeName = keyof typeof FrameType;
const TYPE_BY_BYTE = new Map<number, FrameTypeName>(
  Object.entries(FrameType).map(([k, v]) => [v, k as FrameTypeName]),
);

/** Error codes, §5.1 (index = code). */
export const ERROR_CODE_NAMES = [
  'other',
  'unsupported_version',
  'unknown_frame_type',
  'malformed_frame',
  'frame_too_large',
  'auth_failed',
  'not_authenticated',
  'unexpected_frame',
  'not_authorized',
  'revoked',
  'queue_full',
  'rate_limited',
  'pairing_not_found',
  'pairing_claimed',
  'pairing_expired',
  'idle_timeout',
  'replaced',
  'overloaded',
  'handshake_timeout',
  'shutting_down',
  'ping_timeout',
  'internal',
  'store_unavailable',
  'push_unavailable',
] as const;
export function errorCodeName(code: number): string {
  return code >= 1 && code < ERROR_CODE_NAMES.length ? ERROR_CODE_NAMES[code]! : 'other';
}
/** close_code = 4000 + code; null for close codes outside 4000..=4999. */
export function errorCodeFromClose(close: number): number | null {
  return close >= 4000 && close <= 4999 ? close - 4000 : null;
}

export type Frame =
  | { type: 'Hello'; minVersion: number; maxVersion: number; role: Role }
  | { type: 'Challenge'; relayEphemeral: PublicKey; nonce: Uint8Array; relayName: string }
  | { type: 'Auth'; publicKey: PublicKey; proof: Uint8Array }
  | { type: 'AuthOk'; deviceId: DeviceId; queued: number; pingIntervalMs: number; storeEpoch: bigint }
  | { type: 'Send'; sendId: bigint; to: DeviceId; payload: Uint8Array }
  | { type: 'Deliver'; deliveryId: bigint; from: DeviceId; payload: Uint8Array }
  | { type: 'Ack'; upTo: bigint }
  | { type: 'Ok'; refId: bigint }
  /** Level 2: every Send whose id is in `[first, first + count)` of a run succeeded. */
  | { type: 'Oks'; runs: OkRun[] }
  | { type: 'Presence'; peer: DeviceId; online: boolean }
  | { type: 'Ping'; nonce: bigint }
  | { type: 'Pong'; nonce: bigint }
  | { type: 'PairOpen'; requestId: bigint; pairingId: Uint8Array; ttlSecs: number }
  | { type: 'PairClaim'; requestId: bigint; pairingId: Uint8Array; payload: Uint8Array }
  | { type: 'PairMessage'; pairingId: Uint8Array; peer: DeviceId; payload: Uint8Array }
  | { type: 'PairClose'; requestId: bigint; pairingId: Uint8Array }
  | { type: 'Authorize'; requestId: bigint; peer: DeviceId }
  | { type: 'Revoke'; requestId: bigint; peer: DeviceId }
  /** Level 3: `data` is the kind's layout (see `webPushData`); a relay answers a bad one with Error. */
  | { type: 'PushSubscribe'; requestId: bigint; kind: number; data: Uint8Array }
  /** Level 3: wake `to`; urgency 0 very-low … 3 high; topic all zero = no collapse. */
  | { type: 'Notify'; requestId: bigint; to: DeviceId; urgency: number; topic: Uint8Array; blob: Uint8Array }
  /** Level 3: the device is in the foreground (true) or not. */
  | { type: 'Active'; active: boolean }
  | { type: 'Error'; code: number; refId: bigint; message: string }
  | { type: 'Restarting'; reconnectAfterMs: number };

/** The send ids `first .. first + count - 1`; `count` ≥ 1 and `first + count` fits in a u64. */
export interface OkRun {
  first: bigint;
  count: number;
}

/** The §4.4 checks of an `Oks` body; the CodecError kind of the first failure, or null. */
function badRuns(runs: OkRun[]): 'BadValue' | 'TooLong' | null {
  if (runs.length === 0) return 'BadValue';
  if (runs.length > MAX_OK_RUNS) return 'TooLong';
  for (const r of runs) {
    if (!Number.isInteger(r.count) || r.count < 1 || r.count > 0xffff_ffff) return 'BadValue';
    if (r.first < 0n || r.first + BigInt(r.count) > U64_MAX) return 'BadValue';
  }
  return null;
}

export type MalformedKind = 'Truncated' | 'BadValue' | 'TooLong' | 'NotUtf8' | 'TrailingBytes';
export type FrameErrorKind =
  | { kind: 'TooLarge'; len: number }
  | { kind: 'TooShort' }
  | { kind: 'UnsupportedVersion'; version: number }
  | { kind: 'UnknownType'; type: number }
  | { kind: 'Malformed'; frameType: FrameTypeName; what: MalformedKind };

export class FrameError extends Error {
  constructor(public readonly detail: FrameErrorKind) {
    super(`frame error: ${JSON.stringify(detail)}`);
  }
  /** The §5 error code a relay answers with. */
  code(): number {
    switch (this.detail.kind) {
      case 'TooLarge':
        return 4;
      case 'UnsupportedVersion':
        return 1;
      case 'UnknownType':
        return 2;
      default:
        return 3;
    }
  }
}

function fixed(b: Uint8Array, n: number, what: string): Uint8Array {
  if (b.length !== n) throw new RangeError(`${what} must be ${n} bytes`);
  return b;
}

/**
 * The `data` of a Web Push `PushSubscribe` (kind 1): endpoint str16 ‖ p256dh [65] ‖ auth [16],
 * from the values of `PushSubscription.getKey('p256dh' | 'auth')`.
 */
export function webPushData(endpoint: string, p256dh: Uint8Array, auth: Uint8Array): Uint8Array {
  if (p256dh.length !== 65 || p256dh[0] !== 4) throw new RangeError('p256dh must be an uncompressed P-256 point');
  return concat(str16(endpoint, MAX_ENDPOINT_LEN), p256dh, fixed(auth, 16, 'auth'));
}

function checkPayload(p: Uint8Array): void {
  if (p.length > MAX_PAYLOAD_LEN) throw new FrameError({ kind: 'TooLarge', len: p.length });
}

export function encodeFrame(f: Frame): Uint8Array {
  let body: Uint8Array;
  switch (f.type) {
    case 'Hello':
      if (f.minVersion > f.maxVersion) throw new FrameError({ kind: 'Malformed', frameType: 'Hello', what: 'BadValue' });
      body = Uint8Array.of(f.minVersion, f.maxVersion, ROLE_BYTE[f.role]);
      break;
    case 'Challenge': {
      let name: Uint8Array;
      try {
        name = str16(f.relayName, MAX_RELAY_NAME_LEN);
      } catch {
        throw new FrameError({ kind: 'Malformed', frameType: 'Challenge', what: 'TooLong' });
      }
      body = concat(f.relayEphemeral.bytes, fixed(f.nonce, 32, 'nonce'), name);
      break;
    }
    case 'Auth':
      body = concat(f.publicKey.bytes, fixed(f.proof, 32, 'proof'));
      break;
    case 'AuthOk':
      body = concat(f.deviceId.bytes, u32be(f.queued), u32be(f.pingIntervalMs), u64be(f.storeEpoch));
      break;
    case 'Send':
      checkPayload(f.payload);
      body = concat(u64be(f.sendId), f.to.bytes, f.payload);
      break;
    case 'Deliver':
      checkPayload(f.payload);
      body = concat(u64be(f.deliveryId), f.from.bytes, f.payload);
      break;
    case 'Ack':
      body = u64be(f.upTo);
      break;
    case 'Ok':
      body = u64be(f.refId);
      break;
    case 'Oks': {
      const bad = badRuns(f.runs);
      if (bad) throw new FrameError({ kind: 'Malformed', frameType: 'Oks', what: bad });
      body = concat(u16be(f.runs.length), ...f.runs.map((r) => concat(u64be(r.first), u32be(r.count))));
      break;
    }
    case 'Presence':
      body = concat(f.peer.bytes, u8(f.online ? 1 : 0));
      break;
    case 'Ping':
    case 'Pong':
      body = u64be(f.nonce);
      break;
    case 'PairOpen':
      body = concat(u64be(f.requestId), fixed(f.pairingId, 16, 'pairing id'), u16be(f.ttlSecs));
      break;
    case 'PairClaim':
      checkPayload(f.payload);
      body = concat(u64be(f.requestId), fixed(f.pairingId, 16, 'pairing id'), f.payload);
      break;
    case 'PairMessage':
      checkPayload(f.payload);
      body = concat(fixed(f.pairingId, 16, 'pairing id'), f.peer.bytes, f.payload);
      break;
    case 'PairClose':
      body = concat(u64be(f.requestId), fixed(f.pairingId, 16, 'pairing id'));
      break;
    case 'Authorize':
    case 'Revoke':
      body = concat(u64be(f.requestId), f.peer.bytes);
      break;
    case 'PushSubscribe':
      checkPayload(f.data);
      body = concat(u64be(f.requestId), u8(f.kind), f.data);
      break;
    case 'Notify':
      checkPayload(f.blob);
      body = concat(u64be(f.requestId), f.to.bytes, u8(f.urgency), fixed(f.topic, 16, 'topic'), f.blob);
      break;
    case 'Active':
      body = u8(f.active ? 1 : 0);
      break;
    case 'Error': {
      const m = truncateUtf8(f.message, MAX_ERROR_MESSAGE_LEN);
      body = concat(u16be(f.code), u64be(f.refId), u16be(m.length), m);
      break;
    }
    case 'Restarting':
      body = u32be(f.reconnectAfterMs);
      break;
  }
  const out = concat(Uint8Array.of(VERSION, FrameType[f.type]), body);
  if (out.length > MAX_FRAME_LEN) throw new FrameError({ kind: 'TooLarge', len: out.length });
  return out;
}

export function decodeFrame(buf: Uint8Array): Frame {
  if (buf.length > MAX_FRAME_LEN) throw new FrameError({ kind: 'TooLarge', len: buf.length });
  if (buf.length < 2) throw new FrameError({ kind: 'TooShort' });
  if (buf[0] !== VERSION) throw new FrameError({ kind: 'UnsupportedVersion', version: buf[0]! });
  const name = TYPE_BY_BYTE.get(buf[1]!);
  if (!name) throw new FrameError({ kind: 'UnknownType', type: buf[1]! });
  const r = new Reader(buf.subarray(2));
  const bad = (what: MalformedKind): FrameError => new FrameError({ kind: 'Malformed', frameType: name, what });
  const payload = (): Uint8Array => {
    const p = r.rest();
    if (p.length > MAX_PAYLOAD_LEN) throw bad('TooLong');
    return p;
  };
  const id = (): DeviceId => new DeviceId(r.take(16));
  let f: Frame;
  try {
    switch (name) {
      case 'Hello': {
        const minVersion = r.u8();
        const maxVersion = r.u8();
        if (minVersion > maxVersion) throw bad('BadValue');
        const role = roleFromByte(r.u8());
        if (!role) throw bad('BadValue');
        f = { type: name, minVersion, maxVersion, role };
        break;
      }
      case 'Challenge':
        f = { type: name, relayEphemeral: new PublicKey(r.take(32)), nonce: r.take(32), relayName: r.str16(MAX_RELAY_NAME_LEN) };
        break;
      case 'Auth':
        f = { type: name, publicKey: new PublicKey(r.take(32)), proof: r.take(32) };
        break;
      case 'AuthOk':
        f = { type: name, deviceId: id(), queued: r.u32(), pingIntervalMs: r.u32(), storeEpoch: r.u64() };
        break;
      case 'Send':
        f = { type: name, sendId: r.u64(), to: id(), payload: payload() };
        break;
      case 'Deliver':
        f = { type: name, deliveryId: r.u64(), from: id(), payload: payload() };
        break;
      case 'Ack':
        f = { type: name, upTo: r.u64() };
        break;
      case 'Ok':
        f = { type: name, refId: r.u64() };
        break;
      case 'Oks': {
        const n = r.u16();
        if (n === 0) throw bad('BadValue');
        if (n > MAX_OK_RUNS) throw bad('TooLong');
        const runs: OkRun[] = [];
        for (let i = 0; i < n; i++) {
          const run = { first: r.u64(), count: r.u32() };
          if (badRuns([run])) throw bad('BadValue');
          runs.push(run);
        }
        f = { type: name, runs };
        break;
      }
      case 'Presence': {
        const peer = id();
        const o = r.u8();
        if (o > 1) throw bad('BadValue');
        f = { type: name, peer, online: o === 1 };
        break;
      }
      case 'Ping':
      case 'Pong':
        f = { type: name, nonce: r.u64() };
        break;
      case 'PairOpen':
        f = { type: name, requestId: r.u64(), pairingId: r.take(16), ttlSecs: r.u16() };
        break;
      case 'PairClaim':
        f = { type: name, requestId: r.u64(), pairingId: r.take(16), payload: payload() };
        break;
      case 'PairMessage':
        f = { type: name, pairingId: r.take(16), peer: id(), payload: payload() };
        break;
      case 'PairClose':
        f = { type: name, requestId: r.u64(), pairingId: r.take(16) };
        break;
      case 'Authorize':
      case 'Revoke':
        f = { type: name, requestId: r.u64(), peer: id() };
        break;
      case 'PushSubscribe':
        f = { type: name, requestId: r.u64(), kind: r.u8(), data: payload() };
        break;
      case 'Notify':
        f = { type: name, requestId: r.u64(), to: id(), urgency: r.u8(), topic: r.take(16), blob: payload() };
        break;
      case 'Active': {
        const a = r.u8();
        if (a > 1) throw bad('BadValue');
        f = { type: name, active: a === 1 };
        break;
      }
      case 'Error':
        f = { type: name, code: r.u16(), refId: r.u64(), message: r.str16(MAX_ERROR_MESSAGE_LEN) };
        break;
      case 'Restarting':
        f = { type: name, reconnectAfterMs: r.u32() };
        break;
    }
    r.finish();
  } catch (e) {
    if (e instanceof CodecError) throw bad(e.kind);
    throw e;
  }
  return f;
}
