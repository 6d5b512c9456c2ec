//! The `acp` executor with a real ACP agent: `@zed-industries/claude-code-acp`
//! (Claude Code behind the Agent Client Protocol, pinned in
//! `tests/acp-agent/package.json`, installed by `./scripts/test.sh`), run
//! offline against a local Messages API (`tests/messages_api`), through a
//! real `tandem up` (relay and agent) and a paired phone.
//!
//! What it proves: the agent's text, tool calls and tool results reach the
//! phone; its permission request for a file write is an approval request on
//! the phone, and the phone's answer is what happens (allowed: the file is
//! written through Tandem's `fs/write_text_file`; denied: nothing is
//! written and the task lists the denied step; unanswered: the timeout
//! answers `cancelled` and nothing is written); a follow-up sent while the
//! agent works is the next prompt of the same session, and one sent after
//! the finish loads that session into a new agent process; a cancel while a
//! permission request waits ends the task `cancelled` and leaves no process
//! of the agent's behind; reads and writes outside the project are refused
//! (the agent reads files without asking, so this is what keeps a file
//! outside the project from the model); a write the agent did not ask
//! about (its settings let it skip the question) is asked by Tandem.
//!
//! The agent runs with `HOME`, `CLAUDE_CONFIG_DIR`, the XDG directories
//! and its temporary directory inside the test's own directory, and with
//! telemetry, error reporting, update checks and all other non-essential
//! traffic off. `IS_SANDBOX=1`: the agent asks Claude Code to allow its
//! "bypass permissions" mode, which Claude Code refuses to start with as
//! root (the test machine runs tests as root) unless told it is sandboxed;
//! Tandem never selects that mode, and every step here still asks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;
mod messages_api;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Agent, Phone};
use messages_api::{Answer, Block, Conversation, MessagesApi, Reply, toml_str};
use serde_json::{Value, json};
use tandem_proto::message::{FinishStatus, Message, TaskEvent};

/// What the scripted model writes, and where (relative to the project).
const FILE: &str = "hello.txt";
const CONTENT: &str = "hi from the model\n";

/// What a file outside the project holds; it must never reach the model.
const SECRET: &str = "outside-secret-4711";

/// The real agent, installed from `tests/acp-agent/package-lock.json`.
fn acp_agent() -> PathBuf {
    let package = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/acp-agent");
    let bin = package.join("node_modules/.bin/claude-code-acp");
    assert!(
        bin.exists(),
        "the real ACP agent is missing ({}): install it with `cd {} && npm ci` \
         (./scripts/test.sh does this before the tests)",
        bin.display(),
        package.display()
    );
    bin
}

