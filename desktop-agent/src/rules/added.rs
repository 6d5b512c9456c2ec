//! Allow rules a phone added from an approval ("always allow this in this
//! project", `approval_decision.remember`), kept in the data dir's
//! `rules.json` beside the configuration's own `[[rule]]`s. Only a device
//! whose scope is `rules` adds one (the desktop user grants that scope);
//! each rule allows one tool on one subject (the command, the file) for one
//! executor and project, matched literally. `tandem rules` lists them with
//! who added them and when; `tandem rules remove N` takes one away. The
//! configuration's deny rules still win over them.
//!
//! The file is written atomically (mode 0600). A file that cannot be read
//! is moved aside and no added rule applies: a damaged file only ever means
//! fewer automatic allows, and phones are asked again.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::warn;

use super::{Context, Rule, RuleConfig, ToolUse};

/// The file's name in the data dir.
pub const FILE_NAME: &str = "rules.json";

/// Most rules phones may add (beyond, the oldest is dropped).
pub const MAX_ADDED: usize = 256;

/// Why the added rules could not be kept.
#[derive(Debug, Error)]
pub enum AddedError {
    /// Writing the file failed (full disk, permissions).
    #[error("could not save {path}: {source}")]
    Save {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// No rule with that number.
    #[error("no rule added from a phone has the number {0}")]
    NoSuchRule(usize),
    /// The rule with that number is not the one the asker listed (the list
    /// changed meanwhile).
    #[error("rule {0} is another rule now: list the rules again (`tandem rules`)")]
    Changed(usize),
}

/// One rule a phone added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedRule {
    /// The pattern it allows (`Bash(cargo test)`).
    pub allow: String,
    /// The executor it is for.
    pub executor: String,
    /// The project it is for (none: tasks without a project).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The device that added it.
    pub added_by: String,
    /// When (Unix ms).
    pub added_ms: u64,
}

