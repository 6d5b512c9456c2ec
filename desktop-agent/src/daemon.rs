//! The connected agent: receives end-to-end records from paired devices,
//! keeps each link's state on disk, acknowledges what it has persisted, and
//! answers the application messages it can.
//!
//! Task execution (executors, approvals, history) is not part of this
//! version: with no executor configured, a submitted task is refused with
//! the code `no_executor`, as the safety rules require ("nothing runs that
//! the user did not configure"). Messages about tasks this desktop does not
//! know are refused with `unknown_task`.

use tandem_client::{Client, Event};
use tandem_proto::link::LinkEvent;
use tandem_proto::message::{Decoded, Message};
use tandem_proto::{DeviceId, DeviceKey};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::peers::{PeerError, PeerStore};

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
    entropy: tandem_proto::entropy::Entropy,
}

impl<'a> Daemon<'a> {
    /// A loop over `client`'s events for the devices in `peers`.
    pub fn new(client: &'a Client, key: &'a DeviceKey, peers: &'a mut PeerStore) -> Self {
        Self { client, key, peers, entropy: tandem_proto::entropy::Entropy::os() }
    }

    /// Handle events until the client stops.
    ///
    /// # Errors
    /// [`DaemonError`] when state cannot be persisted.
    pub async fn run(&mut self, events: &mut mpsc::Receiver<Event>) -> Result<(), DaemonError> {
        while let Some(ev) = events.recv().await {
            self.handle(ev).await?;
        }
        Ok(())
    }

    /// Handle one event.
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
                // Persisted above: the relay may delete it now.
                self.client.ack(delivery_id);
            }
            other => debug!(?other, "event"),
        }
        Ok(())
    }

    async fn resend(&mut self, id: DeviceId) -> Result<(), DaemonError> {
        let Some(peer) = self.peers.get_mut(&id) else { return Ok(()) };
        let records = match peer.link_mut().resend(0) {
            Ok(r) => r,
            Err(e) => {
                warn!(peer = %id, error = %e, "cannot reseal; a session renewal is needed");
                return Ok(());
            }
        };
        self.peers.save(&id)?;
        for r in records {
            if let Err(e) = self.client.send(id, r).await {
                warn!(peer = %id, error = %e, "resend refused");
            }
        }
        Ok(())
    }

    async fn deliver(&mut self, from: DeviceId, payload: &[u8]) -> Result<(), DaemonError> {
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
        let mut out = Vec::new();
        for ev in events {
            match ev {
                LinkEvent::Message { message, .. } => {
                    if let Some(reply) = self.answer(from, &message) {
                        out.push(reply);
                    }
                }
                LinkEvent::Send(envelopes) => out.extend(envelopes.into_iter().map(Ok)),
                LinkEvent::ResyncNeeded { from: a, to: b } => {
                    warn!(peer = %from, a, b, "messages from the phone were lost before they reached this desktop");
                }
                LinkEvent::AckDue | LinkEvent::SessionRenewed => {}
            }
        }
        // Replies ride on sealed data; a bare ack is added when nothing else goes back.
        let Some(peer) = self.peers.get_mut(&from) else { return Ok(()) };
        let mut records = Vec::new();
        for item in out {
            match item {
                Ok(envelope) => records.push(envelope),
                Err(message) => match peer.link_mut().send(message) {
                    Ok((_, r)) => records.push(r),
                    Err(e) => warn!(peer = %from, error = %e, "reply not sealed"),
                },
            }
        }
        if records.is_empty()
            && let Ok(ack) = peer.link_mut().ack()
        {
            records.push(ack);
        }
        // Persist before anything leaves and before the relay is acked.
        self.peers.save(&from)?;
        for r in records {
            if let Err(e) = self.client.send(from, r).await {
                warn!(peer = %from, error = %e, "send refused");
            }
        }
        Ok(())
    }

    /// The reply to an application message, as message bytes to seal
    /// (`Err` carries the bytes; `Ok` is an already sealed envelope).
    fn answer(&mut self, from: DeviceId, bytes: &[u8]) -> Option<Result<Vec<u8>, Vec<u8>>> {
        let reply = match Message::decode(bytes) {
            Ok(Decoded::Known(Message::TaskSubmit { task_id, .. })) => {
                info!(peer = %from, "task refused: no executor configured");
                Message::Refused {
                    task_id: Some(task_id),
                    code: "no_executor".into(),
                    message: "no executor is configured on this computer".into(),
                }
            }
            Ok(Decoded::Known(
                Message::FollowUp { task_id, .. }
                | Message::Cancel { task_id }
                | Message::ApprovalDecision { task_id, .. },
            )) => Message::Refused {
                task_id: Some(task_id),
                code: "unknown_task".into(),
                message: "this computer has no such task".into(),
            },
            Ok(Decoded::Known(Message::HistoryRequest { task_id: Some(task_id), from_offset })) => {
                Message::HistoryUnavailable { task_id, requested_from: from_offset, earliest: 0 }
            }
            Ok(Decoded::Known(Message::DeviceInfo(_))) => return None,
            Ok(Decoded::Known(other)) => {
                debug!(peer = %from, kind = ?std::mem::discriminant(&other), "message not for a desktop");
                return None;
            }
            Ok(Decoded::Unknown { kind, v }) => {
                info!(peer = %from, kind, v, "message kind from a newer app ignored");
                return None;
            }
            Err(e) => {
                warn!(peer = %from, error = %e, "malformed message");
                return None;
            }
        };
        reply.encode().ok().map(Err)
    }
}
