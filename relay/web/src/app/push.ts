// Push notifications in the page (docs/PUSH.md "Web client"): the service worker, the browser's
// push subscription (registered with the relay: `PushSubscribe`), and a push key per paired
// desktop (given to the desktop over the link: `push_setup`; kept in IndexedDB for the service
// worker, pushkeys.ts). A new key each time a desktop's session renews; the newest three kept.
//
// Offered only where it can work and keep its promise: a secure context whose keys last
// (store.ts `lastingOrigin`: not `tandem up`'s plain-http page), a browser with service workers
// and the Push API, and a relay that answers `GET /v1/push`.
import { base64UrlDecode, bytesToHex } from '../proto/bytes.ts';
import { PUSH_KEY_ID_LEN, PUSH_KEY_LEN } from '../proto/push.ts';
import type { Desktop, Engine } from './engine.ts';
import { type PushSettings, deleteKeys, getSettings, listKeys, putKey, putSettings } from './pushkeys.ts';

/** Where notifications stand, for the control on the computers screen. */
export type PushState =
  | { kind: 'checking' }
  /** Not offered here; `why` says so in the UI. */
  | { kind: 'unavailable'; why: string }
  | { kind: 'off' }
  | { kind: 'on' }
  | { kind: 'working' }
  | { kind: 'failed'; message: string };

/** The service worker's address; its scope is the whole origin (the page is at `/p` and `/`). */
export const SW_URL = '/sw.js';

/** Why notifications are not offered on this page, or null when they may be. */
export function pushUnavailable(engine: Pick<Engine, 'ephemeral'>, g: Record<string, unknown> = globalThis as never): string | null {
  if (engine.ephemeral) {
    return (
      'Notifications need a page that keeps its keys. This one came over plain http on your network ' +
      '(tandem up) and forgets everything when it closes. Use a relay with HTTPS for notifications.'
    );
  }
  const nav = g.navigator as Record<string, unknown> | undefined;
  if (g.isSecureContext !== true || !nav || !('serviceWorker' in nav) || !('PushManager' in g) || !('Notification' in g)) {
    return 'This browser offers no web push notifications here. On an iPhone or iPad, add Tandem to the home screen first (iOS 16.4 or later).';
  }
  return null;
}

/** The relay's `GET /v1/push` answer: its VAPID public key (65 bytes, uncompressed P-256). */
export function parsePushInfo(json: unknown): Uint8Array | null {
  if (!json || typeof json !== 'object') return null;
  const o = json as { vapid_public_key?: unknown; kinds?: unknown };
  if (typeof o.vapid_public_key !== 'string') return null;
  if (Array.isArray(o.kinds) && !o.kinds.includes('webpush')) return null;
  const key = base64UrlDecode(o.vapid_public_key);
  return key && key.length === 65 && key[0] === 4 ? key : null;
}

function randomHex(n: number): string {
  return bytesToHex(crypto.getRandomValues(new Uint8Array(n)));
}

function sameBytes(a: ArrayBuffer | null | undefined, b: Uint8Array): boolean {
  if (!a || a.byteLength !== b.length) return false;
  const x = new Uint8Array(a);
  return x.every((v, i) => v === b[i]);
}

