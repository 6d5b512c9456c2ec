//! Tasks: what phones asked this desktop to do, run through the executors
//! the user configured, with every event numbered so a phone can replay a
//! task's history from any offset.
//!
//! The task manager does no I/O towards phones itself: it returns the
//! application messages to send, and the daemon seals and sends them.

use std::collections::HashMap;
use std::time::Duration;

use tandem_proto::DeviceId;
use tandem_proto::message::{FinishStatus, Message, TaskEvent};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::executor::{Control, Controller, ExecEvent, ExecutorConfig, start};
use crate::peers::Scope;

/// How long an approval waits for a decision before it is denied.
pub const APPROVAL_TIMEOUT: Duration = Duration::from_secs(300);

/// An event from a running executor, tagged with its task.
#[derive(Debug)]
pub struct TaskUpdate {
    /// The task.
    pub task_id: String,
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

struct Task {
    history: Vec<Message>,
    controller: Option<Controller>,
    /// Pending approvals and when they expire (Unix ms).
    approvals: HashMap<String, u64>,
    finished: bool,
    /// From [`ExecEvent::Resumable`]: a later follow-up continues the task.
    resume_token: Option<String>,
}

/// All tasks this desktop knows, and the configured executors.
pub struct TaskManager {
    executors: Vec<ExecutorConfig>,
    tasks: HashMap<String, Task>,
    updates: mpsc::Sender<TaskUpdate>,
}

impl std::fmt::Debug for TaskManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskManager").field("tasks", &self.tasks.len()).finish_non_exhaustive()
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

impl TaskManager {
    /// A manager for `executors`; executor events arrive on the returned receiver.
    #[must_use]
    pub fn new(executors: Vec<ExecutorConfig>) -> (Self, mpsc::Receiver<TaskUpdate>) {
        let (updates, rx) = mpsc::channel(256);
        (Self { executors, tasks: HashMap::new(), updates }, rx)
    }

    fn event(&mut self, task_id: &str, event: TaskEvent) -> Option<Message> {
        let task = self.tasks.get_mut(task_id)?;
        let offset = task.history.len() as u64;
        let m = Message::TaskEvent { task_id: task_id.to_owned(), offset, at_ms: now_ms(), event };
        task.history.push(m.clone());
        Some(m)
    }

