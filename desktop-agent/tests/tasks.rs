//! A task from the phone runs through a configured `jsonl` executor: the
//! phone sees progress, a tool call and its result, an approval request it
//! answers, and the finish; then it replays the task's history from an
//! offset. A view-only device may watch but not submit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Agent, Phone, tandem};
use tandem_proto::message::{FinishStatus, Message, TaskEvent};

const AGENT_SCRIPT: &str = r#"#!/bin/sh
read task
echo '{"type":"progress","text":"reading crates/foo"}'
echo '{"type":"tool_call","call_id":"c1","name":"bash","input":{"command":"cargo test"}}'
echo '{"type":"tool_result","call_id":"c1","output":"1 failed","is_error":true}'
echo '{"type":"approval_request","approval_id":"a1","summary":"edit src/lib.rs","detail":"+fix"}'
read decision
case "$decision" in
  *'"allow":true'*) echo '{"type":"progress","text":"allowed: editing"}' ;;
  *) echo '{"type":"progress","text":"denied"}' ;;
esac
echo '{"type":"finished","status":"succeeded","summary":"fixed the test"}'
"#;

fn event(m: &Message) -> (&str, u64, &TaskEvent) {
    match m {
        Message::TaskEvent { task_id, offset, event, .. } => (task_id.as_str(), *offset, event),
        other => panic!("expected a task event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_streams_its_events_asks_for_approval_and_replays_its_history() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("agent.sh");
    std::fs::write(&script, AGENT_SCRIPT).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[executor]]\nname = \"fixture\"\ntype = \"jsonl\"\nprogram = \"{}\"\n",
            script.display()
        ),
    )
    .unwrap();
    let agent = Agent::up(dir.path(), &config);
    let mut phone = Phone::pair(&agent, dir.path()).await;

    phone
        .send(&Message::TaskSubmit {
            task_id: "t-1".into(),
            text: "fix the failing test".into(),
            workspace: None,
            executor: None,
            resume: None,
        })
        .await;
    let mut seen = Vec::new();
    loop {
        let m = phone.message().await;
        let (task, offset, ev) = event(&m);
        assert_eq!(task, "t-1");
        assert_eq!(offset, seen.len() as u64, "offsets have no gaps");
        let ev = ev.clone();
        seen.push(m.clone());
        match &ev {
            TaskEvent::ApprovalRequest { approval_id, summary, .. } => {
                assert_eq!(summary, "edit src/lib.rs");
                phone
                    .send(&Message::ApprovalDecision {
                        task_id: "t-1".into(),
                        approval_id: approval_id.clone(),
                        allow: true,
                        remember: false,
                    })
                    .await;
            }
            TaskEvent::Finished { status, summary, .. } => {
                assert_eq!(*status, FinishStatus::Succeeded);
                assert_eq!(summary, "fixed the test");
                break;
            }
            _ => {}
        }
    }
    let kinds: Vec<String> = seen
        .iter()
        .map(|m| match event(m).2 {
            TaskEvent::Accepted { .. } => "accepted".to_owned(),
            TaskEvent::Progress { text } => format!("progress:{text}"),
            TaskEvent::ToolCall { name, .. } => format!("tool_call:{name}"),
            TaskEvent::ToolResult { is_error, .. } => format!("tool_result:{is_error}"),
            TaskEvent::Diff { path, .. } => format!("diff:{path}"),
            TaskEvent::ApprovalRequest { .. } => "approval_request".to_owned(),
            TaskEvent::ApprovalResolved { allow, by, .. } => {
                format!("resolved:{allow}:{}", by.starts_with("phone:"))
            }
            TaskEvent::Finished { .. } => "finished".to_owned(),
            TaskEvent::FollowUp { .. } => "follow_up".to_owned(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "accepted",
            "progress:reading crates/foo",
            "tool_call:bash",
            "tool_result:true",
            "approval_request",
            "resolved:true:true",
            "progress:allowed: editing",
            "finished",
        ]
    );
    // A second decision for the same approval is refused: decided once.
    phone
        .send(&Message::ApprovalDecision {
            task_id: "t-1".into(),
            approval_id: "a1".into(),
            allow: false,
            remember: false,
        })
        .await;
    assert!(
        matches!(phone.message().await, Message::Refused { code, .. } if code == "not_pending")
    );

    // History from offset 3 replays the rest, then says where it ends.
    phone.send(&Message::HistoryRequest { task_id: Some("t-1".into()), from_offset: 3 }).await;
    for expected in &seen[3..] {
        assert_eq!(&phone.message().await, expected);
    }
    assert_eq!(
        phone.message().await,
        Message::HistoryEnd { task_id: "t-1".into(), next_offset: seen.len() as u64, more: false }
    );

    // A view-only device may not submit: `tandem scope` changes the running
    // agent's own state through its control socket, no restart needed.
    let scoped = tandem(dir.path(), &["scope", "ana's phone", "view"]);
    assert!(scoped.contains("view"), "{scoped}");
    phone
        .send(&Message::TaskSubmit {
            task_id: "t-2".into(),
            text: "rm -rf".into(),
            workspace: None,
            executor: None,
            resume: None,
        })
        .await;
    assert!(matches!(phone.message().await, Message::Refused { code, .. } if code == "scope"));
    phone.client.close().await;
    drop(agent);

    // Every instruction and decision is in the audit log, whose chain verifies;
    // the task text itself is not.
    let verified = tandem(dir.path(), &["audit", "verify"]);
    assert!(verified.contains("chain intact"), "{verified}");
    let log = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    for event in [
        "paired",
        "task_submitted",
        "approval_requested",
        "approval_decided",
        "task_finished",
        "scope_changed",
        "task_refused",
    ] {
        assert!(
            log.contains(&format!("\"event\":\"{event}\"")),
            "{event} missing from the audit log:\n{log}"
        );
    }
    assert!(!log.contains("fix the failing test"), "the audit log holds no task text");
    // An edited entry is caught.
    let edited = log.replacen("\"allow\":true", "\"allow\":false", 1);
    std::fs::write(dir.path().join("audit.log"), edited).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a tampered audit log must fail verification");
}

