//! Authorisations inside a write transaction: a route is two rows (`a`
//! authorised `b`, `b` authorised `a`); a row whose reverse is missing is
//! one-sided, listed in `routes.pending` by age, counted against the
//! address it was made from, and removed when its TTL passed. Mutual routes
//! never expire.

use redb::ReadableTable;
use tandem_proto::DeviceId;

use super::backend;
use super::layout::{RouteRow, id16, pkey, rkey, u64_at};
use super::tables::Tables;
use crate::store::{AddrKey, MAX_EXPIRED_PER_SWEEP, MAX_PEERS, StoreError};

impl Tables<'_, '_> {
    /// `by`'s authorisation of `peer`, if it has one.
    fn route_row(&self, by: &DeviceId, peer: &DeviceId) -> Result<Option<RouteRow>, StoreError> {
        Ok(self
            .routes
            .get(&rkey(by, peer)[..])
            .map_err(backend)?
            .map(|v| RouteRow::decode(v.value())))
    }

    pub(super) fn is_route(&self, a: &DeviceId, b: &DeviceId) -> Result<bool, StoreError> {
        let ab = self.routes.get(&rkey(a, b)[..]).map_err(backend)?.is_some();
        let ba = self.routes.get(&rkey(b, a)[..]).map_err(backend)?.is_some();
        Ok(ab && ba)
    }

    /// The devices `a` has a mutual route with.
    pub(super) fn peers(&self, a: &DeviceId) -> Result<Vec<DeviceId>, StoreError> {
        let lo = rkey(a, &DeviceId([0; 16]));
        let hi = rkey(a, &DeviceId([0xff; 16]));
        let mut out = Vec::new();
        for item in self.routes.range(&lo[..]..=&hi[..]).map_err(backend)? {
            let (k, _) = item.map_err(backend)?;
            let peer = id16(k.value(), 16);
            if self.routes.get(&rkey(&peer, a)[..]).map_err(backend)?.is_some() {
                out.push(peer);
            }
        }
        Ok(out)
    }

    /// `by` (from `addr`) authorises `peer` at `now`.
    pub(super) fn authorize(
        &mut self,
        by: &DeviceId,
        peer: &DeviceId,
        addr: AddrKey,
        now: u64,
    ) -> Result<Result<(), StoreError>, StoreError> {
        if self.route_row(by, peer)?.is_some() {
            return Ok(Ok(()));
        }
        let lo = rkey(by, &DeviceId([0; 16]));
        let hi = rkey(by, &DeviceId([0xff; 16]));
        let n = self.routes.range(&lo[..]..=&hi[..]).map_err(backend)?.take(MAX_PEERS).count();
        if n >= MAX_PEERS {
            return Ok(Err(StoreError::TooManyPeers));
        }
        match self.route_row(peer, by)? {
            Some(reverse) => {
                // It answers `peer`'s one-sided authorisation: a route, for good.
                self.pending_t.remove(&pkey(reverse.since, peer, by)[..]).map_err(backend)?;
                self.count_pending(reverse.addr, -1);
            }
            None => {
                if addr.is_known() && self.pending_of(&addr) >= self.cx.routes.max_pending_per_ip {
                    return Ok(Err(StoreError::TooManyPending));
                }
                self.pending_t.insert(&pkey(now, by, peer)[..], &[][..]).map_err(backend)?;
                self.count_pending(addr, 1);
            }
        }
        let row = RouteRow { since: now, addr }.encode();
        self.routes.insert(&rkey(by, peer)[..], &row[..]).map_err(backend)?;
        Ok(Ok(()))
    }

    /// `by` withdraws its authorisation of `peer` at `now`: the frames
    /// queued between them go; `peer`'s authorisation of `by`, if any, is
    /// one-sided from now on. Returns the frames dropped.
    pub(super) fn revoke(
        &mut self,
        by: &DeviceId,
        peer: &DeviceId,
        now: u64,
    ) -> Result<Result<u64, StoreError>, StoreError> {
        let Some(mine) = self.route_row(by, peer)? else {
            // Nothing can be queued between them on `by`'s account.
            return Ok(Ok(0));
        };
        self.routes.remove(&rkey(by, peer)[..]).map_err(backend)?;
        match self.route_row(peer, by)? {
            None => {
                self.pending_t.remove(&pkey(mine.since, by, peer)[..]).map_err(backend)?;
                self.count_pending(mine.addr, -1);
            }
            Some(theirs) => {
                // Counted against the address it was made from, past its
                // cap if need be: `by`'s revocation is not `peer`'s doing.
                let row = RouteRow { since: now, addr: theirs.addr };
                self.routes.insert(&rkey(peer, by)[..], &row.encode()[..]).map_err(backend)?;
                self.pending_t.insert(&pkey(now, peer, by)[..], &[][..]).map_err(backend)?;
                self.count_pending(theirs.addr, 1);
            }
        }
        let a = self.remove_where(peer, 0..=u64::MAX, |r| r.from == *by)?;
        let b = self.remove_where(by, 0..=u64::MAX, |r| r.from == *peer)?;
        Ok(Ok(a + b))
    }

    /// Remove one-sided authorisations older than the TTL (at most
    /// [`MAX_EXPIRED_PER_SWEEP`]). Returns how many.
    pub(super) fn expire_pending(&mut self, now: u64) -> Result<u64, StoreError> {
        let Some(cutoff) = now.checked_sub(self.cx.routes.pending_ttl_secs) else {
            return Ok(0);
        };
        let hi = pkey(cutoff, &DeviceId([0xff; 16]), &DeviceId([0xff; 16]));
        let mut old = Vec::new();
        for item in self.pending_t.range(..=&hi[..]).map_err(backend)?.take(MAX_EXPIRED_PER_SWEEP) {
            let (k, _) = item.map_err(backend)?;
            let k = k.value();
            old.push((u64_at(k, 0), id16(k, 8), id16(k, 24)));
        }
        let mut removed = 0;
        for (since, by, peer) in &old {
            self.pending_t.remove(&pkey(*since, by, peer)[..]).map_err(backend)?;
            match self.route_row(by, peer)? {
                Some(row) if row.since == *since => {
                    self.routes.remove(&rkey(by, peer)[..]).map_err(backend)?;
                    self.count_pending(row.addr, -1);
                    removed += 1;
                }
                // Not the row this entry was made for (cannot happen: each
                // change of a row moves its entry): a stale entry, gone now.
                _ => {}
            }
        }
        Ok(removed)
    }
}