impl AddedRule {
    /// The rule as [`super::decide`] uses it.
    ///
    /// # Errors
    /// [`super::RuleError`] when the pattern does not compile.
    pub fn rule(&self) -> Result<Rule, super::RuleError> {
        let mut rule = Rule::new(RuleConfig {
            allow: Some(self.allow.clone()),
            deny: None,
            executor: Some(self.executor.clone()),
            // A task without a project: only such tasks (`""`), never every
            // project.
            project: Some(self.project.clone().unwrap_or_default()),
            device: None,
        })?;
        rule.narrow = true;
        Ok(rule)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    v: u32,
    rules: Vec<AddedRule>,
}

/// The rules phones added, and their file.
#[derive(Debug, Default)]
pub struct AddedRules {
    path: Option<PathBuf>,
    added: Vec<AddedRule>,
    compiled: Vec<Rule>,
}

impl AddedRules {
    /// The rules in `dir`'s `rules.json`, only read (for a listing): a
    /// damaged file is an error, left where it is.
    ///
    /// # Errors
    /// What reading or parsing it said.
    pub fn peek(dir: &Path) -> Result<Vec<AddedRule>, String> {
        match std::fs::read(dir.join(FILE_NAME)) {
            Ok(bytes) => serde_json::from_slice::<File>(&bytes)
                .map(|f| f.rules)
                .map_err(|e| format!("{FILE_NAME} cannot be read: {e}")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(format!("{FILE_NAME}: {e}")),
        }
    }

    /// The rules in `dir`'s `rules.json` (none if it does not exist; a
    /// damaged one is moved aside, logged, and none apply).
    #[must_use]
    pub fn open(dir: &Path) -> Self {
        let path = dir.join(FILE_NAME);
        let added = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<File>(&bytes) {
                Ok(f) => f.rules,
                Err(e) => {
                    let aside = crate::damage::move_aside(&path, crate::damage::now_ms());
                    warn!(file = %path.display(), error = %e, aside = ?aside,
                        "the rules phones added cannot be read: moved aside, none apply");
                    Vec::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                warn!(file = %path.display(), error = %e, "the rules phones added cannot be read: none apply");
                Vec::new()
            }
        };
        let mut rules = Self { path: Some(path), added, compiled: Vec::new() };
        rules.compile();
        rules
    }

    fn compile(&mut self) {
        self.compiled = self.added.iter().filter_map(|r| r.rule().ok()).collect();
    }

    /// Every rule added, oldest first.
    #[must_use]
    pub fn list(&self) -> &[AddedRule] {
        &self.added
    }

    /// The compiled rules.
    #[must_use]
    pub fn rules(&self) -> &[Rule] {
        &self.compiled
    }

    /// Add `rule` and save the file. An equal rule already there is not
    /// added twice.
    ///
    /// # Errors
    /// [`AddedError::Save`]; the rule is then not added.
    pub fn add(&mut self, rule: AddedRule) -> Result<(), AddedError> {
        let same = |r: &AddedRule| {
            r.allow == rule.allow && r.executor == rule.executor && r.project == rule.project
        };
        if self.added.iter().any(same) {
            return Ok(());
        }
        let mut next = self.added.clone();
        next.push(rule);
        if next.len() > MAX_ADDED {
            let gone = next.remove(0);
            warn!(rule = %gone.allow, "the oldest rule a phone added was dropped: {MAX_ADDED} at most");
        }
        self.save(next)
    }

    /// Remove the rule numbered `n` (from 1, as [`AddedRules::list`]
    /// orders them), if it allows `allow` (what the asker listed under that
    /// number), and save the file; the removed rule.
    ///
    /// # Errors
    /// [`AddedError::NoSuchRule`], [`AddedError::Changed`],
    /// [`AddedError::Save`].
    pub fn remove(&mut self, n: usize, allow: &str) -> Result<AddedRule, AddedError> {
        if n == 0 || n > self.added.len() {
            return Err(AddedError::NoSuchRule(n));
        }
        if self.added.get(n - 1).is_none_or(|r| r.allow != allow) {
            return Err(AddedError::Changed(n));
        }
        let mut next = self.added.clone();
        let gone = next.remove(n - 1);
        self.save(next)?;
        Ok(gone)
    }

    fn save(&mut self, next: Vec<AddedRule>) -> Result<(), AddedError> {
        if let Some(path) = &self.path {
            let file = File { v: 1, rules: next.clone() };
            let bytes = serde_json::to_vec_pretty(&file).unwrap_or_default();
            let dir = path.parent().unwrap_or(Path::new("."));
            crate::keystore::write_private(
                dir,
                FILE_NAME,
                &bytes,
                crate::keystore::Overwrite::Replace,
            )
            .map_err(|source| AddedError::Save { path: path.clone(), source })?;
        }
        self.added = next;
        self.compile();
        Ok(())
    }
}

/// Longest pattern a phone may add (it is shown in `approval_resolved.rule`).
pub const MAX_PATTERN: usize = 2048;

/// The tools a rule from a phone can name, and the input fields each may
/// carry: a rule names the tool and its subject (the command, the file, the
/// URL), so only tools whose every other field is harmless to repeat are
/// taken. Any other field (`run_in_background`, `dangerouslyDisableSandbox`,
/// an MCP tool's repository or branch), an input that is not a JSON object
/// (one the desktop cut because it was too large), or another tool makes no
/// rule. For an edit the subject is the file: the rule allows any change to
/// it.
const NARROW: &[(&str, &[&str])] = &[
    ("Bash", &["command", "description", "timeout"]),
    ("Edit", &["file_path", "old_string", "new_string", "replace_all"]),
    ("MultiEdit", &["file_path", "edits"]),
    ("Write", &["file_path", "content"]),
    ("NotebookEdit", &["notebook_path", "new_source", "cell_id", "cell_type", "edit_mode"]),
    ("Read", &["file_path", "offset", "limit"]),
    ("WebFetch", &["url", "prompt"]),
];

/// The subject of `tool` when a rule from a phone can stand for it: a known
/// tool ([`NARROW`]) whose input is an object with only the fields it
/// allows, and a subject field among them.
#[must_use]
pub fn narrow_subject(tool: &ToolUse) -> Option<&str> {
    let (_, fields) = NARROW.iter().find(|(name, _)| *name == tool.name)?;
    let input = tool.input.as_object()?;
    if input.keys().any(|k| !fields.contains(&k.as_str())) {
        return None;
    }
    ["command", "file_path", "notebook_path", "url"]
        .iter()
        .find_map(|f| input.get(*f).and_then(serde_json::Value::as_str))
}

/// The pattern that allows exactly `tool` again (`Name(subject)`, glob
/// characters escaped), for the task `cx` describes; `None` when no narrow
/// rule can stand for it ([`narrow_subject`]), a path has a `..`, or the
/// pattern is over [`MAX_PATTERN`] bytes.
#[must_use]
pub fn pattern_for(tool: &ToolUse, cx: &Context<'_>) -> Option<String> {
    narrow_subject(tool)?;
    let subject = super::subject(&tool.input, cx.workdir)?;
    let pattern = format!("{}({})", escape(&tool.name), escape(&subject));
    if pattern.len() > MAX_PATTERN || pattern.chars().any(char::is_control) {
        return None;
    }
    // It must compile, and match the use it came from.
    let mut probe = Rule::new(RuleConfig {
        allow: Some(pattern.clone()),
        deny: None,
        executor: None,
        project: None,
        device: None,
    })
    .ok()?;
    probe.narrow = true;
    probe.matches(tool, cx).then_some(pattern)
}

/// `s` as a glob that matches only itself.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\' | '!') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cx(workdir: Option<&Path>) -> Context<'_> {
        Context { executor: "claude", project: Some("app"), device: "DEV", workdir }
    }

