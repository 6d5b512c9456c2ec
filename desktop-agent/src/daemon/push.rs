//! Push notifications for phones that asked for them (docs/PUSH.md): an
//! approval request, a finished task, a notice of lost messages, sealed
//! with the phone's push key (`tandem_proto::push`) so that the relay and
//! the push service see only an opaque blob, a collapse topic and an
//! urgency.
//!
//! A phone's `push_setup` sets or clears its key and what it wants
//! pushed; the pushes for a batch of messages are worked out when it is
//! sealed and asked of the relay once the batch is saved
//! ([`Daemon::flush_pushes`]). A push is a hint that wakes the phone: what
//! it announces reaches the phone through the link all the same, so a push
//! the relay refuses or loses costs nothing but the wake-up.

use tandem_proto::DeviceId;
use tandem_proto::frame::Urgency;
use tandem_proto::message::{Message, TaskEvent};
use tandem_proto::push::{Notification, NotificationKind, PushKey};
use tracing::{debug, info, warn};

use super::Daemon;
use crate::peers::{Peer, PushPrefs};
use crate::tasks::{Audience, Outgoing};

/// One push to ask of the relay.
#[derive(Debug)]
pub(super) struct PendingPush {
    pub to: DeviceId,
    pub urgency: Urgency,
    pub topic: [u8; 16],
    pub blob: Vec<u8>,
}

impl Daemon<'_> {
    /// A phone's `push_setup`: its key and choices, or none. Saved with
    /// its link (the caller's batch).
    pub(super) fn push_setup(
        &mut self,
        from: DeviceId,
        enabled: bool,
        key_id: Option<String>,
        key: Option<tandem_proto::message::Secret>,
        kinds: [Option<bool>; 3],
    ) {
        let Some(peer) = self.peers.get_mut(&from) else { return };
        if !enabled {
            if peer.push().is_some() {
                info!(peer = %from, "push notifications turned off");
            }
            peer.set_push(None);
            return;
        }
        let (Some(key_id), Some(key)) = (key_id, key) else {
            warn!(peer = %from, "push_setup without a key ignored");
            return;
        };
        let [approvals, finished, missing] = kinds.map(|k| k.unwrap_or(true));
        let prefs = PushPrefs { key_id, key, approvals, finished, missing };
        if let Err(e) = prefs.key() {
            warn!(peer = %from, error = %e, "push_setup with a malformed key ignored");
            return;
        }
        info!(peer = %from, key_id = %prefs.key_id, approvals, finished, missing, "push notifications set up");
        peer.set_push(Some(prefs));
    }

    /// The pushes the messages of `out` call for, kept until the batch is
    /// saved.
    pub(super) fn plan_pushes(&mut self, out: &Outgoing) {
        for (audience, message) in out {
            if *audience != Audience::Everyone {
                continue;
            }
            let Message::TaskEvent { task_id, at_ms, event, .. } = message else { continue };
            let (kind, title, body, approval) = match event {
                TaskEvent::ApprovalRequest { approval_id, summary, expires_at_ms, .. } => (
                    NotificationKind::Approval,
                    format!("Approve? {summary}"),
                    self.task_title(task_id),
                    Some((approval_id.clone(), *expires_at_ms)),
                ),
                TaskEvent::Finished { status, summary, denied, failed, .. } => {
                    let mut title = format!("Task {}", crate::tasks::status_str(*status));
                    if !denied.is_empty() {
                        title.push_str(&format!(" (denied: {})", denied.join(", ")));
                    }
                    if !failed.is_empty() {
                        title.push_str(&format!(" (failed: {})", failed.join(", ")));
                    }
                    let body = format!("{}\n{}", self.task_title(task_id), summary);
                    (NotificationKind::Finished, title, body, None)
                }
                _ => continue,
            };
            let peers: Vec<DeviceId> = self.peers.list().iter().map(|p| p.device_id()).collect();
            for id in peers {
                let Some(peer) = self.peers.get(&id) else { continue };
                let Some(key) = wants(peer, kind) else { continue };
                let note = Notification {
                    kind,
                    desktop: self.own_name.clone(),
                    title: title.clone(),
                    body: body.clone(),
                    task_id: Some(task_id.clone()),
                    approval_id: approval.as_ref().map(|(a, _)| a.clone()),
                    expires_at_ms: approval.as_ref().map(|(_, e)| *e),
                    can_decide: kind == NotificationKind::Approval && peer.scope().allows_approve(),
                    at_ms: *at_ms,
                };
                let urgency = match kind {
                    NotificationKind::Approval => Urgency::High,
                    _ => Urgency::Normal,
                };
                let topic = key.topic(task_id);
                self.seal_push(id, &key, &note, urgency, topic);
            }
        }
    }

    /// A notice to `to` that some of its messages never reached this
    /// desktop (its link reported a gap it cannot fill).
    pub(super) fn plan_missing_push(&mut self, to: DeviceId, first: u64, last: u64) {
        let Some(peer) = self.peers.get(&to) else { return };
        let Some(key) = wants(peer, NotificationKind::Missing) else { return };
        let count = last.saturating_sub(first).saturating_add(1);
        let note = Notification {
            kind: NotificationKind::Missing,
            desktop: self.own_name.clone(),
            title: "Messages did not arrive".into(),
            body: format!(
                "{count} of your messages never reached this desktop: open Tandem to check what it did"
            ),
            task_id: None,
            approval_id: None,
            expires_at_ms: None,
            can_decide: false,
            at_ms: crate::damage::now_ms(),
        };
        self.seal_push(to, &key, &note, Urgency::Normal, [0; 16]);
    }

    fn seal_push(
        &mut self,
        to: DeviceId,
        key: &PushKey,
        note: &Notification,
        urgency: Urgency,
        topic: [u8; 16],
    ) {
        match key.seal(note, &mut self.entropy) {
            Ok(blob) => self.pushes.push(PendingPush { to, urgency, topic, blob }),
            Err(e) => warn!(peer = %to, error = %e, "push not sealed"),
        }
    }

    /// Ask the relay for the pushes planned so far (after the batch that
    /// announced them was saved). Not kept across a restart: a push is a
    /// wake-up, and what it announced is in the phone's outbox.
    pub(super) fn flush_pushes(&mut self) {
        if self.pushes.is_empty() {
            return;
        }
        if !self.connected {
            debug!(count = self.pushes.len(), "not connected: pushes dropped");
            self.pushes.clear();
            return;
        }
        for p in std::mem::take(&mut self.pushes) {
            // Not waited for: the answer only says whether the relay took it.
            let asked = self.client.notify(p.to, p.urgency, p.topic, p.blob);
            let to = p.to;
            tokio::spawn(async move {
                match asked.await {
                    Ok(()) => debug!(peer = %to, "push asked of the relay"),
                    Err(e) => info!(peer = %to, error = %e, "the relay did not take a push"),
                }
            });
        }
    }

    /// The first line of a task's text, for a notification.
    fn task_title(&self, task_id: &str) -> String {
        match self.tasks.record(task_id) {
            Ok(Some(r)) => r.summary().title,
            _ => String::new(),
        }
    }
}

/// The device's push key, when it wants pushes of `kind`.
fn wants(peer: &Peer, kind: NotificationKind) -> Option<PushKey> {
    let prefs = peer.push()?;
    let on = match kind {
        NotificationKind::Approval => prefs.approvals,
        NotificationKind::Finished => prefs.finished,
        NotificationKind::Missing => prefs.missing,
        NotificationKind::Other => false,
    };
    if !on {
        return None;
    }
    prefs.key().ok()
}
