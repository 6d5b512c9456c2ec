//! The embedded store through the [`Store`] trait: ids handed out before a
//! commit are never handed out again, full queues, acknowledgements and
//! expiry.

use std::path::Path;
use std::time::Duration;

use tandem_proto::DeviceId;

use super::redb::SKIP;
use super::{
    AddrKey, FRAME_COST_BYTES, LIVE_ALLOWANCE_BYTES, NewFrame, QueueLimits, RedbStore, RouteLimits,
    Store, StoreError,
};

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

/// Open the store in `dir`; the previous one's writer thread may still be
/// closing the file, so retry for a while.
async fn open(dir: &Path) -> RedbStore {
    open_with(dir, LIMITS).await
}

async fn open_with(dir: &Path, limits: QueueLimits) -> RedbStore {
    open_full(dir, limits, ROUTES, OPENED).await
}

async fn open_full(dir: &Path, limits: QueueLimits, routes: RouteLimits, now: u64) -> RedbStore {
    for _ in 0..200 {
        match RedbStore::open(dir, limits, routes, now) {
            Ok(s) => return s,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    RedbStore::open(dir, limits, routes, now).unwrap()
}

async fn route(s: &RedbStore, a: DeviceId, b: DeviceId) {
    s.authorize(a, b, home(), OPENED).await.unwrap();
    s.authorize(b, a, home(), OPENED).await.unwrap();
}

/// Queue one frame; both answers, which must agree.
async fn put(s: &RedbStore, to: DeviceId, from: DeviceId, body: &[u8]) -> u64 {
    let e = s.enqueue(frame(to, from, body.to_vec()), 1000, false);
    let placed = e.placed.await.unwrap();
    let durable = e.durable.await.unwrap();
    assert_eq!(placed, durable);
    durable
}

#[tokio::test]
async fn ids_are_never_reused_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (dev(1), dev(2), dev(3));
    let first = {
        let s = open(dir.path()).await;
        route(&s, a, b).await;
        route(&s, a, c).await;
        let ids = [put(&s, b, a, b"1").await, put(&s, b, a, b"2").await];
        assert_eq!(ids[1], ids[0] + 1);
        ids[1]
    };
    // Whatever the writer may have told before a commit that a crash undid
    // lies below the next id after a reopen: the store-wide counter moved
    // on by the whole skip, for this queue and any other.
    let s = open(dir.path()).await;
    let next = put(&s, b, a, b"3").await;
    assert_eq!(next, first + 1 + SKIP);
    let fresh = put(&s, c, a, b"x").await;
    assert_eq!(fresh, next + 1, "ids come from one counter");
    // The frames committed before the reopen are all still there, in order.
    let q = s.fetch(b, 0, 10).await.unwrap();
    let bodies: Vec<&[u8]> = q.iter().map(|q| &q.payload[..]).collect();
    assert_eq!(bodies, [&b"1"[..], b"2", b"3"]);
}

#[tokio::test]
async fn a_refused_enqueue_leaves_its_id_unused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    let (a, b) = (dev(1), dev(2));
    let e = s.enqueue(frame(b, a, b"no route".to_vec()), 1000, false);
    let gap = e.placed.await.unwrap();
    assert_eq!(e.durable.await, Err(StoreError::NoRoute));
    assert!(s.fetch(b, 0, 10).await.unwrap().is_empty());
    route(&s, a, b).await;
    let next = put(&s, b, a, b"routed").await;
    assert_eq!(next, gap + 1);
    let q = s.fetch(b, 0, 10).await.unwrap();
    assert_eq!(q.iter().map(|q| q.id).collect::<Vec<_>>(), [next]);
}

#[tokio::test]
async fn ids_follow_the_order_enqueues_are_called_in() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
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

