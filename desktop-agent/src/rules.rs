//! Approval rules: the desktop user's standing answers to approvals, applied
//! on the desktop before a phone is asked. Each rule allows or denies the
//! tool uses its pattern matches, optionally only for one executor, one
//! project or one device; a deny rule wins over an allow rule. A decision
//! made by a rule is still shown in the thread (the request, then its
//! resolution `by: "rule:allow Bash(cargo test*)"`) and audited like a
//! phone's.
//!
//! ```toml
//! [[rule]]
//! allow = "Bash(cargo test*)"   # a tool name, or Name(glob over its subject)
//! executor = "claude"           # optional: only for this executor
//!
//! [[rule]]
//! deny = "Bash(rm *)"
//!
//! [[rule]]
//! allow = "Edit(src/**)"        # paths inside the task's project are relative to it
//! project = "tandem"            # optional: only for tasks in this project
//! device = "ABCD1234"           # optional: a device id or a prefix of it
//! ```
//!
//! A pattern is `Name` (any use of that tool) or `Name(glob)`; both parts
//! are globs (`*` any text, `?` one character, `**` any path, `[ab]` a
//! class). The glob is matched against the tool use's subject: the first of
//! its input's `command`, `file_path`, `path`, `notebook_path`, `url` or
//! `pattern` string fields (a path inside the task's working directory made
//! relative to it; a path with a `..` component matches no glob), else its
//! input as compact JSON. A glob does not follow symbolic links: `src/**`
//! allows an edit through a link in `src` to anywhere it points. An approval whose
//! executor does not say which tool it is for (a `command` or `jsonl`
//! executor that gives none) matches no rule: a phone decides it. An ACP
//! agent's tool call is named by its kind ([`acp_tool_name`]: `execute` is
//! `Bash`, `edit` is `Edit`, …) and matched on its raw input.

use std::path::Path;

pub mod added;

use globset::{Glob, GlobBuilder, GlobMatcher};
use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

/// Why a rule cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RuleError {
    /// Neither `allow` nor `deny`, or both.
    #[error("a rule has exactly one of `allow` and `deny`")]
    Action,
    /// The pattern is not `Name` or `Name(glob)`, or a glob is invalid.
    #[error("bad pattern {pattern:?}: {why}")]
    Pattern {
        /// The pattern as written.
        pattern: String,
        /// What is wrong.
        why: String,
    },
}

/// A `[[rule]]` table as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Allow the tool uses this pattern matches.
    #[serde(default)]
    pub allow: Option<String>,
    /// Deny them.
    #[serde(default)]
    pub deny: Option<String>,
    /// Only for tasks run by this executor.
    #[serde(default)]
    pub executor: Option<String>,
    /// Only for tasks in this project.
    #[serde(default)]
    pub project: Option<String>,
    /// Only for tasks run for this device (its id, or a prefix of it).
    #[serde(default)]
    pub device: Option<String>,
}

/// A tool use an approval is for, as its executor reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolUse {
    /// The tool's name (`Bash`, `Edit`, `mcp__server__tool`, …).
    pub name: String,
    /// Its input.
    pub input: Value,
}

/// Where the approval comes from.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The task's executor.
    pub executor: &'a str,
    /// The task's project, if any.
    pub project: Option<&'a str>,
    /// The device the task runs for (base32 id).
    pub device: &'a str,
    /// The task's working directory, if known (paths under it match
    /// relative to it).
    pub workdir: Option<&'a Path>,
}

/// A rule ready to match.
#[derive(Debug, Clone)]
pub struct Rule {
    allow: bool,
    /// The pattern as written (shown in the thread and the audit log).
    text: String,
    name: GlobMatcher,
    subject: Option<GlobMatcher>,
    config: RuleConfig,
}

