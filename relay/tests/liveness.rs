//! Liveness (PROTOCOL.md §6.4): pings and pongs, the idle timeout (phones,
//! and desktops without a route or a mailbox), against a real relay process with one-second settings, and once
//! in process on tokio's paused clock with the real ten-minute default.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Device, End, Relay, Ws, close_code, new_key, paired};
use futures_util::{SinkExt, StreamExt};
use tandem_proto::frame::Frame;
use tandem_proto::relay_auth::prove;
use tandem_proto::{DeviceId, DeviceKey, ErrorCode, Role};
use tandem_relay::store::{
    AddrKey, Enqueued, Expired, NewFrame, QueueDepth, Queued, RedbStore, Store, StoreFuture, Totals,
};
use tokio_tungstenite::tungstenite::Message;

const FAST_PINGS: [&str; 6] =
    ["--ping-interval-secs", "1", "--ping-jitter-secs", "0", "--pong-timeout-secs", "1"];

/// Answer pings by hand for `d` (or until the connection ends): returns
/// how many pings came, how the connection ended (if it did) and when.
async fn answer_pings_for(dev: &mut Device, d: Duration) -> (usize, Option<End>, Duration) {
    dev.auto_pong = false;
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + d;
    let mut pings = 0;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match dev.next_within(left).await {
            None => return (pings, None, start.elapsed()),
            Some(Ok(Frame::Ping { nonce })) => {
                pings += 1;
                dev.send(&Frame::Pong { nonce }).await;
            }
            Some(Ok(_)) => {}
            Some(Err(end)) => return (pings, Some(end), start.elapsed()),
        }
    }
}

#[tokio::test]
async fn idle_phones_and_desktops_without_peers_are_detached_but_desktops_with_peers_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--idle-timeout-secs", "2"];
    args.extend(FAST_PINGS);
    let relay = Relay::start(dir.path(), &args);
    // A desktop with a route to a phone, and that phone.
    let (mut desk, mut phone) = paired(&relay).await;
    // A desktop showing a pairing code (an open mailbox), and one with
    // neither a route nor a mailbox: its role alone earns it nothing.
    let (mut pairing, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    pairing.send(&Frame::PairOpen { request_id: 1, pairing_id: [7; 16], ttl_secs: 120 }).await;
    pairing.result_of(1).await.unwrap();
    let (mut lone, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let (
        (phone_pings, phone_end, phone_at),
        (desk_pings, desk_end, _),
        (_, pairing_end, _),
        (lone_pings, lone_end, lone_at),
    ) = tokio::join!(
        answer_pings_for(&mut phone, Duration::from_secs(6)),
        answer_pings_for(&mut desk, Duration::from_millis(4500)),
        answer_pings_for(&mut pairing, Duration::from_millis(4500)),
        answer_pings_for(&mut lone, Duration::from_secs(6)),
    );
    assert_eq!(phone_end, Some(close_code(ErrorCode::IdleTimeout)));
    assert!(phone_pings >= 1, "the phone answered pings and was idled out all the same");
    assert!(phone_at >= Duration::from_millis(1800), "closed after {phone_at:?}");
    assert_eq!(lone_end, Some(close_code(ErrorCode::IdleTimeout)), "a desktop nobody needs");
    assert!(lone_pings >= 1 && lone_at >= Duration::from_millis(1800), "after {lone_at:?}");
    assert_eq!(desk_end, None, "a desktop with a route is never idled out");
    assert_eq!(pairing_end, None, "a desktop with an open mailbox is never idled out");
    assert!(desk_pings >= 3, "{desk_pings} pings in 4.5 s");
    // And the desktops are really still there.
    for d in [&mut desk, &mut pairing] {
        d.send(&Frame::Ping { nonce: 7 }).await;
        d.expect("pong", |f| *f == Frame::Pong { nonce: 7 }).await;
    }
    let m = relay.metrics().await;
    assert_eq!(
        common::metric(&m, "tandem_relay_limit_refusals_total{limit=\"idle_timeout\"}"),
        Some(2.0)
    );
}

#[tokio::test]
async fn a_phone_that_keeps_sending_stays_attached() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &["--idle-timeout-secs", "1"]);
    let (mut desk, mut phone) = paired(&relay).await;
    let desk_id = desk.id();
    for i in 0..8u64 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(phone.send_to(desk_id, 10 + i, b"activity").await, Ok(()), "send {i}");
    }
    assert_eq!(desk.deliveries(8).await.len(), 8);
    // Then only pings of its own, which are not activity: detached.
    let start = Instant::now();
    let mut nonce = 0;
    let mut ping_failed = false;
    let end = loop {
        nonce += 1;
        // The relay may close between a read and this write: then the write
        // fails and the close is what the next read finds (or a reset).
        ping_failed |= !phone.try_send(&Frame::Ping { nonce }).await;
        match phone.next_within(Duration::from_millis(300)).await {
            Some(Err(end)) => break end,
            _ => assert!(start.elapsed() < Duration::from_secs(3), "never idled out"),
        }
    };
    assert!(start.elapsed() >= Duration::from_millis(500), "idled out long before the timeout");
    if end != close_code(ErrorCode::IdleTimeout) {
        assert!(ping_failed, "closed with {end:?}, not idle_timeout");
    }
}

