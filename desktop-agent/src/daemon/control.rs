//! The daemon's answers on the control socket ([`crate::ipc`]): status,
//! task lists and events, following events live, scope changes and
//! revocations, all applied to the daemon's own live state.

use serde_json::{Value, json};
use tandem_proto::DeviceId;
use tracing::warn;

use super::{Daemon, DaemonError, REVOKE_WAIT};
use crate::agent_config::AgentConfig;
use crate::audit::AuditEvent;
use crate::ipc::{Call, Request};
use crate::peers::Scope;

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
            Request::Events { task_id, from_offset } => self
                .tasks
                .events(&task_id, from_offset, crate::ipc::EVENTS_PAGE)
                .map(|events| json!({"ok": true, "events": events}))
                .map_err(|e| e.to_string()),
            Request::Follow { task_id } => {
                if reply.try_send(json!({"ok": true})).is_ok() {
                    self.followers.push((task_id, reply));
                }
                return Ok(());
            }
            Request::SetScope { device, scope } => self.set_scope(&device, scope),
            Request::Revoke { device } => self.revoke(&device).await,
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
                    "scope": p.scope().to_string(),
                    "online": self.online.contains(&id),
                    "attached": !self.detached.contains(&id),
                    "last_seen_unix": p.last_seen_unix(),
                    "session": super::renewal::session_status(p, now_ms),
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

    fn set_scope(&mut self, device: &str, scope: Scope) -> Result<Value, String> {
        let id = self.peers.resolve(device).map_err(|e| e.to_string())?;
        self.peers.set_scope(&id, scope).map_err(|e| e.to_string())?;
        self.record(AuditEvent::ScopeChanged { device: id.to_string(), scope: scope.to_string() });
        Ok(json!({"ok": true, "device_id": id.to_string(), "scope": scope.to_string()}))
    }

    async fn revoke(&mut self, device: &str) -> Result<Value, String> {
        let id = self.peers.resolve(device).map_err(|e| e.to_string())?;
        let peer = self.peers.remove(&id).map_err(|e| e.to_string())?;
        self.record(AuditEvent::Revoked { device: id.to_string() });
        self.forget(&id);
        let relay = match tokio::time::timeout(REVOKE_WAIT, self.client.revoke(id)).await {
            Ok(Ok(())) => true,
            _ => {
                self.queue_revoke(id);
                false
            }
        };
        Ok(json!({"ok": true, "device_id": id.to_string(), "name": peer.name(), "relay": relay}))
    }

    fn forget(&mut self, id: &DeviceId) {
        self.last_heard.remove(id);
        self.detached.remove(id);
        self.online.remove(id);
    }

    /// The relay could not be told now: the next connection tells it.
    fn queue_revoke(&self, id: DeviceId) {
        let Some(dir) = &self.data_dir else { return };
        let saved = AgentConfig::load(dir).and_then(|mut c| {
            if !c.pending_revokes.contains(&id) {
                c.pending_revokes.push(id);
            }
            c.save(dir)
        });
        if let Err(e) = saved {
            warn!(peer = %id, error = %e, "could not queue the revocation for the relay");
        }
    }
}
