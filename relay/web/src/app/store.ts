// Where the app keeps the device key, each paired desktop (its Link, as
// JSON), the task events seen, and task summaries: one interface (`Store`)
// with two implementations, chosen by the page's origin (`openStore`).
//
// * On a secure context (https, or http://localhost / 127.0.0.1): IndexedDB
//   (`IdbStore`). One write transaction per delivery, committed with strict
//   durability before the delivery is acknowledged to the relay (§13.5).
// * On an origin that is not a secure context (plain http on a local-network
//   address: what `tandem up` serves), or whose host is a local-network
//   address or name even over https (a self-signed LAN relay: see
//   `lastingOrigin`), `MemoryStore`: nothing is written to
//   IndexedDB, localStorage, sessionStorage, cookies or the Cache API. Any
//   host that holds the same IP and port on another network is the same
//   origin to the browser, and its script could read whatever this origin
//   stored; in memory, the keys live only as long as this page, out of reach
//   of every other page (docs/SECURITY.md §3).

import { isLocalHost } from '../proto/qr.ts';
import type { LostRange } from './notices.ts';

/** What the app keeps about one paired desktop. */
export interface DesktopRow {
  id: string;
  name: string;
  platform: string;
  relayUrl: string;
  pairedAt: number;
  /** `Link.toStored()`. */
  link: unknown;
  /** Messages from it that can never arrive, until the user dismisses them (notices.ts). */
  lost?: LostRange[];
}

/** One task event as the thread shows it. */
export interface EventRow {
  desktopId: string;
  taskId: string;
  offset: number;
  atMs: number;
  event: { type: string; [k: string]: unknown };
}

/** What the app knows about a task. */
export interface TaskRow {
  desktopId: string;
  taskId: string;
  title: string;
  executor: string;
  /** The project it runs in, when the desktop offers projects. */
  project?: string;
  state: 'queued' | 'running' | 'finished';
  status?: string;
  updatedMs: number;
  /** The next offset expected from the desktop (contiguous tail). */
  next: number;
  /** The lowest offset from which everything up to `next` is held. */
  lo: number;
  /** The desktop's oldest kept event (history_unavailable), if known. */
  earliest: number;
  /** The highest offset the desktop is known to have, plus one. */
  known: number;
  /** Offset of the newest `finished` event held. */
  finishedAt?: number;
  /** The highest offset held. */
  last?: number;
}

/** A failure to read or write the browser's storage. */
export class StoreError extends Error {
  constructor(what: string, cause?: unknown) {
    super(`storage: ${what}${cause ? `: ${String(cause)}` : ''}`);
  }
}

/** Another tab took over: this one must not write any more. */
export class NotOwner extends StoreError {
  constructor() {
    super('Tandem was opened in another tab');
  }
}

/** Saves reach the disk before the transaction completes (acks depend on it). */
const STRICT: IDBTransactionOptions = { durability: 'strict' };

const DB = 'tandem';
const VERSION = 1;

function req<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(new StoreError('request failed', r.error));
  });
}

function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(new StoreError('transaction failed', tx.error));
    tx.onabort = () => reject(new StoreError('transaction aborted', tx.error));
  });
}

/** What the engine needs from storage (both implementations behave the same; only lifetime differs). */
export interface Store {
  /** True when what is saved outlives the page (IndexedDB); false for the in-memory store. */
  readonly persistent: boolean;
  /** Make this tab the owner (the newest tab wins). */
  claim(): Promise<void>;
  /** The value at `key`, or `make()` stored there if none (atomically). */
  getOrPut<T>(key: string, make: () => T): Promise<T>;
  get<T>(key: string): Promise<T | undefined>;
  put(key: string, value: unknown): Promise<void>;
  desktops(): Promise<DesktopRow[]>;
  tasks(desktopId: string): Promise<TaskRow[]>;
  events(desktopId: string, taskId: string): Promise<EventRow[]>;
  /** Write a desktop's link with the events and tasks it changed, atomically (durably where that applies). */
  save(desktop: DesktopRow, tasks?: TaskRow[], events?: EventRow[]): Promise<void>;
  /** Drop the oldest tasks of a desktop beyond `keep`, with their events. */
  prune(desktopId: string, keep: number): Promise<void>;
  /** Forget a desktop and everything about it. */
  forget(desktopId: string): Promise<void>;
}

