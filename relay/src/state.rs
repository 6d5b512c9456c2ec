//! What every connection shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use tandem_proto::DeviceId;
use tandem_proto::frame::Frame;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::config::Config;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::pairing::Mailboxes;
use crate::registry::Registry;
use crate::routes::Routes;
use crate::store::Store;

/// The relay's shared state.
pub(crate) struct State {
    pub(crate) config: Config,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) metrics: Metrics,
    pub(crate) registry: Registry,
    pub(crate) routes: Routes,
    pub(crate) mailboxes: Mailboxes,
    pub(crate) limits: Limits,
    /// Connections before and after authentication, per address.
    pub(crate) admission: Admission,
    /// Connection slots (`max_connections`).
    pub(crate) slots: Arc<Semaphore>,
    /// Fired when the relay starts shutting down.
    pub(crate) shutdown: CancellationToken,
    /// Set once shutdown began: `/readyz` fails, new connections are refused.
    pub(crate) draining: AtomicBool,
    /// Memory the held frames of all recipients take, as `hold_max_bytes`
    /// counts it (payload plus a per-frame cost).
    pub(crate) held_bytes: AtomicU64,
    /// The holds the flusher looks at ([`crate::hold::run_flusher`]).
    pub(crate) holds: crate::hold::Holds,
    /// The other nodes, when several share a Redis store (`None`: one node).
    pub(crate) cluster: Option<Arc<crate::cluster::Cluster>>,
    /// The push dispatcher ([`crate::push`]).
    pub(crate) push: crate::push::dispatch::Pusher,
}

impl State {
    /// A state without Web Push (tests).
    #[cfg(test)]
    pub(crate) fn new(
        config: Config,
        store: Arc<dyn Store>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
        shutdown: CancellationToken,
    ) -> Self {
        Self::with_push(config, store, cluster, shutdown, None)
    }

    /// [`State::new`] with the VAPID key Web Push signs with (`None`: no Web Push).
    pub(crate) fn with_push(
        config: Config,
        store: Arc<dyn Store>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
        shutdown: CancellationToken,
        vapid: Option<Arc<crate::push::vapid::Vapid>>,
    ) -> Self {
        let admission = Admission::new(&config);
        let mut metrics = Metrics::new();
        metrics.register_unauthenticated(admission.gauge.clone());
        if cluster.is_some() {
            metrics.register_cluster();
        }
        Self {
            metrics,
            registry: Registry::default(),
            routes: Routes::new(store.clone()),
            mailboxes: Mailboxes::new(config.max_mailboxes, config.max_mailboxes_per_ip),
            limits: Limits::new(&config),
            admission,
            slots: Arc::new(Semaphore::new(config.max_connections)),
            shutdown,
            draining: AtomicBool::new(false),
            held_bytes: AtomicU64::new(0),
            holds: crate::hold::Holds::default(),
            push: crate::push::dispatch::Pusher::new(&config.push, vapid),
            cluster,
            store,
            config,
        }
    }
}

impl State {
    /// Hand `frame` to `to`'s connection, on this node or (in a cluster) on
    /// the node that owns it; false if it is connected nowhere.
    pub(crate) async fn offer_to(&self, to: DeviceId, frame: Frame) -> bool {
        if let Some(h) = self.registry.get(&to) {
            h.offer(crate::registry::Outbound::Frame(frame));
            return true;
        }
        match &self.cluster {
            Some(c) => c.route(&[(to, Some(frame))]).await.is_ok_and(|v| v.first() == Some(&true)),
            None => false,
        }
    }
}

/// Seconds since the Unix epoch (the store's TTL clock).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
