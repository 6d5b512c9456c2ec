//! The store's tables, the layout of their rows, and the upgrade of a store
//! written by an earlier version (run when the store opens, in the same
//! durable transaction as the rest of the opening, so a crash in the middle
//! leaves the old store as it was).
//!
//! | table | key | value |
//! |---|---|---|
//! | `queue.v2` | `to [16] ‖ id u64` | `from [16] ‖ expires_at u64 ‖ addr [17] ‖ payload` |
//! | `queue_meta` | `to [16]` | `unused u64 ‖ frames u64 ‖ bytes u64 ‖ last u64` |
//! | `routes.v2` | `by [16] ‖ peer [16]` | `since u64 ‖ addr [17]` |
//! | `routes.pending` | `since u64 ‖ by [16] ‖ peer [16]` | empty |
//! | `settings` | [`NEXT_ID`] | u64 |
//!
//! Delivery ids come from one store-wide counter ([`NEXT_ID`], the next id
//! to hand out, whoever the recipient): ids increase per recipient, and the
//! store keeps no row per device for them. `queue_meta` has a row only for
//! a queue that holds frames (deleted when it empties). Stores written
//! before the counter kept each queue's next id in the first field of its
//! `queue_meta` row (for every device that ever received a frame, until an
//! idle sweep forgot it) and the first id of an unseen queue under
//! [`FRESH_ID`]: [`take_counter`] reads those once, takes their maximum,
//! deletes the rows of empty queues and `fresh_id`, and from then on only
//! the counter is written (the first field of new rows is 0).
//!
//! `addr` is the sender's (the authoriser's) client address
//! ([`AddrKey`]), so the per-address accounts can be rebuilt from the rows.
//! `last` is when a frame was last queued for `to` (older rows: absent, 0).
//! `since` is when an authorisation was made or, for one the peer's
//! revocation left one-sided, when that happened; `routes.pending` holds
//! exactly the one-sided authorisations, oldest first, for the expiry sweep.
//!
//! The previous layout (main before review r1) had `queue` (`from ‖
//! expires_at ‖ payload`) and `routes` (empty values): [`upgrade`] moves
//! their rows over with [`AddrKey::UNKNOWN`] and `since` = the time of the
//! upgrade, and deletes them. The new tables have new names, so an older
//! relay opening an upgraded store sees empty queues and routes rather than
//! misreading rows.

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use tandem_proto::DeviceId;

use super::backend;
use crate::store::{AddrKey, StoreError};

/// The queued frames (see the module docs).
pub(super) const QUEUE: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("queue.v2");
/// Per-recipient queue metadata.
pub(super) const META: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("queue_meta");
/// Authorisations: `by` authorised `peer`.
pub(super) const ROUTES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("routes.v2");
/// The one-sided authorisations by age.
pub(super) const PENDING: TableDefinition<'_, &[u8], &[u8]> =
    TableDefinition::new("routes.pending");
/// Push subscriptions: device id → `kind ‖ data` (PROTOCOL.md §6.14).
pub(super) const PUSH: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("push_subs");
/// [`NEXT_ID`] → u64: the next delivery id, store-wide.
pub(super) const SETTINGS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("settings");
/// The key of the store-wide delivery id counter: the next id to hand out.
pub(super) const NEXT_ID: &[u8] = b"next_id";
/// The key of the first id of a queue not seen yet, in stores before
/// [`NEXT_ID`] (read once by [`take_counter`], then deleted).
pub(super) const FRESH_ID: &[u8] = b"fresh_id";

/// The frames of the previous layout: `from ‖ expires_at ‖ payload`.
const OLD_QUEUE: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("queue");
/// The routes of the previous layout: empty values.
const OLD_ROUTES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("routes");
/// The expiry index of earlier versions (`expires_at ‖ to ‖ id` → empty):
/// a queue's frames expire in id order (every frame gets the same TTL when
/// it is queued), so the sweep reads the head of each queue instead.
const OLD_EXPIRY: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("expiry");

/// Bytes before a queued frame's payload.
pub(super) const FRAME_HEADER: usize = 16 + 8 + 17;

/// A queued frame's value.
pub(super) fn frame_value(
    from: &DeviceId,
    expires: u64,
    addr: &AddrKey,
    payload: &[u8],
) -> Vec<u8> {
    let mut v = Vec::with_capacity(FRAME_HEADER + payload.len());
    v.extend_from_slice(&from.0);
    v.extend_from_slice(&expires.to_be_bytes());
    v.extend_from_slice(&addr.0);
    v.extend_from_slice(payload);
    v
}

