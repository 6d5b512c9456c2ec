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
        Rule::new(RuleConfig {
            allow: Some(self.allow.clone()),
            deny: None,
            executor: Some(self.executor.clone()),
            project: self.project.clone(),
            device: None,
        })
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
            next.remove(0);
        }
        self.save(next)
    }

    /// Remove the rule numbered `n` (from 1, as [`AddedRules::list`]
    /// orders them) and save the file; the removed rule.
    ///
    /// # Errors
    /// [`AddedError::NoSuchRule`], [`AddedError::Save`].
    pub fn remove(&mut self, n: usize) -> Result<AddedRule, AddedError> {
        if n == 0 || n > self.added.len() {
            return Err(AddedError::NoSuchRule(n));
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

/// The pattern that allows exactly `tool` again (`Name(subject)`, glob
/// characters escaped), for the task `cx` describes; `None` when no rule
/// can name it (a tool name with parentheses, a path with `..`).
#[must_use]
pub fn pattern_for(tool: &ToolUse, cx: &Context<'_>) -> Option<String> {
    let name = tool.name.trim();
    if name.is_empty() || name.contains(['(', ')']) || name.chars().any(char::is_control) {
        return None;
    }
    let subject = super::subject(&tool.input, cx.workdir)?;
    let pattern = format!("{}({})", escape(name), escape(&subject));
    // It must compile, and match the use it came from.
    let probe = Rule::new(RuleConfig {
        allow: Some(pattern.clone()),
        deny: None,
        executor: None,
        project: None,
        device: None,
    })
    .ok()?;
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
        assert!(matches!(again.remove(2), Err(AddedError::NoSuchRule(2))));
        assert_eq!(again.remove(1).unwrap(), r);
        assert!(AddedRules::open(dir.path()).list().is_empty());
        std::fs::write(dir.path().join(FILE_NAME), b"{ not json").unwrap();
        assert!(AddedRules::open(dir.path()).list().is_empty());
        assert!(!dir.path().join(FILE_NAME).exists(), "the damaged file is moved aside");
    }
}
