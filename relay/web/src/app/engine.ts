// The phone engine in the browser, as tandem-phone does it: the device key,
// paired desktops, one relay connection per relay, pairing, the task
// messages both ways, and the renewal and rekey schedule of every link
// (PROTOCOL §10.6). A desktop's Link, task rows and new events are saved in
// one store transaction before anything sealed under the Link leaves and
// before the delivery that changed it is acknowledged. The store is
// IndexedDB on a secure context and this page's memory otherwise
// (store.ts): then the engine is `ephemeral` and pairs as such.
import {
  DeviceId,
  DeviceKey,
  Link,
  type LinkEvent,
  type Message,
  type PushSetup,
  RecordError,
  type Schedule,
  bytesToHex,
  decodeMessage,
  defaultSchedule,
  encodeMessage,
  hexToBytes,
  osEntropy,
  upkeepMustPersist,
} from '../proto/index.ts';
import { applyMessage } from './apply.ts';
import { Desktop } from './desktop.ts';
import { type Notice, type NoticeView, addLost, collectNotices, nameTask, relayNotice } from './notices.ts';
import { type PairingFlow, startPairing } from './pairing.ts';
import { type ConnState, RelayClient } from './relay.ts';
import { type DesktopRow, type EventRow, NotOwner, type Store, type TaskRow, openStore } from './store.ts';
import { FILL_STALE_MS, type PendingApproval, Thread } from './thread.ts';

export { Desktop } from './desktop.ts';
export { PairError, type PairFailure, type PairingFlow } from './pairing.ts';

/** Tasks kept per desktop in the browser. */
const KEEP_TASKS = 200;
/** How often the renewal and rekey schedule runs for every paired desktop (also on each desktop's Presence). */
const UPKEEP_EVERY_MS = 5_000;
/**
 * Messages the relay accepted but the desktop has not acknowledged this long
 * while both are online are sealed and sent again (`resend(0)`): the relay
 * may have dropped them (its queue's TTL) without a change of store.
 */
const STALE_OUTBOX_MS = 120_000;

/** What changed, so the screens know what to redraw. */
export interface Change {
  desktopId?: string;
  taskId?: string;
  connection?: boolean;
}

function randomHex(n: number): string {
  return bytesToHex(crypto.getRandomValues(new Uint8Array(n)));
}

export class Engine {
  readonly desktops = new Map<string, Desktop>();
  readonly relays = new Map<string, RelayClient>();
  readonly relayState = new Map<string, ConnState>();
  private readonly listeners = new Set<(c: Change) => void>();
  private readonly pairings = new Map<string, (peer: DeviceId, payload: Uint8Array) => void>();
  private readonly reconnectWatchers = new Map<string, Set<() => void>>();
  /** What each relay reported on its own (an `Error` answering no request), by origin. */
  private readonly relayNotices = new Map<string, NoticeView>();
  /** Relays whose task lists were asked for since the page loaded. */
  private readonly listed = new Set<string>();
  /** Another tab took over: nothing is sealed, saved or sent any more. */
  inert = false;
  /**
   * The keys live in this page's memory only (an origin that is not a secure context): pairing
   * says so to the desktop (`DeviceInfo.ephemeral`), and a reload means pairing again.
   */
  readonly ephemeral: boolean;
  /** The renewal and rekey schedule of every link (§10.6). */
  readonly schedule: Schedule = defaultSchedule();
  private readonly channel: BroadcastChannel | null;
  /** Told when a desktop is paired, forgotten, or its link renews its session (push.ts rotates its key then). */
  readonly linkWatchers = new Set<(what: 'adopted' | 'forgotten' | 'renewed', d: Desktop) => void>();

