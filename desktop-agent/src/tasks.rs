//! Tasks: what phones asked this desktop to do, run through the executors
//! the user configured, one queue with a configurable concurrency, every
//! event numbered and kept in the task history ([`crate::history`]) so a
//! phone can replay a task from any offset, also after a restart.
//!
//! The task manager does no I/O towards phones itself: it returns the
//! application messages to send, and the daemon seals and sends them. Every
//! event is on disk before it is returned.
//!
//! Approval summaries and details pass through [`crate::text`] here, the one
//! place every executor's approvals go through: format characters removed,
//! controls made visible, long texts cut to head and tail
//! ([`APPROVAL_SUMMARY_MAX`], [`crate::executor::MAX_EVENT_TEXT`]). So
//! does every other text phones are shown (progress, tool calls and
//! results, finish summaries, follow-ups, the task text): a tool call
//! carries the same command as the approval that follows it.
//!
//! What the desktop itself stops (a revoked device's tasks, a device whose
//! scope was lowered below `submit`, `tandem cancel`) is in [`stop`].

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tandem_proto::DeviceId;
use tandem_proto::message::{FinishStatus, Message, TaskEvent};
use tokio::sync::mpsc;

use crate::executor::{Controller, ExecEvent, ExecutorConfig};
use crate::history::{History, HistoryError, StoredState, TaskRecord};
use crate::peers::Scope;

mod control;
mod denials;
mod progress;
mod query;
mod queue;
mod remember;
mod sessions;
mod stop;

pub use queue::Wanted;
pub use sessions::{Later, SessionsAnswer};

pub use stop::{
    CANCELLED_FROM_DESKTOP, CancelError, DesktopCancel, StopCause, Stopped, cancel_queued_offline,
};

/// Longest approval summary sent to a phone, in bytes of its JSON string
/// encoding; a longer one keeps its head and tail ([`crate::text::head_tail`]).
pub const APPROVAL_SUMMARY_MAX: usize = 1024;

/// How long an approval waits for a decision before it is denied, by default.
pub const APPROVAL_TIMEOUT: Duration = Duration::from_secs(300);

/// Events in one history reply; the phone asks again for more.
pub const HISTORY_PAGE: usize = 256;

/// Tasks in a task list.
pub const TASK_LIST_LEN: usize = 20;

/// How the task manager behaves.
#[derive(Debug, Clone)]
pub struct TaskOptions {
    /// Tasks whose executors run at the same time; the rest wait in order.
    pub max_concurrent: usize,
    /// How long an approval waits before it is denied.
    pub approval_timeout: Duration,
    /// Unfinished tasks (queued plus running) at most; a submit beyond is
    /// refused with `queue_full` (PROTOCOL.md §15.3.2).
    pub max_unfinished: usize,
    /// The projects a task may run in, the default first ([`crate::projects`]).
    pub projects: Vec<crate::projects::Project>,
    /// Approval rules, applied before a phone is asked ([`crate::rules`]).
    pub rules: Vec<crate::rules::Rule>,
    /// Where the rules phones add are kept (the data dir; `None`: phones
    /// cannot add rules).
    pub added_rules_dir: Option<std::path::PathBuf>,
}

/// The default [`TaskOptions::max_unfinished`].
pub const DEFAULT_MAX_UNFINISHED: usize = 100;

impl Default for TaskOptions {
    fn default() -> Self {
        Self {
            max_concurrent: 1,
            approval_timeout: APPROVAL_TIMEOUT,
            max_unfinished: DEFAULT_MAX_UNFINISHED,
            projects: Vec::new(),
            rules: Vec::new(),
            added_rules_dir: None,
        }
    }
}

/// An event from a running executor, tagged with its task and run.
#[derive(Debug)]
pub struct TaskUpdate {
    /// The task.
    pub task_id: String,
    /// Which run of the task (a resumed task runs again): stale runs' events
    /// are dropped.
    pub run: u64,
    /// What happened.
    pub event: ExecEvent,
}

