//! Limits and bad input (PROTOCOL.md §4.4, §5.2) against a real relay
//! process. Whatever a device sends, only its own connection suffers: the
//! relay stays up and keeps routing for everyone else.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{Device, End, Relay, close_code, metric, new_key, paired, ws_connect};
use tandem_proto::frame::{Frame, MAX_FRAME_LEN};
use tandem_proto::{ErrorCode, Role};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(5);

/// The relay is alive, healthy and still routes between a fresh pair.
async fn still_serving(relay: &mut Relay) {
    relay.assert_healthy().await;
    let (mut desk, mut phone) = paired(relay).await;
    let phone_id = phone.id();
    desk.send_to(phone_id, 1, b"still routing").await.unwrap();
    assert_eq!(phone.delivery().await.2, b"still routing".to_vec());
}

#[tokio::test]
async fn an_oversized_message_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), &[]);
    let (mut desk, mut phone) = paired(&relay).await;
    let (mut big, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    // A valid header and 70 000 bytes: over the 64 KiB limit.
    let mut msg = vec![1u8, 0x10];
    msg.resize(70_000, 0xAB);
    big.send_raw(Message::Binary(msg.into())).await;
    let (end, _) = big.until_closed(WAIT).await;
    assert!(
        end == close_code(ErrorCode::FrameTooLarge) || end == End::Dropped,
        "closed with frame_too_large (4004) or at least dropped: {end:?}"
    );
    // The others did not notice.
    let phone_id = phone.id();
    desk.send_to(phone_id, 1, b"unaffected").await.unwrap();
    assert_eq!(phone.delivery().await.2, b"unaffected".to_vec());
    still_serving(&mut relay).await;
}

#[tokio::test]
async fn a_frame_of_exactly_the_limit_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut desk, mut phone) = paired(&relay).await;
    let phone_id = phone.id();
    // Send header: 2 + 8 + 16 bytes; the largest payload that is allowed.
    let payload = vec![7u8; tandem_proto::frame::MAX_PAYLOAD_LEN];
    let frame = Frame::Send { send_id: 1, to: phone_id, payload: payload.clone() };
    assert!(frame.encode().unwrap().len() <= MAX_FRAME_LEN);
    desk.send(&frame).await;
    desk.result_of(1).await.unwrap();
    assert_eq!(phone.delivery().await.2, payload);
}

#[tokio::test]
async fn a_truncated_frame_closes_the_connection_as_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), &[]);
    let (mut d, _) = Device::connect(&relay, new_key(), Role::Phone).await;
    // A Send whose body ends inside send_id.
    d.send_raw(Message::Binary(vec![1u8, 0x10, 0, 0, 0].into())).await;
    let (end, frames) = d.until_closed(WAIT).await;
    assert_eq!(end, close_code(ErrorCode::MalformedFrame), "frames: {frames:?}");
    // Trailing bytes after a fixed layout are malformed too.
    let (mut d, _) = Device::connect(&relay, new_key(), Role::Phone).await;
    let mut ack = Frame::Ack { up_to: 1 }.encode().unwrap();
    ack.push(0);
    d.send_raw(Message::Binary(ack.into())).await;
    assert_eq!(d.until_closed(WAIT).await.0, close_code(ErrorCode::MalformedFrame));
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "tandem_relay_refusals_total{reason=\"malformed_frame\"}"), Some(2.0));
    still_serving(&mut relay).await;
}

#[tokio::test]
async fn a_text_message_closes_the_connection_as_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), &[]);
    let (mut d, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    d.send_raw(Message::Text("{\"type\":\"send\"}".into())).await;
    assert_eq!(d.until_closed(WAIT).await.0, close_code(ErrorCode::MalformedFrame));
    // Before authentication too.
    let mut d = Device::raw(&relay, Role::Phone).await;
    d.send_raw(Message::Text("hello".into())).await;
    assert_eq!(d.until_closed(WAIT).await.0, close_code(ErrorCode::MalformedFrame));
    still_serving(&mut relay).await;
}

#[tokio::test]
async fn an_unknown_frame_type_is_refused_and_the_connection_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), &[]);
    let (mut desk, mut phone) = paired(&relay).await;
    desk.send_raw(Message::Binary(vec![1u8, 0x7f, 1, 2, 3].into())).await;
    let err = desk.expect("the refusal", |f| matches!(f, Frame::Error { .. })).await;
    assert!(
        matches!(err, Frame::Error { code: ErrorCode::UnknownFrameType, ref_id: 0, .. }),
        "{err:?}"
    );
    let phone_id = phone.id();
    desk.send_to(phone_id, 1, b"still here").await.unwrap();
    assert_eq!(phone.delivery().await.2, b"still here".to_vec());
    relay.assert_healthy().await;
}

#[tokio::test]
async fn a_frame_of_another_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), &[]);
    let (mut d, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let mut ping = Frame::Ping { nonce: 1 }.encode().unwrap();
    ping[0] = 2;
    d.send_raw(Message::Binary(ping.into())).await;
    // §5.2: unsupported_version may be an Error or a close.
    match d.recv_within(WAIT).await {
        Ok(Frame::Error { code: ErrorCode::UnsupportedVersion, .. }) => {}
        Err(end) => assert_eq!(end, close_code(ErrorCode::UnsupportedVersion)),
        Ok(other) => panic!("{other:?}"),
    }
    still_serving(&mut relay).await;
}