  private constructor(
    readonly store: Store,
    readonly key: DeviceKey,
  ) {
    this.ephemeral = !store.persistent;
    // The newest tab owns the stored state; older ones step aside. A page
    // that keeps its keys in memory shares nothing with other tabs.
    this.channel = store.persistent && typeof BroadcastChannel !== 'undefined' ? new BroadcastChannel('tandem') : null;
    this.channel?.addEventListener('message', (m) => {
      if (m.data === 'claimed') this.stepAside();
    });
    setInterval(() => {
      for (const d of this.desktops.values()) void this.upkeep(d);
    }, UPKEEP_EVERY_MS);
  }

  static async open(): Promise<Engine> {
    const store = await openStore();
    await store.claim();
    const secret = await store.getOrPut('device-key', () => bytesToHex(DeviceKey.generate().toBytes()));
    const engine = new Engine(store, new DeviceKey(hexToBytes(secret)));
    engine.channel?.postMessage('claimed');
    for (const row of await store.desktops()) {
      let link: Link;
      try {
        link = Link.fromStored(row.link);
      } catch (e) {
        console.error(`the stored state of ${row.name} is damaged; pair it again`, e);
        continue;
      }
      const d = new Desktop(row, link, engine.relay(row.relayUrl), () => engine.emit({ desktopId: row.id }));
      for (const t of await store.tasks(row.id)) {
        const th = new Thread(t);
        // Unfinished tasks may wait for an approval: their events are needed now.
        if (t.state !== 'finished') th.merge(await store.events(row.id, t.taskId));
        d.threads.set(t.taskId, th);
      }
      engine.desktops.set(row.id, d);
    }
    return engine;
  }

  /** Another tab took over: stop, so the two never seal under one link. */
  stepAside(): void {
    if (this.inert) return;
    this.inert = true;
    for (const r of this.relays.values()) r.stop();
    for (const d of this.desktops.values()) d.sender.stop();
    this.emit({ connection: true });
  }

  get deviceId(): string {
    return this.key.public().deviceId().toString();
  }

  subscribe(f: (c: Change) => void): () => void {
    this.listeners.add(f);
    return () => this.listeners.delete(f);
  }

  private emit(c: Change): void {
    for (const f of this.listeners) f(c);
  }

  private linkEvent(what: 'adopted' | 'forgotten' | 'renewed', d: Desktop): void {
    for (const f of this.linkWatchers) f(what, d);
  }

  /** The connection state for a desktop's relay (or any relay). */
  connection(desktopId?: string): ConnState | undefined {
    const d = desktopId ? this.desktops.get(desktopId) : undefined;
    if (d) return this.relayState.get(d.relay.origin);
    return this.relayState.values().next().value;
  }

  /** The relay connection for `origin`, started if there is none. */
  relay(origin: string): RelayClient {
    let r = this.relays.get(origin);
    if (r) {
      // Stopped by a wrong relay name or a revoke: a new attempt (pairing) tries again.
      if (r.halted && !this.inert) r.start();
      return r;
    }
    r = new RelayClient(origin, this.key, {
      state: (s) => {
        this.relayState.set(origin, s);
        if (s.kind !== 'online') for (const d of this.onRelay(origin)) d.online = false;
        this.emit({ connection: true });
      },
      connected: (storeChanged) => {
        const first = !this.listed.has(origin);
        this.listed.add(origin);
        // A pairing under way claims its mailbox again (the relay may have restarted).
        if (!first) for (const f of [...(this.reconnectWatchers.get(origin) ?? [])]) f();
        this.relayNotices.delete(origin);
        for (const d of this.onRelay(origin)) {
          // The same relay store: what it accepted is still queued, so only
          // what it did not accept goes again. A new store (or the page's
          // first connection): every unacknowledged message, sealed again.
          if (storeChanged) void this.resend(d).then(() => this.catchUp(d, first));
          else {
            d.sender.retry();
            void this.catchUp(d, first);
          }
        }
      },
      notice: (code, message) => {
        this.relayNotices.set(origin, relayNotice(code, message));
        this.emit({ connection: true });
      },
      deliver: (batch) => this.deliver(batch),
      presence: (peer, online) => {
        const d = this.desktops.get(peer.toString());
        if (!d) return;
        d.online = online;
        if (online) {
          // What the relay did not accept goes again (what it accepted is
          // in the desktop's queue: no copies). A desktop that never
          // answered a task list in this page (it was offline, or pairing)
          // is asked again now that it is here; a renewal that came due
          // while it was away starts now.
          d.sender.retry();
          d.acked = { seq: d.link.outbound().acked(), sinceMs: Date.now() };
          void (d.listed ? Promise.resolve() : this.refreshTasks(d.id).catch(() => undefined)).then(() => this.upkeep(d));
        }
        this.emit({ desktopId: d.id });
      },
      pairMessage: (pid, peer, payload) => this.pairings.get(bytesToHex(pid))?.(peer, payload),
    });
    this.relays.set(origin, r);
    r.start();
    return r;
  }

