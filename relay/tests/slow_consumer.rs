//! A slow consumer is served at its pace, not disconnected (PROTOCOL.md
//! §6.6): 600 frames queued while the phone was offline (more than the
//! relay's delivery window of 512), then the real client (`tandem-client`)
//! takes 20 ms per delivery (12 s in all, a full window taking 10 s to
//! work through), against the relay
//! process pinging every second with a one-second pong deadline. The relay
//! keeps at most its delivery window unacknowledged on the connection;
//! the client keeps reading (and answering pings) while its application
//! is busy. One connection from start to end, every frame exactly once,
//! in order.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{Relay, metric, paired};
use tandem_client::{Client, ClientConfig, Event};
use tandem_proto::Role;
use tandem_proto::frame::Frame;

const N: u64 = 600;
/// What the application spends on each delivery.
const PER_DELIVERY: Duration = Duration::from_millis(20);

fn payload(i: u64) -> Vec<u8> {
    let mut p = i.to_be_bytes().to_vec();
    p.resize(1024, 0x5a);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_of_a_large_backlog_is_not_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        &[
            "--ping-interval-secs",
            "1",
            "--ping-jitter-secs",
            "0",
            "--pong-timeout-secs",
            "1",
            "--frames-per-device-per-second",
            "1000000",
        ],
    );
    let (mut desk, phone) = paired(&relay).await;
    let (phone_key, phone_id) = (phone.key.clone(), phone.id());
    phone.close().await;

    // The backlog, queued while the phone is offline.
    for i in 0..N {
        desk.send(&Frame::Send { send_id: i + 1, to: phone_id, payload: payload(i) }).await;
    }
    for i in 0..N {
        assert_eq!(desk.result_of(i + 1).await, Ok(()), "frame {i} queued");
    }

    let (client, mut events) = Client::start(ClientConfig::new(&relay.url, phone_key, Role::Phone));
    let (mut next, mut connects, mut disconnects) = (0u64, 0, Vec::new());
    while next < N {
        let e = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .unwrap_or_else(|_| panic!("stuck after {next} of {N} frames"))
            .expect("the client stopped");
        match e {
            Event::Connected { .. } => connects += 1,
            Event::Disconnected { reason, code, .. } => {
                disconnects.push(format!("{code:?} {reason}"))
            }
            Event::Deliver { delivery_id, payload: p, .. } => {
                assert_eq!(p, payload(next), "frame {next} arrives next, once");
                next += 1;
                // The application at work.
                tokio::time::sleep(PER_DELIVERY).await;
                client.ack(delivery_id);
            }
            _ => {}
        }
    }
    assert!(disconnects.is_empty(), "the slow consumer was disconnected: {disconnects:?}");
    assert_eq!(connects, 1, "one connection throughout");
    // The relay saw it too: the desktop, the phone's first connection and
    // this one, nothing more.
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "tandem_relay_connections_accepted_total"), Some(3.0), "{m}");
    client.close().await;
}
