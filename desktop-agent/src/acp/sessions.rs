//! The sessions an ACP agent keeps for a project, for a phone to continue
//! one (`sessions_request`, then `task_submit.resume`).
//!
//! [`list_sessions`] starts the agent as a task would (same program,
//! arguments, environment and project directory), sends `initialize`, and,
//! if the agent advertises `sessionCapabilities.list`, `session/list` with
//! the project directory as `cwd` (following `nextCursor` for a few pages).
//! Each `SessionInfo` becomes a [`SessionEntry`]: its id, its `title` (made
//! visible-safe, at most [`MAX_TITLE_CHARS`] characters; empty when the
//! agent gave none) and its `updatedAt` (RFC 3339) in milliseconds. Sessions
//! of another directory (an agent that ignores the filter), ids a task
//! could not carry, and more than the newest 50 are left out. The agent is
//! then stopped as a task's is: stdin closed, a grace to exit, its process
//! group terminated.
//!
//! An agent without `session/list` is [`ExecError::Unsupported`], so is a
//! configuration that is not an ACP executor.

use std::path::Path;
use std::time::Duration;

use agent_client_protocol::SessionInfo;
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;
use tracing::debug;

use super::MAX_MESSAGE_BYTES;
use super::connection::{self, FromConn, MAX_LISTED};
use super::plumbing::{Plumbing, plumb, project_of, stop_agent};
use crate::executor::{
    ExecError, ExecutorConfig, ExecutorKind, MAX_ID_LEN, Proc, SessionEntry, Stream,
};

/// How long the agent has to start and answer `session/list`.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest title kept, in characters.
pub const MAX_TITLE_CHARS: usize = 120;

/// The sessions the ACP agent of `config` keeps for its project (`config`
/// already placed in the project), newest first, at most 50.
///
/// # Errors
/// [`ExecError::Unsupported`] when `config` is not an ACP executor or the
/// agent has no `session/list`; [`ExecError::Workdir`] and
/// [`ExecError::Spawn`] as for a task; [`ExecError::Agent`] when the agent
/// fails to initialize or to list, exits, or takes longer than
/// [`LIST_TIMEOUT`].
pub async fn list_sessions(config: &ExecutorConfig) -> Result<Vec<SessionEntry>, ExecError> {
    let ExecutorKind::Acp { program, args, .. } = &config.kind else {
        return Err(ExecError::Unsupported("not an ACP executor"));
    };
    let project = project_of(config)?;
    let root = project.root().to_owned();
    let mut proc = Proc::spawn_capped(config, program, args, &[], true, MAX_MESSAGE_BYTES)?;
    let Plumbing { wire, stdin, mut from_conn, to_conn, ends } = plumb(&mut proc);
    if let Err(e) = connection::spawn_list(project, ends) {
        stop_agent(&mut proc, stdin, &mut None).await;
        return Err(ExecError::Setup(e));
    }
    let mut last_stderr = None;
    let answer = timeout(LIST_TIMEOUT, relay(&mut proc, wire, &mut from_conn, &mut last_stderr));
    let answer = answer.await;
    drop(to_conn);
    stop_agent(&mut proc, stdin, &mut last_stderr).await;
    let failed = |why: String| {
        let why = match &last_stderr {
            Some(line) => format!("{why} (last stderr: {line})"),
            None => why,
        };
        ExecError::Agent(why)
    };
    match answer {
        Err(_) => Err(failed(format!(
            "the agent did not list its sessions within {} s",
            LIST_TIMEOUT.as_secs()
        ))),
        Ok(Some(FromConn::Listed(None))) => {
            Err(ExecError::Unsupported("the agent cannot list its sessions (no `session/list`)"))
        }
        Ok(Some(FromConn::Listed(Some(sessions)))) => Ok(entries(sessions, &root)),
        Ok(Some(FromConn::Failed(why))) => Err(failed(why)),
        Ok(_) => Err(failed("the agent stopped before it listed its sessions".to_owned())),
    }
}

/// Passes the agent's stdout to the protocol thread until that thread
/// answers (`None`: it ended without an answer).
async fn relay(
    proc: &mut Proc,
    wire: tokio::io::DuplexStream,
    from_conn: &mut tokio::sync::mpsc::UnboundedReceiver<FromConn>,
    last_stderr: &mut Option<String>,
) -> Option<FromConn> {
    let mut wire = Some(wire);
    loop {
        tokio::select! {
            m = from_conn.recv() => match m {
                Some(m @ (FromConn::Listed(_) | FromConn::Failed(_))) => return Some(m),
                Some(other) => debug!(?other, "ignored while listing sessions"),
                None => return None,
            },
            line = proc.lines.recv(), if wire.is_some() => match line {
                Some((Stream::Stdout, line)) => {
                    if let Some(w) = wire.as_mut() {
                        let mut bytes = line.into_bytes();
                        bytes.push(b'\n');
                        if w.write_all(&bytes).await.is_err() {
                            wire = None;
                        }
                    }
                }
                Some((Stream::Stderr, line)) => {
                    if !line.trim().is_empty() {
                        *last_stderr = Some(crate::executor::cap_text(line, 1024));
                    }
                }
                // EOF for the library too: its pending request fails.
                None => wire = None,
            },
        }
    }
}

