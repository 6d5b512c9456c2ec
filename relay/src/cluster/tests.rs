//! The cluster's scripts against a real `redis-server` (started here on a
//! free port; never the machine's 6379).

use std::time::Duration;

use futures_util::StreamExt;
use tandem_proto::ErrorCode;

use super::*;

use crate::store::tests::redis_server::RedisServer;

struct TestRedis {
    server: RedisServer,
    url: String,
}

impl TestRedis {
    fn start() -> Self {
        let server = RedisServer::start();
        let url = server.url();
        Self { server, url }
    }
}

/// The cluster's prefix, and the namespace its keys and channels are under.
const P: &str = "t";
const NS: &str = "{t}:";

fn dev(n: u8) -> DeviceId {
    DeviceId([n; 16])
}

/// Every step of reaping dead nodes, as the upkeep runs them.
async fn reap_all(c: &Cluster) -> Vec<DeviceId> {
    let mut out = Vec::new();
    loop {
        let (gone, more) = c.reap_step().await.unwrap();
        out.extend(gone);
        if !more {
            return out;
        }
    }
}

/// Nodes `a` and `b`, both alive, and what is published on `a`'s channel.
async fn two_nodes(r: &TestRedis) -> (Cluster, Cluster, redis::aio::PubSubStream) {
    let a = Cluster::connect(&r.url, "a", P).await.unwrap();
    let b = Cluster::connect(&r.url, "b", P).await.unwrap();
    let to_a = listen(&r.url, "a").await;
    a.heartbeat().await.unwrap();
    b.heartbeat().await.unwrap();
    (a, b, to_a)
}

/// Messages published on `node`'s channel.
async fn listen(url: &str, node: &str) -> redis::aio::PubSubStream {
    let client = redis::Client::open(url).unwrap();
    let mut ps = client.get_async_pubsub().await.unwrap();
    ps.subscribe(format!("{NS}node:{node}")).await.unwrap();
    ps.into_on_message()
}

async fn next(s: &mut redis::aio::PubSubStream) -> Message {
    let m = tokio::time::timeout(Duration::from_secs(2), s.next()).await.unwrap().unwrap();
    Message::decode(m.get_payload_bytes()).unwrap()
}

/// Nodes a and b, b alive and owning `devices`, and what is published on
/// b's channel.
async fn b_owns(
    r: &TestRedis,
    devices: &[DeviceId],
) -> (Cluster, Cluster, redis::aio::PubSubStream) {
    let a = Cluster::connect(&r.url, "a", P).await.unwrap();
    let b = Cluster::connect(&r.url, "b", P).await.unwrap();
    let to_b = listen(&r.url, "b").await;
    b.heartbeat().await.unwrap();
    for d in devices {
        b.claim(*d).await.unwrap();
    }
    (a, b, to_b)
}

#[tokio::test]
async fn ownership_moves_with_a_higher_fence_and_the_old_node_is_told() {
    let r = TestRedis::start();
    let a = Cluster::connect(&r.url, "a", P).await.unwrap();
    let b = Cluster::connect(&r.url, "b", P).await.unwrap();
    let mut to_a = listen(&r.url, "a").await;
    assert!(a.heartbeat().await.is_ok() && b.heartbeat().await.is_ok());
    let f1 = a.claim(dev(1)).await.unwrap();
    let f2 = b.claim(dev(1)).await.unwrap();
    assert!(f2 > f1, "fences only grow");
    assert_eq!(next(&mut to_a).await, Message::Replaced { device: dev(1), fence: f2 });
    // The old node's release does not take the device from the new one.
    assert_eq!(a.announce(dev(1), &Change::Released(f1), &[]).await.unwrap(), None);
    assert_eq!(a.route(&[(dev(1), None)]).await.unwrap(), vec![true], "still online on b");
    let stale = b.announce(dev(1), &Change::Released(f1), &[]).await.unwrap();
    assert_eq!(stale, None, "only with the fence it claimed with");
    assert_eq!(b.announce(dev(1), &Change::Released(f2), &[]).await.unwrap(), Some(vec![]));
    assert_eq!(a.route(&[(dev(1), None)]).await.unwrap(), vec![false]);
    // A claim after a release starts above every earlier fence.
    assert!(a.claim(dev(1)).await.unwrap() > f2);
}

