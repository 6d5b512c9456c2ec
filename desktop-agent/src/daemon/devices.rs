//! Keeping the daemon's effects in line with the paired devices:
//!
//! * **Tasks.** [`Daemon::reconcile_devices`] compares the task manager's
//!   permits with the peer store after every event, control call and tick,
//!   so a device that disappeared (revoked here, by `tandem revoke` in
//!   another process, or its file deleted) or was lowered below `submit`
//!   has its tasks stopped ([`crate::tasks`]), whichever path changed it.
//!   Each tick also re-reads every peer file ([`PeerStore::sync_from_disk`]),
//!   so a change on disk is noticed within a second even for a device that
//!   is silent.
//! * **The relay.** A revocation is written to `agent.json`'s
//!   `pending_revokes` before the peer file is deleted, and leaves it only
//!   when the relay confirms. Every `Connected` (and the daemon's start)
//!   sends the ones not already waiting for an answer; an unanswered one
//!   stays with the relay client, which sends it again after a reconnect.
//!   A crash anywhere in between leaves it pending, so the next start sends
//!   it; a crash between the two writes also leaves the peer file, which
//!   the next `tandem` command deletes before anything reads the peers
//!   ([`AgentConfig::finish_revocations`]).
//!
//! * **Routes.** Every `Connected` authorises every paired device again
//!   ([`Daemon::reauthorize`]): a relay whose data was wiped or restored
//!   from an older copy (a new store epoch, PROTOCOL.md §6.6) has lost the
//!   routes, and authorising again is idempotent.
//!
//! [`PeerStore::sync_from_disk`]: crate::peers::PeerStore::sync_from_disk

use std::collections::HashMap;

use serde_json::Value;
use tandem_proto::DeviceId;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{Daemon, DaemonError, REVOKE_WAIT};
use crate::agent_config::AgentConfig;
use crate::peers::Scope;

