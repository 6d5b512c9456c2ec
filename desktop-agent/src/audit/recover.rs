//! Opening the log when its end is damaged: the damaged tail is set aside
//! and the agent starts (see "Damage" in the parent module's docs).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::{AuditError, AuditLog, FILE_NAME, Lock, io_err, scan};
use crate::damage::{SetAside, aside_path};
use crate::keystore::sync_dir;

impl AuditLog {
    /// As [`AuditLog::open`], but a log whose end does not verify (a partial
    /// last line, [`AuditError::Truncated`], or any line that fails,
    /// [`AuditError::Broken`]) does not stop the agent: everything from the
    /// first bad line to the end is copied to `audit.log.damaged-<now_ms>`
    /// (mode 0600, fsynced), the log is cut back to its last good entry, and
    /// a `set_aside` entry recording the move is appended. Returns what was
    /// set aside, if anything.
    ///
    /// # Errors
    /// I/O errors, and an [`AuditError`] if the log still does not open.
    pub fn open_or_set_aside(
        data_dir: &Path,
        now_ms: u64,
    ) -> Result<(Self, Option<SetAside>), AuditError> {
        let reason = match Self::open(data_dir) {
            Ok(log) => return Ok((log, None)),
            Err(e @ (AuditError::Truncated { .. } | AuditError::Broken { .. })) => e.to_string(),
            Err(e) => return Err(e),
        };
        let path = data_dir.join(FILE_NAME);
        let aside = set_aside_tail(&path, now_ms, &reason)?;
        let mut log = Self::open(data_dir)?;
        if let Some(aside) = &aside {
            log.append(now_ms, aside.audit_event())?;
        }
        Ok((log, aside))
    }
}

/// Move the part of `path` from its first bad line to its end aside, under
/// an exclusive lock; `None` if it verifies (someone else did it).
fn set_aside_tail(path: &Path, now_ms: u64, reason: &str) -> Result<Option<SetAside>, AuditError> {
    let file =
        OpenOptions::new().read(true).write(true).open(path).map_err(io_err("open", path))?;
    let _lock = Lock::exclusive(&file, path)?;
    let mut chain = super::segments::start_of(&file, path)?;
    (&file).seek(SeekFrom::Start(0)).map_err(io_err("read", path))?;
    let line = match scan(&file, path, &mut chain) {
        Ok(()) => return Ok(None),
        Err(AuditError::Truncated { line } | AuditError::Broken { line, .. }) => line,
        Err(e) => return Err(e),
    };
    let mut tail = Vec::new();
    (&file).seek(SeekFrom::Start(chain.bytes)).map_err(io_err("read", path))?;
    (&file).read_to_end(&mut tail).map_err(io_err("read", path))?;
    let to = aside_path(path, now_ms);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut out: File = options.open(&to).map_err(io_err("create", &to))?;
    out.write_all(&tail).map_err(io_err("write", &to))?;
    out.sync_all().map_err(io_err("sync", &to))?;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    sync_dir(dir).map_err(io_err("sync", dir))?;
    // A crash before this cut leaves the tail in both places: the next start
    // sets it aside again (under another name), and nothing is lost.
    crate::crashpoint::crash_point("audit.set_aside.copied");
    file.set_len(chain.bytes).map_err(io_err("truncate", path))?;
    file.sync_all().map_err(io_err("sync", path))?;
    tracing::warn!(path = %path.display(), line, moved_to = %to.display(), "set aside the damaged end of the audit log");
    Ok(Some(SetAside {
        file: FILE_NAME.to_owned(),
        moved_to: to,
        reason: format!("from line {line}, {} byte(s): {reason}", tail.len()),
        consequence: "the log continues from its last good entry".to_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::{AuditEvent, verify};
    use super::*;

    fn ev(d: &str) -> AuditEvent {
        AuditEvent::Revoked { device: d.into() }
    }

    #[test]
    fn a_partial_last_line_is_set_aside_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(dir.path()).unwrap();
        log.append(1, ev("a")).unwrap();
        log.append(2, ev("b")).unwrap();
        drop(log);
        let path = dir.path().join(FILE_NAME);
        let full = fs::read(&path).unwrap();
        fs::write(&path, &full[..full.len() - 10]).unwrap();
        let (mut log, aside) = AuditLog::open_or_set_aside(dir.path(), 50).unwrap();
        let aside = aside.unwrap();
        assert_eq!(aside.moved_to, dir.path().join("audit.log.damaged-50"));
        let moved = fs::read(&aside.moved_to).unwrap();
        let first_len = full.iter().position(|&b| b == b'\n').unwrap() + 1;
        assert_eq!(moved, full[first_len..full.len() - 10]);
        assert!(aside.reason.contains("line 2"), "{}", aside.reason);
        // Entry 1, then the set-aside entry; the chain verifies and goes on.
        assert_eq!(log.entries(), 2);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"event\":\"set_aside\",\"file\":\"audit.log\""), "{text}");
        log.append(60, ev("c")).unwrap();
        assert_eq!(verify(&path).unwrap().entries, 3);
        // A sound log is left as it is.
        let (_, again) = AuditLog::open_or_set_aside(dir.path(), 70).unwrap();
        assert_eq!(again, None);
    }

    #[test]
    fn an_edited_line_sets_aside_everything_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(dir.path()).unwrap();
        for d in ["a", "b", "c"] {
            log.append(1, ev(d)).unwrap();
        }
        drop(log);
        let path = dir.path().join(FILE_NAME);
        let edited = fs::read_to_string(&path).unwrap().replacen("\"b\"", "\"z\"", 1);
        fs::write(&path, &edited).unwrap();
        let (log, aside) = AuditLog::open_or_set_aside(dir.path(), 5).unwrap();
        let moved = fs::read_to_string(aside.unwrap().moved_to).unwrap();
        assert_eq!(moved.lines().count(), 2, "lines 2 and 3: {moved}");
        assert!(moved.contains("\"z\""));
        assert_eq!(log.entries(), 2);
    }
}
