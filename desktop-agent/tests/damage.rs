//! Damaged local state does not stop the agent, and what is missing is
//! said (issue 14, items 8 to 10, agent side), through the real `tandem`:
//!
//! * a partial last audit-log line (a crash mid-append) is set aside: the
//!   agent starts, prints it, shows it in `tandem status` and records it in
//!   the audit log, whose chain verifies;
//! * a peer file that does not parse is set aside the same way: that device
//!   must pair again, and the others go on;
//! * messages a phone lost before they reached the desktop are recorded (an
//!   audit entry, and a count per device in `tandem status`);
//! * a task whose approval was denied says which in its finish;
//! * a submit beyond the cap on unfinished tasks is refused with
//!   `queue_full`;
//! * the link's outbox is stored as base64, and a peer file written the old
//!   way (arrays of numbers) still loads.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Agent, Phone, Seen, tandem, tandem_status};
use serde_json::Value;
use tandem_proto::message::{Message, TaskEvent};

/// `tandem status --json` once the agent answers, connected.
fn status_json(dir: &Path) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out) = tandem_status(dir, &["status", "--json"]);
        if code == Some(0) && out.contains("\"connected\":true") {
            return serde_json::from_str(&out).unwrap();
        }
        assert!(Instant::now() < deadline, "the agent did not start: {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The audit log's events, in order.
fn audit_events(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Files in `dir` whose name starts with `prefix`.
fn named(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_audit_line_is_set_aside_and_the_agent_starts_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "");
    let agent = Agent::up(dir.path(), &config);
    let mut phone = Phone::pair(&agent, dir.path()).await;
    agent.kill9();
    // A crash in the middle of an append: a line without its end.
    let partial = br#"{"seq":3,"at_ms":1700000000000,"event":"revo"#;
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("audit.log"))
        .unwrap()
        .write_all(partial)
        .unwrap();

    let agent = Agent::up_at(dir.path(), &config, &phone.relay_addr);
    let said = agent.line_starting("warning: audit.log was damaged");
    assert!(said.contains("audit.log.damaged-"), "{said}");
    agent.line_starting("Connected.");
    let status = status_json(dir.path());
    let aside = &status["set_aside"][0];
    assert_eq!(aside["file"], "audit.log", "{status}");
    let moved = aside["moved_to"].as_str().unwrap();
    assert_eq!(std::fs::read(moved).unwrap(), partial);
    let text = tandem(dir.path(), &["status"]);
    assert!(text.contains("Set aside at start: audit.log was damaged"), "{text}");
    // Recorded in the log, which verifies and goes on.
    let events = audit_events(dir.path());
    assert!(
        events.iter().any(|e| e["event"] == "set_aside" && e["file"] == "audit.log"),
        "{events:?}"
    );
    phone.submit("t-1", "count 1 1").await;
    let mut seen = Seen::default();
    while !seen.add(phone.message().await) {}
    assert!(tandem(dir.path(), &["audit", "verify"]).contains("chain intact"));
    assert!(audit_events(dir.path()).iter().any(|e| e["event"] == "task_finished"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_setting_the_audit_tail_aside_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "");
    let agent = Agent::up(dir.path(), &config);
    let phone = Phone::pair(&agent, dir.path()).await;
    agent.kill9();
    let partial = br#"{"seq":3,"at_ms":17"#;
    let log = dir.path().join("audit.log");
    std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(partial).unwrap();
    // Killed after the copy, before the log is cut back.
    let crashed = Agent::up_with(
        dir.path(),
        &config,
        &phone.relay_addr,
        &["--yes"],
        &[("FAILPOINTS", "audit.set_aside.copied=return")],
    );
    assert!(!crashed.wait_exit().success());
    assert!(std::fs::read(&log).unwrap().ends_with(partial), "the log is not cut yet");
    assert_eq!(named(dir.path(), "audit.log.damaged-").len(), 1);
    // The next start sets it aside again and goes on.
    let agent = Agent::up_at(dir.path(), &config, &phone.relay_addr);
    agent.line_starting("warning: audit.log was damaged");
    agent.line_starting("Connected.");
    let copies = named(dir.path(), "audit.log.damaged-");
    assert_eq!(copies.len(), 2);
    for copy in copies {
        assert_eq!(std::fs::read(copy).unwrap(), partial);
    }
    assert!(tandem(dir.path(), &["audit", "verify"]).contains("chain intact"));
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_peer_file_is_set_aside_and_that_device_is_told_to_pair_again() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "");
    let agent = Agent::up(dir.path(), &config);
    let phone = Phone::pair(&agent, dir.path()).await;
    agent.kill9();
    let id = phone.key.public().device_id().to_string();
    let file = common::peer_file(dir.path(), &id);
    std::fs::write(&file, b"{\"v\":1,\"peer\":{\"scope\":").unwrap();

    let agent = Agent::up_at(dir.path(), &config, &phone.relay_addr);
    let said = agent.line_starting(&format!("warning: peers/{id}.json was damaged"));
    assert!(said.contains("pair it again"), "{said}");
    let status = status_json(dir.path());
    assert_eq!(status["set_aside"][0]["file"], format!("peers/{id}.json"), "{status}");
    assert_eq!(status["devices"].as_array().unwrap().len(), 0, "{status}");
    let moved = named(&dir.path().join("peers"), &format!("{id}.json.damaged-"));
    assert_eq!(moved.len(), 1);
    assert_eq!(std::fs::read(&moved[0]).unwrap(), b"{\"v\":1,\"peer\":{\"scope\":");
    assert!(
        audit_events(dir.path())
            .iter()
            .any(|e| e["event"] == "set_aside" && e["file"] == format!("peers/{id}.json"))
    );
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_a_phone_lost_are_recorded_and_shown() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "");
    let agent = Agent::up(dir.path(), &config);
    let mut phone = Phone::pair(&agent, dir.path()).await;
    // The phone keeps one message at most: the first is dropped from its
    // outbox before it ever left, so the second says the first is gone.
    let mut link = serde_json::to_value(&phone.link).unwrap();
    link["outbound"]["limits"]["max_messages"] = 1.into();
    phone.link = serde_json::from_value(link).unwrap();
    let request = Message::HistoryRequest { task_id: None, from_offset: 0 };
    let _lost = phone.link.send(request.encode().unwrap()).unwrap();
    phone.send(&request).await;
    let Message::Choices { .. } = phone.message().await else { panic!("the desktop's choices") };
    let Message::TaskList { .. } = phone.message().await else { panic!("a task list") };

    let status = status_json(dir.path());
    let lost = &status["devices"][0]["lost_messages"];
    assert_eq!((lost["count"].as_u64(), lost["from"].as_u64()), (Some(1), Some(1)), "{status}");
    let text = tandem(dir.path(), &["status"]);
    assert!(text.contains("lost messages: 1 gap(s)"), "{text}");
    let id = phone.key.public().device_id().to_string();
    assert!(audit_events(dir.path()).iter().any(|e| e["event"] == "messages_lost"
        && e["device"] == id
        && e["from"] == 1
        && e["to"] == 1));
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_approval_is_named_in_the_finish() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "");
    let agent = Agent::up(dir.path(), &config);
    let mut phone = Phone::pair(&agent, dir.path()).await;
    phone.submit("t-1", "approve-twice").await;
    let denied = loop {
        let m = phone.message().await;
        let Message::TaskEvent { event, .. } = m else { continue };
        match event {
            TaskEvent::ApprovalRequest { approval_id, .. } => {
                let allow = approval_id == "a2";
                let task_id = "t-1".into();
                phone
                    .send(&Message::ApprovalDecision {
                        task_id,
                        approval_id,
                        allow,
                        remember: false,
                    })
                    .await;
            }
            TaskEvent::Finished { denied, .. } => break denied,
            _ => {}
        }
    };
    assert_eq!(denied, ["step a1"]);
    let shown = tandem(dir.path(), &["tasks", "t-1"]);
    assert!(shown.contains("(denied: step a1)"), "{shown}");
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_beyond_the_unfinished_task_cap_is_refused_with_queue_full() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "[agent]\nmax_unfinished_tasks = 2\n");
    let agent = Agent::up(dir.path(), &config);
    let mut phone = Phone::pair(&agent, dir.path()).await;
    let pidfile = dir.path().join("sleep.pid");
    phone.submit("t-1", &format!("sleep {}", pidfile.display())).await;
    phone.submit("t-2", "count 1 1").await;
    phone.submit("t-3", "count 1 1").await;
    let (code, message) = loop {
        match phone.message().await {
            Message::Refused { task_id, code, message } => {
                assert_eq!(task_id.as_deref(), Some("t-3"));
                break (code, message);
            }
            Message::TaskEvent { task_id, .. } => assert_ne!(task_id, "t-3"),
            _ => {}
        }
    };
    assert_eq!(code, "queue_full");
    assert!(message.contains("2 tasks"), "{message}");
    // Room again once one has finished: the next submit is taken.
    phone.send(&Message::Cancel { task_id: "t-1".into() }).await;
    let mut seen = Seen::default();
    while seen.finished("t-1").is_none() {
        seen.add(phone.message().await);
    }
    phone.submit("t-4", "count 1 1").await;
    while seen.finished("t-4").is_none() {
        seen.add(phone.message().await);
    }
    assert!(audit_events(dir.path()).iter().any(|e| e["event"] == "task_refused"
        && e["task_id"] == "t-3"
        && e["code"] == "queue_full"));
    drop(agent);
}

