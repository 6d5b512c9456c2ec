//! Frames for a connected recipient, forwarded from memory and held there
//! until the recipient acknowledges them (then the sender hears `Ok` and
//! nothing is ever written) or `hold_window` passes (then they are written
//! to the store in one durable commit and `Ok` follows the commit).
//! PROTOCOL.md §6.5.
//!
//! One [`Hold`] per recipient device, kept by the registry beside its live
//! connection (a connection that replaces it adopts it; when the device's
//! last connection ends, whatever is held is written). Its frames have
//! delivery ids reserved from the store ([`Store::reserve_id`]), so a held
//! frame written later keeps its id, and the recipient's writer merges held
//! frames and stored ones in id order ([`Hold::mark`] tells it when the
//! store may hold something it has not read).
//!
//! On the Redis store (several nodes) a node holds frames only for devices
//! connected to it, under ids from blocks it leased (`store/redis/pool.rs`
//! says how they stay increasing per recipient across nodes): the hold
//! keeps a floor the ids must be above, and the fence token of the claim
//! its frames are held under.
//!
//! [`Store::reserve_id`]: crate::store::Store::reserve_id

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use tandem_proto::DeviceId;
use tandem_proto::frame::encode_deliver;
use tokio::time::Instant;

use crate::registry::{Shared, lock};
use crate::state::{State, unix_now};
use crate::store::{AddrKey, NewFrame, StoreError, StoreFuture};

/// One recipient's held frames.
#[derive(Debug)]
pub(crate) struct Hold {
    to: DeviceId,
    q: Mutex<HoldQ>,
    /// At least the highest delivery id for this recipient submitted to the
    /// store while it is connected (by [`crate::store::Store::enqueue`],
    /// which the store watches, and by writes from here). Its writer reads
    /// the store only when this passed what it read last.
    pub(crate) mark: Arc<AtomicU64>,
    /// The store keeps [`Self::mark`] ([`crate::store::Store::watch`]).
    watched: AtomicBool,
    /// The highest ack of the device submitted to the store: a later one
    /// is submitted only if the store may hold something it covers
    /// ([`Self::mark`] passed this), so acks of frames that were only held
    /// cost no store operation.
    pub(crate) store_acked: AtomicU64,
    /// The highest id of a stored frame the writer delivered (an ack up to
    /// it is submitted to the store, whatever [`Self::mark`] says: another
    /// node may have written it).
    pub(crate) stored_seen: AtomicU64,
    /// The writer reads the store at its next turn (the node's channel was
    /// lost and subscribed again: live deliveries from other nodes may have
    /// been missed).
    reread: AtomicBool,
}

#[derive(Debug)]
struct HoldQ {
    /// Increasing ids.
    frames: VecDeque<Held>,
    /// Their payload bytes.
    bytes: u64,
    /// The device's last connection ended: nothing more is held.
    closed: bool,
    /// In the flusher's list ([`Holds`]).
    queued: bool,
    /// The highest id the device's connection was handed or may be handed
    /// before any frame held from now on: held frames, stored ones the
    /// writer is about to deliver, and (in a cluster) every id handed out
    /// before this node claimed the device. A frame is held only under a
    /// higher id ([`crate::store::Store::reserve_id`]), so the ids the
    /// device sees only increase.
    floor: u64,
    /// In a cluster: the fence token of the device's ownership its frames
    /// are held under (0: none), and whether a claim is under way (nothing
    /// is held then: the ids the device saw elsewhere are not known yet).
    fence: u64,
    claiming: bool,

    /// The device's current connection (its writer is woken).
    wake: Arc<Shared>,
}

/// A held frame.
#[derive(Debug)]
struct Held {
    id: u64,
    /// The `Deliver` frame, encoded once.
    frame: Bytes,
    len: usize,
    from: DeviceId,
    addr: AddrKey,
    since: Instant,
    /// The sender's connection, answered through it.
    sender: Arc<Shared>,
    send_id: u64,
    /// Submitted to the store; answered when the write finishes.
    writing: bool,
    /// The store is read through this id before this frame is delivered
    /// ([`crate::store::Reserved::below`]).
    below: u64,
    /// The fence token it is held under ([`HoldQ::fence`]).
    fence: u64,
}

