//! The hand-off from the terminal: a phone asks which sessions an executor
//! can continue in a project (`sessions_request`), and submits a task that
//! continues one (`task_submit.resume`). Listing may take a while (an ACP
//! agent is started to answer `session/list`), so it runs off the daemon's
//! loop and its answer comes back later ([`SessionsAnswer::Later`]). A
//! session a phone may continue is one the desktop listed to a phone for
//! that executor and project since it started, or, for `claude`, one whose
//! transcript is in Claude Code's store: an id is never passed to an agent
//! unchecked.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tandem_proto::DeviceId;
use tandem_proto::message::{MAX_SESSIONS, Message, SessionSummary};
use tracing::{info, warn};

use super::{Outgoing, TaskManager, to};
use crate::executor::{ExecError, ExecutorConfig, ExecutorKind};
use crate::history::HistoryError;
use crate::peers::Scope;

/// An answer that comes once the executor has listed its sessions.
pub type Later = Pin<Box<dyn Future<Output = Outgoing> + Send>>;

/// What a `sessions_request` gets.
pub enum SessionsAnswer {
    /// A refusal, at once.
    Now(Outgoing),
    /// The list (or a refusal), when the executor has answered.
    Later(Later),
}

/// The sessions listed to phones since the agent started, per executor and
/// project.
pub(super) type Listed = Arc<Mutex<HashMap<(String, Option<String>), HashSet<String>>>>;

/// Recent tasks looked at to name the task that ran a session.
const TASKS_LOOKED_AT: usize = 500;

fn refused(code: &str, message: &str) -> Message {
    Message::Refused { task_id: None, code: code.into(), message: message.into() }
}

impl TaskManager {
    /// The executor and project a request names (the defaults when it names
    /// none), with the executor placed in the project; a refusal code and
    /// message for a name the desktop does not offer.
    pub(super) fn resolve(
        &self,
        executor: Option<&str>,
        project: Option<&str>,
    ) -> Result<(ExecutorConfig, Option<String>), (&'static str, &'static str)> {
        let config = match executor {
            Some(name) => self.executors.iter().find(|e| e.name == name),
            None => self.executors.first(),
        };
        let Some(config) = config else {
            return Err(if executor.is_some() {
                ("unknown_executor", "no executor with that name is configured")
            } else {
                ("no_executor", "no executor is configured on this computer")
            });
        };
        let project = match project {
            Some(name) => match crate::projects::find(&self.options.projects, name) {
                Some(p) => Some(p),
                None => {
                    return Err((
                        "unknown_project",
                        "no project with that name is configured on this computer",
                    ));
                }
            },
            None => self.options.projects.first(),
        };
        Ok((crate::projects::in_project(config, project), project.map(|p| p.name.clone())))
    }

    /// A phone asked for the sessions it may continue.
    ///
    /// # Errors
    /// [`HistoryError`] if the recent tasks cannot be read.
    pub fn sessions(
        &self,
        from: DeviceId,
        scope: Scope,
        executor: Option<&str>,
        project: Option<&str>,
    ) -> Result<SessionsAnswer, HistoryError> {
        if !scope.allows_submit() {
            return Ok(SessionsAnswer::Now(to(
                from,
                refused("scope", "this device may only view"),
            )));
        }
        let (config, project) = match self.resolve(executor, project) {
            Ok(found) => found,
            Err((code, message)) => {
                return Ok(SessionsAnswer::Now(to(from, refused(code, message))));
            }
        };
        // The task that ran each session (its resume token), newest first.
        let mut tasks: HashMap<String, String> = HashMap::new();
        for record in self.history.recent(TASKS_LOOKED_AT)? {
            if let Some(token) = record.resume_token {
                tasks.entry(token).or_insert(record.task_id);
            }
        }
        let listed = Arc::clone(&self.listed);
        Ok(SessionsAnswer::Later(Box::pin(async move {
            let name = config.name.clone();
            let found = crate::executor::list_sessions(&config).await;
            let sessions = match found {
                Ok(s) => s,
                Err(ExecError::Unsupported(why)) => {
                    return to(from, refused("not_supported", why));
                }
                Err(e) => {
                    warn!(executor = %name, error = %e, "listing sessions failed");
                    let why =
                        "the desktop could not list this executor's sessions (its log says why)";
                    return to(from, refused("not_supported", why));
                }
            };
            let sessions: Vec<SessionSummary> = sessions
                .into_iter()
                .take(MAX_SESSIONS)
                .map(|s| SessionSummary {
                    task_id: tasks.get(&s.id).cloned(),
                    id: s.id,
                    title: s.title,
                    updated_ms: s.updated_ms,
                })
                .collect();
            if let Ok(mut l) = listed.lock() {
                l.entry((name.clone(), project.clone()))
                    .or_default()
                    .extend(sessions.iter().map(|s| s.id.clone()));
            }
            info!(peer = %from, executor = %name, count = sessions.len(), "sessions listed");
            to(from, Message::Sessions { executor: name, workspace: project, sessions })
        })))
    }

    /// Whether a task of `config` (placed in `project`) may continue the
    /// session `id`: `None` if so, else the refusal's code and message.
    pub(super) fn check_resume(
        &self,
        config: &ExecutorConfig,
        project: Option<&str>,
        id: &str,
    ) -> Option<(&'static str, &'static str)> {
        let unknown = ("unknown_session", "no session with that id can be continued here");
        match &config.kind {
            ExecutorKind::Command { .. } | ExecutorKind::Jsonl { .. } => {
                return Some(("not_supported", "this executor keeps no sessions to continue"));
            }
            ExecutorKind::Claude { .. } | ExecutorKind::Acp { .. } => {}
        }
        if id.is_empty() || id.len() > crate::executor::MAX_ID_LEN {
            return Some(unknown);
        }
        let key = (config.name.clone(), project.map(str::to_owned));
        let listed = self.listed.lock().is_ok_and(|l| l.get(&key).is_some_and(|s| s.contains(id)));
        let on_disk = matches!(config.kind, ExecutorKind::Claude { .. })
            && crate::claude::sessions::has(config, id);
        (!listed && !on_disk).then_some(unknown)
    }
}