#[tokio::test]
async fn a_phone_receiving_deliveries_stays_attached() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &["--idle-timeout-secs", "1"]);
    let (mut desk, mut phone) = paired(&relay).await;
    let phone_id = phone.id();
    // The phone only reads (not even acks) while deliveries keep coming.
    // (The sender does not wait for `Ok`: unacknowledged, it comes only
    // once the relay's hold window passed and the frame is written.)
    let sender = async {
        for i in 0..8u64 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            desk.send(&Frame::Send { send_id: 10 + i, to: phone_id, payload: b"traffic".to_vec() })
                .await;
        }
    };
    let reader = phone.collect_for(Duration::from_millis(2700));
    let ((), (frames, end)) = tokio::join!(sender, reader);
    assert_eq!(end, None, "idled out while receiving application traffic");
    assert_eq!(frames.iter().filter(|f| matches!(f, Frame::Deliver { .. })).count(), 8);
}

#[tokio::test]
async fn a_device_that_does_not_answer_pings_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &FAST_PINGS);
    let (mut desk, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    desk.auto_pong = false;
    let start = Instant::now();
    let (end, frames) = desk.until_closed(Duration::from_secs(5)).await;
    let at = start.elapsed();
    assert_eq!(end, close_code(ErrorCode::PingTimeout), "frames: {frames:?}");
    assert!(frames.iter().any(|f| matches!(f, Frame::Ping { .. })), "{frames:?}");
    // One interval, then one pong timeout.
    assert!(at >= Duration::from_millis(1800), "closed after {at:?}");
    assert!(at < Duration::from_secs(4), "closed after {at:?}");
}

#[tokio::test]
async fn a_pong_with_the_wrong_nonce_does_not_count() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &FAST_PINGS);
    let (mut desk, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    desk.auto_pong = false;
    let end = loop {
        match desk.recv_within(Duration::from_secs(5)).await {
            Ok(Frame::Ping { nonce }) => {
                desk.send(&Frame::Pong { nonce: nonce.wrapping_add(1) }).await;
            }
            Ok(_) => {}
            Err(end) => break end,
        }
    };
    assert_eq!(end, close_code(ErrorCode::PingTimeout));
}

#[tokio::test]
async fn devices_that_answer_pings_stay_connected() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &FAST_PINGS);
    let (mut desk, mut phone) = paired(&relay).await;
    let ((dp, dend, _), (pp, pend, _)) = tokio::join!(
        // Three one-second intervals and room for a loaded machine.
        answer_pings_for(&mut desk, Duration::from_millis(4500)),
        answer_pings_for(&mut phone, Duration::from_millis(4500)),
    );
    assert_eq!((dend, pend), (None, None));
    assert!(dp >= 3 && pp >= 3, "pings: desktop {dp}, phone {pp}");
    let phone_id = phone.id();
    desk.send_to(phone_id, 1, b"alive").await.unwrap();
    assert_eq!(phone.delivery().await.2, b"alive".to_vec());
}

