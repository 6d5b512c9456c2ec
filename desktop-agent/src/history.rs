//! Task history on disk: every task this desktop accepted and every event
//! it produced, in an embedded database (`tasks.redb` in the data dir), so a
//! phone can replay any task from any offset after the agent restarted and
//! a queued task survives a crash.
//!
//! Each write is one fsynced transaction: an event is on disk before it is
//! sealed for any phone. Old tasks and the oldest events of very long tasks
//! are pruned; a replay from before what is kept is answered with an
//! explicit `history_unavailable`, never a silent gap.

use std::path::Path;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::{Deserialize, Serialize};
use tandem_proto::message::{FinishStatus, Message, TaskState, TaskSummary};
use thiserror::Error;

/// The database file in the data dir.
pub const FILE_NAME: &str = "tasks.redb";

mod recover;

/// Tasks kept, oldest finished ones pruned first.
pub const DEFAULT_MAX_TASKS: usize = 500;

/// Events kept per task; older ones are pruned (`history_unavailable`).
pub const DEFAULT_MAX_EVENTS_PER_TASK: u64 = 20_000;

/// Characters of the task text in a task list's title.
const TITLE_CHARS: usize = 120;

/// task id → [`TaskRecord`] as JSON.
const TASKS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("tasks");
/// creation sequence → task id.
const ORDER: TableDefinition<'_, u64, &str> = TableDefinition::new("order");
/// (task id, offset) → the encoded `task_event` message.
const EVENTS: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("events");
/// A paired link ([`History::stage_applied`]) → the sequence number of the
/// newest message from it whose effect is recorded here.
const APPLIED: TableDefinition<'_, &str, u64> = TableDefinition::new("applied");

/// Why the history could not be read or written.
#[derive(Debug, Error)]
pub enum HistoryError {
    /// The database failed (I/O, corruption, another process holds it).
    #[error("task history {path}: {detail}")]
    Db {
        /// The database file.
        path: String,
        /// What failed.
        detail: String,
    },
    /// A stored record could not be decoded.
    #[error("task history: a stored record is corrupt: {0}")]
    Corrupt(String),
}

/// Where a task stands, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum StoredState {
    /// Accepted, waiting for an executor slot.
    Queued,
    /// Its executor was started.
    Running,
    /// It ended.
    Finished {
        /// How.
        status: FinishStatus,
    },
}

/// What is kept about one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The phone's id for it.
    pub task_id: String,
    /// Creation order (newest is largest).
    pub seq: u64,
    /// The submitting device (base32 id), or `desktop`.
    pub device: String,
    /// The device whose follow-up resumed it, when not the submitter: the
    /// run is that device's (see [`TaskRecord::runner`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_by: Option<String>,
    /// The executor's configured name.
    pub executor: String,
    /// The project it runs in (a configured project's name), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The task text as submitted.
    pub text: String,
    /// When it was accepted (Unix ms).
    pub created_ms: u64,
    /// When it last changed (Unix ms).
    pub updated_ms: u64,
    /// Where it stands.
    #[serde(flatten)]
    pub state: StoredState,
    /// From the executor: a follow-up after it finished continues it.
    #[serde(default)]
    pub resume_token: Option<String>,
    /// A follow-up waiting to run as a resumed run (set while queued).
    #[serde(default)]
    pub pending_resume: Option<String>,
    /// Follow-ups that arrived while the task waited in the queue; they
    /// reach the executor when it starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_follow_ups: Vec<String>,
    /// Who sent each of [`Self::pending_follow_ups`], in the same order
    /// (base32 device ids; missing or empty in records stored before it was
    /// kept): a follow-up from a device that may no longer run tasks when
    /// the task starts is not delivered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_follow_ups_from: Vec<String>,
    /// The offset the next event gets.
    pub next_offset: u64,
    /// The oldest offset still kept.
    pub earliest: u64,
}

