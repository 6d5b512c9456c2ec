//! An ACP agent's process and the protocol thread, joined: the project
//! directory it runs in, the in-memory pipes between its stdio and the
//! protocol library, and how it is stopped (stdin closed, a grace to exit,
//! its process group terminated).

use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tracing::debug;

use super::connection::{self, FromConn, ToConn};
use super::{PIPE_BYTES, STOP_GRACE, fs};
use crate::executor::{ExecError, ExecutorConfig, Proc, Stream, cap_text};

/// The project directory an ACP task of `config` runs in: its `workdir`,
/// else the agent's own working directory.
pub(super) fn project_of(config: &ExecutorConfig) -> Result<fs::Project, ExecError> {
    let dir = match &config.workdir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir().map_err(ExecError::Setup)?,
    };
    fs::Project::new(&dir).map_err(|e| ExecError::Workdir {
        path: dir.clone(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// An agent's stdio joined to the protocol thread's pipes.
pub(super) struct Plumbing {
    /// Where the agent's stdout lines go, to the library.
    pub(super) wire: DuplexStream,
    /// Copies the library's bytes to the agent's stdin (which it owns).
    pub(super) stdin: Option<JoinHandle<()>>,
    pub(super) from_conn: mpsc::UnboundedReceiver<FromConn>,
    pub(super) to_conn: mpsc::UnboundedSender<ToConn>,
    /// The protocol thread's ends.
    pub(super) ends: connection::Ends,
}

/// Agent stdout → supervisor (tap) → `wire` → library; library →
/// `to_agent` → agent stdin.
pub(super) fn plumb(proc: &mut Proc) -> Plumbing {
    let (wire, from_agent) = tokio::io::duplex(PIPE_BYTES);
    let (to_agent, mut outgoing) = tokio::io::duplex(PIPE_BYTES);
    let stdin = proc.child.stdin.take().map(|mut stdin| {
        tokio::spawn(async move {
            if let Err(e) = tokio::io::copy(&mut outgoing, &mut stdin).await {
                debug!(error = %e, "writing to the ACP agent's stdin ended");
            }
        })
    });
    let (from_tx, from_conn) = mpsc::unbounded_channel();
    let (to_conn, to_rx) = mpsc::unbounded_channel();
    let ends = connection::Ends { from_agent, to_agent, tx: from_tx, rx: to_rx };
    Plumbing { wire, stdin, from_conn, to_conn, ends }
}

/// Stops an agent (`super` module docs): its stdin closed (`stdin`, its copier,
/// aborted), [`STOP_GRACE`] to exit on its own, then its process group
/// terminated. Its output meanwhile is logged and dropped; the last line of
/// its stderr goes to `last_stderr`.
pub(super) async fn stop_agent(
    proc: &mut Proc,
    stdin: Option<JoinHandle<()>>,
    last_stderr: &mut Option<String>,
) {
    if let Some(stdin) = stdin {
        stdin.abort();
        let _ = stdin.await;
    }
    let deadline = Instant::now() + STOP_GRACE;
    let mut lines_open = true;
    loop {
        tokio::select! {
            status = proc.child.wait() => {
                debug!(?status, "the ACP agent exited after its stdin closed");
                break;
            }
            line = proc.lines.recv(), if lines_open => match line {
                Some((Stream::Stderr, line)) if !line.trim().is_empty() => {
                    debug!(line = %line, "acp agent stderr");
                    *last_stderr = Some(cap_text(line, 1024));
                }
                Some(_) => {}
                None => lines_open = false,
            },
            () = sleep_until(deadline) => {
                debug!("the ACP agent did not exit within the grace; terminating it");
                break;
            }
        }
    }
    proc.terminate().await;
}
