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
//! * a route exists only when both devices authorised each other; a mutual
//!   route never expires, a one-sided authorisation does
//!   ([`RouteLimits::pending_ttl_secs`]);
//! * what is queued and authorised is counted per sender address
//!   ([`AddrKey`], stored with each row), and those counts are rebuilt from
//!   the rows when the store opens.
//! * ids may also be reserved ([`Store::reserve_id`]) for frames the relay
//!   holds in memory and writes later, if at all
//!   ([`Store::enqueue_reserved`]): such an id is never handed out again,
//!   and the frame keeps it when written;
//! * a store that cannot write (a full disk, a failed database) refuses
//!   every operation at once ([`StoreError::Unavailable`],
//!   [`StoreError::Busy`]) rather than blocking its callers, says so in
//!   [`Store::health`], and recovers by itself when it can write again;
//!   an operation it refused did not happen.

mod redb;
mod redis;
#[cfg(test)]
pub(crate) mod tests;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use tandem_proto::DeviceId;
use thiserror::Error;

pub use self::redb::{Export, ExportedAuthorization, ExportedFrame, RedbStore, WRITER_QUEUE};
pub(crate) use self::redis::MAX_BACKOFF as REDIS_MAX_BACKOFF;
pub(crate) use self::redis::namespace as redis_namespace;
pub(crate) use self::redis::redis_hex;
pub(crate) use self::redis::switches::{
    Announced as RedisAnnounced, left_behind as redis_left_behind, switched as redis_switched,
};
pub(crate) use self::redis::target::Target as RedisTarget;
pub use self::redis::{DEFAULT_PREFIX as REDIS_DEFAULT_PREFIX, QUEUE as REDIS_QUEUE, RedisStore};

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
    /// The sender has its share of the recipient's queue queued already.
    #[error("the sender's share of the recipient's queue is full")]
    SenderShareFull,
    /// The sender's client address has its share of all queues queued
    /// already (whatever the keys it used).
    #[error("the sender address's share of the queues is full")]
    AddressShareFull,
    /// All queues together hold `total_max_bytes` (and the recipient is not
    /// connected, or its queue holds [`LIVE_ALLOWANCE_BYTES`]).
    #[error("the relay's queue storage is full")]
    StorageFull,
    /// Past `total_max_bytes`, a frame for a connected recipient with a small
    /// queue would pass `total_max_bytes + overflow_max_bytes`, or its
    /// sender's address has its share of the overflow.
    #[error("the relay's queue storage and its overflow for connected devices are full")]
    OverflowFull,
    /// The two devices have not both authorised each other (checked in the
    /// same transaction as the enqueue, so a revocation is never raced).
    #[error("no route between these devices")]
    NoRoute,
    /// The device has authorised as many peers as a device may.
    #[error("too many authorised peers (at most {MAX_PEERS})")]
    TooManyPeers,
    /// The address has as many one-sided authorisations (not answered by
    /// the peer yet) as one address may hold
    /// ([`RouteLimits::max_pending_per_ip`]).
    #[error("too many one-sided authorisations from this address")]
    TooManyPending,
    /// The storage backend failed (disk, database). The operation did not happen.
    #[error("storage failed: {0}")]
    Backend(String),
    /// The store cannot write now (not open yet, or failed and being
    /// reopened; the reason follows). The operation did not happen; retry
    /// later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store's queue of waiting operations is full
    /// ([`WRITER_QUEUE`]). The operation did not happen;
    /// retry later.
    #[error("the store is busy")]
    Busy,
    /// The store is shut down.
    #[error("store closed")]
    Closed,
}

/// Most peers one device may authorise.
pub const MAX_PEERS: usize = 1024;

/// Most queued frames one expiry sweep deletes (a sweep after long downtime
/// must not hold the store for long; the next sweep continues).
pub const MAX_EXPIRED_PER_SWEEP: usize = 10_000;

/// What one queued frame is charged besides its payload, in bytes, against
/// every byte limit of [`QueueLimits`]: roughly what its row costs on disk
/// (key, sender, expiry, address and the B-tree's share: 127 bytes an empty
/// frame, measured by `relay/tests/store_limits.rs`). So the limits count
/// what frames cost, and empty frames are not free.
pub const FRAME_COST_BYTES: u64 = 128;

/// What a frame of `payload_len` bytes is charged against the byte limits.
#[must_use]
pub fn charged(payload_len: u64) -> u64 {
    payload_len.saturating_add(FRAME_COST_BYTES)
}