async fn until_finished(phone: &mut Phone, seen: &mut common::Seen, task: &str) {
    while seen.finished(task).is_none() {
        seen.add(phone.message().await);
    }
}

async fn until_progress(phone: &mut Phone, seen: &mut common::Seen, task: &str, text: &str) {
    while !seen.progress(task).iter().any(|p| p == text) {
        seen.add(phone.message().await);
    }
}

fn is_alive(pid: &str) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_timeout_follow_up_cancel_and_a_hostile_command() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let config = common::fixture_config(
        dir.path(),
        &format!(
            "[[executor]]\nname = \"echo\"\ntype = \"command\"\nprogram = \"/bin/echo\"\n\
             args = [\"got:\", \"{{task}}\"]\nworkdir = \"{}\"\n\n[agent]\napproval_timeout_secs = 2\n",
            work.display()
        ),
    );
    let agent = Agent::up(dir.path(), &config);
    let mut phone = Phone::pair(&agent, dir.path()).await;
    let mut seen = common::Seen::default();

    // Deny one approval; let the other time out (2 s): both mean no.
    phone.submit("t-a", "approve-twice").await;
    loop {
        seen.add(phone.message().await);
        if seen.tasks["t-a"].iter().any(|(_, e)| matches!(e, TaskEvent::ApprovalRequest { .. })) {
            break;
        }
    }
    phone
        .send(&Message::ApprovalDecision {
            task_id: "t-a".into(),
            approval_id: "a1".into(),
            allow: false,
            remember: false,
        })
        .await;
    until_finished(&mut phone, &mut seen, "t-a").await;
    let resolved: Vec<(bool, String)> = seen.tasks["t-a"]
        .iter()
        .filter_map(|(_, e)| match e {
            TaskEvent::ApprovalResolved { allow, by, .. } => Some((*allow, by.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(resolved.len(), 2);
    assert!(!resolved[0].0 && resolved[0].1.starts_with("phone:"));
    assert_eq!(resolved[1], (false, "timeout".to_owned()));
    assert_eq!(seen.progress("t-a"), ["a1:denied", "a2:denied"]);
    // The finish tells the truth: both denied, the second by no answer.
    let finish = seen.tasks["t-a"].iter().find_map(|(_, e)| match e {
        TaskEvent::Finished { denied, expired, .. } => Some((denied.clone(), expired.clone())),
        _ => None,
    });
    assert_eq!(
        finish,
        Some((vec!["step a1".to_owned(), "step a2".to_owned()], vec!["step a2".to_owned()]))
    );

    // A follow-up reaches the running task, and is part of its history.
    phone.submit("t-f", "follow").await;
    until_progress(&mut phone, &mut seen, "t-f", "waiting for a follow-up").await;
    phone.send(&Message::FollowUp { task_id: "t-f".into(), text: "and the docs".into() }).await;
    until_finished(&mut phone, &mut seen, "t-f").await;
    assert!(
        seen.tasks["t-f"]
            .iter()
            .any(|(_, e)| *e == TaskEvent::FollowUp { text: "and the docs".into() })
    );
    assert_eq!(seen.progress("t-f").last().unwrap(), "got: and the docs");
    // A finished task whose executor cannot resume refuses follow-ups.
    phone.send(&Message::FollowUp { task_id: "t-f".into(), text: "more".into() }).await;
    assert!(matches!(phone.message().await, Message::Refused { code, .. } if code == "finished"));

    // Cancel stops the executor's whole process group.
    let pidfile = dir.path().join("sleeper.pid");
    phone.submit("t-s", &format!("sleep {}", pidfile.display())).await;
    until_progress(&mut phone, &mut seen, "t-s", "sleeping").await;
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    assert!(is_alive(&pid));
    phone.send(&Message::Cancel { task_id: "t-s".into() }).await;
    until_finished(&mut phone, &mut seen, "t-s").await;
    assert_eq!(seen.finished("t-s").unwrap().0, FinishStatus::Cancelled);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while is_alive(&pid) {
        assert!(std::time::Instant::now() < deadline, "the cancelled executor is still running");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // Hostile task text reaches the configured command as one argument and
    // runs nothing else: no shell ever sees it.
    let hostile = "it's \"x\" $(touch pwned) `touch pwned` ; touch pwned && echo hi > pwned";
    phone
        .send(&Message::TaskSubmit {
            task_id: "t-h".into(),
            text: hostile.into(),
            workspace: None,
            executor: Some("echo".into()),
            resume: None,
        })
        .await;
    until_finished(&mut phone, &mut seen, "t-h").await;
    assert_eq!(seen.progress("t-h"), [format!("got: {hostile}")]);
    assert_eq!(seen.finished("t-h").unwrap().0, FinishStatus::Succeeded);
    assert!(!work.join("pwned").exists() && !dir.path().join("pwned").exists());
    seen.assert_contiguous();
    phone.client.close().await;
}
