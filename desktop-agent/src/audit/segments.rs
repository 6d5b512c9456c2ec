//! Rotation and the verified-prefix checkpoint (see "Rotation" in the
//! parent module's docs).
//!
//! * `audit.log` is the live segment. When an append finds it at or over
//!   the rotation size, the file gets a second name `audit.log.<n>` (`n`
//!   one more than the highest so far, from 1; a hard link, so that
//!   `audit.log` never stops existing), a new empty file is renamed over
//!   `audit.log`, and the chain goes on in it: its first entry's `prev` is
//!   the last hash of the segment before, and `seq` continues.
//! * `audit.checkpoint` (0600, written atomically) holds the chain's state
//!   where `audit.log` starts and at a verified offset in it. Opening
//!   checks that both still match the file (the first line continues from
//!   the start state; the line ending at the offset is the entry recorded)
//!   and verifies only from the offset on. Without a checkpoint that
//!   matches, opening verifies every segment from the first.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    AuditEntry, AuditError, Chain, FILE_NAME, Lock, VerifyReport, hex, io_err, scan, unhex,
};
use crate::keystore::{Overwrite, sync_dir, write_private};

/// The checkpoint's file name inside the data directory.
pub const CHECKPOINT_NAME: &str = "audit.checkpoint";

/// The default rotation size of `audit.log`: 8 MiB.
pub const DEFAULT_MAX_SEGMENT_BYTES: u64 = 8 << 20;

/// How far before a checkpoint's offset its entry's line is looked for.
const LOOKBACK: u64 = 64 * 1024;

/// The chain's state after some entries (in hex, for the file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    entries: u64,
    last_hash: String,
    first_at_ms: Option<u64>,
    last_at_ms: Option<u64>,
}

impl State {
    fn of(chain: &Chain) -> Self {
        Self {
            entries: chain.entries,
            last_hash: hex(&chain.last_hash),
            first_at_ms: chain.first_at_ms,
            last_at_ms: chain.last_at_ms,
        }
    }

    /// The chain at this state, `bytes` into the live segment.
    fn chain(&self, bytes: u64) -> Option<Chain> {
        Some(Chain {
            entries: self.entries,
            last_hash: unhex(&self.last_hash)?,
            first_at_ms: self.first_at_ms,
            last_at_ms: self.last_at_ms,
            bytes,
        })
    }
}

/// `audit.checkpoint`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Checkpoint {
    /// Where `audit.log` starts.
    start: State,
    /// Bytes of `audit.log` verified.
    offset: u64,
    /// The chain after those bytes.
    at: State,
}

/// The earlier segments next to `path` (`audit.log.<n>`), oldest first.
#[must_use]
pub fn segments(path: &Path) -> Vec<PathBuf> {
    let Some(dir) = path.parent() else { return Vec::new() };
    let prefix = format!("{FILE_NAME}.");
    let mut found: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let n = name.strip_prefix(&prefix)?;
            (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .then(|| n.parse().ok().map(|n: u64| (n, e.path())))?
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, p)| p).collect()
}

/// Verify every segment, oldest first, then the live `audit.log` at
/// `path`: the whole chain (what `tandem audit verify` runs).
///
/// # Errors
/// The first bad entry ([`AuditError::Broken`], its `line` being the
/// entry's position in the whole chain), or I/O.
pub fn verify_all(path: &Path) -> Result<(VerifyReport, usize), AuditError> {
    let earlier = segments(path);
    let mut chain = Chain::default();
    for segment in &earlier {
        read_whole(segment, &mut chain)?;
    }
    read_whole(path, &mut chain)?;
    Ok((chain.report(), earlier.len()))
}

fn read_whole(path: &Path, chain: &mut Chain) -> Result<(), AuditError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let _lock = Lock::shared(&file, path)?;
    chain.bytes = 0;
    scan(&file, path, chain)
}

/// The chain where the live segment at `path` starts: from the checkpoint
/// when it matches the file's first line, else by verifying the earlier
/// segments.
pub(super) fn start_of(file: &File, path: &Path) -> Result<Chain, AuditError> {
    if let Some(cp) = read_checkpoint(path)
        && let Some(start) = cp.start.chain(0)
        && continues_from(file, &start)
    {
        return Ok(start);
    }
    let mut chain = Chain::default();
    for segment in segments(path) {
        read_whole(&segment, &mut chain)?;
    }
    chain.bytes = 0;
    Ok(chain)
}

