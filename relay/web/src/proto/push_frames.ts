// The push relay frames of protocol level 3 (PROTOCOL.md §4.2, docs/PUSH.md): `PushSubscribe`
// (0x60), `Notify` (0x61), `Active` (0x62), all device → relay. Kept apart from frame.ts until the
// frame codec there gains them; the layouts are the spec's:
//
//   PushSubscribe  request_id u64 ‖ kind u8 ‖ data
//                    kind 0 remove (no data), 1 Web Push (endpoint str16 ≤ 1024 ‖ p256dh [65] ‖ auth [16]),
//                    2 APNs (device token, 1–200 bytes), 3 FCM (registration token, UTF-8, 1–4096 bytes)
//   Notify         request_id u64 ‖ to [16] ‖ urgency u8 ‖ topic [16] ‖ blob (1..=2560)
//   Active         active u8 (0x00 or 0x01)
import { CodecError, Reader, concat, fromUtf8, str16, u64be, u8, utf8 } from './bytes.ts';
import { FrameError, type MalformedKind, VERSION } from './frame.ts';
import { DeviceId } from './identity.ts';

/** The protocol level that adds push (`LEVEL_PUSH`): a device says it in `Hello` to use these frames. */
export const LEVEL_PUSH = 3;
export const PUSH_FRAME = { PushSubscribe: 0x60, Notify: 0x61, Active: 0x62 } as const;
export const MAX_PUSH_ENDPOINT_LEN = 1024;
export const MAX_APNS_TOKEN_LEN = 200;
export const MAX_FCM_TOKEN_LEN = 4096;
export const MAX_PUSH_BLOB = 2560;

/** What a device registers with the relay (`PushSubscribe.kind`). */
export type PushSubscription =
  | { kind: 'remove' }
  | { kind: 'webpush'; endpoint: string; p256dh: Uint8Array; auth: Uint8Array }
  | { kind: 'apns'; token: Uint8Array }
  | { kind: 'fcm'; token: string };

export const PUSH_KIND_BYTE = { remove: 0, webpush: 1, apns: 2, fcm: 3 } as const;

/** `Notify.urgency` (RFC 8030). */
export type Urgency = 'very-low' | 'low' | 'normal' | 'high';
const URGENCIES: readonly Urgency[] = ['very-low', 'low', 'normal', 'high'];

export type PushFrame =
  | { type: 'PushSubscribe'; requestId: bigint; sub: PushSubscription }
  | { type: 'Notify'; requestId: bigint; to: DeviceId; urgency: Urgency; topic: Uint8Array; blob: Uint8Array }
  | { type: 'Active'; active: boolean };

function malformed(frameType: string, what: MalformedKind): FrameError {
  // FrameError names the frame types frame.ts knows; these are reported under their own name.
  return new FrameError({ kind: 'Malformed', frameType: frameType as never, what });
}

function subscriptionData(s: PushSubscription): Uint8Array {
  const bad = (): FrameError => malformed('PushSubscribe', 'BadValue');
  switch (s.kind) {
    case 'remove':
      return new Uint8Array(0);
    case 'webpush': {
      if (s.p256dh.length !== 65 || s.p256dh[0] !== 0x04 || s.auth.length !== 16) throw bad();
      let endpoint: Uint8Array;
      try {
        endpoint = str16(s.endpoint, MAX_PUSH_ENDPOINT_LEN);
      } catch {
        throw malformed('PushSubscribe', 'TooLong');
      }
      return concat(endpoint, s.p256dh, s.auth);
    }
    case 'apns':
      if (s.token.length < 1 || s.token.length > MAX_APNS_TOKEN_LEN) throw bad();
      return s.token;
    case 'fcm': {
      const t = utf8(s.token);
      if (t.length < 1 || t.length > MAX_FCM_TOKEN_LEN) throw bad();
      return t;
    }
  }
}

/** A push frame as bytes: version ‖ type ‖ body. */
export function encodePushFrame(f: PushFrame): Uint8Array {
  let body: Uint8Array;
  switch (f.type) {
    case 'PushSubscribe':
      body = concat(u64be(f.requestId), u8(PUSH_KIND_BYTE[f.sub.kind]), subscriptionData(f.sub));
      break;
    case 'Notify':
      if (f.topic.length !== 16) throw malformed('Notify', 'BadValue');
      if (f.blob.length < 1 || f.blob.length > MAX_PUSH_BLOB) throw malformed('Notify', 'TooLong');
      body = concat(u64be(f.requestId), f.to.bytes, u8(URGENCIES.indexOf(f.urgency)), f.topic, f.blob);
      break;
    case 'Active':
      body = u8(f.active ? 1 : 0);
      break;
  }
  return concat(Uint8Array.of(VERSION, PUSH_FRAME[f.type]), body);
}

/** A push frame from bytes (what a relay reads), or null when `buf` is another frame type. */
export function decodePushFrame(buf: Uint8Array): PushFrame | null {
  if (buf.length < 2) throw new FrameError({ kind: 'TooShort' });
  if (buf[0] !== VERSION) throw new FrameError({ kind: 'UnsupportedVersion', version: buf[0]! });
  const entry = Object.entries(PUSH_FRAME).find(([, b]) => b === buf[1]);
  if (!entry) return null;
  const type = entry[0] as PushFrame['type'];
  const r = new Reader(buf.subarray(2));
  const bad = (what: MalformedKind): FrameError => malformed(type, what);
  try {
    let f: PushFrame;
    switch (type) {
      case 'PushSubscribe': {
        const requestId = r.u64();
        const kind = r.u8();
        let sub: PushSubscription;
        if (kind === 0) sub = { kind: 'remove' };
        else if (kind === 1) {
          const endpoint = r.str16(MAX_PUSH_ENDPOINT_LEN);
          const p256dh = r.take(65);
          if (p256dh[0] !== 0x04) throw bad('BadValue');
          sub = { kind: 'webpush', endpoint, p256dh, auth: r.take(16) };
        } else if (kind === 2) {
          const token = r.rest();
          if (token.length < 1 || token.length > MAX_APNS_TOKEN_LEN) throw bad('BadValue');
          sub = { kind: 'apns', token };
        } else if (kind === 3) {
          const t = r.rest();
          if (t.length < 1 || t.length > MAX_FCM_TOKEN_LEN) throw bad('BadValue');
          sub = { kind: 'fcm', token: fromUtf8(t) };
        } else throw bad('BadValue');
        f = { type, requestId, sub };
        break;
      }
      case 'Notify': {
        const requestId = r.u64();
        const to = new DeviceId(r.take(16));
        const u = r.u8();
        if (u > 3) throw bad('BadValue');
        const topic = r.take(16);
        const blob = r.rest();
        if (blob.length < 1) throw bad('BadValue');
        if (blob.length > MAX_PUSH_BLOB) throw bad('TooLong');
        f = { type, requestId, to, urgency: URGENCIES[u]!, topic, blob };
        break;
      }
      case 'Active': {
        const a = r.u8();
        if (a > 1) throw bad('BadValue');
        f = { type, active: a === 1 };
        break;
      }
    }
    r.finish();
    return f;
  } catch (e) {
    if (e instanceof CodecError) throw bad(e.kind);
    throw e;
  }
}
