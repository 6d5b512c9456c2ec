//! Writing the log: [`AuditLog`] opens (creating or verifying) the file and
//! appends sealed, fsynced entries under an advisory lock, rotating it when
//! it grows past its limit.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::chain::{Chain, scan, seal};
use super::{
    AuditEntry, AuditError, AuditEvent, BrokenReason, DEFAULT_MAX_SEGMENT_BYTES, FILE_NAME, hex,
    io_err, segments, text_hash,
};
use crate::keystore::{create_private_dir, sync_dir};

/// The append-only audit log of one data directory.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    chain: Chain,
    /// Rotate `audit.log` once it holds this many bytes.
    max_bytes: u64,
}

impl AuditLog {
    /// Open (creating it, mode 0600, and `data_dir`, mode 0700, if needed)
    /// `data_dir/audit.log`, verify it (from the checkpoint, see "Rotation")
    /// and continue from its last entry. A log that fails verification is refused
    /// ([`AuditError::Broken`], [`AuditError::Truncated`]) and left as it is.
    /// An existing file that group or others could access is made 0600.
    pub fn open(data_dir: &Path) -> Result<Self, AuditError> {
        create_private_dir(data_dir).map_err(io_err("create", data_dir))?;
        let path = data_dir.join(FILE_NAME);
        let mut options = OpenOptions::new();
        options.read(true).append(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = match options.open(&path) {
            Ok(file) => {
                sync_dir(data_dir).map_err(io_err("sync", data_dir))?;
                file
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let file = OpenOptions::new()
                    .read(true)
                    .append(true)
                    .open(&path)
                    .map_err(io_err("open", &path))?;
                make_private(&file, &path)?;
                file
            }
            Err(e) => return Err(io_err("create", &path)(e)),
        };
        let mut chain = Chain::default();
        {
            let _lock = Lock::shared(&file, &path)?;
            segments::load(&file, &path, &mut chain)?;
        }
        Ok(Self { path, file, chain, max_bytes: DEFAULT_MAX_SEGMENT_BYTES })
    }

    /// Rotate `audit.log` once it holds `max_bytes` bytes (default
    /// [`DEFAULT_MAX_SEGMENT_BYTES`]; at least 1).
    #[must_use]
    pub fn with_rotation(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes.max(1);
        self
    }

    /// Append `event` at `at_unix_ms` and fsync. The timestamp is raised to
    /// the previous entry's if the clock went backwards, so timestamps never
    /// decrease. Lines appended by other [`AuditLog`]s on the same file since
    /// this one last looked are verified first (an error if they are bad).
    ///
    /// After an error the entry may or may not be in the log (for example
    /// when the write succeeded but the fsync failed); a later append picks
    /// up whatever is there.
    pub fn append(&mut self, at_unix_ms: u64, event: AuditEvent) -> Result<AuditEntry, AuditError> {
        let mut lock = Lock::exclusive(&self.file, &self.path)?;
        catch_up(&self.file, &self.path, &mut self.chain)?;
        // Another log rotated the file: this one is complete; go on in the
        // new one.
        while segments::moved(&self.file, &self.path)? {
            drop(lock);
            self.file = OpenOptions::new()
                .read(true)
                .append(true)
                .open(&self.path)
                .map_err(io_err("open", &self.path))?;
            self.chain.bytes = 0;
            lock = Lock::exclusive(&self.file, &self.path)?;
            catch_up(&self.file, &self.path, &mut self.chain)?;
        }
        if self.chain.bytes >= self.max_bytes {
            let fresh = segments::rotate(&self.path, &self.chain)?;
            drop(lock);
            self.file = fresh;
            self.chain.bytes = 0;
            lock = Lock::exclusive(&self.file, &self.path)?;
            catch_up(&self.file, &self.path, &mut self.chain)?;
        }
        let _lock = lock;
        let at_ms = self.chain.last_at_ms.map_or(at_unix_ms, |last| last.max(at_unix_ms));
        let entry = seal(&self.chain.last_hash, self.chain.next_seq(), at_ms, event)?;
        let mut line = serde_json::to_vec(&entry).map_err(AuditError::Encode)?;
        line.push(b'\n');
        if let Err(e) = (&self.file).write_all(&line) {
            // Take back a partial line, so that the log stays appendable.
            let _ = self.file.set_len(self.chain.bytes);
            return Err(io_err("write", &self.path)(e));
        }
        self.file.sync_data().map_err(io_err("sync", &self.path))?;
        self.chain.advance(&entry, line.len());
        Ok(entry)
    }

    /// Hex of the domain-separated hash of `text`; see [`text_hash`].
    #[must_use]
    pub fn text_hash(text: &str) -> String {
        text_hash(text)
    }

    /// The highest sequence number of the instructions of `link` in the
    /// current file (`instruction` members `<link>#<seq>`), if any. Lines
    /// rotated into older segments are not read.
    ///
    /// # Errors
    /// [`AuditError`] if the file cannot be read.
    pub fn last_instruction(&self, link: &str) -> Result<Option<u64>, AuditError> {
        let text = std::fs::read_to_string(&self.path).map_err(io_err("read", &self.path))?;
        let prefix = format!("{link}#");
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| {
                let tag = v.get("instruction")?.as_str()?;
                tag.strip_prefix(&prefix)?.parse::<u64>().ok()
            })
            .max())
    }

    /// The log file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The number of entries, as of this log's last read or append.
    #[must_use]
    pub fn entries(&self) -> u64 {
        self.chain.entries
    }

    /// The last entry's hash in hex (or [`GENESIS_PREV`]), as of this log's
    /// last read or append.
    #[must_use]
    pub fn last_hash(&self) -> String {
        hex(&self.chain.last_hash)
    }
}

/// Verify lines others appended since `chain` was last brought up to date.
pub(super) fn catch_up(file: &File, path: &Path, chain: &mut Chain) -> Result<(), AuditError> {
    let len = file.metadata().map_err(io_err("inspect", path))?.len();
    if len == chain.bytes {
        return Ok(());
    }
    if len < chain.bytes {
        return Err(AuditError::Broken {
            line: chain.entries,
            reason: BrokenReason::Shrank { was: chain.bytes, now: len },
        });
    }
    (&*file).seek(SeekFrom::Start(chain.bytes)).map_err(io_err("read", path))?;
    scan(file, path, chain)
}

/// Make an existing log file 0600 if group or others could access it.
fn make_private(file: &File, path: &Path) -> Result<(), AuditError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata().map_err(io_err("inspect", path))?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "audit log was not private; making it 0600");
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io_err("set permissions on", path))?;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
    }
    Ok(())
}

/// An advisory lock on a file, released on drop. Filesystems without
/// locking get no lock (and no error).
pub(super) struct Lock<'a>(Option<&'a File>);

impl<'a> Lock<'a> {
    pub(super) fn shared(file: &'a File, path: &Path) -> Result<Self, AuditError> {
        Self::take(file, path, File::lock_shared(file))
    }

    pub(super) fn exclusive(file: &'a File, path: &Path) -> Result<Self, AuditError> {
        Self::take(file, path, File::lock(file))
    }

    fn take(file: &'a File, path: &Path, locked: io::Result<()>) -> Result<Self, AuditError> {
        match locked {
            Ok(()) => Ok(Self(Some(file))),
            Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(Self(None)),
            Err(e) => Err(io_err("lock", path)(e)),
        }
    }
}

impl Drop for Lock<'_> {
    fn drop(&mut self) {
        if let Some(file) = self.0 {
            let _ = file.unlock();
        }
    }
}