impl HoldQ {
    /// Give back the queue's memory once it is empty after a burst (a
    /// `VecDeque` keeps its largest capacity, up to a delivery window of
    /// frames, for the connection's life).
    fn shrink(&mut self) {
        if self.frames.is_empty() && self.frames.capacity() > KEEP_CAPACITY {
            self.frames = VecDeque::new();
        }
    }
}

/// Slots an empty hold's queue keeps.
const KEEP_CAPACITY: usize = 16;

/// What `n` held frames with `bytes` of payload cost in memory, as
/// `hold_max_bytes` counts it: the payload, the `Deliver` header, the
/// [`Held`] entry and the allocation's bookkeeping each.
fn memory(n: u64, bytes: u64) -> u64 {
    const PER_FRAME: u64 =
        (std::mem::size_of::<Held>() + tandem_proto::frame::FORWARD_HEADER_LEN + 64) as u64;
    bytes.saturating_add(n.saturating_mul(PER_FRAME))
}

/// `n` frames with `bytes` of payload left a hold.
fn released(state: &State, n: i64, bytes: u64) {
    if n > 0 {
        state.held_bytes.fetch_sub(memory(n as u64, bytes), Ordering::AcqRel);
        state.metrics.held(-n, -(bytes as i64));
    }
}

/// A held frame the writer may send: its id, the encoded `Deliver`, its
/// payload length, and the id the store must be read through first.
pub(crate) type Ready = (u64, Bytes, usize, u64);

/// Why a frame was not held (the caller takes the store path with it),
/// and, on the Redis store, the write of the frames from the same sender
/// still held for the recipient, submitted before the caller's enqueue
/// (the caller runs it to its end in a task of its own: [`Write::finish`]).
pub(crate) struct NotHeld(pub(crate) Bytes, pub(crate) Option<Write>);

/// A write of held frames to the store, in flight.
pub(crate) struct Write {
    hold: Arc<Hold>,
    ids: Vec<u64>,
    fut: StoreFuture<Vec<Result<u64, StoreError>>>,
}

impl Hold {
    /// A new, empty hold for `to`, whose writer is woken by `wake`.
    pub(crate) fn new(to: DeviceId, wake: Arc<Shared>) -> Self {
        let q = HoldQ {
            frames: VecDeque::new(),
            bytes: 0,
            closed: false,
            queued: false,
            floor: 0,
            fence: 0,
            claiming: false,
            wake,
        };
        let mark = Arc::new(AtomicU64::new(0));
        Self {
            to,
            q: Mutex::new(q),
            mark,
            watched: AtomicBool::new(false),
            store_acked: AtomicU64::new(0),
            stored_seen: AtomicU64::new(0),
            reread: AtomicBool::new(false),
        }
    }

    /// The writer is about to deliver stored frame `id` (or, with
    /// `stored` false, ids up to `id` were handed out before this node took
    /// the device): no frame is held under an id at or below it from now on.
    pub(crate) fn raise_floor(&self, id: u64, stored: bool) {
        let mut q = lock(&self.q);
        q.floor = q.floor.max(id);
        drop(q);
        if stored {
            self.stored_seen.fetch_max(id, Ordering::AcqRel);
        }
    }

    /// A connection for the device is claiming it in the cluster: hold
    /// nothing until [`Self::claimed`].
    pub(crate) fn begin_claim(&self) {
        lock(&self.q).claiming = true;
    }

    /// The claim gave fence token `fence`, and the store's id counter was
    /// at `next` then (the device may have been handed any id up to it
    /// through another node): hold only above it, under `fence`. Frames
    /// held under another fence (a connection this one replaced) and not
    /// being written are refused to their senders (`store_unavailable`:
    /// they resend): their ids may be below what the device saw elsewhere.
    /// A fence lower than the hold's is a replaced connection's late claim:
    /// ignored.
    pub(crate) fn claimed(&self, state: &State, fence: u64, next: u64) {
        let mut q = lock(&self.q);
        if fence < q.fence {
            // The late answer to the claim of a connection a newer one
            // replaced (both claims on one multiplexed connection, their
            // answers acted on in either order): the newer fence stays
            // (found by review).
            return;
        }
        q.floor = q.floor.max(next);
        q.fence = fence;
        q.claiming = false;
        let (mut n, mut bytes) = (0i64, 0u64);
        q.frames.retain(|h| {
            if h.fence == fence || h.writing {
                return true;
            }
            let why = "held for a connection the device replaced; send it again";
            h.sender.answers.refuse(h.send_id, StoreError::Unavailable(why.into()));
            n += 1;
            bytes += h.len as u64;
            false
        });
        q.bytes -= bytes;
        q.shrink();
        drop(q);
        released(state, n, bytes);
    }

