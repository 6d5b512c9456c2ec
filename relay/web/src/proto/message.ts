// Application messages (PROTOCOL.md §15, proto/src/message.rs): compact JSON objects
// {"v":1,"kind":<kind>,<fields in the order of §15.3>}, optional fields omitted when absent.
//
// u64 fields are JS numbers: values above 2^53 - 1 are refused as Malformed (the Rust crate
// accepts them; no real offset, timestamp or count gets near that).
import { compareBytes, fromUtf8, utf8 } from './bytes.ts';

export const MESSAGE_VERSION = 1;
export const MAX_MESSAGE_LEN = 61_440;
export const MAX_DEVICE_NAME_CHARS = 64;

type FieldType = 'string' | 'bool' | 'u64' | 'json' | 'event' | 'strings' | ListType;
/** Lists of objects, each with the fields of `LISTS[type]`. */
type ListType = 'tasks' | 'executors' | 'projects' | 'sessions';
/** `opt`: omitted when absent; `optTrue`: a bool written only when true; `optSome`: a list written only when not empty. */
type Field = readonly [name: string, type: FieldType, optional?: 'opt' | 'optTrue' | 'optSome'];

const KINDS: Record<string, readonly Field[]> = {
  task_submit: [['task_id', 'string'], ['text', 'string'], ['workspace', 'string', 'opt'], ['executor', 'string', 'opt'], ['resume', 'string', 'opt']],
  follow_up: [['task_id', 'string'], ['text', 'string']],
  cancel: [['task_id', 'string']],
  approval_decision: [['task_id', 'string'], ['approval_id', 'string'], ['allow', 'bool'], ['remember', 'bool', 'optTrue']],
  sessions_request: [['executor', 'string', 'opt'], ['workspace', 'string', 'opt']],
  sessions: [['executor', 'string'], ['workspace', 'string', 'opt'], ['sessions', 'sessions']],
  history_request: [['task_id', 'string', 'opt'], ['from_offset', 'u64']],
  task_event: [['task_id', 'string'], ['offset', 'u64'], ['at_ms', 'u64'], ['event', 'event']],
  history_end: [['task_id', 'string'], ['next_offset', 'u64'], ['more', 'bool', 'optTrue']],
  task_list: [['tasks', 'tasks']],
  detached: [['idle_secs', 'u64']],
  history_unavailable: [['task_id', 'string'], ['requested_from', 'u64'], ['earliest', 'u64']],
  device_info: [['name', 'string'], ['platform', 'string'], ['app_version', 'string'], ['ephemeral', 'bool', 'optTrue']],
  choices: [['executors', 'executors'], ['projects', 'projects', 'optSome'], ['default_executor', 'string'], ['default_project', 'string', 'opt']],
  refused: [['task_id', 'string', 'opt'], ['code', 'string'], ['message', 'string']],
  push_setup: [
    ['enabled', 'bool'],
    ['key_id', 'string', 'opt'],
    ['key', 'string', 'opt'],
    ['approvals', 'bool', 'opt'],
    ['finished', 'bool', 'opt'],
    ['missing', 'bool', 'opt'],
  ],
};

const EVENTS: Record<string, readonly Field[]> = {
  accepted: [['executor', 'string'], ['project', 'string', 'opt'], ['text', 'string', 'opt'], ['resumed', 'string', 'opt']],
  follow_up: [['text', 'string']],
  progress: [['text', 'string']],
  tool_call: [['call_id', 'string'], ['name', 'string'], ['input', 'json']],
  tool_result: [['call_id', 'string'], ['output', 'string'], ['is_error', 'bool']],
  diff: [['call_id', 'string'], ['path', 'string'], ['diff', 'string'], ['added', 'u64'], ['removed', 'u64']],
  approval_request: [['approval_id', 'string'], ['summary', 'string'], ['detail', 'string'], ['expires_at_ms', 'u64']],
  approval_resolved: [['approval_id', 'string'], ['allow', 'bool'], ['by', 'string'], ['rule', 'string', 'opt']],
  finished: [['status', 'string'], ['summary', 'string'], ['denied', 'strings', 'optSome'], ['failed', 'strings', 'optSome'], ['expired', 'strings', 'optSome']],
};

