//! The relay loses its data under a running agent (`tandem run`) and phone
//! engine (`tandem-phone`): its data directory wiped, or restored from an
//! older copy, and the relay restarted on the same port. Its delivery ids
//! start again below what both devices acknowledged; its new store epoch
//! (PROTOCOL.md §6.6) tells their clients to reset their delivery cursors,
//! and both authorise their routes again. The next task and every one of
//! its events arrive, once and in order.
//!
//! The relay is the real relay in a process of its own (`common/relay.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::Agent;
use common::relay::Relay;
use tandem_phone::{Phone, PhoneConfig, PhoneEvent, TaskEvent};
use tokio::sync::broadcast;

relay_process_test!();

type Seen = BTreeMap<String, Vec<(u64, TaskEvent)>>;

/// Take the phone's events until `done` holds (each wait bounded).
async fn until(
    events: &mut broadcast::Receiver<PhoneEvent>,
    seen: &mut Seen,
    done: impl Fn(&Seen, &[PhoneEvent]) -> bool,
) {
    let mut others = Vec::new();
    while !done(seen, &others) {
        let e = tokio::time::timeout(Duration::from_secs(60), events.recv())
            .await
            .expect("a phone event in time")
            .unwrap();
        match e {
            PhoneEvent::Task(t) => seen.entry(t.task_id).or_default().push((t.offset, t.event)),
            other => others.push(other),
        }
    }
}

fn finished(seen: &Seen, task: &str) -> bool {
    seen.get(task)
        .is_some_and(|evs| evs.iter().any(|(_, e)| matches!(e, TaskEvent::Finished { .. })))
}

fn desktop_online(others: &[PhoneEvent]) -> bool {
    others.iter().any(|e| matches!(e, PhoneEvent::Presence { online: true, .. }))
}

/// Every task's events once, in order, and `n` progress lines for `task`.
fn assert_complete(seen: &Seen, task: &str, n: usize) {
    for (t, evs) in seen {
        let offsets: Vec<u64> = evs.iter().map(|(o, _)| *o).collect();
        assert_eq!(
            offsets,
            (0..offsets.len() as u64).collect::<Vec<_>>(),
            "task {t}: each event once, in order"
        );
    }
    let progress =
        seen[task].iter().filter(|(_, e)| matches!(e, TaskEvent::Progress { .. })).count();
    assert_eq!(progress, n, "every progress line of {task}");
}

/// `tandem pair --relay` and then `tandem run`, as a user would; the phone
/// engine pairs from the printed link.
async fn start(dir: &Path, relay: &Relay) -> (Agent, Phone, String) {
    let config = common::fixture_config(dir, "");
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(
            r#""$TANDEM" pair --relay "$RELAY" --link-base "$LINK" --yes --print-url \
                 --no-terminal-qr --qr-png "$QR" && exec "$TANDEM" run"#,
        )
        .env("TANDEM", env!("CARGO_BIN_EXE_tandem"))
        .env("TANDEM_DATA_DIR", dir)
        .env("TANDEM_CONFIG", &config)
        .env("TANDEM_NAME", "build-box")
        .env("TANDEM_LOG", "warn,tandem_client=info")
        .env("NO_COLOR", "1")
        .env("RELAY", relay.url())
        .env("LINK", relay.link_base())
        .env("QR", dir.join("qr.png"))
        .stderr(log);
    let agent = Agent::spawn(cmd);
    let link = agent
        .line_starting("pairing link: ")
        .trim()
        .trim_start_matches("pairing link: ")
        .to_owned();
    let phone = Phone::open(PhoneConfig::new(dir.join("phone"), "Ana's phone")).await.unwrap();
    let pairing = phone.start_pairing(&link).await.unwrap();
    let desktop = pairing.wait().await.unwrap().desktop_id;
    agent.line_starting("Connected.");
    (agent, phone, desktop)
}

/// Run `text` to its end and check what the phone saw.
async fn task(
    phone: &Phone,
    desktop: &str,
    events: &mut broadcast::Receiver<PhoneEvent>,
    seen: &mut Seen,
    n: usize,
) {
    let t = phone.submit(desktop, &format!("count {n} 2"), None).await.unwrap();
    until(events, seen, |s, _| finished(s, &t)).await;
    assert_complete(seen, &t, n);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_relay_serves_the_next_task_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path());
    let (agent, phone, desktop) = start(dir.path(), &relay).await;
    let mut events = phone.subscribe();
    let mut seen = Seen::new();
    // Enough traffic that both devices acknowledged ids well above what
    // the wiped relay hands out next.
    task(&phone, &desktop, &mut events, &mut seen, 200).await;

    relay.kill9();
    // From here on: a presence is the restarted relay's.
    let mut events = phone.subscribe();
    std::fs::remove_dir_all(dir.path().join("relay-data")).unwrap();
    relay.restart();
    until(&mut events, &mut seen, |_, others| desktop_online(others)).await;
    task(&phone, &desktop, &mut events, &mut seen, 30).await;
    phone.close().await;
    drop(agent);
}

/// The wiped relay refuses the first re-authorisations for now (its store
/// fails the writes, `store_unavailable`): both devices try again, the
/// route comes back without a reconnect, and the next task arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_relay_that_refuses_the_routes_for_now_gets_them_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path());
    let (agent, phone, desktop) = start(dir.path(), &relay).await;
    let mut events = phone.subscribe();
    let mut seen = Seen::new();
    task(&phone, &desktop, &mut events, &mut seen, 20).await;

    relay.kill9();
    let mut events = phone.subscribe();
    std::fs::remove_dir_all(dir.path().join("relay-data")).unwrap();
    relay.restart_failing("relay.route=2*return");
    until(&mut events, &mut seen, |_, others| desktop_online(others)).await;
    assert!(
        relay.log().contains("relay.route"),
        "the relay's store refused route writes:\n{}",
        relay.log()
    );
    task(&phone, &desktop, &mut events, &mut seen, 10).await;
    phone.close().await;
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_restored_from_an_older_copy_serves_the_next_task_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path());
    let (agent, phone, desktop) = start(dir.path(), &relay).await;
    let mut events = phone.subscribe();
    let mut seen = Seen::new();
    task(&phone, &desktop, &mut events, &mut seen, 10).await;

    // A copy of the data, taken with the relay stopped.
    relay.kill9();
    let mut events = phone.subscribe();
    copy_dir(&dir.path().join("relay-data"), &dir.path().join("backup"));
    relay.restart();
    until(&mut events, &mut seen, |_, others| desktop_online(others)).await;
    // More traffic after the copy: ids above what the copy will hand out.
    task(&phone, &desktop, &mut events, &mut seen, 200).await;

    relay.kill9();
    let mut events = phone.subscribe();
    std::fs::remove_dir_all(dir.path().join("relay-data")).unwrap();
    copy_dir(&dir.path().join("backup"), &dir.path().join("relay-data"));
    relay.restart();
    until(&mut events, &mut seen, |_, others| desktop_online(others)).await;
    task(&phone, &desktop, &mut events, &mut seen, 30).await;
    phone.close().await;
    drop(agent);
}
