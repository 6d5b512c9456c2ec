//! Review r1: proofs of concept against the relay's limits (issue 13). Each
//! test states what the docs promise and tries to break it through the real
//! `tandem-relay` process; a failing test is a finding.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{Device, Relay, new_key};
use tandem_proto::{ErrorCode, Role};

/// The live allowance of PROTOCOL.md §6.11 / `store::LIVE_ALLOWANCE_BYTES`.
const MIB: usize = 1 << 20;
const FRAME: usize = 60_000;

/// Fill the relay's queue total to the byte from one address: Sybil
/// senders (each within its share) queue for `sink`, which is offline,
/// frames of falling sizes until a 1-byte frame from a fresh sender is
/// refused. Returns the bytes queued.
async fn fill_total(relay: &Relay, senders: usize) -> usize {
    let (mut sink, _) = Device::connect(relay, new_key(), Role::Phone).await;
    let sink_id = sink.id();
    let mut ss = Vec::new();
    for i in 0..senders {
        let (mut s, _) = Device::connect(relay, new_key(), Role::Desktop).await;
        s.authorize(sink_id, 1).await.unwrap();
        sink.authorize(s.id(), 100 + i as u64).await.unwrap();
        ss.push(s);
    }
    sink.close().await;
    let mut queued = 0;
    let mut send_id = 1_000u64;
    for s in &mut ss {
        for size in [FRAME, 6_000, 600, 60, 6, 1] {
            loop {
                send_id += 1;
                match s.send_to(sink_id, send_id, &vec![7; size]).await {
                    Ok(()) => queued += size,
                    Err(ErrorCode::QueueFull) => break,
                    Err(e) => panic!("{e:?}"),
                }
            }
        }
    }
    for s in ss {
        s.close().await;
    }
    queued
}

