//! Push through a real relay process (issue 19, docs/PUSH.md): the relay's
//! Web Push sender against a local push service (`push_service/`, Python:
//! the standard library's HTTP server, `cryptography` and `http_ece`, none
//! of it the relay's code) that checks every request per RFC 8030 and
//! RFC 8292 and decrypts its body per RFC 8291 with the subscription's
//! private key. This local service is the one stand-in here: it plays a
//! browser vendor's push service; the relay, its store (redb, Redis) and
//! the devices are real.
//!
//! Needs a Python with `http_ece` (`TANDEM_PUSH_PYTHON`; else the venv
//! `<target dir>/abuse-venv`, made or completed here when missing, as
//! scripts/test.sh does).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;
#[path = "support/push_service.rs"]
mod push_service;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use common::push::{device, notify, pair3, set_active};
use common::{Device, Relay, metric, new_key, paired};
use push_service::PushService;
use serde_json::Value;
use tandem_proto::entropy::Entropy;
use tandem_proto::frame::{Frame, PushSubscription};
use tandem_proto::{ErrorCode, Role};

/// A Web Push subscription for `/push/<path>` with the service's keys.
fn subscription(svc: &PushService, path: &str) -> PushSubscription {
    PushSubscription::WebPush { endpoint: svc.endpoint(path), p256dh: svc.p256dh, auth: svc.auth }
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A relay whose `[push]` allows the local service's origin, with `extra`
/// lines in that table, and `args`.
fn relay(dir: &Path, svc: &PushService, extra: &str, args: &[&str]) -> Relay {
    let config = dir.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[push]\nvapid_subject = \"mailto:push-test@example.com\"\n\
             webpush_origins = [\"{}\"]\nretry_after_ms = 300\n{extra}\n",
            svc.origin()
        ),
    )
    .unwrap();
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    Relay::start(dir, &all)
}

/// A blob as a desktop makes one (the inner seal of PROTOCOL.md §15.3:
/// `0x01 ‖ key_id ‖ nonce ‖ XChaCha20-Poly1305(push key, nonce, JSON, aad)`)
/// around `text`.
fn sealed(text: &str) -> Vec<u8> {
    let mut e = Entropy::os();
    let (mut key, mut key_id, mut nonce) = ([0u8; 32], [0u8; 8], [0u8; 24]);
    e.fill(&mut key).unwrap();
    e.fill(&mut key_id).unwrap();
    e.fill(&mut nonce).unwrap();
    let mut plain = format!("{{\"kind\":\"approval\",\"title\":\"{text}\"}}").into_bytes();
    plain.resize(plain.len().div_ceil(256) * 256, 0);
    let aad = [&b"tandem push v1"[..], &key_id].concat();
    let cipher = XChaCha20Poly1305::new(&Key::from(key));
    let tag =
        cipher.encrypt_inout_detached(&XNonce::from(nonce), &aad, (&mut plain[..]).into()).unwrap();
    [&[1u8][..], &key_id, &nonce, &plain, tag.as_slice()].concat()
}

/// Every push request was well formed (RFC 8030/8291/8292, as the
/// service checked) and decrypted.
fn assert_clean(records: &[Value]) {
    for r in records {
        assert_eq!(r["problems"], serde_json::json!([]), "{r}");
        assert!(r["plain_hex"].is_string(), "{r}");
    }
}

fn plain(r: &Value) -> Vec<u8> {
    hex_decode(r["plain_hex"].as_str().unwrap())
}

