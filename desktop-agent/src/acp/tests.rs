//! The ACP supervisor against a scripted stdio peer (a small Python
//! program that speaks just enough JSON-RPC): stop reasons, permissions,
//! file requests, cancel, and peers that break the protocol. The real agent
//! runs in `tests/acp.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tandem_proto::message::FinishStatus;

use crate::executor::{Control, ExecEvent, ExecutorConfig, ExecutorKind, Running};

/// The peer. Modes (argv[1]): `garbage`, `huge`, `v2`, `exit`, `stop:<reason>`, `perm`,
/// `fs`, `cancel`, `deaf`, `list`. More words after it: `noload` (no
/// `loadSession`), `linger` (stays when its stdin closes). It writes its pid
/// to `stdin-closed` in its working directory when its stdin closes.
const PEER: &str = r#"
import json, os, sys
mode = sys.argv[1]
def send(m):
    sys.stdout.write(json.dumps(m) + "\n"); sys.stdout.flush()
def say(sid, text):
    send({"jsonrpc": "2.0", "method": "session/update", "params": {"sessionId": sid,
          "update": {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": text}}}})
if mode == "garbage":
    print("this is not json", flush=True)
if mode == "huge":
    sys.stdout.write('{"jsonrpc": "2.0", "method": "x", "params": "' + "x" * (17 * 1024 * 1024) + '"}\n'); sys.stdout.flush()
if mode == "exit":
    sys.stderr.write("boom\n"); sys.stderr.flush(); sys.exit(3)
sid = "s1"; prompt_id = None; asked = 0; answers = set(); seen = []
def cancel_done():
    if mode == "cancel" and len(seen) == 2:
        say(sid, "".join(seen))
        send({"jsonrpc": "2.0", "id": prompt_id, "result": {"stopReason": "cancelled"}})
for line in sys.stdin:
    m = json.loads(line)
    method = m.get("method")
    if method == "initialize":
        caps = m["params"]["clientCapabilities"]
        assert caps["fs"] == {"readTextFile": True, "writeTextFile": True}, caps
        assert caps.get("terminal") in (None, False), caps
        load = "noload" not in sys.argv[2:]
        caps = {"loadSession": load}
        if mode == "list":
            caps["sessionCapabilities"] = {"list": {}}
        send({"jsonrpc": "2.0", "id": m["id"], "result": {"protocolVersion": 2 if mode == "v2" else 1,
              "agentCapabilities": caps}})
    elif method == "session/list":
        p = m["params"]
        assert os.path.samefile(p["cwd"], os.getcwd()), p
        here = p["cwd"]
        if p.get("cursor") is None:
            sessions = [{"sessionId": "s-old", "cwd": here, "title": "first\ntry", "updatedAt": "2026-01-01T00:00:00Z"},
                        {"sessionId": "s-other", "cwd": "/somewhere/else", "title": "not here", "updatedAt": "2026-03-01T00:00:00Z"}]
            send({"jsonrpc": "2.0", "id": m["id"], "result": {"sessions": sessions, "nextCursor": "page-2"}})
        else:
            assert p["cursor"] == "page-2", p
            sessions = [{"sessionId": "s-new", "cwd": here, "updatedAt": "2026-02-01T10:00:00.250+01:00"}]
            send({"jsonrpc": "2.0", "id": m["id"], "result": {"sessions": sessions}})
    elif method == "session/new":
        want = json.loads(os.environ.get("EXPECT_META", '{"claudeCode": {"options": {"settingSources": []}}}'))
        assert m["params"].get("_meta") == want, m
        assert os.path.isabs(m["params"]["cwd"]) and os.path.samefile(m["params"]["cwd"], os.getcwd())
        send({"jsonrpc": "2.0", "id": m["id"], "result": {"sessionId": sid}})
    elif method == "session/load":
        sid = m["params"]["sessionId"]
        say(sid, "replayed history")
        send({"jsonrpc": "2.0", "id": m["id"], "result": {}})
    elif method == "session/prompt":
        prompt_id = m["id"]
        text = m["params"]["prompt"][0]["text"]
        if mode.startswith("stop:"):
            say(sid, "partial "); say(sid, "answer to " + text)
            send({"jsonrpc": "2.0", "id": prompt_id, "result": {"stopReason": mode[5:]}})
        elif mode in ("perm", "cancel"):
            send({"jsonrpc": "2.0", "method": "session/update", "params": {"sessionId": sid, "update": {
                  "sessionUpdate": "tool_call", "toolCallId": "call-1", "title": "Edit a.txt", "kind": "edit",
                  "status": "pending", "rawInput": {"path": os.getcwd() + "/a.txt"}}}})
            send({"jsonrpc": "2.0", "id": 50, "method": "session/request_permission", "params": {
                  "sessionId": sid, "toolCall": {"toolCallId": "call-1", "title": "Edit a.txt"},
                  "options": [{"optionId": "always", "name": "Always", "kind": "allow_always"},
                              {"optionId": "once", "name": "Once", "kind": "allow_once"},
                              {"optionId": "no", "name": "No", "kind": "reject_once"}]}})
        elif mode == "fs":
            cwd = os.getcwd()
            send({"jsonrpc": "2.0", "id": 60, "method": "fs/read_text_file", "params": {"sessionId": sid, "path": "/etc/passwd"}})
            send({"jsonrpc": "2.0", "id": 61, "method": "fs/write_text_file", "params": {"sessionId": sid, "path": cwd + "/../escape.txt", "content": "x"}})
            send({"jsonrpc": "2.0", "id": 62, "method": "fs/write_text_file", "params": {"sessionId": sid, "path": cwd + "/in/side.txt", "content": "one\ntwo\n"}})
            send({"jsonrpc": "2.0", "id": 64, "method": "terminal/create", "params": {"sessionId": sid, "command": "ls"}})
            send({"jsonrpc": "2.0", "id": 65, "method": "fs/write_text_file", "params": {"sessionId": sid, "path": cwd + "/denied.txt", "content": "no"}})
        elif mode == "deaf":
            say(sid, "deaf")  # and never answers the prompt
    elif method == "session/cancel":
        seen.append("cancel seen\n"); cancel_done()
    elif method is None and m.get("id") == 50:
        outcome = "outcome " + json.dumps(m.get("result", {}).get("outcome"), sort_keys=True) + "\n"
        if mode == "cancel":
            seen.append(outcome); cancel_done(); continue
        say(sid, outcome)
        asked += 1
        if mode == "perm" and asked == 1:  # allowed: the write it names needs no new question
            send({"jsonrpc": "2.0", "id": 70, "method": "fs/write_text_file", "params": {"sessionId": sid, "path": os.getcwd() + "/a.txt", "content": "a"}})
        if mode == "perm" and asked < 3:
            send({"jsonrpc": "2.0", "id": 50, "method": "session/request_permission", "params": {
                  "sessionId": sid, "toolCall": {"toolCallId": "call-1", "title": "Edit a.txt"},
                  "options": [{"optionId": "once", "name": "Once", "kind": "allow_once"},
                              {"optionId": "never", "name": "Never", "kind": "reject_always"}]}})
        elif mode == "perm" and 70 in answers:
            send({"jsonrpc": "2.0", "id": prompt_id, "result": {"stopReason": "end_turn"}})
    elif method is None and m.get("id") in (60, 61, 62, 63, 64, 65, 70):
        say(sid, "fs %d %s\n" % (m["id"], json.dumps(m.get("result", m.get("error")), sort_keys=True)))
        answers.add(m["id"])
        if m["id"] == 62:  # written: read it back (requests are served concurrently)
            send({"jsonrpc": "2.0", "id": 63, "method": "fs/read_text_file", "params": {"sessionId": sid, "path": os.getcwd() + "/in/side.txt", "line": 2, "limit": 1}})
        if mode == "fs" and len(answers) == 6 or mode == "perm" and asked == 3:
            send({"jsonrpc": "2.0", "id": prompt_id, "result": {"stopReason": "end_turn"}})
with open("stdin-closed", "w") as f:
    f.write(str(os.getpid()))
if "linger" in sys.argv[2:]:
    import time
    time.sleep(60)
"#;

fn config(dir: &Path, mode: &str) -> ExecutorConfig {
    let peer = dir.join("peer.py");
    std::fs::write(&peer, PEER).unwrap();
    let project = dir.join("project");
    std::fs::create_dir_all(&project).unwrap();
    ExecutorConfig {
        name: "acp".into(),
        kind: ExecutorKind::Acp {
            program: "python3".into(),
            args: vec![peer.display().to_string(), mode.into()],
            session_meta: None,
        },
        workdir: Some(project),
        env: Vec::new(),
    }
}

async fn next(r: &mut Running) -> ExecEvent {
    tokio::time::timeout(Duration::from_secs(20), r.next())
        .await
        .expect("an event in time")
        .expect("an event")
}

/// Every event until the finish.
async fn all(r: &mut Running) -> Vec<ExecEvent> {
    let mut out = Vec::new();
    loop {
        let e = next(r).await;
        let done = matches!(e, ExecEvent::Finished { .. });
        out.push(e);
        if done {
            return out;
        }
    }
}

fn finish(events: &[ExecEvent]) -> (FinishStatus, String) {
    match events.last() {
        Some(ExecEvent::Finished { status, summary }) => (*status, summary.clone()),
        other => panic!("not finished: {other:?}"),
    }
}

fn progress(events: &[ExecEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            ExecEvent::Progress(t) => Some(t.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The peer's reports of the outcomes it got for its permission requests.
fn outcomes(events: &[ExecEvent]) -> Vec<String> {
    progress(events).lines().filter(|l| l.starts_with("outcome")).map(str::to_owned).collect()
}

async fn run(mode: &str) -> Vec<ExecEvent> {
    let dir = tempfile::tempdir().unwrap();
    let mut r = crate::executor::start(&config(dir.path(), mode), "the task").unwrap();
    all(&mut r).await
}

#[tokio::test]
async fn stop_reasons_decide_the_finish() {
    let events = run("stop:end_turn").await;
    assert_eq!(events[1], ExecEvent::Progress("partial answer to the task".into()));
    assert_eq!(finish(&events), (FinishStatus::Succeeded, "partial answer to the task".into()));
    for (reason, status, words) in [
        ("max_tokens", FinishStatus::Failed, "token limit"),
        ("max_turn_requests", FinishStatus::Failed, "limit of model requests"),
        ("refusal", FinishStatus::Failed, "refused"),
        ("cancelled", FinishStatus::Cancelled, "cancelled its turn"),
    ] {
        let (got, summary) = finish(&run(&format!("stop:{reason}")).await);
        assert_eq!(got, status, "{reason}: {summary}");
        assert!(summary.contains(words), "{reason}: {summary}");
    }
}

#[tokio::test]
async fn a_peer_that_breaks_the_protocol_or_exits_fails_the_task() {
    let (status, summary) = finish(&run("garbage").await);
    assert_eq!(status, FinishStatus::Failed);
    assert!(
        summary.contains("broke the protocol") && summary.contains("this is not json"),
        "{summary}"
    );
    let (status, summary) = finish(&run("huge").await);
    assert_eq!(status, FinishStatus::Failed);
    assert!(summary.contains("larger than 16 MiB"), "{summary}");
    let (status, summary) = finish(&run("v2").await);
    assert_eq!(status, FinishStatus::Failed);
    assert!(summary.contains("speaks version 2 of the protocol"), "{summary}");
    let (status, summary) = finish(&run("exit").await);
    assert_eq!(status, FinishStatus::Failed);
    assert!(summary.contains("exit code 3") && summary.contains("last stderr: boom"), "{summary}");
    // A program that does not exist is an error at start.
    let dir = tempfile::tempdir().unwrap();
    let mut missing = config(dir.path(), "x");
    missing.kind = ExecutorKind::Acp {
        program: "/nonexistent/agent".into(),
        args: Vec::new(),
        session_meta: None,
    };
    assert!(crate::executor::start(&missing, "t").is_err());
}

#[tokio::test]
async fn decisions_pick_the_agents_options() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = crate::executor::start(&config(dir.path(), "perm"), "t").unwrap();
    let mut events = Vec::new();
    for answer in [
        Control::Decision { approval_id: String::new(), allow: true },
        Control::Decision { approval_id: String::new(), allow: false },
        Control::Expired { approval_id: String::new() },
    ] {
        let id = loop {
            let e = next(&mut r).await;
            events.push(e.clone());
            if let ExecEvent::ApprovalRequest { approval_id, summary, detail, .. } = e {
                assert_eq!(summary, "Edit a.txt");
                assert!(detail.contains("Once (allow_once)"), "{detail}");
                break approval_id;
            }
        };
        let answer = match answer {
            Control::Decision { allow, .. } => Control::Decision { approval_id: id, allow },
            _ => Control::Expired { approval_id: id },
        };
        r.control(answer).await.unwrap();
    }
    events.extend(all(&mut r).await);
    // The tool call came first, once, with its input.
    let calls: Vec<_> = events.iter().filter(|e| matches!(e, ExecEvent::ToolCall { .. })).collect();
    assert!(
        matches!(calls.as_slice(), [ExecEvent::ToolCall { call_id, input, .. }]
            if call_id == "call-1"
                && input["input"]["path"].as_str().is_some_and(|p| p.ends_with("/a.txt"))),
        "{events:?}"
    );
    // Approval ids stay unique though the tool call is the same.
    let ids: std::collections::HashSet<_> = events
        .iter()
        .filter_map(|e| match e {
            ExecEvent::ApprovalRequest { approval_id, .. } => Some(approval_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 3);
    let said = progress(&events);
    assert_eq!(
        outcomes(&events),
        [
            r#"outcome {"optionId": "once", "outcome": "selected"}"#,
            r#"outcome {"optionId": "never", "outcome": "selected"}"#,
            r#"outcome {"outcome": "cancelled"}"#,
        ],
        "{events:?}"
    );
    assert_eq!(finish(&events).0, FinishStatus::Succeeded);
    // The allowed tool call named a.txt: its write went through unasked.
    assert!(said.contains("fs 70 {}"), "{said}");
    assert_eq!(std::fs::read_to_string(dir.path().join("project/a.txt")).unwrap(), "a");
}

#[tokio::test]
async fn file_requests_stay_in_the_project_and_terminals_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = crate::executor::start(&config(dir.path(), "fs"), "t").unwrap();
    // No permission named these writes: the phone is asked for each.
    let mut events = Vec::new();
    let mut asked = Vec::new();
    loop {
        let e = next(&mut r).await;
        if let ExecEvent::ApprovalRequest { approval_id, summary, detail, .. } = &e {
            assert!(summary.ends_with("(the agent did not ask)"), "{summary}");
            let allow = !summary.contains("denied.txt");
            if allow {
                assert!(detail.ends_with("one\ntwo\n"), "the content is shown: {detail}");
            }
            asked.push(summary.clone());
            let d = Control::Decision { approval_id: approval_id.clone(), allow };
            r.control(d).await.unwrap();
        }
        let done = matches!(e, ExecEvent::Finished { .. });
        events.push(e);
        if done {
            break;
        }
    }
    assert_eq!(asked.len(), 2, "{asked:?}");
    let said = progress(&events);
    let answer = |id: u32| -> Value {
        let line = said.lines().find(|l| l.starts_with(&format!("fs {id} "))).unwrap();
        serde_json::from_str(line.split_at(6).1).unwrap()
    };
    assert_eq!(answer(60)["code"], -32602, "{said}");
    assert!(answer(60)["message"].as_str().unwrap().contains("outside the project"), "{said}");
    assert_eq!(answer(61)["code"], -32602);
    assert!(answer(61)["message"].as_str().unwrap().contains("`..`"), "{said}");
    assert_eq!(answer(62), serde_json::json!({}));
    assert_eq!(answer(63)["content"], "two\n");
    assert_eq!(answer(64)["code"], -32601, "terminal methods are not served: {said}");
    assert!(said.contains("refused the agent's read of `/etc/passwd`"), "{said}");
    assert!(answer(65)["message"].as_str().unwrap().contains("the phone did not allow"), "{said}");
    assert!(!dir.path().join("project/denied.txt").exists());
    assert!(!dir.path().join("escape.txt").exists());
    let side = dir.path().join("project/in/side.txt");
    assert_eq!(std::fs::read_to_string(side).unwrap(), "one\ntwo\n");
    assert_eq!(finish(&events).0, FinishStatus::Succeeded);
}

#[tokio::test]
async fn cancel_sends_session_cancel_and_answers_the_pending_permission() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = crate::executor::start(&config(dir.path(), "cancel"), "t").unwrap();
    let mut events = Vec::new();
    loop {
        let e = next(&mut r).await;
        let asked = matches!(e, ExecEvent::ApprovalRequest { .. });
        events.push(e);
        if asked {
            break;
        }
    }
    r.control(Control::Cancel).await.unwrap();
    events.extend(all(&mut r).await);
    let said = progress(&events);
    assert!(said.contains(r#"outcome {"outcome": "cancelled"}"#), "{events:?}");
    assert!(said.contains("cancel seen"), "{events:?}");
    assert_eq!(finish(&events), (FinishStatus::Cancelled, "cancelled".into()));
    assert!(matches!(
        r.control(Control::Cancel).await,
        Err(crate::executor::ExecError::NotRunning)
    ));
}

#[tokio::test]
async fn an_agent_that_ignores_the_cancel_is_stopped_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = crate::executor::start(&config(dir.path(), "deaf"), "t").unwrap();
    // The prompt is out once the agent says something.
    assert_eq!(next(&mut r).await, ExecEvent::Resumable { token: "s1".into() });
    assert_eq!(next(&mut r).await, ExecEvent::Progress("deaf".into()));
    let started = std::time::Instant::now();
    r.control(Control::Cancel).await.unwrap();
    let events = all(&mut r).await;
    let said = "cancelled (the agent did not end its turn when asked; it was stopped)";
    assert_eq!(finish(&events), (FinishStatus::Cancelled, said.into()));
    let took = started.elapsed();
    assert!(took >= super::CANCEL_GRACE && took < super::CANCEL_GRACE * 3, "{took:?}");
}

#[tokio::test]
async fn a_finished_task_resumes_by_loading_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "stop:end_turn");
    let first = {
        let mut r = crate::executor::start(&config, "one").unwrap();
        all(&mut r).await
    };
    assert_eq!(first[0], ExecEvent::Resumable { token: "s1".into() });
    let mut r = crate::executor::resume(&config, "earlier-session", "two").unwrap();
    let events = all(&mut r).await;
    // The replayed history is not shown again; the session is the loaded one.
    assert_eq!(
        events,
        vec![
            ExecEvent::Resumable { token: "earlier-session".into() },
            ExecEvent::Progress("partial answer to two".into()),
            ExecEvent::Finished {
                status: FinishStatus::Succeeded,
                summary: "partial answer to two".into()
            },
        ]
    );
    // An agent that cannot load sessions says so.
    let mut noload = config.clone();
    if let ExecutorKind::Acp { args, .. } = &mut noload.kind {
        args.push("noload".into());
    }
    let mut r = crate::executor::resume(&noload, "earlier-session", "two").unwrap();
    let (status, summary) = finish(&all(&mut r).await);
    assert_eq!(status, FinishStatus::Failed);
    assert!(summary.contains("cannot load an earlier session"), "{summary}");
}

#[tokio::test]
async fn session_meta_pins_claude_code_acp_unless_configured() {
    // The peer checks `_meta` of session/new and fails without it.
    assert_eq!(finish(&run("stop:end_turn").await).0, FinishStatus::Succeeded);
    let dir = tempfile::tempdir().unwrap();
    let mut custom = config(dir.path(), "stop:end_turn");
    if let ExecutorKind::Acp { session_meta, .. } = &mut custom.kind {
        *session_meta = Some(serde_json::from_str(r#"{"x": 1}"#).unwrap());
    }
    custom.env.push(("EXPECT_META".into(), r#"{"x": 1}"#.into()));
    let mut r = crate::executor::start(&custom, "t").unwrap();
    assert_eq!(finish(&all(&mut r).await).0, FinishStatus::Succeeded);
    custom.env[0].1 = r#"{"y": 2}"#.into();
    let mut r = crate::executor::start(&custom, "t").unwrap();
    assert_eq!(finish(&all(&mut r).await).0, FinishStatus::Failed, "the peer saw the wrong _meta");
}

/// The pid the peer wrote when its stdin closed, if it did.
fn closed_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("project/stdin-closed")).ok()?.parse().ok()
}

#[tokio::test]
async fn a_finished_agent_gets_its_stdin_closed_and_time_to_exit() {
    // The peer exits when its stdin closes: the task finishes without
    // waiting out the grace, and it was not signalled first.
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let mut r = crate::executor::start(&config(dir.path(), "stop:end_turn"), "t").unwrap();
    assert_eq!(finish(&all(&mut r).await).0, FinishStatus::Succeeded);
    assert!(started.elapsed() < super::STOP_GRACE, "{:?}", started.elapsed());
    assert!(closed_pid(dir.path()).is_some(), "the peer saw its stdin close");

    // One that stays is given the grace, then stopped.
    let dir = tempfile::tempdir().unwrap();
    let mut lingering = config(dir.path(), "stop:end_turn");
    if let ExecutorKind::Acp { args, .. } = &mut lingering.kind {
        args.push("linger".into());
    }
    let started = std::time::Instant::now();
    let mut r = crate::executor::start(&lingering, "t").unwrap();
    assert_eq!(finish(&all(&mut r).await).0, FinishStatus::Succeeded);
    let took = started.elapsed();
    assert!(took >= super::STOP_GRACE, "stopped before the grace: {took:?}");
    assert!(took < super::STOP_GRACE * 3, "{took:?}");
    let pid = closed_pid(dir.path()).expect("the peer saw its stdin close");
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the peer is still there");
}

#[tokio::test]
async fn sessions_are_listed_for_the_project_when_the_agent_can() {
    let dir = tempfile::tempdir().unwrap();
    let listing = config(dir.path(), "list");
    let listed = super::list_sessions(&listing).await.unwrap();
    // Both pages, this project's only, newest first; the title on one line.
    let got: Vec<(&str, &str, u64)> =
        listed.iter().map(|e| (e.id.as_str(), e.title.as_str(), e.updated_ms)).collect();
    assert_eq!(got, [("s-new", "", 1_769_936_400_250), ("s-old", "first try", 1_767_225_600_000)]);
    assert!(closed_pid(dir.path()).is_some(), "the agent was stopped by closing its stdin");

    // An agent without `session/list` cannot list; one that fails says so.
    let plain = super::list_sessions(&config(dir.path(), "stop:end_turn")).await;
    assert!(matches!(plain, Err(crate::executor::ExecError::Unsupported(_))), "{plain:?}");
    let exited = super::list_sessions(&config(dir.path(), "exit")).await;
    let Err(crate::executor::ExecError::Agent(why)) = exited else { panic!("{exited:?}") };
    assert!(why.contains("boom"), "{why}");
    let mut not_acp = listing.clone();
    not_acp.kind = ExecutorKind::Command { program: "true".into(), args: Vec::new() };
    let other = super::list_sessions(&not_acp).await;
    assert!(matches!(other, Err(crate::executor::ExecError::Unsupported(_))), "{other:?}");
}

#[tokio::test]
async fn an_always_allow_is_answered_allow_once_never_the_agents_allow_always() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = crate::executor::start(&config(dir.path(), "perm"), "t").unwrap();
    let mut events = Vec::new();
    // The first request offers `allow_always`, the second does not; the
    // third expires.
    for allow in [true, true, false] {
        let approval_id = loop {
            let e = next(&mut r).await;
            events.push(e.clone());
            if let ExecEvent::ApprovalRequest { approval_id, .. } = e {
                break approval_id;
            }
        };
        let answer = if allow {
            Control::Decision { approval_id, allow }
        } else {
            Control::Expired { approval_id }
        };
        r.control(answer).await.unwrap();
    }
    events.extend(all(&mut r).await);
    assert_eq!(
        outcomes(&events),
        [
            r#"outcome {"optionId": "once", "outcome": "selected"}"#,
            r#"outcome {"optionId": "once", "outcome": "selected"}"#,
            r#"outcome {"outcome": "cancelled"}"#,
        ],
        "{events:?}"
    );
    assert_eq!(finish(&events).0, FinishStatus::Succeeded);
}
