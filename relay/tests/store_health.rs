//! The relay while its store cannot write: senders are refused with
//! `store_unavailable` on an open connection, `/readyz` says why, and the
//! relay recovers by itself (issue 14, item 1). The tests that arm
//! failpoints need the `failpoints` feature (`scripts/test.sh` enables it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::*;
use tandem_proto::{ErrorCode, Role};

/// `FAILPOINTS="relay.enqueue=1*return"` refuses the next enqueue exactly as
/// a failed store write: the sender hears `store_unavailable` for that
/// `Send`, the connection stays open, and its resend is accepted and
/// delivered.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn the_enqueue_failpoint_refuses_one_send_with_store_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_env(dir.path(), &[], &[("FAILPOINTS", "relay.enqueue=1*return")]);
    let (mut desk, mut phone) = paired(&relay).await;
    let refused = desk.send_to(phone.id(), 10, b"first").await;
    assert_eq!(refused, Err(ErrorCode::StoreUnavailable), "the first enqueue is refused");
    desk.send_to(phone.id(), 11, b"first again").await.expect("the resend is accepted");
    let (_, from, payload) = phone.delivery().await;
    assert_eq!((from, payload.as_slice()), (desk.id(), &b"first again"[..]));
    // The refused frame was not stored: the next delivery is the next send.
    desk.send_to(phone.id(), 12, b"second").await.expect("accepted");
    let (_, _, payload) = phone.delivery().await;
    assert_eq!(payload, b"second");
}

/// `FAILPOINTS="relay.ack=2*return"` fails the store write of the phone's
/// two acks, which then acknowledges nothing more. The delivery window
/// (two frames here) opens on the acks anyway, so all four frames arrive;
/// the relay re-applies the highest refused ack by itself, so the queue
/// empties while the phone stays idle (before, the frames stayed queued,
/// charged to the sender's share, until the phone reconnected and got them
/// all again); and a reconnect brings nothing again, only what is new.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_refused_ack_is_reapplied_without_stall_or_redelivery() {
    use tandem_proto::frame::Frame;
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_env(
        dir.path(),
        &["--delivery-window-frames", "2", "--sweep-interval-ms", "100"],
        &[("FAILPOINTS", "relay.ack=2*return")],
    );
    let (mut desk, mut phone) = paired(&relay).await;
    for i in 0..4u8 {
        desk.send_to(phone.id(), 10 + u64::from(i), &[b'f', b'0' + i]).await.expect("accepted");
    }
    let first = phone.deliveries(2).await;
    // Refused by the store; the window opens all the same: no stall.
    phone.send(&Frame::Ack { up_to: first[1].0 }).await;
    let rest = phone.deliveries(2).await;
    phone.send(&Frame::Ack { up_to: rest[1].0 }).await;
    let got: Vec<Vec<u8>> = first.iter().chain(&rest).map(|d| d.2.clone()).collect();
    assert_eq!(got, [b"f0", b"f1", b"f2", b"f3"], "every frame once, in order");
    // Nothing more from the phone: the relay applies its last ack itself.
    relay.wait_metric("tandem_relay_queue_frames", 0.0).await;
    let phone_key = phone.key.clone();
    phone.close().await;
    let (mut phone, queued) = Device::connect(&relay, phone_key, Role::Phone).await;
    assert_eq!(queued, 0, "nothing acknowledged waits for the phone again");
    desk.send_to(phone.id(), 20, b"new").await.expect("accepted");
    let (_, _, payload) = phone.delivery().await;
    assert_eq!(payload, b"new", "no redelivery of what was acknowledged");
}

/// A tmpfs of `size` mounted at `at` for the test's life (unmounted on
/// drop), or `None` when this process may not mount (not root, no tmpfs)
/// and `TANDEM_TEST_NO_MOUNT` asks for a skip: the caller skips with a
/// message. Without it, a tmpfs that cannot be mounted fails the test.
struct Tmpfs {
    at: std::path::PathBuf,
}

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // The test command runs as root (CI does); elsewhere a skip must
            // be asked for, so a passing run never hides an untested disk.
            assert!(
                std::env::var_os("TANDEM_TEST_NO_MOUNT").is_some(),
                "cannot mount a tmpfs at {} (needs root); set TANDEM_TEST_NO_MOUNT=1 to skip",
                at.display()
            );
            eprintln!("SKIPPED: cannot mount a tmpfs at {} (TANDEM_TEST_NO_MOUNT)", at.display());
            return None;
        }
        Some(Tmpfs { at: at.to_owned() })
    }

    /// Fill the file system with `filler` until a write fails (no space).
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.at.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 4096];
        while f.write_all(&chunk).and_then(|()| f.flush()).is_ok() {}
        // The last partial page too.
        while f.write_all(&[0]).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

