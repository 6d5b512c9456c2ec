//! Store and forward (PROTOCOL.md §6.6) against a real relay process:
//! queues for offline devices, acknowledgements, durability across
//! `kill -9`, TTL expiry, bounds, and slow readers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Device, Relay, metric, paired, ws_connect_small_buffer};
use tandem_proto::frame::Frame;
use tandem_proto::{DeviceId, DeviceKey, ErrorCode, Role};

const QUIET: Duration = Duration::from_millis(300);

/// A paired desktop (online) and the phone's key and id (the phone offline).
async fn desk_and_offline_phone(relay: &Relay) -> (Device, DeviceKey, DeviceId) {
    let (mut desk, phone) = paired(relay).await;
    let (phone_key, phone_id) = (phone.key.clone(), phone.id());
    phone.close().await;
    desk.presence(phone_id, false).await;
    (desk, phone_key, phone_id)
}

/// Send all `payloads` to `to` pipelined, then check each was answered `Ok`.
async fn send_all(desk: &mut Device, to: DeviceId, payloads: &[Vec<u8>]) {
    for (i, p) in payloads.iter().enumerate() {
        desk.send(&Frame::Send { send_id: 1000 + i as u64, to, payload: p.clone() }).await;
    }
    for i in 0..payloads.len() {
        assert_eq!(desk.result_of(1000 + i as u64).await, Ok(()), "send {i}");
    }
}

fn numbered(n: usize, what: &str) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("{what} #{i:05}").into_bytes()).collect()
}

#[tokio::test]
async fn frames_for_an_offline_device_wait_and_arrive_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut desk, phone_key, phone_id) = desk_and_offline_phone(&relay).await;
    let payloads = numbered(5, "offline");
    send_all(&mut desk, phone_id, &payloads).await;

    let (mut phone, queued) = Device::connect(&relay, phone_key, Role::Phone).await;
    assert_eq!(queued, 5, "AuthOk.queued");
    let got = phone.deliveries(5).await;
    let bodies: Vec<_> = got.iter().map(|(_, _, p)| p.clone()).collect();
    assert_eq!(bodies, payloads, "every frame, in order");
    assert!(got.iter().all(|(_, from, _)| *from == desk.id()));
    let ids: Vec<u64> = got.iter().map(|(id, _, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[1] > w[0]), "{ids:?}");
    phone.assert_quiet(QUIET).await;
}

#[tokio::test]
async fn an_ack_deletes_only_what_it_covers() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut desk, phone_key, phone_id) = desk_and_offline_phone(&relay).await;
    let payloads = numbered(5, "ack");
    send_all(&mut desk, phone_id, &payloads).await;

    let (mut phone, queued) = Device::connect(&relay, phone_key.clone(), Role::Phone).await;
    assert_eq!(queued, 5);
    let first = phone.deliveries(5).await;
    phone.send(&Frame::Ack { up_to: first[2].0 }).await;
    // Not acknowledged: delivered again after a reconnect, with the same ids.
    tokio::time::sleep(Duration::from_millis(200)).await;
    phone.close().await;
    let (mut phone, queued) = Device::connect(&relay, phone_key.clone(), Role::Phone).await;
    assert_eq!(queued, 2);
    let again = phone.deliveries(2).await;
    assert_eq!(again, first[3..].to_vec(), "the same ids and payloads");
    phone.assert_quiet(QUIET).await;
    // A cumulative ack of the rest empties the queue.
    phone.send(&Frame::Ack { up_to: again[1].0 }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    phone.close().await;
    let (mut phone, queued) = Device::connect(&relay, phone_key, Role::Phone).await;
    assert_eq!(queued, 0);
    phone.assert_quiet(QUIET).await;
}

#[tokio::test]
async fn queued_frames_survive_kill_9_exactly_once_in_order() {
    const N: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), &[]);
    let (mut desk, phone_key, phone_id) = desk_and_offline_phone(&relay).await;
    let desk_key = desk.key.clone();
    let payloads = numbered(N, "durable");
    // Every one answered Ok: the relay has taken responsibility (§6.5).
    send_all(&mut desk, phone_id, &payloads).await;

    relay.kill9();
    relay.restart();

    let (mut phone, queued) = Device::connect(&relay, phone_key.clone(), Role::Phone).await;
    assert_eq!(queued as usize, N, "AuthOk.queued after the crash");
    let got = phone.deliveries(N).await;
    let bodies: Vec<_> = got.iter().map(|(_, _, p)| p.clone()).collect();
    assert_eq!(bodies, payloads, "every frame exactly once, in order");
    let ids: Vec<u64> = got.iter().map(|(id, _, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[1] > w[0]), "increasing ids: {ids:?}");
    phone.assert_quiet(QUIET).await;

    phone.send(&Frame::Ack { up_to: *ids.last().unwrap() }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    phone.close().await;
    let (mut phone, queued) = Device::connect(&relay, phone_key.clone(), Role::Phone).await;
    assert_eq!(queued, 0, "nothing redelivered after the ack");
    phone.assert_quiet(QUIET).await;

    // Delivery ids are never reused, not even after a crash.
    phone.close().await;
    let (mut desk, _) = Device::connect(&relay, desk_key, Role::Desktop).await;
    desk.send_to(phone_id, 1, b"after the crash").await.unwrap();
    let (mut phone, queued) = Device::connect(&relay, phone_key, Role::Phone).await;
    assert_eq!(queued, 1);
    let (id, _, payload) = phone.delivery().await;
    assert_eq!(payload, b"after the crash".to_vec());
    assert!(id > *ids.last().unwrap(), "id {id} reused");
}

