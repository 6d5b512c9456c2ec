//! The agent's life around its tasks: a queue that runs one task at a time
//! and survives a `kill -9` (nothing accepted is lost, nothing repeated),
//! `tandem status` / `tasks` / `tasks --follow` / `scope` / `revoke` against
//! the running agent, and a silent phone detached and re-attached.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Agent, Phone, Seen, tandem, tandem_status};
use tandem_proto::delivery::OutboxRoom;
use tandem_proto::message::{FinishStatus, Message, TaskEvent};

/// Read messages until `done` says so (each message is recorded first).
async fn until(phone: &mut Phone, seen: &mut Seen, done: impl Fn(&Seen) -> bool) {
    while !done(seen) {
        seen.add(phone.message().await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_tasks_run_in_order_and_survive_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "[agent]\nmax_concurrent_tasks = 1\n");
    let agent = Agent::up(dir.path(), &config);
    let mut phone = Phone::pair(&agent, dir.path()).await;
    let mut seen = Seen::default();

    phone.submit("t1", "count 600 20").await;
    phone.submit("t2", "count 3 1").await;
    phone.submit("t3", "count 3 1").await;
    until(&mut phone, &mut seen, |s| s.progress("t1").len() >= 5 && s.tasks.contains_key("t3"))
        .await;
    assert_eq!(seen.progress("t2"), ["queued: 1 task(s) ahead"]);
    assert_eq!(seen.progress("t3"), ["queued: 2 task(s) ahead"]);
    let Some((_, TaskEvent::Accepted { text, .. })) = seen.tasks["t2"].first() else {
        panic!("t2 starts with accepted")
    };
    assert_eq!(text.as_deref(), Some("count 3 1"));

    // The running agent lists them.
    let listed = tandem(dir.path(), &["tasks"]);
    let state = |id: &str| {
        listed
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} in {listed}"))
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        (state("t1"), state("t2"), state("t3")),
        ("running".into(), "queued".into(), "queued".into())
    );

    // A crash mid-stream: the relay (in process) goes down with it.
    agent.kill9();
    let agent = Agent::up_at(dir.path(), &config, &phone.relay_addr);
    agent.line_starting("Connected.");
    until(&mut phone, &mut seen, |s| s.finished("t3").is_some()).await;

    // t1 was interrupted, said so, and the queue went on in order.
    let (status, summary) = seen.finished("t1").unwrap();
    assert_eq!(status, FinishStatus::Failed);
    assert!(summary.starts_with("interrupted"), "{summary}");
    assert_eq!(seen.finished("t2").unwrap().0, FinishStatus::Succeeded);
    assert_eq!(&seen.progress("t2")[1..], ["n=0", "n=1", "n=2"]);
    assert_eq!(&seen.progress("t3")[1..], ["n=0", "n=1", "n=2"]);
    // Every event of every task exactly once, in order, across the crash;
    // t1's numbered lines have no gap and no repeat.
    seen.assert_contiguous();
    let t1: Vec<String> = seen.progress("t1");
    let want: Vec<String> = (0..t1.len()).map(|i| format!("n={i}")).collect();
    assert_eq!(t1, want);

    // The history survived the restart: replay t2 from offset 1.
    phone.send(&Message::HistoryRequest { task_id: Some("t2".into()), from_offset: 1 }).await;
    for (offset, event) in &seen.tasks["t2"][1..] {
        let Message::TaskEvent { offset: o, event: e, .. } = phone.message().await else {
            panic!("a task event")
        };
        assert_eq!((&o, &e), (offset, event));
    }
    assert!(matches!(phone.message().await, Message::HistoryEnd { more: false, .. }));
    // And the task list, newest first.
    phone.send(&Message::HistoryRequest { task_id: None, from_offset: 0 }).await;
    // What the phone may pick for its next task comes first.
    let Message::Choices { default_executor, .. } = phone.message().await else {
        panic!("the desktop's choices")
    };
    assert_eq!(default_executor, "fixture");
    let Message::TaskList { tasks } = phone.message().await else { panic!("a task list") };
    let ids: Vec<&str> = tasks.iter().map(|t| t.task_id.as_str()).collect();
    assert_eq!(ids, ["t3", "t2", "t1"]);
    phone.client.close().await;
    drop(agent);
    // With the agent stopped, `tandem tasks` reads the history itself.
    let listed = tandem(dir.path(), &["tasks"]);
    assert!(listed.lines().any(|l| l.starts_with("t3") && l.contains("succeeded")), "{listed}");
    let t2 = tandem(dir.path(), &["tasks", "t2"]);
    assert!(t2.contains("finished succeeded: counted 3"), "{t2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follow_scope_and_revoke_reach_the_running_agent() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "");
    let agent = Agent::up(dir.path(), &config);
    let mut phone = Phone::pair(&agent, dir.path()).await;

    let status = tandem(dir.path(), &["status"]);
    assert!(status.contains("Agent running"), "{status}");
    assert!(status.contains("(connected)"), "{status}");
    assert!(status.contains("Ana's phone"), "{status}");
    // A second agent on the same data dir is refused.
    let second = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--config"])
        .arg(&config)
        .arg("run")
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already running"));

    // `tandem tasks --follow` prints a task's events as they happen.
    let mut follow = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["tasks", "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = follow.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    // Wait until the follower is subscribed (it prints the task list first).
    assert!(lines.recv_timeout(Duration::from_secs(20)).unwrap().contains("No tasks"));
    phone.submit("t-f", "count 3 1").await;
    let mut followed = Vec::new();
    while !followed.iter().any(|l: &String| l.contains("finished")) {
        followed.push(lines.recv_timeout(Duration::from_secs(20)).unwrap());
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(followed[0].starts_with("t-f #0") && followed[0].contains("accepted"), "{followed:?}");
    assert!(followed.iter().any(|l| l.contains("n=2")), "{followed:?}");

    let mut seen = Seen::default();
    until(&mut phone, &mut seen, |s| s.finished("t-f").is_some()).await;

    // The computer is kept awake while a task runs, released when none does
    // (no D-Bus here: the attempt is reported as unavailable).
    let awake = |dir: &std::path::Path| {
        let v: serde_json::Value =
            serde_json::from_str(&tandem(dir, &["status", "--json"])).unwrap();
        assert_eq!(v["key_store"], "file");
        v["keep_awake"]["state"].as_str().unwrap().to_owned()
    };
    phone.submit("t-k", "count 100 20").await;
    until(&mut phone, &mut seen, |s| s.progress("t-k").len() >= 2).await;
    let during = awake(dir.path());
    assert!(during == "held" || during == "unavailable", "{during}");
    until(&mut phone, &mut seen, |s| s.finished("t-k").is_some()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while awake(dir.path()) != "released" {
        assert!(Instant::now() < deadline, "keep-awake released when the queue is empty");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Scope and revoke change the running agent at once.
    tandem(dir.path(), &["scope", "Ana's phone", "view"]);
    phone.submit("t-v", "count 1 1").await;
    assert!(matches!(phone.message().await, Message::Refused { code, .. } if code == "scope"));
    let revoked = tandem(dir.path(), &["revoke", "Ana's phone"]);
    assert!(revoked.contains("The relay refuses it from now on"), "{revoked}");
    let devices = tandem(dir.path(), &["devices"]);
    assert!(devices.contains("No paired devices"), "{devices}");
    drop(agent);
    let (code, out) = tandem_status(dir.path(), &["status"]);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("not running"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_phone_is_detached_and_re_attaches() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "[agent]\nidle_detach_secs = 2\n");
    let agent = Agent::up(dir.path(), &config);
    let mut phone = Phone::pair(&agent, dir.path()).await;
    let mut seen = Seen::default();
    phone.submit("t", "count 150 40").await;
    // Silent for 2 s: detached, told once; progress stops arriving.
    let started = Instant::now();
    until(&mut phone, &mut seen, |s| s.other.iter().any(|m| matches!(m, Message::Detached { .. })))
        .await;
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(seen.other, [Message::Detached { idle_secs: 2 }]);
    let before = seen.tasks["t"].len() as u64;
    // Whatever was in flight drains; then nothing but the finish.
    until(&mut phone, &mut seen, |s| s.finished("t").is_some()).await;
    let (last_offset, _) = *seen.tasks["t"].last().unwrap();
    let live = seen.tasks["t"].len() as u64;
    assert!(
        live < last_offset + 1,
        "progress stopped while detached ({live} of {})",
        last_offset + 1
    );
    assert!(live - before < 30, "progress stopped while detached");
    // Re-attach by asking for the history from where it stopped.
    let (resume_from, _) = seen.tasks["t"][seen.tasks["t"].len() - 2];
    phone
        .send(&Message::HistoryRequest { task_id: Some("t".into()), from_offset: resume_from + 1 })
        .await;
    let mut replay = Vec::new();
    loop {
        match phone.message().await {
            Message::TaskEvent { offset, .. } => replay.push(offset),
            Message::HistoryEnd { next_offset, more: false, .. } => {
                assert_eq!(next_offset, last_offset + 1);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let want: Vec<u64> = (resume_from + 1..=last_offset).collect();
    assert_eq!(replay, want);
    // Attached again: the next task streams live.
    phone.submit("t2", "count 2 1").await;
    let mut seen2 = Seen::default();
    until(&mut phone, &mut seen2, |s| s.finished("t2").is_some()).await;
    assert_eq!(&seen2.progress("t2"), &["n=0", "n=1"]);
    phone.client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_past_the_event_limit_says_what_was_pruned() {
    // Regression: the trimmed `earliest` was lost from the live record.
    use tandem_agent::executor::ExecutorConfig;
    use tandem_agent::history::History;
    use tandem_agent::peers::Scope;
    use tandem_agent::tasks::{TaskManager, TaskOptions};
    let dir = tempfile::tempdir().unwrap();
    let fixture: ExecutorConfig = serde_json::from_value(serde_json::json!({
        "name": "fixture", "type": "jsonl",
        "program": common::fixture_agent().display().to_string(),
    }))
    .unwrap();
    let history = History::open(dir.path()).unwrap().with_limits(10, 10);
    let (mut tm, mut rx) =
        TaskManager::new(vec![fixture], history, TaskOptions::default()).unwrap();
    let dev = tandem_proto::DeviceKey::generate(&mut tandem_proto::entropy::Entropy::os())
        .unwrap()
        .public()
        .device_id();
    tm.submit(
        dev,
        Scope::Approve,
        "t".into(),
        "count 100 5",
        tandem_agent::tasks::Wanted::default(),
    )
    .await
    .unwrap();
    for _ in 0..30 {
        let u = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
        tm.update(u).await.unwrap();
    }
    let rec = tm.record("t").unwrap().unwrap();
    assert_eq!(rec.next_offset - rec.earliest, 10, "{rec:?}");
    let all = OutboxRoom { messages: 100, bytes: 1 << 20 };
    let out = tm.history(dev, "t", 0, all, true).unwrap();
    assert!(
        matches!(&out[0].1, Message::HistoryUnavailable { earliest, .. } if *earliest == rec.earliest)
    );
    let Message::HistoryEnd { next_offset, more, .. } = &out.last().unwrap().1 else { panic!() };
    assert_eq!((*next_offset, *more), (rec.next_offset, false));
    // An outbox with room for five messages: three events, `more` set.
    let out = tm.history(dev, "t", 0, OutboxRoom { messages: 5, ..all }, false).unwrap();
    assert_eq!(out.len(), 5);
    let Message::HistoryEnd { next_offset, more, .. } = &out[4].1 else { panic!() };
    assert_eq!((*next_offset, *more), (rec.earliest + 3, true));
    // No room, nothing waiting for an acknowledgement: one event still goes.
    let out = tm.history(dev, "t", 0, OutboxRoom { messages: 0, bytes: 0 }, true).unwrap();
    assert_eq!(out.len(), 3);
    tm.cancel_all().await;
}