impl Rule {
    /// Compile a rule.
    ///
    /// # Errors
    /// [`RuleError`] for a rule with no or two actions, or a bad pattern.
    pub fn new(config: RuleConfig) -> Result<Self, RuleError> {
        let (allow, text) = match (&config.allow, &config.deny) {
            (Some(p), None) => (true, p.clone()),
            (None, Some(p)) => (false, p.clone()),
            _ => return Err(RuleError::Action),
        };
        let bad = |why: &str| RuleError::Pattern { pattern: text.clone(), why: why.to_owned() };
        let (name, subject) = match text.split_once('(') {
            Some((name, rest)) => {
                let glob = rest.strip_suffix(')').ok_or_else(|| bad("no closing parenthesis"))?;
                (name, Some(glob))
            }
            None => (text.as_str(), None),
        };
        if name.trim().is_empty() || name.contains(')') {
            return Err(bad("no tool name"));
        }
        let compile = |g: &str, sep: bool| {
            GlobBuilder::new(g)
                .literal_separator(sep)
                .backslash_escape(true)
                .build()
                .map(|g: Glob| g.compile_matcher())
                .map_err(|e| bad(&e.to_string()))
        };
        Ok(Self {
            allow,
            name: compile(name.trim(), false)?,
            subject: subject.map(|g| compile(g, false)).transpose()?,
            text: if allow { format!("allow {text}") } else { format!("deny {text}") },
            config,
        })
    }

    /// Whether it allows (else denies).
    #[must_use]
    pub fn allows(&self) -> bool {
        self.allow
    }

    /// `allow Bash(cargo test*)`: how the thread and the audit name it.
    #[must_use]
    pub fn text(&self) -> &str {
        &self.text
    }

    fn applies(&self, cx: &Context<'_>) -> bool {
        let c = &self.config;
        c.executor.as_deref().is_none_or(|e| e == cx.executor)
            && c.project.as_deref().is_none_or(|p| Some(p) == cx.project)
            && c.device.as_deref().is_none_or(|d| !d.is_empty() && cx.device.starts_with(d))
    }

    pub(crate) fn matches(&self, tool: &ToolUse, cx: &Context<'_>) -> bool {
        if !self.applies(cx) || !self.name.is_match(&tool.name) {
            return false;
        }
        match &self.subject {
            None => true,
            Some(glob) => subject(&tool.input, cx.workdir).is_some_and(|s| glob.is_match(s)),
        }
    }
}

/// The tool name an ACP agent's tool call of `kind` matches in rules:
/// `execute` is `Bash`, `edit` `Edit`, `read` `Read`, `delete` `Delete`,
/// `move` `Move`, `search` `Search`, `fetch` `Fetch`, `think` `Think`, any
/// other (or none) `Other`.
#[must_use]
pub fn acp_tool_name(kind: Option<&str>) -> String {
    match kind {
        Some("execute") => "Bash",
        Some("edit") => "Edit",
        Some("read") => "Read",
        Some("delete") => "Delete",
        Some("move") => "Move",
        Some("search") => "Search",
        Some("fetch") => "Fetch",
        Some("think") => "Think",
        _ => "Other",
    }
    .to_owned()
}

/// The rule that decides `tool` here, if one does: the first deny rule that
/// matches, else the first allow rule.
#[must_use]
pub fn decide<'r>(rules: &'r [Rule], tool: &ToolUse, cx: &Context<'_>) -> Option<&'r Rule> {
    let mut allowed = None;
    for r in rules.iter().filter(|r| r.matches(tool, cx)) {
        if !r.allow {
            return Some(r);
        }
        allowed = allowed.or(Some(r));
    }
    allowed
}

/// Compile every rule of a configuration.
///
/// # Errors
/// The first rule that cannot be used, with its position (from 1).
pub fn compile(configs: &[RuleConfig]) -> Result<Vec<Rule>, (usize, RuleError)> {
    configs.iter().enumerate().map(|(i, c)| Rule::new(c.clone()).map_err(|e| (i + 1, e))).collect()
}

