//! The connected agent: receives end-to-end records from paired devices,
//! keeps each link's state on disk, acknowledges what it has persisted, runs
//! tasks through the configured executors ([`crate::tasks`]) and streams
//! their events to every paired device.
//!
//! Ordering rule: a link is persisted before anything sealed under it is
//! sent and before the relay delivery that changed it is acknowledged.

use std::time::Duration;

use tandem_client::{Client, Event};
use tandem_proto::link::LinkEvent;
use tandem_proto::message::{Decoded, Message};
use tandem_proto::{DeviceId, DeviceKey};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::audit::{AuditEvent, AuditLog, text_hash};
use crate::executor::Control;
use crate::peers::{PeerError, PeerStore};
use crate::tasks::{Audience, TaskManager, TaskUpdate};

/// Why the agent loop stopped.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The peer store could not be written: stop rather than ack unpersisted state.
    #[error(transparent)]
    Store(#[from] PeerError),
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The agent's message loop.
pub struct Daemon<'a> {
    client: &'a Client,
    key: &'a DeviceKey,
    peers: &'a mut PeerStore,
    tasks: TaskManager,
    updates: mpsc::Receiver<TaskUpdate>,
    entropy: tandem_proto::entropy::Entropy,
    audit: Option<AuditLog>,
}

impl std::fmt::Debug for Daemon<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").field("tasks", &self.tasks).finish_non_exhaustive()
    }
}

impl<'a> Daemon<'a> {
    /// A loop over `client`'s events for the devices in `peers`, running
    /// tasks with `tasks`' executors.
    pub fn new(
        client: &'a Client,
        key: &'a DeviceKey,
        peers: &'a mut PeerStore,
        (tasks, updates): (TaskManager, mpsc::Receiver<TaskUpdate>),
    ) -> Self {
        Self {
            client,
            key,
            peers,
            tasks,
            updates,
            entropy: tandem_proto::entropy::Entropy::os(),
            audit: None,
        }
    }

    /// Record every remote instruction and decision in `log`.
    #[must_use]
    pub fn with_audit(mut self, log: AuditLog) -> Self {
        self.audit = Some(log);
        self
    }

