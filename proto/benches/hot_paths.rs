//! The protocol's hot paths, timed with criterion (`cargo bench -p tandem-proto`):
//! relay frames, the record layer, a paired link's full per-message cost,
//! application-message JSON, the pairing and session-renewal handshakes and
//! relay authentication. Results and how to read them: `docs/BENCHMARKS.md`.
//!
//! Keys and peers are built from [`Entropy::deterministic`] as in the tests;
//! the handshakes being timed draw from the operating system, as a device does.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use tandem_proto::DeviceKey;
use tandem_proto::delivery::OutboxLimits;
use tandem_proto::entropy::Entropy;
use tandem_proto::envelope::Envelope;
use tandem_proto::frame::{Frame, MAX_PAYLOAD_LEN};
use tandem_proto::identity::{DeviceId, Role};
use tandem_proto::link::{Link, LinkEvent};
use tandem_proto::message::{DeviceInfo, MAX_MESSAGE_LEN, Message, TaskEvent};
use tandem_proto::pairing::{DesktopPairing, PairedPeer, PhonePairing};
use tandem_proto::record::MAX_PLAINTEXT_LEN;
use tandem_proto::relay_auth::{RelayChallenge, prove};

const NOW: u64 = 1_800_000_000;

/// Payload sizes: small (a typical task event), 1 KiB, 16 KiB, and the
/// largest each layer accepts (its "64 KiB max": the frame limit less headers).
fn sizes(max: usize) -> [usize; 4] {
    [64, 1024, 16 * 1024, max]
}

fn info(name: &str, platform: &str) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        platform: platform.into(),
        app_version: "0.1.0".into(),
        ephemeral: false,
    }
}

fn env(b: &[u8]) -> Envelope {
    Envelope::decode(b).unwrap()
}

/// One full pairing (`Noise_IKpsk2` plus confirm and result), both sides,
/// as in `tests/pairing.rs`: the desktop's and the phone's [`PairedPeer`].
fn pair(dk: &DeviceKey, pk: &DeviceKey, e: &mut Entropy) -> (PairedPeer, PairedPeer) {
    let offer = DesktopPairing::new(dk.clone(), NOW, 120, None, e).unwrap();
    let (phone, hello) =
        PhonePairing::start(pk, offer.payload(), &info("Ana's phone", "ios"), e).unwrap();
    let (waiting, welcome) =
        offer.on_hello(&env(&hello), &info("build-box", "linux"), NOW + 1, e).unwrap();
    let (phone_waiting, confirm) = phone.on_welcome(&env(&welcome)).unwrap();
    let (desktop_side, result) = waiting.on_confirm(&env(&confirm)).unwrap().accept(e).unwrap();
    let phone_side = phone_waiting.on_result(&env(&result)).unwrap();
    (desktop_side, phone_side)
}

struct Peers {
    desk_key: DeviceKey,
    desk: Link,
    phone_key: DeviceKey,
    phone: Link,
}

fn peers(limits: OutboxLimits) -> Peers {
    let mut e = Entropy::deterministic([7; 32]);
    let desk_key = DeviceKey::generate(&mut e).unwrap();
    let phone_key = DeviceKey::generate(&mut e).unwrap();
    let (d, p) = pair(&desk_key, &phone_key, &mut e);
    Peers {
        desk_key,
        desk: Link::from_paired(d, limits),
        phone_key,
        phone: Link::from_paired(p, limits),
    }
}

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    let to = DeviceId([0xab; 16]);
    for n in sizes(MAX_PAYLOAD_LEN) {
        g.throughput(Throughput::Bytes(n as u64));
        let send = Frame::Send { send_id: 42, to, payload: vec![0x5a; n] };
        let deliver = Frame::Deliver { delivery_id: 42, from: to, payload: vec![0x5a; n] };
        let send_bytes = send.encode().unwrap();
        let deliver_bytes = deliver.encode().unwrap();
        g.bench_with_input(BenchmarkId::new("send_encode", n), &send, |b, f| {
            b.iter(|| black_box(f).encode().unwrap());
        });
        g.bench_with_input(BenchmarkId::new("send_decode", n), &send_bytes, |b, w| {
            b.iter(|| Frame::decode(black_box(w)).unwrap());
        });
        g.bench_with_input(BenchmarkId::new("deliver_encode", n), &deliver, |b, f| {
            b.iter(|| black_box(f).encode().unwrap());
        });
        g.bench_with_input(BenchmarkId::new("deliver_decode", n), &deliver_bytes, |b, w| {
            b.iter(|| Frame::decode(black_box(w)).unwrap());
        });
    }
    g.finish();
}