/// Who should receive a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// Only the device that asked.
    Device(DeviceId),
    /// Every paired device allowed to view tasks.
    Everyone,
}

/// What was sent, as the daemon sees it.
pub type Outgoing = Vec<(Audience, Message)>;

/// A queued or running task.
struct Active {
    record: TaskRecord,
    /// Set while its executor runs.
    controller: Option<Controller>,
    /// Increases with every start.
    run: u64,
    /// Pending approvals and when they expire (Unix ms).
    approvals: HashMap<String, u64>,
    /// The tool use of each pending approval whose executor named it (a
    /// phone may make a rule of it: `tasks/remember.rs`).
    tools: HashMap<String, crate::rules::ToolUse>,
    /// Set when the desktop cancelled it ([`stop`]): the finish summary to
    /// show when its executor reports the cancel. No approval is taken
    /// from then on.
    stopping: Option<String>,
    /// The tools it was not allowed to use so far.
    denials: denials::Denials,
}

impl Active {
    fn new(record: TaskRecord) -> Self {
        Self {
            record,
            controller: None,
            run: 0,
            approvals: HashMap::new(),
            tools: HashMap::new(),
            stopping: None,
            denials: denials::Denials::default(),
        }
    }
}

/// Counts for `tandem status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TaskCounts {
    /// Executors running.
    pub running: usize,
    /// Tasks waiting for a slot.
    pub queued: usize,
    /// Approvals waiting for a decision.
    pub pending_approvals: usize,
}

/// All tasks this desktop knows, and the configured executors.
pub struct TaskManager {
    executors: Vec<ExecutorConfig>,
    history: History,
    options: TaskOptions,
    active: HashMap<String, Active>,
    queue: VecDeque<String>,
    next_seq: u64,
    next_run: u64,
    updates: mpsc::Sender<TaskUpdate>,
    /// Who may have tasks run, by device id: kept equal to the paired
    /// devices and their scopes by the daemon. `None` until it is set
    /// (then every device may).
    permits: Option<HashMap<String, Scope>>,
    /// Tasks stopped because their device lost the right to run them, not
    /// yet taken by [`TaskManager::take_stopped`].
    stopped: Vec<Stopped>,
    /// Sessions listed to phones, which a submit may continue.
    listed: sessions::Listed,
    /// The allow rules phones added ([`crate::rules::added`]).
    added: crate::rules::added::AddedRules,
}

impl std::fmt::Debug for TaskManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskManager")
            .field("active", &self.active.len())
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn refused(task_id: &str, code: &str, message: &str) -> Message {
    Message::Refused {
        task_id: Some(task_id.to_owned()),
        code: code.into(),
        message: message.into(),
    }
}

/// A message's size in an outbox (0 if it cannot be encoded: not sent).
fn encoded_len(m: &Message) -> usize {
    m.encode().map_or(0, |b| b.len())
}

fn to(from: DeviceId, m: Message) -> Outgoing {
    vec![(Audience::Device(from), m)]
}

impl TaskManager {
    /// A manager for `executors` keeping its tasks in `history`; executor
    /// events arrive on the returned receiver. Call [`TaskManager::recover`]
    /// once connected.
    ///
    /// # Errors
    /// [`HistoryError`] if the history cannot be read.
    pub fn new(
        executors: Vec<ExecutorConfig>,
        history: History,
        options: TaskOptions,
    ) -> Result<(Self, mpsc::Receiver<TaskUpdate>), HistoryError> {
        let (updates, rx) = mpsc::channel(256);
        let next_seq = history.next_seq()?;
        let options = TaskOptions { max_concurrent: options.max_concurrent.max(1), ..options };
        let added = options
            .added_rules_dir
            .as_deref()
            .map(crate::rules::added::AddedRules::open)
            .unwrap_or_default();
        Ok((
            Self {
                executors,
                history,
                options,
                active: HashMap::new(),
                queue: VecDeque::new(),
                next_seq,
                next_run: 0,
                updates,
                permits: None,
                stopped: Vec::new(),
                listed: sessions::Listed::default(),
                added,
            },
            rx,
        ))
    }