    fn record(&mut self, event: AuditEvent) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        if let Some(log) = &mut self.audit
            && let Err(e) = log.append(at, event)
        {
            warn!(error = %e, "audit log append failed");
        }
    }

    /// Audit what the desktop tells phones about tasks and approvals.
    fn audit_outgoing(&mut self, out: &[(Audience, Message)]) {
        for (audience, m) in out {
            let event = match m {
                Message::TaskEvent { task_id, event, .. } => match event {
                    tandem_proto::message::TaskEvent::ApprovalRequest {
                        approval_id,
                        summary,
                        ..
                    } => AuditEvent::ApprovalRequested {
                        task_id: task_id.clone(),
                        approval_id: approval_id.clone(),
                        summary_hash: text_hash(summary),
                    },
                    tandem_proto::message::TaskEvent::ApprovalResolved {
                        approval_id,
                        allow,
                        by,
                    } => AuditEvent::ApprovalDecided {
                        task_id: task_id.clone(),
                        approval_id: approval_id.clone(),
                        allow: *allow,
                        by: by.clone(),
                    },
                    tandem_proto::message::TaskEvent::Finished { status, .. } => {
                        AuditEvent::TaskFinished {
                            task_id: task_id.clone(),
                            status: crate::tasks::status_str(*status).to_owned(),
                        }
                    }
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

    /// Handle relay events and executor updates until the client stops.
    ///
    /// # Errors
    /// [`DaemonError`] when state cannot be persisted.
    pub async fn run(&mut self, events: &mut mpsc::Receiver<Event>) -> Result<(), DaemonError> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.handle(ev).await?,
                    None => break,
                },
                Some(u) = self.updates.recv() => {
                    let out = self.tasks.update(u);
                    self.send_all(out).await?;
                }
                _ = tick.tick() => {
                    let out = self.tasks.expire_approvals().await;
                    self.send_all(out).await?;
                }
            }
        }
        self.tasks.cancel_all().await;
        Ok(())
    }

    /// Handle one relay event.
    ///
    /// # Errors
    /// [`DaemonError`] when state cannot be persisted.
    pub async fn handle(&mut self, ev: Event) -> Result<(), DaemonError> {
        match ev {
            Event::Connected { .. } => {
                // Whatever the peers have not acknowledged goes out again.
                let ids: Vec<DeviceId> = self.peers.list().iter().map(|p| p.device_id()).collect();
                for id in ids {
                    self.resend(id).await?;
                }
            }
            Event::Presence { peer, online: true } => self.resend(peer).await?,
            Event::Deliver { delivery_id, from, payload } => {
                self.deliver(from, &payload).await?;
                // Persisted: the relay may delete it now.
                self.client.ack(delivery_id);
            }
            other => debug!(?other, "event"),
        }
        Ok(())
    }

    async fn resend(&mut self, id: DeviceId) -> Result<(), DaemonError> {
        if !self.peers.sync_from_disk(&id)? {
            return Ok(());
        }
        let Some(peer) = self.peers.get_mut(&id) else { return Ok(()) };
        let records = match peer.link_mut().resend(0) {
            Ok(r) => r,
            Err(e) => {
                warn!(peer = %id, error = %e, "cannot reseal; a session renewal is needed");
                return Ok(());
            }
        };
        match self.peers.save(&id) {
            Err(PeerError::UnknownPeer(_)) => return Ok(()),
            r => r?,
        }
        for r in records {
            if let Err(e) = self.client.send(id, r).await {
                warn!(peer = %id, error = %e, "resend refused");
            }
        }
        Ok(())
    }

    async fn deliver(&mut self, from: DeviceId, payload: &[u8]) -> Result<(), DaemonError> {
        // A revocation or scope change made by `tandem revoke`/`scope` meanwhile.
        if !self.peers.sync_from_disk(&from)? {
            debug!(peer = %from, "record from a device that is not paired dropped");
            return Ok(());
        }
        let Some(peer) = self.peers.get_mut(&from) else {
            // Not (or no longer) paired: nothing in it can be accepted.
            debug!(peer = %from, "record from an unknown device dropped");
            return Ok(());
        };
        let events = match peer.link_mut().receive(self.key, payload, &mut self.entropy) {
            Ok(e) => e,
            Err(e) => {
                debug!(peer = %from, error = %e, "record refused");
                return Ok(());
            }
        };
        peer.mark_seen(now_unix());
        let scope = peer.scope();
        // Persist what was received before acting on it: a crash from here on
        // never makes a task run twice (the relay redelivers, the link drops
        // the duplicate); at worst the phone sees no answer and asks again.
        match self.peers.save(&from) {
            Err(PeerError::UnknownPeer(_)) => return Ok(()),
            r => r?,
        }
        let mut envelopes = Vec::new();
        let mut replies = Vec::new();
        for ev in events {
            match ev {
                LinkEvent::Message { message, .. } => {
                    replies.extend(self.answer(from, scope, &message).await);
                }
                LinkEvent::Send(e) => envelopes.extend(e),
                LinkEvent::ResyncNeeded { from: a, to: b } => {
                    warn!(peer = %from, a, b, "messages from the phone were lost before they reached this desktop");
                }
                LinkEvent::AckDue | LinkEvent::SessionRenewed => {}
            }
        }
        // The acknowledgement rides on the first reply to this device, or goes bare.
        let direct = replies.iter().any(|(a, _)| matches!(a, Audience::Device(d) if *d == from))
            || replies.iter().any(|(a, _)| *a == Audience::Everyone);
        if !direct
            && let Some(peer) = self.peers.get_mut(&from)
            && let Ok(ack) = peer.link_mut().ack()
        {
            envelopes.push(ack);
        }
        match self.peers.save(&from) {
            Err(PeerError::UnknownPeer(_)) => return Ok(()),
            r => r?,
        }
        for e in envelopes {
            if let Err(err) = self.client.send(from, e).await {
                warn!(peer = %from, error = %err, "send refused");
            }
        }
        self.send_all(replies).await
    }

    /// Seal and send application messages to their audience.
    async fn send_all(&mut self, out: Vec<(Audience, Message)>) -> Result<(), DaemonError> {
        self.audit_outgoing(&out);
        for (audience, message) in out {
            let Ok(bytes) = message.encode() else { continue };
            let targets: Vec<DeviceId> = match audience {
                Audience::Device(d) => vec![d],
                Audience::Everyone => self.peers.list().iter().map(|p| p.device_id()).collect(),
            };
            for id in targets {
                if !self.peers.sync_from_disk(&id)? {
                    continue;
                }
                let Some(peer) = self.peers.get_mut(&id) else { continue };
                let record = match peer.link_mut().send(bytes.clone()) {
                    Ok((_, r)) => r,
                    Err(e) => {
                        warn!(peer = %id, error = %e, "message not sealed; it stays in the outbox");
                        continue;
                    }
                };
                // Persist before the record leaves.
                match self.peers.save(&id) {
                    Err(PeerError::UnknownPeer(_)) => continue,
                    r => r?,
                }
                if let Err(e) = self.client.send(id, record).await {
                    debug!(peer = %id, error = %e, "send refused; resent on reconnect");
                }
            }
        }
        Ok(())
    }

    async fn answer(
        &mut self,
        from: DeviceId,
        scope: crate::peers::Scope,
        bytes: &[u8],
    ) -> Vec<(Audience, Message)> {
        match Message::decode(bytes) {
            Ok(Decoded::Known(Message::TaskSubmit { task_id, text, executor, .. })) => {
                self.record(AuditEvent::TaskSubmitted {
                    device: from.to_string(),
                    task_id: task_id.clone(),
                    executor: executor.clone(),
                    text_hash: text_hash(&text),
                    text_len: text.len(),
                });
                self.tasks.submit(from, scope, task_id, &text, executor.as_deref())
            }
            Ok(Decoded::Known(Message::FollowUp { task_id, text })) => {
                self.record(AuditEvent::FollowUp {
                    device: from.to_string(),
                    task_id: task_id.clone(),
                    text_hash: text_hash(&text),
                });
                self.tasks.control(from, scope, &task_id, Control::FollowUp(text)).await
            }
            Ok(Decoded::Known(Message::Cancel { task_id })) => {
                self.record(AuditEvent::Cancelled {
                    by: format!("phone:{from}"),
                    task_id: task_id.clone(),
                });
                self.tasks.control(from, scope, &task_id, Control::Cancel).await
            }
            Ok(Decoded::Known(Message::ApprovalDecision { task_id, approval_id, allow })) => {
                self.tasks.decide(from, scope, &task_id, &approval_id, allow).await
            }
            Ok(Decoded::Known(Message::HistoryRequest { task_id: Some(task_id), from_offset })) => {
                self.tasks.history(from, &task_id, from_offset)
            }
            Ok(Decoded::Known(other)) => {
                debug!(peer = %from, kind = ?std::mem::discriminant(&other), "message not for a desktop");
                Vec::new()
            }
            Ok(Decoded::Unknown { kind, v }) => {
                info!(peer = %from, kind, v, "message kind from a newer app ignored");
                Vec::new()
            }
            Err(e) => {
                warn!(peer = %from, error = %e, "malformed message");
                Vec::new()
            }
        }
    }
}