/// A queued frame's value, read back.
pub(super) struct FrameRow<'v> {
    pub(super) from: DeviceId,
    pub(super) expires: u64,
    pub(super) addr: AddrKey,
    pub(super) payload: &'v [u8],
}

impl<'v> FrameRow<'v> {
    pub(super) fn decode(v: &'v [u8]) -> Self {
        FrameRow {
            from: id16(v, 0),
            expires: u64_at(v, 16),
            addr: addr_at(v, 24),
            payload: v.get(FRAME_HEADER..).unwrap_or_default(),
        }
    }
}

/// An authorisation's value: since when, from which address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RouteRow {
    pub(super) since: u64,
    pub(super) addr: AddrKey,
}

impl RouteRow {
    pub(super) fn decode(v: &[u8]) -> Self {
        RouteRow { since: u64_at(v, 0), addr: addr_at(v, 8) }
    }

    pub(super) fn encode(&self) -> [u8; 25] {
        let mut v = [0u8; 25];
        v[..8].copy_from_slice(&self.since.to_be_bytes());
        v[8..].copy_from_slice(&self.addr.0);
        v
    }
}

/// Per-recipient queue metadata.
#[derive(Clone, Copy, Default, Debug)]
pub(super) struct Meta {
    /// The queue's next delivery id in stores before [`NEXT_ID`] (read once
    /// by [`take_counter`]); 0, and unused, in rows written since.
    pub(super) next_id: u64,
    pub(super) frames: u64,
    pub(super) bytes: u64,
    /// When a frame was last queued (Unix seconds; 0 in older rows).
    pub(super) last: u64,
}

impl Meta {
    pub(super) fn decode(v: &[u8]) -> Self {
        Meta {
            next_id: u64_at(v, 0),
            frames: u64_at(v, 8),
            bytes: u64_at(v, 16),
            last: u64_at(v, 24),
        }
    }

    pub(super) fn encode(&self) -> [u8; 32] {
        let mut v = [0u8; 32];
        v[..8].copy_from_slice(&self.next_id.to_be_bytes());
        v[8..16].copy_from_slice(&self.frames.to_be_bytes());
        v[16..24].copy_from_slice(&self.bytes.to_be_bytes());
        v[24..].copy_from_slice(&self.last.to_be_bytes());
        v
    }
}

pub(super) fn qkey(to: &DeviceId, id: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&to.0);
    k[16..].copy_from_slice(&id.to_be_bytes());
    k
}

pub(super) fn rkey(by: &DeviceId, peer: &DeviceId) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(&by.0);
    k[16..].copy_from_slice(&peer.0);
    k
}

pub(super) fn pkey(since: u64, by: &DeviceId, peer: &DeviceId) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&since.to_be_bytes());
    k[8..24].copy_from_slice(&by.0);
    k[24..].copy_from_slice(&peer.0);
    k
}

pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).and_then(|s| s.try_into().ok()).map_or(0, u64::from_be_bytes)
}

pub(super) fn id16(b: &[u8], at: usize) -> DeviceId {
    DeviceId(b.get(at..at + 16).and_then(|s| s.try_into().ok()).unwrap_or([0; 16]))
}

fn addr_at(b: &[u8], at: usize) -> AddrKey {
    AddrKey(b.get(at..at + 17).and_then(|s| s.try_into().ok()).unwrap_or([0; 17]))
}

/// Take the store-wide delivery id counter as the store opens, and save it
/// moved on by `skip` (ids handed out before a commit that never happened
/// lie below it), in `txn`: one row written, whatever the number of
/// devices. A store from before the counter is migrated first (see the
/// module docs); a new store starts at 1 without a skip (nothing was ever
/// handed out). Returns the first id to hand out.
pub(super) fn take_counter(txn: &WriteTransaction, skip: u64) -> Result<u64, StoreError> {
    let mut settings = txn.open_table(SETTINGS).map_err(backend)?;
    let saved = settings.get(NEXT_ID).map_err(backend)?.map(|v| u64_at(v.value(), 0));
    let next = match saved {
        Some(n) => n.saturating_add(skip),
        None => {
            let fresh = settings.get(FRESH_ID).map_err(backend)?.map(|v| u64_at(v.value(), 0));
            let mut meta_t = txn.open_table(META).map_err(backend)?;
            let mut max = fresh.unwrap_or(1);
            let mut seen = fresh.is_some();
            let mut empty = Vec::new();
            for item in meta_t.iter().map_err(backend)? {
                let (k, v) = item.map_err(backend)?;
                let m = Meta::decode(v.value());
                seen = true;
                max = max.max(m.next_id);
                if m.frames == 0 {
                    empty.push(id16(k.value(), 0));
                }
            }
            for to in &empty {
                meta_t.remove(&to.0[..]).map_err(backend)?;
            }
            settings.remove(FRESH_ID).map_err(backend)?;
            if seen { max.saturating_add(skip) } else { 1 }
        }
    };
    settings.insert(NEXT_ID, &next.to_be_bytes()[..]).map_err(backend)?;
    Ok(next)
}

