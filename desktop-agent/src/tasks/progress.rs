//! What executors report while a task runs: events recorded and passed on
//! to phones, approvals asked, decided by a phone, or expired.

use tandem_proto::DeviceId;
use tandem_proto::message::{FinishStatus, TaskEvent};

use super::{
    APPROVAL_SUMMARY_MAX, Audience, Outgoing, TaskManager, TaskUpdate, now_ms, refused, shown, to,
};
use crate::executor::{Control, ExecEvent};
use crate::history::HistoryError;
use crate::peers::Scope;

impl TaskManager {
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
                    let _ = c.control(Control::Expired { approval_id: id.clone() }).await;
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
}
