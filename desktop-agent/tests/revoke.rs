//! Revocation and scope changes bite on tasks (issue 13): a device that is
//! revoked, or lowered below `submit`, has its running tasks cancelled (the
//! executor's process group is gone) and its queued ones dropped without
//! running; the other phones see them finish with the reason; the audit log
//! records each stop. This holds when the revocation is made while the
//! agent is down (after a `kill -9`), and when the device's file is deleted
//! behind the running agent's back. A device lowered to `submit` can no
//! longer decide approvals.
//!
//! Real `tandem up` processes (with their relay) and phones speaking the
//! real protocol; the `jsonl` fixture executor (`tests/fixtures/agent.py`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Agent, Phone, Seen, tandem, tandem_status};
use tandem_client::ClientError;
use tandem_proto::ErrorCode;
use tandem_proto::message::{FinishStatus, Message, TaskEvent};

/// Read messages until `done` says so (each message is recorded first).
async fn until(phone: &mut Phone, seen: &mut Seen, done: impl Fn(&Seen) -> bool) {
    while !done(seen) {
        seen.add(phone.message().await);
    }
}

/// `tandem up --pair` on `listen`: shows a pairing code although a phone
/// is paired already (to pair a second one on the same relay port).
fn up_pairing(dir: &Path, config: &Path, listen: &str) -> Agent {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
    cmd.arg("--data-dir")
        .arg(dir)
        .arg("--config")
        .arg(config)
        .args(["--name", "build-box", "up", "--listen", listen, "--pair", "--yes", "--print-url"])
        .args(["--no-terminal-qr", "--qr-png"])
        .arg(dir.join("qr.png"))
        .stderr(Stdio::null());
    Agent::spawn(cmd)
}

/// An agent with two paired phones: `(agent, a, b)`.
async fn two_phones(dir: &Path, config: &Path) -> (Agent, Phone, Phone) {
    let first = Agent::up(dir, config);
    let a = Phone::pair(&first, dir).await;
    first.kill9();
    let agent = up_pairing(dir, config, &a.relay_addr);
    let b = Phone::pair(&agent, dir).await;
    (agent, a, b)
}