  /**
   * After a (re)connection: gap fills whose answers were lost are asked for
   * again; the task list only on the page's first connection, because any
   * message re-attaches a phone the desktop detached for being idle.
   */
  private async catchUp(d: Desktop, first: boolean): Promise<void> {
    const asks: Message[] = first ? [{ kind: 'history_request', from_offset: 0 }] : [];
    for (const t of d.threads.values()) {
      t.forgetRequests();
      if (t.row.state === 'finished' && !t.loaded) continue;
      const from = t.behind();
      if (from !== null) asks.push({ kind: 'history_request', task_id: t.row.taskId, from_offset: from });
    }
    if (asks.length) await this.send(d, asks).catch(() => undefined);
  }

  private onRelay(origin: string): Desktop[] {
    return [...this.desktops.values()].filter((d) => d.relay.origin === origin);
  }

  // ---- pairing ----------------------------------------------------------

  /**
   * Pair from a link (the page's URL with its #fragment, or a pasted one).
   * `fallbackRelay` is the `?relay=` a redirecting relay added.
   */
  startPairing(link: string, fallbackRelay?: string): Promise<PairingFlow> {
    return startPairing(this, link, fallbackRelay);
  }

  /** Call `f` each time the connection to `origin` comes back (not its first time), until the returned function is called. */
  onReconnect(origin: string, f: () => void): () => void {
    let set = this.reconnectWatchers.get(origin);
    if (!set) this.reconnectWatchers.set(origin, (set = new Set()));
    set.add(f);
    return () => {
      set.delete(f);
    };
  }

  /** Hand pairing messages for mailbox `pid` (hex) to `f` until the returned function is called. */
  onPairMessages(pid: string, f: (peer: DeviceId, payload: Uint8Array) => void): () => void {
    this.pairings.set(pid, f);
    return () => {
      if (this.pairings.get(pid) === f) this.pairings.delete(pid);
    };
  }

  /** A desktop just paired: store it (replacing any older pairing with it), connect it, list its tasks. */
  async adopt(row: DesktopRow, link: Link, relay: RelayClient): Promise<Desktop> {
    row.link = link.toStored();
    await this.store.forget(row.id);
    await this.store.save(row);
    const d = new Desktop(row, link, relay, () => this.emit({ desktopId: row.id }));
    d.online = true;
    this.desktops.set(row.id, d);
    this.emit({ desktopId: row.id });
    void this.refreshTasks(row.id).catch(() => undefined);
    this.linkEvent('adopted', d);
    return d;
  }

  // ---- requests to a desktop --------------------------------------------

  private desktop(id: string): Desktop {
    const d = this.desktops.get(id);
    if (!d) throw new Error(`no paired desktop ${id}`);
    return d;
  }

