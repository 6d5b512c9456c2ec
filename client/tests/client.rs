//! The reconnecting client against a fake relay on 127.0.0.1: events, the
//! outbox across restarts, resends, acks, liveness, `Restarting`, fatal
//! refusals.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::{Auth, FakeRelay, Options, key, within};
use tandem_client::proto::frame::MAX_PAYLOAD_LEN;
use tandem_client::proto::{DeviceId, ErrorCode, Frame, Role};
use tandem_client::{Client, ClientConfig, ClientError, Event};
use tokio::sync::mpsc;

const PEER: DeviceId = DeviceId([7; 16]);

/// Fast settings: short backoff, no pings unless a test wants them.
fn config(url: &str) -> ClientConfig {
    let mut c = ClientConfig::new(url, key(), Role::Phone);
    c.backoff_min = Duration::from_millis(10);
    c.backoff_max = Duration::from_millis(100);
    c.ping_interval = Duration::from_secs(60);
    c.pong_timeout = Duration::from_secs(5);
    c.connect_timeout = Duration::from_secs(2);
    c
}

async fn next(events: &mut mpsc::Receiver<Event>) -> Event {
    within(events.recv()).await.expect("event channel closed")
}

async fn connected(events: &mut mpsc::Receiver<Event>) -> (DeviceId, u32) {
    loop {
        match next(events).await {
            Event::Connected { device_id, queued, .. } => return (device_id, queued),
            Event::Disconnected { .. } => {}
            other => panic!("expected Connected, got {other:?}"),
        }
    }
}

