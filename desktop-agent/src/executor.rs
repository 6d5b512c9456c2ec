//! Executors: the programs the user configured to run tasks.
//!
//! The safety rule: nothing runs on this desktop that the user did not
//! configure as an executor, and the task text is never put into a shell
//! command line. A [`ExecutorKind::Command`] executor gets the task text as
//! one argv element (each argument exactly equal to `{task}` is replaced; no
//! shell, no splitting, no expansion); a [`ExecutorKind::Jsonl`] agent gets it
//! as a JSON line on stdin; [`ExecutorKind::Claude`] runs Claude Code with the
//! task text as the one argument after `--` (see [`crate::claude`]);
//! [`ExecutorKind::Acp`] speaks the Agent Client Protocol on stdio and gets
//! it as a `session/prompt` (see [`crate::acp`]).
//!
//! Every executor runs in its own process group, so [`Control::Cancel`]
//! reaches its children too: the group gets `SIGTERM`, then `SIGKILL` after
//! [`KILL_GRACE`] if anything in it is still around. The crate forbids
//! `unsafe` and has no `libc` dependency, so the signals are sent by running
//! the system's `kill` binary (`kill -s TERM -- -<pgid>`), which every Unix
//! desktop has. If it cannot be run, only the executor's own process is
//! killed (tokio's `Child::start_kill`).
//!
//! Whatever an executor prints, nothing here panics: unparsable lines become
//! progress, invalid UTF-8 is replaced, and every text is capped at
//! [`MAX_EVENT_TEXT`] bytes of JSON so an event always fits in one protocol
//! message.

mod control;
mod output;
mod process;
mod supervisor;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem_proto::message::FinishStatus;
use tokio::sync::{Mutex, mpsc};

pub use control::Controller;
pub(crate) use control::{Interrupt, Route, close_controls, send_steered};
use control::{ToAgent, write_line};
use output::parse_agent_line;
pub(crate) use output::{cap_json, cap_text, describe_exit};
use process::write_task;
pub(crate) use process::{Proc, Stream};
use supervisor::Supervisor;

/// Largest text in one event, in bytes of its JSON string encoding (escapes
/// included). Two of these plus ids still fit in one 60 KiB message.
pub const MAX_EVENT_TEXT: usize = 16 * 1024;

/// Largest id or tool name in an event, in bytes of its JSON encoding.
pub const MAX_ID_LEN: usize = 256;

/// How long a cancelled executor's process group gets between `SIGTERM` and
/// `SIGKILL`.
pub const KILL_GRACE: Duration = Duration::from_secs(3);

/// Appended to a text that was cut at [`MAX_EVENT_TEXT`].
const TRUNCATION_MARKER: &str = "… [truncated]";

/// Longest raw output line kept; the rest of the line is discarded. Larger
/// than [`MAX_EVENT_TEXT`] so a JSON event with a long field still parses
/// before the field is capped.
const MAX_LINE_BYTES: usize = 1024 * 1024;

/// After the executor exits, how long its pipes may stay open (held by a
/// leftover child) before the output is no longer waited for.
pub(crate) const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// After a JSON-lines agent reports `finished`, how long it has to exit
/// before its process group is terminated.
pub(crate) const EXIT_GRACE: Duration = Duration::from_secs(5);

/// How long a write to a JSON-lines agent's stdin may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Events buffered between the executor and the consumer of [`Running`].
const EVENT_BUFFER: usize = 64;

/// The argument replaced by the task text.
const TASK_PLACEHOLDER: &str = "{task}";

