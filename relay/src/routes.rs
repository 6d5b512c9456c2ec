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
    /// Moves on at every route change.
    generation: AtomicU64,
    /// Moves on at every disconnect ([`Self::forget`]): a load that raced
    /// one is not cached (so a gone device's entry is not put back), but
    /// it changes no route, so frames being held are not disturbed.
    forgets: AtomicU64,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes").finish_non_exhaustive()
    }
}

impl Routes {
    pub(crate) fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            cache: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            forgets: AtomicU64::new(0),
        }
    }

    /// Moves on at every route change: a frame held in memory after a
    /// route check is held only if it did not move since.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// `a`'s mutual peers.
    pub(crate) async fn peers(&self, a: DeviceId) -> Result<Arc<HashSet<DeviceId>>, StoreError> {
        if let Some(p) = lock(&self.cache).get(&a) {
            return Ok(p.clone());
        }
        let generation = self.generation.load(Ordering::Acquire);
        let forgets = self.forgets.load(Ordering::Acquire);
        let peers: Arc<HashSet<DeviceId>> =
            Arc::new(self.store.peers(a).await?.into_iter().collect());
        let mut cache = lock(&self.cache);
        // A change while we were loading makes what we loaded stale (and
        // a disconnect may have been `a`'s own).
        if self.generation.load(Ordering::Acquire) == generation
            && self.forgets.load(Ordering::Acquire) == forgets
        {
            cache.insert(a, peers.clone());
        }
        Ok(peers)
    }

    /// Whether `a` and `b` authorised each other, if `a`'s routes are
    /// cached (no store round trip).
    pub(crate) fn cached(&self, a: DeviceId, b: DeviceId) -> Option<bool> {
        lock(&self.cache).get(&a).map(|p| p.contains(&b))
    }

    /// Whether `a` and `b` authorised each other.
    pub(crate) async fn is_route(&self, a: DeviceId, b: DeviceId) -> Result<bool, StoreError> {
        Ok(self.peers(a).await?.contains(&b))
    }

    /// Drop `a`'s cached peers (it disconnected; bounded memory).
    pub(crate) fn forget(&self, a: DeviceId) {
        self.forgets.fetch_add(1, Ordering::AcqRel);
        lock(&self.cache).remove(&a);
    }

    /// Forget everything cached (after this node may have missed route
    /// changes made on other nodes).
    pub(crate) fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        lock(&self.cache).clear();
    }

    /// Forget what is cached about `a` and `b`.
    pub(crate) fn invalidate(&self, a: DeviceId, b: DeviceId) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut cache = lock(&self.cache);
        cache.remove(&a);
        cache.remove(&b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_route_change_moves_the_generation() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::Config::new(dir.path().to_owned());
        let store =
            crate::store::RedbStore::open(dir.path(), config.queue, config.routes, 0).unwrap();
        let routes = Routes::new(Arc::new(store));
        let (a, b) = (DeviceId([1; 16]), DeviceId([2; 16]));
        let g = routes.generation();
        // A disconnect changes no route: frames being held stay held.
        routes.forget(a);
        assert_eq!(routes.generation(), g);
        routes.invalidate(a, b);
        assert_eq!(routes.generation(), g + 1);
    }
}
