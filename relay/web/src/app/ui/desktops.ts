// The paired desktops, with online / offline / busy state, and every
// approval waiting anywhere.
import type { Desktop, Engine } from '../engine.ts';
import type { App, Route, Screen } from './app.ts';
import { ago, h } from './dom.ts';
import { notificationsControl } from './notify.ts';

export function desktopState(d: Desktop): 'online' | 'offline' | 'busy' {
  if (!d.online) return 'offline';
  return d.busy() ? 'busy' : 'online';
}

/** The pending approvals (of one desktop, or all), as links to their tasks. */
export function approvalsList(app: App, engine: Engine, desktopId?: string): HTMLElement {
  const pending = engine.pendingApprovals().filter((p) => !desktopId || p.desktopId === desktopId);
  const el = h('section', { class: 'approvals', testid: 'approvals', hidden: pending.length === 0 });
  if (pending.length === 0) return el;
  el.append(h('h2', {}, `Waiting for you (${pending.length})`));
  for (const p of pending) {
    const d = engine.desktops.get(p.desktopId);
    el.append(
      h(
        'button',
        {
          class: 'approval-link',
          'data-id': p.approvalId,
          onclick: () => app.show({ screen: 'task', desktop: p.desktopId, task: p.taskId }),
        },
        h('span', { class: 'badge' }, 'Approve?'),
        h('span', {}, p.summary),
        desktopId ? null : h('small', {}, ` · ${d?.row.name ?? ''}`),
      ),
    );
  }
  return el;
}

export function desktopsScreen(app: App, _route: Route): Screen {
  const list = h('ul', { class: 'desktops' });
  const approvals = h('div', {});
  const pairAnother = h('button', { class: 'secondary', testid: 'pair-another', onclick: () => app.show({ screen: 'pair' }) }, 'Pair another computer');
  const push = notificationsControl(app);
  const el = h('section', {}, approvals, list, pairAnother, push.el);

  function render(): void {
    approvals.replaceChildren(approvalsList(app, app.engine));
    list.replaceChildren();
    for (const d of app.engine.desktops.values()) {
      const state = desktopState(d);
      const running = [...d.threads.values()].filter((t) => t.row.state !== 'finished').length;
      const last = Math.max(0, ...[...d.threads.values()].map((t) => t.row.updatedMs));
      list.append(
        h(
          'li',
          {},
          h(
            'button',
            {
              class: 'desktop',
              testid: 'desktop',
              'data-id': d.id,
              'data-state': state,
              onclick: () => app.show({ screen: 'desktop', desktop: d.id }),
            },
            h('span', { class: `chip ${state}` }, state),
            h('span', { class: 'name' }, d.row.name),
            h('small', {}, running ? `${running} task(s) running` : last ? `last task ${ago(last)}` : 'no tasks yet'),
          ),
        ),
      );
    }
  }
  render();
  return { el, title: 'Your computers', update: render, destroy: push.destroy };
}
