//! The phone engine killed at each of its persistence boundaries while it
//! submits a task or answers an approval, and started again: the exchange
//! completes exactly once (the agent ran the task once, the decision was
//! applied once, the history holds every event once).
//!
//! The points are the phone's failpoints (`phone/src/crashpoint.rs`:
//! `phone.send_saved`, `phone.send_stored`, `phone.resend_saved`,
//! `phone.deliver_received`, `phone.deliver_saved`,
//! `phone.deliver_emitted`), armed with `return`, which aborts the process
//! (`std::process::abort`, like `kill -9`). The phone is this test binary
//! run again as `crash_phone_process` and driven through its standard
//! input; the agent is the real `tandem run`, the relay a process of its
//! own (`common/relay.rs`). Needs `tandem-phone/failpoints` (the test
//! command enables it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

use common::helper::{self, Helper, say};
use common::relay::Relay;
use serde_json::{Value, json};
use tandem_phone::{Phone, PhoneConfig, PhoneEvent, TaskEvent};

relay_process_test!();

/// Only there so that a broken build fails instead of hanging.
const WAIT: Duration = Duration::from_secs(45);

const PHONE_DIR: &str = "TANDEM_TEST_CRASH_PHONE_DIR";

/// Where the submit exchange is cut.
const SUBMIT_POINTS: [&str; 5] = [
    "phone.send_saved",
    "phone.send_stored",
    "phone.deliver_received",
    "phone.deliver_saved",
    "phone.deliver_emitted",
];

/// Where the decision exchange is cut.
const DECIDE_POINTS: [&str; 5] = SUBMIT_POINTS;

// ---- the phone process ----

/// One task event as the phone process prints it: `[offset, what]`.
fn describe(offset: u64, e: &TaskEvent) -> Value {
    let what = match e {
        TaskEvent::Accepted { .. } => "accepted".to_owned(),
        TaskEvent::Progress { text } => format!("progress {text}"),
        TaskEvent::ApprovalRequest { approval_id, .. } => format!("approval {approval_id}"),
        TaskEvent::ApprovalResolved { approval_id, allow, .. } => {
            format!("resolved {approval_id} {allow}")
        }
        TaskEvent::Finished { .. } => "finished".to_owned(),
        other => format!("{other:?}"),
    };
    json!([offset, what])
}

/// Not a test: the phone the crash matrix starts (this binary, run again
/// with [`PHONE_DIR`] set). Arms `FAILPOINTS` at start, and takes commands
/// on its standard input: `arm POINT` (armed with `return` from now on),
/// `then-arm POINT` (armed once the next submit or decision was taken by
/// the relay), `submit TEXT`, `decide TASK APPROVAL`, `tasks`, `history TASK`,
/// `wait TASK WHAT` (until the task's history holds `WHAT`).
#[test]
#[ignore = "not a test: the phone process the crash matrix starts"]
fn crash_phone_process() {
    let Ok(dir) = std::env::var(PHONE_DIR) else { return };
    let _scenario = fail::FailScenario::setup();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info,tandem_phone=debug"))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let phone = Phone::open(PhoneConfig::new(&dir, "Ana's phone")).await.unwrap();
        let desktop = phone.desktops()[0].desktop_id.clone();
        let mut events = phone.subscribe();
        let history = |task: String| {
            let (phone, desktop) = (phone.clone(), desktop.clone());
            async move {
                let page = phone.history(&desktop, &task, 0).await.unwrap();
                page.events.iter().map(|e| describe(e.offset, &e.event)).collect::<Vec<Value>>()
            }
        };
        let mut arm_after: Option<String> = None;
        say("ready".into());
        let mut lines =
            tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
        while let Ok(Some(line)) = lines.next_line().await {
            let words: Vec<&str> = line.splitn(3, ' ').collect();
            match words.as_slice() {
                ["arm", point] => {
                    fail::cfg(*point, "return").unwrap();
                    say(format!("armed {point}"));
                }
                ["submit", rest @ ..] => {
                    let id = phone.submit(&desktop, &rest.join(" "), None).await.unwrap();
                    if let Some(point) = arm_after.take() {
                        fail::cfg(point, "return").unwrap();
                    }
                    say(format!("submitted {id}"));
                }
                ["then-arm", point] => {
                    // The next submit or decide arms `point` once the relay
                    // took it: a delivery point is then hit by the exchange
                    // itself, not by a record still on its way from before.
                    arm_after = Some((*point).to_owned());
                    say("armed later".into());
                }
                ["decide", task, approval] => {
                    phone.decide(&desktop, task, approval, true).await.unwrap();
                    if let Some(point) = arm_after.take() {
                        fail::cfg(point, "return").unwrap();
                    }
                    say("decided".into());
                }
                ["tasks"] => {
                    let ids: Vec<String> = phone
                        .tasks(&desktop)
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|t| t.task_id)
                        .collect();
                    say(format!("tasks {}", json!(ids)));
                }
                ["history", task] => {
                    say(format!("history {}", json!(history((*task).to_owned()).await)));
                }
                ["wait", task, what] => {
                    // Signals: each new event of the task asks again.
                    loop {
                        let h = history((*task).to_owned()).await;
                        if h.iter().any(|e| e[1] == *what) {
                            say(format!("history {}", json!(h)));
                            break;
                        }
                        let _ = tokio::time::timeout(Duration::from_secs(2), async {
                            while let Ok(e) = events.recv().await {
                                if matches!(&e, PhoneEvent::Task(t) if t.task_id == *task) {
                                    break;
                                }
                            }
                        })
                        .await;
                    }
                }
                _ => panic!("unknown command {line:?}"),
            }
        }
        phone.close().await;
    });
}

