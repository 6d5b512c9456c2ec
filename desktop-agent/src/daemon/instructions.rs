//! Applying what a phone asks, exactly once (`docs/PROTOCOL.md` §13.5 rule
//! 3): an instruction (`task_submit`, `follow_up`, `cancel`,
//! `approval_decision`) is applied first, its effect and an *applied
//! marker* (the link and the message's sequence number) written to
//! `tasks.redb` in one transaction; only then is the link's receipt saved
//! and the relay delivery acknowledged. A crash in between makes the relay
//! deliver the record again to a link that accepts it again; the marker
//! says it was applied, so it is not applied twice. An instruction that
//! recorded nothing (a refusal) leaves no marker: it is decided again if
//! the agent died before the link's receipt was saved; after, its reply is
//! in the outbox, saved with the receipt (`daemon/deliver.rs`). Requests
//! that change nothing (history, task lists) are answered again.
//!
//! The audit line of an instruction carries the message it came from
//! (`instruction`: the link and the sequence number) and is written only
//! if the log has no line for that message yet (`daemon/auditing.rs`): an
//! instruction audited before a crash is not audited again when it is
//! delivered again.

use tandem_proto::DeviceId;
use tandem_proto::delivery::OutboxRoom;
use tandem_proto::message::{Decoded, Message};
use tracing::{debug, info, warn};

use super::{Daemon, DaemonError};
use crate::audit::{AuditEvent, text_hash};
use crate::crashpoint::{self, Steps, crash_point};
use crate::executor::Control;
use crate::peers::Scope;
use crate::tasks::{Outgoing, SessionsAnswer, Wanted};

/// The key of a link's applied marker: the device and the pairing (a new
/// pairing of the same device numbers its messages from the start again).
pub(super) fn link_key(device: DeviceId, link: &tandem_proto::link::Link) -> String {
    format!("{device}@{}", data_encoding::HEXLOWER.encode(&link.pairing_tag()))
}

/// The crash points of an instruction; `None` for what is not one.
fn steps_of(m: &Message) -> Option<Steps> {
    match m {
        Message::TaskSubmit { .. } => Some(crashpoint::SUBMIT),
        Message::FollowUp { .. } => Some(crashpoint::FOLLOW_UP),
        Message::Cancel { .. } => Some(crashpoint::CANCEL),
        Message::ApprovalDecision { .. } => Some(crashpoint::DECIDE),
        _ => None,
    }
}

/// Where one delivered message stands against the link's applied marker.
pub(super) struct Applying<'k> {
    /// The link's marker key.
    pub link: &'k str,
    /// The newest message of the link applied before this delivery.
    pub applied: Option<u64>,
}

