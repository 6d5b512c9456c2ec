//! Several relay nodes on one real `redis-server` (and a real haproxy with
//! the deployment's configuration): pairs split over nodes pair and talk,
//! presence and revocation reach every node, a device has one owner, a node
//! killed with -9 or a Redis restarted loses nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::cluster::{Haproxy, Redis, form_cluster, node};
use common::{Device, close_code, new_key, pair_for_real_between};
use tandem_proto::frame::Frame;
use tandem_proto::{ErrorCode, Role};

/// Where devices that connect to a node directly come from: not 127.0.0.1,
/// which the nodes trust to send a PROXY header (haproxy's address).
const LO: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// Ack every delivery up to `id` right away.
async fn ack(d: &mut Device, id: u64) {
    d.send(&Frame::Ack { up_to: id }).await;
}

/// Receive deliveries until `want` distinct payloads arrived (a redelivery
/// of an id already seen is dropped, as the client does); acks each.
async fn receive_all(d: &mut Device, want: usize, last: &mut u64, got: &mut Vec<Vec<u8>>) {
    while got.len() < want {
        let (id, _, payload) = d.delivery().await;
        if id <= *last {
            continue;
        }
        *last = id;
        got.push(payload);
        ack(d, id).await;
    }
}

/// Connect to `node` directly as a client does: a refusal (the node on its
/// way back to Redis) is retried for up to 20 s.
async fn connect_retrying(
    node: &common::Relay,
    key: tandem_proto::DeviceKey,
    role: Role,
) -> Device {
    for _ in 0..80 {
        let ws = common::ws_connect_from(node, LO).await.unwrap();
        let mut d = Device { key: key.clone(), role, ws, backlog: Vec::new(), auto_pong: true };
        d.send(&Frame::Hello { min_version: 1, max_version: 1, role }).await;
        let challenge = d.recv().await;
        let proof = tandem_proto::relay_auth::prove(&d.key, role, &node.addr, &challenge).unwrap();
        d.send(&proof).await;
        match d.recv_within(Duration::from_secs(5)).await {
            Ok(Frame::AuthOk { .. }) => return d,
            other => {
                eprintln!("refused for now: {other:?}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    panic!("not connected within 20 s; its log:\n{}", node.log());
}

#[tokio::test]
async fn a_pair_split_over_two_nodes_pairs_for_real_and_talks_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let n1 = node(dir.path(), &redis, "n1", &[]);
    let n2 = node(dir.path(), &redis, "n2", &[]);
    // The desktop opens the mailbox on n1, the phone claims it on n2.
    let mut pair = pair_for_real_between(&n1, &n2, LO, LO).await;
    let (desk_id, phone_id) = (pair.desk.id(), pair.phone.id());
    pair.desk.presence(phone_id, true).await;
    pair.phone.presence(desk_id, true).await;

    for i in 0..50u64 {
        pair.desk.send_to(phone_id, i + 1, format!("to phone {i}").as_bytes()).await.unwrap();
    }
    let (mut last, mut got) = (0, Vec::new());
    receive_all(&mut pair.phone, 50, &mut last, &mut got).await;
    let want: Vec<Vec<u8>> = (0..50).map(|i| format!("to phone {i}").into_bytes()).collect();
    assert_eq!(got, want, "every frame crosses from n1 to n2 once, in order");

    for i in 0..50u64 {
        pair.phone.send_to(desk_id, 100 + i, format!("to desk {i}").as_bytes()).await.unwrap();
    }
    let (mut last, mut got) = (0, Vec::new());
    receive_all(&mut pair.desk, 50, &mut last, &mut got).await;
    let want: Vec<Vec<u8>> = (0..50).map(|i| format!("to desk {i}").into_bytes()).collect();
    assert_eq!(got, want, "and back from n2 to n1");
}

#[tokio::test]
async fn a_mailbox_is_claimed_once_whichever_node_each_phone_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let n1 = node(dir.path(), &redis, "n1", &[]);
    let n2 = node(dir.path(), &redis, "n2", &[]);
    let n3 = node(dir.path(), &redis, "n3", &[]);
    let (mut desk, _) = Device::connect_from(&n1, new_key(), Role::Desktop, LO).await;
    let pid = [7u8; 16];
    desk.send(&Frame::PairOpen { request_id: 1, pairing_id: pid, ttl_secs: 60 }).await;
    desk.result_of(1).await.expect("PairOpen");
    // The same id cannot be opened on another node.
    let (mut desk2, _) = Device::connect_from(&n3, new_key(), Role::Desktop, LO).await;
    desk2.send(&Frame::PairOpen { request_id: 2, pairing_id: pid, ttl_secs: 60 }).await;
    assert_eq!(desk2.result_of(2).await, Err(ErrorCode::PairingClaimed));

    let (mut a, _) = Device::connect_from(&n2, new_key(), Role::Phone, LO).await;
    let (mut b, _) = Device::connect_from(&n3, new_key(), Role::Phone, LO).await;
    a.send(&Frame::PairClaim { request_id: 3, pairing_id: pid, payload: b"a".to_vec() }).await;
    a.result_of(3).await.expect("the first claim wins");
    b.send(&Frame::PairClaim { request_id: 4, pairing_id: pid, payload: b"b".to_vec() }).await;
    assert_eq!(b.result_of(4).await, Err(ErrorCode::PairingClaimed), "the second is refused");

    let got = desk.expect("the claim", |f| matches!(f, Frame::PairMessage { .. })).await;
    assert_eq!(got, Frame::PairMessage { pairing_id: pid, peer: a.id(), payload: b"a".to_vec() });
    desk.assert_quiet(Duration::from_millis(500)).await;

    // Messages pass both ways between the two, and from nobody else.
    desk.send(&Frame::PairMessage { pairing_id: pid, peer: a.id(), payload: b"w".to_vec() }).await;
    let got = a.expect("the welcome", |f| matches!(f, Frame::PairMessage { .. })).await;
    assert_eq!(
        got,
        Frame::PairMessage { pairing_id: pid, peer: desk.id(), payload: b"w".to_vec() }
    );
    a.send(&Frame::PairMessage { pairing_id: pid, peer: desk.id(), payload: b"c".to_vec() }).await;
    let got = desk.expect("the confirm", |f| matches!(f, Frame::PairMessage { .. })).await;
    assert_eq!(got, Frame::PairMessage { pairing_id: pid, peer: a.id(), payload: b"c".to_vec() });
    b.send(&Frame::PairMessage { pairing_id: pid, peer: desk.id(), payload: b"x".to_vec() }).await;
    let refused = b.expect("a refusal", |f| matches!(f, Frame::Error { .. })).await;
    assert!(
        matches!(refused, Frame::Error { code: ErrorCode::PairingNotFound, .. }),
        "{refused:?}"
    );
    desk.assert_quiet(Duration::from_millis(500)).await;

    // Closed on n1: gone for every node.
    desk.send(&Frame::PairClose { request_id: 5, pairing_id: pid }).await;
    desk.result_of(5).await.expect("PairClose");
    desk2.send(&Frame::PairOpen { request_id: 6, pairing_id: pid, ttl_secs: 60 }).await;
    desk2.result_of(6).await.expect("the id is free again on every node");
}

#[tokio::test]
async fn presence_crosses_nodes_and_a_dead_nodes_devices_go_offline() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let n1 = node(dir.path(), &redis, "n1", &[]);
    let n2 = node(dir.path(), &redis, "n2", &[]);
    let mut n3 = node(dir.path(), &redis, "n3", &[]);
    let pair = pair_for_real_between(&n1, &n2, LO, LO).await;
    let (mut desk, phone) = (pair.desk, pair.phone);
    let phone_key = phone.key.clone();
    let phone_id = phone.id();
    desk.presence(phone_id, true).await;
    phone.close().await;
    desk.presence(phone_id, false).await;

    // Back on n3: both hear of each other.
    let (mut phone, _) = Device::connect_from(&n3, phone_key, Role::Phone, LO).await;
    desk.presence(phone_id, true).await;
    phone.presence(desk.id(), true).await;

    // n3 dies without a word: the cluster reaps it within a few seconds.
    n3.kill9();
    desk.expect_within(
        "the phone offline once n3 is reaped",
        Duration::from_secs(10),
        |f| matches!(f, Frame::Presence { peer, online: false } if *peer == phone_id),
    )
    .await;
    drop(phone);
}

/// A device that drops and reconnects to the other node at once, over and
/// over, ends *online* for its peer: a node's "offline" is published by the
/// same Redis step that gives the ownership up, so it can never arrive after
/// the new connection's "online" (review of issue 16: it was published
/// after the release, and could).
#[tokio::test]
async fn a_device_hopping_between_nodes_ends_online_for_its_peer() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let n1 = node(dir.path(), &redis, "n1", &[]);
    let n2 = node(dir.path(), &redis, "n2", &[]);
    let pair = pair_for_real_between(&n1, &n2, LO, LO).await;
    let (mut desk, mut phone) = (pair.desk, pair.phone);
    let (phone_id, key) = (phone.id(), phone.key.clone());
    desk.presence(phone_id, true).await;
    for hop in 0..12 {
        drop(phone);
        let to = if hop % 2 == 0 { &n1 } else { &n2 };
        phone = Device::connect_from(to, key.clone(), Role::Phone, LO).await.0;
    }
    let (frames, end) = desk.collect_for(Duration::from_secs(2)).await;
    assert!(end.is_none(), "the desktop stays connected: {end:?}");
    let last = frames.iter().rev().find_map(|f| match f {
        Frame::Presence { peer, online } if *peer == phone_id => Some(*online),
        _ => None,
    });
    assert_eq!(last, Some(true), "the phone's last presence is online: {frames:?}");
    // And it is reachable where it is.
    desk.send_to(phone_id, 1, b"here").await.unwrap();
    assert_eq!(phone.delivery().await.2, b"here");
}

