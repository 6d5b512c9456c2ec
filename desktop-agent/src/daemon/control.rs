//! The daemon's answers on the control socket ([`crate::ipc`]): status,
//! task lists and events, following events live, scope changes,
//! revocations and `tandem cancel`, all applied to the daemon's own live
//! state.

use serde_json::{Value, json};
use tandem_proto::DeviceId;

use super::{Daemon, DaemonError};
use crate::audit::AuditEvent;
use crate::history::Lookup;
use crate::ipc::{Call, Request};
use crate::peers::Scope;
use crate::tasks::{CancelError, DesktopCancel};

/// Most tasks or events in one answer.
const MAX_ROWS: usize = 1000;

impl Daemon<'_> {
    /// Answer one control request.
    pub(super) async fn control_call(&mut self, call: Call) -> Result<(), DaemonError> {
        let Call { request, reply } = call;
        let answer = match request {
            Request::Status => Ok(self.status()),
            Request::Tasks { limit } => self
                .tasks
                .recent(limit.min(MAX_ROWS))
                .map(|tasks| json!({"ok": true, "tasks": tasks}))
                .map_err(|e| e.to_string()),
            Request::Events { task_id, from_offset } => {
                let task_id = self.resolve_task(&task_id);
                self.tasks
                    .events(&task_id, from_offset, crate::ipc::EVENTS_PAGE)
                    .map(|events| json!({"ok": true, "task_id": task_id, "events": events}))
                    .map_err(|e| e.to_string())
            }
            Request::Follow { task_id } => {
                let task_id = task_id.map(|t| self.resolve_task(&t));
                if reply.try_send(json!({"ok": true, "task_id": task_id})).is_ok() {
                    self.followers.push((task_id, reply));
                }
                return Ok(());
            }
            Request::SetScope { device, scope } => self.set_scope(&device, scope).await?,
            Request::Revoke { device } => match self.revoke(&device).await? {
                // Answered once the relay confirms, or after REVOKE_WAIT.
                Ok((id, answer)) => {
                    self.relay_revoke(id, Some((reply, answer)));
                    return Ok(());
                }
                Err(e) => Err(e),
            },
            Request::Cancel { task } => self.cancel(&task).await?,
            Request::RemoveRule { number, allow } => {
                match self.tasks.remove_added_rule(number, &allow) {
                    Ok(rule) => {
                        self.record(crate::audit::AuditEvent::RuleRemoved {
                            rule: format!("allow {}", rule.allow),
                            added_by: rule.added_by.clone(),
                        });
                        Ok(json!({"ok": true, "rule": rule}))
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        let v = answer.unwrap_or_else(|error| json!({"ok": false, "error": error}));
        let _ = reply.try_send(v);
        Ok(())
    }

    fn status(&self) -> Value {
        let now_ms = super::renewal::now_ms();
        let devices: Vec<Value> = self
            .peers
            .list()
            .iter()
            .map(|p| {
                let id = p.device_id();
                json!({
                    "device_id": id.to_string(),
                    "name": p.info().name,
                    "platform": p.info().platform,
                    "ephemeral": p.ephemeral(),
                    "pairing_pending": p.pairing_pending(),
                    "scope": p.scope().to_string(),
                    "online": self.online.contains(&id),
                    "attached": !self.detached.contains(&id),
                    "last_seen_unix": p.last_seen_unix(),
                    "session": super::renewal::session_status(p, now_ms),
                    "lost_messages": self.lost.status(&id),
                    "push": p.push().map(|push| json!({
                        "key_id": push.key_id,
                        "approvals": push.approvals,
                        "finished": push.finished,
                        "missing": push.missing,
                    })),
                })
            })
            .collect();
        let mut v = json!({
            "ok": true,
            "pid": std::process::id(),
            "device_id": self.client.device_id().to_string(),
            "relay": self.relay_url,
            "connected": self.connected,
            "devices": devices,
            "tasks": self.tasks.counts(),
            "keep_awake": self.awake,
        });
        if let Some(obj) = v.as_object_mut() {
            obj.extend(self.status_extra.clone());
        }
        v
    }

    /// The task `query` names (an id or a unique prefix), or `query`.
    fn resolve_task(&self, query: &str) -> String {
        match self.tasks.find(query) {
            Ok(Lookup::Found(r)) => r.task_id,
            _ => query.to_owned(),
        }
    }

    /// Change a device's scope; one lowered below `submit` has its tasks
    /// stopped (`stopped` in the answer counts them).
    async fn set_scope(
        &mut self,
        device: &str,
        scope: Scope,
    ) -> Result<Result<Value, String>, DaemonError> {
        let id = match self.peers.resolve(device) {
            Ok(id) => id,
            Err(e) => return Ok(Err(e.to_string())),
        };
        if let Err(e) = self.peers.set_scope(&id, scope) {
            return Ok(Err(e.to_string()));
        }
        self.record(AuditEvent::ScopeChanged { device: id.to_string(), scope: scope.to_string() });
        let stopped = self.stop_tasks_of_changed_devices().await?;
        Ok(Ok(json!({
            "ok": true,
            "device_id": id.to_string(),
            "scope": scope.to_string(),
            "stopped": stopped,
        })))
    }

    /// Revoke a device here: the relay is to be told first (on disk), then
    /// its file goes, then its tasks stop. Returns the answer for the CLI,
    /// to complete with whether the relay confirmed.
    pub(super) async fn revoke(
        &mut self,
        device: &str,
    ) -> Result<Result<(DeviceId, Value), String>, DaemonError> {
        let id = match self.peers.resolve(device) {
            Ok(id) => id,
            Err(e) => return Ok(Err(e.to_string())),
        };
        // Not written: the revocation here still goes ahead (it is what
        // keeps the device out), the relay is still asked now, and the
        // answer says what was not saved.
        let unsaved = self.queue_revoke(id).err();
        if let Some(e) = &unsaved {
            tracing::warn!(peer = %id, error = %e, "revoking without a record for the relay");
        }
        let peer = match self.peers.remove(&id) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e.to_string())),
        };
        self.record(AuditEvent::Revoked { device: id.to_string() });
        self.forget(&id);
        let stopped = self.stop_tasks_of_changed_devices().await?;
        Ok(Ok((
            id,
            json!({
                "ok": true,
                "device_id": id.to_string(),
                "name": peer.name(),
                "stopped": stopped,
                "relay": false,
                "warning": unsaved,
            }),
        )))
    }

    /// [`Daemon::reconcile_devices`], counting the tasks it stopped.
    async fn stop_tasks_of_changed_devices(&mut self) -> Result<usize, DaemonError> {
        let before = self.tasks_stopped;
        self.reconcile_devices().await?;
        Ok(self.tasks_stopped - before)
    }

    /// `tandem cancel TASK`: every phone hears the task finish `cancelled`.
    async fn cancel(&mut self, query: &str) -> Result<Result<Value, String>, DaemonError> {
        match self.tasks.cancel_from_desktop(query).await {
            Ok((done, out)) => {
                let (task_id, was) = match done {
                    DesktopCancel::Stopping { task_id } => (task_id, "running"),
                    DesktopCancel::Dropped { task_id } => (task_id, "queued"),
                };
                self.record(AuditEvent::Cancelled {
                    by: "desktop".into(),
                    task_id: task_id.clone(),
                    instruction: None,
                });
                self.send_all(out).await?;
                Ok(Ok(json!({"ok": true, "task_id": task_id, "was": was})))
            }
            Err(CancelError::History(e)) => Err(e.into()),
            Err(e) => Ok(Err(e.to_string())),
        }
    }

    fn forget(&mut self, id: &DeviceId) {
        self.last_heard.remove(id);
        self.detached.remove(id);
        self.online.remove(id);
    }
}
