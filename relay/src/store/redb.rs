//! The embedded store: one redb file in the relay's data directory.
//!
//! All operations go to one writer thread through a channel. The thread
//! takes whatever operations are waiting (up to [`MAX_BATCH`]), applies them
//! in order inside one write transaction (each table opened once, each
//! queue's metadata written once) and commits once. Group commit keeps
//! throughput up while every answer to an enqueue, authorisation or
//! revocation means "on disk": those commits are fsynced
//! (`Durability::Immediate`). An enqueue takes its delivery id when it is
//! submitted ([`NextIds`]), so a connected recipient gets the frame at once,
//! even while the writer is in an fsync ([`super::Enqueued`]); [`Skip`]
//! keeps those ids from ever being handed out twice. Batches of only
//! acknowledgements and expiry commit without an fsync ([`LazyCommits`]).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction,
};
use tandem_proto::DeviceId;
use tokio::sync::oneshot;

use self::accounts::{Depths, Pending, Usage};
use self::layout::{FRESH_ID, META, Meta, SETTINGS, id16, u64_at};
use self::tables::{Accounts, Answer, Changes, Context, Sweeps, apply_batch, apply_pending};
use super::{
    AddrKey, Enqueued, Expired, MAX_PEERS, NewFrame, QueueDepth, QueueLimits, Queued, RouteLimits,
    Store, StoreError, StoreFuture, Totals,
};

mod accounts;
pub(super) mod layout;
mod routes;
mod tables;
#[cfg(test)]
pub(super) use self::layout::old as old_layout;

/// Most operations applied in one transaction.
pub(crate) const MAX_BATCH: usize = 512;

enum Op {
    Enqueue {
        frame: NewFrame,
        now: u64,
        /// Its delivery id, taken from [`NextIds`] when it was submitted.
        id: u64,
        /// The recipient is connected (see [`super::LIVE_ALLOWANCE_BYTES`]).
        live: bool,
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
        addr: AddrKey,
        now: u64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Revoke {
        by: DeviceId,
        peer: DeviceId,
        now: u64,
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
        reply: oneshot::Sender<Result<Expired, StoreError>>,
    },
    Totals {
        reply: oneshot::Sender<Result<Totals, StoreError>>,
    },
}

impl Op {
    /// Whether the caller is told only once the change is on disk.
    fn answers_durably(&self) -> bool {
        matches!(self, Op::Enqueue { .. } | Op::Authorize { .. } | Op::Revoke { .. })
    }

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
            Op::Enqueue { reply, .. } | Op::Ack { reply, .. } | Op::Revoke { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Op::Expire { reply, .. } => drop(reply.send(Err(e))),
            Op::Totals { reply } => drop(reply.send(Err(e))),
            Op::Fetch { reply, .. } => drop(reply.send(Err(e))),
            Op::Depth { reply, .. } => drop(reply.send(Err(e))),
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
    ids: Arc<Mutex<NextIds>>,
}

/// Each queue's next delivery id, handed out when an enqueue is submitted
/// (so a frame can be delivered at once, without waiting for the writer
/// thread, which may be in the middle of an fsync). Loaded from the queue
/// metadata when the store opens; the writer keeps the metadata's next id
/// past every id it stores.
#[derive(Debug)]
struct NextIds {
    next: HashMap<DeviceId, u64>,
    /// The first id of a queue not seen yet.
    fresh: u64,
    /// Hand ids out early only while the store commits: after a failed
    /// commit the ids handed out are not saved anywhere, so none is told
    /// early until a commit that also ran [`Skip`] succeeded.
    healthy: bool,
    /// Queues that refused a frame as full: a frame for them is told its id
    /// only once it is stored (so a full queue still pushes back on a
    /// connected recipient), until an ack, expiry or revocation removes
    /// something from them.
    full: HashSet<DeviceId>,
}

impl NextIds {
    fn load(db: &Database) -> Result<Self, StoreError> {
        let txn = db.begin_read().map_err(backend)?;
        let fresh = txn
            .open_table(SETTINGS)
            .map_err(backend)?
            .get(FRESH_ID)
            .map_err(backend)?
            .map_or(1, |v| u64_at(v.value(), 0));
        let mut next = HashMap::new();
        for item in txn.open_table(META).map_err(backend)?.iter().map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            next.insert(id16(k.value(), 0), Meta::decode(v.value()).next_id);
        }
        Ok(Self { next, fresh, healthy: true, full: HashSet::new() })
    }