export class PushControl {
  state: PushState = { kind: 'checking' };
  private vapid: Uint8Array | null = null;
  /** The relay push goes through (one subscription per browser, one VAPID key). */
  private origin: string | null = null;
  private readonly listeners = new Set<() => void>();
  /** One change at a time (enable, disable, a key rotation). */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly engine: Engine) {
    engine.linkWatchers.add((what, d) => {
      void this.serial(() => this.onLink(what, d)).catch((e) => console.warn(`notifications: after ${what}`, e));
    });
  }

  subscribe(f: () => void): () => void {
    this.listeners.add(f);
    return () => this.listeners.delete(f);
  }

  private set(s: PushState): void {
    this.state = s;
    for (const f of this.listeners) f();
  }

  private serial<T>(f: () => Promise<T>): Promise<T> {
    const run = this.queue.then(f, f);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** The relay push goes through: the page's own when a desktop uses it, else the first desktop's. */
  private relayOrigin(): string {
    const origins = [...this.engine.desktops.values()].map((d) => d.relay.origin);
    return origins.includes(location.origin) ? location.origin : (origins[0] ?? location.origin);
  }

  /** The desktops whose pushes come through that relay. */
  private served(): Desktop[] {
    return [...this.engine.desktops.values()].filter((d) => d.relay.origin === this.origin);
  }

  /** Find out whether notifications can work here, and if they are on, check they still are. */
  async init(): Promise<void> {
    const why = pushUnavailable(this.engine);
    if (why) return this.set({ kind: 'unavailable', why });
    const origin = this.relayOrigin();
    let res: Response;
    try {
      res = await fetch(`${origin}/v1/push`, { cache: 'no-store' });
    } catch {
      return this.set({ kind: 'unavailable', why: 'Could not ask the relay whether it sends notifications. Reload the page to try again.' });
    }
    if (res.status === 404) return this.set({ kind: 'unavailable', why: 'This relay does not send notifications (it is older than them).' });
    const vapid = res.ok ? parsePushInfo(await res.json().catch(() => null)) : null;
    if (!vapid) return this.set({ kind: 'unavailable', why: `The relay's notification service answered unexpectedly (HTTP ${res.status}).` });
    this.vapid = vapid;
    this.origin = origin;
    this.engine.relays.get(origin)?.speaksPush();
    const settings = await getSettings();
    if (!settings.enabled) return this.set({ kind: 'off' });
    this.set({ kind: 'on' });
    await this.serial(() => this.refresh(settings)).catch((e) => console.warn('notifications: cannot renew the subscription', e));
  }

  /** On at load: the permission, the subscription and the relay's copy of it, a key per desktop. */
  private async refresh(settings: PushSettings): Promise<void> {
    if (Notification.permission !== 'granted') {
      // Revoked in the browser's settings: off here, and the desktops stop sealing for it.
      await this.turnOff();
      this.set({ kind: 'failed', message: 'Notifications were blocked in the browser; they are off.' });
      return;
    }
    const sub = await this.subscription();
    // The relay may have dropped it (the push service said it is gone) or be another one.
    await this.register(sub);
    if (sub.endpoint !== settings.endpoint || settings.relay !== this.origin) await putSettings({ enabled: true, relay: this.origin ?? undefined, endpoint: sub.endpoint });
    for (const d of this.served()) if ((await listKeys(d.id)).length === 0) await this.giveKey(d);
  }

  /** The toggle. */
  toggle(): Promise<void> {
    return this.state.kind === 'on' ? this.disable() : this.enable();
  }

  /** Ask for permission, subscribe, register with the relay, give every desktop a key. */
  enable(): Promise<void> {
    return this.serial(async () => {
      if (!this.vapid) return;
      this.set({ kind: 'working' });
      try {
        const p = Notification.permission === 'granted' ? 'granted' : await Notification.requestPermission();
        if (p !== 'granted') {
          this.set({ kind: 'failed', message: 'Notifications are blocked for this site: allow them in the browser’s site settings, then try again.' });
          return;
        }
        const sub = await this.subscription();
        await this.register(sub);
        await putSettings({ enabled: true, relay: this.origin ?? undefined, endpoint: sub.endpoint });
        for (const d of this.served()) await this.giveKey(d);
        this.set({ kind: 'on' });
      } catch (e) {
        console.warn('notifications: cannot turn on', e);
        await this.unsubscribe().catch(() => undefined);
        this.set({ kind: 'failed', message: `Notifications could not be turned on: ${e instanceof Error ? e.message : String(e)}` });
      }
    });
  }

  /** Tell every desktop to forget its key, the relay to forget the subscription; unsubscribe; drop the keys. */
  disable(): Promise<void> {
    return this.serial(async () => {
      this.set({ kind: 'working' });
      await this.turnOff();
      this.set({ kind: 'off' });
    });
  }

  private async turnOff(): Promise<void> {
    await putSettings({ enabled: false });
    for (const d of this.served()) await this.engine.sendPushSetup(d.id, { enabled: false }).catch((e) => console.warn(`notifications: ${d.row.name} not told`, e));
    const relay = this.origin ? this.engine.relays.get(this.origin) : undefined;
    await relay?.pushSubscribe({ kind: 'remove' }).catch((e) => console.warn('notifications: the relay was not told', e));
    await this.unsubscribe().catch(() => undefined);
    await deleteKeys();
  }

  /** The service worker, and a push subscription under the relay's VAPID key. */
  private async subscription(): Promise<PushSubscription> {
    const vapid = this.vapid;
    if (!vapid) throw new Error('the relay has no VAPID key');
    await navigator.serviceWorker.register(SW_URL, { scope: '/' });
    const reg = await navigator.serviceWorker.ready;
    const old = await reg.pushManager.getSubscription();
    if (old && sameBytes(old.options.applicationServerKey, vapid)) return old;
    // Made for another relay's key (or none): a new one.
    await old?.unsubscribe();
    return reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: vapid as Uint8Array<ArrayBuffer> });
  }

  /** `PushSubscribe` (Web Push) with the relay; resolves on its Ok. */
  private async register(sub: PushSubscription): Promise<void> {
    const relay = this.origin ? this.engine.relays.get(this.origin) : undefined;
    if (!relay) throw new Error('not connected to the relay');
    const p256dh = sub.getKey('p256dh');
    const auth = sub.getKey('auth');
    if (!p256dh || !auth) throw new Error('the browser gave a subscription without keys');
    await relay.pushSubscribe({ kind: 'webpush', endpoint: sub.endpoint, p256dh: new Uint8Array(p256dh), auth: new Uint8Array(auth) });
  }

  /** Unsubscribe, and remove the service worker (it does nothing else). */
  private async unsubscribe(): Promise<void> {
    const reg = await navigator.serviceWorker.getRegistration('/');
    const sub = await reg?.pushManager.getSubscription();
    await sub?.unsubscribe();
    await reg?.unregister();
  }

  /** A fresh push key for `d`: kept (with the two before it) for the service worker, then sent over the link. */
  private async giveKey(d: Desktop): Promise<void> {
    const key = randomHex(PUSH_KEY_LEN);
    const keyId = randomHex(PUSH_KEY_ID_LEN);
    // Stored before it leaves: a push sealed with it must find it.
    await putKey({ keyId, key, desktopId: d.id, desktopName: d.row.name, createdMs: Date.now() });
    await this.engine.sendPushSetup(d.id, { enabled: true, key_id: keyId, key });
  }

  private async onLink(what: 'adopted' | 'forgotten' | 'renewed', d: Desktop): Promise<void> {
    if (what === 'forgotten') {
      await deleteKeys(d.id).catch(() => undefined);
      return;
    }
    if (this.state.kind !== 'on' || d.relay.origin !== this.origin || this.engine.inert) return;
    // A new pairing gets a key; a renewed session a new one (rotation with the link).
    await this.giveKey(d);
  }
}
