// The notices about missing or waiting messages (notices.ts), above the
// screen: what was lost or is not accepted yet, and what to do about it.
import type { App } from './app.ts';
import { clock, h } from './dom.ts';

/** The notices of one desktop (or of every desktop: `desktopId` undefined). */
export function noticesList(app: App, desktopId: string | undefined): HTMLElement {
  const el = h('div', { class: 'notices' });
  for (const n of app.engine.notices(desktopId)) {
    const id = n.desktopId;
    const card = h('div', { class: `notice ${n.kind}`, testid: 'notice', 'data-kind': n.kind, role: 'alert' }, h('p', {}, n.text));
    if (id && n.recover) {
      const note = h('small', { role: 'status', testid: 'notice-asked' }, n.askedMs ? `Asked at ${clock(n.askedMs)}. The missing events appear as they arrive.` : '');
      const ask = h(
        'button',
        {
          class: 'link',
          testid: 'notice-recover',
          onclick: () => {
            ask.disabled = true;
            app.engine.recover(id).catch((e: unknown) => {
              ask.disabled = false;
              note.textContent = `Not sent: ${e instanceof Error ? e.message : String(e)}`;
            });
          },
        },
        'Ask the computer again',
      );
      card.append(h('div', { class: 'row' }, ask, note));
    }
    if (id && n.kind === 'lost') {
      card.append(h('button', { class: 'link', testid: 'notice-dismiss', onclick: () => void app.engine.dismissLost(id) }, 'Dismiss'));
    }
    el.append(card);
  }
  el.hidden = el.childElementCount === 0;
  return el;
}
