//! The `acp` executor: an agent that speaks the Agent Client Protocol
//! (JSON-RPC 2.0, one message a line, over its stdin and stdout), with this
//! desktop as its client.
//!
//! A task starts the configured program (no shell, its own process group,
//! in the project directory: the executor's `workdir`, else the agent's own
//! working directory), sends `initialize` (file system read and write
//! advertised, no terminal), `session/new` with the project directory
//! (absolute, canonical) and the task text as `session/prompt`. A follow-up
//! sent while the agent works is queued and goes as the next
//! `session/prompt` of the same session when the current one ends; the
//! task finishes once, after the last. The session id makes the task
//! resumable: a follow-up after the finish starts the agent again and, if
//! it has the `loadSession` capability, loads that session
//! (`session/load`; the history it replays is not shown again) and prompts
//! it; an agent without it fails that follow-up and says why. A task a
//! phone submits with `resume` starts the same way on that session, which
//! [`list_sessions`] found with the agent's `session/list` ([`sessions`]).
//!
//! **Updates.** `session/update` notifications become progress, tool calls,
//! tool results and plans on the phone (`acp/mapping.rs`). They are read from the
//! agent's stdout by the supervisor itself, line by line, before the line is
//! handed to the protocol library (`acp/connection.rs`), so they reach the phone
//! in the order the agent sent them, and all of them before the turn's end.
//!
//! **Permissions.** `session/request_permission` becomes an approval request
//! on the phone, through the same path as every executor's (the task
//! manager shows, times and audits it). The phone's allow selects the
//! agent's `allow_once` option, its deny `reject_once` (or `reject_always`
//! when the agent offers no `reject_once`). An allow the phone made a
//! standing rule ("always allow") is answered `allow_once` too: the agent's own `allow_always` is wider than
//! the desktop's rule (`claude-code-acp` writes an allow rule for the whole
//! tool into the project's `.claude/settings.local.json`), outside the
//! desktop's deny rules and `tandem rules remove`; the desktop's rule answers
//! the next request. Without an `allow_once` option, a plain allow
//! answers `cancelled`. An approval that times out, a cancel, and a turn
//! that ends first answer `cancelled`.
//!
//! **Settings.** `session/new` and `session/load` carry the executor's
//! `session_meta` as `_meta`, by default [`default_session_meta`], which
//! makes Zed's `claude-code-acp` start Claude Code with no settings file
//! (so no repository allow rule or hook decides instead of the phone). What
//! an agent asks permission for is still its own decision: that adapter's
//! own rule check reads the settings files regardless (README).
//!
//! **Files.** `fs/read_text_file` and `fs/write_text_file` are served inside
//! the project directory only ([`fs`]); a refusal is a JSON-RPC error for
//! the agent and a progress line for the phone. A write goes ahead unasked
//! only when a permission the phone allowed in the current turn named its
//! file (the tool call's locations, raw-input paths or diffs); any other is
//! an approval request of its own, "Write … (the agent did not ask)", since
//! what an agent asks about is its own choice (its settings may skip the
//! question). Terminal methods are not
//! advertised and not served.
//!
//! **The end.** The turn's `stopReason` decides: `end_turn` succeeded (the
//! summary is the agent's text in that turn since its last tool call), `cancelled`
//! cancelled, `max_tokens`, `max_turn_requests` and `refusal` failed with
//! the reason. An agent that exits, fails a request or writes a line that
//! is not JSON-RPC fails the task with what happened (its exit status and
//! last stderr line when it exited). [`Control::Cancel`] sends
//! `session/cancel`, answers pending permissions `cancelled`, waits up to
//! [`CANCEL_GRACE`] for the turn to end, and finishes `cancelled` (saying so
//! when the agent did not end its turn in that time).
//!
//! **Stopping the agent.** Before the task's last event the agent is
//! stopped: its stdin is closed and it has [`STOP_GRACE`] to exit on its
//! own, then its process group is terminated (`SIGTERM`, `SIGKILL` after
//! [`crate::executor::KILL_GRACE`]). The grace is for the agent's own
//! bookkeeping: Claude Code (behind `claude-code-acp`) writes a turn's
//! transcript, which `session/load` later replays, a moment after the turn
//! ended, and a `SIGTERM` right away lost the last turn under load. (That
//! adapter does not exit when its stdin closes, so it gets the whole grace.)
//! A task whose consumer is gone is terminated at once.
//!
//! The agent's stderr is its log: kept off the phone, its last line goes
//! into a failure's summary.

