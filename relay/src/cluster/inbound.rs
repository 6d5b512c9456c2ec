//! A node's two cluster tasks: its channel subscription (messages from the
//! other nodes, acted on here) and its heartbeat (liveness, and the reaping
//! of nodes that died).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use tandem_proto::frame::Frame;
use tandem_proto::{DeviceId, ErrorCode};
use tokio::time::{sleep, timeout};
use tracing::{debug, info, warn};

use super::{Cluster, HEARTBEAT, Message};
use crate::registry::Outbound;
use crate::state::State;

/// Keep the node's channel subscribed until shutdown; act on what arrives.
/// After every (re)subscription the node resynchronises: messages sent
/// while it was not subscribed are lost, so every connection reads its
/// queue again, cached routes are dropped and presence is sent afresh.
pub(crate) async fn run(state: Arc<State>, cluster: Arc<Cluster>) {
    let mut backoff = Duration::from_millis(100);
    while !state.shutdown.is_cancelled() {
        match subscribe(&cluster).await {
            Ok((mut sink, mut stream)) => {
                backoff = Duration::from_millis(100);
                cluster.subscribed.store(true, Ordering::Release);
                info!(node = cluster.node(), "cluster channel subscribed");
                resync(&state, &cluster).await;
                let mut ping = tokio::time::interval(HEARTBEAT);
                loop {
                    tokio::select! {
                        () = state.shutdown.cancelled() => return,
                        msg = stream.next() => match msg {
                            Some(m) => dispatch(&state, &cluster, m.get_payload_bytes()).await,
                            None => break,
                        },
                        _ = ping.tick() => {
                            // A connection cut without a reset shows here.
                            // (A subscribed connection answers PING with an array.)
                            let alive =
                                timeout(Duration::from_secs(2), sink.ping::<redis::Value>()).await;
                            if !matches!(alive, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                cluster.subscribed.store(false, Ordering::Release);
                warn!(node = cluster.node(), "cluster channel lost; subscribing again");
            }
            Err(e) => warn!(error = %e, "cannot subscribe to the cluster channel"),
        }
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            () = sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn subscribe(
    cluster: &Cluster,
) -> Result<(redis::aio::PubSubSink, redis::aio::PubSubStream), redis::RedisError> {
    let connect = async {
        let client = cluster
            .link
            .client()
            .await
            .map_err(|e| redis::RedisError::from(std::io::Error::other(e.to_string())))?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(cluster.channel()).await?;
        pubsub.subscribe(cluster.all_channel()).await?;
        Ok(pubsub.split())
    };
    match timeout(Duration::from_secs(3), connect).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "subscribing took over 3 s",
        ))),
    }
}

/// What the node may have missed while it was not subscribed, made good.
async fn resync(state: &State, cluster: &Cluster) {
    state.routes.clear();
    let here = state.registry.devices();
    for (_, h) in &here {
        // Its writer reads the store: a live delivery may have been lost.
        h.answers().wake();
    }
    for (device, h) in here {
        let Ok(peers) = state.routes.peers(device).await else { continue };
        let remote: Vec<_> =
            peers.iter().filter(|p| state.registry.get(p).is_none()).map(|p| (*p, None)).collect();
        let Ok(online) = cluster.route(&remote).await else { return };
        for ((peer, _), online) in remote.iter().zip(online) {
            h.offer(Outbound::Frame(Frame::Presence { peer: *peer, online }));
        }
    }
}

/// Act on one message from another node.
async fn dispatch(state: &State, cluster: &Cluster, bytes: &[u8]) {
    let msg = match Message::decode(bytes) {
        Ok(m) => m,
        Err(e) => {
            cluster.garbage.fetch_add(1, Ordering::Relaxed);
            debug!(error = %e, "dropped a cluster message");
            return;
        }
    };
    match msg {
        Message::Deliver { to, epoch, frame } => {
            let Some(h) = state.registry.get(&to) else { return };
            let Frame::Deliver { delivery_id, from, payload } = frame else {
                cluster.garbage.fetch_add(1, Ordering::Relaxed);
                return;
            };
            // An id of another epoch than this node's store knows is not
            // passed on (the queue is read again under the new one); nor a
            // frame whose route was revoked since it was queued.
            if epoch == state.store.epoch()
                && state.routes.is_route(from, to).await.unwrap_or(false)
            {
                h.offer(Outbound::Deliver { id: delivery_id, from, payload: payload.into() });
            }
        }
        Message::Frame { to, frame } => {
            let Some(h) = state.registry.get(&to) else { return };
            match frame {
                f @ (Frame::Presence { .. } | Frame::PairMessage { .. }) => {
                    h.offer(Outbound::Frame(f));
                }
                other => {
                    cluster.garbage.fetch_add(1, Ordering::Relaxed);
                    debug!(frame = %other.frame_type(), "a cluster message carried a frame nodes do not pass");
                }
            }
        }
        Message::Replaced { device, fence } => {
            if let Some(h) = state.registry.get(&device) {
                h.replaced_at(fence);
            }
        }
        Message::Claimed { pairing_id, claimer, payload } => {
            match state.mailboxes.claim(pairing_id, claimer) {
                Ok(desktop) => {
                    if let Some(h) = state.registry.get(&desktop) {
                        h.offer(Outbound::Frame(Frame::PairMessage {
                            pairing_id,
                            peer: claimer,
                            payload,
                        }));
                        state.metrics.pairing("claimed");
                    }
                }
                Err(code) => debug!(%code, "a claim made on another node does not apply here"),
            }
        }
        Message::Routes { a, b } => {
            state.routes.invalidate(a, b);
            if let Some(h) = state.registry.get(&a) {
                h.hold.purge(state, b);
            }
            if let Some(h) = state.registry.get(&b) {
                h.hold.purge(state, a);
            }
        }
    }
}

/// Renew the node's liveness every [`HEARTBEAT`] and reap dead nodes,
/// until shutdown. A node that finds it was presumed dead closes every
/// connection (their devices reconnect and claim again).
pub(crate) async fn run_heartbeat(state: Arc<State>, cluster: Arc<Cluster>) {
    let mut first = true;
    while !state.shutdown.is_cancelled() {
        match cluster.heartbeat().await {
            Ok(was_alive) => {
                cluster.beating.store(true, Ordering::Release);
                if !was_alive && !first {
                    let conns = state.registry.all();
                    warn!(
                        node = cluster.node(),
                        connections = conns.len(),
                        "this node was presumed dead by the cluster; closing its connections"
                    );
                    for h in conns {
                        h.close(
                            ErrorCode::ShuttingDown,
                            "this relay node lost the cluster; reconnect after the hint",
                        );
                    }
                }
                first = false;
            }
            Err(e) => {
                cluster.beating.store(false, Ordering::Release);
                warn!(error = %e, "cluster heartbeat failed");
            }
        }
        match cluster.reap().await {
            Ok(gone) if !gone.is_empty() => {
                info!(devices = gone.len(), "reaped the devices of a node that died");
                for d in gone {
                    offline(&state, &cluster, d).await;
                }
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "could not look for dead nodes"),
        }
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            () = sleep(HEARTBEAT) => {}
        }
    }
}

/// A device whose node died is offline: its peers hear so, wherever they
/// are (unless it is back on some node already).
async fn offline(state: &State, cluster: &Cluster, device: DeviceId) {
    if state.registry.get(&device).is_some() {
        return;
    }
    if cluster.route(&[(device, None)]).await.is_ok_and(|on| on.first() == Some(&true)) {
        return;
    }
    crate::conn::announce(state, device, false).await;
}
