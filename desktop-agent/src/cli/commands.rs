//! The short subcommands that talk to a running agent or read its files:
//! `tandem service`, `status`, `tasks` and `cancel`.

use super::{
    args::ServiceAction,
    local::{now_unix, open_peers, record},
};
use anyhow::bail;
use tandem_agent::audit::AuditEvent;
use tandem_agent::history::{History, Lookup, StoredState};
use tandem_agent::report::field;
use tandem_agent::service;
use tandem_agent::{ipc, report, text};

/// `tandem service install|uninstall`: do it, then say what happened and
/// what is left for the user.
pub(crate) fn service(
    dir: &std::path::Path,
    config: Option<&std::path::Path>,
    action: &ServiceAction,
) -> anyhow::Result<()> {
    let outcome = match action {
        ServiceAction::Install { no_start } => {
            let spec = service::ServiceSpec::for_current_exe(dir, config)?;
            service::install(&spec, !no_start)?
        }
        ServiceAction::Uninstall => service::uninstall()?,
    };
    match (action, &outcome.path) {
        (ServiceAction::Install { .. }, Some(p)) => println!("Wrote {}.", p.display()),
        (ServiceAction::Uninstall, Some(p)) => println!("Removed {}.", p.display()),
        (_, None) => println!("The tandem service is not installed; nothing to do."),
    }
    for cmd in &outcome.ran {
        println!("Ran `{cmd}`.");
    }
    for warning in &outcome.warnings {
        eprintln!("warning: {warning}");
    }
    if !outcome.manual.is_empty() {
        println!("To finish, run:");
        for cmd in &outcome.manual {
            println!("  {cmd}");
        }
    } else if matches!(action, ServiceAction::Install { .. }) {
        println!("The agent runs in the background now and starts at login.");
    }
    Ok(())
}

