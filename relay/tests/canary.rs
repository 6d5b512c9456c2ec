//! The relay only ever holds ciphertext (PROTOCOL.md §6.10, §16): a desktop
//! and a phone paired for real send application messages carrying a random
//! canary through the relay, live and stored; the canary (raw, hex or
//! base64) then appears nowhere the relay could have put it or seen it: the
//! frames it received, its data directory (while running and after
//! `kill -9`) and its debug log. A positive control shows the scan finds a
//! canary that was sent in clear.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Device, Relay, pair_for_real, record_sent, sent_so_far};
use tandem_proto::delivery::OutboxLimits;
use tandem_proto::entropy::Entropy;
use tandem_proto::frame::Frame;
use tandem_proto::link::{Link, LinkEvent};
use tandem_proto::{DeviceKey, Role};

fn hex(bytes: &[u8], upper: bool) -> String {
    bytes.iter().map(|b| if upper { format!("{b:02X}") } else { format!("{b:02x}") }).collect()
}

fn base64(bytes: &[u8], alphabet: &[u8; 64]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(alphabet[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A random canary and every form of it to look for.
struct Canary {
    text: String,
    needles: Vec<(String, Vec<u8>)>,
}

impl Canary {
    fn new() -> Self {
        let mut raw = [0u8; 16];
        Entropy::os().fill(&mut raw).unwrap();
        let text = format!("CANARY-{}", hex(&raw, false));
        let mut needles = vec![
            ("canary".to_owned(), text.clone().into_bytes()),
            ("canary, hex".to_owned(), hex(text.as_bytes(), false).into_bytes()),
            ("canary, HEX".to_owned(), hex(text.as_bytes(), true).into_bytes()),
            ("random part, raw bytes".to_owned(), raw.to_vec()),
            ("random part, HEX".to_owned(), hex(&raw, true).into_bytes()),
        ];
        // Base64 depends on where the canary starts modulo 3: take each
        // alignment's middle, which does not depend on the neighbours.
        for (name, alphabet) in [("base64", STD), ("base64url", URL)] {
            for shift in 0..3 {
                let mut shifted = vec![0u8; shift];
                shifted.extend_from_slice(text.as_bytes());
                let enc = base64(&shifted, alphabet);
                let middle = &enc[4..enc.len() - 4];
                needles.push((format!("canary, {name} +{shift}"), middle.as_bytes().to_vec()));
            }
        }
        Canary { text, needles }
    }

    /// The forms of the canary found in `haystack`.
    fn found_in(&self, haystack: &[u8]) -> Vec<&str> {
        self.needles
            .iter()
            .filter(|(_, n)| haystack.windows(n.len()).any(|w| w == n.as_slice()))
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

/// Every file under `dir`, recursively: (path, contents).
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

/// Panic if the canary is anywhere in `what`; returns how many bytes were scanned.
fn assert_absent(canary: &Canary, what: &str, items: &[(String, Vec<u8>)]) -> usize {
    let mut scanned = 0;
    for (name, bytes) in items {
        scanned += bytes.len();
        let found = canary.found_in(bytes);
        assert!(found.is_empty(), "{what}: {found:?} in {name}");
    }
    scanned
}

fn data_files(relay: &Relay) -> Vec<(String, Vec<u8>)> {
    let files = files_under(&relay.dir.join("data"));
    assert!(
        files.iter().any(|(p, b)| p.ends_with("relay.redb") && !b.is_empty()),
        "the store file is there: {:?}",
        files.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    files
}

fn sent_frames() -> Vec<(String, Vec<u8>)> {
    sent_so_far().into_iter().enumerate().map(|(i, b)| (format!("sent frame {i}"), b)).collect()
}

/// Open one delivered payload on `link`; returns the application messages.
fn open(link: &mut Link, key: &DeviceKey, payload: &[u8]) -> Vec<Vec<u8>> {
    let events = link.receive(key, payload, &mut Entropy::os()).expect("an authentic record");
    events
        .into_iter()
        .filter_map(|e| match e {
            LinkEvent::Message { message, .. } => Some(message),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn no_plaintext_reaches_the_relay_its_store_or_its_log() {
    record_sent();
    let canary = Canary::new();
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), &[]);
    let p = pair_for_real(&relay).await;
    let (mut desk, mut phone) = (p.desk, p.phone);
    let (desk_id, phone_id) = (desk.id(), phone.id());
    let (desk_key, phone_key) = (desk.key.clone(), phone.key.clone());
    let mut desk_link = Link::from_paired(p.desk_view, OutboxLimits::default());
    let mut phone_link = Link::from_paired(p.phone_view, OutboxLimits::default());
    let message = |who: &str, i: usize| {
        format!("{{\"kind\":\"task_output\",\"from\":\"{who}\",\"text\":\"{} #{i}\"}}", canary.text)
            .into_bytes()
    };

    // Online, both ways; each side opens what it got.
    let mut send_id = 100;
    for i in 0..3 {
        let (_, record) = desk_link.send(message("desk", i)).unwrap();
        send_id += 1;
        desk.send_to(phone_id, send_id, &record).await.unwrap();
        let (_, from, payload) = phone.delivery().await;
        assert_eq!(from, desk_id);
        assert_eq!(open(&mut phone_link, &phone_key, &payload), vec![message("desk", i)]);
        let (_, record) = phone_link.send(message("phone", i)).unwrap();
        send_id += 1;
        phone.send_to(desk_id, send_id, &record).await.unwrap();
        let (_, _, payload) = desk.delivery().await;
        assert_eq!(open(&mut desk_link, &desk_key, &payload), vec![message("phone", i)]);
    }
    // Acknowledge what the phone got so far.
    let (_, record) = desk_link.send(message("desk", 3)).unwrap();
    desk.send_to(phone_id, 200, &record).await.unwrap();
    let (last, _, payload) = phone.delivery().await;
    assert_eq!(open(&mut phone_link, &phone_key, &payload), vec![message("desk", 3)]);
    phone.send(&Frame::Ack { up_to: last }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Offline: stored for the phone.
    phone.close().await;
    desk.presence(phone_id, false).await;
    for i in 10..13 {
        let (_, record) = desk_link.send(message("desk", i)).unwrap();
        desk.send_to(phone_id, 300 + i as u64, &record).await.unwrap();
    }
    relay.wait_metric("tandem_relay_frames_forwarded_total", 10.0).await;

    // Nothing the relay received, stores or logs holds the canary.
    let frames = sent_frames();
    assert!(frames.len() > 20, "the recorder saw the traffic");
    let bytes_sent = assert_absent(&canary, "frames sent to the relay", &frames);
    let files = data_files(&relay);
    let bytes_stored = assert_absent(&canary, "data directory (running)", &files);
    assert!(bytes_stored > 0 && bytes_sent > 1000, "{bytes_sent} sent, {bytes_stored} stored");
    let log = relay.log();
    assert!(log.contains("device connected"), "the debug log is being written");
    assert_absent(&canary, "relay log", &[("relay.log".to_owned(), log.into_bytes())]);

    relay.kill9();
    assert_absent(&canary, "data directory (after kill -9)", &data_files(&relay));

    // The stored records really carried the canary, sealed.
    relay.restart();
    let (mut phone, queued) = Device::connect(&relay, phone_key.clone(), Role::Phone).await;
    assert_eq!(queued, 3);
    for i in 10..13 {
        let (_, _, payload) = phone.delivery().await;
        assert_eq!(open(&mut phone_link, &phone_key, &payload), vec![message("desk", i)]);
    }
    phone.close().await;

    // Positive control: the same canary sent in clear is found by the same
    // scans of the same places.
    let (mut desk, _) = Device::connect(&relay, desk_key, Role::Desktop).await;
    desk.send_to(phone_id, 999, canary.text.as_bytes()).await.unwrap();
    let found: Vec<String> = data_files(&relay)
        .iter()
        .flat_map(|(path, bytes)| {
            canary.found_in(bytes).into_iter().map(move |n| format!("{n} in {path}"))
        })
        .collect();
    assert!(
        found.iter().any(|f| f.starts_with("canary in ") && f.ends_with("relay.redb")),
        "{found:?}"
    );
    let found_sent: usize = sent_frames().iter().map(|(_, b)| canary.found_in(b).len()).sum();
    assert!(found_sent > 0, "the recorder saw the plaintext frame");
    relay.kill9();
    assert!(
        data_files(&relay).iter().any(|(_, b)| !canary.found_in(b).is_empty()),
        "and after kill -9"
    );
    // Even a payload in clear is never logged.
    assert_absent(&canary, "relay log", &[("relay.log".to_owned(), relay.log().into_bytes())]);
}

#[test]
fn the_encodings_searched_for_are_right() {
    // Known vectors (RFC 4648), so the scan looks for the real encodings.
    assert_eq!(base64(b"foobar", STD), "Zm9vYmFy");
    assert_eq!(base64(b"fo", STD), "Zm8");
    assert_eq!(base64(&[0xfb, 0xff], URL), "-_8");
    assert_eq!(hex(b"\x01\xab", false), "01ab");
    let c = Canary::new();
    // A canary embedded anywhere in base64 or hex text is found.
    for pad in 0..3 {
        let mut blob = vec![b'x'; pad];
        blob.extend_from_slice(c.text.as_bytes());
        blob.extend_from_slice(b"tail");
        assert!(
            c.found_in(base64(&blob, STD).as_bytes())
                .iter()
                .any(|n| n.starts_with("canary, base64"))
        );
        assert!(c.found_in(hex(&blob, false).as_bytes()).contains(&"canary, hex"));
    }
    assert!(c.found_in(b"nothing here").is_empty());
}
