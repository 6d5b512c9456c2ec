//! A connection's store operations in flight (a `Send` being queued, an
//! `Ack` being applied) and the acknowledgement the store did not apply yet.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tandem_proto::DeviceId;
use tokio::time::Instant;

use crate::registry::Outbound;
use crate::state::State;
use crate::store::{Enqueued, StoreError, StoreFuture};

/// A store operation in flight, with what to do when it finishes.
pub(super) enum Pending {
    Enqueue(Box<Enqueue>),
    /// Deleting every frame up to `up_to`.
    Ack {
        up_to: u64,
        fut: StoreFuture<u64>,
    },
}

/// A `Send` being queued.
pub(super) struct Enqueue {
    pub(super) state: Arc<State>,
    pub(super) send_id: u64,
    pub(super) from: DeviceId,
    pub(super) to: DeviceId,
    pub(super) payload: Bytes,
    pub(super) enqueued: Enqueued,
    /// The store epoch when the enqueue was submitted.
    pub(super) epoch: u64,
    /// The reader stops reading until this is answered (see
    /// `Reader::on_send`).
    pub(super) pausing: bool,
}

pub(super) type PendingFut = std::pin::Pin<Box<dyn std::future::Future<Output = Done> + Send>>;

/// A store operation that finished.
pub(super) enum Done {
    Enqueued {
        send_id: u64,
        to: DeviceId,
        pausing: bool,
        len: usize,
        result: Result<u64, StoreError>,
    },
    Acked {
        up_to: u64,
        result: Result<u64, StoreError>,
    },
}

impl Pending {
    pub(super) async fn finish(self) -> Done {
        match self {
            Pending::Enqueue(e) => {
                let Enqueue { state, send_id, from, to, payload, enqueued, epoch, pausing } = *e;
                let len = payload.len();
                // Deliver as soon as the frame has its id, while the commit
                // runs; the sender's `Ok` waits for the commit. Without an
                // early id (a full queue, a failing store), once it is stored.
                let mut payload = Some(payload);
                if let Ok(id) = enqueued.placed.await {
                    if state.cluster.is_some()
                        && let Some(h) = state.registry.get(&to)
                    {
                        // On Redis the id may be above ids this node
                        // leased: nothing is held for the recipient below it
                        // from now on (its sender's next frame comes after).
                        h.hold.raise_floor(id, false);
                    }
                    push(&state, (from, to), (id, epoch), &mut payload).await;
                }
                let result = enqueued.durable.await;
                if let Ok(id) = result {
                    push(&state, (from, to), (id, epoch), &mut payload).await;
                }
                Done::Enqueued { send_id, to, pausing, len, result }
            }
            Pending::Ack { up_to, fut } => Done::Acked { up_to, result: fut.await },
        }
    }
}

/// Hand `payload` (if not handed over yet) to `to`'s live connection, on
/// this node or another, if it has one and the route still stands (a
/// revocation since the route check dropped the frame, or will: do not push
/// what the recipient no longer accepts). `id` was answered by the store for
/// an enqueue submitted under store epoch `epoch`: unless the store has that
/// epoch still, the id may be another epoch's and is not pushed (the frame,
/// if the store kept it, is read from there).
async fn push(
    state: &State,
    (from, to): (DeviceId, DeviceId),
    (id, epoch): (u64, u64),
    payload: &mut Option<Bytes>,
) {
    if payload.is_some()
        && let Some(wait) = crate::failpoints::push_delay()
    {
        tokio::time::sleep(wait).await;
    }
    if payload.is_none() || state.store.epoch() != epoch {
        return;
    }
    let local = state.registry.get(&to);
    match state.routes.is_route(from, to).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(_) => {
            // Not known now: the recipient's writer reads its queue (the
            // store checks the route); another node checks it itself.
            if let Some(h) = &local {
                h.hold.mark.fetch_max(id, std::sync::atomic::Ordering::AcqRel);
                h.answers().wake();
                return;
            }
        }
    }
    if let Some(h) = local {
        if let Some(payload) = payload.take() {
            h.offer(Outbound::Deliver { id, from, payload, epoch });
        }
    } else if let Some(c) = &state.cluster
        && let Some(payload) = payload.take()
    {
        // On another node, if anywhere: one publish to it. If it is lost,
        // the frame waits in the store for the next read of its queue.
        match tandem_proto::frame::encode_deliver(id, &from, &payload) {
            Ok(bytes) => {
                if let Err(e) = c.deliver(to, epoch, &bytes).await {
                    tracing::debug!(error = %e, "a live delivery to another node was not sent; it waits in the store");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode a delivery"),
        }
    }
}

/// The highest acknowledgement of this connection that the store did not
/// apply (it refused or failed the write, or the rate limit dropped the
/// frame), and when to apply it again (PROTOCOL.md §13.6). A later `Ack`
/// covers it; until one comes the reader re-applies it itself, so the
/// frames do not stay queued (charged to their senders) until a reconnect
/// delivers them all again.
#[derive(Default)]
pub(super) struct Unapplied(Mutex<Option<(u64, Instant)>>);

impl Unapplied {
    fn with<R>(&self, f: impl FnOnce(&mut Option<(u64, Instant)>) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// `up_to` was not applied: apply it (or a higher one) at `retry_at`.
    pub(super) fn note(&self, up_to: u64, retry_at: Instant) {
        self.with(|u| {
            let up_to = u.map_or(up_to, |(old, _)| old.max(up_to));
            let at = u.map_or(retry_at, |(_, at)| at.min(retry_at));
            *u = Some((up_to, at));
        });
    }

    /// When the re-application is due, if one is.
    pub(super) fn due(&self) -> Option<Instant> {
        self.with(|u| u.map(|(_, at)| at))
    }

    /// The store works again (it committed something): re-apply now.
    pub(super) fn hurry(&self) {
        let now = Instant::now();
        self.with(|u| {
            if let Some((_, at)) = u {
                *at = now;
            }
        });
    }

    /// The store applied `up_to`: forget what it covers.
    pub(super) fn covered(&self, up_to: u64) {
        self.with(|u| {
            if u.is_some_and(|(old, _)| old <= up_to) {
                *u = None;
            }
        });
    }

    /// The ack to apply now, forgetting it (a failure notes it again).
    pub(super) fn take(&self) -> Option<u64> {
        self.with(|u| u.take().map(|(up_to, _)| up_to))
    }
}
