//! Damaged local state is set aside, never a reason not to start.
//!
//! A file the agent cannot read (a partial audit-log line, a peer file that
//! does not parse, a task database redb cannot open) is moved next to where
//! it was, renamed `<name>.damaged-<unix ms>` ([`aside_path`]), and the
//! agent starts without it. What was set aside is said three ways: a line on
//! the agent's standard error, `set_aside` in `tandem status` (for the
//! daemon's own start), and a `set_aside` entry in the audit log. The
//! moved file is kept as it was (evidence, or something to recover by
//! hand); nothing ever deletes it.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::audit::AuditEvent;

/// Suffix (before the time) of a file set aside: `<name>.damaged-<ms>`.
pub const DAMAGED_SUFFIX: &str = ".damaged-";

/// One damaged file (or the damaged part of one) that was set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    /// The file that was damaged, as it is named in the data directory
    /// (`audit.log`, `peers/<device id>.json`, `tasks.redb`).
    pub file: String,
    /// Where its damaged contents are now (a full path).
    pub moved_to: PathBuf,
    /// What was wrong, for a person.
    pub reason: String,
    /// What it means, for a person (`that device must pair again`, …).
    pub consequence: String,
}

impl SetAside {
    /// One line for the agent's output.
    #[must_use]
    pub fn describe(&self) -> String {
        format!(
            "warning: {} was damaged ({}); set aside as {}; {}",
            self.file,
            crate::text::one_line(&self.reason),
            self.moved_to.display(),
            self.consequence
        )
    }

    /// The `tandem status` member for it.
    #[must_use]
    pub fn to_json(&self) -> Value {
        json!({
            "file": self.file,
            "moved_to": self.moved_to.display().to_string(),
            "reason": self.reason,
            "consequence": self.consequence,
        })
    }

    /// The audit entry that records it.
    #[must_use]
    pub fn audit_event(&self) -> AuditEvent {
        AuditEvent::SetAside {
            file: self.file.clone(),
            moved_to: self
                .moved_to
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            reason: crate::text::one_line(&self.reason),
        }
    }
}

/// Where `path` goes when it is set aside at `now_ms`: the same directory,
/// `<name>.damaged-<now_ms>` (a later number if that exists already).
#[must_use]
pub fn aside_path(path: &Path, now_ms: u64) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut at = now_ms;
    loop {
        let candidate = path.with_file_name(format!("{name}{DAMAGED_SUFFIX}{at}"));
        if !candidate.exists() {
            return candidate;
        }
        at = at.saturating_add(1);
    }
}

/// Rename `path` aside ([`aside_path`]) and fsync its directory.
///
/// # Errors
/// The rename's or the directory sync's I/O error.
pub fn move_aside(path: &Path, now_ms: u64) -> std::io::Result<PathBuf> {
    let to = aside_path(path, now_ms);
    std::fs::rename(path, &to)?;
    if let Some(dir) = path.parent() {
        crate::keystore::sync_dir(dir)?;
    }
    Ok(to)
}

/// Unix milliseconds now.
#[must_use]
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aside_paths_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, "x").unwrap();
        let first = move_aside(&path, 7).unwrap();
        assert_eq!(first, dir.path().join("audit.log.damaged-7"));
        std::fs::write(&path, "y").unwrap();
        let second = move_aside(&path, 7).unwrap();
        assert_eq!(second, dir.path().join("audit.log.damaged-8"));
        assert_eq!(std::fs::read_to_string(first).unwrap(), "x");
    }
}
