//! The agent's configuration file (TOML): the executors the user allows.
//! Nothing runs on this computer that is not listed here.
//!
//! ```toml
//! [[executor]]
//! name = "claude"
//! type = "command"          # or "jsonl"
//! program = "/usr/local/bin/my-agent"
//! args = ["--task", "{task}"]   # "{task}" is replaced by the task text as one argument
//! workdir = "/home/me/src"
//! ```
//!
//! The first executor is the default; a phone may name another. Projects
//! (`[[project]]`, `name` and an absolute `path`) are the working
//! directories a phone may pick for a task, the first the default; see
//! [`crate::projects`]. Approval rules (`[[rule]]`, `allow` or `deny` a
//! tool pattern, optionally for one executor, project or device) answer
//! approvals before a phone is asked; see [`crate::rules`]. A
//! `type = "claude"` executor runs Claude Code pinned so that only the phone
//! approves its steps; `setting_sources = ["user", "project", "local"]`
//! (any of them; none by default) lets it load those Claude Code settings
//! files, whose allow rules and hooks then act without asking (see
//! [`crate::claude`]).
//!
//! ```toml
//! [[executor]]
//! name = "claude"
//! type = "claude"
//! workdir = "/home/me/src"
//! setting_sources = ["user"]    # the desktop user's own ~/.claude/settings.json
//! ```
//!
//! A `type = "acp"` executor runs an agent that speaks the Agent Client
//! Protocol on stdio, with `workdir` as its project: its permission requests
//! go to the phone, its file requests stay inside `workdir` (see
//! [`crate::acp`]).
//!
//! ```toml
//! [[executor]]
//! name = "acp"
//! type = "acp"
//! program = "/usr/local/bin/claude-code-acp"
//! workdir = "/home/me/src"
//! ```
//!
//! ```toml
//! [agent]
//! max_concurrent_tasks = 1      # tasks running at once; the rest wait in order
//! approval_timeout_secs = 300   # an unanswered approval is denied after this
//! idle_detach_secs = 600        # a phone silent this long stops getting progress
//! max_tasks_kept = 500          # task histories kept on disk
//! max_unfinished_tasks = 100    # queued plus running; a submit beyond is refused (`queue_full`)
//! audit_max_bytes = 8388608     # audit.log is rotated to audit.log.<n> at this size
//! ephemeral_device_ttl_secs = 43200  # a "this page only" device gone this long is forgotten
//! unfinished_pairing_secs = 600 # a device whose pairing answer may not have arrived, likewise
//! session_renew_secs = 3600     # renew each phone's session (new keys) this often
//! session_renew_records = 50000 # … or after this many records under it
//! session_rekey_secs = 3600     # ratchet each sending key this often
//! resend_stale_secs = 120       # a record the relay holds this long, unacknowledged by a phone coming online, goes again
//! session_renewal_timeout_secs = 30  # give up on a renewal unanswered this long
//! outbox_max_messages = 100000  # messages kept for a phone newly paired until it acknowledges them
//! ```
//!
//! Each `[agent]` value can also be set with an environment variable
//! (`TANDEM_MAX_CONCURRENT_TASKS`, `TANDEM_APPROVAL_TIMEOUT_SECS`,
//! `TANDEM_IDLE_DETACH_SECS`, `TANDEM_MAX_TASKS_KEPT`, `TANDEM_MAX_UNFINISHED_TASKS`, `TANDEM_AUDIT_MAX_BYTES`,
//! `TANDEM_EPHEMERAL_DEVICE_TTL_SECS`, `TANDEM_UNFINISHED_PAIRING_SECS`,
//! `TANDEM_SESSION_RENEW_SECS`, `TANDEM_SESSION_RENEW_RECORDS`,
//! `TANDEM_SESSION_REKEY_SECS`, `TANDEM_SESSION_RENEWAL_TIMEOUT_SECS`,
//! `TANDEM_OUTBOX_MAX_MESSAGES`), which wins over the file. No value may be 0.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tandem_proto::upkeep::{
    DEFAULT_REKEY_AFTER_MS, DEFAULT_RENEW_AFTER_MS, DEFAULT_RENEW_AFTER_RECORDS,
    DEFAULT_RENEWAL_TIMEOUT_MS, Schedule,
};
use thiserror::Error;

use crate::executor::{ExecutorConfig, ExecutorKind};
use crate::projects::Project;