/// The relay's redb store, with every wait for its thread done in
/// `spawn_blocking`. The store answers from its own OS thread, which a
/// paused clock cannot see: while the runtime waits for it, tokio thinks it
/// is idle and auto-advances to the next timer. With a plain `run`, the
/// test's own 599 s and 120 s timeouts fired within 30 real milliseconds,
/// before the phone's connection had even started its reader (the relay was
/// waiting on the store), and with a 100 ms ticker added, two handshakes
/// took 97 s of virtual time. Tokio does not auto-advance while a blocking
/// task runs, so with this wrapper virtual time stands still while the
/// store works and the idle close lands at exactly 600 s.
struct StoreWaitsStopTheClock(RedbStore);

fn blocking<T: Send + 'static>(f: StoreFuture<T>) -> StoreFuture<T> {
    Box::pin(async move {
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || rt.block_on(f)).await.unwrap()
    })
}

impl Store for StoreWaitsStopTheClock {
    fn enqueue(&self, frame: NewFrame, now: u64, live: bool) -> Enqueued {
        let Enqueued { placed, durable } = self.0.enqueue(frame, now, live);
        Enqueued { placed: blocking(placed), durable: blocking(durable) }
    }
    fn fetch(&self, to: DeviceId, after: u64, limit: usize) -> StoreFuture<Vec<Queued>> {
        blocking(self.0.fetch(to, after, limit))
    }
    fn ack(&self, to: DeviceId, up_to: u64) -> StoreFuture<u64> {
        blocking(self.0.ack(to, up_to))
    }
    fn depth(&self, to: DeviceId) -> StoreFuture<QueueDepth> {
        blocking(self.0.depth(to))
    }
    fn authorize(&self, by: DeviceId, peer: DeviceId, addr: AddrKey, now: u64) -> StoreFuture<()> {
        blocking(self.0.authorize(by, peer, addr, now))
    }
    fn revoke(&self, by: DeviceId, peer: DeviceId, now: u64) -> StoreFuture<u64> {
        blocking(self.0.revoke(by, peer, now))
    }
    fn is_route(&self, a: DeviceId, b: DeviceId) -> StoreFuture<bool> {
        blocking(self.0.is_route(a, b))
    }
    fn peers(&self, a: DeviceId) -> StoreFuture<Vec<DeviceId>> {
        blocking(self.0.peers(a))
    }
    fn expire(&self, now: u64) -> StoreFuture<Expired> {
        blocking(self.0.expire(now))
    }
    fn epoch(&self) -> u64 {
        self.0.epoch()
    }
    fn totals(&self) -> StoreFuture<Totals> {
        blocking(self.0.totals())
    }
}

/// The handshake without any client-side timeout: on the paused clock a
/// timeout would fire whenever the runtime waits for the store's thread.
async fn handshake(url: &str, addr: &str, key: &DeviceKey, role: Role) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let hello = Frame::Hello { min_version: 1, max_version: 1, role };
    ws.send(Message::Binary(hello.encode().unwrap().into())).await.unwrap();
    let challenge = next_frame(&mut ws).await.unwrap();
    let auth = prove(key, role, addr, &challenge).unwrap();
    ws.send(Message::Binary(auth.encode().unwrap().into())).await.unwrap();
    let ok = next_frame(&mut ws).await.unwrap();
    assert!(matches!(ok, Frame::AuthOk { .. }), "{ok:?}");
    ws
}

/// The next frame, or the close code.
async fn next_frame(ws: &mut Ws) -> Result<Frame, Option<u16>> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => return Ok(Frame::decode(&b).unwrap()),
            Some(Ok(Message::Close(c))) => return Err(c.map(|c| u16::from(c.code))),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(None),
        }
    }
}

