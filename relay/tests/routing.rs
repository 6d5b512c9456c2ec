//! Mutual routes (PROTOCOL.md §6.5–§6.8) against a real relay process:
//! forwarding between devices that authorised each other, refusals
//! otherwise, revocation dropping what was queued, and presence.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{Device, Relay, metric, new_key, paired};
use tandem_proto::frame::Frame;
use tandem_proto::{ErrorCode, Role};

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn frames_between_mutually_authorised_devices_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut desk, mut phone) = paired(&relay).await;
    let (desk_id, phone_id) = (desk.id(), phone.id());
    for i in 0..3u64 {
        desk.send(&Frame::Send { send_id: 10 + i, to: phone_id, payload: vec![i as u8; 100] })
            .await;
    }
    for i in 0..3u64 {
        assert_eq!(desk.result_of(10 + i).await, Ok(()), "Ok{{send_id}} for send {i}");
    }
    let got = phone.deliveries(3).await;
    for (i, (_, from, payload)) in got.iter().enumerate() {
        assert_eq!(*from, desk_id);
        assert_eq!(*payload, vec![i as u8; 100], "payload byte-identical and in order");
    }
    assert!(got.windows(2).all(|w| w[1].0 > w[0].0), "increasing delivery ids: {got:?}");
    // And the other way.
    phone.send_to(desk_id, 99, b"back").await.unwrap();
    let (_, from, payload) = desk.delivery().await;
    assert_eq!((from, payload), (phone_id, b"back".to_vec()));
    // An empty payload is a payload too.
    phone.send_to(desk_id, 100, b"").await.unwrap();
    assert_eq!(desk.delivery().await.2, Vec::<u8>::new());
}

#[tokio::test]
async fn a_device_without_a_route_is_refused_and_nothing_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), &[]);
    let (mut desk, mut phone) = paired(&relay).await;
    let (mut stranger, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let phone_id = phone.id();
    assert_eq!(stranger.send_to(phone_id, 5, b"spam").await, Err(ErrorCode::NotAuthorized));
    // The refusal names the request.
    stranger.send(&Frame::Send { send_id: 6, to: phone_id, payload: b"spam".to_vec() }).await;
    let err = stranger.expect("the refusal", |f| matches!(f, Frame::Error { .. })).await;
    assert!(
        matches!(err, Frame::Error { code: ErrorCode::NotAuthorized, ref_id: 6, .. }),
        "{err:?}"
    );
    // Authorising a device on one's own creates nothing (§6.8).
    stranger.authorize(phone_id, 7).await.unwrap();
    assert_eq!(stranger.send_to(phone_id, 8, b"spam").await, Err(ErrorCode::NotAuthorized));
    phone.assert_quiet(QUIET).await;
    // Nothing was queued either.
    let phone_key = phone.key.clone();
    phone.close().await;
    desk.presence(phone_id, false).await;
    let (_, queued) = Device::connect(&relay, phone_key, Role::Phone).await;
    assert_eq!(queued, 0);
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "tandem_relay_refusals_total{reason=\"not_authorized\"}"), Some(3.0));
    relay.assert_healthy().await;
}

#[tokio::test]
async fn one_sided_authorization_is_not_enough() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut desk, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let (mut phone, _) = Device::connect(&relay, new_key(), Role::Phone).await;
    let (desk_id, phone_id) = (desk.id(), phone.id());
    desk.authorize(phone_id, 1).await.unwrap();
    assert_eq!(desk.send_to(phone_id, 2, b"a").await, Err(ErrorCode::NotAuthorized));
    assert_eq!(phone.send_to(desk_id, 2, b"b").await, Err(ErrorCode::NotAuthorized));
    // No presence about a device without a route, and nothing delivered.
    let (frames, _) = phone.collect_for(QUIET).await;
    assert!(frames.is_empty(), "{frames:?}");
    let (frames, _) = desk.collect_for(QUIET).await;
    assert!(frames.is_empty(), "{frames:?}");
    // The other side's Authorize completes the route: presence both ways.
    phone.authorize(desk_id, 3).await.unwrap();
    phone.presence(desk_id, true).await;
    desk.presence(phone_id, true).await;
    desk.send_to(phone_id, 4, b"now").await.unwrap();
    assert_eq!(phone.delivery().await.2, b"now".to_vec());
}

#[tokio::test]
async fn a_device_cannot_authorise_itself() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut desk, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let me = desk.id();
    assert_eq!(desk.authorize(me, 1).await, Err(ErrorCode::UnexpectedFrame));
    assert_eq!(desk.send_to(me, 2, b"loop").await, Err(ErrorCode::NotAuthorized));
}

/// Queue `n` frames from `from` for `to` (which is offline).
async fn queue_for(from: &mut Device, to: tandem_proto::DeviceId, n: u64) {
    for i in 0..n {
        from.send_to(to, 100 + i, format!("queued {i}").as_bytes()).await.unwrap();
    }
}

