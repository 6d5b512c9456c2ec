//! What only the Redis store does: Redis killed and restarted under it, a
//! hung server, a wiped one, foreign data under its prefix, several nodes
//! on one server, a server that is not there yet.

use std::time::{Duration, Instant};

use super::redis_server::{RedisServer, free_port};
use super::{LIMITS, PREFIX, ROUTES, RedisStore, Store, StoreError};
use super::{dev, frame, put, reserve, route};

async fn connect(server: &RedisServer) -> RedisStore {
    RedisStore::connect(&server.url(), LIMITS, ROUTES, PREFIX).await.unwrap()
}

/// Wait (up to 15 s) until the store's health is `up`.
async fn until_health(s: &RedisStore, up: bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while s.health().is_ok() != up {
        assert!(Instant::now() < deadline, "health stayed {:?}", s.health());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_unavailable<T: std::fmt::Debug>(r: &Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Unavailable(_)))
}

#[tokio::test]
async fn redis_killed_and_restarted_keeps_what_it_acknowledged_under_a_new_epoch() {
    let mut server = RedisServer::start_with("always");
    let s = connect(&server).await;
    let (a, b) = (dev(1), dev(2));
    route(&s, a, b).await;
    let ids = [put(&s, b, a, b"1").await, put(&s, b, a, b"2").await, put(&s, b, a, b"3").await];
    let before = s.epoch();
    assert_ne!(before, 0);
    let mut changed = s.epoch_changed().unwrap();
    changed.borrow_and_update();

    server.kill();
    // Refused, promptly, while it is down; health says so by itself.
    let t = Instant::now();
    let r = s.enqueue(frame(b, a, b"lost".to_vec()), 1000, false).durable.await;
    assert!(is_unavailable(&r), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "took {:?}", t.elapsed());
    until_health(&s, false).await;
    assert!(is_unavailable(&s.fetch(b, 0, 10).await));
    assert!(is_unavailable(&s.authorize(a, dev(3), super::home(), 1000).await));

    server.restart();
    until_health(&s, true).await;
    // A new server process: a new epoch, told through the watch.
    assert_ne!(s.epoch(), before);
    assert!(changed.has_changed().unwrap());
    assert_eq!(*changed.borrow_and_update(), s.epoch());
    // Everything acknowledged (appendfsync always) came back, same ids.
    let q = s.fetch(b, 0, 10).await.unwrap();
    assert_eq!(q.iter().map(|q| q.id).collect::<Vec<_>>(), ids);
    assert_eq!(q.iter().map(|q| q.payload.clone()).collect::<Vec<_>>(), [b"1", b"2", b"3"]);
    // The accounts and routes too; ids go on increasing.
    assert_eq!(s.totals().await.unwrap().queues.frames, 3);
    assert!(s.is_route(a, b).await.unwrap());
    let next = put(&s, b, a, b"4").await;
    assert!(next > ids[2], "{next} after {ids:?}");
    assert_eq!(s.ack(b, next).await.unwrap(), 4);
    assert_eq!(s.totals().await.unwrap().queues, super::super::QueueDepth::default());
}