    /// A claim failed: the connection is refused and removed, so nothing
    /// more is held (its fence and floor are not known: holding under
    /// neither could hand the device an id below one it saw elsewhere);
    /// what is held is written when it closes.
    pub(crate) fn claim_failed(&self) {
        lock(&self.q).claiming = true;
    }

    /// Ask the writer to read the store at its next turn.
    pub(crate) fn request_reread(&self) {
        self.reread.store(true, Ordering::Release);
        lock(&self.q).wake.answers.wake();
    }

    /// Whether a read of the store was asked for (forgetting the request).
    pub(crate) fn take_reread(&self) -> bool {
        self.reread.swap(false, Ordering::AcqRel)
    }

    /// Whether the store keeps [`Self::mark`] (else the writer reads the
    /// store whenever it is woken, and at every gap in the ids).
    pub(crate) fn watched(&self) -> bool {
        self.watched.load(Ordering::Acquire)
    }

    /// The store keeps [`Self::mark`] or not.
    pub(crate) fn set_watched(&self, watched: bool) {
        self.watched.store(watched, Ordering::Release);
    }

    /// A connection replacing the device's one takes over: its writer is
    /// woken from now on.
    pub(crate) fn adopt(&self, wake: Arc<Shared>) {
        lock(&self.q).wake = wake;
    }

    /// Hold `payload` from `from` (answered through `sender` as `send_id`)
    /// and wake the recipient's writer; or give it back when it must go to
    /// the store now: the hold is closed, a route changed since `generation`
    /// was read, a cap is reached, or the store reserves no id.
    #[expect(clippy::too_many_arguments, reason = "one call site, all needed")]
    pub(crate) fn offer(
        self: &Arc<Self>,
        state: &State,
        generation: u64,
        send_id: u64,
        from: DeviceId,
        addr: AddrKey,
        sender: &Arc<Shared>,
        payload: Bytes,
    ) -> Result<(), NotHeld> {
        let c = &state.config;
        let len = payload.len();
        let mut q = lock(&self.q);
        if q.closed {
            state.metrics.spilled("closed");
            return Err(NotHeld(payload, None));
        }
        if q.claiming {
            state.metrics.spilled("claiming");
            return Err(NotHeld(payload, None));
        }
        // On the Redis store the frame's enqueue takes an id from the
        // store's counter, above the ids of this sender's frames still held
        // here; written later, they would find a higher id in the queue and
        // be stored under fresh ids after it, out of the sender's order
        // (PROTOCOL.md §6.6). So they are written first: submitted now,
        // before the caller's enqueue, on the store's one ordered channel.
        // (The embedded store keeps a frame under its reserved id whatever
        // its queue holds.)
        // Not when the store will refuse the frame too (it is down, or the
        // recipient's queue is full): there is no order to keep, and the
        // held frames would be refused instead of answered by the
        // recipient's ack (found by review).
        let order = state.cluster.is_some();
        let refuse = |q: &mut HoldQ, why: &'static str, payload| {
            state.metrics.spilled(why);
            let write = if order && state.store.health().is_ok() {
                self.write_locked(q, state, |h| h.from == from)
            } else {
                None
            };
            Err(NotHeld(payload, write))
        };