/// The text of the last user message (the prompt, or tool results).
fn last_user_text(c: &Conversation<'_>) -> String {
    let Some(last) = c.messages().iter().rev().find(|m| m["role"] == "user") else {
        return String::new();
    };
    match &last["content"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The working directory Claude Code tells the model about in its system
/// prompt (`Working directory: …`).
fn working_directory(c: &Conversation<'_>) -> Option<PathBuf> {
    let system = c.body.get("system")?.to_string();
    let at = system.find("Working directory: ")? + "Working directory: ".len();
    let rest = &system[at..];
    let end = rest.find("\\n").unwrap_or(rest.len());
    Some(PathBuf::from(&rest[..end]))
}

/// The scripted model. The prompt says what to do: `WRITE` the file in the
/// project (after a line of text), `WRITE-HERE` the file in the working
/// directory the agent runs in, `READ-OUTSIDE` or `WRITE-OUTSIDE` a file
/// beside the project; a tool result is answered `ran: …` or `refused: …`;
/// `say bye` is answered `bye`.
fn script(project: PathBuf, outside: PathBuf) -> impl Fn(&Conversation<'_>) -> Answer {
    move |c: &Conversation<'_>| {
        if let Some(result) = c.tool_results().first() {
            let verdict = if result.is_error { "refused" } else { "ran" };
            return Answer::Message(Reply::text(format!("{verdict}: {}", result.content)));
        }
        let prompt = last_user_text(c);
        let tool = |name: &str, input: Value| Block::ToolUse { name: name.into(), input };
        let content = if prompt.contains("say bye") {
            return Answer::Message(Reply::text("bye"));
        } else if prompt.contains("READ-OUTSIDE") {
            vec![tool("mcp__acp__Read", json!({"file_path": outside.join("secret.txt")}))]
        } else if prompt.contains("WRITE-HERE") {
            let Some(here) = working_directory(c) else {
                return Answer::Message(Reply::text("no working directory in the system prompt"));
            };
            let path = here.join(FILE);
            vec![tool("mcp__acp__Write", json!({"file_path": path, "content": CONTENT}))]
        } else if prompt.contains("WRITE-OUTSIDE") {
            let path = outside.join("planted.txt");
            vec![tool("mcp__acp__Write", json!({"file_path": path, "content": "planted"}))]
        } else if prompt.contains("WRITE") {
            let path = project.join(FILE);
            vec![
                Block::Text("I will write the file.".into()),
                tool("mcp__acp__Write", json!({"file_path": path, "content": CONTENT})),
            ]
        } else {
            return Answer::Message(Reply::text("ok"));
        };
        Answer::Message(Reply { content, stop_reason: "tool_use".into() })
    }
}

/// A `tandem up` with an `acp` executor, and a paired phone.
struct Setup {
    /// The test's directory (the agent's data directory, `config.toml`).
    root: PathBuf,
    project: PathBuf,
    outside: PathBuf,
    /// Set in the agent's environment: finds its processes.
    mark: String,
    /// How many of them ran when the phone cancelled, and when.
    running_at_cancel: usize,
    cancelled_at: Option<std::time::Instant>,
    api: MessagesApi,
    phone: Phone,
    _agent: Agent,
    _dir: tempfile::TempDir,
}

/// What a repository plants to get the agent's writes done without asking:
/// an allow rule for its `Write` tool in `.claude/settings.json`, and the
/// same in the desktop user's own `~/.claude/settings.json`. Claude Code
/// applies it when it loads those files; the default `session_meta` keeps
/// it from loading them. (The adapter's own rule check, which understands
/// `Edit`, `Read` and `Bash` rules, reads the files whatever Tandem sends:
/// see the README.)
const ALLOW_WRITE: &str = r#"{"permissions":{"allow":["mcp__acp__Write"]}}"#;

async fn setup() -> Setup {
    setup_with("", ALLOW_WRITE).await
}

/// [`setup`] with more lines for the executor's table in `config.toml`, and
/// `settings` planted as the repository's and the user's Claude Code
/// settings.
async fn setup_with(executor_toml: &str, settings: &str) -> Setup {
    setup_full(Extra { executor_toml, settings, ..Extra::default() }).await
}

/// More of `config.toml` for [`setup_full`]; `{root}` in `before` and
/// `after` is the test's directory.
#[derive(Default)]
struct Extra<'a> {
    /// Lines for the ACP executor's table.
    executor_toml: &'a str,
    /// The repository's and the user's Claude Code settings
    /// ([`ALLOW_WRITE`] when empty).
    settings: &'a str,
    /// Tables before the ACP executor's (an executor here is the default).
    before: &'a str,
    /// Tables after everything else (`[[rule]]`, `[[project]]`).
    after: &'a str,
}

async fn setup_full(extra: Extra<'_>) -> Setup {
    let settings = if extra.settings.is_empty() { ALLOW_WRITE } else { extra.settings };
    let bin = acp_agent();
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let project = root.join("project");
    let outside = root.join("outside");
    let home = root.join("home");
    let tmp = home.join("tmp");
    for d in [&project, &outside, &home.join(".claude"), &tmp] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(outside.join("secret.txt"), SECRET).unwrap();
    std::fs::create_dir_all(project.join(".claude")).unwrap();
    std::fs::write(project.join(".claude/settings.json"), settings).unwrap();
    std::fs::write(home.join(".claude/settings.json"), settings).unwrap();
    let api = MessagesApi::start(script(project.clone(), outside.clone())).await;
    let mark = format!("acp-test-{}-{}", std::process::id(), common::now_unix());
    let mut env = messages_api::offline_env(&home, api.base_url(), "sk-ant-test-not-a-key");
    env.extend([("IS_SANDBOX", "1".to_owned()), ("TANDEM_ACP_TEST_MARK", mark.clone())]);
    let env = messages_api::toml_env(&env);
    let config = root.join("config.toml");
    let here = root.to_str().unwrap();
    std::fs::write(
        &config,
        format!(
            "{}\n[[executor]]\nname = \"acp\"\ntype = \"acp\"\nprogram = {}\nworkdir = {}\n\
             env = [{}]\n{}\n[agent]\napproval_timeout_secs = 5\n\n{}\n",
            extra.before.replace("{root}", here),
            toml_str(bin.to_str().unwrap()),
            toml_str(project.to_str().unwrap()),
            env,
            extra.executor_toml,
            extra.after.replace("{root}", here),
        ),
    )
    .unwrap();
    let agent = Agent::up(&root, &config);
    let phone = Phone::pair(&agent, &root).await;
    Setup {
        root,
        project,
        outside,
        mark,
        running_at_cancel: 0,
        cancelled_at: None,
        api,
        phone,
        _agent: agent,
        _dir: dir,
    }
}