#[tokio::test]
async fn a_device_connected_on_two_nodes_keeps_only_the_newest_connection() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let n1 = node(dir.path(), &redis, "n1", &[]);
    let n2 = node(dir.path(), &redis, "n2", &[]);
    let (mut desk, mut phone) = {
        let p = pair_for_real_between(&n1, &n1, LO, LO).await;
        (p.desk, p.phone)
    };
    let (phone_id, key) = (phone.id(), phone.key.clone());
    let (mut phone2, _) = Device::connect_from(&n2, key, Role::Phone, LO).await;
    let (end, _) = phone.until_closed(Duration::from_secs(5)).await;
    assert_eq!(end, close_code(ErrorCode::Replaced), "the older connection (on n1) is replaced");
    desk.send_to(phone_id, 1, b"to the newest").await.unwrap();
    let (_, from, payload) = phone2.delivery().await;
    assert_eq!((from, payload.as_slice()), (desk.id(), &b"to the newest"[..]));
}

#[tokio::test]
async fn a_revocation_on_one_node_holds_on_every_node_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let n1 = node(dir.path(), &redis, "n1", &[]);
    let n2 = node(dir.path(), &redis, "n2", &[]);
    let pair = pair_for_real_between(&n1, &n2, LO, LO).await;
    let (mut desk, mut phone) = (pair.desk, pair.phone);
    let (desk_id, phone_id) = (desk.id(), phone.id());
    phone.send_to(desk_id, 1, b"before").await.unwrap();
    assert_eq!(desk.delivery().await.2, b"before");

    desk.send(&Frame::Revoke { request_id: 2, peer: phone_id }).await;
    desk.result_of(2).await.expect("revoke");
    // The very next frame from n2 is refused: n2 never sent over the route.
    assert_eq!(phone.send_to(desk_id, 3, b"after").await, Err(ErrorCode::NotAuthorized));
    phone.presence(desk_id, false).await;
    desk.assert_quiet(Duration::from_millis(800)).await;
}