        // A revocation since the route was checked (the store checks it
        // again in the enqueue's transaction; a held frame is not).
        if state.routes.generation() != generation {
            return refuse(&mut q, "route_changed", payload);
        }
        if q.frames.len() >= c.delivery_window_frames
            || q.bytes + len as u64 > c.delivery_window_bytes
        {
            return refuse(&mut q, "recipient_cap", payload);
        }
        let cost = memory(1, len as u64);
        let held = state.held_bytes.fetch_add(cost, Ordering::AcqRel) + cost;
        if held > c.hold_max_bytes {
            state.held_bytes.fetch_sub(cost, Ordering::AcqRel);
            return refuse(&mut q, "global_cap", payload);
        }
        let (id, below) = match state.store.reserve_id(self.to, q.floor) {
            Ok(r) if r.id > q.floor => (r.id, r.below),
            Ok(_) => {
                state.held_bytes.fetch_sub(cost, Ordering::AcqRel);
                return refuse(&mut q, "order", payload);
            }
            Err(StoreError::QueueFull(_)) => {
                state.held_bytes.fetch_sub(cost, Ordering::AcqRel);
                state.metrics.spilled("store");
                return Err(NotHeld(payload, None));
            }
            Err(_) => {
                state.held_bytes.fetch_sub(cost, Ordering::AcqRel);
                return refuse(&mut q, "store", payload);
            }
        };
        // The one copy of the payload between the sockets.
        let frame = match encode_deliver(id, &from, &payload) {
            Ok(b) => Bytes::from(b),
            Err(_) => {
                state.held_bytes.fetch_sub(cost, Ordering::AcqRel);
                return refuse(&mut q, "encode", payload);
            }
        };
        let fence = q.fence;
        q.frames.push_back(Held {
            id,
            frame,
            len,
            from,
            addr,
            since: Instant::now(),
            sender: Arc::clone(sender),
            send_id,
            writing: false,
            below,
            fence,
        });
        q.floor = id;
        q.bytes += len as u64;
        state.metrics.held(1, len as i64);
        if !q.queued {
            q.queued = true;
            state.holds.due(Arc::downgrade(self));
        }
        q.wake.answers.wake();
        Ok(())
    }

    /// Up to `max` held frames with ids in `(after, until]`, in id order, not
    /// removed (removal is by ack or by a finished write).
    pub(crate) fn ready(&self, after: u64, until: u64, max: usize) -> Vec<Ready> {
        let q = lock(&self.q);
        let start = q.frames.partition_point(|h| h.id <= after);
        q.frames
            .range(start..)
            .take_while(|h| h.id <= until)
            // Frames held for a connection this one replaced, still being
            // written, are not delivered here: their ids may be below what
            // the device was handed elsewhere meanwhile (found by review).
            .filter(|h| h.fence == q.fence)
            .take(max)
            .map(|h| (h.id, h.frame.clone(), h.len, h.below))
            .collect()
    }

    /// The recipient acknowledged everything up to `up_to`: its senders
    /// hear `Ok`, and what was not written never will be.
    pub(crate) fn ack(&self, state: &State, up_to: u64) {
        let mut q = lock(&self.q);
        let (mut n, mut bytes) = (0i64, 0u64);
        let fence = q.fence;
        let mut i = 0;
        while let Some(h) = q.frames.get(i).filter(|h| h.id <= up_to) {
            if h.fence != fence {
                // Held for a connection this one replaced and being
                // written: never delivered here, so this ack does not
                // cover it; its write answers its sender.
                i += 1;
                continue;
            }
            let Some(h) = q.frames.remove(i) else { break };
            bytes += h.len as u64;
            n += 1;
            h.sender.answers.ok(h.send_id);
            state.metrics.ok("ack");
            state.metrics.forwarded(h.len);
        }
        q.bytes -= bytes;
        q.shrink();
        drop(q);
        released(state, n, bytes);
    }

    /// Write the frames held since `now - window` or longer; whether the
    /// hold must be looked at again (it still holds frames).
    pub(crate) fn expire(self: &Arc<Self>, state: &State, now: Instant) -> (Option<Write>, bool) {
        let window = state.config.hold_window;
        let mut q = lock(&self.q);
        let write = self.write_locked(&mut q, state, |h| h.since + window <= now);
        let again = !q.frames.is_empty();
        if !again {
            q.queued = false;
        }
        (write, again)
    }

    /// The device's last connection ended (or the relay shuts down): hold
    /// nothing more and write everything held.
    pub(crate) fn close(self: &Arc<Self>, state: &State) -> Option<Write> {
        let mut q = lock(&self.q);
        q.closed = true;
        self.write_locked(&mut q, state, |_| true)
    }

    /// Drop the frames from `from` (a route between the two was revoked):
    /// their senders are told `not_authorized`, as the store would.
    pub(crate) fn purge(&self, state: &State, from: DeviceId) {
        let mut q = lock(&self.q);
        let (mut n, mut bytes) = (0i64, 0u64);
        q.frames.retain(|h| {
            // One being written is answered by the store, which checks the route.
            if h.from != from || h.writing {
                return true;
            }
            h.sender.answers.refuse(h.send_id, StoreError::NoRoute);
            n += 1;
            bytes += h.len as u64;
            false
        });
        q.bytes -= bytes;
        q.shrink();
        let wake = Arc::clone(&q.wake);
        drop(q);
        if n > 0 {
            released(state, n, bytes);
            state.metrics.dropped("revoked", n as u64);
            wake.answers.wake();
        }
    }

    /// Submit the held frames `pick` chooses that are not being written, in
    /// one write, under the hold's lock (so an ack that removes one of them
    /// later submits its store ack after the write).
    fn write_locked(
        self: &Arc<Self>,
        q: &mut HoldQ,
        state: &State,
        pick: impl Fn(&Held) -> bool,
    ) -> Option<Write> {
        let mut frames = Vec::new();
        let mut ids = Vec::new();
        for h in q.frames.iter_mut().filter(|h| !h.writing && pick(h)) {
            h.writing = true;
            // Shared with the held frame, not copied (this may run under
            // the registry's lock: a closing connection's whole hold).
            let payload = h.frame.slice(h.frame.len() - h.len..);
            let frame = NewFrame { to: self.to, from: h.from, addr: h.addr, payload };
            frames.push((h.id, frame));
            ids.push(h.id);
        }
        let last = *ids.last()?;
        state.metrics.hold_written(frames.len());
        // Every frame not being written is held under the current fence
        // ([`Self::claimed`] refused the others).
        let fut = state.store.enqueue_reserved(frames, unix_now(), q.fence);
        // After the submission (made by the call): a fetch the writer
        // submits after seeing the mark is applied after the write and
        // sees it. Raised before, a fetch could pass the write, count these
        // ids as read, and strand them once the commit takes them out of
        // the hold.
        self.mark.fetch_max(last, Ordering::AcqRel);
        Some(Write { hold: Arc::clone(self), ids, fut })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.q).frames.len()
    }
}

