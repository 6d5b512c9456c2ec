//! The `claude` executor: Claude Code in print mode, and the MCP permission
//! tool that routes its permission prompts to the phone.
//!
//! A task runs
//! `claude -p --output-format stream-json --verbose --mcp-config <json>
//! --permission-prompt-tool mcp__tandem__approval_prompt --strict-mcp-config
//! --setting-sources <sources> [--resume <session>] <configured args…> --
//! <task text>`: no shell, and the task text is the one argument after `--`,
//! so even a text that starts with `-` is the prompt.
//! Claude Code's stream-json lines become events: assistant text is
//! progress, `tool_use` blocks are tool calls, `tool_result` blocks are tool
//! results, the session id (from `system`/`init` and `result`) makes the task
//! resumable, and the `result` line finishes it. Lines that are not JSON
//! become progress; JSON of types this module does not know (partial
//! messages, rate-limit notices, future additions) is ignored.
//!
//! **Permissions.** The `--mcp-config` names one stdio MCP server, `tandem`:
//! this very binary, `tandem mcp-permission --socket <path>`
//! ([`serve_permission_tool`], built on `rmcp`). Claude Code calls its
//! `approval_prompt` tool with `{tool_name, input, tool_use_id}` whenever a
//! step needs permission; the tool connects to a Unix socket that the
//! executor created for this task (mode 0600, in a fresh 0700 directory under
//! the temporary directory, removed when the task ends), sends the request as
//! one JSON line and waits for the one-line answer. The executor turns each
//! request into an [`ExecEvent::ApprovalRequest`] (its id is Claude's
//! `tool_use_id` when there is one) and answers when a
//! [`Control::Decision`] arrives. The tool then returns what Claude Code
//! expects: `{"behavior":"allow","updatedInput":<the input, unchanged>}` or
//! `{"behavior":"deny","message":"Denied from the phone"}`. Requests still
//! pending when a run ends or the task is cancelled are denied. Unless the
//! environment (the agent's or the executor's `env`) already sets it,
//! `MCP_TOOL_TIMEOUT` is set to 10 minutes so Claude Code keeps waiting for
//! the phone longer than the agent's approval timeout.
//!
//! **Pinned.** Only the permission tool decides: `--strict-mcp-config`
//! keeps every other MCP server out, and `--setting-sources` loads only the
//! settings files the executor's `setting_sources` names (none by default),
//! so a repository's `.claude/settings.json` or `.claude/settings.local.json`
//! can neither allow a tool nor run a hook (see [`pinning`]).
//!
//! **Follow-ups.** While Claude works, a [`Control::FollowUp`] is queued;
//! when the current run ends, the next queued text runs as
//! `--resume <session>` in the same [`Running`], and the task finishes once,
//! with the last run's result. After the finish, [`crate::executor::resume`]
//! starts a new run on the reported session.
//!
//! Cancel (or dropping the [`Running`]) stops the run's whole process group:
//! Claude Code, the permission server it started, and the tools it runs in
//! that group.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tandem_proto::message::FinishStatus;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, warn};

pub mod pinning;
pub mod sessions;

pub use pinning::{SETTING_SOURCES_FLAG, STRICT_MCP_CONFIG_FLAG, SettingSource};

use crate::executor::{
    Control, Controller, DRAIN_GRACE, EXIT_GRACE, ExecError, ExecEvent, ExecutorConfig,
    ExecutorKind, Interrupt, MAX_EVENT_TEXT, MAX_ID_LEN, Proc, Route, Running, Stream, cap_json,
    cap_text, close_controls, describe_exit, send_steered,
};

/// The MCP server's name in the `--mcp-config` Claude Code gets.
pub const MCP_SERVER_NAME: &str = "tandem";

/// The permission tool's name on that server.
pub const PERMISSION_TOOL: &str = "approval_prompt";

/// What `--permission-prompt-tool` names: `mcp__<server>__<tool>`.
pub const PERMISSION_PROMPT_TOOL: &str = "mcp__tandem__approval_prompt";

/// The hidden `tandem` subcommand that serves the permission tool.
pub const MCP_SUBCOMMAND: &str = "mcp-permission";

/// The message Claude Code gets when the phone denies a step.
pub const DENIED_FROM_PHONE: &str = "Denied from the phone";

/// `MCP_TOOL_TIMEOUT` for Claude Code unless the environment sets one (ms):
/// longer than the agent's approval timeout, so the phone is waited for.
const MCP_TOOL_TIMEOUT_MS: &str = "600000";

/// Longest permission request read from the socket; a longer one is denied.
const MAX_REQUEST_BYTES: u64 = 4 * 1024 * 1024;

/// How long a connection to the permission socket may take to send its
/// request.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long writing an answer to the permission socket may take.
const ANSWER_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the permission tool waits for the agent's answer before it
/// denies (the agent's own approval timeout is much shorter).
const ANSWER_WAIT: Duration = Duration::from_secs(30 * 60);

/// Events buffered between the supervisor and the consumer of [`Running`].
const EVENT_BUFFER: usize = 64;

/// Control messages (follow-ups, decisions) buffered for the supervisor.
const CONTROL_BUFFER: usize = 16;

/// Permission requests buffered for the supervisor.
const ASK_BUFFER: usize = 16;

/// Errors of the permission tool (`tandem mcp-permission`).
#[derive(Debug, thiserror::Error)]
pub enum ClaudeError {
    /// The MCP session over stdio failed.
    #[error("the MCP permission server failed: {0}")]
    Mcp(String),
}

/// One permission request, as Claude Code passes it to the tool and as the
/// tool forwards it to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PermissionRequest {
    /// The tool Claude wants to use (`Bash`, `Write`, `mcp__x__y`, …).
    pub tool_name: String,
    /// Its input.
    #[serde(default)]
    pub input: Map<String, Value>,
    /// Claude's id of the tool use, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_use_id: Option<String>,
}

/// The agent's answer to a [`PermissionRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionAnswer {
    /// Whether the step may go ahead.
    pub allow: bool,
    /// Why not (shown to Claude).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl PermissionAnswer {
    fn deny(message: impl Into<String>) -> Self {
        PermissionAnswer { allow: false, message: Some(message.into()) }
    }
}

/// The permission tool's result text for Claude Code: `allow` with the
/// original input, or `deny` with a message.
pub fn decision_text(request: &PermissionRequest, answer: &PermissionAnswer) -> String {
    let value = if answer.allow {
        serde_json::json!({ "behavior": "allow", "updatedInput": request.input })
    } else {
        let message = answer.message.as_deref().unwrap_or(DENIED_FROM_PHONE);
        serde_json::json!({ "behavior": "deny", "message": message })
    };
    value.to_string()
}

/// One stdout line of Claude Code, understood.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Parsed {
    /// Progress, a tool call or a tool result.
    Event(ExecEvent),
    /// The session id the line carried.
    Session(String),
    /// The run's final result.
    Result {
        /// Succeeded unless the result is an error.
        status: FinishStatus,
        /// The final answer, or what went wrong.
        summary: String,
    },
}