/// Every file under `dir`, read whole.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p, b));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_notify_becomes_an_rfc_8291_web_push_that_decrypts_to_the_blob_and_leaks_nothing() {
    common::record_sent();
    let dir = tempfile::tempdir().unwrap();
    let svc = PushService::start();
    let relay = relay(dir.path(), &svc, "", &[]);
    let (status, body) = relay.get("/v1/push").await;
    assert_eq!(status, 200, "{body}");
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["kinds"], serde_json::json!(["webpush"]));
    let vapid = info["vapid_public_key"].as_str().unwrap().to_owned();
    assert_eq!(vapid.len(), 87, "65 bytes, base64url without padding");

    let (mut desk, mut phone) = pair3(&relay).await;
    let secret_path = "s3cr3t-subscription-path";
    phone.send(&subscription(&svc, secret_path).frame(10)).await;
    assert_eq!(phone.result_of(10).await, Ok(()));
    set_active(&mut phone, false).await;

    let canary = format!("CANARY-{}", hex(&rand_bytes()));
    let blob = sealed(&canary);
    assert!(!contains(&blob, canary.as_bytes()), "the blob is sealed");
    assert_eq!(notify(&mut desk, 20, phone.id(), 3, [0xab; 16], &blob).await, Ok(()));

    let records = svc.wait_records(1).await;
    assert_clean(&records);
    let r = &records[0];
    assert_eq!(plain(r), blob, "the push service's payload decrypts to the blob byte for byte");
    assert_eq!(r["path"], format!("/push/{secret_path}"));
    assert_eq!(r["urgency"], "high");
    assert_eq!(r["topic"], "ab".repeat(16));
    assert_eq!(r["ttl"], "3600");
    assert_eq!(r["vapid_k"], vapid, "signed with the key /v1/push names");
    let wire = hex_decode(r["body_hex"].as_str().unwrap());
    assert!(!contains(&wire, &blob), "the body is encrypted");
    let m = relay.wait_metric("tandem_relay_push_sent_total{kind=\"webpush\"}", 1.0).await;
    assert_eq!(metric(&m, "tandem_relay_push_suppressed_total{reason=\"active\"}"), None);

    // The canary: nowhere the relay wrote or sent it, nor in what the
    // devices sent (a positive control first: the scan finds it).
    assert!(contains(format!("x{canary}y").as_bytes(), canary.as_bytes()));
    let log = relay.log();
    assert!(!log.contains(&canary), "the log names the canary");
    assert!(!log.contains(secret_path), "the log names the endpoint's path");
    for (path, bytes) in files_under(&dir.path().join("data")) {
        assert!(!contains(&bytes, canary.as_bytes()), "{} holds the canary", path.display());
    }
    for sent in common::sent_so_far() {
        assert!(!contains(&sent, canary.as_bytes()), "a device sent the canary in clear");
    }
    assert!(!contains(&wire, canary.as_bytes()) && !contains(&plain(r), canary.as_bytes()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("data/vapid.key")).unwrap().permissions();
        assert_eq!(mode.mode() & 0o777, 0o600);
    }
}

fn rand_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    Entropy::os().fill(&mut b).unwrap();
    b
}

#[tokio::test]
async fn no_push_while_the_phone_is_active_here_one_when_it_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let svc = PushService::start();
    let relay = relay(dir.path(), &svc, "", &[]);
    let (mut desk, mut phone) = pair3(&relay).await;
    phone.send(&subscription(&svc, "p").frame(2)).await;
    assert_eq!(phone.result_of(2).await, Ok(()));

    // A connection starts active: suppressed.
    assert_eq!(notify(&mut desk, 10, phone.id(), 2, [0; 16], b"one").await, Ok(()));
    relay.wait_metric("tandem_relay_push_suppressed_total{reason=\"active\"}", 1.0).await;
    // In the background: pushed.
    set_active(&mut phone, false).await;
    assert_eq!(notify(&mut desk, 11, phone.id(), 2, [0; 16], b"two").await, Ok(()));
    assert_eq!(plain(&svc.wait_records(1).await[0]), b"two");
    // Active again: suppressed.
    set_active(&mut phone, true).await;
    assert_eq!(notify(&mut desk, 12, phone.id(), 2, [0; 16], b"three").await, Ok(()));
    relay.wait_metric("tandem_relay_push_suppressed_total{reason=\"active\"}", 2.0).await;
    // Gone: pushed.
    let phone_id = phone.id();
    phone.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(notify(&mut desk, 13, phone_id, 2, [0; 16], b"four").await, Ok(()));
    let records = svc.wait_records(2).await;
    assert_clean(&records);
    let got: Vec<Vec<u8>> = records.iter().map(plain).collect();
    assert_eq!(got, [b"two".to_vec(), b"four".to_vec()]);

    // A level-2 connection may not send push frames.
    let (mut old, _) = Device::connect_at(&relay, new_key(), Role::Phone, 2).await;
    old.send(&subscription(&svc, "old").frame(5)).await;
    assert_eq!(old.result_of(5).await, Err(ErrorCode::UnexpectedFrame));
}

