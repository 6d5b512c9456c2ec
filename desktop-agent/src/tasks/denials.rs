//! Which tools a task was not allowed to use: its `finished` event names
//! them (`denied`, PROTOCOL.md §15.2), so a task that "succeeded" without
//! doing what it was denied does not look like a plain success.
//!
//! Two sources: an executor that reports its own denials (Claude Code's
//! `permission_denials`, [`ExecEvent::Denied`]) is believed as it is;
//! otherwise every approval denied (by a phone, the desktop or the timeout)
//! is listed by its summary.
//!
//! [`ExecEvent::Denied`]: crate::executor::ExecEvent::Denied

use std::collections::HashMap;

use tandem_proto::message::TaskEvent;

/// Most names listed in one finish.
pub(crate) const MAX_DENIED: usize = 32;

/// One task's denials so far.
#[derive(Debug, Default)]
pub(super) struct Denials {
    /// Pending approvals' summaries, by approval id.
    asked: HashMap<String, String>,
    /// Summaries of the approvals denied.
    by_approval: Vec<String>,
    /// What the executor reported, if it reports denials itself.
    by_executor: Option<Vec<String>>,
}

impl Denials {
    /// Follow `event` on its way into the task's history; a finish that
    /// names no denials gets this task's.
    pub(super) fn note(&mut self, event: &mut TaskEvent) {
        match event {
            TaskEvent::ApprovalRequest { approval_id, summary, .. } => {
                self.asked.insert(approval_id.clone(), summary.clone());
            }
            TaskEvent::ApprovalResolved { approval_id, allow, .. } => {
                if let Some(summary) = self.asked.remove(approval_id)
                    && !*allow
                {
                    push_unique(&mut self.by_approval, summary);
                }
            }
            TaskEvent::Finished { denied, .. } if denied.is_empty() => {
                *denied = self.by_executor.clone().unwrap_or_else(|| self.by_approval.clone());
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
}
