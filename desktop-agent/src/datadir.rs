//! The data directory's privacy: it holds the device key, every paired
//! device's session keys, the task history (task texts, tool inputs and
//! outputs), the audit log and the control socket, so it is mode 0700 and
//! every file in it 0600, whatever the umask.
//!
//! * [`prepare`] runs before any command touches the directory: it creates
//!   it (0700, with any missing parents, [`create_private_dir`]) and checks
//!   it and everything in it (not following symbolic links). Anything owned
//!   by another user than the one running `tandem` is refused
//!   ([`DataDirError::WrongOwner`], naming the path and both uids): another
//!   user could have put it there, or can change it. Anything that group or
//!   others may access loses those permissions (the owner's stay: a 0755
//!   directory becomes 0700, a 0644 file 0600, a script someone keeps there
//!   stays executable by its owner), and each change is returned ([`Fixed`])
//!   for the caller to warn about. Key material is the
//!   exception: a device key (`device.key`) or a peer file (`peers/*.json`)
//!   that others could read is left for its store to refuse (other users may
//!   have copied the key; see [`crate::keystore`] and [`crate::peers`]).
//! * New files are created 0600 by whoever writes them: the stores through
//!   [`crate::keystore`]'s helpers, the task history through
//!   [`private_file`] (created here before redb opens it, never through a
//!   symbolic link), files the user names (the pairing QR code's
//!   `--qr-png` / `--qr-svg`) through [`write_user_file`]: a new 0600 file
//!   next to the target, then renamed over it, so a symbolic link at the
//!   target is replaced, never followed.
//!
//! On other platforms than Unix only the directory is created.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::keystore::{KEY_FILE_NAME, Overwrite, create_private_dir, write_private};
use crate::peers::PEERS_DIR_NAME;

/// How deep [`prepare`] looks below the data directory.
const MAX_DEPTH: usize = 4;

/// Why the data directory cannot be used.
#[derive(Debug, Error)]
pub enum DataDirError {
    /// A filesystem operation failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Something in the data directory belongs to another user.
    #[error(
        "{} belongs to uid {owner}, but tandem runs as uid {me}: another user could read or \
         change it. Check where it came from, then `chown` it or move it away (or use another \
         --data-dir)",
        path.display()
    )]
    WrongOwner {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The uid tandem runs as.
        me: u32,
    },
    /// The data directory is not a directory.
    #[error("the data directory {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
}

/// A mode that [`prepare`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fixed {
    /// The directory or file.
    pub path: PathBuf,
    /// Its permission bits before.
    pub was: u32,
    /// Its permission bits now (without group and other permissions).
    pub now: u32,
}

impl std::fmt::Display for Fixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} could be accessed by other users (mode {:o}); it is {:o} now",
            self.path.display(),
            self.was,
            self.now
        )
    }
}

/// Create `dir` if needed (0700) and make it and everything in it private
/// (see the module docs). Returns what was changed.
///
/// # Errors
/// [`DataDirError::WrongOwner`] for anything another user owns;
/// [`DataDirError::NotADirectory`]; [`DataDirError::Io`].
pub fn prepare(dir: &Path) -> Result<Vec<Fixed>, DataDirError> {
    create_private_dir(dir).map_err(io_err("create", dir))?;
    let meta = fs::metadata(dir).map_err(io_err("inspect", dir))?;
    if !meta.is_dir() {
        return Err(DataDirError::NotADirectory(dir.to_owned()));
    }
    let mut fixed = Vec::new();
    #[cfg(unix)]
    {
        let me = euid();
        check(dir, &meta, me, false, &mut fixed)?;
        walk(dir, me, 0, &mut fixed)?;
    }
    Ok(fixed)
}

/// The effective uid of this process.
#[cfg(unix)]
#[must_use]
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

#[cfg(unix)]
fn walk(dir: &Path, me: u32, depth: usize, fixed: &mut Vec<Fixed>) -> Result<(), DataDirError> {
    if depth >= MAX_DEPTH {
        return Ok(());
    }
    let in_peers = dir.file_name().is_some_and(|n| n == PEERS_DIR_NAME) && depth == 1;
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        entries.push(entry.map_err(io_err("list", dir))?.path());
    }
    entries.sort();
    for path in entries {
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Gone meanwhile (a temporary file renamed into place).
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("inspect", &path)(e)),
        };
        if meta.file_type().is_symlink() {
            tracing::debug!(path = %path.display(), "symbolic link in the data directory left alone");
            continue;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let secret = (depth == 0 && name == KEY_FILE_NAME)
            || (in_peers && std::path::Path::new(name).extension().is_some_and(|e| e == "json"));
        check(&path, &meta, me, secret, fixed)?;
        if meta.is_dir() {
            walk(&path, me, depth + 1, fixed)?;
        }
    }
    Ok(())
}

/// Refuse another owner; take group and other permissions from `path`
/// unless it is key material (`secret`), which its store checks.
#[cfg(unix)]
fn check(
    path: &Path,
    meta: &fs::Metadata,
    me: u32,
    secret: bool,
    fixed: &mut Vec<Fixed>,
) -> Result<(), DataDirError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if meta.uid() != me {
        return Err(DataDirError::WrongOwner { path: path.to_owned(), owner: meta.uid(), me });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 == 0 || secret {
        return Ok(());
    }
    let now = mode & !0o077;
    fs::set_permissions(path, fs::Permissions::from_mode(now))
        .map_err(io_err("set permissions on", path))?;
    fixed.push(Fixed { path: path.to_owned(), was: mode, now });
    Ok(())
}

