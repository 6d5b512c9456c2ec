//! Push notifications end to end (docs/PUSH.md): the real agent (`tandem
//! pair`, then `tandem run`), the relay in a process of its own, the phone
//! engine (what the SDK wraps), and a local Web Push service
//! (`relay/tests/push_service/`, Python: `http_ece` decrypts RFC 8291 with
//! the subscription's private key) standing in for a browser vendor's push
//! service — the one stand-in here.
//!
//! An approval wakes a phone in the background; the push opens on the phone
//! with the key it gave the desktop, and nothing on the way (the relay's
//! log and files, the push service's ciphertext, the blob it decrypts to)
//! holds the task's text; the decision goes back through the link; the
//! finish replaces the approval's notification (same topic); nothing is
//! pushed while the phone is in the foreground; the key survives a
//! `kill -9` of the agent; a renewal rotates it (older pushes still open);
//! turning push off stops it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;
#[path = "../../relay/tests/support/push_service.rs"]
mod push_service;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::relay::Relay;
use push_service::PushService;
use serde_json::Value;
use tandem_phone::{
    NotificationKind, Phone, PhoneConfig, PhoneEvent, PushChoices, PushRegistration, Schedule,
    TaskEvent,
};
use tokio::sync::broadcast;

// The relay in a process of its own is this test binary (`Relay`).
relay_process_test!();

const CANARY: &str = "CANARY-7f3a91-push";

/// Every task event the phone reported, per task.
async fn until(
    events: &mut broadcast::Receiver<PhoneEvent>,
    seen: &mut BTreeMap<String, Vec<TaskEvent>>,
    done: impl Fn(&BTreeMap<String, Vec<TaskEvent>>) -> bool,
) {
    while !done(seen) {
        let e = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("an event in time")
            .unwrap();
        if let PhoneEvent::Task(t) = e {
            seen.entry(t.task_id).or_default().push(t.event);
        }
    }
}

fn has(
    seen: &BTreeMap<String, Vec<TaskEvent>>,
    task: &str,
    f: impl Fn(&TaskEvent) -> bool,
) -> bool {
    seen.get(task).is_some_and(|evs| evs.iter().any(f))
}

fn approval(id: &'static str) -> impl Fn(&TaskEvent) -> bool {
    move |e| matches!(e, TaskEvent::ApprovalRequest { approval_id, .. } if approval_id == id)
}

fn finished(e: &TaskEvent) -> bool {
    matches!(e, TaskEvent::Finished { .. })
}

/// The blob of push request `r` (what the service decrypted).
fn blob(r: &Value) -> Vec<u8> {
    data_encoding::HEXLOWER.decode(r["plain_hex"].as_str().unwrap().as_bytes()).unwrap()
}

/// Every file under `dir`.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(files_under(&p)) } else { out.push(p) }
    }
    out
}