  /** Seal, save, send. The record stays in the outbox until acknowledged. */
  private async send(d: Desktop, messages: Message[], tasks: TaskRow[] = []): Promise<void> {
    const records = await d.serial(async () => {
      if (this.inert) throw new NotOwner();
      const out: Uint8Array[] = [];
      try {
        for (const m of messages) out.push(d.link.send(encodeMessage(m)).record);
        await this.save(d, tasks);
      } catch (e) {
        // Not saved means not sent: back to what storage holds, so the
        // outbox does not carry it out later behind the user's back.
        await this.failed(d, e);
        throw e;
      }
      return out;
    });
    d.detached = false;
    d.sender.push(records);
  }

  private async save(d: Desktop, tasks: TaskRow[] = [], events: EventRow[] = []): Promise<void> {
    if (this.inert) throw new NotOwner();
    d.row.link = d.link.toStored();
    await this.store.save(d.row, tasks, events);
    d.link.markPersisted();
  }

  /**
   * The renewal and rekey schedule (§10.6) for one desktop: a new session
   * when the current one is an hour old (or carried many records) and the
   * desktop is online, the sending key ratcheted hourly, an unanswered
   * renewal given up after 30 s. What changed is saved (strictly) before
   * the renewal's SessionInit leaves (§13.5 rule 4); the answer and the
   * key confirmation go through `deliver`, saved before they are sent too.
   */
  async upkeep(d: Desktop): Promise<void> {
    const renewal = await d.serial(async () => {
      if (this.inert || this.desktops.get(d.id) !== d) return null;
      try {
        const done = d.link.upkeep(this.key, Date.now(), d.online && d.relay.online, this.schedule, osEntropy);
        if (upkeepMustPersist(done)) await this.save(d);
        return done.renewal;
      } catch (e) {
        await this.failed(d, e);
        return null;
      }
    });
    if (renewal) d.sender.push([renewal]);
    else this.staleOutbox(d);
  }

  /** Accepted by the relay, unacknowledged by an online desktop for long: sealed and sent again. */
  private staleOutbox(d: Desktop): void {
    const now = Date.now();
    const seq = d.link.outbound().acked();
    if (seq !== d.acked.seq || d.link.outbound().isEmpty() || !d.online || !d.relay.online || d.sender.pending > 0) {
      d.acked = { seq, sinceMs: now };
    } else if (now - d.acked.sinceMs >= STALE_OUTBOX_MS) {
      d.acked = { seq, sinceMs: now };
      void this.resend(d);
    }
  }

  /** Whatever the desktop has not acknowledged goes out again. */
  private async resend(d: Desktop): Promise<void> {
    const records = await d.serial(async () => {
      if (this.inert) return [];
      try {
        const r = d.link.resend(0n);
        if (r.length) await this.save(d);
        return r;
      } catch (e) {
        await this.failed(d, e);
        return [];
      }
    });
    d.sender.retry();
    d.sender.push(records);
  }

  /**
   * Submit a task; returns its id. `pick` names an executor and a project
   * among the desktop's `choices` (absent: its defaults), and `resume` a
   * session of theirs (from `listSessions`) the text continues.
   */
  async submit(desktopId: string, text: string, pick: { executor?: string; project?: string; resume?: string } = {}): Promise<string> {
    const d = this.desktop(desktopId);
    const taskId = randomHex(16);
    const t = d.thread(taskId);
    t.row.title = text;
    const m = { kind: 'task_submit', task_id: taskId, text, workspace: pick.project, executor: pick.executor, resume: pick.resume };
    await this.send(d, [m], [t.row]);
    this.emit({ desktopId, taskId });
    return taskId;
  }

  async followUp(desktopId: string, taskId: string, text: string): Promise<void> {
    await this.send(this.desktop(desktopId), [{ kind: 'follow_up', task_id: taskId, text }]);
  }

  async cancel(desktopId: string, taskId: string): Promise<void> {
    await this.send(this.desktop(desktopId), [{ kind: 'cancel', task_id: taskId }]);
  }