impl Write {
    /// Wait for the write; answer the senders of the frames still held
    /// (`Ok`: durable; or why the store refused) and drop them from the
    /// hold (a frame not delivered yet is read from the store).
    pub(crate) async fn finish(self, state: Arc<State>) {
        let Write { hold, ids, fut } = self;
        let results = match fut.await {
            Ok(r) => r,
            Err(e) => vec![Err(e); ids.len()],
        };
        let mut q = lock(&hold.q);
        let (mut n, mut bytes) = (0i64, 0u64);
        for (id, result) in ids.iter().zip(results) {
            let Ok(i) = q.frames.binary_search_by_key(id, |h| h.id) else { continue };
            let Some(h) = q.frames.remove(i) else { continue };
            n += 1;
            bytes += h.len as u64;
            match result {
                Ok(stored) => {
                    if stored != *id {
                        // Stored under a fresh id (its queue held a higher
                        // one already): the writer reads it from there.
                        hold.mark.fetch_max(stored, Ordering::AcqRel);
                    }
                    h.sender.answers.ok(h.send_id);
                    state.metrics.ok("commit");
                    state.metrics.forwarded(h.len);
                }
                Err(e) => h.sender.answers.refuse(h.send_id, e),
            }
        }
        q.bytes -= bytes;
        q.shrink();
        let wake = Arc::clone(&q.wake);
        drop(q);
        released(&state, n, bytes);
        // What left the hold unsent is read from the store now.
        wake.answers.wake();
    }
}

/// The holds with frames in them, for the task that writes what the
/// window passed ([`run_flusher`]).
#[derive(Debug, Default)]
pub(crate) struct Holds {
    due: Mutex<Vec<Weak<Hold>>>,
}

impl Holds {
    fn due(&self, hold: Weak<Hold>) {
        lock(&self.due).push(hold);
    }
}

