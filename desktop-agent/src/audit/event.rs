//! What the log records: [`AuditEvent`] (one instruction or decision) and
//! [`AuditEntry`] (one line: an event with its place in the hash chain).

use serde::{Deserialize, Serialize};

/// One recorded instruction or decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A pairing was confirmed.
    Paired {
        /// The new peer's device id.
        device: String,
        /// The name it presented.
        name: String,
        /// The scope the desktop user gave it (absent in entries written
        /// before the scope was chosen at pairing: those got `approve`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
        /// Whether it keeps its keys only while it runs (written when true).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        ephemeral: bool,
    },
    /// A pairing was refused (SAS mismatch, user said no, timeout).
    PairingRefused {
        /// The would-be peer's device id.
        device: String,
    },
    /// A paired device was revoked.
    Revoked {
        /// The revoked device id.
        device: String,
    },
    /// The agent decided on its own to forget a device, and revoked it (the
    /// `revoked` entry comes first): an ephemeral device gone too long, or a
    /// pairing that never finished.
    Forgotten {
        /// The device id.
        device: String,
        /// Why, for a person: `ephemeral device gone for 43200 s`, …
        reason: String,
    },
    /// A device's scope was changed.
    ScopeChanged {
        /// The device id.
        device: String,
        /// Its new scope.
        scope: String,
    },
    /// A device submitted a task and it was accepted.
    TaskSubmitted {
        /// The submitting device id.
        device: String,
        /// The task id.
        task_id: String,
        /// The executor requested, if any.
        executor: Option<String>,
        /// The project requested, if any (absent in older lines).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        project: Option<String>,
        /// The session it asked to continue, if any (absent in older lines).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<String>,
        /// [`text_hash`](super::text_hash) of the task text (never the text itself).
        text_hash: String,
        /// The task text's length in bytes.
        text_len: usize,
        /// The phone's message it came from, `<device>@<pairing tag>#<seq>`
        /// (absent for the desktop's own, and in older lines): a message
        /// delivered again after a crash is not audited twice.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instruction: Option<String>,
    },
    /// A device submitted a task and it was refused.
    TaskRefused {
        /// The submitting device id.
        device: String,
        /// The task id.
        task_id: String,
        /// Why (an error code).
        code: String,
    },
    /// A device sent a follow-up to a running task.
    FollowUp {
        /// The sending device id.
        device: String,
        /// The task id.
        task_id: String,
        /// [`text_hash`](super::text_hash) of the follow-up text.
        text_hash: String,
        /// The phone's message it came from, `<device>@<pairing tag>#<seq>`
        /// (absent for the desktop's own, and in older lines): a message
        /// delivered again after a crash is not audited twice.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instruction: Option<String>,
    },
    /// A task was cancelled.
    Cancelled {
        /// Who cancelled: a device id or `desktop`.
        by: String,
        /// The task id.
        task_id: String,
        /// The phone's message it came from, `<device>@<pairing tag>#<seq>`
        /// (absent for the desktop's own, and in older lines): a message
        /// delivered again after a crash is not audited twice.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instruction: Option<String>,
    },
    /// A task asked for approval of an action.
    ApprovalRequested {
        /// The task id.
        task_id: String,
        /// The approval id.
        approval_id: String,
        /// [`text_hash`](super::text_hash) of the summary shown to the approver.
        summary_hash: String,
    },
    /// An approval was decided.
    ApprovalDecided {
        /// The task id.
        task_id: String,
        /// The approval id.
        approval_id: String,
        /// Whether the action was allowed.
        allow: bool,
        /// Who decided: a device id, `desktop` or `timeout`.
        by: String,
    },
    /// The desktop user removed a rule a phone had added (`tandem rules
    /// remove`).
    RuleRemoved {
        /// The rule, as `allow Name(subject)`.
        rule: String,
        /// The device that had added it.
        added_by: String,
    },
    /// A phone's "always allow" added an approval rule (`rules.json`).
    RuleAdded {
        /// The task whose approval it came from.
        task_id: String,
        /// The approval.
        approval_id: String,
        /// The rule, as `allow Name(subject)`.
        rule: String,
        /// Who added it (`phone:<device id>`).
        by: String,
    },
    /// A task ended.
    TaskFinished {
        /// The task id.
        task_id: String,
        /// How it ended.
        status: String,
    },
    /// The desktop stopped a task because the device it runs for lost the
    /// right to run tasks: cancelled while running, or dropped from the
    /// queue before it started (its `task_finished` follows).
    TaskStopped {
        /// The task id.
        task_id: String,
        /// The device it ran for.
        device: String,
        /// `revoked` (no longer paired) or `scope:<scope>` (lowered below
        /// `submit`).
        reason: String,
        /// `running` (cancelled) or `queued` (dropped, never started).
        was: String,
    },
    /// Damaged local state was set aside at start ([`crate::damage`]):
    /// the agent started without it.
    SetAside {
        /// The damaged file (`audit.log`, `peers/<device id>.json`,
        /// `tasks.redb`).
        file: String,
        /// The name it (or its damaged tail) has now, in the same directory.
        moved_to: String,
        /// What was wrong.
        reason: String,
    },
    /// A phone's messages were lost before they reached this desktop (its
    /// link reported a gap it cannot fill: `ResyncNeeded`).
    MessagesLost {
        /// The phone.
        device: String,
        /// The first lost sequence number.
        from: u64,
        /// The last lost sequence number.
        to: u64,
    },
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, from 1.
    pub seq: u64,
    /// When, in Unix milliseconds (never less than the previous entry's).
    pub at_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: AuditEvent,
    /// The previous entry's `hash` (hex), or [`GENESIS_PREV`](super::GENESIS_PREV).
    pub prev: String,
    /// This entry's chain hash (hex); see the [`crate::audit`] docs.
    pub hash: String,
}