/// Bring `chain` to the end of the live segment `file` (read under the
/// caller's lock): from the checkpoint's offset when it matches, else from
/// the segment's start. Then record the new checkpoint (best effort).
pub(super) fn load(file: &File, path: &Path, chain: &mut Chain) -> Result<(), AuditError> {
    let len = file.metadata().map_err(io_err("inspect", path))?.len();
    let resumed = read_checkpoint(path).and_then(|cp| {
        let start = cp.start.chain(0)?;
        let at = cp.at.chain(cp.offset)?;
        (cp.offset <= len && continues_from(file, &start) && ends_with(file, cp.offset, &at))
            .then_some((cp.start, at))
    });
    let start = match resumed {
        Some((start, at)) => {
            *chain = at;
            start
        }
        None => {
            *chain = start_of(file, path)?;
            State::of(chain)
        }
    };
    (&*file).seek(SeekFrom::Start(chain.bytes)).map_err(io_err("read", path))?;
    scan(file, path, chain)?;
    save_checkpoint(path, chain, start);
    Ok(())
}

/// Rotate the live segment (the caller holds its exclusive lock and
/// `chain` is at its end): returns the new, empty live file.
pub(super) fn rotate(path: &Path, chain: &Chain) -> Result<File, AuditError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let next = segments(path)
        .last()
        .and_then(|p| p.extension()?.to_str()?.parse::<u64>().ok())
        .map_or(1, |n| n.saturating_add(1));
    let segment = path.with_file_name(format!("{FILE_NAME}.{next}"));
    fs::hard_link(path, &segment).map_err(io_err("link", &segment))?;
    let tmp = path.with_file_name(format!(".{FILE_NAME}.{}.new", std::process::id()));
    let mut options = OpenOptions::new();
    options.read(true).append(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let fresh = options.open(&tmp).map_err(io_err("create", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename", &tmp))?;
    sync_dir(dir).map_err(io_err("sync", dir))?;
    let mut start = chain.clone();
    start.bytes = 0;
    save_checkpoint(path, &start, State::of(&start));
    tracing::info!(segment = %segment.display(), entries = chain.entries, "rotated the audit log");
    Ok(fresh)
}

/// Whether the live segment's name now points at another file than `file`
/// (another process rotated it).
pub(super) fn moved(file: &File, path: &Path) -> Result<bool, AuditError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let ours = file.metadata().map_err(io_err("inspect", path))?;
        let now = fs::metadata(path).map_err(io_err("inspect", path))?;
        Ok(ours.ino() != now.ino() || ours.dev() != now.dev())
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        Ok(false)
    }
}

fn checkpoint_path(path: &Path) -> PathBuf {
    path.with_file_name(CHECKPOINT_NAME)
}

fn read_checkpoint(path: &Path) -> Option<Checkpoint> {
    serde_json::from_slice(&fs::read(checkpoint_path(path)).ok()?).ok()
}

fn save_checkpoint(path: &Path, chain: &Chain, start: State) {
    let cp = Checkpoint { start, offset: chain.bytes, at: State::of(chain) };
    let Ok(bytes) = serde_json::to_vec(&cp) else { return };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    if let Err(e) = write_private(dir, CHECKPOINT_NAME, &bytes, Overwrite::Replace) {
        tracing::warn!(error = %e, "could not write the audit checkpoint (the next open verifies more)");
    }
}

/// The first entry of `file` (parsed only), if it has a complete one
/// within its first 64 KiB.
fn first_entry(file: &File) -> Option<AuditEntry> {
    let mut buf = Vec::new();
    let mut reader = file;
    reader.seek(SeekFrom::Start(0)).ok()?;
    reader.take(LOOKBACK).read_to_end(&mut buf).ok()?;
    let end = buf.iter().position(|b| *b == b'\n')?;
    serde_json::from_slice(buf.get(..end)?).ok()
}

