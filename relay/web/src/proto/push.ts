// The inner seal of a push notification (docs/PUSH.md, proto/src/push.rs): what the desktop seals
// for one phone with the push key that phone gave it (`push_setup`), so the relay and the push
// service carry only an opaque blob.
//
//   blob   = 0x01 ‖ key_id [8] ‖ nonce [24] ‖ XChaCha20-Poly1305(key, nonce, padded, aad)
//   aad    = "tandem push v1" ‖ key_id
//   padded = the UTF-8 JSON notification, then 0x00 up to the next multiple of 256 (≤ 2048)
//   topic  = mac(push key, "tandem push topic v1", task_id)[..16] (kdf.ts: keyed BLAKE2s-256 of
//            label ‖ 0x00 ‖ task_id, as proto/src/push.rs does), all zeros for no task
//
// The shared spec of issue 19 named a keyed BLAKE2b-128 for the topic; the crate uses its kdf MAC,
// and the phone must compute what the desktop computes (proto/vectors/push.json decides).
import { xchacha20poly1305 } from '@noble/ciphers/chacha.js';
import { concat, equalBytes, fromUtf8, utf8 } from './bytes.ts';
import { mac } from './kdf.ts';

/** The blob's first byte. */
export const PUSH_BLOB_VERSION = 1;
export const PUSH_KEY_LEN = 32;
export const PUSH_KEY_ID_LEN = 8;
export const PUSH_NONCE_LEN = 24;
export const PUSH_TOPIC_LEN = 16;
/** The padded plaintext is a multiple of this. */
export const PUSH_PAD_BLOCK = 256;
/** Most bytes of padded plaintext. */
export const MAX_PUSH_PADDED = 2048;
const TAG_LEN = 16;
const HEADER_LEN = 1 + PUSH_KEY_ID_LEN + PUSH_NONCE_LEN;
/** The largest blob this seal makes: header, 2048 bytes of padded text, tag (2097). */
export const MAX_SEALED_LEN = HEADER_LEN + MAX_PUSH_PADDED + TAG_LEN;
/** The largest blob a `Notify` carries (room for a newer seal); longer ones are refused unread. */
export const MAX_PUSH_BLOB_LEN = 2560;
/** Most UTF-8 bytes of `title` and `body` (the desktop truncates at a char boundary). */
export const MAX_PUSH_TITLE = 120;
export const MAX_PUSH_BODY = 600;

const AAD_LABEL = utf8('tandem push v1');
const TOPIC_LABEL = 'tandem push topic v1';

/** What a push says, once opened. */
export interface PushNotification {
  /** `other`: a kind a newer desktop sends (shown without actions). */
  kind: 'approval' | 'finished' | 'missing' | 'other';
  /** The desktop's name. */
  desktop: string;
  title: string;
  body: string;
  task_id?: string;
  approval_id?: string;
  expires_at_ms?: number;
  /** The device's scope lets it decide approvals (Allow / Deny from the notification). */
  can_decide?: boolean;
  at_ms: number;
}

export type PushErrorKind = 'Malformed' | 'UnknownVersion' | 'WrongKey' | 'Decrypt' | 'TooLarge' | 'BadNotification';

/** A blob that cannot be opened, or a notification that cannot be sealed. */
export class PushError extends Error {
  constructor(
    readonly kind: PushErrorKind,
    detail = '',
  ) {
    super(`push: ${kind}${detail ? ` (${detail})` : ''}`);
  }
}

const KINDS = new Set(['approval', 'finished', 'missing']);

function checkKey(key: Uint8Array, keyId?: Uint8Array): void {
  if (key.length !== PUSH_KEY_LEN) throw new RangeError(`a push key is ${PUSH_KEY_LEN} bytes`);
  if (keyId && keyId.length !== PUSH_KEY_ID_LEN) throw new RangeError(`a push key id is ${PUSH_KEY_ID_LEN} bytes`);
}

function aad(keyId: Uint8Array): Uint8Array {
  return concat(AAD_LABEL, keyId);
}

/**
 * The notification as the desktop writes it: compact JSON, fields in the order of the spec
 * (`kind, desktop, title, body, task_id?, approval_id?, expires_at_ms?, can_decide?, at_ms`).
 */
export function encodePushNotification(n: PushNotification): Uint8Array {
  const parts = [`"kind":${JSON.stringify(n.kind)}`, `"desktop":${JSON.stringify(n.desktop)}`, `"title":${JSON.stringify(n.title)}`, `"body":${JSON.stringify(n.body)}`];
  if (n.task_id !== undefined) parts.push(`"task_id":${JSON.stringify(n.task_id)}`);
  if (n.approval_id !== undefined) parts.push(`"approval_id":${JSON.stringify(n.approval_id)}`);
  if (n.expires_at_ms !== undefined) parts.push(`"expires_at_ms":${n.expires_at_ms}`);
  if (n.can_decide !== undefined) parts.push(`"can_decide":${n.can_decide}`);
  parts.push(`"at_ms":${n.at_ms}`);
  return utf8(`{${parts.join(',')}}`);
}

const isU64 = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

