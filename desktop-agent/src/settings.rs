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
//! The first executor is the default; a phone may name another.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::executor::ExecutorConfig;

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
    /// Two executors share a name.
    #[error("{path}: two executors are called {name:?}")]
    DuplicateName {
        /// The file.
        path: PathBuf,
        /// The name.
        name: String,
    },
}

/// The agent's settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The executors, in order of preference.
    #[serde(default, rename = "executor")]
    pub executors: Vec<ExecutorConfig>,
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
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(SettingsError::Io { path: path.to_owned(), source }),
        };
        let s: Settings = toml::from_str(&text)
            .map_err(|source| SettingsError::Parse { path: path.to_owned(), source })?;
        let mut seen = std::collections::HashSet::new();
        for e in &s.executors {
            if !seen.insert(e.name.clone()) {
                return Err(SettingsError::DuplicateName {
                    path: path.to_owned(),
                    name: e.name.clone(),
                });
            }
        }
        Ok(s)
    }
}