#[tokio::test]
async fn expired_frames_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &["--queue-ttl-secs", "1", "--sweep-interval-ms", "100"]);
    let (mut desk, phone_key, phone_id) = desk_and_offline_phone(&relay).await;
    send_all(&mut desk, phone_id, &numbered(3, "short-lived")).await;
    // The TTL is whole seconds: gone within about two.
    let m = relay.wait_metric("tandem_relay_drops_total{reason=\"ttl\"}", 3.0).await;
    assert_eq!(metric(&m, "tandem_relay_queue_frames"), Some(0.0), "{m}");

    let (mut phone, queued) = Device::connect(&relay, phone_key, Role::Phone).await;
    assert_eq!(queued, 0);
    phone.assert_quiet(QUIET).await;
    // Fresh frames still flow live, after the gap the expired ids left.
    desk.send_to(phone_id, 1, b"fresh").await.unwrap();
    let (id, _, payload) = phone.delivery().await;
    assert_eq!((id, payload), (4, b"fresh".to_vec()));
}

#[tokio::test]
async fn live_delivery_works_on_a_connection_that_starts_after_earlier_ids_were_acked() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut desk, mut phone) = paired(&relay).await;
    let (phone_key, phone_id) = (phone.key.clone(), phone.id());
    desk.send_to(phone_id, 1, b"one").await.unwrap();
    let (id, _, _) = phone.delivery().await;
    phone.send(&Frame::Ack { up_to: id }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    phone.close().await;
    // The queue is empty; the next delivery id is 2.
    let (mut phone, queued) = Device::connect(&relay, phone_key, Role::Phone).await;
    assert_eq!(queued, 0);
    desk.presence(phone_id, true).await;
    desk.send_to(phone_id, 2, b"two").await.unwrap();
    let (id2, _, payload) = phone.delivery().await;
    assert_eq!((payload.as_slice(), id2 > id), (&b"two"[..], true));
}

#[tokio::test]
async fn a_queue_at_its_frame_limit_refuses_more() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &["--queue-max-frames", "3"]);
    let (mut desk, phone_key, phone_id) = desk_and_offline_phone(&relay).await;
    send_all(&mut desk, phone_id, &numbered(3, "fits")).await;
    desk.send(&Frame::Send { send_id: 4, to: phone_id, payload: b"one too many".to_vec() }).await;
    let err = desk.expect("the refusal", |f| matches!(f, Frame::Error { ref_id: 4, .. })).await;
    assert!(matches!(err, Frame::Error { code: ErrorCode::QueueFull, .. }), "{err:?}");

    let (mut phone, queued) = Device::connect(&relay, phone_key, Role::Phone).await;
    assert_eq!(queued, 3);
    let got = phone.deliveries(3).await;
    phone.assert_quiet(QUIET).await;
    // Acknowledged frames free the room.
    phone.send(&Frame::Ack { up_to: got[2].0 }).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut send_id = 10;
    loop {
        send_id += 1;
        match desk.send_to(phone_id, send_id, b"room again").await {
            Ok(()) => break,
            Err(ErrorCode::QueueFull) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("after the ack: {other:?}"),
        }
    }
    assert_eq!(phone.delivery().await.2, b"room again".to_vec());
    let m = relay.metrics().await;
    assert!(metric(&m, "tandem_relay_refusals_total{reason=\"queue_full\"}") >= Some(1.0), "{m}");
}

#[tokio::test]
async fn a_queue_at_its_byte_limit_refuses_more() {
    let dir = tempfile::tempdir().unwrap();
    // One sender may fill the whole queue here (the per-sender share is
    // tested in `sybil.rs`).
    let relay = Relay::start(
        dir.path(),
        &["--queue-max-bytes", "1000", "--queue-sender-share-percent", "100"],
    );
    let (mut desk, phone_key, phone_id) = desk_and_offline_phone(&relay).await;
    // Each frame counts its payload and 128 bytes (PROTOCOL.md §6.11).
    assert_eq!(desk.send_to(phone_id, 1, &[1; 600]).await, Ok(()));
    assert_eq!(desk.send_to(phone_id, 2, &[2; 600]).await, Err(ErrorCode::QueueFull));
    // Exactly up to the limit is fine (728 + 144 + 128 = 1 000); one more
    // frame, even an empty one, is not.
    assert_eq!(desk.send_to(phone_id, 3, &[3; 144]).await, Ok(()));
    assert_eq!(desk.send_to(phone_id, 4, &[]).await, Err(ErrorCode::QueueFull));
    let (mut phone, queued) = Device::connect(&relay, phone_key, Role::Phone).await;
    assert_eq!(queued, 2);
    let got = phone.deliveries(2).await;
    assert_eq!((got[0].2.len(), got[1].2.len()), (600, 144));
    phone.assert_quiet(QUIET).await;
}

