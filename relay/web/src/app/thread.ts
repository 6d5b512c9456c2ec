// One task's events as this client holds them, and the offset rule of
// PROTOCOL §15.5 adapted to a thread that loads its newest page first:
// events are keyed by offset (a repeat is dropped), [lo, next) is held
// without holes, a gap past `next` is filled from history once, and older
// pages before `lo` are fetched when the user scrolls back. Sans I/O.
import type { EventRow, TaskRow } from './store.ts';

/** Events per history page (the desktop's page size). */
export const PAGE = 256;

/**
 * How long a gap fill counts as on its way: after that a loss report or a
 * live event may ask again (its answer may be gone).
 */
export const FILL_STALE_MS = 15_000;

/** What observing an event means for the caller. */
export interface Observed {
  /** False for a repeat (already held): nothing changes. */
  fresh: boolean;
  /** Ask for the history from this offset (a gap opened). */
  fill: number | null;
}

/** A pending approval, as the approvals list shows it. */
export interface PendingApproval {
  desktopId: string;
  taskId: string;
  approvalId: string;
  summary: string;
  detail: string;
  expiresAtMs: number;
}

export class Thread {
  readonly events = new Map<number, EventRow>();
  /** Events were read from storage. */
  loaded = false;
  /** Where the gap fill on its way started. */
  private fillFrom: number | null = null;
  /** When that fill was asked for. */
  private fillAt = 0;
  /** Messages from the desktop were lost since that fill was asked for. */
  private fillLossy = false;
  /** The older page on its way: from, and `lo` when asked. */
  private older: { from: number; to: number } | null = null;
  /** Refusals of this task's requests, newest last (not persisted). */
  readonly refusals: Array<{ code: string; message: string; approvalId?: string }> = [];
  /** Approvals answered from this client and not resolved yet. */
  readonly answered = new Map<string, boolean>();
  /** Approvals this client allowed with "always allow" (`remember`), newest last (not persisted). */
  readonly remembered = new Set<string>();

  constructor(public row: TaskRow) {}

  static fresh(desktopId: string, taskId: string, at = 0): Thread {
    return new Thread({
      desktopId,
      taskId,
      title: '',
      executor: '',
      state: 'queued',
      updatedMs: Date.now(),
      next: at,
      lo: at,
      earliest: 0,
      known: at,
    });
  }

  /** Rebuild from storage. */
  static load(row: TaskRow, events: EventRow[]): Thread {
    const t = new Thread(row);
    t.merge(events);
    return t;
  }

  /** Add events read from storage (what is in memory wins). */
  merge(events: EventRow[]): void {
    this.loaded = true;
    for (const e of events) if (!this.events.has(e.offset)) this.events.set(e.offset, e);
    this.advance();
  }

  /** A gap fill is on its way. */
  get filling(): boolean {
    return this.fillFrom !== null;
  }

  /** A fill asked for less than `FILL_STALE_MS` ago: its answer is awaited, not asked for again. */
  private awaiting(): boolean {
    return this.fillFrom !== null && Date.now() - this.fillAt < FILL_STALE_MS;
  }

  private askFill(from: number): number {
    this.fillFrom = from;
    this.fillAt = Date.now();
    this.fillLossy = false;
    return from;
  }

  /**
   * Messages from the desktop were lost (`ResyncNeeded`): the answer of the
   * fill on its way may be incomplete, so its end asks again even when it
   * brought nothing new.
   */
  lost(): void {
    if (this.fillFrom !== null) this.fillLossy = true;
  }

  /** Events in offset order. */
  sorted(): EventRow[] {
    return [...this.events.values()].sort((a, b) => a.offset - b.offset);
  }

  /** Whether the desktop holds events older than what is shown. */
  hasOlder(): boolean {
    return this.row.lo > this.row.earliest;
  }

  private advance(): void {
    const row = this.row;
    while (this.events.has(row.next)) row.next++;
    while (row.lo > row.earliest && this.events.has(row.lo - 1)) row.lo--;
    row.known = Math.max(row.known, row.next);
  }

  /** An event arrived (live, replayed or from an older page). */
  observe(e: EventRow): Observed {
    const row = this.row;
    if (e.offset < row.earliest) return { fresh: false, fill: null };
    // [lo, next) is held (in memory, or in storage not loaded yet).
    const held = this.events.has(e.offset) || (e.offset >= row.lo && e.offset < row.next);
    if (!held) {
      if (this.events.size === 0 && e.offset > row.next && row.next === row.lo) {
        // First sight of a task already under way: hold its newest page.
        row.lo = row.next = Math.max(row.earliest, row.next, e.offset - PAGE);
      }
      this.events.set(e.offset, e);
      this.absorb(e);
    }
    row.known = Math.max(row.known, e.offset + 1);
    this.advance();
    let fill: number | null = null;
    if (row.next < row.known && !this.awaiting() && e.offset > row.next) fill = this.askFill(row.next);
    return { fresh: !held, fill };
  }