/// The text a rule's glob is matched against (module documentation);
/// `None` for a path with a `..` component, which no glob matches (it could
/// leave the directory the glob names).
pub(crate) fn subject(input: &Value, workdir: Option<&Path>) -> Option<String> {
    const FIELDS: [&str; 6] = ["command", "file_path", "path", "notebook_path", "url", "pattern"];
    let Some((name, field)) =
        FIELDS.iter().find_map(|f| input.get(f).and_then(Value::as_str).map(|v| (*f, v)))
    else {
        return Some(serde_json::to_string(input).unwrap_or_default());
    };
    if !matches!(name, "file_path" | "path" | "notebook_path") {
        return Some(field.to_owned());
    }
    let path = Path::new(field);
    if path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return None;
    }
    // A path inside the working directory, relative to it.
    Some(match workdir.map(|dir| path.strip_prefix(dir)) {
        Some(Ok(rel)) if !rel.as_os_str().is_empty() => rel.display().to_string(),
        _ => field.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rule(action: &str, pattern: &str) -> Rule {
        let mut c =
            RuleConfig { allow: None, deny: None, executor: None, project: None, device: None };
        if action == "allow" {
            c.allow = Some(pattern.into());
        } else {
            c.deny = Some(pattern.into());
        }
        Rule::new(c).unwrap()
    }

    fn tool(name: &str, input: Value) -> ToolUse {
        ToolUse { name: name.into(), input }
    }

    const CX: Context<'static> =
        Context { executor: "claude", project: Some("tandem"), device: "ABCDEFGH", workdir: None };

    #[test]
    fn names_and_subjects_match_as_globs() {
        let r = rule("allow", "Bash(cargo test*)");
        assert!(r.matches(&tool("Bash", json!({"command": "cargo test -p x"})), &CX));
        assert!(!r.matches(&tool("Bash", json!({"command": "cargo build"})), &CX));
        assert!(!r.matches(&tool("Bashful", json!({"command": "cargo test"})), &CX));
        let any_read = rule("allow", "Read");
        assert!(any_read.matches(&tool("Read", json!({"file_path": "/etc/passwd"})), &CX));
        let mcp = rule("deny", "mcp__*");
        assert!(mcp.matches(&tool("mcp__github__push", json!({})), &CX));
        // No known field: the input as JSON.
        let json_rule = rule("allow", r#"Fetch(*"host":"docs.rs"*)"#);
        assert!(json_rule.matches(&tool("Fetch", json!({"host": "docs.rs"})), &CX));
    }

    #[test]
    fn paths_inside_the_project_match_relative_to_it_and_dot_dot_never_does() {
        let dir = Path::new("/home/me/src/tandem");
        let cx = Context { workdir: Some(dir), ..CX };
        let r = rule("allow", "Edit(src/**)");
        let edit = |p: &str| tool("Edit", json!({"file_path": p}));
        assert!(r.matches(&edit("/home/me/src/tandem/src/lib.rs"), &cx));
        assert!(r.matches(&edit("src/deep/a.rs"), &cx));
        assert!(!r.matches(&edit("/home/me/src/other/src/lib.rs"), &cx));
        assert!(!r.matches(&edit("/home/me/src/tandem/src/../../other/src/x"), &cx));
        assert!(!r.matches(&edit("src/../../etc/passwd"), &cx), "a relative path that leaves");
        assert!(!r.matches(&edit("/home/me/src/tandem/README.md"), &cx));
    }

    #[test]
    fn deny_wins_and_scoped_rules_apply_only_to_their_tasks() {
        let mut only_gemini = RuleConfig {
            allow: Some("Bash".into()),
            deny: None,
            executor: Some("gemini".into()),
            project: None,
            device: None,
        };
        let rules = vec![
            rule("allow", "Bash(*)"),
            rule("deny", "Bash(rm *)"),
            Rule::new(only_gemini.clone()).unwrap(),
        ];
        let rm = tool("Bash", json!({"command": "rm -rf /"}));
        assert!(!decide(&rules, &rm, &CX).unwrap().allows(), "deny wins, whatever the order");
        let ls = tool("Bash", json!({"command": "ls"}));
        assert_eq!(decide(&rules, &ls, &CX).unwrap().text(), "allow Bash(*)");
        assert!(decide(&rules[2..], &ls, &CX).is_none(), "another executor's rule");
        only_gemini.executor = None;
        only_gemini.device = Some("ABCD".into());
        assert!(Rule::new(only_gemini.clone()).unwrap().matches(&ls, &CX), "a device prefix");
        only_gemini.device = Some("ZZZZ".into());
        assert!(!Rule::new(only_gemini.clone()).unwrap().matches(&ls, &CX));
        only_gemini.device = None;
        only_gemini.project = Some("website".into());
        assert!(!Rule::new(only_gemini).unwrap().matches(&ls, &CX), "another project");
    }

    #[test]
    fn bad_rules_are_refused() {
        let c = |allow: Option<&str>, deny: Option<&str>| RuleConfig {
            allow: allow.map(Into::into),
            deny: deny.map(Into::into),
            executor: None,
            project: None,
            device: None,
        };
        assert_eq!(Rule::new(c(None, None)).unwrap_err(), RuleError::Action);
        assert_eq!(Rule::new(c(Some("A"), Some("B"))).unwrap_err(), RuleError::Action);
        for bad in ["Bash(unclosed", "(x)", "", "Bash([)"] {
            assert!(
                matches!(Rule::new(c(Some(bad), None)), Err(RuleError::Pattern { .. })),
                "{bad:?}"
            );
        }
    }
}