#[tokio::test]
async fn a_frame_reaches_the_owners_node_only_while_that_node_is_alive() {
    let r = TestRedis::start();
    let (a, b, mut to_b) = b_owns(&r, &[dev(2)]).await;
    let presence = Frame::Presence { peer: dev(9), online: true };
    let frames = [(dev(2), Some(presence.clone())), (dev(3), Some(presence.clone()))];
    assert_eq!(a.route(&frames).await.unwrap(), vec![true, false], "dev 3 is connected nowhere");
    assert_eq!(next(&mut to_b).await, Message::Frame { to: dev(2), frame: presence.clone() });

    // b stops beating: once its liveness expires it is reaped, its device
    // is offline and nothing is published to it.
    let mut c = a.link.conn().await.unwrap();
    let _: i64 = redis::cmd("DEL").arg(format!("{NS}alive:b")).query_async(&mut c).await.unwrap();
    assert_eq!(a.route(&[(dev(2), Some(presence))]).await.unwrap(), vec![false]);
    assert_eq!(reap_all(&a).await, vec![dev(2)]);
    assert_eq!(reap_all(&a).await, Vec::<DeviceId>::new(), "reaped once");
    // b comes back: its heartbeat says it had been given up.
    assert!(!b.heartbeat().await.unwrap());
    assert!(b.heartbeat().await.unwrap());
}

/// Live pushes go out gathered (one script call for what waits) and in the
/// order they were submitted; a device connected nowhere gets nothing.
#[tokio::test]
async fn deliveries_reach_the_owners_node_in_submission_order() {
    let r = TestRedis::start();
    let (a, _b, mut to_b) = b_owns(&r, &[dev(2), dev(3)]).await;
    let mut c = a.link.conn().await.unwrap();
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut c).await.unwrap();
    let n = 3 * deliveries::MAX_BATCH as u64;
    let to = |i: u64| match i % 3 {
        0 => dev(2),
        1 => dev(3),
        _ => dev(4),
    };
    let frame = |i: u64| Frame::Deliver { delivery_id: i + 1, from: dev(1), payload: vec![7] };
    for i in 0..n {
        a.deliver(to(i), 5, &frame(i).encode().unwrap()).await.unwrap();
    }
    for i in (0..n).filter(|i| to(*i) != dev(4)) {
        assert_eq!(
            next(&mut to_b).await,
            Message::Deliver { to: to(i), epoch: 5, frame: frame(i) }
        );
    }
    let quiet = tokio::time::timeout(Duration::from_millis(200), to_b.next()).await;
    assert!(quiet.is_err(), "nothing for the device connected nowhere: {quiet:?}");
    // Gathered: far fewer script calls than frames (at least 3: a call
    // carries at most MAX_BATCH), and no owner read per frame.
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut c).await.unwrap();
    let calls = |cmd: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
            .and_then(|l| l.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let scripts = calls("evalsha") + calls("eval");
    assert!((3..n / 4).contains(&scripts), "{scripts} script calls for {n} frames");
    assert!(calls("get") < n / 4, "{} owner reads for {n} frames", calls("get"));
}

#[tokio::test]
async fn a_mailbox_is_registered_once_claimed_once_and_joins_only_its_two_devices() {
    let r = TestRedis::start();
    let (a, b, mut to_a) = two_nodes(&r).await;
    let (desk, phone, other) = (dev(1), dev(2), dev(3));
    a.claim(desk).await.unwrap();
    b.claim(phone).await.unwrap();
    let id = [5u8; 16];
    let ttl = Duration::from_secs(30);
    assert!(a.pair_open(id, desk, ttl).await.unwrap());
    assert!(!b.pair_open(id, other, ttl).await.unwrap(), "the id is taken on every node");
    assert_eq!(
        b.pair_claim(id, desk, b"x").await.unwrap(),
        Claim::Refused(ErrorCode::UnexpectedFrame)
    );
    assert_eq!(
        b.pair_claim(id, phone, b"hi").await.unwrap(),
        Claim::Won { desktop: desk, here: false }
    );
    assert_eq!(
        next(&mut to_a).await,
        Message::Claimed { pairing_id: id, claimer: phone, payload: b"hi".to_vec() }
    );
    assert_eq!(
        b.pair_claim(id, other, b"x").await.unwrap(),
        Claim::Refused(ErrorCode::PairingClaimed)
    );
    let m = Frame::PairMessage { pairing_id: id, peer: phone, payload: b"c".to_vec() };
    assert_eq!(b.pair_route(id, phone, desk, &m).await.unwrap(), None);
    assert_eq!(next(&mut to_a).await, Message::Frame { to: desk, frame: m.clone() });
    assert!(b.pair_route(id, other, desk, &m).await.unwrap().is_some(), "a stranger is refused");
    a.pair_close(id, other).await;
    assert!(!a.pair_open(id, desk, ttl).await.unwrap(), "only its desktop closes it");
    a.pair_close(id, desk).await;
    assert_eq!(
        b.pair_claim(id, phone, b"x").await.unwrap(),
        Claim::Refused(ErrorCode::PairingNotFound)
    );
    // Claims on a missing or damaged registration are refused, not a panic.
    let mut c = a.link.conn().await.unwrap();
    let _: () =
        redis::cmd("SET").arg(a.pair_key(&id)).arg("garbage").query_async(&mut c).await.unwrap();
    assert_eq!(
        b.pair_claim(id, phone, b"x").await.unwrap(),
        Claim::Refused(ErrorCode::PairingNotFound)
    );
}

