//! The embedded store: one redb file in the relay's data directory.
//!
//! All operations go to one writer thread ([`writer`]) through a bounded
//! channel ([`WRITER_QUEUE`] operations; past it a call is refused at once
//! with [`StoreError::Busy`], which a sender hears as `store_unavailable`).
//! The thread takes whatever operations are waiting (up to [`MAX_BATCH`]),
//! applies them in order inside one write transaction (each table opened
//! once, each queue's metadata written once) and commits once. Group commit
//! keeps throughput up while every answer to an enqueue, authorisation or
//! revocation means "on disk": those commits are fsynced
//! (`Durability::Immediate`). An enqueue takes its delivery id from the
//! store-wide counter when it is submitted ([`NextIds`]), so a connected
//! recipient gets the frame at once, even while the writer is in an fsync
//! ([`super::Enqueued`]); [`SKIP`] keeps those ids from ever being handed
//! out twice. Batches of only acknowledgements and expiry commit without an
//! fsync ([`LazyCommits`]). When the database fails (a full disk) the
//! writer reopens it ([`writer`]); meanwhile the store is down
//! ([`Store::health`]) and refuses every call.
//!
//! Failpoints (`relay.enqueue`, `relay.open`, `relay.commit.before`,
//! `relay.commit.after`, `relay.ack`, `relay.route`): see
//! [`crate::failpoints`].

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread;

use tandem_proto::DeviceId;
use tokio::sync::oneshot;

use self::tables::Answer;
use self::writer::{Opened, Writer, open_db};
use super::{
    AddrKey, Enqueued, Expired, NewFrame, QueueDepth, QueueLimits, Queued, Reserved, RouteLimits,
    Store, StoreError, StoreFuture, Totals,
};

mod accounts;
mod export;
pub(super) mod layout;
mod routes;
mod tables;

pub use self::export::{Export, ExportedAuthorization, ExportedFrame};
mod writer;
#[cfg(test)]
pub(super) use self::layout::old as old_layout;

/// Most operations applied in one transaction.
pub(crate) const MAX_BATCH: usize = 512;

/// Most operations waiting for the writer thread (its channel's capacity):
/// a call made while that many wait is refused at once with
/// [`StoreError::Busy`] (the relay answers `store_unavailable`; the sender
/// retries), so a flood costs at most this many operations' memory.
pub const WRITER_QUEUE: usize = 8 * MAX_BATCH;

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
    /// Frames whose ids were reserved ([`Store::reserve_id`]), written in
    /// the one transaction of the batch that takes them.
    EnqueueMany {
        frames: Vec<(u64, NewFrame)>,
        now: u64,
        reply: oneshot::Sender<Result<Vec<Result<u64, StoreError>>, StoreError>>,
    },
    /// Save the id counter at `next` at least (durably): ids reserved and
    /// never written are not saved by any enqueue.
    SaveCounter {
        next: u64,
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
    /// Set (`Some`) or remove (`None`) a device's push subscription.
    SetPush {
        device: DeviceId,
        sub: Option<Vec<u8>>,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    GetPush {
        device: DeviceId,
        reply: oneshot::Sender<Result<Option<Vec<u8>>, StoreError>>,
    },
}

impl Op {
    /// Whether the caller is told only once the change is on disk.
    fn answers_durably(&self) -> bool {
        matches!(
            self,
            Op::Enqueue { .. }
                | Op::EnqueueMany { .. }
                | Op::SaveCounter { .. }
                | Op::Authorize { .. }
                | Op::Revoke { .. }
                | Op::SetPush { .. }
        )
    }

    /// How many frames it writes.
    fn frames(&self) -> u64 {
        match self {
            Op::Enqueue { .. } => 1,
            Op::EnqueueMany { frames, .. } => frames.len() as u64,
            _ => 0,
        }
    }

    fn writes(&self) -> bool {
        matches!(
            self,
            Op::Enqueue { .. }
                | Op::EnqueueMany { .. }
                | Op::SaveCounter { .. }
                | Op::Ack { .. }
                | Op::Authorize { .. }
                | Op::Revoke { .. }
                | Op::Expire { .. }
                | Op::SetPush { .. }
        )
    }

    fn fail(self, e: StoreError) {
        // The caller may have gone away; nothing to do then.
        match self {
            Op::Enqueue { reply, .. } | Op::Ack { reply, .. } | Op::Revoke { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Op::EnqueueMany { reply, .. } => drop(reply.send(Err(e))),
            Op::SaveCounter { .. } => {}
            Op::Expire { reply, .. } => drop(reply.send(Err(e))),
            Op::Totals { reply } => drop(reply.send(Err(e))),
            Op::Fetch { reply, .. } => drop(reply.send(Err(e))),
            Op::Depth { reply, .. } => drop(reply.send(Err(e))),
            Op::Authorize { reply, .. } => drop(reply.send(Err(e))),
            Op::IsRoute { reply, .. } => drop(reply.send(Err(e))),
            Op::Peers { reply, .. } => drop(reply.send(Err(e))),
            Op::SetPush { reply, .. } => drop(reply.send(Err(e))),
            Op::GetPush { reply, .. } => drop(reply.send(Err(e))),
        }
    }
}

/// The redb-backed [`Store`].
#[derive(Debug)]
pub struct RedbStore {
    tx: mpsc::SyncSender<Op>,
    ids: Arc<Mutex<NextIds>>,
    /// Drawn at open ([`Store::epoch`]).
    epoch: u64,
    stats: Arc<Stats>,
}

/// Counted by the writer thread ([`Store::stats`]).
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) durable_commits: std::sync::atomic::AtomicU64,
    pub(super) frames_written: std::sync::atomic::AtomicU64,
}

