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
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition, WriteTransaction,
};
use tandem_proto::DeviceId;
use tokio::sync::oneshot;

use super::{
    Enqueued, MAX_EXPIRED_PER_SWEEP, MAX_PEERS, QueueDepth, QueueLimits, Queued, Store, StoreError,
    StoreFuture,
};

/// Most operations applied in one transaction.
pub(crate) const MAX_BATCH: usize = 512;

/// `to [16] ‖ id u64` → `from [16] ‖ expires_at u64 ‖ payload`
const QUEUE: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("queue");
/// The expiry index of earlier versions (`expires_at ‖ to ‖ id` → empty),
/// deleted when the store opens: a queue's frames expire in id order (every
/// frame gets the same TTL when it is queued), so the sweep reads the head
/// of each queue instead, and queueing and acknowledging a frame touch one
/// table fewer.
const OLD_EXPIRY: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("expiry");
/// `to [16]` → `next_id u64 ‖ frames u64 ‖ bytes u64`
const META: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("queue_meta");
/// `by [16] ‖ peer [16]` → empty: `by` authorised `peer`.
const ROUTES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("routes");
/// [`FRESH_ID`] → u64: the first delivery id of a queue not seen before.
const SETTINGS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("settings");
const FRESH_ID: &[u8] = b"fresh_id";

enum Op {
    Enqueue {
        to: DeviceId,
        from: DeviceId,
        payload: Vec<u8>,
        now: u64,
        /// Its delivery id, taken from [`NextIds`] when it was submitted.
        id: u64,
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
    /// Open (or create) `dir/relay.redb` and start the writer thread.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the directory or database cannot be opened.
    pub fn open(dir: &Path, limits: QueueLimits) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let db = Database::create(dir.join("relay.redb")).map_err(backend)?;
        // Create the tables up front so read paths never meet a missing table.
        let txn = db.begin_write().map_err(backend)?;
        for def in [QUEUE, META, ROUTES, SETTINGS] {
            txn.open_table(def).map_err(backend)?;
        }
        txn.delete_table(OLD_EXPIRY).map_err(backend)?;
        txn.commit().map_err(backend)?;
        Self::skip_unsaved_ids(&db)?;
        let ids = Arc::new(Mutex::new(NextIds::load(&db)?));
        let depths = Depths::load(&db)?;
        let (tx, rx) = mpsc::channel();
        let writer_ids = Arc::clone(&ids);
        thread::Builder::new()
            .name("tandem-store".into())
            .spawn(move || writer(db, rx, limits, &writer_ids, depths))
            .map_err(backend)?;
        Ok(Self { tx, ids })
    }

