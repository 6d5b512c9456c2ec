//! Durable state of the relay: per-device queues of frames for devices that
//! have not acknowledged them yet, and the routes between devices.
//!
//! The relay talks to storage only through [`Store`], so a Redis backend for
//! several nodes fits beside the embedded [`redb`](RedbStore) one without
//! reshaping the relay. Every method is async and returns a boxed future so
//! the trait stays object safe (`Arc<dyn Store>`).
//!
//! Semantics every backend keeps:
//! * delivery ids are per recipient, strictly increasing, never reused (not
//!   even across restarts);
//! * an `enqueue` whose `durable` answer is `Ok` survives a crash of the
//!   relay process;
//! * frames leave a queue only by the recipient's acknowledgement, by their
//!   TTL, or by revocation of the route they came through (a crash may undo
//!   recent acknowledgements: those frames are delivered again);
//! * a route exists only when both devices authorised each other.

mod redb;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;

use tandem_proto::DeviceId;
use thiserror::Error;

pub use self::redb::RedbStore;

/// A boxed future returned by [`Store`] methods. It owns what it needs
/// (`'static`), so a connection can keep several in flight while it goes on
/// reading; the operation is submitted when the method is called, so
/// operations from one caller are applied in call order.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// The two answers to [`Store::enqueue`].
///
/// A frame for a connected recipient is delivered as soon as it has its
/// place in the queue, while the commit that makes it durable is still
/// running; the sender hears `Ok` only once `durable` resolved. If the relay
/// dies between the two, the recipient may hold a frame the relay forgot:
/// the sender, which had no `Ok`, sends it again and the end-to-end layer
/// drops the copy. A backend that hands out ids before they are durable must
/// never hand the same id out again, not even after a crash.
pub struct Enqueued {
    /// The delivery id the frame has in `to`'s queue if it is queued (ids
    /// are taken in the order enqueues are called): the frame may be
    /// delivered under it from then on. If `durable` then refuses it (no
    /// route, queue full), the id stays unused (ids may skip), and a
    /// recipient that got the frame anyway drops the sender's resend as a
    /// duplicate. An error here means only "no id early": the real answer
    /// is `durable`'s.
    pub placed: StoreFuture<u64>,
    /// The delivery id once the frame is durable, or why it was not queued.
    pub durable: StoreFuture<u64>,
}

/// Why a store operation failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The recipient's queue is at its count or byte limit.
    #[error("queue full for {0}")]
    QueueFull(DeviceId),
    /// The sender has its share of the recipient's queue, or of all queues,
    /// queued already.
    #[error("the sender's share of the queues is full")]
    SenderShareFull,
    /// All queues together hold `total_max_bytes` (and the recipient is not
    /// connected, or its queue holds [`LIVE_ALLOWANCE_BYTES`]).
    #[error("the relay's queue storage is full")]
    StorageFull,
    /// The two devices have not both authorised each other (checked in the
    /// same transaction as the enqueue, so a revocation is never raced).
    #[error("no route between these devices")]
    NoRoute,
    /// The device has authorised as many peers as a device may.
    #[error("too many authorised peers (at most {MAX_PEERS})")]
    TooManyPeers,
    /// The storage backend failed (disk, database). The operation did not happen.
    #[error("storage failed: {0}")]
    Backend(String),
    /// The store is shut down.
    #[error("store closed")]
    Closed,
}

/// Most peers one device may authorise.
pub const MAX_PEERS: usize = 1024;

/// Most queued frames one expiry sweep deletes (a sweep after long downtime
/// must not hold the store for long; the next sweep continues).
pub const MAX_EXPIRED_PER_SWEEP: usize = 10_000;

/// Queue limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most frames queued for one device.
    pub max_frames: u64,
    /// Most payload bytes queued for one device.
    pub max_bytes: u64,
    /// How long a frame may wait, in seconds.
    pub ttl_secs: u64,
    /// Most payload bytes queued in all queues together. Past it, a frame
    /// is taken only for a connected recipient whose queue holds less than
    /// [`LIVE_ALLOWANCE_BYTES`].
    pub total_max_bytes: u64,
    /// The share (percent, 1..=100) of `total_max_bytes`, and of any one
    /// recipient's `max_bytes`, that frames from one sender may fill.
    pub sender_share_percent: u8,
}