    /// After a restart: tasks that were running were interrupted (they
    /// finish as failed; a resumable one can be continued with a
    /// follow-up); queued ones keep their place and run, unless their
    /// device is no longer paired or may no longer submit (see
    /// [`TaskManager::set_permits`]): those finish as rejected, unrun.
    ///
    /// # Errors
    /// [`HistoryError`] if the history cannot be read or written.
    pub async fn recover(&mut self) -> Result<Outgoing, HistoryError> {
        let mut out = Vec::new();
        for record in self.history.unfinished()? {
            if self.active.contains_key(&record.task_id) {
                continue;
            }
            match record.state {
                StoredState::Running => {
                    let mut record = record;
                    let m = self.append(
                        &mut record,
                        TaskEvent::Finished {
                            status: FinishStatus::Failed,
                            summary: "interrupted: the agent stopped while this task was running"
                                .into(),
                            denied: Vec::new(),
                            expired: Vec::new(),
                            failed: Vec::new(),
                        },
                    )?;
                    out.push((Audience::Everyone, m));
                }
                StoredState::Queued => {
                    self.queue.push_back(record.task_id.clone());
                    self.active.insert(record.task_id.clone(), Active::new(record));
                }
                StoredState::Finished { .. } => {}
            }
        }
        out.extend(self.pump().await?);
        Ok(out)
    }

    /// Append `event` to `record`'s history (durably) and return its message.
    fn append(&self, record: &mut TaskRecord, event: TaskEvent) -> Result<Message, HistoryError> {
        append_to(&self.history, record, event)
    }

    /// Append to an active task; `None` if it is not active.
    fn append_active(
        &mut self,
        task_id: &str,
        mut event: TaskEvent,
    ) -> Result<Option<Message>, HistoryError> {
        let Some(mut a) = self.active.remove(task_id) else { return Ok(None) };
        a.denials.note(&mut event);
        let r = self.append(&mut a.record, event);
        if !a.record.is_finished() {
            self.active.insert(task_id.to_owned(), a);
        }
        r.map(Some)
    }

    fn running(&self) -> usize {
        self.active.values().filter(|a| a.controller.is_some()).count()
    }
}

/// An executor's or a phone's text as phones are shown it: without format
/// characters, controls made visible ([`crate::text::visible`]), within
/// [`crate::executor::MAX_EVENT_TEXT`].
fn shown(text: &str) -> String {
    crate::text::head_tail(&crate::text::visible(text), crate::executor::MAX_EVENT_TEXT)
}

/// Append `event` to `record`'s history (durably) and return its message.
fn append_to(
    history: &History,
    record: &mut TaskRecord,
    event: TaskEvent,
) -> Result<Message, HistoryError> {
    let at_ms = now_ms();
    if let TaskEvent::Finished { status, .. } = &event {
        record.state = StoredState::Finished { status: *status };
        record.pending_resume = None;
    }
    let m = Message::TaskEvent {
        task_id: record.task_id.clone(),
        offset: record.next_offset,
        at_ms,
        event,
    };
    record.next_offset += 1;
    record.updated_ms = at_ms;
    history.save(record, Some(&m))?;
    crate::crashpoint::crash_point("agent.event_saved");
    Ok(m)
}

/// The status string of a finish, for logs and the audit trail.
#[must_use]
pub fn status_str(s: FinishStatus) -> &'static str {
    match s {
        FinishStatus::Succeeded => "succeeded",
        FinishStatus::Failed => "failed",
        FinishStatus::Cancelled => "cancelled",
        FinishStatus::Rejected => "rejected",
    }
}
