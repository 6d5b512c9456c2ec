//! Waking from sleep. The client runs on a single-threaded runtime in a
//! thread of its own, and the test freezes that thread (`std::thread::sleep`
//! inside the runtime): every task of the client stands still, timers fire
//! late, like a process stopped with `SIGSTOP` or a laptop's suspend on a
//! platform whose monotonic clock keeps counting. The fake relay runs on
//! the test's own runtime meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{FakeRelay, Options, RelayConn, key};
use tandem_client::proto::{ErrorCode, Frame, Role};
use tandem_client::{Client, ClientConfig, Event};
use tokio::sync::mpsc;

/// Generous: only there so that a broken client fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(30);
/// How long the client's thread stands still.
const STALL: Duration = Duration::from_secs(3);

/// No regular pings for ten minutes, and long waits: whatever reconnects
/// promptly here does so because it noticed the stall.
fn config(url: &str) -> ClientConfig {
    let mut c = ClientConfig::new(url, key(), Role::Desktop);
    c.backoff_min = Duration::from_millis(10);
    c.backoff_max = Duration::from_secs(600);
    c.ping_interval = Duration::from_secs(600);
    c.pong_timeout = Duration::from_secs(10);
    c.connect_timeout = Duration::from_secs(5);
    c.wake_threshold = Some(Duration::from_secs(1));
    c.wake_pong_timeout = Duration::from_millis(500);
    c
}

/// A client on a runtime the test can freeze.
struct Frozen {
    client: Client,
    events: mpsc::UnboundedReceiver<Event>,
    stall: mpsc::UnboundedSender<Duration>,
}

impl Frozen {
    fn start(config: ClientConfig) -> Frozen {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (stall, mut stalls) = mpsc::unbounded_channel::<Duration>();
        let (client_tx, client_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let (client, mut client_events) = Client::start(config);
                client_tx.send(client).unwrap();
                loop {
                    tokio::select! {
                        ev = client_events.recv() => {
                            let Some(ev) = ev else { break };
                            if events_tx.send(ev).is_err() {
                                break;
                            }
                        }
                        Some(d) = stalls.recv() => {
                            // The whole runtime stands still: the client's
                            // actor, its clock watcher, its timers.
                            std::thread::sleep(d);
                        }
                    }
                }
            });
        });
        Frozen { client: client_rx.recv().unwrap(), events, stall }
    }

    fn freeze(&self, d: Duration) {
        self.stall.send(d).unwrap();
    }

    async fn next(&mut self) -> Event {
        tokio::time::timeout(DEADLINE, self.events.recv())
            .await
            .expect("timed out waiting for an event")
            .expect("the client stopped")
    }

    async fn connected(&mut self) {
        loop {
            match self.next().await {
                Event::Connected { .. } => return,
                Event::Disconnected { retry_in, .. } => assert_ne!(retry_in, Duration::MAX),
                other => panic!("expected Connected, got {other:?}"),
            }
        }
    }

    /// The `Woke` event; checks it reports at least the threshold.
    async fn woke(&mut self) {
        match self.next().await {
            Event::Woke { slept } => assert!(slept >= Duration::from_secs(1), "{slept:?}"),
            other => panic!("expected Woke, got {other:?}"),
        }
    }
}