/**
 * Whether keys may be kept in this origin's storage: a secure context whose
 * host no other network can hold. A local-network address or name
 * (`192.168.x.y`, `10.x`, `fd00::…`, `*.local`, `*.home.arpa`) is held by
 * whichever host has it on the network the phone is on; over https its
 * certificate is usually self-signed, and a host elsewhere with its own
 * self-signed certificate at the same address is the same origin once the
 * user clicks through the warning (which a self-signed relay trains them to
 * do). Loopback (`localhost`, `127.x`, `::1`) is the phone itself.
 */
export function lastingOrigin(secure: boolean, host: string): boolean {
  if (!secure) return false;
  const h = host.startsWith('[') ? host.slice(1).split(']')[0]! : host.split(':')[0]!;
  const loopback = h === 'localhost' || h.endsWith('.localhost') || /^127\./.test(h) || h === '::1';
  return loopback || !isLocalHost(host);
}

/**
 * The store for this page: IndexedDB on an origin that can keep keys
 * ([`lastingOrigin`]), memory otherwise.
 */
export async function openStore(
  secure: boolean = lastingOrigin(globalThis.isSecureContext === true, globalThis.location?.host ?? ''),
): Promise<Store> {
  if (secure) return IdbStore.open();
  await discardStored();
  return new MemoryStore();
}

/**
 * Delete the database an older version of the app kept on this origin, from
 * before it kept its keys in memory on origins that are not secure contexts:
 * its device key and links are still paired on the desktop, and any page of
 * this origin (a host on another network) could read them. Best effort: a
 * tab of that older version still open blocks the deletion until it closes,
 * and the app does not wait for it.
 */
export async function discardStored(): Promise<void> {
  if (typeof indexedDB === 'undefined') return;
  await new Promise<void>((resolve) => {
    const r = indexedDB.deleteDatabase(DB);
    r.onsuccess = () => resolve();
    r.onerror = () => resolve();
    r.onblocked = () => resolve();
  });
}

/**
 * The app's database. One tab at a time owns it: `claim()` writes this
 * tab's token, and every later write checks it in the same transaction, so
 * a tab that was overtaken can never overwrite the new owner's links (which
 * would reuse nonces).
 */
export class IdbStore implements Store {
  readonly persistent = true;
  private readonly token = crypto.getRandomValues(new Uint32Array(2)).join('-');
  private constructor(private readonly db: IDBDatabase) {}

  static async open(): Promise<IdbStore> {
    if (typeof indexedDB === 'undefined') throw new StoreError('this browser has no IndexedDB');
    const open = indexedDB.open(DB, VERSION);
    open.onupgradeneeded = () => {
      const db = open.result;
      db.createObjectStore('kv');
      db.createObjectStore('desktops', { keyPath: 'id' });
      db.createObjectStore('tasks', { keyPath: ['desktopId', 'taskId'] });
      db.createObjectStore('events', { keyPath: ['desktopId', 'taskId', 'offset'] });
    };
    const db = await new Promise<IDBDatabase>((resolve, reject) => {
      open.onsuccess = () => resolve(open.result);
      open.onerror = () => reject(new StoreError('cannot open the database', open.error));
      open.onblocked = () => reject(new StoreError('the database is open in an older tab'));
    });
    // Ask the browser not to evict this origin's data under pressure.
    void navigator.storage?.persist?.().catch(() => undefined);
    return new IdbStore(db);
  }

  /** Make this tab the owner (the newest tab wins). */
  async claim(): Promise<void> {
    const tx = this.db.transaction('kv', 'readwrite', STRICT);
    tx.objectStore('kv').put(this.token, 'owner');
    await done(tx);
  }

