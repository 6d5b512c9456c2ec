//! Where a pairing keeps the new device: straight in the [`PeerStore`]
//! (`tandem pair`, nothing else runs) or through the running daemon
//! (`tandem up`: the daemon owns the store and serves the paired devices
//! meanwhile, so the new one joins its live state).

use std::future::Future;

use tandem_proto::DeviceId;
use tokio::sync::{mpsc, oneshot};

use super::PairError;
use crate::audit::{AuditEvent, AuditLog};
use crate::peers::{Peer, PeerError, PeerStore, Scope};

/// Keeps newly paired devices.
pub trait PeerKeeper: Send {
    /// The scope of the device with this id if it is paired already.
    fn scope_of(
        &mut self,
        id: DeviceId,
    ) -> impl Future<Output = Result<Option<Scope>, PairError>> + Send;
    /// Durably save a newly paired device (replacing one with the same id)
    /// and audit the pairing. It is answered only once this returned `Ok`.
    fn keep(&mut self, peer: Peer) -> impl Future<Output = Result<(), PairError>> + Send;
    /// The relay took the accepting answer: clear the device's pending
    /// mark. Returns how many devices are paired now.
    fn finished(&mut self, id: DeviceId) -> impl Future<Output = Result<usize, PairError>> + Send;
    /// The desktop user refused this device (audited).
    fn refused(&mut self, id: DeviceId) -> impl Future<Output = ()> + Send;
    /// The device was answered but never showed it got the answer (a relay
    /// restart lost it): remove it, audited as revoked and forgotten.
    fn interrupted(&mut self, id: DeviceId) -> impl Future<Output = Result<(), PairError>> + Send;
}

/// Save `peer` in `store`, replacing a device with the same id, and audit
/// the pairing through `audit`. Returns the replaced device.
///
/// # Errors
/// [`PeerError`] when it cannot be persisted (nothing changed then).
pub fn keep_peer(
    store: &mut PeerStore,
    audit: &mut dyn FnMut(AuditEvent),
    peer: Peer,
) -> Result<Option<Peer>, PeerError> {
    let event = AuditEvent::Paired {
        device: peer.device_id().to_string(),
        name: peer.name().to_owned(),
        scope: Some(peer.scope().to_string()),
        ephemeral: peer.ephemeral(),
    };
    // Paired again: no longer revoked (before the new file is written; a
    // listed device with a file is an interrupted revocation).
    if let Some(data_dir) = store.dir().parent() {
        crate::agent_config::AgentConfig::forget_revocation(data_dir, &peer.device_id()).map_err(
            |e| match e {
                crate::agent_config::AgentConfigError::Io { path, source } => {
                    PeerError::Io { action: "update", path, source }
                }
                crate::agent_config::AgentConfigError::Parse { path, source } => {
                    PeerError::Corrupt { path, reason: source.to_string() }
                }
            },
        )?;
    }
    let old = store.replace(peer)?;
    audit(event);
    Ok(old)
}

/// Clear `id`'s pending mark and persist it; how many devices are paired.
fn finish(store: &mut PeerStore, id: &DeviceId) -> Result<usize, PeerError> {
    if store.get_mut(id).ok_or(PeerError::UnknownPeer(*id))?.finish_pairing() {
        store.save(id)?;
    }
    Ok(store.list().iter().filter(|p| !p.pairing_pending()).count())
}

/// Remove `id`, a device whose pairing was interrupted after its answer,
/// and audit it (`revoked`, then `forgotten` with the reason).
fn forget_interrupted(
    store: &mut PeerStore,
    audit: &mut dyn FnMut(AuditEvent),
    id: &DeviceId,
) -> Result<(), PeerError> {
    match store.remove(id) {
        Ok(_) | Err(PeerError::UnknownPeer(_)) => {}
        Err(e) => return Err(e),
    }
    audit(AuditEvent::Revoked { device: id.to_string() });
    audit(AuditEvent::Forgotten {
        device: id.to_string(),
        reason: "pairing interrupted: the phone never showed it got the answer".into(),
    });
    Ok(())
}

/// The [`PeerStore`] itself, with the audit log of its data directory.
#[derive(Debug)]
pub struct StoreKeeper<'a> {
    store: &'a mut PeerStore,
    audit: Option<AuditLog>,
}

impl<'a> StoreKeeper<'a> {
    /// Keep devices in `store`; audit to `audit` (a failed audit append is
    /// logged, never fatal).
    #[must_use]
    pub fn new(store: &'a mut PeerStore, audit: Option<AuditLog>) -> Self {
        Self { store, audit }
    }

    fn record(&mut self, event: AuditEvent) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        if let Some(log) = &mut self.audit
            && let Err(e) = log.append(at, event)
        {
            tracing::warn!(error = %e, "audit log append failed");
        }
    }
}