/// PROTOCOL.md §6.11: "past the total ... the overshoot is bounded by 1 MiB
/// per connected device". The allowance is checked when a frame is queued,
/// but the frames stay queued (for the TTL: 7 days) after the recipient
/// disconnects. One address with fresh keys, never more than three devices
/// connected at a time, queues as much as it likes past the total.
#[tokio::test]
#[ignore = "open finding of review r1: being fixed"]
async fn the_live_allowance_does_not_bound_the_overshoot_past_the_total() {
    let dir = tempfile::tempdir().unwrap();
    // 4 MiB in all; one sender may hold half of that (2 MiB).
    let total = 4 * MIB;
    let relay = Relay::start(
        dir.path(),
        &[
            "--queue-total-max-bytes",
            &total.to_string(),
            "--queue-sender-share-percent",
            "50",
            "--sweep-interval-ms",
            "100",
        ],
    );

    // Fill the total: two Sybil senders and an offline recipient.
    let mut queued = fill_total(&relay, 2).await;
    assert_eq!(queued, total, "the total was not reached");
    let mut send_id = 1u64 << 32;

    // Now: a fresh sender, and fresh recipients connected one at a time that
    // never acknowledge and then go away. Each gets up to 1 MiB "live".
    let rounds = 6;
    for _ in 0..rounds / 2 {
        let (mut s, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
        for _ in 0..2 {
            let (mut r, _) = Device::connect(&relay, new_key(), Role::Phone).await;
            s.authorize(r.id(), 1).await.unwrap();
            r.authorize(s.id(), 1).await.unwrap();
            loop {
                send_id += 1;
                match s.send_to(r.id(), send_id, &[8; FRAME]).await {
                    Ok(()) => queued += FRAME,
                    Err(ErrorCode::QueueFull) => break,
                    Err(e) => panic!("{e:?}"),
                }
            }
            r.close().await;
        }
        s.close().await;
    }
    // The store holds every byte of it (the relay's own gauge).
    relay.wait_metric("tandem_relay_queue_bytes", queued as f64).await;
    // At most two devices (one sender, one recipient) were ever connected at
    // once after the total was reached: the documented bound is 2 MiB.
    let bound = total + 2 * MIB;
    println!("queued {queued} bytes (total {total}, documented bound {bound})");
    assert!(
        queued <= bound,
        "{queued} bytes queued with at most 2 devices connected at a time: the total \
         ({total}) is overshot by {} MiB, past the documented 1 MiB per connected device",
        (queued - total) / MIB
    );
}

/// SECURITY.md §7: "Keys are free, so nothing here counts on one attacker
/// having one key: the limits that matter count addresses", and "with
/// enough keys and addresses the queue total" can be filled. The queue
/// shares are per key: one address with two keys (the default share is
/// 50 %) fills the whole total, and from then on every frame for every
/// offline device on the relay is refused (for the 7-day TTL).
#[tokio::test]
#[ignore = "open finding of review r1: being fixed"]
async fn one_address_with_two_keys_fills_the_total_and_offline_delivery_stops_for_everyone() {
    let dir = tempfile::tempdir().unwrap();
    let total = 2 * MIB;
    let relay = Relay::start(dir.path(), &["--queue-total-max-bytes", &total.to_string()]);
    // An honest pair on another address; the phone is in a pocket (offline).
    let other = std::net::IpAddr::from([127, 0, 0, 9]);
    let (mut desk, _) = Device::connect_from(&relay, new_key(), Role::Desktop, other).await;
    let (mut phone, _) = Device::connect_from(&relay, new_key(), Role::Phone, other).await;
    let phone_id = phone.id();
    desk.authorize(phone_id, 1).await.unwrap();
    phone.authorize(desk.id(), 1).await.unwrap();
    phone.close().await;
    assert_eq!(desk.send_to(phone_id, 2, b"before").await, Ok(()));

    // One attacker address (127.0.0.1): a sink key and two sender keys,
    // each within its 50 % share.
    assert_eq!(fill_total(&relay, 2).await + b"before".len(), total);
    // The honest desktop's next task for its phone.
    assert_eq!(
        desk.send_to(phone_id, 3, b"a task result for the phone").await,
        Ok(()),
        "one address with two keys took the whole queue total from everyone"
    );
}

/// A WebSocket from local address `from` with `xff` (raw bytes) as its
/// `X-Forwarded-For`.
async fn ws_xff(relay: &Relay, from: std::net::IpAddr, xff: &[u8]) -> common::Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let stream = common::tcp_from(&relay.addr, from).await.unwrap();
    let mut req = relay.url.as_str().into_client_request().unwrap();
    req.headers_mut().insert("x-forwarded-for", http::HeaderValue::from_bytes(xff).unwrap());
    tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(stream))
        .await
        .unwrap()
        .0
}

