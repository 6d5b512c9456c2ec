//! The files an ACP agent may read and write through the client
//! (`fs/read_text_file`, `fs/write_text_file`): only inside the task's
//! project directory.
//!
//! A path must be absolute (the protocol says so) and have no `..`
//! component. Symbolic links are resolved before the check: a link inside
//! the project that points out of it is refused, for reading and for
//! writing. A file that does not exist yet is checked through its nearest
//! existing ancestor, and its missing directories are created (inside the
//! project, by construction). Files larger than [`MAX_FILE_BYTES`] are
//! neither read nor written.
//!
//! The check and the access are two steps: a local process that swaps a
//! directory for a symbolic link between them could redirect one access.
//! That process could write the file itself; the check is against the agent
//! being talked into leaving the project, not against other local users.

use std::io;
use std::path::{Component, Path, PathBuf};

/// Largest file read or written for an agent, in bytes.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Why a file request was refused.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The path is relative.
    #[error("`{0}` is not an absolute path")]
    NotAbsolute(PathBuf),
    /// The path has a `..` component.
    #[error("`{0}` contains `..`")]
    ParentDir(PathBuf),
    /// The path, its symbolic links resolved, is not inside the project.
    #[error("`{path}` is outside the project directory `{root}`")]
    Outside {
        /// The path asked for.
        path: PathBuf,
        /// The project directory.
        root: PathBuf,
    },
    /// The file does not exist.
    #[error("`{0}` does not exist")]
    NotFound(PathBuf),
    /// The path is not a regular file (a directory, a device, …).
    #[error("`{0}` is not a regular file")]
    NotAFile(PathBuf),
    /// The file, or the content to write, is too large.
    #[error("`{path}` is too large ({size} bytes; at most {max})")]
    TooLarge {
        /// The path.
        path: PathBuf,
        /// Its size, or the content's.
        size: u64,
        /// [`MAX_FILE_BYTES`].
        max: u64,
    },
    /// The file is not UTF-8 text.
    #[error("`{0}` is not UTF-8 text")]
    NotText(PathBuf),
    /// Reading or writing failed.
    #[error("`{path}`: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

impl FsError {
    fn io(path: &Path, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::NotFound {
            FsError::NotFound(path.to_owned())
        } else {
            FsError::Io { path: path.to_owned(), source }
        }
    }
}

/// The project directory, canonical, that file requests are confined to.
#[derive(Debug, Clone)]
pub struct Project {
    root: PathBuf,
}

impl Project {
    /// `dir`, canonicalised (it must exist).
    ///
    /// # Errors
    /// [`FsError`] if it cannot be resolved.
    pub fn new(dir: &Path) -> Result<Self, FsError> {
        let root = std::fs::canonicalize(dir).map_err(|e| FsError::io(dir, e))?;
        Ok(Project { root })
    }

    /// The canonical project directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Absolute, no `..`.
    fn lexical(&self, path: &Path) -> Result<(), FsError> {
        if !path.is_absolute() {
            return Err(FsError::NotAbsolute(path.to_owned()));
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(FsError::ParentDir(path.to_owned()));
        }
        Ok(())
    }

    fn inside(&self, asked: &Path, resolved: PathBuf) -> Result<PathBuf, FsError> {
        if resolved.starts_with(&self.root) {
            Ok(resolved)
        } else {
            Err(FsError::Outside { path: asked.to_owned(), root: self.root.clone() })
        }
    }

    /// An existing file inside the project, its links resolved.
    ///
    /// # Errors
    /// [`FsError`] when it is not.
    pub fn existing(&self, path: &Path) -> Result<PathBuf, FsError> {
        self.lexical(path)?;
        let resolved = match std::fs::canonicalize(path) {
            Ok(resolved) => resolved,
            // Whether a file outside exists is not the agent's business.
            Err(_) if !path.starts_with(&self.root) => {
                return Err(FsError::Outside { path: path.to_owned(), root: self.root.clone() });
            }
            Err(e) => return Err(FsError::io(path, e)),
        };
        self.inside(path, resolved)
    }

