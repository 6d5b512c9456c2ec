//! The `claude` executor end to end, with a fake `claude`
//! (`tests/fixtures/fake-claude`) that replays recorded stream-json and asks
//! for permission the way Claude Code does: it starts the MCP server from
//! `--mcp-config` (this package's real `tandem mcp-permission`) and calls its
//! `approval_prompt` tool over MCP JSON-RPC.
//!
//! First at the executor level (permission prompts answered through the
//! controller, cancel while one is pending), then through the agent and a
//! paired phone: progress, tool calls, the approval request, allow and deny,
//! a follow-up after the finish that resumes the session, and a cancel that
//! kills the process group.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Agent, Phone};
use serde_json::{Value, json};
use tandem_agent::claude;
use tandem_agent::executor::{Control, ExecEvent, ExecutorConfig, ExecutorKind, Running};
use tandem_proto::message::{FinishStatus, Message, TaskEvent};

const STEP: Duration = Duration::from_secs(20);
const READ_CALL: &str = "toolu_01R3adF1LeQ8";
const BASH_CALL: &str = "toolu_01B4shRunT3st";
const RESULT: &str =
    "The failing test `adds` fails because `add` returns `a - b`; it should return `a + b`.";
const DENIED: &str = "Stopped: Bash was denied (Denied from the phone).";

fn fake_claude() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-claude")
}

fn tandem_exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tandem"))
}

fn config(dir: &Path) -> ExecutorConfig {
    ExecutorConfig {
        name: "claude".into(),
        kind: ExecutorKind::Claude {
            program: fake_claude().to_str().unwrap().into(),
            args: vec!["--model".into(), "sonnet".into()],
            setting_sources: vec![],
        },
        workdir: Some(dir.to_owned()),
        env: vec![("FAKE_CLAUDE_ARGV_LOG".into(), log_path(dir).to_str().unwrap().into())],
    }
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("claude-argv.log")
}

/// The fake's runs: (argv, session id).
fn runs(dir: &Path) -> Vec<(Vec<String>, String)> {
    std::fs::read_to_string(log_path(dir))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                serde_json::from_value(v["argv"].clone()).unwrap(),
                v["session"].as_str().unwrap().into(),
            )
        })
        .collect()
}

async fn next(r: &mut Running) -> ExecEvent {
    tokio::time::timeout(STEP, r.next()).await.expect("no event in time").expect("events ended")
}

/// Events up to the approval request, which is returned last.
async fn until_approval(r: &mut Running) -> Vec<ExecEvent> {
    let mut events = Vec::new();
    loop {
        let e = next(r).await;
        let done = matches!(e, ExecEvent::ApprovalRequest { .. });
        events.push(e);
        if done {
            return events;
        }
    }
}

async fn until_finished(r: &mut Running) -> Vec<ExecEvent> {
    let mut events = Vec::new();
    loop {
        let e = next(r).await;
        let done = matches!(e, ExecEvent::Finished { .. });
        events.push(e);
        if done {
            assert_eq!(tokio::time::timeout(STEP, r.next()).await.unwrap(), None);
            return events;
        }
    }
}

