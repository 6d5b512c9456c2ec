//! Frames for a connected recipient are forwarded from memory and held
//! until it acknowledges them or `hold_window` passes (PROTOCOL.md §6.5):
//! * a recipient that stops (SIGSTOP of a real client in a child process)
//!   while the sender floods: what is held is written when the window
//!   passes, memory stays within the hold's caps, every `Send` is answered
//!   `Ok` while it is stopped, and after SIGCONT everything arrives once,
//!   in order;
//! * a sender that goes right after sending, and a recipient that goes
//!   before acknowledging: the frame is written, and delivered (same id,
//!   same order) when the recipient returns, or to the connection that
//!   replaces it;
//! * `kill -9` with frames held: the sender had no `Ok`, resends, and the
//!   recipient gets every frame; no delivery id carries two frames.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::time::Duration;

use common::{Device, Relay, metric, paired};
use std::io::{BufRead, BufReader};
use tandem_client::{Client, ClientConfig, Event};
use tandem_proto::frame::Frame;
use tandem_proto::{DeviceKey, ErrorCode, Role};

const CHILD_URL: &str = "TANDEM_HOLD_CHILD_URL";
const CHILD_KEY: &str = "TANDEM_HOLD_CHILD_KEY";

fn payload(i: u64) -> Vec<u8> {
    let mut p = i.to_be_bytes().to_vec();
    p.resize(1024, 0x5a);
    p
}

