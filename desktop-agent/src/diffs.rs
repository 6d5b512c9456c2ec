//! File edits shown as diffs: a tool call that writes a file (Claude Code's
//! `Edit`, `MultiEdit` and `Write`, any executor's tool call of those
//! names and shapes, and an ACP agent's tool call with `diff` content)
//! becomes a unified diff the phone shows next to the call and its approval.
//!
//! The file is read only when it lies inside the task's working directory
//! (its real path, symbolic links resolved, under the directory's real
//! path) and is at most [`MAX_READ`] bytes: then the diff has the file's
//! line numbers and three lines of context. Otherwise (outside the project,
//! missing, too large, not UTF-8, or the text to replace is not in it) the
//! diff covers the changed text alone, numbered from 1: a model asking to
//! edit `~/.ssh/config` does not get the desktop to show the phone what
//! else is in it.

use std::path::{Path, PathBuf};

use serde_json::Value;
use similar::TextDiff;

/// Largest file read to give a diff its context.
pub const MAX_READ: u64 = 1 << 20;

/// A diff ready for a `diff` task event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDiff {
    /// The file, relative to the working directory when inside it.
    pub path: String,
    /// The unified diff.
    pub diff: String,
    /// Lines added.
    pub added: u64,
    /// Lines removed.
    pub removed: u64,
}

/// One replacement of an `Edit` or `MultiEdit`.
struct Replace<'a> {
    old: &'a str,
    new: &'a str,
    all: bool,
}

/// The diff of tool call `name` with `input`, when it writes a file.
#[must_use]
pub fn for_tool<'a>(name: &str, input: &'a Value, workdir: Option<&Path>) -> Option<FileDiff> {
    // An ACP agent's tool call carries its diff as content:
    // `{"type":"diff","path":…,"oldText":…|null,"newText":…}`.
    if let Some(d) = input
        .get("content")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|i| i.get("type").and_then(Value::as_str) == Some("diff")))
    {
        let path = d.get("path").and_then(Value::as_str)?;
        let new = d.get("newText").and_then(Value::as_str)?;
        let (shown, current) = read_inside(path, workdir);
        return Some(match d.get("oldText").and_then(Value::as_str) {
            None => render(&shown, &current.unwrap_or_default(), new),
            Some(old) => {
                let edit = [Replace { old, new, all: false }];
                match current.as_deref().and_then(|c| Some((c, apply(c, &edit)?))) {
                    Some((before, after)) => render(&shown, before, &after),
                    None => render(&shown, &with_newline(old), &with_newline(new)),
                }
            }
        });
    }
    let path = input.get("file_path").and_then(Value::as_str)?;
    let str_of = |v: &'a Value, k: &str| v.get(k).and_then(Value::as_str);
    let replace = |v: &'a Value| {
        Some(Replace {
            old: str_of(v, "old_string")?,
            new: str_of(v, "new_string")?,
            all: v.get("replace_all").and_then(Value::as_bool).unwrap_or(false),
        })
    };
    let edits: Vec<Replace<'_>> = match name {
        "Edit" => vec![replace(input)?],
        "MultiEdit" => {
            input.get("edits")?.as_array()?.iter().map(replace).collect::<Option<Vec<_>>>()?
        }
        "Write" => {
            let content = str_of(input, "content")?;
            let (shown, before) = read_inside(path, workdir);
            let before = before.unwrap_or_default();
            return Some(render(&shown, &before, content));
        }
        _ => return None,
    };
    let (shown, current) = read_inside(path, workdir);
    if let Some(before) = current
        && let Some(after) = apply(&before, &edits)
    {
        return Some(render(&shown, &before, &after));
    }
    // The changed text alone.
    let before: String = edits.iter().map(|e| with_newline(e.old)).collect();
    let after: String = edits.iter().map(|e| with_newline(e.new)).collect();
    Some(render(&shown, &before, &after))
}

fn with_newline(s: &str) -> String {
    if s.ends_with('\n') { s.to_owned() } else { format!("{s}\n") }
}