/// The recipient's node is killed with -9 while the sender floods; the
/// recipient comes back through haproxy (which routes around the dead node)
/// and gets every frame, in order.
#[tokio::test]
async fn a_node_killed_mid_stream_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let n1 = node(dir.path(), &redis, "n1", &[]);
    let mut n2 = node(dir.path(), &redis, "n2", &[]);
    let n3 = node(dir.path(), &redis, "n3", &[]);
    let lb = Haproxy::start(dir.path(), &[&n1, &n2, &n3]);
    let pair = pair_for_real_between(&n1, &n2, LO, LO).await;
    let (mut desk, mut phone) = (pair.desk, pair.phone);
    let phone_id = phone.id();
    let key = phone.key.clone();
    const N: usize = 300;
    let sender = tokio::spawn(async move {
        for i in 0..N as u64 {
            desk.send_to(phone_id, i + 1, format!("m{i}").as_bytes()).await.expect("Ok");
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        desk
    });
    let (mut last, mut got) = (0u64, Vec::new());
    receive_all(&mut phone, 60, &mut last, &mut got).await;
    n2.kill9();
    // Whatever was in flight on the dead connection is read again.
    let (mut phone, _) = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let try_connect =
            tokio::time::timeout(Duration::from_secs(5), lb.connect(key.clone(), Role::Phone));
        if let Ok(p) = try_connect.await {
            break p;
        }
    };
    receive_all(&mut phone, N, &mut last, &mut got).await;
    let want: Vec<Vec<u8>> = (0..N).map(|i| format!("m{i}").into_bytes()).collect();
    assert_eq!(got, want, "every frame once, in order, across the node's death");
    let _desk = sender.await.unwrap();
}

#[tokio::test]
async fn redis_restarted_loses_no_acknowledged_frame_and_readyz_follows_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start();
    let n1 = node(dir.path(), &redis, "n1", &[]);
    let n2 = node(dir.path(), &redis, "n2", &[]);
    let pair = pair_for_real_between(&n1, &n2, LO, LO).await;
    let (mut desk, phone) = (pair.desk, pair.phone);
    let (phone_id, key) = (phone.id(), phone.key.clone());
    phone.close().await;
    for i in 0..20u64 {
        desk.send_to(phone_id, i + 1, format!("q{i}").as_bytes()).await.unwrap();
    }
    redis.kill();
    for n in [&n1, &n2] {
        let ready = common::cluster::wait_ready(n, 503, 5).await;
        assert_eq!(ready, 503, "a node without Redis is not ready");
        let (_, metrics) = common::cluster::get(n, "/metrics").await;
        let up = |m| common::metric(&metrics, m) == Some(1.0);
        let both = up("tandem_relay_store_up") && up("tandem_relay_cluster_up");
        assert!(!both, "/metrics says why it is not ready: {metrics}");
    }
    redis.restart();
    for n in [&n1, &n2] {
        let ready = common::cluster::wait_ready(n, 200, 10).await;
        assert_eq!(ready, 200, "ready again once Redis is back");
        let (_, metrics) = common::cluster::get(n, "/metrics").await;
        assert_eq!(common::metric(&metrics, "tandem_relay_cluster_up"), Some(1.0), "{metrics}");
    }
    // The phone reconnects as a client does: a refusal while the node
    // finds its way back to Redis is retried.
    let mut phone = connect_retrying(&n2, key, Role::Phone).await;
    let (mut last, mut got) = (0, Vec::new());
    receive_all(&mut phone, 20, &mut last, &mut got).await;
    let want: Vec<Vec<u8>> = (0..20).map(|i| format!("q{i}").into_bytes()).collect();
    assert_eq!(got, want, "every frame acknowledged before the restart is there after it");
}

