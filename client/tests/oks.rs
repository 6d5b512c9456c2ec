//! `Oks` (PROTOCOL.md §6.5, level 2) against a fake relay: the client says
//! `Hello{1, 2}`, takes an `Oks` as one `Ok` per `Send` it covers that is in
//! flight, ignores the ids it does not know, never answers another kind of
//! request with it, and gives up a connection that sends a malformed one
//! (the sends go again, with their ids, on the next).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{FakeRelay, Options, key, within};
use tandem_client::proto::frame::OkRun;
use tandem_client::proto::{DeviceId, Frame, Role};
use tandem_client::{Client, ClientConfig, Event};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const PEER: DeviceId = DeviceId([7; 16]);

fn config(url: &str) -> ClientConfig {
    let mut c = ClientConfig::new(url, key(), Role::Phone);
    c.backoff_min = Duration::from_millis(10);
    c.backoff_max = Duration::from_millis(100);
    c.ping_interval = Duration::from_secs(60);
    c.connect_timeout = Duration::from_secs(2);
    c
}

async fn connected(events: &mut mpsc::Receiver<Event>) {
    loop {
        match within(events.recv()).await.expect("events") {
            Event::Connected { .. } => return,
            Event::Disconnected { .. } => {}
            other => panic!("expected Connected, got {other:?}"),
        }
    }
}

type Answer = JoinHandle<Result<(), tandem_client::ClientError>>;

/// `n` sends, spawned; with the ids the relay saw, in order.
async fn sends(client: &Client, server: &mut common::RelayConn, n: u8) -> Vec<(u64, Answer)> {
    let mut out = Vec::new();
    for i in 0..n {
        let c = client.clone();
        let answer = tokio::spawn(async move { c.send(PEER, vec![i]).await });
        let Frame::Send { send_id, payload, .. } = server.expect().await else { panic!() };
        assert_eq!(payload, [i]);
        out.push((send_id, answer));
    }
    out
}

fn run(first: u64, count: u32) -> OkRun {
    OkRun { first, count }
}

#[tokio::test]
async fn an_oks_answers_each_send_in_flight_it_covers() {
    let mut relay = FakeRelay::start(Options::default()).await;
    let (client, mut events) = Client::start(config(&relay.url()));
    connected(&mut events).await;
    let mut server = relay.accept().await;

    let mut sent = sends(&client, &mut server, 6).await;
    let ids: Vec<u64> = sent.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "consecutive ids: {ids:?}");
    // An authorisation in flight too: an `Oks` never answers it.
    let c = client.clone();
    let authorize = tokio::spawn(async move { c.authorize(PEER).await });
    let Frame::Authorize { request_id, .. } = server.expect().await else { panic!() };

    // The first two and the fourth, plus ids nobody waits for (the
    // authorisation's among them) in the same runs.
    let to_second = u32::try_from(ids[1] + 1).unwrap();
    let oks = vec![run(0, to_second), run(ids[3], 1), run(request_id, 1), run(1 << 40, 3)];
    server.send(&Frame::Oks { runs: oks }).await;
    let answered: Vec<(u64, Answer)> =
        sent.extract_if(.., |(id, _)| [ids[0], ids[1], ids[3]].contains(id)).collect();
    for (id, answer) in answered {
        assert_eq!(within(answer).await.unwrap(), Ok(()), "send {id}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(sent.iter().all(|(_, a)| !a.is_finished()), "the rest still wait");
    assert!(!authorize.is_finished(), "an Oks does not answer an Authorize");

    // The rest, and again one already answered (ignored).
    server.send(&Frame::Oks { runs: vec![run(ids[1], 2), run(ids[4], 2)] }).await;
    for (id, answer) in sent {
        assert_eq!(within(answer).await.unwrap(), Ok(()), "send {id}");
    }
    server.send(&Frame::Ok { ref_id: request_id }).await;
    within(authorize).await.unwrap().unwrap();
    // Per-id `Ok` for sends still works beside `Oks`.
    let mut last = sends(&client, &mut server, 1).await;
    let (id, answer) = last.pop().unwrap();
    server.send(&Frame::Ok { ref_id: id }).await;
    within(answer).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_malformed_oks_ends_the_connection_and_the_sends_go_again() {
    let mut relay = FakeRelay::start(Options::default()).await;
    let (client, mut events) = Client::start(config(&relay.url()));
    connected(&mut events).await;
    let mut server = relay.accept().await;
    let sent = sends(&client, &mut server, 3).await;
    let ids: BTreeSet<u64> = sent.iter().map(|(id, _)| *id).collect();
    let first = *ids.first().unwrap();

    // One run of count 0: `malformed_frame`, not a skip.
    let mut bad = Frame::Oks { runs: vec![run(first, 3)] }.encode().unwrap();
    let len = bad.len();
    bad[len - 4..].copy_from_slice(&0u32.to_be_bytes());
    server.send_raw(bad).await;
    let reason = loop {
        match within(events.recv()).await.expect("events") {
            Event::Disconnected { reason, .. } => break reason,
            Event::Refused { .. } => {}
            other => panic!("expected Disconnected, got {other:?}"),
        }
    };
    assert!(reason.contains("malformed"), "{reason}");
    assert!(sent.iter().all(|(_, a)| !a.is_finished()), "nothing was answered by it");
    server.expect_end().await;

    // The next connection carries the same sends, with the same ids.
    connected(&mut events).await;
    let mut server = relay.accept().await;
    let mut again = BTreeSet::new();
    for _ in 0..3 {
        let Frame::Send { send_id, .. } = server.expect().await else { panic!() };
        again.insert(send_id);
    }
    assert_eq!(again, ids);
    server.send(&Frame::Oks { runs: vec![run(first, 3)] }).await;
    for (id, answer) in sent {
        assert_eq!(within(answer).await.unwrap(), Ok(()), "send {id}");
    }
}
