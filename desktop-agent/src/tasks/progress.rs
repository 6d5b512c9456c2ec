//! What executors report while a task runs: events recorded and passed on
//! to phones, approvals asked, decided by a phone, or expired.

use tandem_proto::DeviceId;
use tandem_proto::message::{FinishStatus, TaskEvent};

use super::{
    APPROVAL_SUMMARY_MAX, Audience, Outgoing, TaskManager, TaskUpdate, now_ms, refused, shown, to,
};
use crate::executor::{Control, ExecEvent, MAX_ID_LEN};
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
            ExecEvent::ToolCall { call_id, name, input } => {
                // A file edit: its diff follows the call (before its approval).
                let (project, executor) = (a.record.project.clone(), a.record.executor.clone());
                let workdir = self.workdir_of(project.as_deref(), &executor);
                let diff = crate::diffs::for_tool(&name, &input, workdir.as_deref());
                let call = TaskEvent::ToolCall {
                    call_id: call_id.clone(),
                    name: crate::text::visible(&name),
                    input: crate::executor::cap_json(crate::text::visible_json(input)),
                };
                let mut out = self.emit(&u.task_id, call).await?;
                if let Some(d) = diff {
                    let diff = TaskEvent::Diff {
                        call_id,
                        path: crate::text::head_tail(&crate::text::visible(&d.path), MAX_ID_LEN),
                        diff: shown(&d.diff),
                        added: d.added,
                        removed: d.removed,
                    };
                    out.extend(self.emit(&u.task_id, diff).await?);
                }
                return Ok(out);
            }
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
            ExecEvent::ApprovalRequest { approval_id, summary, detail, tool } => {
                let summary =
                    crate::text::head_tail(&crate::text::visible(&summary), APPROVAL_SUMMARY_MAX);
                let detail = crate::text::head_tail(
                    &crate::text::visible(&detail),
                    crate::executor::MAX_EVENT_TEXT,
                );
                let timeout = u64::try_from(self.options.approval_timeout.as_millis()).unwrap_or(0);
                let expires_at_ms = now_ms().saturating_add(timeout);
                let request = TaskEvent::ApprovalRequest {
                    approval_id: approval_id.clone(),
                    summary,
                    detail,
                    expires_at_ms,
                };
                let Some(rule) = tool.as_ref().and_then(|t| self.rule_for(&u.task_id, t)) else {
                    let Some(a) = self.active.get_mut(&u.task_id) else { return Ok(Vec::new()) };
                    if let Some(tool) = tool {
                        a.tools.insert(approval_id.clone(), tool);
                    }
                    a.approvals.insert(approval_id, expires_at_ms);
                    return self.emit(&u.task_id, request).await;
                };
                // Decided here by a rule: shown and audited as asked and
                // answered, the phone never asked.
                let (allow, by) = (rule.allows(), format!("rule:{}", rule.text()));
                let mut out = self.emit(&u.task_id, request).await?;
                if let Some(c) = self.active.get(&u.task_id).and_then(|a| a.controller.clone()) {
                    let decision = Control::Decision { approval_id: approval_id.clone(), allow };
                    let _ = c.control(decision).await;
                }
                let resolved = TaskEvent::ApprovalResolved { approval_id, allow, by, rule: None };
                out.extend(self.emit(&u.task_id, resolved).await?);
                return Ok(out);
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
                a.tools.clear();
                // Cancelled by the desktop: say why.
                let summary = match (a.stopping.take(), status) {
                    (Some(why), FinishStatus::Cancelled) => why,
                    _ => shown(&summary),
                };
                TaskEvent::Finished {
                    status,
                    summary,
                    denied: Vec::new(),
                    expired: Vec::new(),
                    failed: Vec::new(),
                }
            }
        };
        self.emit(&u.task_id, event).await
    }

    /// Record `event` of an active task; what to send (and what starts).
    async fn emit(&mut self, task_id: &str, event: TaskEvent) -> Result<Outgoing, HistoryError> {
        let mut out: Outgoing = self
            .append_active(task_id, event)?
            .map(|m| vec![(Audience::Everyone, m)])
            .unwrap_or_default();
        out.extend(self.pump().await?);
        Ok(out)
    }

    /// The directory a task runs in: its project's, else its executor's
    /// own (`None`: the agent's).
    fn workdir_of(&self, project: Option<&str>, executor: &str) -> Option<std::path::PathBuf> {
        match project.and_then(|p| crate::projects::find(&self.options.projects, p)) {
            Some(p) => Some(p.path.clone()),
            None => {
                self.executors.iter().find(|e| e.name == executor).and_then(|e| e.workdir.clone())
            }
        }
    }

    /// The approval rule that decides `tool` for the task, if one does.
    /// The configuration's deny rules win over every allow, then its allow
    /// rules, then the allow rules phones added.
    fn rule_for(&self, task_id: &str, tool: &crate::rules::ToolUse) -> Option<crate::rules::Rule> {
        if self.options.rules.is_empty() && self.added.rules().is_empty() {
            return None;
        }
        let record = &self.active.get(task_id)?.record;
        let project = record.project.as_deref();
        let workdir = self.workdir_of(project, &record.executor);
        let cx = crate::rules::Context {
            executor: &record.executor,
            project,
            device: record.runner(),
            workdir: workdir.as_deref(),
        };
        let configured = crate::rules::decide(&self.options.rules, tool, &cx);
        if configured.is_some_and(|r| !r.allows()) {
            return configured.cloned();
        }
        configured.or_else(|| crate::rules::decide(self.added.rules(), tool, &cx)).cloned()
    }

    /// A task's executor, project and working directory, for a rule made
    /// from one of its approvals.
    pub(super) fn rule_place(
        &self,
        task_id: &str,
    ) -> Option<(String, Option<String>, Option<std::path::PathBuf>)> {
        let record = &self.active.get(task_id)?.record;
        let project = record.project.clone();
        let workdir = self.workdir_of(project.as_deref(), &record.executor);
        Some((record.executor.clone(), project, workdir))
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
        remember: bool,
    ) -> Result<Outgoing, HistoryError> {
        if !scope.allows_approve() {
            return Ok(to(from, refused(task_id, "scope", "this device may not approve")));
        }
        let pending = self.active.get(task_id).map(|t| t.approvals.contains_key(approval_id));
        if pending != Some(true) {
            let code = if pending.is_some() || self.history.get(task_id)?.is_some() {
                "not_pending"
            } else {
                "unknown_task"
            };
            return Ok(to(from, refused(task_id, code, "that approval is not pending")));
        }
        // "Always allow": the rule it would add, or why it adds none.
        let plan = (allow && remember).then(|| self.plan_rule(from, scope, task_id, approval_id));
        let Some(task) = self.active.get_mut(task_id) else { return Ok(Vec::new()) };
        let Some(expires) = task.approvals.remove(approval_id) else { return Ok(Vec::new()) };
        let decision = Control::Decision { approval_id: approval_id.to_owned(), allow };
        if let Some(c) = &task.controller
            && let Err(e) = c.control(decision).await
        {
            // The executor did not get it: still pending; tell the phone.
            task.approvals.insert(approval_id.to_owned(), expires);
            return Ok(to(from, refused(task_id, "executor_unreachable", &e.to_string())));
        }
        task.tools.remove(approval_id);
        let (rule, note) = self.keep_rule(from, task_id, plan);
        let resolved = TaskEvent::ApprovalResolved {
            approval_id: approval_id.to_owned(),
            allow,
            by: format!("phone:{from}"),
            rule,
        };
        let mut out: Outgoing = self
            .append_active(task_id, resolved)?
            .map(|m| vec![(Audience::Everyone, m)])
            .unwrap_or_default();
        out.extend(note);
        Ok(out)
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
                t.tools.remove(&id);
                if let Some(c) = &t.controller {
                    let _ = c.control(Control::Expired { approval_id: id.clone() }).await;
                }
                due.push((task_id.clone(), id));
            }
        }
        let mut out = Vec::new();
        for (task_id, approval_id) in due {
            let resolved = TaskEvent::ApprovalResolved {
                approval_id,
                allow: false,
                by: "timeout".into(),
                rule: None,
            };
            if let Some(m) = self.append_active(&task_id, resolved)? {
                out.push((Audience::Everyone, m));
            }
        }
        Ok(out)
    }
}