#[tokio::test]
async fn pushes_collapse_per_topic_and_are_paced_per_device() {
    let dir = tempfile::tempdir().unwrap();
    let svc = PushService::start();
    let relay = relay(dir.path(), &svc, "burst = 1\ninterval_ms = 700\nmax_waiting = 3", &[]);
    let (mut desk, mut phone) = pair3(&relay).await;
    phone.send(&subscription(&svc, "c").frame(2)).await;
    assert_eq!(phone.result_of(2).await, Ok(()));
    let to = phone.id();
    phone.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (a, b) = ([0xa; 16], [0xb; 16]);
    let sent = [
        (1, a, &b"a1"[..]), // the burst: at once
        (2, a, b"a2"),      // waits…
        (3, a, b"a3"),      // …and is replaced by this one
        (4, b, b"b4"),
        (5, [0; 16], b"n5"),
    ];
    for (id, topic, blob) in sent {
        assert_eq!(notify(&mut desk, id, to, 2, topic, blob).await, Ok(()), "{id}");
    }
    // Three wait (a3, b4, n5): a fourth is refused.
    assert_eq!(notify(&mut desk, 6, to, 2, [0; 16], b"n6").await, Err(ErrorCode::RateLimited));
    // A newer push for a waiting topic still collapses into it.
    assert_eq!(notify(&mut desk, 7, to, 2, b, b"b7").await, Ok(()));

    let records = svc.wait_records(4).await;
    assert_clean(&records);
    let got: Vec<Vec<u8>> = records.iter().map(plain).collect();
    assert_eq!(got, [&b"a1"[..], b"a3", b"b7", b"n5"].map(<[u8]>::to_vec));
    let at: Vec<f64> = records.iter().map(|r| r["at"].as_f64().unwrap()).collect();
    for w in at.windows(2) {
        assert!(w[1] - w[0] > 0.5, "paced at one per 700 ms: {at:?}");
    }
    assert_eq!(records[1]["topic"], hex(&a));
    assert_eq!(records[3]["topic"], Value::Null, "no Topic header without a topic");
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(svc.records().await.len(), 4, "nothing more: a2, b4 and n6 never went");
    let m =
        relay.wait_metric("tandem_relay_push_suppressed_total{reason=\"collapsed\"}", 2.0).await;
    assert_eq!(metric(&m, "tandem_relay_push_sent_total{kind=\"webpush\"}"), Some(4.0));
}