mod approvals;
mod connection;
pub mod fs;
mod mapping;
mod plumbing;
pub mod sessions;
#[cfg(test)]
#[cfg(unix)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_client_protocol::{RequestPermissionOutcome, StopReason};
use serde_json::Value;
use tandem_proto::message::FinishStatus;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::debug;

use crate::executor::{
    Control, Controller, DRAIN_GRACE, EXIT_GRACE, ExecError, ExecEvent, ExecutorConfig,
    ExecutorKind, Interrupt, MAX_EVENT_TEXT, MAX_ID_LEN, Proc, Route, Running, Stream, cap_text,
    close_controls, describe_exit, send_steered,
};
use approvals::{Ask, choose, kind};
use connection::{FromConn, ToConn};
use mapping::Mapper;
use plumbing::{Plumbing, plumb, project_of, stop_agent};
pub use sessions::list_sessions;

/// After `session/cancel`, how long the agent has to end its turn before
/// its process group is terminated anyway.
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// Once its stdin is closed, how long the agent has to exit on its own
/// (and finish writing its session) before its process group is
/// terminated.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Joined message text waits at most this long before it goes to the phone.
pub(crate) const TEXT_FLUSH: Duration = Duration::from_millis(500);

/// Bytes buffered in each in-memory pipe between the agent's stdio and the
/// protocol library.
const PIPE_BYTES: usize = 64 * 1024;

/// Events buffered between the supervisor and the consumer of [`Running`].
const EVENT_BUFFER: usize = 64;

/// Control messages buffered for the supervisor.
const CONTROL_BUFFER: usize = 16;

/// Longest line of the agent's quoted in a failure.
const QUOTE_MAX: usize = 200;

/// Largest message the agent may send, in bytes of its JSON line: room for
/// a file write of [`fs::MAX_FILE_BYTES`] with its JSON escapes. A longer
/// line is cut when read, and fails the task.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Starts an ACP task for `config` with `text` as its first prompt, in a new
/// session or, with `resume`, in that earlier one (`session/load`, when the
/// agent can). Called by [`crate::executor::start`] and
/// [`crate::executor::resume`].
///
/// # Errors
/// [`ExecError::Unsupported`] if `config` is not an ACP executor,
/// [`ExecError::Workdir`] if the project directory cannot be resolved,
/// [`ExecError::Spawn`] as for any executor, [`ExecError::Setup`] if the
/// protocol's thread cannot start.
pub fn start(
    config: &ExecutorConfig,
    text: &str,
    resume: Option<&str>,
) -> Result<Running, ExecError> {
    let ExecutorKind::Acp { program, args, session_meta } = &config.kind else {
        return Err(ExecError::Unsupported("not an ACP executor"));
    };
    let project = project_of(config)?;
    let mut proc = Proc::spawn_capped(config, program, args, &[], true, MAX_MESSAGE_BYTES)?;
    let Plumbing { wire, stdin, from_conn, to_conn, ends } = plumb(&mut proc);
    let session = connection::Session {
        resume: resume.map(str::to_owned),
        meta: session_meta.clone().unwrap_or_else(default_session_meta),
    };
    connection::spawn(project.clone(), session, ends).map_err(ExecError::Setup)?;

    let (events_tx, events) = mpsc::channel(EVENT_BUFFER);
    let (cancel_tx, cancel) = mpsc::channel(1);
    let (controls_tx, controls) = mpsc::channel(CONTROL_BUFFER);
    let supervisor = Supervisor {
        proc,
        stdin,
        events: events_tx,
        cancel,
        controls,
        controls_open: true,
        to_conn,
        from_conn,
        wire: Some(wire),
        mapper: Mapper::default(),
        flush_at: None,
        pending: HashMap::new(),
        project,
        granted: HashSet::new(),
        used_ids: HashSet::new(),
        next_id: 0,
        first_prompt: Some(text.to_owned()),
        follow_ups: VecDeque::new(),
        prompting: false,
        last_stderr: None,
    };
    tokio::spawn(supervisor.run());
    Ok(Running::new(events, Controller::new(Route::Acp(controls_tx), cancel_tx)))
}