/// How the phone answers approval requests.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Answering {
    Allow,
    Deny,
    /// Never answer (the approval timeout decides).
    Ignore,
    /// Cancel the task instead.
    Cancel,
    /// Send a follow-up, then allow.
    FollowUpThenAllow,
}

impl Setup {
    /// Submits `text` as task `task` and follows it to the end.
    async fn run(&mut self, task: &str, text: &str, answering: Answering) -> Vec<TaskEvent> {
        self.phone.submit(task, text).await;
        self.follow(task, answering).await
    }

    /// Task `task`'s events until it finishes.
    async fn follow(&mut self, task: &str, answering: Answering) -> Vec<TaskEvent> {
        let mut seen = Vec::new();
        loop {
            // A real agent may start slowly on a busy machine.
            let m = tokio::time::timeout(
                Duration::from_secs(90),
                self.phone.message_within(Duration::from_secs(120)),
            )
            .await
            .unwrap_or_else(|_| panic!("task {task} did not finish: {seen:#?}"));
            let Message::TaskEvent { task_id, event, .. } = m else { continue };
            assert_eq!(task_id, task);
            seen.push(event.clone());
            match event {
                TaskEvent::ApprovalRequest { approval_id, .. } => {
                    let decide = |allow| Message::ApprovalDecision {
                        task_id: task.into(),
                        approval_id: approval_id.clone(),
                        allow,
                        remember: false,
                    };
                    match answering {
                        Answering::Allow => self.phone.send(&decide(true)).await,
                        Answering::Deny => self.phone.send(&decide(false)).await,
                        Answering::Ignore => {}
                        Answering::Cancel => {
                            // The agent runs (and the scan finds it) until the cancel.
                            self.running_at_cancel = self.agent_processes().len();
                            self.cancelled_at = Some(std::time::Instant::now());
                            self.phone.send(&Message::Cancel { task_id: task.into() }).await;
                        }
                        Answering::FollowUpThenAllow => {
                            let text = "Now say bye.".to_owned();
                            self.phone
                                .send(&Message::FollowUp { task_id: task.into(), text })
                                .await;
                            self.phone.send(&decide(true)).await;
                        }
                    }
                }
                TaskEvent::Finished { .. } => return seen,
                _ => {}
            }
        }
    }

    /// Processes that carry this setup's mark in their environment (the
    /// agent, Claude Code, anything they started).
    fn agent_processes(&self) -> Vec<u32> {
        let needle = format!("TANDEM_ACP_TEST_MARK={}", self.mark);
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
            if environ.split(|b| *b == 0).any(|var| var == needle.as_bytes()) {
                found.push(pid);
            }
        }
        found
    }

    /// No process of the agent's is left (waits a moment for the kernel to
    /// reap what the group kill ended).
    async fn assert_agent_gone(&self) {
        for _ in 0..50 {
            if self.agent_processes().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the agent's processes are still there: {:?}", self.agent_processes());
    }

    fn written(&self) -> Option<String> {
        std::fs::read_to_string(self.project.join(FILE)).ok()
    }
}

fn finished(events: &[TaskEvent]) -> (FinishStatus, String, Vec<String>) {
    match events.last() {
        Some(TaskEvent::Finished { status, summary, denied, .. }) => {
            (*status, summary.clone(), denied.clone())
        }
        other => panic!("the task did not finish: {other:?}"),
    }
}

fn approvals(events: &[TaskEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            TaskEvent::ApprovalRequest { summary, detail, .. } => {
                Some((summary.clone(), detail.clone()))
            }
            _ => None,
        })
        .collect()
}

