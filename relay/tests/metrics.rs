//! `/metrics`, `/healthz` and `/readyz` against a real relay process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{Device, Relay, metric, new_key, paired, ws_connect};
use tandem_proto::entropy::Entropy;
use tandem_proto::frame::Frame;
use tandem_proto::relay_auth::prove;
use tandem_proto::{ErrorCode, Role};

fn value(m: &str, series: &str) -> f64 {
    metric(m, series).unwrap_or_else(|| panic!("no {series} in\n{m}"))
}

#[tokio::test]
async fn metrics_count_connections_traffic_refusals_and_pairings() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), &["--sweep-interval-ms", "100"]);
    assert_eq!(relay.get("/readyz").await, (200, "ready\n".to_owned()));
    assert_eq!(relay.get("/healthz").await.0, 200);
    let m = relay.metrics().await;
    assert_eq!(value(&m, "tandem_relay_frames_forwarded_total"), 0.0);

    // Two desktops, one phone online.
    let (mut desk, mut phone) = paired(&relay).await;
    let (mut other_desk, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let m = relay.metrics().await;
    assert_eq!(value(&m, "tandem_relay_connections{role=\"desktop\"}"), 2.0);
    assert_eq!(value(&m, "tandem_relay_connections{role=\"phone\"}"), 1.0);
    assert_eq!(value(&m, "tandem_relay_connections_accepted_total"), 3.0);

    // Traffic: 3 frames of 100, 200 and 300 bytes, the last two for an offline phone.
    let phone_id = phone.id();
    desk.send_to(phone_id, 1, &[0; 100]).await.unwrap();
    phone.delivery().await;
    let phone_key = phone.key.clone();
    phone.close().await;
    desk.presence(phone_id, false).await;
    desk.send_to(phone_id, 2, &[0; 200]).await.unwrap();
    desk.send_to(phone_id, 3, &[0; 300]).await.unwrap();
    // A refusal: no route.
    assert_eq!(other_desk.send_to(phone_id, 4, b"x").await, Err(ErrorCode::NotAuthorized));
    // An authentication failure: a proof for another key.
    let mut liar = Device::raw(&relay, Role::Phone).await;
    liar.send(&Frame::Hello { min_version: 1, max_version: 1, role: Role::Phone }).await;
    let challenge = liar.recv().await;
    let Frame::Auth { proof, .. } = prove(&liar.key, Role::Phone, &relay.addr, &challenge).unwrap()
    else {
        panic!()
    };
    liar.send(&Frame::Auth { public_key: new_key().public(), proof }).await;
    liar.until_closed(Duration::from_secs(5)).await;
    // A pairing mailbox opened, claimed and closed.
    let mut pid = [0u8; 16];
    Entropy::os().fill(&mut pid).unwrap();
    desk.send(&Frame::PairOpen { request_id: 5, pairing_id: pid, ttl_secs: 60 }).await;
    desk.result_of(5).await.unwrap();
    let (mut claimer, _) = Device::connect(&relay, new_key(), Role::Phone).await;
    claimer
        .send(&Frame::PairClaim { request_id: 6, pairing_id: pid, payload: b"hello".to_vec() })
        .await;
    claimer.result_of(6).await.unwrap();
    desk.send(&Frame::PairClose { request_id: 7, pairing_id: pid }).await;
    desk.result_of(7).await.unwrap();

    // The queue gauges are refreshed by the sweep.
    let m = relay.wait_metric("tandem_relay_queue_frames", 3.0).await;
    // The first frame was delivered but never acknowledged: still queued.
    assert_eq!(value(&m, "tandem_relay_queue_bytes"), 600.0);
    assert_eq!(value(&m, "tandem_relay_frames_forwarded_total"), 3.0);
    assert_eq!(value(&m, "tandem_relay_bytes_forwarded_total"), 600.0);
    assert_eq!(value(&m, "tandem_relay_refusals_total{reason=\"not_authorized\"}"), 1.0);
    assert_eq!(value(&m, "tandem_relay_refusals_total{reason=\"auth_failed\"}"), 1.0);
    assert_eq!(value(&m, "tandem_relay_auth_failures_total"), 1.0);
    for outcome in ["opened", "claimed", "closed"] {
        let series = format!("tandem_relay_pairings_total{{outcome=\"{outcome}\"}}");
        assert_eq!(value(&m, &series), 1.0, "{series}");
    }
    assert_eq!(value(&m, "tandem_relay_connections{role=\"phone\"}"), 1.0, "only the claimer");

    // Acknowledged frames leave the gauges.
    let (mut phone, queued) = Device::connect(&relay, phone_key, Role::Phone).await;
    assert_eq!(queued, 3);
    let last = phone.deliveries(3).await[2].0;
    phone.send(&Frame::Ack { up_to: last }).await;
    let m = relay.wait_metric("tandem_relay_queue_frames", 0.0).await;
    assert_eq!(value(&m, "tandem_relay_queue_bytes"), 0.0);

    // No device ids, keys or payloads in the labels (§6.10).
    for id in [desk.id().to_string(), phone.id().to_string()] {
        assert!(!m.contains(&id), "a device id in /metrics");
    }
    assert_eq!(relay.get("/readyz").await.0, 200);
    relay.assert_healthy().await;
}

