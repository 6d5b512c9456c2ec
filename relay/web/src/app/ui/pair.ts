// Pairing: from the scanned link (the page's #fragment, already removed from
// the address bar) or a pasted one. Shows progress, the 6-digit code to
// compare with the desktop, and clear errors.
import { PairError } from '../engine.ts';
import type { App, Route, Screen } from './app.ts';
import { h } from './dom.ts';

/** The link the page was opened with, taken out of the URL at startup. */
let pendingLink: string | null = null;

export function setPendingLink(link: string | null): void {
  pendingLink = link;
}

export function pairScreen(app: App, _route: Route): Screen {
  const step = h('p', { class: 'step', testid: 'pair-step' });
  const sasBox = h('div', { class: 'sas-box', hidden: true });
  const error = h('div', { class: 'error', testid: 'pair-error', hidden: true, role: 'alert' });
  const input = h('input', {
    testid: 'pair-link',
    type: 'url',
    placeholder: 'https://…/p#…',
    autocomplete: 'off',
    'aria-label': 'Pairing link',
  });
  const start = h('button', { testid: 'pair-start', class: 'primary', type: 'submit' }, 'Pair');
  const form = h(
    'form',
    {
      class: 'paste',
      onsubmit: (e: Event) => {
        e.preventDefault();
        const link = input.value.trim();
        if (!link) return;
        // A link to another relay's page: open it there (this page talks
        // only to its own relay).
        const hash = link.indexOf('#');
        let origin = '';
        try {
          origin = new URL(hash >= 0 ? link.slice(0, hash) : link).origin;
        } catch {
          /* not a URL: run() reports it */
        }
        if (origin && origin !== location.origin && origin !== 'null') {
          location.assign(link);
          return;
        }
        void run(link);
      },
    },
    h('label', {}, 'Or paste the pairing link the desktop printed:'),
    input,
    start,
  );
  const intro = h(
    'div',
    { class: 'intro' },
    h('p', {}, 'On your computer, run ', h('code', {}, 'tandem up'), ' (or ', h('code', {}, 'tandem pair'), ') and scan the QR code it shows with this phone’s camera.'),
  );
  const el = h('section', { class: 'pair' }, intro, step, sasBox, error, form);
  let busy = false;
  const relayParam = new URLSearchParams(location.search).get('relay') ?? undefined;

  async function run(link: string): Promise<void> {
    if (busy) return;
    busy = true;
    start.disabled = true;
    form.hidden = true;
    error.hidden = true;
    sasBox.hidden = true;
    intro.hidden = true;
    step.textContent = 'Connecting to the relay…';
    try {
      const flow = await app.engine.startPairing(link, relayParam);
      step.textContent = `Confirm on “${flow.desktopName}” that it shows the same code.`;
      sasBox.replaceChildren(
        h('div', { class: 'sas', testid: 'sas', 'aria-label': `Code ${flow.sas.split('').join(' ')}` }, flow.sas),
        h('p', { class: 'hint' }, 'If the codes differ, refuse on the desktop: someone else may be in between.'),
      );
      sasBox.hidden = false;
      const d = await flow.wait();
      step.textContent = `Paired with ${d.row.name}.`;
      app.show({ screen: 'desktop', desktop: d.id }, false);
    } catch (e) {
      const code = e instanceof PairError ? e.code : 'unreachable';
      const message = e instanceof Error ? e.message : String(e);
      sasBox.hidden = true;
      step.textContent = 'Pairing failed.';
      error.dataset.code = code;
      error.replaceChildren(h('strong', {}, title(code)), h('p', {}, message));
      error.hidden = false;
      busy = false;
      start.disabled = false;
      form.hidden = false;
    }
  }

  const confirmBox = h('div', { class: 'confirm', hidden: true });
  el.insertBefore(confirmBox, step);
  if (pendingLink) {
    // A link can come from anyone: pairing starts only on a tap, so a link
    // sent by someone else cannot pair this browser with their computer
    // behind the user's back.
    const link = pendingLink;
    pendingLink = null;
    intro.hidden = true;
    step.hidden = true;
    form.hidden = true;
    confirmBox.replaceChildren(
      h('p', {}, 'Pair this browser with a computer?'),
      h('p', { class: 'hint' }, 'Continue only if you just scanned this code from your own computer’s screen.'),
      h(
        'button',
        {
          class: 'primary',
          testid: 'pair-confirm',
          onclick: () => {
            confirmBox.hidden = true;
            step.hidden = false;
            void run(link);
          },
        },
        'Pair',
      ),
    );
    confirmBox.hidden = false;
  } else {
    step.hidden = true;
  }
  const back = app.engine.desktops.size > 0 ? { screen: 'desktops' as const } : undefined;
  return {
    el,
    title: 'Pair with a computer',
    back,
    update: () => undefined,
  };
}

function title(code: string): string {
  switch (code) {
    case 'expired':
      return 'This code has expired';
    case 'already_used':
      return 'This code was already used';
    case 'refused':
      return 'The desktop refused';
    case 'unreachable':
      return 'Cannot reach the relay';
    case 'wrong_relay':
      return 'Wrong relay';
    case 'timeout':
      return 'No answer from the desktop';
    default:
      return 'Not a valid pairing link';
  }
}