/// The `_meta` Tandem sends with `session/new` and `session/load` unless
/// the executor's `session_meta` says otherwise:
/// `{"claudeCode": {"options": {"settingSources": []}}}`. Zed's
/// `claude-code-acp` takes it as its Claude Code options, so it loads no
/// settings file: without it, an allow rule or hook in the repository's
/// `.claude/settings.json` (or the user's) approves steps without a
/// permission request, as the `claude` executor's pinning prevents for
/// Claude Code itself. Other agents ignore keys they do not know.
pub fn default_session_meta() -> serde_json::Map<String, Value> {
    let pin = serde_json::json!({"claudeCode": {"options": {"settingSources": []}}});
    match pin {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// How the supervisor's work ended.
enum End {
    /// The task is over: status and summary.
    Finish(FinishStatus, String),
    /// [`Control::Cancel`].
    Cancelled,
    /// The [`Running`] and every [`Controller`] were dropped.
    Abandoned,
}

/// Owns one ACP task: the agent's process, the tap on its stdout, the
/// protocol thread's channels, the approvals and the one final `Finished`.
struct Supervisor {
    proc: Proc,
    /// Copies the protocol's bytes to the agent's stdin, which it owns:
    /// aborted, the agent's stdin closes.
    stdin: Option<JoinHandle<()>>,
    events: mpsc::Sender<ExecEvent>,
    cancel: mpsc::Receiver<()>,
    controls: mpsc::Receiver<Control>,
    controls_open: bool,
    to_conn: mpsc::UnboundedSender<ToConn>,
    from_conn: mpsc::UnboundedReceiver<FromConn>,
    /// The agent's stdout lines go here, to the library (`None` once the
    /// agent's stdout closed).
    wire: Option<DuplexStream>,
    mapper: Mapper,
    /// When joined text goes out if nothing else happens.
    flush_at: Option<Instant>,
    /// Permission requests waiting for a decision, by approval id.
    pending: HashMap<String, Ask>,
    /// The project, to resolve the files a permission names.
    project: fs::Project,
    /// Files the phone allowed a tool call to touch in the current turn.
    granted: HashSet<PathBuf>,
    used_ids: HashSet<String>,
    next_id: u64,
    /// The task text, until the session is ready.
    first_prompt: Option<String>,
    follow_ups: VecDeque<String>,
    /// A `session/prompt` is outstanding.
    prompting: bool,
    last_stderr: Option<String>,
}

impl Supervisor {
    async fn run(mut self) {
        match self.work().await {
            End::Finish(status, summary) => {
                self.answer_all_cancelled();
                self.stop().await;
                self.finish(status, summary).await;
            }
            End::Cancelled => {
                // `session/cancel` first, then the pending permissions
                // `cancelled`, as the protocol asks.
                if self.prompting {
                    let _ = self.to_conn.send(ToConn::Cancel);
                }
                self.answer_all_cancelled();
                if self.prompting {
                    self.wind_down().await;
                }
                let summary = if self.prompting {
                    "cancelled (the agent did not end its turn when asked; it was stopped)"
                } else {
                    "cancelled"
                };
                self.stop().await;
                let rest = self.mapper.flush();
                for event in rest {
                    let _ = self.events.send(event).await;
                }
                self.finish(FinishStatus::Cancelled, summary.to_owned()).await;
            }
            End::Abandoned => {
                debug!("acp executor abandoned; terminating it");
                self.proc.terminate().await;
            }
        }
    }

    /// Runs the task until it is over, cancelled or abandoned.
    async fn work(&mut self) -> End {
        let mut exited = None;
        loop {
            tokio::select! {
                biased;
                c = self.cancel.recv() => {
                    return if c.is_some() { End::Cancelled } else { End::Abandoned };
                }
                () = self.events.closed() => return End::Abandoned,
                c = self.controls.recv(), if self.controls_open => match c {
                    Some(c) => self.on_control(c),
                    None => self.controls_open = false,
                },
                line = self.proc.lines.recv(), if self.wire.is_some() => {
                    let end = match line {
                        Some((Stream::Stdout, line)) => self.on_stdout(line).await,
                        Some((Stream::Stderr, line)) => {
                            self.on_stderr(line);
                            None
                        }
                        None => {
                            // EOF for the library too: its pending requests fail.
                            self.wire = None;
                            None
                        }
                    };
                    if let Some(end) = end {
                        return end;
                    }
                }
                m = self.from_conn.recv() => {
                    let Some(m) = m else {
                        return self.failed("the ACP connection stopped unexpectedly").await;
                    };
                    if let Some(end) = self.on_conn(m).await {
                        return end;
                    }
                }
                () = sleep_until(self.flush_at.unwrap_or_else(Instant::now)),
                    if self.flush_at.is_some() =>
                {
                    self.flush_at = None;
                    let events = self.mapper.flush();
                    if let Some(end) = self.emit_all(events).await {
                        return end;
                    }
                }
                status = self.proc.child.wait(), if exited.is_none() => {
                    exited = Some(status);
                    debug!(?exited, "the ACP agent exited");
                }
            }
        }
    }

    /// One line of the agent's stdout: checked, its update shown, passed on.
    async fn on_stdout(&mut self, line: String) -> Option<End> {
        if line.trim().is_empty() {
            return None;
        }
        if line.len() >= MAX_MESSAGE_BYTES {
            let why = format!(
                "the agent sent a message larger than {} MiB, which is more than this desktop takes",
                MAX_MESSAGE_BYTES / (1024 * 1024)
            );
            return Some(self.failed(&why).await);
        }
        let message = match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(m)) if m.contains_key("method") || m.contains_key("id") => m,
            _ => {
                let quoted = cap_text(line, QUOTE_MAX);
                let why =
                    format!("the agent broke the protocol: it wrote `{quoted}`, not JSON-RPC");
                return Some(self.failed(&why).await);
            }
        };
        // Before the session is ready, updates replay a loaded session's
        // history: the phone has it already.
        if self.first_prompt.is_none()
            && message.get("method").and_then(Value::as_str) == Some("session/update")
            && !message.contains_key("id")
            && let Some(update) = message.get("params").and_then(|p| p.get("update"))
        {
            let events = self.mapper.update(update);
            if let Some(end) = self.emit_all(events).await {
                return Some(end);
            }
            if self.mapper.has_pending_text() {
                self.flush_at.get_or_insert_with(|| Instant::now() + TEXT_FLUSH);
            } else {
                self.flush_at = None;
            }
        }
        let wire = self.wire.as_mut()?;
        let mut bytes = line.into_bytes();
        bytes.push(b'\n');
        if let Err(e) = wire.write_all(&bytes).await {
            debug!(error = %e, "the ACP connection no longer reads");
        }
        None
    }

    fn on_stderr(&mut self, line: String) {
        if !line.trim().is_empty() {
            debug!(line = %line, "acp agent stderr");
            self.last_stderr = Some(cap_text(line, 1024));
        }
    }

    /// Something from the protocol thread.
    async fn on_conn(&mut self, m: FromConn) -> Option<End> {
        match m {
            FromConn::Ready(session) => {
                let text = self.first_prompt.take().unwrap_or_default();
                self.prompt(text);
                if session.is_empty()
                    || session.len() > MAX_ID_LEN
                    || session.chars().any(char::is_control)
                {
                    return None;
                }
                self.emit(ExecEvent::Resumable { token: session }).await
            }
            FromConn::Failed(why) => Some(self.failed(&why).await),
            FromConn::Refused(what) => self.emit(ExecEvent::Progress(what)).await,
            // Only a listing's connection sends it.
            FromConn::Listed(_) => None,
            FromConn::Permission { request, reply } => {
                let tool_call = serde_json::to_value(&request.tool_call).unwrap_or(Value::Null);
                let labels: Vec<String> =
                    request.options.iter().map(|o| format!("{} ({})", o.name, kind(o))).collect();
                let (events, summary, detail) = self.mapper.approval(&tool_call, &labels);
                // What approval rules match: the call's kind as a tool name
                // (`execute` is `Bash`, `edit` is `Edit`, …) and its raw input.
                let tool = events.iter().find_map(|e| match e {
                    ExecEvent::ToolCall { input, .. } => Some(crate::rules::ToolUse {
                        name: crate::rules::acp_tool_name(
                            input.get("kind").and_then(Value::as_str),
                        ),
                        input: input.get("input").cloned().unwrap_or(Value::Null),
                    }),
                    _ => None,
                });
                if let Some(end) = self.emit_all(events).await {
                    return Some(end);
                }
                let tool_call_id = request.tool_call.tool_call_id.0.as_ref();
                let grants = self
                    .mapper
                    .paths_of(tool_call_id)
                    .iter()
                    .filter_map(|p| self.project.writable(Path::new(p)).ok())
                    .collect();
                let approval_id = self.approval_id(tool_call_id);
                let ask = Ask::Permission { reply, options: request.options, grants };
                self.pending.insert(approval_id.clone(), ask);
                self.emit(ExecEvent::ApprovalRequest { approval_id, summary, detail, tool }).await
            }
            FromConn::Write { path, preview, reply } => {
                if self.granted.contains(&path) {
                    let _ = reply.send(true);
                    return None;
                }
                let shown = path.display();
                let summary = format!("Write {shown} (the agent did not ask)");
                let detail = format!(
                    "The agent writes this file without having asked for permission:\n{shown}\n\n{preview}"
                );
                self.next_id += 1;
                let approval_id = self.approval_id(&format!("acp-write-{}", self.next_id));
                self.pending.insert(approval_id.clone(), Ask::Write { reply });
                // Not matched by rules: the agent did not ask, so no rule
                // the user wrote for its tools covers it.
                self.emit(ExecEvent::ApprovalRequest { approval_id, summary, detail, tool: None })
                    .await
            }
            FromConn::PromptDone(done) => {
                self.prompting = false;
                self.granted.clear();
                // Every update before the response was read already.
                let events = self.mapper.flush();
                self.flush_at = None;
                if let Some(end) = self.emit_all(events).await {
                    return Some(end);
                }
                self.answer_all_cancelled();
                let (status, summary) = match done {
                    Ok(reason) => self.outcome(reason),
                    Err(e) => {
                        return Some(self.failed(&format!("the agent's turn failed: {e}")).await);
                    }
                };
                if status != FinishStatus::Cancelled
                    && let Some(next) = self.follow_ups.pop_front()
                {
                    self.prompt(next);
                    return None;
                }
                Some(End::Finish(status, summary))
            }
        }
    }

    /// How a turn that ended with `reason` finishes the task.
    fn outcome(&self, reason: StopReason) -> (FinishStatus, String) {
        let failed = |why: &str| (FinishStatus::Failed, why.to_owned());
        match reason {
            StopReason::EndTurn => {
                let text = self.mapper.last_message();
                let summary = if text.is_empty() { "done" } else { text };
                (FinishStatus::Succeeded, cap_text(summary.to_owned(), MAX_EVENT_TEXT))
            }
            StopReason::Cancelled => {
                (FinishStatus::Cancelled, "the agent cancelled its turn".to_owned())
            }
            StopReason::MaxTokens => failed("the agent stopped: it reached its token limit"),
            StopReason::MaxTurnRequests => {
                failed("the agent stopped: it reached its limit of model requests for one turn")
            }
            StopReason::Refusal => failed("the agent refused to go on"),
            other => (FinishStatus::Failed, format!("the agent stopped: {other:?}")),
        }
    }

    fn prompt(&mut self, text: String) {
        self.prompting = true;
        self.mapper.new_turn();
        // The thread lives as long as this supervisor holds `to_conn`.
        let _ = self.to_conn.send(ToConn::Prompt(text));
    }

    /// The task fails with `why`; if the agent exited (or exits within
    /// [`EXIT_GRACE`]), with its exit status and last stderr line.
    async fn failed(&mut self, why: &str) -> End {
        let mut summary = why.to_owned();
        let exit = match self.proc.child.try_wait() {
            Ok(Some(status)) => Some(status),
            _ if self.wire.is_none() => {
                timeout(EXIT_GRACE, self.proc.child.wait()).await.ok().and_then(Result::ok)
            }
            _ => None,
        };
        if let Some(status) = exit {
            // The rest of its stderr, if it still comes.
            let _ = timeout(DRAIN_GRACE, async {
                while let Some((stream, line)) = self.proc.lines.recv().await {
                    if stream == Stream::Stderr {
                        self.on_stderr(line);
                    }
                }
            })
            .await;
            summary = format!("the agent exited ({}): {why}", describe_exit(status));
        }
        if let Some(line) = &self.last_stderr {
            summary.push_str(&format!(" (last stderr: {line})"));
        }
        End::Finish(FinishStatus::Failed, cap_text(summary, MAX_EVENT_TEXT))
    }

    /// Stops the agent ([`stop_agent`]); the library's end of its stdout
    /// closes first.
    async fn stop(&mut self) {
        self.wire = None;
        stop_agent(&mut self.proc, self.stdin.take(), &mut self.last_stderr).await;
    }

    /// After `session/cancel`: the turn's end, or [`CANCEL_GRACE`]. Updates
    /// still go to the phone; new permission requests are answered
    /// `cancelled`.
    async fn wind_down(&mut self) {
        let deadline = Instant::now() + CANCEL_GRACE;
        while self.prompting {
            tokio::select! {
                () = sleep_until(deadline) => return,
                line = self.proc.lines.recv(), if self.wire.is_some() => match line {
                    Some((Stream::Stdout, line)) => {
                        if self.on_stdout(line).await.is_some() {
                            return;
                        }
                    }
                    Some((Stream::Stderr, line)) => self.on_stderr(line),
                    None => self.wire = None,
                },
                m = self.from_conn.recv() => match m {
                    Some(FromConn::Permission { reply, .. }) => {
                        let _ = reply.send(RequestPermissionOutcome::Cancelled);
                    }
                    Some(FromConn::Write { reply, .. }) => {
                        let _ = reply.send(false);
                    }
                    Some(FromConn::PromptDone(_)) => {
                        self.prompting = false;
                        return;
                    }
                    Some(FromConn::Failed(_)) | None => return,
                    Some(FromConn::Ready(_) | FromConn::Refused(_) | FromConn::Listed(_)) => {}
                },
            }
        }
    }

    /// A fresh approval id: the tool call's id when it is usable and new.
    fn approval_id(&mut self, tool_call_id: &str) -> String {
        let id = if !tool_call_id.is_empty()
            && tool_call_id.len() <= MAX_ID_LEN
            && !self.used_ids.contains(tool_call_id)
        {
            tool_call_id.to_owned()
        } else {
            loop {
                self.next_id += 1;
                let id = format!("acp-permission-{}", self.next_id);
                if !self.used_ids.contains(&id) {
                    break id;
                }
            }
        };
        self.used_ids.insert(id.clone());
        id
    }

    /// A follow-up is queued (or sent, between turns); a decision answers
    /// its permission request.
    fn on_control(&mut self, c: Control) {
        let (approval_id, allow) = match c {
            Control::FollowUp(text) => {
                if self.prompting || self.first_prompt.is_some() {
                    self.follow_ups.push_back(text);
                } else {
                    self.prompt(text);
                }
                return;
            }
            Control::Cancel => return,
            // Never the agent's own `allow_always` (module documentation).
            Control::Decision { approval_id, allow } => (approval_id, allow),
            Control::Expired { approval_id } => {
                if let Some(ask) = self.pending.remove(&approval_id) {
                    ask.cancel();
                }
                return;
            }
        };
        match self.pending.remove(&approval_id) {
            Some(Ask::Permission { reply, options, grants }) => {
                let outcome = choose(&options, allow);
                if matches!(outcome, RequestPermissionOutcome::Selected(_)) && allow {
                    // Before the answer: the write it allows comes after.
                    self.granted.extend(grants);
                }
                let _ = reply.send(outcome);
            }
            Some(Ask::Write { reply }) => {
                let _ = reply.send(allow);
            }
            None => debug!(%approval_id, "decision for no pending ACP approval"),
        }
    }

    fn answer_all_cancelled(&mut self) {
        for (_, ask) in self.pending.drain() {
            ask.cancel();
        }
    }

    async fn emit_all(&mut self, events: Vec<ExecEvent>) -> Option<End> {
        for event in events {
            if let Some(end) = self.emit(event).await {
                return Some(end);
            }
        }
        None
    }

    /// Sends an event; meanwhile it still takes cancels, follow-ups and
    /// decisions, so a slow consumer never blocks a [`Controller`].
    async fn emit(&mut self, event: ExecEvent) -> Option<End> {
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
            Err(Interrupt::Cancelled) => Some(End::Cancelled),
            Err(Interrupt::Abandoned) => Some(End::Abandoned),
        }
    }

    /// The one final event; later controls answer [`ExecError::NotRunning`].
    async fn finish(&mut self, status: FinishStatus, summary: String) {
        let (lost, _) = close_controls(&mut self.cancel, &mut self.controls);
        let lost = lost + self.follow_ups.len();
        if lost > 0 {
            let note = "a follow-up arrived as the agent finished and did not run; send it again";
            let _ = self.events.send(ExecEvent::Progress(note.to_owned())).await;
        }
        // The consumer may be gone; nothing else to tell.
        let _ = self.events.send(ExecEvent::Finished { status, summary }).await;
    }
}