/// `tandem status`.
pub(crate) async fn status(dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    match ipc::call(dir, &ipc::Request::Status).await {
        Ok(v) if json => println!("{v}"),
        Ok(v) => print!("{}", report::status_text(&v, now_unix().saturating_mul(1000))),
        Err(ipc::IpcError::NotRunning) => {
            if json {
                println!("{}", serde_json::json!({"ok": false, "running": false}));
            } else {
                let peers = open_peers(dir)?.len();
                println!(
                    "The agent is not running on {} ({peers} paired device(s)). Start it with `tandem up` or `tandem run`.",
                    dir.display()
                );
            }
            std::process::exit(3);
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// `tandem tasks [TASK] [--follow]`.
pub(crate) async fn tasks(
    dir: &std::path::Path,
    task: Option<&str>,
    follow: bool,
    limit: usize,
    settings: Option<&tandem_agent::settings::Settings>,
) -> anyhow::Result<()> {
    let now_ms = now_unix().saturating_mul(1000);
    // Subscribe first, so nothing falls between the replay and the live stream.
    let mut live = if follow {
        let req = ipc::Request::Follow { task_id: task.map(str::to_owned) };
        let mut answers = match ipc::open(dir, &req).await {
            Err(ipc::IpcError::NotRunning) => {
                bail!("--follow needs a running agent (`tandem up` or `tandem run`)")
            }
            r => r?,
        };
        if let Some(first) = answers.next().await? {
            ipc::check(first)?;
        }
        Some(answers)
    } else {
        None
    };
    let mut shown: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    match task {
        None => {
            let records = match ipc::call(dir, &ipc::Request::Tasks { limit }).await {
                Ok(v) => serde_json::from_value(field(&v, "tasks").clone())?,
                Err(ipc::IpcError::NotRunning) => History::open(dir)?.recent(limit)?,
                Err(e) => return Err(e.into()),
            };
            print!("{}", report::task_lines(&records, now_ms));
        }
        Some(query) => {
            let mut events: Vec<tandem_proto::message::Message> = Vec::new();
            // An id or a unique prefix of one: the agent answers with the id.
            let mut id = query.to_owned();
            // The running agent answers in pages: ask until a short one.
            loop {
                let from_offset = events.len() as u64;
                let req = ipc::Request::Events { task_id: id.clone(), from_offset };
                let page: Vec<tandem_proto::message::Message> = match ipc::call(dir, &req).await {
                    Ok(v) => {
                        if let Some(found) = field(&v, "task_id").as_str() {
                            found.clone_into(&mut id);
                        }
                        serde_json::from_value(field(&v, "events").clone())?
                    }
                    Err(ipc::IpcError::NotRunning) if from_offset == 0 => {
                        let history = History::open(dir)?;
                        if let Lookup::Found(r) = history.find(query)? {
                            id = r.task_id;
                        }
                        history.events(&id, 0, usize::MAX)?
                    }
                    Err(e) => return Err(e.into()),
                };
                let full = page.len() >= ipc::EVENTS_PAGE;
                events.extend(page);
                if !full {
                    break;
                }
            }
            if events.is_empty() {
                println!("No events for task {}.", text::one_line(&id));
            }
            for m in &events {
                print_event(m, &mut shown);
            }
            if let Some(line) = terminal_hand_off(dir, &id, settings).await {
                println!("{line}");
            }
        }
    }
    if let Some(answers) = &mut live {
        while let Some(v) = answers.next().await? {
            let m: tandem_proto::message::Message =
                serde_json::from_value(field(&v, "event").clone())?;
            print_event(&m, &mut shown);
        }
        bail!("the agent stopped (or this follower fell behind)");
    }
    Ok(())
}

/// For a task a `claude` executor ran, how to continue its Claude Code
/// session at the terminal: `cd DIR && claude --resume SESSION`. For one an
/// `acp` executor ran, its ACP session id and how to continue it (from a
/// phone; and, for Zed's Claude Code adapter, whose sessions are Claude
/// Code's, at the terminal as for `claude`).
async fn terminal_hand_off(
    dir: &std::path::Path,
    id: &str,
    settings: Option<&tandem_agent::settings::Settings>,
) -> Option<String> {
    use tandem_agent::executor::ExecutorKind;
    let settings = settings?;
    let records: Vec<tandem_agent::history::TaskRecord> =
        match ipc::call(dir, &ipc::Request::Tasks { limit: usize::MAX }).await {
            Ok(v) => serde_json::from_value(field(&v, "tasks").clone()).ok()?,
            Err(ipc::IpcError::NotRunning) => History::open(dir).ok()?.recent(usize::MAX).ok()?,
            Err(_) => return None,
        };
    let record = records.into_iter().find(|r| r.task_id == id)?;
    let token = record.resume_token.as_deref()?;
    let executor = settings.executors.iter().find(|e| e.name == record.executor)?;
    let workdir = record
        .project
        .as_deref()
        .and_then(|p| tandem_agent::projects::find(&settings.projects, p))
        .map(|p| p.path.clone())
        .or_else(|| executor.workdir.clone());
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let cd = workdir.map(|w| format!("cd {} && ", quote(&w.display().to_string())));
    let claude_line = |program: &str| {
        format!(
            "Continue this Claude Code session at the terminal: {}{} --resume {}",
            cd.clone().unwrap_or_default(),
            quote(program),
            quote(token)
        )
    };
    match &executor.kind {
        ExecutorKind::Claude { program, .. } => Some(claude_line(program)),
        ExecutorKind::Acp { program, args, .. } => {
            let mut lines = vec![
                format!("ACP session: {}", text::one_line(token)),
                "Continue it from a phone (a follow-up to this task, or a new task that resumes \
                 this session), or in an ACP client that can load sessions (session/load)."
                    .to_owned(),
            ];
            // Zed's adapter keeps its sessions in Claude Code's own store.
            let adapter = ["claude-code-acp", "claude-agent-acp"];
            if std::iter::once(program).chain(args).any(|a| adapter.iter().any(|n| a.contains(n))) {
                lines.push(claude_line("claude"));
            }
            Some(lines.join("\n"))
        }
        _ => None,
    }
}

/// Print a task event once (the replay and the live stream overlap).
fn print_event(
    m: &tandem_proto::message::Message,
    shown: &mut std::collections::HashMap<String, u64>,
) {
    let tandem_proto::message::Message::TaskEvent { task_id, offset, .. } = m else { return };
    if shown.get(task_id).is_some_and(|o| *offset < *o) {
        return;
    }
    shown.insert(task_id.clone(), offset + 1);
    if let Some(line) = report::event_line(m) {
        println!("{line}");
    }
}

/// `tandem cancel TASK`.
pub(crate) async fn cancel(dir: &std::path::Path, query: &str) -> anyhow::Result<()> {
    match ipc::call(dir, &ipc::Request::Cancel { task: query.to_owned() }).await {
        Ok(v) => {
            let id = text::one_line(field(&v, "task_id").as_str().unwrap_or(query));
            if field(&v, "was").as_str() == Some("running") {
                println!("Cancelling task {id}: its executor is being stopped.");
            } else {
                println!("Cancelled task {id} before it started.");
            }
            return Ok(());
        }
        Err(ipc::IpcError::Refused(msg)) => {
            eprintln!("{}", text::one_line(&msg));
            std::process::exit(1);
        }
        Err(ipc::IpcError::NotRunning) => {}
        Err(e) => return Err(e.into()),
    }
    let history = History::open(dir)?;
    let task = match history.find(query)? {
        Lookup::Found(r) => r,
        Lookup::NotFound => {
            eprintln!("No task matches `{}` (see `tandem tasks`).", text::one_line(query));
            std::process::exit(1);
        }
        Lookup::Ambiguous(ids) => {
            eprintln!(
                "`{}` matches several tasks: {}; give more of the id.",
                text::one_line(query),
                text::one_line(&ids.join(", "))
            );
            std::process::exit(1);
        }
    };
    let id = text::one_line(&task.task_id);
    match task.state {
        StoredState::Finished { .. } => {
            eprintln!("Task {id} has already finished ({}); nothing to cancel.", task.state_str());
            std::process::exit(1);
        }
        StoredState::Running => println!(
            "The agent is not running on {}, so neither is task {id}: it was interrupted when the agent stopped, and finishes as interrupted when the agent starts.",
            dir.display()
        ),
        StoredState::Queued => {
            // It must not run when the agent starts: finished in the history now.
            let task_id = task.task_id.clone();
            tandem_agent::tasks::cancel_queued_offline(&history, *task)?;
            drop(history);
            record(
                dir,
                AuditEvent::Cancelled {
                    by: "desktop".into(),
                    task_id: task_id.clone(),
                    instruction: None,
                },
            );
            record(dir, AuditEvent::TaskFinished { task_id, status: "cancelled".into() });
            println!(
                "Cancelled task {id} before it started. The agent is not running on {}; phones hear of it when it starts.",
                dir.display()
            );
            return Ok(());
        }
    }
    std::process::exit(3);
}