#[tokio::test]
async fn connections_gauges_go_down_when_devices_leave() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (desk, phone) = paired(&relay).await;
    relay.wait_metric("tandem_relay_connections{role=\"phone\"}", 1.0).await;
    phone.close().await;
    relay.wait_metric("tandem_relay_connections{role=\"phone\"}", 0.0).await;
    // A connection dropped without a close handshake counts down too.
    drop(desk);
    relay.wait_metric("tandem_relay_connections{role=\"desktop\"}", 0.0).await;
    // An upgrade that never authenticates is not counted.
    let _ws = ws_connect(&relay.url).await;
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "tandem_relay_connections_accepted_total"), Some(2.0));
}

#[tokio::test]
async fn metrics_are_served_only_with_the_token_or_on_their_own_listener() {
    use common::http_get;
    // The default: not served at all, whatever the request says.
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_bare(dir.path(), "127.0.0.1:0", &[]);
    assert_eq!(relay.get("/metrics").await.0, 404);
    assert_eq!(relay.get_with("/metrics", &["Authorization: Bearer x"]).await.0, 404);
    assert_eq!(relay.get("/healthz").await.0, 200);
    assert_eq!(relay.get("/readyz").await.0, 200);

    // A token: only a request that carries it gets the metrics.
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_bare(dir.path(), "127.0.0.1:0", &["--metrics-token", "s3cret"]);
    assert_eq!(relay.get("/metrics").await.0, 401);
    for wrong in ["Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "bearer s3cret"] {
        let auth = format!("Authorization: {wrong}");
        assert_eq!(relay.get_with("/metrics", &[&auth]).await.0, 401, "{wrong}");
    }
    let (status, body) = relay.get_with("/metrics", &["Authorization: Bearer s3cret"]).await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(&body, "tandem_relay_limit_refusals_total{limit=\"metrics_token\"}"),
        Some(5.0)
    );

    // A listener of its own (for a private network): no token there, and
    // still nothing on the public one.
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_bare(dir.path(), "127.0.0.1:0", &["--metrics-listen", "127.0.0.1:0"]);
    let at = relay.metrics_addr.clone().expect("the metrics listener's address");
    let (status, body) = http_get(&at, "/metrics", &[]).await;
    assert_eq!(status, 200);
    assert!(body.contains("tandem_relay_connections_accepted_total"), "{body}");
    assert_eq!(http_get(&at, "/v1/connect", &[]).await.0, 404, "only /metrics there");
    assert_eq!(relay.get("/metrics").await.0, 404);
}