    #[test]
    fn a_remembered_pattern_matches_its_use_and_nothing_wider() {
        let c = cx(Some(Path::new("/p")));
        let t = ToolUse { name: "Bash".into(), input: json!({"command": "cargo test *[a]?"}) };
        let p = pattern_for(&t, &c).unwrap();
        assert_eq!(p, r"Bash(cargo test \*\[a\]\?)");
        let r = Rule::new(RuleConfig {
            allow: Some(p),
            deny: None,
            executor: None,
            project: None,
            device: None,
        })
        .unwrap();
        assert!(r.matches(&t, &c));
        let other = ToolUse { name: "Bash".into(), input: json!({"command": "cargo test x[a]y"}) };
        assert!(!r.matches(&other, &c));
        let edit = ToolUse { name: "Edit".into(), input: json!({"file_path": "/p/src/a.rs"}) };
        assert_eq!(pattern_for(&edit, &c).unwrap(), "Edit(src/a.rs)");
        let up = ToolUse { name: "Edit".into(), input: json!({"file_path": "/p/../etc/x"}) };
        assert_eq!(pattern_for(&up, &c), None);
        let odd = ToolUse { name: "a(b)".into(), input: json!({}) };
        assert_eq!(pattern_for(&odd, &c), None);
    }

    /// Review findings: no rule from a phone is wider than its step.
    #[test]
    fn no_rule_is_made_wider_than_the_step() {
        let c = cx(Some(Path::new("/p")));
        let none = |name: &str, input: serde_json::Value| {
            pattern_for(&ToolUse { name: name.into(), input }, &c)
        };
        // An input lost to the size cap, none at all, or an unknown tool.
        assert_eq!(none("Other", serde_json::Value::Null), None);
        let pad = "x".repeat(20 * 1024);
        let capped = crate::executor::cap_json(json!({"command": format!("echo {pad}")}));
        assert_eq!(none("Bash", capped), None);
        // Fields besides the subject that change what the step does.
        assert_eq!(none("Bash", json!({"command": "ls", "dangerouslyDisableSandbox": true})), None);
        assert_eq!(none("Bash", json!({"command": "ls", "run_in_background": true})), None);
        let mcp = json!({"repo": "sandbox", "path": "README.md", "content": "x"});
        assert_eq!(none("mcp__github__create_or_update_file", mcp), None);
        // Too long to show with the decision.
        let long = "line\n".repeat(1000);
        assert_eq!(none("Bash", json!({"command": format!("cat <<EOF\n{long}EOF")})), None);
        // A rule made matches a later step only with the same fields allowed.
        let seen =
            ToolUse { name: "Bash".into(), input: json!({"command": "ls", "description": "d"}) };
        let rule = AddedRule {
            allow: pattern_for(&seen, &c).unwrap(),
            executor: "claude".into(),
            project: Some("app".into()),
            added_by: "DEV".into(),
            added_ms: 1,
        }
        .rule()
        .unwrap();
        assert!(rule.matches(&seen, &c));
        let wider = ToolUse {
            name: "Bash".into(),
            input: json!({"command": "ls", "dangerouslyDisableSandbox": true}),
        };
        assert!(!rule.matches(&wider, &c), "the same command with another field is asked");
    }

