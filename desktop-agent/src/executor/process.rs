//! The executor's process: spawning it in its own process group, writing the
//! task to its stdin, reading its output line by line (capped), and signalling
//! its group with the system's `kill`.

use std::ffi::OsStr;
use std::io;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{OwnedMutexGuard, mpsc};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, warn};

use super::{EVENT_BUFFER, ExecError, ExecutorConfig, KILL_GRACE, MAX_LINE_BYTES, write_line};

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
        Self::spawn_capped(config, program, args, extra_env, piped_stdin, MAX_LINE_BYTES)
    }

    /// [`Proc::spawn`], keeping stdout lines up to `max_stdout_line` bytes
    /// (stderr lines up to [`MAX_LINE_BYTES`]).
    pub(crate) fn spawn_capped<A: AsRef<OsStr>>(
        config: &ExecutorConfig,
        program: &str,
        args: &[A],
        extra_env: &[(String, String)],
        piped_stdin: bool,
        max_stdout_line: usize,
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
            let stdout = read_lines(out, line_tx.clone(), Stream::Stdout, max_stdout_line);
            readers.push(tokio::spawn(stdout));
        }
        if let Some(err) = child.stderr.take() {
            let stderr = read_lines(err, line_tx, Stream::Stderr, MAX_LINE_BYTES);
            readers.push(tokio::spawn(stderr));
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

pub(super) async fn write_task(mut stdin: OwnedMutexGuard<Option<ChildStdin>>, line: String) {
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

/// Forwards `pipe`'s lines (lossy UTF-8, without the line ending, at most
/// `max` bytes) until EOF.
async fn read_lines<R: AsyncRead + Unpin>(
    pipe: R,
    tx: mpsc::Sender<(Stream, String)>,
    stream: Stream,
    max: usize,
) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        match read_line_capped(&mut reader, &mut buf, max).await {
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

/// Reads one line into `buf` (without the `\n`), keeping at most `max`
/// bytes ([`MAX_LINE_BYTES`] unless the executor says otherwise) and
/// discarding the rest of a longer line, so a runaway executor cannot
/// exhaust memory. `Ok(false)` at EOF.
async fn read_line_capped<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
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
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
        reader.consume(used);
        if newline.is_some() {
            return Ok(true);
        }
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