fn index(p: &[u8]) -> u64 {
    u64::from_be_bytes(p[..8].try_into().unwrap())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The recipient, in a child process (this test binary, running only this
/// function): the real client, acknowledging every delivery and printing
/// `D <delivery id> <payload index>` for it.
#[tokio::test]
#[ignore = "the child process of a_stopped_recipient_..."]
async fn child_recipient() {
    let (Ok(url), Ok(key)) = (std::env::var(CHILD_URL), std::env::var(CHILD_KEY)) else {
        return;
    };
    let mut secret = [0u8; 32];
    for (i, b) in secret.iter_mut().enumerate() {
        *b = u8::from_str_radix(&key[2 * i..2 * i + 2], 16).unwrap();
    }
    let (client, mut events) =
        Client::start(ClientConfig::new(&url, DeviceKey::from_bytes(secret), Role::Phone));
    use std::io::Write;
    while let Some(e) = events.recv().await {
        let mut out = std::io::stdout().lock();
        match e {
            Event::Connected { .. } => writeln!(out, "C").unwrap(),
            Event::Deliver { delivery_id, payload, .. } => {
                writeln!(out, "D {delivery_id} {}", index(&payload)).unwrap();
                client.ack(delivery_id);
            }
            _ => {}
        }
        out.flush().unwrap();
    }
}

/// The child recipient, and the lines it prints.
struct Child {
    child: std::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Child {
    fn start(relay: &Relay, key: &DeviceKey) -> Child {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_recipient", "--ignored", "--nocapture", "--test-threads", "1"])
            .env(CHILD_URL, &relay.url)
            .env(CHILD_KEY, hex(&key.to_bytes()))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for l in out.lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Child { child, lines }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        assert!(std::process::Command::new("kill").args([sig, &pid]).status().unwrap().success());
    }

    /// Wait until its client is connected (registered at the relay: a
    /// frame sent before would find it offline and go to the store).
    async fn connected(&mut self) {
        loop {
            let l = tokio::time::timeout(Duration::from_secs(30), self.lines.recv())
                .await
                .expect("connected within 30 s")
                .expect("the child runs");
            // (libtest may print `test child_recipient ... ` first, on it.)
            if l == "C" || l.ends_with(" C") {
                return;
            }
        }
    }

    /// The next delivery it printed: (delivery id, payload index).
    async fn delivery(&mut self) -> (u64, u64) {
        loop {
            let l = tokio::time::timeout(Duration::from_secs(30), self.lines.recv())
                .await
                .expect("a delivery within 30 s")
                .expect("the child runs");
            if let Some(rest) = l.strip_prefix("D ") {
                let mut it = rest.split(' ').map(|x| x.parse::<u64>().unwrap());
                return (it.next().unwrap(), it.next().unwrap());
            }
        }
    }
}

/// Read `desk`'s answers until every send id in `ids` has one.
async fn answers(
    desk: &mut Device,
    ids: std::ops::Range<u64>,
) -> HashMap<u64, Result<(), ErrorCode>> {
    let mut got = HashMap::new();
    while (got.len() as u64) < ids.end - ids.start {
        match desk.recv_within(Duration::from_secs(20)).await.expect("answers") {
            Frame::Ok { ref_id } if ids.contains(&ref_id) => {
                got.insert(ref_id, Ok(()));
            }
            Frame::Error { code, ref_id, .. } if ids.contains(&ref_id) => {
                got.insert(ref_id, Err(code));
            }
            _ => {}
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_recipient_gets_its_frames_written_and_everything_after_sigcont() {
    const WARM: u64 = 50;
    const N: u64 = 3000;
    let dir = tempfile::tempdir().unwrap();
    // A window a loaded machine's recipient process acknowledges within
    // (the warm-up's `Ok`s must come from its acks).
    let relay = Relay::start(
        dir.path(),
        &["--frames-per-device-per-second", "1000000", "--hold-window-ms", "1000"],
    );
    let (mut desk, phone) = paired(&relay).await;
    let (phone_key, phone_id) = (phone.key.clone(), phone.id());
    phone.close().await;
    let mut child = Child::start(&relay, &phone_key);
    child.connected().await;

    // Warm-up: the recipient acknowledges, so its senders hear `Ok`
    // without a write.
    for i in 0..WARM {
        desk.send(&Frame::Send { send_id: i + 1, to: phone_id, payload: payload(i) }).await;
    }
    let mut seen = Vec::new();
    let mut ids = BTreeMap::new();
    while (seen.len() as u64) < WARM {
        let (id, i) = child.delivery().await;
        assert!(ids.insert(id, i).is_none(), "delivery id {id} twice");
        seen.push(i);
    }
    assert!(answers(&mut desk, 1..WARM + 1).await.values().all(Result::is_ok));
    let m = relay.metrics().await;
    assert!(
        metric(&m, "tandem_relay_send_oks_total{by=\"ack\"}").unwrap_or(0.0) >= 1.0,
        "acknowledged frames are answered Ok without a write:\n{m}"
    );

    // The recipient stops; the sender floods.
    child.signal("-STOP");
    let flood = async {
        for i in WARM..N {
            desk.send(&Frame::Send { send_id: i + 1, to: phone_id, payload: payload(i) }).await;
        }
        answers(&mut desk, WARM + 1..N + 1).await
    };
    let watch = async {
        let mut max_held = 0.0f64;
        for _ in 0..40 {
            let m = relay.metrics().await;
            max_held = max_held.max(metric(&m, "tandem_relay_held_bytes").unwrap_or(0.0));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        max_held
    };
    let (answered, max_held) = tokio::join!(flood, watch);
    // Every send was answered while the recipient is stopped: held frames
    // once written (the window passed), the rest written at once.
    let refused: Vec<_> = answered.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    // Memory: at most one delivery window (2 MiB) held for the recipient.
    assert!(max_held <= f64::from(2u32 << 20), "held {max_held} bytes");
    let m = relay.wait_metric("tandem_relay_held_frames", 0.0).await;
    assert!(metric(&m, "tandem_relay_hold_written_frames_total").unwrap_or(0.0) >= 1.0, "{m}");
    assert!(
        metric(&m, "tandem_relay_hold_spills_total{reason=\"recipient_cap\"}").unwrap_or(0.0)
            >= 1.0,
        "past the recipient's cap frames go to the store at once:\n{m}"
    );
    let rss = std::fs::read_to_string(format!("/proc/{}/status", relay.pid())).ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1).map(|k| k.parse::<u64>().unwrap()))
    });
    if let Some(kib) = rss {
        assert!(kib < 200 * 1024, "relay RSS {kib} KiB");
    }

    // It resumes: everything, once, in order.
    child.signal("-CONT");
    while (seen.len() as u64) < N {
        let (id, i) = child.delivery().await;
        if let Some(before) = ids.insert(id, i) {
            assert_eq!(before, i, "delivery id {id} carried two frames");
            continue;
        }
        seen.push(i);
    }
    assert_eq!(seen, (0..N).collect::<Vec<_>>(), "every frame once, in order");
}

#[tokio::test]
async fn held_frames_outlive_both_connections_and_keep_their_ids() {
    let dir = tempfile::tempdir().unwrap();
    // A long window: only the end of the recipient's connection writes them.
    let relay = Relay::start(
        dir.path(),
        &["--frames-per-device-per-second", "1000000", "--hold-window-ms", "60000"],
    );
    let (mut desk, mut phone) = paired(&relay).await;
    let (phone_key, phone_id) = (phone.key.clone(), phone.id());
    for i in 0..3 {
        desk.send(&Frame::Send { send_id: i + 1, to: phone_id, payload: payload(i) }).await;
    }
    // The sender goes before any answer.
    desk.close().await;
    let first = phone.deliveries(3).await;
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "tandem_relay_held_frames"), Some(3.0), "{m}");
    // A newer connection of the phone adopts them: delivered again, same ids.
    let (mut phone2, _) = Device::connect(&relay, phone_key.clone(), Role::Phone).await;
    let again = phone2.deliveries(3).await;
    assert_eq!(again, first, "the replacing connection gets the same frames, same ids");
    drop(phone);
    // The recipient goes without acknowledging: they are written.
    phone2.close().await;
    let m = relay.wait_metric("tandem_relay_held_frames", 0.0).await;
    assert_eq!(metric(&m, "tandem_relay_hold_written_frames_total"), Some(3.0), "{m}");
    // It returns: the same frames, same ids, same order.
    let (mut phone3, queued) = Device::connect(&relay, phone_key.clone(), Role::Phone).await;
    assert_eq!(queued, 3);
    let back = phone3.deliveries(3).await;
    assert_eq!(back, first);
    let ids: Vec<u64> = back.iter().map(|d| d.0).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    phone3.send(&Frame::Ack { up_to: ids[2] }).await;
    phone3.close().await;
    let (_, queued) = Device::connect(&relay, phone_key, Role::Phone).await;
    assert_eq!(queued, 0, "acknowledged, deleted");
}

#[tokio::test]
async fn a_kill_9_with_frames_held_loses_nothing() {
    const N: u64 = 20;
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(
        dir.path(),
        &["--frames-per-device-per-second", "1000000", "--hold-window-ms", "60000"],
    );
    let (mut desk, mut phone) = paired(&relay).await;
    let (desk_key, phone_key, phone_id) = (desk.key.clone(), phone.key.clone(), phone.id());
    for i in 0..N {
        desk.send(&Frame::Send { send_id: i + 1, to: phone_id, payload: payload(i) }).await;
    }
    let mut seen: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for (id, _, p) in phone.deliveries(N as usize).await {
        assert!(seen.insert(id, p).is_none());
    }
    // Held, not acknowledged: no `Ok`.
    let (frames, _) = desk.collect_for(Duration::from_millis(300)).await;
    assert!(!frames.iter().any(|f| matches!(f, Frame::Ok { .. })), "no Ok before ack or write");

    relay.restart();
    let (mut desk, _) = Device::connect(&relay, desk_key, Role::Desktop).await;
    let (mut phone, queued) = Device::connect(&relay, phone_key, Role::Phone).await;
    assert_eq!(queued, 0, "nothing held was written");
    // The sender resends what had no `Ok`.
    for i in 0..N {
        desk.send(&Frame::Send { send_id: i + 1, to: phone_id, payload: payload(i) }).await;
    }
    let got = phone.deliveries(N as usize).await;
    for (k, (id, _, p)) in got.iter().enumerate() {
        assert_eq!(index(p), k as u64, "in order");
        if let Some(before) = seen.insert(*id, p.clone()) {
            assert_eq!(&before, p, "delivery id {id} carried two frames");
        }
    }
    phone.send(&Frame::Ack { up_to: got.last().unwrap().0 }).await;
    assert!(answers(&mut desk, 1..N + 1).await.values().all(Result::is_ok));
}

/// A relay whose holds keep frames until acked (a minute) and take at
/// most `max_bytes` in all.
fn capped(max_bytes: &'static str) -> [&'static str; 6] {
    let window = ["--hold-window-ms", "60000"];
    [
        "--frames-per-device-per-second",
        "1000000",
        window[0],
        window[1],
        "--hold-max-bytes",
        max_bytes,
    ]
}

/// A global cap of a few frames: most `Send`s to a busy, connected
/// recipient go to the store, the others are held, so held and stored
/// frames interleave in every order the timing gives. The recipient
/// acknowledges each delivery at once (an ack that covered a stored frame
/// it had not been sent would delete it): every frame arrives once, in id
/// order, and every sender hears `Ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_and_stored_frames_interleave_in_id_order_and_none_is_lost() {
    const N: u64 = 2000;
    let dir = tempfile::tempdir().unwrap();
    // About three held 1 KiB frames.
    let relay = Relay::start(dir.path(), &capped("3600"));
    let (mut desk, mut phone) = paired(&relay).await;
    let phone_id = phone.id();
    let recipient = tokio::spawn(async move {
        let mut got: Vec<(u64, u64)> = Vec::new();
        while (got.len() as u64) < N {
            match phone.recv_within(Duration::from_secs(30)).await.expect("deliveries") {
                Frame::Deliver { delivery_id, payload, .. } => {
                    got.push((delivery_id, index(&payload)));
                    phone.send(&Frame::Ack { up_to: delivery_id }).await;
                }
                Frame::Ping { nonce } => phone.send(&Frame::Pong { nonce }).await,
                _ => {}
            }
        }
        got
    });
    for i in 0..N {
        desk.send(&Frame::Send { send_id: i + 1, to: phone_id, payload: payload(i) }).await;
    }
    let answered = answers(&mut desk, 1..N + 1).await;
    assert!(answered.values().all(Result::is_ok), "every Send answered Ok");
    let got = recipient.await.unwrap();
    let indexes: Vec<u64> = got.iter().map(|g| g.1).collect();
    assert_eq!(indexes, (0..N).collect::<Vec<_>>(), "each frame once, in order");
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "delivery ids increase");
    let m = relay.metrics().await;
    let by_ack = metric(&m, "tandem_relay_send_oks_total{by=\"ack\"}").unwrap_or(0.0);
    let spilled =
        metric(&m, "tandem_relay_hold_spills_total{reason=\"global_cap\"}").unwrap_or(0.0);
    assert!(
        by_ack >= 1.0 && spilled >= 1.0,
        "both paths taken: {by_ack} held, {spilled} spilled\n{m}"
    );
    assert_eq!(metric(&m, "tandem_relay_held_frames"), Some(0.0), "{m}");
}

