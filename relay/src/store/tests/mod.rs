//! The behaviour every [`Store`] keeps, run against the embedded store
//! ([`RedbStore`], `on_redb::*`) and the Redis one ([`RedisStore`] on a
//! `redis-server` of the test's own, `on_redis::*`); then what only one of
//! them does (`redb_only`, `redis_only`).

use std::path::Path;
use std::time::Duration;

use tandem_proto::DeviceId;

use super::{
    AddrKey, FRAME_COST_BYTES, LIVE_ALLOWANCE_BYTES, NewFrame, QueueLimits, RedbStore, RedisStore,
    RouteLimits, Store, StoreError,
};

mod redb_only;
mod redis_only;
#[path = "../../../tests/support/redis.rs"]
pub(crate) mod redis_server;

use self::redis_server::RedisServer;

const LIMITS: QueueLimits = QueueLimits {
    max_frames: 1000,
    max_bytes: 1 << 20,
    ttl_secs: 60,
    total_max_bytes: 1 << 30,
    overflow_max_bytes: 64 << 20,
    sender_share_percent: 100,
};

const ROUTES: RouteLimits = RouteLimits { pending_ttl_secs: 3600, max_pending_per_ip: 1024 };

/// The time the tests' store is opened at.
const OPENED: u64 = 1000;

fn dev(n: u8) -> DeviceId {
    DeviceId([n; 16])
}

/// The client address 10.0.0.n.
fn ip(n: u8) -> AddrKey {
    AddrKey::from_ip(std::net::IpAddr::from([10, 0, 0, n]))
}

/// The address the tests' devices send from unless told otherwise.
fn home() -> AddrKey {
    ip(1)
}

/// A frame from `from` (at [`home`]) for `to`.
fn frame(to: DeviceId, from: DeviceId, payload: Vec<u8>) -> NewFrame {
    NewFrame { to, from, addr: home(), payload: payload.into() }
}

const COST: usize = FRAME_COST_BYTES as usize;

/// A backend under test: every store it opens sees the same state (a
/// reopen of the embedded store's file, a new connection to the same Redis
/// server and prefix).
trait Backend {
    type S: Store;
    /// A store on this backend's state.
    async fn open_full(&self, limits: QueueLimits, routes: RouteLimits, now: u64) -> Self::S;
    /// How far ids move on at a reopen.
    fn reopen_skip(&self) -> u64;
    /// How many queues keep a row or key (the stores are closed).
    async fn queue_rows(&self) -> u64;
    /// The same while `s` is open (the embedded store: its frames; Redis:
    /// queue keys and the accounts' keys left behind).
    async fn queue_rows_open(&self, s: &Self::S) -> u64;

    async fn open(&self, limits: QueueLimits) -> Self::S {
        self.open_full(limits, ROUTES, OPENED).await
    }
}

/// The embedded store in a temporary directory.
struct OnRedb(tempfile::TempDir);

impl OnRedb {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }
}

impl Backend for OnRedb {
    type S = RedbStore;
    async fn open_full(&self, limits: QueueLimits, routes: RouteLimits, now: u64) -> RedbStore {
        open_full(self.0.path(), limits, routes, now).await
    }
    fn reopen_skip(&self) -> u64 {
        super::redb::SKIP
    }
    async fn queue_rows(&self) -> u64 {
        super::redb::meta_rows_in(self.0.path()).await
    }
    async fn queue_rows_open(&self, s: &RedbStore) -> u64 {
        s.totals().await.unwrap().queues.frames
    }
}

/// The Redis store on a server of its own.
struct OnRedis(RedisServer);

/// The key prefix the tests' Redis stores use.
const PREFIX: &str = "test:";

impl OnRedis {
    fn new() -> Self {
        Self(RedisServer::start())
    }
}