#[tokio::test]
async fn a_revoke_by_the_sender_ends_the_route_and_drops_what_was_queued() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut desk, phone) = paired(&relay).await;
    let (desk_id, phone_id, phone_key) = (desk.id(), phone.id(), phone.key.clone());
    phone.close().await;
    desk.presence(phone_id, false).await;
    queue_for(&mut desk, phone_id, 3).await;

    desk.send(&Frame::Revoke { request_id: 50, peer: phone_id }).await;
    desk.result_of(50).await.unwrap();
    assert_eq!(desk.send_to(phone_id, 51, b"after").await, Err(ErrorCode::NotAuthorized));

    let (mut phone, queued) = Device::connect(&relay, phone_key, Role::Phone).await;
    assert_eq!(queued, 0, "the queued frames were dropped");
    phone.assert_quiet(QUIET).await;
    // Refused the other way too, and no presence about the revoker.
    assert_eq!(phone.send_to(desk_id, 52, b"hello?").await, Err(ErrorCode::NotAuthorized));
    let m = relay.wait_metric("tandem_relay_drops_total{reason=\"revoked\"}", 3.0).await;
    assert_eq!(metric(&m, "tandem_relay_drops_total{reason=\"ttl\"}"), None);

    // The route comes back only when the revoker authorises again.
    phone.authorize(desk_id, 53).await.unwrap();
    assert_eq!(phone.send_to(desk_id, 54, b"still no").await, Err(ErrorCode::NotAuthorized));
    desk.authorize(phone_id, 55).await.unwrap();
    phone.send_to(desk_id, 56, b"back").await.unwrap();
    assert_eq!(desk.delivery().await.2, b"back".to_vec());
}

#[tokio::test]
async fn a_revoke_by_the_recipient_drops_its_unacknowledged_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut desk, mut phone) = paired(&relay).await;
    let (desk_id, phone_id, phone_key) = (desk.id(), phone.id(), phone.key.clone());
    // Delivered live but never acknowledged: still queued at the relay.
    queue_for(&mut desk, phone_id, 3).await;
    assert_eq!(phone.deliveries(3).await.len(), 3);
    // And some the other way, for the desktop, which is about to be offline.
    let desk_key = desk.key.clone();
    desk.close().await;
    phone.presence(desk_id, false).await;
    queue_for(&mut phone, desk_id, 2).await;

    phone.send(&Frame::Revoke { request_id: 60, peer: desk_id }).await;
    phone.result_of(60).await.unwrap();
    assert_eq!(phone.send_to(desk_id, 61, b"after").await, Err(ErrorCode::NotAuthorized));
    phone.close().await;

    // Both directions were dropped.
    let (mut phone, queued) = Device::connect(&relay, phone_key, Role::Phone).await;
    assert_eq!(queued, 0, "the phone's unacknowledged deliveries were dropped");
    phone.assert_quiet(QUIET).await;
    let (mut desk, queued) = Device::connect(&relay, desk_key, Role::Desktop).await;
    assert_eq!(queued, 0, "what the phone queued for the desktop was dropped");
    assert_eq!(desk.send_to(phone_id, 62, b"hello?").await, Err(ErrorCode::NotAuthorized));
    relay.wait_metric("tandem_relay_drops_total{reason=\"revoked\"}", 5.0).await;
}

#[tokio::test]
async fn a_connected_peer_hears_that_the_route_was_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut desk, mut phone) = paired(&relay).await;
    let (desk_id, phone_id) = (desk.id(), phone.id());
    desk.presence(phone_id, true).await;
    phone.presence(desk_id, true).await;
    phone.send(&Frame::Revoke { request_id: 1, peer: desk_id }).await;
    phone.result_of(1).await.unwrap();
    desk.presence(phone_id, false).await;
    assert_eq!(desk.send_to(phone_id, 2, b"x").await, Err(ErrorCode::NotAuthorized));
}

#[tokio::test]
async fn presence_follows_a_mutual_peer() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut desk, mut phone) = paired(&relay).await;
    let (mut bystander, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let (desk_id, phone_id, phone_key) = (desk.id(), phone.id(), phone.key.clone());
    // The route appeared while both were online: both heard about it.
    desk.presence(phone_id, true).await;
    phone.presence(desk_id, true).await;

    phone.close().await;
    desk.presence(phone_id, false).await;
    let (mut phone, _) = Device::connect(&relay, phone_key, Role::Phone).await;
    desk.presence(phone_id, true).await;
    // A device coming online is told which of its peers are online.
    phone.presence(desk_id, true).await;

    // Someone without a route hears nothing about either.
    let (frames, end) = bystander.collect_for(QUIET).await;
    assert_eq!(end, None);
    assert!(frames.iter().all(|f| !matches!(f, Frame::Presence { .. })), "{frames:?}");
}

