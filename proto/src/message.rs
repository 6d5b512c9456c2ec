//! Application messages: what a phone and a desktop say to each other inside
//! the end-to-end channel. JSON objects with a schema version `v` and a
//! `kind`; see `docs/PROTOCOL.md` for every field.
//!
//! Compatibility rules: fields a receiver does not know are ignored; a
//! `kind` (or a task event `type`) it does not know is reported as
//! [`Decoded::Unknown`] — never fatal — so a newer peer can add message kinds
//! without breaking an older one. A message with `v` greater than
//! [`MESSAGE_VERSION`] is still read if its kind is known.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

/// The schema version this crate writes.
pub const MESSAGE_VERSION: u64 = 1;

/// Largest encoded message (fits in one record within one relay frame).
pub const MAX_MESSAGE_LEN: usize = 60 * 1024;

// A `Data` content (25 bytes of header) in a record (18-byte header, 16-byte
// tag) must fit in the payload of one relay frame.
const _: () = assert!(MAX_MESSAGE_LEN + 25 + 18 + 16 <= crate::frame::MAX_PAYLOAD_LEN);

/// Why a message could not be decoded or encoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MessageError {
    /// Not a JSON object.
    #[error("message is not a JSON object: {0}")]
    NotJson(String),
    /// `v` missing or not a positive integer.
    #[error("message has no valid schema version `v`")]
    NoVersion,
    /// `kind` missing or not a string.
    #[error("message has no `kind`")]
    NoKind,
    /// A known kind with missing or mistyped fields.
    #[error("malformed `{kind}` message: {detail}")]
    Malformed {
        /// The kind.
        kind: String,
        /// What serde said.
        detail: String,
    },
    /// Over [`MAX_MESSAGE_LEN`] or a field over its limit.
    #[error("message too large: {0}")]
    TooLarge(String),
}

/// A device describing itself (pairing payloads and `device_info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Shown to the user ("Ana's iPhone", "build-box").
    pub name: String,
    /// `ios`, `android`, `web`, `linux`, `macos`, `windows`, …
    pub platform: String,
    /// The app's version string.
    pub app_version: String,
    /// The device keeps its keys only for as long as it runs (a web page on
    /// an origin that is not a secure context, §15.4): the desktop forgets
    /// it once it has been gone for a while. Omitted when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
}

/// Longest device name, in characters.
pub const MAX_DEVICE_NAME_CHARS: usize = 64;

impl DeviceInfo {
    /// Encode as a standalone JSON object (`{"v":1,"name":…}`), the pairing payload.
    #[must_use]
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&Versioned { v: MESSAGE_VERSION, inner: self }).unwrap_or_default()
    }

    /// Decode a pairing payload.
    ///
    /// # Errors
    /// [`MessageError`] when malformed or over the limits.
    pub fn from_json(bytes: &[u8]) -> Result<Self, MessageError> {
        let obj: Value =
            serde_json::from_slice(bytes).map_err(|e| MessageError::NotJson(e.to_string()))?;
        version(&obj)?;
        let info: DeviceInfo = serde_json::from_value(obj).map_err(|e| {
            MessageError::Malformed { kind: "device_info".into(), detail: e.to_string() }
        })?;
        info.validate()?;
        Ok(info)
    }

    /// Check the limits: a name of at most 64 characters, platform and app
    /// version of at most 32 bytes, no control characters.
    ///
    /// # Errors
    /// [`MessageError::TooLarge`] naming the field.
    pub fn validate(&self) -> Result<(), MessageError> {
        let bad = |f: &str| {
            MessageError::TooLarge(format!("device {f} too long or has control characters"))
        };
        if self.name.chars().count() > MAX_DEVICE_NAME_CHARS
            || self.name.chars().any(char::is_control)
        {
            return Err(bad("name"));
        }
        for (f, s) in [("platform", &self.platform), ("app_version", &self.app_version)] {
            if s.len() > 32 || s.chars().any(char::is_control) {
                return Err(bad(f));
            }
        }
        Ok(())
    }
}

/// `{"v": 1, …fields}`: the version first, then the value's own fields in
/// declaration order. Serialising through a struct (not a `serde_json::Value`
/// map) keeps the byte order independent of serde_json's features, so the
/// golden vectors are stable.
#[derive(Serialize)]
struct Versioned<'a, T: Serialize> {
    v: u64,
    #[serde(flatten)]
    inner: &'a T,
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishStatus {
    /// The executor reported success.
    Succeeded,
    /// The executor failed or exited non-zero.
    Failed,
    /// Cancelled from the phone or the desktop.
    Cancelled,
    /// Refused before it started (scope, unknown executor, …).
    Rejected,
}