/** The notification in `json`, checked (unknown fields ignored, as for app messages). */
export function parsePushNotification(json: Uint8Array): PushNotification {
  let o: unknown;
  try {
    o = JSON.parse(fromUtf8(json));
  } catch {
    throw new PushError('BadNotification', 'not JSON');
  }
  if (o === null || typeof o !== 'object' || Array.isArray(o)) throw new PushError('BadNotification', 'not an object');
  const r = o as Record<string, unknown>;
  const bad = (f: string): PushError => new PushError('BadNotification', f);
  if (typeof r.kind !== 'string') throw bad('kind');
  for (const f of ['desktop', 'title', 'body'] as const) if (typeof r[f] !== 'string') throw bad(f);
  if (!isU64(r.at_ms)) throw bad('at_ms');
  const kind = (KINDS.has(r.kind) ? r.kind : 'other') as PushNotification['kind'];
  const n: PushNotification = { kind, desktop: r.desktop as string, title: r.title as string, body: r.body as string, at_ms: r.at_ms };
  for (const f of ['task_id', 'approval_id'] as const) {
    const v = r[f];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'string') throw bad(f);
    n[f] = v;
  }
  if (r.expires_at_ms !== undefined && r.expires_at_ms !== null) {
    if (!isU64(r.expires_at_ms)) throw bad('expires_at_ms');
    n.expires_at_ms = r.expires_at_ms;
  }
  if (r.can_decide !== undefined && r.can_decide !== null) {
    if (typeof r.can_decide !== 'boolean') throw bad('can_decide');
    n.can_decide = r.can_decide;
  }
  return n;
}

/** `json` padded with 0x00 to the next multiple of 256 bytes. */
function pad(json: Uint8Array): Uint8Array {
  if (json.includes(0)) throw new PushError('BadNotification', 'the JSON holds a 0x00 byte');
  const len = Math.max(PUSH_PAD_BLOCK, Math.ceil(json.length / PUSH_PAD_BLOCK) * PUSH_PAD_BLOCK);
  if (len > MAX_PUSH_PADDED) throw new PushError('TooLarge', `${json.length} bytes of JSON`);
  const out = new Uint8Array(len);
  out.set(json);
  return out;
}

/**
 * Seal a notification (a `PushNotification`, or its JSON bytes as given) under `key`.
 * `nonce`: 24 bytes, fresh random when absent (tests pass one).
 */
export function sealPush(key: Uint8Array, keyId: Uint8Array, n: PushNotification | Uint8Array, nonce?: Uint8Array): Uint8Array {
  checkKey(key, keyId);
  const iv = nonce ?? crypto.getRandomValues(new Uint8Array(PUSH_NONCE_LEN));
  if (iv.length !== PUSH_NONCE_LEN) throw new RangeError(`a push nonce is ${PUSH_NONCE_LEN} bytes`);
  const json = n instanceof Uint8Array ? n : encodePushNotification(n);
  const ct = xchacha20poly1305(key, iv, aad(keyId)).encrypt(pad(json));
  return concat(Uint8Array.of(PUSH_BLOB_VERSION), keyId, iv, ct);
}

/** The key id a blob names (to find its key), after checking its version and size. */
export function pushBlobKeyId(blob: Uint8Array): Uint8Array {
  if (blob.length > MAX_PUSH_BLOB_LEN) throw new PushError('TooLarge', `${blob.length} bytes`);
  if (blob.length === 0) throw new PushError('Malformed', 'empty');
  if (blob[0] !== PUSH_BLOB_VERSION) throw new PushError('UnknownVersion', String(blob[0]));
  if (blob.length < HEADER_LEN + PUSH_PAD_BLOCK + TAG_LEN) throw new PushError('Malformed', 'too short');
  return blob.slice(1, 1 + PUSH_KEY_ID_LEN);
}

/** The padded JSON plaintext of `blob`, opened with `key` (whose id is `keyId`). */
export function openPushBytes(key: Uint8Array, keyId: Uint8Array, blob: Uint8Array): Uint8Array {
  checkKey(key, keyId);
  const named = pushBlobKeyId(blob);
  if (!equalBytes(named, keyId)) throw new PushError('WrongKey', 'the blob names another key id');
  const nonce = blob.subarray(1 + PUSH_KEY_ID_LEN, HEADER_LEN);
  let padded: Uint8Array;
  try {
    padded = xchacha20poly1305(key, nonce, aad(keyId)).decrypt(blob.subarray(HEADER_LEN));
  } catch {
    throw new PushError('Decrypt', 'wrong key or damaged blob');
  }
  if (padded.length % PUSH_PAD_BLOCK !== 0 || padded.length > MAX_PUSH_PADDED) throw new PushError('Malformed', 'padded length');
  // The JSON ends at the first 0x00; only zeros follow it.
  let end = padded.indexOf(0);
  if (end < 0) end = padded.length;
  if (padded.subarray(end).some((b) => b !== 0)) throw new PushError('Malformed', 'padding');
  return padded.slice(0, end);
}

/** Open `blob` with `key` (whose id is `keyId`): the notification it carries. */
export function openPush(key: Uint8Array, keyId: Uint8Array, blob: Uint8Array): PushNotification {
  return parsePushNotification(openPushBytes(key, keyId, blob));
}

/** The collapse topic of a task's pushes (16 bytes; all zeros when there is no task). */
export function pushTopic(key: Uint8Array, taskId?: string | null): Uint8Array {
  checkKey(key);
  if (taskId === undefined || taskId === null) return new Uint8Array(PUSH_TOPIC_LEN);
  return mac(key, TOPIC_LABEL, [utf8(taskId)]).slice(0, PUSH_TOPIC_LEN);
}