/// Read deliveries until none arrives for a while; returns their ids.
async fn drain_ids(phone: &mut Device, expect_from: DeviceId) -> Vec<u64> {
    let mut ids = Vec::new();
    loop {
        match phone.next_within(Duration::from_secs(1)).await {
            None => return ids,
            Some(Ok(Frame::Deliver { delivery_id, from, .. })) => {
                assert_eq!(from, expect_from);
                ids.push(delivery_id);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("connection ended: {e:?}"),
        }
    }
}

#[tokio::test]
async fn an_ack_beyond_what_was_delivered_keeps_the_rest() {
    // §6.6: an up_to above what the relay delivered must not delete what it
    // has not delivered yet. The phone's tiny receive buffer keeps the
    // relay's writer stuck early in the backlog while the ack arrives.
    const N: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    // The phone acknowledges nothing meanwhile: a delivery window (§6.6)
    // larger than all of it.
    let relay = Relay::start(dir.path(), &["--delivery-window-bytes", "100000000"]);
    let (mut desk, phone_key, phone_id) = desk_and_offline_phone(&relay).await;
    let big: Vec<Vec<u8>> = (0..N).map(|i| vec![i as u8; 60_000]).collect();
    send_all(&mut desk, phone_id, &big).await;

    let ws = ws_connect_small_buffer(&relay).await;
    let (mut phone, queued) =
        Device::authenticate(ws, &relay.addr, phone_key.clone(), Role::Phone).await;
    assert_eq!(u64::from(queued), N);
    phone.send(&Frame::Ack { up_to: u64::MAX }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut seen: BTreeSet<u64> = drain_ids(&mut phone, desk.id()).await.into_iter().collect();
    // Acknowledge properly what arrived, then come back for anything left.
    phone.send(&Frame::Ack { up_to: *seen.last().unwrap() }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    phone.close().await;
    let (mut phone, _) = Device::connect(&relay, phone_key, Role::Phone).await;
    seen.extend(drain_ids(&mut phone, desk.id()).await);
    assert_eq!(seen.len() as u64, N, "frames lost: only {} of {N} ever delivered", seen.len());
}

#[tokio::test]
async fn a_recipient_that_does_not_read_never_slows_the_sender() {
    // §6.10: a slow reader never blocks anyone else; what its connection
    // cannot take waits in the store and arrives in order, exactly once.
    const N: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    // The phone acknowledges nothing meanwhile: a delivery window (§6.6)
    // larger than all of it.
    let relay = Relay::start(dir.path(), &["--delivery-window-bytes", "100000000"]);
    let (mut desk, phone) = paired(&relay).await;
    let (phone_key, phone_id, desk_id) = (phone.key.clone(), phone.id(), desk.id());
    phone.close().await;
    desk.presence(phone_id, false).await;
    let ws = ws_connect_small_buffer(&relay).await;
    let (mut phone, _) = Device::authenticate(ws, &relay.addr, phone_key, Role::Phone).await;
    desk.presence(phone_id, true).await;

    // The phone reads nothing while the desktop sends 12 MB at it.
    let start = Instant::now();
    let big: Vec<Vec<u8>> = (0..N).map(|i| vec![i as u8; 60_000]).collect();
    send_all(&mut desk, phone_id, &big).await;
    // The desktop's own requests are still answered at once.
    desk.send(&Frame::Ping { nonce: 42 }).await;
    desk.expect("pong", |f| *f == Frame::Pong { nonce: 42 }).await;
    assert!(start.elapsed() < Duration::from_secs(20), "the sender was held up");

    let mut got = Vec::new();
    while (got.len() as u64) < N {
        let (id, from, payload) = phone.delivery().await;
        assert_eq!(from, desk_id);
        got.push((id, payload));
    }
    let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "in order, no gaps or repeats: {ids:?}");
    for (i, (_, p)) in got.iter().enumerate() {
        assert_eq!(*p, big[i], "payload {i}");
    }
    phone.assert_quiet(QUIET).await;
}

#[tokio::test]
async fn a_frame_from_a_sender_that_left_at_once_still_reaches_the_online_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut desk, mut phone) = paired(&relay).await;
    let phone_id = phone.id();
    phone
        .send(&Frame::Send { send_id: 1, to: desk.id(), payload: b"fire and forget".to_vec() })
        .await;
    phone.close().await;
    let (_, from, payload) = desk.delivery().await;
    assert_eq!(payload, b"fire and forget");
    assert_eq!(from, phone_id);
}
