//! A node's upkeep in the cluster, each part in a task of its own so that
//! none waits behind another: the heartbeat (its liveness, never held up by
//! anything else), the reaping of dead nodes and the announcement of their
//! devices, and the reconciliation of what this node holds with what Redis
//! says (after every resubscription, and every [`RECONCILE`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tandem_proto::DeviceId;
use tandem_proto::frame::Frame;
use tokio::time::sleep;
use tracing::{debug, info, warn};

use super::{Change, Cluster, HEARTBEAT};
use crate::registry::Outbound;
use crate::state::State;

/// How often a node checks its connections against the owners Redis names
/// and releases what it owns without a connection (a `Replaced` message or
/// a release that was lost, a previous run under the same node id).
pub const RECONCILE: Duration = Duration::from_secs(10);

/// Renew the node's liveness every [`HEARTBEAT`] until shutdown. A node
/// that finds its liveness had expired (it was frozen, or Redis was away or
/// failed over) reconciles at once: the devices another node took meanwhile
/// are replaced here, the ones whose ownership was reaped claim again and
/// are announced online.
pub(crate) async fn run_heartbeat(state: Arc<State>, cluster: Arc<Cluster>) {
    let mut first = true;
    while !state.shutdown.is_cancelled() {
        match cluster.heartbeat().await {
            Ok(was_alive) => {
                cluster.beating.store(true, Ordering::Release);
                if !was_alive && !first {
                    warn!(
                        node = cluster.node(),
                        "this node's liveness had expired; reconciling its connections"
                    );
                    let (state, cluster) = (state.clone(), cluster.clone());
                    tokio::spawn(async move { reconcile(&state, &cluster).await });
                }
                first = false;
            }
            Err(e) => {
                cluster.beating.store(false, Ordering::Release);
                warn!(error = %e, "cluster heartbeat failed");
            }
        }
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            () = sleep(HEARTBEAT) => {}
        }
    }
}

/// Reap dead nodes every [`HEARTBEAT`] (their devices' peers are told in a
/// task of its own), and reconcile every [`RECONCILE`], the first time at
/// once (what a previous run under this node id left is released).
pub(crate) async fn run_upkeep(state: Arc<State>, cluster: Arc<Cluster>) {
    let mut reconciled: Option<tokio::time::Instant> = None;
    while !state.shutdown.is_cancelled() {
        // Each step's devices are announced before the next step: a step
        // that fails loses none of those already taken.
        loop {
            match cluster.reap_step().await {
                Ok((gone, more)) => {
                    if !gone.is_empty() {
                        info!(devices = gone.len(), "reaped the devices of a node that died");
                        tokio::spawn(offline_all(state.clone(), cluster.clone(), gone));
                    }
                    if !more {
                        break;
                    }
                }
                Err(e) => {
                    debug!(error = %e, "could not look for dead nodes");
                    break;
                }
            }
        }
        if reconciled.is_none_or(|t| t.elapsed() >= RECONCILE) && reconcile(&state, &cluster).await
        {
            reconciled = Some(tokio::time::Instant::now());
        }
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            () = sleep(HEARTBEAT) => {}
        }
    }
}

/// After a (re)subscription: what the node may have missed while it was not
/// subscribed, made good. Every connection reads its queue again (a live
/// delivery may have been lost), cached routes are dropped, ownership is
/// reconciled (a `Replaced` may have been lost), claims of this node's
/// mailboxes are replayed, and presence is sent afresh.
pub(crate) async fn resync(state: Arc<State>, cluster: Arc<Cluster>) {
    state.routes.clear();
    let here = state.registry.devices();
    for (_, h) in &here {
        h.hold.request_reread();
    }
    reconcile(&state, &cluster).await;
    replay_claims(&state, &cluster).await;
    for (device, _) in here {
        // Where each peer is, through this node's channel (ordered with
        // every presence change published since).
        let Ok(peers) = state.routes.peers(device).await else { continue };
        let peers: Vec<DeviceId> = peers.iter().copied().collect();
        if let Err(e) = cluster.announce(device, &Change::Look, &peers).await {
            debug!(error = %e, "could not refresh a device's presence");
            return;
        }
    }
}

