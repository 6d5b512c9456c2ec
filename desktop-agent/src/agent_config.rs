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

    /// A device paired again is no longer revoked: drop `id` from
    /// `pending_revokes`, durably, before its new pairing is saved (the
    /// revocation must neither reach the relay after the new pairing's route
    /// was authorised nor be taken for one a crash interrupted, see
    /// [`Self::finish_revocations`]).
    ///
    /// # Errors
    /// [`AgentConfigError`] when the file cannot be read or written.
    pub fn forget_revocation(data_dir: &Path, id: &DeviceId) -> Result<(), AgentConfigError> {
        let mut config = Self::load(data_dir)?;
        if !config.pending_revokes.contains(id) {
            return Ok(());
        }
        config.pending_revokes.retain(|p| p != id);
        config.save(data_dir)
    }

    /// Finish the revocations a crash interrupted. A revocation writes the
    /// device into `pending_revokes` first and deletes its peer file second,
    /// and a device paired again leaves the list before its new file is
    /// written ([`Self::forget_revocation`]): so a listed device whose peer
    /// file is still there was being revoked when the process died (or the
    /// file came back from a backup). Its file is deleted now. Returns the
    /// devices whose files were deleted.
    ///
    /// # Errors
    /// [`AgentConfigError`] when the state file cannot be read or a peer
    /// file cannot be deleted.
    pub fn finish_revocations(data_dir: &Path) -> Result<Vec<DeviceId>, AgentConfigError> {
        let config = Self::load(data_dir)?;
        let peers = data_dir.join(crate::peers::PEERS_DIR_NAME);
        let mut done = Vec::new();
        for id in &config.pending_revokes {
            let path = peers.join(format!("{id}.json"));
            match std::fs::remove_file(&path) {
                Ok(()) => done.push(*id),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(AgentConfigError::Io { path, source }),
            }
        }
        if !done.is_empty() {
            crate::keystore::sync_dir(&peers)
                .map_err(|source| AgentConfigError::Io { path: peers.clone(), source })?;
        }
        Ok(done)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> DeviceId {
        DeviceId([n; 16])
    }

    #[test]
    fn an_interrupted_revocation_is_finished_and_a_device_paired_again_is_not_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let peers = dir.path().join(crate::peers::PEERS_DIR_NAME);
        std::fs::create_dir_all(&peers).unwrap();
        for n in [1, 2, 3] {
            std::fs::write(peers.join(format!("{}.json", id(n))), b"{}").unwrap();
        }
        // 1: revoked, killed before its file went; 2: revoked, then paired
        // again; 4: revoked, file gone, the relay not told yet.
        let config =
            AgentConfig { pending_revokes: vec![id(1), id(2), id(4)], ..AgentConfig::default() };
        config.save(dir.path()).unwrap();
        AgentConfig::forget_revocation(dir.path(), &id(2)).unwrap();
        assert_eq!(AgentConfig::finish_revocations(dir.path()).unwrap(), [id(1)]);
        assert!(!peers.join(format!("{}.json", id(1))).exists());
        assert!(peers.join(format!("{}.json", id(2))).exists());
        assert!(peers.join(format!("{}.json", id(3))).exists());
        // The relay is still to be told about 1 and 4.
        assert_eq!(AgentConfig::load(dir.path()).unwrap().pending_revokes, [id(1), id(4)]);
        assert!(AgentConfig::finish_revocations(dir.path()).unwrap().is_empty());
        // Nothing to do without a state file.
        let empty = tempfile::tempdir().unwrap();
        assert!(AgentConfig::finish_revocations(empty.path()).unwrap().is_empty());
        AgentConfig::forget_revocation(empty.path(), &id(1)).unwrap();
        assert!(!empty.path().join("agent.json").exists());
    }
}