#[tokio::test]
async fn one_node_leads_a_task_until_it_stops_renewing() {
    let r = TestRedis::start();
    let a = Cluster::connect(&r.url, "a", P).await.unwrap();
    let b = Cluster::connect(&r.url, "b", P).await.unwrap();
    let ttl = Duration::from_millis(300);
    assert!(a.lead("sweep", ttl).await);
    assert!(!b.lead("sweep", ttl).await);
    assert!(a.lead("sweep", ttl).await, "the leader renews");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(b.lead("sweep", ttl).await, "taken over once it lapsed");
    assert!(!a.lead("sweep", ttl).await);
}

#[tokio::test]
async fn redis_unreachable_is_an_error_not_a_hang() {
    let r = TestRedis::start();
    let a = Cluster::connect(&r.url, "a", P).await.unwrap();
    drop(r.server);
    let t = tokio::time::timeout(Duration::from_secs(15), a.claim(dev(1))).await;
    assert!(matches!(t, Ok(Err(ClusterError::Redis(_)))), "{t:?}");
    assert!(Cluster::connect("not a url", "a", P).await.is_err());
    assert!(Cluster::connect("redis://127.0.0.1:1/", "a|b", P).await.is_err());
}

#[test]
fn node_ids_are_checked_and_device_hex_reads_back() {
    assert!(check_node_id("relay-1.eu_west").is_ok());
    for bad in ["", "a|b", "a b", "ä", &"x".repeat(65)] {
        assert!(check_node_id(bad).is_err(), "{bad:?}");
    }
    assert!(check_node_id(&generate_node_id()).is_ok());
    let d = DeviceId([0xab; 16]);
    assert_eq!(parse_hex(&hex(&d)), Some(d));
    assert_eq!(parse_hex("zz"), None);
    assert_eq!(parse_hex(&"g".repeat(32)), None);
}

fn many(n: u16) -> Vec<DeviceId> {
    (0..n)
        .map(|i| {
            let mut d = [7u8; 16];
            d[..2].copy_from_slice(&i.to_be_bytes());
            DeviceId(d)
        })
        .collect()
}

/// A node with more devices than one script step handles: its ownership
/// scan and, once it is dead, its reaping walk them all in steps, and no
/// key is left per device once they are all gone (fence tokens come from
/// one counter).
#[tokio::test]
async fn a_node_with_many_devices_is_scanned_and_reaped_in_steps_and_leaves_only_expiring_keys() {
    let r = TestRedis::start();
    let a = Cluster::connect(&r.url, "a", P).await.unwrap();
    let b = Cluster::connect(&r.url, "b", P).await.unwrap();
    a.heartbeat().await.unwrap();
    b.heartbeat().await.unwrap();
    let devices = many(u16::try_from(SCAN_STEP * 2 + 37).unwrap());
    let mut fences = Vec::new();
    for d in &devices {
        fences.push(b.claim(*d).await.unwrap());
    }
    assert!(fences.windows(2).all(|w| w[0] < w[1]), "one counter: every fence above the last");
    let mut owned: Vec<DeviceId> = b.owned().await.unwrap().into_iter().map(|(d, _)| d).collect();
    owned.sort_by_key(|d| d.0);
    let mut want = devices.clone();
    want.sort_by_key(|d| d.0);
    assert_eq!(owned.len(), want.len(), "every device, over several scan steps");
    assert!(owned == want, "every device, over several scan steps");

    let mut c = a.link.conn().await.unwrap();
    let _: i64 = redis::cmd("DEL").arg(format!("{NS}alive:b")).query_async(&mut c).await.unwrap();
    let mut gone = reap_all(&a).await;
    gone.sort_by_key(|d| d.0);
    assert_eq!(gone.len(), want.len(), "every device of the dead node, over several steps");
    assert!(gone == want, "every device of the dead node, over several steps");
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{NS}*")).query_async(&mut c).await.unwrap();
    // (a's liveness may have expired meanwhile: nobody renews it here.)
    let mut keys: Vec<&str> =
        keys.iter().map(|k| k.strip_prefix(NS).unwrap()).filter(|k| *k != "alive:a").collect();
    keys.sort_unstable();
    // Each device's latest fence stays a day (`last:`), then goes.
    let (last, kept): (Vec<&str>, Vec<&str>) = keys.iter().partition(|k| k.starts_with("last:"));
    assert_eq!(kept, ["fences", "nodes"], "nothing left of b or its devices");
    assert_eq!(last.len(), want.len());
    for k in last {
        let ttl: i64 = redis::cmd("TTL").arg(format!("{NS}{k}")).query_async(&mut c).await.unwrap();
        assert!((1..=86_400).contains(&ttl), "{k} expires within a day: {ttl}");
    }
    let nodes: Vec<String> =
        redis::cmd("SMEMBERS").arg(format!("{NS}nodes")).query_async(&mut c).await.unwrap();
    assert_eq!(nodes, ["a"]);
}