/// Something that happened in a task, desktop → phone. Every event has an
/// offset in its task's history, so a phone can replay from any point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TaskEvent {
    /// The desktop queued the task.
    Accepted {
        /// The executor that will run it.
        executor: String,
        /// The project it runs in (a name from the desktop's `choices`),
        /// when the desktop offers projects. Absent otherwise, and from
        /// older desktops.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        project: Option<String>,
        /// The task text as submitted, so every device (and a reloaded
        /// client) can show what was asked. Absent from older desktops.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        /// The session the task continues (`task_submit.resume`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resumed: Option<String>,
    },
    /// A follow-up reached the task (from any device), in order with the
    /// task's other events.
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
        /// Correlates with the result.
        call_id: String,
        /// Tool name.
        name: String,
        /// Tool input (executor-defined JSON).
        input: Value,
    },
    /// A tool's result.
    ToolResult {
        /// The call it answers.
        call_id: String,
        /// Output text (may be truncated by the desktop).
        output: String,
        /// Whether the tool failed.
        is_error: bool,
    },
    /// The change a tool call makes to a file, as a unified diff (sent
    /// right after the `tool_call`, before its approval): what the phone
    /// shows the user deciding it.
    Diff {
        /// The tool call it belongs to.
        call_id: String,
        /// The file, relative to the task's project when inside it.
        path: String,
        /// A unified diff (`---`/`+++` headers, `@@ -a,b +c,d @@` hunks with
        /// the file's line numbers when the desktop could read it, else
        /// numbered from 1 over the changed text alone), cut to fit a
        /// message.
        diff: String,
        /// Lines added.
        added: u64,
        /// Lines removed.
        removed: u64,
    },
    /// A risky step waits for a decision. Every pending one is shown.
    ApprovalRequest {
        /// Correlates with the decision.
        approval_id: String,
        /// One line for the list.
        summary: String,
        /// Everything needed to decide (command, diff, …).
        detail: String,
        /// No answer by then means deny (Unix ms).
        expires_at_ms: u64,
    },
    /// An approval was decided (by whom, and how), so every phone sees it.
    ApprovalResolved {
        /// The approval.
        approval_id: String,
        /// The outcome.
        allow: bool,
        /// `phone:<device id>`, `desktop`, `timeout`, or
        /// `rule:<action> <pattern>`.
        by: String,
        /// The approval rule this decision added (`allow Bash(cargo test)`),
        /// when the phone asked to remember it and could.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
    },
    /// The task ended.
    Finished {
        /// How.
        status: FinishStatus,
        /// The final answer or error.
        summary: String,
        /// The tools the task was not allowed to use (an approval denied,
        /// Claude Code's permission denials), each once, in the order they
        /// were first denied: a `succeeded` task with a non-empty list did
        /// not do everything it tried. Absent when none (older desktops
        /// never send it; older phones ignore it).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        denied: Vec<String>,
        /// The tools whose results were errors (a command that failed, a
        /// file that could not be written), each once, in the order they
        /// first failed. Absent when none.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        failed: Vec<String>,
        /// The approvals no one answered in time (their summaries): denied by
        /// the timeout, listed in `denied` too. Absent when none.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        expired: Vec<String>,
    },
}

/// Where a task stands, for a list of tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for a free executor slot.
    Queued,
    /// Its executor is running.
    Running,
    /// It ended (see `status`).
    Finished,
}

/// One task in a [`Message::TaskList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSummary {
    /// The task.
    pub task_id: String,
    /// The start of its text (the full text is in its `accepted` event).
    pub title: String,
    /// The executor running it.
    pub executor: String,
    /// The project it runs in, if the desktop offers projects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Where it stands.
    pub state: TaskState,
    /// How it ended, once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<FinishStatus>,
    /// The offset its next event will have (its history's length).
    pub next_offset: u64,
    /// When it last changed (Unix ms, desktop clock).
    pub updated_ms: u64,
}

/// An executor a desktop offers, in a [`Message::Choices`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorChoice {
    /// Its name in the desktop's configuration (what `task_submit.executor`
    /// names).
    pub name: String,
    /// What it runs: `claude`, `acp`, `jsonl`, `command`, or a kind a newer
    /// desktop knows (shown as it is).
    pub kind: String,
}

