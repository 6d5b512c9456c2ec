// Entry point. The pairing secret arrives in the URL fragment: it is read
// and removed from the address bar and the history entry before anything
// else runs, so it is not left in the history, a bookmark or a screenshot.
// The query goes too, but for the app's own parameters: a pairing link on
// plain http carries a fresh nonce (`/p?n=…#…`) so that what a scan opens is
// never a page some host cached under a known address (docs/SECURITY.md §3),
// and no later visit should open that address again.
import './style.css';
import { Engine } from './engine.ts';
import { App, appQuery, routeFromUrl } from './ui/app.ts';
import { desktopScreen } from './ui/desktop.ts';
import { desktopsScreen } from './ui/desktops.ts';
import { h } from './ui/dom.ts';
import { catchNotificationMessages, decideFromLink, listenForNotifications } from './ui/notify.ts';
import { pairScreen, setPendingLink } from './ui/pair.ts';
import { PushControl } from './push.ts';
import { taskScreen } from './ui/task.ts';

// `#decide=desktop:task:approval:allow|deny`: a notification's Allow / Deny
// tapped with no page open (the service worker opened this one, ui/notify.ts).
const DECIDE = '#decide=';
const decide = location.hash.startsWith(DECIDE) ? decodeURIComponent(location.hash.slice(DECIDE.length)) : null;
// The link without the query (a redirecting relay's `?relay=` is read
// separately; a nonce is of no use to the app).
const link = !decide && location.hash.length > 1 ? `${location.origin}${location.pathname}${location.hash}` : null;
const search = appQuery(location.search);
if (link || decide || search !== location.search) history.replaceState(null, '', location.pathname + search);

catchNotificationMessages();

async function boot(): Promise<void> {
  const root = document.getElementById('app');
  if (!root) return;
  let engine: Engine;
  try {
    engine = await Engine.open();
  } catch (e) {
    root.replaceChildren(
      h(
        'section',
        { class: 'fatal', role: 'alert' },
        h('h1', {}, 'Tandem cannot start'),
        h('p', {}, `This browser would not let Tandem keep its keys: ${e instanceof Error ? e.message : String(e)}.`),
        h('p', {}, 'Private browsing modes often block storage. Open the link in a normal tab.'),
      ),
    );
    return;
  }
  const app = new App(engine, { pair: pairScreen, desktops: desktopsScreen, desktop: desktopScreen, task: taskScreen }, root);
  const push = new PushControl(engine);
  app.push = push;
  listenForNotifications(app);
  void push.init().catch((e: unknown) => console.warn('notifications', e));
  if (decide) {
    app.show(routeFromUrl(), false);
    void decideFromLink(app, decide);
  } else if (link) {
    setPendingLink(link);
    app.show({ screen: 'pair' }, false);
  } else {
    app.show(routeFromUrl(), false);
  }
  // Debug hook for tests and support: which device this browser is.
  root.dataset.device = engine.deviceId;
}

void boot();
