// A paired desktop in memory: its stored row and Link, the relay it is
// reached through, its task threads, what the relay has not accepted for it
// yet (`Sender`), and the queue that runs the engine's work on it in order.
import { type Choices, DeviceId, type Link, type Sessions } from '../proto/index.ts';
import type { RelayClient } from './relay.ts';
import { Sender } from './sender.ts';
import type { DesktopRow } from './store.ts';
import { Thread } from './thread.ts';

/** A `sessions_request` and what came back. */
export interface SessionsAsk {
  asked: { executor?: string; workspace?: string };
  atMs: number;
  answer?: Sessions;
  refused?: { code: string; message: string };
}

/** A paired desktop in memory. */
export class Desktop {
  online = false;
  detached = false;
  /** A task list arrived from it since the page loaded. */
  listed = false;
  /** The executors and projects it offers, as it last said (with its task list). */
  choices: Choices | null = null;
  /**
   * The last `sessions_request` from this page (not persisted): what was
   * asked, when, and its answer (`sessions`) or refusal once it came.
   */
  sessions: SessionsAsk | null = null;
  /** Messages from it were lost: its task list, when it comes, re-fetches every task behind. */
  recovering = false;
  /** When that task list was asked for (one at a time while it is on its way). */
  recoveringSince = 0;
  /** When the user last asked it again for what lost messages carried (the notice says so). */
  askedAgainMs: number | null = null;
  readonly threads = new Map<string, Thread>();
  /** What the relay has not accepted yet for this desktop, retried until it does. */
  readonly sender: Sender;
  /** The link's acknowledged sequence number and since when (the stale-outbox check). */
  acked = { seq: 0n, sinceMs: Date.now() };
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    public row: DesktopRow,
    public link: Link,
    readonly relay: RelayClient,
    changed: () => void = () => undefined,
  ) {
    this.sender = new Sender(relay, this.deviceId, changed);
  }

  get id(): string {
    return this.row.id;
  }

  get deviceId(): DeviceId {
    return DeviceId.parse(this.row.id);
  }

  /** Run `f` after every earlier operation on this desktop. */
  serial<T>(f: () => Promise<T>): Promise<T> {
    const p = this.queue.then(f, f);
    this.queue = p.catch(() => undefined);
    return p;
  }

  busy(): boolean {
    for (const t of this.threads.values()) if (t.row.state !== 'finished') return true;
    return false;
  }

  thread(taskId: string): Thread {
    let t = this.threads.get(taskId);
    if (!t) {
      t = Thread.fresh(this.id, taskId);
      t.loaded = true;
      this.threads.set(taskId, t);
    }
    return t;
  }
}
