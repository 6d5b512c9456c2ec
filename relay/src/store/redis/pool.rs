//! Delivery ids for held frames ([`crate::store::Store::reserve_id`]) on
//! the Redis store: a node leases blocks of [`BLOCK`] ids from the one
//! counter every node and every enqueue takes ids from (`lease.lua`, one
//! `HINCRBY`), so no id is ever handed out twice, by any node, and hands
//! them out from memory. A block is leased before the one in use runs out
//! (asynchronously: an empty pool means "no id", and the frame is queued
//! in Redis instead); a block older than [`MAX_AGE`] is dropped, so the
//! ids a node holds frames under stay close to the counter.
//!
//! **Order.** A frame another node (or an enqueue) wrote to Redis took an
//! id from the counter, which may be above ids still unused in a block
//! leased before it. Two rules keep every recipient's ids increasing:
//! * an id is reserved only above `above`, the highest id the recipient's
//!   connection was handed or may have been (the hold's floor: its held
//!   frames, the stored frames its writer delivered, and every id the
//!   counter had reached when the node claimed the device); and
//! * every id of a block comes with [`Reserved::below`], the block's first
//!   id minus one: any frame for the recipient that went to Redis with a
//!   lower id was written before the block was leased, and the connection
//!   reads Redis through it before it delivers the held frame. A frame
//!   written after the lease has an id above the whole block.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tandem_proto::DeviceId;
use tokio::time::Instant;

use crate::store::{Reserved, StoreError};

/// Ids in one lease.
pub(super) const BLOCK: u64 = 4096;
/// A block leased longer ago than this is not reserved from any more.
pub(super) const MAX_AGE: Duration = Duration::from_secs(1);
/// Leases remembered to check the ids written later (a held frame is
/// written within its hold window, or when its connection ends).
const REMEMBERED: usize = 256;

/// One leased block.
#[derive(Debug)]
struct Block {
    first: u64,
    /// The next id to hand out (past `last`: used up).
    next: u64,
    last: u64,
    epoch: u64,
    at: Instant,
}

/// The pool, the queues known to be full, and the watched recipients.
#[derive(Debug, Default)]
pub(super) struct Pool {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Blocks to hand ids out from, in id order.
    blocks: VecDeque<Block>,
    /// Leases on their way.
    leasing: u32,
    /// No id was at hand above a floor: lease again right after the next
    /// enqueue is submitted ([`Pool::take_want`]), so that the block is
    /// above the id that enqueue takes (an enqueue that did not get one
    /// would otherwise push its sender's floor above every block leased
    /// before it, again and again).
    want: bool,
    /// Recent leases (first, last, epoch), to check reserved ids written.
    leased: VecDeque<(u64, u64, u64)>,
    /// Queues that refused a frame as full: nothing is held for them (as
    /// on the embedded store) until something leaves them.
    full: HashSet<DeviceId>,
    /// Watched recipients ([`crate::store::Store::watch`]).
    marks: HashMap<DeviceId, Arc<AtomicU64>>,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An id above `above` for `to`, from a block leased under `epoch`;
    /// and whether a lease should be asked for now (it is then counted as
    /// on its way: the caller calls [`Pool::leased`] with its outcome).
    pub(super) fn take(
        &self,
        to: &DeviceId,
        above: u64,
        epoch: u64,
    ) -> (Result<Reserved, StoreError>, bool) {
        let mut p = self.lock();
        if p.full.contains(to) {
            return (Err(StoreError::QueueFull(*to)), false);
        }
        let now = Instant::now();
        // Every block that is stale or used up goes, not only the first: a
        // block after the first is used up while the first is not when
        // recipients with higher floors took its ids, and handing out its
        // `next` then gave an id past its end, one the counter gives an
        // enqueue too (found by `tandem-bench throughput`: the enqueued
        // frame was taken for one delivered already, and lost).
        p.blocks.retain(|b| {
            b.epoch == epoch && now.duration_since(b.at) <= MAX_AGE && b.next <= b.last
        });
        let low = match p.blocks.front() {
            None => true,
            Some(b) => {
                p.blocks.len() < 2
                    && (b.last - b.next < BLOCK / 2 || now.duration_since(b.at) > MAX_AGE / 2)
            }
        };
        // The first block with an id above `above`. The ones before it stay
        // for other recipients, whose floors may be lower (one recipient's
        // high floor, after its claim or a frame written for it, must not
        // throw the node's ids away for all).
        let found = p.blocks.iter().position(|b| b.last > above);
        let lease = low && p.leasing == 0;
        if lease {
            p.leasing += 1;
        }
        let Some(b) = found.and_then(|i| p.blocks.get_mut(i)) else {
            // A lease after the enqueue the caller makes instead: a block
            // leased before it would sit below its id, which is the
            // recipient's floor next.
            p.want = true;
            return (Err(StoreError::Unavailable("no leased id at hand".into())), lease);
        };
        let id = b.next.max(above.saturating_add(1));
        if id > b.last {
            // Cannot happen (the block has an id left, and one above the
            // floor): never hand out an id that was not leased.
            return (Err(StoreError::Unavailable("no leased id at hand".into())), lease);
        }
        b.next = id + 1;
        (Ok(Reserved { id, below: b.first - 1 }), lease)
    }

    /// Whether a lease is wanted after an enqueue (it is then counted as
    /// on its way).
    pub(super) fn take_want(&self) -> bool {
        let mut p = self.lock();
        if !std::mem::take(&mut p.want) {
            return false;
        }
        p.leasing += 1;
        true
    }