/// A project a desktop offers, in a [`Message::Choices`]: a named working
/// directory from its configuration (the directory itself is not sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectChoice {
    /// Its name (what `task_submit.workspace` names).
    pub name: String,
}

/// Most sessions in one [`Message::Sessions`].
pub const MAX_SESSIONS: usize = 50;

/// One session an executor can continue, in a [`Message::Sessions`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSummary {
    /// The agent's session id (what `task_submit.resume` names).
    pub id: String,
    /// Its summary, or the start of its first prompt.
    pub title: String,
    /// When it last changed (Unix ms, desktop clock).
    pub updated_ms: u64,
    /// The Tandem task that ran it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
}

/// A secret string (a key) in a message: compared and serialised as it
/// is, never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// One application message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    /// Phone → desktop: run a task.
    TaskSubmit {
        /// Chosen by the phone (a UUID or similar); idempotency key.
        task_id: String,
        /// What to do.
        text: String,
        /// The project to run it in (a name from the desktop's `choices`);
        /// absent: the desktop's default. An unknown one is refused
        /// (`unknown_project`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workspace: Option<String>,
        /// The executor to run it with (a name from the desktop's
        /// `choices`); absent: the default. An unknown one is refused
        /// (`unknown_executor`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        executor: Option<String>,
        /// A session to continue (an id from the desktop's `sessions` for
        /// the same executor and project): the text is its next prompt. An
        /// id the desktop does not list is refused (`unknown_session`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<String>,
    },
    /// Phone → desktop: more input for a running or resumable task.
    FollowUp {
        /// The task.
        task_id: String,
        /// The follow-up.
        text: String,
    },
    /// Phone → desktop: stop a task.
    Cancel {
        /// The task.
        task_id: String,
    },
    /// Phone → desktop: answer an approval request.
    ApprovalDecision {
        /// The task.
        task_id: String,
        /// The request.
        approval_id: String,
        /// Allow or deny.
        allow: bool,
        /// With `allow`: also allow this tool use from now on in the task's
        /// project and executor (an approval rule the desktop adds, if the
        /// device's scope lets it). Ignored with a deny.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        remember: bool,
    },
    /// Phone → desktop: the sessions an executor can continue in a project
    /// (answered with [`Message::Sessions`]).
    SessionsRequest {
        /// The executor (absent: the default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        executor: Option<String>,
        /// The project (absent: the default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workspace: Option<String>,
    },
    /// Desktop → phone: the recent sessions of an executor in a project,
    /// newest first, that a `task_submit` may continue (`resume`).
    Sessions {
        /// The executor they belong to.
        executor: String,
        /// The project, when the desktop offers projects.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workspace: Option<String>,
        /// The sessions, newest first (at most [`MAX_SESSIONS`]).
        sessions: Vec<SessionSummary>,
    },
    /// Phone → desktop: replay a task's events from an offset (all tasks'
    /// recent events when `task_id` is absent).
    HistoryRequest {
        /// The task, or all.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task_id: Option<String>,
        /// First offset wanted.
        from_offset: u64,
    },
    /// Desktop → phone: one task event.
    TaskEvent {
        /// The task.
        task_id: String,
        /// Position in the task's history (from 0, no gaps).
        offset: u64,
        /// When it happened (Unix ms, desktop clock).
        at_ms: u64,
        /// What happened.
        event: TaskEvent,
    },
    /// Desktop → phone: a history replay is complete up to `next_offset`.
    HistoryEnd {
        /// The task.
        task_id: String,
        /// The offset after the last event sent: the next live event's
        /// offset, unless `more` is set.
        next_offset: u64,
        /// The reply was one page: ask again from `next_offset` for the rest.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        more: bool,
    },
    /// Desktop → phone: the answer to a `history_request` without a task:
    /// the most recent tasks, newest first.
    TaskList {
        /// One line per task.
        tasks: Vec<TaskSummary>,
    },
    /// Desktop → phone: the requested history is no longer kept. Never a
    /// silent gap: the phone shows that events before `earliest` are gone.
    HistoryUnavailable {
        /// The task.
        task_id: String,
        /// What was asked for.
        requested_from: u64,
        /// The oldest offset still kept.
        earliest: u64,
    },
    /// Either way: a device describing itself (name changes, app updates).
    DeviceInfo(DeviceInfo),
    /// Desktop → phone: this phone sent nothing for `idle_secs`, so the
    /// desktop stopped streaming progress to it. Approval requests, their
    /// resolutions and finishes still arrive. Any message from the phone
    /// (typically a `history_request` from its last offset) re-attaches it.
    Detached {
        /// The idle time that detached it.
        idle_secs: u64,
    },
    /// Desktop → phone: the executors and projects a phone may pick for a
    /// task, and the defaults (sent with every [`Message::TaskList`]).
    Choices {
        /// Every configured executor, the default first.
        executors: Vec<ExecutorChoice>,
        /// Every configured project, the default first; empty when the
        /// desktop offers none (each executor runs in its own directory).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        projects: Vec<ProjectChoice>,
        /// The executor a task without one runs with.
        default_executor: String,
        /// The project a task without one runs in.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        default_project: Option<String>,
    },
    /// Phone → desktop: wake me with push notifications sealed with this
    /// key (or stop: `enabled: false`). Sent again with a fresh key when
    /// the session renews (docs/PUSH.md).
    PushSetup {
        /// Push on (with the key below) or off (the desktop forgets the key).
        enabled: bool,
        /// The push key's id: 16 lowercase hex digits.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_id: Option<String>,
        /// The push key: 64 lowercase hex digits.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<Secret>,
        /// Push approval requests (absent: yes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approvals: Option<bool>,
        /// Push finished tasks (absent: yes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        finished: Option<bool>,
        /// Push a notice of messages that never reached the desktop (absent:
        /// yes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        missing: Option<bool>,
    },
    /// Desktop → phone: a request was refused.
    Refused {
        /// The task or approval it concerns, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task_id: Option<String>,
        /// `scope`, `unknown_task`, `unknown_executor`, `unknown_project`,
        /// `busy`, …
        code: String,
        /// Human-readable detail.
        message: String,
    },
}

