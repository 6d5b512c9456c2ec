//! The agent's own small state file (`DATA_DIR/agent.json`): which relay
//! it uses and revocations the relay has not confirmed yet.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tandem_proto::DeviceId;
use thiserror::Error;

/// Why the state file could not be read or written.
#[derive(Debug, Error)]
pub enum AgentConfigError {
    /// Reading or writing failed.
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
        source: serde_json::Error,
    },
}

/// What the agent remembers between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// The relay's WebSocket URL (`wss://…/v1/connect`).
    #[serde(default)]
    pub relay_url: Option<String>,
    /// Extra root certificates (PEM) to trust for the relay.
    #[serde(default)]
    pub relay_roots_pem: Vec<String>,
    /// Devices revoked locally whose revocation the relay has not confirmed.
    #[serde(default)]
    pub pending_revokes: Vec<DeviceId>,
}

impl AgentConfig {
    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("agent.json")
    }

    /// Load, or the defaults when there is no file yet.
    ///
    /// # Errors
    /// [`AgentConfigError`] for an unreadable or invalid file.
    pub fn load(data_dir: &Path) -> Result<Self, AgentConfigError> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|source| AgentConfigError::Parse { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(AgentConfigError::Io { path, source }),
        }
    }

    /// Save atomically and durably, mode 0600 (a temporary file, fsync,
    /// rename, fsync of the directory): a pending revocation survives a
    /// crash right after this returns.
    ///
    /// # Errors
    /// [`AgentConfigError::Io`] when writing fails.
    pub fn save(&self, data_dir: &Path) -> Result<(), AgentConfigError> {
        let path = Self::path(data_dir);
        let io = |source| AgentConfigError::Io { path: path.clone(), source };
        crate::keystore::create_private_dir(data_dir).map_err(io)?;
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        crate::keystore::write_private(
            data_dir,
            "agent.json",
            &bytes,
            crate::keystore::Overwrite::Replace,
        )
        .map_err(io)
    }
}