/// SIGTERM drains a node: its devices are told to come back later, come
/// back through haproxy on the other nodes, and miss nothing.
#[tokio::test]
async fn a_node_drained_with_sigterm_sends_its_devices_to_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let n1 = node(dir.path(), &redis, "n1", &[]);
    let mut n2 = node(dir.path(), &redis, "n2", &[]);
    let n3 = node(dir.path(), &redis, "n3", &[]);
    let lb = Haproxy::start(dir.path(), &[&n1, &n2, &n3]);
    let pair = pair_for_real_between(&n1, &n2, LO, LO).await;
    let (mut desk, mut phone) = (pair.desk, pair.phone);
    let (phone_id, key) = (phone.id(), phone.key.clone());
    let status = n2.sigterm();
    assert!(status.success(), "a drained node exits cleanly: {status:?}");
    let (end, frames) = phone.until_closed(Duration::from_secs(5)).await;
    assert_eq!(end, close_code(ErrorCode::ShuttingDown));
    assert!(frames.iter().any(|f| matches!(f, Frame::Restarting { .. })), "{frames:?}");
    desk.presence(phone_id, false).await;
    for i in 0..10u64 {
        desk.send_to(phone_id, i + 1, format!("d{i}").as_bytes()).await.unwrap();
    }
    let (mut phone, _) = lb.connect(key, Role::Phone).await;
    desk.presence(phone_id, true).await;
    let (mut last, mut got) = (0, Vec::new());
    receive_all(&mut phone, 10, &mut last, &mut got).await;
    let want: Vec<Vec<u8>> = (0..10).map(|i| format!("d{i}").into_bytes()).collect();
    assert_eq!(got, want);
}

/// An embedded relay's queues and routes move to Redis with `tandem-relay
/// migrate`; a node on Redis then delivers every frame, in order, and the
/// route still stands.
#[tokio::test]
async fn a_migration_from_the_embedded_store_keeps_every_frame_and_route() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let single_dir = dir.path().join("single");
    std::fs::create_dir_all(&single_dir).unwrap();
    let mut single = common::Relay::start(&single_dir, &[]);
    let pair = pair_for_real_between(&single, &single, LO, LO).await;
    let (mut desk, phone) = (pair.desk, pair.phone);
    let (desk_id, phone_id, key) = (desk.id(), phone.id(), phone.key.clone());
    phone.close().await;
    for i in 0..30u64 {
        desk.send_to(phone_id, i + 1, format!("k{i}").as_bytes()).await.unwrap();
    }
    drop(desk);
    assert!(single.sigterm().success());

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem-relay"))
        .args(["migrate", "--store", "redis", "--redis-url", &redis.url(), "--from"])
        .arg(single_dir.join("data"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("copied 2 authorisations and 30 frames"), "{text}");
    // A second run refuses to copy into a store that holds frames.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_tandem-relay"))
        .args(["migrate", "--store", "redis", "--redis-url", &redis.url(), "--from"])
        .arg(single_dir.join("data"))
        .output()
        .unwrap();
    assert!(!again.status.success(), "copying twice needs --force");

    let n1 = node(dir.path(), &redis, "n1", &[]);
    let (mut phone, queued) = Device::connect_from(&n1, key, Role::Phone, LO).await;
    assert_eq!(queued, 30, "AuthOk counts the migrated queue");
    let (mut last, mut got) = (0, Vec::new());
    receive_all(&mut phone, 30, &mut last, &mut got).await;
    let want: Vec<Vec<u8>> = (0..30).map(|i| format!("k{i}").into_bytes()).collect();
    assert_eq!(got, want);
    phone.send_to(desk_id, 99, b"the route moved too").await.expect("the route stands on Redis");
}

/// Nodes on a Sentinel-managed Redis follow a failover: the store's epoch
/// changes (every device is told to reconnect), the cluster's connection
/// finds the new primary, and the pair split over two nodes talks again.
#[tokio::test]
async fn nodes_on_sentinel_follow_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let primary = Redis::start();
    let replica = Redis::start_replica_of(primary.port());
    let sentinel = Redis::start_sentinel(primary.port(), "main");
    let url = format!("redis+sentinel://127.0.0.1:{}/main", sentinel.port());
    let (n1, n2, desk, phone) = split_pair_on(dir.path(), &url).await;
    // The replica has the routes before the failover.
    synced(&replica).await;
    let failover = std::time::Instant::now();
    assert!(sentinel.command("SENTINEL FAILOVER main").unwrap().starts_with("+OK"));
    let closed = resume_after_failover([desk, phone], [&n1, &n2]).await;
    assert!(replica.command("ROLE").unwrap().contains("master"), "the replica was promoted");
    // The nodes leave the old primary when Sentinel announces the switch
    // (+switch-master, about a second after the command), not when it
    // demotes the old one (11 s after, with which the devices were closed
    // before the nodes listened to Sentinel).
    let took = closed.duration_since(failover);
    assert!(took < Duration::from_secs(6), "the devices were closed {took:?} after the failover");
}

/// Nodes n1 and n2 on the Redis at `url`, and a pair split over them
/// (desktop on n1, phone on n2) that exchanged a frame ("before").
async fn split_pair_on(
    dir: &std::path::Path,
    url: &str,
) -> (common::Relay, common::Relay, Device, Device) {
    let start = |id: &str| {
        let d = dir.join(id);
        std::fs::create_dir_all(&d).unwrap();
        common::Relay::start(&d, &["--store", "redis", "--redis-url", url, "--node-id", id])
    };
    let (n1, n2) = (start("n1"), start("n2"));
    let pair = pair_for_real_between(&n1, &n2, LO, LO).await;
    let (mut desk, mut phone) = (pair.desk, pair.phone);
    desk.send_to(phone.id(), 1, b"before").await.unwrap();
    assert_eq!(phone.delivery().await.2, b"before");
    (n1, n2, desk, phone)
}