/// The kinds this build knows.
pub const KNOWN_KINDS: &[&str] = &[
    "task_submit",
    "follow_up",
    "cancel",
    "approval_decision",
    "history_request",
    "task_event",
    "history_end",
    "task_list",
    "history_unavailable",
    "device_info",
    "detached",
    "choices",
    "sessions_request",
    "sessions",
    "refused",
    "push_setup",
];

/// The task event types this build knows.
pub const KNOWN_EVENT_TYPES: &[&str] = &[
    "accepted",
    "follow_up",
    "progress",
    "tool_call",
    "tool_result",
    "diff",
    "approval_request",
    "approval_resolved",
    "finished",
];

/// The result of decoding a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A message this build understands.
    Known(Message),
    /// A well-formed message of a kind (or event type) this build does not
    /// know, from a newer peer: report it, do not fail.
    Unknown {
        /// The schema version it declared.
        v: u64,
        /// Its kind (`task_event/<type>` for an unknown event type).
        kind: String,
    },
}

fn version(obj: &Value) -> Result<u64, MessageError> {
    match obj.get("v").and_then(Value::as_u64) {
        Some(v) if v >= 1 => Ok(v),
        _ => Err(MessageError::NoVersion),
    }
}

impl Message {
    /// Encode as JSON with `"v": 1`.
    ///
    /// # Errors
    /// [`MessageError::TooLarge`] over [`MAX_MESSAGE_LEN`] or for a
    /// `device_info` over its field limits.
    pub fn encode(&self) -> Result<Vec<u8>, MessageError> {
        if let Message::DeviceInfo(info) = self {
            info.validate()?;
        }
        let bytes = serde_json::to_vec(&Versioned { v: MESSAGE_VERSION, inner: self })
            .map_err(|e| MessageError::Malformed { kind: "?".into(), detail: e.to_string() })?;
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(MessageError::TooLarge(format!("{} bytes", bytes.len())));
        }
        Ok(bytes)
    }

    /// Decode JSON bytes.
    ///
    /// # Errors
    /// [`MessageError`] for non-JSON, a missing `v` or `kind`, a known kind
    /// with bad fields, or an over-long message. Unknown kinds are not errors.
    pub fn decode(bytes: &[u8]) -> Result<Decoded, MessageError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(MessageError::TooLarge(format!("{} bytes", bytes.len())));
        }
        let obj: Value =
            serde_json::from_slice(bytes).map_err(|e| MessageError::NotJson(e.to_string()))?;
        if !obj.is_object() {
            return Err(MessageError::NotJson("not an object".into()));
        }
        let v = version(&obj)?;
        let kind = obj.get("kind").and_then(Value::as_str).ok_or(MessageError::NoKind)?.to_owned();
        if !KNOWN_KINDS.contains(&kind.as_str()) {
            return Ok(Decoded::Unknown { v, kind });
        }
        if kind == "task_event" {
            let ty = obj.get("event").and_then(|e| e.get("type")).and_then(Value::as_str);
            if let Some(ty) = ty.filter(|t| !KNOWN_EVENT_TYPES.contains(t)) {
                return Ok(Decoded::Unknown { v, kind: format!("task_event/{ty}") });
            }
        }
        let msg: Message = serde_json::from_value(obj)
            .map_err(|e| MessageError::Malformed { kind: kind.clone(), detail: e.to_string() })?;
        if let Message::DeviceInfo(info) = &msg {
            info.validate()?;
        }
        Ok(Decoded::Known(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wire_shape() {
        let m = Message::TaskSubmit {
            task_id: "t1".into(),
            text: "fix the failing test".into(),
            workspace: None,
            executor: Some("claude".into()),
            resume: None,
        };
        let b = m.encode().unwrap();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["kind"], "task_submit");
        assert!(v.get("workspace").is_none());
        assert_eq!(Message::decode(&b).unwrap(), Decoded::Known(m));
        let ev = Message::TaskEvent {
            task_id: "t1".into(),
            offset: 3,
            at_ms: 5,
            event: TaskEvent::ToolCall {
                call_id: "c".into(),
                name: "bash".into(),
                input: serde_json::json!({"cmd":"ls"}),
            },
        };
        assert_eq!(Message::decode(&ev.encode().unwrap()).unwrap(), Decoded::Known(ev));
    }

    #[test]
    fn unknown_kinds_are_reported_not_fatal() {
        assert_eq!(
            Message::decode(br#"{"v":2,"kind":"screen_share","x":1}"#).unwrap(),
            Decoded::Unknown { v: 2, kind: "screen_share".into() }
        );
        assert_eq!(
            Message::decode(br#"{"v":1,"kind":"task_event","task_id":"t","offset":0,"at_ms":0,"event":{"type":"screen_capture"}}"#)
                .unwrap(),
            Decoded::Unknown { v: 1, kind: "task_event/screen_capture".into() }
        );
        // A newer version of a known kind with extra fields still reads.
        assert!(matches!(
            Message::decode(br#"{"v":3,"kind":"cancel","task_id":"t","reason":"new field"}"#)
                .unwrap(),
            Decoded::Known(Message::Cancel { .. })
        ));
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert!(matches!(Message::decode(b"nope"), Err(MessageError::NotJson(_))));
        assert!(matches!(Message::decode(b"[1]"), Err(MessageError::NotJson(_))));
        assert_eq!(Message::decode(br#"{"kind":"cancel"}"#), Err(MessageError::NoVersion));
        assert_eq!(Message::decode(br#"{"v":0,"kind":"cancel"}"#), Err(MessageError::NoVersion));
        assert_eq!(Message::decode(br#"{"v":1}"#), Err(MessageError::NoKind));
        assert!(matches!(
            Message::decode(br#"{"v":1,"kind":"cancel"}"#),
            Err(MessageError::Malformed { .. })
        ));
        let huge = Message::TaskEvent {
            task_id: "t".into(),
            offset: 0,
            at_ms: 0,
            event: TaskEvent::Progress { text: "x".repeat(MAX_MESSAGE_LEN) },
        };
        assert!(matches!(huge.encode(), Err(MessageError::TooLarge(_))));
    }

    #[test]
    fn device_info_limits() {
        let ok = DeviceInfo {
            name: "Ana's phone".into(),
            platform: "ios".into(),
            app_version: "1.0".into(),
            ephemeral: false,
        };
        assert_eq!(DeviceInfo::from_json(&ok.to_json()).unwrap(), ok);
        assert!(!String::from_utf8_lossy(&ok.to_json()).contains("ephemeral"));
        let web = DeviceInfo { ephemeral: true, ..ok.clone() };
        assert!(String::from_utf8_lossy(&web.to_json()).ends_with(r#","ephemeral":true}"#));
        assert_eq!(DeviceInfo::from_json(&web.to_json()).unwrap(), web);
        let bad = DeviceInfo { name: "x".repeat(65), ..ok.clone() };
        assert!(DeviceInfo::from_json(&bad.to_json()).is_err());
        let bad = DeviceInfo { name: "a\u{1b}[2J".into(), ..ok };
        assert!(DeviceInfo::from_json(&bad.to_json()).is_err());
    }
}