/// Every `hold_window / 4`, write the frames held for longer than
/// `hold_window`. Stops at shutdown: every connection's end writes its
/// device's hold.
pub(crate) async fn run_flusher(state: Arc<State>) {
    let window = state.config.hold_window;
    if window.is_zero() {
        return;
    }
    let tick = (window / 4).clamp(std::time::Duration::from_millis(1), window);
    let mut timer = tokio::time::interval(tick);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            _ = timer.tick() => {}
        }
        let due = std::mem::take(&mut *lock(&state.holds.due));
        let now = Instant::now();
        let mut again = Vec::with_capacity(due.len());
        for weak in due {
            let Some(hold) = weak.upgrade() else { continue };
            let (write, keep) = hold.expire(&state, now);
            if let Some(w) = write {
                tokio::spawn(w.finish(Arc::clone(&state)));
            }
            if keep {
                again.push(weak);
            }
        }
        lock(&state.holds.due).extend(again);
    }
}

#[cfg(test)]
mod tests {
    use tandem_proto::Frame;

    use super::*;

    #[test]
    fn ready_reads_in_id_order_without_removing() {
        let hold = Hold::new(DeviceId([1; 16]), Arc::new(Shared::new(None)));
        let sender = Arc::new(Shared::new(None));
        {
            let mut q = lock(&hold.q);
            for id in [3u64, 5, 9] {
                q.frames.push_back(Held {
                    id,
                    frame: Bytes::from(vec![0u8; 30]),
                    len: 4,
                    from: DeviceId([2; 16]),
                    addr: AddrKey::UNKNOWN,
                    since: Instant::now(),
                    sender: Arc::clone(&sender),
                    send_id: id,
                    writing: false,
                    below: 0,
                    fence: 0,
                });
            }
        }
        let ids = |v: Vec<Ready>| v.into_iter().map(|r| r.0).collect::<Vec<_>>();
        assert_eq!(ids(hold.ready(0, u64::MAX, 10)), vec![3, 5, 9]);
        assert_eq!(ids(hold.ready(3, 8, 10)), vec![5]);
        assert_eq!(ids(hold.ready(5, u64::MAX, 1)), vec![9]);
        assert_eq!(hold.len(), 3);
    }

    fn state(dir: &std::path::Path, hold_max_bytes: u64) -> State {
        let mut config = crate::Config::new(dir.to_owned());
        config.hold_max_bytes = hold_max_bytes;
        let store = crate::store::RedbStore::open(dir, config.queue, config.routes, 0).unwrap();
        State::new(config, Arc::new(store), None, tokio_util::sync::CancellationToken::new())
    }

    fn offer(hold: &Arc<Hold>, state: &State, sender: &Arc<Shared>, len: usize) -> bool {
        let from = DeviceId([2; 16]);
        let payload = Bytes::from(vec![5u8; len]);
        hold.offer(state, 0, 1, from, AddrKey::UNKNOWN, sender, payload).is_ok()
    }