impl Stats {
    /// A commit that answered writes, with the frames its batch wrote.
    fn committed(&self, batch: &[Op]) {
        use std::sync::atomic::Ordering::Relaxed;
        if batch.iter().any(Op::answers_durably) {
            self.durable_commits.fetch_add(1, Relaxed);
            self.frames_written.fetch_add(batch.iter().map(Op::frames).sum(), Relaxed);
        }
    }
}

/// The delivery id counter, handed out when an enqueue is submitted (so a
/// frame can be delivered at once, without waiting for the writer thread,
/// which may be in the middle of an fsync), and whether the store writes.
/// Taken from the store-wide counter when the store opens; the writer saves
/// the counter past every id it stores.
#[derive(Debug)]
pub(super) struct NextIds {
    /// The next id, whatever the recipient.
    next: u64,
    /// Why the store cannot write (not open, or failed and being
    /// reopened); `None` while it writes. While it cannot, no id is told
    /// early (ids handed out may not be saved anywhere): the store opened
    /// again moves the counter [`SKIP`] on first.
    down: Option<String>,
    /// Queues that refused a frame as full: a frame for them is told its id
    /// only once it is stored (so a full queue still pushes back on a
    /// connected recipient), until an ack, expiry or revocation removes
    /// something from them.
    full: HashSet<DeviceId>,
    /// The counter when a save of it ([`Op::SaveCounter`]) was last asked
    /// for (or the store opened): reserved ids that are never written do
    /// not save it, so it is saved every [`SKIP`]` / 4` ids.
    save_from: u64,
    /// Recipients whose enqueues are watched ([`Store::watch`]).
    watch: HashMap<DeviceId, Arc<AtomicU64>>,
}

impl NextIds {
    /// Whether a frame for `to` may be delivered before it is stored.
    fn early(&self, to: &DeviceId) -> bool {
        self.down.is_none() && !self.full.contains(to)
    }

    fn take(&mut self) -> u64 {
        let id = self.next;
        self.next += 1;
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
        let opened = open_db(dir, now_unix)?;
        Self::start(dir, (limits, routes), Ok(opened))
    }

    /// Read everything the store in `dir` holds (queued frames with their
    /// ids, authorisations, the id counter) for a migration to another
    /// backend. The relay using it must be stopped (the database is opened
    /// exclusively); an older layout is upgraded first, as an open does.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the database cannot be opened or read
    /// (for example while a relay has it open).
    pub fn export(dir: &Path, now_unix: u64) -> Result<Export, StoreError> {
        export::export(dir, now_unix)
    }

    /// [`RedbStore::open`], except that a store that cannot be opened now
    /// (a full disk, say) is not an error: the store starts down
    /// ([`Store::health`] says why), refuses every call with
    /// [`StoreError::Unavailable`], and the writer thread keeps trying to
    /// open it (after 1 s, backing off to every 5 s).
    ///
    /// # Errors
    /// [`StoreError::Backend`] only when the writer thread cannot start.
    pub fn open_or_retry(
        dir: &Path,
        limits: QueueLimits,
        routes: RouteLimits,
        now_unix: u64,
    ) -> Result<Self, StoreError> {
        Self::start(dir, (limits, routes), open_db(dir, now_unix))
    }

