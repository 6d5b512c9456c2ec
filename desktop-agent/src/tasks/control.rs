//! Follow-ups and cancels, from a phone or the desktop's own CLI, for
//! running, queued and finished tasks; cancelling everything at shutdown.

use tandem_proto::DeviceId;
use tandem_proto::message::{FinishStatus, TaskEvent};

use super::{Active, Audience, Outgoing, TaskManager, refused, to};
use crate::executor::Control;
use crate::history::{HistoryError, StoredState};
use crate::peers::Scope;

impl TaskManager {
    /// A follow-up or a cancel from a phone (or the desktop's own CLI).
    ///
    /// # Errors
    /// [`HistoryError`] if it cannot be recorded.
    pub async fn control(
        &mut self,
        from: DeviceId,
        scope: Scope,
        task_id: &str,
        control: Control,
    ) -> Result<Outgoing, HistoryError> {
        if !scope.allows_submit() {
            return Ok(to(from, refused(task_id, "scope", "this device may only view")));
        }
        if !self.active.contains_key(task_id) {
            return self.control_finished(from, task_id, control).await;
        }
        match control {
            Control::Cancel => self.cancel(task_id).await,
            Control::FollowUp(text) => {
                let Some(a) = self.active.get_mut(task_id) else { return Ok(Vec::new()) };
                match &a.controller {
                    None => {
                        let r = &mut a.record;
                        // Older records kept no senders: theirs stay unknown.
                        r.pending_follow_ups_from.resize(r.pending_follow_ups.len(), String::new());
                        r.pending_follow_ups.push(text.clone());
                        r.pending_follow_ups_from.push(from.to_string());
                    }
                    Some(c) => {
                        match c.control(Control::FollowUp(text.clone())).await {
                            Ok(()) => {}
                            // Its executor just exited; the finish is on its way.
                            Err(crate::executor::ExecError::NotRunning) => {
                                return Ok(to(
                                    from,
                                    refused(
                                        task_id,
                                        "finishing",
                                        "the task is finishing; send the follow-up again in a moment",
                                    ),
                                ));
                            }
                            Err(e) => {
                                return Ok(to(
                                    from,
                                    refused(task_id, "not_supported", &e.to_string()),
                                ));
                            }
                        }
                    }
                }
                Ok(self
                    .append_active(
                        task_id,
                        TaskEvent::FollowUp { text: crate::text::visible(&text) },
                    )?
                    .map(|m| vec![(Audience::Everyone, m)])
                    .unwrap_or_default())
            }
            Control::Decision { .. } | Control::Expired { .. } => Ok(Vec::new()),
        }
    }

    /// A follow-up or cancel for a task that is not queued or running.
    async fn control_finished(
        &mut self,
        from: DeviceId,
        task_id: &str,
        control: Control,
    ) -> Result<Outgoing, HistoryError> {
        let Some(mut record) = self.history.get(task_id)? else {
            return Ok(to(
                from,
                refused(task_id, "unknown_task", "this computer has no such task"),
            ));
        };
        let Control::FollowUp(text) = control else {
            return Ok(to(from, refused(task_id, "finished", "the task has finished")));
        };
        if record.resume_token.is_none() {
            return Ok(to(
                from,
                refused(
                    task_id,
                    "finished",
                    "the task has finished and its executor cannot resume it",
                ),
            ));
        }
        if !self.executors.iter().any(|e| e.name == record.executor) {
            return Ok(to(
                from,
                refused(task_id, "unknown_executor", "its executor is no longer configured"),
            ));
        }
        // Continue it: queued again, with the follow-up as the next run's
        // input, run for the device that sent it.
        record.pending_resume = Some(text.clone());
        record.state = StoredState::Queued;
        let sender = from.to_string();
        record.run_by = (sender != record.device).then_some(sender);
        let m =
            self.append(&mut record, TaskEvent::FollowUp { text: crate::text::visible(&text) })?;
        let id = record.task_id.clone();
        self.active.insert(id.clone(), Active::new(record));
        self.queue.push_back(id);
        let mut out = vec![(Audience::Everyone, m)];
        out.extend(self.pump().await?);
        Ok(out)
    }

    async fn cancel(&mut self, task_id: &str) -> Result<Outgoing, HistoryError> {
        let Some(a) = self.active.get(task_id) else { return Ok(Vec::new()) };
        if let Some(c) = &a.controller {
            // Its `Finished { Cancelled }` arrives as an update.
            let _ = c.control(Control::Cancel).await;
            return Ok(Vec::new());
        }
        self.queue.retain(|q| q != task_id);
        let finished = TaskEvent::Finished {
            status: FinishStatus::Cancelled,
            summary: "cancelled before it started".into(),
            denied: Vec::new(),
            expired: Vec::new(),
            failed: Vec::new(),
        };
        Ok(self
            .append_active(task_id, finished)?
            .map(|m| vec![(Audience::Everyone, m)])
            .unwrap_or_default())
    }

    /// Cancel every running task (shutdown). Queued tasks stay queued on disk
    /// and run after the next start.
    pub async fn cancel_all(&mut self) {
        for a in self.active.values() {
            if let Some(c) = &a.controller {
                let _ = c.control(Control::Cancel).await;
            }
        }
    }
}