/// A phone process and what it printed.
struct PhoneProc(Helper);

impl PhoneProc {
    fn start(dir: &Path, failpoints: Option<&str>) -> PhoneProc {
        let mut p = PhoneProc::spawn(dir, failpoints);
        p.expect("ready");
        p
    }

    /// Started, not waited for: armed at start, it may die by its crash
    /// point before it prints "ready" (its outbox goes out on connecting).
    fn spawn(dir: &Path, failpoints: Option<&str>) -> PhoneProc {
        let mut cmd = helper::command("crash_phone_process", &dir.join("phone.log"));
        cmd.env(PHONE_DIR, dir.join("phone")).env_remove("FAILPOINTS");
        if let Some(f) = failpoints {
            cmd.env("FAILPOINTS", f);
        }
        PhoneProc(Helper::spawn(cmd))
    }

    fn send(&mut self, command: &str) {
        self.0.send(command);
    }

    /// The next line starting with `prefix` (the rest of it); `None` when
    /// the process ended first.
    fn until(&mut self, prefix: &str) -> Option<String> {
        let line = self.0.until(prefix, WAIT, |_| {})?;
        Some(line[prefix.len()..].to_owned())
    }

    fn expect(&mut self, prefix: &str) -> String {
        self.until(prefix).unwrap_or_else(|| panic!("the phone ended before printing {prefix:?}"))
    }

    fn tasks(&mut self) -> Vec<String> {
        self.send("tasks");
        serde_json::from_str(&self.expect("tasks ")).unwrap()
    }

    /// Wait until the task's history holds `what`; the history.
    fn wait(&mut self, task: &str, what: &str) -> Vec<(u64, String)> {
        self.send(&format!("wait {task} {what}"));
        serde_json::from_str(&self.expect("history ")).unwrap()
    }

    /// The process must die by its crash point (`SIGABRT`).
    fn aborted(mut self, point: &str) {
        let status =
            self.0.exit_within(WAIT).unwrap_or_else(|| panic!("{point}: the phone did not abort"));
        assert_eq!(status.signal(), Some(6), "{point}: the phone exited with {status}");
    }

    fn close(mut self) {
        self.0.close_input();
        let _ = self.0.child.wait();
    }
}

/// Arm `point` for the next exchange: a send point at once, a delivery
/// point once the relay took the request.
fn arm(p: &mut PhoneProc, point: &str) {
    if point.starts_with("phone.deliver") {
        p.send(&format!("then-arm {point}"));
    } else {
        p.send(&format!("arm {point}"));
    }
    p.expect("armed ");
}

