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
    assert!(!a.release(dev(1), f1).await.unwrap());
    assert_eq!(a.route(&[(dev(1), None)]).await.unwrap(), vec![true], "still online on b");
    assert!(!b.release(dev(1), f1).await.unwrap(), "only with the fence it claimed with");
    assert!(b.release(dev(1), f2).await.unwrap());
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
    assert_eq!(a.reap().await.unwrap(), vec![dev(2)]);
    assert_eq!(a.reap().await.unwrap(), Vec::<DeviceId>::new(), "reaped once");
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
    let a = Cluster::connect(&r.url, "a", P).await.unwrap();
    let b = Cluster::connect(&r.url, "b", P).await.unwrap();
    let mut to_a = listen(&r.url, "a").await;
    a.heartbeat().await.unwrap();
    b.heartbeat().await.unwrap();
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
