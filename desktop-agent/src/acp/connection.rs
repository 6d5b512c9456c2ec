//! The ACP connection itself, on a thread of its own: the
//! `agent-client-protocol` crate's [`ClientSideConnection`] runs its
//! futures with `spawn_local` (they are not `Send`), so each task gets a
//! thread with a current-thread runtime and a [`LocalSet`]. The supervisor
//! ([`super::Supervisor`]) talks to it over channels: [`ToConn`] in,
//! [`FromConn`] out. Its bytes go through in-memory pipes that the
//! supervisor connects to the agent's stdio, so no I/O object crosses
//! runtimes.
//!
//! Here: `initialize` (file system read and write advertised, no
//! terminal), then either `session/list` for the project directory
//! ([`spawn_list`], when the agent has the capability) or
//! `session/new` in the project directory (or `session/load` of
//! an earlier session, when the agent can), one `session/prompt`
//! per [`ToConn::Prompt`], `session/cancel` on [`ToConn::Cancel`]; the
//! agent's `session/request_permission` goes to the supervisor and waits
//! for its answer (none means `cancelled`); `fs/read_text_file` and
//! `fs/write_text_file` are served inside the project ([`super::fs`]), a
//! write only once the supervisor says yes ([`FromConn::Write`]);
//! terminal methods are not served (the crate answers "method not found").
//! `session/update` notifications are read by the supervisor from the
//! wire, in order (the crate hands each notification to a task of its own,
//! so their order relative to the prompt's response is not kept here).

use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use agent_client_protocol::{
    self as acp, Agent as _, ClientCapabilities, ClientSideConnection, FileSystemCapabilities,
    Implementation, InitializeRequest, InitializeResponse, ListSessionsRequest, LoadSessionRequest,
    NewSessionRequest, PromptRequest, ProtocolVersion, ReadTextFileRequest, ReadTextFileResponse,
    RequestPermissionOutcome, RequestPermissionRequest, RequestPermissionResponse, SessionId,
    SessionInfo, SessionNotification, StopReason, WriteTextFileRequest, WriteTextFileResponse,
};
use tokio::io::DuplexStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::LocalSet;
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};
use tracing::{debug, warn};

use super::fs::{FsError, Project};

/// JSON-RPC "invalid params".
const INVALID_PARAMS: i32 = -32602;

/// ACP "resource not found".
const RESOURCE_NOT_FOUND: i32 = -32002;

/// How much of an unasked write the phone is shown.
const PREVIEW_BYTES: usize = 4 * 1024;

/// Pages of `session/list` read at most (the agent pages them; the
/// newest come first).
const MAX_LIST_PAGES: usize = 4;

/// Sessions listed at most (the protocol's listing keeps the newest 50).
pub(crate) const MAX_LISTED: usize = 50;

/// What the supervisor asks of the connection.
#[derive(Debug)]
pub(crate) enum ToConn {
    /// Send `session/prompt` with this text.
    Prompt(String),
    /// Send `session/cancel`.
    Cancel,
}

/// What the connection tells the supervisor.
#[derive(Debug)]
pub(crate) enum FromConn {
    /// `initialize` and `session/new` (or `session/load`) succeeded: the
    /// session's id.
    Ready(String),
    /// They did not (the text says what failed).
    Failed(String),
    /// A `session/prompt` ended: its stop reason, or its error.
    PromptDone(Result<StopReason, acp::Error>),
    /// The agent asks for permission; answer on `reply`.
    Permission {
        /// The request, as the agent sent it.
        request: Box<RequestPermissionRequest>,
        /// Where the outcome goes; dropped means `cancelled`.
        reply: oneshot::Sender<RequestPermissionOutcome>,
    },
    /// The agent writes `path` (inside the project, resolved): allowed
    /// (`true`) if a permission the phone allowed in this turn named it,
    /// else the phone is asked; dropped means no.
    Write {
        /// Where the write goes.
        path: PathBuf,
        /// The start of what it writes, for the phone.
        preview: String,
        /// The answer.
        reply: oneshot::Sender<bool>,
    },
    /// A file request was refused (for the phone to see).
    Refused(String),
    /// `session/list` answered ([`spawn_list`]): the sessions, or `None`
    /// when the agent has no `session/list`.
    Listed(Option<Vec<SessionInfo>>),
}

/// The connection's ends: the agent's stdout in, its stdin out, and the
/// supervisor's channels.
pub(crate) struct Ends {
    pub(crate) from_agent: DuplexStream,
    pub(crate) to_agent: DuplexStream,
    pub(crate) tx: mpsc::UnboundedSender<FromConn>,
    pub(crate) rx: mpsc::UnboundedReceiver<ToConn>,
}

/// Which session to open.
pub(crate) struct Session {
    /// A new one (`None`), or this earlier one loaded (`session/load`).
    pub(crate) resume: Option<String>,
    /// The request's `_meta`.
    pub(crate) meta: acp::Meta,
}

