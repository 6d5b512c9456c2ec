//! The data directory's modes: created 0700, and checked when the relay
//! starts: the directory and every directory under it made 0700 and every
//! file 0600 where they allowed more (each fix is logged as a warning),
//! whatever the umask. Files the relay writes itself are created 0600
//! ([`private_file`]).
//!
//! Nobody but the relay's user (and root) may be able to replace the data
//! directory, or what is in it, while the relay works on it:
//! * the directories above it ([`check_parents`]): one that every user may
//!   write without the sticky bit (`/tmp` has it) is refused, and so is a
//!   parent directory that belongs to another user than root or the
//!   relay's (its owner can rename what is in it); one that its group may
//!   write without the sticky bit is logged as a warning (a user's private
//!   group under `umask 002` often is: refusing it would refuse the
//!   ordinary home directory of many systems);
//! * the walk goes by file descriptor, never by path: the data directory is
//!   opened from its parent with `O_NOFOLLOW | O_DIRECTORY` (a symbolic
//!   link there is refused), checked with `fstat` and made 0700 with
//!   `fchmod` before anything in it is looked at; each entry is then
//!   looked at without following links (symbolic links inside are left
//!   alone), directories opened the same way, files opened with
//!   `O_NOFOLLOW` and fixed with `fchmod`. A link swapped in at any step is
//!   never followed.
//!
//! The directory and everything in it must belong to the relay's own user:
//! a mode keeps out everyone but the owner, so a directory or file of
//! another user (one made in a shared directory before the relay first ran)
//! is refused, not "fixed". Nobody else can put anything into a 0700
//! directory of the relay's own, so what the relay later finds there is its
//! own.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;

/// Create `dir` (and its missing parents) 0700, or fix its modes and those
/// of everything in it.
///
/// # Errors
/// `dir` is a symbolic link or not a directory, it or something in it
/// belongs to another user, a directory above it lets other users replace
/// it, or it cannot be created or read.
pub(crate) fn secure_dir(dir: &Path) -> io::Result<()> {
    secure_dir_for(dir, own_uid())
}

/// The user the relay runs as (`None`: no such notion here).
fn own_uid() -> Option<u32> {
    #[cfg(unix)]
    return Some(rustix::process::geteuid().as_raw());
    #[cfg(not(unix))]
    None
}

/// [`secure_dir`] for a relay running as `uid`.
fn secure_dir_for(dir: &Path, uid: Option<u32>) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(invalid(format!(
                "the data directory {} is a symbolic link",
                dir.display()
            )));
        }
        Ok(meta) if !meta.is_dir() => {
            return Err(invalid(format!(
                "the data directory {} is not a directory",
                dir.display()
            )));
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_private_dir(dir)?,
        Err(e) => return Err(e),
    }
    #[cfg(unix)]
    return walk::secure(dir, uid);
    #[cfg(not(unix))]
    {
        let _ = uid;
        Ok(())
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Create `dir` and its missing parents with mode 0700.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Open `path` for writing, created 0600 (an existing file is made 0600,
/// through the open file); a symbolic link at `path` is not followed.
pub(crate) fn private_file(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
        let nofollow = rustix::fs::OFlags::NOFOLLOW.bits();
        options.custom_flags(i32::try_from(nofollow).unwrap_or(0));
    }
    let file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = file.metadata()?.permissions().mode() & 0o7777;
        if mode & !0o600 != 0 {
            warn_fixed(path, mode, mode & 0o600);
            file.set_permissions(fs::Permissions::from_mode(mode & 0o600))?;
        }
    }
    Ok(file)
}

/// Log that `path`'s mode was narrowed.
fn warn_fixed(path: &Path, from: u32, to: u32) {
    tracing::warn!(
        path = %path.display(),
        from = format!("{from:o}"),
        to = format!("{to:o}"),
        "the relay's data was readable by others: permissions fixed"
    );
}

/// The walk by file descriptor (see the module docs).
#[cfg(unix)]
mod walk {
    use std::ffi::{CString, OsStr};
    use std::io;
    use std::os::fd::OwnedFd;
    use std::os::unix::ffi::OsStrExt as _;
    use std::path::{Path, PathBuf};

    use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
    use rustix::io::Errno;

    use super::{invalid, warn_fixed};

    const SET_ID_STICKY_RWX: u32 = 0o7777;
    const STICKY: u32 = 0o1000;

