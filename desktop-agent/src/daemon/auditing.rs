//! What the daemon writes to the audit log ([`crate::audit`]): remote
//! instructions (`daemon/instructions.rs`), why the desktop stopped tasks,
//! and what it tells phones about tasks and approvals.

use tandem_proto::message::{Message, TaskEvent};
use tracing::warn;

use super::Daemon;
use crate::audit::{AuditEvent, text_hash};
use crate::tasks::Audience;

impl Daemon<'_> {
    pub(super) fn record(&mut self, event: AuditEvent) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        if let Some(log) = &mut self.audit
            && let Err(e) = log.append(at, event)
        {
            warn!(error = %e, "audit log append failed");
        }
    }

    /// Audit why the desktop stopped tasks.
    pub(super) fn audit_stopped(&mut self) {
        for s in self.tasks.take_stopped() {
            self.tasks_stopped += 1;
            self.record(AuditEvent::TaskStopped {
                task_id: s.task_id,
                device: s.device,
                reason: s.cause.as_audit(),
                was: if s.was_running { "running" } else { "queued" }.to_owned(),
            });
        }
    }

    /// Audit what the desktop tells phones about tasks and approvals.
    pub(super) fn audit_outgoing(&mut self, out: &[(Audience, Message)]) {
        for (audience, m) in out {
            let event = match m {
                Message::TaskEvent { task_id, event, .. } => match event {
                    TaskEvent::ApprovalRequest { approval_id, summary, .. } => {
                        AuditEvent::ApprovalRequested {
                            task_id: task_id.clone(),
                            approval_id: approval_id.clone(),
                            summary_hash: text_hash(summary),
                        }
                    }
                    TaskEvent::ApprovalResolved { approval_id, allow, by, rule } => {
                        self.record(AuditEvent::ApprovalDecided {
                            task_id: task_id.clone(),
                            approval_id: approval_id.clone(),
                            allow: *allow,
                            by: by.clone(),
                        });
                        let Some(rule) = rule else { continue };
                        AuditEvent::RuleAdded {
                            task_id: task_id.clone(),
                            approval_id: approval_id.clone(),
                            rule: rule.clone(),
                            by: by.clone(),
                        }
                    }
                    TaskEvent::Finished { status, .. } => AuditEvent::TaskFinished {
                        task_id: task_id.clone(),
                        status: crate::tasks::status_str(*status).to_owned(),
                    },
                    _ => continue,
                },
                Message::Refused { task_id, code, .. } => AuditEvent::TaskRefused {
                    device: match audience {
                        Audience::Device(d) => d.to_string(),
                        Audience::Everyone => "everyone".into(),
                    },
                    task_id: task_id.clone().unwrap_or_default(),
                    code: code.clone(),
                },
                _ => continue,
            };
            self.record(event);
        }
    }

    /// Whether the instruction `seq` of `link` is still to be audited; if
    /// so, the tag its audit line carries. The log is read once per link
    /// after a start (the highest message audited before); this process
    /// keeps count from there.
    pub(super) fn audit_due(&mut self, link: &str, seq: u64) -> Option<String> {
        let last = match self.audited.get(link) {
            Some(last) => *last,
            None => {
                let last = match &self.audit {
                    Some(log) => log.last_instruction(link).unwrap_or_else(|e| {
                        warn!(error = %e, "audit log unreadable: instructions audited anew");
                        None
                    }),
                    None => None,
                };
                self.audited.insert(link.to_owned(), last);
                last
            }
        };
        if last.is_some_and(|l| seq <= l) {
            return None;
        }
        self.audited.insert(link.to_owned(), Some(seq));
        Some(format!("{link}#{seq}"))
    }
}