/// Wait until `dir`'s agent says the phone set push up (`tandem status`).
fn push_on(dir: &Path, key_id: Option<&str>) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = common::tandem(dir, &["status"]);
        if let Some(line) = status.lines().find(|l| l.contains("push notifications:"))
            && key_id.is_none_or(|k| !line.contains(k))
        {
            return line.to_owned();
        }
        assert!(Instant::now() < deadline, "push never set up:\n{status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pair a phone engine in `dir/phone` with a desktop in `dir/desk` over
/// `relay`, and run the agent.
async fn setup(
    dir: &Path,
    relay: &Relay,
    schedule: Option<Schedule>,
) -> (Phone, String, common::Agent, std::path::PathBuf) {
    let desk = dir.join("desk");
    std::fs::create_dir_all(&desk).unwrap();
    let config = common::fixture_config(&desk, "");
    let (mut pairing_agent, link) =
        common::pair_process(&desk, &config, &relay.url(), &relay.link_base());
    let mut cfg = PhoneConfig::new(dir.join("phone"), "Ana's phone");
    if let Some(s) = schedule {
        cfg.schedule = s;
    }
    let phone = Phone::open(cfg).await.unwrap();
    let desktop = phone.start_pairing(&link).await.unwrap().wait().await.unwrap().desktop_id;
    assert!(pairing_agent.exit_within(Duration::from_secs(30)).unwrap().success());
    let agent = common::run_process(&desk, &config, &[]);
    (phone, desktop, agent, config)
}

fn registration(svc: &PushService, path: &str) -> PushRegistration {
    PushRegistration::WebPush {
        endpoint: svc.endpoint(path),
        p256dh: svc.p256dh.to_vec(),
        auth: svc.auth.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_wakes_a_phone_in_the_background_and_nothing_on_the_way_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let svc = PushService::start();
    let relay = Relay::start_with_env(
        dir.path(),
        vec![(common::relay::RELAY_PUSH_ORIGIN.into(), svc.origin())],
    );
    let (phone, desktop, agent, config) = setup(dir.path(), &relay, None).await;
    let desk = dir.path().join("desk");

    phone.enable_push(registration(&svc, "ana"), PushChoices::default()).await.unwrap();
    let line = push_on(&desk, None);
    assert!(line.contains("approvals, finished tasks, lost messages"), "{line}");
    phone.set_foreground(false);
    // The relay hears it on the same connection, before the submit.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut events = phone.subscribe();
    let mut seen = BTreeMap::new();
    let t = phone.submit(&desktop, &format!("approve-twice {CANARY}"), None).await.unwrap();
    until(&mut events, &mut seen, |s| has(s, &t, approval("a1"))).await;
    let first = svc.wait_records(1).await;
    let opened = phone.decrypt_notification(&blob(&first[0])).unwrap();
    assert_eq!(opened.desktop_id, desktop);
    let n = &opened.notification;
    assert_eq!(n.kind, NotificationKind::Approval);
    assert_eq!(n.desktop, "build-box");
    assert_eq!(n.title, "Approve? step a1");
    assert!(n.body.contains(CANARY), "the task's title: {n:?}");
    assert_eq!((n.task_id.as_deref(), n.approval_id.as_deref()), (Some(t.as_str()), Some("a1")));
    assert!(n.can_decide, "an approve-scoped phone may decide from the notification");
    assert_eq!(first[0]["urgency"], "high");
    assert_eq!(first[0]["problems"], serde_json::json!([]), "{}", first[0]);
    // The static entry point (a notification extension) opens it too.
    let again = tandem_phone::decrypt_notification(&dir.path().join("phone"), &blob(&first[0]));
    assert_eq!(again.unwrap().notification, *n);

    // Deciding from the notification goes through the link.
    phone.decide(&desktop, &t, n.approval_id.as_deref().unwrap(), true).await.unwrap();
    until(&mut events, &mut seen, |s| has(s, &t, approval("a2"))).await;
    phone.decide(&desktop, &t, "a2", false).await.unwrap();
    until(&mut events, &mut seen, |s| has(s, &t, finished)).await;
    let all = svc.wait_records(3).await;
    let kinds: Vec<NotificationKind> = all
        .iter()
        .map(|r| phone.decrypt_notification(&blob(r)).unwrap().notification.kind)
        .collect();
    assert_eq!(
        kinds,
        [NotificationKind::Approval, NotificationKind::Approval, NotificationKind::Finished]
    );
    let done = phone.decrypt_notification(&blob(&all[2])).unwrap().notification;
    assert!(done.title.contains("succeeded"), "{done:?}");
    // One task, one topic: the finish replaces the approval's notification.
    let topics: Vec<&Value> = all.iter().map(|r| &r["topic"]).collect();
    assert!(topics[0].is_string() && topics.iter().all(|t| *t == topics[0]), "{topics:?}");

    // Nothing on the way holds the task's text.
    for r in &all {
        assert!(!String::from_utf8_lossy(&blob(r)).contains(CANARY));
        assert!(!r.to_string().contains(CANARY), "what the push service saw: {r}");
    }
    assert!(!relay.log().contains(CANARY), "the relay's log");
    for path in files_under(&dir.path().join("relay-data")) {
        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()), "{}", path.display());
    }

    // In the foreground: nothing is pushed.
    phone.set_foreground(true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t2 = phone.submit(&desktop, "approve-twice", None).await.unwrap();
    until(&mut events, &mut seen, |s| has(s, &t2, approval("a1"))).await;
    phone.decide(&desktop, &t2, "a1", true).await.unwrap();
    until(&mut events, &mut seen, |s| has(s, &t2, approval("a2"))).await;
    phone.decide(&desktop, &t2, "a2", true).await.unwrap();
    until(&mut events, &mut seen, |s| has(s, &t2, finished)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(svc.records().await.len(), 3, "no push to a phone in the foreground");

    // The key survives a kill -9 of the agent.
    agent.kill9();
    let _agent = common::run_process(&desk, &config, &[]);
    phone.set_foreground(false);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t3 = phone.submit(&desktop, "approve-twice", None).await.unwrap();
    until(&mut events, &mut seen, |s| has(s, &t3, approval("a1"))).await;
    let after = svc.wait_records(4).await;
    let n = phone.decrypt_notification(&blob(&after[3])).unwrap().notification;
    assert_eq!((n.task_id.as_deref(), n.kind), (Some(t3.as_str()), NotificationKind::Approval));

    // Off: the desktop forgets the key, the relay the subscription, the
    // phone its keys.
    phone.disable_push().await.unwrap();
    phone.decide(&desktop, &t3, "a1", true).await.unwrap();
    until(&mut events, &mut seen, |s| has(s, &t3, approval("a2"))).await;
    phone.decide(&desktop, &t3, "a2", true).await.unwrap();
    until(&mut events, &mut seen, |s| has(s, &t3, finished)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(svc.records().await.len(), 4, "nothing pushed once off");
    assert!(!common::tandem(&desk, &["status"]).contains("push notifications:"));
    assert!(!dir.path().join("phone/push.json").exists());
    phone.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_renewal_rotates_the_push_key_and_older_pushes_still_open() {
    let dir = tempfile::tempdir().unwrap();
    let svc = PushService::start();
    let relay = Relay::start_with_env(
        dir.path(),
        vec![(common::relay::RELAY_PUSH_ORIGIN.into(), svc.origin())],
    );
    let schedule = Schedule { renew_after_ms: 2_000, ..Schedule::default() };
    let (phone, desktop, _agent, _) = setup(dir.path(), &relay, Some(schedule)).await;
    let desk = dir.path().join("desk");
    phone.enable_push(registration(&svc, "ana"), PushChoices::default()).await.unwrap();
    phone.set_foreground(false);
    let line = push_on(&desk, None);
    let first_key = line.rsplit("key ").next().unwrap().trim_end_matches(')').to_owned();

    let mut events = phone.subscribe();
    let mut seen = BTreeMap::new();
    let t = phone.submit(&desktop, "approve-twice", None).await.unwrap();
    until(&mut events, &mut seen, |s| has(s, &t, approval("a1"))).await;
    let before = svc.wait_records(1).await;

    // The session renews (every 2 s here): a new key reaches the desktop.
    push_on(&desk, Some(&first_key));
    phone.decide(&desktop, &t, "a1", true).await.unwrap();
    until(&mut events, &mut seen, |s| has(s, &t, approval("a2"))).await;
    let after = svc.wait_records(2).await;
    let ids: Vec<String> =
        after.iter().map(|r| data_encoding::HEXLOWER.encode(&blob(r)[1..9])).collect();
    assert_eq!(ids[0], first_key);
    assert_ne!(ids[1], first_key, "sealed with the rotated key");
    // The push sealed before the rotation still opens.
    assert!(phone.decrypt_notification(&blob(&before[0])).is_ok());
    assert!(phone.decrypt_notification(&blob(&after[1])).is_ok());
    phone.close().await;
}

/// Signal the relay process (`STOP` / `CONT`).
fn signal(relay: &Relay, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &relay.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

/// Found in review: `enable_push` reads `push.json`, waits for the relays,
/// then writes what it read; forgetting a desktop meanwhile (which did not
/// take the push lock) had its keys deleted, then written back — the keys
/// of a desktop the user forgot stayed on the phone and kept opening its
/// pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_a_desktop_while_push_is_being_enabled_deletes_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let svc = PushService::start();
    let relay = Relay::start_with_env(
        dir.path(),
        vec![(common::relay::RELAY_PUSH_ORIGIN.into(), svc.origin())],
    );
    let (phone, desktop, _agent, _) = setup(dir.path(), &relay, None).await;
    phone.enable_push(registration(&svc, "ana"), PushChoices::default()).await.unwrap();
    let push_json = dir.path().join("phone").join("push.json");
    assert!(std::fs::read_to_string(&push_json).unwrap().contains(&desktop));

    // The relay stalls: enabling push again (a new token) waits for it with
    // the state it read; the user forgets the desktop meanwhile.
    signal(&relay, "STOP");
    let p = phone.clone();
    let enabling = tokio::spawn(async move {
        p.enable_push(registration(&svc, "ana2"), PushChoices::default()).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (p, d) = (phone.clone(), desktop.clone());
    let forgetting = tokio::spawn(async move { p.forget(&d).await });
    // `forget` gives up on the stalled relay's revoke after 10 s.
    tokio::time::sleep(Duration::from_secs(11)).await;
    signal(&relay, "CONT");
    forgetting.await.unwrap().unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(30), enabling).await.unwrap().unwrap();
    let kept = std::fs::read_to_string(&push_json).unwrap_or_default();
    assert!(!kept.contains(&desktop), "the forgotten desktop's push keys came back:\n{kept}");
    phone.close().await;
}

/// A desktop paired while push is on gets a push key of its own from the
/// phone at once (the phone sends it after the pairing, stored by the relay
/// until that desktop's agent runs), without a renewal or another
/// `enable_push`; its pushes open on the phone as that desktop's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desktop_paired_while_push_is_on_gets_its_key_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let svc = PushService::start();
    let relay = Relay::start_with_env(
        dir.path(),
        vec![(common::relay::RELAY_PUSH_ORIGIN.into(), svc.origin())],
    );
    let (phone, _first, _agent, _) = setup(dir.path(), &relay, None).await;
    phone.enable_push(registration(&svc, "ana"), PushChoices::default()).await.unwrap();
    push_on(&dir.path().join("desk"), None);

    let desk2 = dir.path().join("desk2");
    std::fs::create_dir_all(&desk2).unwrap();
    let config = common::fixture_config(&desk2, "");
    let (mut pairing_agent, link) =
        common::pair_process(&desk2, &config, &relay.url(), &relay.link_base());
    let second = phone.start_pairing(&link).await.unwrap().wait().await.unwrap().desktop_id;
    assert!(pairing_agent.exit_within(Duration::from_secs(30)).unwrap().success());
    let _agent2 = common::run_process(&desk2, &config, &[]);
    let line = push_on(&desk2, None);
    assert!(line.contains("approvals, finished tasks, lost messages"), "{line}");

    phone.set_foreground(false);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut events = phone.subscribe();
    let mut seen = BTreeMap::new();
    let t = phone.submit(&second, "approve-twice", None).await.unwrap();
    until(&mut events, &mut seen, |s| has(s, &t, approval("a1"))).await;
    let pushed = svc.wait_records(1).await;
    let opened = phone.decrypt_notification(&blob(&pushed[0])).unwrap();
    assert_eq!(opened.desktop_id, second);
    phone.close().await;
}