#[tokio::test]
async fn frames_only_the_relay_sends_are_refused_as_unexpected() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), &[]);
    let (mut desk, mut phone) = paired(&relay).await;
    let (desk_id, phone_id) = (desk.id(), phone.id());
    let forged = [
        Frame::Deliver { delivery_id: 1, from: desk_id, payload: b"forged".to_vec() },
        Frame::Ok { ref_id: 1 },
        Frame::AuthOk { device_id: phone_id, queued: 0, ping_interval_ms: 1, store_epoch: 1 },
        Frame::Presence { peer: phone_id, online: true },
        Frame::Error { code: ErrorCode::Internal, ref_id: 0, message: "x".into() },
        Frame::Restarting { reconnect_after_ms: 1 },
        Frame::Hello { min_version: 1, max_version: 1, role: Role::Phone },
    ];
    for f in &forged {
        phone.send(f).await;
        let err = phone.expect("the refusal", |f| matches!(f, Frame::Error { .. })).await;
        assert!(
            matches!(err, Frame::Error { code: ErrorCode::UnexpectedFrame, .. }),
            "{f:?} answered {err:?}"
        );
    }
    // Nothing reached the desktop, and the phone still works.
    desk.assert_quiet(Duration::from_millis(200)).await;
    phone.send_to(desk_id, 9, b"real").await.unwrap();
    assert_eq!(desk.delivery().await.2, b"real".to_vec());
    relay.assert_healthy().await;
}

#[tokio::test]
async fn a_device_sending_too_fast_is_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), &["--frames-per-device-per-second", "5"]);
    let (mut desk, mut phone) = paired(&relay).await;
    let phone_id = phone.id();
    for i in 0..20u64 {
        desk.send(&Frame::Send { send_id: 100 + i, to: phone_id, payload: vec![i as u8] }).await;
    }
    let mut ok = Vec::new();
    let mut limited = 0;
    for i in 0..20u64 {
        match desk.result_of(100 + i).await {
            Ok(()) => ok.push(i as u8),
            Err(ErrorCode::RateLimited) => limited += 1,
            Err(other) => panic!("send {i}: {other:?}"),
        }
    }
    assert!(limited >= 10, "a burst of 20 at 5/s: {limited} refused");
    assert!(!ok.is_empty());
    // What was accepted is delivered, and only that.
    let got: Vec<u8> = phone.deliveries(ok.len()).await.iter().map(|(_, _, p)| p[0]).collect();
    assert_eq!(got, ok);
    phone.assert_quiet(Duration::from_millis(200)).await;
    // The budget comes back.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    desk.send_to(phone_id, 500, b"later").await.unwrap();
    let m = relay.metrics().await;
    assert!(metric(&m, "tandem_relay_refusals_total{reason=\"rate_limited\"}") >= Some(10.0));
    relay.assert_healthy().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_as_overloaded() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), &["--max-connections", "1"]);
    let (first, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let mut second = Device::raw(&relay, Role::Phone).await;
    let (end, frames) = second.until_closed(WAIT).await;
    assert_eq!(end, close_code(ErrorCode::Overloaded), "frames: {frames:?}");
    relay.assert_healthy().await;
    // The slot comes back when the first one leaves.
    first.close().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut d = Device::raw(&relay, Role::Phone).await;
        d.send(&Frame::Hello { min_version: 1, max_version: 1, role: Role::Phone }).await;
        match d.recv_within(WAIT).await {
            Ok(Frame::Challenge { .. }) => break,
            other => {
                assert!(tokio::time::Instant::now() < deadline, "never admitted: {other:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let m = relay.metrics().await;
    assert!(metric(&m, "tandem_relay_refusals_total{reason=\"overloaded\"}") >= Some(1.0), "{m}");
}

#[tokio::test]
async fn new_connections_per_ip_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), &["--connects-per-ip-per-minute", "3"]);
    for _ in 0..3 {
        let _ = ws_connect(&relay.url).await;
    }
    // The fourth TCP connection is dropped before any HTTP.
    let r = tokio_tungstenite::connect_async(relay.url.as_str()).await;
    assert!(r.is_err(), "a fourth connection within the minute was admitted");
    assert!(relay.alive());
}

#[tokio::test]
async fn garbage_before_authentication_does_not_hurt_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), &[]);
    let inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![1],
        vec![0xff; 10],
        vec![1, 0x01, 9, 9, 9],
        vec![1, 0x03, 0, 0],
        vec![1, 0x7f],
    ];
    for input in inputs {
        let mut d = Device::raw(&relay, Role::Phone).await;
        d.send_raw(Message::Binary(input.clone().into())).await;
        let (end, _) = d.until_closed(WAIT).await;
        assert!(matches!(end, End::Closed(4001..=4006)), "{input:?}: {end:?}");
    }
    still_serving(&mut relay).await;
}
