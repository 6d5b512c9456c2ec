//! Which tools a task was not allowed to use, which failed, and which
//! approvals no one answered in time: its `finished` event names them
//! (`denied`, `failed`, `expired`, PROTOCOL.md §15.3.1), so a task that
//! "succeeded" without doing what it was denied, or with tools that failed,
//! does not look like a plain success.
//!
//! Two sources: an executor that reports its own denials (Claude Code's
//! `permission_denials`, [`ExecEvent::Denied`]) is believed as it is;
//! otherwise every approval denied (by a phone, the desktop or the timeout)
//! is listed by its summary.
//!
//! [`ExecEvent::Denied`]: crate::executor::ExecEvent::Denied

use std::collections::HashMap;

use tandem_proto::message::TaskEvent;

/// Most names listed in one finish (per list).
pub(crate) const MAX_DENIED: usize = 32;

/// Tool calls whose result is still awaited, at most (a task that never
/// reports results does not grow without bound).
const MAX_CALLS_KEPT: usize = 1024;

/// One task's denials so far.
#[derive(Debug, Default)]
pub(super) struct Denials {
    /// Pending approvals' summaries, by approval id.
    asked: HashMap<String, String>,
    /// Summaries of the approvals denied.
    by_approval: Vec<String>,
    /// What the executor reported, if it reports denials itself.
    by_executor: Option<Vec<String>>,
    /// Tool calls' names, by call id (for the failed ones).
    calls: HashMap<String, String>,
    /// Approvals denied, by id: a call with the same id (Claude Code asks
    /// under the tool use's id) that then reports an error was denied, not
    /// failed.
    denied_ids: std::collections::HashSet<String>,
    /// Names of the tools whose results were errors.
    failed: Vec<String>,
    /// Summaries of the approvals the timeout denied.
    expired: Vec<String>,
}

impl Denials {
    /// Follow `event` on its way into the task's history; a finish that
    /// names no denials gets this task's.
    pub(super) fn note(&mut self, event: &mut TaskEvent) {
        match event {
            TaskEvent::ApprovalRequest { approval_id, summary, .. } => {
                self.asked.insert(approval_id.clone(), summary.clone());
            }
            TaskEvent::ApprovalResolved { approval_id, allow, by, .. } => {
                if !*allow && self.denied_ids.len() < MAX_CALLS_KEPT {
                    self.denied_ids.insert(approval_id.clone());
                }
                if let Some(summary) = self.asked.remove(approval_id)
                    && !*allow
                {
                    if by == "timeout" {
                        push_unique(&mut self.expired, summary.clone());
                    }
                    push_unique(&mut self.by_approval, summary);
                }
            }
            TaskEvent::ToolCall { call_id, name, .. } if self.calls.len() < MAX_CALLS_KEPT => {
                self.calls.insert(call_id.clone(), name.clone());
            }
            TaskEvent::ToolResult { call_id, is_error, .. } => {
                if let Some(name) = self.calls.remove(call_id)
                    && *is_error
                    && !self.denied_ids.contains(call_id)
                {
                    push_unique(&mut self.failed, name);
                }
            }
            TaskEvent::Finished { denied, failed, expired, .. } => {
                if denied.is_empty() {
                    *denied = self.by_executor.clone().unwrap_or_else(|| self.by_approval.clone());
                }
                if failed.is_empty() {
                    failed.clone_from(&self.failed);
                }
                if expired.is_empty() {
                    expired.clone_from(&self.expired);
                }
            }
            _ => {}
        }
    }

    /// The executor reported tools it was not allowed to use.
    pub(super) fn executor_reported(&mut self, tools: Vec<String>) {
        let list = self.by_executor.get_or_insert_default();
        for tool in tools {
            push_unique(list, crate::text::visible(&tool));
        }
    }
}

fn push_unique(list: &mut Vec<String>, name: String) {
    let name = crate::executor::cap_text(name, crate::executor::MAX_ID_LEN);
    if list.len() < MAX_DENIED && !list.contains(&name) {
        list.push(name);
    }
}

#[cfg(test)]
mod tests {
    use tandem_proto::message::FinishStatus;

    use super::*;

    fn finish() -> TaskEvent {
        TaskEvent::Finished {
            status: FinishStatus::Succeeded,
            summary: "done".into(),
            denied: Vec::new(),
            expired: Vec::new(),
            failed: Vec::new(),
        }
    }

    fn denied_of(e: TaskEvent) -> Vec<String> {
        let TaskEvent::Finished { denied, .. } = e else { unreachable!() };
        denied
    }

    #[test]
    fn denied_approvals_are_listed_once_and_allowed_ones_not() {
        let mut d = Denials::default();
        for (id, summary) in [("a1", "rm -rf build"), ("a2", "git push"), ("a3", "rm -rf build")] {
            d.note(&mut TaskEvent::ApprovalRequest {
                approval_id: id.into(),
                summary: summary.into(),
                detail: String::new(),
                expires_at_ms: 0,
            });
        }
        for (id, allow) in [("a1", false), ("a2", true), ("a3", false)] {
            d.note(&mut TaskEvent::ApprovalResolved {
                approval_id: id.into(),
                allow,
                by: "timeout".into(),
                rule: None,
            });
        }
        let mut f = finish();
        d.note(&mut f);
        assert_eq!(denied_of(f), vec!["rm -rf build".to_owned()]);
        // The executor's own report wins.
        d.executor_reported(vec!["Bash".into(), "Write".into(), "Bash".into()]);
        let mut f = finish();
        d.note(&mut f);
        assert_eq!(denied_of(f), vec!["Bash".to_owned(), "Write".to_owned()]);
    }

    #[test]
    fn failed_tools_and_expired_approvals_are_named_in_the_finish() {
        let mut d = Denials::default();
        for (id, name) in [("c1", "Bash"), ("c2", "Edit"), ("c3", "Bash"), ("a2", "Write")] {
            d.note(&mut TaskEvent::ToolCall {
                call_id: id.into(),
                name: name.into(),
                input: serde_json::Value::Null,
            });
        }
        for (id, is_error) in [("c1", true), ("c2", false), ("c3", true), ("c9", true)] {
            d.note(&mut TaskEvent::ToolResult {
                call_id: id.into(),
                output: String::new(),
                is_error,
            });
        }
        for (id, by) in [("a1", "timeout"), ("a2", "phone:X")] {
            d.note(&mut TaskEvent::ApprovalRequest {
                approval_id: id.into(),
                summary: format!("step {id}"),
                detail: String::new(),
                expires_at_ms: 0,
            });
            d.note(&mut TaskEvent::ApprovalResolved {
                approval_id: id.into(),
                allow: false,
                by: by.into(),
                rule: None,
            });
        }
        // a2's call was denied: its error result is the denial, not a failure.
        for (id, is_error) in
            [("c1", true), ("c2", false), ("c3", true), ("c9", true), ("a2", true)]
        {
            d.note(&mut TaskEvent::ToolResult {
                call_id: id.into(),
                output: String::new(),
                is_error,
            });
        }
        let mut f = finish();
        d.note(&mut f);
        let TaskEvent::Finished { denied, failed, expired, .. } = f else { unreachable!() };
        assert_eq!(failed, ["Bash"], "each once; an unknown call id names nothing");
        assert_eq!(expired, ["step a1"]);
        assert_eq!(denied, ["step a1", "step a2"]);
    }
}
