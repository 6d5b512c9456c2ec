//! The Redis store from outside the crate (`tandem_relay::store::RedisStore`)
//! on a `redis-server` of the test's own (`support/redis.rs`, which the
//! multi-node tests share): two stores standing for two relay nodes see one
//! queue, one epoch, and a Redis restart under them.

mod support {
    pub mod redis;
}

use std::time::{Duration, Instant};

use support::redis::RedisServer;
use tandem_proto::DeviceId;
use tandem_relay::store::{
    AddrKey, NewFrame, QueueLimits, REDIS_DEFAULT_PREFIX, RedisStore, RouteLimits, Store,
};

const LIMITS: QueueLimits = QueueLimits {
    max_frames: 100,
    max_bytes: 1 << 20,
    ttl_secs: 60,
    total_max_bytes: 1 << 30,
    overflow_max_bytes: 1 << 20,
    sender_share_percent: 100,
};
const ROUTES: RouteLimits = RouteLimits { pending_ttl_secs: 60, max_pending_per_ip: 16 };

#[tokio::test]
async fn two_nodes_share_a_queue_and_follow_a_redis_restart_to_a_new_epoch() {
    let mut server = RedisServer::start();
    let url = server.url();
    let node = || RedisStore::connect(&url, LIMITS, ROUTES, REDIS_DEFAULT_PREFIX);
    let (n1, n2) = (node().await.unwrap(), node().await.unwrap());
    assert_eq!(n1.epoch(), n2.epoch());
    let (phone, desktop) = (DeviceId([1; 16]), DeviceId([2; 16]));
    let addr = AddrKey::from_ip([127, 0, 0, 1].into());
    n1.authorize(phone, desktop, addr, 1000).await.unwrap();
    n2.authorize(desktop, phone, addr, 1000).await.unwrap();
    let frame = NewFrame { to: desktop, from: phone, addr, payload: b"task".to_vec().into() };
    let id = n1.enqueue(frame, 1000, false).durable.await.unwrap();
    let q = n2.fetch(desktop, 0, 10).await.unwrap();
    assert_eq!((q[0].id, &q[0].payload[..]), (id, &b"task"[..]));

    let mut changed = n2.epoch_changed().expect("the Redis store tells its epoch");
    let before = *changed.borrow_and_update();
    server.restart();
    tokio::time::timeout(Duration::from_secs(15), changed.changed()).await.unwrap().unwrap();
    assert_ne!(*changed.borrow(), before);
    let deadline = Instant::now() + Duration::from_secs(15);
    while n1.epoch() != n2.epoch() || n1.health().is_err() {
        assert!(Instant::now() < deadline, "node 1 did not follow");
        let _ = n1.depth(desktop).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(n1.fetch(desktop, 0, 10).await.unwrap().len(), 1, "kept (appendfsync always)");
}
