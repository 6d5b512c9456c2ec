//! The embedded store: one redb file in the relay's data directory.
//!
//! All operations go to one writer thread through a channel. The thread
//! takes whatever operations are waiting (up to [`MAX_BATCH`]), applies them
//! in order inside one write transaction and commits once, with an fsync
//! (`Durability::Immediate`) if anything changed; only then does any caller
//! get its answer. Group commit keeps throughput up while every `Ok` means
//! "on disk".

use std::path::Path;
use std::sync::mpsc;
use std::thread;

use redb::{Database, Durability, ReadableTable, Table, TableDefinition, WriteTransaction};
use tandem_proto::DeviceId;
use tokio::sync::oneshot;

use super::{
    MAX_EXPIRED_PER_SWEEP, MAX_PEERS, QueueDepth, QueueLimits, Queued, Store, StoreError,
    StoreFuture,
};

/// Most operations applied in one transaction.
pub(crate) const MAX_BATCH: usize = 512;

/// `to [16] ‖ id u64` → `from [16] ‖ expires_at u64 ‖ payload`
const QUEUE: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("queue");
/// `expires_at u64 ‖ to [16] ‖ id u64` → empty
const EXPIRY: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("expiry");
/// `to [16]` → `next_id u64 ‖ frames u64 ‖ bytes u64`
const META: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("queue_meta");
/// `by [16] ‖ peer [16]` → empty: `by` authorised `peer`.
const ROUTES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("routes");

