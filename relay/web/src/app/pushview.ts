// What the service worker shows for a push (src/sw/sw.ts), as plain functions the Node tests run:
// the blob from the push message's bytes, and the notification for an opened blob (or the
// generic one when it cannot be opened: a push must always show something).
import { base64UrlDecode, bytesToHex } from '../proto/bytes.ts';
import { PUSH_BLOB_VERSION, type PushNotification, pushTopic } from '../proto/push.ts';

/** What `registration.showNotification(title, options)` gets. */
export interface NotificationView {
  title: string;
  options: {
    body: string;
    tag?: string;
    renotify?: boolean;
    requireInteraction?: boolean;
    timestamp?: number;
    icon: string;
    data: NotificationData;
    actions?: { action: 'allow' | 'deny'; title: string }[];
  };
}

/** What a tap on the notification needs. */
export interface NotificationData {
  kind: PushNotification['kind'] | 'generic';
  /** The desktop's id (from the key's row), not its name. */
  desktop?: string;
  task_id?: string;
  approval_id?: string;
}

const ICON = '/icon-192.png';

/**
 * The inner blob in a push message's bytes: the blob itself (first byte 0x01), or its base64 /
 * base64url text (what Chrome DevTools' `deliverPushMessage` can carry, and the form a sender
 * limited to text would use). Null when it is neither.
 */
export function blobFromPushData(data: Uint8Array): Uint8Array | null {
  if (data.length === 0) return null;
  if (data[0] === PUSH_BLOB_VERSION) return data;
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(data).trim();
  } catch {
    return null;
  }
  const b64url = text.replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  const blob = base64UrlDecode(b64url);
  return blob && blob.length > 0 && blob[0] === PUSH_BLOB_VERSION ? blob : null;
}

/** The notification for a push that could not be opened (unknown key, damaged blob). */
export function genericView(): NotificationView {
  return { title: 'Tandem', options: { body: 'New activity', tag: 'tandem-generic', icon: ICON, data: { kind: 'generic' } } };
}

/**
 * The notification for an opened push. `key` is the push key that opened it (for the topic, the
 * tag that lets a newer push for the same task replace this one), `desktopId` the desktop its
 * row names, `desktopName` that row's name: shown rather than the name inside the push (a paired
 * desktop cannot label its push as another's; the push's own name only when the row has none).
 */
export function notificationView(n: PushNotification, key: Uint8Array, desktopId: string, desktopName: string, now = Date.now()): NotificationView {
  const desktop = desktopName || n.desktop;
  const tag = n.task_id ? bytesToHex(pushTopic(key, n.task_id)) : undefined;
  const approval = n.kind === 'approval';
  const open = !n.expires_at_ms || n.expires_at_ms > now;
  const decide = approval && n.can_decide === true && !!n.task_id && !!n.approval_id && open;
  const view: NotificationView = {
    title: n.title ? `${desktop}: ${n.title}` : desktop,
    options: {
      body: approval && !open ? `${n.body} (expired)` : n.body,
      icon: ICON,
      timestamp: n.at_ms,
      data: { kind: n.kind, desktop: desktopId, task_id: n.task_id, approval_id: n.approval_id },
    },
  };
  if (tag) {
    view.options.tag = tag;
    // A new approval of a task alerts again; a finish replaces it quietly.
    view.options.renotify = approval;
  }
  if (approval && open) view.options.requireInteraction = true;
  if (decide) {
    view.options.actions = [
      { action: 'allow', title: 'Allow' },
      { action: 'deny', title: 'Deny' },
    ];
  }
  return view;
}