/// Queue limits. Every byte limit counts a frame's payload plus
/// [`FRAME_COST_BYTES`] ([`charged`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most frames queued for one device.
    pub max_frames: u64,
    /// Most bytes queued for one device.
    pub max_bytes: u64,
    /// How long a frame may wait, in seconds.
    pub ttl_secs: u64,
    /// Most bytes queued in all queues together. Past it, a frame is taken
    /// only for a connected recipient whose queue holds less than
    /// [`LIVE_ALLOWANCE_BYTES`], within `overflow_max_bytes`.
    pub total_max_bytes: u64,
    /// How far past `total_max_bytes` frames for connected recipients may
    /// take the queues: all queues together never hold more than
    /// `total_max_bytes + overflow_max_bytes`, and past `total_max_bytes` a
    /// sender address that holds `sender_share_percent` of this gets no more.
    pub overflow_max_bytes: u64,
    /// The share (percent, 1..=100) of `total_max_bytes` (and of the
    /// overflow) that frames from one sender address may fill, and of any
    /// one recipient's `max_bytes` that frames from one sender may fill.
    pub sender_share_percent: u8,
}

impl QueueLimits {
    /// The most bytes one sender address may have queued in all.
    #[must_use]
    pub fn sender_total_max(&self) -> u64 {
        share(self.total_max_bytes, self.sender_share_percent)
    }

    /// The most bytes one sender may have queued for one recipient.
    #[must_use]
    pub fn sender_pair_max(&self) -> u64 {
        share(self.max_bytes, self.sender_share_percent)
    }

    /// Past the total, the most bytes one sender address may hold in all
    /// and still have a frame taken for a connected recipient.
    #[must_use]
    pub fn sender_overflow_max(&self) -> u64 {
        share(self.overflow_max_bytes, self.sender_share_percent)
    }
}

/// Limits on authorisations that the peer has not answered (one-sided:
/// `by` authorised `peer`, `peer` has not authorised `by`). Mutual routes
/// are bounded only by [`MAX_PEERS`] per device and never expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteLimits {
    /// A one-sided authorisation is removed this long (seconds) after it was
    /// made, or after the peer revoked the route it was part of, unless the
    /// peer authorised back meanwhile.
    pub pending_ttl_secs: u64,
    /// Most one-sided authorisations made from one client address (counted
    /// under the address they were made from).
    pub max_pending_per_ip: u64,
}

/// The client address a queued frame or an authorisation counts under
/// (per-address limits): the relay's per-address key (an IPv4 address, or
/// an IPv6 address cut to its prefix), as 17 bytes: `4` or `6`, then the
/// address (IPv4 in the first four bytes). [`AddrKey::UNKNOWN`] (all zero)
/// counts under no address: rows of stores written before addresses were
/// kept, and callers that know none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey(pub [u8; 17]);

impl AddrKey {
    /// No address: counted in the totals only.
    pub const UNKNOWN: AddrKey = AddrKey([0; 17]);

    /// The key of an address already cut to the prefix the limits use.
    #[must_use]
    pub fn from_ip(ip: std::net::IpAddr) -> Self {
        let mut k = [0u8; 17];
        match ip {
            std::net::IpAddr::V4(v4) => {
                k[0] = 4;
                k[1..5].copy_from_slice(&v4.octets());
            }
            std::net::IpAddr::V6(v6) => {
                k[0] = 6;
                k[1..].copy_from_slice(&v6.octets());
            }
        }
        AddrKey(k)
    }

    /// Whether this names an address (rows of older stores do not).
    #[must_use]
    pub fn is_known(&self) -> bool {
        *self != Self::UNKNOWN
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
/// frames stay when the recipient goes away, so what this lets in is bounded
/// in all by [`QueueLimits::overflow_max_bytes`] and per sender address by
/// its share of that.
pub const LIVE_ALLOWANCE_BYTES: u64 = 1 << 20;

/// A frame to queue ([`Store::enqueue`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFrame {
    /// The recipient.
    pub to: DeviceId,
    /// The sender.
    pub from: DeviceId,
    /// The sender's client address (what the per-address share counts).
    pub addr: AddrKey,
    /// The opaque end-to-end envelope (a slice of the received `Send`).
    pub payload: Bytes,
}

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

impl QueueDepth {
    /// What these frames are charged against the byte limits: the payload
    /// plus [`FRAME_COST_BYTES`] per frame.
    #[must_use]
    pub fn charged(&self) -> u64 {
        self.bytes.saturating_add(self.frames.saturating_mul(FRAME_COST_BYTES))
    }
}

/// What [`Store::expire`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    /// Queued frames whose TTL passed.
    pub frames: u64,
    /// One-sided authorisations whose TTL passed.
    pub authorizations: u64,
}

/// What [`Store::totals`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Frames and payload bytes in all queues.
    pub queues: QueueDepth,
    /// One-sided authorisations (the peer has not authorised back).
    pub pending_authorizations: u64,
}

