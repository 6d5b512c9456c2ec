// The service worker (served at /sw.js, scope /; built by scripts/build.mjs as a classic script).
// It does one thing: push notifications (docs/PUSH.md "Web client"). It has no fetch handler, so
// it never answers for the page or its code.
//
// push               the relay's Web Push payload is the desktop's sealed blob; the key its id
//                    names (IndexedDB `tandem-push`, pushkeys.ts) opens it; the notification
//                    shows the desktop, the task and the step. No key, or a blob that does not
//                    open: "Tandem / New activity" (every push must show something).
// notificationclick  Allow / Deny: {type: "tandem-decide", …} to an open page that answers it
//                    (the page decides through its link, as its own buttons do); with none,
//                    the decision is recorded and `/#decide=desktop:task:approval:allow|deny`
//                    opened (the page acts on it only if the record is there). A plain tap
//                    focuses a page on the task, or opens one.
import { bytesToHex, hexToBytes } from '../proto/bytes.ts';
import { openPush, pushBlobKeyId } from '../proto/push.ts';
import { type NotificationData, type NotificationView, blobFromPushData, genericView, notificationView } from '../app/pushview.ts';
import { decisionRef, getKey, recordDecision } from '../app/pushkeys.ts';

/** The slice of the service worker globals this file uses (the app's tsconfig has DOM types only). */
interface WindowClient {
  url: string;
  focused: boolean;
  visibilityState: string;
  focus(): Promise<WindowClient>;
  postMessage(m: unknown, transfer?: Transferable[]): void;
}
interface ExtendableEvent extends Event {
  waitUntil(p: Promise<unknown>): void;
}
interface PushEvent extends ExtendableEvent {
  data: { arrayBuffer(): ArrayBuffer } | null;
}
interface NotificationClickEvent extends ExtendableEvent {
  action: string;
  notification: Notification;
}
interface SwGlobal {
  registration: ServiceWorkerRegistration;
  clients: {
    matchAll(o: { type: 'window'; includeUncontrolled: boolean }): Promise<WindowClient[]>;
    openWindow(url: string): Promise<WindowClient | null>;
    claim(): Promise<void>;
  };
  skipWaiting(): Promise<void>;
  addEventListener(type: string, f: (e: never) => void): void;
}
const sw = self as unknown as SwGlobal;

/** How long an open page has to say it will act on a decision before one is opened. */
const ANSWER_MS = 1500;

/**
 * Keep the worker alive until `p` settles. An event the worker did not get from the browser (one
 * dispatched by a test, as e2e/push.e2e.mjs does for a notification's action) refuses
 * `waitUntil`; the work runs all the same.
 */
function keepAlive(e: ExtendableEvent, p: Promise<unknown>): void {
  const logged = p.catch((err: unknown) => console.warn(`service worker: ${e.type}`, err));
  try {
    e.waitUntil(logged);
  } catch {
    /* not dispatched by the browser */
  }
}

sw.addEventListener('install', (e: ExtendableEvent) => keepAlive(e, sw.skipWaiting()));
sw.addEventListener('activate', (e: ExtendableEvent) => keepAlive(e, sw.clients.claim()));
sw.addEventListener('push', (e: PushEvent) => keepAlive(e, onPush(e)));
sw.addEventListener('notificationclick', (e: NotificationClickEvent) => keepAlive(e, onClick(e)));

async function onPush(e: PushEvent): Promise<void> {
  let view: NotificationView;
  try {
    view = await viewFor(e.data ? new Uint8Array(e.data.arrayBuffer()) : new Uint8Array(0));
  } catch (err) {
    console.warn('a push that cannot be opened', err);
    view = genericView();
  }
  await sw.registration.showNotification(view.title, view.options as NotificationOptions);
}

async function viewFor(data: Uint8Array): Promise<NotificationView> {
  const blob = blobFromPushData(data);
  if (!blob) throw new Error('no Tandem blob in the push');
  const keyId = pushBlobKeyId(blob);
  const row = await getKey(bytesToHex(keyId));
  if (!row) throw new Error(`no push key ${bytesToHex(keyId)} (forgotten, or older than the last three)`);
  const key = hexToBytes(row.key);
  return notificationView(openPush(key, keyId, blob), key, row.desktopId, row.desktopName);
}

async function onClick(e: NotificationClickEvent): Promise<void> {
  const data = (e.notification.data ?? {}) as NotificationData;
  e.notification.close();
  const windows = await sw.clients.matchAll({ type: 'window', includeUncontrolled: true });
  if ((e.action === 'allow' || e.action === 'deny') && data.desktop && data.task_id && data.approval_id) {
    const d = { desktop: data.desktop, taskId: data.task_id, approvalId: data.approval_id, allow: e.action === 'allow' };
    const ref = decisionRef(d);
    // Recorded first: whichever page acts on it (one open now, or one opened below) takes it.
    await recordDecision(ref);
    const msg = { type: 'tandem-decide', desktop: d.desktop, task_id: d.taskId, approval_id: d.approvalId, allow: d.allow };
    if (await firstTaker(windows, msg)) return;
    await sw.clients.openWindow(`/#decide=${encodeURIComponent(ref)}`);
    return;
  }
  const open = { type: 'tandem-open', desktop: data.desktop, task_id: data.task_id };
  const target = windows.find((w) => w.focused) ?? windows.find((w) => w.visibilityState === 'visible') ?? windows[0];
  if (target) {
    target.postMessage(open);
    await target.focus().catch(() => undefined);
    return;
  }
  const q = new URLSearchParams();
  if (data.desktop) q.set('desktop', data.desktop);
  if (data.desktop && data.task_id) q.set('task', data.task_id);
  const s = q.toString();
  await sw.clients.openWindow(`/p${s ? `?${s}` : ''}`);
}

/**
 * Offer `msg` to every open page; true once one answers that it acts on it (the tab that owns
 * the app's state; a tab that stepped aside, or one without that desktop, says no).
 */
function firstTaker(windows: WindowClient[], msg: object): Promise<boolean> {
  if (windows.length === 0) return Promise.resolve(false);
  return new Promise((resolve) => {
    let left = windows.length;
    const timer = setTimeout(() => resolve(false), ANSWER_MS);
    for (const w of windows) {
      const ch = new MessageChannel();
      ch.port1.onmessage = (m) => {
        if ((m.data as { ok?: boolean } | null)?.ok) {
          clearTimeout(timer);
          resolve(true);
          return;
        }
        if (--left === 0) {
          clearTimeout(timer);
          resolve(false);
        }
      };
      w.postMessage(msg, [ch.port2]);
    }
  });
}