  /**
   * Answer an approval. `remember` (with `allow`): also allow this tool use
   * from now on in the task's project (the desktop adds the rule if this
   * device's scope lets it, else allows once and refuses the rule).
   */
  async decide(desktopId: string, taskId: string, approvalId: string, allow: boolean, remember = false): Promise<void> {
    const d = this.desktop(desktopId);
    const t = d.thread(taskId);
    t.answered.set(approvalId, allow);
    if (allow && remember) t.remembered.add(approvalId);
    this.emit({ desktopId, taskId });
    await this.send(d, [{ kind: 'approval_decision', task_id: taskId, approval_id: approvalId, allow, remember: allow && remember }]);
  }

  /**
   * Ask the desktop which sessions `pick`'s executor can continue in its
   * project (`sessions_request`). The answer (`sessions`, or a refusal such
   * as `not_supported`) lands in `Desktop.sessions`; screens redraw on it.
   */
  async listSessions(desktopId: string, pick: { executor?: string; project?: string } = {}): Promise<void> {
    const d = this.desktop(desktopId);
    d.sessions = { asked: { executor: pick.executor, workspace: pick.project }, atMs: Date.now() };
    this.emit({ desktopId });
    await this.send(d, [{ kind: 'sessions_request', executor: pick.executor, workspace: pick.project }]);
  }

  /** Give the desktop this phone's push key, or tell it to forget it (`push_setup`, push.ts). */
  async sendPushSetup(desktopId: string, setup: PushSetup): Promise<void> {
    await this.send(this.desktop(desktopId), [{ kind: 'push_setup', ...setup }]);
  }

  /** Ask for the desktop's task list (also re-attaches a detached client). */
  async refreshTasks(desktopId: string): Promise<void> {
    await this.send(this.desktop(desktopId), [{ kind: 'history_request', from_offset: 0 }]);
  }

  /** Load a thread's events from storage and fetch what is missing. */
  async openThread(desktopId: string, taskId: string): Promise<Thread> {
    const d = this.desktop(desktopId);
    const t = d.thread(taskId);
    if (!t.loaded) t.merge(await this.store.events(desktopId, taskId));
    const asks: Message[] = [];
    const from = t.behind();
    if (from !== null) asks.push({ kind: 'history_request', task_id: taskId, from_offset: from });
    if (t.events.size === 0 && t.hasOlder()) {
      const older = t.olderFrom();
      if (older !== null) asks.push({ kind: 'history_request', task_id: taskId, from_offset: older });
    }
    if (asks.length) await this.send(d, asks);
    return t;
  }

  /** Fetch the page before what a thread holds. */
  async loadOlder(desktopId: string, taskId: string): Promise<void> {
    const d = this.desktop(desktopId);
    const from = d.thread(taskId).olderFrom();
    if (from !== null) await this.send(d, [{ kind: 'history_request', task_id: taskId, from_offset: from }]);
  }

  /** Re-attach after idle detach: the task list, and any gaps. */
  async reattach(desktopId: string): Promise<void> {
    const d = this.desktop(desktopId);
    d.detached = false;
    this.emit({ desktopId });
    await this.refreshTasks(desktopId);
  }

  /**
   * After lost messages: the task list (its answer names every task behind,
   * `applyMessage`) and the history of every task known to be behind.
   * `again` (the user asked): even what is already on its way. Otherwise a
   * list or fill on its way is not asked for twice: a desktop that keeps
   * dropping messages would report a loss per record, and answering each
   * with the whole history again drops more (the fill never caught up).
   */
  private recoveryAsks(d: Desktop, again: boolean): Message[] {
    const listed = !again && d.recovering && Date.now() - d.recoveringSince < FILL_STALE_MS;
    d.recovering = true;
    if (!listed) d.recoveringSince = Date.now();
    const asks: Message[] = listed ? [] : [{ kind: 'history_request', from_offset: 0 }];
    for (const t of d.threads.values()) {
      if (again) t.forgetRequests();
      const from = t.behind();
      if (from !== null) asks.push({ kind: 'history_request', task_id: t.row.taskId, from_offset: from });
      // Known to be behind (asked now or on its way): named at once, not
      // only when the task list comes (its answer may be lost too).
      if (t.row.next < t.row.known) d.row.lost = nameTask(d.row.lost ?? [], t.row.title || t.row.taskId);
    }
    return asks;
  }