    #[test]
    fn held_memory_counts_every_frame_and_is_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path(), 64 << 20);
        let hold = Arc::new(Hold::new(DeviceId([1; 16]), Arc::new(Shared::new(None))));
        let answers = Arc::new(Shared::new(None));
        for _ in 0..300 {
            assert!(offer(&hold, &state, &answers, 10));
        }
        let held = state.held_bytes.load(Ordering::Acquire);
        assert_eq!(held, memory(300, 3000));
        assert!(held > 300 * 10 + 300 * 100, "the entries count, not only payloads: {held}");
        // The held `Deliver` is the frame the recipient gets, payload intact.
        let (id, frame, len, _) = hold.ready(0, u64::MAX, 1).remove(0);
        let want =
            Frame::Deliver { delivery_id: id, from: DeviceId([2; 16]), payload: vec![5; 10] };
        assert_eq!((&frame[..], len), (&want.encode().unwrap()[..], 10));
        hold.ack(&state, u64::MAX);
        assert_eq!(state.held_bytes.load(Ordering::Acquire), 0);
        assert_eq!(answers.answers.take().len(), 300, "every sender answered");
        // The burst's queue is given back, not kept for the connection's life.
        assert!(lock(&hold.q).frames.capacity() <= KEEP_CAPACITY);
    }

    #[test]
    fn the_global_cap_counts_empty_frames_too() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path(), memory(2, 0));
        let hold = Arc::new(Hold::new(DeviceId([1; 16]), Arc::new(Shared::new(None))));
        let answers = Arc::new(Shared::new(None));
        assert!(offer(&hold, &state, &answers, 0));
        assert!(offer(&hold, &state, &answers, 0));
        assert!(!offer(&hold, &state, &answers, 0), "past the cap: to the store");
        assert_eq!(hold.len(), 2);
        assert_eq!(state.held_bytes.load(Ordering::Acquire), memory(2, 0));
    }
    /// Frames held under a replaced connection's fence and being written
    /// (found by review): the new connection neither is handed them (their
    /// ids may be below what the device saw elsewhere) nor acknowledges
    /// them (their write answers their senders); a frame held under the
    /// fence it claimed with is handed and acknowledged as usual.
    #[test]
    fn frames_of_a_replaced_connection_being_written_are_neither_read_nor_acked() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path(), 64 << 20);
        let hold = Arc::new(Hold::new(DeviceId([1; 16]), Arc::new(Shared::new(None))));
        let answers = Arc::new(Shared::new(None));
        hold.claimed(&state, 7, 0);
        assert!(offer(&hold, &state, &answers, 10));
        // Being written when the device connected again elsewhere and
        // then here, under fence 8.
        lock(&hold.q).frames.iter_mut().for_each(|h| h.writing = true);
        hold.begin_claim();
        hold.claimed(&state, 8, 0);
        assert_eq!(hold.len(), 1, "a frame being written is kept for its write");
        assert!(hold.ready(0, u64::MAX, 10).is_empty(), "not handed to the new connection");
        hold.ack(&state, u64::MAX);
        assert_eq!(hold.len(), 1, "not acknowledged by the new connection");
        assert!(answers.answers.take().is_empty(), "its sender waits for the write");
        // One held under the new fence is handed and acknowledged.
        assert!(offer(&hold, &state, &answers, 10));
        let ready = hold.ready(0, u64::MAX, 10);
        assert_eq!(ready.len(), 1);
        hold.ack(&state, ready[0].0);
        assert_eq!(hold.len(), 1, "only the new fence's frame left");
        assert_eq!(answers.answers.take().len(), 1);
    }

    /// A claim that failed holds nothing more (its fence and floor are not
    /// known: a frame held now could get an id below one the device saw
    /// elsewhere), also when another claim's answer (the node's
    /// reconciliation) cleared the flag in between; the offer goes to the
    /// store.
    #[test]
    fn nothing_is_held_after_a_failed_claim() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path(), 64 << 20);
        let hold = Arc::new(Hold::new(DeviceId([1; 16]), Arc::new(Shared::new(None))));
        let answers = Arc::new(Shared::new(None));
        hold.begin_claim();
        assert!(!offer(&hold, &state, &answers, 10), "nothing held during a claim");
        // The reconciliation's claim answers first and clears the flag…
        hold.claimed(&state, 9, 0);
        // …then this connection's own claim fails.
        hold.claim_failed();
        assert!(!offer(&hold, &state, &answers, 10), "nor after it failed");
        assert_eq!(hold.len(), 0);
        assert_eq!(state.held_bytes.load(Ordering::Acquire), 0);
    }

    /// Review: the claim of a connection that was replaced while it claimed
    /// can be answered after its replacement's (two tasks woken in turn by
    /// one multiplexed connection, run in either order): the hold, shared
    /// by both, must keep the newer fence. Here the late, lower fence is
    /// taken: the frame held for the current connection is refused to its
    /// sender as if held "for a connection the device replaced", and what
    /// comes next is held under the stale fence (a write of it is refused
    /// by the store).
    #[test]
    fn a_late_claim_of_a_replaced_connection_does_not_lower_the_fence() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path(), 64 << 20);
        let hold = Arc::new(Hold::new(DeviceId([1; 16]), Arc::new(Shared::new(None))));
        let answers = Arc::new(Shared::new(None));
        // Connection A claims (fence 7), B replaces it and claims (fence 8);
        // B's answer is acted on first.
        hold.begin_claim();
        hold.begin_claim();
        hold.claimed(&state, 8, 0);
        assert!(offer(&hold, &state, &answers, 10));
        hold.claimed(&state, 7, 0);
        assert_eq!(hold.len(), 1, "the frame held for the current connection was refused");
        assert!(answers.answers.take().is_empty());
        assert_eq!(lock(&hold.q).fence, 8, "the hold went back to the replaced connection's fence");
    }
}
