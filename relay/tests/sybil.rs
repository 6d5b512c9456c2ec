//! The queues' global byte cap and per-address share (PROTOCOL.md §6.6,
//! §6.11) against a real relay process: Sybil key pairs that authorise each
//! other, each from an address of its own, fill their shares, then the
//! relay's total, and are refused with `queue_full`, while an existing pair
//! keeps working.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{Device, Relay, metric, new_key, paired};
use tandem_proto::frame::Frame;
use tandem_proto::{ErrorCode, Role};

const FRAME: usize = 5_000;
/// What a frame is charged against the limits: its payload and 128 bytes.
const CHARGED: usize = FRAME + 128;

#[tokio::test]
async fn sybil_pairs_hit_the_global_cap_while_an_existing_pair_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    // 300 000 bytes in all; a sender address may hold a tenth of that (30 000).
    let mut relay = Relay::start(
        dir.path(),
        &[
            "--queue-total-max-bytes",
            "300000",
            "--queue-sender-share-percent",
            "10",
            "--sweep-interval-ms",
            "100",
        ],
    );
    let (mut desk, mut phone) = paired(&relay).await;
    let (desk_id, phone_id) = (desk.id(), phone.id());

    // Sybil pairs: two fresh keys that authorise each other, from an
    // address of their own; the receiver goes away and never acknowledges;
    // the sender queues until refused.
    let mut refusals = Vec::new();
    let mut stored = 0usize;
    for pair in 0..15 {
        let from = std::net::IpAddr::from([127, 0, 0, 10 + pair]);
        let (mut a, _) = Device::connect_from(&relay, new_key(), Role::Desktop, from).await;
        let (mut b, _) = Device::connect_from(&relay, new_key(), Role::Phone, from).await;
        let (a_id, b_id) = (a.id(), b.id());
        a.authorize(b_id, 1).await.unwrap();
        b.authorize(a_id, 1).await.unwrap();
        b.close().await;
        for i in 0..10u64 {
            match a.send_to(b_id, 10 + i, &[pair; FRAME]).await {
                Ok(()) => stored += CHARGED,
                Err(code) => {
                    refusals.push(code);
                    break;
                }
            }
        }
        a.close().await;
        // The existing pair works all along, both ways, with acks.
        for i in 0..3u64 {
            let id = 100 * u64::from(pair) + i;
            assert_eq!(desk.send_to(phone_id, id, &[1; FRAME]).await, Ok(()), "pair {pair}");
            let (delivery, _, _) = phone.delivery().await;
            phone.send(&Frame::Ack { up_to: delivery }).await;
            assert_eq!(phone.send_to(desk_id, id, &[2; FRAME]).await, Ok(()), "pair {pair}");
            let (delivery, _, _) = desk.delivery().await;
            desk.send(&Frame::Ack { up_to: delivery }).await;
        }
    }
    // Every Sybil sender was refused: first at its share, then at the total.
    assert_eq!(refusals.len(), 15);
    assert!(refusals.iter().all(|c| *c == ErrorCode::QueueFull), "{refusals:?}");
    assert!(stored <= 300_000, "{stored} bytes stored past the total");
    // (The pair's last frame each way may not have been acknowledged yet
    // when a Sybil sender came.)
    assert!(stored >= 300_000 - 3 * CHARGED, "the total was never reached: {stored}");
    let m = relay.metrics().await;
    let limit =
        |l: &str| metric(&m, &format!("tandem_relay_limit_refusals_total{{limit=\"{l}\"}}"));
    assert!(limit("queue_address_share") >= Some(10.0), "{m}");
    assert!(limit("queue_total") >= Some(4.0), "{m}");
    // What is queued is what the Sybils left (the pair's frames were acked).
    let m = relay.wait_metric("tandem_relay_queue_charged_bytes", stored as f64).await;
    assert_eq!(metric(&m, "tandem_relay_queue_frames"), Some((stored / CHARGED) as f64));

    // kill -9 and a restart: the accounts are rebuilt from the store, so the
    // total still holds, and the pair still works.
    let (desk_key, phone_key) = (desk.key.clone(), phone.key.clone());
    drop((desk, phone));
    relay.restart();
    let (mut a, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let (mut b, _) = Device::connect(&relay, new_key(), Role::Phone).await;
    let b_id = b.id();
    a.authorize(b_id, 1).await.unwrap();
    b.authorize(a.id(), 1).await.unwrap();
    b.close().await;
    assert_eq!(a.send_to(b_id, 2, &[9; FRAME]).await, Err(ErrorCode::QueueFull));
    let (mut desk, _) = Device::connect(&relay, desk_key, Role::Desktop).await;
    let (mut phone, _) = Device::connect(&relay, phone_key, Role::Phone).await;
    assert_eq!(desk.send_to(phone_id, 9_000, &[3; FRAME]).await, Ok(()));
    // (An acknowledgement the crash undid brings an old frame again first.)
    loop {
        let (_, _, payload) = phone.delivery().await;
        if payload == vec![3; FRAME] {
            break;
        }
        assert_eq!(payload, vec![1; FRAME], "only the pair's own frames come again");
    }
}
