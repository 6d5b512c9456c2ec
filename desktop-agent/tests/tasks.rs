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
                    })
                    .await;
            }
            TaskEvent::Finished { status, summary } => {
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
            TaskEvent::ApprovalRequest { .. } => "approval_request".to_owned(),
            TaskEvent::ApprovalResolved { allow, by, .. } => {
                format!("resolved:{allow}:{}", by.starts_with("phone:"))
            }
            TaskEvent::Finished { .. } => "finished".to_owned(),
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
        Message::HistoryEnd { task_id: "t-1".into(), next_offset: seen.len() as u64 }
    );

    // A view-only device may not submit. (Management commands change the
    // stored state; the agent is stopped meanwhile, as it keeps its own copy.)
    drop(agent);
    let scoped = tandem(dir.path(), &["scope", "ana's phone", "view"]);
    assert!(scoped.contains("view"), "{scoped}");
    let agent = Agent::up_at(dir.path(), &config, &phone.relay_addr);
    agent.line_starting("Connected.");
    phone
        .send(&Message::TaskSubmit {
            task_id: "t-2".into(),
            text: "rm -rf".into(),
            workspace: None,
            executor: None,
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