    /// A rule that cannot be saved (the data dir gone, a full disk) is not
    /// added: nothing applies that is not on disk.
    #[test]
    fn a_rule_that_cannot_be_saved_is_not_added() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        std::fs::create_dir(&gone).unwrap();
        let mut rules = AddedRules::open(&gone);
        std::fs::remove_dir(&gone).unwrap();
        let r = AddedRule {
            allow: "Bash(ls)".into(),
            executor: "claude".into(),
            project: None,
            added_by: "DEV".into(),
            added_ms: 1,
        };
        assert!(matches!(rules.add(r), Err(AddedError::Save { .. })));
        assert!(rules.list().is_empty() && rules.rules().is_empty());
    }

    /// A rule added from a task without a project is for such tasks only.
    #[test]
    fn a_rule_added_without_a_project_is_not_for_every_project() {
        let rule = AddedRule {
            allow: "Bash(make deploy)".into(),
            executor: "claude".into(),
            project: None,
            added_by: "DEV".into(),
            added_ms: 1,
        }
        .rule()
        .unwrap();
        let t = ToolUse { name: "Bash".into(), input: json!({"command": "make deploy"}) };
        let at = |project| Context { executor: "claude", project, device: "D", workdir: None };
        assert!(rule.matches(&t, &at(None)));
        assert!(!rule.matches(&t, &at(Some("payments"))));
    }

    #[test]
    fn added_rules_are_kept_listed_removed_and_a_damaged_file_gives_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut rules = AddedRules::open(dir.path());
        assert!(rules.list().is_empty());
        let r = AddedRule {
            allow: "Bash(cargo test)".into(),
            executor: "claude".into(),
            project: Some("app".into()),
            added_by: "DEV".into(),
            added_ms: 1,
        };
        rules.add(r.clone()).unwrap();
        rules.add(r.clone()).unwrap();
        assert_eq!(rules.list().len(), 1, "an equal rule is not added twice");
        let again = AddedRules::open(dir.path());
        assert_eq!(again.list(), std::slice::from_ref(&r));
        let t = ToolUse { name: "Bash".into(), input: json!({"command": "cargo test"}) };
        assert!(super::super::decide(again.rules(), &t, &cx(None)).is_some());
        let other = Context { executor: "acp", ..cx(None) };
        assert!(super::super::decide(again.rules(), &t, &other).is_none(), "its executor only");
        let mut again = again;
        assert!(matches!(again.remove(2, &r.allow), Err(AddedError::NoSuchRule(2))));
        assert!(matches!(again.remove(1, "Bash(other)"), Err(AddedError::Changed(1))));
        assert_eq!(again.remove(1, &r.allow).unwrap(), r);
        assert!(AddedRules::open(dir.path()).list().is_empty());
        std::fs::write(dir.path().join(FILE_NAME), b"{ not json").unwrap();
        assert!(AddedRules::open(dir.path()).list().is_empty());
        assert!(!dir.path().join(FILE_NAME).exists(), "the damaged file is moved aside");
    }
}
