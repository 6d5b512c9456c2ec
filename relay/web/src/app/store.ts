// IndexedDB: the device key, each paired desktop (its Link, as JSON), the
// task events seen, and task summaries. One write transaction per delivery,
// committed before the delivery is acknowledged to the relay (§13.5).

/** What the app keeps about one paired desktop. */
export interface DesktopRow {
  id: string;
  name: string;
  platform: string;
  relayUrl: string;
  pairedAt: number;
  /** `Link.toStored()`. */
  link: unknown;
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

/**
 * The app's database. One tab at a time owns it: `claim()` writes this
 * tab's token, and every later write checks it in the same transaction, so
 * a tab that was overtaken can never overwrite the new owner's links (which
 * would reuse nonces).
 */
export class Store {
  private readonly token = crypto.getRandomValues(new Uint32Array(2)).join('-');
  private constructor(private readonly db: IDBDatabase) {}

  static async open(): Promise<Store> {
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
    return new Store(db);
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
