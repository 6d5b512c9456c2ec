// What one message from a desktop does to the app's state (PROTOCOL §15):
// task events through the per-task offset rule (thread.ts), history
// replies, the task list, the executors and projects offered, detach,
// refusals, device info. Sans I/O: the
// engine saves what changed and sends the requests.
import type { Choices, Message } from '../proto/index.ts';
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
        if (row.event.type === 'approval_resolved') t.answered.delete(String(row.event.approval_id));
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
    case 'detached':
      d.detached = true;
      return true;
    case 'refused': {
      if (taskId) {
        const t = d.thread(taskId);
        t.refusals.push({ code: String(m.code), message: String(m.message) });
        tasks.set(taskId, t.row);
      } else {
        console.warn('the desktop refused a request', m.code, m.message);
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