/// The presence of a device moving from node b to node a reaches its peer
/// (on a) in the order of the ownership changes: "offline" is published by
/// the release itself, so it cannot arrive after the new connection's
/// "online"; a late release of the old connection, or a reaped device
/// that is back, says nothing; and the new connection hears which peers
/// are online through its node's channel.
#[tokio::test]
async fn presence_follows_ownership_in_order_and_a_stale_release_says_nothing() {
    let r = TestRedis::start();
    let (a, b, mut to_a) = two_nodes(&r).await;
    let (subject, peer) = (dev(1), dev(2));
    let on = |p: DeviceId, online| Frame::Presence { peer: p, online };
    let fp = a.claim(peer).await.unwrap();
    let f1 = b.claim(subject).await.unwrap();
    assert_eq!(b.announce(subject, &Change::Online(f1), &[peer]).await.unwrap(), Some(vec![true]));
    assert_eq!(next(&mut to_a).await, Message::Frame { to: peer, frame: on(subject, true) });

    // It leaves b and comes to a.
    assert!(b.announce(subject, &Change::Released(f1), &[peer]).await.unwrap().is_some());
    let f2 = a.claim(subject).await.unwrap();
    assert_eq!(a.announce(subject, &Change::Online(f2), &[peer]).await.unwrap(), Some(vec![true]));
    assert_eq!(next(&mut to_a).await, Message::Frame { to: peer, frame: on(subject, false) });
    assert_eq!(next(&mut to_a).await, Message::Frame { to: peer, frame: on(subject, true) });
    assert_eq!(next(&mut to_a).await, Message::Frame { to: subject, frame: on(peer, true) });

    // b's late steps for its old connection say nothing now.
    assert_eq!(b.announce(subject, &Change::Released(f1), &[peer]).await.unwrap(), None);
    assert_eq!(b.announce(subject, &Change::Online(f1), &[peer]).await.unwrap(), None);
    assert_eq!(a.announce(subject, &Change::Gone, &[peer]).await.unwrap(), None, "it is owned");
    // A look tells the subject where each peer is, the peer nothing.
    assert_eq!(
        a.announce(subject, &Change::Look, &[peer, dev(3)]).await.unwrap(),
        Some(vec![true, false])
    );
    assert_eq!(next(&mut to_a).await, Message::Frame { to: subject, frame: on(peer, true) });
    assert_eq!(next(&mut to_a).await, Message::Frame { to: subject, frame: on(dev(3), false) });
    // Once it is gone for good, its peer hears so.
    assert!(a.announce(subject, &Change::Released(f2), &[peer]).await.unwrap().is_some());
    assert_eq!(next(&mut to_a).await, Message::Frame { to: peer, frame: on(subject, false) });
    assert_eq!(a.announce(peer, &Change::Released(fp), &[]).await.unwrap(), Some(vec![]));
    let nothing = tokio::time::timeout(Duration::from_millis(200), to_a.next()).await;
    assert!(nothing.is_err(), "nothing more was published: {nothing:?}");
}

/// A claim during a rolling upgrade: a device whose counter of an earlier
/// version (`fence:<device>`) is far ahead of the cluster's one counter gets
/// a fence above it, and that counter moves up with it, so a claim by an
/// older node afterwards is above this one. A device without such a key
/// never gets one.
#[tokio::test]
async fn a_claim_stays_above_an_earlier_versions_counter_and_creates_none() {
    let r = TestRedis::start();
    let (a, _b, _to_a) = two_nodes(&r).await;
    let mut c = a.link.conn().await.unwrap();
    let legacy = format!("{NS}fence:{}", hex(&dev(1)));
    let _: () = redis::cmd("SET").arg(&legacy).arg(5000).query_async(&mut c).await.unwrap();
    let f = a.claim(dev(1)).await.unwrap();
    assert_eq!(f, 5001, "above the earlier version's counter");
    let moved: u64 = redis::cmd("GET").arg(&legacy).query_async(&mut c).await.unwrap();
    assert_eq!(moved, 5001, "which moves up with it");
    assert!(a.claim(dev(2)).await.unwrap() > f, "the one counter is past it too");
    let n: i64 = redis::cmd("EXISTS")
        .arg(format!("{NS}fence:{}", hex(&dev(2))))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 0, "no counter is made for a device that had none");
}
