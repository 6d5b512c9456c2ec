//! Issue 15, test 1: `kill -9` of the real relay process at random points
//! during a flood, to a connected recipient and to an offline one, for
//! [`CYCLES`] cycles, through the real end-to-end `Link` (tandem-proto).
//!
//! The desktop is the real `tandem-client` (it reconnects and writes again,
//! with the same `send_id`, every send the relay had not answered when the
//! connection dropped); it never resends from its `Link` outbox, so a frame
//! the relay answered `Ok` and then lost shows as a gap at the phone. The
//! phone speaks raw relay frames (so it sees the relay's own delivery ids
//! and every `AuthOk`'s store epoch), opens every record with its `Link`,
//! and acknowledges to the relay after opening. Checked:
//!
//! * every message comes out of the phone's `Link` exactly once, in order,
//!   and all of them arrive (nothing lost);
//! * the phone's `Link` never sees a gap (it would `Nack`): nothing the
//!   relay answered was lost, and the relay kept the sender's order;
//! * no (store epoch, delivery id) pair ever carries two different frames;
//! * the desktop's outbox drains once the phone's end-to-end ack arrives.
//!
//! The RNG is seeded; the seed is printed, and `TANDEM_TEST_SEED=N` runs
//! the same choices again (the kill points themselves depend on timing).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Device, Relay, pair_for_real};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tandem_client::{Client, ClientConfig, Event};
use tandem_proto::delivery::OutboxLimits;
use tandem_proto::entropy::Entropy;
use tandem_proto::frame::Frame;
use tandem_proto::link::{Link, LinkError, LinkEvent};
use tandem_proto::record::RecordError;
use tandem_proto::relay_auth::prove;
use tandem_proto::{DeviceId, DeviceKey, Role};

/// Kill/restart cycles.
const CYCLES: usize = 50;
/// Messages per flood: at least, at most.
const FLOOD: (u64, u64) = (50, 400);
/// How long the phone may take to get everything after a restart.
const DRAIN: Duration = Duration::from_secs(30);

/// The phone: raw frames, its `Link`, and what it saw.
struct Phone {
    key: DeviceKey,
    desk: DeviceId,
    link: Link,
    entropy: Entropy,
    /// The connection and its store epoch, while connected.
    conn: Option<(Device, u64)>,
    /// Messages out of the `Link`, in order.
    got: Vec<Vec<u8>>,
    /// Every (store epoch, delivery id) seen, with the frame it carried.
    ids: HashMap<(u64, u64), Vec<u8>>,
    /// Records the `Link` recognised as seen before (expected after a kill).
    duplicates: u64,
    /// `send_id`s of the phone's own `Send`s (its end-to-end acks).
    next_send: u64,
}

impl Phone {
    /// Connect and authenticate; `None` if the relay is not there.
    async fn connect(&mut self, relay: &Relay) -> bool {
        let Ok((ws, _)) = tokio_tungstenite::connect_async(relay.url.as_str()).await else {
            return false;
        };
        let mut d = Device {
            key: self.key.clone(),
            role: Role::Phone,
            ws,
            backlog: Vec::new(),
            auto_pong: true,
        };
        let hello = Frame::Hello { min_version: 1, max_version: 1, role: Role::Phone };
        if !d.try_send(&hello).await {
            return false;
        }
        let Some(Ok(challenge)) = d.next_within(Duration::from_secs(5)).await else {
            return false;
        };
        let auth = prove(&d.key, Role::Phone, &relay.addr, &challenge).expect("prove");
        if !d.try_send(&auth).await {
            return false;
        }
        match d.next_within(Duration::from_secs(5)).await {
            Some(Ok(Frame::AuthOk { store_epoch, .. })) => {
                self.conn = Some((d, store_epoch));
                true
            }
            _ => false,
        }
    }

