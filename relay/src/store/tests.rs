//! The embedded store through the [`Store`] trait: ids handed out before a
//! commit are never handed out again, full queues, acknowledgements and
//! expiry.

use std::path::Path;
use std::time::Duration;

use tandem_proto::DeviceId;

use super::redb::SKIP;
use super::{LIVE_ALLOWANCE_BYTES, QueueLimits, RedbStore, Store, StoreError};

const LIMITS: QueueLimits = QueueLimits {
    max_frames: 1000,
    max_bytes: 1 << 20,
    ttl_secs: 60,
    total_max_bytes: 1 << 30,
    sender_share_percent: 100,
};

fn dev(n: u8) -> DeviceId {
    DeviceId([n; 16])
}

/// Open the store in `dir`; the previous one's writer thread may still be
/// closing the file, so retry for a while.
async fn open(dir: &Path) -> RedbStore {
    open_with(dir, LIMITS).await
}

async fn open_with(dir: &Path, limits: QueueLimits) -> RedbStore {
    for _ in 0..200 {
        match RedbStore::open(dir, limits) {
            Ok(s) => return s,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    RedbStore::open(dir, limits).unwrap()
}

async fn route(s: &RedbStore, a: DeviceId, b: DeviceId) {
    s.authorize(a, b).await.unwrap();
    s.authorize(b, a).await.unwrap();
}

/// Queue one frame; both answers, which must agree.
async fn put(s: &RedbStore, to: DeviceId, from: DeviceId, body: &[u8]) -> u64 {
    let e = s.enqueue(to, from, body.to_vec(), 1000, false);
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
    // lies below the next id after a reopen, for this queue ...
    let s = open(dir.path()).await;
    let next = put(&s, b, a, b"3").await;
    assert_eq!(next, first + 1 + SKIP);
    // ... and for a queue never seen before.
    let fresh = put(&s, c, a, b"x").await;
    assert_eq!(fresh, 1 + SKIP, "a fresh queue's first id");
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
    let e = s.enqueue(b, a, b"no route".to_vec(), 1000, false);
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
        .map(|i| s.enqueue(c, if i % 2 == 0 { a } else { b }, vec![i], 1000, false))
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
        let s = RedbStore::open(dir.path(), one).unwrap();
        route(&s, a, b).await;
        put(&s, b, a, b"1").await;
        // The first refusal was told its id early (nobody knew the queue
        // was full); later ones are not, until something leaves the queue.
        let e = s.enqueue(b, a, b"full".to_vec(), 1000, false);
        let mut last = e.placed.await.unwrap();
        assert!(matches!(e.durable.await, Err(StoreError::QueueFull(_))));
        for _ in 0..4 {
            let e = s.enqueue(b, a, b"full".to_vec(), 1000, false);
            assert!(e.placed.await.is_err(), "an id told early for a full queue");
            assert!(matches!(e.durable.await, Err(StoreError::QueueFull(_))));
            last += 1;
        }
        assert_eq!(s.ack(b, u64::MAX).await.unwrap(), 1);
        let e = s.enqueue(b, a, b"2".to_vec(), 1000, false);
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
        s.enqueue(to, a, vec![0; 10], at, false).durable.await.unwrap();
    }
    assert_eq!(s.expire(1059).await.unwrap(), 0);
    assert_eq!(s.expire(1060).await.unwrap(), 3);
    assert_eq!(s.depth(b).await.unwrap().frames, 1);
    assert_eq!(s.depth(c).await.unwrap().frames, 1);
    let t = s.totals().await.unwrap();
    assert_eq!((t.frames, t.bytes), (2, 20));
    // After a reopen the writer knows again which queues hold frames.
    drop(s);
    let s = open(dir.path()).await;
    let t = s.totals().await.unwrap();
    assert_eq!((t.frames, t.bytes), (2, 20));
    assert_eq!(s.expire(3000).await.unwrap(), 2);
    assert_eq!(s.totals().await.unwrap().frames, 0);
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
    let t = s.totals().await.unwrap();
    assert_eq!((t.frames, t.bytes), (4, 307));
    s.ack(c, last_c).await.unwrap();
    let t = s.totals().await.unwrap();
    assert_eq!((t.frames, t.bytes), (3, 300));
    assert_eq!(s.revoke(b, a).await.unwrap(), 3);
    assert_eq!(s.totals().await.unwrap(), super::QueueDepth::default());
}

/// The durable answer to queueing `len` bytes.
async fn try_put(
    s: &RedbStore,
    to: DeviceId,
    from: DeviceId,
    len: usize,
    live: bool,
) -> Result<u64, StoreError> {
    s.enqueue(to, from, vec![7; len], 1000, live).durable.await
}

#[tokio::test]
async fn one_sender_fills_only_its_share_of_a_queue_and_of_the_store() {
    let dir = tempfile::tempdir().unwrap();
    // 1 000-byte queues, 4 000 bytes in all, a sender may fill half.
    let limits =
        QueueLimits { max_bytes: 1000, total_max_bytes: 4000, sender_share_percent: 50, ..LIMITS };
    let s = open_with(dir.path(), limits).await;
    let (a, b, c) = (dev(1), dev(2), dev(3));
    route(&s, a, c).await;
    route(&s, b, c).await;
    // a may fill 500 bytes of c's queue; b still gets in.
    try_put(&s, c, a, 500, false).await.unwrap();
    assert_eq!(try_put(&s, c, a, 1, false).await, Err(StoreError::SenderShareFull));
    try_put(&s, c, b, 500, false).await.unwrap();
    assert_eq!(try_put(&s, c, b, 1, false).await, Err(StoreError::QueueFull(c)));
    // An ack gives a's share back.
    let first = s.fetch(c, 0, 1).await.unwrap()[0].id;
    assert_eq!(s.ack(c, first).await.unwrap(), 1);
    try_put(&s, c, a, 500, false).await.unwrap();
    // Across queues: a may hold half of the 4 000 bytes.
    let targets: Vec<DeviceId> = (10..14).map(dev).collect();
    for t in &targets {
        route(&s, a, *t).await;
    }
    for t in &targets[..3] {
        try_put(&s, *t, a, 500, false).await.unwrap();
    }
    assert_eq!(try_put(&s, targets[3], a, 1, false).await, Err(StoreError::SenderShareFull));
    // The share is rebuilt from the queues when the store opens again.
    drop(s);
    let s = open_with(dir.path(), limits).await;
    assert_eq!(try_put(&s, targets[3], a, 1, false).await, Err(StoreError::SenderShareFull));
    assert_eq!(s.revoke(a, targets[0]).await.unwrap(), 1);
    try_put(&s, targets[3], a, 500, false).await.unwrap();
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
        try_put(&s, b, a, mib, false).await.unwrap();
    }
    // Full: an offline recipient gets nothing more ...
    assert_eq!(try_put(&s, d, c, 1, false).await, Err(StoreError::StorageFull));
    // ... a connected one with a small queue does, up to the allowance.
    try_put(&s, d, c, mib - 10, true).await.unwrap();
    try_put(&s, d, c, 10, true).await.unwrap();
    assert_eq!(try_put(&s, d, c, 1, true).await, Err(StoreError::StorageFull));
    // Acknowledged frames make room again.
    let last = s.fetch(d, 0, 10).await.unwrap().last().unwrap().id;
    s.ack(d, last).await.unwrap();
    try_put(&s, d, c, 100, true).await.unwrap();
    let last = s.fetch(b, 0, 10).await.unwrap().last().unwrap().id;
    s.ack(b, last).await.unwrap();
    try_put(&s, d, c, 100, false).await.unwrap();
}
