// What the user is told about messages that are missing (PROTOCOL §13.4:
// "tell the application that messages from..=to are lost"): a gap the
// desktop can no longer fill (`ResyncNeeded`), records the relay has not
// accepted (refused, timed out, still retried) and what the relay itself
// reports. A lost range is kept in the desktop's row, so it is saved in the
// same transaction as the link that consumed it (before the relay hears
// the Ack) and still shown after a reload until dismissed. Sans DOM.
import type { Desktop } from './desktop.ts';
import type { Refusal } from './sender.ts';

/** Lost ranges kept per desktop (the oldest merge into the next). */
export const MAX_LOST = 16;
/** Task titles named per lost range. */
const MAX_TASKS_NAMED = 8;

/** Messages from the desktop that can never arrive (its outbox no longer holds them). */
export interface LostRange {
  /** First and last lost sequence number (inclusive), as the link reported them. */
  from: number;
  to: number;
  /** When it was noticed (ms since the epoch). */
  atMs: number;
  /** Titles of the tasks whose missing events were asked for again. */
  tasks: string[];
}

/** What one notice says, for the screens. */
export interface NoticeView {
  kind: 'lost' | 'refused' | 'given-up' | 'relay';
  text: string;
  /** Offer "ask the desktop again" (its task list and the history of every task behind it). */
  recover: boolean;
  /** When the user last asked again (ms since the epoch), if they did. */
  askedMs?: number;
}

/** How many messages a range holds. */
export function lostCount(r: LostRange): number {
  return r.to - r.from + 1;
}

/** Add a lost range to `list` (a copy): adjacent or overlapping ranges merge; at most `MAX_LOST` kept. */
export function addLost(list: readonly LostRange[] | undefined, from: bigint, to: bigint, atMs: number): LostRange[] {
  const out = readableLost(list);
  const f = Number(from);
  const t = Number(to);
  const last = out.at(-1);
  if (last && f <= last.to + 1 && t >= last.from - 1) {
    last.from = Math.min(last.from, f);
    last.to = Math.max(last.to, t);
    last.atMs = atMs;
  } else {
    out.push({ from: f, to: t, atMs, tasks: [] });
  }
  while (out.length > MAX_LOST) {
    const [a, b] = out.splice(0, 2) as [LostRange, LostRange];
    out.unshift({ from: a.from, to: b.to, atMs: b.atMs, tasks: [...a.tasks, ...b.tasks].slice(0, MAX_TASKS_NAMED) });
  }
  return out;
}

/** Name a task whose events are fetched again in the newest lost range (a copy of `list`). */
export function nameTask(list: readonly LostRange[], title: string): LostRange[] {
  const out = readableLost(list);
  const last = out.at(-1);
  if (last && !last.tasks.includes(title) && last.tasks.length < MAX_TASKS_NAMED) last.tasks.push(title);
  return out;
}

const plural = (n: number, one: string, many: string): string => `${n} ${n === 1 ? one : many}`;

/** The ranges of a stored row that read as ranges (a damaged row shows what is readable, never throws). */
export function readableLost(v: unknown): LostRange[] {
  if (!Array.isArray(v)) return [];
  return v.filter(
    (r): r is LostRange =>
      typeof r === 'object' && r !== null && Number.isSafeInteger(r.from) && Number.isSafeInteger(r.to) && r.from >= 1 && r.to >= r.from,
  ).map((r) => ({ from: r.from, to: r.to, atMs: Number(r.atMs) || 0, tasks: Array.isArray(r.tasks) ? r.tasks.filter((t: unknown) => typeof t === 'string') : [] }));
}

/** The notice for lost messages from `desktop`. */
export function lostNotice(desktop: string, stored: readonly LostRange[]): NoticeView {
  const ranges = readableLost(stored);
  const n = ranges.reduce((s, r) => s + lostCount(r), 0);
  const tasks = [...new Set(ranges.flatMap((r) => r.tasks))];
  const fetched = tasks.length
    ? ` The history of ${plural(tasks.length, 'task was', 'tasks were')} asked for again: ${tasks.map((t) => `“${t}”`).join(', ')}.`
    : ' Task events can be fetched again from the computer’s history.';
  return {
    kind: 'lost',
    text: `${plural(n, 'message', 'messages')} from ${desktop} never arrived: the computer no longer had ${n === 1 ? 'it' : 'them'} to send (it kept too many while this device was away). Anything else it sent (a refusal, the task list) may be missing too.${fetched}`,
    recover: true,
  };
}

/** The notice for records the relay has not accepted yet. */
export function refusedNotice(desktop: string, r: Refusal, nowMs: number): NoticeView {
  const secs = r.retryAt === null ? 0 : Math.ceil((r.retryAt - nowMs) / 1000);
  const when = r.retryAt === null ? 'when the relay is reachable again' : secs > 0 ? `in ${secs} s` : 'now';
  const why = r.code === 'offline' || r.code === 'timeout' ? r.message : `${r.message} (${r.code})`;
  return {
    kind: 'refused',
    text: `The relay has not accepted ${plural(r.waiting, 'message', 'messages')} to ${desktop} yet: ${why}. Tandem tries again ${when}; nothing is lost.`,
    recover: false,
  };
}

/** The notice for records the relay can never accept. */
export function givenUpNotice(desktop: string, n: number): NoticeView {
  return {
    kind: 'given-up',
    text: `The relay refused ${plural(n, 'message', 'messages')} to ${desktop} for good (too large). Send the request again, shorter.`,
    recover: false,
  };
}

/** The notice for something the relay reported on its own (an `Error` that answers no request). */
export function relayNotice(code: string, message: string): NoticeView {
  return { kind: 'relay', text: `The relay reports: ${message || code.replace(/_/g, ' ')} (${code}).`, recover: false };
}

/** A notice with the desktop it is about (null: about the relay). */
export type Notice = NoticeView & { desktopId: string | null };

/** Every notice about `desktops` and the relays they are reached through (`relays`: by origin). */
export function collectNotices(desktops: readonly Desktop[], relays: ReadonlyMap<string, NoticeView>, nowMs: number): Notice[] {
  const out: Notice[] = [];
  const origins = new Set<string>();
  for (const d of desktops) {
    origins.add(d.relay.origin);
    const name = d.row.name;
    if (readableLost(d.row.lost).length) out.push({ ...lostNotice(name, d.row.lost ?? []), askedMs: d.askedAgainMs ?? undefined, desktopId: d.id });
    if (d.sender.refusal) out.push({ ...refusedNotice(name, d.sender.refusal, nowMs), desktopId: d.id });
    if (d.sender.givenUp) out.push({ ...givenUpNotice(name, d.sender.givenUp), desktopId: d.id });
  }
  for (const o of origins) {
    const n = relays.get(o);
    if (n) out.push({ ...n, desktopId: null });
  }
  return out;
}
