//! The real client (`tandem-client`) against the real relay process over
//! TLS (self-signed mode), with end-to-end encryption from `tandem-proto`:
//! pairing through the relay's mailbox, then a stream of application
//! messages during which the relay is killed with SIGKILL and restarted.
//! Every message reaches the application exactly once, in order.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tandem_client::{Client, ClientConfig, Event};
use tandem_proto::delivery::OutboxLimits;
use tandem_proto::entropy::Entropy;
use tandem_proto::envelope::Envelope;
use tandem_proto::link::{Link, LinkEvent};
use tandem_proto::message::DeviceInfo;
use tandem_proto::pairing::{DesktopPairing, PhonePairing};
use tandem_proto::{DeviceId, DeviceKey, Role};
use tokio::sync::mpsc;

struct TlsRelay {
    child: Child,
    url: String,
    listen: String,
}

impl TlsRelay {
    fn start(dir: &Path, listen: &str) -> TlsRelay {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("relay.log"))
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tandem-relay"))
            .args([
                "--listen",
                listen,
                "--tls",
                "self-signed",
                "--self-signed-names",
                "127.0.0.1,localhost",
            ])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix("tandem-relay listening on ").unwrap().to_owned();
        assert!(url.starts_with("wss://127.0.0.1:"), "{url}");
        let listen = url.trim_start_matches("wss://").trim_end_matches("/v1/connect").to_owned();
        TlsRelay { child, url, listen }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TlsRelay {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn cert(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("data/tls/self-signed-cert.pem")).unwrap()
}

fn info(name: &str) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        platform: "test".into(),
        app_version: "0".into(),
        ephemeral: false,
    }
}

