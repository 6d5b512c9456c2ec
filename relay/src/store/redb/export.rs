//! Everything an embedded store holds, read out for a migration to another
//! backend (`tandem-relay migrate`). The relay must be stopped: the
//! database is opened exclusively.

use std::path::Path;

use redb::{ReadableDatabase, ReadableTable};
use tandem_proto::DeviceId;

use super::backend;
use super::layout::{FrameRow, PENDING, QUEUE, ROUTES, RouteRow, id16, u64_at};
use super::writer::open_db;
use crate::store::{AddrKey, StoreError};

/// A queued frame, as the embedded store kept it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedFrame {
    /// The recipient.
    pub to: DeviceId,
    /// Its delivery id (kept by the migration).
    pub id: u64,
    /// The sender.
    pub from: DeviceId,
    /// When it expires (Unix seconds).
    pub expires_at: u64,
    /// The sender's client address (per-address limits).
    pub addr: AddrKey,
    /// The opaque end-to-end envelope.
    pub payload: Vec<u8>,
}

/// An authorisation: `by` allows frames to and from `peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedAuthorization {
    /// Who authorised.
    pub by: DeviceId,
    /// Whom.
    pub peer: DeviceId,
    /// When it was made (or left one-sided by the peer's revocation).
    pub since: u64,
    /// The client address it was made from.
    pub addr: AddrKey,
    /// The peer has not authorised `by` (it expires as such).
    pub one_sided: bool,
}

/// What [`super::RedbStore::export`] read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Export {
    /// The store's next delivery id (past every id it ever handed out).
    pub next_id: u64,
    /// Every queued frame, by recipient then id.
    pub frames: Vec<ExportedFrame>,
    /// Every authorisation.
    pub authorizations: Vec<ExportedAuthorization>,
}

/// Read the store in `dir` (upgrading an older layout first, as an open does).
pub(super) fn export(dir: &Path, now_unix: u64) -> Result<Export, StoreError> {
    let opened = open_db(dir, now_unix)?;
    let txn = opened.db.begin_read().map_err(backend)?;
    let mut out = Export { next_id: opened.next, ..Export::default() };
    let queue = txn.open_table(QUEUE).map_err(backend)?;
    for row in queue.iter().map_err(backend)? {
        let (k, v) = row.map_err(backend)?;
        let (k, v) = (k.value(), v.value());
        let f = FrameRow::decode(v);
        out.frames.push(ExportedFrame {
            to: id16(k, 0),
            id: u64_at(k, 16),
            from: f.from,
            expires_at: f.expires,
            addr: f.addr,
            payload: f.payload.to_vec(),
        });
    }
    let pending = txn.open_table(PENDING).map_err(backend)?;
    let mut one_sided = std::collections::HashSet::new();
    for row in pending.iter().map_err(backend)? {
        let (k, _) = row.map_err(backend)?;
        let k = k.value();
        one_sided.insert((id16(k, 8), id16(k, 24)));
    }
    let routes = txn.open_table(ROUTES).map_err(backend)?;
    for row in routes.iter().map_err(backend)? {
        let (k, v) = row.map_err(backend)?;
        let (by, peer) = (id16(k.value(), 0), id16(k.value(), 16));
        let r = RouteRow::decode(v.value());
        out.authorizations.push(ExportedAuthorization {
            by,
            peer,
            since: r.since,
            addr: r.addr,
            one_sided: one_sided.contains(&(by, peer)),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewFrame, QueueLimits, RedbStore, RouteLimits, Store};

    #[tokio::test]
    async fn an_export_holds_every_frame_with_its_id_and_every_authorisation() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::Config::new(dir.path().to_owned());
        let (q, r): (QueueLimits, RouteLimits) = (config.queue, config.routes);
        let (a, b, c) = (DeviceId([1; 16]), DeviceId([2; 16]), DeviceId([3; 16]));
        let addr = AddrKey::from_ip(std::net::IpAddr::from([10, 0, 0, 1]));
        let mut ids = Vec::new();
        {
            let s = RedbStore::open(dir.path(), q, r, 1000).unwrap();
            s.authorize(a, b, addr, 1000).await.unwrap();
            s.authorize(b, a, addr, 1000).await.unwrap();
            s.authorize(a, c, addr, 1001).await.unwrap();
            for n in 0..3u8 {
                let f = NewFrame { to: b, from: a, addr, payload: vec![n; 10].into() };
                ids.push(s.enqueue(f, 1000, false).durable.await.unwrap());
            }
        }
        // The writer thread may still hold the file for a moment.
        let mut export = None;
        for _ in 0..50 {
            match RedbStore::export(dir.path(), 2000) {
                Ok(e) => {
                    export = Some(e);
                    break;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
        let e = export.expect("exported");
        let got: Vec<(u64, Vec<u8>)> = e.frames.iter().map(|f| (f.id, f.payload.clone())).collect();
        let want: Vec<(u64, Vec<u8>)> =
            ids.iter().zip(0..3u8).map(|(i, n)| (*i, vec![n; 10])).collect();
        assert_eq!(got, want);
        assert!(e.frames.iter().all(|f| f.to == b && f.from == a && f.addr == addr));
        assert!(e.frames.iter().all(|f| f.expires_at == 1000 + q.ttl_secs));
        assert!(e.next_id > *ids.last().unwrap(), "the counter is past every id handed out");
        let mut auths: Vec<_> =
            e.authorizations.iter().map(|x| (x.by.0[0], x.peer.0[0], x.one_sided)).collect();
        auths.sort_unstable();
        assert_eq!(auths, vec![(1, 2, false), (1, 3, true), (2, 1, false)]);
    }
}
