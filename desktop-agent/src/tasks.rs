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
use tandem_proto::delivery::OutboxRoom;
use tandem_proto::message::{FinishStatus, Message, TaskEvent, TaskSummary};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::executor::{Control, Controller, ExecEvent, ExecutorConfig, resume, start};
use crate::history::{History, HistoryError, StoredState, TaskRecord};
use crate::peers::Scope;

mod denials;
mod stop;

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
}

/// The default [`TaskOptions::max_unfinished`].
pub const DEFAULT_MAX_UNFINISHED: usize = 100;

impl Default for TaskOptions {
    fn default() -> Self {
        Self {
            max_concurrent: 1,
            approval_timeout: APPROVAL_TIMEOUT,
            max_unfinished: DEFAULT_MAX_UNFINISHED,
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

    /// Start queued tasks while there are free slots; first drop the
    /// queued tasks whose device may no longer have them run.
    async fn pump(&mut self) -> Result<Outgoing, HistoryError> {
        let mut out = self.drop_unpermitted()?;
        while self.running() < self.options.max_concurrent {
            let Some(id) = self.queue.pop_front() else { break };
            out.extend(self.start(&id).await?);
        }
        Ok(out)
    }

    async fn start(&mut self, task_id: &str) -> Result<Outgoing, HistoryError> {
        let Some(mut a) = self.active.remove(task_id) else { return Ok(Vec::new()) };
        let config = self.executors.iter().find(|e| e.name == a.record.executor).cloned();
        // On disk as running before anything is spawned: a crash from here
        // on finishes it as interrupted, never runs it twice.
        let resume_text = a.record.pending_resume.take();
        a.record.state = StoredState::Running;
        a.record.updated_ms = now_ms();
        if let Err(e) = self.history.save(&mut a.record, None) {
            self.active.insert(task_id.to_owned(), a);
            return Err(e);
        }
        let started = match (&config, resume_text) {
            (None, _) => {
                Err(format!("the executor {:?} is no longer configured", a.record.executor))
            }
            (Some(c), Some(text)) => match &a.record.resume_token {
                Some(token) => resume(c, token, &text).map_err(|e| e.to_string()),
                None => Err("the task cannot be resumed".into()),
            },
            (Some(c), None) => start(c, &a.record.text).map_err(|e| e.to_string()),
        };
        let running = match started {
            Ok(r) => r,
            Err(e) => {
                warn!(task = %task_id, error = %e, "executor failed to start");
                let m = self.append(
                    &mut a.record,
                    TaskEvent::Finished {
                        status: FinishStatus::Failed,
                        summary: format!("could not start: {e}"),
                        denied: Vec::new(),
                    },
                )?;
                return Ok(vec![(Audience::Everyone, m)]);
            }
        };
        info!(task = %task_id, executor = %a.record.executor, "task started");
        self.next_run += 1;
        a.run = self.next_run;
        a.controller = Some(running.controller());
        let updates = self.updates.clone();
        let (id, run) = (task_id.to_owned(), a.run);
        tokio::spawn(async move {
            let mut running = running;
            while let Some(event) = running.next().await {
                if updates.send(TaskUpdate { task_id: id.clone(), run, event }).await.is_err() {
                    break;
                }
            }
        });
        let follow_ups = std::mem::take(&mut a.record.pending_follow_ups);
        let mut senders = std::mem::take(&mut a.record.pending_follow_ups_from);
        senders.resize(follow_ups.len(), String::new());
        if !follow_ups.is_empty() {
            self.history.save(&mut a.record, None)?;
        }
        let controller = a.controller.clone();
        self.active.insert(task_id.to_owned(), a);
        let mut out = Vec::new();
        if let Some(c) = controller {
            for (text, sender) in follow_ups.into_iter().zip(senders) {
                // Its device was revoked or lowered below `submit` since it
                // sent this: its instruction is not delivered.
                if let Some(why) = self.follow_up_refusal(&sender) {
                    if let Some(m) =
                        self.append_active(task_id, TaskEvent::Progress { text: why })?
                    {
                        out.push((Audience::Everyone, m));
                    }
                    continue;
                }
                if let Err(e) = c.control(Control::FollowUp(text)).await
                    && let Some(m) = self.append_active(
                        task_id,
                        TaskEvent::Progress { text: format!("a follow-up was not delivered: {e}") },
                    )?
                {
                    out.push((Audience::Everyone, m));
                }
            }
        }
        Ok(out)
    }

    /// A phone submitted a task.
    ///
    /// # Errors
    /// [`HistoryError`] if it cannot be recorded (nothing was started).
    pub async fn submit(
        &mut self,
        from: DeviceId,
        scope: Scope,
        task_id: String,
        text: &str,
        executor: Option<&str>,
    ) -> Result<Outgoing, HistoryError> {
        if !scope.allows_submit() {
            return Ok(to(from, refused(&task_id, "scope", "this device may only view")));
        }
        if task_id.is_empty() || task_id.len() > crate::executor::MAX_ID_LEN {
            return Ok(to(from, refused(&task_id, "bad_request", "task ids are 1 to 256 bytes")));
        }
        if self.active.contains_key(&task_id) || self.history.get(&task_id)?.is_some() {
            // Already accepted (a resubmission): nothing new to say.
            return Ok(Vec::new());
        }
        if self.active.len() >= self.options.max_unfinished {
            let msg = format!(
                "{} tasks are already queued or running on this computer (the most it takes); \
                 submit again when one has finished",
                self.active.len()
            );
            return Ok(to(from, refused(&task_id, "queue_full", &msg)));
        }
        let config = match executor {
            Some(name) => self.executors.iter().find(|e| e.name == name),
            None => self.executors.first(),
        };
        let Some(config) = config else {
            let (code, msg) = if executor.is_some() {
                ("unknown_executor", "no executor with that name is configured")
            } else {
                ("no_executor", "no executor is configured on this computer")
            };
            return Ok(to(from, refused(&task_id, code, msg)));
        };
        let now = now_ms();
        let mut record = TaskRecord {
            task_id: task_id.clone(),
            seq: self.next_seq,
            device: from.to_string(),
            run_by: None,
            executor: config.name.clone(),
            text: text.to_owned(),
            created_ms: now,
            updated_ms: now,
            state: StoredState::Queued,
            resume_token: None,
            pending_resume: None,
            pending_follow_ups: Vec::new(),
            pending_follow_ups_from: Vec::new(),
            next_offset: 0,
            earliest: 0,
        };
        self.next_seq += 1;
        info!(task = %task_id, executor = %config.name, "task accepted");
        // Other phones see it too: shown as it runs (the executor gets it as sent).
        let accepted = TaskEvent::Accepted {
            executor: config.name.clone(),
            text: Some(crate::text::visible(text)),
        };
        let m = self.append(&mut record, accepted)?;
        let mut out = vec![(Audience::Everyone, m)];
        let ahead = self.queue.len() + self.running();
        self.active.insert(task_id.clone(), Active::new(record));
        self.queue.push_back(task_id.clone());
        if ahead >= self.options.max_concurrent
            && let Some(m) = self.append_active(
                &task_id,
                TaskEvent::Progress { text: format!("queued: {ahead} task(s) ahead") },
            )?
        {
            out.push((Audience::Everyone, m));
        }
        out.extend(self.pump().await?);
        Ok(out)
    }

    /// An executor reported something.
    ///
    /// # Errors
    /// [`HistoryError`] if it cannot be recorded.
    pub async fn update(&mut self, u: TaskUpdate) -> Result<Outgoing, HistoryError> {
        let Some(a) = self.active.get_mut(&u.task_id) else { return Ok(Vec::new()) };
        if a.run != u.run {
            return Ok(Vec::new());
        }
        let event = match u.event {
            ExecEvent::Progress(text) => TaskEvent::Progress { text: shown(&text) },
            ExecEvent::ToolCall { call_id, name, input } => TaskEvent::ToolCall {
                call_id,
                name: crate::text::visible(&name),
                input: crate::executor::cap_json(crate::text::visible_json(input)),
            },
            ExecEvent::ToolResult { call_id, output, is_error } => {
                TaskEvent::ToolResult { call_id, output: shown(&output), is_error }
            }
            ExecEvent::ApprovalRequest { approval_id, .. } if a.stopping.is_some() => {
                // The desktop is stopping it: nothing more may be allowed.
                if let Some(c) = &a.controller {
                    let _ = c.control(Control::Decision { approval_id, allow: false }).await;
                }
                return Ok(Vec::new());
            }
            ExecEvent::ApprovalRequest { approval_id, summary, detail } => {
                let summary =
                    crate::text::head_tail(&crate::text::visible(&summary), APPROVAL_SUMMARY_MAX);
                let detail = crate::text::head_tail(
                    &crate::text::visible(&detail),
                    crate::executor::MAX_EVENT_TEXT,
                );
                let timeout = u64::try_from(self.options.approval_timeout.as_millis()).unwrap_or(0);
                let expires_at_ms = now_ms().saturating_add(timeout);
                a.approvals.insert(approval_id.clone(), expires_at_ms);
                TaskEvent::ApprovalRequest { approval_id, summary, detail, expires_at_ms }
            }
            ExecEvent::Denied { tools } => {
                a.denials.executor_reported(tools);
                return Ok(Vec::new());
            }
            ExecEvent::Resumable { token } => {
                a.record.resume_token = Some(token);
                self.history.save(&mut a.record, None)?;
                return Ok(Vec::new());
            }
            ExecEvent::Finished { status, summary } => {
                a.controller = None;
                a.approvals.clear();
                // Cancelled by the desktop: say why.
                let summary = match (a.stopping.take(), status) {
                    (Some(why), FinishStatus::Cancelled) => why,
                    _ => shown(&summary),
                };
                TaskEvent::Finished { status, summary, denied: Vec::new() }
            }
        };
        let mut out: Outgoing = self
            .append_active(&u.task_id, event)?
            .map(|m| vec![(Audience::Everyone, m)])
            .unwrap_or_default();
        out.extend(self.pump().await?);
        Ok(out)
    }

    /// A phone decided an approval. Every pending approval can be decided,
    /// once; the decision reaches the executor once.
    ///
    /// # Errors
    /// [`HistoryError`] if the resolution cannot be recorded.
    pub async fn decide(
        &mut self,
        from: DeviceId,
        scope: Scope,
        task_id: &str,
        approval_id: &str,
        allow: bool,
    ) -> Result<Outgoing, HistoryError> {
        if !scope.allows_approve() {
            return Ok(to(from, refused(task_id, "scope", "this device may not approve")));
        }
        let Some(task) = self.active.get_mut(task_id) else {
            let code =
                if self.history.get(task_id)?.is_some() { "not_pending" } else { "unknown_task" };
            return Ok(to(from, refused(task_id, code, "that approval is not pending")));
        };
        let Some(expires) = task.approvals.remove(approval_id) else {
            return Ok(to(from, refused(task_id, "not_pending", "that approval is not pending")));
        };
        if let Some(c) = &task.controller
            && let Err(e) =
                c.control(Control::Decision { approval_id: approval_id.to_owned(), allow }).await
        {
            // The executor did not get it: still pending; tell the phone.
            task.approvals.insert(approval_id.to_owned(), expires);
            return Ok(to(from, refused(task_id, "executor_unreachable", &e.to_string())));
        }
        let resolved = TaskEvent::ApprovalResolved {
            approval_id: approval_id.to_owned(),
            allow,
            by: format!("phone:{from}"),
        };
        Ok(self
            .append_active(task_id, resolved)?
            .map(|m| vec![(Audience::Everyone, m)])
            .unwrap_or_default())
    }

    /// Deny every approval whose time ran out.
    ///
    /// # Errors
    /// [`HistoryError`] if a resolution cannot be recorded.
    pub async fn expire_approvals(&mut self) -> Result<Outgoing, HistoryError> {
        let now = now_ms();
        let mut due = Vec::new();
        for (task_id, t) in &mut self.active {
            let expired: Vec<String> = t
                .approvals
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                t.approvals.remove(&id);
                if let Some(c) = &t.controller {
                    let _ = c
                        .control(Control::Decision { approval_id: id.clone(), allow: false })
                        .await;
                }
                due.push((task_id.clone(), id));
            }
        }
        let mut out = Vec::new();
        for (task_id, approval_id) in due {
            let resolved =
                TaskEvent::ApprovalResolved { approval_id, allow: false, by: "timeout".into() };
            if let Some(m) = self.append_active(&task_id, resolved)? {
                out.push((Audience::Everyone, m));
            }
        }
        Ok(out)
    }

    /// A follow-up or a cancel from a phone (or the desktop's own CLI).
    ///
    /// # Errors
    /// [`HistoryError`] if it cannot be recorded.
    pub async fn control(
        &mut self,
        from: DeviceId,
        scope: Scope,
        task_id: &str,
        control: Control,
    ) -> Result<Outgoing, HistoryError> {
        if !scope.allows_submit() {
            return Ok(to(from, refused(task_id, "scope", "this device may only view")));
        }
        if !self.active.contains_key(task_id) {
            return self.control_finished(from, task_id, control).await;
        }
        match control {
            Control::Cancel => self.cancel(task_id).await,
            Control::FollowUp(text) => {
                let Some(a) = self.active.get_mut(task_id) else { return Ok(Vec::new()) };
                match &a.controller {
                    None => {
                        let r = &mut a.record;
                        // Older records kept no senders: theirs stay unknown.
                        r.pending_follow_ups_from.resize(r.pending_follow_ups.len(), String::new());
                        r.pending_follow_ups.push(text.clone());
                        r.pending_follow_ups_from.push(from.to_string());
                    }
                    Some(c) => {
                        match c.control(Control::FollowUp(text.clone())).await {
                            Ok(()) => {}
                            // Its executor just exited; the finish is on its way.
                            Err(crate::executor::ExecError::NotRunning) => {
                                return Ok(to(
                                    from,
                                    refused(
                                        task_id,
                                        "finishing",
                                        "the task is finishing; send the follow-up again in a moment",
                                    ),
                                ));
                            }
                            Err(e) => {
                                return Ok(to(
                                    from,
                                    refused(task_id, "not_supported", &e.to_string()),
                                ));
                            }
                        }
                    }
                }
                Ok(self
                    .append_active(
                        task_id,
                        TaskEvent::FollowUp { text: crate::text::visible(&text) },
                    )?
                    .map(|m| vec![(Audience::Everyone, m)])
                    .unwrap_or_default())
            }
            Control::Decision { .. } => Ok(Vec::new()),
        }
    }

    /// A follow-up or cancel for a task that is not queued or running.
    async fn control_finished(
        &mut self,
        from: DeviceId,
        task_id: &str,
        control: Control,
    ) -> Result<Outgoing, HistoryError> {
        let Some(mut record) = self.history.get(task_id)? else {
            return Ok(to(
                from,
                refused(task_id, "unknown_task", "this computer has no such task"),
            ));
        };
        let Control::FollowUp(text) = control else {
            return Ok(to(from, refused(task_id, "finished", "the task has finished")));
        };
        if record.resume_token.is_none() {
            return Ok(to(
                from,
                refused(
                    task_id,
                    "finished",
                    "the task has finished and its executor cannot resume it",
                ),
            ));
        }
        if !self.executors.iter().any(|e| e.name == record.executor) {
            return Ok(to(
                from,
                refused(task_id, "unknown_executor", "its executor is no longer configured"),
            ));
        }
        // Continue it: queued again, with the follow-up as the next run's
        // input, run for the device that sent it.
        record.pending_resume = Some(text.clone());
        record.state = StoredState::Queued;
        let sender = from.to_string();
        record.run_by = (sender != record.device).then_some(sender);
        let m =
            self.append(&mut record, TaskEvent::FollowUp { text: crate::text::visible(&text) })?;
        let id = record.task_id.clone();
        self.active.insert(id.clone(), Active::new(record));
        self.queue.push_back(id);
        let mut out = vec![(Audience::Everyone, m)];
        out.extend(self.pump().await?);
        Ok(out)
    }

    async fn cancel(&mut self, task_id: &str) -> Result<Outgoing, HistoryError> {
        let Some(a) = self.active.get(task_id) else { return Ok(Vec::new()) };
        if let Some(c) = &a.controller {
            // Its `Finished { Cancelled }` arrives as an update.
            let _ = c.control(Control::Cancel).await;
            return Ok(Vec::new());
        }
        self.queue.retain(|q| q != task_id);
        let finished = TaskEvent::Finished {
            status: FinishStatus::Cancelled,
            summary: "cancelled before it started".into(),
            denied: Vec::new(),
        };
        Ok(self
            .append_active(task_id, finished)?
            .map(|m| vec![(Audience::Everyone, m)])
            .unwrap_or_default())
    }

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
        Ok(to(from, Message::TaskList { tasks }))
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
    /// was applied, in the same transaction ([`History::stage_applied`]).
    pub fn stage_applied(&self, link: &str, seq: u64) {
        self.history.stage_applied(link, seq);
    }

    /// Drop the staged marker if no write carried it
    /// ([`History::discard_applied`]).
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

    /// Cancel every running task (shutdown). Queued tasks stay queued on disk
    /// and run after the next start.
    pub async fn cancel_all(&mut self) {
        for a in self.active.values() {
            if let Some(c) = &a.controller {
                let _ = c.control(Control::Cancel).await;
            }
        }
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