    /// Move every queue's next delivery id past what may have been handed
    /// out before a commit that never happened (see [`Skip`]).
    fn skip_unsaved_ids(db: &Database) -> Result<(), StoreError> {
        let mut txn = db.begin_write().map_err(backend)?;
        let _ = txn.set_durability(Durability::Immediate);
        Skip::apply(&txn)?;
        txn.commit().map_err(backend)
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
    fn enqueue(&self, to: DeviceId, from: DeviceId, payload: Vec<u8>, now_unix: u64) -> Enqueued {
        // Take the id and submit under one lock, so the writer sees each
        // queue's ids in increasing order.
        let mut ids = lock(&self.ids);
        let id = ids.take(to);
        let early = ids.early(&to);
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send(Op::Enqueue { to, from, payload, now: now_unix, id, reply });
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

/// Frames and bytes waiting in each queue that holds any, kept by the
/// writer in step with its commits: the expiry sweep and
/// [`Store::totals`] read this instead of every queue's metadata row (one
/// per device that ever received a frame), which would stall the writer on
/// a relay with many devices.
#[derive(Debug, Default)]
struct Depths(HashMap<DeviceId, QueueDepth>);

impl Depths {
    fn load(db: &Database) -> Result<Self, StoreError> {
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
    fn update(&mut self, changed: Vec<(DeviceId, Meta)>) {
        for (to, m) in changed {
            if m.frames > 0 {
                self.0.insert(to, QueueDepth { frames: m.frames, bytes: m.bytes });
            } else {
                self.0.remove(&to);
            }
        }
    }
}

fn lock(ids: &Mutex<NextIds>) -> MutexGuard<'_, NextIds> {
    ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The writer thread: batch, apply, commit, answer.
fn writer(
    db: Database,
    rx: mpsc::Receiver<Op>,
    limits: QueueLimits,
    ids: &Mutex<NextIds>,
    mut depths: Depths,
) {
    let mut lazy = LazyCommits::default();
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
            Ok(()) => apply_batch(&txn, &batch, &limits, &depths),
            Err(e) => (batch.iter().map(|_| Answer::Pending).collect(), Vec::new(), Some(e)),
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
            depths.update(changed);
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
    if ids.full.is_empty() && !answers.iter().any(Answer::is_queue_full) {
        return;
    }
    for (op, answer) in batch.iter().zip(answers) {
        match (op, answer) {
            (_, Answer::U64(Err(StoreError::QueueFull(to)))) => {
                ids.full.insert(*to);
            }
            (Op::Ack { to, .. }, _) => {
                ids.full.remove(to);
            }
            // Expiry and revocation may empty any queue: start afresh.
            (Op::Expire { .. } | Op::Revoke { .. }, Answer::U64(Ok(n))) if *n > 0 => {
                ids.full.clear();
            }
            _ => {}
        }
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

/// Apply `batch` in order inside `txn`: one answer per op, and the error
/// that stopped it (every answer from there on is [`Answer::Pending`]; the
/// caller aborts the transaction).
/// The queues whose metadata a batch changed, as it left them.
type Changed = Vec<(DeviceId, Meta)>;

fn apply_batch(
    txn: &WriteTransaction,
    batch: &[Op],
    limits: &QueueLimits,
    depths: &Depths,
) -> (Vec<Answer>, Changed, Option<StoreError>) {
    let mut answers = Vec::with_capacity(batch.len());
    let mut tables = match Tables::open(txn, depths) {
        Ok(t) => t,
        Err(e) => {
            answers.resize_with(batch.len(), || Answer::Pending);
            return (answers, Vec::new(), Some(e));
        }
    };
    for op in batch {
        match tables.apply(op, limits) {
            Ok(a) => answers.push(a),
            Err(e) => {
                answers.resize_with(batch.len(), || Answer::Pending);
                return (answers, Vec::new(), Some(e));
            }
        }
    }
    match tables.write_meta() {
        Ok(changed) => (answers, changed, None),
        Err(e) => (answers, Vec::new(), Some(e)),
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
    fn is_queue_full(&self) -> bool {
        matches!(self, Answer::U64(Err(StoreError::QueueFull(_))))
    }

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
    fn decode(v: &[u8]) -> Self {
        Meta { next_id: u64_at(v, 0), frames: u64_at(v, 8), bytes: u64_at(v, 16) }
    }

    fn encode(&self) -> [u8; 24] {
        let mut v = [0u8; 24];
        v[..8].copy_from_slice(&self.next_id.to_be_bytes());
        v[8..16].copy_from_slice(&self.frames.to_be_bytes());
        v[16..].copy_from_slice(&self.bytes.to_be_bytes());
        v
    }
}

/// The tables of one write transaction, opened once for the whole batch,
/// and the queue metadata the batch read or changed (written back once, at
/// the end, by [`Tables::write_meta`]).
struct Tables<'t, 'd> {
    queue: Table<'t, &'static [u8], &'static [u8]>,
    meta_t: Table<'t, &'static [u8], &'static [u8]>,
    routes: Table<'t, &'static [u8], &'static [u8]>,
    meta: HashMap<DeviceId, (Meta, bool)>,
    /// Every non-empty queue as of the last commit.
    depths: &'d Depths,
}

impl<'t, 'd> Tables<'t, 'd> {
    fn open(txn: &'t WriteTransaction, depths: &'d Depths) -> Result<Self, StoreError> {
        Ok(Self {
            queue: txn.open_table(QUEUE).map_err(backend)?,
            meta_t: txn.open_table(META).map_err(backend)?,
            routes: txn.open_table(ROUTES).map_err(backend)?,
            meta: HashMap::new(),
            depths,
        })
    }

    /// `to`'s queue metadata as this batch left it.
    fn meta(&mut self, to: &DeviceId) -> Result<Meta, StoreError> {
        if let Some((m, _)) = self.meta.get(to) {
            return Ok(*m);
        }
        let m = match self.meta_t.get(&to.0[..]).map_err(backend)? {
            Some(v) => Meta::decode(v.value()),
            // Its first enqueue sets the next id past the id it was given.
            None => Meta::default(),
        };
        self.meta.insert(*to, (m, false));
        Ok(m)
    }

    fn set_meta(&mut self, to: &DeviceId, m: Meta) {
        self.meta.insert(*to, (m, true));
    }

    /// Write back the metadata the batch changed; returns it.
    fn write_meta(&mut self) -> Result<Changed, StoreError> {
        let mut changed = Vec::new();
        for (to, (m, dirty)) in &self.meta {
            if *dirty {
                self.meta_t.insert(&to.0[..], &m.encode()[..]).map_err(backend)?;
                changed.push((*to, *m));
            }
        }
        Ok(changed)
    }

    /// Frames and bytes waiting in each non-empty queue, with this batch's
    /// changes.
    fn depths(&self) -> Vec<(DeviceId, QueueDepth)> {
        let mut out: Vec<(DeviceId, QueueDepth)> = self
            .depths
            .0
            .iter()
            .filter(|(to, _)| !self.meta.contains_key(to))
            .map(|(to, d)| (*to, *d))
            .collect();
        for (to, (m, _)) in &self.meta {
            if m.frames > 0 {
                out.push((*to, QueueDepth { frames: m.frames, bytes: m.bytes }));
            }
        }
        out
    }

    fn is_route(&self, a: &DeviceId, b: &DeviceId) -> Result<bool, StoreError> {
        let ab = self.routes.get(&rkey(a, b)[..]).map_err(backend)?.is_some();
        let ba = self.routes.get(&rkey(b, a)[..]).map_err(backend)?.is_some();
        Ok(ab && ba)
    }

    /// Remove queued frames for `to` matching `pred` within `ids`; keeps
    /// meta in step. Returns how many were removed.
    fn remove_where(
        &mut self,
        to: &DeviceId,
        ids: std::ops::RangeInclusive<u64>,
        mut pred: impl FnMut(&[u8]) -> bool,
    ) -> Result<u64, StoreError> {
        let lo = qkey(to, *ids.start());
        let hi = qkey(to, *ids.end());
        let mut victims = Vec::new();
        for item in self.queue.range(&lo[..]..=&hi[..]).map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            let v = v.value();
            if pred(v) {
                victims.push((u64_at(k.value(), 16), v.len().saturating_sub(24) as u64));
            }
        }
        if victims.is_empty() {
            return Ok(0);
        }
        let mut meta = self.meta(to)?;
        for (id, len) in &victims {
            self.queue.remove(&qkey(to, *id)[..]).map_err(backend)?;
            meta.frames = meta.frames.saturating_sub(1);
            meta.bytes = meta.bytes.saturating_sub(*len);
        }
        self.set_meta(to, meta);
        Ok(victims.len() as u64)
    }

    /// Remove up to `limit` frames from the head of `to`'s queue that
    /// expired by `now`. Frames are queued with one TTL, so they expire in id
    /// order; after the wall clock stepped back, a frame behind a younger
    /// one waits for it.
    fn expire_head(&mut self, to: &DeviceId, now: u64, limit: u64) -> Result<u64, StoreError> {
        let lo = qkey(to, 0);
        let hi = qkey(to, u64::MAX);
        let mut last = None;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        for item in self.queue.range(&lo[..]..=&hi[..]).map_err(backend)?.take(limit) {
            let (k, v) = item.map_err(backend)?;
            if u64_at(v.value(), 16) > now {
                break;
            }
            last = Some(u64_at(k.value(), 16));
        }
        match last {
            Some(up_to) => self.remove_where(to, 0..=up_to, |_| true),
            None => Ok(0),
        }
    }

    fn apply(&mut self, op: &Op, limits: &QueueLimits) -> Result<Answer, StoreError> {
        Ok(match op {
            Op::Enqueue { to, from, payload, now, id, .. } => {
                // The id was handed out, so it is spent whatever the answer:
                // the next id is saved past it, refused or not.
                let id = *id;
                let mut meta = self.meta(to)?;
                meta.next_id = meta.next_id.max(id + 1);
                self.set_meta(to, meta);
                if !self.is_route(from, to)? {
                    return Ok(Answer::U64(Err(StoreError::NoRoute)));
                }
                let len = payload.len() as u64;
                if meta.frames + 1 > limits.max_frames || meta.bytes + len > limits.max_bytes {
                    return Ok(Answer::U64(Err(StoreError::QueueFull(*to))));
                }
                let expires = now.saturating_add(limits.ttl_secs);
                let mut v = Vec::with_capacity(24 + payload.len());
                v.extend_from_slice(&from.0);
                v.extend_from_slice(&expires.to_be_bytes());
                v.extend_from_slice(payload);
                self.queue.insert(&qkey(to, id)[..], &v[..]).map_err(backend)?;
                meta.frames += 1;
                meta.bytes += len;
                self.set_meta(to, meta);
                Answer::U64(Ok(id))
            }
            Op::Fetch { to, after, limit, .. } => {
                let lo = qkey(to, after.saturating_add(1));
                let hi = qkey(to, u64::MAX);
                let mut out = Vec::new();
                for item in self.queue.range(&lo[..]..=&hi[..]).map_err(backend)?.take(*limit) {
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
            Op::Ack { to, up_to, .. } => {
                Answer::U64(Ok(self.remove_where(to, 0..=*up_to, |_| true)?))
            }
            Op::Depth { to, .. } => {
                let meta = self.meta(to)?;
                Answer::Depth(QueueDepth { frames: meta.frames, bytes: meta.bytes })
            }
            Op::Authorize { by, peer, .. } => {
                if self.routes.get(&rkey(by, peer)[..]).map_err(backend)?.is_none() {
                    let lo = rkey(by, &DeviceId([0; 16]));
                    let hi = rkey(by, &DeviceId([0xff; 16]));
                    let n = self
                        .routes
                        .range(&lo[..]..=&hi[..])
                        .map_err(backend)?
                        .take(MAX_PEERS)
                        .count();
                    if n >= MAX_PEERS {
                        return Ok(Answer::Unit(Err(StoreError::TooManyPeers)));
                    }
                    self.routes.insert(&rkey(by, peer)[..], &[][..]).map_err(backend)?;
                }
                Answer::Unit(Ok(()))
            }
            Op::Revoke { by, peer, .. } => {
                let existed = self.routes.remove(&rkey(by, peer)[..]).map_err(backend)?.is_some();
                if !existed {
                    // Nothing can be queued between them on `by`'s account.
                    return Ok(Answer::U64(Ok(0)));
                }
                let a = self.remove_where(peer, 0..=u64::MAX, |v| id16(v, 0) == *by)?;
                let b = self.remove_where(by, 0..=u64::MAX, |v| id16(v, 0) == *peer)?;
                Answer::U64(Ok(a + b))
            }
            Op::IsRoute { a, b, .. } => Answer::Bool(self.is_route(a, b)?),
            Op::Peers { a, .. } => {
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
                Answer::Ids(out)
            }
            Op::Expire { now, .. } => {
                // The queues that hold frames, then the expired head of each.
                let mut n = 0;
                for (to, _) in self.depths() {
                    let left = MAX_EXPIRED_PER_SWEEP as u64 - n;
                    if left == 0 {
                        break;
                    }
                    n += self.expire_head(&to, *now, left)?;
                }
                Answer::U64(Ok(n))
            }
            Op::Totals { .. } => {
                let mut d = QueueDepth::default();
                for (_, q) in self.depths() {
                    d.frames += q.frames;
                    d.bytes += q.bytes;
                }
                Answer::Depth(d)
            }
        })
    }
}

#[cfg(test)]
mod lazy_tests {
    use super::*;

    fn ack() -> Op {
        Op::Ack { to: DeviceId([1; 16]), up_to: 1, reply: oneshot::channel().0 }
    }

    fn enqueue() -> Op {
        let (to, from) = (DeviceId([1; 16]), DeviceId([2; 16]));
        Op::Enqueue { to, from, payload: vec![], now: 0, id: 1, reply: oneshot::channel().0 }
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