    /// A lease came back: its last id under `epoch`, or nothing (refused).
    pub(super) fn leased(&self, last: Option<u64>, epoch: u64) {
        let mut p = self.lock();
        p.leasing = p.leasing.saturating_sub(1);
        let Some(last) = last.filter(|l| *l >= BLOCK) else { return };
        let first = last - BLOCK + 1;
        if p.blocks.back().is_some_and(|b| b.epoch == epoch && b.last >= first) {
            return;
        }
        p.blocks.push_back(Block { first, next: first, last, epoch, at: Instant::now() });
        p.leased.push_back((first, last, epoch));
        while p.leased.len() > REMEMBERED {
            p.leased.pop_front();
        }
    }

    /// Whether `id` was leased here under `epoch` (else a held frame under
    /// it is not written: its lease was of another epoch, or forgotten).
    pub(super) fn was_leased(&self, id: u64, epoch: u64) -> bool {
        self.lock().leased.iter().any(|&(f, l, e)| e == epoch && f <= id && id <= l)
    }

    /// `to`'s queue refused a frame as full.
    pub(super) fn set_full(&self, to: DeviceId) {
        self.lock().full.insert(to);
    }

    /// Frames left `to`'s queue (`None`: any queue's).
    pub(super) fn not_full(&self, to: Option<&DeviceId>) {
        let mut p = self.lock();
        match to {
            Some(to) => {
                p.full.remove(to);
            }
            None => p.full.clear(),
        }
    }

    /// Watch `to` with `mark`, or stop.
    pub(super) fn watch(&self, to: DeviceId, mark: Option<Arc<AtomicU64>>) {
        let mut p = self.lock();
        match mark {
            Some(m) => {
                p.marks.insert(to, m);
            }
            None => {
                p.marks.remove(&to);
            }
        }
    }

    /// A frame for `to` went to Redis under `id` (a watched recipient's
    /// writer reads it from there if its live delivery is lost).
    pub(super) fn enqueued(&self, to: &DeviceId, id: u64) {
        if let Some(m) = self.lock().marks.get(to) {
            m.fetch_max(id, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_above_the_floor_and_blocks_say_what_to_read_first() {
        let p = Pool::default();
        let d = DeviceId([1; 16]);
        let (r, lease) = p.take(&d, 0, 7);
        assert!(r.is_err() && lease, "empty: no id, a lease asked for");
        let (_, again) = p.take(&d, 0, 7);
        assert!(!again, "one lease at a time");
        p.leased(Some(2 * BLOCK), 7);
        let (r, _) = p.take(&d, 0, 7);
        assert_eq!(r.unwrap(), Reserved { id: BLOCK + 1, below: BLOCK });
        let (r, _) = p.take(&d, BLOCK + 100, 7);
        assert_eq!(r.unwrap().id, BLOCK + 101, "skips to above the floor");
        let (r, _) = p.take(&d, 2 * BLOCK, 7);
        assert!(r.is_err(), "nothing above the floor at hand");
        assert!(p.take_want(), "a lease after the enqueue that follows");
        assert!(!p.take_want());
        p.leased(Some(5 * BLOCK), 7);
        let (r, _) = p.take(&d, 0, 8);
        assert!(r.is_err(), "another epoch's block is not used");
        assert!(p.was_leased(5 * BLOCK, 7) && !p.was_leased(5 * BLOCK, 8));
        assert!(!p.was_leased(3 * BLOCK, 7), "never leased here");
        p.set_full(d);
        assert!(matches!(p.take(&d, 0, 7).0, Err(StoreError::QueueFull(_))));
        p.not_full(Some(&d));
        p.leased(Some(9 * BLOCK), 7);
        assert_eq!(p.take(&d, 0, 7).0.unwrap().below, 8 * BLOCK);
    }

    #[test]
    fn a_used_up_block_behind_the_first_gives_no_id_past_its_end() {
        let p = Pool::default();
        let (a, b) = (DeviceId([1; 16]), DeviceId([2; 16]));
        let _ = p.take(&a, 0, 7);
        p.leased(Some(2 * BLOCK), 7);
        p.leased(Some(3 * BLOCK), 7);
        // b's floor is above the first block: it uses the second one up,
        // while a keeps the first.
        for _ in 0..BLOCK {
            let id = p.take(&b, 2 * BLOCK, 7).0.unwrap().id;
            assert!(id > 2 * BLOCK && id <= 3 * BLOCK, "{id}");
        }
        assert!(p.take(&a, 0, 7).0.unwrap().id <= 2 * BLOCK, "a still on the first block");
        // b's floor is still below the second block's last id: before the
        // fix this handed out 3 * BLOCK + 1, never leased, the id the
        // counter gives the next enqueue.
        let (r, _) = p.take(&b, 3 * BLOCK - 1, 7);
        assert!(r.is_err(), "{r:?}");
        assert!(p.take_want(), "a lease after the enqueue that follows");
    }

    #[test]
    fn one_recipients_high_floor_does_not_take_the_ids_of_the_others() {
        let p = Pool::default();
        let (a, b) = (DeviceId([1; 16]), DeviceId([2; 16]));
        let _ = p.take(&a, 0, 7);
        p.leased(Some(2 * BLOCK), 7);
        assert!(p.take(&a, 0, 7).0.is_ok());
        let (r, _) = p.take(&b, 5 * BLOCK, 7);
        assert!(
            r.is_err() && p.take_want(),
            "b (floor above every block): a lease after its enqueue"
        );
        assert!(p.take(&a, BLOCK + 1, 7).0.is_ok(), "b's floor threw a's ids away");
        p.leased(Some(6 * BLOCK), 7);
        assert_eq!(p.take(&b, 5 * BLOCK, 7).0.unwrap().id, 5 * BLOCK + 1);
        assert!(p.take(&a, BLOCK + 2, 7).0.unwrap().id < 2 * BLOCK, "a still on its block");
    }
}