    /// Connect, retrying for a while (the relay was just restarted).
    async fn connect_retrying(&mut self, relay: &Relay) {
        let until = Instant::now() + Duration::from_secs(10);
        while !self.connect(relay).await {
            assert!(Instant::now() < until, "the phone cannot connect to the restarted relay");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Handle one frame from the relay.
    async fn on_frame(&mut self, frame: Frame, seed: u64) {
        let Frame::Deliver { delivery_id, from, payload } = frame else { return };
        assert_eq!(from, self.desk, "seed {seed}: a delivery from a stranger");
        let epoch = self.conn.as_ref().map(|(_, e)| *e).expect("connected");
        if let Some(before) = self.ids.insert((epoch, delivery_id), payload.clone()) {
            assert_eq!(
                before, payload,
                "seed {seed}: delivery id {delivery_id} of store epoch {epoch:#x} carried two \
                 different frames"
            );
        }
        match self.link.receive(&self.key, &payload, &mut self.entropy) {
            Ok(events) => {
                for e in events {
                    match e {
                        LinkEvent::Message { message, .. } => self.got.push(message),
                        LinkEvent::Send(_) => panic!(
                            "seed {seed}: the phone's Link saw a gap after {} messages (it would \
                             nack): the relay lost or reordered a frame",
                            self.got.len()
                        ),
                        LinkEvent::ResyncNeeded { from, to } => {
                            panic!("seed {seed}: messages {from}..={to} lost for good")
                        }
                        LinkEvent::AckDue | LinkEvent::SessionRenewed => {}
                    }
                }
            }
            Err(LinkError::Record(RecordError::Replay(_))) => self.duplicates += 1,
            Err(e) => panic!("seed {seed}: the phone cannot open a record: {e}"),
        }
        // Opened (nothing to persist here): acknowledge to the relay.
        if let Some((d, _)) = self.conn.as_mut() {
            let _ = d.try_send(&Frame::Ack { up_to: delivery_id }).await;
        }
    }

    /// Read for up to `d`; a connection that ended is dropped.
    async fn pump(&mut self, d: Duration, seed: u64) {
        let Some((conn, _)) = self.conn.as_mut() else {
            tokio::time::sleep(d).await;
            return;
        };
        match conn.next_within(d).await {
            None => {}
            Some(Ok(f)) => self.on_frame(f, seed).await,
            Some(Err(_)) => self.conn = None,
        }
    }

    /// Read what the old connection still has after a kill, then drop it.
    async fn drain_dead(&mut self, seed: u64) {
        while self.conn.is_some() {
            self.pump(Duration::from_secs(5), seed).await;
        }
    }

    /// Send the end-to-end ack to the desktop (fire and forget).
    async fn send_ack(&mut self) {
        let record = self.link.ack().expect("ack record");
        self.next_send += 1;
        let f = Frame::Send { send_id: self.next_send, to: self.desk, payload: record };
        if let Some((d, _)) = self.conn.as_mut() {
            let _ = d.try_send(&f).await;
        }
    }
}

fn message(i: u64) -> Vec<u8> {
    format!("message {i}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_floods_to_connected_and_offline_recipients_loses_nothing() {
    let seed = std::env::var("TANDEM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random::<u64>());
    println!("seed {seed} (TANDEM_TEST_SEED={seed} repeats the choices)");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();

    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), &["--frames-per-device-per-second", "1000000"]);
    let pair = pair_for_real(&relay).await;
    let (desk_key, desk_id) = (pair.desk.key.clone(), pair.desk.id());
    let (phone_key, phone_id) = (pair.phone.key.clone(), pair.phone.id());
    let desk_link =
        Arc::new(Mutex::new(Link::from_paired(pair.desk_view, OutboxLimits::default())));
    let mut phone = Phone {
        key: phone_key,
        desk: desk_id,
        link: Link::from_paired(pair.phone_view, OutboxLimits::default()),
        entropy: Entropy::os(),
        conn: None,
        got: Vec::new(),
        ids: HashMap::new(),
        duplicates: 0,
        next_send: 100,
    };
    pair.desk.close().await;
    pair.phone.close().await;

    // The desktop: the real client; its events (the phone's end-to-end
    // acks, reconnections) are handled in a task of their own.
    let mut config = ClientConfig::new(relay.url.clone(), desk_key.clone(), Role::Desktop);
    config.backoff_min = Duration::from_millis(10);
    config.backoff_max = Duration::from_millis(100);
    config.backoff_reset_after = Duration::from_millis(100);
    let (desk, mut desk_events) = Client::start(config);
    let connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let desk_task = {
        let (link, desk, connections) =
            (Arc::clone(&desk_link), desk.clone(), Arc::clone(&connections));
        tokio::spawn(async move {
            let mut entropy = Entropy::os();
            while let Some(event) = desk_events.recv().await {
                match event {
                    Event::Deliver { delivery_id, payload, .. } => {
                        let mut link = link.lock().unwrap();
                        match link.receive(&desk_key, &payload, &mut entropy) {
                            Ok(events) => assert!(
                                events.iter().all(|e| !matches!(e, LinkEvent::Send(_))),
                                "the desktop's Link had to resend or nack: {events:?}"
                            ),
                            Err(LinkError::Record(RecordError::Replay(_))) => {}
                            Err(e) => panic!("the desktop cannot open a record: {e}"),
                        }
                        desk.ack(delivery_id);
                    }
                    Event::Connected { .. } => {
                        connections.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    }
                    _ => {}
                }
            }
        })
    };
    phone.connect_retrying(&relay).await;

    let mut sent = 0u64;
    let mut offline_cycles = 0;
    for cycle in 0..CYCLES {
        let offline = rng.random_bool(0.5);
        offline_cycles += usize::from(offline);
        if offline {
            // The recipient is not connected while the flood goes out.
            if let Some((d, _)) = phone.conn.take() {
                d.close().await;
            }
        }
        let k = rng.random_range(FLOOD.0..=FLOOD.1);
        let kill_after_oks = rng.random_range(0..=k);
        let jitter = Duration::from_micros(rng.random_range(0..3000));
        let mut answers = FuturesUnordered::new();
        {
            let mut link = desk_link.lock().unwrap();
            for i in sent..sent + k {
                let (_, record) = link.send(message(i)).expect("seal");
                answers.push(desk.send(phone_id, record));
            }
        }
        sent += k;
        let mut oks = 0u64;
        let mut killed = false;
        let cycle_started = Instant::now();
        while !killed || !answers.is_empty() {
            if !killed && oks >= kill_after_oks {
                tokio::time::sleep(jitter).await;
                relay.kill9();
                killed = true;
                phone.drain_dead(seed).await;
                relay.restart();
                if !offline {
                    phone.connect_retrying(&relay).await;
                }
                continue;
            }
            tokio::select! {
                answer = answers.next(), if !answers.is_empty() => {
                    if let Some(answer) = answer {
                        answer.unwrap_or_else(|e| panic!("seed {seed}: cycle {cycle}: a send was refused: {e}"));
                        oks += 1;
                    }
                }
                () = phone.pump(Duration::from_millis(20), seed) => {}
            }
            assert!(
                cycle_started.elapsed() < DRAIN,
                "seed {seed}: cycle {cycle}: {} of {k} sends still unanswered",
                answers.len()
            );
        }
        // Every send answered: an offline recipient comes back and drains.
        if phone.conn.is_none() {
            phone.connect_retrying(&relay).await;
        }
        let until = Instant::now() + DRAIN;
        while (phone.got.len() as u64) < sent {
            assert!(
                Instant::now() < until,
                "seed {seed}: cycle {cycle} ({}): {} of {sent} messages arrived",
                if offline { "offline" } else { "connected" },
                phone.got.len()
            );
            phone.pump(Duration::from_millis(50), seed).await;
        }
        phone.send_ack().await;
    }

    // Everything once, in order; nothing more comes.
    let expect: Vec<Vec<u8>> = (0..sent).map(message).collect();
    assert!(phone.got == expect, "seed {seed}: the messages did not come out once each, in order");
    let quiet_until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < quiet_until {
        phone.pump(Duration::from_millis(50), seed).await;
    }
    assert_eq!(phone.got.len() as u64, sent, "seed {seed}: a message came out twice");
    // The phone's last ack reaches the desktop: its outbox drains.
    let until = Instant::now() + Duration::from_secs(10);
    while !desk_link.lock().unwrap().outbound().is_empty() {
        assert!(Instant::now() < until, "seed {seed}: the desktop's outbox never drained");
        phone.send_ack().await;
        phone.pump(Duration::from_millis(100), seed).await;
    }
    assert!(!desk_task.is_finished(), "the desktop's event task ended (a failed check?)");
    let reconnections = connections.load(std::sync::atomic::Ordering::Acquire);
    println!(
        "{CYCLES} kills ({offline_cycles} to an offline recipient), {sent} messages, {} \
         redeliveries dropped by the Link, {} delivery ids, {reconnections} desktop connections, \
         {:.1} s",
        phone.duplicates,
        phone.ids.len(),
        started.elapsed().as_secs_f64()
    );
    // Not one per kill: a kill that comes before the desktop is back (a
    // cycle that waits for no `Ok`) is one reconnection for two kills.
    assert!(
        reconnections >= CYCLES as u64 / 2,
        "seed {seed}: the desktop reconnected {reconnections} times for {CYCLES} kills"
    );
    desk.close().await;
}