impl PeerKeeper for StoreKeeper<'_> {
    async fn scope_of(&mut self, id: DeviceId) -> Result<Option<Scope>, PairError> {
        Ok(self.store.get(&id).map(Peer::scope))
    }

    async fn keep(&mut self, peer: Peer) -> Result<(), PairError> {
        let mut events = Vec::new();
        keep_peer(self.store, &mut |e| events.push(e), peer)?;
        for e in events {
            self.record(e);
        }
        Ok(())
    }

    async fn finished(&mut self, id: DeviceId) -> Result<usize, PairError> {
        Ok(finish(self.store, &id)?)
    }

    async fn refused(&mut self, id: DeviceId) {
        self.record(AuditEvent::PairingRefused { device: id.to_string() });
    }

    async fn interrupted(&mut self, id: DeviceId) -> Result<(), PairError> {
        let mut events = Vec::new();
        forget_interrupted(self.store, &mut |e| events.push(e), &id)?;
        for e in events {
            self.record(e);
        }
        Ok(())
    }
}

/// A request from a pairing to the running daemon
/// ([`crate::daemon::Daemon::with_pairing`]).
#[derive(Debug)]
pub enum PairCall {
    /// [`PeerKeeper::scope_of`].
    ScopeOf {
        /// The device.
        id: DeviceId,
        /// Its scope, if paired.
        reply: oneshot::Sender<Option<Scope>>,
    },
    /// [`PeerKeeper::keep`].
    Keep {
        /// The new device.
        peer: Box<Peer>,
        /// Whether it was saved.
        reply: oneshot::Sender<Result<(), PeerError>>,
    },
    /// [`PeerKeeper::finished`].
    Finished {
        /// The device.
        id: DeviceId,
        /// How many devices are paired now.
        reply: oneshot::Sender<Result<usize, PeerError>>,
    },
    /// [`PeerKeeper::refused`].
    Refused {
        /// The device.
        id: DeviceId,
    },
    /// [`PeerKeeper::interrupted`].
    Interrupted {
        /// The device.
        id: DeviceId,
        /// Whether it was removed.
        reply: oneshot::Sender<Result<(), PeerError>>,
    },
}

impl PairCall {
    /// Carry out the call on `store`, auditing through `audit`.
    pub fn apply(self, store: &mut PeerStore, audit: &mut dyn FnMut(AuditEvent)) {
        match self {
            PairCall::ScopeOf { id, reply } => {
                let _ = reply.send(store.get(&id).map(Peer::scope));
            }
            PairCall::Keep { peer, reply } => {
                let _ = reply.send(keep_peer(store, audit, *peer).map(|_| ()));
            }
            PairCall::Finished { id, reply } => {
                let _ = reply.send(finish(store, &id));
            }
            PairCall::Refused { id } => {
                audit(AuditEvent::PairingRefused { device: id.to_string() })
            }
            PairCall::Interrupted { id, reply } => {
                let _ = reply.send(forget_interrupted(store, audit, &id));
            }
        }
    }
}

/// The running daemon, reached over a channel.
#[derive(Debug, Clone)]
pub struct DaemonKeeper {
    calls: mpsc::Sender<PairCall>,
}

impl DaemonKeeper {
    /// A keeper and the receiver to hand to the daemon.
    #[must_use]
    pub fn channel() -> (Self, mpsc::Receiver<PairCall>) {
        let (calls, rx) = mpsc::channel(4);
        (Self { calls }, rx)
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> PairCall,
    ) -> Result<T, PairError> {
        let (reply, answer) = oneshot::channel();
        self.calls.send(make(reply)).await.map_err(|_| PairError::Closed)?;
        answer.await.map_err(|_| PairError::Closed)
    }
}

impl PeerKeeper for DaemonKeeper {
    async fn scope_of(&mut self, id: DeviceId) -> Result<Option<Scope>, PairError> {
        self.call(|reply| PairCall::ScopeOf { id, reply }).await
    }

    async fn keep(&mut self, peer: Peer) -> Result<(), PairError> {
        Ok(self.call(|reply| PairCall::Keep { peer: Box::new(peer), reply }).await??)
    }

    async fn finished(&mut self, id: DeviceId) -> Result<usize, PairError> {
        Ok(self.call(|reply| PairCall::Finished { id, reply }).await??)
    }

    async fn refused(&mut self, id: DeviceId) {
        let _ = self.calls.send(PairCall::Refused { id }).await;
    }

    async fn interrupted(&mut self, id: DeviceId) -> Result<(), PairError> {
        Ok(self.call(|reply| PairCall::Interrupted { id, reply }).await??)
    }
}