/// The relay's durable state.
pub trait Store: Send + Sync + 'static {
    /// Queue `payload` from `from` (connected from `addr`) for `to`,
    /// expiring at `now + ttl`, if the two devices have a route
    /// ([`StoreError::NoRoute`] otherwise). See [`Enqueued`] for its two
    /// answers. `live` says that `to` is connected (see
    /// [`LIVE_ALLOWANCE_BYTES`]).
    fn enqueue(&self, frame: NewFrame, now_unix: u64, live: bool) -> Enqueued;

    /// Up to `limit` frames for `to` with ids above `after`, in id order.
    /// A fetch sees every enqueue whose id was taken before the fetch was
    /// called (stored, or refused), whoever called it: a connection that
    /// was handed id `n` early relies on this to catch up below `n`. A
    /// reserved id ([`Store::reserve_id`]) is seen once its
    /// [`Store::enqueue_reserved`] was called (until then the relay holds
    /// the frame itself).
    fn fetch(&self, to: DeviceId, after: u64, limit: usize) -> StoreFuture<Vec<Queued>>;

    /// The recipient received everything up to `up_to`: delete it. Returns
    /// how many frames were deleted.
    fn ack(&self, to: DeviceId, up_to: u64) -> StoreFuture<u64>;

    /// How much waits for `to`.
    fn depth(&self, to: DeviceId) -> StoreFuture<QueueDepth>;

    /// Record that `by` (connected from `addr`) allows frames to and from
    /// `peer` ([`StoreError::TooManyPeers`] past [`MAX_PEERS`]). Until
    /// `peer` authorises `by` too, the authorisation is one-sided: it counts
    /// against `addr`'s [`RouteLimits::max_pending_per_ip`]
    /// ([`StoreError::TooManyPending`]) and expires after
    /// [`RouteLimits::pending_ttl_secs`]. Authorising again changes nothing.
    fn authorize(
        &self,
        by: DeviceId,
        peer: DeviceId,
        addr: AddrKey,
        now_unix: u64,
    ) -> StoreFuture<()>;

    /// Remove `by`'s authorisation of `peer` and drop every frame queued
    /// between the two, both ways. Returns how many frames were dropped (0,
    /// without touching the queues, when `by` had not authorised `peer`).
    /// `peer`'s authorisation of `by`, if any, is one-sided from now on (and
    /// expires as such).
    fn revoke(&self, by: DeviceId, peer: DeviceId, now_unix: u64) -> StoreFuture<u64>;

    /// Whether `a` and `b` authorised each other.
    fn is_route(&self, a: DeviceId, b: DeviceId) -> StoreFuture<bool>;

    /// The devices `a` has a (mutual) route with.
    fn peers(&self, a: DeviceId) -> StoreFuture<Vec<DeviceId>>;

    /// Delete frames whose TTL passed and one-sided authorisations whose TTL
    /// passed, at most [`MAX_EXPIRED_PER_SWEEP`] of each, and forget some
    /// empty queues nothing was queued for within the TTL (their ids are
    /// never handed out again).
    fn expire(&self, now_unix: u64) -> StoreFuture<Expired>;

    /// Frames and bytes waiting across all queues, and the one-sided
    /// authorisations.
    fn totals(&self) -> StoreFuture<Totals>;

    /// The store epoch the relay announces in `AuthOk` (PROTOCOL.md §6.6):
    /// it MUST change whenever the delivery ids this store hands out may be
    /// lower than ones handed out before (its data wiped, restored from an
    /// older copy, migrated to another backend). [`RedbStore`] draws a
    /// fresh random one at every open, which covers all three;
    /// [`RedisStore`] one per Redis server lifetime and epoch base, which
    /// can change while the relay runs ([`Store::epoch_changed`]).
    fn epoch(&self) -> u64;

    /// For a backend whose epoch can change while the relay runs (a Redis
    /// server restarted, failed over or wiped under the relay), a receiver
    /// told every new epoch; `None` (the default) when it never changes
    /// after the store opened.
    ///
    /// The relay must then close every device connection whose `AuthOk`
    /// announced another epoch (the devices reconnect and get the new one):
    /// ids of the new epoch may be at or below ids the device saw before.
    /// The backend updates [`Store::epoch`] before any operation runs under
    /// the new epoch, so a connection that compares [`Store::epoch`] with
    /// the epoch it announced after each store answer (before it delivers
    /// an id from it) never hands a device an id of another epoch, whenever
    /// the watch wakes it.
    fn epoch_changed(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Whether the store can write now, or why not (`/readyz`, the
    /// `store_up` gauge). Cheap: no store round trip.
    ///
    /// # Errors
    /// The reason the store cannot write (not open, failed and being
    /// reopened).
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// A delivery id above `above` for a frame for `to` that the relay
    /// holds in memory (`crate::hold`) and may write later with
    /// [`Store::enqueue_reserved`], or never (the recipient acknowledged it
    /// first). `above` is the highest id `to`'s connection was handed or
    /// may have been (its held frames, the stored ones it delivered): an
    /// id at or below it is never returned. The id is never handed out
    /// again, not even after a crash or by another node sharing the store
    /// (the backend saves or leases its counter ahead of what it reserves).
    /// An error (the default: this backend holds nothing) means "use
    /// [`Store::enqueue`]".
    ///
    /// # Errors
    /// Why no id can be reserved now (the store is down, `to`'s queue is
    /// full, the backend has no id above `above` at hand, the backend does
    /// not reserve).
    fn reserve_id(&self, to: DeviceId, above: u64) -> Result<Reserved, StoreError> {
        let _ = (to, above);
        Err(StoreError::Unavailable("this store reserves no ids".into()))
    }

    /// Write frames whose ids were reserved with [`Store::reserve_id`], in
    /// one durable commit; one answer per frame, in order (as
    /// [`Enqueued::durable`]'s: the id it is stored under, its reserved one,
    /// or a fresh one above every id handed out so far when the backend
    /// cannot store it under the reserved one any more — Redis, whose
    /// queue for the recipient already holds a higher id; a sender's frames
    /// keep their order either way). A fetch called after this sees them. The
    /// default refuses them all (it is never called when
    /// [`Store::reserve_id`] refuses).
    ///
    /// `fence`: in a cluster, the fence token of the recipient's connection
    /// they were held for (0: none). A store shared by several nodes
    /// refuses them ([`StoreError::Unavailable`]) once the recipient's
    /// ownership has another fence: a newer connection may have been handed
    /// higher ids already, and would then read these below them.
    fn enqueue_reserved(
        &self,
        frames: Vec<(u64, NewFrame)>,
        now_unix: u64,
        fence: u64,
    ) -> StoreFuture<Vec<Result<u64, StoreError>>> {
        let _ = (frames, now_unix, fence);
        Box::pin(std::future::ready(Err(StoreError::Unavailable(
            "this store reserves no ids".into(),
        ))))
    }

    /// Keep `mark` at least the highest delivery id submitted for `to` by
    /// [`Store::enqueue`] from now on (`None`: stop). A connection's writer
    /// reads the store only when `mark` says it may hold something it has
    /// not read; a backend that cannot watch returns false (the default),
    /// and the writer then reads the store at every gap in the ids, as
    /// before. When it starts watching, the store sets `mark` to at least
    /// the highest id it handed out so far (anything up to it may be
    /// queued).
    fn watch(
        &self,
        to: DeviceId,
        mark: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    ) -> bool {
        let _ = (to, mark);
        false
    }

    /// Commits and frames written so far (for `/metrics`).
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }

    /// Keep `sub` as `device`'s push subscription (opaque bytes to the
    /// store: `kind ‖ data` of `PushSubscribe`), replacing any it had;
    /// durable when answered, like an authorisation. The default (a test
    /// double) keeps none.
    fn put_push_subscription(&self, device: DeviceId, sub: Vec<u8>) -> StoreFuture<()> {
        let _ = (device, sub);
        Box::pin(std::future::ready(Err(StoreError::Unavailable(NO_PUSH.into()))))
    }

    /// `device`'s push subscription, if it has one.
    fn push_subscription(&self, device: DeviceId) -> StoreFuture<Option<Vec<u8>>> {
        let _ = device;
        Box::pin(std::future::ready(Err(StoreError::Unavailable(NO_PUSH.into()))))
    }

    /// Forget `device`'s push subscription; whether it had one.
    fn remove_push_subscription(&self, device: DeviceId) -> StoreFuture<bool> {
        let _ = device;
        Box::pin(std::future::ready(Err(StoreError::Unavailable(NO_PUSH.into()))))
    }
}

/// What a store without push subscriptions says.
const NO_PUSH: &str = "this store keeps no push subscriptions";

/// The longest push subscription a store keeps, in bytes (a `PushSubscribe`
/// of the longest FCM token, with its kind byte).
pub const MAX_PUSH_SUBSCRIPTION: usize = 1 + 4096;

/// An id [`Store::reserve_id`] reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserved {
    /// The delivery id.
    pub id: u64,
    /// The store may hold frames for the recipient with ids up to this
    /// that its [`Store::watch`] did not report (another node wrote them):
    /// the recipient's connection reads the store through this id before
    /// it delivers `id` (0: nothing to read).
    pub below: u64,
}

/// What [`Store::stats`] reports, counted since the store opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Commits that answered writes (enqueues, authorisations, revocations).
    pub durable_commits: u64,
    /// Frames those commits wrote (refused ones included).
    pub frames_written: u64,
}