fn records(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    // The first session, straight from pairing.
    let mut e = Entropy::deterministic([7; 32]);
    let dk = DeviceKey::generate(&mut e).unwrap();
    let pk = DeviceKey::generate(&mut e).unwrap();
    let (desk, phone) = pair(&dk, &pk, &mut e);
    let mut tx = desk.session.clone();
    for n in sizes(MAX_PLAINTEXT_LEN) {
        g.throughput(Throughput::Bytes(n as u64));
        let plain = vec![0x5a; n];
        // The counter keeps running, so the key ratchet (every 2^20 records)
        // is amortised in, as on a long-lived session.
        g.bench_with_input(BenchmarkId::new("seal", n), &plain, |b, p| {
            b.iter(|| tx.seal(black_box(p)).unwrap());
        });
        // Opening a record twice is a replay: each iteration opens the same
        // record (counter 0) with a fresh copy of the receiving session, made
        // untimed. Timed: envelope decode + open, what a receiver does with
        // the bytes.
        let record = desk.session.clone().seal(&plain).unwrap();
        g.bench_with_input(BenchmarkId::new("open", n), &record, |b, r| {
            b.iter_batched(
                || phone.session.clone(),
                |mut s| s.open(&Envelope::decode(black_box(r)).unwrap()).unwrap(),
                BatchSize::SmallInput,
            );
        });
    }
    g.finish();
}

fn links(c: &mut Criterion) {
    let mut g = c.benchmark_group("link");
    // The outbox drops its oldest message past 256 entries: it stands in for
    // the phone's coalesced acks so the sender's memory stays flat (the
    // receiver never sees a gap: it got every message).
    let Peers { desk_key: _, mut desk, phone_key, mut phone } =
        peers(OutboxLimits { max_messages: 256, max_bytes: 256 * 1024 * 1024 });
    let mut e = Entropy::deterministic([8; 32]);
    for n in sizes(MAX_MESSAGE_LEN) {
        g.throughput(Throughput::Bytes(n as u64));
        let message = vec![0x5a; n];
        // Desktop → phone: queue and seal (delivery header, record), then
        // decode, open, check and deliver at the phone.
        g.bench_with_input(BenchmarkId::new("round_trip", n), &message, |b, m| {
            b.iter_batched(
                || m.clone(),
                |m| {
                    let (_, record) = desk.send(m).unwrap();
                    let events = phone.receive(&phone_key, &record, &mut e).unwrap();
                    debug_assert!(matches!(events.first(), Some(LinkEvent::Message { .. })));
                    events
                },
                BatchSize::SmallInput,
            );
        });
    }
    g.finish();

    // Receiving costs a copy of the receiver's own unacknowledged outbox
    // (`Link::receive` works on copies and commits at the end): a desktop
    // holding a backlog for its phone pays it on every record from the phone,
    // acks included. Timed: the desktop receiving one bare ack that
    // acknowledges nothing new, with `backlog` 1 KiB messages unacknowledged.
    let mut g = c.benchmark_group("link_receive_with_backlog");
    for backlog in [0usize, 100, 1_000, 10_000] {
        let Peers { desk_key, mut desk, mut phone, .. } = peers(OutboxLimits::default());
        for _ in 0..backlog {
            desk.send(vec![0x5a; 1024]).unwrap();
        }
        let mut e = Entropy::deterministic([9; 32]);
        // A replayed ack fails the replay check before the copy, so the
        // phone seals a fresh one per iteration, untimed.
        g.bench_function(BenchmarkId::from_parameter(backlog), |b| {
            b.iter_batched(
                || phone.ack().unwrap(),
                |ack| desk.receive(&desk_key, &ack, &mut e).unwrap(),
                BatchSize::SmallInput,
            );
        });
        assert_eq!(desk.outbound().len(), backlog);
    }
    g.finish();
}

