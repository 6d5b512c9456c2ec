//! Tasks the desktop stops itself, not their executor or a phone:
//!
//! * **A device loses the right to run tasks.** Revoked (its peer file is
//!   gone, however that happened: `tandem revoke` through the running
//!   agent, the same command while no agent ran, or the file deleted) or
//!   lowered below `submit` (`tandem scope DEVICE view`). Every task that
//!   runs for it ([`TaskRecord::runner`]) stops: a running one is cancelled
//!   (its executor's whole process group), finishing `cancelled` with the
//!   reason as summary; a queued one never starts and finishes `rejected`
//!   with the reason. Its pending approvals are withdrawn (nobody can allow
//!   a step of a task that is being stopped; an approval the executor asks
//!   for meanwhile is denied at once). Each such stop is reported once by
//!   [`TaskManager::take_stopped`] for the audit log.
//!
//!   The daemon keeps the permits ([`TaskManager::set_permits`],
//!   [`TaskManager::device_changed`]) equal to the paired devices; and
//!   every time queued tasks may start ([`TaskManager::recover`] after a
//!   restart, and each pump), those whose device has no permit are dropped
//!   first: nothing runs for a device that is not paired with `submit`
//!   scope, whenever the revocation happened. Likewise a follow-up such a
//!   device queued on another device's queued task is not delivered when
//!   that task starts ([`TaskRecord::pending_follow_ups_from`]).
//!
//! * **`tandem cancel TASK`** ([`TaskManager::cancel_from_desktop`]): a
//!   running task is cancelled and finishes `cancelled` ("cancelled from the
//!   desktop"), a queued one finishes `cancelled` at once.

use std::collections::HashMap;

use tandem_proto::DeviceId;
use tandem_proto::message::{FinishStatus, Message, TaskEvent};
use thiserror::Error;
use tracing::info;

use super::{Audience, Outgoing, TaskManager};
use crate::executor::{Control, ExecError};
use crate::history::{History, HistoryError, Lookup, StoredState, TaskRecord};
use crate::peers::Scope;

/// Finish summary of a task cancelled by `tandem cancel`.
pub const CANCELLED_FROM_DESKTOP: &str = "cancelled from the desktop";

/// Why the desktop stopped a task for its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// The device is no longer paired.
    Revoked,
    /// The device's scope was lowered to this (below `submit`).
    Scope(Scope),
}

impl StopCause {
    /// `revoked`, or `scope:<scope>`: for the audit log.
    #[must_use]
    pub fn as_audit(&self) -> String {
        match self {
            StopCause::Revoked => "revoked".to_owned(),
            StopCause::Scope(s) => format!("scope:{s}"),
        }
    }

    fn reason(&self, device: &str) -> String {
        match self {
            StopCause::Revoked => {
                format!("its device {device} is no longer paired with this computer")
            }
            StopCause::Scope(s) => {
                format!("its device {device} may no longer run tasks (scope lowered to {s})")
            }
        }
    }
}

/// A task the desktop stopped because its device lost the right to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// The task.
    pub task_id: String,
    /// The device it ran for.
    pub device: String,
    /// Why.
    pub cause: StopCause,
    /// Whether it was running (then cancelled) or queued (then dropped,
    /// never started).
    pub was_running: bool,
}

/// What `tandem cancel` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DesktopCancel {
    /// It was running: its executor is being stopped; its `finished`
    /// (`cancelled`) follows.
    Stopping {
        /// The task.
        task_id: String,
    },
    /// It was queued: it finished as cancelled without running.
    Dropped {
        /// The task.
        task_id: String,
    },
}