/// Why the configuration could not be read.
#[derive(Debug, Error)]
pub enum SettingsError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: toml::de::Error,
    },
    /// An environment variable holds no valid number.
    #[error("{name}={value:?} is not a valid number")]
    Env {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// A `claude` executor's `args` would let Claude Code decide without the
    /// phone (see [`crate::claude::pinning::UNPINNING_OPTIONS`]).
    #[error(
        "{path}: executor {name:?}: `{arg}` in args would let Claude Code run steps without \
         the phone's approval; Tandem sets these itself (use setting_sources to opt in to \
         settings files)"
    )]
    Unpinning {
        /// The file.
        path: PathBuf,
        /// The executor.
        name: String,
        /// The argument refused.
        arg: String,
    },
    /// A value is out of range.
    #[error("{path}: {field} must be at least 1")]
    Range {
        /// The file.
        path: PathBuf,
        /// The setting.
        field: &'static str,
    },
    /// More executors or projects than a phone can be told of, or an
    /// executor name that is too long.
    #[error("{path}: {what}")]
    TooMany {
        /// The file.
        path: PathBuf,
        /// What is over its bound.
        what: String,
    },
    /// Two executors share a name.
    #[error("{path}: two executors are called {name:?}")]
    DuplicateName {
        /// The file.
        path: PathBuf,
        /// The name.
        name: String,
    },
    /// A `[[rule]]` cannot be used as written.
    #[error("{path}: rule {index}: {source}")]
    Rule {
        /// The file.
        path: PathBuf,
        /// Its position among the rules (from 1).
        index: usize,
        /// What is wrong.
        source: crate::rules::RuleError,
    },
    /// A `[[project]]` cannot be used as written (or shares its name).
    #[error("{path}: project {name:?}: {why}")]
    Project {
        /// The file.
        path: PathBuf,
        /// The project.
        name: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// The most executors, and the most projects, a configuration may name.
pub const MAX_EXECUTORS: usize = 256;

/// The agent's settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The executors, in order of preference.
    #[serde(default, rename = "executor")]
    pub executors: Vec<ExecutorConfig>,
    /// The projects phones may pick, the default first ([`crate::projects`]).
    #[serde(default, rename = "project")]
    pub projects: Vec<Project>,
    /// Approval rules, applied before a phone is asked ([`crate::rules`]).
    #[serde(default, rename = "rule")]
    pub rules: Vec<crate::rules::RuleConfig>,
    /// How the agent runs tasks.
    #[serde(default)]
    pub agent: AgentSettings,
}

/// The `[agent]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSettings {
    /// Tasks whose executors run at the same time.
    pub max_concurrent_tasks: usize,
    /// Seconds an approval waits before it is denied.
    pub approval_timeout_secs: u64,
    /// Seconds of silence from a phone before it is detached.
    pub idle_detach_secs: u64,
    /// Task histories kept on disk.
    pub max_tasks_kept: usize,
    /// Unfinished tasks (queued plus running) at most: a submit beyond is
    /// refused with `queue_full`.
    pub max_unfinished_tasks: usize,
    /// Bytes after which `audit.log` is rotated (`audit.log.<n>`).
    pub audit_max_bytes: u64,
    /// Seconds an ephemeral device (a web page that keeps its keys only
    /// while it is open) may be gone (offline, nothing received) before the
    /// agent revokes it.
    pub ephemeral_device_ttl_secs: u64,
    /// Seconds after which a device whose pairing may not have finished
    /// (the agent stopped between saving it and answering it) and that was
    /// never heard from is revoked.
    pub unfinished_pairing_secs: u64,
    /// Seconds after which a phone's session is renewed (a new `KKpsk2`
    /// handshake, while both are online).
    pub session_renew_secs: u64,
    /// Records (sent plus received) after which a session is renewed.
    pub session_renew_records: u64,
    /// Seconds between two ratchets of a session's sending key.
    pub session_rekey_secs: u64,
    /// Seconds a renewal waits for the phone's answer before it is
    /// abandoned (also the least time between two renewals started here).
    pub session_renewal_timeout_secs: u64,
    /// Messages a phone's outbox keeps until the phone acknowledges them;
    /// past it the oldest are dropped and the phone is told they are lost
    /// (`ResyncNeeded`, PROTOCOL §13.1). Fixed in a link when it is paired.
    pub outbox_max_messages: usize,
    /// Seconds a record the relay stored may stay unacknowledged by a
    /// phone that comes online before it is sent again (the relay may have
    /// expired or lost it).
    pub resend_stale_secs: u64,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            max_concurrent_tasks: 1,
            approval_timeout_secs: 300,
            idle_detach_secs: 600,
            max_tasks_kept: crate::history::DEFAULT_MAX_TASKS,
            max_unfinished_tasks: crate::tasks::DEFAULT_MAX_UNFINISHED,
            audit_max_bytes: crate::audit::DEFAULT_MAX_SEGMENT_BYTES,
            ephemeral_device_ttl_secs: 12 * 3600,
            unfinished_pairing_secs: 600,
            session_renew_secs: DEFAULT_RENEW_AFTER_MS / 1000,
            session_renew_records: DEFAULT_RENEW_AFTER_RECORDS,
            session_rekey_secs: DEFAULT_REKEY_AFTER_MS / 1000,
            session_renewal_timeout_secs: DEFAULT_RENEWAL_TIMEOUT_MS / 1000,
            outbox_max_messages: tandem_proto::delivery::OutboxLimits::default().max_messages,
            resend_stale_secs: 120,
        }
    }
}