  /** A history reply ended at `nextOffset`. Returns where to ask again. */
  historyEnd(nextOffset: number, more: boolean): number | null {
    const row = this.row;
    if (this.older && nextOffset >= this.older.from && nextOffset <= this.older.to) {
      // The older page: it ends where the held range started.
      this.older = null;
      return null;
    }
    row.known = Math.max(row.known, more ? nextOffset + 1 : nextOffset);
    const from = this.fillFrom;
    const lossy = this.fillLossy;
    this.fillFrom = null;
    this.fillLossy = false;
    if (row.next >= row.known) return null;
    // No progress since the last ask: stop rather than loop; the next live
    // event (or opening the thread) asks again. Unless messages were lost
    // meanwhile: then the answer itself may be what was lost.
    if (from !== null && row.next <= from && !lossy) return null;
    return this.askFill(row.next);
  }

  /** The desktop keeps nothing before `earliest`. */
  unavailable(earliest: number): void {
    const row = this.row;
    row.earliest = Math.max(row.earliest, earliest);
    if (row.next < row.earliest) row.next = row.earliest;
    if (row.lo < row.earliest) row.lo = row.earliest;
    this.advance();
  }

  /** Where the page before the held range starts; null if nothing older. */
  olderFrom(): number | null {
    if (!this.hasOlder() || this.older) return null;
    const from = Math.max(this.row.earliest, this.row.lo - PAGE);
    this.older = { from, to: this.row.lo };
    return from;
  }

  /** Forget that a fill or page was asked for (its answer was lost). */
  forgetRequests(): void {
    this.fillFrom = null;
    this.fillLossy = false;
    this.older = null;
  }

  /** What the desktop's task list says. */
  summary(s: { title: string; executor: string; project?: string; state: string; status?: string; next_offset: number; updated_ms: number }): void {
    const row = this.row;
    if (!row.title) row.title = s.title;
    row.executor = s.executor || row.executor;
    if (s.project) row.project = s.project;
    // The desktop knows at least as much as we do: its state wins (a
    // finished task resumed by a follow-up runs again).
    if (s.next_offset >= row.next) {
      row.state = s.state === 'finished' ? 'finished' : s.state === 'running' ? 'running' : 'queued';
      row.status = s.state === 'finished' ? s.status : undefined;
    }
    row.updatedMs = Math.max(row.updatedMs, s.updated_ms);
    if (this.events.size === 0 && row.next < s.next_offset && row.lo === row.next) {
      row.lo = row.next = s.next_offset;
    }
    row.known = Math.max(row.known, s.next_offset);
  }

  /** The tail is behind what the desktop has: where to fetch from. */
  behind(): number | null {
    if (this.awaiting() || this.row.next >= this.row.known) return null;
    return this.askFill(this.row.next);
  }

  /** Approvals waiting for a decision. */
  pending(now: number): PendingApproval[] {
    const resolved = new Set<string>();
    for (const e of this.events.values()) {
      if (e.event.type === 'approval_resolved') resolved.add(String(e.event.approval_id));
    }
    const finishedAt = this.row.finishedAt ?? -1;
    const out: PendingApproval[] = [];
    for (const e of this.sorted()) {
      const ev = e.event;
      if (ev.type !== 'approval_request' || e.offset < finishedAt) continue;
      const id = String(ev.approval_id);
      const expires = Number(ev.expires_at_ms);
      if (resolved.has(id) || expires <= now) continue;
      out.push({
        desktopId: this.row.desktopId,
        taskId: this.row.taskId,
        approvalId: id,
        summary: String(ev.summary ?? ''),
        detail: String(ev.detail ?? ''),
        expiresAtMs: expires,
      });
    }
    return out;
  }

  /** Whether an approval request at `offset` was overtaken by a finish. */
  closedBy(offset: number): boolean {
    return this.row.finishedAt !== undefined && this.row.finishedAt > offset;
  }

  private absorb(e: EventRow): void {
    const row = this.row;
    const ev = e.event;
    row.updatedMs = Math.max(row.updatedMs, e.atMs);
    const last = row.last ?? -1;
    row.last = Math.max(last, e.offset);
    switch (ev.type) {
      case 'accepted':
        if (typeof ev.text === 'string' && !row.title) row.title = ev.text;
        if (typeof ev.executor === 'string') row.executor = ev.executor;
        if (typeof ev.project === 'string') row.project = ev.project;
        break;
      case 'finished':
        if (e.offset >= (row.finishedAt ?? -1)) {
          row.finishedAt = e.offset;
          if (e.offset >= last) {
            row.state = 'finished';
            row.status = String(ev.status);
          }
        }
        break;
      default:
        // Anything after the last finish: the task runs (again).
        if (e.offset > last && (row.state !== 'finished' || e.offset > (row.finishedAt ?? -1))) {
          row.state = 'running';
          row.status = undefined;
        }
    }
  }
}
