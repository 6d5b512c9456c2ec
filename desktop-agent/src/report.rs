//! Text for `tandem status`, `tandem devices` and `tandem tasks`: what the
//! running agent (or the state on disk) reports, as lines a person reads.
//! Names that phones chose go through [`visible`].

use std::fmt::Write as _;

use serde_json::Value;
use tandem_proto::message::{Message, TaskEvent};

use crate::history::{StoredState, TaskRecord};
use crate::peers::Peer;
use crate::tasks::status_str;
use crate::text::escaped;

/// `v[key]`, or `null`.
#[must_use]
pub fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&Value::Null)
}

/// Characters of free text shown per line.
const SHOWN: usize = 100;

/// Phone- or executor-supplied text on one line, safe for a terminal
/// ([`crate::text::one_line`]: no escape sequences, no bidi overrides or
/// zero-width characters), at most [`SHOWN`] characters.
fn short(text: &str) -> String {
    let clean = crate::text::one_line(text);
    let one_line: String = clean.chars().take(SHOWN).collect();
    if clean.chars().nth(SHOWN).is_some() { format!("{one_line}…") } else { one_line }
}

fn ago(now_ms: u64, at_ms: u64) -> String {
    format!("{} ago", span(now_ms.saturating_sub(at_ms) / 1000))
}

