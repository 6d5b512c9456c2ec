//! A session renewal survives a crash of either side between any two of its
//! steps. A renewal's steps (`docs/PROTOCOL.md` §10.3), each persisted
//! before the next, with a crash point between every two of them
//! (`desktop-agent/src/crashpoint.rs` lists them):
//!
//! * initiator: the link with the `SessionInit` saved (`renew.init_saved`),
//!   the init stored by the relay (`renew.init_sent`);
//! * responder: the init opened (`renew.init_received`), `next` saved
//!   (`renew.next_saved`), the `SessionAccept` stored by the relay
//!   (`renew.accept_sent`);
//! * initiator: the accept opened (`renew.accept_received`), the switch
//!   saved (`renew.switch_saved`), the confirming `Ack` stored by the relay
//!   (`renew.confirm_sent`);
//! * responder: the confirm opened (`renew.confirm_received`), the
//!   promotion saved (`renew.promoted_saved`), then the relay ack.
//!
//! The agent is the real `tandem run`, killed by its own crash point
//! (`FAILPOINTS=<point>=return`, `std::process::abort`: no clean-up, as `kill -9`)
//! and started again. The phone is the phone engine (`tandem-phone`) in a
//! process of its own, this test binary run again as `phone_process` and
//! driven through its standard input; it is killed the same way, from the
//! engine's `PhoneConfig::step_hook`, and started again on its data dir.
//! The relay is a process of its own too (`common/relay.rs`). Which side
//! initiates is chosen by the schedules: the side that must initiate renews
//! every second, the other hourly.
//!
//! For every point, on each side, as initiator and as responder: the side
//! dies there (exit by `SIGABRT`), comes back, and the two converge: more
//! renewals complete afterwards, both files hold the same current session,
//! and a task streamed across the crash (and one after it) reaches the
//! phone with every event once, in order, each task run once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Agent;
use common::helper::{self, Helper, say};
use common::relay::Relay;
use serde_json::Value;
use tandem_e2e::probe::StoredLink;
use tandem_phone::{Phone, PhoneConfig, PhoneEvent, Schedule, StepHook, TaskEvent};

relay_process_test!();

const INITIATOR_POINTS: [&str; 5] = [
    "renew.init_saved",
    "renew.init_sent",
    "renew.accept_received",
    "renew.switch_saved",
    "renew.confirm_sent",
];
const RESPONDER_POINTS: [&str; 5] = [
    "renew.init_received",
    "renew.next_saved",
    "renew.accept_sent",
    "renew.confirm_received",
    "renew.promoted_saved",
];

/// Only there so that a broken build fails instead of hanging.
const WAIT: Duration = Duration::from_secs(45);

const PHONE_DIR: &str = "TANDEM_TEST_PHONE_DIR";
const PHONE_RENEW_MS: &str = "TANDEM_TEST_PHONE_RENEW_MS";
const PHONE_CRASH_AT: &str = "TANDEM_TEST_PHONE_CRASH_AT";

// ---- the phone process ----

fn kind(e: &TaskEvent) -> &'static str {
    match e {
        TaskEvent::Accepted { .. } => "accepted",
        TaskEvent::Finished { .. } => "finished",
        _ => "other",
    }
}