  /** Abort `tx` unless this tab still owns the database. */
  private fence(tx: IDBTransaction): Promise<void> {
    return new Promise((resolve, reject) => {
      const r = tx.objectStore('kv').get('owner');
      r.onsuccess = () => {
        if (r.result === this.token) {
          resolve();
        } else {
          tx.abort();
          reject(new NotOwner());
        }
      };
      r.onerror = () => reject(new StoreError('request failed', r.error));
    });
  }

  /** The value at `key`, or `make()` stored there if none (atomically). */
  async getOrPut<T>(key: string, make: () => T): Promise<T> {
    const tx = this.db.transaction('kv', 'readwrite', STRICT);
    const store = tx.objectStore('kv');
    const value = await new Promise<T>((resolve, reject) => {
      const r = store.get(key);
      r.onsuccess = () => {
        if (r.result !== undefined) {
          resolve(r.result as T);
          return;
        }
        const v = make();
        store.put(v, key);
        resolve(v);
      };
      r.onerror = () => reject(new StoreError('request failed', r.error));
    });
    await done(tx);
    return value;
  }

  async get<T>(key: string): Promise<T | undefined> {
    return (await req(this.db.transaction('kv').objectStore('kv').get(key))) as T | undefined;
  }

  async put(key: string, value: unknown): Promise<void> {
    const tx = this.db.transaction('kv', 'readwrite');
    tx.objectStore('kv').put(value, key);
    await done(tx);
  }

  async desktops(): Promise<DesktopRow[]> {
    return (await req(this.db.transaction('desktops').objectStore('desktops').getAll())) as DesktopRow[];
  }

  async tasks(desktopId: string): Promise<TaskRow[]> {
    const range = IDBKeyRange.bound([desktopId], [desktopId, []]);
    return (await req(this.db.transaction('tasks').objectStore('tasks').getAll(range))) as TaskRow[];
  }

  async events(desktopId: string, taskId: string): Promise<EventRow[]> {
    const range = IDBKeyRange.bound([desktopId, taskId, 0], [desktopId, taskId, Number.MAX_SAFE_INTEGER]);
    return (await req(this.db.transaction('events').objectStore('events').getAll(range))) as EventRow[];
  }

  /** Write a desktop's link with the events and tasks it changed, atomically. */
  async save(desktop: DesktopRow, tasks: TaskRow[] = [], events: EventRow[] = []): Promise<void> {
    await this.fenced((tx) => {
      tx.objectStore('desktops').put(desktop);
      const t = tx.objectStore('tasks');
      for (const row of tasks) t.put(row);
      const e = tx.objectStore('events');
      for (const row of events) e.put(row);
    });
  }

  /** `write` in one strict transaction, only while this tab owns the database. */
  private async fenced(write: (tx: IDBTransaction) => void): Promise<void> {
    const tx = this.db.transaction(['kv', 'desktops', 'tasks', 'events'], 'readwrite', STRICT);
    const completed = done(tx);
    try {
      await this.fence(tx);
    } catch (e) {
      await completed.catch(() => undefined);
      throw e;
    }
    write(tx);
    await completed;
  }

  /** Drop the oldest tasks of a desktop beyond `keep`, with their events. */
  async prune(desktopId: string, keep: number): Promise<void> {
    const all = await this.tasks(desktopId);
    if (all.length <= keep) return;
    all.sort((a, b) => b.updatedMs - a.updatedMs);
    await this.fenced((tx) => {
      for (const t of all.slice(keep)) {
        tx.objectStore('tasks').delete([desktopId, t.taskId]);
        tx.objectStore('events').delete(IDBKeyRange.bound([desktopId, t.taskId, 0], [desktopId, t.taskId, Number.MAX_SAFE_INTEGER]));
      }
    });
  }

  /** Forget a desktop and everything about it. */
  async forget(desktopId: string): Promise<void> {
    await this.fenced((tx) => {
      tx.objectStore('desktops').delete(desktopId);
      tx.objectStore('tasks').delete(IDBKeyRange.bound([desktopId], [desktopId, []]));
      tx.objectStore('events').delete(IDBKeyRange.bound([desktopId], [desktopId, []]));
    });
  }
}

