//! Steering a running executor: [`Controller`] sends follow-ups, decisions
//! and cancellation to the process, and [`Route`] says where each goes.

use std::io;
use std::sync::Arc;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::process::ChildStdin;
use tokio::sync::{Mutex, mpsc};
use tokio::time::timeout;

use super::{Control, ExecError, ExecEvent, WRITE_TIMEOUT};

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
    pub(super) cancel: mpsc::Sender<()>,
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
    /// The ACP supervisor (closed once finished).
    Acp(mpsc::Sender<Control>),
}

/// A line to a JSON-lines agent.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum ToAgent<'a> {
    Task { text: &'a str },
    Decision { approval_id: &'a str, allow: bool },
    FollowUp { text: &'a str },
}

impl ToAgent<'_> {
    pub(super) fn line(&self) -> Result<String, serde_json::Error> {
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

    /// Sends a control message; see [`Running::control`](super::Running::control).
    ///
    /// # Errors
    /// As [`Running::control`](super::Running::control).
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
                    Control::Decision { approval_id, allow, .. } => {
                        ToAgent::Decision { approval_id, allow: *allow }.line()?
                    }
                    Control::Expired { approval_id } => {
                        ToAgent::Decision { approval_id, allow: false }.line()?
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
            Route::Claude(tx) | Route::Acp(tx) => {
                tx.send(c).await.map_err(|_| ExecError::NotRunning)
            }
        }
    }
}

/// Writes one line, giving up after [`WRITE_TIMEOUT`] (an agent that does not
/// read its stdin must not block the caller forever).
pub(super) async fn write_line(pipe: &mut ChildStdin, line: &str) -> io::Result<()> {
    let write = async {
        pipe.write_all(line.as_bytes()).await?;
        pipe.flush().await
    };
    match timeout(WRITE_TIMEOUT, write).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "the executor does not read stdin")),
    }
}

/// Why a supervisor stopped sending an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interrupt {
    /// [`Control::Cancel`].
    Cancelled,
    /// The [`Running`](super::Running) and every [`Controller`] were dropped.
    Abandoned,
}

/// Sends `event` to the consumer of a supervisor's events; meanwhile a
/// cancel interrupts it, and controls that arrive are put in `taken` for the
/// caller to handle, so a slow consumer never blocks a [`Controller`].
pub(crate) async fn send_steered(
    events: &mpsc::Sender<ExecEvent>,
    event: ExecEvent,
    cancel: &mut mpsc::Receiver<()>,
    controls: &mut mpsc::Receiver<Control>,
    controls_open: &mut bool,
    taken: &mut Vec<Control>,
) -> Result<(), Interrupt> {
    let send = events.send(event);
    tokio::pin!(send);
    loop {
        tokio::select! {
            biased;
            sent = &mut send => return sent.map_err(|_| Interrupt::Abandoned),
            c = cancel.recv() => {
                return Err(if c.is_some() { Interrupt::Cancelled } else { Interrupt::Abandoned });
            }
            c = controls.recv(), if *controls_open => match c {
                Some(c) => taken.push(c),
                None => *controls_open = false,
            },
        }
    }
}

/// Closes a finishing supervisor's cancel and control channels (later
/// controls answer [`ExecError::NotRunning`]) and returns what was still in
/// them: how many follow-ups (they will not run), and the other controls.
pub(crate) fn close_controls(
    cancel: &mut mpsc::Receiver<()>,
    controls: &mut mpsc::Receiver<Control>,
) -> (usize, Vec<Control>) {
    cancel.close();
    controls.close();
    let mut lost = 0;
    let mut others = Vec::new();
    while let Ok(c) = controls.try_recv() {
        match c {
            Control::FollowUp(_) => lost += 1,
            other => others.push(other),
        }
    }
    (lost, others)
}