/// Not a test: the phone the crash tests start (this binary, run again with
/// [`PHONE_DIR`] set). It opens the phone engine on that directory with a
/// renewal every [`PHONE_RENEW_MS`], aborts at the renewal step named by
/// [`PHONE_CRASH_AT`], prints task events, and takes commands on its
/// standard input: `submit TEXT`, `history TASK`; it closes the engine and
/// exits when its input ends.
#[test]
#[ignore = "not a test: the phone process the crash tests start"]
fn phone_process() {
    let Ok(dir) = std::env::var(PHONE_DIR) else { return };
    let renew_ms: u64 = std::env::var(PHONE_RENEW_MS).unwrap().parse().unwrap();
    let crash_at = std::env::var(PHONE_CRASH_AT).ok();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let step_hook = crash_at.map(|at| {
            StepHook(Arc::new(move |step: &str| {
                if step == at {
                    eprintln!("phone: {PHONE_CRASH_AT}={step}: aborting here");
                    std::process::abort();
                }
            }))
        });
        let schedule = Schedule {
            renew_after_ms: renew_ms,
            renew_after_records: 1_000_000,
            rekey_after_ms: 3_600_000,
            // Long enough that a renewal cut by the agent's crash is seen to
            // complete on the agent's kept answer, not by a retry.
            renewal_timeout_ms: 8_000,
        };
        let config = PhoneConfig { schedule, step_hook, ..PhoneConfig::new(&dir, "Ana's phone") };
        let phone = Phone::open(config).await.unwrap();
        let desktop = phone.desktops()[0].desktop_id.clone();
        let mut events = phone.subscribe();
        tokio::spawn(async move {
            while let Ok(e) = events.recv().await {
                if let PhoneEvent::Task(t) = e {
                    say(format!("event {} {} {}", t.task_id, t.offset, kind(&t.event)));
                }
            }
        });
        say("ready".into());
        let mut lines =
            tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
        while let Ok(Some(line)) = lines.next_line().await {
            match line.split_once(' ') {
                Some(("submit", text)) => {
                    let id = phone.submit(&desktop, text, None).await.unwrap();
                    say(format!("submitted {id}"));
                }
                Some(("history", task)) => {
                    let page = phone.history(&desktop, task, 0).await.unwrap();
                    let events: Vec<(u64, &str)> =
                        page.events.iter().map(|e| (e.offset, kind(&e.event))).collect();
                    say(format!("history {task} {}", serde_json::json!(events)));
                }
                _ => panic!("unknown command {line:?}"),
            }
        }
        phone.close().await;
        say("closed".into());
    });
}

/// A phone process and what it printed.
struct PhoneProc {
    helper: Helper,
    /// Task events printed, per task, in order: (offset, kind).
    events: BTreeMap<String, Vec<(u64, String)>>,
}

/// Note a printed task event (`event <task> <offset> <kind>`).
fn note_event(events: &mut BTreeMap<String, Vec<(u64, String)>>, line: &str) {
    if let Some(rest) = line.strip_prefix("event ") {
        let mut w = rest.split(' ');
        let (task, offset, kind) = (w.next(), w.next(), w.next());
        events
            .entry(task.unwrap().to_owned())
            .or_default()
            .push((offset.unwrap().parse().unwrap(), kind.unwrap().to_owned()));
    }
}

impl PhoneProc {
    fn start(dir: &Path, renew_ms: u64, crash_at: Option<&str>) -> PhoneProc {
        let mut cmd = helper::command("phone_process", &dir.join("phone.log"));
        cmd.env(PHONE_DIR, dir.join("phone")).env(PHONE_RENEW_MS, renew_ms.to_string());
        if let Some(at) = crash_at {
            cmd.env(PHONE_CRASH_AT, at);
        }
        let mut p = PhoneProc { helper: Helper::spawn(cmd), events: BTreeMap::new() };
        p.expect("ready");
        p
    }

    fn send(&mut self, command: &str) {
        self.helper.send(command);
    }

    /// Take what it printed until a line starting with `prefix`; `None`
    /// when the process ended first.
    fn until(&mut self, prefix: &str) -> Option<String> {
        let events = &mut self.events;
        self.helper.until(prefix, WAIT, |line| note_event(events, line))
    }

    fn expect(&mut self, prefix: &str) -> String {
        self.until(prefix).unwrap_or_else(|| panic!("the phone ended before printing {prefix:?}"))
    }

    /// Submit `text`; its task id.
    fn submit(&mut self, text: &str) -> String {
        self.send(&format!("submit {text}"));
        self.expect("submitted ").trim_start_matches("submitted ").to_owned()
    }

    /// The task's history from the desktop: (offset, kind).
    fn history(&mut self, task: &str) -> Vec<(u64, String)> {
        self.send(&format!("history {task}"));
        let line = self.expect(&format!("history {task} "));
        serde_json::from_str(line.trim_start_matches(&format!("history {task} "))).unwrap()
    }