const TASK_SUMMARY: readonly Field[] = [
  ['task_id', 'string'],
  ['title', 'string'],
  ['executor', 'string'],
  ['project', 'string', 'opt'],
  ['state', 'string'],
  ['status', 'string', 'opt'],
  ['next_offset', 'u64'],
  ['updated_ms', 'u64'],
];

const LISTS: Record<ListType, readonly Field[]> = {
  tasks: TASK_SUMMARY,
  executors: [['name', 'string'], ['kind', 'string']],
  projects: [['name', 'string']],
  sessions: [['id', 'string'], ['title', 'string'], ['updated_ms', 'u64'], ['task_id', 'string', 'opt']],
};

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

export interface TaskEvent {
  type: string;
  [field: string]: Json | undefined;
}
export interface TaskSummary {
  task_id: string;
  title: string;
  executor: string;
  project?: string;
  state: string;
  status?: string;
  next_offset: number;
  updated_ms: number;
}
/** What a desktop offers for a task (`choices`, §15.3): executors and projects, the defaults first. */
export interface Choices {
  executors: { name: string; kind: string }[];
  projects: { name: string }[];
  default_executor: string;
  default_project?: string;
}
/** Most sessions in one `sessions` message (MAX_SESSIONS in message.rs). */
export const MAX_SESSIONS = 50;
/** One session an executor can continue (`sessions`, §15.3): newest first. */
export interface SessionSummary {
  /** The agent's session id: what `task_submit.resume` names. */
  id: string;
  /** Its summary, or the start of its first prompt (made visible-safe by the desktop; still text only here). */
  title: string;
  /** When it last changed (Unix ms, the desktop's clock). */
  updated_ms: number;
  /** The Tandem task that ran it, when one did. */
  task_id?: string;
}
/** The answer to `sessions_request`: the sessions of one executor in one project. */
export interface Sessions {
  executor: string;
  workspace?: string;
  sessions: SessionSummary[];
}
/** A known message: `kind` plus that kind's fields (snake_case, as on the wire). */
export interface Message {
  kind: string;
  [field: string]: unknown;
}

export type Decoded = { known: true; v: number; message: Message } | { known: false; v: number; kind: string };

export class MessageError extends Error {
  constructor(
    public readonly kind: 'TooLarge' | 'NotJson' | 'NoVersion' | 'NoKind' | 'Malformed' | 'UnknownKind',
    detail = '',
  ) {
    super(`message: ${kind}${detail ? ` (${detail})` : ''}`);
  }
}

export interface DeviceInfo {
  name: string;
  platform: string;
  app_version: string;
  /**
   * The device keeps its keys only for as long as it runs (a web page on an origin that is not a
   * secure context, §15.4): the desktop forgets it once it has been gone for a while. Written only
   * when true; read as false when absent.
   */
  ephemeral?: boolean;
}

// Unicode Cc: U+0000-001F and U+007F-009F (Rust char::is_control).
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

export function validateDeviceInfo(d: DeviceInfo): void {
  if ([...d.name].length > MAX_DEVICE_NAME_CHARS || CONTROL.test(d.name))
    throw new MessageError('TooLarge', 'device name too long or has control characters');
  for (const f of ['platform', 'app_version'] as const) {
    if (utf8(d[f]).length > 32 || CONTROL.test(d[f]))
      throw new MessageError('TooLarge', `device ${f} too long or has control characters`);
  }
}

/** The pairing payload form {"v":1,"name":…,"platform":…,"app_version":…[,"ephemeral":true]}; does not validate. */
export function deviceInfoToJson(d: DeviceInfo): Uint8Array {
  return utf8(`{"v":1,${writeFields(d as unknown as Record<string, unknown>, KINDS.device_info!)}}`);
}