    /// Whether a frame for `to` may be delivered before it is stored.
    fn early(&self, to: &DeviceId) -> bool {
        self.healthy && !self.full.contains(to)
    }

    fn take(&mut self, to: DeviceId) -> u64 {
        let next = self.next.entry(to).or_insert(self.fresh);
        let id = *next;
        *next += 1;
        id
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl RedbStore {
    /// Open (or create) `dir/relay.redb` (a new directory 0700, the file
    /// 0600) and start the writer thread.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the directory or database cannot be opened.
    pub fn open(
        dir: &Path,
        limits: QueueLimits,
        routes: RouteLimits,
        now_unix: u64,
    ) -> Result<Self, StoreError> {
        crate::fsmode::create_private_dir(dir).map_err(backend)?;
        // Created 0600 whatever the umask (redb would leave it to the umask).
        let path = dir.join("relay.redb");
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        drop(crate::fsmode::private_file(&path, &mut options).map_err(backend)?);
        let db = Database::create(path).map_err(backend)?;
        // Create the tables up front so read paths never meet a missing
        // table, move an older layout's rows over, and move every queue's
        // next delivery id past what may have been handed out before a
        // commit that never happened (see [`Skip`]): one durable commit.
        let mut txn = db.begin_write().map_err(backend)?;
        let _ = txn.set_durability(Durability::Immediate);
        layout::upgrade(&txn, now_unix)?;
        Skip::apply(&txn)?;
        txn.commit().map_err(backend)?;
        let ids = Arc::new(Mutex::new(NextIds::load(&db)?));
        let accounts = (Depths::load(&db)?, Usage::load(&db)?, Pending::load(&db)?);
        let (tx, rx) = mpsc::channel();
        let writer_ids = Arc::clone(&ids);
        let limits = (limits, routes);
        thread::Builder::new()
            .name("tandem-store".into())
            .spawn(move || writer(db, rx, limits, &writer_ids, accounts))
            .map_err(backend)?;
        Ok(Self { tx, ids })
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
    fn enqueue(&self, frame: NewFrame, now_unix: u64, live: bool) -> Enqueued {
        // `relay.enqueue` refuses a frame, `relay.enqueue.<device>` one for
        // that device, as a failing disk would: before it takes an id, so it
        // is not delivered live either (see `failpoints.rs`).
        #[cfg(feature = "failpoints")]
        if let Some(point) = refused_by_failpoint(&frame.to) {
            tracing::warn!("FAILPOINTS: {point}: refusing a frame");
            let refused = || StoreError::Backend(format!("failpoint {point}"));
            return Enqueued {
                placed: Box::pin(std::future::ready(Err(refused()))),
                durable: Box::pin(std::future::ready(Err(refused()))),
            };
        }
        // Take the id and submit under one lock, so the writer sees each
        // queue's ids in increasing order.
        let to = frame.to;
        let mut ids = lock(&self.ids);
        let id = ids.take(to);
        let early = ids.early(&to);
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send(Op::Enqueue { frame, now: now_unix, id, live, reply });
        drop(ids);
        let placed = if early && sent.is_ok() { Ok(id) } else { Err(StoreError::Closed) };
        let durable = Box::pin(async move {
            sent.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        });
        Enqueued { placed: Box::pin(std::future::ready(placed)), durable }
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
    fn authorize(
        &self,
        by: DeviceId,
        peer: DeviceId,
        addr: AddrKey,
        now_unix: u64,
    ) -> StoreFuture<()> {
        self.call(|reply| Op::Authorize { by, peer, addr, now: now_unix, reply })
    }
    fn revoke(&self, by: DeviceId, peer: DeviceId, now_unix: u64) -> StoreFuture<u64> {
        self.call(|reply| Op::Revoke { by, peer, now: now_unix, reply })
    }
    fn is_route(&self, a: DeviceId, b: DeviceId) -> StoreFuture<bool> {
        self.call(|reply| Op::IsRoute { a, b, reply })
    }
    fn peers(&self, a: DeviceId) -> StoreFuture<Vec<DeviceId>> {
        self.call(|reply| Op::Peers { a, reply })
    }
    fn expire(&self, now_unix: u64) -> StoreFuture<Expired> {
        self.call(|reply| Op::Expire { now: now_unix, reply })
    }
    fn totals(&self) -> StoreFuture<Totals> {
        self.call(|reply| Op::Totals { reply })
    }
}

fn lock(ids: &Mutex<NextIds>) -> MutexGuard<'_, NextIds> {
    ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The writer thread: batch, apply, commit, answer.
fn writer(
    db: Database,
    rx: mpsc::Receiver<Op>,
    (limits, routes): (QueueLimits, RouteLimits),
    ids: &Mutex<NextIds>,
    (mut depths, mut usage, mut pending): (Depths, Usage, Pending),
) {
    let mut lazy = LazyCommits::default();
    let mut sweeps = Sweeps::default();
    // A commit failed: ids handed out may not be saved; skip past them in
    // the next commit before telling ids early again.
    let mut skip = false;
    loop {
        let first = match lazy.pending() {
            // Idle with lazy commits waiting: make them durable when they
            // are due, not only when the next operation comes.
            Some(due) => match rx.recv_timeout(due) {
                Ok(op) => op,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if durable_empty_commit(&db) {
                        lazy.committed(true);
                    } else {
                        // Try again later; the next batch's commit is
                        // durable anyway.
                        lazy.since = Some(std::time::Instant::now());
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            },
            None => match rx.recv() {
                Ok(op) => op,
                Err(_) => return,
            },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut txn = match db.begin_write() {
            Ok(t) => t,
            Err(e) => {
                lock(ids).healthy = false;
                skip = true;
                batch.into_iter().for_each(|op| op.fail(backend(&e)));
                continue;
            }
        };
        let durable = skip || lazy.durable(&batch);
        let _ = txn.set_durability(if durable { Durability::Immediate } else { Durability::None });
        // Apply every op, keeping its answer until the commit is durable.
        let skipped = if skip { Skip::apply(&txn) } else { Ok(()) };
        let (answers, changed, failed) = match skipped {
            Ok(()) => {
                let accounts = Accounts { depths: &depths, usage: &usage, pending: &pending };
                let cx = Context { limits: &limits, routes: &routes, accounts, ids };
                apply_batch(&txn, &batch, &cx, &mut sweeps)
            }
            Err(e) => {
                let pending = batch.iter().map(|_| Answer::Pending).collect();
                (pending, Changes::default(), Some(e))
            }
        };
        let result = match failed {
            Some(e) => {
                let _ = txn.abort();
                Err(e)
            }
            None => txn.commit().map_err(backend),
        };
        if result.is_ok() {
            lazy.committed(durable);
            skip = false;
            let Changes { queues, usage: addrs, pending: delta, forgotten } = changed;
            depths.update(queues);
            usage.update(addrs);
            apply_pending(&mut pending, delta);
            forget_queues(ids, &forgotten);
            note_fullness(ids, &batch, &answers);
        } else {
            lock(ids).healthy = false;
            skip = true;
        }
        for (op, answer) in batch.into_iter().zip(answers) {
            match &result {
                Ok(()) => answer.send(op),
                Err(e) => op.fail(e.clone()),
            }
        }
    }
}

/// An empty commit with an fsync, which makes earlier lazy commits durable.
/// Whether it worked (if not, the next batch's commit is durable anyway).
fn durable_empty_commit(db: &Database) -> bool {
    db.begin_write().is_ok_and(|mut txn| {
        let _ = txn.set_durability(Durability::Immediate);
        txn.commit().is_ok()
    })
}

/// After a commit: mark the queues that refused a frame as full, unmark
/// those that lost frames (so their frames are told ids early again), and
/// tell ids early again after a failed commit (this commit ran [`Skip`]).
fn note_fullness(ids: &Mutex<NextIds>, batch: &[Op], answers: &[Answer]) {
    let mut ids = lock(ids);
    ids.healthy = true;
    if ids.full.is_empty() && !answers.iter().any(Answer::is_full) {
        return;
    }
    for (op, answer) in batch.iter().zip(answers) {
        match (op, answer) {
            (Op::Enqueue { frame, .. }, a) if a.is_full() => {
                ids.full.insert(frame.to);
            }
            (Op::Ack { to, .. }, _) => {
                ids.full.remove(to);
            }
            // Expiry and revocation may empty any queue: start afresh.
            (Op::Revoke { .. }, Answer::U64(Ok(n))) if *n > 0 => ids.full.clear(),
            (Op::Expire { .. }, Answer::Expired(x)) if x.frames > 0 => ids.full.clear(),
            _ => {}
        }
    }
}

/// After a commit that deleted the metadata of idle queues: forget their
/// next ids in memory too, so a frame for one of them later starts it
/// afresh. The first id of a fresh queue is raised past each one's next id
/// as it is in memory now. The commit saved it past the next id as it was
/// when the row was deleted; ids handed out for the queue in between were
/// in flight, fewer than [`SKIP`] allows for (see [`Skip`]), so after a
/// crash the skip at open still moves past them.
fn forget_queues(ids: &Mutex<NextIds>, forgotten: &[(DeviceId, u64)]) {
    if forgotten.is_empty() {
        return;
    }
    let mut ids = lock(ids);
    for (to, next) in forgotten {
        let now = ids.next.remove(to).unwrap_or(0).max(*next);
        ids.fresh = ids.fresh.max(now);
        ids.full.remove(to);
    }
}

/// Delivery ids handed out before a commit that never happened (the relay
/// died, or the commit failed) must not be handed out again: the recipient
/// may hold them and would drop a new frame under an old id as a
/// redelivery. Ids are handed out when an enqueue is submitted, and every
/// committed enqueue (refused or not) saves its queue's next id past its
/// own. A connection has at most [`crate::conn::MAX_PENDING`] store
/// operations in flight and a queue takes frames from at most
/// [`MAX_PEERS`] peers (a few connections each, while one replaces
/// another), so fewer than [`SKIP`] ids of one queue can be handed out and
/// not saved. When the store opens, and in the first commit after a failed
/// one, every queue's next id, and the first id of queues not seen yet,
/// moves [`SKIP`] on; between a failed commit and that one, no id is told
/// early.
struct Skip;

/// How far every queue's next id moves when the store opens.
pub(crate) const SKIP: u64 = 1 << 24;
// (Twice that, with room to spare: a queue forgotten while ids for it
// were in flight, see [`forget_queues`].)
const _: () = assert!((crate::conn::MAX_PENDING * MAX_PEERS * 8) as u64 <= SKIP);

impl Skip {
    fn apply(txn: &WriteTransaction) -> Result<(), StoreError> {
        let step = SKIP;
        let mut settings = txn.open_table(SETTINGS).map_err(backend)?;
        let fresh = settings.get(FRESH_ID).map_err(backend)?.map(|v| u64_at(v.value(), 0));
        let mut meta_t = txn.open_table(META).map_err(backend)?;
        if fresh.is_none() && meta_t.is_empty().map_err(backend)? {
            // A new store: nothing was ever handed out.
            settings.insert(FRESH_ID, &1u64.to_be_bytes()[..]).map_err(backend)?;
            return Ok(());
        }
        let fresh = fresh.unwrap_or(1).saturating_add(step);
        settings.insert(FRESH_ID, &fresh.to_be_bytes()[..]).map_err(backend)?;
        let mut rows = Vec::new();
        for item in meta_t.iter().map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            rows.push((id16(k.value(), 0), Meta::decode(v.value())));
        }
        for (to, mut m) in rows {
            m.next_id = m.next_id.saturating_add(step);
            meta_t.insert(&to.0[..], &m.encode()[..]).map_err(backend)?;
        }
        Ok(())
    }
}

/// Which commits need an fsync.
///
/// An enqueue, authorisation or revocation is answered only once it is on
/// disk. Acknowledgements and expiry are not: if the relay dies before the
/// next durable commit, the frames they deleted come back and are delivered
/// again, which the end-to-end layer drops as duplicates (the same holds
/// for an `Ok` lost on the way to a sender). So a batch of only those
/// commits without an fsync, and the next durable commit carries it. redb
/// frees the pages a non-durable commit released only at a durable one, so
/// one is forced at least every [`LAZY_MAX`] commits or [`LAZY_AGE`] (on an
/// idle relay the writer wakes for it: an empty durable commit).
#[derive(Default)]
struct LazyCommits {
    /// Non-durable commits since the last durable one.
    count: u32,
    /// When the first of them was made.
    since: Option<std::time::Instant>,
}

/// Most non-durable commits in a row.
const LAZY_MAX: u32 = 64;
/// Longest a non-durable commit waits for a durable one.
const LAZY_AGE: std::time::Duration = std::time::Duration::from_secs(1);

impl LazyCommits {
    /// Whether this batch's commit must be durable.
    fn durable(&self, batch: &[Op]) -> bool {
        if batch.iter().any(Op::answers_durably) {
            return true;
        }
        if !batch.iter().any(Op::writes) {
            // Nothing to make durable (reads only): skip the fsync, unless
            // earlier lazy commits are waiting.
            return self.count > 0 && self.overdue();
        }
        self.count + 1 >= LAZY_MAX || self.overdue()
    }

    /// How long until waiting lazy commits are due, if any wait.
    fn pending(&self) -> Option<std::time::Duration> {
        self.since.map(|t| LAZY_AGE.saturating_sub(t.elapsed()))
    }

    fn overdue(&self) -> bool {
        self.since.is_some_and(|t| t.elapsed() >= LAZY_AGE)
    }

    fn committed(&mut self, durable: bool) {
        if durable {
            *self = Self::default();
        } else {
            self.count += 1;
            self.since.get_or_insert_with(std::time::Instant::now);
        }
    }
}

/// The failpoint that refuses this enqueue, if one is armed.
#[cfg(feature = "failpoints")]
fn refused_by_failpoint(to: &DeviceId) -> Option<String> {
    if fail::eval("relay.enqueue", |_| ()).is_some() {
        return Some("relay.enqueue".into());
    }
    let named = format!("relay.enqueue.{to}");
    fail::eval(&named, |_| ()).map(|()| named)
}

#[cfg(test)]
mod lazy_tests {
    use super::*;

    fn ack() -> Op {
        Op::Ack { to: DeviceId([1; 16]), up_to: 1, reply: oneshot::channel().0 }
    }

    fn enqueue() -> Op {
        let (to, from) = (DeviceId([1; 16]), DeviceId([2; 16]));
        Op::Enqueue {
            frame: NewFrame { to, from, addr: AddrKey::UNKNOWN, payload: vec![] },
            now: 0,
            id: 1,
            live: false,
            reply: oneshot::channel().0,
        }
    }

    fn totals() -> Op {
        Op::Totals { reply: oneshot::channel().0 }
    }

    #[test]
    fn acks_commit_lazily_until_a_durable_commit_is_due() {
        let mut lazy = LazyCommits::default();
        // An enqueue is answered only once it is on disk.
        assert!(lazy.durable(&[ack(), enqueue()]));
        // Acks alone: no fsync, for up to LAZY_MAX - 1 commits in a row.
        for _ in 0..LAZY_MAX - 1 {
            assert!(!lazy.durable(&[ack(), ack()]));
            lazy.committed(false);
        }
        assert!(lazy.durable(&[ack()]), "the 64th lazy commit must be durable");
        lazy.committed(true);
        assert!(!lazy.durable(&[ack()]));
        // Reads alone never need one, unless lazy commits are overdue.
        assert!(!lazy.durable(&[totals()]));
        lazy.committed(false);
        lazy.since = Some(std::time::Instant::now() - LAZY_AGE);
        assert!(lazy.durable(&[totals()]), "an overdue lazy commit is carried by a read");
        // An idle writer wakes when lazy commits are due, and only then.
        assert_eq!(lazy.pending(), Some(std::time::Duration::ZERO));
        lazy.committed(true);
        assert_eq!(lazy.pending(), None);
        lazy.committed(false);
        assert!(lazy.pending().is_some_and(|d| d > LAZY_AGE / 2 && d <= LAZY_AGE));
    }
}