    /// Check the directories above `dir`, open it without following a
    /// link, and fix it and everything in it.
    pub(super) fn secure(dir: &Path, uid: Option<u32>) -> io::Result<()> {
        let name = dir.file_name().ok_or_else(|| {
            invalid(format!(
                "name the data directory {} by a path ending in its name",
                dir.display()
            ))
        })?;
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let parent = std::fs::canonicalize(parent)?;
        check_parents(&parent, uid)?;
        let parent_fd = rustix::fs::open(
            &parent,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let fd = open_dir_at(&parent_fd, name).map_err(|e| match e {
            Errno::LOOP | Errno::NOTDIR => invalid(format!(
                "the data directory {} is a symbolic link or not a directory",
                dir.display()
            )),
            e => e.into(),
        })?;
        fix_dir(&fd, dir, uid)
    }

    /// Refuse `parent` (the data directory's, canonical) or a directory
    /// above it that lets another user replace what is in it: writable by
    /// every user without the sticky bit, or (the parent itself) owned by
    /// another user than root or `uid`. Warn about one its group may write
    /// without the sticky bit.
    pub(super) fn check_parents(parent: &Path, uid: Option<u32>) -> io::Result<()> {
        for (i, dir) in parent.ancestors().enumerate() {
            let st = rustix::fs::stat(dir)?;
            let mode = st.st_mode & SET_ID_STICKY_RWX;
            let sticky = mode & STICKY != 0;
            if !sticky && mode & 0o002 != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{} is writable by every user ({mode:o}) and has no sticky bit: anyone \
                         could replace the relay's data directory in it; put the data directory \
                         where only root and the relay's user can write",
                        dir.display()
                    ),
                ));
            }
            if i == 0
                && let Some(uid) = uid
                && st.st_uid != 0
                && st.st_uid != uid
            {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{} belongs to user {}, not to root or the relay's user {uid}: its owner \
                         could replace the relay's data directory in it",
                        dir.display(),
                        st.st_uid
                    ),
                ));
            }
            if !sticky && mode & 0o020 != 0 {
                tracing::warn!(
                    path = %dir.display(),
                    mode = format!("{mode:o}"),
                    "a directory above the relay's data directory is writable by its group: \
                     members of the group could replace the data directory"
                );
            }
        }
        Ok(())
    }

    fn open_dir_at(at: &OwnedFd, name: impl rustix::path::Arg) -> Result<OwnedFd, Errno> {
        rustix::fs::openat(
            at,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    }

    /// Make the directory open as `fd` (at `path`, for the logs) 0700 and
    /// everything under it private, refusing anything that belongs to
    /// another user than `uid`.
    pub(super) fn fix_dir(fd: &OwnedFd, path: &Path, uid: Option<u32>) -> io::Result<()> {
        let st = rustix::fs::fstat(fd)?;
        owned(path, &st, uid)?;
        let mode = st.st_mode & SET_ID_STICKY_RWX;
        if mode & !0o700 != 0 {
            warn_fixed(path, mode, mode & 0o700);
            rustix::fs::fchmod(fd, Mode::from_raw_mode(mode & 0o700))?;
        }
        // From here on nobody but its owner can change what is in it.
        let mut names: Vec<CString> = Vec::new();
        for entry in Dir::read_from(fd)? {
            let entry = entry?;
            let name = entry.file_name();
            if name != c"." && name != c".." {
                names.push(name.to_owned());
            }
        }
        for name in names {
            let child: PathBuf = path.join(OsStr::from_bytes(name.to_bytes()));
            let st = match rustix::fs::statat(fd, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Symlink => {}
                FileType::Directory => match open_dir_at(fd, name.as_c_str()) {
                    Ok(sub) => fix_dir(&sub, &child, uid)?,
                    // Replaced meanwhile (by the relay's own user).
                    Err(Errno::LOOP | Errno::NOTDIR | Errno::NOENT) => {}
                    Err(e) => return Err(e.into()),
                },
                _ => fix_file(fd, &name, &child, &st, uid)?,
            }
        }
        Ok(())
    }

    /// Make the file `name` in the directory `dir` (whose `statat` is `st`) 0600.
    fn fix_file(
        dir: &OwnedFd,
        name: &CString,
        path: &Path,
        st: &Stat,
        uid: Option<u32>,
    ) -> io::Result<()> {
        owned(path, st, uid)?;
        let mode = st.st_mode & SET_ID_STICKY_RWX;
        if mode & !0o600 == 0 {
            return Ok(());
        }
        warn_fixed(path, mode, mode & 0o600);
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        match rustix::fs::openat(dir, name.as_c_str(), flags, Mode::empty()) {
            Ok(file) => {
                let now = rustix::fs::fstat(&file)?;
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
                    // Replaced meanwhile (by the relay's own user): its own business.
                    return Ok(());
                }
                rustix::fs::fchmod(&file, Mode::from_raw_mode(mode & 0o600))?;
            }
            Err(Errno::LOOP) => {}
            // A file that cannot be opened for reading (a socket, or one its
            // owner may not read): by name, which is safe here because the
            // directory is the relay's own and 0700 (nobody else can swap
            // the entry for a link), and `statat` saw no link.
            Err(_) => rustix::fs::chmodat(
                dir,
                name.as_c_str(),
                Mode::from_raw_mode(mode & 0o600),
                AtFlags::empty(),
            )?,
        }
        Ok(())
    }

    /// Refuse `path` (whose `stat` is `st`) unless it belongs to `uid`:
    /// its owner can read it whatever its mode.
    fn owned(path: &Path, st: &Stat, uid: Option<u32>) -> io::Result<()> {
        match uid {
            Some(uid) if st.st_uid != uid => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} belongs to user {}, not to the relay's user {uid}: its owner can read \
                     the relay's data whatever the modes; use a data directory of the relay's \
                     own",
                    path.display(),
                    st.st_uid
                ),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).map(|m| m.permissions().mode() & 0o777).unwrap_or(0)
    }

    #[test]
    fn a_loose_tree_is_made_private_and_links_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let outside = tmp.path().join("outside.txt");
        fs::write(&outside, "not ours").unwrap_or_else(|e| panic!("{e}"));
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o644)).ok();
        let data = tmp.path().join("data");
        fs::create_dir_all(data.join("tls")).unwrap_or_else(|e| panic!("{e}"));
        fs::write(data.join("relay.redb"), "x").unwrap_or_else(|e| panic!("{e}"));
        fs::write(data.join("tls/cert.pem"), "x").unwrap_or_else(|e| panic!("{e}"));
        for (p, m) in [(&data, 0o755), (&data.join("tls"), 0o775)] {
            fs::set_permissions(p, fs::Permissions::from_mode(m)).ok();
        }
        for p in [data.join("relay.redb"), data.join("tls/cert.pem")] {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o664)).ok();
        }
        std::os::unix::fs::symlink(&outside, data.join("link")).unwrap_or_else(|e| panic!("{e}"));
        secure_dir(&data).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("tls")), 0o700);
        assert_eq!(mode(&data.join("relay.redb")), 0o600);
        assert_eq!(mode(&data.join("tls/cert.pem")), 0o600);
        assert_eq!(mode(&outside), 0o644, "a link was followed");
        // A data directory that is a link is refused.
        let link = tmp.path().join("data-link");
        std::os::unix::fs::symlink(&data, &link).unwrap_or_else(|e| panic!("{e}"));
        assert!(secure_dir(&link).is_err());
        // A fresh one is created 0700.
        let fresh = tmp.path().join("a/b");
        secure_dir(&fresh).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(mode(&fresh), 0o700);
    }
    /// Review r1: a data directory (or a file in it) of another user, made
    /// where that user could (a shared directory) before the relay first
    /// ran, was "fixed" to 0700/0600 and used: its owner reads the store
    /// whatever the modes. It is refused.
    #[test]
    fn a_data_dir_or_file_of_another_user_is_refused() {
        use std::os::unix::fs::MetadataExt as _;
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let data = tmp.path().join("data");
        fs::create_dir(&data).unwrap_or_else(|e| panic!("{e}"));
        fs::write(data.join("relay.redb"), "").unwrap_or_else(|e| panic!("{e}"));
        let me = fs::metadata(&data).map(|m| m.uid()).unwrap_or_else(|e| panic!("{e}"));
        // As the owner: fine. As anyone else: refused, and nothing changed.
        fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).ok();
        let open = |p: &Path| {
            rustix::fs::open(p, rustix::fs::OFlags::RDONLY, rustix::fs::Mode::empty())
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let err = walk::fix_dir(&open(&data), &data, Some(me + 1)).err().map(|e| e.to_string());
        assert!(
            err.is_some_and(|e| e.contains("belongs to user")),
            "another user's data dir was taken"
        );
        assert_eq!(mode(&data), 0o755);
        secure_dir_for(&data, Some(me)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(mode(&data), 0o700);
        // A file of another user inside one's own directory: refused too.
        fs::set_permissions(data.join("relay.redb"), fs::Permissions::from_mode(0o644)).ok();
        let sub = data.join("sub");
        fs::create_dir(&sub).unwrap_or_else(|e| panic!("{e}"));
        fs::write(sub.join("f"), "").unwrap_or_else(|e| panic!("{e}"));
        let err = walk::fix_dir(&open(&sub), &sub, Some(me + 1)).err();
        assert!(err.is_some());
    }

    /// Review r1: whoever may rename entries in a directory above the data
    /// dir can swap it for a link or another directory. A parent every user
    /// may write without the sticky bit, or of another user, is refused; a
    /// sticky one (like `/tmp`) is fine; a group-writable one is only
    /// logged.
    #[test]
    fn a_data_dir_that_other_users_could_replace_is_refused() {
        use std::os::unix::fs::MetadataExt as _;
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let shared = tmp.path().join("shared");
        fs::create_dir(&shared).unwrap_or_else(|e| panic!("{e}"));
        let set = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).ok();
        let me = fs::metadata(&shared).map(|m| m.uid()).unwrap_or_else(|e| panic!("{e}"));
        let data = shared.join("data");
        // World-writable, no sticky bit: refused, and nothing is created.
        set(&shared, 0o777);
        let err = secure_dir_for(&data, Some(me)).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("writable by every user")), "accepted");
        // The same one level further up.
        let deeper = shared.join("mine/data");
        create_private_dir(&shared.join("mine")).unwrap_or_else(|e| panic!("{e}"));
        assert!(secure_dir_for(&deeper, Some(me)).is_err(), "an ancestor that anyone may write");
        // With the sticky bit: fine.
        set(&shared, 0o1777);
        secure_dir_for(&data, Some(me)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(mode(&data), 0o700);
        // Group-writable: works (a warning is logged).
        set(&shared, 0o775);
        secure_dir_for(&data, Some(me)).unwrap_or_else(|e| panic!("{e}"));
        // A parent that belongs to another user (not root): refused.
        set(&shared, 0o755);
        let err = secure_dir_for(&data, Some(me + 1)).err().map(|e| e.to_string());
        let other = if me == 0 { "belongs to user" } else { "not to root" };
        assert!(err.is_some_and(|e| e.contains(other)), "a parent of another user");
    }

    /// Review r1: the checks and the changes went by path, so whoever can
    /// rename entries in the data dir's parent swapped the directory for a
    /// link between the check and the fix, and the relay made whatever the
    /// link names, and everything under it, 0700/0600 (a relay run as root,
    /// `data -> /`: the system). The walk goes by file descriptor without
    /// following links: however the swaps fall, nothing outside the data
    /// dir changes.
    #[test]
    fn a_link_swapped_in_for_the_data_dir_is_never_followed() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let victim = tmp.path().join("victim");
        fs::create_dir(&victim).unwrap_or_else(|e| panic!("{e}"));
        fs::write(victim.join("file"), "x").unwrap_or_else(|e| panic!("{e}"));
        let set = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).ok();
        set(&victim, 0o755);
        set(&victim.join("file"), 0o644);
        let data = tmp.path().join("data");
        let real = tmp.path().join("data.real");
        create_private_dir(&data).unwrap_or_else(|e| panic!("{e}"));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let attacker = {
            let (data, real, victim, stop) =
                (data.clone(), real.clone(), victim.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = fs::rename(&data, &real);
                    let _ = std::os::unix::fs::symlink(&victim, &data);
                    std::thread::yield_now();
                    let _ = fs::remove_file(&data);
                    let _ = fs::rename(&real, &data);
                }
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut tries = 0u32;
        let hit = loop {
            tries += 1;
            let _ = secure_dir(&data);
            if mode(&victim) != 0o755 || mode(&victim.join("file")) != 0o644 {
                break true;
            }
            if std::time::Instant::now() > deadline {
                break false;
            }
        };
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = attacker.join();
        assert!(
            !hit,
            "after {tries} starts the fixer changed a directory outside the data dir: {:o}, file {:o}",
            mode(&victim),
            mode(&victim.join("file"))
        );
        assert!(tries > 100, "only {tries} tries");
    }
}