#[tokio::test]
async fn refused_ids_are_spent_and_a_full_queue_tells_no_id_early() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dev(1), dev(2));
    let one = QueueLimits { max_frames: 1, ..LIMITS };
    let last = {
        let s = open_with(dir.path(), one).await;
        route(&s, a, b).await;
        put(&s, b, a, b"1").await;
        // The first refusal was told its id early (nobody knew the queue
        // was full); later ones are not, until something leaves the queue.
        let e = s.enqueue(frame(b, a, b"full".to_vec()), 1000, false);
        let mut last = e.placed.await.unwrap();
        assert!(matches!(e.durable.await, Err(StoreError::QueueFull(_))));
        for _ in 0..4 {
            let e = s.enqueue(frame(b, a, b"full".to_vec()), 1000, false);
            assert!(e.placed.await.is_err(), "an id told early for a full queue");
            assert!(matches!(e.durable.await, Err(StoreError::QueueFull(_))));
            last += 1;
        }
        assert_eq!(s.ack(b, u64::MAX).await.unwrap(), 1);
        let e = s.enqueue(frame(b, a, b"2".to_vec()), 1000, false);
        assert_eq!(e.placed.await.unwrap(), last + 1, "early again after the ack");
        e.durable.await.unwrap()
    };
    // Every id handed out, refused or not, is below the next one after a
    // reopen by the whole skip.
    let s = open(dir.path()).await;
    s.ack(b, u64::MAX).await.unwrap();
    assert_eq!(put(&s, b, a, b"3").await, last + 1 + SKIP);
}

#[tokio::test]
async fn expiry_takes_the_expired_head_of_each_queue() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
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
    let s = open(dir.path()).await;
    let t = s.totals().await.unwrap().queues;
    assert_eq!((t.frames, t.bytes), (2, 20));
    assert_eq!(s.expire(3000).await.unwrap().frames, 2);
    assert_eq!(s.totals().await.unwrap().queues.frames, 0);
    assert_eq!(s.depth(b).await.unwrap().frames, 0);
}

#[tokio::test]
async fn totals_follow_enqueues_acks_and_revocations() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
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
    s: &RedbStore,
    to: DeviceId,
    from: DeviceId,
    len: usize,
    live: bool,
) -> Result<u64, StoreError> {
    try_put_from(s, to, from, home(), len, live).await
}

/// The durable answer to queueing `len` bytes from `addr`.
async fn try_put_from(
    s: &RedbStore,
    to: DeviceId,
    from: DeviceId,
    addr: AddrKey,
    len: usize,
    live: bool,
) -> Result<u64, StoreError> {
    s.enqueue(NewFrame { to, from, addr, payload: vec![7; len].into() }, 1000, live).durable.await
}

#[tokio::test]
async fn one_sender_fills_only_its_share_of_a_queue_and_one_address_of_the_store() {
    let dir = tempfile::tempdir().unwrap();
    // Queues of 1 000 bytes (each frame charged its payload plus the cost),
    // 4 000 bytes in all; a sender may fill half of a queue, an address
    // half of the total.
    let limits =
        QueueLimits { max_bytes: 1000, total_max_bytes: 4000, sender_share_percent: 50, ..LIMITS };
    let s = open_with(dir.path(), limits).await;
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
    let s = open_with(dir.path(), limits).await;
    assert_eq!(try_put(&s, targets[2], keys[2], 0, false).await, Err(StoreError::AddressShareFull));
    assert_eq!(s.revoke(keys[0], targets[0], OPENED).await.unwrap(), 1);
    try_put(&s, targets[2], keys[2], 500 - COST, false).await.unwrap();
}