/// Starts the connection's thread: `session` opened in `project`.
///
/// # Errors
/// The thread could not be started.
pub(crate) fn spawn(project: Project, session: Session, ends: Ends) -> std::io::Result<()> {
    let tx = ends.tx.clone();
    on_thread(tx, move || drive(project, session, ends))
}

/// Starts a connection's thread that lists the agent's sessions in
/// `project` and answers [`FromConn::Listed`] (or [`FromConn::Failed`]).
///
/// # Errors
/// The thread could not be started.
pub(crate) fn spawn_list(project: Project, ends: Ends) -> std::io::Result<()> {
    let tx = ends.tx.clone();
    on_thread(tx, move || list(project, ends))
}

/// Runs `work` on a thread of its own, in a current-thread runtime's
/// [`LocalSet`]; a runtime that cannot start is a [`FromConn::Failed`].
fn on_thread<F, Fut>(tx: mpsc::UnboundedSender<FromConn>, work: F) -> std::io::Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    std::thread::Builder::new().name("tandem-acp".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                let why = format!("could not start the ACP client: {e}");
                let _ = tx.send(FromConn::Failed(why));
                return;
            }
        };
        LocalSet::new().block_on(&runtime, work());
    })?;
    Ok(())
}

/// The connection, set up and initialized.
struct Connected {
    conn: Rc<ClientSideConnection>,
    init: InitializeResponse,
}

/// Sets the connection up and sends `initialize`; a failure is told to the
/// supervisor ([`FromConn::Failed`]) and is `None`.
async fn connect(
    project: Project,
    from_agent: DuplexStream,
    to_agent: DuplexStream,
    tx: &mpsc::UnboundedSender<FromConn>,
) -> Option<Connected> {
    let client = TandemClient { project: Arc::new(project), tx: tx.clone() };
    let (conn, io) =
        ClientSideConnection::new(client, to_agent.compat_write(), from_agent.compat(), |f| {
            tokio::task::spawn_local(f);
        });
    tokio::task::spawn_local(async move {
        if let Err(e) = io.await {
            debug!(error = %e, "the ACP connection's I/O ended with an error");
        }
    });
    let conn = Rc::new(conn);

    let capabilities = ClientCapabilities::new()
        .fs(FileSystemCapabilities::new().read_text_file(true).write_text_file(true))
        .terminal(false);
    let init = InitializeRequest::new(ProtocolVersion::V1)
        .client_capabilities(capabilities)
        .client_info(Implementation::new("tandem", env!("CARGO_PKG_VERSION")));
    match conn.initialize(init).await {
        Ok(init) if init.protocol_version != ProtocolVersion::V1 => {
            let why = format!(
                "the agent speaks version {} of the protocol; this desktop speaks version 1",
                init.protocol_version
            );
            let _ = tx.send(FromConn::Failed(why));
            None
        }
        Ok(init) => Some(Connected { conn, init }),
        Err(e) => {
            let _ = tx.send(FromConn::Failed(format!("the agent did not initialize: {e}")));
            None
        }
    }
}

/// `session/list` for the project directory, page after page up to
/// [`MAX_LISTED`] sessions.
async fn list(project: Project, ends: Ends) {
    let Ends { from_agent, to_agent, tx, rx: _rx } = ends;
    let root = project.root().to_owned();
    let Some(Connected { conn, init }) = connect(project, from_agent, to_agent, &tx).await else {
        return;
    };
    if init.agent_capabilities.session_capabilities.list.is_none() {
        let _ = tx.send(FromConn::Listed(None));
        return;
    }
    let mut sessions = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_LIST_PAGES {
        let request = ListSessionsRequest::new().cwd(root.clone()).cursor(cursor.take());
        match conn.list_sessions(request).await {
            Ok(page) => {
                sessions.extend(page.sessions);
                cursor = page.next_cursor;
            }
            Err(e) => {
                let why = format!("the agent did not list its sessions: {e}");
                let _ = tx.send(FromConn::Failed(why));
                return;
            }
        }
        if cursor.is_none() || sessions.len() >= MAX_LISTED {
            break;
        }
    }
    let _ = tx.send(FromConn::Listed(Some(sessions)));
}