  /** Ask the desktop again for what lost messages may have carried (the notice's button). */
  async recover(desktopId: string): Promise<void> {
    const d = this.desktop(desktopId);
    await this.send(d, this.recoveryAsks(d, true));
    d.askedAgainMs = Date.now();
    this.emit({ desktopId });
  }

  /** The user read the lost-messages notice: forget it (saved). */
  async dismissLost(desktopId: string): Promise<void> {
    const d = this.desktop(desktopId);
    await d.serial(async () => {
      d.row.lost = undefined;
      d.askedAgainMs = null;
      try {
        await this.save(d);
      } catch (e) {
        // Not saved: back to what storage holds (the notice with it).
        await this.failed(d, e);
      }
    });
    this.emit({ desktopId });
  }

  /** What the user is told about missing or waiting messages: of one desktop, or of all. */
  notices(desktopId?: string): Notice[] {
    const ds = desktopId ? [this.desktops.get(desktopId)].filter((d): d is Desktop => !!d) : [...this.desktops.values()];
    return collectNotices(ds, this.relayNotices, Date.now());
  }

  /** Every pending approval across desktops. */
  pendingApprovals(): PendingApproval[] {
    const out: PendingApproval[] = [];
    const t = Date.now();
    for (const d of this.desktops.values()) for (const th of d.threads.values()) out.push(...th.pending(t));
    return out;
  }

  /** Forget a desktop on this device. */
  async forget(desktopId: string): Promise<void> {
    const d = this.desktop(desktopId);
    this.desktops.delete(desktopId);
    d.sender.stop();
    // After whatever is under way for it, so nothing writes it back.
    await d.serial(() => this.store.forget(desktopId));
    // The relay stops carrying its messages to this device.
    await d.relay.revoke(d.deviceId).catch(() => undefined);
    this.linkEvent('forgotten', d);
    this.emit({ desktopId });
  }

  // ---- deliveries ---------------------------------------------------------

  /**
   * Records from the relay, in delivery order. Runs of records from one
   * desktop are opened, applied and saved in one transaction, then what
   * they call for is sent. Resolves with how many (from the front) are
   * saved and may be acknowledged; the rest will be delivered again.
   */
  private async deliver(batch: Array<{ from: DeviceId; payload: Uint8Array }>): Promise<number> {
    let done = 0;
    while (done < batch.length) {
      const first = batch[done]!;
      const id = first.from.toString();
      let end = done + 1;
      while (end < batch.length && batch[end]!.from.toString() === id) end++;
      const d = this.desktops.get(id);
      if (d && !(await this.deliverRun(d, batch.slice(done, end).map((b) => b.payload)))) return done;
      done = end;
    }
    return done;
  }

  /** Open, act on and save records from one desktop. False if not saved. */
  private deliverRun(d: Desktop, payloads: Uint8Array[]): Promise<boolean> {
    return d.serial(async () => {
      if (this.inert || this.desktops.get(d.id) !== d) return this.inert ? false : true;
      try {
        return await this.deliverLocked(d, payloads);
      } catch (e) {
        await this.failed(d, e);
        return false;
      }
    });
  }