impl Backend for OnRedis {
    type S = RedisStore;
    async fn open_full(&self, limits: QueueLimits, routes: RouteLimits, _now: u64) -> RedisStore {
        RedisStore::connect(&self.0.url(), limits, routes, PREFIX).await.unwrap()
    }
    fn reopen_skip(&self) -> u64 {
        0
    }
    async fn queue_rows(&self) -> u64 {
        let r = self.0.command("KEYS {test}:q:*").unwrap();
        r.lines().next().and_then(|l| l.strip_prefix('*')).unwrap().parse().unwrap()
    }
    async fn queue_rows_open(&self, _: &RedisStore) -> u64 {
        // With the queues, every per-queue, per-pair and per-address count
        // must be gone too.
        let r = self.0.command("EXISTS {test}:qb {test}:qexp {test}:up {test}:ua").unwrap();
        let leftovers: u64 = r.trim().strip_prefix(':').unwrap().parse().unwrap();
        self.queue_rows().await + leftovers
    }
}

/// The shared tests, once per backend.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod on_redb {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::OnRedb::new()).await;
            })*
        }
        mod on_redis {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::OnRedis::new()).await;
            })*
        }
    };
}

suite!(
    payloads_come_back_byte_for_byte_and_empty_frames_leave_no_trace,
    ids_are_never_reused_after_a_reopen,
    a_refused_enqueue_leaves_its_id_unused,
    ids_follow_the_order_enqueues_are_called_in,
    expiry_takes_the_expired_head_of_each_queue,
    totals_follow_enqueues_acks_and_revocations,
    one_sender_fills_only_its_share_of_a_queue_and_one_address_of_the_store,
    every_frame_is_charged_its_cost_so_empty_frames_fill_the_total,
    past_the_total_only_a_connected_recipient_with_a_small_queue_gets_frames,
    past_the_total_the_store_grows_at_most_by_the_overflow,
    one_sided_authorisations_are_capped_per_address_and_expire_but_routes_do_not,
    empty_queues_keep_no_row_and_ids_never_come_again,
    reserved_ids_are_above_the_floor_and_keep_their_ids_when_written,
    a_full_queue_reserves_no_id_until_something_leaves_it,
    push_subscriptions_are_kept_replaced_removed_and_survive_a_reopen,
);

async fn push_subscriptions_are_kept_replaced_removed_and_survive_a_reopen<B: Backend>(be: B) {
    let (a, b) = (dev(1), dev(2));
    {
        let s = be.open(LIMITS).await;
        assert_eq!(s.push_subscription(a).await.unwrap(), None);
        assert!(!s.remove_push_subscription(a).await.unwrap());
        s.put_push_subscription(a, vec![1, 2, 3]).await.unwrap();
        s.put_push_subscription(a, vec![3, 0, 0xff]).await.unwrap();
        let long = vec![0xab; super::MAX_PUSH_SUBSCRIPTION];
        s.put_push_subscription(b, long.clone()).await.unwrap();
        assert_eq!(s.push_subscription(a).await.unwrap(), Some(vec![3, 0, 0xff]));
        assert_eq!(s.push_subscription(b).await.unwrap(), Some(long));
        assert!(s.remove_push_subscription(b).await.unwrap());
        assert_eq!(s.push_subscription(b).await.unwrap(), None);
        // Subscriptions are not queues: no queue row or key.
        assert_eq!(be.queue_rows_open(&s).await, 0);
    }
    let s = be.open(LIMITS).await;
    assert_eq!(s.push_subscription(a).await.unwrap(), Some(vec![3, 0, 0xff]));
    assert_eq!(s.push_subscription(b).await.unwrap(), None);
}

