//! Pairing across a relay restart (PROTOCOL §9.4, "Interruptions"): the
//! real `tandem pair` process and the phone engine (`tandem-phone`), with
//! the relay in a process of its own (`common/relay.rs`), killed and
//! restarted on the same port and data. The relay's crash points stop it at
//! one exact step (`FAILPOINTS`, the `failpoints` feature the test command
//! enables): `relay.pair_claim` (the phone's claim in flight) and
//! `relay.pair_message` (the desktop's accepting result in flight). Each
//! time both sides end paired, with the same peer on each side and the
//! device no longer pending on the desktop; or, when the relay stays down
//! past the desktop's wait for the phone, both sides fail with the same
//! words and neither keeps the other. The same when only the phone's own
//! connection drops with the result in flight (a tap in front of the relay
//! for the phone), within about the same time on both sides.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::Agent;
use common::relay::Relay;
use tandem_e2e::tap::Tap;
use tandem_phone::{DesktopSummary, Phone, PhoneConfig, PhoneError};
use tandem_proto::frame::FrameType;

relay_process_test!();

/// Generous: only there so that a broken pairing fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(90);

/// `tandem pair --yes` in `dir/agent` against `relay` (its log in
/// `dir/agent.pair.log`), and the link it printed.
fn pairing(dir: &Path, relay: &Relay) -> (Agent, String) {
    pairing_with(dir, relay, &[])
}

/// As [`pairing`], with more environment.
fn pairing_with(dir: &Path, relay: &Relay, env: &[(&str, &str)]) -> (Agent, String) {
    pairing_via(dir, &relay.url(), &relay.link_base(), env)
}

/// As [`pairing_with`], both devices sent to `relay_url` and `link_base`
/// (a tap).
fn pairing_via(
    dir: &Path,
    relay_url: &str,
    link_base: &str,
    env: &[(&str, &str)],
) -> (Agent, String) {
    let agent = spawn_pairing_via(dir, relay_url, link_base, env);
    let link = agent.line_starting("pairing link: ");
    (agent, link.trim().trim_start_matches("pairing link: ").to_owned())
}

/// `tandem pair --yes` started as [`pairing_with`] does, its link not read yet.
fn spawn_pairing(dir: &Path, relay: &Relay, env: &[(&str, &str)]) -> Agent {
    spawn_pairing_via(dir, &relay.url(), &relay.link_base(), env)
}

/// As [`spawn_pairing`], both devices sent to `relay_url` and `link_base`.
fn spawn_pairing_via(dir: &Path, relay_url: &str, link_base: &str, env: &[(&str, &str)]) -> Agent {
    let config = common::fixture_config(dir, "");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
    cmd.arg("--data-dir")
        .arg(dir.join("agent"))
        .arg("--config")
        .arg(config)
        .args(["--name", "build-box", "pair", "--relay", relay_url])
        .args(["--link-base", link_base, "--yes", "--print-url", "--no-terminal-qr"])
        .env("TANDEM_LOG", "warn,tandem_agent::pair=info")
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stderr(std::fs::File::create(dir.join("agent.pair.log")).unwrap());
    Agent::spawn(cmd)
}

/// Restart `relay` once a crash point aborted it (off the runtime's
/// threads); the restarted relay.
fn restart_after_crash(mut relay: Relay) -> tokio::task::JoinHandle<Relay> {
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + DEADLINE;
        while !relay.exited() {
            assert!(
                std::time::Instant::now() < deadline,
                "the relay never reached its crash point"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        relay.restart();
        relay
    })
}

/// Both sides paired: the agent exited successfully with the phone saved
/// and not pending, the phone keeps the desktop.
fn assert_paired(dir: &Path, mut agent: Agent, phone: &DesktopSummary, phone_id: &str) {
    let status = agent.exit_within(DEADLINE).expect("tandem pair exits once paired");
    assert!(status.success(), "tandem pair failed; its log:\n{}", log(dir));
    let peer: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::peer_file(&dir.join("agent"), phone_id)).unwrap(),
    )
    .unwrap();
    assert_ne!(peer["pairing_pending"], serde_json::json!(true), "still pending: {peer}");
    assert!(!phone.desktop_id.is_empty());
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("agent.pair.log")).unwrap_or_default()
}

