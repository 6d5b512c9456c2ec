//! `tandem cancel TASK` for the desktop user (issue 13): through the
//! running agent a running task is cancelled (its process group stopped)
//! and a queued one never runs, both found by an id prefix, and the phone
//! sees each finish `cancelled`; an unknown, ambiguous or finished task is
//! refused with exit status 1. With no agent running, a queued task is
//! cancelled in the history (it never runs after the restart, and the phone
//! hears of it then), and an interrupted one is reported with exit status 3.
//! The audit log records each cancel `by` the desktop.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, Phone, Seen};
use tandem_proto::message::FinishStatus;

async fn until(phone: &mut Phone, seen: &mut Seen, done: impl Fn(&Seen) -> bool) {
    while !done(seen) {
        seen.add(phone.message().await);
    }
}

/// `tandem cancel TASK`: (exit code, stdout, stderr).
fn cancel(dir: &Path, task: &str) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("--data-dir")
        .arg(dir)
        .args(["cancel", task])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn is_alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn never_ran(seen: &Seen, task: &str) {
    let ran: Vec<String> =
        seen.progress(task).into_iter().filter(|p| p.starts_with("n=")).collect();
    assert!(ran.is_empty(), "{task} ran: {ran:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tandem_cancel_stops_running_and_queued_tasks_and_says_when_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "[agent]\nmax_concurrent_tasks = 1\n");
    let agent = Agent::up(dir.path(), &config);
    let mut phone = Phone::pair(&agent, dir.path()).await;
    let mut seen = Seen::default();

    let pidfile = dir.path().join("sleeper.pid");
    phone.submit("run-7f3a", &format!("sleep {}", pidfile.display())).await;
    phone.submit("queued-19c2", "count 3 1").await;
    phone.submit("queued-19d4", "count 3 1").await;
    until(&mut phone, &mut seen, |s| {
        s.progress("run-7f3a").iter().any(|p| p == "sleeping")
            && s.tasks.contains_key("queued-19d4")
    })
    .await;
    let pid = std::fs::read_to_string(&pidfile).unwrap();

    // Refusals first: nothing changes.
    let (code, _, err) = cancel(dir.path(), "nope");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no task matches `nope`"), "{err}");
    let (code, _, err) = cancel(dir.path(), "queued-19");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("matches several tasks: queued-19c2, queued-19d4"), "{err}");

    // A queued task, by a unique prefix: finished at once, never run.
    let (code, out, err) = cancel(dir.path(), "queued-19c");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("Cancelled task queued-19c2 before it started"), "{out}");
    until(&mut phone, &mut seen, |s| s.finished("queued-19c2").is_some()).await;
    assert_eq!(
        seen.finished("queued-19c2").unwrap(),
        (FinishStatus::Cancelled, "cancelled from the desktop before it started".into())
    );

    // The running one: its executor's process group is stopped.
    let (code, out, err) = cancel(dir.path(), "run");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("Cancelling task run-7f3a"), "{out}");
    until(&mut phone, &mut seen, |s| s.finished("run-7f3a").is_some()).await;
    assert_eq!(
        seen.finished("run-7f3a").unwrap(),
        (FinishStatus::Cancelled, "cancelled from the desktop".into())
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while is_alive(&pid) {
        assert!(Instant::now() < deadline, "the cancelled executor is still running");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The queue goes on with the task that was not cancelled.
    until(&mut phone, &mut seen, |s| s.finished("queued-19d4").is_some()).await;
    assert_eq!(seen.finished("queued-19d4").unwrap().0, FinishStatus::Succeeded);
    never_ran(&seen, "queued-19c2");

    // A finished task cannot be cancelled.
    let (code, _, err) = cancel(dir.path(), "run-7f3a");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("task run-7f3a has already finished (cancelled)"), "{err}");

    // With no agent running: an interrupted task is reported (status 3), a
    // queued one is cancelled in the history and never runs.
    phone.submit("long", "count 600 20").await;
    phone.submit("late", "count 3 1").await;
    until(&mut phone, &mut seen, |s| s.progress("long").len() >= 3 && s.tasks.contains_key("late"))
        .await;
    agent.kill9();
    let (code, out, _) = cancel(dir.path(), "long");
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("The agent is not running") && out.contains("interrupted"), "{out}");
    let (code, out, err) = cancel(dir.path(), "late");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("Cancelled task late before it started"), "{out}");
    let agent = Agent::up_at(dir.path(), &config, &phone.relay_addr);
    agent.line_starting("Connected.");
    until(&mut phone, &mut seen, |s| s.finished("long").is_some() && s.finished("late").is_some())
        .await;
    assert_eq!(seen.finished("long").unwrap().0, FinishStatus::Failed);
    assert_eq!(
        seen.finished("late").unwrap(),
        (FinishStatus::Cancelled, "cancelled from the desktop before it started".into())
    );
    never_ran(&seen, "late");
    seen.assert_contiguous();
    phone.client.close().await;
    drop(agent);

    // Each cancel is in the audit log, by the desktop; the chain verifies.
    let verified = common::tandem(dir.path(), &["audit", "verify"]);
    assert!(verified.contains("chain intact"), "{verified}");
    let log = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    let cancels: Vec<String> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "cancelled")
        .map(|v| format!("{}:{}", v["by"].as_str().unwrap(), v["task_id"].as_str().unwrap()))
        .collect();
    assert_eq!(cancels, ["desktop:queued-19c2", "desktop:run-7f3a", "desktop:late"]);
}
