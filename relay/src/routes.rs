//! A cache of each device's mutual routes in front of the store, so
//! forwarding a frame does not cost a store round trip.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tandem_proto::DeviceId;

use crate::registry::lock;
use crate::store::{Store, StoreError};

/// Mutual peers per device, loaded on first use, dropped on any change.
pub(crate) struct Routes {
    store: Arc<dyn Store>,
    cache: Mutex<HashMap<DeviceId, Arc<HashSet<DeviceId>>>>,
    generation: AtomicU64,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes").finish_non_exhaustive()
    }
}

impl Routes {
    pub(crate) fn new(store: Arc<dyn Store>) -> Self {
        Self { store, cache: Mutex::new(HashMap::new()), generation: AtomicU64::new(0) }
    }

    /// Moves on at every change (and every disconnect): a frame held in
    /// memory after a route check is held only if it did not move since.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// `a`'s mutual peers.
    pub(crate) async fn peers(&self, a: DeviceId) -> Result<Arc<HashSet<DeviceId>>, StoreError> {
        if let Some(p) = lock(&self.cache).get(&a) {
            return Ok(p.clone());
        }
        let generation = self.generation.load(Ordering::Acquire);
        let peers: Arc<HashSet<DeviceId>> =
            Arc::new(self.store.peers(a).await?.into_iter().collect());
        let mut cache = lock(&self.cache);
        // A change while we were loading makes what we loaded stale.
        if self.generation.load(Ordering::Acquire) == generation {
            cache.insert(a, peers.clone());
        }
        Ok(peers)
    }

    /// Whether `a` and `b` authorised each other.
    pub(crate) async fn is_route(&self, a: DeviceId, b: DeviceId) -> Result<bool, StoreError> {
        Ok(self.peers(a).await?.contains(&b))
    }

    /// Drop `a`'s cached peers (it disconnected; bounded memory).
    pub(crate) fn forget(&self, a: DeviceId) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        lock(&self.cache).remove(&a);
    }

    /// Forget what is cached about `a` and `b`.
    pub(crate) fn invalidate(&self, a: DeviceId, b: DeviceId) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut cache = lock(&self.cache);
        cache.remove(&a);
        cache.remove(&b);
    }
}