    /// A phone submitted a task.
    pub fn submit(
        &mut self,
        from: DeviceId,
        scope: Scope,
        task_id: String,
        text: &str,
        executor: Option<&str>,
    ) -> Vec<(Audience, Message)> {
        if !scope.allows_submit() {
            return vec![(
                Audience::Device(from),
                refused(&task_id, "scope", "this device may only view"),
            )];
        }
        if self.tasks.contains_key(&task_id) {
            // Already accepted (a resubmission): nothing new to say.
            return Vec::new();
        }
        let config = match executor {
            Some(name) => self.executors.iter().find(|e| e.name == name),
            None => self.executors.first(),
        };
        let Some(config) = config.cloned() else {
            let (code, msg) = if executor.is_some() {
                ("unknown_executor", "no executor with that name is configured")
            } else {
                ("no_executor", "no executor is configured on this computer")
            };
            return vec![(Audience::Device(from), refused(&task_id, code, msg))];
        };
        let running = match start(&config, text) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "executor failed to start");
                return vec![(
                    Audience::Device(from),
                    refused(&task_id, "executor_failed", &e.to_string()),
                )];
            }
        };
        info!(task = %task_id, executor = %config.name, "task accepted");
        let controller = running.controller();
        self.tasks.insert(
            task_id.clone(),
            Task {
                history: Vec::new(),
                controller: Some(controller),
                approvals: HashMap::new(),
                finished: false,
                resume_token: None,
            },
        );
        let updates = self.updates.clone();
        let id = task_id.clone();
        tokio::spawn(async move {
            let mut running = running;
            while let Some(event) = running.next().await {
                if updates.send(TaskUpdate { task_id: id.clone(), event }).await.is_err() {
                    break;
                }
            }
        });
        self.event(&task_id, TaskEvent::Accepted { executor: config.name })
            .map(|m| vec![(Audience::Everyone, m)])
            .unwrap_or_default()
    }

    /// An executor reported something.
    pub fn update(&mut self, u: TaskUpdate) -> Vec<(Audience, Message)> {
        let event = match u.event {
            ExecEvent::Progress(text) => TaskEvent::Progress { text },
            ExecEvent::ToolCall { call_id, name, input } => {
                TaskEvent::ToolCall { call_id, name, input }
            }
            ExecEvent::ToolResult { call_id, output, is_error } => {
                TaskEvent::ToolResult { call_id, output, is_error }
            }
            ExecEvent::ApprovalRequest { approval_id, summary, detail } => {
                let expires_at_ms =
                    now_ms() + u64::try_from(APPROVAL_TIMEOUT.as_millis()).unwrap_or(0);
                if let Some(t) = self.tasks.get_mut(&u.task_id) {
                    t.approvals.insert(approval_id.clone(), expires_at_ms);
                }
                TaskEvent::ApprovalRequest { approval_id, summary, detail, expires_at_ms }
            }
            ExecEvent::Resumable { token } => {
                if let Some(t) = self.tasks.get_mut(&u.task_id) {
                    t.resume_token = Some(token);
                }
                return Vec::new();
            }
            ExecEvent::Finished { status, summary } => {
                if let Some(t) = self.tasks.get_mut(&u.task_id) {
                    t.finished = true;
                    t.controller = None;
                    t.approvals.clear();
                }
                TaskEvent::Finished { status, summary }
            }
        };
        self.event(&u.task_id, event).map(|m| vec![(Audience::Everyone, m)]).unwrap_or_default()
    }

    /// A phone decided an approval. Every pending approval can be decided,
    /// once; the decision reaches the executor once.
    pub async fn decide(
        &mut self,
        from: DeviceId,
        scope: Scope,
        task_id: &str,
        approval_id: &str,
        allow: bool,
    ) -> Vec<(Audience, Message)> {
        if !scope.allows_approve() {
            return vec![(
                Audience::Device(from),
                refused(task_id, "scope", "this device may not approve"),
            )];
        }
        let Some(task) = self.tasks.get_mut(task_id) else {
            return vec![(
                Audience::Device(from),
                refused(task_id, "unknown_task", "this computer has no such task"),
            )];
        };
        let Some(expires) = task.approvals.remove(approval_id) else {
            return vec![(
                Audience::Device(from),
                refused(task_id, "not_pending", "that approval is not pending"),
            )];
        };
        if let Some(c) = &task.controller
            && let Err(e) =
                c.control(Control::Decision { approval_id: approval_id.to_owned(), allow }).await
        {
            // The executor did not get it: still pending; tell the phone.
            task.approvals.insert(approval_id.to_owned(), expires);
            return vec![(
                Audience::Device(from),
                refused(task_id, "executor_unreachable", &e.to_string()),
            )];
        }
        self.event(
            task_id,
            TaskEvent::ApprovalResolved {
                approval_id: approval_id.to_owned(),
                allow,
                by: format!("phone:{from}"),
            },
        )
        .map(|m| vec![(Audience::Everyone, m)])
        .unwrap_or_default()
    }

    /// Deny every approval whose time ran out.
    pub async fn expire_approvals(&mut self) -> Vec<(Audience, Message)> {
        let now = now_ms();
        let mut due = Vec::new();
        for (task_id, t) in &mut self.tasks {
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
            if let Some(m) = self.event(
                &task_id,
                TaskEvent::ApprovalResolved { approval_id, allow: false, by: "timeout".into() },
            ) {
                out.push((Audience::Everyone, m));
            }
        }
        out
    }

    /// A follow-up or a cancel from a phone.
    pub async fn control(
        &mut self,
        from: DeviceId,
        scope: Scope,
        task_id: &str,
        control: Control,
    ) -> Vec<(Audience, Message)> {
        if !scope.allows_submit() {
            return vec![(
                Audience::Device(from),
                refused(task_id, "scope", "this device may only view"),
            )];
        }
        let Some(task) = self.tasks.get(task_id) else {
            return vec![(
                Audience::Device(from),
                refused(task_id, "unknown_task", "this computer has no such task"),
            )];
        };
        match &task.controller {
            Some(c) => match c.control(control).await {
                Ok(()) => Vec::new(),
                Err(e) => vec![(
                    Audience::Device(from),
                    refused(task_id, "not_supported", &e.to_string()),
                )],
            },
            None => vec![(
                Audience::Device(from),
                refused(task_id, "finished", "the task has finished"),
            )],
        }
    }

    /// A phone asks for a task's history from an offset.
    #[must_use]
    pub fn history(
        &self,
        from: DeviceId,
        task_id: &str,
        from_offset: u64,
    ) -> Vec<(Audience, Message)> {
        let Some(task) = self.tasks.get(task_id) else {
            return vec![(
                Audience::Device(from),
                Message::HistoryUnavailable {
                    task_id: task_id.to_owned(),
                    requested_from: from_offset,
                    earliest: 0,
                },
            )];
        };
        let start = usize::try_from(from_offset).unwrap_or(usize::MAX);
        let mut out: Vec<(Audience, Message)> =
            task.history.iter().skip(start).cloned().map(|m| (Audience::Device(from), m)).collect();
        out.push((
            Audience::Device(from),
            Message::HistoryEnd {
                task_id: task_id.to_owned(),
                next_offset: task.history.len() as u64,
            },
        ));
        out
    }

    /// Whether any task is still running.
    #[must_use]
    pub fn busy(&self) -> bool {
        self.tasks.values().any(|t| !t.finished)
    }

    /// Cancel every running task (shutdown).
    pub async fn cancel_all(&mut self) {
        for t in self.tasks.values() {
            if let Some(c) = &t.controller {
                let _ = c.control(Control::Cancel).await;
            }
        }
    }
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
