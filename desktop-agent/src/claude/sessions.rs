//! Claude Code's own session store, read for the hand-off from the terminal
//! to a phone: the sessions a `claude` executor can continue in its working
//! directory (`claude --resume ID`).
//!
//! Claude Code keeps one JSON-lines transcript per session in
//! `<config dir>/projects/<cwd>/<session id>.jsonl`, where the config dir is
//! `$CLAUDE_CONFIG_DIR` or `$HOME/.claude` and `<cwd>` is the working
//! directory's absolute path with every byte that is not an ASCII letter or
//! digit written as `-` (`/home/ana/my.app` is `-home-ana-my-app`). The
//! executor's `env` comes before the agent's own environment, as for the
//! process it starts. Only the newest [`MAX_LISTED`] files are read, each
//! up to [`MAX_READ`] bytes: a title is near the start.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde_json::Value;

use crate::executor::{ExecError, ExecutorConfig, SessionEntry};

/// Most sessions listed.
pub const MAX_LISTED: usize = tandem_proto::message::MAX_SESSIONS;

/// Most bytes of one transcript read for its title.
pub const MAX_READ: u64 = 256 * 1024;

/// Longest title, in characters.
pub const MAX_TITLE_CHARS: usize = 120;

/// The value of `name` in the executor's environment: its `env` first, then
/// the agent's own.
fn env_of(config: &ExecutorConfig, name: &str) -> Option<String> {
    config
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var(name).ok())
        .filter(|v| !v.is_empty())
}

/// Claude Code's directory of transcripts for `config`'s working directory.
///
/// # Errors
/// [`ExecError::Unsupported`] when neither `CLAUDE_CONFIG_DIR` nor `HOME`
/// is set; [`ExecError::Workdir`] when the working directory cannot be
/// resolved.
pub fn store_dir(config: &ExecutorConfig) -> Result<PathBuf, ExecError> {
    let base = match env_of(config, "CLAUDE_CONFIG_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => match env_of(config, "HOME") {
            Some(home) => Path::new(&home).join(".claude"),
            None => return Err(ExecError::Unsupported("no HOME to find Claude Code's sessions")),
        },
    };
    let cwd = match &config.workdir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir()
            .map_err(|e| ExecError::Workdir { path: PathBuf::from("."), source: e })?,
    };
    // Claude Code names the directory after the path the process runs in,
    // which the kernel reports with links resolved.
    let cwd =
        std::fs::canonicalize(&cwd).map_err(|e| ExecError::Workdir { path: cwd, source: e })?;
    Ok(base.join("projects").join(project_dir_name(&cwd)))
}

/// `/home/ana/my.app` → `-home-ana-my-app`.
#[must_use]
pub fn project_dir_name(cwd: &Path) -> String {
    cwd.to_string_lossy().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect()
}

/// Whether `id` is a session id this module lists (and may name a file).
#[must_use]
pub fn is_listable_id(id: &str) -> bool {
    super::is_session_id(id) && !id.contains("..") && !id.starts_with('.')
}

/// The sessions Claude Code has for `config`'s working directory, newest
/// first. A missing store is an empty list.
///
/// # Errors
/// As [`store_dir`].
pub fn list(config: &ExecutorConfig) -> Result<Vec<SessionEntry>, ExecError> {
    let dir = store_dir(config)?;
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(Vec::new()) };
    let mut files: Vec<(u64, String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let path = e.path();
            let id = path.file_name()?.to_str()?.strip_suffix(".jsonl")?.to_owned();
            let meta = e.metadata().ok().filter(std::fs::Metadata::is_file)?;
            let modified = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
            let ms = u64::try_from(modified.as_millis()).unwrap_or(u64::MAX);
            is_listable_id(&id).then_some((ms, id, path))
        })
        .collect();
    files.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    files.truncate(MAX_LISTED);
    Ok(files
        .into_iter()
        .filter_map(|(updated_ms, id, path)| {
            let title = title_of(&path)?;
            Some(SessionEntry { id, title, updated_ms })
        })
        .collect())
}

/// Whether Claude Code has the session `id` for `config`'s working
/// directory (a transcript with a conversation in it).
#[must_use]
pub fn has(config: &ExecutorConfig, id: &str) -> bool {
    is_listable_id(id)
        && store_dir(config).is_ok_and(|dir| title_of(&dir.join(format!("{id}.jsonl"))).is_some())
}

/// A session's title: its summary or custom title if Claude Code wrote
/// one, else the start of its first prompt. `None`: no conversation in it
/// (a transcript of only bookkeeping lines is not a session to continue).
fn title_of(path: &Path) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    let mut first_prompt = None;
    let mut named = None;
    for line in BufReader::new(file.take(MAX_READ)).lines() {
        let Ok(line) = line else { break };
        let Ok(obj) = serde_json::from_str::<Value>(&line) else { continue };
        match obj.get("type").and_then(Value::as_str) {
            Some("summary") => named = named.or_else(|| text_field(&obj, "summary")),
            Some("custom-title") => named = text_field(&obj, "customTitle").or(named),
            Some("user") if first_prompt.is_none() => first_prompt = prompt_of(&obj),
            _ => {}
        }
    }
    let title = named.or(first_prompt)?;
    Some(shorten(&crate::text::visible(title.trim())))
}