fn is_alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn wait_gone(pid: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while is_alive(pid) {
        assert!(Instant::now() < deadline, "the cancelled executor (pid {pid}) is still running");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The audit log's `task_stopped` entries as (task, reason, was).
fn stops(dir: &Path) -> Vec<(String, String, String)> {
    let verified = tandem(dir, &["audit", "verify"]);
    assert!(verified.contains("chain intact"), "{verified}");
    std::fs::read_to_string(dir.join("audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "task_stopped")
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap().to_owned();
            (s("task_id"), s("reason"), s("was"))
        })
        .collect()
}

/// No `n=…` line: the `count` fixture never ran.
fn never_ran(seen: &Seen, task: &str) {
    let ran: Vec<String> =
        seen.progress(task).into_iter().filter(|p| p.starts_with("n=")).collect();
    assert!(ran.is_empty(), "{task} ran: {ran:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_device_cancels_its_running_task_and_drops_its_queued_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "[agent]\nmax_concurrent_tasks = 1\n");
    let (agent, mut a, mut b) = two_phones(dir.path(), &config).await;
    let mut seen = Seen::default();

    let pidfile = dir.path().join("sleeper.pid");
    a.submit("t-run", &format!("sleep {}", pidfile.display())).await;
    a.submit("t-queued", "count 3 1").await;
    until(&mut b, &mut seen, |s| {
        s.progress("t-run").iter().any(|p| p == "sleeping") && s.tasks.contains_key("t-queued")
    })
    .await;
    b.submit("t-other", "count 2 1").await;
    until(&mut b, &mut seen, |s| s.tasks.contains_key("t-other")).await;
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    assert!(is_alive(&pid));

    let a_id = a.key.public().device_id().to_string();
    let out = tandem(dir.path(), &["revoke", &a_id]);
    assert!(out.contains("Stopped 2 of its task(s)"), "{out}");
    assert!(out.contains("The relay refuses it from now on"), "{out}");
    until(&mut b, &mut seen, |s| {
        ["t-run", "t-queued", "t-other"].iter().all(|t| s.finished(t).is_some())
    })
    .await;

    // The running task was cancelled, its executor's process group stopped.
    let (status, summary) = seen.finished("t-run").unwrap();
    assert_eq!(status, FinishStatus::Cancelled);
    assert_eq!(
        summary,
        format!("cancelled: its device {a_id} is no longer paired with this computer")
    );
    wait_gone(&pid);
    // The queued one never started.
    let (status, summary) = seen.finished("t-queued").unwrap();
    assert_eq!(status, FinishStatus::Rejected);
    assert_eq!(
        summary,
        format!("not run: its device {a_id} is no longer paired with this computer")
    );
    never_ran(&seen, "t-queued");
    // The other phone's task was not touched: it ran next.
    assert_eq!(seen.finished("t-other").unwrap().0, FinishStatus::Succeeded);
    assert_eq!(&seen.progress("t-other")[1..], ["n=0", "n=1"]);
    seen.assert_contiguous();

    // The revoked phone is refused by the relay.
    let (_, record) = a.link.send(b"{}".to_vec()).unwrap();
    match a.client.send(a.desktop, record).await {
        Err(ClientError::Refused(code, _)) => assert_eq!(code, ErrorCode::NotAuthorized),
        other => panic!("a revoked phone's frame was not refused: {other:?}"),
    }
    b.client.close().await;
    drop(agent);
    assert_eq!(
        stops(dir.path()),
        [
            ("t-run".to_owned(), "revoked".to_owned(), "running".to_owned()),
            ("t-queued".to_owned(), "revoked".to_owned(), "queued".to_owned()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_revoked_while_the_agent_is_down_gets_nothing_run_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "[agent]\nmax_concurrent_tasks = 1\n");
    let (agent, mut a, mut b) = two_phones(dir.path(), &config).await;
    let mut seen = Seen::default();

    a.submit("t-long", "count 600 20").await;
    a.submit("t-queued", "count 3 1").await;
    until(&mut b, &mut seen, |s| {
        s.progress("t-long").len() >= 3 && s.tasks.contains_key("t-queued")
    })
    .await;

    // A crash, then the revocation while no agent runs (it edits the peers
    // directory only; the agent's relay is down with it).
    agent.kill9();
    let a_id = a.key.public().device_id().to_string();
    let out = tandem(dir.path(), &["revoke", &a_id]);
    assert!(out.contains("Removed Ana's phone"), "{out}");
    assert!(out.contains("2 unfinished task(s)"), "{out}");
    assert!(out.contains("could not be told now"), "{out}");

    let agent = Agent::up_at(dir.path(), &config, &b.relay_addr);
    agent.line_starting("Connected.");
    until(&mut b, &mut seen, |s| {
        s.finished("t-long").is_some() && s.finished("t-queued").is_some()
    })
    .await;
    let (status, summary) = seen.finished("t-long").unwrap();
    assert_eq!(status, FinishStatus::Failed);
    assert!(summary.starts_with("interrupted"), "{summary}");
    let (status, summary) = seen.finished("t-queued").unwrap();
    assert_eq!(status, FinishStatus::Rejected);
    assert!(summary.contains("no longer paired"), "{summary}");
    never_ran(&seen, "t-queued");
    seen.assert_contiguous();
    // Nor does the history show a run, and nothing is left to run.
    let events = tandem(dir.path(), &["tasks", "t-queued"]);
    assert!(!events.contains("n=0"), "{events}");
    let status = tandem(dir.path(), &["status"]);
    assert!(status.contains("0 running, 0 queued"), "{status}");

    // The revocation the relay missed reached it when the agent connected.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, record) = a.link.send(b"{}".to_vec()).unwrap();
        match a.client.send(a.desktop, record).await {
            Err(ClientError::Refused(code, _)) => {
                assert_eq!(code, ErrorCode::NotAuthorized);
                break;
            }
            other => assert!(Instant::now() < deadline, "still routed: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.client.close().await;
    drop(agent);
    assert_eq!(
        stops(dir.path()),
        [("t-queued".to_owned(), "revoked".to_owned(), "queued".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_file_deleted_behind_the_agents_back_stops_its_task() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "");
    let agent = Agent::up(dir.path(), &config);
    let mut phone = Phone::pair(&agent, dir.path()).await;
    let mut seen = Seen::default();
    let pidfile = dir.path().join("sleeper.pid");
    phone.submit("t-run", &format!("sleep {}", pidfile.display())).await;
    until(&mut phone, &mut seen, |s| s.progress("t-run").iter().any(|p| p == "sleeping")).await;
    let pid = std::fs::read_to_string(&pidfile).unwrap();

    // Another process revokes it (the phone is silent: only the agent's own
    // look at the peers directory can notice). Deleted again should the
    // agent's own write of the file (the phone's last ack) land just after:
    // a deletion racing a write is not a revocation `tandem revoke` makes.
    let id = phone.key.public().device_id().to_string();
    let file = dir.path().join("peers").join(format!("{id}.json"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while is_alive(&pid) {
        let _ = std::fs::remove_file(&file);
        assert!(Instant::now() < deadline, "the executor (pid {pid}) is still running");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!file.exists(), "the agent brought the revoked device back");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let events = tandem(dir.path(), &["tasks", "t-run"]);
        if events.contains("finished cancelled: cancelled: its device") {
            break;
        }
        assert!(Instant::now() < deadline, "{events}");
        std::thread::sleep(Duration::from_millis(100));
    }
    phone.client.close().await;
    drop(agent);
    assert_eq!(
        stops(dir.path()),
        [("t-run".to_owned(), "revoked".to_owned(), "running".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_a_scope_takes_approvals_then_tasks_from_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "[agent]\nmax_concurrent_tasks = 1\n");
    let agent = Agent::up(dir.path(), &config);
    let mut phone = Phone::pair(&agent, dir.path()).await;
    let mut seen = Seen::default();

    phone.submit("t-ask", "approve-twice").await;
    phone.submit("t-queued", "count 3 1").await;
    until(&mut phone, &mut seen, |s| {
        s.tasks.get("t-ask").is_some_and(|evs| {
            evs.iter().any(|(_, e)| matches!(e, TaskEvent::ApprovalRequest { .. }))
        }) && s.tasks.contains_key("t-queued")
    })
    .await;

    // Lowered to submit: its decision on the pending approval is refused,
    // and the approval stays pending (the task goes on waiting).
    let out = tandem(dir.path(), &["scope", "Ana's phone", "submit"]);
    assert!(out.contains("scope is now submit") && !out.contains("Stopped"), "{out}");
    phone
        .send(&Message::ApprovalDecision {
            task_id: "t-ask".into(),
            approval_id: "a1".into(),
            allow: true,
            remember: false,
        })
        .await;
    let refused = loop {
        match phone.message().await {
            m @ Message::Refused { .. } => break m,
            other => {
                seen.add(other);
            }
        }
    };
    assert!(
        matches!(&refused, Message::Refused { code, task_id: Some(t), .. } if code == "scope" && t == "t-ask"),
        "{refused:?}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&tandem(dir.path(), &["status", "--json"])).unwrap();
    assert_eq!(status["tasks"]["pending_approvals"], 1, "{status}");
    assert_eq!(status["tasks"]["running"], 1, "{status}");

    // Lowered to view: it may no longer run tasks, so they stop. It still
    // watches: it sees both finish, with the reason.
    let out = tandem(dir.path(), &["scope", "Ana's phone", "view"]);
    assert!(out.contains("Stopped 2 of its task(s)"), "{out}");
    until(&mut phone, &mut seen, |s| {
        s.finished("t-ask").is_some() && s.finished("t-queued").is_some()
    })
    .await;
    let id = phone.key.public().device_id().to_string();
    let why = format!("its device {id} may no longer run tasks (scope lowered to view)");
    assert_eq!(
        seen.finished("t-ask").unwrap(),
        (FinishStatus::Cancelled, format!("cancelled: {why}"))
    );
    assert_eq!(
        seen.finished("t-queued").unwrap(),
        (FinishStatus::Rejected, format!("not run: {why}"))
    );
    assert!(
        !seen.tasks["t-ask"].iter().any(|(_, e)| matches!(e, TaskEvent::ApprovalResolved { .. })),
        "nobody allowed the step"
    );
    never_ran(&seen, "t-queued");
    seen.assert_contiguous();
    let (code, out) = tandem_status(dir.path(), &["status"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("0 running, 0 queued, 0 approval(s) waiting"), "{out}");
    phone.client.close().await;
    drop(agent);
    assert_eq!(
        stops(dir.path()),
        [
            ("t-ask".to_owned(), "scope:view".to_owned(), "running".to_owned()),
            ("t-queued".to_owned(), "scope:view".to_owned(), "queued".to_owned()),
        ]
    );
}