#[tokio::test]
async fn a_gone_endpoint_removes_the_subscription_and_a_failing_one_is_tried_twice() {
    let dir = tempfile::tempdir().unwrap();
    let svc = PushService::start();
    let relay = relay(dir.path(), &svc, "", &[]);
    let (mut desk, mut phone) = pair3(&relay).await;
    phone.send(&subscription(&svc, "gone/x").frame(2)).await;
    assert_eq!(phone.result_of(2).await, Ok(()));
    set_active(&mut phone, false).await;
    let to = phone.id();

    assert_eq!(notify(&mut desk, 10, to, 2, [0; 16], b"first").await, Ok(()));
    let records = svc.wait_records(1).await;
    assert_eq!(records[0]["status"], 410);
    relay.wait_metric("tandem_relay_push_removed_total{kind=\"webpush\"}", 1.0).await;
    // The next one finds no subscription and goes nowhere.
    assert_eq!(notify(&mut desk, 11, to, 2, [0; 16], b"second").await, Ok(()));
    relay.wait_metric("tandem_relay_push_suppressed_total{reason=\"no_subscription\"}", 1.0).await;
    assert_eq!(svc.records().await.len(), 1);

    // A service that fails (500) is tried once more, then counted.
    phone.send(&subscription(&svc, "fail/y").frame(3)).await;
    assert_eq!(phone.result_of(3).await, Ok(()));
    assert_eq!(notify(&mut desk, 12, to, 2, [0; 16], b"third").await, Ok(()));
    let records = svc.wait_records(3).await;
    assert_clean(&records);
    assert_eq!(records[1]["status"], 500);
    assert_eq!(plain(&records[2]), b"third");
    relay
        .wait_metric("tandem_relay_push_failed_total{kind=\"webpush\",reason=\"unavailable\"}", 1.0)
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(svc.records().await.len(), 3, "tried twice, not more");
}

#[tokio::test]
async fn bad_and_unrouted_requests_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let svc = PushService::start();
    let relay = relay(dir.path(), &svc, "", &[]);
    let (mut desk, mut phone) = pair3(&relay).await;
    phone.send(&subscription(&svc, "good").frame(2)).await;
    assert_eq!(phone.result_of(2).await, Ok(()));

    let mut not_a_point = svc.p256dh;
    not_a_point[1] ^= 0xff;
    let refused = [
        (Frame::PushSubscribe { request_id: 3, kind: 9, data: vec![] }, ErrorCode::MalformedFrame),
        (
            Frame::PushSubscribe { request_id: 4, kind: 1, data: vec![0, 1] },
            ErrorCode::MalformedFrame,
        ),
        (
            PushSubscription::WebPush {
                endpoint: format!("{}/push/bad-key", svc.origin()),
                p256dh: not_a_point,
                auth: svc.auth,
            }
            .frame(5),
            ErrorCode::MalformedFrame,
        ),
        (
            PushSubscription::WebPush {
                endpoint: "http://127.0.0.1:1/push/elsewhere".into(),
                p256dh: svc.p256dh,
                auth: svc.auth,
            }
            .frame(6),
            ErrorCode::UnexpectedFrame,
        ),
        (
            PushSubscription::WebPush {
                endpoint: "https://169.254.169.254/latest".into(),
                p256dh: svc.p256dh,
                auth: svc.auth,
            }
            .frame(7),
            ErrorCode::UnexpectedFrame,
        ),
        (PushSubscription::Apns { token: vec![1; 32] }.frame(8), ErrorCode::PushUnavailable),
        (PushSubscription::Fcm { token: "t".into() }.frame(9), ErrorCode::PushUnavailable),
    ];
    for (frame, code) in refused {
        let Frame::PushSubscribe { request_id, .. } = frame else { unreachable!() };
        phone.send(&frame).await;
        assert_eq!(phone.result_of(request_id).await, Err(code), "{request_id}");
    }
    // Only phones register subscriptions.
    desk.send(&subscription(&svc, "desk").frame(3)).await;
    assert_eq!(desk.result_of(3).await, Err(ErrorCode::UnexpectedFrame));

    // Bad Notify requests.
    let to = phone.id();
    assert_eq!(notify(&mut desk, 30, to, 4, [0; 16], b"x").await, Err(ErrorCode::MalformedFrame));
    assert_eq!(notify(&mut desk, 31, to, 2, [0; 16], b"").await, Err(ErrorCode::MalformedFrame));
    let big = vec![1u8; tandem_proto::frame::MAX_PUSH_BLOB + 1];
    assert_eq!(notify(&mut desk, 32, to, 2, [0; 16], &big).await, Err(ErrorCode::MalformedFrame));
    // Unrouted: a device the desktop never paired with, and one that
    // authorised the desktop only one way.
    let mut stranger = device(&relay, Role::Phone).await;
    let code = notify(&mut desk, 33, stranger.id(), 2, [0; 16], b"x").await;
    assert_eq!(code, Err(ErrorCode::NotAuthorized));
    stranger.authorize(desk.id(), 1).await.unwrap();
    let code = notify(&mut desk, 34, stranger.id(), 2, [0; 16], b"x").await;
    assert_eq!(code, Err(ErrorCode::NotAuthorized));
    let code = notify(&mut stranger, 35, desk.id(), 2, [0; 16], b"x").await;
    assert_eq!(code, Err(ErrorCode::NotAuthorized));

    // Nothing changed: the good subscription still gets the push, and both
    // connections are still open.
    set_active(&mut phone, false).await;
    assert_eq!(notify(&mut desk, 40, to, 2, [0; 16], b"still").await, Ok(()));
    let records = svc.wait_records(1).await;
    assert_clean(&records);
    assert_eq!(
        (records[0]["path"].as_str(), plain(&records[0])),
        (Some("/push/good"), b"still".to_vec())
    );
    assert_eq!(svc.records().await.len(), 1);

    // A phone removes its subscription: the next push finds none.
    phone.send(&PushSubscription::Remove.frame(50)).await;
    assert_eq!(phone.result_of(50).await, Ok(()));
    assert_eq!(notify(&mut desk, 41, to, 2, [0; 16], b"none").await, Ok(()));
    relay.wait_metric("tandem_relay_push_suppressed_total{reason=\"no_subscription\"}", 1.0).await;
}

