// What the page and its service worker share for push notifications (docs/PUSH.md "Web client"):
// an IndexedDB database of its own, `tandem-push`, apart from the app's `tandem` (whose rows only
// the owning tab writes, store.ts), so the service worker never opens the app's state.
//
//   keys       key id (hex) → { key (hex), desktop id, desktop name, created } — the push keys
//              this phone gave its desktops (push_setup), the newest KEEP_KEYS per desktop
//   decisions  "desktop:task:approval:allow|deny" → when the service worker recorded it: an
//              Allow / Deny tapped on a notification with no page open, which the page it
//              opens (`/#decide=…`) acts on only if the record is there (a link someone else
//              crafted finds none)
//   settings   "push" → { enabled, relay, endpoint }
//
// Only kept on origins where the app keeps its keys (store.ts `lastingOrigin`): the page offers
// notifications nowhere else.

/** Push keys kept per desktop: the newest one and two before it, for pushes already on their way. */
export const KEEP_KEYS = 3;
/** How long a decision recorded by the service worker waits for the page it opened. */
export const DECISION_TTL_MS = 10 * 60_000;

const DB = 'tandem-push';
const VERSION = 1;

/** One push key. */
export interface PushKeyRow {
  /** 16 lower-case hex digits. */
  keyId: string;
  /** 64 lower-case hex digits. */
  key: string;
  desktopId: string;
  desktopName: string;
  createdMs: number;
}

/** Whether notifications are on, and with which relay and push endpoint. */
export interface PushSettings {
  enabled: boolean;
  relay?: string;
  endpoint?: string;
}

function req<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error ?? new Error('IndexedDB request failed'));
  });
}

function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error ?? new Error('IndexedDB transaction failed'));
    tx.onabort = () => reject(tx.error ?? new Error('IndexedDB transaction aborted'));
  });
}

let opened: Promise<IDBDatabase> | null = null;

/** The shared database (opened once per page or worker). */
export function openPushDb(): Promise<IDBDatabase> {
  if (opened) return opened;
  opened = new Promise<IDBDatabase>((resolve, reject) => {
    if (typeof indexedDB === 'undefined') {
      reject(new Error('no IndexedDB'));
      return;
    }
    const open = indexedDB.open(DB, VERSION);
    open.onupgradeneeded = () => {
      const db = open.result;
      const keys = db.createObjectStore('keys', { keyPath: 'keyId' });
      keys.createIndex('desktop', 'desktopId');
      db.createObjectStore('decisions');
      db.createObjectStore('settings');
    };
    open.onsuccess = () => resolve(open.result);
    open.onerror = () => reject(open.error ?? new Error('cannot open tandem-push'));
    open.onblocked = () => reject(new Error('tandem-push is open in an older tab'));
  });
  opened.catch(() => {
    opened = null;
  });
  return opened;
}

/** The rows to drop so that only the newest `keep` of one desktop's keys stay. */
export function keysToDrop(rows: PushKeyRow[], keep = KEEP_KEYS): PushKeyRow[] {
  return [...rows].sort((a, b) => b.createdMs - a.createdMs || (a.keyId < b.keyId ? -1 : 1)).slice(keep);
}

/** Store a new key and drop that desktop's keys beyond the newest KEEP_KEYS, in one transaction. */
export async function putKey(row: PushKeyRow): Promise<void> {
  const db = await openPushDb();
  const tx = db.transaction('keys', 'readwrite', { durability: 'strict' });
  const completed = done(tx);
  const keys = tx.objectStore('keys');
  keys.put(row);
  const all = (await req(keys.index('desktop').getAll(row.desktopId))) as PushKeyRow[];
  for (const old of keysToDrop(all)) keys.delete(old.keyId);
  await completed;
}

export async function getKey(keyId: string): Promise<PushKeyRow | undefined> {
  const db = await openPushDb();
  return (await req(db.transaction('keys').objectStore('keys').get(keyId))) as PushKeyRow | undefined;
}

/** The keys of one desktop (or of all), newest first. */
export async function listKeys(desktopId?: string): Promise<PushKeyRow[]> {
  const db = await openPushDb();
  const store = db.transaction('keys').objectStore('keys');
  const rows = (await req(desktopId === undefined ? store.getAll() : store.index('desktop').getAll(desktopId))) as PushKeyRow[];
  return rows.sort((a, b) => b.createdMs - a.createdMs);
}

/** Forget the keys of one desktop, or every key. */
export async function deleteKeys(desktopId?: string): Promise<void> {
  const db = await openPushDb();
  const tx = db.transaction('keys', 'readwrite');
  const completed = done(tx);
  const keys = tx.objectStore('keys');
  if (desktopId === undefined) keys.clear();
  else for (const row of (await req(keys.index('desktop').getAll(desktopId))) as PushKeyRow[]) keys.delete(row.keyId);
  await completed;
}

export async function getSettings(): Promise<PushSettings> {
  const db = await openPushDb();
  return ((await req(db.transaction('settings').objectStore('settings').get('push'))) as PushSettings | undefined) ?? { enabled: false };
}

export async function putSettings(s: PushSettings): Promise<void> {
  const db = await openPushDb();
  const tx = db.transaction('settings', 'readwrite');
  tx.objectStore('settings').put(s, 'push');
  await done(tx);
}

/** A decision reference: `desktop:task:approval:allow|deny`. */
export interface DecisionRef {
  desktop: string;
  taskId: string;
  approvalId: string;
  allow: boolean;
}

export function decisionRef(d: DecisionRef): string {
  return `${d.desktop}:${d.taskId}:${d.approvalId}:${d.allow ? 'allow' : 'deny'}`;
}

/** The reference parsed (ids are never empty and hold no ':'), or null. */
export function parseDecisionRef(s: string): DecisionRef | null {
  const m = /^([^:]+):([^:]+):([^:]+):(allow|deny)$/.exec(s);
  return m ? { desktop: m[1]!, taskId: m[2]!, approvalId: m[3]!, allow: m[4] === 'allow' } : null;
}

/** The service worker records a decision tapped on a notification. */
export async function recordDecision(ref: string, now = Date.now()): Promise<void> {
  const db = await openPushDb();
  const tx = db.transaction('decisions', 'readwrite', { durability: 'strict' });
  tx.objectStore('decisions').put(now, ref);
  await done(tx);
}

/** Whether the service worker recorded `ref` in the last DECISION_TTL_MS; the record is removed either way (one use). */
export async function takeDecision(ref: string, now = Date.now()): Promise<boolean> {
  const db = await openPushDb();
  const tx = db.transaction('decisions', 'readwrite', { durability: 'strict' });
  const completed = done(tx);
  const store = tx.objectStore('decisions');
  const at = (await req(store.get(ref))) as number | undefined;
  store.delete(ref);
  // Stale records of decisions nobody acted on go too.
  const keys = (await req(store.getAllKeys())) as string[];
  const times = (await req(store.getAll())) as number[];
  keys.forEach((k, i) => {
    if (now - (times[i] ?? 0) > DECISION_TTL_MS) store.delete(k);
  });
  await completed;
  return at !== undefined && now - at <= DECISION_TTL_MS && at <= now + 60_000;
}
