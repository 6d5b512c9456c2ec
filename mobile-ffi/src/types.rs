//! Records and enums the app sees: desktops, task events, history pages,
//! task lists. Each mirrors a `tandem-phone` or `tandem-proto` type; the
//! conversions are the only code here.

use tandem_proto::message as proto;

/// A paired desktop.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Desktop {
    /// The desktop's device id (stable; pass it to every per-desktop call).
    pub desktop_id: String,
    /// What the desktop is called (`tandem --name`, else its host name).
    pub name: String,
    /// The relay both devices use.
    pub relay_url: String,
    /// Whether the desktop is connected to the relay now, as far as the
    /// phone knows.
    pub online: bool,
    /// Whether the desktop is running or queuing tasks.
    pub busy: bool,
    /// The phone's own connection for this desktop.
    pub connection: ConnectionState,
}

impl From<tandem_phone::DesktopSummary> for Desktop {
    fn from(d: tandem_phone::DesktopSummary) -> Self {
        Self {
            desktop_id: d.desktop_id,
            name: d.name,
            relay_url: d.relay_url,
            online: d.online,
            busy: d.busy,
            connection: d.connection.into(),
        }
    }
}

/// The phone's connection to the relay for one desktop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ConnectionState {
    /// Connecting (first time after start or after a network change).
    Connecting,
    /// Connected and authenticated; messages flow.
    Connected,
    /// Lost; the next attempt is in `retry_in_ms` milliseconds (backoff with
    /// jitter). Messages submitted meanwhile wait in the outbox.
    Reconnecting {
        /// Milliseconds until the next attempt.
        retry_in_ms: u64,
    },
    /// The desktop revoked this phone. Nothing more is sent; forget the
    /// desktop and pair again.
    Revoked,
}

impl From<tandem_phone::ConnectionState> for ConnectionState {
    fn from(s: tandem_phone::ConnectionState) -> Self {
        match s {
            tandem_phone::ConnectionState::Connecting => Self::Connecting,
            tandem_phone::ConnectionState::Connected => Self::Connected,
            tandem_phone::ConnectionState::Reconnecting { retry_in_ms } => {
                Self::Reconnecting { retry_in_ms }
            }
            tandem_phone::ConnectionState::Revoked => Self::Revoked,
        }
    }
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum FinishStatus {
    /// The executor reported success.
    Succeeded,
    /// The executor failed or exited non-zero.
    Failed,
    /// Cancelled from a phone or the desktop.
    Cancelled,
    /// Refused before it started (scope, unknown executor, …).
    Rejected,
}

impl From<proto::FinishStatus> for FinishStatus {
    fn from(s: proto::FinishStatus) -> Self {
        match s {
            proto::FinishStatus::Succeeded => Self::Succeeded,
            proto::FinishStatus::Failed => Self::Failed,
            proto::FinishStatus::Cancelled => Self::Cancelled,
            proto::FinishStatus::Rejected => Self::Rejected,
        }
    }
}

/// Something that happened in a task.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum TaskEvent {
    /// The desktop queued the task.
    Accepted {
        /// The executor that will run it.
        executor: String,
        /// The project it runs in, when the desktop offers projects.
        project: Option<String>,
        /// The task text as submitted (absent from older desktops).
        text: Option<String>,
        /// The session it continues (a submit with `resume`).
        resumed: Option<String>,
    },
    /// A follow-up reached the task (from any device).
    FollowUp {
        /// The follow-up text.
        text: String,
    },
    /// Free-form progress text.
    Progress {
        /// The text.
        text: String,
    },
    /// The executor called a tool.
    ToolCall {
        /// Correlates with the [`TaskEvent::ToolResult`].
        call_id: String,
        /// The tool's name.
        name: String,
        /// The tool's input: executor-defined JSON, as text.
        input_json: String,
    },
    /// A tool's result.
    ToolResult {
        /// The call it answers.
        call_id: String,
        /// Output text (the desktop may truncate it).
        output: String,
        /// Whether the tool failed.
        is_error: bool,
    },
    /// The change a tool call makes to a file, as a unified diff (after the
    /// call, before its approval): show it collapsed, file name and `+added
    /// -removed` first.
    Diff {
        /// The call it belongs to.
        call_id: String,
        /// The file, relative to the task's project when inside it.
        path: String,
        /// The unified diff (`@@ -a,b +c,d @@` hunks carry line numbers).
        diff: String,
        /// Lines added.
        added: u64,
        /// Lines removed.
        removed: u64,
    },
    /// A risky step waits for a decision: answer with
    /// `TandemClient::decide`. No answer by `expires_at_ms` means deny.
    ApprovalRequest {
        /// Pass it back in the decision.
        approval_id: String,
        /// One line for a list.
        summary: String,
        /// Everything needed to decide (command, diff, …).
        detail: String,
        /// Deadline (Unix milliseconds, desktop clock).
        expires_at_ms: u64,
    },
    /// An approval was decided, by this phone, another one, the desktop or
    /// the timeout.
    ApprovalResolved {
        /// The approval.
        approval_id: String,
        /// The outcome.
        allow: bool,
        /// `phone:<device id>`, `desktop`, `timeout` or `rule:<rule>`.
        by: String,
        /// The rule this decision added ("always allow"), if it did.
        rule: Option<String>,
    },
    /// The task ended.
    Finished {
        /// How.
        status: FinishStatus,
        /// The final answer or error.
        summary: String,
        /// The tools the task was not allowed to use (PROTOCOL.md §15.3.1
        /// `denied`); empty when none.
        denied: Vec<String>,
        /// The tools whose results were errors (`failed`); empty when none.
        failed: Vec<String>,
        /// The approvals no one answered in time, by summary (`expired`).
        expired: Vec<String>,
    },
}

