//! Executors: the programs the user configured to run tasks.
//!
//! The safety rule: nothing runs on this desktop that the user did not
//! configure as an executor, and the task text is never put into a shell
//! command line. A [`ExecutorKind::Command`] executor gets the task text as
//! one argv element (each argument exactly equal to `{task}` is replaced; no
//! shell, no splitting, no expansion); a [`ExecutorKind::Jsonl`] agent gets it
//! as a JSON line on stdin; [`ExecutorKind::Claude`] runs Claude Code with the
//! task text as the one argument after `--` (see [`crate::claude`]).
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

use std::ffi::OsStr;
use std::io;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem_proto::message::FinishStatus;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Mutex, OwnedMutexGuard, mpsc};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tracing::{debug, warn};

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
    /// `{"type":"approval_request","approval_id":…,"summary":…,"detail":…}`,
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
    },
    /// Tools the agent was not allowed to use in this run (Claude Code's
    /// `permission_denials`): the task's finish names them instead of its
    /// denied approvals ([`crate::tasks`]).
    Denied {
        /// Tool names, as the agent reported them.
        tools: Vec<String>,
    },
    /// The task can be continued after it finishes (Claude Code's session
    /// id): a follow-up that arrives later starts it again with [`resume`].
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
        /// Whether the step may go ahead.
        allow: bool,
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

/// A cloneable handle that controls one running executor.
#[derive(Debug, Clone)]
pub struct Controller {
    inner: Arc<ControlShared>,
}

#[derive(Debug)]
struct ControlShared {
    /// Where follow-ups and decisions go.
    route: Route,
    /// Asks the supervisor to cancel; closed once the executor finished.
    cancel: mpsc::Sender<()>,
}

/// Where a running executor takes follow-ups and decisions.
#[derive(Debug)]
pub(crate) enum Route {
    /// Nowhere: a command executor.
    Command,
    /// A JSON-lines agent's stdin (`None` once finished).
    Jsonl(Arc<Mutex<Option<ChildStdin>>>),
    /// The Claude Code supervisor (closed once finished).
    Claude(mpsc::Sender<Control>),
}

/// A line to a JSON-lines agent.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ToAgent<'a> {
    Task { text: &'a str },
    Decision { approval_id: &'a str, allow: bool },
    FollowUp { text: &'a str },
}

impl ToAgent<'_> {
    fn line(&self) -> Result<String, serde_json::Error> {
        let mut line = serde_json::to_string(self)?;
        line.push('\n');
        Ok(line)
    }
}

impl Controller {
    /// A controller that routes follow-ups and decisions to `route` and
    /// cancels through `cancel`.
    pub(crate) fn new(route: Route, cancel: mpsc::Sender<()>) -> Self {
        Controller { inner: Arc::new(ControlShared { route, cancel }) }
    }

    /// Sends a control message; see [`Running::control`].
    ///
    /// # Errors
    /// As [`Running::control`].
    pub async fn control(&self, c: Control) -> Result<(), ExecError> {
        if c == Control::Cancel {
            return match self.inner.cancel.try_send(()) {
                // Full: a cancel is already on its way.
                Ok(()) | Err(mpsc::error::TrySendError::Full(())) => Ok(()),
                Err(mpsc::error::TrySendError::Closed(())) => Err(ExecError::NotRunning),
            };
        }
        match &self.inner.route {
            Route::Command => Err(ExecError::Unsupported(match c {
                Control::FollowUp(_) => "a command executor cannot take follow-up messages",
                _ => "a command executor cannot take decisions",
            })),
            Route::Jsonl(stdin) => {
                let line = match &c {
                    Control::FollowUp(text) => ToAgent::FollowUp { text }.line()?,
                    Control::Decision { approval_id, allow } => {
                        ToAgent::Decision { approval_id, allow: *allow }.line()?
                    }
                    Control::Cancel => return Ok(()),
                };
                let mut stdin = stdin.lock().await;
                let Some(pipe) = stdin.as_mut() else {
                    return Err(ExecError::NotRunning);
                };
                write_line(pipe, &line).await.map_err(ExecError::Stdin)
            }
            // The supervisor reads controls even while it waits for the
            // consumer, so this does not block for long.
            Route::Claude(tx) => tx.send(c).await.map_err(|_| ExecError::NotRunning),
        }
    }
}

/// Writes one line, giving up after [`WRITE_TIMEOUT`] (an agent that does not
/// read its stdin must not block the caller forever).
async fn write_line(pipe: &mut ChildStdin, line: &str) -> io::Result<()> {
    let write = async {
        pipe.write_all(line.as_bytes()).await?;
        pipe.flush().await
    };
    match timeout(WRITE_TIMEOUT, write).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "the executor does not read stdin")),
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
/// `token` an earlier run reported in [`ExecEvent::Resumable`]. Only Claude
/// Code executors resume (`--resume <session>`).
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
    }
}