/// The agent's sessions as entries: this project's only, usable ids,
/// newest first, at most [`MAX_LISTED`].
fn entries(sessions: Vec<SessionInfo>, root: &Path) -> Vec<SessionEntry> {
    let mut out: Vec<SessionEntry> = sessions
        .into_iter()
        .filter(|s| same_dir(&s.cwd, root))
        .filter_map(|s| {
            let id = s.session_id.0.to_string();
            if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
                return None;
            }
            let title = s.title.as_deref().map(title).unwrap_or_default();
            let updated_ms = s.updated_at.as_deref().and_then(rfc3339_ms).unwrap_or(0);
            Some(SessionEntry { id, title, updated_ms })
        })
        .collect();
    out.sort_by_key(|e| std::cmp::Reverse(e.updated_ms));
    let mut seen = std::collections::HashSet::new();
    out.retain(|e| seen.insert(e.id.clone()));
    out.truncate(MAX_LISTED);
    out
}

/// Whether the session's `cwd` is the project directory (as given, or
/// once both are canonical).
fn same_dir(cwd: &Path, root: &Path) -> bool {
    cwd == root || std::fs::canonicalize(cwd).is_ok_and(|c| c == root)
}

/// A title as a phone shows it: one line, visible-safe, at most
/// [`MAX_TITLE_CHARS`] characters.
fn title(raw: &str) -> String {
    let line = crate::text::one_line(raw);
    let line = line.trim();
    if line.chars().count() <= MAX_TITLE_CHARS {
        return line.to_owned();
    }
    let cut: String = line.chars().take(MAX_TITLE_CHARS).collect();
    format!("{}…", cut.trim_end())
}

/// An RFC 3339 / ISO 8601 time (`2026-12-07T20:47:36.776Z`, or with an
/// offset such as `+02:00`) in milliseconds since the Unix epoch; `None`
/// for anything else or a time before 1970.
fn rfc3339_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from + len)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    };
    let sep = |at: usize, c: &[u8]| b.get(at).is_some_and(|x| c.contains(x));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut at = 19;
    let mut millis = 0;
    if sep(at, b".") {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        let fraction = text.get(start..at)?;
        if fraction.is_empty() {
            return None;
        }
        let three: String = fraction.chars().chain("00".chars()).take(3).collect();
        millis = three.parse::<i64>().ok()?;
    }
    let offset_minutes = match b.get(at) {
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if at + 6 == b.len() && sep(at + 3, b":") => {
            let minutes = num(at + 1, 2)? * 60 + num(at + 4, 2)?;
            if *sign == b'+' { minutes } else { -minutes }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    u64::try_from(seconds * 1000 + millis).ok()
}

/// Days from 1970-01-01 to the given date (proleptic Gregorian calendar).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_as_rfc_3339() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(rfc3339_ms("2026-12-07T20:47:36.776Z"), Some(1_796_676_456_776));
        assert_eq!(rfc3339_ms("2026-12-07T22:47:36.776+02:00"), Some(1_796_676_456_776));
        assert_eq!(rfc3339_ms("2026-12-07T20:47:36.7Z"), Some(1_796_676_456_700));
        assert_eq!(rfc3339_ms("2000-02-29T12:00:00Z"), Some(951_825_600_000));
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-12-07T20:47:36",
            "1969-12-31T23:59:59Z",
            "2026-12-07T20:47:36.Z",
            "2026-12-07T20:47:36Zjunk",
            "٢٠٢٦-12-07T20:47:36Z",
        ] {
            assert_eq!(rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn titles_are_one_visible_line_of_at_most_120_characters() {
        assert_eq!(title("  fix the\nbuild\u{202E}  "), "fix the build");
        let long = "é".repeat(200);
        let shown = title(&long);
        assert_eq!(shown.chars().count(), MAX_TITLE_CHARS + 1);
        assert!(shown.ends_with('…'));
    }

    #[test]
    fn entries_are_this_projects_usable_sessions_newest_first() {
        let root = Path::new("/nonexistent/project");
        let info = |id: &str, cwd: &str, updated: Option<&str>| {
            let mut s = SessionInfo::new(id.to_owned(), cwd);
            s.title = Some(format!("about {id}"));
            s.updated_at = updated.map(str::to_owned);
            s
        };
        let got = entries(
            vec![
                info("old", "/nonexistent/project", Some("2026-01-01T00:00:00Z")),
                info("elsewhere", "/nonexistent/other", Some("2026-06-01T00:00:00Z")),
                info("new", "/nonexistent/project", Some("2026-02-01T00:00:00.5Z")),
                info("bad\nid", "/nonexistent/project", None),
                info("undated", "/nonexistent/project", Some("whenever")),
            ],
            root,
        );
        let ids: Vec<(&str, u64)> = got.iter().map(|e| (e.id.as_str(), e.updated_ms)).collect();
        assert_eq!(ids, [("new", 1_769_904_000_500), ("old", 1_767_225_600_000), ("undated", 0)]);
        assert_eq!(got.first().map(|e| e.title.as_str()), Some("about new"));
        let many = (0..70).map(|i| info(&format!("s{i}"), "/nonexistent/project", None)).collect();
        assert_eq!(entries(many, root).len(), MAX_LISTED);
    }
}
