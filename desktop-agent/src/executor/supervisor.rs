//! The supervisor task: drives one executor process from start to its
//! [`ExecEvent::Finished`], forwarding output and carrying out cancellation.

use std::io;
use std::process::ExitStatus;
use std::sync::Arc;

use tandem_proto::message::FinishStatus;
use tokio::process::ChildStdin;
use tokio::sync::{Mutex, mpsc};
use tokio::time::{Instant, sleep_until, timeout_at};
use tracing::{debug, warn};

use super::{
    DRAIN_GRACE, EXIT_GRACE, ExecEvent, MAX_EVENT_TEXT, Proc, Stream, cap_text, describe_exit,
    parse_agent_line,
};

/// Why the supervisor stopped watching the executor.
enum Outcome {
    /// The executor exited (and its output was read).
    Exited(io::Result<ExitStatus>),
    /// A JSON-lines agent reported `finished` (it may still be running).
    AgentFinished(ExecEvent),
    /// [`Control::Cancel`](super::Control::Cancel).
    Cancelled,
    /// The [`Running`](super::Running) and every [`Controller`](super::Controller) were dropped.
    Abandoned,
}

/// Owns the child process: turns its output into events, reacts to cancel,
/// and always ends with exactly one `Finished` (unless abandoned).
pub(super) struct Supervisor {
    pub(super) proc: Proc,
    pub(super) jsonl: bool,
    pub(super) events: mpsc::Sender<ExecEvent>,
    pub(super) cancel: mpsc::Receiver<()>,
    pub(super) stdin: Arc<Mutex<Option<ChildStdin>>>,
    pub(super) last_stdout: Option<String>,
}

impl Supervisor {
    pub(super) async fn run(mut self) {
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

    /// Sends the final event; later cancels answer [`ExecError::NotRunning`](super::ExecError::NotRunning).
    pub(super) async fn finish(&mut self, event: ExecEvent) {
        self.cancel.close();
        // The consumer may be gone; nothing else to tell.
        let _ = self.events.send(event).await;
    }

    /// Drops the agent's stdin (EOF for it; later controls answer
    /// [`ExecError::NotRunning`](super::ExecError::NotRunning)).
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
    pub(super) async fn terminate(&mut self) {
        self.proc.terminate().await;
    }
}
