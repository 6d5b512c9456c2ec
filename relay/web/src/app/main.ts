// Entry point. The pairing secret arrives in the URL fragment: it is read
// and removed from the address bar and the history entry before anything
// else runs, so it is not left in the history, a bookmark or a screenshot.
import './style.css';
import { Engine } from './engine.ts';
import { App, routeFromUrl } from './ui/app.ts';
import { desktopScreen } from './ui/desktop.ts';
import { desktopsScreen } from './ui/desktops.ts';
import { h } from './ui/dom.ts';
import { pairScreen, setPendingLink } from './ui/pair.ts';
import { taskScreen } from './ui/task.ts';

// The link without the query a redirecting relay adds (`?relay=`), which
// is read separately.
const link = location.hash.length > 1 ? `${location.origin}${location.pathname}${location.hash}` : null;
if (link) history.replaceState(null, '', location.pathname + location.search);

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
  if (link) {
    setPendingLink(link);
    app.show({ screen: 'pair' }, false);
  } else {
    app.show(routeFromUrl(), false);
  }
  // Debug hook for tests and support: which device this browser is.
  root.dataset.device = engine.deviceId;
}

void boot();