/// The connection's life: set up, then prompts and cancels until the
/// supervisor lets go of its sender.
async fn drive(project: Project, session: Session, ends: Ends) {
    let Session { resume, meta } = session;
    let Ends { from_agent, to_agent, tx, mut rx } = ends;
    let root = project.root().to_owned();
    let Some(Connected { conn, init }) = connect(project, from_agent, to_agent, &tx).await else {
        return;
    };
    let can_load = init.agent_capabilities.load_session;
    let session = match resume {
        None => {
            let request = NewSessionRequest::new(root).meta(meta);
            conn.new_session(request).await.map(|s| s.session_id)
        }
        Some(id) if can_load => {
            let id = SessionId::from(id);
            let request = LoadSessionRequest::new(id.clone(), root).meta(meta);
            conn.load_session(request).await.map(|_| id)
        }
        Some(_) => {
            let why = "the agent cannot load an earlier session (no `loadSession` capability), \
                       so a finished task cannot be continued";
            let _ = tx.send(FromConn::Failed(why.to_owned()));
            return;
        }
    };
    let session = match session {
        Ok(session) => session,
        Err(e) => {
            let _ = tx.send(FromConn::Failed(format!("the agent did not open a session: {e}")));
            return;
        }
    };
    let _ = tx.send(FromConn::Ready(session.0.to_string()));

    while let Some(command) = rx.recv().await {
        match command {
            ToConn::Prompt(text) => {
                let (conn, tx, session) = (Rc::clone(&conn), tx.clone(), session.clone());
                tokio::task::spawn_local(async move {
                    let request = PromptRequest::new(session, vec![text.into()]);
                    let done = conn.prompt(request).await.map(|r| r.stop_reason);
                    let _ = tx.send(FromConn::PromptDone(done));
                });
            }
            ToConn::Cancel => {
                if let Err(e) = conn.cancel(acp::CancelNotification::new(session.clone())).await {
                    debug!(error = %e, "could not send session/cancel");
                }
            }
        }
    }
}

/// Tandem's side of the protocol: permissions go to the phone, files stay
/// in the project.
struct TandemClient {
    project: Arc<Project>,
    tx: mpsc::UnboundedSender<FromConn>,
}

impl TandemClient {
    /// The error for a file request that failed; one the project rule
    /// refused is also shown on the phone.
    fn refused(&self, what: &str, e: &FsError) -> acp::Error {
        if matches!(e, FsError::Outside { .. } | FsError::ParentDir(_) | FsError::NotAbsolute(_)) {
            warn!(error = %e, "refused an ACP agent's {what}");
            let _ = self.tx.send(FromConn::Refused(format!("refused the agent's {what}: {e}")));
        } else {
            debug!(error = %e, "an ACP agent's {what} failed");
        }
        match e {
            FsError::NotFound(_) => acp::Error::new(RESOURCE_NOT_FOUND, e.to_string()),
            _ => acp::Error::new(INVALID_PARAMS, e.to_string()),
        }
    }
}

#[async_trait::async_trait(?Send)]
impl acp::Client for TandemClient {
    async fn request_permission(
        &self,
        request: RequestPermissionRequest,
    ) -> acp::Result<RequestPermissionResponse> {
        let (reply, answer) = oneshot::channel();
        let outcome =
            if self.tx.send(FromConn::Permission { request: Box::new(request), reply }).is_ok() {
                answer.await.unwrap_or(RequestPermissionOutcome::Cancelled)
            } else {
                RequestPermissionOutcome::Cancelled
            };
        Ok(RequestPermissionResponse::new(outcome))
    }

    async fn session_notification(&self, _notification: SessionNotification) -> acp::Result<()> {
        // Read off the wire by the supervisor, in order (module docs).
        Ok(())
    }

    async fn read_text_file(
        &self,
        request: ReadTextFileRequest,
    ) -> acp::Result<ReadTextFileResponse> {
        let project = Arc::clone(&self.project);
        let path = request.path.clone();
        let read = tokio::task::spawn_blocking(move || {
            project.read(&request.path, request.line, request.limit)
        })
        .await
        .map_err(acp::Error::into_internal_error)?;
        match read {
            Ok(text) => Ok(ReadTextFileResponse::new(text)),
            Err(e) => Err(self.refused(&format!("read of `{}`", path.display()), &e)),
        }
    }

    async fn write_text_file(
        &self,
        request: WriteTextFileRequest,
    ) -> acp::Result<WriteTextFileResponse> {
        let path = request.path.clone();
        let what = format!("write to `{}`", path.display());
        let target = match self.project.writable(&path) {
            Ok(target) => target,
            Err(e) => return Err(self.refused(&what, &e)),
        };
        let (reply, answer) = oneshot::channel();
        let preview = crate::executor::cap_text(request.content.clone(), PREVIEW_BYTES);
        let allowed = self.tx.send(FromConn::Write { path: target, preview, reply }).is_ok()
            && answer.await.unwrap_or(false);
        if !allowed {
            let why = format!("the phone did not allow the {what}");
            return Err(acp::Error::new(INVALID_PARAMS, why));
        }
        let project = Arc::clone(&self.project);
        let written =
            tokio::task::spawn_blocking(move || project.write(&request.path, &request.content))
                .await
                .map_err(acp::Error::into_internal_error)?;
        match written {
            Ok(()) => Ok(WriteTextFileResponse::new()),
            Err(e) => Err(self.refused(&what, &e)),
        }
    }
}
