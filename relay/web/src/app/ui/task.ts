// A task thread: what was asked, live progress, tool calls (collapsed) with
// their results, approvals with allow / deny, follow-ups, cancel, the finish;
// older history loads when scrolled back. Events are keyed by offset, so a
// repeat never shows twice.
import type { EventRow } from '../store.ts';
import type { Thread } from '../thread.ts';
import type { App, Route, Screen } from './app.ts';
import { clock, h } from './dom.ts';
import { markdown } from './markdown.ts';

const STATUS_TEXT: Record<string, string> = {
  succeeded: 'Finished',
  failed: 'Failed',
  cancelled: 'Cancelled',
  rejected: 'Refused by the desktop',
};

function preview(v: unknown, max = 80): string {
  const s = typeof v === 'string' ? v : JSON.stringify(v);
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

export function taskScreen(app: App, route: Route): Screen {
  const desktopId = route.desktop ?? '';
  const taskId = route.task ?? '';
  const engine = app.engine;
  const d = engine.desktops.get(desktopId);
  if (!d) throw new Error('unknown desktop');
  const thread: Thread = d.thread(taskId);
  const head = h('div', { class: 'task-head' });
  const older = h('button', { class: 'link older', testid: 'load-older', hidden: true, onclick: () => void engine.loadOlder(desktopId, taskId) }, 'Load earlier events');
  const list = h('ol', { class: 'events', 'aria-live': 'polite' });
  const refusals = h('div', { class: 'refusals', role: 'alert' });
  const followup = h('textarea', { testid: 'followup', rows: 2, placeholder: 'Reply or add instructions…', 'aria-label': 'Follow-up' });
  const followSend = h('button', { testid: 'followup-send', class: 'primary', type: 'submit' }, 'Send');
  const cancel = h('button', { testid: 'cancel', class: 'danger', type: 'button', onclick: () => void doCancel() }, 'Cancel task');
  const footer = h(
    'form',
    {
      class: 'compose sticky',
      onsubmit: (e: Event) => {
        e.preventDefault();
        void sendFollowUp();
      },
    },
    followup,
    h('div', { class: 'row' }, cancel, followSend),
  );
  const el = h('section', { class: 'thread' }, head, older, list, refusals, footer);
  const nodes = new Map<number, HTMLElement>();
  const tools = new Map<string, HTMLDetailsElement>();
  const approvals = new Map<string, HTMLElement>();

  async function sendFollowUp(): Promise<void> {
    const text = followup.value.trim();
    if (!text || followSend.disabled) return;
    followSend.disabled = true;
    try {
      await engine.followUp(desktopId, taskId, text);
      followup.value = '';
    } finally {
      followSend.disabled = false;
    }
  }

  async function doCancel(): Promise<void> {
    cancel.disabled = true;
    await engine.cancel(desktopId, taskId);
  }

  function approvalCard(e: EventRow): HTMLElement {
    const ev = e.event;
    const id = String(ev.approval_id);
    const allow = h('button', { testid: 'allow', class: 'primary', onclick: () => decide(true) }, 'Allow');
    const deny = h('button', { testid: 'deny', class: 'danger', onclick: () => decide(false) }, 'Deny');
    // Allow, and add a desktop rule for the same tool on the same command or
    // file in this project (if this device's scope lets it).
    const always = h('button', { testid: 'allow-always', class: 'link always', onclick: () => decide(true, true) }, 'Always allow in this project');
    const outcome = h('p', { class: 'outcome' });
    const ruleNote = h('p', { class: 'rule-note', testid: 'rule-note', hidden: true });
    const detail = String(ev.detail ?? '');
    const card = h(
      'div',
      { class: 'approval', testid: 'approval', 'data-id': id, 'data-state': 'pending' },
      h('strong', {}, String(ev.summary ?? 'Approval needed')),
      detail ? h('pre', { class: 'detail' }, detail) : null,
      h('div', { class: 'row buttons' }, deny, allow),
      h('div', { class: 'row buttons always-row' }, always),
      outcome,
      ruleNote,
    );
    function decide(yes: boolean, remember = false): void {
      allow.disabled = deny.disabled = always.disabled = true;
      outcome.textContent = yes ? 'Allowing…' : 'Denying…';
      void engine.decide(desktopId, taskId, id, yes, remember);
    }
    approvals.set(id, card);
    return card;
  }

  function refreshApprovals(): void {
    const now = Date.now();
    const resolved = new Map<string, { allow: boolean; by: string; rule?: string }>();
    for (const e of thread.events.values()) {
      if (e.event.type === 'approval_resolved') {
        const rule = typeof e.event.rule === 'string' ? e.event.rule : undefined;
        resolved.set(String(e.event.approval_id), { allow: e.event.allow === true, by: String(e.event.by), ...(rule ? { rule } : {}) });
      }
    }
    // What the desktop said of an "always allow" it did not turn into a rule.
    const ruleRefusals = new Map(thread.refusals.filter((r) => r.approvalId).map((r) => [r.approvalId!, r.message]));
    for (const [id, card] of approvals) {
      const r = resolved.get(id);
      const req = [...thread.events.values()].find((e) => e.event.type === 'approval_request' && String(e.event.approval_id) === id);
      const expires = Number(req?.event.expires_at_ms ?? 0);
      let state = 'pending';
      let text = '';
      if (r) {
        state = r.allow ? 'allowed' : 'denied';
        text = `${r.allow ? 'Allowed' : 'Denied'} ${whoDecided(r.by, engine.deviceId)}.`;
      } else if (thread.closedBy(req?.offset ?? 0) || (expires && expires <= now)) {
        state = 'expired';
        text = 'No longer waiting for an answer.';
      } else if (thread.answered.has(id)) {
        text = thread.answered.get(id) ? 'Allowing…' : 'Denying…';
      } else {
        const secs = Math.max(0, Math.round((expires - now) / 1000));
        text = expires ? `Answer within ${secs >= 120 ? `${Math.round(secs / 60)} min` : `${secs} s`}, or it is denied.` : '';
      }
      card.dataset.state = state;
      const decided = state !== 'pending' || thread.answered.has(id);
      for (const b of card.querySelectorAll('button')) (b as HTMLButtonElement).disabled = decided;
      for (const row of card.querySelectorAll<HTMLElement>('.buttons')) row.hidden = state !== 'pending';
      const out = card.querySelector('.outcome');
      if (out) out.textContent = text;
      const note = card.querySelector<HTMLElement>('.rule-note');
      if (note) {
        const said = r?.rule ? ruleAdded(r.rule) : ruleRefusals.get(id);
        note.hidden = !said;
        note.textContent = said ?? '';
        if (said) note.dataset.state = r?.rule ? 'added' : 'refused';
      }
    }
  }

  function render(e: EventRow): HTMLElement {
    const ev = e.event;
    const li = h('li', { testid: 'event', 'data-offset': e.offset, 'data-type': ev.type, class: `ev ${ev.type}`, title: clock(e.atMs) });
    switch (ev.type) {
      case 'accepted':
        const where = typeof ev.project === 'string' ? ` in ${ev.project}` : '';
        li.append(h('span', { class: 'meta', testid: 'accepted' }, `Accepted by ${String(ev.executor ?? 'the desktop')}${where} · ${clock(e.atMs)}`));
        if (typeof ev.resumed === 'string') li.append(h('span', { class: 'meta resumed', testid: 'resumed', 'data-session': ev.resumed }, `Continues session ${ev.resumed}`));
        break;
      case 'follow_up':
        li.append(h('div', { class: 'bubble mine' }, String(ev.text ?? '')));
        break;
      case 'progress':
        li.append(h('div', { class: 'progress' }, markdown(String(ev.text ?? ''))));
        break;
      case 'tool_call': {
        const id = String(ev.call_id);
        const det = h(
          'details',
          { testid: 'tool', 'data-call-id': id, class: 'tool' },
          h('summary', {}, h('span', { class: 'tool-name' }, String(ev.name)), ' ', h('span', { class: 'tool-input' }, preview(ev.input))),
          h('pre', { class: 'input' }, JSON.stringify(ev.input, null, 2)),
        );
        tools.set(id, det);
        li.append(det);
        break;
      }
      case 'tool_result': {
        const body = h('div', { testid: 'tool-result', class: `result${ev.is_error ? ' error' : ''}` }, h('pre', {}, String(ev.output ?? '')));
        li.append(body);
        break;
      }
      case 'diff':
        li.append(diffView(String(ev.path), String(ev.diff), Number(ev.added), Number(ev.removed)));
        break;
      case 'approval_request':
        li.append(approvalCard(e));
        break;
      case 'approval_resolved':
        li.append(h('span', { class: 'meta', testid: 'resolved' }, ev.allow ? 'Allowed' : 'Denied', ` ${whoDecided(String(ev.by), engine.deviceId)}`));
        if (typeof ev.rule === 'string') li.append(h('span', { class: 'meta rule', testid: 'rule-added' }, ` · ${ruleAdded(ev.rule)}`));
        break;
      case 'finished': {
        const status = String(ev.status);
        li.append(
          h(
            'div',
            { class: `finished ${status}`, testid: 'finished', 'data-status': status },
            h('strong', {}, STATUS_TEXT[status] ?? status),
            ev.summary ? markdown(String(ev.summary)) : null,
            deniedLine(ev.denied, ev.expired),
            listLine('failed', 'Failed', ev.failed),
            listLine('expired', 'No answer in time', ev.expired),
          ),
        );
        break;
      }
      default:
        li.append(h('span', { class: 'meta' }, `(${ev.type})`));
    }
    return li;
  }

  /** Put an event's node in offset order. A tool result goes inside its call. */
  function place(e: EventRow): void {
    if (nodes.has(e.offset)) return;
    const node = render(e);
    nodes.set(e.offset, node);
    if (e.event.type === 'tool_result') {
      const call = tools.get(String(e.event.call_id));
      if (call) {
        call.append(node);
        if (e.event.is_error) call.classList.add('error');
        return;
      }
    }
    let before: HTMLElement | null = null;
    for (const [off, n] of nodes) {
      if (off > e.offset && n.parentElement === list && (!before || Number(before.dataset.offset) > off)) before = n;
    }
    list.insertBefore(node, before);
  }

  function renderHead(): void {
    const r = thread.row;
    const label = r.state === 'finished' ? (r.status ?? 'finished') : r.state;
    head.replaceChildren(
      h('div', { class: 'bubble mine task-text', testid: 'task-text' }, r.title || '…'),
      h('span', { class: `chip ${label}`, testid: 'task-state', 'data-state': r.state }, label),
    );
  }

  function update(): void {
    const nearBottom = innerHeight + scrollY >= document.body.scrollHeight - 80;
    const before = nodes.size;
    // Results whose call arrives later (older pages): re-place them.
    for (const e of thread.sorted()) {
      if (e.event.type === 'tool_call' && !nodes.has(e.offset)) {
        place(e);
        const id = String(e.event.call_id);
        for (const r of thread.events.values()) {
          const n = nodes.get(r.offset);
          if (r.event.type === 'tool_result' && String(r.event.call_id) === id && n && n.parentElement === list) {
            tools.get(id)?.append(n);
          }
        }
      } else {
        place(e);
      }
    }
    renderHead();
    refreshApprovals();
    older.hidden = !thread.hasOlder();
    const finished = thread.row.state === 'finished';
    cancel.hidden = finished;
    cancel.disabled = cancel.disabled && !finished;
    refusals.replaceChildren(
      ...thread.refusals.filter((r) => !r.approvalId || !approvals.has(r.approvalId)).map((r) => h('p', { class: 'error', 'data-code': r.code }, r.approvalId ? r.message : `The desktop refused: ${r.message}`)),
    );
    if (nodes.size > before && nearBottom) scrollTo(0, document.body.scrollHeight);
    // Still at the top after a page arrived (or a tap came while one was on
    // its way): fetch the next one.
    if (!armed && nodes.size > 0) {
      // A thread opens at its newest events, like a chat; only then does
      // reaching the top ask for older ones.
      scrollTo(0, document.body.scrollHeight);
      requestAnimationFrame(() => (armed = true));
    }
    if (armed && !older.hidden && older.getBoundingClientRect().bottom > 0 && older.getBoundingClientRect().top < innerHeight) {
      void engine.loadOlder(desktopId, taskId);
    }
  }

  // Scrolling to the top loads older events.
  let armed = false;
  const seen = new IntersectionObserver((entries) => {
    if (armed && entries.some((x) => x.isIntersecting) && thread.hasOlder()) void engine.loadOlder(desktopId, taskId);
  });
  seen.observe(older);
  const timer = setInterval(refreshApprovals, 1000);

  void engine.openThread(desktopId, taskId).then(update);
  update();
  return {
    el,
    title: d.row.name,
    back: { screen: 'desktop', desktop: desktopId },
    update: (c) => {
      if (c.taskId === taskId || (c.desktopId === desktopId && !c.taskId)) update();
    },
    destroy: () => {
      seen.disconnect();
      clearInterval(timer);
    },
  };
}

/**
 * The tools denied during a task, from its finish's `denied` (PROTOCOL.md
 * §15.3.1): a finish that succeeded with denials must not read as a plain
 * success. The approvals that went unanswered (`expired`, listed in `denied`
 * too) are said apart ("no answer in time"), not as denied. Nothing when the
 * field is absent or empty.
 */
function deniedLine(denied: unknown, expired: unknown): HTMLElement | null {
  const timedOut = new Set(strings(expired));
  return listLine('denied', 'Denied', strings(denied).filter((d) => !timedOut.has(d)));
}

/** A finish's list (`denied`, `failed`, `expired`) as "Label: a, b"; nothing when empty. */
function listLine(testid: string, label: string, list: unknown): HTMLElement | null {
  const names = strings(list);
  if (names.length === 0) return null;
  return h('p', { class: testid, testid }, `${label}: ${names.join(', ')}`);
}

function strings(v: unknown): string[] {
  return Array.isArray(v) ? v.filter((d): d is string => typeof d === 'string' && d.length > 0) : [];
}

/**
 * A rule an approval added (`approval_resolved.rule`, `allow Bash(cargo test)`),
 * in words: "Always allowed in this project: Bash(cargo test)".
 */
export function ruleAdded(rule: string): string {
  const m = /^allow\s+(.*)$/s.exec(rule);
  return m ? `Always allowed in this project: ${m[1]}` : `Rule added: ${rule}`;
}

/** Who decided an approval (`approval_resolved.by`), in words: a desktop rule is named. */
function whoDecided(by: string, me: string): string {
  if (by === 'desktop') return 'on the desktop';
  if (by === 'timeout') return '(no answer in time)';
  if (by === `phone:${me}`) return 'by you';
  if (by.startsWith('rule:')) return `by the desktop's rule "${by.slice(5)}"`;
  return 'from another device';
}

/**
 * A file change as a unified diff, collapsed: the file and `+added −removed`
 * first; opened, each line with its old and new line numbers (from the
 * hunk headers), added and removed lines marked. Text only, never HTML.
 */
export function diffView(path: string, diff: string, added: number, removed: number): HTMLElement {
  const rows = h('div', { class: 'diff-lines' });
  let oldNo = 0;
  let newNo = 0;
  for (const line of diff.split('\n')) {
    if (line.startsWith('--- ') || line.startsWith('+++ ') || line === '') continue;
    const hunk = /^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@/.exec(line);
    if (hunk) {
      oldNo = Number(hunk[1]);
      newNo = Number(hunk[2]);
      rows.append(h('div', { class: 'diff-hunk' }, line));
      continue;
    }
    const sign = line[0];
    const text = line.slice(1);
    let cls = 'ctx';
    let a = '';
    let b = '';
    if (sign === '+') {
      cls = 'add';
      b = String(newNo++);
    } else if (sign === '-') {
      cls = 'del';
      a = String(oldNo++);
    } else {
      a = String(oldNo++);
      b = String(newNo++);
    }
    rows.append(
      h('div', { class: `diff-line ${cls}` }, h('span', { class: 'no' }, a), h('span', { class: 'no' }, b), h('span', { class: 'sign' }, sign ?? ' '), h('span', { class: 'text' }, text)),
    );
  }
  return h(
    'details',
    { class: 'diff', testid: 'diff', 'data-path': path },
    h('summary', {}, h('span', { class: 'diff-path' }, path), ' ', h('span', { class: 'added' }, `+${added}`), ' ', h('span', { class: 'removed' }, `−${removed}`)),
    rows,
  );
}