    /// Wait until the task's finish was printed.
    fn until_finished(&mut self, task: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.events.get(task).is_some_and(|e| e.iter().any(|(_, k)| k == "finished")) {
            assert!(Instant::now() < deadline, "task {task} never finished on the phone");
            if let Some(line) = self.helper.next(Duration::from_millis(100)) {
                note_event(&mut self.events, &line);
            }
        }
    }

    /// Wait until the desktop's history of the task ends with its finish.
    fn until_history_finished(&mut self, task: &str) {
        let deadline = Instant::now() + WAIT;
        while self.history(task).last().is_none_or(|(_, k)| k != "finished") {
            assert!(Instant::now() < deadline, "task {task} never finished");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Wait for it to die by itself (a crash point).
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.helper.exit_within(WAIT).expect("the phone did not reach its crash point")
    }

    /// Close its input: it closes the engine and exits.
    fn stop(mut self) {
        self.helper.close_input();
        let _ = self.until("closed");
        let _ = self.helper.child.wait();
    }
}

impl Drop for PhoneProc {
    fn drop(&mut self) {
        let _ = self.helper.child.kill();
        let _ = self.helper.child.wait();
    }
}

// ---- the world ----

/// Which side initiates the renewals (renews every second; the other
/// hourly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Initiator {
    Agent,
    Phone,
}

struct World {
    dir: tempfile::TempDir,
    config: PathBuf,
    _relay: Relay,
    agent_dir: PathBuf,
    desktop: String,
    phone_id: String,
    initiator: Initiator,
}

impl World {
    /// A relay, `tandem pair` with the phone engine (in this process, then
    /// closed: the phone processes take over its directory).
    async fn pair(initiator: Initiator) -> World {
        let dir = tempfile::tempdir().unwrap();
        let config = common::fixture_config(dir.path(), "");
        let relay = Relay::start(dir.path());
        let agent_dir = dir.path().join("desk");
        let (mut pairing, link) =
            common::pair_process(&agent_dir, &config, &relay.url(), &relay.link_base());
        let phone =
            Phone::open(PhoneConfig::new(dir.path().join("phone"), "Ana's phone")).await.unwrap();
        let p = phone.start_pairing(&link).await.unwrap();
        assert_eq!(pairing.line_starting("Code: ").trim(), format!("Code: {}", p.sas()));
        let desktop = p.wait().await.unwrap().desktop_id;
        assert!(pairing.exit_within(Duration::from_secs(30)).unwrap().success());
        let phone_id = phone.device_id();
        phone.close().await;
        World { dir, config, _relay: relay, agent_dir, desktop, phone_id, initiator }
    }

    fn agent(&self, crash_at: Option<&str>) -> Agent {
        let mut env: Vec<(&str, String)> = Vec::new();
        if self.initiator == Initiator::Agent {
            env.push(("TANDEM_SESSION_RENEW_SECS", "1".into()));
            env.push(("TANDEM_SESSION_RENEWAL_TIMEOUT_SECS", "5".into()));
        }
        if let Some(at) = crash_at {
            env.push(("FAILPOINTS", format!("{at}=return")));
        }
        common::run_process(&self.agent_dir, &self.config, &env)
    }

    fn phone(&self, crash_at: Option<&str>) -> PhoneProc {
        let renew_ms = if self.initiator == Initiator::Phone { 1_000 } else { 3_600_000 };
        PhoneProc::start(self.dir.path(), renew_ms, crash_at)
    }