fn text_field(obj: &Value, key: &str) -> Option<String> {
    obj.get(key).and_then(Value::as_str).filter(|s| !s.trim().is_empty()).map(str::to_owned)
}

/// The text of a user line the person typed (not a sidechain's, not Claude
/// Code's own meta lines or command echoes, not a tool result).
fn prompt_of(obj: &Value) -> Option<String> {
    if obj.get("isSidechain").and_then(Value::as_bool) == Some(true)
        || obj.get("isMeta").and_then(Value::as_bool) == Some(true)
    {
        return None;
    }
    let content = obj.get("message")?.get("content")?;
    let text = match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .find(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .and_then(|b| b.get("text"))
            .and_then(Value::as_str)?
            .to_owned(),
        _ => return None,
    };
    let t = text.trim_start();
    let generated = ["<command-", "<local-command", "<system-reminder>", "Caveat:"];
    (!t.is_empty() && !generated.iter().any(|g| t.starts_with(g))).then_some(text)
}

fn shorten(s: &str) -> String {
    let one_line: String =
        s.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(MAX_TITLE_CHARS).collect();
    if s.split_whitespace().map(|w| w.chars().count() + 1).sum::<usize>() > MAX_TITLE_CHARS + 1 {
        format!("{}…", one_line.trim_end())
    } else {
        one_line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::ExecutorKind;

    fn config(home: &Path, workdir: &Path) -> ExecutorConfig {
        ExecutorConfig {
            name: "claude".into(),
            kind: ExecutorKind::Claude {
                program: "claude".into(),
                args: Vec::new(),
                setting_sources: Vec::new(),
            },
            workdir: Some(workdir.to_owned()),
            env: vec![("HOME".into(), home.to_string_lossy().into_owned())],
        }
    }

    fn write(dir: &Path, id: &str, lines: &[Value]) {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(dir.join(format!("{id}.jsonl")), text).unwrap();
    }

    #[test]
    fn the_store_is_found_where_claude_code_writes_it() {
        let root = tempfile::tempdir().unwrap();
        let work = root.path().join("my.app dir_x");
        std::fs::create_dir_all(&work).unwrap();
        let c = config(&root.path().join("home"), &work);
        let want = format!("{}", std::fs::canonicalize(&work).unwrap().display())
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect::<String>();
        assert!(want.ends_with("-my-app-dir-x"));
        assert_eq!(store_dir(&c).unwrap(), root.path().join("home/.claude/projects").join(&want));
        let mut c2 = c.clone();
        c2.env.push(("CLAUDE_CONFIG_DIR".into(), "/cfg".into()));
        assert!(store_dir(&c2).unwrap().starts_with("/cfg/projects"));
    }

    #[test]
    fn sessions_are_listed_newest_first_with_their_titles() {
        let root = tempfile::tempdir().unwrap();
        let work = root.path().join("w");
        std::fs::create_dir_all(&work).unwrap();
        let c = config(&root.path().join("home"), &work);
        assert!(list(&c).unwrap().is_empty(), "no store yet: no sessions");
        let dir = store_dir(&c).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        let user = |text: Value| serde_json::json!({"type":"user","message":{"role":"user","content":text}});
        write(
            &dir,
            "aaaa-1",
            &[
                serde_json::json!({"type":"queue-operation","content":"x"}),
                serde_json::json!({"type":"user","isMeta":true,"message":{"content":"<command-name>/init</command-name>"}}),
                user(serde_json::json!("why does\nthe parser   panic?")),
                user(serde_json::json!("second prompt")),
            ],
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(
            &dir,
            "bbbb-2",
            &[
                user(serde_json::json!([{"type":"text","text":"first"}])),
                serde_json::json!({"type":"summary","summary":"Parser fix"}),
            ],
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        // Only bookkeeping: not a session; a bad name: never listed.
        write(&dir, "cccc-3", &[serde_json::json!({"type":"queue-operation"})]);
        write(&dir, "-evil", &[user(serde_json::json!("x"))]);
        std::fs::write(dir.join("notes.txt"), "x").unwrap();
        std::fs::write(dir.join("dddd-4.jsonl"), "not json\n\u{0}\u{1}").unwrap();
        let got = list(&c).unwrap();
        let ids: Vec<&str> = got.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["bbbb-2", "aaaa-1"]);
        assert_eq!(got[0].title, "Parser fix");
        assert_eq!(got[1].title, "why does the parser panic?");
        assert!(has(&c, "aaaa-1") && !has(&c, "cccc-3") && !has(&c, "../aaaa-1"));
        assert!(!has(&c, "-evil") && !has(&c, "nope"));
    }

    #[test]
    fn titles_are_short_and_visible() {
        assert_eq!(shorten("a  b\tc"), "a b c");
        let long = "word ".repeat(60);
        let s = shorten(&long);
        assert!(s.ends_with('…') && s.chars().count() <= MAX_TITLE_CHARS + 1, "{s}");
    }
}
