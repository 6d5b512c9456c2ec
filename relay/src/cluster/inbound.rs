//! A node's channel subscription: messages from the other nodes, acted on
//! here without a store round trip (every message waits behind the one
//! before it).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use tandem_proto::frame::Frame;
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
            Ok((mut sink, mut stream, generation)) => {
                backoff = Duration::from_millis(100);
                cluster.subscribed.store(true, Ordering::Release);
                info!(node = cluster.node(), "cluster channel subscribed");
                // Off the message loop: it makes round trips per device.
                tokio::spawn(super::upkeep::resync(state.clone(), cluster.clone()));
                let mut ping = tokio::time::interval(HEARTBEAT);
                let mut switches = cluster.link.switches();
                if let Some(rx) = &mut switches {
                    rx.mark_unchanged();
                }
                loop {
                    tokio::select! {
                        () = state.shutdown.cancelled() => return,
                        // Sentinel announced a failover: subscribe on the
                        // new primary (the command connection moves too).
                        Ok(()) = crate::store::redis_switched(&mut switches) => break,
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
                            // The command connection was made again (the
                            // server may have changed): so is this one.
                            if cluster.link.generation() != generation {
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
        backoff = (backoff * 2).min(crate::store::REDIS_MAX_BACKOFF);
    }
}

/// Subscribe to this node's channel and the one all nodes hear, on the
/// server the command connection talks to; with the command connection's
/// generation then (see [`super::link::Link::generation`]).
async fn subscribe(
    cluster: &Cluster,
) -> Result<(redis::aio::PubSubSink, redis::aio::PubSubStream, u64), redis::RedisError> {
    let connect = async {
        let as_redis =
            |e: super::ClusterError| redis::RedisError::from(std::io::Error::other(e.to_string()));
        cluster.link.conn().await.map_err(as_redis)?;
        let generation = cluster.link.generation();
        let client = cluster
            .link
            .client()
            .await
            .map_err(|e| redis::RedisError::from(std::io::Error::other(e.to_string())))?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(cluster.channel()).await?;
        pubsub.subscribe(cluster.all_channel()).await?;
        let (sink, stream) = pubsub.split();
        Ok((sink, stream, generation))
    };
    match timeout(Duration::from_secs(3), connect).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "subscribing took over 3 s",
        ))),
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
            // No store round trip here (it would hold up every message
            // behind it): a route not cached makes the writer read the
            // queue, which revocation empties. The writer drops an id of
            // another epoch than its device was told.
            match state.routes.cached(from, to) {
                Some(true) => h.offer(Outbound::Deliver {
                    id: delivery_id,
                    from,
                    payload: payload.into(),
                    epoch,
                }),
                Some(false) => {}
                None => {
                    // It is in the store: the writer reads it from there.
                    h.hold.mark.fetch_max(delivery_id, Ordering::AcqRel);
                    h.answers().wake()
                }
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