/// The phone scans `link` and confirms the code `agent` shows: how the
/// pairing ended (within [`DEADLINE`]).
async fn scan(agent: &Agent, phone: &Phone, link: &str) -> Result<DesktopSummary, PhoneError> {
    let run = async {
        let p = phone.start_pairing(link).await?;
        assert_eq!(agent.line_starting("Code: ").trim(), format!("Code: {}", p.sas()));
        p.wait().await
    };
    tokio::time::timeout(DEADLINE, run).await.expect("pairing ended in time")
}

/// As [`scan`], paired (the agent's log shown otherwise).
async fn scan_ok(dir: &Path, agent: &Agent, phone: &Phone, link: &str) -> DesktopSummary {
    scan(agent, phone, link)
        .await
        .unwrap_or_else(|e| panic!("the phone failed: {e}; agent log:\n{}", log(dir)))
}

async fn open_phone(dir: &Path) -> (Phone, String) {
    let phone = Phone::open(PhoneConfig::new(dir.join("phone"), "Ana's phone")).await.unwrap();
    let id = phone.device_id();
    (phone, id)
}

/// A relay that dies forwarding the desktop's accepting result (the third
/// pairing message, after the welcome and the confirmation), `tandem pair`
/// with `env` against it, the phone engine, and its pairing started, the
/// codes on both sides the same.
async fn result_in_flight(
    dir: &Path,
    env: &[(&str, &str)],
) -> (Relay, Agent, Phone, tandem_phone::Pairing) {
    let relay = Relay::start_failing(dir, "relay.pair_message=2*off->return");
    let (agent, link) = pairing_with(dir, &relay, env);
    let (phone, _) = open_phone(dir).await;
    let p = tokio::time::timeout(DEADLINE, phone.start_pairing(&link)).await.unwrap().unwrap();
    assert_eq!(agent.line_starting("Code: ").trim(), format!("Code: {}", p.sas()));
    (relay, agent, phone, p)
}

/// A code on screen across a relay restart; the phone scans it as soon as
/// the relay is back, before the desktop has reconnected and opened the
/// code's mailbox again: its claim is retried until the mailbox is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_shown_across_a_relay_restart_pairs_a_phone_that_scans_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path());
    let (agent, link) = pairing(dir.path(), &relay);
    relay.kill9();
    relay.restart();
    let (phone, phone_id) = open_phone(dir.path()).await;
    let summary = scan_ok(dir.path(), &agent, &phone, &link).await;
    assert_paired(dir.path(), agent, &summary, &phone_id);
}

/// The relay dies (abort, like `kill -9`) with the phone's claim in flight:
/// never answered, never forwarded. Restarted, the phone claims again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_in_flight_when_the_relay_dies_is_made_again_and_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_failing(dir.path(), "relay.pair_claim=return");
    let (agent, link) = pairing(dir.path(), &relay);
    let (phone, phone_id) = open_phone(dir.path()).await;
    let run = async {
        let p = phone.start_pairing(&link).await?;
        assert_eq!(agent.line_starting("Code: ").trim(), format!("Code: {}", p.sas()));
        p.wait().await
    };
    let restarted = restart_after_crash(relay);
    let summary = tokio::time::timeout(DEADLINE, run).await.expect("pairing ended in time");
    let relay = restarted.await.unwrap();
    let summary = summary
        .unwrap_or_else(|e| panic!("the phone failed: {e}; agent log:\n{}", log(dir.path())));
    assert!(relay.log().contains("crash point"), "the claim was in flight at the crash");
    assert_paired(dir.path(), agent, &summary, &phone_id);
}