/// Redis killed while enqueues are in flight: every frame answered `Ok`
/// (appendfsync always) is there after the restart, under its id, once;
/// frames refused may or may not be (their answer may have been lost);
/// ids stay unique and increasing in the new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_stream_loses_nothing_it_acknowledged() {
    let mut server = RedisServer::start_with("always");
    let roomy = super::QueueLimits { max_frames: 1 << 20, max_bytes: 1 << 34, ..LIMITS };
    let s = RedisStore::connect(&server.url(), roomy, ROUTES, PREFIX).await.unwrap();
    let s = std::sync::Arc::new(s);
    let (a, b) = (dev(1), dev(2));
    route(&*s, a, b).await;
    let before = s.epoch();
    let sender = {
        let s = std::sync::Arc::clone(&s);
        tokio::spawn(async move {
            let (mut acked, mut refused) = (Vec::new(), 0u32);
            let mut n = 0u32;
            let t = Instant::now();
            // Windows of 64 in flight, for up to 4 s.
            while t.elapsed() < Duration::from_secs(4) {
                let calls: Vec<_> = (0..64)
                    .map(|_| {
                        n += 1;
                        let body = n.to_be_bytes().to_vec();
                        (body.clone(), s.enqueue(frame(b, a, body), 1000, false).durable)
                    })
                    .collect();
                for (body, c) in calls {
                    match c.await {
                        Ok(id) => acked.push((id, body)),
                        Err(StoreError::Unavailable(_)) => refused += 1,
                        Err(e) => panic!("{e:?}"),
                    }
                }
            }
            (acked, refused)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.restart();
    let (acked, refused) = sender.await.unwrap();
    until_health(&s, true).await;
    assert_ne!(s.epoch(), before);
    assert!(refused > 0, "the kill refused nothing");
    assert!(!acked.is_empty());
    let mut stored = Vec::new();
    loop {
        let page = s.fetch(b, stored.last().map_or(0, |q: &super::super::Queued| q.id), 500);
        let page = page.await.unwrap();
        if page.is_empty() {
            break;
        }
        stored.extend(page);
    }
    let ids: Vec<u64> = stored.iter().map(|q| q.id).collect();
    assert!(ids.windows(2).all(|w| w[1] > w[0]), "ids unique and in order");
    let by_id: std::collections::HashMap<u64, Vec<u8>> =
        stored.into_iter().map(|q| (q.id, q.payload)).collect();
    for (id, body) in &acked {
        assert_eq!(by_id.get(id), Some(body), "frame {id} was acknowledged");
    }
    // Ids taken after the restart (frames acked late in the run) are above
    // every one before it: the counter came back from the AOF.
    let max_before = acked.iter().map(|(id, _)| *id).max().unwrap();
    assert!(put(&*s, b, a, b"after").await > max_before);
}

#[tokio::test]
async fn a_hung_redis_is_unavailable_within_the_timeout_and_the_epoch_stays() {
    let server = RedisServer::start();
    let s = connect(&server).await;
    let (a, b) = (dev(1), dev(2));
    route(&s, a, b).await;
    let first = put(&s, b, a, b"x").await;
    let epoch = s.epoch();
    server.pause(true);
    let t = Instant::now();
    let r = s.enqueue(frame(b, a, b"y".to_vec()), 1000, false).durable.await;
    assert!(is_unavailable(&r), "{r:?}");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(4), "took {took:?}");
    until_health(&s, false).await;
    server.pause(false);
    until_health(&s, true).await;
    // The same server process and base: the same epoch.
    assert_eq!(s.epoch(), epoch);
    // The refused enqueue may have been applied (its answer was lost), or
    // not; ids go on increasing either way.
    let q = s.fetch(b, 0, 10).await.unwrap();
    assert_eq!(q.first().map(|q| q.id), Some(first));
    assert!(q.len() <= 2);
    assert!(put(&s, b, a, b"z").await > first);
}

#[tokio::test]
async fn a_wiped_redis_gives_a_new_epoch_on_every_node() {
    let server = RedisServer::start();
    let (s1, s2) = (connect(&server).await, connect(&server).await);
    assert_eq!(s1.epoch(), s2.epoch(), "every node computes the same epoch");
    let (a, b) = (dev(1), dev(2));
    route(&s1, a, b).await;
    let old = put(&s1, b, a, b"x").await;
    let epoch = s1.epoch();
    assert!(server.command("FLUSHALL").unwrap().starts_with("+OK"));
    // The next write sees the base gone: refused, never under the old epoch.
    let r = s1.authorize(a, b, super::home(), 1000).await;
    assert!(is_unavailable(&r), "{r:?}");
    until_health(&s1, true).await;
    assert_ne!(s1.epoch(), epoch);
    // The other node finds the new base (its heartbeat, or its next call)
    // and agrees.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s2.epoch() != s1.epoch() {
        assert!(Instant::now() < deadline, "node 2 kept epoch {}", s2.epoch());
        let _ = s2.is_route(a, b).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The data is gone: ids start again, under the new epoch.
    route(&s1, a, b).await;
    let new = put(&s2, b, a, b"y").await;
    assert!(new <= old, "{new} under a new epoch");
    // Deleting the counter's key takes the epoch base with it: another
    // epoch again, never the same ids twice under one.
    let epoch = s2.epoch();
    assert!(server.command("DEL {test}:epoch").unwrap().starts_with(":1"));
    assert!(is_unavailable(&s2.enqueue(frame(b, a, b"z".to_vec()), 1000, false).durable.await));
    until_health(&s2, true).await;
    assert_ne!(s2.epoch(), epoch);
}

#[tokio::test]
async fn two_nodes_take_ids_from_one_counter() {
    let server = RedisServer::start();
    let (s1, s2) = (connect(&server).await, connect(&server).await);
    let (a, b) = (dev(1), dev(2));
    route(&s1, a, b).await;
    assert!(s2.is_route(a, b).await.unwrap());
    let mut ids = Vec::new();
    for i in 0..20u8 {
        let s = if i % 2 == 0 { &s1 } else { &s2 };
        ids.push(put(s, b, a, &[i]).await);
    }
    assert!(ids.windows(2).all(|w| w[1] > w[0]), "{ids:?}");
    let q = s2.fetch(b, 0, 100).await.unwrap();
    assert_eq!(q.iter().map(|q| q.id).collect::<Vec<_>>(), ids);
    // A revocation on one node is seen by the other at once.
    s1.revoke(a, b, 2000).await.unwrap();
    let r = s2.enqueue(frame(b, a, b"late".to_vec()), 2000, false).durable.await;
    assert_eq!(r, Err(StoreError::NoRoute));
    assert_eq!(s2.depth(b).await.unwrap().frames, 0, "the revocation dropped the queue");
}

#[tokio::test]
async fn ids_a_node_leases_are_its_own_and_say_what_other_nodes_wrote_below_them() {
    let server = RedisServer::start();
    let (s1, s2) = (connect(&server).await, connect(&server).await);
    let (a, b) = (dev(1), dev(2));
    route(&s1, a, b).await;
    let mine = reserve(&s1, b, 0).await;
    let theirs = reserve(&s2, b, 0).await;
    assert_ne!(mine.id, theirs.id, "blocks are leased, not shared");
    // An enqueue on another node takes an id above both leased blocks.
    let stored = put(&s2, b, a, b"other node").await;
    assert!(stored > mine.id && stored > theirs.id);
    // Above it: from a block leased after it, which says to read through it.
    let next = reserve(&s1, b, stored).await;
    assert!(next.id > stored);
    assert!(next.below >= stored, "{next:?} after {stored}");
    assert!(next.below < next.id);
    // Held frames written later keep their ids, in order, on either node.
    let held = vec![(next.id, frame(b, a, b"held".to_vec()))];
    assert_eq!(s1.enqueue_reserved(held, 1000, 0).await.unwrap(), vec![Ok(next.id)]);
    let q = s2.fetch(b, 0, 10).await.unwrap();
    assert_eq!(q.iter().map(|q| q.id).collect::<Vec<_>>(), [stored, next.id]);
    // Below the queue's last id (a stream takes ids in order): stored
    // under a fresh id, above every id handed out so far.
    let low = vec![(mine.id, frame(b, a, b"late".to_vec()))];
    let r = s1.enqueue_reserved(low, 1000, 0).await.unwrap();
    let fresh = r[0].clone().unwrap();
    assert!(fresh > next.id, "{r:?}");
    // An id this node never leased (another node's) is not written by it.
    let r = s1.enqueue_reserved(vec![(theirs.id, frame(b, a, b"x".to_vec()))], 1000, 0).await;
    assert!(matches!(r.unwrap()[..], [Err(StoreError::Unavailable(_))]));
    let q = s2.fetch(b, 0, 10).await.unwrap();
    assert_eq!(q.iter().map(|q| q.id).collect::<Vec<_>>(), [stored, next.id, fresh]);
}

#[tokio::test]
async fn held_frames_of_a_device_another_connection_took_are_refused() {
    let server = RedisServer::start();
    let s = connect(&server).await;
    let (a, b) = (dev(1), dev(2));
    route(&s, a, b).await;
    let own = format!("{{test}}:own:{}", super::super::redis_hex(&b.0));
    // Held under fence 5; the device's ownership has fence 5: written.
    server.command(&format!("SET {own} n1|5")).unwrap();
    let one = reserve(&s, b, 0).await.id;
    let r = s.enqueue_reserved(vec![(one, frame(b, a, b"1".to_vec()))], 1000, 5).await;
    assert_eq!(r.unwrap(), vec![Ok(one)]);
    // A newer connection (on any node) claimed it: refused, not written.
    server.command(&format!("SET {own} n2|9")).unwrap();
    let two = reserve(&s, b, one).await.id;
    let r = s.enqueue_reserved(vec![(two, frame(b, a, b"2".to_vec()))], 1000, 5).await;
    assert!(matches!(r.unwrap()[..], [Err(StoreError::Unavailable(_))]));
    // Offline (released), and its latest claim was the one held under:
    // written, for whichever node it reconnects to.
    let last = format!("{{test}}:last:{}", super::super::redis_hex(&b.0));
    server.command(&format!("DEL {own}")).unwrap();
    server.command(&format!("SET {last} 5")).unwrap();
    let r = s.enqueue_reserved(vec![(two, frame(b, a, b"2".to_vec()))], 1000, 5).await;
    assert_eq!(r.unwrap(), vec![Ok(two)]);
    // Offline, but a newer connection (fence 9, which may have been handed
    // higher ids, all acknowledged and gone) came and went since: a write
    // held up that long is refused, not slipped in below what the device
    // saw.
    server.command(&format!("SET {last} 9")).unwrap();
    let three = reserve(&s, b, two).await.id;
    let r = s.enqueue_reserved(vec![(three, frame(b, a, b"3".to_vec()))], 1000, 5).await;
    assert!(matches!(r.unwrap()[..], [Err(StoreError::Unavailable(_))]));
    // With no trace of any claim (a day later): written.
    server.command(&format!("DEL {last}")).unwrap();
    let r = s.enqueue_reserved(vec![(three, frame(b, a, b"3".to_vec()))], 1000, 5).await;
    assert_eq!(r.unwrap(), vec![Ok(three)]);
    let q = s.fetch(b, 0, 10).await.unwrap();
    assert_eq!(q.iter().map(|q| q.id).collect::<Vec<_>>(), [one, two, three]);
}

#[tokio::test]
async fn foreign_data_under_the_prefix_fails_the_calls_that_touch_it() {
    let server = RedisServer::start();
    let s = connect(&server).await;
    let (a, b, c, d) = (dev(1), dev(2), dev(3), dev(4));
    route(&s, a, b).await;
    route(&s, a, d).await;
    let hex = |n: u8| format!("{n:02x}").repeat(16);
    let set = |args: &[&str]| {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        server.call(&args).unwrap()
    };
    // b's queue is a string: its calls fail, the store stays up.
    set(&["SET", &format!("{{test}}:q:{}", hex(2)), "junk"]);
    assert!(matches!(s.fetch(b, 0, 10).await, Err(StoreError::Backend(_))));
    assert!(matches!(s.depth(b).await, Err(StoreError::Backend(_))));
    assert!(matches!(s.ack(b, 5).await, Err(StoreError::Backend(_))));
    let r = s.enqueue(frame(b, a, b"x".to_vec()), 1000, false).durable.await;
    assert!(matches!(r, Err(StoreError::Backend(_))), "{r:?}");
    assert!(s.health().is_ok());
    // c's routes are a list.
    set(&["RPUSH", &format!("{{test}}:r:{}", hex(3)), "junk"]);
    assert!(matches!(s.authorize(c, a, super::home(), 1000).await, Err(StoreError::Backend(_))));
    assert!(matches!(s.peers(c).await, Err(StoreError::Backend(_))));
    // d's queue holds an entry of someone else's making, and one with an id
    // that is no delivery id.
    set(&["XADD", &format!("{{test}}:q:{}", hex(4)), "7-0", "x", "y"]);
    assert!(matches!(s.fetch(d, 0, 10).await, Err(StoreError::Backend(_))));
    // Queueing for d fails whole when the counter is not a number: nothing
    // is written but nothing else breaks.
    set(&["HSET", "{test}:epoch", "next", "not a number"]);
    let r = s.enqueue(frame(d, a, b"x".to_vec()), 1000, false).durable.await;
    assert!(matches!(r, Err(StoreError::Backend(_))), "{r:?}");
    assert_eq!(s.totals().await.unwrap().queues.frames, 0);
    // The foreign entry is acknowledged away like any other (it counts
    // nothing real); the totals stay readable.
    assert_eq!(s.ack(d, 7).await.unwrap(), 1);
    let _ = s.totals().await.unwrap();
    // The totals are a string: read and write calls that need them fail.
    set(&["DEL", "{test}:tot"]);
    set(&["SET", "{test}:tot", "junk"]);
    assert!(matches!(s.totals().await, Err(StoreError::Backend(_))));
    // Cleaned up, the store works again, ids from a sane counter.
    set(&["HDEL", "{test}:epoch", "next"]);
    set(&["DEL", "{test}:tot", &format!("{{test}}:q:{}", hex(2))]);
    assert!(put(&s, b, a, b"ok").await > 0);
    assert!(s.health().is_ok());
}

#[tokio::test]
async fn a_redis_that_is_not_there_yet_is_refused_then_joined() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let t = Instant::now();
    let r = RedisStore::connect(&url, LIMITS, ROUTES, PREFIX).await;
    assert!(is_unavailable(&r), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(matches!(
        RedisStore::connect("not a url", LIMITS, ROUTES, PREFIX).await,
        Err(StoreError::Backend(_))
    ));
    // Started anyway: down, refusing, until the server comes.
    let s = RedisStore::connect_or_retry(&url, LIMITS, ROUTES, PREFIX).unwrap();
    let mut changed = s.epoch_changed().unwrap();
    assert_eq!(s.epoch(), 0);
    assert!(s.health().is_err());
    assert!(is_unavailable(&s.depth(dev(1)).await));
    let server = RedisServer::start_on(port);
    until_health(&s, true).await;
    changed.changed().await.unwrap();
    assert_ne!(s.epoch(), 0);
    assert_eq!(*changed.borrow(), s.epoch());
    drop(server);
}

/// Not a check: what an enqueue and an ack cost on Redis, for the docs.
/// `cargo nextest run -p tandem-relay --lib --run-ignored only -E
/// 'test(redis_costs)' --no-capture` (a debug build: the rates are low).
#[tokio::test]
#[ignore = "a measurement, run by hand"]
async fn redis_costs_per_frame() {
    let server = RedisServer::start_with("everysec");
    let s = connect(&server).await;
    let roomy = super::QueueLimits { max_frames: 1 << 20, max_bytes: 1 << 34, ..LIMITS };
    let s = {
        drop(s);
        RedisStore::connect(&server.url(), roomy, ROUTES, PREFIX).await.unwrap()
    };
    let (a, b) = (dev(1), dev(2));
    route(&s, a, b).await;
    let n = 20_000u64;
    // The payload's size: TANDEM_COST_PAYLOAD, or 1 KiB.
    let size: usize =
        std::env::var("TANDEM_COST_PAYLOAD").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    server.command("CONFIG RESETSTAT").unwrap();
    let t = Instant::now();
    let mut last = 0;
    // In windows the store's queue holds (past it: Busy).
    for _ in 0..n / 2000 {
        let calls: Vec<_> =
            (0..2000).map(|_| s.enqueue(frame(b, a, vec![7; 1024]), 1000, false).durable).collect();
        for c in calls {
            last = c.await.unwrap();
        }
    }
    let enq = t.elapsed();
    let stats_enq = server.command("INFO commandstats").unwrap();
    server.command("CONFIG RESETSTAT").unwrap();
    let t = Instant::now();
    // Acks of 16 frames each, as a reading device would send them.
    let first = last + 1 - n;
    let acks: Vec<_> = (0..n / 16).map(|i| s.ack(b, first + i * 16 + 15)).collect();
    for a in acks {
        a.await.unwrap();
    }
    let ack = t.elapsed();
    let stats_ack = server.command("INFO commandstats").unwrap();
    println!("{n} enqueues of {size} B in {enq:?} ({:.0}/s)", n as f64 / enq.as_secs_f64());
    println!("{} acks of 16 in {ack:?}", n / 16);
    println!("commands per enqueue batch run:\n{stats_enq}\nper ack run:\n{stats_ack}");
    println!("durable commits (pipelines with writes): {}", s.stats().durable_commits);
}

/// One sweep deletes at most `MAX_EXPIRED_PER_SWEEP` frames, across
/// queues; the next one goes on where it stopped.
#[tokio::test]
async fn a_sweep_stops_at_its_cap_and_the_next_goes_on() {
    use super::super::MAX_EXPIRED_PER_SWEEP as CAP;
    let server = RedisServer::start_with("no");
    let roomy = super::QueueLimits { max_frames: 1 << 20, max_bytes: 1 << 34, ..LIMITS };
    let s = RedisStore::connect(&server.url(), roomy, ROUTES, PREFIX).await.unwrap();
    let (a, b, c) = (dev(1), dev(2), dev(3));
    route(&s, a, b).await;
    route(&s, a, c).await;
    let mut n = 0;
    while n < CAP + 5 {
        let calls: Vec<_> = (0..1000)
            .map(|i| {
                let to = if i % 2 == 0 { b } else { c };
                s.enqueue(frame(to, a, vec![1]), 1000, false).durable
            })
            .collect();
        for call in calls {
            call.await.unwrap();
        }
        n += 1000;
    }
    // Queued at 1000 (TTL 60) and at 5000: only the first batch expires.
    put(&s, b, a, b"young").await;
    let young = s.enqueue(frame(b, a, b"younger".to_vec()), 5000, false).durable.await.unwrap();
    let first = s.expire(2000).await.unwrap().frames;
    assert_eq!(first, CAP as u64);
    let second = s.expire(2000).await.unwrap().frames;
    assert_eq!(first + second, n as u64 + 1);
    assert_eq!(s.expire(2000).await.unwrap().frames, 0);
    let left = s.fetch(b, 0, 10).await.unwrap();
    assert_eq!(left.iter().map(|q| q.id).collect::<Vec<_>>(), [young]);
    assert_eq!(s.totals().await.unwrap().queues.frames, 1);
}

/// Through Sentinel: a failover is a new primary, so a new epoch; the store
/// follows it by itself, and what the replica had is there under the same
/// ids, new ones above them.
#[tokio::test]
async fn a_sentinel_failover_moves_the_store_to_the_new_primary_under_a_new_epoch() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(primary.port());
    let sentinel = RedisServer::start_sentinel(primary.port(), "main");
    let url = format!("redis+sentinel://127.0.0.1:{}/main", sentinel.port());
    let s = RedisStore::connect(&url, LIMITS, ROUTES, PREFIX).await.unwrap();
    let (a, b) = (dev(1), dev(2));
    route(&s, a, b).await;
    let ids = [put(&s, b, a, b"1").await, put(&s, b, a, b"2").await];
    // The replica has them before the failover.
    let key = format!("XLEN {{test}}:q:{}", format!("{:02x}", 2).repeat(16));
    let deadline = Instant::now() + Duration::from_secs(10);
    while replica.command(&key).as_deref().map(str::trim) != Some(":2") {
        assert!(Instant::now() < deadline, "the replica did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = s.epoch();
    assert!(sentinel.command("SENTINEL FAILOVER main").unwrap().starts_with("+OK"));
    // Calls are refused while it moves, then go to the new primary.
    let deadline = Instant::now() + Duration::from_secs(20);
    let next = loop {
        assert!(Instant::now() < deadline, "the store never reached the new primary");
        match s.enqueue(frame(b, a, b"3".to_vec()), 1000, false).durable.await {
            Ok(id) if s.epoch() != before => break id,
            Ok(_) => {}
            Err(StoreError::Unavailable(_)) => {}
            Err(e) => panic!("{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(replica.command("ROLE").unwrap().contains("master"), "the replica was promoted");
    assert!(next > ids[1]);
    let q = s.fetch(b, 0, 100).await.unwrap();
    assert_eq!(q.first().map(|q| q.id), Some(ids[0]));
    assert!(q.iter().any(|q| q.id == next));
}

/// Half the store's queue: four pipelines' worth at least.
const BURST: u32 = (super::super::REDIS_QUEUE / 2) as u32;

/// Submit `n` enqueues of `a` → `b` at once (the store's channel holds them
/// all), numbered in submission order.
fn burst(
    s: &RedisStore,
    a: super::DeviceId,
    b: super::DeviceId,
    n: u32,
) -> Vec<super::super::StoreFuture<u64>> {
    (0..n).map(|i| s.enqueue(frame(b, a, i.to_be_bytes().to_vec()), 1000, false).durable).collect()
}

/// Several pipelines on their way at once (Redis stopped while they were
/// sent): each is answered, and Redis ran them in submission order, so the
/// ids follow the calls' order and each frame is under its own id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_pipelines_in_flight_keep_submission_order() {
    let server = RedisServer::start();
    let roomy = super::QueueLimits { max_frames: 1 << 20, max_bytes: 1 << 34, ..LIMITS };
    let s = RedisStore::connect(&server.url(), roomy, ROUTES, PREFIX).await.unwrap();
    let (a, b) = (dev(1), dev(2));
    route(&s, a, b).await;
    let commits = s.stats().durable_commits;
    let n = BURST;
    server.pause(true);
    let calls = burst(&s, a, b, n);
    // Let the driver send what it may while Redis does not answer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.pause(false);
    let mut ids = Vec::new();
    for c in calls {
        ids.push(c.await.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[1] > w[0]), "ids follow the submission order");
    let q = s.fetch(b, 0, n as usize).await.unwrap();
    assert_eq!(q.len(), n as usize);
    for (i, (q, id)) in q.iter().zip(&ids).enumerate() {
        assert_eq!(q.id, *id);
        assert_eq!(q.payload, (i as u32).to_be_bytes());
    }
    // Several pipelines carried them (one holds at most an eighth of the
    // store's queue).
    assert!(s.stats().durable_commits - commits >= 4, "{:?}", s.stats());
}

/// Redis killed while several pipelines wait for their answers: every call
/// of every one of them is refused (`Unavailable`) promptly, none is left
/// hanging, the store is down until Redis is back, and then takes calls
/// again with ids above every one it answered before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_with_several_pipelines_in_flight_refuses_them_all() {
    let mut server = RedisServer::start_with("always");
    let roomy = super::QueueLimits { max_frames: 1 << 20, max_bytes: 1 << 34, ..LIMITS };
    let s = RedisStore::connect(&server.url(), roomy, ROUTES, PREFIX).await.unwrap();
    let (a, b) = (dev(1), dev(2));
    route(&s, a, b).await;
    let before = put(&s, b, a, b"before").await;
    let epoch = s.epoch();
    server.pause(true);
    let calls = burst(&s, a, b, BURST);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    server.kill();
    let mut refused = 0;
    for c in calls {
        let r = c.await;
        assert!(is_unavailable(&r), "{r:?}");
        refused += 1;
    }
    assert!(t.elapsed() < Duration::from_secs(3), "took {:?}", t.elapsed());
    assert!(refused > 0);
    until_health(&s, false).await;
    server.restart();
    until_health(&s, true).await;
    assert_ne!(s.epoch(), epoch);
    // What was acknowledged before is there; nothing of the refused burst
    // could run (Redis was stopped from before it was sent until killed).
    let q = s.fetch(b, 0, 10).await.unwrap();
    assert_eq!(q.iter().map(|q| q.id).collect::<Vec<_>>(), [before]);
    assert!(put(&s, b, a, b"after").await > before);
}

/// A held frame whose queue got a higher id meanwhile (another node wrote
/// one for the recipient while it was held) is stored under a fresh id,
/// and so are its sender's later frames, in their order: refusing it would
/// have its sender resend it after the later ones (found by review).
#[tokio::test]
async fn a_held_frame_below_its_queues_top_keeps_its_senders_order() {
    let server = RedisServer::start();
    let (s1, s2) = (connect(&server).await, connect(&server).await);
    let (a, b, c) = (dev(1), dev(2), dev(3));
    route(&s1, a, b).await;
    route(&s1, c, b).await;
    let first = reserve(&s1, b, 0).await;
    let other = put(&s2, b, c, b"from c").await;
    assert!(other > first.id, "the other node's frame is above the held one's block");
    let second = reserve(&s1, b, other).await;
    assert!(second.id > other);
    let held =
        vec![(first.id, frame(b, a, b"a1".to_vec())), (second.id, frame(b, a, b"a2".to_vec()))];
    let r: Vec<u64> =
        s1.enqueue_reserved(held, 1000, 0).await.unwrap().into_iter().map(Result::unwrap).collect();
    assert!(r[0] > second.id && r[1] > r[0], "fresh ids, in the sender's order: {r:?}");
    // A frame of a's held later, below the top now, goes the same way.
    let third = reserve(&s1, b, other).await;
    let r3 = s1.enqueue_reserved(vec![(third.id, frame(b, a, b"a3".to_vec()))], 1000, 0).await;
    let r3 = r3.unwrap()[0].clone().unwrap();
    assert!(r3 > r[1]);
    let q = s1.fetch(b, 0, 10).await.unwrap();
    let from_a: Vec<&[u8]> = q.iter().filter(|q| q.from == a).map(|q| &q.payload[..]).collect();
    assert_eq!(from_a, [&b"a1"[..], b"a2", b"a3"]);
    assert_eq!(q.iter().map(|q| q.id).collect::<Vec<_>>(), [other, r[0], r[1], r3]);
}