/// Check this node's connections against the owners Redis names: one that
/// another node took with a higher fence is replaced, one that lost its
/// owner entry claims again, one whose entry a sibling connection on this
/// node wrote adopts its fence; and release what `own` gives to this node
/// without a connection here (its peers hear it went offline). True when
/// Redis answered.
async fn reconcile(state: &State, cluster: &Cluster) -> bool {
    // Connections still claiming (fence 0) are left to their claim.
    let here: Vec<_> =
        state.registry.devices().into_iter().filter(|(_, h)| h.fence() != 0).collect();
    let ids: Vec<DeviceId> = here.iter().map(|(d, _)| *d).collect();
    let Ok(owners) = cluster.owners(&ids).await else { return false };
    for ((device, h), owner) in here.iter().zip(owners) {
        match owner {
            Some((node, fence)) if node == cluster.node() => {
                if fence > h.fence() {
                    h.set_fence(fence);
                }
                // Its "online" was never said (Redis or the store failed
                // then): said now.
                if !h.announced()
                    && crate::conn::announce(state, *device, Change::Online(fence)).await
                {
                    h.set_announced();
                }
            }
            Some((_, fence)) if fence > h.fence() => h.replaced_at(fence),
            _ => match cluster.claim_at(*device).await {
                Ok((fence, next)) => {
                    // Its ownership was reaped: its peers were told it went.
                    h.set_fence(fence);
                    h.hold.claimed(state, fence, next);
                    if crate::conn::announce(state, *device, Change::Online(fence)).await {
                        h.set_announced();
                    }
                }
                Err(e) => debug!(error = %e, "could not claim a device again"),
            },
        }
    }
    let Ok(owned) = cluster.owned().await else { return false };
    for (device, value) in owned {
        if state.registry.get(&device).is_some() {
            continue;
        }
        // Released only if the entry is still the one read (a claim since
        // changed it), and its peers told in the same step.
        if crate::conn::announce(state, device, Change::Orphan(value)).await {
            info!(device = %device, "released a device this node owned without a connection");
        }
    }
    true
}

/// Claims of mailboxes open here that this node did not hear of (a lost
/// `Claimed` message): read from Redis and handed to the desktop.
async fn replay_claims(state: &State, cluster: &Cluster) {
    for (id, desktop) in state.mailboxes.unclaimed() {
        let Ok(Some((claimer, payload))) = cluster.pair_claimed(id).await else { continue };
        if state.mailboxes.claim(id, claimer).is_ok()
            && let Some(h) = state.registry.get(&desktop)
        {
            h.offer(Outbound::Frame(Frame::PairMessage { pairing_id: id, peer: claimer, payload }));
            state.metrics.pairing("claimed");
        }
    }
}

/// The devices of a node that died are offline: their peers hear so,
/// wherever they are (unless a device is back on some node already). One
/// that could not be announced (the store or Redis away) is tried again,
/// every second for [`GONE_TRIES`] seconds, unless it is owned again.
async fn offline_all(state: Arc<State>, cluster: Arc<Cluster>, mut devices: Vec<DeviceId>) {
    for _ in 0..GONE_TRIES {
        let mut left = Vec::new();
        for device in devices {
            if state.shutdown.is_cancelled() {
                return;
            }
            if state.registry.get(&device).is_some() {
                continue;
            }
            // Said only if nobody owns it now (it may be back on some node).
            if !crate::conn::announce(&state, device, Change::Gone).await
                && !matches!(cluster.owners(&[device]).await.as_deref(), Ok([Some(_)]))
            {
                left.push(device);
            }
        }
        if left.is_empty() {
            return;
        }
        devices = left;
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            () = sleep(HEARTBEAT) => {}
        }
    }
    warn!(
        devices = devices.len(),
        "could not tell the peers of reaped devices that they went offline"
    );
}

/// How many times [`offline_all`] tries a device.
const GONE_TRIES: usize = 30;