/// Why `tandem cancel` cancelled nothing.
#[derive(Debug, Error)]
pub enum CancelError {
    /// No task has this id or an id starting with it.
    #[error("no task matches `{0}` (see `tandem tasks`)")]
    Unknown(String),
    /// Several tasks' ids start with it.
    #[error("`{query}` matches several tasks: {}; give more of the id", candidates.join(", "))]
    Ambiguous {
        /// What was asked for.
        query: String,
        /// Some of the tasks it matches.
        candidates: Vec<String>,
    },
    /// The task is not queued or running.
    #[error("task {task_id} has already finished ({status}); nothing to cancel")]
    Finished {
        /// The task.
        task_id: String,
        /// How it finished.
        status: String,
    },
    /// The history could not be read or written.
    #[error(transparent)]
    History(#[from] HistoryError),
}

/// `tandem cancel` while no agent runs: finish a queued task as cancelled
/// in `history` (phones hear of it when the agent starts: it sends each
/// the events recorded after the last one it sealed for it). Returns the
/// finish.
///
/// # Errors
/// [`CancelError::Finished`] if `record` is not queued; [`HistoryError`].
pub fn cancel_queued_offline(
    history: &History,
    mut record: TaskRecord,
) -> Result<Message, CancelError> {
    if record.state != StoredState::Queued {
        let status = record.state_str().to_owned();
        return Err(CancelError::Finished { task_id: record.task_id, status });
    }
    let finished = TaskEvent::Finished {
        status: FinishStatus::Cancelled,
        summary: format!("{CANCELLED_FROM_DESKTOP} before it started"),
        denied: Vec::new(),
        expired: Vec::new(),
        failed: Vec::new(),
    };
    Ok(super::append_to(history, &mut record, finished)?)
}

impl TaskManager {
    /// Which devices may have tasks run, with their scopes (the paired
    /// devices). Until this is called every device may.
    pub fn set_permits(&mut self, devices: impl IntoIterator<Item = (DeviceId, Scope)>) {
        self.permits = Some(devices.into_iter().map(|(d, s)| (d.to_string(), s)).collect());
    }

    /// The permits as set by [`Self::set_permits`] and
    /// [`Self::device_changed`].
    #[must_use]
    pub fn permits(&self) -> Option<&HashMap<String, Scope>> {
        self.permits.as_ref()
    }

    /// `device` was revoked (`None`) or its scope is now `scope`: if it may
    /// no longer submit, every task that runs for it stops (see the module
    /// docs).
    ///
    /// # Errors
    /// [`HistoryError`] if a finish cannot be recorded.
    pub async fn device_changed(
        &mut self,
        device: DeviceId,
        scope: Option<Scope>,
    ) -> Result<Outgoing, HistoryError> {
        let key = device.to_string();
        let permits = self.permits.get_or_insert_with(HashMap::new);
        let cause = match scope {
            Some(s) => {
                permits.insert(key.clone(), s);
                if s.allows_submit() {
                    return Ok(Vec::new());
                }
                StopCause::Scope(s)
            }
            None => {
                permits.remove(&key);
                StopCause::Revoked
            }
        };
        let mut ids: Vec<(u64, String)> = self
            .active
            .iter()
            .filter(|(_, a)| a.record.runner() == key)
            .map(|(id, a)| (a.record.seq, id.clone()))
            .collect();
        ids.sort();
        let mut out = Vec::new();
        for (_, id) in ids {
            out.extend(self.stop(&id, cause).await?);
        }
        Ok(out)
    }

    /// Stop one active task for `cause`.
    async fn stop(&mut self, task_id: &str, cause: StopCause) -> Result<Outgoing, HistoryError> {
        let Some(a) = self.active.get_mut(task_id) else { return Ok(Vec::new()) };
        let device = a.record.runner().to_owned();
        let reason = cause.reason(&device);
        if let Some(c) = a.controller.clone() {
            if a.stopping.is_some() {
                return Ok(Vec::new());
            }
            info!(task = %task_id, %device, cause = %cause.as_audit(), "cancelling a task");
            a.stopping = Some(format!("cancelled: {reason}"));
            a.approvals.clear();
            self.stopped.push(Stopped {
                task_id: task_id.to_owned(),
                device,
                cause,
                was_running: true,
            });
            // Its `Finished { Cancelled }` arrives as an update; an executor
            // that just exited sends its own finish instead.
            let _ = c.control(Control::Cancel).await;
            return Ok(Vec::new());
        }
        self.drop_queued(task_id, cause)
    }

    /// Finish a queued task without running it.
    fn drop_queued(&mut self, task_id: &str, cause: StopCause) -> Result<Outgoing, HistoryError> {
        let Some(a) = self.active.get(task_id) else { return Ok(Vec::new()) };
        let device = a.record.runner().to_owned();
        info!(task = %task_id, %device, cause = %cause.as_audit(), "dropping a queued task");
        self.queue.retain(|q| q != task_id);
        let finished = TaskEvent::Finished {
            status: FinishStatus::Rejected,
            summary: format!("not run: {}", cause.reason(&device)),
            denied: Vec::new(),
            expired: Vec::new(),
            failed: Vec::new(),
        };
        let out = self.append_active(task_id, finished)?;
        self.stopped.push(Stopped {
            task_id: task_id.to_owned(),
            device,
            cause,
            was_running: false,
        });
        Ok(out.map(|m| vec![(Audience::Everyone, m)]).unwrap_or_default())
    }

