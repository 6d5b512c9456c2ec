//! The running agent's control socket: `agent.sock` in the data dir (mode
//! 0600, in the 0700 data dir), JSON lines. `tandem status`, `tandem tasks`,
//! `tandem scope`, `tandem revoke`, `tandem cancel` and `tandem rules remove` talk to a running
//! daemon through it,
//! so they see and change the daemon's live state instead of racing it on
//! disk. It also tells a second agent that one already runs on this data dir.
//!
//! One request line per connection; the answer is one line
//! (`{"ok":true,…}` or `{"ok":false,"error":…}`), except `follow`, which
//! answers `{"ok":true}` and then streams one line per task event until the
//! client hangs up (or falls [`FOLLOW_BUFFER`] events behind).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tracing::debug;

use crate::peers::Scope;

/// The socket's file name in the data dir.
pub const SOCKET_NAME: &str = "agent.sock";

/// Events in one `events` answer; ask again from the next offset for more.
pub const EVENTS_PAGE: usize = 1000;

/// Lines a follower may fall behind before it is dropped.
pub const FOLLOW_BUFFER: usize = 1024;

/// Longest request line.
const MAX_REQUEST: usize = 64 * 1024;

/// Why the control socket failed.
#[derive(Debug, Error)]
pub enum IpcError {
    /// Another agent already serves this data dir.
    #[error("an agent is already running on this data dir ({0})")]
    AlreadyRunning(PathBuf),
    /// No agent is running (nothing listens on the socket).
    #[error("no agent is running on this data dir")]
    NotRunning,
    /// Socket I/O failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The agent answered something that is not a JSON line.
    #[error("the agent's answer is not valid: {0}")]
    Protocol(String),
    /// The agent refused the request.
    #[error("{0}")]
    Refused(String),
}

/// A request to the running agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Connection, devices, tasks, keep-awake.
    Status,
    /// The most recent tasks.
    Tasks {
        /// How many.
        limit: usize,
    },
    /// One task's stored events from an offset (the answer's `task_id` is
    /// the task found).
    Events {
        /// The task: its id or a unique prefix of it.
        task_id: String,
        /// First offset.
        from_offset: u64,
    },
    /// Stream task events as they happen (one task, or all).
    Follow {
        /// The task (its id or a unique prefix of it), or all.
        #[serde(default)]
        task_id: Option<String>,
    },
    /// Change a device's scope.
    SetScope {
        /// Id, unique prefix or name.
        device: String,
        /// The new scope.
        scope: Scope,
    },
    /// Revoke a device here and at the relay; its tasks stop. Answered
    /// when the relay confirms or after a few seconds (`relay`: whether it
    /// did; `stopped`: how many tasks stopped).
    Revoke {
        /// Id, unique prefix or name.
        device: String,
    },
    /// Cancel a queued or running task from the desktop (`was`: `running`
    /// or `queued`).
    Cancel {
        /// The task: its id or a unique prefix of it.
        task: String,
    },
    /// Remove the approval rule a phone added numbered `number` (from 1, as
    /// `tandem rules` lists them); answered with the rule removed.
    RemoveRule {
        /// Its number.
        number: usize,
        /// The pattern the asker listed under that number: refused if the
        /// rule there is another one now (the list changed meanwhile).
        allow: String,
    },
}

/// A request received by the daemon, with where to answer.
#[derive(Debug)]
pub struct Call {
    /// What is asked.
    pub request: Request,
    /// The answer line(s); for `follow`, keep it and send each event.
    pub reply: mpsc::Sender<Value>,
}

/// The socket path for a data dir.
#[must_use]
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// The lock file that makes one agent per data dir.
pub const LOCK_NAME: &str = "agent.lock";

/// Removes the socket file when the daemon stops; holds the data dir's lock.
#[derive(Debug)]
pub struct Listening {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
    _lock: std::fs::File,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listen on the data dir's socket; calls arrive on the returned receiver.
///
/// # Errors
/// [`IpcError::AlreadyRunning`] if another agent answers on it;
/// [`IpcError::Io`] if it cannot be bound.
pub async fn serve(data_dir: &Path) -> Result<(Listening, mpsc::Receiver<Call>), IpcError> {
    let path = socket_path(data_dir);
    let io = |source| IpcError::Io { path: path.clone(), source };
    // One agent per data dir: an exclusive lock held while it runs (the OS
    // drops it when the process dies, so a crash leaves nothing stale).
    let lock_path = data_dir.join(LOCK_NAME);
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let lock = options
        .open(&lock_path)
        .map_err(|source| IpcError::Io { path: lock_path.clone(), source })?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Err(IpcError::AlreadyRunning(path)),
        Err(std::fs::TryLockError::Error(source)) => {
            return Err(IpcError::Io { path: lock_path, source });
        }
    }
    // A socket left by an agent that died: nobody listens on it.
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(&path).map_err(io)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(session(stream, tx.clone()));
                }
                // Out of file descriptors, say: do not spin.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    });
    Ok((Listening { path, task, _lock: lock }, rx))
}

