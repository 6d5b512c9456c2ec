//! What Claude Code may decide on its own: nothing, unless the desktop's
//! configuration says so.
//!
//! Claude Code reads settings from files: the user's (`~/.claude/settings.json`),
//! the repository's (`.claude/settings.json`) and the repository's local ones
//! (`.claude/settings.local.json`), plus MCP servers from `.mcp.json` and the
//! user's `~/.claude.json`. Those files can allow tools outright
//! (`permissions.allow`, `permissions.defaultMode`), run hooks (shell commands,
//! which can also answer a permission prompt themselves), bring their own
//! subagents, skills and commands, and start MCP servers. Any of them would
//! let a step run without the phone seeing an approval: a repository the
//! task works in, or a prompt injection that once wrote
//! `.claude/settings.local.json`, would have approve power.
//!
//! So every run is pinned: `--strict-mcp-config` (only the `--mcp-config`
//! Tandem passes, i.e. its permission tool) and `--setting-sources <list>`,
//! where the list is the executor's `setting_sources` from the desktop's
//! `config.toml`, empty by default. With an empty list Claude Code loads no
//! settings file at all (checked against the real CLI in
//! `tests/claude_code.rs`). Managed (administrator) settings still apply:
//! Claude Code always reads them, and only an administrator can write them.

use serde::{Deserialize, Serialize};

/// `--setting-sources`: which settings files Claude Code loads.
pub const SETTING_SOURCES_FLAG: &str = "--setting-sources";

/// `--strict-mcp-config`: only the MCP servers of `--mcp-config`.
pub const STRICT_MCP_CONFIG_FLAG: &str = "--strict-mcp-config";

/// One kind of Claude Code settings file an executor may load
/// (`setting_sources` in `config.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SettingSource {
    /// The desktop user's own settings (`~/.claude/settings.json`, or
    /// `$CLAUDE_CONFIG_DIR/settings.json`).
    User,
    /// The repository's shared settings (`.claude/settings.json` in the
    /// working directory): whoever can commit to the repository writes them.
    Project,
    /// The repository's local settings (`.claude/settings.local.json`):
    /// anything that can write a file in the working directory writes them.
    Local,
}

impl SettingSource {
    /// The name Claude Code's `--setting-sources` takes.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            SettingSource::User => "user",
            SettingSource::Project => "project",
            SettingSource::Local => "local",
        }
    }
}

/// The arguments that pin a run: `--strict-mcp-config --setting-sources
/// <sources>`, the sources comma-separated, each once, in a fixed order
/// (an empty string when there are none).
pub(crate) fn pinning_args(sources: &[SettingSource]) -> [String; 3] {
    let mut sources = sources.to_vec();
    sources.sort_unstable();
    sources.dedup();
    let list: Vec<&str> = sources.iter().map(|s| s.as_str()).collect();
    [STRICT_MCP_CONFIG_FLAG.to_owned(), SETTING_SOURCES_FLAG.to_owned(), list.join(",")]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_source_by_default_and_each_once_in_order() {
        assert_eq!(pinning_args(&[]), ["--strict-mcp-config", "--setting-sources", ""]);
        assert_eq!(
            pinning_args(&[SettingSource::Local, SettingSource::User, SettingSource::Local]),
            ["--strict-mcp-config", "--setting-sources", "user,local"]
        );
        assert_eq!(
            pinning_args(&[SettingSource::Project]),
            ["--strict-mcp-config", "--setting-sources", "project"]
        );
    }
}
