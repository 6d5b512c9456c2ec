//! Moving an embedded store's contents into another backend (`tandem-relay
//! migrate`): every authorisation, then every queued frame, through the
//! target's own [`Store`] operations, so its limits, accounts and id
//! counters stay its own.
//!
//! * Authorisations keep when they were made (one-sided ones expire when
//!   they would have).
//! * Frames keep their order per recipient and their expiry; they get the
//!   target's delivery ids, taken in the same order, so ids stay strictly
//!   increasing per recipient. The target has a store epoch of its own
//!   (PROTOCOL.md §6.6): devices that reconnect fetch their queues afresh,
//!   and the end-to-end layer drops a frame they had already.
//! * It stops at the first refusal and says which frame; run it again on an
//!   empty target after fixing the cause (a target whose limits are smaller
//!   than the source's, say).

use thiserror::Error;

use crate::store::{Export, NewFrame, Store, StoreError};

/// What [`migrate`] moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Migrated {
    /// Authorisations written.
    pub authorizations: u64,
    /// Frames queued.
    pub frames: u64,
    /// Frames left out because they had expired already.
    pub expired: u64,
}

/// Why a migration stopped.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MigrateError {
    /// The target refused an authorisation.
    #[error("authorisation {by} -> {peer}: {error}")]
    Authorization {
        /// Who authorised.
        by: tandem_proto::DeviceId,
        /// Whom.
        peer: tandem_proto::DeviceId,
        /// The target's refusal.
        error: StoreError,
    },
    /// The target refused a frame.
    #[error("frame {id} for {to}: {error}")]
    Frame {
        /// Its recipient.
        to: tandem_proto::DeviceId,
        /// Its id in the source.
        id: u64,
        /// The target's refusal.
        error: StoreError,
    },
}

/// Move `export` into `target`, whose queue TTL is `ttl_secs`, at `now_unix`.
///
/// # Errors
/// The first authorisation or frame the target refused.
pub async fn migrate(
    export: Export,
    target: &dyn Store,
    ttl_secs: u64,
    now_unix: u64,
) -> Result<Migrated, MigrateError> {
    let mut done = Migrated::default();
    for a in &export.authorizations {
        target
            .authorize(a.by, a.peer, a.addr, a.since)
            .await
            .map_err(|error| MigrateError::Authorization { by: a.by, peer: a.peer, error })?;
        done.authorizations += 1;
    }
    let mut frames = export.frames;
    frames.sort_by_key(|f| (f.to.0, f.id));
    for f in frames {
        if f.expires_at <= now_unix {
            done.expired += 1;
            continue;
        }
        // Queued "at" the time that gives it the same expiry.
        let at = f.expires_at.saturating_sub(ttl_secs);
        let frame = NewFrame { to: f.to, from: f.from, addr: f.addr, payload: f.payload.into() };
        target.enqueue(frame, at, false).durable.await.map_err(|error| MigrateError::Frame {
            to: f.to,
            id: f.id,
            error,
        })?;
        done.frames += 1;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AddrKey, QueueLimits, RedbStore, RouteLimits};
    use tandem_proto::DeviceId;

    fn open(dir: &std::path::Path, now: u64) -> RedbStore {
        let c = crate::Config::new(dir.to_owned());
        let (q, r): (QueueLimits, RouteLimits) = (c.queue, c.routes);
        RedbStore::open(dir, q, r, now).unwrap()
    }

    #[tokio::test]
    async fn a_migration_keeps_routes_frames_their_order_and_expiry() {
        let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b, c) = (DeviceId([1; 16]), DeviceId([2; 16]), DeviceId([3; 16]));
        let addr = AddrKey::from_ip(std::net::IpAddr::from([10, 0, 0, 1]));
        let ttl = crate::Config::new(src.path().to_owned()).queue.ttl_secs;
        {
            let s = open(src.path(), 1000);
            s.authorize(a, b, addr, 1000).await.unwrap();
            s.authorize(b, a, addr, 1000).await.unwrap();
            s.authorize(a, c, addr, 1000).await.unwrap();
            for n in 0..5u8 {
                let f = NewFrame { to: b, from: a, addr, payload: vec![n].into() };
                s.enqueue(f, 1000 + u64::from(n), false).durable.await.unwrap();
            }
        }
        let export = loop {
            match RedbStore::export(src.path(), 2000) {
                Ok(e) => break e,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        };
        let target = open(dst.path(), 2000);
        let done = migrate(export.clone(), &target, ttl, 2000).await.unwrap();
        assert_eq!(done, Migrated { authorizations: 3, frames: 5, expired: 0 });
        assert!(target.is_route(a, b).await.unwrap());
        assert!(!target.is_route(a, c).await.unwrap(), "one-sided stays one-sided");
        let got = target.fetch(b, 0, 100).await.unwrap();
        let payloads: Vec<Vec<u8>> = got.iter().map(|q| q.payload.clone()).collect();
        assert_eq!(payloads, (0..5u8).map(|n| vec![n]).collect::<Vec<_>>());
        assert!(got.windows(2).all(|w| w[0].id < w[1].id), "ids strictly increase");
        // The first frame expires when it would have in the source.
        let x = target.expire(1000 + ttl).await.unwrap();
        assert_eq!(x.frames, 1);

        // Frames past their expiry are left out, and counted.
        let dst2 = tempfile::tempdir().unwrap();
        let target = open(dst2.path(), 2000);
        let done = migrate(export, &target, ttl, 1002 + ttl).await.unwrap();
        assert_eq!(done, Migrated { authorizations: 3, frames: 2, expired: 3 });
    }
}