export function deviceInfoFromJson(bytes: Uint8Array): DeviceInfo {
  const obj = parseObject(bytes);
  version(obj);
  const d = readFields(obj, KINDS.device_info!, 'device_info') as unknown as DeviceInfo;
  validateDeviceInfo(d);
  return d;
}

/**
 * `push_setup` (phone → desktop, docs/PUSH.md): the push key the desktop seals notifications for
 * this phone with, and which kinds it wants (absent = true). `enabled: false` forgets the key.
 */
export interface PushSetup {
  enabled: boolean;
  /** 16 lower-case hex digits (8 bytes); required when enabled. */
  key_id?: string;
  /** 64 lower-case hex digits (32 bytes); required when enabled. */
  key?: string;
  approvals?: boolean;
  finished?: boolean;
  missing?: boolean;
}

/** The §15.3 rules of `push_setup`: an enabled setup names a key id and a key in lower-case hex. */
export function validatePushSetup(m: Record<string, unknown>): void {
  if (m.enabled !== true) return;
  if (typeof m.key_id !== 'string' || !/^[0-9a-f]{16}$/.test(m.key_id)) throw new MessageError('Malformed', 'push_setup: key_id must be 16 lower-case hex digits');
  if (typeof m.key !== 'string' || !/^[0-9a-f]{64}$/.test(m.key)) throw new MessageError('Malformed', 'push_setup: key must be 64 lower-case hex digits');
}

// ---- encoding ----