/// Wait until `replica` is in sync with its primary (and a moment more,
/// for the last writes to pass).
async fn synced(replica: &Redis) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while replica.command("INFO replication").is_none_or(|i| !i.contains("master_link_status:up")) {
        assert!(std::time::Instant::now() < deadline, "the replica never synced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// After a failover of the Redis primary: both devices (desktop on n1,
/// phone on n2) are closed for the new store epoch, come back, and frames
/// cross the nodes again ("before", sent earlier, may come again first: its
/// ack may not have reached the new primary; the end-to-end layer drops
/// such a copy).
/// When the second device was closed.
async fn resume_after_failover(
    devices: [Device; 2],
    nodes: [&common::Relay; 2],
) -> std::time::Instant {
    let [mut desk, mut phone] = devices;
    let (desk_id, phone_id) = (desk.id(), phone.id());
    let (desk_key, phone_key) = (desk.key.clone(), phone.key.clone());
    for d in [&mut desk, &mut phone] {
        let (end, _) = d.until_closed(Duration::from_secs(20)).await;
        assert_eq!(
            end,
            close_code(ErrorCode::ShuttingDown),
            "a new store epoch closes every connection"
        );
    }
    let closed = std::time::Instant::now();
    let mut desk = connect_retrying(nodes[0], desk_key, Role::Desktop).await;
    let mut phone = connect_retrying(nodes[1], phone_key, Role::Phone).await;
    let mut sent = false;
    for i in 0..40u64 {
        if desk.send_to(phone_id, 10 + i, b"after").await.is_ok() {
            sent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(sent, "the desktop's sends are taken again");
    let mut got = phone.delivery().await;
    if got.2 == b"before" {
        got = phone.delivery().await;
    }
    assert_eq!((got.1, got.2.as_slice()), (desk_id, &b"after"[..]));
    closed
}

/// The nodes on a Redis Cluster (three primaries, a replica each), given
/// seeds that do not serve Tandem's slot: they find the primary that does,
/// a pair split over them talks, and after a manual failover of that
/// primary (`CLUSTER FAILOVER` on its replica; the old one answers `MOVED`)
/// they follow the slot to its new primary and go on.
#[tokio::test]
async fn nodes_on_a_redis_cluster_find_the_slot_and_follow_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let servers: Vec<Redis> = (0..6).map(|_| Redis::start_cluster_node()).collect();
    form_cluster(&servers, 1);
    // The one primary that does not redirect a key of the slot.
    let serving =
        |s: &Redis| s.call(&[b"GET", b"{tandem}:x"]).is_some_and(|r| !r.starts_with("-MOVED"));
    let owner = servers.iter().position(serving).expect("a primary serves the slot");
    let seeds: Vec<String> = servers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != owner)
        .map(|(_, s)| format!("127.0.0.1:{}", s.port()))
        .collect();
    let url = format!("redis+cluster://{}", seeds.join(","));
    let (n1, n2, desk, phone) = split_pair_on(dir.path(), &url).await;

    let owner_id = servers[owner].command("CLUSTER MYID").unwrap();
    let owner_id = owner_id.lines().nth(1).unwrap_or_default().trim().to_owned();
    let replica = servers
        .iter()
        .position(|s| {
            s.command("ROLE").is_some_and(|r| r.contains("slave")) && {
                s.command("CLUSTER NODES").is_some_and(|n| {
                    n.lines().any(|l| l.contains("myself") && l.contains(&owner_id))
                })
            }
        })
        .expect("the slot's primary has a replica");
    synced(&servers[replica]).await;
    assert!(servers[replica].command("CLUSTER FAILOVER").unwrap().starts_with("+OK"));
    resume_after_failover([desk, phone], [&n1, &n2]).await;
    assert!(
        servers[replica].command("ROLE").unwrap().contains("master"),
        "the replica was promoted"
    );
}

/// Review finding 1: a push that is late (its sender's reader was busy)
/// must not carry an id of the store epoch it was taken under into the new
/// one. Redis is wiped while frame 1's push waits; frame 2 then gets the
/// same id under the new epoch, and the phone must get frame 2, not frame 1
/// under frame 2's id (its ack would have deleted frame 2 unsent).
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_late_push_never_carries_an_old_epochs_id_into_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let d = dir.path().join("n1");
    std::fs::create_dir_all(&d).unwrap();
    let url = redis.url();
    let args = ["--store", "redis", "--redis-url", &url, "--node-id", "n1"];
    let n1 =
        common::Relay::start_env(&d, &args, &[("FAILPOINTS", "relay.push.delay=return(2500)")]);
    let (mut desk, mut phone) = common::paired(&n1).await;
    let (desk_key, phone_key, phone_id, desk_id) =
        (desk.key.clone(), phone.key.clone(), phone.id(), desk.id());
    // Frame 1 is queued (its id taken) and its push waits 2.5 s; meanwhile
    // Redis loses everything (its epoch base too): a new store epoch.
    let f1 = b"frame 1, lost with the wipe".to_vec();
    desk.send(&Frame::Send { send_id: 1, to: phone_id, payload: f1 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(redis.command("FLUSHALL").unwrap().starts_with("+OK"));
    for d in [&mut desk, &mut phone] {
        let (end, _) = d.until_closed(Duration::from_secs(10)).await;
        assert_eq!(end, close_code(ErrorCode::ShuttingDown), "a new epoch closes connections");
    }
    let mut phone = connect_retrying(&n1, phone_key, Role::Phone).await;
    let mut desk = connect_retrying(&n1, desk_key, Role::Desktop).await;
    // The routes went with the wipe: authorised again.
    desk.authorize(phone_id, 2).await.unwrap();
    phone.authorize(desk_id, 2).await.unwrap();
    desk.send_to(phone_id, 3, b"frame 2").await.unwrap();
    let (id, _, payload) = phone.delivery().await;
    assert_eq!(payload, b"frame 2", "delivery {id} must be frame 2, never the old epoch's frame 1");
    phone.assert_quiet(Duration::from_secs(3)).await;
}

/// Review finding 4: a node killed with -9 and started again at once under
/// the same node id (as compose and Kubernetes do) releases what its
/// previous run owned: a device that did not come back is announced offline.
#[tokio::test]
async fn a_node_restarted_under_its_id_releases_what_its_last_run_owned() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let mut n1 = node(dir.path(), &redis, "n1", &[]);
    let n2 = node(dir.path(), &redis, "n2", &[]);
    let pair = pair_for_real_between(&n2, &n1, LO, LO).await;
    let (mut desk, phone) = (pair.desk, pair.phone);
    let phone_id = phone.id();
    desk.presence(phone_id, true).await;
    n1.restart();
    drop(phone);
    desk.expect_within(
        "the phone offline",
        Duration::from_secs(15),
        |f| matches!(f, Frame::Presence { peer, online: false } if *peer == phone_id),
    )
    .await;
    // And a desktop connecting now is not told the phone is online.
    let (mut other, _) = Device::connect_from(&n2, desk.key.clone(), Role::Desktop, LO).await;
    let (frames, _) = other.collect_for(Duration::from_millis(800)).await;
    assert!(
        !frames
            .iter()
            .any(|f| matches!(f, Frame::Presence { peer, online: true } if *peer == phone_id)),
        "{frames:?}"
    );
}

/// Review finding 2: a `Replaced` message lost while the old node's
/// subscription was down (its pub/sub connections killed) still ends with
/// one connection: the old node reconciles when it subscribes again.
#[tokio::test]
async fn a_lost_replaced_message_still_leaves_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let n1 = node(dir.path(), &redis, "n1", &[]);
    let n2 = node(dir.path(), &redis, "n2", &[]);
    let pair = pair_for_real_between(&n2, &n1, LO, LO).await;
    let (mut desk, mut phone) = (pair.desk, pair.phone);
    let (phone_id, key) = (phone.id(), phone.key.clone());
    // n1's subscription goes down while the phone connects to n2.
    let killer = {
        let port = redis.port();
        std::thread::spawn(move || {
            for _ in 0..25 {
                let _ = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
                    use std::io::Write;
                    s.write_all(b"CLIENT KILL TYPE pubsub\r\n")
                });
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let (mut phone2, _) = Device::connect_from(&n2, key, Role::Phone, LO).await;
    killer.join().unwrap();
    let (end, _) = phone.until_closed(Duration::from_secs(8)).await;
    assert_eq!(end, close_code(ErrorCode::Replaced), "the old connection on n1 goes");
    desk.send_to(phone_id, 1, b"to the one connection").await.unwrap();
    let (_, _, payload) = phone2.delivery().await;
    assert_eq!(payload, b"to the one connection");
}

/// Frames a [`stream_to`] sender may have sent and not had answered.
const IN_FLIGHT: usize = 32;

/// Connect through the load balancer, retrying (a node may be dead, and
/// haproxy may still pick it) for up to 20 s; the `AuthOk`'s store epoch.
async fn reconnect(lb: &Haproxy, key: &tandem_proto::DeviceKey, role: Role) -> (Device, u64) {
    for _ in 0..80 {
        let Ok(ws) = tokio::time::timeout(
            Duration::from_secs(3),
            tokio_tungstenite::connect_async(lb.url.as_str()),
        )
        .await
        else {
            continue;
        };
        let Ok((ws, _)) = ws else {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        let mut d = Device { key: key.clone(), role, ws, backlog: Vec::new(), auto_pong: true };
        if !d.try_send(&Frame::Hello { min_version: 1, max_version: 1, role }).await {
            continue;
        }
        let Some(Ok(challenge)) = d.next_within(Duration::from_secs(3)).await else { continue };
        let proof = tandem_proto::relay_auth::prove(&d.key, role, &lb.addr, &challenge).unwrap();
        if !d.try_send(&proof).await {
            continue;
        }
        match d.next_within(Duration::from_secs(5)).await {
            Some(Ok(Frame::AuthOk { store_epoch, .. })) => return (d, store_epoch),
            other => {
                eprintln!("refused for now: {other:?}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    panic!("not reconnected through the load balancer within 20 s");
}

/// Send `n` payloads `<tag>-<i>` to `to`, up to [`IN_FLIGHT`] unanswered
/// at a time, as a device with an end-to-end outbox does: a refused one,
/// or one still unanswered when the connection dies, is sent again (after
/// reconnecting through `lb`); one answered `Ok` never is. Returns when
/// every one had its `Ok`, with how many times it reconnected.
async fn stream_to(
    mut d: Device,
    lb: std::sync::Arc<Haproxy>,
    to: tandem_proto::DeviceId,
    n: u64,
    tag: &'static str,
) -> u32 {
    use std::collections::{BTreeSet, HashSet};
    let mut reconnects = 0;
    let (key, role) = (d.key.clone(), d.role);
    let mut todo: BTreeSet<u64> = (1..=n).collect();
    let mut inflight: HashSet<u64> = HashSet::new();
    let mut oked = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while oked < n {
        assert!(tokio::time::Instant::now() < deadline, "{tag}: {oked} of {n} had Ok in time");
        let mut dead = false;
        while inflight.len() < IN_FLIGHT {
            let Some(i) = todo.pop_first() else { break };
            let payload = format!("{tag}-{i}").into_bytes();
            inflight.insert(i);
            if !d.try_send(&Frame::Send { send_id: i, to, payload }).await {
                dead = true;
                break;
            }
        }
        if !dead {
            match d.next_within(Duration::from_secs(10)).await {
                Some(Ok(Frame::Ok { ref_id })) => {
                    if inflight.remove(&ref_id) {
                        oked += 1;
                    }
                }
                Some(Ok(Frame::Error { ref_id, code, .. })) if ref_id != 0 => {
                    // Over the frame rate limit (it is fast), or not taken
                    // (`store_unavailable`): sent again.
                    if code != ErrorCode::RateLimited {
                        eprintln!("{tag}: send {ref_id} refused with {code}; sent again");
                    }
                    if inflight.remove(&ref_id) {
                        todo.insert(ref_id);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => dead = true,
            }
        }
        if dead {
            // Not answered on the dead connection: not taken; sent again.
            todo.extend(inflight.drain());
            d = reconnect(&lb, &key, role).await.0;
            reconnects += 1;
        }
    }
    reconnects
}

/// Receive until every payload `<tag>-1..=n` arrived, acknowledging each
/// delivery, reconnecting through `lb` whenever the connection dies. A
/// delivery whose id is not above the last one seen must be a payload
/// already received (a redelivery, as a device drops it): the ids the
/// device sees only increase. Every connection announces `epoch`. Returns
/// how many times it reconnected.
async fn receive_from(
    mut d: Device,
    lb: std::sync::Arc<Haproxy>,
    n: u64,
    tag: &'static str,
    epoch: u64,
) -> u32 {
    use std::collections::HashSet;
    let mut reconnects = 0;
    let (key, role) = (d.key.clone(), d.role);
    let want: HashSet<Vec<u8>> = (1..=n).map(|i| format!("{tag}-{i}").into_bytes()).collect();
    let mut got: HashSet<Vec<u8>> = HashSet::new();
    let mut last = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !want.is_subset(&got) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{tag}: {} of {n} received; missing {:?}",
            got.len(),
            want.difference(&got).map(|p| String::from_utf8_lossy(p).into_owned()).take(10)
        );
        match d.next_within(Duration::from_secs(10)).await {
            Some(Ok(Frame::Deliver { delivery_id, payload, .. })) => {
                if delivery_id <= last {
                    assert!(
                        got.contains(&payload),
                        "{tag}: a new payload {:?} came under id {delivery_id}, not above {last} \
                         (a device drops it as seen)",
                        String::from_utf8_lossy(&payload)
                    );
                } else {
                    last = delivery_id;
                    got.insert(payload);
                }
                let _ = d.try_send(&Frame::Ack { up_to: delivery_id.max(last) }).await;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                let (nd, e) = reconnect(&lb, &key, role).await;
                assert_eq!(e, epoch, "{tag}: Redis did not restart: one store epoch");
                d = nd;
                reconnects += 1;
            }
        }
    }
    reconnects
}

/// Two devices connected to `a` and `b` directly that authorised each
/// other, and the store epoch.
async fn routed(a: &common::Relay, b: &common::Relay) -> (Device, Device, u64) {
    let mut x = connect_retrying(a, new_key(), Role::Desktop).await;
    let mut y = connect_retrying(b, new_key(), Role::Phone).await;
    let (xi, yi) = (x.id(), y.id());
    x.authorize(yi, 1).await.unwrap();
    y.authorize(xi, 1).await.unwrap();
    (x, y, epoch_of(a).await)
}

/// The store epoch `node` announces (a throwaway device).
async fn epoch_of(node: &common::Relay) -> u64 {
    let ws = common::ws_connect_from(node, LO).await.unwrap();
    let role = Role::Phone;
    let mut d = Device { key: new_key(), role, ws, backlog: Vec::new(), auto_pong: true };
    d.send(&Frame::Hello { min_version: 1, max_version: 1, role }).await;
    let challenge = d.recv().await;
    let proof = tandem_proto::relay_auth::prove(&d.key, role, &node.addr, &challenge).unwrap();
    d.send(&proof).await;
    match d.recv().await {
        Frame::AuthOk { store_epoch, .. } => store_epoch,
        other => panic!("expected AuthOk, got {other:?}"),
    }
}

/// Senders on node A stream to recipients on node B and on their own
/// nodes (frames held in memory, `Ok` when the recipient acknowledged
/// them), and `victim` (0: A, 1: B) is killed -9 mid-stream: every frame
/// that had `Ok` arrives, the ids each recipient sees only increase, and
/// the devices of the dead node resume through the load balancer.
async fn held_frames_across_a_node_killed(victim: usize) {
    use std::sync::Arc;
    const N: u64 = 4000;
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let mut nodes = [
        node(dir.path(), &redis, "na", &[]),
        node(dir.path(), &redis, "nb", &[]),
        node(dir.path(), &redis, "nc", &[]),
    ];
    let lb = Arc::new(Haproxy::start(dir.path(), &[&nodes[0], &nodes[1], &nodes[2]]));
    // A -> B (split), B -> B and A -> A (same node: held there).
    let (a_to_b, on_b, epoch) = routed(&nodes[0], &nodes[1]).await;
    let (b_to_b, on_b2, _) = routed(&nodes[1], &nodes[1]).await;
    let (a_to_a, on_a, _) = routed(&nodes[0], &nodes[0]).await;
    let mut tasks = Vec::new();
    // Which ends sit on the victim (they must have reconnected).
    let on_victim = |node: usize| node == victim;
    for (tx, rx, tag, (at, to_at)) in
        [(a_to_b, on_b, "ab", (0, 1)), (b_to_b, on_b2, "bb", (1, 1)), (a_to_a, on_a, "aa", (0, 0))]
    {
        let to = rx.id();
        let r = tokio::spawn(receive_from(rx, lb.clone(), N, tag, epoch));
        tasks.push((format!("{tag} recipient"), on_victim(to_at), r));
        let s = tokio::spawn(stream_to(tx, lb.clone(), to, N, tag));
        tasks.push((format!("{tag} sender"), on_victim(at), s));
    }
    // Mid-stream: once frames were held and acknowledged on the victim.
    let held = "tandem_relay_send_oks_total{by=\"ack\"}";
    let acked = |m: &str| common::metric(m, held).unwrap_or(0.0);
    let mut polls = 0;
    loop {
        let m = common::cluster::get(&nodes[victim], "/metrics").await.1;
        if acked(&m) >= 300.0 {
            eprintln!("before the kill: {} Oks from acks", acked(&m));
            break;
        }
        polls += 1;
        assert!(polls < 600, "nothing held on the victim:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nodes[victim].kill9();
    for (who, moved, t) in tasks {
        let reconnects = t.await.unwrap();
        if moved {
            assert!(reconnects > 0, "{who} was on the killed node mid-stream");
        }
    }
    // The survivor held frames too (not everything went to Redis).
    let survivor = &nodes[1 - victim];
    let m = common::cluster::get(survivor, "/metrics").await.1;
    let by_ack = acked(&m);
    assert!(by_ack >= 100.0, "the survivor answered {by_ack} Oks from acks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_frames_survive_the_recipients_node_killed() {
    held_frames_across_a_node_killed(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_frames_survive_the_senders_node_killed() {
    held_frames_across_a_node_killed(0).await;
}

/// A recipient's hold is full (its window of 4 frames delivered, none
/// acknowledged, a hold window of a minute), so the sender's next frames go
/// to Redis under ids from the store's counter, above the ids its first
/// four are held under. Those four must reach Redis before them, under
/// their own ids: written later (when the recipient leaves), they found a
/// higher id in the queue and were stored after the rest, so a recipient
/// that fetched its queue again got the sender's frames out of order
/// (PROTOCOL.md §6.6). Checked on what the recipient fetches when it comes
/// back, through the real node.
#[tokio::test]
async fn frames_spilled_past_a_full_hold_keep_their_senders_order() {
    const N: u64 = 12;
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let extra = ["--delivery-window-frames", "4", "--hold-window-ms", "60000"];
    let n = node(dir.path(), &redis, "na", &extra);
    let (mut tx, mut rx, _) = routed(&n, &n).await;
    let to = rx.id();
    for i in 1..=N {
        tx.send(&Frame::Send { send_id: i, to, payload: vec![u8::try_from(i).unwrap()] }).await;
    }
    // The first four are held and delivered live; nothing is acknowledged.
    let live = rx.deliveries(4).await;
    // The four held frames are answered `Ok` (durable in Redis) while the
    // recipient is still there and silent, with a hold window of a minute:
    // they were written when the fifth found the hold full.
    for i in 1..=4 {
        tx.result_of(i).await.unwrap_or_else(|e| panic!("send {i}: {e:?}"));
    }
    // The recipient leaves and comes back: it fetches its whole queue.
    let key = rx.key.clone();
    rx.close().await;
    let mut back = connect_retrying(&n, key, Role::Phone).await;
    // Acknowledged one by one (the window is four frames).
    let mut got = Vec::new();
    for _ in 0..N {
        let d = back.delivery().await;
        ack(&mut back, d.0).await;
        got.push(d);
    }
    let order: Vec<u8> = got.iter().map(|(_, _, p)| p[0]).collect();
    let want: Vec<u8> = (1..=N).map(|i| u8::try_from(i).unwrap()).collect();
    assert_eq!(order, want, "the sender's order, fetched again");
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "ids increase: {got:?}");
    for ((id, _, p), (live_id, _, _)) in got.iter().zip(&live) {
        assert_eq!(id, live_id, "held frame {} kept the id it was delivered under", p[0]);
    }
    back.assert_quiet(Duration::from_millis(300)).await;
    // Every send was taken (those held after the write were written when
    // the recipient left).
    for i in 5..=N {
        tx.result_of(i).await.unwrap_or_else(|e| panic!("send {i}: {e:?}"));
    }
}