impl TaskRecord {
    /// The line for a task list.
    #[must_use]
    pub fn summary(&self) -> TaskSummary {
        // Shown to every phone: no format characters (`crate::text::visible`).
        let text = crate::text::visible(&self.text);
        let mut title: String = text.chars().take(TITLE_CHARS).collect();
        if text.chars().nth(TITLE_CHARS).is_some() {
            title.push('…');
        }
        let (state, status) = match self.state {
            StoredState::Queued => (TaskState::Queued, None),
            StoredState::Running => (TaskState::Running, None),
            StoredState::Finished { status } => (TaskState::Finished, Some(status)),
        };
        TaskSummary {
            task_id: self.task_id.clone(),
            title,
            executor: self.executor.clone(),
            project: self.project.clone(),
            state,
            status,
            next_offset: self.next_offset,
            updated_ms: self.updated_ms,
        }
    }

    /// Whether the task has ended.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        matches!(self.state, StoredState::Finished { .. })
    }

    /// The device this task runs for: the one whose follow-up resumed it,
    /// else the submitter. Revoking it, or lowering its scope below
    /// `submit`, stops the task.
    #[must_use]
    pub fn runner(&self) -> &str {
        self.run_by.as_deref().unwrap_or(&self.device)
    }

    /// `queued`, `running` or the finish status.
    #[must_use]
    pub fn state_str(&self) -> &'static str {
        match self.state {
            StoredState::Queued => "queued",
            StoredState::Running => "running",
            StoredState::Finished { status } => crate::tasks::status_str(status),
        }
    }
}

/// What a task id or id prefix typed by the desktop user found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The task with that id, or the only one whose id starts with it.
    Found(Box<TaskRecord>),
    /// No task.
    NotFound,
    /// Several tasks start with it (at most [`MAX_CANDIDATES`] listed).
    Ambiguous(Vec<String>),
}

/// Most candidates an ambiguous [`Lookup`] lists.
pub const MAX_CANDIDATES: usize = 5;

/// The task history database.
pub struct History {
    db: Database,
    path: String,
    max_tasks: usize,
    max_events: u64,
    /// The applied marker the next write carries ([`History::stage_applied`]).
    staged: std::sync::Mutex<Option<(String, u64)>>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").field("path", &self.path).finish_non_exhaustive()
    }
}

impl History {
    /// Open (or create) `tasks.redb` in `dir`.
    ///
    /// # Errors
    /// [`HistoryError::Db`] if it cannot be opened (for example while a
    /// running agent holds it).
    pub fn open(dir: &Path) -> Result<Self, HistoryError> {
        let path = dir.join(FILE_NAME);
        let shown = path.display().to_string();
        // Task texts and tool output: the file is 0600 before redb writes
        // anything into it (redb would create it with the umask's mode).
        crate::datadir::private_file(&path)
            .map_err(|e| HistoryError::Db { path: shown.clone(), detail: e.to_string() })?;
        let db = Database::create(&path)
            .map_err(|e| HistoryError::Db { path: shown.clone(), detail: e.to_string() })?;
        let me = Self {
            db,
            path: shown,
            max_tasks: DEFAULT_MAX_TASKS,
            max_events: DEFAULT_MAX_EVENTS_PER_TASK,
            staged: std::sync::Mutex::new(None),
        };
        let txn = me.db.begin_write().map_err(|e| me.err(e))?;
        {
            txn.open_table(TASKS).map_err(|e| me.err(e))?;
            txn.open_table(ORDER).map_err(|e| me.err(e))?;
            txn.open_table(EVENTS).map_err(|e| me.err(e))?;
            txn.open_table(APPLIED).map_err(|e| me.err(e))?;
        }
        txn.commit().map_err(|e| me.err(e))?;
        Ok(me)
    }

    /// Keep at most `max_tasks` tasks and `max_events` events per task.
    #[must_use]
    pub fn with_limits(mut self, max_tasks: usize, max_events: u64) -> Self {
        self.max_tasks = max_tasks.max(1);
        self.max_events = max_events.max(1);
        self
    }

    fn err(&self, e: impl std::fmt::Display) -> HistoryError {
        HistoryError::Db { path: self.path.clone(), detail: e.to_string() }
    }