impl Daemon<'_> {
    /// Tell the task manager about every device whose pairing or scope
    /// changed since it last heard: one revoked or lowered below `submit`
    /// has its tasks stopped; the finishes go out and the stops are audited.
    pub(super) async fn reconcile_devices(&mut self) -> Result<(), DaemonError> {
        let paired: HashMap<String, (DeviceId, Scope)> = self
            .peers
            .list()
            .iter()
            .map(|p| (p.device_id().to_string(), (p.device_id(), p.scope())))
            .collect();
        let Some(permits) = self.tasks.permits() else { return Ok(()) };
        let mut changes: Vec<(DeviceId, Option<Scope>)> = Vec::new();
        for (key, scope) in permits {
            match paired.get(key) {
                None => {
                    if let Ok(id) = key.parse::<DeviceId>() {
                        changes.push((id, None));
                    }
                }
                Some((id, now)) if now != scope => changes.push((*id, Some(*now))),
                Some(_) => {}
            }
        }
        for (key, (id, scope)) in &paired {
            if !permits.contains_key(key) {
                changes.push((*id, Some(*scope)));
            }
        }
        for (id, scope) in changes {
            match scope {
                None => info!(peer = %id, "device no longer paired: its tasks stop"),
                Some(s) => info!(peer = %id, scope = %s, "device scope changed"),
            }
            let out = self.tasks.device_changed(id, scope).await?;
            self.send_all(out).await?;
        }
        Ok(())
    }

    /// Take in every peer file's changes made by other processes (a file
    /// that cannot be read is logged; the next event that needs it fails).
    pub(super) fn sync_all_from_disk(&mut self) {
        let ids: Vec<DeviceId> = self.peers.list().iter().map(|p| p.device_id()).collect();
        for id in ids {
            if let Err(e) = self.peers.sync_from_disk(&id) {
                warn!(peer = %id, error = %e, "cannot read a peer file");
            }
        }
    }

    /// Authorise every paired device's route again, in the background (the
    /// relay may have lost its routes; PROTOCOL.md §6.6, §6.8). A device
    /// being revoked is left out.
    pub(super) fn reauthorize(&self) {
        let ids: Vec<DeviceId> = self.peers.list().iter().map(|p| p.device_id()).collect();
        self.authorize_again(ids);
    }

    /// Authorise these devices' routes again, in the background; a refusal
    /// for now (the relay's store cannot write, it is busy) puts the device
    /// in `reauth_later`, which the one-second tick tries again
    /// ([`Daemon::retry_reauthorize`]) while it is still paired and not
    /// being revoked: otherwise the route would stay lost until the next
    /// reconnect.
    fn authorize_again(&self, ids: Vec<DeviceId>) {
        for id in ids {
            if self.revoking.contains(&id) {
                continue;
            }
            let authorize = self.client.authorize(id);
            let later = std::sync::Arc::clone(&self.reauth_later);
            tokio::spawn(async move {
                match authorize.await {
                    Ok(()) => {}
                    Err(e) if e.is_temporary() => {
                        debug!(peer = %id, error = %e, "the route is authorised again later");
                        later.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id);
                    }
                    Err(e) => {
                        warn!(peer = %id, error = %e, "the relay did not take the route again")
                    }
                }
            });
        }
    }

    /// Try again the re-authorisations the relay refused for now (every
    /// tick: at most one request per device and second while it refuses).
    pub(super) fn retry_reauthorize(&self) {
        let ids: Vec<DeviceId> = {
            let mut later =
                self.reauth_later.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            later.drain().collect()
        };
        let ids = ids.into_iter().filter(|id| self.peers.get(id).is_some()).collect();
        self.authorize_again(ids);
    }

    /// Send the relay every revocation it has not confirmed and that is not
    /// already waiting for its answer. A device paired again since (its
    /// pairing authorised the route anew) is no longer revoked: dropped
    /// from the list, not sent.
    pub(super) fn resend_revokes(&mut self) {
        let Some(dir) = self.data_dir.clone() else { return };
        let mut config = match AgentConfig::load(&dir) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot read the revocations the relay has not confirmed");
                return;
            }
        };
        let (paired_again, pending): (Vec<DeviceId>, Vec<DeviceId>) =
            config.pending_revokes.iter().partition(|id| self.peers.get(id).is_some());
        if !paired_again.is_empty() {
            config.pending_revokes.clone_from(&pending);
            if let Err(e) = config.save(&dir) {
                warn!(error = %e, "could not update the revocations the relay has not confirmed");
            }
        }
        for id in pending {
            if !self.revoking.contains(&id) {
                info!(peer = %id, "telling the relay about a revocation");
                self.relay_revoke(id, None);
            }
        }
    }

    /// Ask the relay to revoke `id`'s route, in the background. With
    /// `waiter`, answer it (its JSON with `relay` set) as soon as the relay
    /// confirms, or after [`REVOKE_WAIT`]; the request itself stays until
    /// the relay answers, and [`Daemon::relay_answered`] hears how.
    pub(super) fn relay_revoke(
        &mut self,
        id: DeviceId,
        waiter: Option<(mpsc::Sender<Value>, Value)>,
    ) {
        if !self.revoking.insert(id) {
            // Already asked and waiting for the relay.
            if let Some((reply, mut answer)) = waiter {
                set_relay(&mut answer, false);
                let _ = reply.try_send(answer);
            }
            return;
        }
        let client = self.client.clone();
        let done = self.revoked_tx.clone();
        tokio::spawn(async move {
            let mut revoke = Box::pin(client.revoke(id));
            let result = match waiter {
                Some((reply, mut answer)) => {
                    let early = tokio::time::timeout(REVOKE_WAIT, &mut revoke).await;
                    set_relay(&mut answer, matches!(early, Ok(Ok(()))));
                    let _ = reply.try_send(answer);
                    match early {
                        Ok(r) => r,
                        Err(_) => revoke.await,
                    }
                }
                None => revoke.await,
            };
            if let Err(e) = &result {
                warn!(peer = %id, error = %e, "the relay did not take the revocation; sent again on the next connection");
            }
            let _ = done.send((id, result.is_ok())).await;
        });
    }

    /// The relay answered a revocation: a confirmed one is no longer
    /// pending; a refused one is sent again on the next connection.
    pub(super) fn relay_answered(&mut self, id: DeviceId, confirmed: bool) {
        self.revoking.remove(&id);
        if !confirmed {
            return;
        }
        info!(peer = %id, "the relay confirmed a revocation");
        let Some(dir) = &self.data_dir else { return };
        let saved = AgentConfig::load(dir).and_then(|mut c| {
            c.pending_revokes.retain(|p| *p != id);
            c.save(dir)
        });
        if let Err(e) = saved {
            warn!(peer = %id, error = %e, "could not note that the relay confirmed a revocation");
        }
    }

    /// Note that the relay must be told of `id`'s revocation: on disk, so
    /// that a crash before its answer does not lose it.
    ///
    /// # Errors
    /// The state file could not be written.
    pub(super) fn queue_revoke(&self, id: DeviceId) -> Result<(), String> {
        let Some(dir) = &self.data_dir else { return Ok(()) };
        AgentConfig::load(dir)
            .and_then(|mut c| {
                if !c.pending_revokes.contains(&id) {
                    c.pending_revokes.push(id);
                }
                c.save(dir)
            })
            .map_err(|e| format!("could not record the revocation for the relay: {e}"))
    }
}

/// `answer.relay = confirmed`.
fn set_relay(answer: &mut Value, confirmed: bool) {
    if let Some(o) = answer.as_object_mut() {
        o.insert("relay".into(), confirmed.into());
    }
}