/// One executor process in its own process group, with its output lines.
#[derive(Debug)]
pub(crate) struct Proc {
    /// The process (its stdin, if piped, is still in it).
    pub(crate) child: Child,
    /// Its process group (its pid), if it is known.
    pgid: Option<u32>,
    /// Its stdout and stderr lines, until both close.
    pub(crate) lines: mpsc::Receiver<(Stream, String)>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    /// Spawns `program` with `args` (no shell) for `config`: its working
    /// directory, `extra_env` and then its own environment on top of the
    /// agent's, a new process group, stdout and stderr read line by line,
    /// stdin piped or null.
    pub(crate) fn spawn<A: AsRef<OsStr>>(
        config: &ExecutorConfig,
        program: &str,
        args: &[A],
        extra_env: &[(String, String)],
        piped_stdin: bool,
    ) -> Result<Proc, ExecError> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(extra_env.iter().map(|(k, v)| (k, v)))
            .envs(config.env.iter().map(|(k, v)| (k, v)))
            .stdin(if piped_stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[cfg(unix)]
        cmd.process_group(0);
        if let Some(dir) = &config.workdir {
            match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(ExecError::Workdir {
                        path: dir.clone(),
                        source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
                    });
                }
                Err(source) => return Err(ExecError::Workdir { path: dir.clone(), source }),
            }
            cmd.current_dir(dir);
        }

        let mut child = cmd
            .spawn()
            .map_err(|source| ExecError::Spawn { program: program.to_owned(), source })?;
        // With `process_group(0)` the child leads a new group whose id is its pid.
        let pgid = child.id();
        debug!(executor = %config.name, pid = ?pgid, "executor started");

        let (line_tx, lines) = mpsc::channel(EVENT_BUFFER);
        let mut readers = Vec::with_capacity(2);
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(read_lines(out, line_tx.clone(), Stream::Stdout)));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(read_lines(err, line_tx, Stream::Stderr)));
        }
        Ok(Proc { child, pgid, lines, readers })
    }

    /// Terminates the process group: `SIGTERM`, then `SIGKILL` after
    /// [`KILL_GRACE`] if the leader has not exited or its pipes are still
    /// open, or if anything is left in the group.
    pub(crate) async fn terminate(&mut self) {
        let Some(pgid) = self.pgid else {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
            return;
        };
        if !signal_group("TERM", pgid).await {
            // No `kill` binary: at least the executor itself goes.
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
            return;
        }
        let deadline = Instant::now() + KILL_GRACE;
        // Closed pipes mean nothing in the group still holds them; zombies do
        // not, so this works even where orphans are reaped slowly.
        let exited = timeout_at(deadline, self.child.wait()).await.is_ok();
        let drained = timeout_at(deadline, async { while self.lines.recv().await.is_some() {} })
            .await
            .is_ok();
        if !exited || !drained || signal_group("0", pgid).await {
            // Zombies also answer signal 0; a SIGKILL does them no harm.
            signal_group("KILL", pgid).await;
        }
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.abort();
        }
    }
}

async fn write_task(mut stdin: OwnedMutexGuard<Option<ChildStdin>>, line: String) {
    if let Some(pipe) = stdin.as_mut()
        && let Err(e) = write_line(pipe, &line).await
    {
        // The agent exited or does not read; its exit is reported as usual.
        debug!(error = %e, "could not write the task to the executor");
    }
}

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Forwards `pipe`'s lines (lossy UTF-8, without the line ending) until EOF.
async fn read_lines<R: AsyncRead + Unpin>(
    pipe: R,
    tx: mpsc::Sender<(Stream, String)>,
    stream: Stream,
) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        match read_line_capped(&mut reader, &mut buf).await {
            Ok(false) => break,
            Ok(true) => {
                let text = String::from_utf8_lossy(&buf);
                let text = text.strip_suffix('\r').unwrap_or(&text).to_owned();
                if tx.send((stream, text)).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                debug!(error = %e, ?stream, "reading executor output failed");
                break;
            }
        }
    }
}