    fn start(
        dir: &Path,
        limits: (QueueLimits, RouteLimits),
        first: Result<Opened, StoreError>,
    ) -> Result<Self, StoreError> {
        let (next, down) = match &first {
            Ok(o) => (o.next, None),
            Err(e) => (1, Some(e.to_string())),
        };
        let ids = Arc::new(Mutex::new(NextIds {
            next,
            down,
            full: HashSet::new(),
            save_from: next,
            watch: HashMap::new(),
        }));
        let (tx, rx) = mpsc::sync_channel(WRITER_QUEUE);
        let stats = Arc::new(Stats::default());
        let writer = Writer {
            dir: dir.to_owned(),
            rx,
            limits,
            ids: Arc::clone(&ids),
            stats: Arc::clone(&stats),
        };
        thread::Builder::new()
            .name("tandem-store".into())
            .spawn(move || writer.run(first))
            .map_err(backend)?;
        // A fresh epoch at every open: whatever happened to the file
        // since it was last open (wiped, restored), clients reset their
        // delivery cursors (PROTOCOL.md §6.6).
        let epoch = rand::random::<u64>();
        Ok(Self { tx, ids, epoch, stats })
    }

    fn call<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Op,
    ) -> StoreFuture<T> {
        let (reply, rx) = oneshot::channel();
        let sent = submit(&self.tx, make(reply));
        Box::pin(async move {
            sent?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }
}

/// Hand `op` to the writer, or refuse it at once when its queue is full.
fn submit(tx: &mpsc::SyncSender<Op>, op: Op) -> Result<(), StoreError> {
    tx.try_send(op).map_err(|e| match e {
        mpsc::TrySendError::Full(_) => StoreError::Busy,
        mpsc::TrySendError::Disconnected(_) => StoreError::Closed,
    })
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
        let id = ids.take();
        let early = ids.early(&to);
        let (reply, rx) = oneshot::channel();
        let sent = submit(&self.tx, Op::Enqueue { frame, now: now_unix, id, live, reply });
        // After the submission and under the lock: a writer that sees the
        // mark submits its fetch after this enqueue (and sees it), and a
        // held frame reserved after this id finds the mark raised.
        if let Some(mark) = ids.watch.get(&to) {
            mark.fetch_max(id, Ordering::AcqRel);
        }
        drop(ids);
        let placed = if early && sent.is_ok() { Ok(id) } else { Err(StoreError::Closed) };
        let durable = Box::pin(async move {
            sent?;
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
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn totals(&self) -> StoreFuture<Totals> {
        self.call(|reply| Op::Totals { reply })
    }
    fn health(&self) -> Result<(), String> {
        lock(&self.ids).down.clone().map_or(Ok(()), Err)
    }

    fn reserve_id(&self, to: DeviceId, above: u64) -> Result<Reserved, StoreError> {
        // While `relay.enqueue` (or `relay.enqueue.<to>`) is armed, frames
        // for `to` take the enqueue path, where it is evaluated (looked at
        // here without spending its count).
        #[cfg(feature = "failpoints")]
        if enqueue_failpoint_armed(&to) {
            return Err(StoreError::Unavailable("failpoint armed".into()));
        }
        let mut ids = lock(&self.ids);
        if let Some(why) = &ids.down {
            return Err(StoreError::Unavailable(why.clone()));
        }
        if ids.full.contains(&to) {
            return Err(StoreError::QueueFull(to));
        }
        // One counter for every id this store hands out: a new one is above
        // any the recipient's connection saw (checked all the same).
        if ids.next <= above {
            return Err(StoreError::Unavailable("no id above the connection's".into()));
        }
        let id = ids.take();
        if ids.next - ids.save_from > SKIP / 4 {
            // Best effort: a refused save is asked for again at the next id.
            // A save asked for may still fail to commit (then the store is
            // down, tells no id, and moves the counter `SKIP` on when it
            // opens again): between the last save that committed and then,
            // at most two intervals of `SKIP / 4` ids were handed out, well
            // inside `SKIP`.
            if submit(&self.tx, Op::SaveCounter { next: ids.next }).is_ok() {
                ids.save_from = ids.next;
            }
        }
        // Every enqueue raises the watched mark: nothing to read first.
        Ok(Reserved { id, below: 0 })
    }

    fn enqueue_reserved(
        &self,
        frames: Vec<(u64, NewFrame)>,
        now_unix: u64,
        _fence: u64,
    ) -> StoreFuture<Vec<Result<u64, StoreError>>> {
        // One node: no other connection can have been handed higher ids.
        self.call(|reply| Op::EnqueueMany { frames, now: now_unix, reply })
    }

    fn watch(&self, to: DeviceId, mark: Option<Arc<AtomicU64>>) -> bool {
        let mut ids = lock(&self.ids);
        match mark {
            Some(mark) => {
                mark.fetch_max(ids.next.saturating_sub(1), Ordering::AcqRel);
                ids.watch.insert(to, mark);
            }
            None => {
                ids.watch.remove(&to);
            }
        }
        true
    }

    fn put_push_subscription(&self, device: DeviceId, sub: Vec<u8>) -> StoreFuture<()> {
        let fut = self.call(|reply| Op::SetPush { device, sub: Some(sub), reply });
        Box::pin(async move { fut.await.map(|_| ()) })
    }

    fn push_subscription(&self, device: DeviceId) -> StoreFuture<Option<Vec<u8>>> {
        self.call(|reply| Op::GetPush { device, reply })
    }

    fn remove_push_subscription(&self, device: DeviceId) -> StoreFuture<bool> {
        self.call(|reply| Op::SetPush { device, sub: None, reply })
    }

    fn stats(&self) -> super::StoreStats {
        super::StoreStats {
            durable_commits: self.stats.durable_commits.load(Ordering::Relaxed),
            frames_written: self.stats.frames_written.load(Ordering::Relaxed),
        }
    }
}

fn lock(ids: &Mutex<NextIds>) -> MutexGuard<'_, NextIds> {
    ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// After a commit: mark the queues that refused a frame as full, and
/// unmark those that lost frames (so their frames are told ids early again).
fn note_fullness(ids: &Mutex<NextIds>, batch: &[Op], answers: &[Answer]) {
    let mut ids = lock(ids);
    if ids.full.is_empty() && !answers.iter().any(Answer::is_full_any) {
        return;
    }
    for (op, answer) in batch.iter().zip(answers) {
        match (op, answer) {
            (Op::Enqueue { frame, .. }, a) if a.is_full() => {
                ids.full.insert(frame.to);
            }
            (Op::EnqueueMany { frames, .. }, Answer::Many(r)) => {
                for ((_, f), r) in frames.iter().zip(r) {
                    if Answer::full_error(r) {
                        ids.full.insert(f.to);
                    }
                }
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

/// Delivery ids handed out before a commit that never happened (the relay
/// died, or the commit failed) must not be handed out again: the recipient
/// may hold them and would drop a new frame under an old id as a
/// redelivery. Ids are handed out when an enqueue is submitted, and every
/// committed enqueue (refused or not) saves the counter past its own id.
/// At most [`WRITER_QUEUE`] operations wait for the writer and
/// [`MAX_BATCH`] are in its hands, so fewer than [`SKIP`] ids can be handed
/// out and not saved. When the store opens (at start, and again after a
/// failure) the counter moves [`SKIP`] on; while it is down, no id is told
/// early.
pub(crate) const SKIP: u64 = 1 << 24;
const _: () = assert!(((WRITER_QUEUE + MAX_BATCH) * 8) as u64 <= SKIP);

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

/// How many queue metadata rows the store in `dir` has (its writer may
/// still be closing the file: retried for a while).
#[cfg(test)]
pub(super) async fn meta_rows_in(dir: &Path) -> u64 {
    use redb::{ReadableDatabase, ReadableTableMetadata};
    for _ in 0..200 {
        if let Ok(db) = redb::Database::open(dir.join("relay.redb")) {
            let txn = db.begin_read().unwrap();
            return txn.open_table(layout::META).unwrap().len().unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the store stayed locked");
}

/// Whether a failpoint that refuses enqueues for `to` is configured.
#[cfg(feature = "failpoints")]
fn enqueue_failpoint_armed(to: &DeviceId) -> bool {
    let named = format!("relay.enqueue.{to}");
    fail::list().iter().any(|(name, actions)| {
        (name == "relay.enqueue" || *name == named) && !actions.is_empty() && actions != "off"
    })
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
            frame: NewFrame { to, from, addr: AddrKey::UNKNOWN, payload: bytes::Bytes::new() },
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