/// Turns one stdout line of `claude --output-format stream-json` into what
/// it means. Never fails: a line that is not JSON is progress, JSON that is
/// not understood is ignored.
pub(crate) fn parse_line(line: &str) -> Vec<Parsed> {
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(line) else {
        return vec![Parsed::Event(ExecEvent::Progress(cap_text(line.to_owned(), MAX_EVENT_TEXT)))];
    };
    let mut out = Vec::new();
    if let Some(id) = obj.get("session_id").and_then(Value::as_str)
        && is_session_id(id)
    {
        out.push(Parsed::Session(id.to_owned()));
    }
    match obj.get("type").and_then(Value::as_str) {
        Some("assistant") => {
            for block in content_blocks(&obj) {
                // Claude Code's plan: shown as a checklist too.
                let plan = (str_field(&block, "type") == Some("tool_use")
                    && str_field(&block, "name") == Some("TodoWrite"))
                .then(|| {
                    crate::executor::plan_text(block.get("input").and_then(|i| i.get("todos")))
                });
                out.extend(assistant_block(block).map(Parsed::Event));
                if let Some(plan) = plan {
                    out.push(Parsed::Event(ExecEvent::Progress(cap_text(plan, MAX_EVENT_TEXT))));
                }
            }
        }
        Some("user") => {
            for block in content_blocks(&obj) {
                out.extend(tool_result_block(block).map(Parsed::Event));
            }
        }
        Some("result") => {
            let denied = permission_denials(&obj);
            if !denied.is_empty() {
                out.push(Parsed::Event(ExecEvent::Denied { tools: denied }));
            }
            let (status, summary) = result_of(&obj);
            out.push(Parsed::Result { status, summary });
        }
        other => debug!(kind = ?other, "ignoring a Claude Code line"),
    }
    out
}

/// Whether `id` can be passed back to `--resume` as it is.
fn is_session_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('-')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The content blocks of an `assistant` or `user` line (a string content is
/// one text block).
fn content_blocks(obj: &Map<String, Value>) -> Vec<Value> {
    match obj.get("message").and_then(|m| m.get("content")) {
        Some(Value::Array(blocks)) => blocks.clone(),
        Some(Value::String(text)) => vec![serde_json::json!({ "type": "text", "text": text })],
        _ => Vec::new(),
    }
}

fn str_field<'a>(block: &'a Value, key: &str) -> Option<&'a str> {
    block.get(key).and_then(Value::as_str)
}

fn assistant_block(block: Value) -> Option<ExecEvent> {
    match str_field(&block, "type")? {
        "text" => {
            let text = str_field(&block, "text")?;
            (!text.trim().is_empty())
                .then(|| ExecEvent::Progress(cap_text(text.to_owned(), MAX_EVENT_TEXT)))
        }
        "tool_use" => Some(ExecEvent::ToolCall {
            call_id: cap_text(str_field(&block, "id")?.to_owned(), MAX_ID_LEN),
            name: cap_text(str_field(&block, "name")?.to_owned(), MAX_ID_LEN),
            input: cap_json(block.get("input").cloned().unwrap_or(Value::Null)),
        }),
        // Thinking and anything newer stay on the desktop.
        _ => None,
    }
}

fn tool_result_block(block: Value) -> Option<ExecEvent> {
    if str_field(&block, "type")? != "tool_result" {
        // A user line's text is the prompt itself (or a replayed message).
        return None;
    }
    let call_id = cap_text(str_field(&block, "tool_use_id")?.to_owned(), MAX_ID_LEN);
    let output = match block.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| match (str_field(part, "type"), str_field(part, "text")) {
                (Some("text"), Some(text)) => text.to_owned(),
                (Some(kind), _) => format!("[{kind}]"),
                (None, _) => part.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        None | Some(Value::Null) => String::new(),
        Some(other) => other.to_string(),
    };
    let is_error = block.get("is_error").and_then(Value::as_bool).unwrap_or(false);
    Some(ExecEvent::ToolResult { call_id, output: cap_text(output, MAX_EVENT_TEXT), is_error })
}

/// The tool names in a `result` line's `permission_denials` (Claude Code
/// lists there every tool call it was refused: by the permission tool, that
/// is a denied approval, or by its own settings).
fn permission_denials(obj: &Map<String, Value>) -> Vec<String> {
    obj.get("permission_denials")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|d| str_field(d, "tool_name"))
                .map(|name| cap_text(name.to_owned(), MAX_ID_LEN))
                .collect()
        })
        .unwrap_or_default()
}