#[tokio::test]
async fn the_subscription_and_the_vapid_key_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let svc = PushService::start();
    let mut relay = relay(dir.path(), &svc, "", &[]);
    let (_, before) = relay.get("/v1/push").await;
    let (desk, mut phone) = pair3(&relay).await;
    let (desk_key, phone_id) = (desk.key.clone(), phone.id());
    phone.send(&subscription(&svc, "kept").frame(2)).await;
    assert_eq!(phone.result_of(2).await, Ok(()));
    drop((desk, phone));

    relay.restart();
    let (_, after) = relay.get("/v1/push").await;
    assert_eq!(before, after, "the VAPID key is the same after a restart");
    let (mut desk, _) = Device::connect_at(&relay, desk_key, Role::Desktop, 3).await;
    assert_eq!(notify(&mut desk, 10, phone_id, 1, [0; 16], b"after restart").await, Ok(()));
    let records = svc.wait_records(1).await;
    assert_clean(&records);
    assert_eq!(plain(&records[0]), b"after restart");
    assert_eq!(records[0]["urgency"], "low");
}

#[tokio::test]
async fn push_works_on_the_redis_store() {
    let redis = common::redis_server::RedisServer::start();
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let svc = PushService::start();
    let relay = relay(dir.path(), &svc, "", &["--store", "redis", "--redis-url", &url]);
    let (mut desk, mut phone) = pair3(&relay).await;
    phone.send(&subscription(&svc, "on-redis").frame(2)).await;
    assert_eq!(phone.result_of(2).await, Ok(()));
    let to = phone.id();
    phone.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(notify(&mut desk, 10, to, 0, [0; 16], b"via redis").await, Ok(()));
    let records = svc.wait_records(1).await;
    assert_clean(&records);
    assert_eq!(
        (plain(&records[0]), records[0]["urgency"].as_str()),
        (b"via redis".to_vec(), Some("very-low"))
    );
    let stored = redis.command("HLEN {tandem}:push").unwrap();
    assert_eq!(stored.trim(), ":1", "the subscription is in Redis");
}