/// Reads one line into `buf` (without the `\n`), keeping at most
/// [`MAX_LINE_BYTES`] and discarding the rest of a longer line, so a
/// runaway executor cannot exhaust memory. `Ok(false)` at EOF.
async fn read_line_capped<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<bool> {
    buf.clear();
    let mut any = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(any);
        }
        any = true;
        let newline = available.iter().position(|&b| b == b'\n');
        let (chunk, used) = match newline {
            Some(i) => (available.get(..i).unwrap_or_default(), i.saturating_add(1)),
            None => (available, available.len()),
        };
        let room = MAX_LINE_BYTES.saturating_sub(buf.len());
        buf.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
        reader.consume(used);
        if newline.is_some() {
            return Ok(true);
        }
    }
}

/// An event line from a JSON-lines agent.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum AgentEvent {
    Progress {
        text: String,
    },
    ToolCall {
        call_id: String,
        name: String,
        #[serde(default)]
        input: serde_json::Value,
    },
    ToolResult {
        call_id: String,
        #[serde(default)]
        output: String,
        #[serde(default)]
        is_error: bool,
    },
    ApprovalRequest {
        approval_id: String,
        summary: String,
        #[serde(default)]
        detail: String,
    },
    Finished {
        status: AgentStatus,
        #[serde(default)]
        summary: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum AgentStatus {
    Succeeded,
    Failed,
    Cancelled,
}

/// Turns one stdout line of a JSON-lines agent into an event: anything that
/// is not a well-formed known event becomes progress with the raw line.
fn parse_agent_line(line: String) -> ExecEvent {
    let Ok(event) = serde_json::from_str::<AgentEvent>(&line) else {
        return ExecEvent::Progress(cap_text(line, MAX_EVENT_TEXT));
    };
    match event {
        AgentEvent::Progress { text } => ExecEvent::Progress(cap_text(text, MAX_EVENT_TEXT)),
        AgentEvent::ToolCall { call_id, name, input } => ExecEvent::ToolCall {
            call_id: cap_text(call_id, MAX_ID_LEN),
            name: cap_text(name, MAX_ID_LEN),
            input: cap_json(input),
        },
        AgentEvent::ToolResult { call_id, output, is_error } => ExecEvent::ToolResult {
            call_id: cap_text(call_id, MAX_ID_LEN),
            output: cap_text(output, MAX_EVENT_TEXT),
            is_error,
        },
        AgentEvent::ApprovalRequest { approval_id, summary, detail } => {
            // Capped (head and tail) where every executor's approvals go:
            // the task manager.
            ExecEvent::ApprovalRequest {
                approval_id: cap_text(approval_id, MAX_ID_LEN),
                summary,
                detail,
            }
        }
        AgentEvent::Finished { status, summary } => ExecEvent::Finished {
            status: match status {
                AgentStatus::Succeeded => FinishStatus::Succeeded,
                AgentStatus::Failed => FinishStatus::Failed,
                AgentStatus::Cancelled => FinishStatus::Cancelled,
            },
            summary: cap_text(summary, MAX_EVENT_TEXT),
        },
    }
}

/// Bytes `c` takes inside a JSON string as serde_json writes it.
fn json_escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if u32::from(c) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// Caps `text` so its JSON string encoding (without the quotes) takes at most
/// `max` bytes, cutting on a character boundary and appending a marker.
pub(crate) fn cap_text(mut text: String, max: usize) -> String {
    let total = text.chars().map(json_escaped_len).fold(0usize, usize::saturating_add);
    if total <= max {
        return text;
    }
    let budget = max.saturating_sub(TRUNCATION_MARKER.len());
    let mut used = 0usize;
    let mut end = 0usize;
    for (i, c) in text.char_indices() {
        used = used.saturating_add(json_escaped_len(c));
        if used > budget {
            break;
        }
        end = i.saturating_add(c.len_utf8());
    }
    text.truncate(end);
    text.push_str(TRUNCATION_MARKER);
    text
}

/// Caps a tool input: if its JSON is over [`MAX_EVENT_TEXT`], it is replaced
/// by a string holding the (capped) JSON text.
pub(crate) fn cap_json(input: serde_json::Value) -> serde_json::Value {
    let text = input.to_string();
    if text.len() <= MAX_EVENT_TEXT {
        input
    } else {
        serde_json::Value::String(cap_text(text, MAX_EVENT_TEXT))
    }
}

/// `exit code N`, `killed by signal N`, or `unknown exit status`.
pub(crate) fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    "unknown exit status".to_owned()
}