#[tokio::test]
async fn every_frame_is_charged_its_cost_so_empty_frames_fill_the_total() {
    let dir = tempfile::tempdir().unwrap();
    let limits =
        QueueLimits { total_max_bytes: 10 * FRAME_COST_BYTES, sender_share_percent: 100, ..LIMITS };
    let s = open_with(dir.path(), limits).await;
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

#[tokio::test]
async fn past_the_total_only_a_connected_recipient_with_a_small_queue_gets_frames() {
    let dir = tempfile::tempdir().unwrap();
    let mib = usize::try_from(LIVE_ALLOWANCE_BYTES).unwrap();
    let limits = QueueLimits {
        max_bytes: 4 * LIVE_ALLOWANCE_BYTES,
        total_max_bytes: 3 * LIVE_ALLOWANCE_BYTES,
        sender_share_percent: 100,
        ..LIMITS
    };
    let s = open_with(dir.path(), limits).await;
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
#[tokio::test]
async fn past_the_total_the_store_grows_at_most_by_the_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let chunk = 64 * 1024 - COST;
    let limits = QueueLimits {
        max_bytes: 4 * LIVE_ALLOWANCE_BYTES,
        total_max_bytes: LIVE_ALLOWANCE_BYTES,
        overflow_max_bytes: LIVE_ALLOWANCE_BYTES / 2,
        sender_share_percent: 50,
        ..LIMITS
    };
    let s = open_with(dir.path(), limits).await;
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
    let s = open_with(dir.path(), limits).await;
    let (from, to) = (dev(90), dev(91));
    route(&s, from, to).await;
    assert_eq!(try_put_from(&s, to, from, ip(9), 0, true).await, Err(StoreError::OverflowFull));
    assert_eq!(try_put_from(&s, to, from, ip(9), 0, false).await, Err(StoreError::StorageFull));
}

#[tokio::test]
async fn one_sided_authorisations_are_capped_per_address_and_expire_but_routes_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let routes = RouteLimits { pending_ttl_secs: 100, max_pending_per_ip: 3 };
    let s = open_full(dir.path(), LIMITS, routes, OPENED).await;
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
    let s = open_full(dir.path(), LIMITS, routes, OPENED).await;
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
#[tokio::test]
async fn empty_queues_keep_no_row_and_ids_never_come_again() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (dev(1), dev(2), dev(3));
    let s = open(dir.path()).await;
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
    assert_eq!(super::redb::meta_rows_in(dir.path()).await, 1, "only c's queue holds frames");
    let s = open(dir.path()).await;
    let again = put(&s, b, a, b"w").await;
    assert!(again > next, "{again} after {next}");
    assert_eq!(s.fetch(c, 0, 10).await.unwrap()[0].payload, b"kept".to_vec());
}

/// A store written by the code before review r1 (its layout: frames
/// without an address, authorisations without a time) opens with its
/// frames, ids and routes; the old rows count in the totals, and a
/// one-sided authorisation among them expires a TTL after the upgrade.
#[tokio::test]
async fn a_store_of_the_previous_layout_keeps_its_queues_and_routes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (dev(1), dev(2), dev(3));
    let frames = vec![
        (b, 7, a, 5000, b"one".to_vec()),
        (b, 8, a, 5000, b"two".to_vec()),
        (c, 3, a, 5000, vec![0; 100]),
    ];
    super::redb::old_layout::write(
        &dir.path().join("relay.redb"),
        &frames,
        &[(a, b), (b, a), (a, c)],
    )
    .unwrap();
    let routes = RouteLimits { pending_ttl_secs: 100, max_pending_per_ip: 1 };
    let s = open_full(dir.path(), LIMITS, routes, 10_000).await;
    let q = s.fetch(b, 0, 10).await.unwrap();
    let got: Vec<(u64, DeviceId, &[u8])> =
        q.iter().map(|q| (q.id, q.from, &q.payload[..])).collect();
    assert_eq!(got, [(7, a, &b"one"[..]), (8, a, &b"two"[..])]);
    assert!(s.is_route(a, b).await.unwrap());
    assert!(!s.is_route(a, c).await.unwrap());
    let t = s.totals().await.unwrap();
    assert_eq!((t.queues.frames, t.queues.bytes, t.pending_authorizations), (3, 106, 1));
    // Ids go on past the old ones (and the skip at open).
    assert_eq!(put(&s, b, a, b"three").await, 9 + SKIP);
    // The old rows count under no address: 10.0.0.1 may still authorise one.
    s.authorize(dev(9), a, home(), 10_000).await.unwrap();
    // Frames of the old layout expire as before (and "three", queued at
    // 1000); the one-sided authorisation a→c a TTL after the upgrade.
    let x = s.expire(10_099).await.unwrap();
    assert_eq!((x.frames, x.authorizations), (4, 0));
    assert_eq!(s.expire(10_100).await.unwrap().authorizations, 2);
    assert!(s.is_route(a, b).await.unwrap());
    // Opened again: nothing is moved twice.
    drop(s);
    let s = open_full(dir.path(), LIMITS, routes, 20_000).await;
    assert!(s.fetch(b, 0, 10).await.unwrap().is_empty());
    assert!(s.is_route(a, b).await.unwrap());
    assert_eq!(s.totals().await.unwrap().pending_authorizations, 0);
}