/// Every `message` in an outbox's `unacked` list, rewritten by `f`.
fn rewrite_messages(v: &mut Value, f: &dyn Fn(&Value) -> Value) -> usize {
    let mut n = 0;
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(list)) = map.get_mut("unacked") {
                for p in list {
                    p["message"] = f(&p["message"]);
                    n += 1;
                }
            }
            for (_, child) in map.iter_mut() {
                n += rewrite_messages(child, f);
            }
        }
        Value::Array(list) => {
            for child in list {
                n += rewrite_messages(child, f);
            }
        }
        _ => {}
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_is_stored_as_base64_and_an_old_peer_file_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "");
    let agent = Agent::up(dir.path(), &config);
    let mut phone = Phone::pair(&agent, dir.path()).await;
    // Events the phone does not acknowledge stay in the agent's outbox.
    phone.submit("t-1", "count 2 1").await;
    let id = phone.key.public().device_id().to_string();
    let file = common::peer_file(dir.path(), &id);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stored: Value = loop {
        let v: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        if v.to_string().contains("\"unacked\":[{") {
            break v;
        }
        assert!(Instant::now() < deadline, "nothing unacknowledged: {v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    agent.kill9();
    // Base64 strings, not arrays of numbers.
    let n = rewrite_messages(&mut stored.clone(), &|m| {
        assert!(m.is_string(), "{m}");
        m.clone()
    });
    assert!(n > 0);
    // Written back the old way: arrays of byte values.
    rewrite_messages(&mut stored, &|m| {
        let bytes = data_encoding::BASE64.decode(m.as_str().unwrap().as_bytes()).unwrap();
        bytes.into_iter().map(Value::from).collect()
    });
    std::fs::write(&file, serde_json::to_vec(&stored).unwrap()).unwrap();

    let agent = Agent::up_at(dir.path(), &config, &phone.relay_addr);
    agent.line_starting("Connected.");
    let mut seen = Seen::default();
    while seen.finished("t-1").is_none() {
        seen.add(phone.message().await);
    }
    phone.submit("t-2", "count 1 1").await;
    while seen.finished("t-2").is_none() {
        seen.add(phone.message().await);
    }
    assert_eq!(status_json(dir.path())["devices"].as_array().unwrap().len(), 1);
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_rotates_and_verify_checks_every_segment() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "[agent]\naudit_max_bytes = 1000\n");
    let agent = Agent::up(dir.path(), &config);
    let mut phone = Phone::pair(&agent, dir.path()).await;
    let mut seen = Seen::default();
    for i in 0..4 {
        let id = format!("t-{i}");
        phone.submit(&id, "count 1 1").await;
        while seen.finished(&id).is_none() {
            seen.add(phone.message().await);
        }
    }
    let segments = named(dir.path(), "audit.log.");
    let segments: Vec<_> = segments
        .into_iter()
        .filter(|p| p.extension().unwrap().to_str().unwrap().parse::<u64>().is_ok())
        .collect();
    assert!(segments.len() >= 2, "{segments:?}");
    assert!(std::fs::metadata(dir.path().join("audit.log")).unwrap().len() < 2000);
    let verified = tandem(dir.path(), &["audit", "verify"]);
    assert!(
        verified.contains(&format!("in {} file(s), chain intact", segments.len() + 1)),
        "{verified}"
    );
    // Restarted: the agent resumes the chain in the newest segment.
    agent.kill9();
    let agent = Agent::up_at(dir.path(), &config, &phone.relay_addr);
    agent.line_starting("Connected.");
    phone.submit("t-9", "count 1 1").await;
    while seen.finished("t-9").is_none() {
        seen.add(phone.message().await);
    }
    assert!(tandem(dir.path(), &["audit", "verify"]).contains("chain intact"));
    // An edit in the oldest segment is found by `tandem audit verify`.
    let oldest = dir.path().join("audit.log.1");
    let text = std::fs::read_to_string(&oldest).unwrap();
    std::fs::write(&oldest, text.replacen("\"seq\":1,", "\"seq\":7,", 1)).unwrap();
    let (code, _) = tandem_status(dir.path(), &["audit", "verify"]);
    assert_ne!(code, Some(0));
    drop(agent);
}