/// Why the supervisor stopped watching the executor.
enum Outcome {
    /// The executor exited (and its output was read).
    Exited(io::Result<ExitStatus>),
    /// A JSON-lines agent reported `finished` (it may still be running).
    AgentFinished(ExecEvent),
    /// [`Control::Cancel`].
    Cancelled,
    /// The [`Running`] and every [`Controller`] were dropped.
    Abandoned,
}

/// Owns the child process: turns its output into events, reacts to cancel,
/// and always ends with exactly one `Finished` (unless abandoned).
struct Supervisor {
    proc: Proc,
    jsonl: bool,
    events: mpsc::Sender<ExecEvent>,
    cancel: mpsc::Receiver<()>,
    stdin: Arc<Mutex<Option<ChildStdin>>>,
    last_stdout: Option<String>,
}

impl Supervisor {
    async fn run(mut self) {
        match self.watch().await {
            Outcome::Exited(status) => {
                self.close_stdin().await;
                let (status, summary) = match status {
                    Ok(s) if s.success() && !self.jsonl => (
                        FinishStatus::Succeeded,
                        self.last_stdout.take().unwrap_or_else(|| describe_exit(s)),
                    ),
                    Ok(s) if self.jsonl => (
                        FinishStatus::Failed,
                        format!("exited without finishing ({})", describe_exit(s)),
                    ),
                    Ok(s) => (FinishStatus::Failed, describe_exit(s)),
                    Err(e) => {
                        self.terminate().await;
                        (FinishStatus::Failed, format!("could not wait for the executor: {e}"))
                    }
                };
                self.finish(ExecEvent::Finished { status, summary }).await;
            }
            Outcome::AgentFinished(event) => {
                // EOF on stdin tells the agent nothing more is coming.
                self.close_stdin().await;
                self.drain_stderr().await;
                self.finish(event).await;
                self.wind_down().await;
            }
            Outcome::Cancelled => {
                self.terminate().await;
                self.close_stdin().await;
                self.finish(ExecEvent::Finished {
                    status: FinishStatus::Cancelled,
                    summary: "cancelled".to_owned(),
                })
                .await;
            }
            Outcome::Abandoned => {
                debug!("executor abandoned; terminating it");
                self.terminate().await;
                self.close_stdin().await;
            }
        }
    }

    /// Runs until the executor is done (exited and output read), a JSON-lines
    /// agent finished, or a cancel.
    async fn watch(&mut self) -> Outcome {
        let mut exit: Option<io::Result<ExitStatus>> = None;
        let mut drain_deadline = Instant::now();
        let mut lines_open = true;
        loop {
            if !lines_open && let Some(status) = exit.take() {
                return Outcome::Exited(status);
            }
            tokio::select! {
                biased;
                c = self.cancel.recv() => {
                    return if c.is_some() { Outcome::Cancelled } else { Outcome::Abandoned };
                }
                () = self.events.closed() => return Outcome::Abandoned,
                line = self.proc.lines.recv(), if lines_open => match line {
                    Some((stream, text)) => {
                        if let Some(outcome) = self.on_line(stream, text).await {
                            return outcome;
                        }
                    }
                    None => lines_open = false,
                },
                status = self.proc.child.wait(), if exit.is_none() => {
                    exit = Some(status);
                    drain_deadline = Instant::now() + DRAIN_GRACE;
                }
                () = sleep_until(drain_deadline), if exit.is_some() => {
                    // A leftover child still holds the pipes; stop waiting.
                    if let Some(status) = exit.take() {
                        return Outcome::Exited(status);
                    }
                }
            }
        }
    }

    async fn on_line(&mut self, stream: Stream, text: String) -> Option<Outcome> {
        if text.trim().is_empty() {
            return None;
        }
        let event = match stream {
            Stream::Stderr => {
                ExecEvent::Progress(cap_text(format!("stderr: {text}"), MAX_EVENT_TEXT))
            }
            Stream::Stdout if self.jsonl => parse_agent_line(text),
            Stream::Stdout => {
                let text = cap_text(text, MAX_EVENT_TEXT);
                self.last_stdout = Some(text.clone());
                ExecEvent::Progress(text)
            }
        };
        if matches!(event, ExecEvent::Finished { .. }) {
            return Some(Outcome::AgentFinished(event));
        }
        self.emit(event).await
    }

    /// Sends an event, but stays responsive to a cancel while the consumer
    /// is slow.
    async fn emit(&mut self, event: ExecEvent) -> Option<Outcome> {
        tokio::select! {
            biased;
            sent = self.events.send(event) => sent.err().map(|_| Outcome::Abandoned),
            c = self.cancel.recv() => {
                Some(if c.is_some() { Outcome::Cancelled } else { Outcome::Abandoned })
            }
        }
    }

