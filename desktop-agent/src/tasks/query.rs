//! Reading tasks back: a task's history in pages that fit a phone's outbox,
//! task lists, records and counts, and the applied-instruction marks.

use tandem_proto::DeviceId;
use tandem_proto::delivery::OutboxRoom;
use tandem_proto::message::{Message, TaskSummary};

use super::{
    Audience, HISTORY_PAGE, Outgoing, TASK_LIST_LEN, TaskCounts, TaskManager, encoded_len,
};
use crate::history::{HistoryError, TaskRecord};

impl TaskManager {
    /// A phone asks for a task's history from an offset: one page of events
    /// and `history_end`; `history_unavailable` first if the start was pruned.
    /// The whole answer fits in `room` (what the phone's outbox takes now):
    /// a shorter page, `more` set, rather than one that pushes its own start
    /// out. With `idle` (nothing waits for an acknowledgement) a page has at
    /// least one event, so that the asker gets on even through an outbox
    /// too small for a page.
    ///
    /// # Errors
    /// [`HistoryError`] if the history cannot be read.
    pub fn history(
        &self,
        from: DeviceId,
        task_id: &str,
        from_offset: u64,
        room: OutboxRoom,
        idle: bool,
    ) -> Result<Outgoing, HistoryError> {
        let record = match self.active.get(task_id) {
            Some(a) => a.record.clone(),
            None => match self.history.get(task_id)? {
                Some(r) => r,
                None => {
                    return Ok(vec![
                        (
                            Audience::Device(from),
                            Message::HistoryUnavailable {
                                task_id: task_id.to_owned(),
                                requested_from: from_offset,
                                earliest: 0,
                            },
                        ),
                        (
                            Audience::Device(from),
                            Message::HistoryEnd {
                                task_id: task_id.to_owned(),
                                next_offset: 0,
                                more: false,
                            },
                        ),
                    ]);
                }
            },
        };
        let mut out = Vec::new();
        let mut start = from_offset;
        if from_offset < record.earliest {
            out.push((
                Audience::Device(from),
                Message::HistoryUnavailable {
                    task_id: task_id.to_owned(),
                    requested_from: from_offset,
                    earliest: record.earliest,
                },
            ));
            start = record.earliest;
        }
        let mut events = self.history.events(task_id, start, HISTORY_PAGE)?;
        // What the answer's other messages take; the end's numbers at most
        // as long as the record's own.
        let end = Message::HistoryEnd {
            task_id: task_id.to_owned(),
            next_offset: record.next_offset,
            more: false,
        };
        let others = out.iter().map(|(_, m)| m).chain([&end]);
        let mut messages = room.messages.saturating_sub(out.len() + 1);
        let mut bytes = room.bytes.saturating_sub(others.map(encoded_len).sum());
        let fit = events
            .iter()
            .take_while(|m| {
                let len = encoded_len(m);
                let fits = messages > 0 && len <= bytes;
                messages = messages.saturating_sub(1);
                bytes = bytes.saturating_sub(len);
                fits
            })
            .count();
        events.truncate(fit.max(usize::from(idle)));
        let next_offset =
            start.saturating_add(events.len() as u64).min(record.next_offset.max(start));
        let more = next_offset < record.next_offset;
        out.extend(events.into_iter().map(|m| (Audience::Device(from), m)));
        out.push((
            Audience::Device(from),
            Message::HistoryEnd { task_id: task_id.to_owned(), next_offset, more },
        ));
        Ok(out)
    }

    /// The most recent tasks, for a phone's `history_request` without a task.
    ///
    /// # Errors
    /// [`HistoryError`] if the history cannot be read.
    pub fn task_list(&self, from: DeviceId) -> Result<Outgoing, HistoryError> {
        let tasks: Vec<TaskSummary> =
            self.recent(TASK_LIST_LEN)?.iter().map(TaskRecord::summary).collect();
        // What it may pick for its next task, first.
        let choices = crate::projects::choices(&self.executors, &self.options.projects);
        Ok(vec![
            (Audience::Device(from), choices),
            (Audience::Device(from), Message::TaskList { tasks }),
        ])
    }

    /// The most recent tasks' records, newest first (active ones current).
    ///
    /// # Errors
    /// [`HistoryError`] if the history cannot be read.
    pub fn recent(&self, limit: usize) -> Result<Vec<TaskRecord>, HistoryError> {
        let mut records = self.history.recent(limit)?;
        for r in &mut records {
            if let Some(a) = self.active.get(&r.task_id) {
                *r = a.record.clone();
            }
        }
        Ok(records)
    }

    /// One task's events from `from`, at most `limit` (for the CLI).
    ///
    /// # Errors
    /// [`HistoryError`] if the history cannot be read.
    pub fn events(
        &self,
        task_id: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Message>, HistoryError> {
        self.history.events(task_id, from, limit)
    }

    /// A task's record (live for an active task).
    ///
    /// # Errors
    /// [`HistoryError`] if the history cannot be read.
    pub fn record(&self, task_id: &str) -> Result<Option<TaskRecord>, HistoryError> {
        match self.active.get(task_id) {
            Some(a) => Ok(Some(a.record.clone())),
            None => self.history.get(task_id),
        }
    }

    /// The ids of the tasks not finished in the history, oldest first.
    ///
    /// # Errors
    /// [`HistoryError`] if the history cannot be read.
    pub fn unfinished_ids(&self) -> Result<Vec<String>, HistoryError> {
        Ok(self.history.unfinished()?.into_iter().map(|r| r.task_id).collect())
    }

    /// The next history write also records that message `seq` from `link`
    /// was applied, in the same transaction ([`crate::history::History::stage_applied`]).
    pub fn stage_applied(&self, link: &str, seq: u64) {
        self.history.stage_applied(link, seq);
    }

    /// Drop the staged marker if no write carried it
    /// ([`crate::history::History::discard_applied`]).
    pub fn discard_applied(&self) -> bool {
        self.history.discard_applied()
    }

    /// The newest message from `link` whose effect is recorded.
    ///
    /// # Errors
    /// [`HistoryError`] if the history cannot be read.
    pub fn applied(&self, link: &str) -> Result<Option<u64>, HistoryError> {
        self.history.applied(link)
    }

    /// Running, queued and approval counts.
    #[must_use]
    pub fn counts(&self) -> TaskCounts {
        TaskCounts {
            running: self.running(),
            queued: self.queue.len(),
            pending_approvals: self.active.values().map(|a| a.approvals.len()).sum(),
        }
    }

    /// Whether any task is running or waiting to run.
    #[must_use]
    pub fn busy(&self) -> bool {
        !self.active.is_empty()
    }
}