/// The next frame on a relay-side connection, within [`DEADLINE`].
async fn frame(conn: &mut RelayConn) -> Option<Frame> {
    tokio::time::timeout(DEADLINE, conn.recv()).await.expect("timed out waiting for a frame")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_stall_a_connection_that_died_meanwhile_is_replaced_at_once() {
    let mut relay = FakeRelay::start(Options::default()).await;
    let mut client = Frozen::start(config(&relay.url()));
    client.connected().await;
    let mut old = relay.accept().await;

    // The client's process stands still. Meanwhile its connection dies
    // without a word (the relay side keeps the socket, answers nothing):
    // what a laptop finds after a night in its bag.
    client.freeze(STALL);
    client.woke().await;
    // It checks the connection with a ping at once (the next regular ping
    // would be ten minutes away) ...
    let Some(Frame::Ping { .. }) = frame(&mut old).await else { panic!("expected the check") };
    // ... and, unanswered, drops it and reconnects without waiting.
    match client.next().await {
        Event::Disconnected { reason, code, retry_in } => {
            assert!(reason.contains("after waking"), "{reason}");
            assert_eq!((code, retry_in), (None, Duration::ZERO));
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    client.connected().await;
    let mut new = relay.accept().await;
    // The new connection works.
    new.send(&Frame::Ping { nonce: 9 }).await;
    assert_eq!(frame(&mut new).await, Some(Frame::Pong { nonce: 9 }));
    // The old one was closed by the client.
    assert!(frame(&mut old).await.is_none());
    client.client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_stall_a_connection_that_answers_is_kept() {
    let mut relay = FakeRelay::start(Options::default()).await;
    let mut cfg = config(&relay.url());
    // The default: time for the answer on a loaded machine.
    cfg.wake_pong_timeout = Duration::from_secs(3);
    let mut client = Frozen::start(cfg);
    client.connected().await;
    let mut conn = relay.accept().await;

    client.freeze(STALL);
    let Some(Frame::Ping { nonce }) = frame(&mut conn).await else { panic!("expected the check") };
    conn.send(&Frame::Pong { nonce }).await;
    client.woke().await;
    // The answered check keeps the connection, past the check's deadline:
    // no other connection comes, and a ping from the relay is answered on it.
    assert!(!relay.accepts_within(Duration::from_secs(4)).await);
    conn.send(&Frame::Ping { nonce: 5 }).await;
    assert_eq!(frame(&mut conn).await, Some(Frame::Pong { nonce: 5 }));
    client.client.close().await;
    assert!(tokio::time::timeout(DEADLINE, client.events.recv()).await.unwrap().is_none());
    assert!(frame(&mut conn).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_cuts_a_backoff_wait_short() {
    let mut relay = FakeRelay::start(Options::default()).await;
    let mut cfg = config(&relay.url());
    // Every backoff wait is drawn from [0, 1 h].
    cfg.backoff_min = Duration::from_secs(3600);
    cfg.backoff_max = Duration::from_secs(3600);
    let mut client = Frozen::start(cfg);
    client.connected().await;
    let mut conn = relay.accept().await;

    // The connection drops; the client backs off. (Full jitter: should the
    // draw be short, it reconnects soon, and the test drops it again.)
    loop {
        conn.close(None).await;
        let Event::Disconnected { retry_in, .. } = client.next().await else { panic!() };
        if retry_in >= Duration::from_secs(20) {
            break;
        }
        client.connected().await;
        conn = relay.accept().await;
    }
    // A stall while waiting: the wait is cut short.
    client.freeze(STALL);
    client.woke().await;
    client.connected().await;
    relay.accept().await;
    client.client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_does_not_cut_the_relays_restart_hint_short() {
    let mut relay = FakeRelay::start(Options::default()).await;
    let mut client = Frozen::start(config(&relay.url()));
    client.connected().await;
    let mut conn = relay.accept().await;

    // The relay asks for ten minutes, in real time: a stall of a few
    // seconds (by the wall clock) leaves most of them.
    conn.send(&Frame::Restarting { reconnect_after_ms: 600_000 }).await;
    conn.close(Some(ErrorCode::ShuttingDown)).await;
    assert_eq!(client.next().await, Event::Restarting { after: Duration::from_secs(600) });
    match client.next().await {
        Event::Disconnected { retry_in, .. } => assert!(retry_in >= Duration::from_secs(600)),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    client.freeze(STALL);
    client.woke().await;
    assert!(!relay.accepts_within(Duration::from_secs(1)).await);
    client.client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_threshold_a_stall_goes_unnoticed() {
    let mut relay = FakeRelay::start(Options::default()).await;
    let mut cfg = config(&relay.url());
    cfg.wake_threshold = None;
    let mut client = Frozen::start(cfg);
    client.connected().await;
    let mut conn = relay.accept().await;

    client.freeze(STALL);
    // The relay's ping is answered once the client runs again, and it is the
    // first thing the client says: no check, no event.
    conn.send(&Frame::Ping { nonce: 1 }).await;
    assert_eq!(frame(&mut conn).await, Some(Frame::Pong { nonce: 1 }));
    client.client.close().await;
    assert!(tokio::time::timeout(DEADLINE, client.events.recv()).await.unwrap().is_none());
}