/// PROTOCOL.md §6.11 / SECURITY.md §7: behind a trusted proxy the client is
/// the right-most `X-Forwarded-For` entry that is not a proxy; what the
/// client put left of it is "never read". A client that puts one byte
/// outside visible ASCII (obs-text, which proxies pass through) in its own
/// `X-Forwarded-For` makes `HeaderValue::to_str` fail for the whole line,
/// and the relay counts it under the proxy's address instead: a second
/// allowance for the attacker, taken from the bucket shared by everything
/// the proxy sends without a usable header.
#[tokio::test]
async fn a_client_behind_a_trusted_proxy_escapes_its_address_with_one_non_ascii_byte() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        &["--trusted-proxies", "127.0.0.2/32", "--max-connections-per-ip", "1"],
    );
    let proxy = std::net::IpAddr::from([127, 0, 0, 2]);
    // The client 203.0.113.9, through the proxy (which appends its address
    // to the client's own header, as nginx's $proxy_add_x_forwarded_for does).
    let (first, _) = Device::authenticate(
        ws_xff(&relay, proxy, b"203.0.113.9").await,
        &relay.addr,
        new_key(),
        Role::Phone,
    )
    .await;
    // The same client again, with a byte of its own choosing in front.
    let mut second = Device {
        key: new_key(),
        role: Role::Phone,
        ws: ws_xff(&relay, proxy, b"\xff, 203.0.113.9").await,
        backlog: Vec::new(),
        auto_pong: true,
    };
    second
        .send(&tandem_proto::frame::Frame::Hello {
            min_version: 1,
            max_version: 1,
            role: Role::Phone,
        })
        .await;
    let challenge = second.recv().await;
    let proof =
        tandem_proto::relay_auth::prove(&second.key, Role::Phone, &relay.addr, &challenge).unwrap();
    second.send(&proof).await;
    let answer = second.recv().await;
    drop(first);
    assert!(
        !matches!(answer, tandem_proto::frame::Frame::AuthOk { .. }),
        "203.0.113.9 got a second connection past max_connections_per_ip = 1 (log: {})",
        relay
            .log()
            .lines()
            .filter(|l| l.contains("device connected"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
}

/// PROTOCOL.md §6.11: "at most `max_connections_per_ip` authenticated
/// connections per client address ... unless it replaces the same device's
/// connection from the same address ... One address can thus hold at most
/// 64 of the 20 000". A replacement is given a slot past the cap at once,
/// but the connection it replaces keeps its slots until its writer gives
/// up: up to `write_timeout` (10 s) when the device does not read. One
/// address that reconnects one key with a backlog it never reads holds as
/// many connections as it can open in 10 s (the accept rate allows 100),
/// and fills `max_connections` for everyone.
#[tokio::test]
async fn replacing_its_own_connection_lets_one_address_hold_past_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    // Two per address, eight in all.
    let relay =
        Relay::start(dir.path(), &["--max-connections-per-ip", "2", "--max-connections", "8"]);
    // The attacker (127.0.0.1): a desktop that queues 12 MB for its own
    // phone key while that is offline.
    let (mut s, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let (mut k, _) = Device::connect(&relay, new_key(), Role::Phone).await;
    let (k_key, k_id) = (k.key.clone(), k.id());
    s.authorize(k_id, 1).await.unwrap();
    k.authorize(s.id(), 1).await.unwrap();
    k.close().await;
    let mut id = 10;
    for _ in 0..200 {
        id += 1;
        s.send(&tandem_proto::frame::Frame::Send {
            send_id: id,
            to: k_id,
            payload: vec![1; FRAME],
        })
        .await;
    }
    s.result_of(id).await.unwrap();
    // The phone key connects again and again on sockets it never reads.
    let mut held = Vec::new();
    for _ in 0..7 {
        let ws = common::ws_connect_small_buffer(&relay).await;
        let (d, _) = Device::authenticate(ws, &relay.addr, k_key.clone(), Role::Phone).await;
        held.push(d);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Another address.
    let other = std::net::IpAddr::from([127, 0, 0, 9]);
    let ws = common::ws_connect_from(&relay, other).await.unwrap();
    let mut d =
        Device { key: new_key(), role: Role::Phone, ws, backlog: Vec::new(), auto_pong: true };
    d.send(&tandem_proto::frame::Frame::Hello {
        min_version: 1,
        max_version: 1,
        role: Role::Phone,
    })
    .await;
    let first = d.recv_within(std::time::Duration::from_secs(5)).await;
    assert!(
        matches!(first, Ok(tandem_proto::frame::Frame::Challenge { .. })),
        "one address (cap 2) holds all 8 connections: another address gets {first:?}"
    );
    drop(held);
}

/// Send `n` copies of `payload` from `s` to `to` (in pipelined chunks);
/// returns how many were refused.
async fn flood(
    s: &mut Device,
    to: tandem_proto::DeviceId,
    n: u64,
    payload: &[u8],
    next_id: &mut u64,
) -> u64 {
    use tandem_proto::frame::Frame;
    let mut refused = 0;
    let mut left = n;
    while left > 0 {
        let chunk = left.min(200);
        let first = *next_id;
        for _ in 0..chunk {
            *next_id += 1;
            s.send(&Frame::Send { send_id: *next_id, to, payload: payload.to_vec() }).await;
        }
        let mut answered = 0;
        while answered < chunk {
            match s.recv().await {
                Frame::Ok { ref_id } if ref_id > first && ref_id <= *next_id => answered += 1,
                Frame::Error { ref_id, .. } if ref_id > first && ref_id <= *next_id => {
                    answered += 1;
                    refused += 1;
                }
                _ => {}
            }
        }
        left -= chunk;
    }
    refused
}

/// SECURITY.md §7: "all queues hold at most 1 GiB (`queue_total_max_bytes`)"
/// is about disk ("Sybil key pairs ... filling the disk for the TTL"). The
/// caps count payload bytes only, so a frame with an empty payload costs
/// nothing against the total or any share, while the store keeps a row for
/// it (key, sender, expiry, B-tree). Only `queue_max_frames` (10 000 per
/// recipient) limits them, and recipients are free keys.
#[tokio::test]
#[ignore = "open finding of review r1: being fixed"]
async fn empty_frames_fill_the_disk_without_counting_against_the_total() {
    let dir = tempfile::tempdir().unwrap();
    let total: u64 = 1 << 20;
    // (The frame rate is raised only to keep the test short: an attacker
    // uses its 64 connections per address at 2 000 frames/s each.)
    let relay = Relay::start(
        dir.path(),
        &[
            "--queue-total-max-bytes",
            &total.to_string(),
            "--frames-per-device-per-second",
            "1000000",
            "--sweep-interval-ms",
            "100",
        ],
    );
    let db = dir.path().join("data/relay.redb");
    let before = std::fs::metadata(&db).unwrap().len();
    let (mut s, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let mut next_id = 100;
    let recipients = 4;
    for _ in 0..recipients {
        let (mut r, _) = Device::connect(&relay, new_key(), Role::Phone).await;
        s.authorize(r.id(), 1).await.unwrap();
        r.authorize(s.id(), 1).await.unwrap();
        let r_id = r.id();
        r.close().await;
        let refused = flood(&mut s, r_id, 10_000, &[], &mut next_id).await;
        assert_eq!(refused, 0);
    }
    let m = relay.wait_metric("tandem_relay_queue_frames", f64::from(recipients * 10_000)).await;
    assert_eq!(common::metric(&m, "tandem_relay_queue_bytes"), Some(0.0));
    let after = std::fs::metadata(&db).unwrap().len();
    println!("relay.redb: {before} -> {after} bytes; queue_bytes = 0; total cap {total}");
    assert!(
        after - before <= total,
        "the store grew by {} bytes for frames that count 0 bytes against a {total}-byte total",
        after - before
    );
}

/// The routes table has no cap but `MAX_PEERS` (1 024) per key, and keys
/// are free: `Authorize` needs no peer that exists, is a durable row, and
/// never expires (no TTL; only the authoriser's `Revoke` removes it). One
/// address fills the disk with rows no limit of issue 13 counts.
#[tokio::test]
#[ignore = "open finding of review r1: being fixed"]
async fn authorisations_of_peers_that_do_not_exist_fill_the_disk_forever() {
    use tandem_proto::frame::Frame;
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &["--frames-per-device-per-second", "1000000"]);
    let db = dir.path().join("data/relay.redb");
    let before = std::fs::metadata(&db).unwrap().len();
    let keys = 8u64;
    for _ in 0..keys {
        let (mut d, _) = Device::connect(&relay, new_key(), Role::Phone).await;
        for chunk in 0..8u64 {
            for i in 0..128u64 {
                let mut peer = [0u8; 16];
                peer[..8].copy_from_slice(&(chunk * 128 + i).to_be_bytes());
                peer[8..].copy_from_slice(&rand_bytes());
                d.send(&Frame::Authorize {
                    request_id: chunk * 128 + i + 1,
                    peer: tandem_proto::DeviceId(peer),
                })
                .await;
            }
            assert_eq!(d.result_of(chunk * 128 + 128).await, Ok(()));
        }
        d.close().await;
    }
    let after = std::fs::metadata(&db).unwrap().len();
    println!("relay.redb: {before} -> {after} bytes for {} authorisations", keys * 1024);
    // Nothing bounds this but the number of keys (each costs one connection).
    assert!(
        after - before < 100_000,
        "the store grew by {} bytes, never to shrink",
        after - before
    );
}

fn rand_bytes() -> [u8; 8] {
    let mut b = [0u8; 8];
    tandem_proto::entropy::Entropy::os().fill(&mut b).unwrap();
    b
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The deadlines bound how long a request head may take, not how large it
/// may grow meanwhile: hyper's default read buffer goes up to ~408 KiB per
/// connection, and the relay (whose requests are a WebSocket upgrade and a
/// few GETs) keeps the default. `max_unauthenticated` connections (1 024,
/// from 32 addresses) each holding an unfinished 400 KB head for the 10 s
/// of `request_timeout`, again and again, cost the relay ~400 MB of memory.
#[tokio::test]
async fn unfinished_request_heads_of_400_kb_hold_400_mb_of_relay_memory() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let pid = relay.pid();
    // Let the relay settle, then measure.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let before = rss_kib(pid);
    let mut head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ".to_vec();
    head.resize(400_000, b'a');
    let mut held = Vec::new();
    for addr in 0..32u8 {
        for _ in 0..32 {
            let from = std::net::IpAddr::from([127, 0, 1, addr]);
            let mut s = common::tcp_from(&relay.addr, from).await.unwrap();
            s.write_all(&head).await.unwrap();
            held.push(s);
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    let during = rss_kib(pid);
    println!("relay RSS: {before} KiB before, {during} KiB with {} unfinished heads", held.len());
    drop(held);
    assert!(
        during - before < 64 * 1024,
        "{} MiB of relay memory held by connections that never sent a request",
        (during - before) / 1024
    );
}

/// SECURITY.md §7's deadlines hold on the main listener only: the metrics
/// listener (`metrics_listen`) is `axum::serve` without any, so a
/// connection that never finishes a request head stays open for good, and
/// so do as many as a client opens (the same process's file descriptors
/// as the main listener's).
#[tokio::test]
async fn the_metrics_listener_closes_a_connection_that_sends_no_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_bare(
        dir.path(),
        "127.0.0.1:0",
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--request-timeout-secs",
            "1",
            "--http-timeout-secs",
            "2",
        ],
    );
    let at = relay.metrics_addr.clone().unwrap();
    let mut s = tokio::net::TcpStream::connect(&at).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let end = tokio::time::timeout(std::time::Duration::from_secs(6), s.read(&mut buf)).await;
    assert!(
        end.is_ok(),
        "the metrics listener still holds a connection without a request after 6 s"
    );
    // It still answers a real request.
    let (status, body) = common::http_get(&at, "/metrics", &[]).await;
    assert_eq!(status, 200, "{body}");
}

fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("socket:"))
        .count()
}

/// A replaced connection no longer holds a place (see above), but while its
/// writer waits out `write_timeout` on a device that does not read, it
/// still holds its socket, buffers and tasks: a key reconnecting 10 times
/// a second (the accept rate) keeps ~100 of them per address, outside
/// every cap. A replaced connection should be gone at once.
#[tokio::test]
async fn a_replaced_connection_that_does_not_read_is_gone_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut s, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let (mut k, _) = Device::connect(&relay, new_key(), Role::Phone).await;
    let (k_key, k_id) = (k.key.clone(), k.id());
    s.authorize(k_id, 1).await.unwrap();
    k.authorize(s.id(), 1).await.unwrap();
    k.close().await;
    let mut id = 10;
    for _ in 0..200 {
        id += 1;
        s.send(&tandem_proto::frame::Frame::Send {
            send_id: id,
            to: k_id,
            payload: vec![1; FRAME],
        })
        .await;
    }
    s.result_of(id).await.unwrap();
    let base = sockets_of(relay.pid());
    let mut held = Vec::new();
    for _ in 0..6 {
        let ws = common::ws_connect_small_buffer(&relay).await;
        let (d, _) = Device::authenticate(ws, &relay.addr, k_key.clone(), Role::Phone).await;
        held.push(d);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let now = sockets_of(relay.pid());
    assert!(
        now <= base + 1,
        "{} replaced connections still open 1.5 s after they were replaced",
        now - base - 1
    );
    drop(held);
}