impl From<proto::TaskEvent> for TaskEvent {
    fn from(e: proto::TaskEvent) -> Self {
        match e {
            proto::TaskEvent::Accepted { executor, project, text, resumed } => {
                Self::Accepted { executor, project, text, resumed }
            }
            proto::TaskEvent::FollowUp { text } => Self::FollowUp { text },
            proto::TaskEvent::Progress { text } => Self::Progress { text },
            proto::TaskEvent::ToolCall { call_id, name, input } => {
                Self::ToolCall { call_id, name, input_json: input.to_string() }
            }
            proto::TaskEvent::ToolResult { call_id, output, is_error } => {
                Self::ToolResult { call_id, output, is_error }
            }
            proto::TaskEvent::Diff { call_id, path, diff, added, removed } => {
                Self::Diff { call_id, path, diff, added, removed }
            }
            proto::TaskEvent::ApprovalRequest { approval_id, summary, detail, expires_at_ms } => {
                Self::ApprovalRequest { approval_id, summary, detail, expires_at_ms }
            }
            proto::TaskEvent::ApprovalResolved { approval_id, allow, by, rule } => {
                Self::ApprovalResolved { approval_id, allow, by, rule }
            }
            proto::TaskEvent::Finished { status, summary, denied, failed, expired } => {
                Self::Finished { status: status.into(), summary, denied, failed, expired }
            }
        }
    }
}

/// One task event with its place in the task's history.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct TaskEventRecord {
    /// The desktop running the task.
    pub desktop_id: String,
    /// The task.
    pub task_id: String,
    /// The event's offset in the task's history (0, 1, 2, …: each once, in
    /// order). Keep the next one to resume with `TandemClient::history`.
    pub offset: u64,
    /// When it happened (Unix milliseconds, desktop clock).
    pub at_ms: u64,
    /// What happened.
    pub event: TaskEvent,
}

impl From<tandem_phone::TaskEventRecord> for TaskEventRecord {
    fn from(r: tandem_phone::TaskEventRecord) -> Self {
        Self {
            desktop_id: r.desktop_id,
            task_id: r.task_id,
            offset: r.offset,
            at_ms: r.at_ms,
            event: r.event.into(),
        }
    }
}

/// A page of a task's history.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct HistoryPage {
    /// Events in offset order.
    pub events: Vec<TaskEventRecord>,
    /// Ask from here for the next page.
    pub next_offset: u64,
    /// Whether the desktop has more events after this page.
    pub more: bool,
    /// Events before this offset are no longer kept by the desktop (it
    /// prunes old history); `None` when nothing asked for was pruned.
    pub unavailable_before: Option<u64>,
}

impl From<tandem_phone::HistoryPage> for HistoryPage {
    fn from(p: tandem_phone::HistoryPage) -> Self {
        Self {
            events: p.events.into_iter().map(Into::into).collect(),
            next_offset: p.next_offset,
            more: p.more,
            unavailable_before: p.unavailable_before,
        }
    }
}

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum TaskState {
    /// Waiting for a free executor slot.
    Queued,
    /// Its executor is running.
    Running,
    /// It ended (see `status`).
    Finished,
}

