//! What the writer thread keeps in memory in step with its commits, and
//! rebuilds from the tables when the store opens: the non-empty queues
//! ([`Depths`]), the bytes charged per sender address, per sender and
//! recipient, and in all ([`Usage`]), and the one-sided authorisations per
//! address ([`Pending`]). The limits are checked against these without
//! reading the tables.

use std::collections::HashMap;

use redb::{Database, ReadableDatabase, ReadableTable};
use tandem_proto::DeviceId;

use super::backend;
use super::layout::{FrameRow, META, Meta, PENDING, QUEUE, ROUTES, RouteRow, id16, rkey};
use crate::store::{AddrKey, QueueDepth, StoreError, charged};

/// Frames and bytes waiting in each queue that holds any, kept by the
/// writer in step with its commits: the expiry sweep and
/// [`crate::store::Store::totals`] read this instead of every queue's
/// metadata row (one per device that received a frame within the TTL),
/// which would stall the writer on a relay with many devices.
#[derive(Debug, Default)]
pub(super) struct Depths(pub(super) HashMap<DeviceId, QueueDepth>);

impl Depths {
    pub(super) fn load(db: &Database) -> Result<Self, StoreError> {
        let txn = db.begin_read().map_err(backend)?;
        let mut map = HashMap::new();
        for item in txn.open_table(META).map_err(backend)?.iter().map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            let m = Meta::decode(v.value());
            if m.frames > 0 {
                map.insert(id16(k.value(), 0), QueueDepth { frames: m.frames, bytes: m.bytes });
            }
        }
        Ok(Self(map))
    }

    /// After a commit: the queues it changed.
    pub(super) fn update(&mut self, changed: Vec<(DeviceId, Meta)>) {
        for (to, m) in changed {
            if m.frames > 0 {
                self.0.insert(to, QueueDepth { frames: m.frames, bytes: m.bytes });
            } else {
                self.0.remove(&to);
            }
        }
    }
}

/// Bytes charged ([`charged`]: payload plus the per-frame cost) per sender
/// address, per sender and recipient, and in all, kept by the writer in
/// step with its commits (rebuilt from the queue table when the store
/// opens): the shares, the total and the overflow are checked against this
/// without reading the queues. Frames of an unknown address
/// ([`AddrKey::UNKNOWN`]: moved over from an older store) count in the
/// total and their pair only.
#[derive(Debug, Default)]
pub(super) struct Usage {
    pub(super) total: u64,
    pub(super) addrs: HashMap<AddrKey, u64>,
    /// `(from, to)`.
    pub(super) pairs: HashMap<(DeviceId, DeviceId), u64>,
}

impl Usage {
    pub(super) fn load(db: &Database) -> Result<Self, StoreError> {
        let txn = db.begin_read().map_err(backend)?;
        let mut u = Usage::default();
        for item in txn.open_table(QUEUE).map_err(backend)?.iter().map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            let row = FrameRow::decode(v.value());
            let cost = charged(row.payload.len() as u64);
            u.total += cost;
            if row.addr.is_known() {
                *u.addrs.entry(row.addr).or_insert(0) += cost;
            }
            *u.pairs.entry((row.from, id16(k.value(), 0))).or_insert(0) += cost;
        }
        Ok(u)
    }

    /// After a commit: take the batch's values (`changed` holds every
    /// address and pair the batch touched, as it left them, and the total).
    pub(super) fn update(&mut self, changed: Usage) {
        self.total = changed.total;
        for (k, v) in changed.addrs {
            if v == 0 {
                self.addrs.remove(&k);
            } else {
                self.addrs.insert(k, v);
            }
        }
        for (k, v) in changed.pairs {
            if v == 0 {
                self.pairs.remove(&k);
            } else {
                self.pairs.insert(k, v);
            }
        }
    }
}

/// One-sided authorisations: how many in all, and how many were made from
/// each (known) address. Rebuilt from `routes.pending` when the store opens.
#[derive(Debug, Default, Clone)]
pub(super) struct Pending {
    pub(super) total: u64,
    pub(super) addrs: HashMap<AddrKey, u64>,
}

impl Pending {
    pub(super) fn load(db: &Database) -> Result<Self, StoreError> {
        let txn = db.begin_read().map_err(backend)?;
        let routes = txn.open_table(ROUTES).map_err(backend)?;
        let mut p = Pending::default();
        for item in txn.open_table(PENDING).map_err(backend)?.iter().map_err(backend)? {
            let (k, _) = item.map_err(backend)?;
            let (by, peer) = (id16(k.value(), 8), id16(k.value(), 24));
            let addr = match routes.get(&rkey(&by, &peer)[..]).map_err(backend)? {
                Some(v) => RouteRow::decode(v.value()).addr,
                None => AddrKey::UNKNOWN,
            };
            p.add(addr, 1);
        }
        Ok(p)
    }

    /// How many one-sided authorisations `addr` holds.
    pub(super) fn of(&self, addr: &AddrKey) -> u64 {
        self.addrs.get(addr).copied().unwrap_or(0)
    }

    pub(super) fn add(&mut self, addr: AddrKey, n: u64) {
        self.total += n;
        if addr.is_known() {
            *self.addrs.entry(addr).or_insert(0) += n;
        }
    }

    pub(super) fn remove(&mut self, addr: AddrKey, n: u64) {
        self.total = self.total.saturating_sub(n);
        if let Some(c) = self.addrs.get_mut(&addr) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                self.addrs.remove(&addr);
            }
        }
    }
}