/// Answer the relay's pings on `ws` until `deadline` (virtual time);
/// returns how many came, or how the connection ended.
async fn answer_pings_until(ws: &mut Ws, deadline: tokio::time::Instant) -> Result<usize, String> {
    let mut pings = 0;
    loop {
        match tokio::time::timeout_at(deadline, next_frame(ws)).await {
            Err(_) => return Ok(pings),
            Ok(Ok(Frame::Ping { nonce })) => {
                pings += 1;
                let pong = Frame::Pong { nonce }.encode().unwrap();
                ws.send(Message::Binary(pong.into())).await.unwrap();
            }
            Ok(Ok(Frame::Error { code, .. })) => return Err(format!("error {code}")),
            Ok(Ok(other)) => panic!("{other:?}"),
            Ok(Err(code)) => return Err(format!("closed {code:?}")),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_idle_timeout_runs_on_the_relays_clock() {
    // A watchdog in real time: a paused clock must not turn a hang into a pass.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(60));
        eprintln!("the paused-clock test hung for 60 real seconds");
        std::process::exit(101);
    });
    let real_start = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // The defaults: a ten-minute idle timeout, pings every 20-25 s.
    let config = tandem_relay::Config::new(dir.path().join("data"));
    assert_eq!(config.idle_timeout, Duration::from_secs(600));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let store = RedbStore::open(&config.data_dir, config.queue, config.routes, now).unwrap();
    // The desktop has a route (to a device that stays offline), or it would
    // be idled out like the phone (PROTOCOL.md §6.4).
    let (desk_key, absent) = (new_key(), new_key().public().device_id());
    let desk_id = desk_key.public().device_id();
    store.authorize(desk_id, absent, AddrKey::UNKNOWN, now).await.unwrap();
    store.authorize(absent, desk_id, AddrKey::UNKNOWN, now).await.unwrap();
    let store: Arc<dyn Store> = Arc::new(StoreWaitsStopTheClock(store));
    let server =
        tokio::spawn(tandem_relay::run_with_store(listener, config, store, shutdown.clone()));
    let t0 = tokio::time::Instant::now();
    let url = format!("ws://{addr}/v1/connect");

    let mut desk = handshake(&url, &addr, &desk_key, Role::Desktop).await;
    let mut phone = handshake(&url, &addr, &new_key(), Role::Phone).await;
    // With the store's waits visible to the clock, setting up took no virtual time.
    let setup = t0.elapsed();
    assert!(setup < Duration::from_secs(1), "set-up took {setup:?} of virtual time");
    // Count from the phone's last activity (an Ack counts; pings do not).
    let ack = Frame::Ack { up_to: 0 }.encode().unwrap();
    phone.send(Message::Binary(ack.into())).await.unwrap();
    let active_at = tokio::time::Instant::now();

    // Both answer every ping for 599 s: both are still connected.
    let almost = active_at + Duration::from_secs(599);
    let (phone_pings, desk_pings) =
        tokio::join!(answer_pings_until(&mut phone, almost), answer_pings_until(&mut desk, almost));
    let (phone_pings, desk_pings) = (phone_pings.unwrap(), desk_pings.unwrap());
    assert!(phone_pings >= 20 && desk_pings >= 20, "pings: {phone_pings}, {desk_pings}");

    // The phone goes at ten minutes, pongs or not; the desktop stays.
    let later = active_at + Duration::from_secs(700);
    let phone_part = async {
        let end = answer_pings_until(&mut phone, later).await;
        (end, active_at.elapsed())
    };
    let ((phone_end, idle_for), desk_end) =
        tokio::join!(phone_part, answer_pings_until(&mut desk, later));
    assert_eq!(phone_end, Err("error idle_timeout (15)".to_owned()));
    assert_eq!(next_frame(&mut phone).await, Err(Some(ErrorCode::IdleTimeout.close_code())));
    assert!(idle_for >= Duration::from_secs(600), "closed after {idle_for:?}");
    assert!(idle_for < Duration::from_secs(601), "closed after {idle_for:?}");
    assert!(desk_end.is_ok(), "the desktop: {desk_end:?}");
    assert!(real_start.elapsed() < Duration::from_secs(30), "took {:?}", real_start.elapsed());

    shutdown.cancel();
    let restarting = next_frame(&mut desk).await;
    assert!(matches!(restarting, Ok(Frame::Restarting { .. })), "{restarting:?}");
    server.await.unwrap().unwrap();
}