/// A flood while the writer is stuck (a commit paused by the
/// `relay.commit.before` failpoint) is held to the writer's channel: at
/// most [`WRITER_QUEUE`] operations wait (and [`MAX_BATCH`] in the writer's
/// hands), every call past that is refused at once with
/// [`StoreError::Busy`], and what waited is stored once the writer goes on.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_flood_is_held_to_the_writer_queue_and_the_rest_is_refused_busy() {
    use super::WRITER_QUEUE;
    use super::redb::MAX_BATCH;
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let roomy = QueueLimits { max_frames: 1 << 20, max_bytes: 1 << 30, ..LIMITS };
    let s = open_with(dir.path(), roomy).await;
    let (a, b) = (dev(1), dev(2));
    route(&s, a, b).await;
    fail::cfg("relay.commit.before", "pause").unwrap();
    let n = WRITER_QUEUE + MAX_BATCH + 100;
    let calls: Vec<_> = (0..n).map(|_| s.enqueue(frame(b, a, vec![1]), 1000, false)).collect();
    fail::cfg("relay.commit.before", "off").unwrap();
    let (mut stored, mut busy) = (0usize, 0usize);
    for e in calls {
        match e.durable.await {
            Ok(_) => stored += 1,
            Err(StoreError::Busy) => busy += 1,
            Err(other) => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(stored <= WRITER_QUEUE + MAX_BATCH, "{stored} waited past the bound");
    assert_eq!(stored + busy, n);
    assert!(busy >= 100, "only {busy} refused");
    assert_eq!(s.depth(b).await.unwrap().frames, stored as u64);
    scenario.teardown();
}

#[tokio::test]
async fn reserved_ids_written_later_keep_them_and_are_read_in_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dev(1), dev(2));
    let s = open(dir.path()).await;
    route(&s, a, b).await;
    let mark = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    assert!(s.watch(b, Some(mark.clone())));
    let held = s.reserve_id(b).unwrap();
    let stored = put(&s, b, a, b"stored").await;
    assert!(stored > held);
    let seen = mark.load(std::sync::atomic::Ordering::Acquire);
    assert!(seen >= stored, "the watched queue's mark follows its enqueues");
    // Written after a higher id was stored: it keeps its id, and the queue
    // reads in id order.
    let r = s.enqueue_reserved(vec![(held, frame(b, a, b"held".to_vec()))], 1000).await.unwrap();
    assert_eq!(r, vec![Ok(held)]);
    let q = s.fetch(b, 0, 10).await.unwrap();
    let got: Vec<(u64, &[u8])> = q.iter().map(|q| (q.id, &q.payload[..])).collect();
    assert_eq!(got, vec![(held, &b"held"[..]), (stored, b"stored")]);
    // A reserved frame without a route is refused like an enqueue.
    let c = dev(3);
    let id = s.reserve_id(c).unwrap();
    let r = s.enqueue_reserved(vec![(id, frame(c, a, b"x".to_vec()))], 1000).await.unwrap();
    assert_eq!(r, vec![Err(StoreError::NoRoute)]);
    assert_eq!(s.stats().frames_written, 3, "1 enqueue, 2 reserved");
}

#[tokio::test]
async fn reserved_ids_that_are_never_written_are_never_handed_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dev(1), dev(2));
    let last = {
        let s = open(dir.path()).await;
        route(&s, a, b).await;
        let mut last = 0;
        // More than SKIP ids reserved and none written: without saves of
        // the counter (every SKIP / 4 ids), a reopen would move on from
        // what the open saved, below these.
        for _ in 0..SKIP + 2 {
            last = s.reserve_id(b).unwrap();
        }
        // Applied (and committed) after the saves.
        s.depth(b).await.unwrap();
        last
    };
    let s = open(dir.path()).await;
    let next = put(&s, b, a, b"reopened").await;
    assert!(next > last, "{next} after {last}");
}