/// How a `result` line finishes the task.
fn result_of(obj: &Map<String, Value>) -> (FinishStatus, String) {
    let subtype = obj.get("subtype").and_then(Value::as_str).unwrap_or("");
    let is_error = obj.get("is_error").and_then(Value::as_bool).unwrap_or(false);
    let failed = is_error || subtype != "success";
    let result = obj.get("result").and_then(Value::as_str).unwrap_or("").trim();
    let errors: Vec<&str> = obj
        .get("errors")
        .and_then(Value::as_array)
        .map(|e| e.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let summary = if !result.is_empty() {
        result.to_owned()
    } else if !errors.is_empty() {
        errors.join("; ")
    } else {
        match subtype {
            "success" if !failed => "done".to_owned(),
            "error_max_turns" => {
                "Claude Code stopped: it reached the maximum number of turns".into()
            }
            "error_during_execution" => "Claude Code stopped with an error".into(),
            "" => "Claude Code failed".into(),
            other => format!("Claude Code stopped: {other}"),
        }
    };
    let status = if failed { FinishStatus::Failed } else { FinishStatus::Succeeded };
    (status, cap_text(summary, MAX_EVENT_TEXT))
}

/// Claude Code's arguments: print mode, stream-json, the permission tool,
/// the pinning flags (`--strict-mcp-config`, `--setting-sources` with
/// `sources`), `--resume`, the configured extra arguments, then `--` and the
/// task text.
pub(crate) fn command_line(
    extra_args: &[String],
    sources: &[SettingSource],
    mcp_config: &str,
    resume: Option<&str>,
    text: &str,
) -> Vec<String> {
    let mut argv: Vec<String> = [
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--mcp-config",
        mcp_config,
        "--permission-prompt-tool",
        PERMISSION_PROMPT_TOOL,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    argv.extend(pinning::pinning_args(sources));
    if let Some(session) = resume {
        argv.push("--resume".to_owned());
        argv.push(session.to_owned());
    }
    argv.extend(extra_args.iter().cloned());
    argv.push("--".to_owned());
    argv.push(text.to_owned());
    argv
}

/// The `--mcp-config` JSON: one stdio server, `exe mcp-permission --socket
/// <socket>`.
pub(crate) fn mcp_config(exe: &Path, socket: &Path) -> Result<String, ExecError> {
    let not_utf8 =
        |what: &str| ExecError::Setup(io::Error::new(io::ErrorKind::InvalidInput, what.to_owned()));
    let exe = exe.to_str().ok_or_else(|| not_utf8("the agent's path is not UTF-8"))?;
    let socket = socket.to_str().ok_or_else(|| not_utf8("the socket path is not UTF-8"))?;
    let config = serde_json::json!({
        "mcpServers": {
            MCP_SERVER_NAME: {
                "type": "stdio",
                "command": exe,
                "args": [MCP_SUBCOMMAND, "--socket", socket],
            }
        }
    });
    Ok(config.to_string())
}

/// A one-line summary of a permission request: `<tool>: <what it does>`.
fn approval_summary(request: &PermissionRequest) -> String {
    let input = &request.input;
    let main = ["command", "file_path", "path", "url", "pattern", "query", "description"]
        .iter()
        .find_map(|key| input.get(*key).and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| Value::Object(input.clone()).to_string());
    // Whole: the task manager cuts a long one to its head and tail, so
    // the end of a long command is never hidden.
    let short: String = main.split_whitespace().collect::<Vec<_>>().join(" ");
    let tool: String = request.tool_name.chars().filter(|c| !c.is_control()).take(64).collect();
    format!("{tool}: {short}")
}

/// Everything needed to decide: the tool and its input, pretty-printed
/// (capped by the task manager, head and tail).
fn approval_detail(request: &PermissionRequest) -> String {
    let input = serde_json::to_string_pretty(&request.input).unwrap_or_default();
    format!("{}\n{input}", request.tool_name)
}

/// Starts (or, with `resume`, continues) a Claude Code task for `config`,
/// with this executable as the permission tool. Called by
/// [`crate::executor::start`] and [`crate::executor::resume`].
///
/// # Errors
/// As [`start_with`].
pub fn start(
    config: &ExecutorConfig,
    text: &str,
    resume: Option<&str>,
) -> Result<Running, ExecError> {
    let exe = std::env::current_exe().map_err(ExecError::Setup)?;
    start_with(config, text, resume, &exe)
}

/// [`start`] with an explicit permission server: `permission_exe
/// mcp-permission --socket <path>` must serve the permission tool (the
/// `tandem` binary; tests pass its path).
///
/// # Errors
/// [`ExecError::Unsupported`] if `config` is not a Claude executor or the
/// platform has no Unix sockets, [`ExecError::Setup`] if the permission
/// socket cannot be created, [`ExecError::Workdir`] or [`ExecError::Spawn`]
/// as for any executor.
pub fn start_with(
    config: &ExecutorConfig,
    text: &str,
    resume: Option<&str>,
    permission_exe: &Path,
) -> Result<Running, ExecError> {
    let ExecutorKind::Claude { program, args, setting_sources } = &config.kind else {
        return Err(ExecError::Unsupported("not a Claude Code executor"));
    };
    let (asks_tx, asks) = mpsc::channel(ASK_BUFFER);
    let bridge = bridge::Bridge::open(asks_tx)?;
    let mcp_config = mcp_config(permission_exe, bridge.socket())?;
    let mut env = Vec::new();
    if std::env::var_os("MCP_TOOL_TIMEOUT").is_none() {
        env.push(("MCP_TOOL_TIMEOUT".to_owned(), MCP_TOOL_TIMEOUT_MS.to_owned()));
    }
    let argv = command_line(args, setting_sources, &mcp_config, resume, text);
    let proc = Proc::spawn(config, program, &argv, &env, false)?;

    let (events_tx, events) = mpsc::channel(EVENT_BUFFER);
    let (cancel_tx, cancel) = mpsc::channel(1);
    let (controls_tx, controls) = mpsc::channel(CONTROL_BUFFER);
    let supervisor = Supervisor {
        config: config.clone(),
        program: program.clone(),
        args: args.clone(),
        setting_sources: setting_sources.clone(),
        mcp_config,
        env,
        events: events_tx,
        cancel,
        controls,
        controls_open: true,
        asks,
        asks_open: true,
        pending: HashMap::new(),
        used_ids: HashSet::new(),
        next_id: 0,
        session: resume.map(str::to_owned),
        reported: None,
        follow_ups: VecDeque::new(),
        _bridge: bridge,
    };
    tokio::spawn(supervisor.run(proc));
    Ok(Running::new(events, Controller::new(Route::Claude(controls_tx), cancel_tx)))
}

/// A permission request waiting for the supervisor, with where to answer.
#[derive(Debug)]
struct Ask {
    request: PermissionRequest,
    reply: oneshot::Sender<PermissionAnswer>,
}

/// How one `claude -p` run ended.
enum RunEnd {
    /// The process exited (or was stopped after its result).
    Ended {
        result: Option<(FinishStatus, String)>,
        exit: Option<io::Result<ExitStatus>>,
        last_stderr: Option<String>,
    },
    /// [`Control::Cancel`].
    Cancelled,
    /// The [`Running`] and every [`Controller`] were dropped.
    Abandoned,
}

/// Owns the task: one `claude -p` run after another (the first, then one per
/// queued follow-up), the permission requests, and the one final `Finished`.
struct Supervisor {
    config: ExecutorConfig,
    program: String,
    args: Vec<String>,
    setting_sources: Vec<SettingSource>,
    mcp_config: String,
    env: Vec<(String, String)>,
    events: mpsc::Sender<ExecEvent>,
    cancel: mpsc::Receiver<()>,
    controls: mpsc::Receiver<Control>,
    controls_open: bool,
    asks: mpsc::Receiver<Ask>,
    asks_open: bool,
    /// Approval requests waiting for a decision, by approval id.
    pending: HashMap<String, oneshot::Sender<PermissionAnswer>>,
    /// Every approval id issued, so none is issued twice.
    used_ids: HashSet<String>,
    next_id: u64,
    /// The latest session id Claude Code reported (or the resumed one).
    session: Option<String>,
    /// The last session id sent as [`ExecEvent::Resumable`].
    reported: Option<String>,
    follow_ups: VecDeque<String>,
    /// Removes the socket directory when the task ends.
    _bridge: bridge::Bridge,
}

impl Supervisor {
    async fn run(mut self, mut proc: Proc) {
        loop {
            match self.watch(&mut proc).await {
                RunEnd::Cancelled => {
                    proc.terminate().await;
                    self.deny_pending("The task was cancelled");
                    self.finish(FinishStatus::Cancelled, "cancelled".to_owned()).await;
                    return;
                }
                RunEnd::Abandoned => {
                    debug!("claude executor abandoned; terminating it");
                    proc.terminate().await;
                    return;
                }
                RunEnd::Ended { result, exit, last_stderr } => {
                    self.deny_pending("Claude Code's run ended before an answer");
                    self.drain_controls();
                    if let Some(text) = self.follow_ups.pop_front() {
                        match self.spawn_follow_up(&text) {
                            Ok(next) => {
                                proc = next;
                                continue;
                            }
                            Err(e) => {
                                let summary = format!("could not run the follow-up: {e}");
                                self.finish(FinishStatus::Failed, summary).await;
                                return;
                            }
                        }
                    }
                    let (status, summary) = result.unwrap_or_else(|| {
                        let exit = match exit {
                            Some(Ok(s)) => describe_exit(s),
                            Some(Err(e)) => format!("could not wait for it: {e}"),
                            None => "stopped".to_owned(),
                        };
                        let mut summary = format!("Claude Code exited without a result ({exit})");
                        if let Some(line) = last_stderr {
                            summary.push_str(": ");
                            summary.push_str(&line);
                        }
                        (FinishStatus::Failed, cap_text(summary, MAX_EVENT_TEXT))
                    });
                    self.finish(status, summary).await;
                    return;
                }
            }
        }
    }

    /// Starts the next run: `--resume <session> -- <text>`.
    fn spawn_follow_up(&self, text: &str) -> Result<Proc, ExecError> {
        let Some(session) = &self.session else {
            return Err(ExecError::Unsupported("Claude Code reported no session to resume"));
        };
        let argv =
            command_line(&self.args, &self.setting_sources, &self.mcp_config, Some(session), text);
        Proc::spawn(&self.config, &self.program, &argv, &self.env, false)
    }

    /// Runs until this run is over (exited and output read), a cancel, or
    /// abandonment.
    async fn watch(&mut self, proc: &mut Proc) -> RunEnd {
        let mut result = None;
        let mut exit = None;
        let mut lines_open = true;
        let mut last_stderr = None;
        let mut drain_deadline = Instant::now();
        let mut result_deadline: Option<Instant> = None;
        loop {
            if !lines_open && exit.is_some() {
                return RunEnd::Ended { result, exit, last_stderr };
            }
            tokio::select! {
                biased;
                c = self.cancel.recv() => {
                    return if c.is_some() { RunEnd::Cancelled } else { RunEnd::Abandoned };
                }
                () = self.events.closed() => return RunEnd::Abandoned,
                c = self.controls.recv(), if self.controls_open => match c {
                    Some(c) => self.on_control(c),
                    None => self.controls_open = false,
                },
                ask = self.asks.recv(), if self.asks_open => match ask {
                    Some(ask) => {
                        if let Some(end) = self.on_ask(ask).await {
                            return end;
                        }
                    }
                    None => self.asks_open = false,
                },
                line = proc.lines.recv(), if lines_open => match line {
                    Some((Stream::Stderr, text)) => {
                        if !text.trim().is_empty() {
                            last_stderr = Some(cap_text(text.clone(), 1024));
                            let event = ExecEvent::Progress(
                                cap_text(format!("stderr: {text}"), MAX_EVENT_TEXT),
                            );
                            if let Some(end) = self.emit(event).await {
                                return end;
                            }
                        }
                    }
                    Some((Stream::Stdout, text)) => {
                        if text.trim().is_empty() {
                            continue;
                        }
                        for parsed in parse_line(&text) {
                            let event = match parsed {
                                Parsed::Event(event) => event,
                                Parsed::Session(id) => {
                                    self.session = Some(id.clone());
                                    if self.reported.as_ref() == Some(&id) {
                                        continue;
                                    }
                                    self.reported = Some(id.clone());
                                    ExecEvent::Resumable { token: id }
                                }
                                Parsed::Result { status, summary } => {
                                    result = Some((status, summary));
                                    result_deadline.get_or_insert(Instant::now() + EXIT_GRACE);
                                    continue;
                                }
                            };
                            if let Some(end) = self.emit(event).await {
                                return end;
                            }
                        }
                    }
                    None => lines_open = false,
                },
                status = proc.child.wait(), if exit.is_none() => {
                    exit = Some(status);
                    drain_deadline = Instant::now() + DRAIN_GRACE;
                }
                () = sleep_until(drain_deadline), if exit.is_some() => {
                    // A leftover child still holds the pipes; stop waiting.
                    return RunEnd::Ended { result, exit, last_stderr };
                }
                () = sleep_until(result_deadline.unwrap_or(drain_deadline)),
                    if result_deadline.is_some() && exit.is_none() =>
                {
                    warn!("Claude Code still running after its result; terminating it");
                    proc.terminate().await;
                    return RunEnd::Ended { result, exit: None, last_stderr };
                }
            }
        }
    }

    /// A follow-up is queued; a decision answers its pending request.
    fn on_control(&mut self, c: Control) {
        match c {
            Control::FollowUp(text) => self.follow_ups.push_back(text),
            Control::Expired { approval_id } => {
                self.on_control(Control::Decision { approval_id, allow: false });
            }
            Control::Decision { approval_id, allow, .. } => match self.pending.remove(&approval_id)
            {
                Some(reply) => {
                    let answer = if allow {
                        PermissionAnswer { allow: true, message: None }
                    } else {
                        PermissionAnswer::deny(DENIED_FROM_PHONE)
                    };
                    // The permission tool may have gone; nothing to tell then.
                    let _ = reply.send(answer);
                }
                None => debug!(%approval_id, "decision for no pending Claude permission request"),
            },
            Control::Cancel => {}
        }
    }

    /// Takes every control already sent.
    fn drain_controls(&mut self) {
        while let Ok(c) = self.controls.try_recv() {
            self.on_control(c);
        }
    }

    /// A permission request: keep it and show it as an approval request.
    async fn on_ask(&mut self, ask: Ask) -> Option<RunEnd> {
        let approval_id = match &ask.request.tool_use_id {
            Some(id) if !id.is_empty() && id.len() <= MAX_ID_LEN && !self.used_ids.contains(id) => {
                id.clone()
            }
            _ => loop {
                self.next_id += 1;
                let id = format!("claude-permission-{}", self.next_id);
                if !self.used_ids.contains(&id) {
                    break id;
                }
            },
        };
        self.used_ids.insert(approval_id.clone());
        let event = ExecEvent::ApprovalRequest {
            approval_id: approval_id.clone(),
            summary: approval_summary(&ask.request),
            detail: approval_detail(&ask.request),
            tool: Some(crate::rules::ToolUse {
                name: ask.request.tool_name.clone(),
                input: Value::Object(ask.request.input.clone()),
            }),
        };
        self.pending.insert(approval_id, ask.reply);
        self.emit(event).await
    }

    /// Denies every pending request with `message`.
    fn deny_pending(&mut self, message: &str) {
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(PermissionAnswer::deny(message));
        }
    }

    /// Sends an event; meanwhile it still takes cancels, follow-ups and
    /// decisions, so a slow consumer never blocks a [`Controller`].
    async fn emit(&mut self, event: ExecEvent) -> Option<RunEnd> {
        let mut taken = Vec::new();
        let sent = send_steered(
            &self.events,
            event,
            &mut self.cancel,
            &mut self.controls,
            &mut self.controls_open,
            &mut taken,
        )
        .await;
        for c in taken {
            self.on_control(c);
        }
        match sent {
            Ok(()) => None,
            Err(Interrupt::Cancelled) => Some(RunEnd::Cancelled),
            Err(Interrupt::Abandoned) => Some(RunEnd::Abandoned),
        }
    }

    /// The one final event; later controls answer [`ExecError::NotRunning`].
    /// A follow-up that slipped in after the last run was chosen did not run,
    /// and says so.
    async fn finish(&mut self, status: FinishStatus, summary: String) {
        let (mut lost, others) = close_controls(&mut self.cancel, &mut self.controls);
        for c in others {
            self.on_control(c);
        }
        lost += self.follow_ups.len();
        if lost > 0 {
            let note =
                "a follow-up arrived just as Claude Code finished and did not run; send it again";
            let _ = self.events.send(ExecEvent::Progress(note.to_owned())).await;
        }
        // The consumer may be gone; nothing else to tell.
        let _ = self.events.send(ExecEvent::Finished { status, summary }).await;
    }
}

/// Serves the permission tool over stdio until Claude Code closes it: the
/// hidden `tandem mcp-permission --socket <path>` subcommand.
///
/// # Errors
/// [`ClaudeError::Mcp`] if the MCP session cannot start or fails.
pub async fn serve_permission_tool(socket: PathBuf) -> Result<(), ClaudeError> {
    mcp::serve(socket).await
}

#[cfg(unix)]
mod bridge {
    //! The executor's end of the permission bridge: a private Unix socket.

    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{UnixListener, UnixStream};
    use tokio::sync::{mpsc, oneshot};
    use tokio::task::JoinHandle;
    use tokio::time::timeout;
    use tracing::{debug, warn};

    use super::{
        ANSWER_WRITE_TIMEOUT, Ask, MAX_REQUEST_BYTES, PermissionAnswer, PermissionRequest,
        REQUEST_READ_TIMEOUT,
    };
    use crate::executor::ExecError;

    /// The socket directory and the task accepting connections; both go
    /// when this is dropped.
    #[derive(Debug)]
    pub(super) struct Bridge {
        dir: PathBuf,
        socket: PathBuf,
        acceptor: JoinHandle<()>,
    }

    impl Bridge {
        /// Creates the socket (0600, in a new 0700 directory) and accepts
        /// permission requests on it, handing them to `asks`.
        pub(super) fn open(asks: mpsc::Sender<Ask>) -> Result<Bridge, ExecError> {
            let dir = private_dir().map_err(ExecError::Setup)?;
            let socket = dir.join("perm.sock");
            let listener = UnixListener::bind(&socket)
                .and_then(|l| {
                    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
                        .map(|()| l)
                })
                .map_err(|e| {
                    let _ = std::fs::remove_dir_all(&dir);
                    ExecError::Setup(e)
                })?;
            let acceptor = tokio::spawn(accept(listener, asks));
            Ok(Bridge { dir, socket, acceptor })
        }

        /// Where the permission tool connects.
        pub(super) fn socket(&self) -> &Path {
            &self.socket
        }
    }

    impl Drop for Bridge {
        fn drop(&mut self) {
            self.acceptor.abort();
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                debug!(error = %e, dir = %self.dir.display(), "could not remove the socket directory");
            }
        }
    }

    /// A fresh directory only this user can enter.
    fn private_dir() -> std::io::Result<PathBuf> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        let mut last = None;
        for _ in 0..16 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = base.join(format!("tandem-claude-{}-{n}-{nanos:x}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free directory name")))
    }

    async fn accept(listener: UnixListener, asks: mpsc::Sender<Ask>) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream, asks.clone()));
                }
                Err(e) => {
                    warn!(error = %e, "the permission socket failed to accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
            if asks.is_closed() {
                return;
            }
        }
    }

    /// One connection: one request line in, one answer line out.
    async fn answer(stream: UnixStream, asks: mpsc::Sender<Ask>) {
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES));
        let mut line = String::new();
        match timeout(REQUEST_READ_TIMEOUT, reader.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => {}
            other => {
                debug!(?other, "a permission connection sent no request");
                return;
            }
        }
        let answer = match serde_json::from_str::<PermissionRequest>(&line) {
            Ok(request) => {
                let (reply, answered) = oneshot::channel();
                if asks.send(Ask { request, reply }).await.is_err() {
                    PermissionAnswer::deny("The task is no longer running")
                } else {
                    answered.await.unwrap_or_else(|_| {
                        PermissionAnswer::deny("The task ended before anyone answered")
                    })
                }
            }
            Err(e) => PermissionAnswer::deny(format!("Malformed permission request: {e}")),
        };
        let Ok(mut out) = serde_json::to_string(&answer) else { return };
        out.push('\n');
        if let Ok(Err(e)) | Err(e) = timeout(ANSWER_WRITE_TIMEOUT, write.write_all(out.as_bytes()))
            .await
            .map_err(std::io::Error::other)
        {
            debug!(error = %e, "could not answer the permission tool");
        }
    }

    /// The permission tool's side: asks the agent over `socket`.
    pub(super) async fn ask_agent(
        socket: &Path,
        request: &PermissionRequest,
    ) -> std::io::Result<PermissionAnswer> {
        let stream = UnixStream::connect(socket).await?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_string(request)?;
        line.push('\n');
        write.write_all(line.as_bytes()).await?;
        write.flush().await?;
        let mut reader = BufReader::new(read.take(64 * 1024));
        let mut answer = String::new();
        if reader.read_line(&mut answer).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the agent closed the connection",
            ));
        }
        Ok(serde_json::from_str(&answer)?)
    }
}