/// Poll `/readyz` until it answers `status` (30 s); returns the body.
async fn readyz_becomes(relay: &Relay, status: u16) -> String {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (got, body) = relay.get("/readyz").await;
        if got == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz stayed {got} ({body:?}); log:\n{}",
            relay.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The store's disk fills up under a running relay: a send is refused with
/// `store_unavailable` on an open connection, `/readyz` fails while
/// `/healthz` does not; once space is freed the relay reopens its store by
/// itself, sends are taken again, every frame answered `Ok` before is
/// delivered, and no device was disconnected meanwhile.
#[tokio::test]
async fn a_full_disk_refuses_sends_and_the_relay_recovers_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&dir.path().join("data"), "4m") else { return };
    let mut relay = Relay::start(dir.path(), &[]);
    let (mut desk, mut phone) = paired(&relay).await;
    let filler = fs.fill();
    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 1..=4000u64 {
        let payload = format!("frame {i} ").repeat(400).into_bytes();
        match desk.send_to(phone.id(), i, &payload).await {
            Ok(()) => accepted.push(payload),
            Err(code) => {
                refused = Some(code);
                break;
            }
        }
    }
    assert_eq!(refused, Some(ErrorCode::StoreUnavailable), "a send refused for want of space");
    let body = readyz_becomes(&relay, 503).await;
    assert!(body.starts_with("store unavailable"), "{body:?}");
    relay.assert_healthy().await;
    assert_eq!(metric(&relay.metrics().await, "tandem_relay_store_up"), Some(0.0));

    std::fs::remove_file(&filler).unwrap();
    readyz_becomes(&relay, 200).await;
    let after = b"after the disk was freed".to_vec();
    desk.send_to(phone.id(), 10_000, &after).await.expect("sends are taken again");
    accepted.push(after);
    // Everything answered Ok arrives (frames refused may arrive too, as
    // duplicates the end-to-end layer drops).
    let mut missing: std::collections::HashSet<Vec<u8>> = accepted.into_iter().collect();
    while !missing.is_empty() {
        let (_, _, payload) = phone.delivery().await;
        missing.remove(&payload);
    }
    // The same two connections all along: nobody was disconnected.
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "tandem_relay_connections_accepted_total"), Some(2.0), "{m}");
    assert_eq!(metric(&m, "tandem_relay_store_up"), Some(1.0));
    assert!(relay.log().contains("the store failed; reopening it"), "log:\n{}", relay.log());
    relay.kill9();
}

/// A relay whose data directory is on a full disk starts all the same: it
/// serves (`/healthz` 200), is not ready (`/readyz` 503), refuses store
/// requests with `store_unavailable` and says why in its log; once space is
/// freed it opens its store and becomes ready without a restart.
#[tokio::test]
async fn the_relay_starts_on_a_full_disk_and_becomes_ready_when_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&dir.path().join("data"), "1m") else { return };
    let filler = fs.fill();
    let mut relay = Relay::start(dir.path(), &[]);
    relay.assert_healthy().await;
    let body = readyz_becomes(&relay, 503).await;
    assert!(body.starts_with("store unavailable"), "{body:?}");
    // (`/readyz` says so before the first attempt to open it has logged.)
    relay.wait_log("cannot open the store").await;
    let (mut desk, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let (mut phone, _) = Device::connect(&relay, new_key(), Role::Phone).await;
    assert_eq!(desk.authorize(phone.id(), 1).await, Err(ErrorCode::StoreUnavailable));
    // No VAPID key could be written either: no Web Push yet.
    assert_eq!(relay.get("/v1/push").await.0, 404);

    std::fs::remove_file(&filler).unwrap();
    readyz_becomes(&relay, 200).await;
    // The key is made on a later try (every 5 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(12);
    while relay.get("/v1/push").await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "no VAPID key after the disk had room");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    desk.authorize(phone.id(), 2).await.expect("authorised once the store opened");
    phone.authorize(desk.id(), 2).await.expect("authorised once the store opened");
    desk.send_to(phone.id(), 3, b"hello").await.expect("sent");
    let (_, _, payload) = phone.delivery().await;
    assert_eq!(payload, b"hello");
    relay.kill9();
}