    /// Sends the final event; later cancels answer [`ExecError::NotRunning`].
    async fn finish(&mut self, event: ExecEvent) {
        self.cancel.close();
        // The consumer may be gone; nothing else to tell.
        let _ = self.events.send(event).await;
    }

    /// Drops the agent's stdin (EOF for it; later controls answer
    /// [`ExecError::NotRunning`]).
    async fn close_stdin(&self) {
        self.stdin.lock().await.take();
    }

    /// After a JSON-lines agent reported `finished`: its stderr is a separate
    /// pipe, so lines written before `finished` may still be on their way.
    /// Forwards them until both pipes close or [`DRAIN_GRACE`] passes; later
    /// stdout lines are dropped (nothing follows `finished`).
    async fn drain_stderr(&mut self) {
        let deadline = Instant::now() + DRAIN_GRACE;
        while let Ok(Some((stream, text))) = timeout_at(deadline, self.proc.lines.recv()).await {
            if stream == Stream::Stderr && !text.trim().is_empty() {
                let event =
                    ExecEvent::Progress(cap_text(format!("stderr: {text}"), MAX_EVENT_TEXT));
                if self.events.send(event).await.is_err() {
                    return;
                }
            }
        }
    }

    /// After a JSON-lines agent reported `finished`: give it [`EXIT_GRACE`]
    /// to exit (reading and dropping its output meanwhile), then terminate it.
    async fn wind_down(&mut self) {
        let deadline = Instant::now() + EXIT_GRACE;
        let mut lines_open = true;
        loop {
            tokio::select! {
                status = self.proc.child.wait() => {
                    debug!(?status, "executor exited after finishing");
                    return;
                }
                line = self.proc.lines.recv(), if lines_open => {
                    if line.is_none() {
                        lines_open = false;
                    }
                }
                () = sleep_until(deadline) => {
                    warn!("executor still running after it finished; terminating it");
                    self.terminate().await;
                    return;
                }
            }
        }
    }

    /// Terminates the executor's whole process group (see
    /// [`Proc::terminate`]).
    async fn terminate(&mut self) {
        self.proc.terminate().await;
    }
}

/// Sends `signal` to process group `pgid` with the `kill` binary (this crate
/// has no `unsafe` and no `libc`). True if `kill` succeeded; for signal `0`
/// that means the group still has a member.
pub(crate) async fn signal_group(signal: &str, pgid: u32) -> bool {
    if !cfg!(unix) {
        return false;
    }
    let status = Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    match timeout(Duration::from_secs(2), status).await {
        Ok(Ok(s)) => s.success(),
        Ok(Err(e)) => {
            warn!(error = %e, "could not run `kill` to signal the executor's process group");
            false
        }
        Err(_) => false,
    }
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

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
    fn cap_text_counts_json_escapes_and_char_boundaries() {
        assert_eq!(cap_text("short".into(), 10), "short");
        for unit in ["é", "日本", "\u{1}", "\"", "\n", "a🦀"] {
            let text = unit.repeat(50_000);
            let capped = cap_text(text.clone(), MAX_EVENT_TEXT);
            assert!(capped.ends_with(TRUNCATION_MARKER));
            assert!(text.starts_with(capped.strip_suffix(TRUNCATION_MARKER).unwrap()));
            let encoded = serde_json::to_string(&capped).unwrap();
            assert!(encoded.len() <= MAX_EVENT_TEXT + 2, "{unit:?}: {}", encoded.len());
            assert!(encoded.len() > MAX_EVENT_TEXT - 8, "{unit:?}: {}", encoded.len());
        }
    }

    #[test]
    fn largest_events_fit_in_a_message() {
        use tandem_proto::message::{MAX_MESSAGE_LEN, Message, TaskEvent};
        let huge = "\u{1}".repeat(100_000);
        let event = TaskEvent::ApprovalRequest {
            approval_id: cap_text(huge.clone(), MAX_ID_LEN),
            summary: cap_text(huge.clone(), MAX_EVENT_TEXT),
            detail: cap_text(huge.clone(), MAX_EVENT_TEXT),
            expires_at_ms: u64::MAX,
        };
        let message = Message::TaskEvent {
            task_id: "t".repeat(64),
            offset: u64::MAX,
            at_ms: u64::MAX,
            event,
        };
        let bytes = message.encode().unwrap();
        assert!(bytes.len() <= MAX_MESSAGE_LEN);
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
    }
}