/// How an executor runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecutorKind {
    /// Runs `program` with `args`; every argument equal to `{task}` is
    /// replaced by the task text as one argument (no shell). stdout and
    /// stderr lines become progress events (stderr lines prefixed
    /// `stderr: `; blank lines are skipped); exit code 0 finishes as
    /// succeeded with the last stdout line as summary (`exit code 0` if there
    /// was none), anything else as failed with `exit code N` (or
    /// `killed by signal N`).
    Command {
        /// The program (a path, or a name looked up in `PATH`).
        program: String,
        /// Its arguments.
        #[serde(default)]
        args: Vec<String>,
    },
    /// An agent that speaks JSON lines. It receives
    /// `{"type":"task","text":…}` on stdin as the first line and writes
    /// events to stdout, one JSON object per line:
    /// `{"type":"progress","text":…}`,
    /// `{"type":"tool_call","call_id":…,"name":…,"input":<json>}`,
    /// `{"type":"tool_result","call_id":…,"output":…,"is_error":bool}`,
    /// `{"type":"approval_request","approval_id":…,"summary":…,"detail":…}`
    /// (with optional `"tool":…,"input":<json>` naming the tool use, which
    /// approval rules match: [`crate::rules`]),
    /// `{"type":"finished","status":"succeeded"|"failed"|"cancelled","summary":…}`.
    /// It reads `{"type":"decision","approval_id":…,"allow":bool}` and
    /// `{"type":"follow_up","text":…}` lines back on stdin. Unknown event
    /// types and non-JSON lines become progress events; stderr lines become
    /// progress prefixed `stderr: `. Exiting without a `finished` event
    /// finishes as failed: `exited without finishing (exit code N)`.
    Jsonl {
        /// The program (a path, or a name looked up in `PATH`).
        program: String,
        /// Its arguments (`{task}` is not replaced: the task arrives on stdin).
        #[serde(default)]
        args: Vec<String>,
    },
    /// Claude Code in print mode (TOML `type = "claude"`): runs
    /// `<program> -p --output-format stream-json --verbose --mcp-config <json>
    /// --permission-prompt-tool mcp__tandem__approval_prompt
    /// --strict-mcp-config --setting-sources <setting_sources>
    /// [--resume <session>] <args…> -- <task>`, the task text being the one
    /// argument after `--` (no shell; a task starting with `-` stays text).
    /// Only Tandem's permission tool decides: no other MCP server, and no
    /// settings file but those `setting_sources` names (none by default), so
    /// a repository's `.claude/` settings neither allow tools nor run hooks.
    /// Its stream-json events become progress (assistant text), tool calls
    /// and tool results; its `result` finishes the task (`success` as
    /// succeeded, any error as failed), and its session id makes the task
    /// resumable: a follow-up after the finish runs
    /// `--resume <session>` (see [`resume`]). Claude Code asks for
    /// permissions through an MCP tool served by this binary
    /// (`tandem mcp-permission`, started by Claude Code from the
    /// `--mcp-config`), which reaches the agent over a private Unix socket:
    /// each prompt becomes an approval request on the phone. A follow-up sent
    /// while Claude is working is queued and runs, with `--resume`, when the
    /// current run ends; the task finishes once, after the last one. See
    /// [`crate::claude`].
    Claude {
        /// The program (default `claude`, looked up in `PATH`).
        #[serde(default = "default_claude_program")]
        program: String,
        /// Extra arguments before the task (e.g. `["--model", "sonnet"]`).
        #[serde(default)]
        args: Vec<String>,
        /// The Claude Code settings files this executor loads (`"user"`,
        /// `"project"`, `"local"`); none by default. Each one named lets its
        /// allow rules, permission mode and hooks act without the phone.
        #[serde(default)]
        setting_sources: Vec<crate::claude::SettingSource>,
    },
    /// An agent that speaks the Agent Client Protocol (TOML `type =
    /// "acp"`): JSON-RPC 2.0 over its stdin and stdout, with this desktop as
    /// its client. It gets `initialize` (file system read and write
    /// advertised, no terminal), `session/new` in the project directory
    /// (`workdir`, else the agent's own), and the task text as
    /// `session/prompt`; a follow-up sent while it works is the next
    /// `session/prompt` of the same session. Its `session/update`s become
    /// progress, tool calls, tool results and plans; each
    /// `session/request_permission` becomes an approval request (allow picks
    /// its `allow_once` option, deny `reject_once`; a timeout or cancel
    /// answers `cancelled`); its file requests are served inside the project
    /// directory only; the turn's `stopReason` finishes the task. Cancel
    /// sends `session/cancel` first. Its session id makes the task
    /// resumable: a follow-up after the finish loads the session
    /// (`session/load`, if the agent can) and prompts it. See
    /// [`crate::acp`].
    Acp {
        /// The program (a path, or a name looked up in `PATH`).
        program: String,
        /// Its arguments.
        #[serde(default)]
        args: Vec<String>,
        /// The `_meta` of `session/new` and `session/load`; by default
        /// [`crate::acp::default_session_meta`], which pins Zed's
        /// `claude-code-acp` to no Claude Code settings file (other agents
        /// ignore it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_meta: Option<serde_json::Map<String, serde_json::Value>>,
    },
}

fn default_claude_program() -> String {
    "claude".to_owned()
}

/// One executor the user configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorConfig {
    /// The name phones pick it by.
    pub name: String,
    /// How it runs.
    #[serde(flatten)]
    pub kind: ExecutorKind,
    /// Working directory (default: the agent's own).
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    /// Extra environment variables, on top of the agent's environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
}

/// Something a running executor did.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecEvent {
    /// Free-form progress text (one output line).
    Progress(String),
    /// The agent called a tool.
    ToolCall {
        /// Correlates with the result.
        call_id: String,
        /// Tool name.
        name: String,
        /// Tool input (agent-defined JSON; a string if it was too large).
        input: serde_json::Value,
    },
    /// A tool's result.
    ToolResult {
        /// The call it answers.
        call_id: String,
        /// Output text (capped at [`MAX_EVENT_TEXT`]).
        output: String,
        /// Whether the tool failed.
        is_error: bool,
    },
    /// The agent waits for a decision; answer with [`Control::Decision`].
    /// The summary and detail are as the executor gave them: the task
    /// manager makes them safe and caps them (head and tail) before a
    /// phone sees them ([`crate::tasks`]).
    ApprovalRequest {
        /// Correlates with the decision.
        approval_id: String,
        /// One line for the list.
        summary: String,
        /// Everything needed to decide.
        detail: String,
        /// The tool use it is for, when the executor says (approval rules
        /// match it: [`crate::rules`]).
        tool: Option<crate::rules::ToolUse>,
    },
    /// Tools the agent was not allowed to use in this run (Claude Code's
    /// `permission_denials`): the task's finish names them instead of its
    /// denied approvals ([`crate::tasks`]).
    Denied {
        /// Tool names, as the agent reported them.
        tools: Vec<String>,
    },
    /// The task can be continued after it finishes (Claude Code's or an ACP
    /// agent's session id): a follow-up that arrives later starts it again
    /// with [`resume`].
    Resumable {
        /// Opaque to everything but the executor kind that issued it.
        token: String,
    },
    /// The executor ended. Always the last event, exactly once.
    Finished {
        /// How.
        status: FinishStatus,
        /// The final answer or error.
        summary: String,
    },
}