/// `42s`, `5m`, `3h`, `2d`.
fn span(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// What a device's kind adds to its line: ephemeral, pairing not finished.
fn device_notes(ephemeral: bool, pending: bool) -> String {
    let mut notes = String::new();
    if ephemeral {
        notes.push_str(", this page only");
    }
    if pending {
        notes.push_str(", pairing not finished");
    }
    notes
}

/// `tandem devices`: one line per paired device, oldest pairing first.
#[must_use]
pub fn device_lines(peers: &[&Peer], now_unix: u64) -> String {
    if peers.is_empty() {
        return "No paired devices. Run `tandem up` or `tandem pair` to pair a phone.\n".into();
    }
    let mut out = String::new();
    for p in peers {
        let seen = p
            .last_seen_unix()
            .map_or_else(|| "never".to_owned(), |t| format!("{}s ago", now_unix.saturating_sub(t)));
        let _ = writeln!(
            out,
            "{}  {:<24} {:<8} {:<8} last seen {seen}{}",
            p.device_id(),
            escaped(p.name()),
            escaped(&p.info().platform),
            p.scope(),
            device_notes(p.ephemeral(), p.pairing_pending())
        );
    }
    out
}

/// The session line of a device in `tandem status`: how old the session
/// is, how many records it carried, the sending key's epoch and the
/// renewals so far.
fn session_line(session: &Value, now_ms: u64) -> Option<String> {
    let id = field(session, "id").as_str()?;
    let n = |k: &str| field(session, k).as_u64().unwrap_or(0);
    let renewals = match (n("renewals"), field(session, "last_renewal_unix").as_u64()) {
        (0, _) => "never renewed".to_owned(),
        (count, Some(last)) => {
            format!("renewed {count} time(s), last {}", ago(now_ms, last.saturating_mul(1000)))
        }
        (count, None) => format!("renewed {count} time(s)"),
    };
    let pending = if field(session, "renewal_pending").as_bool() == Some(true) {
        ", renewal in progress"
    } else {
        ""
    };
    Some(format!(
        "session {}: {} old, {} record(s), send epoch {}, {renewals}{pending}",
        short(id),
        span(n("age_secs")),
        n("records"),
        n("send_epoch"),
    ))
}

/// One line per task, newest first.
#[must_use]
pub fn task_lines(tasks: &[TaskRecord], now_ms: u64) -> String {
    if tasks.is_empty() {
        return "No tasks yet.\n".into();
    }
    let mut out = String::new();
    for t in tasks {
        let state = match t.state {
            StoredState::Queued => "queued".to_owned(),
            StoredState::Running => "running".to_owned(),
            StoredState::Finished { status } => status_str(status).to_owned(),
        };
        let by = match &t.project {
            Some(p) => format!("{} in {}", short(&t.executor), short(p)),
            None => short(&t.executor),
        };
        let _ = writeln!(
            out,
            "{:<20} {:<10} {:<10} {:>8}  {}",
            short(&t.task_id),
            state,
            by,
            ago(now_ms, t.updated_ms),
            short(&t.text)
        );
    }
    out
}

/// `tandem executors`: what a phone may pick for a task, the defaults
/// first, with each project's directory (which phones are not sent).
#[must_use]
pub fn choice_lines(
    executors: &[crate::executor::ExecutorConfig],
    projects: &[crate::projects::Project],
) -> String {
    let mut out = String::new();
    if executors.is_empty() {
        out.push_str("No executor is configured: tasks from phones are refused.\n");
    } else {
        out.push_str("Executors (a phone picks one per task):\n");
        for (i, e) in executors.iter().enumerate() {
            let kind = crate::projects::kind_name(&e.kind);
            let mark = if i == 0 { "  (default)" } else { "" };
            let _ = writeln!(out, "  {:<16} {kind:<8}{mark}", short(&e.name));
        }
    }
    if projects.is_empty() {
        out.push_str(
            "No projects: each executor runs in its own workdir (add [[project]] tables, \
             name and path, to let a phone pick one).\n",
        );
    } else {
        out.push_str("Projects (a phone picks one per task):\n");
        for (i, p) in projects.iter().enumerate() {
            let mark = if i == 0 { "  (default)" } else { "" };
            let _ = writeln!(
                out,
                "  {:<16} {}{mark}",
                short(&p.name),
                escaped(&p.path.display().to_string())
            );
        }
    }
    out
}

/// One line for a task event.
#[must_use]
pub fn event_line(m: &Message) -> Option<String> {
    let Message::TaskEvent { task_id, offset, event, .. } = m else { return None };
    let what = match event {
        TaskEvent::Accepted { executor, project, text, resumed } => {
            let place = project.as_ref().map(|p| format!(" in {p}")).unwrap_or_default();
            let session = resumed
                .as_ref()
                .map(|s| format!(", continuing session {}", short(s)))
                .unwrap_or_default();
            format!(
                "accepted by {executor}{place}{session}: {}",
                short(text.as_deref().unwrap_or(""))
            )
        }
        TaskEvent::FollowUp { text } => format!("follow-up: {}", short(text)),
        TaskEvent::Progress { text } => short(text),
        TaskEvent::ToolCall { name, input, .. } => {
            format!("tool {} {}", short(name), short(&input.to_string()))
        }
        TaskEvent::ToolResult { output, is_error, .. } => {
            format!("{} {}", if *is_error { "tool error:" } else { "tool result:" }, short(output))
        }
        TaskEvent::Diff { path, added, removed, .. } => {
            format!("diff {} +{added} -{removed}", short(path))
        }
        TaskEvent::ApprovalRequest { approval_id, summary, .. } => {
            format!("approval {} waiting: {}", short(approval_id), short(summary))
        }
        TaskEvent::ApprovalResolved { approval_id, allow, by, rule } => {
            let verdict = if *allow { "allowed" } else { "denied" };
            let added =
                rule.as_ref().map(|r| format!(", rule added: {}", short(r))).unwrap_or_default();
            format!("approval {} {verdict} by {}{added}", short(approval_id), short(by))
        }
        TaskEvent::Finished { status, summary, denied, failed, expired } => {
            let mut notes = String::new();
            for (what, list) in [("denied", denied), ("failed", failed), ("unanswered", expired)] {
                if !list.is_empty() {
                    notes.push_str(&format!(" ({what}: {})", short(&list.join(", "))));
                }
            }
            format!("finished {}{notes}: {}", status_str(*status), short(summary))
        }
    };
    Some(format!("{} #{offset:<4} {what}", short(task_id)))
}

/// The running agent's status, from its control socket's JSON, at `now_ms`
/// (Unix milliseconds).
#[must_use]
pub fn status_text(v: &Value, now_ms: u64) -> String {
    let mut out = String::new();
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
    let _ = writeln!(out, "Agent running (pid {}), device {}", field(v, "pid"), s("device_id"));
    let connected = field(v, "connected").as_bool().unwrap_or(false);
    let _ = writeln!(
        out,
        "Relay: {} ({})",
        s("relay"),
        if connected { "connected" } else { "not connected; retrying" }
    );
    let t = field(v, "tasks");
    let _ = writeln!(
        out,
        "Tasks: {} running, {} queued, {} approval(s) waiting",
        field(t, "running"),
        field(t, "queued"),
        field(t, "pending_approvals")
    );
    let awake = field(v, "keep_awake");
    let awake = match (field(awake, "state").as_str(), field(awake, "reason").as_str()) {
        (Some(state), Some(reason)) => format!("{state} ({reason})"),
        (Some(state), None) => state.to_owned(),
        _ => "not managed".to_owned(),
    };
    let _ = writeln!(out, "Keep awake: {awake}");
    if let Some(backend) = field(v, "key_store").as_str() {
        let _ = writeln!(out, "Device key: {backend}");
    }
    let devices = field(v, "devices").as_array().cloned().unwrap_or_default();
    if devices.is_empty() {
        let _ = writeln!(out, "No paired devices.");
    }
    for d in devices {
        let state = match (field(&d, "online").as_bool(), field(&d, "attached").as_bool()) {
            (Some(true), Some(false)) => "online, detached (idle)",
            (Some(true), _) => "online",
            _ => "offline",
        };
        let _ = writeln!(
            out,
            "  {}  {:<24} {:<8} {state}{}",
            field(&d, "device_id").as_str().unwrap_or("?"),
            short(&escaped(field(&d, "name").as_str().unwrap_or("?"))),
            field(&d, "scope").as_str().unwrap_or("?"),
            device_notes(
                field(&d, "ephemeral").as_bool().unwrap_or(false),
                field(&d, "pairing_pending").as_bool().unwrap_or(false)
            )
        );
        if let Some(line) = session_line(field(&d, "session"), now_ms) {
            let _ = writeln!(out, "      {line}");
        }
        if let Some(line) = push_line(field(&d, "push")) {
            let _ = writeln!(out, "      {line}");
        }
        let lost = field(&d, "lost_messages");
        if let (Some(count), Some(from), Some(to)) = (
            field(lost, "count").as_u64(),
            field(lost, "from").as_u64(),
            field(lost, "to").as_u64(),
        ) {
            let _ = writeln!(
                out,
                "      lost messages: {count} gap(s) since the agent started, the last one messages {from} to {to}{} (they never reached this computer: what they asked for did not happen; send it again)",
                field(lost, "last_ms")
                    .as_u64()
                    .map(|ms| format!(", {}", ago(now_ms, ms)))
                    .unwrap_or_default()
            );
        }
    }
    for s in field(v, "set_aside").as_array().into_iter().flatten() {
        let text = |k: &str| escaped(field(s, k).as_str().unwrap_or("?"));
        let _ = writeln!(
            out,
            "Set aside at start: {} was damaged ({}); moved to {}; {}",
            text("file"),
            text("reason"),
            text("moved_to"),
            text("consequence")
        );
    }
    out
}

/// A device's push notifications, when it turned them on.
fn push_line(push: &Value) -> Option<String> {
    let key_id = field(push, "key_id").as_str()?;
    let kinds: Vec<&str> =
        [("approvals", "approvals"), ("finished", "finished tasks"), ("missing", "lost messages")]
            .into_iter()
            .filter(|(k, _)| field(push, k).as_bool() == Some(true))
            .map(|(_, name)| name)
            .collect();
    let kinds = if kinds.is_empty() { "nothing".to_owned() } else { kinds.join(", ") };
    Some(format!("push notifications: {kinds} (sealed with key {key_id})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tandem_proto::message::FinishStatus;

    #[test]
    fn lines_are_single_and_short() {
        let m = Message::TaskEvent {
            task_id: "t".into(),
            offset: 3,
            at_ms: 0,
            event: TaskEvent::Progress { text: format!("a\nb\x1b[31m{}", "x".repeat(300)) },
        };
        let line = event_line(&m).unwrap();
        assert!(!line.contains('\n') && !line.contains('\x1b'));
        let bidi = Message::TaskEvent {
            task_id: "t\u{202E}x".into(),
            offset: 0,
            at_ms: 0,
            event: TaskEvent::Progress { text: "a\u{2066}b\u{200B}c".into() },
        };
        assert_eq!(event_line(&bidi).unwrap(), "tx #0    abc");
        assert!(line.starts_with("t #3"));
        assert!(line.ends_with('…'));
        let done = Message::TaskEvent {
            task_id: "t".into(),
            offset: 4,
            at_ms: 0,
            event: TaskEvent::Finished {
                status: FinishStatus::Succeeded,
                summary: "ok".into(),
                denied: Vec::new(),
                expired: Vec::new(),
                failed: Vec::new(),
            },
        };
        assert!(event_line(&done).unwrap().contains("finished succeeded: ok"));
        assert_eq!(event_line(&Message::Cancel { task_id: "t".into() }), None);
    }

    #[test]
    fn status_shows_connection_tasks_and_devices() {
        let v = json!({
            "ok": true, "pid": 42, "device_id": "abc", "relay": "ws://x/v1/connect",
            "connected": false, "keep_awake": {"state": "held"}, "key_store": "file",
            "tasks": {"running": 1, "queued": 2, "pending_approvals": 0},
            "devices": [{"device_id": "d1", "name": "Ana's phone", "scope": "approve",
                          "online": true, "attached": false},
                        {"device_id": "d2", "name": "\u{202e}enohp\u{200b}", "scope": "view",
                          "online": false, "ephemeral": true, "pairing_pending": true}],
        });
        let text = status_text(&v, 0);
        assert!(text.contains("pid 42"));
        assert!(text.contains("not connected"));
        assert!(text.contains("1 running, 2 queued"));
        assert!(text.contains("Keep awake: held"));
        assert!(text.contains("Device key: file"));
        assert!(text.contains("online, detached (idle)"));
        assert!(text.contains("enohp"), "{text}");
        assert!(!text.contains('\u{202e}') && !text.contains('\u{200b}'));
        assert!(text.contains("offline, this page only, pairing not finished"), "{text}");
    }

    #[test]
    fn status_shows_each_devices_session_age_epoch_and_renewals() {
        let now_ms = 1_800_000_000_000;
        let device = |session| {
            json!({"ok": true, "devices": [{"device_id": "d1", "name": "p", "scope": "view",
                                              "online": true, "session": session}]})
        };
        let renewed = device(json!({
            "id": "0123456789abcdef", "age_secs": 125, "records": 42, "send_epoch": 3,
            "renewal_pending": false, "renewals": 7, "last_renewal_unix": 1_800_000_000 - 125,
        }));
        let text = status_text(&renewed, now_ms);
        assert!(
            text.contains(
                "session 0123456789abcdef: 2m old, 42 record(s), send epoch 3, renewed 7 time(s), \
                 last 2m ago"
            ),
            "{text}"
        );
        let fresh = device(json!({
            "id": "00", "age_secs": 5, "records": 0, "send_epoch": 0,
            "renewal_pending": true, "renewals": 0, "last_renewal_unix": null,
        }));
        let text = status_text(&fresh, now_ms);
        assert!(
            text.contains("5s old, 0 record(s), send epoch 0, never renewed, renewal in progress")
        );
        // An older agent's answer has no session: no line, no panic.
        let old = device(Value::Null);
        assert!(!status_text(&old, now_ms).contains("session"));
    }
}