fn progress(events: &[TaskEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            TaskEvent::Progress { text } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn tool_results(events: &[TaskEvent]) -> Vec<(String, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            TaskEvent::ToolResult { output, is_error, .. } => Some((output.clone(), *is_error)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phone_allows_a_write_and_a_follow_up_continues_the_session() {
    let mut s = setup().await;
    let events = s.run("t-allow", "WRITE the file.", Answering::FollowUpThenAllow).await;
    let path = s.project.join(FILE).display().to_string();
    let write = format!("Write {path}");

    // Text, then the tool call, then its approval, in that order.
    let said = events
        .iter()
        .position(|e| matches!(e, TaskEvent::Progress { text } if text == "I will write the file."))
        .unwrap_or_else(|| panic!("no progress text: {events:#?}"));
    let called = events
        .iter()
        .position(|e| matches!(e, TaskEvent::ToolCall { name, .. } if *name == write))
        .unwrap_or_else(|| panic!("no tool call: {events:#?}"));
    let asked = events
        .iter()
        .position(|e| matches!(e, TaskEvent::ApprovalRequest { .. }))
        .unwrap_or_else(|| panic!("no approval: {events:#?}"));
    assert!(said < called && called < asked, "{events:#?}");
    // The write's diff (from the call's `diff` content) before its approval.
    let diff = events
        .iter()
        .position(|e| matches!(e, TaskEvent::Diff { path, .. } if path == FILE))
        .unwrap_or_else(|| panic!("no diff of {FILE}: {events:#?}"));
    assert!(called < diff && diff < asked, "{events:#?}");
    let TaskEvent::Diff { diff: text, added, .. } = &events[diff] else { unreachable!() };
    assert!(*added >= 1 && text.contains("+hi from the model"), "{text}");
    let TaskEvent::ToolCall { input, .. } = &events[called] else { unreachable!() };
    assert_eq!(input["kind"], "edit");
    assert_eq!(input["input"]["file_path"], json!(path));
    let [(summary, detail)] = approvals(&events).try_into().unwrap();
    assert_eq!(summary, write);
    assert!(detail.contains("+ hi from the model"), "{detail}");
    assert!(detail.contains("Allow (allow_once)"), "{detail}");

    // Allowed: written, through Tandem's fs/write_text_file.
    assert_eq!(s.written().as_deref(), Some(CONTENT));
    let results = tool_results(&events);
    assert!(matches!(results.as_slice(), [(_, false)]), "{results:?}");
    // The follow-up went as the next prompt of the same session: the model
    // saw the first turn with it, and its answer finished the task.
    assert!(events.iter().any(|e| matches!(e, TaskEvent::FollowUp { .. })), "{events:#?}");
    let (status, summary, denied) = finished(&events);
    assert_eq!((status, summary.as_str()), (FinishStatus::Succeeded, "bye"), "{events:#?}");
    assert!(denied.is_empty());
    let calls = s.api.requests();
    let bye = calls
        .iter()
        .filter(|c| c.is_message())
        .find(|c| last_user_text(&c.conversation()).contains("say bye"))
        .expect("the follow-up reached the model");
    let earlier = bye.conversation().messages().len();
    assert!(earlier >= 4, "the follow-up's turn carries the first one: {earlier} messages");
    assert!(progress(&events).iter().any(|p| p.starts_with("ran: ")), "{events:#?}");
    // The agent is stopped once the task is over.
    s.assert_agent_gone().await;

    // A follow-up after the finish starts the agent again on the same
    // session (`session/load`): the model sees the whole conversation, and
    // the history the agent replays is not shown again.
    let text = "Please say bye once more.".to_owned();
    s.phone.send(&Message::FollowUp { task_id: "t-allow".into(), text }).await;
    let events = s.follow("t-allow", Answering::Deny).await;
    let (status, summary, _) = finished(&events);
    assert_eq!((status, summary.as_str()), (FinishStatus::Succeeded, "bye"), "{events:#?}");
    assert_eq!(progress(&events), vec!["bye".to_owned()], "{events:#?}");
    let again = s
        .api
        .requests()
        .into_iter()
        .filter(|c| c.is_message())
        .find(|c| last_user_text(&c.conversation()).contains("once more"))
        .expect("the second follow-up reached the model");
    let messages = again.conversation().messages().len();
    assert!(messages > earlier, "the resumed session carries the earlier turns: {messages}");
    s.assert_agent_gone().await;
    s.phone.client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_or_unanswered_write_writes_nothing() {
    let mut s = setup().await;
    let events = s.run("t-deny", "WRITE the file.", Answering::Deny).await;
    assert_eq!(approvals(&events).len(), 1, "{events:#?}");
    assert_eq!(s.written(), None, "denied: nothing written");
    let results = tool_results(&events);
    assert!(matches!(results.as_slice(), [(_, true)]), "{results:?}");
    let (status, _, denied) = finished(&events);
    assert_eq!(status, FinishStatus::Succeeded, "{events:#?}");
    let write = format!("Write {}", s.project.join(FILE).display());
    assert_eq!(denied, vec![write.clone()], "the task says what was denied");
    s.assert_agent_gone().await;

    // Nobody answers: the approval timeout answers `cancelled`.
    let events = s.run("t-silent", "WRITE the file.", Answering::Ignore).await;
    assert!(
        events.iter().any(
            |e| matches!(e, TaskEvent::ApprovalResolved { allow: false, by, .. } if by == "timeout")
        ),
        "{events:#?}"
    );
    assert_eq!(s.written(), None, "unanswered: nothing written");
    let (_, _, denied) = finished(&events);
    assert_eq!(denied, vec![write]);
    s.assert_agent_gone().await;
    s.phone.client.close().await;

    // Both approvals are in the audit log as every executor's are: asked,
    // then decided by the phone and by the timeout.
    let log = std::fs::read_to_string(s.project.parent().unwrap().join("audit.log")).unwrap();
    let entries: Vec<Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let of = |task: &str, event: &str| {
        entries
            .iter()
            .filter(|e| e["task_id"] == task && e["event"] == event)
            .cloned()
            .collect::<Vec<_>>()
    };
    for task in ["t-deny", "t-silent"] {
        assert_eq!(of(task, "approval_requested").len(), 1, "{task}: {log}");
        let decided = of(task, "approval_decided");
        assert!(matches!(decided.as_slice(), [d] if d["allow"] == false), "{task}: {log}");
    }
    assert_eq!(of("t-silent", "approval_decided")[0]["by"], "timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_with_a_permission_pending_ends_the_task_and_the_agent() {
    let mut s = setup().await;
    let events = s.run("t-cancel", "WRITE the file.", Answering::Cancel).await;
    assert_eq!(approvals(&events).len(), 1, "{events:#?}");
    let (status, summary, _) = finished(&events);
    assert_eq!((status, summary.as_str()), (FinishStatus::Cancelled, "cancelled"), "{events:#?}");
    assert_eq!(s.written(), None);
    // Node and the Claude Code it started, at least.
    assert!(s.running_at_cancel >= 2, "{} agent processes found", s.running_at_cancel);
    // The agent ended its turn on `session/cancel` (the summary would say
    // it was stopped after the grace otherwise), then had its stdin closed
    // and the stop grace to exit before its group was stopped.
    let took = s.cancelled_at.unwrap().elapsed();
    let most = tandem_agent::acp::CANCEL_GRACE + tandem_agent::acp::STOP_GRACE;
    assert!(took < most, "the cancel took {took:?}");
    s.assert_agent_gone().await;
    s.phone.client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_outside_the_project_are_neither_read_nor_written() {
    let mut s = setup().await;
    // The agent reads without asking: Tandem's fs/read_text_file refuses.
    let events = s.run("t-read", "READ-OUTSIDE please.", Answering::Allow).await;
    assert!(approvals(&events).is_empty(), "{events:#?}");
    let secret = s.outside.join("secret.txt").display().to_string();
    let refused = format!("refused the agent's read of `{secret}`");
    assert!(progress(&events).iter().any(|p| p.starts_with(&refused)), "{events:#?}");
    let results = tool_results(&events);
    assert!(matches!(results.as_slice(), [(_, true)]), "{results:?}");
    let everything = format!("{events:?}");
    assert!(!everything.contains(SECRET), "the secret reached the phone");
    let calls = s.api.requests();
    assert!(calls.iter().all(|c| !c.body.to_string().contains(SECRET)), "the model saw it");
    assert_eq!(finished(&events).0, FinishStatus::Succeeded);

    // A write outside, even allowed on the phone, is refused.
    let events = s.run("t-write", "WRITE-OUTSIDE please.", Answering::Allow).await;
    assert_eq!(approvals(&events).len(), 1, "{events:#?}");
    let planted = s.outside.join("planted.txt");
    let refused = format!("refused the agent's write to `{}`", planted.display());
    assert!(progress(&events).iter().any(|p| p.starts_with(&refused)), "{events:#?}");
    assert!(!planted.exists());
    s.assert_agent_gone().await;
    s.phone.client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_agent_did_not_ask_for_is_asked_by_tandem() {
    // Every other test runs with an allow rule for the write planted in the
    // repository and the user's settings, and the agent still asks: the
    // default `session_meta` keeps Claude Code from loading them. Lifted
    // (`session_meta = {}`), the rule is real: the agent writes without
    // asking, and Tandem asks the phone before it writes.
    let mut s = setup_with("session_meta = {}", ALLOW_WRITE).await;
    unasked_write_denied(&mut s).await;
    // The adapter's own check of `Edit` rules reads the settings whatever
    // Tandem sends: the same happens with the pin in place.
    let mut s = setup_with("", r#"{"permissions":{"allow":["Edit"]}}"#).await;
    unasked_write_denied(&mut s).await;
}

/// A write task whose write the agent does not ask for: the phone is asked
/// once, by Tandem, denies it, and nothing is written.
async fn unasked_write_denied(s: &mut Setup) {
    let events = s.run("t-unasked", "WRITE the file.", Answering::Deny).await;
    let path = s.project.join(FILE).display().to_string();
    let asked: Vec<String> = approvals(&events).into_iter().map(|(summary, _)| summary).collect();
    let summary = format!("Write {path} (the agent did not ask)");
    assert_eq!(asked, vec![summary.clone()], "{events:#?}");
    assert_eq!(s.written(), None);
    let refused = format!("the phone did not allow the write to `{path}`");
    assert!(
        tool_results(&events).iter().any(|(output, error)| *error && output.contains(&refused)),
        "{events:#?}"
    );
    assert_eq!(finished(&events).2, vec![summary]);
    s.assert_agent_gone().await;
    s.phone.client.close().await;
}

/// The refusal of `task`: its code (panics if the task runs).
async fn refusal(phone: &mut Phone, task: &str) -> String {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), phone.message())
            .await
            .unwrap_or_else(|_| panic!("no refusal of {task}"));
        match m {
            Message::Refused { task_id: Some(t), code, .. } if t == task => return code,
            Message::TaskEvent { task_id, event, .. } if task_id == task => {
                panic!("{task} ran: {event:?}")
            }
            _ => {}
        }
    }
}

impl Setup {
    /// Submits `text` as `task` with `executor` in `project` and follows it.
    async fn run_in(
        &mut self,
        task: &str,
        text: &str,
        executor: &str,
        project: &str,
        answering: Answering,
    ) -> Vec<TaskEvent> {
        self.submit_in(task, text, executor, project).await;
        self.follow(task, answering).await
    }

    async fn submit_in(&mut self, task: &str, text: &str, executor: &str, project: &str) {
        self.submit_full(task, text, executor, project, None).await;
    }

    /// Submits `text` as `task`; `resume` continues that session.
    async fn submit_full(
        &mut self,
        task: &str,
        text: &str,
        executor: &str,
        project: &str,
        resume: Option<&str>,
    ) {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let submit = Message::TaskSubmit {
            task_id: task.into(),
            text: text.into(),
            workspace: some(project),
            executor: some(executor),
            resume: resume.map(str::to_owned),
        };
        self.phone.send(&submit).await;
    }

    /// The sessions the desktop lists for the default executor and project.
    async fn sessions(&mut self) -> Vec<tandem_proto::message::SessionSummary> {
        self.phone.send(&Message::SessionsRequest { executor: None, workspace: None }).await;
        loop {
            let m = self.phone.message_within(Duration::from_secs(60)).await;
            if let Message::Sessions { executor, sessions, .. } = m {
                assert_eq!(executor, "acp");
                return sessions;
            }
        }
    }

    /// The Claude Code CLI that `claude-code-acp` brings, run in the project
    /// with the agent's environment.
    fn terminal(&self, args: &[&str]) -> std::process::Output {
        let cli = acp_agent().parent().unwrap().join("../@anthropic-ai/claude-agent-sdk/cli.js");
        let home = self.root.join("home");
        std::process::Command::new("node")
            .arg(&cli)
            .current_dir(&self.project)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(messages_api::offline_env(&home, self.api.base_url(), "sk-ant-test-not-a-key"))
            .args(args)
            .output()
            .unwrap()
    }
}

/// Two projects, `open` (the default) and `locked`, with the same rules:
/// an allow rule for an edit of `hello.txt`, and in `locked` a deny rule for
/// `hello*` as well. Rules answer before the phone is asked, the thread
/// shows which rule decided, and the deny rule wins where both match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_rules_allow_and_deny_the_agents_write() {
    let rules = "[[project]]\nname = \"open\"\npath = \"{root}/project\"\n\n\
                 [[project]]\nname = \"locked\"\npath = \"{root}/locked\"\n\n\
                 [[rule]]\nallow = \"Edit(hello.txt)\"\nexecutor = \"acp\"\n\n\
                 [[rule]]\ndeny = \"Edit(hello*)\"\nproject = \"locked\"\n";
    let mut s = setup_full(Extra { after: rules, ..Extra::default() }).await;
    let locked = s.root.join("locked");
    std::fs::create_dir_all(&locked).unwrap();

    // Allowed by the rule: the phone, which never answers, sees the request
    // and that the rule allowed it; the file is written.
    let events = s.run("t-rule-allow", "WRITE-HERE the file.", Answering::Ignore).await;
    assert_eq!(approvals(&events).len(), 1, "{events:#?}");
    assert_eq!(common::resolutions(&events), [(true, "rule:allow Edit(hello.txt)".to_owned())]);
    assert_eq!(s.written().as_deref(), Some(CONTENT));
    let (status, _, denied) = finished(&events);
    assert_eq!((status, denied.len()), (FinishStatus::Succeeded, 0), "{events:#?}");
    s.assert_agent_gone().await;

    // In `locked` the deny rule matches too, and wins: the phone's allow
    // comes too late, nothing is written, the task lists the denied write.
    let events =
        s.run_in("t-rule-deny", "WRITE-HERE the file.", "", "locked", Answering::Allow).await;
    assert_eq!(common::resolutions(&events), [(false, "rule:deny Edit(hello*)".to_owned())]);
    assert!(!locked.join(FILE).exists(), "denied by the rule, yet written");
    let (_, _, denied) = finished(&events);
    assert_eq!(denied, vec![format!("Write {}", locked.join(FILE).display())], "{events:#?}");
    s.assert_agent_gone().await;
    s.phone.client.close().await;

    // The audit log names the rule that decided each.
    let audit = std::fs::read_to_string(s.root.join("audit.log")).unwrap();
    for (task, rule) in
        [("t-rule-allow", "rule:allow Edit(hello.txt)"), ("t-rule-deny", "rule:deny Edit(hello*)")]
    {
        assert!(
            audit
                .lines()
                .any(|l| l.contains("approval_decided") && l.contains(task) && l.contains(rule)),
            "{task}: {audit}"
        );
    }
}

/// The phone picks the ACP executor (not the default) and a project (not
/// the default): the agent runs in that project's directory, where Tandem
/// lets it write; an unknown project or executor is refused, never run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phone_picks_the_acp_executor_and_a_project() {
    let before = "[[executor]]\nname = \"say\"\ntype = \"command\"\nprogram = \"echo\"\n";
    let after = "[[project]]\nname = \"alpha\"\npath = \"{root}/project\"\n\n\
                 [[project]]\nname = \"beta\"\npath = \"{root}/beta\"\n";
    let mut s = setup_full(Extra { before, after, ..Extra::default() }).await;
    let beta = s.root.join("beta");
    std::fs::create_dir_all(&beta).unwrap();

    s.submit_in("t-beta", "WRITE-HERE the file.", "acp", "beta").await;
    let mut accepted = None;
    let events = s.follow("t-beta", Answering::Allow).await;
    for e in &events {
        if let TaskEvent::Accepted { executor, project, .. } = e {
            accepted = Some((executor.clone(), project.clone()));
        }
    }
    assert_eq!(accepted, Some(("acp".to_owned(), Some("beta".to_owned()))), "{events:#?}");
    let [(summary, _)] = approvals(&events).try_into().unwrap();
    assert_eq!(summary, format!("Write {}", beta.join(FILE).display()));
    assert_eq!(std::fs::read_to_string(beta.join(FILE)).ok().as_deref(), Some(CONTENT));
    assert_eq!(s.written(), None, "the default project was left alone");
    assert_eq!(finished(&events).0, FinishStatus::Succeeded, "{events:#?}");
    s.assert_agent_gone().await;

    // Unknown ones: refused with their codes; the model is not called.
    let calls = s.api.requests().len();
    s.submit_in("t-gamma", "WRITE-HERE the file.", "acp", "gamma").await;
    assert_eq!(refusal(&mut s.phone, "t-gamma").await, "unknown_project");
    s.submit_in("t-nobody", "WRITE-HERE the file.", "nobody", "beta").await;
    assert_eq!(refusal(&mut s.phone, "t-nobody").await, "unknown_executor");
    assert_eq!(s.api.requests().len(), calls);
    s.phone.client.close().await;
}

/// Hand-off to the terminal: `tandem tasks ID` of an ACP task prints its
/// session id and, for Zed's Claude Code adapter, the `claude --resume`
/// line; the Claude Code CLI the adapter brings, run as the line says,
/// continues the conversation the phone's task had (both of its turns: the
/// agent was not stopped before it wrote the last one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acp_session_started_from_the_phone_continues_at_the_terminal() {
    let mut s = setup().await;
    let events = s.run("t-hand-off", "WRITE the file.", Answering::FollowUpThenAllow).await;
    assert_eq!(finished(&events).0, FinishStatus::Succeeded, "{events:#?}");
    let config = s.root.join("config.toml");
    let out =
        common::tandem(&s.root, &["--config", config.to_str().unwrap(), "tasks", "t-hand-off"]);
    let session = out
        .lines()
        .find_map(|l| l.strip_prefix("ACP session: "))
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    assert!(!session.is_empty() && !session.contains(' '), "{out}");
    let prefix = "Continue this Claude Code session at the terminal: ";
    let line = out.lines().find_map(|l| l.strip_prefix(prefix)).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(line, format!("cd '{}' && 'claude' --resume '{session}'", s.project.display()));

    // At the terminal, in the project, with the CLI the adapter runs.
    let from = s.api.requests().len();
    let run = s.terminal(&["-p", "--resume", &session, "And now?"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let calls = s.api.requests();
    let resumed = calls[from..].iter().filter(|c| c.is_message()).any(|c| {
        let text = serde_json::to_string(c.conversation().messages()).unwrap();
        let said_bye = text.contains(r#""text":"bye""#);
        text.contains("WRITE the file.") && said_bye && text.contains("And now?")
    });
    assert!(resumed, "the terminal's request did not carry both of the phone's turns");
    s.phone.client.close().await;

    // The agent lists the session for the project (`session/list`), titled
    // by its first prompt; it is stopped afterwards.
    let home = s.root.join("home");
    let mut env: Vec<(String, String)> =
        messages_api::offline_env(&home, s.api.base_url(), "sk-ant-test-not-a-key")
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
    env.push(("TANDEM_ACP_TEST_MARK".into(), s.mark.clone()));
    let config = tandem_agent::executor::ExecutorConfig {
        name: "acp".into(),
        kind: tandem_agent::executor::ExecutorKind::Acp {
            program: acp_agent().display().to_string(),
            args: Vec::new(),
            session_meta: None,
        },
        workdir: Some(s.project.clone()),
        env,
    };
    let listed = tandem_agent::acp::list_sessions(&config).await.unwrap();
    let entry = listed.iter().find(|e| e.id == session).unwrap_or_else(|| panic!("{listed:?}"));
    assert_eq!(entry.title, "WRITE the file.");
    let now_ms = common::now_unix() * 1000;
    assert!(
        entry.updated_ms + 600_000 > now_ms && entry.updated_ms <= now_ms + 60_000,
        "{entry:?}"
    );
    s.assert_agent_gone().await;
}

/// Hand-off to the phone (`sessions_request`, `task_submit.resume`): the
/// desktop lists the ACP agent's sessions for the project (`session/list`):
/// one a phone task ran (with its task id) and one started at the terminal
/// with the Claude Code CLI the adapter brings; a phone continues each
/// (`session/load`, then the prompt): the model sees the earlier turns, the
/// phone does not see them replayed. An id the agent does not list is
/// refused (`unknown_session`) and the agent never gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acp_sessions_are_listed_and_continued_from_the_phone() {
    let mut s = setup().await;
    let events = s.run("t-first", "WRITE the file.", Answering::Allow).await;
    assert_eq!(finished(&events).0, FinishStatus::Succeeded, "{events:#?}");
    let run = s.terminal(&["-p", "Remember the word pelican."]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));

    let sessions = s.sessions().await;
    let from_task = sessions
        .iter()
        .find(|x| x.task_id.as_deref() == Some("t-first"))
        .unwrap_or_else(|| panic!("{sessions:?}"))
        .clone();
    assert_eq!(from_task.title, "WRITE the file.");
    let from_terminal = sessions
        .iter()
        .find(|x| x.title == "Remember the word pelican.")
        .unwrap_or_else(|| panic!("{sessions:?}"))
        .clone();
    assert!(from_terminal.task_id.is_none(), "started at the terminal: {sessions:?}");
    s.assert_agent_gone().await;

    // Not listed: refused, nothing runs.
    let calls = s.api.requests().len();
    let bogus = Some("00000000-0000-4000-8000-000000000000");
    s.submit_full("t-bogus", "say bye", "", "", bogus).await;
    assert_eq!(refusal(&mut s.phone, "t-bogus").await, "unknown_session");
    assert_eq!(s.api.requests().len(), calls);

    // The phone's own session, continued by another task.
    s.submit_full("t-again", "Please say bye once more.", "", "", Some(&from_task.id)).await;
    let events = s.follow("t-again", Answering::Deny).await;
    let resumed = events.iter().find_map(|e| match e {
        TaskEvent::Accepted { resumed, .. } => Some(resumed.clone()),
        _ => None,
    });
    assert_eq!(resumed, Some(Some(from_task.id.clone())), "{events:#?}");
    let (status, summary, _) = finished(&events);
    assert_eq!((status, summary.as_str()), (FinishStatus::Succeeded, "bye"), "{events:#?}");
    assert_eq!(progress(&events), vec!["bye".to_owned()], "nothing replayed: {events:#?}");
    let carried = s.api.requests()[calls..].iter().filter(|c| c.is_message()).any(|c| {
        let text = serde_json::to_string(c.conversation().messages()).unwrap();
        text.contains("WRITE the file.") && text.contains("once more")
    });
    assert!(carried, "the resumed session did not carry the first task's turn");
    s.assert_agent_gone().await;

    // The terminal's session, continued from the phone.
    let calls = s.api.requests().len();
    s.submit_full("t-pelican", "Which word was it? say bye", "", "", Some(&from_terminal.id)).await;
    let events = s.follow("t-pelican", Answering::Deny).await;
    assert_eq!(finished(&events).0, FinishStatus::Succeeded, "{events:#?}");
    let carried = s.api.requests()[calls..].iter().filter(|c| c.is_message()).any(|c| {
        let text = serde_json::to_string(c.conversation().messages()).unwrap();
        text.contains("Remember the word pelican.") && text.contains("Which word was it?")
    });
    assert!(carried, "the phone's request did not carry the terminal's conversation");
    s.assert_agent_gone().await;
    s.phone.client.close().await;
}