/// Apply the replacements in order; `None` when one's text is not there.
fn apply(text: &str, edits: &[Replace<'_>]) -> Option<String> {
    let mut text = text.to_owned();
    for e in edits {
        if e.old.is_empty() || !text.contains(e.old) {
            return None;
        }
        text = if e.all { text.replace(e.old, e.new) } else { text.replacen(e.old, e.new, 1) };
    }
    Some(text)
}

/// The name to show for `path`, and its content when it may be read: a
/// regular UTF-8 file of at most [`MAX_READ`] bytes whose real path lies
/// under the working directory's real path.
fn read_inside(path: &str, workdir: Option<&Path>) -> (String, Option<String>) {
    let Some(dir) = workdir.and_then(|d| std::fs::canonicalize(d).ok()) else {
        return (path.to_owned(), None);
    };
    let full = if Path::new(path).is_absolute() { PathBuf::from(path) } else { dir.join(path) };
    let shown =
        full.strip_prefix(&dir).map_or_else(|_| path.to_owned(), |r| r.display().to_string());
    let Ok(real) = std::fs::canonicalize(&full) else { return (shown, None) };
    if !real.starts_with(&dir) {
        return (path.to_owned(), None);
    }
    let readable = std::fs::metadata(&real).is_ok_and(|m| m.is_file() && m.len() <= MAX_READ);
    let content = readable.then(|| std::fs::read_to_string(&real).ok()).flatten();
    (shown, content)
}

fn render(path: &str, before: &str, after: &str) -> FileDiff {
    let diff = TextDiff::from_lines(before, after);
    let (mut added, mut removed) = (0u64, 0u64);
    for change in diff.iter_all_changes() {
        match change.tag() {
            similar::ChangeTag::Insert => added += 1,
            similar::ChangeTag::Delete => removed += 1,
            similar::ChangeTag::Equal => {}
        }
    }
    let text = diff
        .unified_diff()
        .context_radius(3)
        .header(&format!("a/{path}"), &format!("b/{path}"))
        .to_string();
    FileDiff { path: path.to_owned(), diff: text, added, removed }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn numbered(n: usize) -> String {
        (1..=n).map(|i| format!("line {i}\n")).collect()
    }

    #[test]
    fn an_edit_inside_the_project_has_the_files_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("src/lib.rs"), numbered(20)).unwrap();
        let input = json!({"file_path": dir.path().join("src/lib.rs"),
                           "old_string": "line 12\n", "new_string": "line twelve\nline 12b\n"});
        let d = for_tool("Edit", &input, Some(dir.path())).unwrap();
        assert_eq!(d.path, "src/lib.rs");
        assert_eq!((d.added, d.removed), (2, 1));
        assert!(d.diff.starts_with("--- a/src/lib.rs\n+++ b/src/lib.rs\n"), "{}", d.diff);
        assert!(d.diff.contains("@@ -9,7 +9,8 @@"), "{}", d.diff);
        assert!(d.diff.contains("-line 12\n+line twelve\n+line 12b\n"), "{}", d.diff);
    }

    #[test]
    fn a_multi_edit_and_a_write_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "one\ntwo\nthree\n").unwrap();
        let multi = json!({"file_path": "a.txt", "edits": [
            {"old_string": "one", "new_string": "1"},
            {"old_string": "three", "new_string": "3"}]});
        let d = for_tool("MultiEdit", &multi, Some(dir.path())).unwrap();
        assert_eq!((d.added, d.removed), (2, 2));
        assert!(d.diff.contains("-one\n+1\n two\n-three\n+3\n"), "{}", d.diff);
        let write = json!({"file_path": "new.txt", "content": "hello\n"});
        let d = for_tool("Write", &write, Some(dir.path())).unwrap();
        assert_eq!((d.path.as_str(), d.added, d.removed), ("new.txt", 1, 0));
        assert!(d.diff.contains("+hello"));
        assert!(for_tool("Read", &json!({"file_path": "a.txt"}), Some(dir.path())).is_none());
        assert!(for_tool("Edit", &json!({"file_path": "a.txt"}), Some(dir.path())).is_none());
    }

    #[test]
    fn an_acp_diff_content_is_placed_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "one\ntwo\nthree\n").unwrap();
        let path = dir.path().join("a.txt").display().to_string();
        let edit = json!({"kind": "edit", "content": [
            {"type": "diff", "path": path, "oldText": "two", "newText": "2"}]});
        let d = for_tool("Edit a.txt", &edit, Some(dir.path())).unwrap();
        assert_eq!((d.path.as_str(), d.added, d.removed), ("a.txt", 1, 1));
        assert!(d.diff.contains("@@ -1,3 +1,3 @@"), "{}", d.diff);
        let create = json!({"content": [{"type": "diff", "path": "new.txt", "oldText": null,
                                         "newText": "hi\n"}]});
        let d = for_tool("Write", &create, Some(dir.path())).unwrap();
        assert_eq!((d.added, d.removed), (1, 0));
    }

    #[test]
    fn a_file_outside_the_project_is_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("config");
        std::fs::write(&secret, "Host a\nSecret xyz\nHost b\n").unwrap();
        // Through a symbolic link inside the project, too.
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        for path in [secret.clone(), dir.path().join("link/config")] {
            let input = json!({"file_path": path, "old_string": "Host b", "new_string": "Host c"});
            let d = for_tool("Edit", &input, Some(dir.path())).unwrap();
            assert!(!d.diff.contains("Secret"), "{}", d.diff);
            assert!(d.diff.contains("-Host b\n+Host c\n"), "{}", d.diff);
        }
        let write = json!({"file_path": secret, "content": "replaced\n"});
        let d = for_tool("Write", &write, Some(dir.path())).unwrap();
        assert!(!d.diff.contains("Secret"), "{}", d.diff);
    }
}
