//! `kill -9` while frames stream to a connected recipient, which gets each
//! one as soon as it has a delivery id, before its commit (PROTOCOL.md
//! §6.5, §6.6): no frame the sender had `Ok` for is lost, every frame
//! arrives once the sender resends what had no answer, and no delivery id
//! is ever handed out twice for different frames.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Device, Relay, paired};
use tandem_proto::Role;
use tandem_proto::frame::Frame;

const N: u64 = 3000;

/// Record a delivery: the same id must always carry the same frame.
fn note(seen: &mut BTreeMap<u64, Vec<u8>>, id: u64, payload: Vec<u8>) {
    if let Some(before) = seen.insert(id, payload.clone()) {
        assert_eq!(before, payload, "delivery id {id} was handed out for two frames");
    }
}

#[tokio::test]
async fn a_kill_9_mid_stream_loses_nothing_and_hands_out_no_id_twice() {
    let dir = tempfile::tempdir().unwrap();
    // The phone acknowledges nothing: a window larger than the stream.
    let mut relay = Relay::start(
        dir.path(),
        &["--frames-per-device-per-second", "1000000", "--delivery-window-frames", "100000"],
    );
    let (mut desk, mut phone) = paired(&relay).await;
    let (desk_key, phone_key, phone_id) = (desk.key.clone(), phone.key.clone(), phone.id());

    // The desktop streams every frame without waiting for answers (pausing
    // now and then, so the stream is still going when the relay dies); the
    // phone reads, acknowledging nothing, until a quarter arrived, and then
    // the relay is killed.
    let mut seen = BTreeMap::new();
    let send = async {
        for i in 0..N {
            let f = Frame::Send { send_id: i + 1, to: phone_id, payload: i.to_be_bytes().to_vec() };
            if !desk.try_send(&f).await {
                break;
            }
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    let read_and_kill = async {
        while (seen.len() as u64) < N / 4 {
            if let Frame::Deliver { delivery_id, payload, .. } =
                phone.recv_within(Duration::from_secs(10)).await.expect("deliveries")
            {
                note(&mut seen, delivery_id, payload);
            }
        }
        relay.kill9();
    };
    tokio::join!(send, read_and_kill);
    let mut answered = BTreeSet::new();
    let (_, frames) = desk.until_closed(Duration::from_secs(5)).await;
    for f in desk.backlog.drain(..).chain(frames) {
        if let Frame::Ok { ref_id } = f {
            answered.insert(ref_id - 1);
        }
    }
    let (_, frames) = phone.until_closed(Duration::from_secs(5)).await;
    for f in phone.backlog.drain(..).chain(frames) {
        if let Frame::Deliver { delivery_id, payload, .. } = f {
            note(&mut seen, delivery_id, payload);
        }
    }
    assert!((answered.len() as u64) < N, "the kill came too late: every frame was answered");
    let before = seen.clone();

    // Back on the same data directory: the phone gets what was stored (all
    // that had an `Ok`, none acknowledged), the desktop resends the rest.
    relay.restart();
    let (mut phone, _) = Device::connect(&relay, phone_key, Role::Phone).await;
    let (mut desk, _) = Device::connect(&relay, desk_key, Role::Desktop).await;
    let resend: Vec<u64> = (0..N).filter(|i| !answered.contains(i)).collect();
    for i in &resend {
        let f = Frame::Send { send_id: i + 1, to: phone_id, payload: i.to_be_bytes().to_vec() };
        desk.send(&f).await;
    }
    for i in &resend {
        assert_eq!(desk.result_of(i + 1).await, Ok(()), "resend of {i}");
    }
    let mut after = BTreeMap::new();
    let mut got = BTreeSet::new();
    while (got.len() as u64) < N {
        match phone.recv_within(Duration::from_secs(10)).await {
            Ok(Frame::Deliver { delivery_id, payload, .. }) => {
                got.insert(u64::from_be_bytes(payload[..].try_into().unwrap()));
                note(&mut after, delivery_id, payload.clone());
                note(&mut seen, delivery_id, payload);
            }
            Ok(_) => {}
            Err(e) => panic!("{} of {N} frames arrived after the restart ({e:?})", got.len()),
        }
    }
    // Everything answered before the kill and delivered then comes back
    // under the same id (it was stored under the id it was delivered with).
    for (id, payload) in &before {
        let i = u64::from_be_bytes(payload[..].try_into().unwrap());
        if answered.contains(&i) {
            assert_eq!(after.get(id), Some(payload), "frame {i} lost its id {id}");
        }
    }
}

#[tokio::test]
async fn an_ack_on_an_idle_relay_is_on_disk_within_about_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), &[]);
    let (mut desk, mut phone) = paired(&relay).await;
    let (phone_key, phone_id) = (phone.key.clone(), phone.id());
    desk.send_to(phone_id, 1, b"acked").await.unwrap();
    let (id, _, _) = phone.delivery().await;
    // The ack commits without an fsync; the idle writer makes it durable
    // when it is due (1 s), long before the next sweep (15 s).
    phone.send(&Frame::Ack { up_to: id }).await;
    tokio::time::sleep(Duration::from_millis(1800)).await;
    relay.kill9();
    relay.restart();
    let (mut phone, queued) = Device::connect(&relay, phone_key, Role::Phone).await;
    assert_eq!(queued, 0, "the acknowledged frame came back after a kill -9");
    phone.assert_quiet(Duration::from_millis(300)).await;
}
