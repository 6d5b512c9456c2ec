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

/// Claude Code options that would undo the pinning from an executor's
/// `args`: allow steps without asking (`--dangerously-skip-permissions`,
/// `--permission-mode`, `--allowedTools`, another permission prompt tool),
/// load settings, hooks or MCP servers (`--settings`, `--setting-sources`,
/// `--mcp-config`, plugins), or define subagents with their own permission
/// mode. Checked against Claude Code 2.1.332's `--help`.
pub const UNPINNING_OPTIONS: &[&str] = &[
    "--dangerously-skip-permissions",
    "--allow-dangerously-skip-permissions",
    "--permission-mode",
    "--permission-prompts",
    "--permission-prompt-tool",
    "--allowedTools",
    "--allowed-tools",
    "--settings",
    "--setting-sources",
    "--mcp-config",
    "--strict-mcp-config",
    "--agents",
    "--plugin-dir",
    "--plugin-url",
];

/// The first of `args` that would undo the pinning ([`UNPINNING_OPTIONS`],
/// also as `--option=value`), if any.
#[must_use]
pub fn unpinning_arg(args: &[String]) -> Option<&str> {
    args.iter().map(String::as_str).find(|a| {
        let name = a.split_once('=').map_or(*a, |(n, _)| n);
        UNPINNING_OPTIONS.contains(&name)
    })
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
    fn arguments_that_would_undo_the_pinning_are_found() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(unpinning_arg(&args(&["--model", "sonnet", "--verbose"])), None);
        assert_eq!(
            unpinning_arg(&args(&["--model", "x", "--dangerously-skip-permissions"])),
            Some("--dangerously-skip-permissions")
        );
        assert_eq!(
            unpinning_arg(&args(&["--permission-mode=bypassPermissions"])),
            Some("--permission-mode=bypassPermissions")
        );
        assert_eq!(unpinning_arg(&args(&["--settings", "{}"])), Some("--settings"));
        assert_eq!(unpinning_arg(&args(&["--allowedTools", "Bash"])), Some("--allowedTools"));
        // A value that merely looks like one is still an option: refused.
        assert_eq!(
            unpinning_arg(&args(&["--append-system-prompt", "--settings"])),
            Some("--settings")
        );
    }

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