/// The relay dies (abort, like `kill -9`) with the desktop's `PairOpen` in
/// flight: never answered. `tandem pair` does not end: it shows the code and
/// opens its mailbox again once the relay is back, and a phone pairs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_in_flight_when_the_relay_dies_is_made_again_and_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_failing(dir.path(), "relay.pair_open=return");
    let agent = spawn_pairing(dir.path(), &relay, &[]);
    let restarted = restart_after_crash(relay);
    let line = tokio::task::block_in_place(|| agent.line_starting("pairing link: "));
    let link = line.trim().trim_start_matches("pairing link: ").to_owned();
    let relay = restarted.await.unwrap();
    assert!(relay.log().contains("crash point"), "the open was in flight at the crash");
    let (phone, phone_id) = open_phone(dir.path()).await;
    let summary = scan_ok(dir.path(), &agent, &phone, &link).await;
    assert_paired(dir.path(), agent, &summary, &phone_id);
}

/// The relay dies (abort, like `kill -9`) with the desktop's welcome in
/// flight, the first pairing message: the phone never gets it. Restarted,
/// the phone claims again with a fresh hello, `tandem pair` takes it up on
/// the same code (it does not end), and both sides pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_welcome_lost_with_the_relay_is_sent_again_and_both_sides_pair() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_failing(dir.path(), "relay.pair_message=return");
    let (agent, link) = pairing(dir.path(), &relay);
    let (phone, phone_id) = open_phone(dir.path()).await;
    let run = async {
        let p = phone.start_pairing(&link).await?;
        assert_eq!(agent.line_starting("Code: ").trim(), format!("Code: {}", p.sas()));
        p.wait().await
    };
    let restarted = restart_after_crash(relay);
    let summary = tokio::time::timeout(DEADLINE, run).await.expect("pairing ended in time");
    let relay = restarted.await.unwrap();
    let summary = summary
        .unwrap_or_else(|e| panic!("the phone failed: {e}; agent log:\n{}", log(dir.path())));
    assert!(relay.log().contains("crash point"), "the welcome was in flight at the crash");
    assert_paired(dir.path(), agent, &summary, &phone_id);
}

/// The relay dies after the desktop accepted and sent its result, before
/// forwarding it: the desktop has saved the phone, the phone has nothing.
/// Restarted, the phone claims the mailbox again with its confirmation and
/// the desktop answers again: both end paired, never one side only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_lost_with_the_relay_is_sent_again_and_both_sides_pair() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, agent, phone, p) = result_in_flight(dir.path(), &[]).await;
    let restarted = restart_after_crash(relay);
    let summary = tokio::time::timeout(DEADLINE, p.wait()).await.expect("pairing ended in time");
    let _relay = restarted.await.unwrap();
    let summary = summary
        .unwrap_or_else(|e| panic!("the phone failed: {e}; agent log:\n{}", log(dir.path())));
    assert_paired(dir.path(), agent, &summary, &phone.device_id());
    assert!(log(dir.path()).contains("asked for the pairing answer again"), "{}", log(dir.path()));
}

/// The relay dies with the desktop's result in flight and stays down past
/// the desktop's wait for the phone (`unfinished_pairing_secs`, 2 s here):
/// the desktop removes the device and says "pairing interrupted: scan
/// again"; once the relay is back the phone cannot take the pairing up
/// again and fails with the same words. Neither side keeps the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_lost_for_good_fails_on_both_sides_with_the_same_words() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("TANDEM_UNFINISHED_PAIRING_SECS", "2")];
    let (mut relay, agent, phone, p) = result_in_flight(dir.path(), &env).await;
    let phone_id = phone.device_id();
    let waiting = tokio::spawn(p.wait());
    // The relay is down (its crash point aborted it) when the desktop gives up.
    let said =
        tokio::task::block_in_place(|| agent.line_starting("Ana's phone did not get the answer"));
    assert!(relay.exited(), "the relay was down all along");
    tokio::task::block_in_place(|| {
        relay.kill9();
        relay.restart();
    });
    let err = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("the phone gave up in time")
        .unwrap()
        .expect_err("the phone cannot have paired");
    assert_eq!(err, tandem_phone::PhoneError::PairingInterrupted);
    assert!(said.contains(&err.to_string()), "the same words on both sides: {said:?} / {err}");
    assert!(phone.desktops().is_empty(), "the phone keeps no desktop");
    assert!(
        !common::peer_file(&dir.path().join("agent"), &phone_id).exists(),
        "the desktop keeps no device"
    );
    let audit = std::fs::read_to_string(dir.path().join("agent/audit.log")).unwrap_or_default();
    assert!(audit.contains("pairing interrupted"), "audited: {audit}");
}