/// Create the tables, and move the rows of an earlier layout over (see the
/// module docs). `now` is the `since` of the authorisations moved over.
pub(super) fn upgrade(txn: &WriteTransaction, now: u64) -> Result<(), StoreError> {
    for def in [QUEUE, META, ROUTES, PENDING, SETTINGS] {
        txn.open_table(def).map_err(backend)?;
    }
    txn.delete_table(OLD_EXPIRY).map_err(backend)?;
    {
        let old = txn.open_table(OLD_QUEUE).map_err(backend)?;
        let mut new = txn.open_table(QUEUE).map_err(backend)?;
        for item in old.iter().map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            let v = v.value();
            let value = frame_value(
                &id16(v, 0),
                u64_at(v, 16),
                &AddrKey::UNKNOWN,
                v.get(24..).unwrap_or_default(),
            );
            new.insert(k.value(), &value[..]).map_err(backend)?;
        }
    }
    txn.delete_table(OLD_QUEUE).map_err(backend)?;
    {
        let old = txn.open_table(OLD_ROUTES).map_err(backend)?;
        let mut new = txn.open_table(ROUTES).map_err(backend)?;
        let mut pending = txn.open_table(PENDING).map_err(backend)?;
        let row = RouteRow { since: now, addr: AddrKey::UNKNOWN }.encode();
        for item in old.iter().map_err(backend)? {
            let (k, _) = item.map_err(backend)?;
            let (by, peer) = (id16(k.value(), 0), id16(k.value(), 16));
            new.insert(k.value(), &row[..]).map_err(backend)?;
            if old.get(&rkey(&peer, &by)[..]).map_err(backend)?.is_none() {
                pending.insert(&pkey(now, &by, &peer)[..], &[][..]).map_err(backend)?;
            }
        }
    }
    txn.delete_table(OLD_ROUTES).map_err(backend)?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod old {
    //! Writing a store as main's code (before review r1) did, for the
    //! upgrade test.
    use super::*;

    /// Write `frames` (`to`, `id`, `from`, `expires_at`, payload) and
    /// `routes` (`by`, `peer`) in the previous layout, with queue metadata
    /// as that code kept it (24-byte rows).
    pub(crate) fn write(
        path: &std::path::Path,
        frames: &[(DeviceId, u64, DeviceId, u64, Vec<u8>)],
        routes: &[(DeviceId, DeviceId)],
    ) -> Result<(), StoreError> {
        let db = redb::Database::create(path).map_err(backend)?;
        let txn = db.begin_write().map_err(backend)?;
        {
            let mut q = txn.open_table(OLD_QUEUE).map_err(backend)?;
            let mut meta = txn.open_table(META).map_err(backend)?;
            let mut metas: std::collections::HashMap<DeviceId, (u64, u64, u64)> =
                std::collections::HashMap::new();
            for (to, id, from, expires, payload) in frames {
                let mut v = Vec::new();
                v.extend_from_slice(&from.0);
                v.extend_from_slice(&expires.to_be_bytes());
                v.extend_from_slice(payload);
                q.insert(&qkey(to, *id)[..], &v[..]).map_err(backend)?;
                let m = metas.entry(*to).or_default();
                *m = (m.0.max(id + 1), m.1 + 1, m.2 + payload.len() as u64);
            }
            for (to, (next, frames, bytes)) in metas {
                let mut v = [0u8; 24];
                v[..8].copy_from_slice(&next.to_be_bytes());
                v[8..16].copy_from_slice(&frames.to_be_bytes());
                v[16..].copy_from_slice(&bytes.to_be_bytes());
                meta.insert(&to.0[..], &v[..]).map_err(backend)?;
            }
            let mut r = txn.open_table(OLD_ROUTES).map_err(backend)?;
            for (by, peer) in routes {
                r.insert(&rkey(by, peer)[..], &[][..]).map_err(backend)?;
            }
            let mut s = txn.open_table(SETTINGS).map_err(backend)?;
            s.insert(FRESH_ID, &1u64.to_be_bytes()[..]).map_err(backend)?;
        }
        txn.commit().map_err(backend)
    }
}