fn messages(c: &mut Criterion) {
    let mut g = c.benchmark_group("message_json");
    let typical = [
        (
            "task_event_progress",
            Message::TaskEvent {
                task_id: "0b9e6f3c-2d41-4c8e-9a57-3f1d2e7c8b60".into(),
                offset: 1_234,
                at_ms: 1_800_000_000_123,
                event: TaskEvent::Progress {
                    text: "Running `cargo test -p tandem-proto`: 118 passed, 0 failed; \
                           now checking the relay crate's integration tests."
                        .into(),
                },
            },
        ),
        (
            "task_event_tool_call",
            Message::TaskEvent {
                task_id: "0b9e6f3c-2d41-4c8e-9a57-3f1d2e7c8b60".into(),
                offset: 1_235,
                at_ms: 1_800_000_000_456,
                event: TaskEvent::ToolCall {
                    call_id: "toolu_01A2B3C4D5E6F7G8H9".into(),
                    name: "Bash".into(),
                    input: json!({
                        "command": "cargo clippy --workspace --all-targets -- -D warnings",
                        "description": "Lint the workspace",
                        "timeout": 600_000
                    }),
                },
            },
        ),
    ];
    for (name, msg) in typical {
        let bytes = msg.encode().unwrap();
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_with_input(BenchmarkId::new("encode", name), &msg, |b, m| {
            b.iter(|| black_box(m).encode().unwrap());
        });
        g.bench_with_input(BenchmarkId::new("decode", name), &bytes, |b, w| {
            b.iter(|| Message::decode(black_box(w)).unwrap());
        });
    }
    g.finish();
}

fn handshakes(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    let mut setup = Entropy::deterministic([10; 32]);
    let dk = DeviceKey::generate(&mut setup).unwrap();
    let pk = DeviceKey::generate(&mut setup).unwrap();
    let mut os = Entropy::os();
    // Both sides, every message: offer, hello, welcome, confirm, result.
    g.bench_function("pairing_ikpsk2_both_sides", |b| {
        b.iter(|| pair(&dk, &pk, &mut os));
    });
    // A renewal on a paired link, both sides: init, accept, the initiator's
    // confirming ack, and the responder promoting the new session.
    let Peers { desk_key, mut desk, phone_key, mut phone } = peers(OutboxLimits::default());
    g.bench_function("session_renewal_kkpsk2_both_sides", |b| {
        b.iter(|| {
            let init = phone.start_renewal(&phone_key, NOW * 1000, &mut os).unwrap();
            let accept = only_send(desk.receive(&desk_key, &init, &mut os).unwrap());
            let confirm = only_send(phone.receive(&phone_key, &accept, &mut os).unwrap());
            desk.receive(&desk_key, &confirm, &mut os).unwrap()
        });
    });
    g.finish();

    let mut g = c.benchmark_group("relay_auth");
    let challenge = RelayChallenge::new(&mut setup, "relay.example.com").unwrap();
    let frame = challenge.frame();
    let Frame::Auth { public_key, proof } =
        prove(&pk, Role::Phone, "relay.example.com", &frame).unwrap()
    else {
        unreachable!()
    };
    g.bench_function("challenge", |b| {
        b.iter(|| RelayChallenge::new(&mut os, "relay.example.com").unwrap().frame());
    });
    g.bench_function("prove", |b| {
        b.iter(|| prove(&pk, Role::Phone, "relay.example.com", black_box(&frame)).unwrap());
    });
    g.bench_function("verify", |b| {
        b.iter(|| challenge.verify(Role::Phone, &public_key, black_box(&proof)).unwrap());
    });
    g.finish();
}

/// The single envelope a handshake step asks to send.
fn only_send(events: Vec<LinkEvent>) -> Vec<u8> {
    events
        .into_iter()
        .find_map(|ev| match ev {
            LinkEvent::Send(mut v) if v.len() == 1 => v.pop(),
            _ => None,
        })
        .unwrap()
}

fn config() -> Criterion {
    // About 3.5 s per benchmark: the whole run takes a few minutes on 2 cores.
    Criterion::default()
        .warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = frames, records, links, messages, handshakes
}
criterion_main!(benches);
