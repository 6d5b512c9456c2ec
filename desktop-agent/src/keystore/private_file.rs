//! Files and directories private to their owner: mode and owner checks,
//! atomic 0600 writes that never replace (or always replace) a file, and
//! directory fsyncs. Shared by the key store, the peer list, the audit log
//! and the agent's other state files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// What is wrong with a file that must be private to its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileProblem {
    /// Not a regular file.
    NotAFile,
    /// Group or others have some access; the permission bits.
    Permissions(u32),
    /// Owned by another user than expected.
    Owner {
        /// The file's owner.
        owner: u32,
        /// The expected owner.
        expected: u32,
    },
}

/// The owner of `path` (Unix); `None` elsewhere.
pub(crate) fn owner_of(path: &Path) -> io::Result<Option<u32>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Ok(Some(fs::metadata(path)?.uid()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(None)
    }
}

/// A regular file, with no access for group or others (Unix), owned by
/// `expected_owner` when given.
pub(crate) fn check_private(
    meta: &fs::Metadata,
    expected_owner: Option<u32>,
) -> Result<(), FileProblem> {
    if !meta.is_file() {
        return Err(FileProblem::NotAFile);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        check_mode_and_owner(meta.mode(), meta.uid(), expected_owner)
    }
    #[cfg(not(unix))]
    {
        let _ = expected_owner;
        Ok(())
    }
}

#[cfg_attr(not(unix), allow(dead_code))]
fn check_mode_and_owner(mode: u32, owner: u32, expected: Option<u32>) -> Result<(), FileProblem> {
    if mode & 0o077 != 0 {
        return Err(FileProblem::Permissions(mode & 0o7777));
    }
    match expected {
        Some(expected) if expected != owner => Err(FileProblem::Owner { owner, expected }),
        _ => Ok(()),
    }
}

/// Create `dir` and its missing parents; those created get mode 0700 (Unix).
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Whether [`write_private`] may replace an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overwrite {
    /// Replace it atomically.
    Replace,
    /// Fail with [`io::ErrorKind::AlreadyExists`] instead.
    Never,
}

/// Write `dir/name` durably and atomically with mode 0600: a temporary file
/// in `dir`, fsynced, then renamed (or, for [`Overwrite::Never`], hard-linked
/// so that an existing file is never replaced), then `dir` is fsynced.
/// Readers see the old contents or the new ones, never a mix.
pub(crate) fn write_private(
    dir: &Path,
    name: &str,
    contents: &[u8],
    overwrite: Overwrite,
) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}-{n}.tmp", std::process::id()));
    let target = dir.join(name);
    let placed = write_new_private(&tmp, contents).and_then(|()| match overwrite {
        Overwrite::Replace => fs::rename(&tmp, &target),
        Overwrite::Never => link_no_clobber(&tmp, &target),
    });
    if placed.is_err() || overwrite == Overwrite::Never {
        // After a rename the temporary name is gone; after a link it is a
        // second name for the file, which must not stay behind.
        let _ = fs::remove_file(&tmp);
    }
    placed?;
    sync_dir(dir)
}

fn write_new_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Give `tmp`'s file the name `target` unless `target` exists. Filesystems
/// without hard links fall back to a check and a rename (a small window in
/// which a concurrent creator could be overwritten).
fn link_no_clobber(tmp: &Path, target: &Path) -> io::Result<()> {
    match fs::hard_link(tmp, target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
        Err(link_err) => match fs::symlink_metadata(target) {
            Ok(_) => Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::debug!(error = %link_err, "hard link failed; renaming instead");
                fs::rename(tmp, target)
            }
            Err(e) => Err(e),
        },
    }
}

/// Make a directory's entries (creations, renames, removals) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use crate::keystore::KeyStoreError;

    #[test]
    fn keystore_owner_check() {
        assert_eq!(check_mode_and_owner(0o100600, 1000, Some(1000)), Ok(()));
        assert_eq!(check_mode_and_owner(0o100400, 1000, None), Ok(()));
        assert_eq!(
            check_mode_and_owner(0o100600, 0, Some(1000)),
            Err(FileProblem::Owner { owner: 0, expected: 1000 })
        );
        assert_eq!(
            check_mode_and_owner(0o100660, 1000, Some(1000)),
            Err(FileProblem::Permissions(0o660))
        );
        let err = KeyStoreError::WrongOwner { path: "/k".into(), owner: 0, expected: 1000 };
        assert!(err.to_string().contains("owned by uid 0"));
    }
}