/// The relay's store takes the desktop's route authorisation, then refuses
/// the phone's (`relay.route`, the second route write, fails as an I/O
/// error would): the phone had saved the pairing before asking, and takes
/// it back, so it keeps no desktop the relay does not route to, also after
/// a restart of the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_the_relay_refuses_leaves_no_saved_pairing_on_the_phone() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_failing(dir.path(), "relay.route=1*off->return");
    let (agent, link) = pairing(dir.path(), &relay);
    let (phone, _) = open_phone(dir.path()).await;
    let err = scan(&agent, &phone, &link).await.expect_err("the relay refused the phone's route");
    assert!(err.to_string().contains("store_unavailable"), "the route write failed: {err}");
    assert!(phone.desktops().is_empty(), "{err}");
    let saved: Vec<_> = std::fs::read_dir(dir.path().join("phone/desktops"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(saved.is_empty(), "the phone kept a pairing file: {saved:?}");
    phone.close().await;
    drop(phone);
    let (phone, _) = open_phone(dir.path()).await;
    assert!(phone.desktops().is_empty(), "a reopened phone knows no desktop");
    phone.close().await;
    drop(agent);
}

/// The relay's store fails the phone's route authorisation once (the
/// desktop's goes through): a refusal for now (`store_unavailable`), so the
/// phone authorises again and both sides end paired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_the_relay_refuses_for_now_is_authorised_again_and_both_sides_pair() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_failing(dir.path(), "relay.route=1*off->1*return->off");
    let (agent, link) = pairing(dir.path(), &relay);
    let (phone, phone_id) = open_phone(dir.path()).await;
    let summary = scan_ok(dir.path(), &agent, &phone, &link).await;
    assert_paired(dir.path(), agent, &summary, &phone_id);
}

/// Only the phone's network drops, with the desktop's result in flight,
/// and stays down (the relay runs on). The desktop gives up after its wait
/// for the phone (2 s here), the phone after its own
/// (`pairing_interrupted_wait`, 2 s here, 60 s by default, as the
/// desktop's), not after the 300 s of a person confirming (and then with
/// `Timeout`): both say "pairing interrupted: scan again" and neither keeps
/// the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phones_own_connection_dropping_fails_both_sides_alike_and_soon() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let tap = Tap::start(relay.addr).await.unwrap();
    let link_base = format!("http://{}/p", tap.addr());
    let (agent, link) =
        pairing_via(dir.path(), &tap.url(), &link_base, &[("TANDEM_UNFINISHED_PAIRING_SECS", "2")]);
    let config = PhoneConfig {
        pairing_interrupted_wait: Duration::from_secs(2),
        ..PhoneConfig::new(dir.path().join("phone"), "Ana's phone")
    };
    let phone = Phone::open(config).await.unwrap();
    let phone_id = phone.device_id();
    // The hello (to the desktop), the welcome, the confirmation pass; the
    // result cuts the phone's network.
    tap.cut_at_from_relay(FrameType::PairMessage, 3);
    let p = tokio::time::timeout(DEADLINE, phone.start_pairing(&link)).await.unwrap().unwrap();
    assert_eq!(agent.line_starting("Code: ").trim(), format!("Code: {}", p.sas()));
    // Far below the 300 s the phone waited before.
    let err = tokio::time::timeout(Duration::from_secs(60), p.wait())
        .await
        .expect("the phone gave up about when the desktop did")
        .expect_err("the phone cannot have paired");
    assert_eq!(err, PhoneError::PairingInterrupted);
    let said =
        tokio::task::block_in_place(|| agent.line_starting("Ana's phone did not get the answer"));
    assert!(said.contains(&err.to_string()), "the same words on both sides: {said:?} / {err}");
    assert!(phone.desktops().is_empty(), "the phone keeps no desktop");
    assert!(
        !common::peer_file(&dir.path().join("agent"), &phone_id).exists(),
        "the desktop keeps no device"
    );
    phone.close().await;
}