/// A message to a running executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// More instructions (a JSON-lines agent gets them on stdin; Claude Code
    /// runs them when its current run ends).
    FollowUp(String),
    /// The answer to an [`ExecEvent::ApprovalRequest`].
    Decision {
        /// The request answered.
        approval_id: String,
        /// Whether the step may go ahead (once: when the phone also made it a
        /// standing rule, "always allow", the desktop's rule answers the next
        /// time; an ACP agent's own `allow_always` is never chosen, it is
        /// wider than that rule and outside its deny rules and
        /// `tandem rules remove`).
        allow: bool,
    },
    /// No decision came in time for an [`ExecEvent::ApprovalRequest`]: a
    /// deny for every executor but an ACP agent, which is answered
    /// `cancelled`.
    Expired {
        /// The request that expired.
        approval_id: String,
    },
    /// Stop the executor and everything it started.
    Cancel,
}

/// Why an executor could not be started or controlled.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The program could not be started (missing, not executable, …).
    #[error("could not start executor program `{program}`: {source}")]
    Spawn {
        /// The configured program.
        program: String,
        /// What the OS said.
        source: io::Error,
    },
    /// The configured working directory is not usable.
    #[error("executor working directory `{}` is not usable: {source}", path.display())]
    Workdir {
        /// The configured directory.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// This kind of executor cannot do that (the text says what).
    #[error("{0}")]
    Unsupported(&'static str),
    /// Files the executor needs (the Claude permission socket) could not be
    /// set up.
    #[error("could not prepare the executor: {0}")]
    Setup(io::Error),
    /// The executor has already finished.
    #[error("the executor is no longer running")]
    NotRunning,
    /// Writing to the agent's stdin failed or timed out.
    #[error("could not write to the executor: {0}")]
    Stdin(io::Error),
    /// A control message could not be encoded.
    #[error("could not encode a message for the executor: {0}")]
    Encode(#[from] serde_json::Error),
    /// The agent did not do what was asked (the text says what happened).
    #[error("the agent failed: {0}")]
    Agent(String),
}

/// A started executor: its events, and a way to control it.
#[derive(Debug)]
pub struct Running {
    events: mpsc::Receiver<ExecEvent>,
    controller: Controller,
    finished: bool,
}

impl Running {
    /// A running executor whose supervisor sends `events`.
    pub(crate) fn new(events: mpsc::Receiver<ExecEvent>, controller: Controller) -> Self {
        Running { events, controller, finished: false }
    }

    /// The next event; `None` after [`ExecEvent::Finished`].
    pub async fn next(&mut self) -> Option<ExecEvent> {
        if self.finished {
            return None;
        }
        let event = self.events.recv().await.unwrap_or_else(|| {
            // The supervisor always sends `Finished` before it stops; this is
            // only reached if it was torn down (runtime shutdown).
            ExecEvent::Finished {
                status: FinishStatus::Failed,
                summary: "the executor stopped unexpectedly".to_owned(),
            }
        });
        if matches!(event, ExecEvent::Finished { .. }) {
            self.finished = true;
        }
        Some(event)
    }

    /// Sends a control message: follow-ups and decisions go to a JSON-lines
    /// agent's stdin or to the Claude Code supervisor (a command executor
    /// answers them with [`ExecError::Unsupported`]); [`Control::Cancel`]
    /// works for all and ends the events with
    /// `Finished { Cancelled, "cancelled" }`.
    ///
    /// # Errors
    /// [`ExecError::NotRunning`] once the executor finished,
    /// [`ExecError::Unsupported`], or [`ExecError::Stdin`].
    pub async fn control(&self, c: Control) -> Result<(), ExecError> {
        self.controller.control(c).await
    }

    /// A cloneable handle to send controls from elsewhere.
    pub fn controller(&self) -> Controller {
        self.controller.clone()
    }
}

/// Starts `config` on `task_text`. Must be called inside a tokio runtime;
/// the executor is supervised by a task on it.
///
/// # Errors
/// [`ExecError::Workdir`] if the working directory is not a usable
/// directory, [`ExecError::Spawn`] if the program cannot be started,
/// [`ExecError::Setup`] if a Claude executor's permission socket cannot be
/// created.
pub fn start(config: &ExecutorConfig, task_text: &str) -> Result<Running, ExecError> {
    let (program, args, jsonl) = match &config.kind {
        ExecutorKind::Command { program, args } => {
            let args: Vec<&str> = args
                .iter()
                .map(|a| if a == TASK_PLACEHOLDER { task_text } else { a.as_str() })
                .collect();
            (program, args, false)
        }
        ExecutorKind::Jsonl { program, args } => {
            (program, args.iter().map(String::as_str).collect(), true)
        }
        ExecutorKind::Claude { .. } => return crate::claude::start(config, task_text, None),
        ExecutorKind::Acp { .. } => return crate::acp::start(config, task_text, None),
    };

    let mut proc = Proc::spawn(config, program, &args, &[], jsonl)?;

    let stdin = Arc::new(Mutex::new(proc.child.stdin.take()));
    if jsonl {
        // Hold the stdin lock until the task line is written, so no control
        // message can overtake it. The lock is fresh, so this cannot fail.
        if let Ok(guard) = Arc::clone(&stdin).try_lock_owned() {
            let line = ToAgent::Task { text: task_text }.line()?;
            tokio::spawn(write_task(guard, line));
        }
    }

    let (events_tx, events) = mpsc::channel(EVENT_BUFFER);
    let (cancel_tx, cancel) = mpsc::channel(1);
    let supervisor = Supervisor {
        proc,
        jsonl,
        events: events_tx,
        cancel,
        stdin: Arc::clone(&stdin),
        last_stdout: None,
    };
    tokio::spawn(supervisor.run());

    let route = if jsonl { Route::Jsonl(stdin) } else { Route::Command };
    Ok(Running::new(events, Controller::new(route, cancel_tx)))
}

/// Continues a finished task of `config` with a follow-up `text`, from the
/// `token` an earlier run reported in [`ExecEvent::Resumable`]. Claude Code
/// executors resume with `--resume <session>`, ACP executors with
/// `session/load`.
///
/// # Errors
/// [`ExecError::Unsupported`] for executor kinds that cannot resume; as
/// [`start`] otherwise.
pub fn resume(config: &ExecutorConfig, token: &str, text: &str) -> Result<Running, ExecError> {
    match &config.kind {
        ExecutorKind::Claude { .. } => crate::claude::start(config, text, Some(token)),
        ExecutorKind::Command { .. } => {
            Err(ExecError::Unsupported("a command executor cannot resume a finished task"))
        }
        ExecutorKind::Jsonl { .. } => {
            Err(ExecError::Unsupported("a jsonl executor cannot resume a finished task"))
        }
        ExecutorKind::Acp { .. } => crate::acp::start(config, text, Some(token)),
    }
}

/// A plan (an ACP agent's `plan` update's `entries`, Claude Code's
/// `TodoWrite` `todos`: objects with `content` and a `status` of `pending`,
/// `in_progress` or `completed`) as the progress text phones show as a
/// checklist: `Plan:` then one line per entry, `[x]` done, `[~]` in
/// progress, `[ ]` to do.
#[must_use]
pub fn plan_text(entries: Option<&serde_json::Value>) -> String {
    let mut text = "Plan:".to_owned();
    let entries = entries.and_then(serde_json::Value::as_array).map_or(&[][..], Vec::as_slice);
    for entry in entries {
        let mark = match entry.get("status").and_then(serde_json::Value::as_str) {
            Some("completed") => "[x]",
            Some("in_progress") => "[~]",
            _ => "[ ]",
        };
        let content = entry.get("content").and_then(serde_json::Value::as_str).unwrap_or_default();
        // One line per entry, whatever the agent wrote.
        let content = content.split_whitespace().collect::<Vec<_>>().join(" ");
        text.push_str(&format!("\n{mark} {content}"));
    }
    text
}

/// A session an executor can continue (Claude Code's, an ACP agent's), for
/// the hand-off from the terminal to a phone (`sessions` message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEntry {
    /// The agent's session id: what [`resume`] takes as its token.
    pub id: String,
    /// Its summary, or the start of its first prompt.
    pub title: String,
    /// When it last changed (Unix ms).
    pub updated_ms: u64,
}

/// The sessions `config` (placed in its project) can continue, newest
/// first: Claude Code's own session store for `claude`, `session/list` for
/// an ACP agent that offers it.
///
/// # Errors
/// [`ExecError::Unsupported`] for executors that cannot list sessions;
/// what reading them failed with otherwise.
pub async fn list_sessions(config: &ExecutorConfig) -> Result<Vec<SessionEntry>, ExecError> {
    match &config.kind {
        ExecutorKind::Claude { .. } => {
            let config = config.clone();
            tokio::task::spawn_blocking(move || crate::claude::sessions::list(&config))
                .await
                .unwrap_or(Err(ExecError::Unsupported("listing sessions failed")))
        }
        ExecutorKind::Acp { .. } => crate::acp::list_sessions(config).await,
        ExecutorKind::Command { .. } | ExecutorKind::Jsonl { .. } => {
            Err(ExecError::Unsupported("this executor keeps no sessions to continue"))
        }
    }
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use std::process::Stdio;

    use tokio::time::timeout;

    use super::*;

    const STEP: Duration = Duration::from_secs(10);

    fn script(dir: &Path, name: &str, body: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_str().unwrap().to_owned()
    }

    fn command(program: &str, args: &[&str], workdir: &Path) -> ExecutorConfig {
        ExecutorConfig {
            name: "test".into(),
            kind: ExecutorKind::Command {
                program: program.into(),
                args: args.iter().map(|a| (*a).to_owned()).collect(),
            },
            workdir: Some(workdir.to_owned()),
            env: Vec::new(),
        }
    }

    fn jsonl(program: &str, workdir: &Path) -> ExecutorConfig {
        ExecutorConfig {
            name: "agent".into(),
            kind: ExecutorKind::Jsonl { program: program.into(), args: Vec::new() },
            workdir: Some(workdir.to_owned()),
            env: Vec::new(),
        }
    }

    /// `start`, retrying on ETXTBSY: a script just written may still be open
    /// for writing in a process another test thread forked meanwhile.
    async fn start_ok(config: &ExecutorConfig, task: &str) -> Running {
        for _ in 0..50 {
            match start(config, task) {
                Err(ExecError::Spawn { source, .. }) if source.raw_os_error() == Some(26) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other.unwrap(),
            }
        }
        panic!("executable stayed busy");
    }

    async fn next(r: &mut Running) -> ExecEvent {
        timeout(STEP, r.next()).await.expect("no event in time").expect("events ended")
    }

    /// All events up to and including `Finished`; checks nothing follows.
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

    fn progress(text: &str) -> ExecEvent {
        ExecEvent::Progress(text.to_owned())
    }

    fn finished(status: FinishStatus, summary: &str) -> ExecEvent {
        ExecEvent::Finished { status, summary: summary.to_owned() }
    }

    /// Whether `pid` is a live process (a zombie counts as gone).
    fn alive(pid: &str) -> bool {
        let signalled = std::process::Command::new("kill")
            .args(["-s", "0", pid])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            .unwrap_or(false);
        signalled && !zombie
    }

    #[tokio::test]
    async fn command_gets_the_task_text_as_one_untouched_argument() {
        let dir = tempfile::tempdir().unwrap();
        let echo = script(
            dir.path(),
            "echo-args",
            "printf 'argc=%s\\n' \"$#\"\nfor a in \"$@\"; do printf 'arg=%s\\n' \"$a\"; done\n",
        );
        let tasks = [
            "; touch pwned",
            "it's \"quoted\" $(touch pwned) `touch pwned` ; touch pwned && echo hi | cat > pwned",
            "  leading and trailing spaces  * ? ~ $HOME ${PATH} \\ ",
        ];
        for task in tasks {
            let config = command(&echo, &["--flag", "{task}", "x{task}", "last"], dir.path());
            let mut r = start_ok(&config, task).await;
            assert_eq!(
                all(&mut r).await,
                vec![
                    progress("argc=4"),
                    progress("arg=--flag"),
                    progress(&format!("arg={task}")),
                    progress("arg=x{task}"),
                    progress("arg=last"),
                    finished(FinishStatus::Succeeded, "arg=last"),
                ]
            );
        }
        // The program itself, not via a script: still no shell.
        let mut r = start_ok(&command("echo", &["{task}"], dir.path()), "; touch pwned").await;
        assert_eq!(
            all(&mut r).await,
            vec![progress("; touch pwned"), finished(FinishStatus::Succeeded, "; touch pwned")]
        );
        assert!(!dir.path().join("pwned").exists(), "a shell ran the task text");
    }

    #[tokio::test]
    async fn command_streams_stdout_and_stderr_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = script(
            dir.path(),
            "stream",
            "echo out1\necho err1 >&2\necho out2\n\necho err2 >&2\necho out3\n",
        );
        let mut r = start_ok(&command(&s, &[], dir.path()), "t").await;
        let events = all(&mut r).await;
        let texts: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                ExecEvent::Progress(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        let out: Vec<&str> = texts.iter().copied().filter(|t| t.starts_with("out")).collect();
        let err: Vec<&str> = texts.iter().copied().filter(|t| t.starts_with("stderr: ")).collect();
        assert_eq!(out, ["out1", "out2", "out3"]);
        assert_eq!(err, ["stderr: err1", "stderr: err2"]);
        assert_eq!(texts.len(), 5, "{texts:?}");
        assert_eq!(events.last(), Some(&finished(FinishStatus::Succeeded, "out3")));
    }

    #[tokio::test]
    async fn command_failure_statuses() {
        let dir = tempfile::tempdir().unwrap();
        let fail = script(dir.path(), "fail", "echo nope\nexit 3\n");
        let mut r = start_ok(&command(&fail, &[], dir.path()), "t").await;
        assert_eq!(
            all(&mut r).await,
            vec![progress("nope"), finished(FinishStatus::Failed, "exit code 3")]
        );

        let killed = script(dir.path(), "killed", "kill -9 $$\n");
        let mut r = start_ok(&command(&killed, &[], dir.path()), "t").await;
        assert_eq!(all(&mut r).await, vec![finished(FinishStatus::Failed, "killed by signal 9")]);

        let quiet = script(dir.path(), "quiet", "exit 0\n");
        let mut r = start_ok(&command(&quiet, &[], dir.path()), "t").await;
        assert_eq!(all(&mut r).await, vec![finished(FinishStatus::Succeeded, "exit code 0")]);
    }

    #[tokio::test]
    async fn command_uses_workdir_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let s = script(dir.path(), "where", "pwd\necho \"$TANDEM_TEST_VAR\"\n");
        let mut config = command(&s, &[], dir.path());
        config.env.push(("TANDEM_TEST_VAR".into(), "from config".into()));
        let mut r = start_ok(&config, "t").await;
        let events = all(&mut r).await;
        let pwd = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(events.first(), Some(&progress(pwd.to_str().unwrap())));
        assert_eq!(events.get(1), Some(&progress("from config")));
    }

    #[tokio::test]
    async fn command_rejects_follow_ups_and_decisions() {
        let dir = tempfile::tempdir().unwrap();
        let s = script(dir.path(), "wait", "sleep 30\n");
        let mut r = start_ok(&command(&s, &[], dir.path()), "t").await;
        assert!(matches!(
            r.control(Control::FollowUp("more".into())).await,
            Err(ExecError::Unsupported(_))
        ));
        let d = Control::Decision { approval_id: "a".into(), allow: true };
        let e = r.controller().control(d).await.unwrap_err();
        assert_eq!(e.to_string(), "a command executor cannot take decisions");
        let e = resume(&command(&s, &[], dir.path()), "token", "more").unwrap_err();
        assert_eq!(e.to_string(), "a command executor cannot resume a finished task");
        let e = resume(&jsonl(&s, dir.path()), "token", "more").unwrap_err();
        assert_eq!(e.to_string(), "a jsonl executor cannot resume a finished task");
        r.control(Control::Cancel).await.unwrap();
        assert_eq!(all(&mut r).await, vec![finished(FinishStatus::Cancelled, "cancelled")]);
        assert!(matches!(r.control(Control::Cancel).await, Err(ExecError::NotRunning)));
    }

    const AGENT: &str = r#"read -r task
printf 'got %s\n' "$task"
echo '{"type":"progress","text":"thinking"}'
echo '{"type":"tool_call","call_id":"c1","name":"read_file","input":{"path":"a.txt"}}'
echo '{"type":"tool_result","call_id":"c1","output":"contents","is_error":false}'
echo '{"type":"approval_request","approval_id":"a1","summary":"delete a.txt","detail":"rm a.txt"}'
read -r decision
printf 'decision %s\n' "$decision"
echo '{"type":"progress","text":"waiting"}'
read -r follow
printf 'follow %s\n' "$follow"
echo 'this is not json'
echo '{"type":"mystery","x":1}'
echo '{"type":"progress"}'
echo 'oops' >&2
echo '{"type":"finished","status":"succeeded","summary":"all done"}'
echo '{"type":"progress","text":"after finished"}'
"#;

    /// The JSON after `prefix` in a progress event.
    fn echoed(event: &ExecEvent, prefix: &str) -> serde_json::Value {
        let ExecEvent::Progress(text) = event else { panic!("not progress: {event:?}") };
        serde_json::from_str(text.strip_prefix(prefix).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn jsonl_agent_conversation() {
        let dir = tempfile::tempdir().unwrap();
        let agent = script(dir.path(), "agent", AGENT);
        let task = "fix \"it\"; $(rm -rf /)\tnow";
        let mut r = start_ok(&jsonl(&agent, dir.path()), task).await;

        assert_eq!(
            echoed(&next(&mut r).await, "got "),
            serde_json::json!({"type": "task", "text": task})
        );
        assert_eq!(next(&mut r).await, progress("thinking"));
        assert_eq!(
            next(&mut r).await,
            ExecEvent::ToolCall {
                call_id: "c1".into(),
                name: "read_file".into(),
                input: serde_json::json!({"path": "a.txt"}),
            }
        );
        assert_eq!(
            next(&mut r).await,
            ExecEvent::ToolResult {
                call_id: "c1".into(),
                output: "contents".into(),
                is_error: false
            }
        );
        assert_eq!(
            next(&mut r).await,
            ExecEvent::ApprovalRequest {
                approval_id: "a1".into(),
                summary: "delete a.txt".into(),
                detail: "rm a.txt".into(),
                tool: None,
            }
        );
        let controller = r.controller();
        controller
            .control(Control::Decision { approval_id: "a1".into(), allow: true })
            .await
            .unwrap();
        assert_eq!(
            echoed(&next(&mut r).await, "decision "),
            serde_json::json!({"type": "decision", "approval_id": "a1", "allow": true})
        );
        assert_eq!(next(&mut r).await, progress("waiting"));
        r.control(Control::FollowUp("also b.txt".into())).await.unwrap();
        assert_eq!(
            echoed(&next(&mut r).await, "follow "),
            serde_json::json!({"type": "follow_up", "text": "also b.txt"})
        );
        let rest = all(&mut r).await;
        let (finish, before) = rest.split_last().unwrap();
        assert_eq!(finish, &finished(FinishStatus::Succeeded, "all done"));
        let mut before = before.to_vec();
        // stderr may arrive anywhere relative to stdout.
        let stderr = before.iter().position(|e| e == &progress("stderr: oops")).unwrap();
        before.remove(stderr);
        assert_eq!(
            before,
            vec![
                progress("this is not json"),
                progress(r#"{"type":"mystery","x":1}"#),
                progress(r#"{"type":"progress"}"#),
            ]
        );
        assert!(matches!(
            controller.control(Control::FollowUp("late".into())).await,
            Err(ExecError::NotRunning)
        ));
    }

    #[tokio::test]
    async fn jsonl_exit_without_finished_fails() {
        let dir = tempfile::tempdir().unwrap();
        let agent = script(
            dir.path(),
            "quitter",
            "read -r t\necho '{\"type\":\"progress\",\"text\":\"hi\"}'\nexit 2\n",
        );
        let mut r = start_ok(&jsonl(&agent, dir.path()), "t").await;
        assert_eq!(
            all(&mut r).await,
            vec![
                progress("hi"),
                finished(FinishStatus::Failed, "exited without finishing (exit code 2)")
            ]
        );
    }

    #[tokio::test]
    async fn jsonl_agent_that_ignores_stdin_still_runs() {
        let dir = tempfile::tempdir().unwrap();
        let agent = script(
            dir.path(),
            "deaf",
            "echo '{\"type\":\"finished\",\"status\":\"failed\",\"summary\":\"no\"}'\n",
        );
        let mut r = start_ok(&jsonl(&agent, dir.path()), &"x".repeat(200_000)).await;
        assert_eq!(all(&mut r).await, vec![finished(FinishStatus::Failed, "no")]);
    }

    async fn cancel_kills_the_group(config: &ExecutorConfig) -> Duration {
        let mut r = start_ok(config, "t").await;
        let ExecEvent::Progress(line) = next(&mut r).await else { panic!("expected the pid") };
        let pid = line.strip_prefix("child ").unwrap().to_owned();
        assert!(alive(&pid));
        let began = std::time::Instant::now();
        r.controller().control(Control::Cancel).await.unwrap();
        assert_eq!(all(&mut r).await, vec![finished(FinishStatus::Cancelled, "cancelled")]);
        let took = began.elapsed();
        assert!(took < Duration::from_secs(5), "cancel took {took:?}");
        // The kill is delivered; under load the process may take a moment to go.
        let gone_by = std::time::Instant::now() + Duration::from_secs(3);
        while alive(&pid) {
            assert!(std::time::Instant::now() < gone_by, "grandchild {pid} survived the cancel");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        took
    }

    #[tokio::test]
    async fn cancel_ends_a_command_and_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let s = script(dir.path(), "long", "sleep 30 &\necho \"child $!\"\nsleep 30\n");
        let took = cancel_kills_the_group(&command(&s, &[], dir.path())).await;
        assert!(took < Duration::from_secs(2), "SIGTERM should have been enough: {took:?}");
    }

    #[tokio::test]
    async fn cancel_ends_a_jsonl_agent_and_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let s = script(dir.path(), "long", "read -r t\nsleep 30 &\necho \"child $!\"\nwait\n");
        cancel_kills_the_group(&jsonl(&s, dir.path())).await;
    }

    #[tokio::test]
    async fn cancel_escalates_to_sigkill() {
        let dir = tempfile::tempdir().unwrap();
        // Ignored signals stay ignored across exec: the sleeps ignore SIGTERM too.
        let s = script(
            dir.path(),
            "stubborn",
            "trap '' TERM\nsleep 30 &\necho \"child $!\"\nsleep 30\n",
        );
        let took = cancel_kills_the_group(&command(&s, &[], dir.path())).await;
        assert!(took >= KILL_GRACE, "{took:?}");
    }

    #[tokio::test]
    async fn dropping_running_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let s = script(dir.path(), "long", "sleep 30 &\necho \"child $!\"\nsleep 30\n");
        let mut r = start_ok(&command(&s, &[], dir.path()), "t").await;
        let ExecEvent::Progress(line) = next(&mut r).await else { panic!("expected the pid") };
        let pid = line.strip_prefix("child ").unwrap().to_owned();
        let controller = r.controller();
        drop(r);
        let began = std::time::Instant::now();
        while alive(&pid) {
            assert!(began.elapsed() < Duration::from_secs(5), "grandchild {pid} survived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The supervisor is gone, so nothing can be controlled any more.
        while !matches!(controller.control(Control::Cancel).await, Err(ExecError::NotRunning)) {
            assert!(began.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn leftover_child_holding_the_pipes_does_not_block_finishing() {
        let dir = tempfile::tempdir().unwrap();
        let s = script(dir.path(), "daemonish", "sleep 4 &\necho done\n");
        let began = std::time::Instant::now();
        let mut r = start_ok(&command(&s, &[], dir.path()), "t").await;
        assert_eq!(
            all(&mut r).await,
            vec![progress("done"), finished(FinishStatus::Succeeded, "done")]
        );
        assert!(began.elapsed() < Duration::from_secs(3), "{:?}", began.elapsed());
    }

    #[tokio::test]
    async fn missing_program_or_workdir_errors_at_start() {
        let dir = tempfile::tempdir().unwrap();
        for program in ["/nonexistent/tandem-no-such-program", "tandem-no-such-program-x7"] {
            match start(&command(program, &[], dir.path()), "t") {
                Err(ExecError::Spawn { program: p, source }) => {
                    assert_eq!(p, program);
                    assert_eq!(source.kind(), io::ErrorKind::NotFound);
                }
                other => panic!("expected a spawn error, got {other:?}"),
            }
            assert!(matches!(
                start(&jsonl(program, dir.path()), "t"),
                Err(ExecError::Spawn { .. })
            ));
        }
        let e = start(&command("echo", &[], &dir.path().join("missing")), "t").unwrap_err();
        assert!(matches!(e, ExecError::Workdir { .. }), "{e}");
    }

    #[tokio::test]
    async fn long_lines_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let s = script(
            dir.path(),
            "long-line",
            "head -c 3000000 /dev/zero | tr '\\0' 'x'\necho\necho short\n",
        );
        let mut r = start_ok(&command(&s, &[], dir.path()), "t").await;
        let events = all(&mut r).await;
        let ExecEvent::Progress(long) = &events[0] else { panic!("{:?}", events[0]) };
        assert_eq!(long.len(), MAX_EVENT_TEXT);
        assert!(long.ends_with(TRUNCATION_MARKER));
        assert_eq!(events[1], progress("short"));
        assert_eq!(events.len(), 3);

        let big = "y".repeat(100_000);
        let agent = script(
            dir.path(),
            "big-result",
            &format!(
                "echo '{{\"type\":\"tool_result\",\"call_id\":\"c\",\"output\":\"{big}\",\"is_error\":true}}'\n\
                 echo '{{\"type\":\"tool_call\",\"call_id\":\"c\",\"name\":\"n\",\"input\":[\"{big}\"]}}'\n"
            ),
        );
        let mut r = start_ok(&jsonl(&agent, dir.path()), "t").await;
        let events = all(&mut r).await;
        let ExecEvent::ToolResult { output, is_error: true, .. } = &events[0] else {
            panic!("{:?}", events[0])
        };
        assert_eq!(output.len(), MAX_EVENT_TEXT);
        let ExecEvent::ToolCall { input: serde_json::Value::String(input), .. } = &events[1] else {
            panic!("{:?}", events[1])
        };
        assert!(serde_json::to_string(input).unwrap().len() <= MAX_EVENT_TEXT + 2);
    }

    #[test]
    fn agent_lines_never_fail() {
        for line in ["", "{", "null", "[]", "42", r#"{"type":7}"#, r#"{"type":"finished"}"#] {
            assert_eq!(parse_agent_line(line.into()), progress(line));
        }
        assert_eq!(
            parse_agent_line(r#"{"type":"finished","status":"rejected"}"#.into()),
            progress(r#"{"type":"finished","status":"rejected"}"#)
        );
        assert_eq!(
            parse_agent_line(r#"{"type":"finished","status":"cancelled"}"#.into()),
            finished(FinishStatus::Cancelled, "")
        );
    }

    #[test]
    fn config_serde() {
        let json = r#"{"name":"claude","type":"jsonl","program":"agent","args":["--x"],"workdir":"/tmp","env":[["K","V"]]}"#;
        let config: ExecutorConfig = serde_json::from_str(json).unwrap();
        assert_eq!(
            config,
            ExecutorConfig {
                name: "claude".into(),
                kind: ExecutorKind::Jsonl { program: "agent".into(), args: vec!["--x".into()] },
                workdir: Some("/tmp".into()),
                env: vec![("K".into(), "V".into())],
            }
        );
        let minimal: ExecutorConfig =
            serde_json::from_str(r#"{"name":"echo","type":"command","program":"echo"}"#).unwrap();
        assert_eq!(minimal.kind, ExecutorKind::Command { program: "echo".into(), args: vec![] });
        let back: ExecutorConfig =
            serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(back, config);
        let claude: ExecutorConfig =
            serde_json::from_str(r#"{"name":"c","type":"claude"}"#).unwrap();
        assert_eq!(
            claude.kind,
            ExecutorKind::Claude {
                program: "claude".into(),
                args: vec![],
                setting_sources: vec![]
            }
        );
        let acp: ExecutorConfig =
            serde_json::from_str(r#"{"name":"a","type":"acp","program":"agent","args":["--acp"]}"#)
                .unwrap();
        assert_eq!(
            acp.kind,
            ExecutorKind::Acp {
                program: "agent".into(),
                args: vec!["--acp".into()],
                session_meta: None
            }
        );
    }
}
