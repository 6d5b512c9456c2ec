// One task's events as this client holds them, and the offset rule of
// PROTOCOL §15.5 adapted to a thread that loads its newest page first:
// events are keyed by offset (a repeat is dropped), [lo, next) is held
// without holes, a gap past `next` is filled from history once, and older
// pages before `lo` are fetched when the user scrolls back. Sans I/O.
import type { EventRow, TaskRow } from './store.ts';

/** Events per history page (the desktop's page size). */
export const PAGE = 256;

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
  /** A gap fill is on its way. */
  filling = false;
  /** An older page is on its way. */
  olderPending = false;
  /** Refusals of this task's requests, newest last (not persisted). */
  readonly refusals: Array<{ code: string; message: string }> = [];
  /** Approvals answered from this client and not resolved yet. */
  readonly answered = new Map<string, boolean>();

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
    for (const e of events) t.events.set(e.offset, e);
    return t;
  }

  /** Events in offset order. */
  sorted(): EventRow[] {
    return [...this.events.values()].sort((a, b) => a.offset - b.offset);
  }

  /** Whether the desktop holds events older than what is shown. */
  hasOlder(): boolean {
    return this.row.lo > this.row.earliest;
  }

  /** An event arrived (live, replayed or from an older page). */
  observe(e: EventRow): Observed {
    const row = this.row;
    // [lo, next) is held (in memory, or in storage not loaded yet).
    const held = e.offset >= row.lo && e.offset < row.next;
    if (held || this.events.has(e.offset) || e.offset < row.earliest) return { fresh: false, fill: null };
    if (this.events.size === 0 && e.offset > row.next && row.next === row.lo) {
      // First sight of a task already under way: hold its newest page.
      row.lo = row.next = Math.max(row.earliest, row.next, e.offset - PAGE);
    }
    this.events.set(e.offset, e);
    this.absorb(e);
    let fill: number | null = null;
    if (e.offset === row.next) {
      while (this.events.has(row.next)) row.next++;
    } else if (e.offset > row.next && !this.filling) {
      this.filling = true;
      fill = row.next;
    }
    while (row.lo > row.earliest && this.events.has(row.lo - 1)) row.lo--;
    row.known = Math.max(row.known, row.next);
    return { fresh: true, fill };
  }

  /** A history reply ended at `nextOffset`. Returns where to ask again. */
  historyEnd(nextOffset: number, more: boolean): number | null {
    this.olderPending = false;
    const next = this.row.next;
    this.row.known = Math.max(this.row.known, nextOffset);
    if (next < nextOffset || (more && nextOffset >= next)) {
      this.filling = true;
      return next;
    }
    this.filling = false;
    return null;
  }

  /** The desktop keeps nothing before `earliest`. */
  unavailable(earliest: number): void {
    const row = this.row;
    row.earliest = Math.max(row.earliest, earliest);
    if (row.next < row.earliest) row.next = row.earliest;
    if (row.lo < row.earliest) row.lo = row.earliest;
    while (this.events.has(row.next)) row.next++;
    this.olderPending = false;
  }

  /** Where the page before the held range starts; null if nothing older. */
  olderFrom(): number | null {
    if (!this.hasOlder() || this.olderPending) return null;
    this.olderPending = true;
    return Math.max(this.row.earliest, this.row.lo - PAGE);
  }

  /** Forget that a fill or page was asked for (its answer was lost). */
  forgetRequests(): void {
    this.filling = false;
    this.olderPending = false;
  }

  /** What the desktop's task list says. Returns a fill offset if the tail is behind. */
  summary(s: { title: string; executor: string; state: string; status?: string; next_offset: number; updated_ms: number }): void {
    const row = this.row;
    if (!row.title) row.title = s.title;
    row.executor = s.executor || row.executor;
    if (row.state !== 'finished') row.state = s.state === 'finished' ? 'finished' : s.state === 'running' ? 'running' : 'queued';
    if (s.status) row.status = s.status;
    row.updatedMs = Math.max(row.updatedMs, s.updated_ms);
    row.known = Math.max(row.known, s.next_offset);
    if (this.events.size === 0 && row.next < s.next_offset && row.lo === row.next) {
      row.lo = row.next = s.next_offset;
    }
  }

  /** The tail is behind what the desktop has: where to fetch from. */
  behind(): number | null {
    if (this.filling || this.row.next >= this.row.known) return null;
    this.filling = true;
    return this.row.next;
  }

  /** Approvals waiting for a decision. */
  pending(now: number): PendingApproval[] {
    if (this.row.state === 'finished') return [];
    const resolved = new Set<string>();
    for (const e of this.events.values()) {
      if (e.event.type === 'approval_resolved') resolved.add(String(e.event.approval_id));
    }
    const out: PendingApproval[] = [];
    for (const e of this.sorted()) {
      const ev = e.event;
      if (ev.type !== 'approval_request') continue;
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

  private absorb(e: EventRow): void {
    const row = this.row;
    const ev = e.event;
    row.updatedMs = Math.max(row.updatedMs, e.atMs);
    switch (ev.type) {
      case 'accepted':
        if (typeof ev.text === 'string' && !row.title) row.title = ev.text;
        if (typeof ev.executor === 'string') row.executor = ev.executor;
        break;
      case 'finished':
        row.state = 'finished';
        row.status = String(ev.status);
        break;
      default:
        if (row.state === 'queued' && e.offset >= row.next) row.state = 'running';
    }
  }
}