#[cfg(not(unix))]
mod bridge {
    //! No Unix sockets here: the Claude Code executor is not available.

    use std::path::Path;

    use tokio::sync::mpsc;

    use super::{Ask, PermissionAnswer, PermissionRequest};
    use crate::executor::ExecError;

    #[derive(Debug)]
    pub(super) struct Bridge;

    impl Bridge {
        pub(super) fn open(_asks: mpsc::Sender<Ask>) -> Result<Bridge, ExecError> {
            Err(ExecError::Unsupported("the Claude Code executor needs Unix sockets"))
        }

        pub(super) fn socket(&self) -> &Path {
            Path::new("")
        }
    }

    pub(super) async fn ask_agent(
        _socket: &Path,
        _request: &PermissionRequest,
    ) -> std::io::Result<PermissionAnswer> {
        Err(std::io::Error::other("no Unix sockets on this platform"))
    }
}

mod mcp {
    //! The permission tool itself: an `rmcp` stdio server with one tool.

    use std::path::PathBuf;
    use std::sync::Arc;

    use rmcp::model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
        ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    };
    use rmcp::service::RequestContext;
    use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
    use serde_json::{Map, Value};
    use tokio::time::timeout;
    use tracing::warn;

    use super::{
        ANSWER_WAIT, ClaudeError, PERMISSION_TOOL, PermissionAnswer, PermissionRequest,
        decision_text,
    };

    struct PermissionServer {
        socket: PathBuf,
    }

    fn tool() -> Tool {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {
                "tool_name": { "type": "string", "description": "The tool asking for permission" },
                "input": { "type": "object", "description": "The tool's input" },
                "tool_use_id": { "type": "string", "description": "The tool use's id" }
            },
            "required": ["tool_name", "input"]
        });
        let schema = match schema {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        Tool::new(
            PERMISSION_TOOL,
            "Asks the person on their phone, through Tandem, whether a tool may run.",
            Arc::new(schema),
        )
    }

    impl ServerHandler for PermissionServer {
        fn get_info(&self) -> ServerConfig {
            ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
                .with_server_info(Implementation::new("tandem", env!("CARGO_PKG_VERSION")))
        }

        async fn list_tools(
            &self,
            _request: Option<PaginatedRequestParams>,
            _context: RequestContext<RoleServer>,
        ) -> Result<ListToolsResult, ErrorData> {
            Ok(ListToolsResult::with_all_items(vec![tool()]))
        }

        async fn call_tool(
            &self,
            request: CallToolRequestParams,
            _context: RequestContext<RoleServer>,
        ) -> Result<CallToolResponse, ErrorData> {
            if request.name != PERMISSION_TOOL {
                return Err(ErrorData::invalid_params(
                    format!("unknown tool {:?}", request.name),
                    None,
                ));
            }
            let arguments = Value::Object(request.arguments.unwrap_or_default());
            let text = match serde_json::from_value::<PermissionRequest>(arguments) {
                Ok(request) => {
                    let answer = match timeout(
                        ANSWER_WAIT,
                        super::bridge::ask_agent(&self.socket, &request),
                    )
                    .await
                    {
                        Ok(Ok(answer)) => answer,
                        Ok(Err(e)) => {
                            warn!(error = %e, "could not ask the Tandem agent");
                            PermissionAnswer::deny(format!("Could not reach the Tandem agent: {e}"))
                        }
                        Err(_) => PermissionAnswer::deny("No answer in time"),
                    };
                    decision_text(&request, &answer)
                }
                Err(e) => {
                    let request = PermissionRequest {
                        tool_name: String::new(),
                        input: Map::new(),
                        tool_use_id: None,
                    };
                    let answer =
                        PermissionAnswer::deny(format!("Malformed permission request: {e}"));
                    decision_text(&request, &answer)
                }
            };
            Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into())
        }
    }

    pub(super) async fn serve(socket: PathBuf) -> Result<(), ClaudeError> {
        let service = PermissionServer { socket }
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| ClaudeError::Mcp(e.to_string()))?;
        service.waiting().await.map_err(|e| ClaudeError::Mcp(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use tokio::time::timeout;

    use super::*;

    const RECORDING: &str = include_str!("../tests/fixtures/claude-stream.jsonl");

    /// A line of the recording with a few bytes changed, cut or inserted,
    /// or any text.
    fn stream_line() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let lines: Vec<&'static str> = RECORDING.lines().collect();
        let edits = prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..8);
        prop_oneof![
            any::<String>(),
            (prop::sample::select(lines), edits).prop_map(|(line, edits)| {
                let mut b = line.as_bytes().to_vec();
                for (at, byte, op) in edits {
                    let i = at % (b.len() + 1);
                    match op {
                        0 if i < b.len() => b[i] = byte,
                        1 => b.insert(i, byte),
                        _ => b.truncate(i),
                    }
                }
                String::from_utf8_lossy(&b).into_owned()
            }),
        ]
    }

    proptest::proptest! {
        /// Issue 17, fuzzing the executors' output parsers: any stream-json
        /// line (the recording's, damaged, or any text) parses without a
        /// panic, and free text stays within the event cap.
        #[test]
        fn any_stream_json_line_parses(line in stream_line()) {
            for p in parse_line(&line) {
                if let Parsed::Event(ExecEvent::Progress(t)) = p {
                    proptest::prop_assert!(serde_json::to_string(&t).unwrap().len() <= MAX_EVENT_TEXT + 2);
                }
            }
        }
    }
    const SESSION: &str = "2d6f0c4e-8a51-4b7e-9c3d-5e1f2a3b4c6d";
    const STEP: Duration = Duration::from_secs(20);

    fn progress(text: &str) -> Parsed {
        Parsed::Event(ExecEvent::Progress(text.to_owned()))
    }

    fn session() -> Parsed {
        Parsed::Session(SESSION.to_owned())
    }

    #[test]
    fn the_recorded_session_maps_to_events() {
        let parsed: Vec<Vec<Parsed>> = RECORDING.lines().map(parse_line).collect();
        let read_output = "     1\tpub fn add(a: i32, b: i32) -> i32 {\n     2\t    a - b\n     3\t}\n     4\t\n     5\t#[test]\n     6\tfn adds() {\n     7\t    assert_eq!(add(1, 1), 2);\n     8\t}\n";
        let expected = vec![
            vec![session()],
            vec![session(), progress("I'll start by reading the code under test.")],
            vec![
                session(),
                Parsed::Event(ExecEvent::ToolCall {
                    call_id: "toolu_01R3adF1LeQ8".into(),
                    name: "Read".into(),
                    input: json!({"file_path": "/home/ana/src/foo/src/lib.rs"}),
                }),
            ],
            vec![
                session(),
                Parsed::Event(ExecEvent::ToolResult {
                    call_id: "toolu_01R3adF1LeQ8".into(),
                    output: read_output.into(),
                    is_error: false,
                }),
            ],
            // The thinking block stays on the desktop.
            vec![
                session(),
                progress("`add` subtracts instead of adding. Let me run the tests to confirm."),
            ],
            vec![
                session(),
                Parsed::Event(ExecEvent::ToolCall {
                    call_id: "toolu_01B4shRunT3st".into(),
                    name: "Bash".into(),
                    input: json!({"command": "cargo test -p foo", "description": "Run foo's tests"}),
                }),
            ],
            vec![
                session(),
                Parsed::Event(ExecEvent::ToolResult {
                    call_id: "toolu_01B4shRunT3st".into(),
                    output: "running 1 test\ntest adds ... FAILED\n\nfailures:\n\n---- adds stdout ----\nassertion `left == right` failed\n  left: 0\n right: 2\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored".into(),
                    is_error: true,
                }),
            ],
            vec![
                session(),
                progress("Confirmed: `add(1, 1)` returns 0. The fix is to return `a + b`."),
            ],
            vec![
                session(),
                Parsed::Result {
                    status: FinishStatus::Succeeded,
                    summary: "The failing test `adds` fails because `add` returns `a - b`; it should return `a + b`.".into(),
                },
            ],
        ];
        assert_eq!(parsed, expected);
    }

    #[test]
    fn a_todo_list_is_a_plan() {
        let line = json!({"type": "assistant", "message": {"content": [{
            "type": "tool_use", "id": "toolu_1", "name": "TodoWrite",
            "input": {"todos": [
                {"content": "read the test", "status": "completed", "activeForm": "Reading"},
                {"content": "fix\nadd", "status": "in_progress", "activeForm": "Fixing"},
                {"content": "run it", "status": "pending", "activeForm": "Running"}]}}]}})
        .to_string();
        let got = parse_line(&line);
        assert!(
            matches!(&got[0], Parsed::Event(ExecEvent::ToolCall { name, .. }) if name == "TodoWrite")
        );
        assert_eq!(
            got[1],
            progress("Plan:\n[x] read the test\n[~] fix add\n[ ] run it"),
            "{got:?}"
        );
    }

    #[test]
    fn odd_lines_never_fail() {
        // Not JSON, or not an object: shown as they are.
        for line in ["not json", "{", "[]", "42", "null", "\"text\""] {
            assert_eq!(parse_line(line), vec![progress(line)], "{line}");
        }
        // JSON this module does not know, or incomplete: ignored.
        for line in [
            r#"{}"#,
            r#"{"type":7}"#,
            r#"{"type":"stream_event","event":{"type":"content_block_delta"}}"#,
            r#"{"type":"system","subtype":"compact_boundary"}"#,
            r#"{"type":"rate_limit_event","resets_at":1}"#,
            r#"{"type":"assistant"}"#,
            r#"{"type":"assistant","message":{"content":7}}"#,
            r#"{"type":"assistant","message":{"content":[7,null,{"type":"text"},{"type":"text","text":"  "}]}}"#,
            r#"{"type":"assistant","message":{"content":[{"type":"tool_use","name":"Bash"}]}}"#,
            r#"{"type":"assistant","message":{"content":[{"type":"redacted_thinking","data":"x"}]}}"#,
            r#"{"type":"user","message":{"content":"the prompt itself"}}"#,
            r#"{"type":"user","message":{"content":[{"type":"tool_result"}]}}"#,
            r#"{"type":"user","message":{"content":[{"type":"text","text":"replayed"}]}}"#,
        ] {
            assert_eq!(parse_line(line), vec![], "{line}");
        }
        // A string content is one text block.
        assert_eq!(
            parse_line(r#"{"type":"assistant","message":{"content":"plain"}}"#),
            vec![progress("plain")]
        );
        // Several blocks in one line, in order.
        assert_eq!(
            parse_line(
                r#"{"type":"assistant","message":{"content":[{"type":"text","text":"a"},{"type":"tool_use","id":"t","name":"Glob","input":{"pattern":"*.rs"}}]}}"#
            ),
            vec![
                progress("a"),
                Parsed::Event(ExecEvent::ToolCall {
                    call_id: "t".into(),
                    name: "Glob".into(),
                    input: json!({"pattern": "*.rs"}),
                })
            ]
        );
        // Session ids that could not be passed back to --resume as they are.
        for id in ["", "--help", "a b", "x\ny", &"s".repeat(MAX_ID_LEN + 1)] {
            let line = json!({"type": "system", "subtype": "init", "session_id": id}).to_string();
            assert_eq!(parse_line(&line), vec![], "{id:?}");
        }
    }

    #[test]
    fn tool_result_content_forms() {
        let result = |content: Value| {
            let line = json!({"type": "user", "message": {"content": [
                {"type": "tool_result", "tool_use_id": "c", "content": content, "is_error": false}
            ]}})
            .to_string();
            match parse_line(&line).as_slice() {
                [Parsed::Event(ExecEvent::ToolResult { output, .. })] => output.clone(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(result(json!("plain")), "plain");
        assert_eq!(
            result(
                json!([{"type": "text", "text": "a"}, {"type": "image", "source": {}}, {"type": "text", "text": "b"}])
            ),
            "a\n[image]\nb"
        );
        assert_eq!(result(json!([{"x": 1}])), r#"{"x":1}"#);
        assert_eq!(result(Value::Null), "");
        assert_eq!(result(json!({"odd": true})), r#"{"odd":true}"#);
        // is_error defaults to false.
        let line = r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"c","content":"x"}]}}"#;
        assert_eq!(
            parse_line(line),
            vec![Parsed::Event(ExecEvent::ToolResult {
                call_id: "c".into(),
                output: "x".into(),
                is_error: false
            })]
        );
    }

    #[test]
    fn huge_lines_are_capped() {
        let big = "é\"".repeat(60_000);
        let line = json!({"type": "assistant", "message": {"content": [
            {"type": "text", "text": big},
            {"type": "tool_use", "id": "i".repeat(1000), "name": "n".repeat(1000), "input": {"content": big}},
        ]}})
        .to_string();
        let parsed = parse_line(&line);
        let [
            Parsed::Event(ExecEvent::Progress(text)),
            Parsed::Event(ExecEvent::ToolCall { call_id, name, input: Value::String(input) }),
        ] = parsed.as_slice()
        else {
            panic!("{parsed:?}")
        };
        assert!(serde_json::to_string(text).unwrap().len() <= MAX_EVENT_TEXT + 2);
        assert!(text.ends_with("[truncated]"));
        assert!(call_id.len() <= MAX_ID_LEN && name.len() <= MAX_ID_LEN);
        assert!(serde_json::to_string(input).unwrap().len() <= MAX_EVENT_TEXT + 2);

        let line = json!({"type": "user", "message": {"content": [
            {"type": "tool_result", "tool_use_id": "c", "content": [{"type": "text", "text": big}], "is_error": true}
        ]}})
        .to_string();
        let parsed = parse_line(&line);
        let [Parsed::Event(ExecEvent::ToolResult { output, is_error: true, .. })] =
            parsed.as_slice()
        else {
            panic!("{parsed:?}")
        };
        assert!(serde_json::to_string(output).unwrap().len() <= MAX_EVENT_TEXT + 2);

        let huge_plain = "z".repeat(200_000);
        let parsed = parse_line(&huge_plain);
        let [Parsed::Event(ExecEvent::Progress(text))] = parsed.as_slice() else {
            panic!("{parsed:?}")
        };
        assert_eq!(text.len(), MAX_EVENT_TEXT);
    }

    #[test]
    fn results_finish_as_succeeded_or_failed() {
        let finish = |v: Value| match parse_line(&v.to_string()).as_slice() {
            [Parsed::Result { status, summary }] => (*status, summary.clone()),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            finish(
                json!({"type": "result", "subtype": "success", "is_error": false, "result": " done \n"})
            ),
            (FinishStatus::Succeeded, "done".into())
        );
        assert_eq!(
            finish(
                json!({"type": "result", "subtype": "success", "is_error": true, "result": "API Error: 529 overloaded"})
            ),
            (FinishStatus::Failed, "API Error: 529 overloaded".into())
        );
        assert_eq!(
            finish(json!({"type": "result", "subtype": "error_max_turns", "is_error": false})),
            (
                FinishStatus::Failed,
                "Claude Code stopped: it reached the maximum number of turns".into()
            )
        );
        assert_eq!(
            finish(
                json!({"type": "result", "subtype": "error_during_execution", "is_error": true, "errors": ["boom", 7, "bang"]})
            ),
            (FinishStatus::Failed, "boom; bang".into())
        );
        assert_eq!(
            finish(json!({"type": "result", "subtype": "error_max_budget_usd"})),
            (FinishStatus::Failed, "Claude Code stopped: error_max_budget_usd".into())
        );
        assert_eq!(
            finish(json!({"type": "result"})),
            (FinishStatus::Failed, "Claude Code failed".into())
        );
        assert_eq!(
            finish(json!({"type": "result", "subtype": "success"})),
            (FinishStatus::Succeeded, "done".into())
        );
    }

    #[test]
    fn the_command_line_keeps_the_task_one_argument_after_the_flags() {
        let extra = vec!["--model".to_owned(), "sonnet".to_owned()];
        let argv = command_line(&extra, &[], "{}", Some("s-1"), "-rf; $(x)");
        assert_eq!(
            argv,
            [
                "-p",
                "--output-format",
                "stream-json",
                "--verbose",
                "--mcp-config",
                "{}",
                "--permission-prompt-tool",
                "mcp__tandem__approval_prompt",
                "--strict-mcp-config",
                "--setting-sources",
                "",
                "--resume",
                "s-1",
                "--model",
                "sonnet",
                "--",
                "-rf; $(x)",
            ]
        );
        assert_eq!(
            command_line(&[], &[], "{}", None, "t").iter().filter(|a| *a == "--resume").count(),
            0
        );
        // The sources the desktop's config opts in to, and nothing else.
        let argv = command_line(&[], &[SettingSource::User], "{}", None, "t");
        let at = argv.iter().position(|a| a == SETTING_SOURCES_FLAG).unwrap();
        assert_eq!(argv.get(at + 1).map(String::as_str), Some("user"));
        assert_eq!(argv.iter().filter(|a| *a == SETTING_SOURCES_FLAG).count(), 1);
        assert_eq!(argv.iter().filter(|a| *a == STRICT_MCP_CONFIG_FLAG).count(), 1);
        let config = mcp_config(Path::new("/opt/tandem"), Path::new("/tmp/d/perm.sock")).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&config).unwrap(),
            json!({"mcpServers": {"tandem": {
                "type": "stdio",
                "command": "/opt/tandem",
                "args": ["mcp-permission", "--socket", "/tmp/d/perm.sock"],
            }}})
        );
    }

    #[test]
    fn decisions_have_the_shape_claude_code_expects() {
        let request = PermissionRequest {
            tool_name: "Bash".into(),
            input: json!({"command": "rm -rf target"}).as_object().unwrap().clone(),
            tool_use_id: Some("toolu_1".into()),
        };
        let allow = decision_text(&request, &PermissionAnswer { allow: true, message: None });
        assert_eq!(
            serde_json::from_str::<Value>(&allow).unwrap(),
            json!({"behavior": "allow", "updatedInput": {"command": "rm -rf target"}})
        );
        let deny = decision_text(&request, &PermissionAnswer::deny(DENIED_FROM_PHONE));
        assert_eq!(
            serde_json::from_str::<Value>(&deny).unwrap(),
            json!({"behavior": "deny", "message": "Denied from the phone"})
        );
        let silent = decision_text(&request, &PermissionAnswer { allow: false, message: None });
        assert!(silent.contains(DENIED_FROM_PHONE));
        // The request parses from what Claude Code sends, with or without an id.
        let parsed: PermissionRequest =
            serde_json::from_value(json!({"tool_name": "Write", "input": {"file_path": "a"}}))
                .unwrap();
        assert_eq!(parsed.tool_use_id, None);
    }

    #[test]
    fn approval_summaries_are_one_short_line() {
        let req = |tool: &str, input: Value| PermissionRequest {
            tool_name: tool.into(),
            input: input.as_object().cloned().unwrap_or_default(),
            tool_use_id: None,
        };
        assert_eq!(
            approval_summary(&req(
                "Bash",
                json!({"command": "cargo test\n  -p foo", "description": "d"})
            )),
            "Bash: cargo test -p foo"
        );
        assert_eq!(
            approval_summary(&req("Write", json!({"file_path": "/a/b.rs", "content": "x"}))),
            "Write: /a/b.rs"
        );
        assert_eq!(approval_summary(&req("mcp__x__y", json!({"n": 1}))), r#"mcp__x__y: {"n":1}"#);
        // Whole, tail included: the task manager caps it to head and tail.
        let command = format!("{} && rm -rf target", "x".repeat(1000));
        let long = approval_summary(&req("Bash", json!({"command": command})));
        assert_eq!(long, format!("Bash: {command}"));
        let detail = approval_detail(&req("Bash", json!({"command": "ls"})));
        assert_eq!(detail, "Bash\n{\n  \"command\": \"ls\"\n}");
    }

    // ---- the supervisor, with the fake `claude` (no permission prompts here:
    // those need the `tandem` binary; see tests/claude.rs) ----

    fn fake() -> String {
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fake-claude").to_owned()
    }

    fn claude_config(dir: &Path, program: &str) -> ExecutorConfig {
        ExecutorConfig {
            name: "claude".into(),
            kind: ExecutorKind::Claude {
                program: program.into(),
                args: vec![],
                setting_sources: vec![],
            },
            workdir: Some(dir.to_owned()),
            env: vec![(
                "FAKE_CLAUDE_ARGV_LOG".into(),
                dir.join("argv.log").to_str().unwrap().to_owned(),
            )],
        }
    }

    fn argv_log(dir: &Path) -> Vec<Vec<String>> {
        std::fs::read_to_string(dir.join("argv.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let entry: Value = serde_json::from_str(l).unwrap();
                serde_json::from_value(entry["argv"].clone()).unwrap()
            })
            .collect()
    }

    async fn next(r: &mut Running) -> ExecEvent {
        timeout(STEP, r.next()).await.expect("no event in time").expect("events ended")
    }

    async fn all(r: &mut Running) -> Vec<ExecEvent> {
        let mut events = Vec::new();
        loop {
            let e = next(r).await;
            let done = matches!(e, ExecEvent::Finished { .. });
            events.push(e);
            if done {
                assert_eq!(timeout(STEP, r.next()).await.unwrap(), None);
                return events;
            }
        }
    }

    fn finished(status: FinishStatus, summary: &str) -> ExecEvent {
        ExecEvent::Finished { status, summary: summary.to_owned() }
    }

    fn resumable(events: &[ExecEvent]) -> String {
        match events.first() {
            Some(ExecEvent::Resumable { token }) => token.clone(),
            other => panic!("expected the session first, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_task_is_one_argument_and_finishes_with_the_result() {
        let dir = tempfile::tempdir().unwrap();
        let task = "echo -rf \"quoted\" $(touch pwned); `touch pwned`";
        let mut r = crate::executor::start(&claude_config(dir.path(), &fake()), task).unwrap();
        let events = all(&mut r).await;
        let session = resumable(&events);
        assert_eq!(events.get(1..), Some(&[finished(FinishStatus::Succeeded, task)][..]));
        let log = argv_log(dir.path());
        let [argv] = log.as_slice() else { panic!("{log:?}") };
        assert_eq!(argv.last().map(String::as_str), Some(task));
        assert_eq!(argv.get(argv.len() - 2).map(String::as_str), Some("--"));
        assert!(!argv.contains(&"--resume".to_owned()));
        assert!(!dir.path().join("pwned").exists());

        // The permission socket's directory is gone once the task ended.
        let config: Value = serde_json::from_str(&argv[5]).unwrap();
        let socket = PathBuf::from(config["mcpServers"]["tandem"]["args"][2].as_str().unwrap());
        let socket_dir = socket.parent().unwrap().to_owned();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while socket_dir.exists() {
            assert!(std::time::Instant::now() < deadline, "{} left behind", socket_dir.display());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Resumed: the same session, `--resume <session>`.
        let mut r =
            crate::executor::resume(&claude_config(dir.path(), &fake()), &session, "and the docs")
                .unwrap();
        assert_eq!(
            all(&mut r).await,
            vec![
                ExecEvent::Resumable { token: session.clone() },
                ExecEvent::Progress(format!("Resumed session {session}: and the docs")),
                finished(FinishStatus::Succeeded, &format!("resumed {session}")),
            ]
        );
        let log = argv_log(dir.path());
        let argv = log.last().unwrap();
        let at = argv.iter().position(|a| a == "--resume").unwrap();
        assert_eq!(argv.get(at + 1), Some(&session));
        assert_eq!(argv.last().map(String::as_str), Some("and the docs"));
    }

    #[tokio::test]
    async fn a_follow_up_while_running_runs_when_the_run_ends() {
        let dir = tempfile::tempdir().unwrap();
        let mut r =
            crate::executor::start(&claude_config(dir.path(), &fake()), "slow 1500").unwrap();
        let ExecEvent::Resumable { token: session } = next(&mut r).await else { panic!() };
        assert_eq!(next(&mut r).await, ExecEvent::Progress("working slowly".into()));
        r.control(Control::FollowUp("also this".into())).await.unwrap();
        r.control(Control::FollowUp("and that".into())).await.unwrap();
        // A decision for nothing pending is ignored.
        r.control(Control::Decision { approval_id: "nope".into(), allow: true }).await.unwrap();
        assert_eq!(
            all(&mut r).await,
            vec![
                ExecEvent::Progress(format!("Resumed session {session}: also this")),
                ExecEvent::Progress(format!("Resumed session {session}: and that")),
                finished(FinishStatus::Succeeded, &format!("resumed {session}")),
            ]
        );
        let log = argv_log(dir.path());
        assert_eq!(log.len(), 3);
        for (argv, text) in log.iter().skip(1).zip(["also this", "and that"]) {
            assert!(argv.windows(2).any(|w| w[0] == "--resume" && w[1] == session), "{argv:?}");
            assert_eq!(argv.last().map(String::as_str), Some(text));
        }
        assert!(matches!(
            r.control(Control::FollowUp("late".into())).await,
            Err(ExecError::NotRunning)
        ));
    }

    #[tokio::test]
    async fn exiting_without_a_result_fails_with_its_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = crate::executor::start(&claude_config(dir.path(), &fake()), "crash").unwrap();
        let events = all(&mut r).await;
        resumable(&events);
        assert_eq!(
            events.get(1..),
            Some(
                &[
                    ExecEvent::Progress("stderr: Error: the fake crashed".into()),
                    finished(
                        FinishStatus::Failed,
                        "Claude Code exited without a result (exit code 3): Error: the fake crashed"
                    ),
                ][..]
            )
        );
        // A wrong command line is caught by the fake: extra args go before `--`.
        let mut config = claude_config(dir.path(), &fake());
        config.kind = ExecutorKind::Claude {
            program: fake(),
            args: vec!["--bogus".into()],
            setting_sources: vec![],
        };
        let mut r = crate::executor::start(&config, "echo hi").unwrap();
        let events = all(&mut r).await;
        assert_eq!(
            events.last(),
            Some(&finished(
                FinishStatus::Failed,
                "Claude Code exited without a result (exit code 2): error: unknown option '--bogus'"
            ))
        );
    }

    #[tokio::test]
    async fn cancel_stops_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = crate::executor::start(&claude_config(dir.path(), &fake()), "sleep").unwrap();
        let ExecEvent::Resumable { .. } = next(&mut r).await else { panic!() };
        let ExecEvent::Progress(line) = next(&mut r).await else { panic!() };
        let pids: Vec<String> =
            line.split_whitespace().skip(1).step_by(2).map(str::to_owned).collect();
        assert_eq!(pids.len(), 2, "{line}");
        r.control(Control::Cancel).await.unwrap();
        assert_eq!(all(&mut r).await, vec![finished(FinishStatus::Cancelled, "cancelled")]);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for pid in &pids {
            while std::path::Path::new(&format!("/proc/{pid}")).exists()
                && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
                    .unwrap_or(true)
            {
                assert!(std::time::Instant::now() < deadline, "{pid} survived the cancel");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    #[tokio::test]
    async fn start_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = claude_config(dir.path(), "/nonexistent/claude");
        assert!(matches!(crate::executor::start(&missing, "t"), Err(ExecError::Spawn { .. })));
        let mut bad_dir = claude_config(dir.path(), &fake());
        bad_dir.workdir = Some(dir.path().join("missing"));
        assert!(matches!(crate::executor::start(&bad_dir, "t"), Err(ExecError::Workdir { .. })));
        let jsonl = ExecutorConfig {
            kind: ExecutorKind::Jsonl { program: "x".into(), args: vec![] },
            ..claude_config(dir.path(), "x")
        };
        let e = crate::executor::resume(&jsonl, "s", "t").unwrap_err();
        assert_eq!(e.to_string(), "a jsonl executor cannot resume a finished task");
        assert!(matches!(
            start_with(&jsonl, "t", None, Path::new("x")),
            Err(ExecError::Unsupported(_))
        ));
    }

    #[test]
    fn config_from_toml() {
        #[derive(Deserialize)]
        struct File {
            executor: Vec<ExecutorConfig>,
        }
        let file: File = toml::from_str(
            "[[executor]]\nname = \"claude\"\ntype = \"claude\"\n\n\
             [[executor]]\nname = \"opus\"\ntype = \"claude\"\nprogram = \"/opt/claude\"\nargs = [\"--model\", \"opus\"]\n\
             setting_sources = [\"user\", \"local\"]\n",
        )
        .unwrap();
        assert_eq!(
            file.executor.iter().map(|e| e.kind.clone()).collect::<Vec<_>>(),
            vec![
                ExecutorKind::Claude {
                    program: "claude".into(),
                    args: vec![],
                    setting_sources: vec![]
                },
                ExecutorKind::Claude {
                    program: "/opt/claude".into(),
                    args: vec!["--model".into(), "opus".into()],
                    setting_sources: vec![SettingSource::User, SettingSource::Local],
                },
            ]
        );
        // A source Claude Code does not have is refused, not ignored.
        let bad = toml::from_str::<File>(
            "[[executor]]\nname = \"c\"\ntype = \"claude\"\nsetting_sources = [\"all\"]\n",
        );
        assert!(bad.is_err());
        let bad = toml::from_str::<File>(
            "[[executor]]\nname = \"c\"\ntype = \"claude\"\nsetting_sources = \"user\"\n",
        );
        assert!(bad.is_err());
    }
}