impl QueueLimits {
    /// The most bytes one sender may have queued in all.
    #[must_use]
    pub fn sender_total_max(&self) -> u64 {
        share(self.total_max_bytes, self.sender_share_percent)
    }

    /// The most bytes one sender may have queued for one recipient.
    #[must_use]
    pub fn sender_pair_max(&self) -> u64 {
        share(self.max_bytes, self.sender_share_percent)
    }
}

fn share(of: u64, percent: u8) -> u64 {
    let p = u64::from(percent.clamp(1, 100));
    u64::try_from(u128::from(of) * u128::from(p) / 100).unwrap_or(u64::MAX)
}

/// Past [`QueueLimits::total_max_bytes`], a frame for a connected recipient
/// is still queued while that recipient's queue holds less than this (about
/// sixteen frames of the largest size): a device that acknowledges what it
/// receives keeps getting frames when the relay's storage is full. The
/// frames stay when the recipient goes away, so the overshoot is bounded by
/// this times the recipient keys that were connected while their frames
/// were queued (within the TTL), not times the connected devices.
pub const LIVE_ALLOWANCE_BYTES: u64 = 1 << 20;

/// A frame waiting in a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Its delivery id.
    pub id: u64,
    /// The sender.
    pub from: DeviceId,
    /// The opaque end-to-end envelope.
    pub payload: Vec<u8>,
}

/// A queue's size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Frames waiting.
    pub frames: u64,
    /// Payload bytes waiting.
    pub bytes: u64,
}

/// The relay's durable state.
pub trait Store: Send + Sync + 'static {
    /// Queue `payload` from `from` for `to`, expiring at `now + ttl`, if the
    /// two devices have a route ([`StoreError::NoRoute`] otherwise). See
    /// [`Enqueued`] for its two answers.
    /// `live` says that `to` is connected (see [`LIVE_ALLOWANCE_BYTES`]).
    fn enqueue(
        &self,
        to: DeviceId,
        from: DeviceId,
        payload: Vec<u8>,
        now_unix: u64,
        live: bool,
    ) -> Enqueued;

    /// Up to `limit` frames for `to` with ids above `after`, in id order.
    /// A fetch sees every enqueue whose id was taken before the fetch was
    /// called (stored, or refused), whoever called it: a connection that
    /// was handed id `n` early relies on this to catch up below `n`.
    fn fetch(&self, to: DeviceId, after: u64, limit: usize) -> StoreFuture<Vec<Queued>>;

    /// The recipient received everything up to `up_to`: delete it. Returns
    /// how many frames were deleted.
    fn ack(&self, to: DeviceId, up_to: u64) -> StoreFuture<u64>;

    /// How much waits for `to`.
    fn depth(&self, to: DeviceId) -> StoreFuture<QueueDepth>;

    /// Record that `by` allows frames to and from `peer`
    /// ([`StoreError::TooManyPeers`] past [`MAX_PEERS`]).
    fn authorize(&self, by: DeviceId, peer: DeviceId) -> StoreFuture<()>;

    /// Remove `by`'s authorisation of `peer` and drop every frame queued
    /// between the two, both ways. Returns how many frames were dropped (0,
    /// without touching the queues, when `by` had not authorised `peer`).
    fn revoke(&self, by: DeviceId, peer: DeviceId) -> StoreFuture<u64>;

    /// Whether `a` and `b` authorised each other.
    fn is_route(&self, a: DeviceId, b: DeviceId) -> StoreFuture<bool>;

    /// The devices `a` has a (mutual) route with.
    fn peers(&self, a: DeviceId) -> StoreFuture<Vec<DeviceId>>;

    /// Delete frames whose TTL passed, at most [`MAX_EXPIRED_PER_SWEEP`].
    /// Returns how many.
    fn expire(&self, now_unix: u64) -> StoreFuture<u64>;

    /// Frames and bytes waiting across all queues.
    fn totals(&self) -> StoreFuture<QueueDepth>;
}