/// Whether `file` is empty or its first entry continues from `start`.
fn continues_from(file: &File, start: &Chain) -> bool {
    if file.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
        return true;
    }
    first_entry(file).is_some_and(|e| {
        e.seq == start.entries.saturating_add(1) && e.prev == hex(&start.last_hash)
    })
}

/// Whether the line that ends at `offset` in `file` is the entry `at` ends
/// with (offset 0: `at` is the start).
fn ends_with(file: &File, offset: u64, at: &Chain) -> bool {
    if offset == 0 {
        return true;
    }
    let from = offset.saturating_sub(LOOKBACK);
    let Ok(len) = usize::try_from(offset - from) else { return false };
    let mut buf = vec![0; len];
    let mut reader = file;
    if reader.seek(SeekFrom::Start(from)).is_err() || reader.read_exact(&mut buf).is_err() {
        return false;
    }
    let Some(body) = buf.strip_suffix(b"\n") else { return false };
    let line = match body.iter().rposition(|b| *b == b'\n') {
        Some(i) => body.get(i + 1..).unwrap_or_default(),
        None if from == 0 => body,
        None => return false,
    };
    serde_json::from_slice::<AuditEntry>(line)
        .is_ok_and(|e| e.seq == at.entries && e.hash == hex(&at.last_hash))
}

#[cfg(test)]
mod tests {
    use super::super::{AuditEvent, AuditLog};
    use super::*;

    fn ev(i: u64) -> AuditEvent {
        AuditEvent::Revoked { device: format!("device-{i}") }
    }

    #[test]
    fn the_log_rotates_and_the_whole_chain_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = AuditLog::open(dir.path()).unwrap().with_rotation(600);
        // A second writer on the same log follows a rotation it did not do.
        let mut b = AuditLog::open(dir.path()).unwrap().with_rotation(600);
        for i in 0..30 {
            let log = if i % 3 == 0 { &mut b } else { &mut a };
            assert_eq!(log.append(i, ev(i)).unwrap().seq, i + 1);
        }
        let path = dir.path().join(FILE_NAME);
        let earlier = segments(&path);
        assert!(earlier.len() >= 3, "{earlier:?}");
        for s in &earlier {
            assert!(fs::metadata(s).unwrap().len() < 600 + 200);
        }
        let (report, n) = verify_all(&path).unwrap();
        assert_eq!((report.entries, n), (30, earlier.len()));
        assert_eq!(report.last_hash, a.last_hash());
        // Reopening continues from the checkpoint, and from scratch without it.
        let c = AuditLog::open(dir.path()).unwrap();
        assert_eq!(c.entries(), 30);
        fs::remove_file(dir.path().join(CHECKPOINT_NAME)).unwrap();
        let mut d = AuditLog::open(dir.path()).unwrap();
        assert_eq!(d.append(99, ev(99)).unwrap().seq, 31);
        // An edit in an earlier segment is caught by the full verification.
        let first = &earlier[0];
        let text = fs::read_to_string(first).unwrap().replacen("device-1", "device-X", 1);
        fs::write(first, text).unwrap();
        assert!(matches!(verify_all(&path), Err(AuditError::Broken { line: 2, .. })));
    }

    #[test]
    fn open_resumes_at_the_checkpoint_without_reading_what_it_covers() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(dir.path()).unwrap();
        for i in 0..5 {
            log.append(i, ev(i)).unwrap();
        }
        drop(log);
        AuditLog::open(dir.path()).unwrap();
        let cp = read_checkpoint(&dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(cp.at.entries, 5);
        // A change inside the covered prefix is not re-read by open (only
        // `verify_all` reads everything)…
        let path = dir.path().join(FILE_NAME);
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replacen("device-1", "device-X", 1)).unwrap();
        assert_eq!(AuditLog::open(dir.path()).unwrap().entries(), 5);
        assert!(verify_all(&path).is_err());
        // …but a checkpoint that no longer matches the file is not trusted.
        let lines: Vec<&str> = text.lines().collect();
        fs::write(&path, lines[..3].join("\n") + "\n").unwrap();
        assert_eq!(AuditLog::open(dir.path()).unwrap().entries(), 3);
    }
}