fn progress(text: &str) -> ExecEvent {
    ExecEvent::Progress(text.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_prompts_go_through_the_mcp_tool_and_back() {
    let dir = tempfile::tempdir().unwrap();

    // Allowed: the recorded session plays out.
    let mut r = claude::start_with(&config(dir.path()), "fix the failing test", None, tandem_exe())
        .unwrap();
    let before = until_approval(&mut r).await;
    let session = runs(dir.path())[0].1.clone();
    assert_eq!(
        before,
        vec![
            ExecEvent::Resumable { token: session.clone() },
            progress("I'll start by reading the code under test."),
            ExecEvent::ToolCall {
                call_id: READ_CALL.into(),
                name: "Read".into(),
                input: json!({"file_path": "/home/ana/src/foo/src/lib.rs"}),
            },
            ExecEvent::ToolResult {
                call_id: READ_CALL.into(),
                output: "     1\tpub fn add(a: i32, b: i32) -> i32 {\n     2\t    a - b\n     3\t}\n     4\t\n     5\t#[test]\n     6\tfn adds() {\n     7\t    assert_eq!(add(1, 1), 2);\n     8\t}\n".into(),
                is_error: false,
            },
            progress("`add` subtracts instead of adding. Let me run the tests to confirm."),
            ExecEvent::ToolCall {
                call_id: BASH_CALL.into(),
                name: "Bash".into(),
                input: json!({"command": "cargo test -p foo", "description": "Run foo's tests"}),
            },
            ExecEvent::ApprovalRequest {
                approval_id: BASH_CALL.into(),
                summary: "Bash: cargo test -p foo".into(),
                detail: "Bash\n{\n  \"command\": \"cargo test -p foo\",\n  \"description\": \"Run foo's tests\"\n}".into(),
                tool: Some(tandem_agent::rules::ToolUse {
                    name: "Bash".into(),
                    input: json!({"command": "cargo test -p foo", "description": "Run foo's tests"}),
                }),
            },
        ]
    );
    r.control(Control::Decision { approval_id: BASH_CALL.into(), allow: true }).await.unwrap();
    let after = until_finished(&mut r).await;
    assert!(
        matches!(&after[0], ExecEvent::ToolResult { call_id, is_error: true, output } if call_id == BASH_CALL && output.contains("1 failed")),
        "{after:?}"
    );
    assert_eq!(
        after[1..],
        [
            progress("Confirmed: `add(1, 1)` returns 0. The fix is to return `a + b`."),
            ExecEvent::Finished { status: FinishStatus::Succeeded, summary: RESULT.into() },
        ]
    );
    let (argv, _) = &runs(dir.path())[0];
    let tail: Vec<&str> = argv[argv.len() - 4..].iter().map(String::as_str).collect();
    assert_eq!(tail, ["--model", "sonnet", "--", "fix the failing test"]);

    // Denied: Claude Code gets the deny message as the tool's error.
    let mut r = claude::start_with(&config(dir.path()), "fix it", None, tandem_exe()).unwrap();
    let asked = until_approval(&mut r).await;
    let ExecEvent::ApprovalRequest { approval_id, .. } = asked.last().unwrap() else { panic!() };
    r.control(Control::Decision { approval_id: approval_id.clone(), allow: false }).await.unwrap();
    assert_eq!(
        until_finished(&mut r).await,
        vec![
            ExecEvent::ToolResult {
                call_id: BASH_CALL.into(),
                output: "Denied from the phone".into(),
                is_error: true
            },
            progress("I was not allowed to run `cargo test -p foo`."),
            ExecEvent::Denied { tools: vec!["Bash".into()] },
            ExecEvent::Finished { status: FinishStatus::Succeeded, summary: DENIED.into() },
        ]
    );

    // Cancelled while the prompt is pending: the prompt is denied, the run
    // (Claude Code and the permission server) is stopped.
    let mut r = claude::start_with(&config(dir.path()), "fix it", None, tandem_exe()).unwrap();
    until_approval(&mut r).await;
    r.control(Control::Cancel).await.unwrap();
    assert_eq!(
        until_finished(&mut r).await,
        vec![ExecEvent::Finished { status: FinishStatus::Cancelled, summary: "cancelled".into() }]
    );
    assert!(
        r.control(Control::Decision { approval_id: BASH_CALL.into(), allow: true }).await.is_err()
    );
}

fn event(m: &Message) -> Option<(&str, &TaskEvent)> {
    match m {
        Message::TaskEvent { task_id, event, .. } => Some((task_id.as_str(), event)),
        _ => None,
    }
}

/// A task's events as the phone sees them, until it finishes; approvals are
/// answered with `allow`.
async fn watch(phone: &mut Phone, task: &str, allow: bool) -> Vec<TaskEvent> {
    let mut seen = Vec::new();
    loop {
        let m = phone.message().await;
        let Some((id, ev)) = event(&m) else { continue };
        assert_eq!(id, task, "{m:?}");
        let ev = ev.clone();
        seen.push(ev.clone());
        match ev {
            TaskEvent::ApprovalRequest { approval_id, .. } => {
                phone
                    .send(&Message::ApprovalDecision {
                        task_id: task.into(),
                        approval_id,
                        allow,
                        remember: false,
                    })
                    .await;
            }
            TaskEvent::Finished { .. } => return seen,
            _ => {}
        }
    }
}

fn kinds(events: &[TaskEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            TaskEvent::Accepted { .. } => "accepted".to_owned(),
            TaskEvent::FollowUp { text } => format!("follow_up:{text}"),
            TaskEvent::Progress { text } => format!("progress:{text}"),
            TaskEvent::ToolCall { name, .. } => format!("tool_call:{name}"),
            TaskEvent::ToolResult { call_id, is_error, .. } => {
                format!("tool_result:{call_id}:{is_error}")
            }
            TaskEvent::Diff { path, added, removed, .. } => {
                format!("diff:{path}:+{added}-{removed}")
            }
            TaskEvent::ApprovalRequest { summary, .. } => format!("approval:{summary}"),
            TaskEvent::ApprovalResolved { allow, .. } => format!("resolved:{allow}"),
            TaskEvent::Finished { status, summary, .. } => format!("finished:{status:?}:{summary}"),
        })
        .collect()
}

/// Whether `pid` is a live process (a zombie counts as gone).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claude_task_from_the_phone() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[executor]]\nname = \"claude\"\ntype = \"claude\"\nprogram = \"{}\"\nenv = [[\"FAKE_CLAUDE_ARGV_LOG\", \"{}\"]]\n",
            fake_claude().display(),
            log_path(dir.path()).display()
        ),
    )
    .unwrap();
    let agent = Agent::up(dir.path(), &config);
    let mut phone = Phone::pair(&agent, dir.path()).await;

    // Allowed.
    phone.submit("t-1", "fix the failing test").await;
    let t1 = watch(&mut phone, "t-1", true).await;
    assert_eq!(
        kinds(&t1),
        [
            "accepted",
            "progress:I'll start by reading the code under test.",
            "tool_call:Read",
            &format!("tool_result:{READ_CALL}:false"),
            "progress:`add` subtracts instead of adding. Let me run the tests to confirm.",
            "tool_call:Bash",
            "approval:Bash: cargo test -p foo",
            "resolved:true",
            &format!("tool_result:{BASH_CALL}:true"),
            "progress:Confirmed: `add(1, 1)` returns 0. The fix is to return `a + b`.",
            &format!("finished:Succeeded:{RESULT}"),
        ]
    );
    let first_session = runs(dir.path())[0].1.clone();

    // Denied.
    phone.submit("t-2", "fix the failing test").await;
    let t2 = watch(&mut phone, "t-2", false).await;
    assert!(t2.contains(&TaskEvent::ToolResult {
        call_id: BASH_CALL.into(),
        output: "Denied from the phone".into(),
        is_error: true,
    }));
    assert_eq!(kinds(&t2).last().unwrap(), &format!("finished:Succeeded:{DENIED}"));
    // The finish names the denied tool (Claude Code's `permission_denials`).
    let Some(TaskEvent::Finished { denied, .. }) = t2.last() else { panic!("{t2:?}") };
    assert_eq!(denied, &["Bash".to_owned()]);
    // The allowed task's finish names none.
    let Some(TaskEvent::Finished { denied, .. }) = t1.last() else { panic!("{t1:?}") };
    assert!(denied.is_empty(), "{denied:?}");

    // A follow-up after the finish resumes t-1's session.
    phone.send(&Message::FollowUp { task_id: "t-1".into(), text: "now fix it".into() }).await;
    let resumed = watch(&mut phone, "t-1", true).await;
    assert_eq!(
        kinds(&resumed),
        [
            "follow_up:now fix it",
            &format!("progress:Resumed session {first_session}: now fix it"),
            &format!("finished:Succeeded:resumed {first_session}"),
        ]
    );
    let (argv, session) = runs(dir.path()).pop().unwrap();
    assert_eq!(session, first_session);
    assert!(argv.windows(2).any(|w| w[0] == "--resume" && w[1] == first_session), "{argv:?}");
    assert_eq!(argv.last().unwrap(), "now fix it");

    // Cancel mid-run stops the whole process group.
    phone.submit("t-3", "sleep").await;
    let pids = loop {
        let m = phone.message().await;
        if let Some(("t-3", TaskEvent::Progress { text })) = event(&m)
            && let Some(rest) = text.strip_prefix("pid ")
        {
            let pids: Vec<String> = rest.split(" child ").map(str::to_owned).collect();
            break pids;
        }
    };
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|p| alive(p)));
    phone.send(&Message::Cancel { task_id: "t-3".into() }).await;
    let finished = loop {
        let m = phone.message().await;
        if let Some(("t-3", TaskEvent::Finished { status, .. })) = event(&m) {
            break *status;
        }
    };
    assert_eq!(finished, FinishStatus::Cancelled);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    for pid in &pids {
        while alive(pid) {
            assert!(std::time::Instant::now() < deadline, "{pid} survived the cancel");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    phone.client.close().await;
    drop(agent);
}

/// A `claude` executor whose `args` would let Claude Code decide without
/// the phone is refused when the agent starts, with the reason.
#[test]
fn an_executor_that_would_bypass_the_phone_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[[executor]]\nname = \"claude\"\ntype = \"claude\"\nargs = [\"--permission-mode\", \"bypassPermissions\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .args(["run"])
        .env("TANDEM_KEYSTORE", "file")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--permission-mode") && err.contains("without the phone's approval"),
        "{err}"
    );
}
