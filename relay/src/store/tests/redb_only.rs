//! What only the embedded store does: ids told before their commit (and
//! a full queue's told only once stored), the skip of the id counter at
//! every open, the previous layout's upgrade, the writer queue's bound, and
//! reserved ids.

use std::path::Path;

use super::super::redb::SKIP;
use super::{LIMITS, OPENED, QueueLimits, ROUTES, RedbStore, RouteLimits, Store, StoreError};
use super::{dev, frame, home, open_full, put, route};
use tandem_proto::DeviceId;

async fn open(dir: &Path) -> RedbStore {
    open_with(dir, LIMITS).await
}

async fn open_with(dir: &Path, limits: QueueLimits) -> RedbStore {
    open_full(dir, limits, ROUTES, OPENED).await
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
    super::super::redb::old_layout::write(
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
    use super::super::WRITER_QUEUE;
    use super::super::redb::MAX_BATCH;
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
    let held = s.reserve_id(b, 0).unwrap().id;
    let stored = put(&s, b, a, b"stored").await;
    assert!(stored > held);
    let seen = mark.load(std::sync::atomic::Ordering::Acquire);
    assert!(seen >= stored, "the watched queue's mark follows its enqueues");
    // Written after a higher id was stored: it keeps its id, and the queue
    // reads in id order.
    let r = s.enqueue_reserved(vec![(held, frame(b, a, b"held".to_vec()))], 1000, 0).await.unwrap();
    assert_eq!(r, vec![Ok(held)]);
    let q = s.fetch(b, 0, 10).await.unwrap();
    let got: Vec<(u64, &[u8])> = q.iter().map(|q| (q.id, &q.payload[..])).collect();
    assert_eq!(got, vec![(held, &b"held"[..]), (stored, b"stored")]);
    // A reserved frame without a route is refused like an enqueue.
    let c = dev(3);
    let id = s.reserve_id(c, 0).unwrap().id;
    let r = s.enqueue_reserved(vec![(id, frame(c, a, b"x".to_vec()))], 1000, 0).await.unwrap();
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
            last = s.reserve_id(b, 0).unwrap().id;
        }
        // Applied (and committed) after the saves.
        s.depth(b).await.unwrap();
        last
    };
    let s = open(dir.path()).await;
    let next = put(&s, b, a, b"reopened").await;
    assert!(next > last, "{next} after {last}");
}