/// A frame that went to the store (the hold was full) while its live push
/// to the recipient is slow (`relay.push.delay`), then a frame held after
/// it: the recipient's writer must send the stored one first. Sent past it,
/// the recipient's ack of the held one would delete the stored one unsent
/// (its sender had `Ok`), and the late push would be dropped as old. (The
/// writer reads the store when its mark moved before it looks at held
/// frames; the narrower race, the mark moving while it sends held frames,
/// is not forced here.)
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_frame_never_overtakes_one_the_store_took_before_it() {
    let dir = tempfile::tempdir().unwrap();
    // One held 1 KiB frame fills the hold.
    let failpoints = [("FAILPOINTS", "relay.push.delay=1*return(1500)")];
    let relay = Relay::start_env(dir.path(), &capped("1300"), &failpoints);
    let (mut desk, mut phone) = paired(&relay).await;
    let phone_id = phone.id();
    // 0: held. 1: the hold is full, so it goes to the store; its live push waits.
    desk.send(&Frame::Send { send_id: 1, to: phone_id, payload: payload(0) }).await;
    let first = phone.deliveries(1).await;
    assert_eq!(index(&first[0].2), 0);
    desk.send(&Frame::Send { send_id: 2, to: phone_id, payload: payload(1) }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The ack makes room; 2 is held, behind 1 in id order.
    phone.send(&Frame::Ack { up_to: first[0].0 }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    desk.send(&Frame::Send { send_id: 3, to: phone_id, payload: payload(2) }).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        match phone.recv_within(Duration::from_secs(10)).await.expect("deliveries") {
            Frame::Deliver { delivery_id, payload, .. } => {
                got.push(index(&payload));
                phone.send(&Frame::Ack { up_to: delivery_id }).await;
            }
            Frame::Ping { nonce } => phone.send(&Frame::Pong { nonce }).await,
            _ => {}
        }
    }
    assert_eq!(got, vec![1, 2], "the stored frame first, then the held one");
    assert!(answers(&mut desk, 1..4).await.values().all(Result::is_ok));
    let m = relay.metrics().await;
    let spilled =
        metric(&m, "tandem_relay_hold_spills_total{reason=\"global_cap\"}").unwrap_or(0.0);
    assert!(spilled >= 1.0, "frame 1 went to the store: {m}");
}