/** Like JSON.stringify but with object keys sorted (serde_json's default map order). */
function stringifySorted(v: unknown): string {
  if (v === null || typeof v !== 'object') return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(stringifySorted).join(',')}]`;
  const o = v as Record<string, unknown>;
  const keys = Object.keys(o)
    .filter((k) => o[k] !== undefined)
    .sort((a, b) => compareBytes(utf8(a), utf8(b))); // BTreeMap<String> order: UTF-8 bytes
  return `{${keys.map((k) => `${JSON.stringify(k)}:${stringifySorted(o[k])}`).join(',')}}`;
}

function writeValue(type: FieldType, v: unknown, where: string): string {
  switch (type) {
    case 'string':
      if (typeof v !== 'string') throw new MessageError('Malformed', `${where}: expected string`);
      return JSON.stringify(v);
    case 'bool':
      if (typeof v !== 'boolean') throw new MessageError('Malformed', `${where}: expected bool`);
      return String(v);
    case 'u64':
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new MessageError('Malformed', `${where}: expected u64`);
      return String(v);
    case 'json':
      return stringifySorted(v === undefined ? null : v);
    case 'event': {
      const e = v as TaskEvent;
      const fields = e && typeof e.type === 'string' ? EVENTS[e.type] : undefined;
      if (!fields) throw new MessageError('Malformed', `${where}: unknown event type`);
      const rest = writeFields(e as Record<string, unknown>, fields);
      return `{"type":${JSON.stringify(e.type)}${rest ? `,${rest}` : ''}}`;
    }
    case 'tasks':
    case 'executors':
    case 'projects':
    case 'sessions':
      if (!Array.isArray(v)) throw new MessageError('Malformed', `${where}: expected array`);
      return `[${v.map((t) => `{${writeFields(t as Record<string, unknown>, LISTS[type])}}`).join(',')}]`;
    case 'strings':
      if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) throw new MessageError('Malformed', `${where}: expected an array of strings`);
      return `[${v.map((x) => JSON.stringify(x)).join(',')}]`;
  }
}

function writeFields(o: Record<string, unknown>, fields: readonly Field[]): string {
  const parts: string[] = [];
  for (const [name, type, opt] of fields) {
    const v = o[name];
    if (opt === 'opt' && (v === undefined || v === null)) continue;
    if (opt === 'optTrue' && (v === undefined || v === null || v === false)) continue;
    if (opt === 'optSome' && (v === undefined || v === null || (Array.isArray(v) && v.length === 0))) continue;
    parts.push(`${JSON.stringify(name)}:${writeValue(type, v, name)}`);
  }
  return parts.join(',');
}

/** Message::encode: compact JSON, fields in protocol order. */
export function encodeMessage(m: Message): Uint8Array {
  const fields = KINDS[m.kind];
  if (!fields) throw new MessageError('UnknownKind', m.kind);
  if (m.kind === 'device_info') validateDeviceInfo(m as unknown as DeviceInfo);
  if (m.kind === 'push_setup') validatePushSetup(m);
  const rest = writeFields(m as Record<string, unknown>, fields);
  const out = utf8(`{"v":${MESSAGE_VERSION},"kind":${JSON.stringify(m.kind)}${rest ? `,${rest}` : ''}}`);
  if (out.length > MAX_MESSAGE_LEN) throw new MessageError('TooLarge', `${out.length} bytes`);
  return out;
}

// ---- decoding ----

function parseObject(bytes: Uint8Array): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(fromUtf8(bytes));
  } catch {
    throw new MessageError('NotJson');
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new MessageError('NotJson');
  return v as Record<string, unknown>;
}

function version(o: Record<string, unknown>): number {
  const v = o.v;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) throw new MessageError('NoVersion');
  return v;
}

function readValue(type: FieldType, v: unknown, where: string): unknown {
  switch (type) {
    case 'string':
    case 'bool':
    case 'u64':
    case 'strings':
      writeValue(type, v, where); // type check
      return v;
    case 'json':
      return v;
    case 'event': {
      if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new MessageError('Malformed', `${where}: expected object`);
      const e = v as Record<string, unknown>;
      if (typeof e.type !== 'string') throw new MessageError('Malformed', `${where}: missing type`);
      const fields = EVENTS[e.type];
      if (!fields) return undefined; // caller reports Unknown
      return { type: e.type, ...readFields(e, fields, `${where}.${e.type}`) };
    }
    case 'tasks':
    case 'executors':
    case 'projects':
    case 'sessions':
      if (!Array.isArray(v)) throw new MessageError('Malformed', `${where}: expected array`);
      return v.map((t, i) => {
        if (t === null || typeof t !== 'object' || Array.isArray(t)) throw new MessageError('Malformed', `${where}[${i}]`);
        return readFields(t as Record<string, unknown>, LISTS[type], `${where}[${i}]`);
      });
  }
}

function readFields(o: Record<string, unknown>, fields: readonly Field[], where: string): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, type, opt] of fields) {
    const v = o[name];
    if (v === undefined || v === null) {
      if (opt === 'opt') continue;
      if (opt === 'optSome') {
        out[name] = [];
        continue;
      }
      if (opt === 'optTrue') {
        out[name] = false;
        continue;
      }
      if (type !== 'json') throw new MessageError('Malformed', `${where}: missing ${name}`);
      if (!(name in o)) throw new MessageError('Malformed', `${where}: missing ${name}`);
    }
    out[name] = readValue(type, v, `${where}.${name}`);
  }
  return out;
}

/** Message::decode (§15.2). Unknown kinds and event types are reported, not errors. */
export function decodeMessage(bytes: Uint8Array): Decoded {
  if (bytes.length > MAX_MESSAGE_LEN) throw new MessageError('TooLarge');
  const o = parseObject(bytes);
  const v = version(o);
  if (typeof o.kind !== 'string') throw new MessageError('NoKind');
  const kind = o.kind;
  const fields = KINDS[kind];
  if (!fields) return { known: false, v, kind };
  if (kind === 'task_event') {
    const e = o.event;
    if (e && typeof e === 'object' && !Array.isArray(e)) {
      const t = (e as Record<string, unknown>).type;
      if (typeof t === 'string' && !EVENTS[t]) return { known: false, v, kind: `task_event/${t}` };
    }
  }
  const message = { kind, ...readFields(o, fields, kind) } as Message;
  if (kind === 'device_info') validateDeviceInfo(message as unknown as DeviceInfo);
  if (kind === 'push_setup') validatePushSetup(message);
  return { known: true, v, message };
}