    /// The next creation sequence number.
    ///
    /// # Errors
    /// [`HistoryError`] on a database failure.
    pub fn next_seq(&self) -> Result<u64, HistoryError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let order = txn.open_table(ORDER).map_err(|e| self.err(e))?;
        let last = order.last().map_err(|e| self.err(e))?;
        Ok(last.map_or(0, |(k, _)| k.value() + 1))
    }

    /// One task's record.
    ///
    /// # Errors
    /// [`HistoryError`] on a database failure or a corrupt record.
    pub fn get(&self, task_id: &str) -> Result<Option<TaskRecord>, HistoryError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let tasks = txn.open_table(TASKS).map_err(|e| self.err(e))?;
        let Some(v) = tasks.get(task_id).map_err(|e| self.err(e))? else { return Ok(None) };
        decode(v.value()).map(Some)
    }

    /// The task `query` names: its exact id, else the only task whose id
    /// starts with it (as `tandem tasks TASK` and `tandem cancel TASK`
    /// take it).
    ///
    /// # Errors
    /// [`HistoryError`] on a database failure or a corrupt record.
    pub fn find(&self, query: &str) -> Result<Lookup, HistoryError> {
        if query.is_empty() {
            return Ok(Lookup::NotFound);
        }
        if let Some(r) = self.get(query)? {
            return Ok(Lookup::Found(Box::new(r)));
        }
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let tasks = txn.open_table(TASKS).map_err(|e| self.err(e))?;
        let mut found = Vec::new();
        for item in tasks.range(query..).map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if !k.value().starts_with(query) || found.len() > MAX_CANDIDATES {
                break;
            }
            found.push((k.value().to_owned(), v.value().to_vec()));
        }
        match found.as_slice() {
            [] => Ok(Lookup::NotFound),
            [(_, one)] => decode(one).map(|r| Lookup::Found(Box::new(r))),
            many => Ok(Lookup::Ambiguous(
                many.iter().take(MAX_CANDIDATES).map(|(id, _)| id.clone()).collect(),
            )),
        }
    }

    /// Store `record` and, if given, the event message at `record.next_offset - 1`,
    /// in one durable transaction; prune what is over the limits (raising
    /// `record.earliest`, so the caller's copy stays true).
    ///
    /// # Errors
    /// [`HistoryError`] on a database failure: the caller must not send the
    /// event then.
    pub fn save(
        &self,
        record: &mut TaskRecord,
        event: Option<&Message>,
    ) -> Result<(), HistoryError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.set_durability(Durability::Immediate).map_err(|e| self.err(e))?;
        let mut trimmed = record.clone();
        {
            let mut tasks = txn.open_table(TASKS).map_err(|e| self.err(e))?;
            let mut order = txn.open_table(ORDER).map_err(|e| self.err(e))?;
            let mut events = txn.open_table(EVENTS).map_err(|e| self.err(e))?;
            let record = &mut trimmed;
            let is_new = tasks.get(record.task_id.as_str()).map_err(|e| self.err(e))?.is_none();
            if let Some(m) = event {
                let bytes = m.encode().map_err(|e| HistoryError::Corrupt(e.to_string()))?;
                let offset = record.next_offset.saturating_sub(1);
                events
                    .insert((record.task_id.as_str(), offset), bytes.as_slice())
                    .map_err(|e| self.err(e))?;
                // Prune this task's oldest events beyond the limit.
                while record.next_offset.saturating_sub(record.earliest) > self.max_events {
                    events
                        .remove((record.task_id.as_str(), record.earliest))
                        .map_err(|e| self.err(e))?;
                    record.earliest += 1;
                }
            }
            let json = serde_json::to_vec(&*record).map_err(|e| self.err(e))?;
            tasks.insert(record.task_id.as_str(), json.as_slice()).map_err(|e| self.err(e))?;
            if is_new {
                order.insert(record.seq, record.task_id.as_str()).map_err(|e| self.err(e))?;
                self.prune_tasks(&mut tasks, &mut order, &mut events)?;
            }
        }
        let staged = self.write_staged(&txn)?;
        txn.commit().map_err(|e| self.err(e))?;
        self.unstage(staged);
        *record = trimmed;
        Ok(())
    }

    /// The next write (a [`History::save`], or [`History::commit_applied`])
    /// also records, in the same transaction, that the message `seq` from
    /// `link` was applied: its effect and this marker are durable together,
    /// so a redelivery after a crash is recognised ([`History::applied`]).
    pub fn stage_applied(&self, link: &str, seq: u64) {
        *self.staged.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((link.to_owned(), seq));
    }

    /// Drop the staged marker if no write carried it: the message changed
    /// nothing recorded here (a refusal, a cancel handed to a running
    /// executor). Deciding it again after a crash is harmless, and a
    /// refusal that was never sent is sent then. Returns whether one was
    /// dropped.
    pub fn discard_applied(&self) -> bool {
        self.staged.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take().is_some()
    }

    /// The sequence number of the newest message from `link` whose effect
    /// is recorded, if any.
    ///
    /// # Errors
    /// [`HistoryError`] on a database failure.
    pub fn applied(&self, link: &str) -> Result<Option<u64>, HistoryError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let applied = txn.open_table(APPLIED).map_err(|e| self.err(e))?;
        Ok(applied.get(link).map_err(|e| self.err(e))?.map(|v| v.value()))
    }

    /// Write the staged marker into `txn` (never lowering a stored one).
    fn write_staged(
        &self,
        txn: &redb::WriteTransaction,
    ) -> Result<Option<(String, u64)>, HistoryError> {
        let staged = self.staged.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let Some((link, seq)) = &staged {
            let mut applied = txn.open_table(APPLIED).map_err(|e| self.err(e))?;
            let stored = applied.get(link.as_str()).map_err(|e| self.err(e))?.map(|v| v.value());
            if stored.is_none_or(|s| s < *seq) {
                applied.insert(link.as_str(), *seq).map_err(|e| self.err(e))?;
            }
        }
        Ok(staged)
    }

    /// The marker `written` is durable: unstage it (unless a newer one was
    /// staged meanwhile).
    fn unstage(&self, written: Option<(String, u64)>) {
        let mut staged = self.staged.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if written.is_some() && *staged == written {
            *staged = None;
        }
    }

    /// Drop the oldest finished tasks beyond `max_tasks`.
    fn prune_tasks(
        &self,
        tasks: &mut redb::Table<'_, &str, &[u8]>,
        order: &mut redb::Table<'_, u64, &str>,
        events: &mut redb::Table<'_, (&str, u64), &[u8]>,
    ) -> Result<(), HistoryError> {
        let count = usize::try_from(order.len().map_err(|e| self.err(e))?).unwrap_or(usize::MAX);
        let mut excess = count.saturating_sub(self.max_tasks);
        if excess == 0 {
            return Ok(());
        }
        let mut victims = Vec::new();
        for item in order.iter().map_err(|e| self.err(e))? {
            if excess == 0 {
                break;
            }
            let (seq, id) = item.map_err(|e| self.err(e))?;
            let id = id.value().to_owned();
            let finished = match tasks.get(id.as_str()).map_err(|e| self.err(e))? {
                Some(v) => decode(v.value()).map(|r| r.is_finished()).unwrap_or(true),
                None => true,
            };
            if finished {
                victims.push((seq.value(), id));
                excess -= 1;
            }
        }
        for (seq, id) in victims {
            order.remove(seq).map_err(|e| self.err(e))?;
            tasks.remove(id.as_str()).map_err(|e| self.err(e))?;
            let keys: Vec<u64> = events
                .range((id.as_str(), 0)..=(id.as_str(), u64::MAX))
                .map_err(|e| self.err(e))?
                .filter_map(Result::ok)
                .map(|(k, _)| k.value().1)
                .collect();
            for k in keys {
                events.remove((id.as_str(), k)).map_err(|e| self.err(e))?;
            }
        }
        Ok(())
    }

    /// Up to `limit` events of `task_id` from `from` on, decoded.
    ///
    /// # Errors
    /// [`HistoryError`] on a database failure or a corrupt event.
    pub fn events(
        &self,
        task_id: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Message>, HistoryError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let events = txn.open_table(EVENTS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in events.range((task_id, from)..=(task_id, u64::MAX)).map_err(|e| self.err(e))? {
            if out.len() >= limit {
                break;
            }
            let (_, v) = item.map_err(|e| self.err(e))?;
            match Message::decode(v.value()) {
                Ok(tandem_proto::message::Decoded::Known(m)) => out.push(m),
                Ok(_) | Err(_) => {
                    return Err(HistoryError::Corrupt(format!("an event of task {task_id}")));
                }
            }
        }
        Ok(out)
    }

    /// The most recent `limit` tasks, newest first.
    ///
    /// # Errors
    /// [`HistoryError`] on a database failure or a corrupt record.
    pub fn recent(&self, limit: usize) -> Result<Vec<TaskRecord>, HistoryError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let order = txn.open_table(ORDER).map_err(|e| self.err(e))?;
        let tasks = txn.open_table(TASKS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in order.iter().map_err(|e| self.err(e))?.rev() {
            if out.len() >= limit {
                break;
            }
            let (_, id) = item.map_err(|e| self.err(e))?;
            if let Some(v) = tasks.get(id.value()).map_err(|e| self.err(e))? {
                out.push(decode(v.value())?);
            }
        }
        Ok(out)
    }

    /// Every task that had not finished, oldest first (after a restart:
    /// queued ones run, running ones were interrupted).
    ///
    /// # Errors
    /// [`HistoryError`] on a database failure or a corrupt record.
    pub fn unfinished(&self) -> Result<Vec<TaskRecord>, HistoryError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let order = txn.open_table(ORDER).map_err(|e| self.err(e))?;
        let tasks = txn.open_table(TASKS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in order.iter().map_err(|e| self.err(e))? {
            let (_, id) = item.map_err(|e| self.err(e))?;
            if let Some(v) = tasks.get(id.value()).map_err(|e| self.err(e))? {
                let r = decode(v.value())?;
                if !r.is_finished() {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }
}

fn decode(bytes: &[u8]) -> Result<TaskRecord, HistoryError> {
    serde_json::from_slice(bytes).map_err(|e| HistoryError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_proto::message::TaskEvent;

    fn record(id: &str, seq: u64) -> TaskRecord {
        TaskRecord {
            task_id: id.into(),
            seq,
            device: "phone".into(),
            run_by: None,
            executor: "x".into(),
            project: None,
            text: "do it".into(),
            created_ms: 1,
            updated_ms: 1,
            state: StoredState::Queued,
            resume_token: None,
            pending_resume: None,
            pending_follow_ups: Vec::new(),
            pending_follow_ups_from: Vec::new(),
            next_offset: 0,
            earliest: 0,
        }
    }

    fn progress(id: &str, offset: u64) -> Message {
        Message::TaskEvent {
            task_id: id.into(),
            offset,
            at_ms: offset,
            event: TaskEvent::Progress { text: format!("line {offset}") },
        }
    }

    fn append(h: &History, r: &mut TaskRecord) {
        let m = progress(&r.task_id, r.next_offset);
        r.next_offset += 1;
        h.save(r, Some(&m)).unwrap();
    }

    #[test]
    fn events_survive_reopening_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let h = History::open(dir.path()).unwrap();
            let mut r = record("t", h.next_seq().unwrap());
            h.save(&mut r, None).unwrap();
            for _ in 0..5 {
                append(&h, &mut r);
            }
        }
        let h = History::open(dir.path()).unwrap();
        let r = h.get("t").unwrap().unwrap();
        assert_eq!(r.next_offset, 5);
        let evs = h.events("t", 2, 10).unwrap();
        assert_eq!(evs, (2..5).map(|o| progress("t", o)).collect::<Vec<_>>());
        assert_eq!(h.events("t", 0, 2).unwrap().len(), 2);
        assert_eq!(h.unfinished().unwrap().len(), 1);
        assert_eq!(h.next_seq().unwrap(), 1);
    }

    #[test]
    fn long_tasks_keep_their_newest_events() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path()).unwrap().with_limits(10, 3);
        let mut r = record("t", 0);
        for _ in 0..7 {
            append(&h, &mut r);
        }
        let stored = h.get("t").unwrap().unwrap();
        assert_eq!((stored.earliest, stored.next_offset), (4, 7));
        let evs = h.events("t", 0, 100).unwrap();
        assert_eq!(evs, (4..7).map(|o| progress("t", o)).collect::<Vec<_>>());
    }

    #[test]
    fn old_finished_tasks_are_pruned_unfinished_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path()).unwrap().with_limits(2, 100);
        let mut a = record("a", 0); // stays queued: never pruned
        h.save(&mut a, None).unwrap();
        append(&h, &mut a);
        for (i, id) in ["b", "c", "d"].iter().enumerate() {
            let mut r = record(id, i as u64 + 1);
            append(&h, &mut r);
            r.state = StoredState::Finished { status: FinishStatus::Succeeded };
            h.save(&mut r, None).unwrap();
        }
        let ids: Vec<String> = h.recent(10).unwrap().into_iter().map(|r| r.task_id).collect();
        assert_eq!(ids, ["d", "a"]);
        assert!(h.events("b", 0, 10).unwrap().is_empty());
        assert_eq!(h.events("a", 0, 10).unwrap().len(), 1);
    }

    #[test]
    fn ids_are_found_by_a_unique_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path()).unwrap();
        for (i, id) in ["abc-1", "abc-2", "abd", "x"].iter().enumerate() {
            h.save(&mut record(id, i as u64), None).unwrap();
        }
        let found = |q: &str| match h.find(q).unwrap() {
            Lookup::Found(r) => Ok(r.task_id),
            other => Err(other),
        };
        assert_eq!(found("x"), Ok("x".into()));
        assert_eq!(found("abd"), Ok("abd".into()));
        assert_eq!(found("abc-2"), Ok("abc-2".into()));
        assert_eq!(found("abc"), Err(Lookup::Ambiguous(vec!["abc-1".into(), "abc-2".into()])));
        assert_eq!(
            found("ab"),
            Err(Lookup::Ambiguous(vec!["abc-1".into(), "abc-2".into(), "abd".into()]))
        );
        assert_eq!(found("y"), Err(Lookup::NotFound));
        assert_eq!(found(""), Err(Lookup::NotFound));
    }

    #[test]
    fn the_database_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        drop(History::open(dir.path()).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join(FILE_NAME)), 0o600);
        // An existing readable one is made private.
        std::fs::set_permissions(
            dir.path().join(FILE_NAME),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        drop(History::open(dir.path()).unwrap());
        assert_eq!(mode(&dir.path().join(FILE_NAME)), 0o600);
    }

    #[test]
    fn summaries_shorten_long_texts() {
        let mut r = record("t", 0);
        r.text = "x".repeat(500);
        let s = r.summary();
        assert_eq!(s.title.chars().count(), TITLE_CHARS + 1);
        assert_eq!(s.state, TaskState::Queued);
    }

    #[test]
    fn an_applied_marker_rides_on_the_next_write_and_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path()).unwrap();
        assert_eq!(h.applied("phone@tag").unwrap(), None);
        h.stage_applied("phone@tag", 5);
        // Not durable until a write carries it.
        assert_eq!(h.applied("phone@tag").unwrap(), None);
        h.save(&mut record("t1", 1), None).unwrap();
        assert_eq!(h.applied("phone@tag").unwrap(), Some(5));
        assert!(!h.discard_applied(), "the write took it");
        h.stage_applied("phone@tag", 3);
        h.save(&mut record("t2", 2), None).unwrap();
        assert_eq!(h.applied("phone@tag").unwrap(), Some(5), "never lowered");
        // Nothing written: the staged marker is dropped, never recorded.
        h.stage_applied("phone@tag", 9);
        assert!(h.discard_applied());
        h.save(&mut record("t3", 3), None).unwrap();
        assert_eq!(h.applied("phone@tag").unwrap(), Some(5), "a dropped marker stays dropped");
        drop(h);
        let h = History::open(dir.path()).unwrap();
        assert_eq!(h.applied("phone@tag").unwrap(), Some(5), "kept across a restart");
        assert_eq!(h.applied("other@tag").unwrap(), None);
    }
}