#[tokio::test]
async fn a_revoke_without_a_route_tells_the_other_device_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut stranger, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let (mut phone, _) = Device::connect(&relay, new_key(), Role::Phone).await;
    // The phone even authorised the stranger; the stranger never did.
    phone.authorize(stranger.id(), 1).await.unwrap();
    stranger.send(&Frame::Revoke { request_id: 1, peer: phone.id() }).await;
    stranger.result_of(1).await.unwrap();
    // §6.7: presence only about devices with a route. The stranger had none.
    let (frames, _) = phone.collect_for(QUIET).await;
    assert!(frames.iter().all(|f| !matches!(f, Frame::Presence { .. })), "{frames:?}");
}

/// 50 sends tagged `tag`, pipelined, then their answers.
async fn burst(d: &mut Device, to: tandem_proto::DeviceId, tag: u8) {
    for i in 0..50u64 {
        d.send(&Frame::Send { send_id: 10 + i, to, payload: vec![tag, i as u8] }).await;
    }
    for i in 0..50u64 {
        d.result_of(10 + i).await.unwrap();
    }
}

#[tokio::test]
async fn several_senders_share_one_queue_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut a, mut phone) = paired(&relay).await;
    let (mut b, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let phone_id = phone.id();
    b.authorize(phone_id, 1).await.unwrap();
    phone.authorize(b.id(), 2).await.unwrap();
    let (a_id, b_id) = (a.id(), b.id());
    tokio::join!(burst(&mut a, phone_id, b'a'), burst(&mut b, phone_id, b'b'));
    let got = phone.deliveries(100).await;
    let ids: Vec<u64> = got.iter().map(|(id, _, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[1] > w[0]), "{ids:?}");
    for (sender, tag) in [(a_id, b'a'), (b_id, b'b')] {
        let seq: Vec<u8> = got
            .iter()
            .filter(|(_, from, _)| *from == sender)
            .map(|(_, _, p)| {
                assert_eq!(p[0], tag, "from and payload agree");
                p[1]
            })
            .collect();
        assert_eq!(seq, (0..50).collect::<Vec<u8>>(), "each sender's order is kept");
    }
    phone.assert_quiet(QUIET).await;
}

#[tokio::test]
async fn a_replaced_connection_does_not_make_the_device_look_offline() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut desk, mut phone) = paired(&relay).await;
    let (desk_id, desk_key) = (desk.id(), desk.key.clone());
    phone.presence(desk_id, true).await;
    let (mut desk2, _) = Device::connect(&relay, desk_key, Role::Desktop).await;
    let (end, _) = desk.until_closed(Duration::from_secs(5)).await;
    assert_eq!(end, common::close_code(ErrorCode::Replaced));
    // The phone may hear "online" again, but never a last word of "offline".
    let (frames, _) = phone.collect_for(QUIET).await;
    let last = frames.iter().rev().find_map(|f| match f {
        Frame::Presence { peer, online } if *peer == desk_id => Some(*online),
        _ => None,
    });
    assert_ne!(last, Some(false), "{frames:?}");
    // And frames reach the new connection.
    let phone_id = phone.id();
    phone.send_to(desk_id, 5, b"to the new one").await.unwrap();
    assert_eq!(desk2.delivery().await.2, b"to the new one".to_vec());
    desk2.send_to(phone_id, 6, b"from the new one").await.unwrap();
    assert_eq!(phone.delivery().await.2, b"from the new one".to_vec());
}

#[tokio::test]
async fn a_frame_sent_just_before_a_revoke_is_not_delivered_after_it() {
    // The sender pipelines a Send and then a Revoke without waiting: the
    // recipient must not get the frame once it has heard of the revocation.
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut desk, mut phone) = paired(&relay).await;
    phone.send(&Frame::Send { send_id: 10, to: desk.id(), payload: b"late".to_vec() }).await;
    phone.send(&Frame::Revoke { request_id: 11, peer: desk.id() }).await;
    phone.result_of(11).await.unwrap();
    let (frames, _) = desk.collect_for(Duration::from_millis(500)).await;
    let revoked_at = frames.iter().position(|f| matches!(f, Frame::Presence { online: false, .. }));
    let delivered_at = frames.iter().position(|f| matches!(f, Frame::Deliver { .. }));
    let revoked_at = revoked_at
        .unwrap_or_else(|| panic!("the desktop never heard of the revocation: {frames:?}"));
    if let Some(d) = delivered_at {
        assert!(d < revoked_at, "a frame arrived after the revocation: {frames:?}");
    }
    // And nothing is left queued for a later connection.
    let key = desk.key.clone();
    desk.close().await;
    let (_, queued) = Device::connect(&relay, key, Role::Desktop).await;
    assert_eq!(queued, 0);
}