async fn session(stream: UnixStream, calls: mpsc::Sender<Call>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_REQUEST as u64)).lines();
    let answer = |v: Value| {
        let mut line = v.to_string();
        line.push('\n');
        line
    };
    let request = match lines.next_line().await {
        Ok(Some(line)) => serde_json::from_str::<Request>(&line),
        _ => return,
    };
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            let err = json!({"ok": false, "error": format!("bad request: {e}")});
            let _ = write.write_all(answer(err).as_bytes()).await;
            return;
        }
    };
    let (reply, mut replies) = mpsc::channel(FOLLOW_BUFFER);
    if calls.send(Call { request, reply }).await.is_err() {
        return;
    }
    let mut rest = lines.into_inner();
    let mut sink = [0u8; 64];
    loop {
        tokio::select! {
            v = replies.recv() => match v {
                Some(v) => {
                    if write.write_all(answer(v).as_bytes()).await.is_err() {
                        debug!("control client left");
                        return;
                    }
                }
                None => return,
            },
            // The client hung up (or sent more than one request): done, so
            // a follower's channel closes and the daemon forgets it.
            r = rest.read(&mut sink) => if matches!(r, Ok(0) | Err(_)) { return },
        }
    }
}

/// Connect to the running agent, or [`IpcError::NotRunning`].
async fn connect(data_dir: &Path) -> Result<UnixStream, IpcError> {
    let path = socket_path(data_dir);
    match UnixStream::connect(&path).await {
        Ok(s) => Ok(s),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Err(IpcError::NotRunning)
        }
        Err(source) => Err(IpcError::Io { path, source }),
    }
}

/// Lines from the agent for one request.
#[derive(Debug)]
pub struct Answers {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    _write: tokio::net::unix::OwnedWriteHalf,
}

impl Answers {
    /// The next line; `None` when the agent closed the stream.
    ///
    /// # Errors
    /// [`IpcError::Protocol`] for a line that is not JSON; [`IpcError::Io`].
    pub async fn next(&mut self) -> Result<Option<Value>, IpcError> {
        match self.lines.next_line().await {
            Ok(Some(line)) => {
                serde_json::from_str(&line).map(Some).map_err(|e| IpcError::Protocol(e.to_string()))
            }
            Ok(None) => Ok(None),
            Err(source) => Err(IpcError::Io { path: PathBuf::from(SOCKET_NAME), source }),
        }
    }
}

/// Send `request` to the running agent and return its answer stream.
///
/// # Errors
/// [`IpcError::NotRunning`] if no agent runs on `data_dir`; [`IpcError::Io`].
pub async fn open(data_dir: &Path, request: &Request) -> Result<Answers, IpcError> {
    let stream = connect(data_dir).await?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(request).map_err(|e| IpcError::Protocol(e.to_string()))?;
    line.push('\n');
    write
        .write_all(line.as_bytes())
        .await
        .map_err(|source| IpcError::Io { path: socket_path(data_dir), source })?;
    Ok(Answers { lines: BufReader::new(read).lines(), _write: write })
}

/// Send `request` and return its single answer, `ok: false` as
/// [`IpcError::Refused`].
///
/// # Errors
/// As [`open`]; [`IpcError::Refused`] with the agent's message.
pub async fn call(data_dir: &Path, request: &Request) -> Result<Value, IpcError> {
    let mut answers = open(data_dir, request).await?;
    let v = answers
        .next()
        .await?
        .ok_or_else(|| IpcError::Protocol("the agent closed without answering".into()))?;
    check(v)
}

/// `ok: false` → [`IpcError::Refused`].
///
/// # Errors
/// [`IpcError::Refused`] with the agent's message.
pub fn check(v: Value) -> Result<Value, IpcError> {
    if v.get("ok").and_then(Value::as_bool) == Some(true) {
        Ok(v)
    } else {
        let msg = v.get("error").and_then(Value::as_str).unwrap_or("refused").to_owned();
        Err(IpcError::Refused(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_agent_is_refused_and_a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        // A stale socket file: bound, then its listener dropped.
        drop(std::os::unix::net::UnixListener::bind(socket_path(dir.path())).unwrap());
        let (guard, mut calls) = serve(dir.path()).await.unwrap();
        assert!(matches!(serve(dir.path()).await, Err(IpcError::AlreadyRunning(_))));
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(socket_path(dir.path())).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode, 0o600);

        let server = tokio::spawn(async move {
            let c = calls.recv().await.unwrap();
            assert_eq!(c.request, Request::Tasks { limit: 3 });
            c.reply.send(json!({"ok": true, "tasks": []})).await.unwrap();
            let c = calls.recv().await.unwrap();
            c.reply.send(json!({"ok": false, "error": "no such device"})).await.unwrap();
        });
        let v = call(dir.path(), &Request::Tasks { limit: 3 }).await.unwrap();
        assert_eq!(v["tasks"], json!([]));
        let e = call(dir.path(), &Request::Revoke { device: "x".into() }).await.unwrap_err();
        assert_eq!(e.to_string(), "no such device");
        server.await.unwrap();
        drop(guard);
        assert!(!socket_path(dir.path()).exists());
        assert!(matches!(call(dir.path(), &Request::Status).await, Err(IpcError::NotRunning)));
    }

    #[tokio::test]
    async fn a_malformed_request_gets_an_error_line() {
        let dir = tempfile::tempdir().unwrap();
        let (_guard, _calls) = serve(dir.path()).await.unwrap();
        let mut s = UnixStream::connect(socket_path(dir.path())).await.unwrap();
        s.write_all(b"{\"op\":\"format_disk\"}\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["ok"], false);
        assert!(v["error"].as_str().unwrap().starts_with("bad request"));
    }
}