/// Open the embedded store in `dir`; the previous one's writer thread may
/// still be closing the file, so retry for a while.
async fn open_full(dir: &Path, limits: QueueLimits, routes: RouteLimits, now: u64) -> RedbStore {
    for _ in 0..200 {
        match RedbStore::open(dir, limits, routes, now) {
            Ok(s) => return s,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    RedbStore::open(dir, limits, routes, now).unwrap()
}

async fn route(s: &dyn Store, a: DeviceId, b: DeviceId) {
    s.authorize(a, b, home(), OPENED).await.unwrap();
    s.authorize(b, a, home(), OPENED).await.unwrap();
}

/// Queue one frame; both answers, which must agree.
async fn put(s: &dyn Store, to: DeviceId, from: DeviceId, body: &[u8]) -> u64 {
    let e = s.enqueue(frame(to, from, body.to_vec()), 1000, false);
    let placed = e.placed.await.unwrap();
    let durable = e.durable.await.unwrap();
    assert_eq!(placed, durable);
    durable
}

async fn ids_are_never_reused_after_a_reopen<B: Backend>(be: B) {
    let (a, b, c) = (dev(1), dev(2), dev(3));
    let first = {
        let s = be.open(LIMITS).await;
        route(&s, a, b).await;
        route(&s, a, c).await;
        let ids = [put(&s, b, a, b"1").await, put(&s, b, a, b"2").await];
        assert_eq!(ids[1], ids[0] + 1);
        ids[1]
    };
    // Whatever the writer may have told before a commit that a crash undid
    // lies below the next id after a reopen: the store-wide counter moved
    // on by the whole skip, for this queue and any other.
    let s = be.open(LIMITS).await;
    let next = put(&s, b, a, b"3").await;
    assert_eq!(next, first + 1 + be.reopen_skip());
    let fresh = put(&s, c, a, b"x").await;
    assert_eq!(fresh, next + 1, "ids come from one counter");
    // The frames committed before the reopen are all still there, in order.
    let q = s.fetch(b, 0, 10).await.unwrap();
    let bodies: Vec<&[u8]> = q.iter().map(|q| &q.payload[..]).collect();
    assert_eq!(bodies, [&b"1"[..], b"2", b"3"]);
}

async fn a_refused_enqueue_leaves_its_id_unused<B: Backend>(be: B) {
    let s = be.open(LIMITS).await;
    let (a, b) = (dev(1), dev(2));
    let e = s.enqueue(frame(b, a, b"no route".to_vec()), 1000, false);
    // An early id (redb) or the refusal itself (Redis answers once).
    let gap = e.placed.await.ok();
    assert_eq!(e.durable.await, Err(StoreError::NoRoute));
    assert!(s.fetch(b, 0, 10).await.unwrap().is_empty());
    route(&s, a, b).await;
    let next = put(&s, b, a, b"routed").await;
    if let Some(gap) = gap {
        assert_eq!(next, gap + 1);
    }
    let q = s.fetch(b, 0, 10).await.unwrap();
    assert_eq!(q.iter().map(|q| q.id).collect::<Vec<_>>(), [next]);
}

async fn ids_follow_the_order_enqueues_are_called_in<B: Backend>(be: B) {
    let s = be.open(LIMITS).await;
    let (a, b, c) = (dev(1), dev(2), dev(3));
    route(&s, a, c).await;
    route(&s, b, c).await;
    // Called in this order from two senders; answered in any order.
    let calls: Vec<_> = (0..200u8)
        .map(|i| s.enqueue(frame(c, if i % 2 == 0 { a } else { b }, vec![i]), 1000, false))
        .collect();
    let mut placed = Vec::new();
    for e in calls.into_iter().rev() {
        placed.push(e.placed.await.unwrap());
        e.durable.await.unwrap();
    }
    placed.reverse();
    assert!(placed.windows(2).all(|w| w[1] == w[0] + 1), "{placed:?}");
    let q = s.fetch(c, 0, 500).await.unwrap();
    assert_eq!(q.iter().map(|q| q.payload[0]).collect::<Vec<_>>(), (0..200u8).collect::<Vec<_>>());
}

async fn expiry_takes_the_expired_head_of_each_queue<B: Backend>(be: B) {
    let s = be.open(LIMITS).await;
    let (a, b, c) = (dev(1), dev(2), dev(3));
    route(&s, a, b).await;
    route(&s, a, c).await;
    // TTL 60: queued at 1000 expires at 1060, at 2000 at 2060.
    for (to, at) in [(b, 1000), (b, 1000), (b, 2000), (c, 1000), (c, 2000)] {
        s.enqueue(frame(to, a, vec![0; 10]), at, false).durable.await.unwrap();
    }
    assert_eq!(s.expire(1059).await.unwrap().frames, 0);
    assert_eq!(s.expire(1060).await.unwrap().frames, 3);
    assert_eq!(s.depth(b).await.unwrap().frames, 1);
    assert_eq!(s.depth(c).await.unwrap().frames, 1);
    let t = s.totals().await.unwrap().queues;
    assert_eq!((t.frames, t.bytes), (2, 20));
    // After a reopen the writer knows again which queues hold frames.
    drop(s);
    let s = be.open(LIMITS).await;
    let t = s.totals().await.unwrap().queues;
    assert_eq!((t.frames, t.bytes), (2, 20));
    assert_eq!(s.expire(3000).await.unwrap().frames, 2);
    assert_eq!(s.totals().await.unwrap().queues.frames, 0);
    assert_eq!(s.depth(b).await.unwrap().frames, 0);
}

async fn totals_follow_enqueues_acks_and_revocations<B: Backend>(be: B) {
    let s = be.open(LIMITS).await;
    let (a, b, c) = (dev(1), dev(2), dev(3));
    route(&s, a, b).await;
    route(&s, a, c).await;
    for _ in 0..3 {
        put(&s, b, a, &[0; 100]).await;
    }
    let last_c = put(&s, c, a, &[0; 7]).await;
    let t = s.totals().await.unwrap().queues;
    assert_eq!((t.frames, t.bytes), (4, 307));
    assert_eq!(t.charged(), 307 + 4 * FRAME_COST_BYTES);
    s.ack(c, last_c).await.unwrap();
    let t = s.totals().await.unwrap().queues;
    assert_eq!((t.frames, t.bytes), (3, 300));
    assert_eq!(s.revoke(b, a, OPENED).await.unwrap(), 3);
    assert_eq!(s.totals().await.unwrap().queues, super::QueueDepth::default());
}

/// The durable answer to queueing `len` bytes (from [`home`]).
async fn try_put(
    s: &dyn Store,
    to: DeviceId,
    from: DeviceId,
    len: usize,
    live: bool,
) -> Result<u64, StoreError> {
    try_put_from(s, to, from, home(), len, live).await
}

/// The durable answer to queueing `len` bytes from `addr`.
async fn try_put_from(
    s: &dyn Store,
    to: DeviceId,
    from: DeviceId,
    addr: AddrKey,
    len: usize,
    live: bool,
) -> Result<u64, StoreError> {
    s.enqueue(NewFrame { to, from, addr, payload: vec![7; len].into() }, 1000, live).durable.await
}

async fn one_sender_fills_only_its_share_of_a_queue_and_one_address_of_the_store<B: Backend>(
    be: B,
) {
    // Queues of 1 000 bytes (each frame charged its payload plus the cost),
    // 4 000 bytes in all; a sender may fill half of a queue, an address
    // half of the total.
    let limits =
        QueueLimits { max_bytes: 1000, total_max_bytes: 4000, sender_share_percent: 50, ..LIMITS };
    let s = be.open(limits).await;
    let (a, b, c) = (dev(1), dev(2), dev(3));
    route(&s, a, c).await;
    route(&s, b, c).await;
    // a may fill 500 bytes of c's queue; b still gets in.
    try_put(&s, c, a, 500 - COST, false).await.unwrap();
    assert_eq!(try_put(&s, c, a, 0, false).await, Err(StoreError::SenderShareFull));
    try_put(&s, c, b, 500 - COST, false).await.unwrap();
    assert_eq!(try_put(&s, c, b, 0, false).await, Err(StoreError::QueueFull(c)));
    // An ack gives a's share back.
    let first = s.fetch(c, 0, 1).await.unwrap()[0].id;
    assert_eq!(s.ack(c, first).await.unwrap(), 1);
    try_put(&s, c, a, 500 - COST, false).await.unwrap();
    // Across queues: the address (10.0.0.1, which a and b share) may hold
    // half of the 4 000 bytes, whatever keys it uses.
    let targets: Vec<DeviceId> = (10..14).map(dev).collect();
    let keys: Vec<DeviceId> = (20..24).map(dev).collect();
    for (t, k) in targets.iter().zip(&keys) {
        route(&s, *k, *t).await;
    }
    try_put(&s, targets[0], keys[0], 500 - COST, false).await.unwrap();
    try_put(&s, targets[1], keys[1], 500 - COST, false).await.unwrap();
    assert_eq!(
        try_put(&s, targets[2], keys[2], 0, false).await,
        Err(StoreError::AddressShareFull),
        "a fresh key on the same address"
    );
    // Another address is not held back by it.
    try_put_from(&s, targets[3], keys[3], ip(2), 500 - COST, false).await.unwrap();
    // The share is rebuilt from the queues when the store opens again.
    drop(s);
    let s = be.open(limits).await;
    assert_eq!(try_put(&s, targets[2], keys[2], 0, false).await, Err(StoreError::AddressShareFull));
    assert_eq!(s.revoke(keys[0], targets[0], OPENED).await.unwrap(), 1);
    try_put(&s, targets[2], keys[2], 500 - COST, false).await.unwrap();
}

async fn every_frame_is_charged_its_cost_so_empty_frames_fill_the_total<B: Backend>(be: B) {
    let limits =
        QueueLimits { total_max_bytes: 10 * FRAME_COST_BYTES, sender_share_percent: 100, ..LIMITS };
    let s = be.open(limits).await;
    let (a, b) = (dev(1), dev(2));
    route(&s, a, b).await;
    for _ in 0..10 {
        try_put(&s, b, a, 0, false).await.unwrap();
    }
    assert_eq!(try_put(&s, b, a, 0, false).await, Err(StoreError::AddressShareFull));
    assert_eq!(try_put_from(&s, b, a, ip(2), 0, false).await, Err(StoreError::StorageFull));
    let t = s.totals().await.unwrap().queues;
    assert_eq!((t.frames, t.bytes, t.charged()), (10, 0, 10 * FRAME_COST_BYTES));
}

async fn past_the_total_only_a_connected_recipient_with_a_small_queue_gets_frames<B: Backend>(
    be: B,
) {
    let mib = usize::try_from(LIVE_ALLOWANCE_BYTES).unwrap();
    let limits = QueueLimits {
        max_bytes: 4 * LIVE_ALLOWANCE_BYTES,
        total_max_bytes: 3 * LIVE_ALLOWANCE_BYTES,
        sender_share_percent: 100,
        ..LIMITS
    };
    let s = be.open(limits).await;
    let (a, b, c, d) = (dev(1), dev(2), dev(3), dev(4));
    route(&s, a, b).await;
    route(&s, c, d).await;
    for _ in 0..3 {
        try_put(&s, b, a, mib - COST, false).await.unwrap();
    }
    // Full: an offline recipient gets nothing more (c sends from another
    // address than a) ...
    let other = ip(2);
    assert_eq!(try_put_from(&s, d, c, other, 0, false).await, Err(StoreError::StorageFull));
    // ... a connected one with a small queue does, up to the allowance.
    try_put_from(&s, d, c, other, mib - 10 - 2 * COST, true).await.unwrap();
    try_put_from(&s, d, c, other, 10, true).await.unwrap();
    assert_eq!(try_put_from(&s, d, c, other, 0, true).await, Err(StoreError::StorageFull));
    // Acknowledged frames make room again.
    let last = s.fetch(d, 0, 10).await.unwrap().last().unwrap().id;
    s.ack(d, last).await.unwrap();
    try_put_from(&s, d, c, other, 100, true).await.unwrap();
    let last = s.fetch(b, 0, 10).await.unwrap().last().unwrap().id;
    s.ack(b, last).await.unwrap();
    try_put_from(&s, d, c, other, 100, false).await.unwrap();
}

/// Review r1: the live allowance was checked per recipient only, and its
/// frames stay when the recipient leaves, so fresh recipient keys grew the
/// store past the total without bound. Now everything past the total is
/// bounded by the overflow in all, and by its share of the overflow per
/// sender address.
async fn past_the_total_the_store_grows_at_most_by_the_overflow<B: Backend>(be: B) {
    let chunk = 64 * 1024 - COST;
    let limits = QueueLimits {
        max_bytes: 4 * LIVE_ALLOWANCE_BYTES,
        total_max_bytes: LIVE_ALLOWANCE_BYTES,
        overflow_max_bytes: LIVE_ALLOWANCE_BYTES / 2,
        sender_share_percent: 50,
        ..LIMITS
    };
    let s = be.open(limits).await;
    // Two addresses fill the total (each its half).
    for n in 0..2u8 {
        let (from, to) = (dev(100 + n), dev(110 + n));
        route(&s, from, to).await;
        for _ in 0..8 {
            try_put_from(&s, to, from, ip(100 + n), chunk, false).await.unwrap();
        }
    }
    assert_eq!(
        try_put_from(&s, dev(110), dev(100), ip(100), 0, true).await,
        Err(StoreError::AddressShareFull)
    );
    // Fresh recipient keys, each "connected" with an empty queue, from
    // fresh addresses: each address gets half the overflow, then the
    // overflow is full for everyone.
    let mut taken = [0u64; 3];
    for n in 0..3u8 {
        for k in 0..16u8 {
            let (from, to) = (dev(20 + n), dev(30 + 16 * n + k));
            route(&s, from, to).await;
            loop {
                match try_put_from(&s, to, from, ip(50 + n), chunk, true).await {
                    Ok(_) => taken[usize::from(n)] += 1,
                    Err(StoreError::OverflowFull) => break,
                    Err(e) => panic!("{e:?}"),
                }
            }
        }
    }
    assert_eq!(taken, [4, 4, 0], "half the overflow each for two addresses, then none");
    let total = s.totals().await.unwrap().queues.charged();
    assert_eq!(total, limits.total_max_bytes + limits.overflow_max_bytes);
    // Rebuilt after a reopen: still nothing past the overflow.
    drop(s);
    let s = be.open(limits).await;
    let (from, to) = (dev(90), dev(91));
    route(&s, from, to).await;
    assert_eq!(try_put_from(&s, to, from, ip(9), 0, true).await, Err(StoreError::OverflowFull));
    assert_eq!(try_put_from(&s, to, from, ip(9), 0, false).await, Err(StoreError::StorageFull));
}

async fn one_sided_authorisations_are_capped_per_address_and_expire_but_routes_do_not<
    B: Backend,
>(
    be: B,
) {
    let routes = RouteLimits { pending_ttl_secs: 100, max_pending_per_ip: 3 };
    let s = be.open_full(LIMITS, routes, OPENED).await;
    let (a, b, c, d, e) = (dev(1), dev(2), dev(3), dev(4), dev(5));
    // 10.0.0.1 authorises three peers that never answer; the fourth is refused.
    for peer in [b, c, d] {
        s.authorize(a, peer, ip(1), 1000).await.unwrap();
    }
    assert_eq!(s.authorize(a, e, ip(1), 1000).await, Err(StoreError::TooManyPending));
    // Authorising again changes nothing; another address is not held back.
    s.authorize(a, b, ip(1), 1001).await.unwrap();
    s.authorize(e, a, ip(2), 1010).await.unwrap();
    assert_eq!(s.totals().await.unwrap().pending_authorizations, 4);
    // b answers: a route, and a's address has room for one more again.
    s.authorize(b, a, ip(2), 1020).await.unwrap();
    assert!(s.is_route(a, b).await.unwrap());
    s.authorize(a, e, ip(1), 1030).await.unwrap();
    assert!(s.is_route(a, e).await.unwrap());
    assert_eq!(s.totals().await.unwrap().pending_authorizations, 2, "a→c, a→d");
    // The counts are rebuilt when the store opens.
    drop(s);
    let s = be.open_full(LIMITS, routes, OPENED).await;
    assert_eq!(s.totals().await.unwrap().pending_authorizations, 2);
    let f = dev(6);
    s.authorize(a, f, ip(1), 1040).await.unwrap();
    assert_eq!(s.authorize(a, dev(7), ip(1), 1040).await, Err(StoreError::TooManyPending));
    // The TTL passes for the first two: they go, the routes stay.
    let x = s.expire(1100).await.unwrap();
    assert_eq!(x.authorizations, 2);
    assert_eq!(s.totals().await.unwrap().pending_authorizations, 1, "a→f is younger");
    assert!(s.is_route(a, b).await.unwrap() && s.is_route(a, e).await.unwrap());
    // c authorising a now makes no route: a's consent is gone.
    s.authorize(c, a, ip(3), 1101).await.unwrap();
    assert!(!s.is_route(a, c).await.unwrap());
    // Much later, the routes are still there; a→f and c→a are gone.
    assert_eq!(s.expire(1_000_000).await.unwrap().authorizations, 2);
    assert!(s.is_route(a, b).await.unwrap() && s.is_route(a, e).await.unwrap());
    assert_eq!(s.totals().await.unwrap().pending_authorizations, 0);
    assert_eq!(s.peers(a).await.unwrap().len(), 2);
    // A revocation leaves the other side's authorisation one-sided: it
    // expires a TTL after the revocation.
    assert_eq!(s.revoke(b, a, 2_000_000).await.unwrap(), 0);
    assert_eq!(s.totals().await.unwrap().pending_authorizations, 1);
    assert_eq!(s.expire(2_000_099).await.unwrap().authorizations, 0);
    assert_eq!(s.expire(2_000_100).await.unwrap().authorizations, 1);
    s.authorize(b, a, ip(2), 2_000_101).await.unwrap();
    assert!(!s.is_route(a, b).await.unwrap(), "a's side expired");
}

/// Only queues that hold frames have a metadata row (deleted when they
/// empty), the counter is one row, and ids keep increasing per recipient
/// all the same, also after a reopen.
async fn empty_queues_keep_no_row_and_ids_never_come_again<B: Backend>(be: B) {
    let (a, b, c) = (dev(1), dev(2), dev(3));
    let s = be.open(LIMITS).await;
    route(&s, a, b).await;
    route(&s, a, c).await;
    let mut last = 0;
    for _ in 0..5 {
        last = put(&s, b, a, b"x").await;
    }
    s.ack(b, last).await.unwrap();
    s.enqueue(frame(c, a, b"kept".to_vec()), 1500, false).durable.await.unwrap();
    let next = put(&s, b, a, b"y").await;
    assert!(next > last, "{next} after {last}");
    s.ack(b, next).await.unwrap();
    drop(s);
    assert_eq!(be.queue_rows().await, 1, "only c's queue holds frames");
    let s = be.open(LIMITS).await;
    let again = put(&s, b, a, b"w").await;
    assert!(again > next, "{again} after {next}");
    assert_eq!(s.fetch(c, 0, 10).await.unwrap()[0].payload, b"kept".to_vec());
}

/// Any bytes (NUL, CR LF, invalid UTF-8, 64 KiB) come back as they went
/// in; frames without payload are acknowledged and revoked away, leaving
/// every count at zero.
async fn payloads_come_back_byte_for_byte_and_empty_frames_leave_no_trace<B: Backend>(be: B) {
    let s = be.open(LIMITS).await;
    let (a, b, c) = (dev(1), dev(2), dev(3));
    route(&s, a, b).await;
    route(&s, c, b).await;
    let all: Vec<u8> = (0..=255u8).collect();
    let big: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let bodies = [all, Vec::new(), b"\r\n$-1\r\n".to_vec(), big, vec![0xff, 0xfe, 0]];
    for body in &bodies {
        put(&s, b, a, body).await;
    }
    let q = s.fetch(b, 0, 10).await.unwrap();
    assert_eq!(q.iter().map(|q| q.payload.clone()).collect::<Vec<_>>(), bodies);
    assert!(q.iter().all(|q| q.from == a));
    // Fetches from past an id, with a limit.
    let tail = s.fetch(b, q[1].id, 2).await.unwrap();
    assert_eq!(tail.iter().map(|t| t.id).collect::<Vec<_>>(), [q[2].id, q[3].id]);
    assert!(s.fetch(b, u64::MAX, 10).await.unwrap().is_empty());
    assert!(s.fetch(b, 0, 0).await.unwrap().is_empty());
    // Empty frames from two senders: acked, and revoked.
    for _ in 0..3 {
        put(&s, b, a, b"").await;
        put(&s, b, c, b"").await;
    }
    assert_eq!(s.ack(b, q[4].id).await.unwrap(), 5);
    assert_eq!(s.ack(b, q[4].id).await.unwrap(), 0, "acknowledging again deletes nothing");
    assert_eq!(s.revoke(a, b, 2000).await.unwrap(), 3);
    assert_eq!(s.depth(b).await.unwrap(), super::QueueDepth { frames: 3, bytes: 0 });
    assert_eq!(s.ack(b, u64::MAX).await.unwrap(), 3);
    let t = s.totals().await.unwrap();
    assert_eq!(t.queues, super::QueueDepth::default());
    // b's side of the revoked route is one-sided now.
    assert_eq!(t.pending_authorizations, 1);
    assert_eq!(s.peers(b).await.unwrap(), [c]);
    assert_eq!(be.queue_rows_open(&s).await, 0);
}

/// An id for `to` above `above` (the Redis store leases its ids in the
/// background: the first calls find none at hand).
pub(crate) async fn reserve(s: &dyn Store, to: DeviceId, above: u64) -> super::Reserved {
    for _ in 0..400 {
        match s.reserve_id(to, above) {
            Ok(r) => return r,
            Err(StoreError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(e) => panic!("no id reserved: {e}"),
        }
    }
    panic!("no id reserved within 2 s");
}

async fn reserved_ids_are_above_the_floor_and_keep_their_ids_when_written<B: Backend>(be: B) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let s = be.open(LIMITS).await;
    let (a, b, c) = (dev(1), dev(2), dev(3));
    route(&s, a, b).await;
    let mark = Arc::new(AtomicU64::new(0));
    assert!(s.watch(b, Some(mark.clone())));
    let first = reserve(&s, b, 0).await;
    let second = reserve(&s, b, first.id).await;
    assert!(second.id > first.id);
    // Never at or below the floor (the embedded store's ids are all above
    // any it handed out; the Redis store skips ahead in its block).
    let third = reserve(&s, b, second.id).await;
    assert!(third.id > second.id);
    assert!(s.reserve_id(b, u64::MAX - 1).is_err(), "no id above the highest");
    // Written later, in one call: they keep their ids.
    let held = vec![
        (first.id, frame(b, a, b"one".to_vec())),
        (second.id, frame(b, a, b"two".to_vec())),
        (third.id, frame(b, a, b"three".to_vec())),
    ];
    let r = s.enqueue_reserved(held, 1000, 0).await.unwrap();
    assert_eq!(r, vec![Ok(first.id), Ok(second.id), Ok(third.id)]);
    // A frame stored meanwhile: the watched mark, or the next reserved
    // id's `below`, tells the reader to read the store through it first.
    let stored = put(&s, b, a, b"stored").await;
    assert!(stored > third.id);
    let next = reserve(&s, b, stored).await;
    assert!(next.id > stored);
    assert!(
        mark.load(Ordering::Acquire).max(next.below) >= stored,
        "the reader learns of {stored} before it delivers {}",
        next.id
    );
    let r = s.enqueue_reserved(vec![(next.id, frame(b, a, b"four".to_vec()))], 1000, 0).await;
    assert_eq!(r.unwrap(), vec![Ok(next.id)]);
    let q = s.fetch(b, 0, 10).await.unwrap();
    let got: Vec<(u64, &[u8])> = q.iter().map(|q| (q.id, &q.payload[..])).collect();
    let want: Vec<(u64, &[u8])> = vec![
        (first.id, b"one"),
        (second.id, b"two"),
        (third.id, b"three"),
        (stored, b"stored"),
        (next.id, b"four"),
    ];
    assert_eq!(got, want);
    // Charged like enqueued frames; acknowledged the same way.
    assert_eq!(s.depth(b).await.unwrap().frames, 5);
    assert_eq!(s.ack(b, next.id).await.unwrap(), 5);
    // A reserved frame without a route is refused like an enqueue.
    let id = reserve(&s, c, 0).await.id;
    let r = s.enqueue_reserved(vec![(id, frame(c, a, b"x".to_vec()))], 1000, 0).await.unwrap();
    assert_eq!(r, vec![Err(StoreError::NoRoute)]);
    assert_eq!(be.queue_rows_open(&s).await, 0);
}

async fn a_full_queue_reserves_no_id_until_something_leaves_it<B: Backend>(be: B) {
    let s = be.open(QueueLimits { max_frames: 2, ..LIMITS }).await;
    let (a, b) = (dev(1), dev(2));
    route(&s, a, b).await;
    reserve(&s, b, 0).await;
    put(&s, b, a, b"1").await;
    let two = put(&s, b, a, b"2").await;
    let e = s.enqueue(frame(b, a, b"3".to_vec()), 1000, true);
    assert_eq!(e.durable.await, Err(StoreError::QueueFull(b)));
    assert_eq!(s.reserve_id(b, 0).map(|r| r.id), Err(StoreError::QueueFull(b)));
    // Another recipient is not affected.
    reserve(&s, dev(3), 0).await;
    assert_eq!(s.ack(b, two).await.unwrap(), 2);
    reserve(&s, b, two).await;
}