impl Daemon<'_> {
    /// Apply the message `seq` from `from` once: an instruction already
    /// applied (its marker at or above `seq`) is skipped; otherwise its
    /// effect and its marker are durable when this returns. Returns the
    /// replies and the instruction's crash points.
    pub(super) async fn apply(
        &mut self,
        from: DeviceId,
        scope: Scope,
        at: &Applying<'_>,
        seq: u64,
        bytes: &[u8],
    ) -> Result<(Outgoing, Option<Steps>), DaemonError> {
        let decoded = Message::decode(bytes);
        let steps = match &decoded {
            Ok(Decoded::Known(m)) => steps_of(m),
            _ => None,
        };
        let Some(steps) = steps else {
            return Ok((self.answer_instruction(from, scope, decoded, None).await?, None));
        };
        if at.applied.is_some_and(|a| seq <= a) {
            info!(peer = %from, seq, "instruction applied before a restart: not applied again");
            return Ok((Vec::new(), Some(steps)));
        }
        self.tasks.stage_applied(at.link, seq);
        let audit = self.audit_due(at.link, seq);
        let out = self.answer_instruction(from, scope, decoded, audit).await?;
        // The effect wrote nothing (a refusal, a cancel handed to a running
        // executor): no marker, so a crash before the reply is saved makes
        // the relay deliver it again and it is decided again (a refusal
        // that never left is sent then).
        if self.tasks.discard_applied() {
            debug!(peer = %from, seq, "instruction recorded nothing: no applied marker");
        }
        crash_point(steps.applied);
        Ok((out, Some(steps)))
    }

    /// Answer `decoded`; an instruction is audited with the message tag
    /// `audit` (`None`: audited before a restart already).
    async fn answer_instruction(
        &mut self,
        from: DeviceId,
        scope: Scope,
        decoded: Result<Decoded, tandem_proto::message::MessageError>,
        audit: Option<String>,
    ) -> Result<Outgoing, DaemonError> {
        Ok(match decoded {
            Ok(Decoded::Known(Message::TaskSubmit {
                task_id,
                text,
                executor,
                workspace,
                resume,
            })) => {
                if let Some(instruction) = audit {
                    self.record(AuditEvent::TaskSubmitted {
                        device: from.to_string(),
                        task_id: task_id.clone(),
                        executor: executor.clone(),
                        project: workspace.clone(),
                        resume: resume.clone(),
                        text_hash: text_hash(&text),
                        text_len: text.len(),
                        instruction: Some(instruction),
                    });
                }
                crash_point(crashpoint::SUBMIT.audited);
                let wanted = Wanted {
                    executor: executor.as_deref(),
                    project: workspace.as_deref(),
                    resume: resume.as_deref(),
                };
                self.tasks.submit(from, scope, task_id, &text, wanted).await?
            }
            Ok(Decoded::Known(Message::FollowUp { task_id, text })) => {
                if let Some(instruction) = audit {
                    self.record(AuditEvent::FollowUp {
                        device: from.to_string(),
                        task_id: task_id.clone(),
                        text_hash: text_hash(&text),
                        instruction: Some(instruction),
                    });
                }
                crash_point(crashpoint::FOLLOW_UP.audited);
                self.tasks.control(from, scope, &task_id, Control::FollowUp(text)).await?
            }
            Ok(Decoded::Known(Message::Cancel { task_id })) => {
                if let Some(instruction) = audit {
                    self.record(AuditEvent::Cancelled {
                        by: format!("phone:{from}"),
                        task_id: task_id.clone(),
                        instruction: Some(instruction),
                    });
                }
                crash_point(crashpoint::CANCEL.audited);
                self.tasks.control(from, scope, &task_id, Control::Cancel).await?
            }
            Ok(Decoded::Known(Message::ApprovalDecision {
                task_id,
                approval_id,
                allow,
                remember,
            })) => {
                crash_point(crashpoint::DECIDE.audited);
                self.tasks.decide(from, scope, &task_id, &approval_id, allow, remember).await?
            }
            Ok(Decoded::Known(Message::HistoryRequest { task_id: Some(task_id), from_offset })) => {
                self.history_page(from, &task_id, from_offset, 0)?
            }
            Ok(Decoded::Known(Message::HistoryRequest { task_id: None, .. })) => {
                self.tasks.task_list(from)?
            }
            Ok(Decoded::Known(Message::SessionsRequest { executor, workspace })) => {
                match self.tasks.sessions(from, scope, executor.as_deref(), workspace.as_deref())? {
                    SessionsAnswer::Now(out) => out,
                    SessionsAnswer::Later(answer) => self.answer_later(from, answer),
                }
            }
            Ok(Decoded::Known(Message::PushSetup {
                enabled,
                key_id,
                key,
                approvals,
                finished,
                missing,
            })) => {
                self.push_setup(from, enabled, key_id, key, [approvals, finished, missing]);
                Vec::new()
            }
            Ok(Decoded::Known(other)) => {
                debug!(peer = %from, kind = ?std::mem::discriminant(&other), "message not for a desktop");
                Vec::new()
            }
            Ok(Decoded::Unknown { kind, v }) => {
                info!(peer = %from, kind, v, "message kind from a newer app ignored");
                Vec::new()
            }
            Err(e) => {
                warn!(peer = %from, error = %e, "malformed message");
                Vec::new()
            }
        })
    }

    /// A page of `task_id`'s history for `from` that fits what its outbox
    /// takes now, besides `taken` messages of the same batch. With no room
    /// for one event (and something unacknowledged) the ask waits, the
    /// newest per task, until an acknowledgement from the phone makes room
    /// ([`Daemon::deliver`]); it is not kept across a restart (the phone
    /// asks again).
    pub(super) fn history_page(
        &mut self,
        from: DeviceId,
        task_id: &str,
        from_offset: u64,
        taken: usize,
    ) -> Result<Outgoing, DaemonError> {
        let outbox = self.peers.get(&from).map(|p| p.link().outbound());
        let mut room = outbox.map_or(OutboxRoom { messages: 0, bytes: 0 }, |o| o.room());
        room.messages = room.messages.saturating_sub(taken);
        let idle = taken == 0 && outbox.is_none_or(|o| o.is_empty());
        let key = (from, task_id.to_owned());
        // An event, `history_unavailable` perhaps, and `history_end`.
        if room.messages < 3 && !idle {
            debug!(peer = %from, task_id, "history page waits for room in the outbox");
            self.waiting_pages.insert(key, from_offset);
            return Ok(Vec::new());
        }
        self.waiting_pages.remove(&key);
        Ok(self.tasks.history(from, task_id, from_offset, room, idle)?)
    }
}