    /// Where a write to `path` goes: the file's resolved path if it exists,
    /// else the resolved nearest existing ancestor joined with the missing
    /// names. Creates nothing.
    ///
    /// # Errors
    /// [`FsError`] when that is not inside the project.
    pub fn writable(&self, path: &Path) -> Result<PathBuf, FsError> {
        self.lexical(path)?;
        let mut missing = Vec::new();
        let mut existing = path;
        let base = loop {
            match std::fs::canonicalize(existing) {
                Ok(resolved) => break resolved,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // A dangling symbolic link is not a missing name: it
                    // would be followed by the write.
                    if std::fs::symlink_metadata(existing).is_ok() {
                        return Err(FsError::Outside {
                            path: path.to_owned(),
                            root: self.root.clone(),
                        });
                    }
                    let (Some(parent), Some(name)) = (existing.parent(), existing.file_name())
                    else {
                        return Err(FsError::io(path, e));
                    };
                    missing.push(name.to_owned());
                    existing = parent;
                }
                Err(e) => return Err(FsError::io(path, e)),
            }
        };
        let mut target = self.inside(path, base)?;
        for name in missing.iter().rev() {
            target.push(name);
        }
        Ok(target)
    }

    /// The text of `path`, from 1-based `line` (default 1), at most `limit`
    /// lines (default all).
    ///
    /// # Errors
    /// [`FsError`] when the path is refused, missing, too large or not text.
    pub fn read(
        &self,
        path: &Path,
        line: Option<u32>,
        limit: Option<u32>,
    ) -> Result<String, FsError> {
        let resolved = self.existing(path)?;
        let meta = std::fs::metadata(&resolved).map_err(|e| FsError::io(path, e))?;
        if !meta.is_file() {
            return Err(FsError::NotAFile(path.to_owned()));
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(FsError::TooLarge {
                path: path.to_owned(),
                size: meta.len(),
                max: MAX_FILE_BYTES,
            });
        }
        let bytes = std::fs::read(&resolved).map_err(|e| FsError::io(path, e))?;
        let text = String::from_utf8(bytes).map_err(|_| FsError::NotText(path.to_owned()))?;
        if line.is_none() && limit.is_none() {
            return Ok(text);
        }
        let skip = usize::try_from(line.unwrap_or(1).saturating_sub(1)).unwrap_or(usize::MAX);
        let take = limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        Ok(text.split_inclusive('\n').skip(skip).take(take).collect())
    }

    /// Writes `content` to `path` (created, with its missing directories,
    /// or replaced).
    ///
    /// # Errors
    /// [`FsError`] when the path is refused, the content too large, or the
    /// write fails.
    pub fn write(&self, path: &Path, content: &str) -> Result<(), FsError> {
        let size = u64::try_from(content.len()).unwrap_or(u64::MAX);
        if size > MAX_FILE_BYTES {
            return Err(FsError::TooLarge { path: path.to_owned(), size, max: MAX_FILE_BYTES });
        }
        let target = self.writable(path)?;
        if std::fs::metadata(&target).is_ok_and(|m| !m.is_file()) {
            return Err(FsError::NotAFile(path.to_owned()));
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| FsError::io(path, e))?;
        }
        std::fs::write(&target, content).map_err(|e| FsError::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use super::*;

    fn setup() -> (tempfile::TempDir, Project, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let root = base.join("project");
        let outside = base.join("outside");
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("src/lib.rs"), "one\ntwo\nthree\n").unwrap();
        std::fs::write(outside.join("secret"), "s3cret").unwrap();
        (dir, Project::new(&root).unwrap(), outside)
    }

    #[test]
    fn reads_and_writes_inside_the_project() {
        let (_dir, p, _) = setup();
        let root = p.root().to_owned();
        assert_eq!(p.read(&root.join("src/lib.rs"), None, None).unwrap(), "one\ntwo\nthree\n");
        assert_eq!(p.read(&root.join("src/lib.rs"), Some(2), Some(1)).unwrap(), "two\n");
        assert_eq!(p.read(&root.join("src/lib.rs"), Some(3), None).unwrap(), "three\n");
        p.write(&root.join("new/dir/file.txt"), "hi").unwrap();
        assert_eq!(std::fs::read_to_string(root.join("new/dir/file.txt")).unwrap(), "hi");
        p.write(&root.join("src/lib.rs"), "replaced").unwrap();
        assert_eq!(std::fs::read_to_string(root.join("src/lib.rs")).unwrap(), "replaced");
    }

    #[test]
    fn refuses_paths_outside_relative_or_with_dot_dot() {
        let (_dir, p, outside) = setup();
        let root = p.root().to_owned();
        let secret = outside.join("secret");
        assert!(matches!(p.read(&secret, None, None), Err(FsError::Outside { .. })));
        assert!(matches!(p.write(&secret, "x"), Err(FsError::Outside { .. })));
        assert!(matches!(p.write(&outside.join("new"), "x"), Err(FsError::Outside { .. })));
        let dotdot = root.join("../outside/secret");
        assert!(matches!(p.read(&dotdot, None, None), Err(FsError::ParentDir(_))));
        assert!(matches!(p.write(&root.join("src/../x"), "x"), Err(FsError::ParentDir(_))));
        assert!(matches!(
            p.read(Path::new("src/lib.rs"), None, None),
            Err(FsError::NotAbsolute(_))
        ));
        assert!(matches!(p.write(Path::new("x"), "x"), Err(FsError::NotAbsolute(_))));
        assert!(matches!(
            p.read(Path::new("/etc/passwd"), None, None),
            Err(FsError::Outside { .. })
        ));
        assert!(matches!(p.read(&root.join("missing"), None, None), Err(FsError::NotFound(_))));
        assert!(matches!(p.read(&root.join("src"), None, None), Err(FsError::NotAFile(_))));
        assert!(matches!(p.write(&root.join("src"), "x"), Err(FsError::NotAFile(_))));
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "s3cret");
        assert!(!outside.join("new").exists());
    }

    #[cfg(unix)]
    #[test]
    fn refuses_symbolic_links_that_leave_the_project() {
        let (_dir, p, outside) = setup();
        let root = p.root().to_owned();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("link")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
        std::os::unix::fs::symlink(outside.join("nothing-yet"), root.join("dangling")).unwrap();
        std::os::unix::fs::symlink(root.join("src/lib.rs"), root.join("inner")).unwrap();
        assert!(matches!(p.read(&root.join("link"), None, None), Err(FsError::Outside { .. })));
        assert!(matches!(p.write(&root.join("link"), "x"), Err(FsError::Outside { .. })));
        assert!(matches!(
            p.read(&root.join("out/secret"), None, None),
            Err(FsError::Outside { .. })
        ));
        assert!(matches!(p.write(&root.join("out/new/file"), "x"), Err(FsError::Outside { .. })));
        assert!(matches!(p.write(&root.join("dangling"), "x"), Err(FsError::Outside { .. })));
        assert!(!outside.join("nothing-yet").exists() && !outside.join("new").exists());
        assert_eq!(std::fs::read_to_string(outside.join("secret")).unwrap(), "s3cret");
        // A link that stays inside is fine.
        assert_eq!(p.read(&root.join("inner"), Some(1), Some(1)).unwrap(), "one\n");
    }

    #[test]
    fn refuses_large_files() {
        let (_dir, p, _) = setup();
        let root = p.root().to_owned();
        let big = "x".repeat(usize::try_from(MAX_FILE_BYTES).unwrap() + 1);
        assert!(matches!(p.write(&root.join("big"), &big), Err(FsError::TooLarge { .. })));
        std::fs::write(root.join("big"), &big).unwrap();
        assert!(matches!(p.read(&root.join("big"), None, None), Err(FsError::TooLarge { .. })));
        std::fs::write(root.join("bin"), [0xff, 0xfe]).unwrap();
        assert!(matches!(p.read(&root.join("bin"), None, None), Err(FsError::NotText(_))));
    }
}