async fn next(
    events: &mut mpsc::Receiver<Event>,
    what: &str,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap_or_else(|| panic!("event stream ended waiting for {what}"));
        if pred(&e) {
            return e;
        }
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Pair a desktop and a phone through the relay's mailbox; returns their links.
async fn pair(
    desk: &Client,
    desk_events: &mut mpsc::Receiver<Event>,
    desk_key: &DeviceKey,
    phone: &Client,
    phone_events: &mut mpsc::Receiver<Event>,
    phone_key: &DeviceKey,
) -> (Link, Link) {
    let mut e = Entropy::os();
    let offer = DesktopPairing::new(desk_key.clone(), now_unix(), 120, None, &mut e).unwrap();
    let pid = offer.pairing_id();
    desk.pair_open(pid, 120).await.unwrap();
    // The phone scanned the QR code.
    let (phone_pairing, hello) =
        PhonePairing::start(phone_key, offer.payload(), &info("phone"), &mut e).unwrap();
    phone.pair_claim(pid, hello).await.unwrap();
    let Event::PairMessage { payload, peer, .. } =
        next(desk_events, "the claim", |e| matches!(e, Event::PairMessage { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(peer, phone.device_id());
    let (waiting, welcome) = offer
        .on_hello(&Envelope::decode(&payload).unwrap(), &info("desk"), now_unix(), &mut e)
        .unwrap();
    desk.pair_message(pid, peer, welcome).await.unwrap();
    let Event::PairMessage { payload, .. } =
        next(phone_events, "the welcome", |e| matches!(e, Event::PairMessage { .. })).await
    else {
        unreachable!()
    };
    let (phone_waiting, confirm) =
        phone_pairing.on_welcome(&Envelope::decode(&payload).unwrap()).unwrap();
    phone.pair_message(pid, desk.device_id(), confirm).await.unwrap();
    let Event::PairMessage { payload, .. } =
        next(desk_events, "the confirm", |e| matches!(e, Event::PairMessage { .. })).await
    else {
        unreachable!()
    };
    let user = waiting.on_confirm(&Envelope::decode(&payload).unwrap()).unwrap();
    assert_eq!(user.sas(), phone_waiting.sas(), "both screens show the same code");
    // The desktop user confirms: authorise the route, then tell the phone.
    desk.authorize(phone.device_id()).await.unwrap();
    let (desk_peer, result) = user.accept(&mut e).unwrap();
    desk.pair_message(pid, phone.device_id(), result).await.unwrap();
    let Event::PairMessage { payload, .. } =
        next(phone_events, "the result", |e| matches!(e, Event::PairMessage { .. })).await
    else {
        unreachable!()
    };
    let phone_peer = phone_waiting.on_result(&Envelope::decode(&payload).unwrap()).unwrap();
    phone.authorize(desk.device_id()).await.unwrap();
    desk.pair_close(pid).await.unwrap();
    (
        Link::from_paired(desk_peer, OutboxLimits::default()),
        Link::from_paired(phone_peer, OutboxLimits::default()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paired_devices_get_every_message_once_in_order_across_a_relay_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = TlsRelay::start(dir.path(), "127.0.0.1:0");
    let roots = vec![cert(dir.path())];
    let desk_key = DeviceKey::generate(&mut Entropy::os()).unwrap();
    let phone_key = DeviceKey::generate(&mut Entropy::os()).unwrap();
    let config = |key: &DeviceKey, role| {
        let mut c = ClientConfig::new(relay.url.clone(), key.clone(), role);
        c.extra_roots_pem = roots.clone();
        c.backoff_min = Duration::from_millis(50);
        c.backoff_max = Duration::from_millis(500);
        c
    };
    let (desk, mut desk_events) = Client::start(config(&desk_key, Role::Desktop));
    let (phone, mut phone_events) = Client::start(config(&phone_key, Role::Phone));
    next(&mut desk_events, "desktop connected", |e| matches!(e, Event::Connected { .. })).await;
    next(&mut phone_events, "phone connected", |e| matches!(e, Event::Connected { .. })).await;
    let (mut desk_link, mut phone_link) =
        pair(&desk, &mut desk_events, &desk_key, &phone, &mut phone_events, &phone_key).await;

    // The desktop streams task events; the relay is killed half way and
    // restarted from the same data directory and port.
    let total = 120u32;
    let desk_id: DeviceId = desk.device_id();
    let phone_id = phone.device_id();
    let sender = {
        let desk = desk.clone();
        let mut records = Vec::new();
        for i in 0..total {
            let (_, r) = desk_link.send(format!("event {i}").into_bytes()).unwrap();
            records.push(r);
        }
        tokio::spawn(async move {
            for r in records {
                desk.send(phone_id, r).await.unwrap();
            }
        })
    };
    // Receive on the phone: open records through the link, deliver once, ack after "persisting".
    let mut got: Vec<String> = Vec::new();
    let mut killed = false;
    let mut e = Entropy::os();
    while got.len() < total as usize {
        let ev =
            next(&mut phone_events, "a delivery", |e| matches!(e, Event::Deliver { .. })).await;
        let Event::Deliver { delivery_id, from, payload } = ev else { unreachable!() };
        assert_eq!(from, desk_id);
        if let Ok(events) = phone_link.receive(&phone_key, &payload, &mut e) {
            for ev in events {
                if let LinkEvent::Message { message, .. } = ev {
                    got.push(String::from_utf8(message).unwrap());
                }
            }
        }
        phone.ack(delivery_id);
        if !killed && got.len() >= (total / 2) as usize {
            killed = true;
            relay.kill9();
            relay = TlsRelay::start(dir.path(), &relay.listen.clone());
        }
    }
    sender.await.unwrap();
    let expect: Vec<String> = (0..total).map(|i| format!("event {i}")).collect();
    assert_eq!(got, expect, "every message exactly once, in order");
    assert!(killed);
    // Acks flow back end to end: the desktop's outbox drains.
    let ack = phone_link.ack().unwrap();
    phone.send(desk_id, ack).await.unwrap();
    let Event::Deliver { payload, delivery_id, .. } =
        next(&mut desk_events, "the ack", |e| matches!(e, Event::Deliver { .. })).await
    else {
        unreachable!()
    };
    desk_link.receive(&desk_key, &payload, &mut e).unwrap();
    desk.ack(delivery_id);
    assert!(desk_link.outbound().is_empty());
    desk.close().await;
    phone.close().await;
}