    fn renewals(&self) -> u64 {
        let out = common::tandem(&self.agent_dir, &["status", "--json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["devices"][0]["session"]["renewals"].as_u64().unwrap()
    }

    /// Renewals the agent completed, as its peer file says (with or without
    /// the agent running).
    fn renewals_on_disk(&self) -> u64 {
        let file = common::peer_file(&self.agent_dir, &self.phone_id);
        let v: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        v["peer"]["renewals"]["count"].as_u64().unwrap_or(0)
    }

    fn sessions(&self) -> ([u8; 8], [u8; 8]) {
        let read = |p: PathBuf| StoredLink::from_file(&std::fs::read(p).unwrap()).unwrap();
        let agent = read(common::peer_file(&self.agent_dir, &self.phone_id));
        let phone = read(common::desktop_file(&self.dir.path().join("phone"), &self.desktop));
        (agent.sessions().current, phone.sessions().current)
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.agent_dir.join("agent.log")).unwrap_or_default()
    }

    fn phone_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("phone.log")).unwrap_or_default()
    }

    /// After a crash at `point`: renewals complete again (two more than
    /// `before`), and both sides end up on the same current session.
    fn converges(&self, point: &str, before: u64) {
        let deadline = Instant::now() + WAIT;
        while self.renewals() < before + 2 {
            assert!(
                Instant::now() < deadline,
                "after a crash at {point}: no renewal completed ({} ≤ {before} + 1)\nagent log:\n{}\nphone log:\n{}",
                self.renewals(),
                tail(&self.agent_log()),
                tail(&self.phone_log())
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        loop {
            let (agent, phone) = self.sessions();
            if agent == phone {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "after a crash at {point}: the agent is on {agent:?}, the phone on {phone:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// After the responder's crash at `point`: a renewal completes before
    /// the initiator's renewal timeout, and the phone abandoned nothing.
    fn renews_without_abandoning(&self, point: &str, renewals: u64, abandoned: usize) {
        let deadline = Instant::now() + Duration::from_secs(7);
        while self.renewals_on_disk() <= renewals {
            assert!(
                Instant::now() < deadline,
                "after a crash at {point}: the cut renewal did not complete on the kept answer ({} renewals on disk, {renewals} before)\nagent log:\n{}\nphone log:\n{}",
                self.renewals_on_disk(),
                tail(&self.agent_log()),
                tail(&self.phone_log())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            self.phone_log().matches("abandoned").count(),
            abandoned,
            "after a crash at {point}: the phone abandoned its renewal instead of getting the kept answer"
        );
    }

    /// The desktop ran each task once: its history has one `accepted` at
    /// offset 0, one `finished` last, offsets contiguous; `tandem tasks`
    /// lists it once.
    fn ran_once(&self, phone: &mut PhoneProc, tasks: &[String]) {
        let listed = common::tandem(&self.agent_dir, &["tasks"]);
        for t in tasks {
            let history = phone.history(t);
            let offsets: Vec<u64> = history.iter().map(|(o, _)| *o).collect();
            assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>(), "task {t}");
            let kinds: Vec<&str> = history.iter().map(|(_, k)| k.as_str()).collect();
            assert_eq!(kinds.first(), Some(&"accepted"), "task {t}: {kinds:?}");
            assert_eq!(kinds.iter().filter(|k| **k == "accepted").count(), 1, "task {t}");
            assert_eq!(kinds.iter().filter(|k| **k == "finished").count(), 1, "task {t}");
            assert_eq!(kinds.last(), Some(&"finished"), "task {t}: {kinds:?}");
            assert_eq!(listed.matches(t.as_str()).count(), 1, "task {t} in:\n{listed}");
        }
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// What a phone that never crashed printed of `task`: every offset once,
/// in order, one finish, last.
fn printed_once(phone: &PhoneProc, task: &str) {
    let events = &phone.events[task];
    let offsets: Vec<u64> = events.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>(), "task {task}: {events:?}");
    assert_eq!(events.iter().filter(|(_, k)| k == "finished").count(), 1, "task {task}");
    assert_eq!(events.last().unwrap().1, "finished", "task {task}");
}

/// What a phone printed across its own crashes: never an offset twice,
/// always ascending.
fn printed_at_most_once(events: &[(u64, String)], task: &str) {
    let offsets: Vec<u64> = events.iter().map(|(o, _)| *o).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "task {task}: {offsets:?}");
}

fn assert_aborted(status: std::process::ExitStatus, who: &str, point: &str) {
    assert_eq!(status.signal(), Some(6), "the {who} died at {point} by SIGABRT: {status:?}");
}

/// Kill the agent at every point in turn, with the phone process running
/// throughout.
async fn agent_crashes(initiator: Initiator, points: [&str; 5]) {
    let w = World::pair(initiator).await;
    let mut phone = tokio::task::block_in_place(|| w.phone(None));
    let mut tasks = Vec::new();
    for point in points {
        tokio::task::block_in_place(|| {
            let mut agent = w.agent(Some(point));
            // A task streams across the crash.
            let before = tasks.len();
            tasks.push(phone.submit("count 40 40"));
            let status = agent.exit_within(WAIT).unwrap_or_else(|| {
                panic!("the agent never reached {point}:\n{}", tail(&w.agent_log()))
            });
            assert_aborted(status, "agent", point);
            assert!(w.agent_log().contains(&format!("FAILPOINTS: {point}: aborting here")));
            let abandoned = w.phone_log().matches("abandoned").count();
            let on_disk = w.renewals_on_disk();
            let agent = w.agent(None);
            if initiator == Initiator::Phone
                && matches!(point, "renew.next_saved" | "renew.accept_sent")
            {
                // The relay gives the restarted agent the phone's init again;
                // the agent sends the answer it kept with `next`, and the
                // phone's pending renewal completes without being abandoned
                // (PROTOCOL §10.2).
                w.renews_without_abandoning(point, on_disk, abandoned);
            }
            let renewals = w.renewals();
            tasks.push(phone.submit("count 5 10"));
            for t in &tasks[before..] {
                phone.until_finished(t);
                printed_once(&phone, t);
            }
            w.converges(point, renewals);
            w.ran_once(&mut phone, &tasks);
            stop(agent);
        });
    }
    tokio::task::block_in_place(|| phone.stop());
}

/// Kill the phone at every point in turn, with the agent running
/// throughout.
async fn phone_crashes(initiator: Initiator, points: [&str; 5]) {
    let w = World::pair(initiator).await;
    let agent = tokio::task::block_in_place(|| w.agent(None));
    let mut tasks = Vec::new();
    let mut printed: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for point in points {
        tokio::task::block_in_place(|| {
            // A task streams across the crash: submitted by a phone that
            // then stops cleanly, the rest delivered around the crash.
            let mut phone = w.phone(None);
            let before = tasks.len();
            tasks.push(phone.submit("count 40 40"));
            let mut collect = |p: &PhoneProc| {
                for (t, evs) in &p.events {
                    printed.entry(t.clone()).or_default().extend(evs.iter().cloned());
                }
            };
            collect(&phone);
            phone.stop();
            let mut crashing = w.phone(Some(point));
            let status = crashing.wait_exit();
            assert_aborted(status, "phone", point);
            assert!(w.phone_log().contains(&format!("{PHONE_CRASH_AT}={point}: aborting here")));
            // Everything the crashed process printed, up to its end.
            assert_eq!(crashing.until("\u{0}"), None);
            collect(&crashing);
            drop(crashing);
            let mut phone = w.phone(None);
            let renewals = w.renewals();
            tasks.push(phone.submit("count 5 10"));
            // Events the crashed process saved but had not shown yet are
            // not shown again (the engine emits after saving): an app
            // reads them from the history, as here.
            for t in &tasks[before..] {
                phone.until_history_finished(t);
            }
            collect(&phone);
            for (t, evs) in &printed {
                printed_at_most_once(evs, t);
            }
            w.converges(point, renewals);
            w.ran_once(&mut phone, &tasks);
            phone.stop();
        });
    }
    drop(agent);
}

/// Stop the agent cleanly (SIGTERM).
fn stop(mut agent: Agent) {
    let pid = agent.pid().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(agent.exit_within(WAIT).is_some(), "the agent stops on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_killed_at_each_step_of_its_own_renewal_recovers() {
    agent_crashes(Initiator::Agent, INITIATOR_POINTS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_killed_at_each_step_of_answering_a_renewal_recovers() {
    agent_crashes(Initiator::Phone, RESPONDER_POINTS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phone_killed_at_each_step_of_its_own_renewal_recovers() {
    phone_crashes(Initiator::Phone, INITIATOR_POINTS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phone_killed_at_each_step_of_answering_a_renewal_recovers() {
    phone_crashes(Initiator::Agent, RESPONDER_POINTS).await;
}