async fn disconnected(events: &mut mpsc::Receiver<Event>) -> (String, Option<ErrorCode>, Duration) {
    loop {
        match next(events).await {
            Event::Disconnected { reason, code, retry_in } => return (reason, code, retry_in),
            Event::Restarting { .. } | Event::Refused { .. } => {}
            other => panic!("expected Disconnected, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn connects_sends_and_gets_the_relay_answers() {
    let mut relay =
        FakeRelay::start(Options { auth: Auth::Accept { queued: 3 }, ..Options::default() }).await;
    let cfg = config(&relay.url());
    let me = cfg.key.public().device_id();
    let (client, mut events) = Client::start(cfg);
    assert_eq!(client.device_id(), me);
    assert_eq!(connected(&mut events).await, (me, 3));
    let mut server = relay.accept().await;
    assert_eq!(server.device, me);

    // Ok: the send resolves.
    let c = client.clone();
    let send = tokio::spawn(async move { c.send(PEER, b"hello".to_vec()).await });
    let Frame::Send { send_id, to, payload } = server.expect().await else { panic!() };
    assert_ne!(send_id, 0);
    assert_eq!((to, payload.as_slice()), (PEER, &b"hello"[..]));
    server.send(&Frame::Ok { ref_id: send_id }).await;
    within(send).await.unwrap().unwrap();

    // Error: the send fails with the relay's code.
    let c = client.clone();
    let send = tokio::spawn(async move { c.send(PEER, b"again".to_vec()).await });
    let Frame::Send { send_id: second, .. } = server.expect().await else { panic!() };
    assert_ne!(second, send_id);
    server
        .send(&Frame::Error { code: ErrorCode::QueueFull, ref_id: second, message: "full".into() })
        .await;
    assert_eq!(
        within(send).await.unwrap(),
        Err(ClientError::Refused(ErrorCode::QueueFull, "full".into()))
    );

    // Too large: refused locally.
    assert_eq!(client.send(PEER, vec![0; MAX_PAYLOAD_LEN + 1]).await, Err(ClientError::TooLarge));

    // close() ends the connection and later requests.
    client.close().await;
    server.expect_end().await;
    assert_eq!(client.send(PEER, b"late".to_vec()).await, Err(ClientError::Closed));
}

#[tokio::test]
async fn deliveries_are_surfaced_and_acked_only_when_the_app_says_so() {
    let mut relay = FakeRelay::start(Options::default()).await;
    let (client, mut events) = Client::start(config(&relay.url()));
    connected(&mut events).await;
    let mut server = relay.accept().await;

    for id in [1, 2] {
        server.send(&Frame::Deliver { delivery_id: id, from: PEER, payload: vec![id as u8] }).await;
    }
    for id in [1, 2] {
        assert_eq!(
            next(&mut events).await,
            Event::Deliver { delivery_id: id, from: PEER, payload: vec![id as u8] }
        );
    }
    // Nothing is acknowledged before the app acks.
    server.send(&Frame::Ping { nonce: 5 }).await;
    assert_eq!(server.expect().await, Frame::Pong { nonce: 5 });

    client.ack(1);
    assert_eq!(server.expect().await, Frame::Ack { up_to: 1 });
    // Above what was delivered: clamped to the highest delivery seen.
    client.ack(1000);
    assert_eq!(server.expect().await, Frame::Ack { up_to: 2 });

    // After a reconnect the relay redelivers; acked ids are dropped (and
    // acked again), newer ones surface.
    server.close(None).await;
    drop(server);
    disconnected(&mut events).await;
    connected(&mut events).await;
    let mut server = relay.accept().await;
    for id in [1, 2, 3] {
        server.send(&Frame::Deliver { delivery_id: id, from: PEER, payload: vec![id as u8] }).await;
    }
    assert_eq!(
        next(&mut events).await,
        Event::Deliver { delivery_id: 3, from: PEER, payload: vec![3] }
    );
    assert_eq!(server.expect().await, Frame::Ack { up_to: 2 });
    assert_eq!(server.expect().await, Frame::Ack { up_to: 2 });
    client.ack(3);
    assert_eq!(server.expect().await, Frame::Ack { up_to: 3 });
}

/// PROTOCOL.md §6.6: delivery ids compare only within one store epoch. The
/// same epoch after a reconnect: what was acknowledged is dropped (and
/// acknowledged again). A new epoch (the relay's data wiped or restored):
/// its ids start low again and every one reaches the application, under
/// local ids that keep increasing; an acknowledgement of the old epoch
/// never reaches the new one.
#[tokio::test]
async fn a_new_store_epoch_resets_the_delivery_cursor() {
    let mut relay = FakeRelay::start(Options { epoch: 11, ..Options::default() }).await;
    let (client, mut events) = Client::start(config(&relay.url()));
    connected(&mut events).await;
    let mut server = relay.accept().await;
    for id in [1, 2, 3] {
        server.send(&Frame::Deliver { delivery_id: id, from: PEER, payload: vec![id as u8] }).await;
    }
    for id in [1, 2, 3] {
        assert_eq!(
            next(&mut events).await,
            Event::Deliver { delivery_id: id, from: PEER, payload: vec![id as u8] }
        );
    }
    client.ack(2);
    assert_eq!(server.expect().await, Frame::Ack { up_to: 2 });

    // Same epoch: a redelivery of an acknowledged id is dropped (and
    // acknowledged again); the unacknowledged one comes again.
    server.close(None).await;
    drop(server);
    disconnected(&mut events).await;
    connected(&mut events).await;
    let mut server = relay.accept().await;
    for id in [2, 3] {
        server.send(&Frame::Deliver { delivery_id: id, from: PEER, payload: vec![id as u8] }).await;
    }
    assert_eq!(server.expect().await, Frame::Ack { up_to: 2 });
    assert_eq!(
        next(&mut events).await,
        Event::Deliver { delivery_id: 3, from: PEER, payload: vec![3] }
    );

    // A new epoch (the relay's data is gone): ids 1 and 2 are new frames.
    relay.options.lock().unwrap().epoch = 12;
    server.close(None).await;
    drop(server);
    disconnected(&mut events).await;
    connected(&mut events).await;
    let mut server = relay.accept().await;
    for id in [1, 2] {
        let payload = vec![10 + id as u8];
        server.send(&Frame::Deliver { delivery_id: id, from: PEER, payload }).await;
    }
    for id in [1, 2] {
        assert_eq!(
            next(&mut events).await,
            Event::Deliver { delivery_id: 3 + id, from: PEER, payload: vec![10 + id as u8] }
        );
    }
    // The old epoch's last ack (the application was late) is not sent;
    // the new epoch's is, in the relay's ids.
    client.ack(3);
    client.ack(4);
    assert_eq!(server.expect().await, Frame::Ack { up_to: 1 });
    // Within the new epoch, duplicates are dropped again.
    server.send(&Frame::Deliver { delivery_id: 1, from: PEER, payload: vec![11] }).await;
    assert_eq!(server.expect().await, Frame::Ack { up_to: 1 });
    server.send(&Frame::Ping { nonce: 9 }).await;
    assert_eq!(server.expect().await, Frame::Pong { nonce: 9 });
}

#[tokio::test]
async fn sends_issued_while_the_relay_is_down_go_out_after_it_returns() {
    let mut relay = FakeRelay::start(Options::default()).await;
    let url = relay.url();
    let (client, mut events) = Client::start(config(&url));
    connected(&mut events).await;
    let server = relay.accept().await;

    // The relay goes away.
    let addr = relay.stop().await;
    drop(server);
    disconnected(&mut events).await;

    let c = client.clone();
    let first = tokio::spawn(async move { c.send(PEER, b"one".to_vec()).await });
    let c = client.clone();
    let second = tokio::spawn(async move { c.send(PEER, b"two".to_vec()).await });
    // A few failed attempts while it is down.
    disconnected(&mut events).await;
    assert!(!first.is_finished() && !second.is_finished());

    let mut relay = FakeRelay::start_on(addr, Options::default()).await;
    connected(&mut events).await;
    let mut server = relay.accept().await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let Frame::Send { send_id, payload, .. } = server.expect().await else { panic!() };
        server.send(&Frame::Ok { ref_id: send_id }).await;
        got.push(payload);
    }
    got.sort();
    assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
    within(first).await.unwrap().unwrap();
    within(second).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_send_without_ok_is_resent_with_the_same_id_after_reconnect() {
    let mut relay = FakeRelay::start(Options::default()).await;
    let (client, mut events) = Client::start(config(&relay.url()));
    connected(&mut events).await;
    let mut server = relay.accept().await;

    let c = client.clone();
    let send = tokio::spawn(async move { c.send(PEER, b"payload".to_vec()).await });
    let Frame::Send { send_id, .. } = server.expect().await else { panic!() };
    // The connection dies before the Ok.
    drop(server);
    disconnected(&mut events).await;
    connected(&mut events).await;
    let mut server = relay.accept().await;
    assert_eq!(
        server.expect().await,
        Frame::Send { send_id, to: PEER, payload: b"payload".to_vec() }
    );
    assert!(!send.is_finished());
    server.send(&Frame::Ok { ref_id: send_id }).await;
    within(send).await.unwrap().unwrap();
}

#[tokio::test]
async fn restarting_is_honoured() {
    let mut relay = FakeRelay::start(Options::default()).await;
    let (_client, mut events) = Client::start(config(&relay.url()));
    connected(&mut events).await;
    let mut server = relay.accept().await;

    server.send(&Frame::Restarting { reconnect_after_ms: 300 }).await;
    assert_eq!(next(&mut events).await, Event::Restarting { after: Duration::from_millis(300) });
    server.close(Some(ErrorCode::ShuttingDown)).await;
    let closed_at = Instant::now();
    let (_, code, retry_in) = disconnected(&mut events).await;
    assert_eq!(code, Some(ErrorCode::ShuttingDown));
    assert!(retry_in >= Duration::from_millis(300), "{retry_in:?}");
    // Not before the hint, although the backoff would allow 10 ms.
    assert!(!relay.accepts_within(Duration::from_millis(250)).await);
    connected(&mut events).await;
    assert!(closed_at.elapsed() >= Duration::from_millis(300));
    relay.accept().await;
}

#[tokio::test]
async fn pings_are_answered_and_a_silent_relay_is_detected() {
    let mut relay = FakeRelay::start(Options::default()).await;
    let mut cfg = config(&relay.url());
    cfg.ping_interval = Duration::from_millis(100);
    cfg.pong_timeout = Duration::from_millis(200);
    let (_client, mut events) = Client::start(cfg);
    connected(&mut events).await;
    let mut server = relay.accept().await;

    // The client answers the relay's pings.
    server.send(&Frame::Ping { nonce: 42 }).await;
    assert_eq!(server.expect().await, Frame::Pong { nonce: 42 });
    // And pings on its own; answered, the connection stays up.
    for _ in 0..3 {
        let Some(Frame::Ping { nonce }) = within(server.recv()).await else { panic!() };
        server.send(&Frame::Pong { nonce }).await;
    }

    // The relay goes silent (keeps the socket open, answers nothing).
    let started = Instant::now();
    let (reason, code, _) = disconnected(&mut events).await;
    assert!(reason.contains("ping"), "{reason}");
    assert_eq!(code, None);
    assert!(started.elapsed() < Duration::from_secs(2));
    // It reconnects.
    connected(&mut events).await;
    relay.accept().await;
    drop(server);
}

#[tokio::test]
async fn auth_failed_stops_reconnecting_and_fails_sends() {
    let mut relay = FakeRelay::start(Options {
        auth: Auth::Refuse(ErrorCode::AuthFailed),
        ..Options::default()
    })
    .await;
    let (client, mut events) = Client::start(config(&relay.url()));
    let c = client.clone();
    let pending = tokio::spawn(async move { c.send(PEER, b"x".to_vec()).await });

    let (_, code, retry_in) = disconnected(&mut events).await;
    assert_eq!(code, Some(ErrorCode::AuthFailed));
    assert_eq!(retry_in, Duration::MAX);
    assert!(matches!(
        within(pending).await.unwrap(),
        Err(ClientError::Refused(ErrorCode::AuthFailed, _))
    ));
    assert!(matches!(
        client.send(PEER, b"y".to_vec()).await,
        Err(ClientError::Refused(ErrorCode::AuthFailed, _))
    ));
    assert_eq!(relay.outcome().await, common::Outcome::Refused(ErrorCode::AuthFailed));
    // No second attempt, although the backoff is 10–100 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.options.lock().unwrap().auth = Auth::Accept { queued: 0 };
    assert!(!relay.accepts_within(Duration::from_millis(100)).await);
    client.close().await;
}

#[tokio::test]
async fn a_revoked_close_after_auth_stops_reconnecting() {
    let mut relay = FakeRelay::start(Options::default()).await;
    let (client, mut events) = Client::start(config(&relay.url()));
    connected(&mut events).await;
    let mut server = relay.accept().await;
    server.close(Some(ErrorCode::Revoked)).await;
    let (_, code, retry_in) = disconnected(&mut events).await;
    assert_eq!((code, retry_in), (Some(ErrorCode::Revoked), Duration::MAX));
    assert!(!relay.accepts_within(Duration::from_millis(200)).await);
    assert!(matches!(
        client.authorize(PEER).await,
        Err(ClientError::Refused(ErrorCode::Revoked, _))
    ));
}

#[tokio::test]
async fn requests_pairing_and_relay_notices() {
    let mut relay = FakeRelay::start(Options::default()).await;
    let (client, mut events) = Client::start(config(&relay.url()));
    connected(&mut events).await;
    let mut server = relay.accept().await;
    let pid = [3u8; 16];

    let c = client.clone();
    let authorize = tokio::spawn(async move { c.authorize(PEER).await });
    let Frame::Authorize { request_id, peer } = server.expect().await else { panic!() };
    assert_eq!(peer, PEER);
    server.send(&Frame::Ok { ref_id: request_id }).await;
    within(authorize).await.unwrap().unwrap();

    let c = client.clone();
    let revoke = tokio::spawn(async move { c.revoke(PEER).await });
    let Frame::Revoke { request_id, .. } = server.expect().await else { panic!() };
    server.send(&Frame::Ok { ref_id: request_id }).await;
    within(revoke).await.unwrap().unwrap();

    let c = client.clone();
    let open = tokio::spawn(async move { c.pair_open(pid, 120).await });
    let Frame::PairOpen { request_id, pairing_id, ttl_secs } = server.expect().await else {
        panic!()
    };
    assert_eq!((pairing_id, ttl_secs), (pid, 120));
    server.send(&Frame::Ok { ref_id: request_id }).await;
    within(open).await.unwrap().unwrap();

    let c = client.clone();
    let claim = tokio::spawn(async move { c.pair_claim(pid, b"hello".to_vec()).await });
    let Frame::PairClaim { request_id, payload, .. } = server.expect().await else { panic!() };
    assert_eq!(payload, b"hello");
    let refusal = Frame::Error {
        code: ErrorCode::PairingClaimed,
        ref_id: request_id,
        message: "claimed".into(),
    };
    server.send(&refusal).await;
    assert_eq!(
        within(claim).await.unwrap(),
        Err(ClientError::Refused(ErrorCode::PairingClaimed, "claimed".into()))
    );

    within(client.pair_message(pid, PEER, b"welcome".to_vec())).await.unwrap();
    assert_eq!(
        server.expect().await,
        Frame::PairMessage { pairing_id: pid, peer: PEER, payload: b"welcome".to_vec() }
    );

    let c = client.clone();
    let close = tokio::spawn(async move { c.pair_close(pid).await });
    let Frame::PairClose { request_id, pairing_id } = server.expect().await else { panic!() };
    assert_eq!(pairing_id, pid);
    server.send(&Frame::Ok { ref_id: request_id }).await;
    within(close).await.unwrap().unwrap();

    // Relay → device notices.
    server.send(&Frame::PairMessage { pairing_id: pid, peer: PEER, payload: vec![1] }).await;
    assert_eq!(
        next(&mut events).await,
        Event::PairMessage { pairing_id: pid, peer: PEER, payload: vec![1] }
    );
    server.send(&Frame::Presence { peer: PEER, online: true }).await;
    assert_eq!(next(&mut events).await, Event::Presence { peer: PEER, online: true });
    let stray =
        Frame::Error { code: ErrorCode::UnexpectedFrame, ref_id: 0, message: "nope".into() };
    server.send(&stray).await;
    assert_eq!(
        next(&mut events).await,
        Event::Refused { code: ErrorCode::UnexpectedFrame, ref_id: 0, message: "nope".into() }
    );
    // Debug output never shows payload bytes.
    let shown =
        format!("{:?}", Event::Deliver { delivery_id: 1, from: PEER, payload: vec![0xAB; 4] });
    assert!(shown.contains("payload_len: 4") && !shown.contains("171"), "{shown}");
}

#[tokio::test]
async fn an_unanswered_pair_open_is_interrupted_not_resent() {
    let mut relay = FakeRelay::start(Options::default()).await;
    let (client, mut events) = Client::start(config(&relay.url()));
    connected(&mut events).await;
    let mut server = relay.accept().await;

    let c = client.clone();
    let open = tokio::spawn(async move { c.pair_open([1; 16], 60).await });
    let c = client.clone();
    let authorize = tokio::spawn(async move { c.authorize(PEER).await });
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(server.expect().await);
    }
    drop(server);
    assert_eq!(within(open).await.unwrap(), Err(ClientError::Interrupted));
    connected(&mut events).await;
    let mut server = relay.accept().await;
    // Only the idempotent Authorize comes again, with its id.
    let again = server.expect().await;
    assert!(seen.contains(&again), "{again:?}");
    let Frame::Authorize { request_id, .. } = again else { panic!("{again:?}") };
    server.send(&Frame::Ok { ref_id: request_id }).await;
    within(authorize).await.unwrap().unwrap();
}

#[tokio::test]
async fn dropping_every_handle_stops_the_client() {
    let mut relay = FakeRelay::start(Options::default()).await;
    let (client, mut events) = Client::start(config(&relay.url()));
    connected(&mut events).await;
    let mut server = relay.accept().await;
    let other = client.clone();
    drop(client);
    // One handle left: still running.
    server.send(&Frame::Ping { nonce: 1 }).await;
    assert_eq!(server.expect().await, Frame::Pong { nonce: 1 });
    drop(other);
    server.expect_end().await;
    assert_eq!(within(events.recv()).await, None);
}

#[tokio::test]
async fn an_unusable_url_is_reported() {
    let cfg = config("http://nope");
    assert!(matches!(Client::try_start(cfg.clone()), Err(ClientError::InvalidUrl { .. })));
    let (client, mut events) = Client::start(cfg);
    let (_, code, retry_in) = disconnected(&mut events).await;
    assert_eq!((code, retry_in), (None, Duration::MAX));
    assert!(matches!(client.send(PEER, vec![]).await, Err(ClientError::InvalidUrl { .. })));
}

#[tokio::test]
async fn a_relay_with_the_wrong_name_is_never_answered_and_retried() {
    let mut relay = FakeRelay::start(Options {
        challenge_name: Some("other.example".into()),
        ..Options::default()
    })
    .await;
    let (_client, mut events) = Client::start(config(&relay.url()));
    let (reason, code, retry_in) = disconnected(&mut events).await;
    assert!(reason.contains("other.example") && reason.contains("refusing"), "{reason}");
    assert_eq!(code, None);
    assert!(retry_in <= Duration::from_millis(100));
    assert_eq!(relay.outcome().await, common::Outcome::NoAuth);
    // It keeps trying (the relay may be fixed), never sending a proof.
    disconnected(&mut events).await;
    assert_eq!(relay.outcome().await, common::Outcome::NoAuth);
}

#[tokio::test]
async fn a_send_given_up_before_it_was_written_is_withdrawn() {
    let relay = FakeRelay::start(Options::default()).await;
    let addr = relay.stop().await;
    let mut cfg = config(&format!("ws://{addr}/v1/connect"));
    cfg.outbox_capacity = 1;
    let (client, mut events) = Client::start(cfg);
    disconnected(&mut events).await;

    // The caller gives up while the relay is down.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(50), client.send(PEER, b"old".to_vec())).await;
    assert!(gave_up.is_err());
    // Its outbox room is free again (capacity 1), and it is never written.
    let c = client.clone();
    let send = tokio::spawn(async move { c.send(PEER, b"new".to_vec()).await });
    tokio::time::sleep(Duration::from_millis(20)).await;

    let mut relay = FakeRelay::start_on(addr, Options::default()).await;
    connected(&mut events).await;
    let mut server = relay.accept().await;
    let Frame::Send { send_id, payload, .. } = server.expect().await else { panic!() };
    assert_eq!(payload, b"new");
    server.send(&Frame::Ok { ref_id: send_id }).await;
    within(send).await.unwrap().unwrap();
}

/// The payloads a relay connection sees in `Send` frames, answering each
/// `Ok` (or, with `answer` false, leaving them unanswered), until `count`
/// were seen; with their `send_id`s.
async fn collect_sends(
    server: &mut common::RelayConn,
    count: usize,
    answer: bool,
) -> Vec<(u64, Vec<u8>)> {
    let mut seen = Vec::with_capacity(count);
    while seen.len() < count {
        match server.expect().await {
            Frame::Send { send_id, payload, .. } => {
                if answer {
                    server.send(&Frame::Ok { ref_id: send_id }).await;
                }
                seen.push((send_id, payload));
            }
            other => panic!("expected Send, got {other:?}"),
        }
    }
    seen
}

fn numbered(i: u32) -> Vec<u8> {
    i.to_be_bytes().to_vec()
}

fn numbers(seen: &[(u64, Vec<u8>)]) -> Vec<u32> {
    seen.iter().map(|(_, p)| u32::from_be_bytes(p.as_slice().try_into().unwrap())).collect()
}

/// Sends made from one task and polled concurrently reach the relay in the
/// order of the calls, also when they wait for room in the outbox (more of
/// them than it holds, some made while the relay is down).
#[tokio::test]
async fn pipelined_sends_reach_the_relay_in_call_order() {
    use futures_util::StreamExt;
    use futures_util::stream::FuturesUnordered;

    const N: u32 = 2000;
    let mut relay = FakeRelay::start(Options::default()).await;
    let url = relay.url();
    let (client, mut events) = Client::start(config(&url));
    connected(&mut events).await;
    let mut server = relay.accept().await;

    // Connected: more sends at once than the outbox holds.
    let relay_side = tokio::spawn(async move {
        let seen = collect_sends(&mut server, N as usize, true).await;
        (server, seen)
    });
    let mut sends: FuturesUnordered<_> = (0..N).map(|i| client.send(PEER, numbered(i))).collect();
    within(async {
        while let Some(result) = sends.next().await {
            result.unwrap();
        }
    })
    .await;
    let (server, seen) = within(relay_side).await.unwrap();
    assert_eq!(numbers(&seen), (0..N).collect::<Vec<_>>());

    // Disconnected: the sends wait in the outbox and for room in it.
    let addr = relay.stop().await;
    drop(server);
    disconnected(&mut events).await;
    let mut sends: FuturesUnordered<_> =
        (N..2 * N).map(|i| client.send(PEER, numbered(i))).collect();
    // Let them all wait (and fill the outbox) before the relay returns.
    let _ = tokio::time::timeout(Duration::from_millis(200), sends.next()).await;
    let mut relay = FakeRelay::start_on(addr, Options::default()).await;
    let relay_side = tokio::spawn(async move {
        let mut server = relay.accept().await;
        collect_sends(&mut server, N as usize, true).await
    });
    within(async {
        while let Some(result) = sends.next().await {
            result.unwrap();
        }
    })
    .await;
    let seen = within(relay_side).await.unwrap();
    assert_eq!(numbers(&seen), (N..2 * N).collect::<Vec<_>>());
}

/// Sends written but unanswered when the connection drops are written again
/// first after the reconnect, with their ids, in call order, followed by the
/// rest in call order.
#[tokio::test]
async fn unanswered_sends_are_resent_in_call_order() {
    use futures_util::StreamExt;
    use futures_util::stream::FuturesUnordered;

    const N: u32 = 600;
    let mut relay = FakeRelay::start(Options::default()).await;
    let cfg = config(&relay.url());
    let room = cfg.outbox_capacity;
    let (client, mut events) = Client::start(cfg);
    connected(&mut events).await;
    let mut server = relay.accept().await;

    let relay_side = tokio::spawn(async move {
        // The outbox's worth is written; the relay answers none of it.
        let first = collect_sends(&mut server, room, false).await;
        drop(server);
        let mut server = relay.accept().await;
        let second = collect_sends(&mut server, N as usize, true).await;
        (first, second)
    });
    let mut sends: FuturesUnordered<_> = (0..N).map(|i| client.send(PEER, numbered(i))).collect();
    within(async {
        while let Some(result) = sends.next().await {
            result.unwrap();
        }
    })
    .await;
    let (first, second) = within(relay_side).await.unwrap();
    assert_eq!(numbers(&first), (0..u32::try_from(room).unwrap()).collect::<Vec<_>>());
    assert_eq!(numbers(&second), (0..N).collect::<Vec<_>>());
    assert_eq!(first[..], second[..room]);
}

/// A request takes its place when the method is called: futures polled in
/// the reverse order, or not at all until later, do not change the order.
#[tokio::test]
async fn requests_take_their_place_when_called() {
    let mut relay = FakeRelay::start(Options::default()).await;
    let (client, mut events) = Client::start(config(&relay.url()));
    connected(&mut events).await;
    let mut server = relay.accept().await;

    let authorize = client.authorize(PEER);
    let first = client.send(PEER, numbered(1));
    let second = client.send(PEER, numbered(2));
    // Written without being polled.
    let Frame::Authorize { request_id, .. } = server.expect().await else { panic!() };
    server.send(&Frame::Ok { ref_id: request_id }).await;
    let seen = collect_sends(&mut server, 2, true).await;
    assert_eq!(numbers(&seen), [1, 2]);
    // They resolve when polled, in any order.
    let (second, first, authorize) = within(async { tokio::join!(second, first, authorize) }).await;
    assert_eq!((authorize, first, second), (Ok(()), Ok(()), Ok(())));
}

/// The client works on at most `outbox_capacity` requests at once: with a
/// relay that answers nothing, no more are written; each answer lets the
/// next one out, in call order.
#[tokio::test]
async fn no_more_than_the_outbox_capacity_is_written_unanswered() {
    let mut relay = FakeRelay::start(Options::default()).await;
    let mut cfg = config(&relay.url());
    cfg.outbox_capacity = 2;
    let (client, mut events) = Client::start(cfg);
    connected(&mut events).await;
    let mut server = relay.accept().await;
    let sends: Vec<_> = (0..5).map(|i| tokio::spawn(client.send(PEER, numbered(i)))).collect();
    let first = collect_sends(&mut server, 2, false).await;
    assert_eq!(numbers(&first), [0, 1]);
    // Nothing more while both are unanswered.
    let extra = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            match server.recv().await {
                Some(Frame::Ping { nonce }) => server.send(&Frame::Pong { nonce }).await,
                other => return other,
            }
        }
    })
    .await;
    assert!(extra.is_err(), "written past the capacity: {extra:?}");
    // One answer, one more out; then answer everything.
    server.send(&Frame::Ok { ref_id: first[0].0 }).await;
    let third = collect_sends(&mut server, 1, false).await;
    assert_eq!(numbers(&third), [2]);
    server.send(&Frame::Ok { ref_id: first[1].0 }).await;
    server.send(&Frame::Ok { ref_id: third[0].0 }).await;
    let rest = collect_sends(&mut server, 2, true).await;
    assert_eq!(numbers(&rest), [3, 4]);
    for s in sends {
        within(s).await.unwrap().unwrap();
    }
}