impl From<proto::TaskState> for TaskState {
    fn from(s: proto::TaskState) -> Self {
        match s {
            proto::TaskState::Queued => Self::Queued,
            proto::TaskState::Running => Self::Running,
            proto::TaskState::Finished => Self::Finished,
        }
    }
}

/// One task in a desktop's task list.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct TaskSummary {
    /// The task.
    pub task_id: String,
    /// The start of its text.
    pub title: String,
    /// The executor running it.
    pub executor: String,
    /// The project it runs in, when the desktop offers projects.
    pub project: Option<String>,
    /// Where it stands.
    pub state: TaskState,
    /// How it ended, once finished.
    pub status: Option<FinishStatus>,
    /// The offset its next event will have (its history's length).
    pub next_offset: u64,
    /// When it last changed (Unix milliseconds, desktop clock).
    pub updated_ms: u64,
}

impl From<proto::TaskSummary> for TaskSummary {
    fn from(t: proto::TaskSummary) -> Self {
        Self {
            task_id: t.task_id,
            title: t.title,
            executor: t.executor,
            project: t.project,
            state: t.state.into(),
            status: t.status.map(Into::into),
            next_offset: t.next_offset,
            updated_ms: t.updated_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_input_becomes_json_text_and_status_maps() {
        let e: TaskEvent = proto::TaskEvent::ToolCall {
            call_id: "c1".into(),
            name: "bash".into(),
            input: serde_json::json!({"command": "cargo test"}),
        }
        .into();
        let TaskEvent::ToolCall { input_json, .. } = e else { panic!("{e:?}") };
        let back: serde_json::Value = serde_json::from_str(&input_json).unwrap();
        assert_eq!(back["command"], "cargo test");

        let f: TaskEvent = proto::TaskEvent::Finished {
            status: proto::FinishStatus::Cancelled,
            summary: "stop".into(),
            denied: vec!["Bash".into()],
            expired: Vec::new(),
            failed: Vec::new(),
        }
        .into();
        assert_eq!(
            f,
            TaskEvent::Finished {
                status: FinishStatus::Cancelled,
                summary: "stop".into(),
                denied: vec!["Bash".into()],
                expired: Vec::new(),
                failed: Vec::new(),
            }
        );
    }
}

/// An executor a desktop offers.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ExecutorChoice {
    /// Its name (what `submit`'s `executor` takes).
    pub name: String,
    /// What it runs: `claude`, `acp`, `jsonl`, `command`, or a newer kind.
    pub kind: String,
}

/// What a desktop offers for a task: its executors and projects (named
/// working directories) and the defaults. Names not offered are refused
/// (`unknown_executor`, `unknown_project`).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Choices {
    /// Every executor, the default first.
    pub executors: Vec<ExecutorChoice>,
    /// Every project's name, the default first (empty: none offered; each
    /// executor runs in its own directory).
    pub projects: Vec<String>,
    /// The executor a task without one runs with.
    pub default_executor: String,
    /// The project a task without one runs in.
    pub default_project: Option<String>,
}

impl From<tandem_phone::Choices> for Choices {
    fn from(c: tandem_phone::Choices) -> Self {
        Self {
            executors: c
                .executors
                .into_iter()
                .map(|e| ExecutorChoice { name: e.name, kind: e.kind })
                .collect(),
            projects: c.projects.into_iter().map(|p| p.name).collect(),
            default_executor: c.default_executor,
            default_project: c.default_project,
        }
    }
}

/// A session an executor can continue (Claude Code's, including those
/// started at the desktop's terminal), from [`crate::TandemClient::sessions`].
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Session {
    /// The session id: what `submit_resume` continues.
    pub id: String,
    /// Its summary, or the start of its first prompt.
    pub title: String,
    /// When it last changed (Unix ms, desktop clock).
    pub updated_ms: u64,
    /// The task that ran it, when a phone's task did.
    pub task_id: Option<String>,
}

impl From<tandem_proto::message::SessionSummary> for Session {
    fn from(s: tandem_proto::message::SessionSummary) -> Self {
        Self { id: s.id, title: s.title, updated_ms: s.updated_ms, task_id: s.task_id }
    }
}