fn env_number<T: std::str::FromStr>(
    name: &'static str,
    get: &dyn Fn(&str) -> Option<String>,
    slot: &mut T,
) -> Result<(), SettingsError> {
    if let Some(value) = get(name) {
        *slot = value.trim().parse().map_err(|_| SettingsError::Env { name, value })?;
    }
    Ok(())
}

impl AgentSettings {
    /// Apply `TANDEM_*` overrides read through `get`.
    ///
    /// # Errors
    /// [`SettingsError::Env`] for a value that is not a number.
    pub fn apply_env(&mut self, get: &dyn Fn(&str) -> Option<String>) -> Result<(), SettingsError> {
        env_number("TANDEM_MAX_CONCURRENT_TASKS", get, &mut self.max_concurrent_tasks)?;
        env_number("TANDEM_APPROVAL_TIMEOUT_SECS", get, &mut self.approval_timeout_secs)?;
        env_number("TANDEM_IDLE_DETACH_SECS", get, &mut self.idle_detach_secs)?;
        env_number("TANDEM_MAX_TASKS_KEPT", get, &mut self.max_tasks_kept)?;
        env_number("TANDEM_MAX_UNFINISHED_TASKS", get, &mut self.max_unfinished_tasks)?;
        env_number("TANDEM_AUDIT_MAX_BYTES", get, &mut self.audit_max_bytes)?;
        env_number("TANDEM_EPHEMERAL_DEVICE_TTL_SECS", get, &mut self.ephemeral_device_ttl_secs)?;
        env_number("TANDEM_UNFINISHED_PAIRING_SECS", get, &mut self.unfinished_pairing_secs)?;
        env_number("TANDEM_SESSION_RENEW_SECS", get, &mut self.session_renew_secs)?;
        env_number("TANDEM_SESSION_RENEW_RECORDS", get, &mut self.session_renew_records)?;
        env_number("TANDEM_SESSION_REKEY_SECS", get, &mut self.session_rekey_secs)?;
        env_number(
            "TANDEM_SESSION_RENEWAL_TIMEOUT_SECS",
            get,
            &mut self.session_renewal_timeout_secs,
        )?;
        env_number("TANDEM_OUTBOX_MAX_MESSAGES", get, &mut self.outbox_max_messages)?;
        env_number("TANDEM_RESEND_STALE_SECS", get, &mut self.resend_stale_secs)?;
        Ok(())
    }

    /// The renewal and rekey schedule every paired phone's link runs
    /// (`docs/PROTOCOL.md` §10.6).
    #[must_use]
    pub fn schedule(&self) -> Schedule {
        Schedule {
            renew_after_ms: self.session_renew_secs.saturating_mul(1000),
            renew_after_records: self.session_renew_records,
            rekey_after_ms: self.session_rekey_secs.saturating_mul(1000),
            renewal_timeout_ms: self.session_renewal_timeout_secs.saturating_mul(1000),
        }
    }

    /// The first setting that is 0 where 0 means nothing sensible.
    fn zero_field(&self) -> Option<&'static str> {
        let counts = [
            ("max_concurrent_tasks", self.max_concurrent_tasks == 0),
            ("max_tasks_kept", self.max_tasks_kept == 0),
            ("max_unfinished_tasks", self.max_unfinished_tasks == 0),
            ("audit_max_bytes", self.audit_max_bytes == 0),
            ("ephemeral_device_ttl_secs", self.ephemeral_device_ttl_secs == 0),
            ("unfinished_pairing_secs", self.unfinished_pairing_secs == 0),
            ("session_renew_secs", self.session_renew_secs == 0),
            ("session_renew_records", self.session_renew_records == 0),
            ("session_rekey_secs", self.session_rekey_secs == 0),
            ("session_renewal_timeout_secs", self.session_renewal_timeout_secs == 0),
            ("outbox_max_messages", self.outbox_max_messages == 0),
            ("resend_stale_secs", self.resend_stale_secs == 0),
        ];
        counts.into_iter().find_map(|(field, zero)| zero.then_some(field))
    }
}