#[tokio::test]
async fn the_client_crate_subscribes_notifies_and_goes_to_the_background() {
    use tandem_client::{Client, ClientConfig};
    let dir = tempfile::tempdir().unwrap();
    let svc = PushService::start();
    let mut relay = relay(dir.path(), &svc, "", &[]);
    let url = relay.url.clone();
    let start = |role| {
        let (c, mut events) = Client::start(ClientConfig::new(url.clone(), new_key(), role));
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        c
    };
    let (desk, phone): (Client, Client) = (start(Role::Desktop), start(Role::Phone));
    desk.authorize(phone.device_id()).await.unwrap();
    phone.authorize(desk.device_id()).await.unwrap();
    phone.push_subscribe(&subscription(&svc, "client")).await.unwrap();
    let bad = PushSubscription::Apns { token: vec![1] };
    assert!(phone.push_subscribe(&bad).await.is_err(), "no APNs sender here");
    // Active (the default): suppressed.
    let urgent = tandem_proto::frame::Urgency::High;
    desk.notify(phone.device_id(), urgent, [0; 16], b"hidden".to_vec()).await.unwrap();
    relay.wait_metric("tandem_relay_push_suppressed_total{reason=\"active\"}", 1.0).await;
    phone.set_active(false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    desk.notify(phone.device_id(), urgent, [0; 16], b"shown".to_vec()).await.unwrap();
    let records = svc.wait_records(1).await;
    assert_clean(&records);
    assert_eq!(plain(&records[0]), b"shown");
    let stranger = tandem_proto::DeviceId([9; 16]);
    let e = desk.notify(stranger, urgent, [0; 16], b"x".to_vec()).await.unwrap_err();
    assert!(format!("{e:?}").contains("NotAuthorized"), "{e:?}");
    assert_eq!(svc.records().await.len(), 1);

    // The relay restarts: the phone's new connection starts active, and
    // the client says it is in the background again (else suppressed).
    relay.restart();
    relay.wait_metric("tandem_relay_connections{role=\"phone\"}", 1.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    desk.notify(phone.device_id(), urgent, [0; 16], b"again".to_vec()).await.unwrap();
    let records = svc.wait_records(2).await;
    assert_clean(&records);
    assert_eq!(plain(&records[1]), b"again");
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "tandem_relay_push_suppressed_total{reason=\"active\"}"), None);
}

/// The harness's paired devices speak level 1: push frames are unexpected.
#[tokio::test]
async fn level_1_devices_cannot_notify() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut desk, phone) = paired(&relay).await;
    assert_eq!(
        notify(&mut desk, 5, phone.id(), 2, [0; 16], b"x").await,
        Err(ErrorCode::UnexpectedFrame)
    );
    let (status, _) = relay.get("/v1/push").await;
    assert_eq!(status, 200, "Web Push is always on");
}

/// Found in review: pushes waiting for their turn (past the burst) are
/// sent after the phone revoked the desktop that asked for them — the
/// route is checked when `Notify` arrives, not when the push goes.
#[tokio::test]
async fn pushes_still_waiting_when_the_route_is_revoked_are_not_sent() {
    let dir = tempfile::tempdir().unwrap();
    let svc = PushService::start();
    let relay = relay(dir.path(), &svc, "burst = 1\ninterval_ms = 700\nmax_waiting = 3", &[]);
    let (mut desk, mut phone) = pair3(&relay).await;
    phone.send(&subscription(&svc, "r").frame(2)).await;
    assert_eq!(phone.result_of(2).await, Ok(()));
    set_active(&mut phone, false).await;
    let to = phone.id();
    for (id, blob) in [(1, &b"n1"[..]), (2, b"n2"), (3, b"n3")] {
        assert_eq!(notify(&mut desk, id, to, 2, [0; 16], blob).await, Ok(()), "{id}");
    }
    assert_eq!(svc.wait_records(1).await.len(), 1, "the burst goes at once");
    phone.send(&Frame::Revoke { request_id: 9, peer: desk.id() }).await;
    assert_eq!(phone.result_of(9).await, Ok(()));
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let got: Vec<Vec<u8>> = svc.records().await.iter().map(plain).collect();
    assert_eq!(got, [b"n1".to_vec()], "pushes of a revoked desktop went out");
    relay.wait_metric("tandem_relay_push_suppressed_total{reason=\"no_route\"}", 2.0).await;
}
