// One desktop: compose a task (its agent, project, and optionally a session
// of theirs to continue), its tasks newest first, approvals waiting, and the
// idle-detach banner.
import type { App, Route, Screen } from './app.ts';
import { ago, h } from './dom.ts';
import { approvalsList, desktopState } from './desktops.ts';

/** The "you were detached" banner with its one-tap re-attach. */
export function detachedBanner(app: App, desktopId: string): HTMLElement {
  const d = app.engine.desktops.get(desktopId);
  const el = h('div', { class: 'detached', testid: 'detached', hidden: !d?.detached, role: 'status' });
  if (!d?.detached) return el;
  el.append(
    h('span', {}, 'Paused while you were away: only approvals and finished tasks arrive.'),
    h('button', { class: 'link', testid: 'reattach', onclick: () => void app.engine.reattach(desktopId) }, 'Show live progress'),
  );
  return el;
}

/** How long the sessions list waits for an online desktop before saying it got no answer. */
const SESSIONS_LATE_MS = 15_000;

export function desktopScreen(app: App, route: Route): Screen {
  const id = route.desktop ?? '';
  const d = app.engine.desktops.get(id);
  if (!d) throw new Error('unknown desktop');
  const status = h('p', { class: 'status' });
  const approvals = h('div', {});
  const compose = h('textarea', {
    testid: 'compose',
    rows: 3,
    placeholder: `What should ${d.row.name} do?`,
    'aria-label': 'New task',
    enterkeyhint: 'send',
  });
  const send = h('button', { testid: 'send', class: 'primary', type: 'submit' }, 'Send');
  const note = h('p', { class: 'hint', role: 'status' });
  // The executor and project pickers: shown once the desktop said what it
  // offers (with its task list), and only when there is a choice to make.
  const picks = h('div', { class: 'picks' });
  const executorPick = h('select', { testid: 'pick-executor', 'aria-label': 'Agent' }) as HTMLSelectElement;
  const projectPick = h('select', { testid: 'pick-project', 'aria-label': 'Project' }) as HTMLSelectElement;
  let shownChoices: unknown = undefined;
  // "Continue a session": the sessions the picked agent can continue in the
  // picked project, asked of the desktop when the user opens the list.
  const sessionsOpen = h('button', { class: 'link', type: 'button', testid: 'sessions-open', onclick: () => void askSessions() }, 'Continue a session…');
  const sessionsPanel = h('div', { class: 'sessions', testid: 'sessions', hidden: true });
  /** The session the next submit continues (cleared when the agent or project changes). */
  let resume: { id: string; title: string } | null = null;
  let sessionsShown = false;
  let lateTimer: ReturnType<typeof setTimeout> | null = null;
  const resumeNote = h('p', { class: 'resume', testid: 'resume', hidden: true });
  const form = h(
    'form',
    {
      class: 'compose',
      onsubmit: (e: Event) => {
        e.preventDefault();
        void submit();
      },
    },
    compose,
    picks,
    h('div', { class: 'row' }, sessionsOpen),
    sessionsPanel,
    resumeNote,
    send,
    note,
  );
  for (const sel of [executorPick, projectPick]) sel.addEventListener('change', () => closeSessions());
  compose.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.metaKey || e.ctrlKey)) {
      e.preventDefault();
      void submit();
    }
  });
  const list = h('ul', { class: 'tasks' });
  const forget = h(
    'button',
    {
      class: 'danger link',
      testid: 'forget',
      onclick: () => {
        if (confirm(`Forget ${d.row.name} on this device? Pair again to use it.`)) {
          void app.engine.forget(id).then(() => app.show({ screen: 'desktops' }, false));
        }
      },
    },
    'Forget this computer',
  );
  const el = h('section', {}, status, approvals, form, h('h2', {}, 'Tasks'), list, forget);

  async function submit(): Promise<void> {
    const text = compose.value.trim();
    if (!text || send.disabled) return;
    send.disabled = true;
    try {
      const pick = { ...picked(), ...(resume ? { resume: resume.id } : {}) };
      const task = await app.engine.submit(id, text, pick);
      compose.value = '';
      closeSessions();
      app.show({ screen: 'task', desktop: id, task });
    } catch (e) {
      note.textContent = `Not sent: ${e instanceof Error ? e.message : String(e)}`;
    } finally {
      send.disabled = false;
    }
  }

  /** The agent and project picked (absent: the desktop's defaults). */
  function picked(): { executor?: string; project?: string } {
    return {
      ...(executorPick.isConnected && executorPick.value ? { executor: executorPick.value } : {}),
      ...(projectPick.isConnected && projectPick.value ? { project: projectPick.value } : {}),
    };
  }

  async function askSessions(): Promise<void> {
    sessionsShown = true;
    resume = null;
    try {
      await app.engine.listSessions(id, picked());
    } catch (e) {
      note.textContent = `Not sent: ${e instanceof Error ? e.message : String(e)}`;
    }
    renderSessions();
  }

  function closeSessions(): void {
    sessionsShown = false;
    resume = null;
    renderSessions();
  }

  /** The sessions list (or why there is none) and the session picked. */
  function renderSessions(): void {
    const ask = d!.sessions;
    sessionsPanel.hidden = !sessionsShown || !ask;
    resumeNote.hidden = !resume;
    resumeNote.replaceChildren();
    if (resume) {
      resumeNote.append(
        h('span', {}, 'Continues: ', h('strong', {}, resume.title || resume.id)),
        ' ',
        h('button', { class: 'link', type: 'button', testid: 'resume-clear', onclick: () => closeSessions() }, 'New session instead'),
      );
    }
    sessionsOpen.hidden = sessionsShown;
    if (sessionsPanel.hidden || !ask) return;
    const close = h('button', { class: 'link', type: 'button', testid: 'sessions-close', onclick: () => closeSessions() }, 'Close');
    const agent = ask.answer?.executor ?? ask.asked.executor ?? 'the agent';
    if (ask.refused) {
      const text = ask.refused.code === 'not_supported' ? `This agent${ask.asked.executor ? ` (${ask.asked.executor})` : ''} cannot list sessions.` : `The desktop refused: ${ask.refused.message}`;
      sessionsPanel.replaceChildren(h('p', { class: 'hint', testid: 'sessions-note', 'data-code': ask.refused.code }, text), close);
      return;
    }
    if (!ask.answer) {
      // A desktop from before the hand-off ignores the request: say so rather than wait forever.
      const waited = Date.now() - ask.atMs;
      const late = waited >= SESSIONS_LATE_MS && d!.online;
      const text = late ? `No answer from ${d!.row.name}: it may not offer sessions (an older Tandem?).` : `Asking ${d!.row.name} for the sessions of ${agent}…`;
      sessionsPanel.replaceChildren(h('p', { class: 'hint', testid: 'sessions-note', 'data-code': late ? 'no_answer' : 'asking' }, text), close);
      if (!late && !lateTimer) lateTimer = setTimeout(() => ((lateTimer = null), renderSessions()), Math.max(0, SESSIONS_LATE_MS - waited) + 50);
      return;
    }
    const where = ask.answer.workspace ? ` in ${ask.answer.workspace}` : '';
    if (ask.answer.sessions.length === 0) {
      sessionsPanel.replaceChildren(h('p', { class: 'hint', testid: 'sessions-note', 'data-code': 'empty' }, `No sessions of ${ask.answer.executor}${where} yet.`), close);
      return;
    }
    const items = ask.answer.sessions.map((s) =>
      h(
        'li',
        {},
        h(
          'button',
          {
            class: 'session',
            type: 'button',
            testid: 'session',
            'data-id': s.id,
            'aria-pressed': resume?.id === s.id ? 'true' : 'false',
            onclick: () => {
              resume = { id: s.id, title: s.title };
              sessionsShown = false;
              renderSessions();
              compose.focus();
            },
          },
          h('span', { class: 'title' }, s.title || s.id),
          h('small', {}, s.task_id ? `${ago(s.updated_ms)} · from a task here` : ago(s.updated_ms)),
        ),
      ),
    );
    sessionsPanel.replaceChildren(h('p', { class: 'hint' }, `Sessions of ${ask.answer.executor}${where}, newest first:`), h('ul', { class: 'session-list' }, ...items), close);
  }

  /** Fill the pickers from the desktop's choices (kept as they are while those do not change). */
  function renderPicks(): void {
    const c = d!.choices;
    if (c === shownChoices) return;
    shownChoices = c;
    picks.replaceChildren();
    if (!c) return;
    const fill = (sel: HTMLSelectElement, names: string[], labels: string[], dflt: string | undefined): void => {
      const keep = sel.value;
      sel.replaceChildren(...names.map((n, i) => h('option', { value: n }, labels[i] ?? n)));
      sel.value = names.includes(keep) ? keep : (dflt ?? names[0] ?? '');
    };
    if (c.executors.length > 1) {
      fill(
        executorPick,
        c.executors.map((e) => e.name),
        c.executors.map((e) => (e.kind && e.kind !== e.name ? `${e.name} (${e.kind})` : e.name)),
        c.default_executor,
      );
      picks.append(h('label', {}, 'Agent ', executorPick));
    }
    if (c.projects.length > 0) {
      const names = c.projects.map((p) => p.name);
      fill(projectPick, names, names, c.default_project);
      picks.append(h('label', {}, 'Project ', projectPick));
    }
  }

  function render(): void {
    renderPicks();
    renderSessions();
    const state = desktopState(d!);
    status.replaceChildren(h('span', { class: `chip ${state}`, testid: 'desktop-state', 'data-state': state }, state), ` ${d!.row.platform}`);
    approvals.replaceChildren(approvalsList(app, app.engine, id));
    note.textContent = d!.online ? '' : 'The computer is offline: tasks are delivered when it is back.';
    const tasks = [...d!.threads.values()].sort((a, b) => b.row.updatedMs - a.row.updatedMs);
    list.replaceChildren();
    if (tasks.length === 0) list.append(h('li', { class: 'empty' }, 'No tasks yet.'));
    for (const t of tasks) {
      const r = t.row;
      const label = r.state === 'finished' ? (r.status ?? 'finished') : r.state;
      list.append(
        h(
          'li',
          {},
          h(
            'button',
            { class: 'task', testid: 'task', 'data-id': r.taskId, 'data-state': r.state, onclick: () => app.show({ screen: 'task', desktop: id, task: r.taskId }) },
            h('span', { class: `chip ${label}` }, label),
            h('span', { class: 'title' }, r.title || '(task)'),
            r.project ? h('small', { class: 'project' }, r.project) : null,
            h('small', {}, ago(r.updatedMs)),
          ),
        ),
      );
    }
  }
  render();
  // A fresh task list each time the screen opens (the user is here, so
  // re-attaching an idle-detached client is right).
  if (d.online) void app.engine.refreshTasks(id).catch(() => undefined);
  return {
    el,
    title: d.row.name,
    back: { screen: 'desktops' },
    update: (c) => {
      if (!c.desktopId || c.desktopId === id || c.connection) render();
    },
    destroy: () => {
      if (lateTimer) clearTimeout(lateTimer);
    },
  };
}