impl Settings {
    /// The default location: the platform's config directory, `tandem/config.toml`.
    #[must_use]
    pub fn default_path() -> Option<PathBuf> {
        dirs::config_dir().map(|d| d.join("tandem").join("config.toml"))
    }

    /// Load `path`; a missing file means no executors.
    ///
    /// # Errors
    /// [`SettingsError`] for an unreadable or invalid file.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let mut s = Self::load_file(path)?;
        s.agent.apply_env(&|name| std::env::var(name).ok())?;
        if let Some(field) = s.agent.zero_field() {
            return Err(SettingsError::Range { path: path.to_owned(), field });
        }
        Ok(s)
    }

    fn load_file(path: &Path) -> Result<Self, SettingsError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(SettingsError::Io { path: path.to_owned(), source }),
        };
        let s: Settings = toml::from_str(&text)
            .map_err(|source| SettingsError::Parse { path: path.to_owned(), source })?;
        // Bounded so that what a phone is told of them (`choices`) always
        // fits in one message.
        let too_many = |what: String| SettingsError::TooMany { path: path.to_owned(), what };
        if s.executors.len() > MAX_EXECUTORS {
            return Err(too_many(format!("at most {MAX_EXECUTORS} executors")));
        }
        if s.projects.len() > MAX_EXECUTORS {
            return Err(too_many(format!("at most {MAX_EXECUTORS} projects")));
        }
        if let Some(e) = s.executors.iter().find(|e| e.name.is_empty() || e.name.len() > 64) {
            return Err(too_many(format!("executor {:?}: a name is 1 to 64 bytes", e.name)));
        }
        let mut seen = std::collections::HashSet::new();
        for e in &s.executors {
            if !seen.insert(e.name.clone()) {
                return Err(SettingsError::DuplicateName {
                    path: path.to_owned(),
                    name: e.name.clone(),
                });
            }
            if let ExecutorKind::Claude { args, .. } = &e.kind
                && let Some(arg) = crate::claude::pinning::unpinning_arg(args)
            {
                return Err(SettingsError::Unpinning {
                    path: path.to_owned(),
                    name: e.name.clone(),
                    arg: arg.to_owned(),
                });
            }
        }
        if let Err((index, source)) = crate::rules::compile(&s.rules) {
            return Err(SettingsError::Rule { path: path.to_owned(), index, source });
        }
        let mut names = std::collections::HashSet::new();
        for p in &s.projects {
            let why = p.problem().or_else(|| {
                (!names.insert(p.name.clone())).then_some("two projects have this name")
            });
            if let Some(why) = why {
                return Err(SettingsError::Project {
                    path: path.to_owned(),
                    name: p.name.clone(),
                    why,
                });
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_table_and_env_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[agent]\nmax_concurrent_tasks = 3\nidle_detach_secs = 60\n")
            .unwrap();
        let mut s = Settings::load_file(&path).unwrap();
        assert_eq!(s.agent.max_concurrent_tasks, 3);
        assert_eq!(s.agent.idle_detach_secs, 60);
        assert_eq!(s.agent.approval_timeout_secs, 300);
        s.agent
            .apply_env(&|n| (n == "TANDEM_APPROVAL_TIMEOUT_SECS").then(|| "7".to_owned()))
            .unwrap();
        assert_eq!(s.agent.approval_timeout_secs, 7);
        let bad = s.agent.apply_env(&|n| (n == "TANDEM_IDLE_DETACH_SECS").then(|| "soon".into()));
        assert!(matches!(bad, Err(SettingsError::Env { name: "TANDEM_IDLE_DETACH_SECS", .. })));
    }

    #[test]
    fn an_acp_executor_is_read_from_toml() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let toml = "[[executor]]\nname = \"acp\"\ntype = \"acp\"\nprogram = \"claude-code-acp\"\n\
                    workdir = \"/src\"\n";
        std::fs::write(&path, toml).unwrap();
        let s = Settings::load_file(&path).unwrap();
        let [e] = s.executors.as_slice() else { panic!("{:?}", s.executors) };
        assert_eq!(
            e.kind,
            ExecutorKind::Acp {
                program: "claude-code-acp".into(),
                args: Vec::new(),
                session_meta: None
            }
        );
        assert_eq!(e.workdir.as_deref(), Some(Path::new("/src")));
    }

    #[test]
    fn device_expiry_settings_default_and_override() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[agent]\nunfinished_pairing_secs = 60\n").unwrap();
        let mut s = Settings::load_file(&path).unwrap();
        assert_eq!(s.agent.ephemeral_device_ttl_secs, 12 * 3600);
        assert_eq!(s.agent.unfinished_pairing_secs, 60);
        s.agent
            .apply_env(&|n| (n == "TANDEM_EPHEMERAL_DEVICE_TTL_SECS").then(|| "5".to_owned()))
            .unwrap();
        assert_eq!(s.agent.ephemeral_device_ttl_secs, 5);
        std::fs::write(&path, "[agent]\nephemeral_device_ttl_secs = 0\n").unwrap();
        assert!(matches!(
            Settings::load(&path),
            Err(SettingsError::Range { field: "ephemeral_device_ttl_secs", .. })
        ));
    }

    #[test]
    fn outbox_bound_defaults_overrides_and_refuses_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[agent]\noutbox_max_messages = 50\n").unwrap();
        let mut s = Settings::load_file(&path).unwrap();
        assert_eq!(s.agent.outbox_max_messages, 50);
        assert_eq!(AgentSettings::default().outbox_max_messages, 100_000);
        s.agent
            .apply_env(&|n| (n == "TANDEM_OUTBOX_MAX_MESSAGES").then(|| "8".to_owned()))
            .unwrap();
        assert_eq!(s.agent.outbox_max_messages, 8);
        std::fs::write(&path, "[agent]\noutbox_max_messages = 0\n").unwrap();
        assert!(matches!(
            Settings::load(&path),
            Err(SettingsError::Range { field: "outbox_max_messages", .. })
        ));
    }

    #[test]
    fn unknown_agent_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[agent]\nmax_concurent_tasks = 3\n").unwrap();
        assert!(matches!(Settings::load_file(&path), Err(SettingsError::Parse { .. })));
        std::fs::write(&path, "[agent]\nmax_concurrent_tasks = 0\n").unwrap();
        assert!(matches!(Settings::load(&path), Err(SettingsError::Range { .. })));
    }

    #[test]
    fn claude_args_that_would_bypass_the_phone_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let write = |args: &str| {
            std::fs::write(
                &path,
                format!("[[executor]]\nname = \"claude\"\ntype = \"claude\"\nargs = {args}\n"),
            )
            .unwrap();
        };
        write(r#"["--model", "sonnet"]"#);
        assert!(Settings::load_file(&path).is_ok());
        for bad in [
            r#"["--dangerously-skip-permissions"]"#,
            r#"["--permission-mode", "bypassPermissions"]"#,
            r#"["--settings={\"permissions\":{}}"]"#,
            r#"["--mcp-config", "other.json"]"#,
        ] {
            write(bad);
            let e = Settings::load_file(&path).unwrap_err();
            assert!(matches!(e, SettingsError::Unpinning { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("without the phone's approval"), "{e}");
        }
    }

    #[test]
    fn the_session_schedule_comes_from_the_agent_table_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        // The defaults are the protocol's.
        assert_eq!(AgentSettings::default().schedule(), Schedule::default());
        std::fs::write(
            &path,
            "[agent]\nsession_renew_secs = 600\nsession_renew_records = 1000\n\
             session_rekey_secs = 60\nsession_renewal_timeout_secs = 5\n",
        )
        .unwrap();
        let mut s = Settings::load_file(&path).unwrap();
        let want = Schedule {
            renew_after_ms: 600_000,
            renew_after_records: 1000,
            rekey_after_ms: 60_000,
            renewal_timeout_ms: 5_000,
        };
        assert_eq!(s.agent.schedule(), want);
        s.agent
            .apply_env(&|n| match n {
                "TANDEM_SESSION_RENEW_SECS" => Some("3".into()),
                "TANDEM_SESSION_REKEY_SECS" => Some(" 1 ".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(s.agent.schedule().renew_after_ms, 3_000);
        assert_eq!(s.agent.schedule().rekey_after_ms, 1_000);
        assert_eq!(s.agent.schedule().renewal_timeout_ms, 5_000);
        let bad =
            s.agent.apply_env(&|n| (n == "TANDEM_SESSION_RENEW_RECORDS").then(|| "-1".into()));
        assert!(matches!(
            bad,
            Err(SettingsError::Env { name: "TANDEM_SESSION_RENEW_RECORDS", .. })
        ));
    }

    #[test]
    fn a_zero_session_setting_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        for field in [
            "session_renew_secs",
            "session_renew_records",
            "session_rekey_secs",
            "session_renewal_timeout_secs",
        ] {
            std::fs::write(&path, format!("[agent]\n{field} = 0\n")).unwrap();
            match Settings::load(&path) {
                Err(SettingsError::Range { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field} = 0 was accepted: {other:?}"),
            }
        }
    }
}