/**
 * Everything in this page's memory, gone when the page closes or reloads.
 * Values are copied in and out (as IndexedDB's structured clone does), so
 * the engine's later changes to an object never reach the store unsaved,
 * and "back to what storage holds" after a failed save means the same as
 * with IndexedDB. Each tab is a device of its own: there is nothing shared
 * to own, so `claim()` has nothing to do.
 */
export class MemoryStore implements Store {
  readonly persistent = false;
  private readonly kv = new Map<string, unknown>();
  private readonly desktopRows = new Map<string, DesktopRow>();
  /** desktopId → taskId → row. */
  private readonly taskRows = new Map<string, Map<string, TaskRow>>();
  /** desktopId → taskId → offset → row. */
  private readonly eventRows = new Map<string, Map<string, Map<number, EventRow>>>();

  async claim(): Promise<void> {}

  async getOrPut<T>(key: string, make: () => T): Promise<T> {
    if (!this.kv.has(key)) this.kv.set(key, structuredClone(make()));
    return structuredClone(this.kv.get(key)) as T;
  }

  async get<T>(key: string): Promise<T | undefined> {
    return structuredClone(this.kv.get(key)) as T | undefined;
  }

  async put(key: string, value: unknown): Promise<void> {
    this.kv.set(key, structuredClone(value));
  }

  async desktops(): Promise<DesktopRow[]> {
    // In key order, as IndexedDB returns them.
    return [...this.desktopRows.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)).map((r) => structuredClone(r));
  }

  async tasks(desktopId: string): Promise<TaskRow[]> {
    const rows = [...(this.taskRows.get(desktopId)?.values() ?? [])];
    return rows.sort((a, b) => (a.taskId < b.taskId ? -1 : a.taskId > b.taskId ? 1 : 0)).map((r) => structuredClone(r));
  }

  async events(desktopId: string, taskId: string): Promise<EventRow[]> {
    const rows = [...(this.eventRows.get(desktopId)?.get(taskId)?.values() ?? [])];
    return rows.sort((a, b) => a.offset - b.offset).map((r) => structuredClone(r));
  }

  async save(desktop: DesktopRow, tasks: TaskRow[] = [], events: EventRow[] = []): Promise<void> {
    // Copies first: a value that cannot be cloned fails the whole save, as a transaction would.
    const d = structuredClone(desktop);
    const ts = tasks.map((t) => structuredClone(t));
    const es = events.map((e) => structuredClone(e));
    this.desktopRows.set(d.id, d);
    for (const t of ts) this.tasksOf(t.desktopId).set(t.taskId, t);
    for (const e of es) this.eventsOf(e.desktopId, e.taskId).set(e.offset, e);
  }

  async prune(desktopId: string, keep: number): Promise<void> {
    const all = [...(this.taskRows.get(desktopId)?.values() ?? [])];
    if (all.length <= keep) return;
    all.sort((a, b) => b.updatedMs - a.updatedMs);
    for (const t of all.slice(keep)) {
      this.taskRows.get(desktopId)?.delete(t.taskId);
      this.eventRows.get(desktopId)?.delete(t.taskId);
    }
  }

  async forget(desktopId: string): Promise<void> {
    this.desktopRows.delete(desktopId);
    this.taskRows.delete(desktopId);
    this.eventRows.delete(desktopId);
  }

  private tasksOf(desktopId: string): Map<string, TaskRow> {
    let m = this.taskRows.get(desktopId);
    if (!m) this.taskRows.set(desktopId, (m = new Map()));
    return m;
  }

  private eventsOf(desktopId: string, taskId: string): Map<number, EventRow> {
    let byTask = this.eventRows.get(desktopId);
    if (!byTask) this.eventRows.set(desktopId, (byTask = new Map()));
    let m = byTask.get(taskId);
    if (!m) byTask.set(taskId, (m = new Map()));
    return m;
  }
}