/// Each event of the history once, offsets 0, 1, 2, … in order.
fn check_once(point: &str, history: &[(u64, String)], expected: &[&str]) {
    let offsets: Vec<u64> = history.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..history.len() as u64).collect::<Vec<u64>>(), "{point}: offsets");
    let what: Vec<&str> = history.iter().map(|(_, w)| w.as_str()).collect();
    assert_eq!(what, expected, "{point}: the task's history");
}

#[test]
fn the_phone_killed_at_each_persistence_boundary_submits_and_decides_exactly_once() {
    // Without its failpoints this test would prove nothing: fail, never skip.
    if !tandem_phone::crashpoint::ENABLED {
        panic!("build with --features tandem-phone/failpoints (scripts/test.sh does)");
    }
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "");
    let relay = Relay::start(dir.path());
    let agent_dir = dir.path().join("desk");
    let (mut pairing, link) =
        common::pair_process(&agent_dir, &config, &relay.url(), &relay.link_base());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let phone =
            Phone::open(PhoneConfig::new(dir.path().join("phone"), "Ana's phone")).await.unwrap();
        let p = phone.start_pairing(&link).await.unwrap();
        p.wait().await.unwrap();
        phone.close().await;
    });
    pairing.line_starting("Paired with");
    assert!(pairing.exit_within(WAIT).unwrap().success());
    let _agent = common::run_process(
        &agent_dir,
        &config,
        &[("TANDEM_LOG", "info,tandem_agent::daemon=debug,tandem_client::actor=debug".into())],
    );

    let counted = ["accepted", "progress n=0", "progress n=1", "progress n=2", "finished"];
    let mut cases: Vec<(&str, Option<&str>)> = SUBMIT_POINTS.iter().map(|p| (*p, None)).collect();
    // Killed again while sending the saved task after the restart.
    cases.push(("phone.send_saved", Some("phone.resend_saved=return")));
    for (point, then) in cases {
        let name = format!("submit at {point}{}", then.map_or(String::new(), |t| format!(", {t}")));
        let mut p = PhoneProc::start(dir.path(), None);
        let before = p.tasks();
        arm(&mut p, point);
        p.send("submit count 3 100");
        p.aborted(&name);
        if let Some(f) = then {
            PhoneProc::spawn(dir.path(), Some(f)).aborted(&name);
        }
        let mut p = PhoneProc::start(dir.path(), None);
        // The resent submit and the list request travel in order, but a
        // list answered to the previous process may still arrive first on a
        // loaded machine: ask until the task shows (or the wait runs out).
        let deadline = std::time::Instant::now() + WAIT;
        let new: Vec<String> = loop {
            let new: Vec<String> = p.tasks().into_iter().filter(|t| !before.contains(t)).collect();
            if !new.is_empty() || std::time::Instant::now() > deadline {
                break new;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
        if new.len() != 1 {
            let tail = |f: &Path| {
                let s = std::fs::read_to_string(f).unwrap_or_default();
                s.lines()
                    .rev()
                    .take(200)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            panic!(
                "{name}: one task ran, not {new:?}\n--- phone log:\n{}\n--- agent log:\n{}",
                tail(&dir.path().join("phone.log")),
                tail(&agent_dir.join("agent.log"))
            );
        }
        let history = p.wait(&new[0], "finished");
        check_once(&name, &history, &counted);
        p.close();
    }

    let decided = [
        "accepted",
        "approval a1",
        "resolved a1 true",
        "progress a1:allowed",
        "approval a2",
        "resolved a2 true",
        "progress a2:allowed",
        "finished",
    ];
    for point in DECIDE_POINTS {
        let name = format!("decide at {point}");
        let mut p = PhoneProc::start(dir.path(), None);
        p.send("submit approve-twice");
        let task = p.expect("submitted ");
        p.wait(&task, "approval a1");
        arm(&mut p, point);
        p.send(&format!("decide {task} a1"));
        p.aborted(&name);
        let mut p = PhoneProc::start(dir.path(), None);
        // The decision reaches the agent from the outbox: the next request.
        p.wait(&task, "approval a2");
        p.send(&format!("decide {task} a2"));
        p.expect("decided");
        let history = p.wait(&task, "finished");
        check_once(&name, &history, &decided);
        p.close();
    }
}
