// Notifications in the UI: the control on the computers screen (push.ts), and acting on a
// notification's Allow / Deny — a message from the service worker to this page, or the
// `/#decide=…` address it opens when no page is open. Either way the decision goes through
// `Engine.decide`, the path of the thread's own buttons (the desktop's scope checks and audit
// apply), and only once: the service worker's record of the tap is taken (pushkeys.ts) by the
// one page that acts on it, and a `#decide=` link nobody tapped finds no record.
import { type DecisionRef, decisionRef, parseDecisionRef, takeDecision } from '../pushkeys.ts';
import type { App } from './app.ts';
import { h } from './dom.ts';

/** The "Notifications" control (one for the browser: every paired desktop on the relay); `destroy` with its screen. */
export function notificationsControl(app: App): { el: HTMLElement; destroy(): void } {
  const el = h('section', { class: 'push', testid: 'push' });
  const push = app.push;
  if (!push) {
    el.hidden = true;
    return { el, destroy: () => undefined };
  }
  const render = (): void => {
    const s = push.state;
    el.dataset.state = s.kind;
    el.hidden = s.kind === 'checking';
    const title = h('h2', {}, 'Notifications');
    switch (s.kind) {
      case 'checking':
        el.replaceChildren();
        return;
      case 'unavailable':
        el.replaceChildren(title, h('p', { class: 'hint', testid: 'push-note' }, s.why));
        return;
      case 'working':
        el.replaceChildren(title, h('button', { testid: 'push-toggle', disabled: true }, 'One moment…'));
        return;
      case 'on':
      case 'off':
      case 'failed': {
        const on = s.kind === 'on';
        const text = on
          ? 'On: approvals and finished tasks reach this phone while Tandem is closed. The relay and the push service carry them sealed and cannot read them.'
          : s.kind === 'failed'
            ? s.message
            : 'Off: you hear about approvals only while this page is open.';
        const toggle = h(
          'button',
          { class: on ? 'secondary' : 'primary', testid: 'push-toggle', onclick: () => void push.toggle() },
          on ? 'Turn off notifications' : 'Turn on notifications',
        );
        el.replaceChildren(title, h('p', { class: 'hint', testid: 'push-note', role: s.kind === 'failed' ? 'alert' : null }, text), toggle);
        return;
      }
    }
  };
  render();
  return { el, destroy: push.subscribe(render) };
}

/** Whether this page may act on decisions for `desktop` (it owns the app's state and knows the desktop). */
function mayAct(app: App, desktop: string): boolean {
  return !app.engine.inert && app.engine.desktops.has(desktop);
}

/** Take the service worker's record of the tap: true for exactly one page (or none, for a link nobody tapped). */
function take(d: DecisionRef): Promise<boolean> {
  return takeDecision(decisionRef(d)).catch(() => false);
}

/** Send a decision this page took, show the task and the result. */
async function act(app: App, d: DecisionRef, fromLink: boolean): Promise<void> {
  const engine = app.engine;
  try {
    await engine.decide(d.desktop, d.taskId, d.approvalId, d.allow);
    app.show({ screen: 'task', desktop: d.desktop, task: d.taskId }, !fromLink);
    app.flash(d.allow ? 'Allowed from the notification.' : 'Denied from the notification.', 'ok');
  } catch (e) {
    app.flash(`The decision was not sent: ${e instanceof Error ? e.message : String(e)}`, 'bad');
  }
}

/** Messages from the service worker that came before the app was ready (the page was loading). */
let early: MessageEvent[] | null = null;
let handler: ((m: MessageEvent) => void) | null = null;

/**
 * Listen to the service worker from the start (main.ts calls this before anything is awaited):
 * the browser hands its messages to the page once the document is parsed, which may be before
 * the engine is open; those wait here for `listenForNotifications`.
 */
export function catchNotificationMessages(): void {
  const container = (navigator as Navigator & { serviceWorker?: ServiceWorkerContainer }).serviceWorker;
  if (!container || early) return;
  early = [];
  container.addEventListener('message', (m: MessageEvent) => (handler ? handler(m) : early?.push(m)));
  container.startMessages();
}

/** Messages from the service worker: `tandem-decide` (answered on its port) and `tandem-open`. */
export function listenForNotifications(app: App): void {
  catchNotificationMessages();
  handler = (m: MessageEvent) => {
    const data = m.data as Record<string, unknown> | null;
    const port = m.ports[0];
    if (data?.type === 'tandem-decide') {
      const d = { desktop: String(data.desktop), taskId: String(data.task_id), approvalId: String(data.approval_id), allow: data.allow === true };
      if (!parseDecisionRef(decisionRef(d))) {
        port?.postMessage({ ok: false });
        return;
      }
      // Taking the record is what commits this page: the answer goes before the decision is saved.
      void (async () => {
        const took = mayAct(app, d.desktop) && (await take(d));
        port?.postMessage({ ok: took });
        if (took) await act(app, d, false);
      })();
    } else if (data?.type === 'tandem-open' && typeof data.desktop === 'string' && app.engine.desktops.has(data.desktop)) {
      const task = typeof data.task_id === 'string' ? data.task_id : undefined;
      app.show(task ? { screen: 'task', desktop: data.desktop, task } : { screen: 'desktop', desktop: data.desktop });
    }
  };
  for (const m of early?.splice(0) ?? []) handler(m);
}

/** The page was opened at `/#decide=<ref>` by the service worker (no page was open). */
export async function decideFromLink(app: App, ref: string): Promise<void> {
  const d = parseDecisionRef(ref);
  if (!d) {
    app.flash('This notification link is not valid.', 'bad');
    return;
  }
  if (!mayAct(app, d.desktop)) {
    app.flash('This approval belongs to a computer this browser is not paired with.', 'bad');
    return;
  }
  if (await take(d)) {
    await act(app, d, true);
    return;
  }
  // Not tapped here (a link from elsewhere, or taken already): the user decides on the thread.
  app.show({ screen: 'task', desktop: d.desktop, task: d.taskId }, false);
  app.flash('Decide on the approval below.', 'warn');
}
