//! Projects: named working directories from the configuration file, one of
//! which a phone picks for a task (`task_submit.workspace`). A task runs in
//! its project's directory whatever executor runs it; without projects,
//! each executor runs in its own `workdir`.
//!
//! ```toml
//! [[project]]
//! name = "tandem"               # what phones see and pick (the path is not sent)
//! path = "/home/me/src/tandem"  # absolute
//! ```
//!
//! The first project is the default for a task that names none.

use std::path::PathBuf;

use serde::Deserialize;
use tandem_proto::message::{ExecutorChoice, Message, ProjectChoice};

use crate::executor::{ExecutorConfig, ExecutorKind};

/// Longest project name, in bytes.
pub const MAX_PROJECT_NAME: usize = 64;

/// A `[[project]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Project {
    /// Its name: 1 to [`MAX_PROJECT_NAME`] bytes, no control characters.
    pub name: String,
    /// Its directory (absolute).
    pub path: PathBuf,
}

impl Project {
    /// Why this project cannot be used as configured, if it cannot.
    #[must_use]
    pub fn problem(&self) -> Option<&'static str> {
        if self.name.trim().is_empty() || self.name.len() > MAX_PROJECT_NAME {
            return Some("a project name is 1 to 64 bytes");
        }
        if self.name.chars().any(char::is_control) {
            return Some("a project name has no control characters");
        }
        if !self.path.is_absolute() {
            return Some("a project's path must be absolute");
        }
        None
    }
}

/// The configured project called `name`.
#[must_use]
pub fn find<'a>(projects: &'a [Project], name: &str) -> Option<&'a Project> {
    projects.iter().find(|p| p.name == name)
}

/// `config` to run in `project`'s directory (as configured when there is
/// no project).
#[must_use]
pub fn in_project(config: &ExecutorConfig, project: Option<&Project>) -> ExecutorConfig {
    let mut config = config.clone();
    if let Some(p) = project {
        config.workdir = Some(p.path.clone());
    }
    config
}

/// What a phone may pick: every executor and project, the defaults first.
#[must_use]
pub fn choices(executors: &[ExecutorConfig], projects: &[Project]) -> Message {
    Message::Choices {
        executors: executors
            .iter()
            .map(|e| ExecutorChoice { name: e.name.clone(), kind: kind_name(&e.kind) })
            .collect(),
        projects: projects.iter().map(|p| ProjectChoice { name: p.name.clone() }).collect(),
        default_executor: executors.first().map(|e| e.name.clone()).unwrap_or_default(),
        default_project: projects.first().map(|p| p.name.clone()),
    }
}

/// An executor kind's name in the configuration file (its `type`).
#[must_use]
pub fn kind_name(kind: &ExecutorKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.get("type")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(name: &str, path: &str) -> Project {
        Project { name: name.into(), path: path.into() }
    }

    #[test]
    fn names_and_paths_are_checked() {
        assert_eq!(project("tandem", "/src/tandem").problem(), None);
        assert!(project("", "/src").problem().is_some());
        assert!(project("   ", "/src").problem().is_some());
        assert!(project(&"x".repeat(65), "/src").problem().is_some());
        assert!(project("a\u{7}b", "/src").problem().is_some());
        assert!(project("rel", "src/tandem").problem().is_some());
    }

    #[test]
    fn a_project_sets_the_working_directory_and_none_keeps_the_executors() {
        let config: ExecutorConfig = serde_json::from_str(
            r#"{"name":"e","type":"command","program":"pwd","workdir":"/tmp"}"#,
        )
        .unwrap();
        let p = project("p", "/srv/p");
        assert_eq!(in_project(&config, Some(&p)).workdir, Some(PathBuf::from("/srv/p")));
        assert_eq!(in_project(&config, None).workdir, Some(PathBuf::from("/tmp")));
        let Message::Choices { executors, projects, default_executor, default_project } =
            choices(std::slice::from_ref(&config), &[p, project("q", "/srv/q")])
        else {
            panic!("choices")
        };
        assert_eq!(executors, [ExecutorChoice { name: "e".into(), kind: "command".into() }]);
        assert_eq!(projects.len(), 2);
        assert_eq!(default_executor, "e");
        assert_eq!(default_project.as_deref(), Some("p"));
    }
}
