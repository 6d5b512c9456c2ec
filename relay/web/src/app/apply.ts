// What one message from a desktop does to the app's state (PROTOCOL §15):
// task events through the per-task offset rule (thread.ts), history
// replies, the task list, the executors and projects offered, detach,
// refusals, device info. Sans I/O: the
// engine saves what changed and sends the requests.
import type { Choices, Message, Sessions } from '../proto/index.ts';
import type { Desktop } from './desktop.ts';
import { nameTask } from './notices.ts';
import type { EventRow, TaskRow } from './store.ts';
import type { Thread } from './thread.ts';

/**
 * Apply one message from desktop `d` (inside its `serial`, before the save
 * of the run it came in). Changed task rows go to `tasks`, new events to
 * `events`, requests it calls for to `requests`. Returns true when
 * desktop-level state changed.
 */
export function applyMessage(d: Desktop, m: Message, tasks: Map<string, TaskRow>, events: EventRow[], requests: Message[]): boolean {
  const taskId = typeof m.task_id === 'string' ? m.task_id : '';
  switch (m.kind) {
    case 'task_event': {
      const t = d.thread(taskId);
      const row: EventRow = {
        desktopId: d.id,
        taskId,
        offset: Number(m.offset),
        atMs: Number(m.at_ms),
        event: m.event as EventRow['event'],
      };
      const seen = t.observe(row);
      if (seen.fresh) {
        events.push(row);
        tasks.set(taskId, t.row);
        if (row.event.type === 'approval_resolved') {
          t.answered.delete(String(row.event.approval_id));
          // The rule was added: no refusal of it is coming.
          if (typeof row.event.rule === 'string') t.remembered.delete(String(row.event.approval_id));
        }
      }
      if (seen.fill !== null) requests.push({ kind: 'history_request', task_id: taskId, from_offset: seen.fill });
      return false;
    }
    case 'history_end': {
      const t = d.thread(taskId);
      const again = t.historyEnd(Number(m.next_offset), m.more === true);
      if (again !== null) requests.push({ kind: 'history_request', task_id: taskId, from_offset: again });
      tasks.set(taskId, t.row);
      return false;
    }
    case 'history_unavailable': {
      const t = d.thread(taskId);
      t.unavailable(Number(m.earliest));
      tasks.set(taskId, t.row);
      return false;
    }
    case 'task_list': {
      d.listed = true;
      for (const s of m.tasks as Array<Parameters<Thread['summary']>[0] & { task_id: string }>) {
        const t = d.thread(s.task_id);
        t.summary(s);
        tasks.set(s.task_id, t.row);
        if (d.recovering && t.row.next < t.row.known) {
          // After lost messages: every task the list shows behind is named
          // in the notice and fetched again (unless a fetch is on its way).
          d.row.lost = nameTask(d.row.lost ?? [], t.row.title || s.task_id);
          const from = t.behind();
          if (from !== null) requests.push({ kind: 'history_request', task_id: s.task_id, from_offset: from });
        }
      }
      d.recovering = false;
      return true;
    }
    case 'choices':
      d.choices = {
        executors: m.executors as Choices['executors'],
        projects: m.projects as Choices['projects'],
        default_executor: String(m.default_executor),
        ...(typeof m.default_project === 'string' ? { default_project: m.default_project } : {}),
      };
      return true;
    case 'sessions': {
      const ask = d.sessions;
      const answer = m as unknown as Sessions & { kind: string };
      // Only the answer to what this page asked last (an older one for
      // another agent may still arrive after the user switched).
      if (!ask || (ask.asked.executor !== undefined && ask.asked.executor !== answer.executor)) return false;
      if (ask.asked.workspace !== undefined && answer.workspace !== undefined && ask.asked.workspace !== answer.workspace) return false;
      ask.answer = { executor: answer.executor, sessions: answer.sessions, ...(answer.workspace !== undefined ? { workspace: answer.workspace } : {}) };
      ask.refused = undefined;
      return true;
    }
    case 'detached':
      d.detached = true;
      return true;
    case 'refused': {
      const code = String(m.code);
      const message = String(m.message);
      // The rule of an "always allow" the desktop would not add (the step
      // was allowed once): said on that approval, in the desktop's words.
      const rule = taskId && ['scope', 'not_supported', 'not_saved'].includes(code) ? rememberedBy(d.threads.get(taskId)) : null;
      if (rule) {
        const [t, approvalId] = rule;
        t.remembered.delete(approvalId);
        t.refusals.push({ code, message, approvalId });
        tasks.set(t.row.taskId, t.row);
      } else if (taskId) {
        const t = d.thread(taskId);
        t.refusals.push({ code, message });
        tasks.set(taskId, t.row);
      } else if (d.sessions && !d.sessions.answer && !d.sessions.refused) {
        // The refusals without a task: of a sessions_request (scope,
        // unknown_executor, unknown_project, not_supported).
        d.sessions.refused = { code, message };
      } else {
        console.warn('the desktop refused a request', code, message);
      }
      return true;
    }
    case 'device_info':
      if (typeof m.name === 'string') d.row.name = m.name;
      return true;
    default:
      return false;
  }
}

/** The thread and approval an "always allow" awaits its rule for: the oldest remembered approval of the task. */
function rememberedBy(t: Thread | undefined): [Thread, string] | null {
  const first = t?.remembered.values().next();
  return t && first && !first.done ? [t, first.value] : null;
}