/// Pair a desktop and a phone on a relay without failpoints, stop it, and
/// start it again on the same data directory with `FAILPOINTS` = `points`.
#[cfg(feature = "failpoints")]
async fn paired_then_armed(
    dir: &std::path::Path,
    points: &str,
) -> (Relay, tandem_proto::DeviceKey, tandem_proto::DeviceKey) {
    let mut relay = Relay::start(dir, &[]);
    let (desk, phone) = paired(&relay).await;
    let keys = (desk.key.clone(), phone.key.clone());
    relay.kill9();
    (Relay::start_env(dir, &[], &[("FAILPOINTS", points)]), keys.0, keys.1)
}

/// A commit that fails (`relay.commit.before`, as an I/O error would):
/// the sender hears `store_unavailable` and nothing was stored; the relay
/// reopens its store by itself, the resend is taken and delivered exactly
/// once, under an id past everything handed out before the failure.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_failed_commit_is_refused_and_the_store_reopens_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, desk_key, phone_key) =
        paired_then_armed(dir.path(), "relay.commit.before=1*return").await;
    let (mut desk, _) = Device::connect(&relay, desk_key, Role::Desktop).await;
    let (mut phone, _) = Device::connect(&relay, phone_key, Role::Phone).await;
    assert_eq!(desk.send_to(phone.id(), 1, b"once").await, Err(ErrorCode::StoreUnavailable));
    readyz_becomes(&relay, 200).await;
    desk.send_to(phone.id(), 2, b"once").await.expect("the resend is taken");
    desk.send_to(phone.id(), 3, b"next").await.expect("taken");
    // The refused copy may have been handed over early (as before an Ok),
    // but it was never stored: after it, each frame exactly once.
    let mut got = Vec::new();
    while got.last().map(Vec::as_slice) != Some(&b"next"[..]) {
        got.push(phone.delivery().await.2);
    }
    assert_eq!(got.iter().filter(|p| p.as_slice() == b"next").count(), 1);
    assert!(got.iter().filter(|p| p.as_slice() == b"once").count() <= 2, "{got:?}");
    let (_, queued) = Device::connect(&relay, new_key(), Role::Phone).await;
    assert_eq!(queued, 0);
    assert!(relay.log().contains("the store failed; reopening it"), "log:\n{}", relay.log());
}

/// `kill -9` right after a send's commit and before its `Ok`
/// (`relay.commit.after`): the sender never heard `Ok` and sends again
/// after the restart; the frame committed before the crash is not lost,
/// and every delivery id the phone sees is above the one before.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_crash_between_commit_and_ok_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut relay, desk_key, phone_key) =
        paired_then_armed(dir.path(), "relay.commit.after=return(abort)").await;
    let (mut desk, _) = Device::connect(&relay, desk_key.clone(), Role::Desktop).await;
    desk.send(&tandem_proto::frame::Frame::Send {
        send_id: 1,
        to: phone_key.public().device_id(),
        payload: b"x".to_vec(),
    })
    .await;
    let (end, frames) = desk.until_closed(std::time::Duration::from_secs(10)).await;
    assert!(
        !frames.iter().any(|f| matches!(f, tandem_proto::frame::Frame::Ok { .. })),
        "{end:?} {frames:?}"
    );
    assert!(relay.log().contains("failpoint relay.commit.after: aborting"), "{}", relay.log());
    relay.kill9();
    let relay = Relay::start(dir.path(), &[]);
    let (mut desk, _) = Device::connect(&relay, desk_key, Role::Desktop).await;
    let (mut phone, queued) = Device::connect(&relay, phone_key, Role::Phone).await;
    assert_eq!(queued, 1, "the frame committed before the crash is still queued");
    desk.send_to(phone.id(), 2, b"x").await.expect("the resend is taken");
    let both = phone.deliveries(2).await;
    assert_eq!(both.iter().map(|d| d.2.as_slice()).collect::<Vec<_>>(), [&b"x"[..], b"x"]);
    assert!(both[1].0 > both[0].0, "ids grow: {both:?}");
}