    /// Why `record` may not run now, if it may not.
    fn refusal(&self, record: &TaskRecord) -> Option<StopCause> {
        self.refusal_of(record.runner())
    }

    /// Why a follow-up that `sender` queued may not reach the executor now
    /// (its device was revoked or lowered below `submit` since), as the
    /// progress line phones see; `None` to deliver it (also for a sender
    /// not kept, in records stored before senders were).
    pub(super) fn follow_up_refusal(&self, sender: &str) -> Option<String> {
        if sender.is_empty() {
            return None;
        }
        let cause = self.refusal_of(sender)?;
        Some(format!("a follow-up was not delivered: {}", cause.reason(sender)))
    }

    /// Why `device` may not have tasks run now, if it may not.
    fn refusal_of(&self, device: &str) -> Option<StopCause> {
        let permits = self.permits.as_ref()?;
        match permits.get(device) {
            None => Some(StopCause::Revoked),
            Some(s) if !s.allows_submit() => Some(StopCause::Scope(*s)),
            Some(_) => None,
        }
    }

    /// Drop every queued task whose device may not have it run.
    pub(super) fn drop_unpermitted(&mut self) -> Result<Outgoing, HistoryError> {
        let refused: Vec<(String, StopCause)> = self
            .queue
            .iter()
            .filter_map(|id| {
                let a = self.active.get(id)?;
                self.refusal(&a.record).map(|c| (id.clone(), c))
            })
            .collect();
        let mut out = Vec::new();
        for (id, cause) in refused {
            out.extend(self.drop_queued(&id, cause)?);
        }
        Ok(out)
    }

    /// The tasks stopped for their device since the last call, for the
    /// audit log.
    pub fn take_stopped(&mut self) -> Vec<Stopped> {
        std::mem::take(&mut self.stopped)
    }

    /// The task `query` names (an id or a unique prefix of one).
    ///
    /// # Errors
    /// [`HistoryError`] if the history cannot be read.
    pub fn find(&self, query: &str) -> Result<Lookup, HistoryError> {
        self.history.find(query)
    }

    /// `tandem cancel`: cancel the task `query` names (an id or a unique
    /// prefix of one), from the desktop.
    ///
    /// # Errors
    /// [`CancelError`] when nothing was cancelled.
    pub async fn cancel_from_desktop(
        &mut self,
        query: &str,
    ) -> Result<(DesktopCancel, Outgoing), CancelError> {
        let task_id = match self.history.find(query)? {
            Lookup::Found(r) => r.task_id,
            Lookup::NotFound => return Err(CancelError::Unknown(query.to_owned())),
            Lookup::Ambiguous(candidates) => {
                return Err(CancelError::Ambiguous { query: query.to_owned(), candidates });
            }
        };
        let Some(a) = self.active.get_mut(&task_id) else {
            let status = self
                .history
                .get(&task_id)?
                .map_or_else(|| "gone".to_owned(), |r| r.state_str().to_owned());
            return Err(CancelError::Finished { task_id, status });
        };
        if let Some(c) = a.controller.clone() {
            info!(task = %task_id, "cancelled from the desktop");
            a.stopping.get_or_insert_with(|| CANCELLED_FROM_DESKTOP.to_owned());
            a.approvals.clear();
            match c.control(Control::Cancel).await {
                // Exited just now: its own finish is on its way.
                Ok(()) | Err(ExecError::NotRunning) => {}
                Err(e) => tracing::warn!(task = %task_id, error = %e, "cancel not delivered"),
            }
            return Ok((DesktopCancel::Stopping { task_id }, Vec::new()));
        }
        self.queue.retain(|q| *q != task_id);
        let finished = TaskEvent::Finished {
            status: FinishStatus::Cancelled,
            summary: format!("{CANCELLED_FROM_DESKTOP} before it started"),
            denied: Vec::new(),
            expired: Vec::new(),
            failed: Vec::new(),
        };
        let out = self
            .append_active(&task_id, finished)?
            .map(|m| vec![(Audience::Everyone, m)])
            .unwrap_or_default();
        Ok((DesktopCancel::Dropped { task_id }, out))
    }
}