/// Make sure `path` is a private regular file: create it empty with mode
/// 0600 if it is missing, never through a symbolic link (`O_NOFOLLOW`);
/// make an existing one 0600 (with a warning in the log). For files that
/// another library then opens by name (the task history's redb database).
///
/// # Errors
/// An I/O error; `path` being a symbolic link (`ELOOP`), not a regular
/// file, or another user's.
pub fn private_file(path: &Path) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
        options.custom_flags(nofollow());
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(format!("{} is not a regular file", path.display())));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if meta.uid() != euid() {
            return Err(io::Error::other(format!(
                "{} belongs to uid {}, not to uid {} that tandem runs as",
                path.display(),
                meta.uid(),
                euid()
            )));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "was readable by other users; made it 0600");
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// `O_NOFOLLOW`, for [`std::os::unix::fs::OpenOptionsExt::custom_flags`].
#[cfg(unix)]
fn nofollow() -> i32 {
    i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0)
}

/// Write `contents` to a path the user chose (outside the data directory),
/// mode 0600: a new file in the same directory, fsynced, renamed over
/// `path`. A symbolic link at `path` is replaced, not followed; an existing
/// file is replaced whole (readers never see half of it).
///
/// # Errors
/// An I/O error (for example a directory at `path`, or a sticky directory
/// where another user owns `path`).
pub fn write_user_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    write_private(parent, name, contents, Overwrite::Replace)
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DataDirError + use<> {
    let path = path.to_path_buf();
    move |source| DataDirError::Io { action, path, source }
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn set(p: &Path, m: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
    }

    #[test]
    fn a_new_data_dir_is_private_and_readable_parts_are_fixed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/data");
        assert!(prepare(&dir).unwrap().is_empty());
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);

        set(&dir, 0o755);
        fs::write(dir.join("tasks.redb"), b"").unwrap();
        set(&dir.join("tasks.redb"), 0o644);
        fs::create_dir(dir.join("relay")).unwrap();
        set(&dir.join("relay"), 0o775);
        fs::write(dir.join("relay/relay.redb"), b"").unwrap();
        set(&dir.join("relay/relay.redb"), 0o640);
        // Key material is its store's to refuse, not fixed here.
        fs::write(dir.join(KEY_FILE_NAME), b"").unwrap();
        set(&dir.join(KEY_FILE_NAME), 0o644);
        fs::create_dir(dir.join(PEERS_DIR_NAME)).unwrap();
        fs::write(dir.join("peers/x.json"), b"").unwrap();
        set(&dir.join("peers/x.json"), 0o644);
        // A script someone keeps there stays executable by its owner.
        fs::write(dir.join("run.sh"), b"").unwrap();
        set(&dir.join("run.sh"), 0o755);
        // A link is not followed.
        let outside = tmp.path().join("outside");
        fs::write(&outside, b"").unwrap();
        set(&outside, 0o644);
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();

        let fixed = prepare(&dir).unwrap();
        let paths: Vec<&Path> = fixed.iter().map(|f| f.path.as_path()).collect();
        assert_eq!(
            paths,
            [
                dir.as_path(),
                &dir.join(PEERS_DIR_NAME),
                &dir.join("relay"),
                &dir.join("relay/relay.redb"),
                &dir.join("run.sh"),
                &dir.join("tasks.redb"),
            ]
        );
        assert_eq!(
            fixed[0].to_string(),
            format!("{} could be accessed by other users (mode 755); it is 700 now", dir.display())
        );
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("tasks.redb")), 0o600);
        assert_eq!(mode(&dir.join("relay/relay.redb")), 0o600);
        assert_eq!(mode(&dir.join("run.sh")), 0o700);
        assert_eq!(mode(&dir.join(KEY_FILE_NAME)), 0o644);
        assert_eq!(mode(&dir.join("peers/x.json")), 0o644);
        assert_eq!(mode(&outside), 0o644);
        assert!(prepare(&dir).unwrap().is_empty());
    }

    #[test]
    fn private_file_creates_0600_and_refuses_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("db");
        private_file(&p).unwrap();
        assert_eq!(mode(&p), 0o600);
        set(&p, 0o644);
        private_file(&p).unwrap();
        assert_eq!(mode(&p), 0o600);
        let target = tmp.path().join("target");
        fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, tmp.path().join("link")).unwrap();
        assert!(private_file(&tmp.path().join("link")).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"keep");
    }

    #[test]
    fn user_files_replace_a_link_instead_of_following_it() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let qr = tmp.path().join("qr.png");
        std::os::unix::fs::symlink(&victim, &qr).unwrap();
        write_user_file(&qr, b"png").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert!(fs::symlink_metadata(&qr).unwrap().is_file());
        assert_eq!(mode(&qr), 0o600);
        assert_eq!(fs::read(&qr).unwrap(), b"png");
    }
}