enum Op {
    Enqueue {
        to: DeviceId,
        from: DeviceId,
        payload: Vec<u8>,
        now: u64,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    Fetch {
        to: DeviceId,
        after: u64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<Queued>, StoreError>>,
    },
    Ack {
        to: DeviceId,
        up_to: u64,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    Depth {
        to: DeviceId,
        reply: oneshot::Sender<Result<QueueDepth, StoreError>>,
    },
    Authorize {
        by: DeviceId,
        peer: DeviceId,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Revoke {
        by: DeviceId,
        peer: DeviceId,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    IsRoute {
        a: DeviceId,
        b: DeviceId,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    Peers {
        a: DeviceId,
        reply: oneshot::Sender<Result<Vec<DeviceId>, StoreError>>,
    },
    Expire {
        now: u64,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    Totals {
        reply: oneshot::Sender<Result<QueueDepth, StoreError>>,
    },
}

impl Op {
    fn writes(&self) -> bool {
        matches!(
            self,
            Op::Enqueue { .. }
                | Op::Ack { .. }
                | Op::Authorize { .. }
                | Op::Revoke { .. }
                | Op::Expire { .. }
        )
    }

    fn fail(self, e: StoreError) {
        // The caller may have gone away; nothing to do then.
        match self {
            Op::Enqueue { reply, .. }
            | Op::Ack { reply, .. }
            | Op::Revoke { reply, .. }
            | Op::Expire { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Op::Fetch { reply, .. } => drop(reply.send(Err(e))),
            Op::Depth { reply, .. } | Op::Totals { reply } => drop(reply.send(Err(e))),
            Op::Authorize { reply, .. } => drop(reply.send(Err(e))),
            Op::IsRoute { reply, .. } => drop(reply.send(Err(e))),
            Op::Peers { reply, .. } => drop(reply.send(Err(e))),
        }
    }
}

/// The redb-backed [`Store`].
#[derive(Debug)]
pub struct RedbStore {
    tx: mpsc::Sender<Op>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl RedbStore {
    /// Open (or create) `dir/relay.redb` and start the writer thread.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the directory or database cannot be opened.
    pub fn open(dir: &Path, limits: QueueLimits) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let db = Database::create(dir.join("relay.redb")).map_err(backend)?;
        // Create the tables up front so read paths never meet a missing table.
        let txn = db.begin_write().map_err(backend)?;
        for def in [QUEUE, EXPIRY, META, ROUTES] {
            txn.open_table(def).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("tandem-store".into())
            .spawn(move || writer(db, rx, limits))
            .map_err(backend)?;
        Ok(Self { tx })
    }

    fn call<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Op,
    ) -> StoreFuture<T> {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send(make(reply));
        Box::pin(async move {
            sent.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }
}

impl Store for RedbStore {
    fn enqueue(
        &self,
        to: DeviceId,
        from: DeviceId,
        payload: Vec<u8>,
        now_unix: u64,
    ) -> StoreFuture<u64> {
        self.call(|reply| Op::Enqueue { to, from, payload, now: now_unix, reply })
    }
    fn fetch(&self, to: DeviceId, after: u64, limit: usize) -> StoreFuture<Vec<Queued>> {
        self.call(|reply| Op::Fetch { to, after, limit, reply })
    }
    fn ack(&self, to: DeviceId, up_to: u64) -> StoreFuture<u64> {
        self.call(|reply| Op::Ack { to, up_to, reply })
    }
    fn depth(&self, to: DeviceId) -> StoreFuture<QueueDepth> {
        self.call(|reply| Op::Depth { to, reply })
    }
    fn authorize(&self, by: DeviceId, peer: DeviceId) -> StoreFuture<()> {
        self.call(|reply| Op::Authorize { by, peer, reply })
    }
    fn revoke(&self, by: DeviceId, peer: DeviceId) -> StoreFuture<u64> {
        self.call(|reply| Op::Revoke { by, peer, reply })
    }
    fn is_route(&self, a: DeviceId, b: DeviceId) -> StoreFuture<bool> {
        self.call(|reply| Op::IsRoute { a, b, reply })
    }
    fn peers(&self, a: DeviceId) -> StoreFuture<Vec<DeviceId>> {
        self.call(|reply| Op::Peers { a, reply })
    }
    fn expire(&self, now_unix: u64) -> StoreFuture<u64> {
        self.call(|reply| Op::Expire { now: now_unix, reply })
    }
    fn totals(&self) -> StoreFuture<QueueDepth> {
        self.call(|reply| Op::Totals { reply })
    }
}

/// The writer thread: batch, apply, commit, answer.
fn writer(db: Database, rx: mpsc::Receiver<Op>, limits: QueueLimits) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let writes = batch.iter().any(Op::writes);
        let mut txn = match db.begin_write() {
            Ok(t) => t,
            Err(e) => {
                batch.into_iter().for_each(|op| op.fail(backend(&e)));
                continue;
            }
        };
        if !writes {
            // Nothing to make durable: skip the fsync.
            let _ = txn.set_durability(Durability::None);
        } else {
            let _ = txn.set_durability(Durability::Immediate);
        }
        // Apply every op, keeping its answer until the commit is durable.
        let mut answers = Vec::with_capacity(batch.len());
        let mut failed = None;
        for op in batch {
            if failed.is_some() {
                answers.push((op, Answer::Pending));
                continue;
            }
            match apply(&txn, &op, &limits) {
                Ok(a) => answers.push((op, a)),
                Err(e) => {
                    failed = Some(e);
                    answers.push((op, Answer::Pending));
                }
            }
        }
        let result = match failed {
            Some(e) => {
                let _ = txn.abort();
                Err(e)
            }
            None => txn.commit().map_err(backend),
        };
        for (op, answer) in answers {
            match &result {
                Ok(()) => answer.send(op),
                Err(e) => op.fail(e.clone()),
            }
        }
    }
}

/// An operation's outcome, held until the commit.
enum Answer {
    U64(Result<u64, StoreError>),
    Unit(Result<(), StoreError>),
    Bool(bool),
    Queued(Vec<Queued>),
    Depth(QueueDepth),
    Ids(Vec<DeviceId>),
    Pending,
}

impl Answer {
    fn send(self, op: Op) {
        let e = || StoreError::Backend("internal: answer does not match operation".into());
        match (op, self) {
            (
                Op::Enqueue { reply, .. }
                | Op::Ack { reply, .. }
                | Op::Revoke { reply, .. }
                | Op::Expire { reply, .. },
                Answer::U64(r),
            ) => {
                let _ = reply.send(r);
            }
            (Op::Authorize { reply, .. }, Answer::Unit(r)) => drop(reply.send(r)),
            (Op::IsRoute { reply, .. }, Answer::Bool(b)) => drop(reply.send(Ok(b))),
            (Op::Fetch { reply, .. }, Answer::Queued(q)) => drop(reply.send(Ok(q))),
            (Op::Depth { reply, .. } | Op::Totals { reply }, Answer::Depth(d)) => {
                drop(reply.send(Ok(d)))
            }
            (Op::Peers { reply, .. }, Answer::Ids(ids)) => drop(reply.send(Ok(ids))),
            (op, _) => op.fail(e()),
        }
    }
}

fn qkey(to: &DeviceId, id: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&to.0);
    k[16..].copy_from_slice(&id.to_be_bytes());
    k
}

fn ekey(expires: u64, to: &DeviceId, id: u64) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&expires.to_be_bytes());
    k[8..24].copy_from_slice(&to.0);
    k[24..].copy_from_slice(&id.to_be_bytes());
    k
}

fn rkey(by: &DeviceId, peer: &DeviceId) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(&by.0);
    k[16..].copy_from_slice(&peer.0);
    k
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).and_then(|s| s.try_into().ok()).map_or(0, u64::from_be_bytes)
}

fn id16(b: &[u8], at: usize) -> DeviceId {
    DeviceId(b.get(at..at + 16).and_then(|s| s.try_into().ok()).unwrap_or([0; 16]))
}

#[derive(Clone, Copy, Default)]
struct Meta {
    next_id: u64,
    frames: u64,
    bytes: u64,
}

impl Meta {
    fn read(t: &Table<'_, &[u8], &[u8]>, to: &DeviceId) -> Result<Self, StoreError> {
        Ok(match t.get(&to.0[..]).map_err(backend)? {
            Some(v) => {
                let v = v.value();
                Meta { next_id: u64_at(v, 0), frames: u64_at(v, 8), bytes: u64_at(v, 16) }
            }
            None => Meta { next_id: 1, frames: 0, bytes: 0 },
        })
    }

    fn write(&self, t: &mut Table<'_, &[u8], &[u8]>, to: &DeviceId) -> Result<(), StoreError> {
        let mut v = [0u8; 24];
        v[..8].copy_from_slice(&self.next_id.to_be_bytes());
        v[8..16].copy_from_slice(&self.frames.to_be_bytes());
        v[16..].copy_from_slice(&self.bytes.to_be_bytes());
        t.insert(&to.0[..], &v[..]).map_err(backend)?;
        Ok(())
    }
}

/// Remove queued frames for `to` matching `pred` within `ids`; keeps meta
/// and the expiry index in step. Returns how many were removed.
fn remove_where(
    txn: &WriteTransaction,
    to: &DeviceId,
    ids: std::ops::RangeInclusive<u64>,
    mut pred: impl FnMut(&[u8]) -> bool,
) -> Result<u64, StoreError> {
    let mut queue = txn.open_table(QUEUE).map_err(backend)?;
    let mut expiry = txn.open_table(EXPIRY).map_err(backend)?;
    let mut meta_t = txn.open_table(META).map_err(backend)?;
    let lo = qkey(to, *ids.start());
    let hi = qkey(to, *ids.end());
    let mut victims = Vec::new();
    for item in queue.range(&lo[..]..=&hi[..]).map_err(backend)? {
        let (k, v) = item.map_err(backend)?;
        let v = v.value();
        if pred(v) {
            victims.push((u64_at(k.value(), 16), u64_at(v, 16), v.len().saturating_sub(24) as u64));
        }
    }
    let mut meta = Meta::read(&meta_t, to)?;
    for (id, expires, len) in &victims {
        queue.remove(&qkey(to, *id)[..]).map_err(backend)?;
        expiry.remove(&ekey(*expires, to, *id)[..]).map_err(backend)?;
        meta.frames = meta.frames.saturating_sub(1);
        meta.bytes = meta.bytes.saturating_sub(*len);
    }
    if !victims.is_empty() {
        meta.write(&mut meta_t, to)?;
    }
    Ok(victims.len() as u64)
}

fn apply(txn: &WriteTransaction, op: &Op, limits: &QueueLimits) -> Result<Answer, StoreError> {
    Ok(match op {
        Op::Enqueue { to, from, payload, now, .. } => {
            {
                let routes = txn.open_table(ROUTES).map_err(backend)?;
                let ab = routes.get(&rkey(from, to)[..]).map_err(backend)?.is_some();
                let ba = routes.get(&rkey(to, from)[..]).map_err(backend)?.is_some();
                if !(ab && ba) {
                    return Ok(Answer::U64(Err(StoreError::NoRoute)));
                }
            }
            let mut meta_t = txn.open_table(META).map_err(backend)?;
            let mut meta = Meta::read(&meta_t, to)?;
            let len = payload.len() as u64;
            if meta.frames + 1 > limits.max_frames || meta.bytes + len > limits.max_bytes {
                return Ok(Answer::U64(Err(StoreError::QueueFull(*to))));
            }
            let id = meta.next_id;
            let expires = now.saturating_add(limits.ttl_secs);
            let mut v = Vec::with_capacity(24 + payload.len());
            v.extend_from_slice(&from.0);
            v.extend_from_slice(&expires.to_be_bytes());
            v.extend_from_slice(payload);
            txn.open_table(QUEUE)
                .map_err(backend)?
                .insert(&qkey(to, id)[..], &v[..])
                .map_err(backend)?;
            txn.open_table(EXPIRY)
                .map_err(backend)?
                .insert(&ekey(expires, to, id)[..], &[][..])
                .map_err(backend)?;
            meta.next_id = id + 1;
            meta.frames += 1;
            meta.bytes += len;
            meta.write(&mut meta_t, to)?;
            Answer::U64(Ok(id))
        }
        Op::Fetch { to, after, limit, .. } => {
            let queue = txn.open_table(QUEUE).map_err(backend)?;
            let lo = qkey(to, after.saturating_add(1));
            let hi = qkey(to, u64::MAX);
            let mut out = Vec::new();
            for item in queue.range(&lo[..]..=&hi[..]).map_err(backend)?.take(*limit) {
                let (k, v) = item.map_err(backend)?;
                let v = v.value();
                out.push(Queued {
                    id: u64_at(k.value(), 16),
                    from: id16(v, 0),
                    payload: v.get(24..).unwrap_or_default().to_vec(),
                });
            }
            Answer::Queued(out)
        }
        Op::Ack { to, up_to, .. } => Answer::U64(Ok(remove_where(txn, to, 0..=*up_to, |_| true)?)),
        Op::Depth { to, .. } => {
            let meta = Meta::read(&txn.open_table(META).map_err(backend)?, to)?;
            Answer::Depth(QueueDepth { frames: meta.frames, bytes: meta.bytes })
        }
        Op::Authorize { by, peer, .. } => {
            let mut routes = txn.open_table(ROUTES).map_err(backend)?;
            if routes.get(&rkey(by, peer)[..]).map_err(backend)?.is_none() {
                let lo = rkey(by, &DeviceId([0; 16]));
                let hi = rkey(by, &DeviceId([0xff; 16]));
                if routes.range(&lo[..]..=&hi[..]).map_err(backend)?.take(MAX_PEERS).count()
                    >= MAX_PEERS
                {
                    return Ok(Answer::Unit(Err(StoreError::TooManyPeers)));
                }
                routes.insert(&rkey(by, peer)[..], &[][..]).map_err(backend)?;
            }
            Answer::Unit(Ok(()))
        }
        Op::Revoke { by, peer, .. } => {
            let existed = txn
                .open_table(ROUTES)
                .map_err(backend)?
                .remove(&rkey(by, peer)[..])
                .map_err(backend)?
                .is_some();
            if !existed {
                // Nothing can be queued between them on `by`'s account.
                return Ok(Answer::U64(Ok(0)));
            }
            let a = remove_where(txn, peer, 0..=u64::MAX, |v| id16(v, 0) == *by)?;
            let b = remove_where(txn, by, 0..=u64::MAX, |v| id16(v, 0) == *peer)?;
            Answer::U64(Ok(a + b))
        }
        Op::IsRoute { a, b, .. } => {
            let routes = txn.open_table(ROUTES).map_err(backend)?;
            let ab = routes.get(&rkey(a, b)[..]).map_err(backend)?.is_some();
            let ba = routes.get(&rkey(b, a)[..]).map_err(backend)?.is_some();
            Answer::Bool(ab && ba)
        }
        Op::Peers { a, .. } => {
            let routes = txn.open_table(ROUTES).map_err(backend)?;
            let lo = rkey(a, &DeviceId([0; 16]));
            let hi = rkey(a, &DeviceId([0xff; 16]));
            let mut out = Vec::new();
            for item in routes.range(&lo[..]..=&hi[..]).map_err(backend)? {
                let (k, _) = item.map_err(backend)?;
                let peer = id16(k.value(), 16);
                if routes.get(&rkey(&peer, a)[..]).map_err(backend)?.is_some() {
                    out.push(peer);
                }
            }
            Answer::Ids(out)
        }
        Op::Expire { now, .. } => {
            let expiry = txn.open_table(EXPIRY).map_err(backend)?;
            let hi = ekey(*now, &DeviceId([0xff; 16]), u64::MAX);
            let mut due: Vec<(DeviceId, u64)> = Vec::new();
            for item in expiry.range(..=&hi[..]).map_err(backend)?.take(MAX_EXPIRED_PER_SWEEP) {
                let (k, _) = item.map_err(backend)?;
                let k = k.value();
                if u64_at(k, 0) > *now {
                    break;
                }
                due.push((id16(k, 8), u64_at(k, 24)));
            }
            drop(expiry);
            let mut n = 0;
            for (to, id) in due {
                n += remove_where(txn, &to, id..=id, |_| true)?;
            }
            Answer::U64(Ok(n))
        }
        Op::Totals { .. } => {
            let meta_t = txn.open_table(META).map_err(backend)?;
            let mut d = QueueDepth::default();
            for item in meta_t.iter().map_err(backend)? {
                let (_, v) = item.map_err(backend)?;
                d.frames += u64_at(v.value(), 8);
                d.bytes += u64_at(v.value(), 16);
            }
            Answer::Depth(d)
        }
    })
}