  /** Inside `d.serial`: the work of `deliverRun`. Throws if not saved. */
  private async deliverLocked(d: Desktop, payloads: Uint8Array[]): Promise<boolean> {
    {
      const out: Uint8Array[] = [];
      const changedTasks = new Map<string, TaskRow>();
      const newEvents: EventRow[] = [];
      const requests: Message[] = [];
      let ackDue = false;
      let other = false;
      let renewed = false;
      let lost = false;
      for (const payload of payloads) {
        let events: LinkEvent[];
        try {
          events = d.link.receive(this.key, payload, osEntropy);
        } catch (e) {
          // Seen before (a redelivery): tell the desktop again what we have.
          if (isReplay(e)) ackDue = true;
          else console.warn('record refused', e);
          continue;
        }
        for (const ev of events) {
          switch (ev.type) {
            case 'Message': {
              let decoded;
              try {
                decoded = decodeMessage(ev.message);
              } catch (e) {
                console.warn('malformed message from the desktop', e);
                break;
              }
              if (!decoded.known) break;
              if (applyMessage(d, decoded.message, changedTasks, newEvents, requests)) other = true;
              break;
            }
            case 'Send':
              out.push(...ev.envelopes);
              break;
            case 'AckDue':
              ackDue = true;
              break;
            case 'ResyncNeeded':
              // Saved with the link below, so the user is told even after
              // a reload; the task list shows which tasks to fetch again.
              d.row.lost = addLost(d.row.lost, ev.from, ev.to, Date.now());
              for (const t of d.threads.values()) t.lost();
              lost = true;
              break;
            case 'SessionRenewed':
              renewed = true;
              break;
          }
        }
      }
      if (lost) requests.push(...this.recoveryAsks(d, false));
      for (const m of requests) out.push(d.link.send(encodeMessage(m)).record);
      // One acknowledgement covers the whole run; a request carries it too.
      // Never answer an ack alone with an ack (the two sides would ping-pong).
      const ack = ackDue && requests.length === 0 ? [d.link.ack()] : [];
      await this.save(d, [...changedTasks.values()], newEvents);
      d.sender.push(out);
      d.sender.push(ack, true);
      for (const taskId of changedTasks.keys()) this.emit({ desktopId: d.id, taskId });
      if (other || changedTasks.size === 0) this.emit({ desktopId: d.id });
      if (changedTasks.size > 0 && d.threads.size > KEEP_TASKS) await this.prune(d);
      // A new session: its schedule starts now, not at the next tick.
      if (renewed) {
        void this.upkeep(d);
        this.linkEvent('renewed', d);
      }
      return true;
    }
  }

  /** A save failed: another tab took over, or storage failed (then reload). */
  private async failed(d: Desktop, e: unknown): Promise<void> {
    if (e instanceof NotOwner) {
      this.stepAside();
      return;
    }
    console.error('cannot save; back to what storage holds', e);
    await this.reload(d).catch(() => undefined);
  }

  /** After a failed save: back to what storage holds. */
  private async reload(d: Desktop): Promise<void> {
    const rows = await this.store.desktops();
    const row = rows.find((r) => r.id === d.id);
    if (!row) return;
    d.row = row;
    d.link = Link.fromStored(row.link);
    const stored = new Map((await this.store.tasks(d.id)).map((t) => [t.taskId, t]));
    for (const [id, t] of d.threads) {
      const saved = stored.get(id);
      if (!saved) {
        d.threads.delete(id);
        continue;
      }
      // Same objects (a screen may hold them), state as stored.
      t.row = saved;
      t.events.clear();
      t.forgetRequests();
      t.merge(await this.store.events(d.id, id));
    }
    for (const [id, row] of stored) if (!d.threads.has(id)) d.threads.set(id, new Thread(row));
  }

  private async prune(d: Desktop): Promise<void> {
    await this.store.prune(d.id, KEEP_TASKS);
    const keep = new Set((await this.store.tasks(d.id)).map((t) => t.taskId));
    for (const id of [...d.threads.keys()]) if (!keep.has(id)) d.threads.delete(id);
  }
}

/** A record seen before (a redelivery after a lost ack). */
function isReplay(e: unknown): boolean {
  const inner = e instanceof RecordError ? e : (e as { cause?: unknown } | null)?.cause;
  return inner instanceof RecordError && (inner.kind === 'Duplicate' || inner.kind === 'TooOld');
}
