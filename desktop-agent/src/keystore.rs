//! The desktop's long-term device key, kept in a file in the agent's data
//! directory (`<data_dir>/device.key`).
//!
//! The OS keychain (the `keyring` crate: macOS Keychain, Windows Credential
//! Manager, the Secret Service on Linux) is the intended primary store where
//! one works; this file is the fallback for machines without one (headless
//! servers, containers). The keychain integration is not part of this module
//! yet.
//!
//! # The file
//!
//! ```text
//! tandem-device-key v1
//! secret <the 32 secret bytes, 43 characters of unpadded base64url>
//! device-id <the device id the secret gives, 26 characters>
//! ```
//!
//! The `device-id` line is a check: a damaged secret that still decodes is
//! caught instead of silently becoming another identity.
//!
//! # Rules
//!
//! * A new file is written with mode 0600, atomically (a temporary file in
//!   the same directory, fsync, then linked into place without ever
//!   replacing an existing key, then the directory is fsynced).
//! * A file that group or others may read or write is refused
//!   ([`KeyStoreError::InsecurePermissions`]), as is a file owned by another
//!   user ([`KeyStoreError::WrongOwner`]). Without `libc` the process's
//!   effective uid is not available, so "another user" means a user other
//!   than the owner of the data directory, which the agent creates itself.
//! * A damaged file is an error ([`KeyStoreError::Corrupt`]), never a reason
//!   to make a new key: a new key would orphan every paired device.
//! * The secret never appears in logs, errors or `Debug` output; buffers that
//!   held it are overwritten when dropped (best effort: without the `zeroize`
//!   crate, copies made on the stack or by reallocation are not reached).
//!
//! On non-Unix platforms the mode and owner checks are skipped.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tandem_proto::DeviceKey;
use tandem_proto::entropy::{Entropy, EntropyError};
use thiserror::Error;

/// The key file's name inside the data directory.
pub const KEY_FILE_NAME: &str = "device.key";

/// The first line of a version 1 key file.
const HEADER_V1: &str = "tandem-device-key v1";
/// The common prefix of every version's first line.
const HEADER_PREFIX: &str = "tandem-device-key v";
/// A key file is a few dozen bytes; anything much larger is not one.
const MAX_KEY_FILE_LEN: u64 = 1024;

/// Why the device key could not be loaded or created.
#[derive(Debug, Error)]
pub enum KeyStoreError {
    /// A filesystem operation failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "create", …).
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The key file may be read or written by group or others.
    #[error(
        "the device key file {} can be read or written by other users (mode {mode:o}); \
         run `chmod 600 {}` and start again",
        path.display(),
        path.display()
    )]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file belongs to another user than the data directory.
    #[error(
        "the device key file {} is owned by uid {owner}, not by uid {expected} (the owner of \
         its directory); check where it came from, then `chown` it or move it away",
        path.display()
    )]
    WrongOwner {
        /// The key file.
        path: PathBuf,
        /// The file's owner.
        owner: u32,
        /// The data directory's owner.
        expected: u32,
    },
    /// Something other than a regular file is at the key file's path.
    #[error("{} is not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The key file exists but cannot be understood. It is left untouched.
    #[error(
        "the device key file {} is damaged ({reason}); it was left as it is, because a new key \
         would unpair every device: restore it from a backup, or move it away and pair again",
        path.display()
    )]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No randomness for a new key.
    #[error(transparent)]
    Entropy(#[from] EntropyError),
}

/// Where the desktop's device key lives. Holds only the path: `Debug` shows
/// no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStore {
    path: PathBuf,
}

impl KeyStore {
    /// The store for the agent's data directory: the key is
    /// `<data_dir>/device.key`. Touches nothing on disk.
    #[must_use]
    pub fn new(data_dir: &Path) -> Self {
        Self { path: data_dir.join(KEY_FILE_NAME) }
    }

    /// The key file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn data_dir(&self) -> &Path {
        self.path.parent().unwrap_or_else(|| Path::new("."))
    }

    /// The stored key, or `None` when there is no key file yet.
    ///
    /// # Errors
    /// [`KeyStoreError`] when the file cannot be read, is not private to its
    /// owner ([`KeyStoreError::InsecurePermissions`],
    /// [`KeyStoreError::WrongOwner`]) or is damaged
    /// ([`KeyStoreError::Corrupt`]).
    pub fn load(&self) -> Result<Option<DeviceKey>, KeyStoreError> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(KeyStoreError::Io { action: "open", path: self.path.clone(), source });
            }
        };
        let key = self.read_key(file)?;
        tracing::debug!(
            path = %self.path.display(),
            device_id = %key.public().device_id(),
            "loaded the device key"
        );
        Ok(Some(key))
    }

    /// The stored key; if there is none yet, a new one from `entropy`,
    /// stored first (mode 0600, atomically; the data directory is created
    /// with mode 0700 if missing). An existing file is never replaced, even
    /// when it is damaged or another process created it meanwhile.
    ///
    /// # Errors
    /// Those of [`Self::load`], filesystem errors while creating the key,
    /// and [`KeyStoreError::Entropy`].
    pub fn load_or_create(&self, entropy: &mut Entropy) -> Result<DeviceKey, KeyStoreError> {
        let dir = self.data_dir();
        create_private_dir(dir).map_err(|source| KeyStoreError::Io {
            action: "create the directory",
            path: dir.to_path_buf(),
            source,
        })?;
        if let Some(key) = self.load()? {
            return Ok(key);
        }
        let key = DeviceKey::generate(entropy)?;
        let contents = encode_key_file(&key);
        match write_private(dir, KEY_FILE_NAME, &contents.0, Overwrite::Never) {
            Ok(()) => {
                tracing::info!(
                    path = %self.path.display(),
                    device_id = %key.public().device_id(),
                    "created a new device key"
                );
                Ok(key)
            }
            // Another process created the key between our look and our link:
            // theirs wins, since it may already be in use.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.load()?.ok_or_else(|| KeyStoreError::Io {
                    action: "read",
                    path: self.path.clone(),
                    source: io::Error::new(io::ErrorKind::NotFound, "key file vanished"),
                })
            }
            Err(source) => {
                Err(KeyStoreError::Io { action: "create", path: self.path.clone(), source })
            }
        }
    }

    fn read_key(&self, file: File) -> Result<DeviceKey, KeyStoreError> {
        let io_err = |source| KeyStoreError::Io { action: "read", path: self.path.clone(), source };
        let meta = file.metadata().map_err(io_err)?;
        let expected_owner = owner_of(self.data_dir()).map_err(|source| KeyStoreError::Io {
            action: "inspect",
            path: self.data_dir().to_path_buf(),
            source,
        })?;
        check_private(&meta, expected_owner).map_err(|p| match p {
            FileProblem::NotAFile => KeyStoreError::NotAFile { path: self.path.clone() },
            FileProblem::Permissions(mode) => {
                KeyStoreError::InsecurePermissions { path: self.path.clone(), mode }
            }
            FileProblem::Owner { owner, expected } => {
                KeyStoreError::WrongOwner { path: self.path.clone(), owner, expected }
            }
        })?;
        let corrupt = |reason: &str| KeyStoreError::Corrupt {
            path: self.path.clone(),
            reason: reason.into(),
        };
        if meta.len() > MAX_KEY_FILE_LEN {
            return Err(corrupt("far too large to be a key file"));
        }
        let mut buf = SecretBuf(Vec::with_capacity(usize::try_from(MAX_KEY_FILE_LEN).unwrap_or(0)));
        file.take(MAX_KEY_FILE_LEN + 1).read_to_end(&mut buf.0).map_err(io_err)?;
        decode_key_file(&buf.0).map_err(corrupt)
    }
}

/// `tandem-device-key v1\nsecret …\ndevice-id …\n`.
fn encode_key_file(key: &DeviceKey) -> SecretBuf {
    let id = key.public().device_id().to_string();
    let mut out = SecretBuf(Vec::with_capacity(128));
    out.0.extend_from_slice(HEADER_V1.as_bytes());
    out.0.extend_from_slice(b"\nsecret ");
    let secret = SecretBuf(key.to_bytes().to_vec());
    base64url_encode(&secret.0, &mut out.0);
    out.0.extend_from_slice(b"\ndevice-id ");
    out.0.extend_from_slice(id.as_bytes());
    out.0.push(b'\n');
    out
}

fn decode_key_file(bytes: &[u8]) -> Result<DeviceKey, &'static str> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not text")?;
    let mut lines = text.lines();
    match lines.next() {
        Some(HEADER_V1) => {}
        Some(h) if h.starts_with(HEADER_PREFIX) => {
            return Err("unknown format version (written by a newer Tandem?)");
        }
        _ => return Err("not a Tandem device key file"),
    }
    let secret = lines
        .next()
        .and_then(|l| l.strip_prefix("secret "))
        .ok_or("the `secret` line is missing")?;
    let secret = base64url_decode_32(secret.as_bytes()).ok_or("the secret is not 32 bytes")?;
    let key = DeviceKey::from_bytes(secret.0);
    let id = lines
        .next()
        .and_then(|l| l.strip_prefix("device-id "))
        .ok_or("the `device-id` line is missing")?;
    if lines.any(|l| !l.is_empty()) {
        return Err("unexpected lines after `device-id`");
    }
    if key.public().device_id().to_string() != id {
        return Err("the secret does not match the device id");
    }
    Ok(key)
}

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Unpadded base64url (RFC 4648 §5).
fn base64url_encode(bytes: &[u8], out: &mut Vec<u8>) {
    for chunk in bytes.chunks(3) {
        let mut n = 0u32;
        for i in 0..3 {
            n = (n << 8) | u32::from(chunk.get(i).copied().unwrap_or(0));
        }
        for i in 0..=chunk.len() {
            let sextet = (n >> (18 - 6 * i)) & 0x3f;
            out.push(BASE64URL.get(sextet as usize).copied().unwrap_or(b'A'));
        }
    }
}

fn base64url_value(c: u8) -> Option<u32> {
    let v = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// Exactly 32 bytes of canonical unpadded base64url (43 characters, the
/// last one's two unused bits zero).
fn base64url_decode_32(s: &[u8]) -> Option<Secret32> {
    if s.len() != 43 {
        return None;
    }
    let mut out = Secret32([0; 32]);
    let mut acc = 0u32;
    let mut bits = 0u32;
    let mut i = 0usize;
    for &c in s {
        acc = (acc << 6) | base64url_value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            *out.0.get_mut(i)? = (acc >> bits) as u8;
            i += 1;
            acc &= (1 << bits) - 1;
        }
    }
    (i == 32 && acc == 0).then_some(out)
}

/// 32 secret bytes, overwritten when dropped (best effort).
struct Secret32([u8; 32]);

impl Drop for Secret32 {
    fn drop(&mut self) {
        self.0.fill(0);
        std::hint::black_box(&mut self.0);
    }
}

/// Bytes that hold secrets (a key file, a serialised link), overwritten when
/// dropped, spare capacity included. Best effort: copies left behind by
/// earlier reallocations are not reached.
pub(crate) struct SecretBuf(pub(crate) Vec<u8>);

impl Drop for SecretBuf {
    fn drop(&mut self) {
        let cap = self.0.capacity();
        self.0.resize(cap, 0);
        self.0.fill(0);
        std::hint::black_box(&mut self.0);
    }
}

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
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn entropy() -> Entropy {
        Entropy::deterministic([7; 32])
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn create_then_load_gives_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        assert!(store.load().unwrap().is_none());
        let created = store.load_or_create(&mut entropy()).unwrap();
        let loaded = store.load().unwrap().unwrap();
        assert_eq!(created.to_bytes(), loaded.to_bytes());
        // Another run, other randomness: still the stored key.
        let again =
            KeyStore::new(dir.path()).load_or_create(&mut Entropy::deterministic([8; 32])).unwrap();
        assert_eq!(again.to_bytes(), created.to_bytes());
        // No temporary files left behind.
        let names: Vec<_> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(KEY_FILE_NAME)]);
    }

    #[test]
    fn keystore_file_format_is_versioned_text() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let key = store.load_or_create(&mut entropy()).unwrap();
        let text = fs::read_to_string(store.path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "tandem-device-key v1");
        assert_eq!(lines[1].len(), "secret ".len() + 43);
        assert_eq!(lines[2], format!("device-id {}", key.public().device_id()));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn keystore_creates_the_data_dir_and_the_file_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b");
        let store = KeyStore::new(&data);
        store.load_or_create(&mut entropy()).unwrap();
        assert_eq!(mode(store.path()), 0o600);
        assert_eq!(mode(&data), 0o700);
    }

    #[test]
    fn keystore_refuses_a_file_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let key = store.load_or_create(&mut entropy()).unwrap();
        for bad in [0o644, 0o640, 0o604, 0o620] {
            fs::set_permissions(store.path(), fs::Permissions::from_mode(bad)).unwrap();
            let err = store.load_or_create(&mut entropy()).unwrap_err();
            match &err {
                KeyStoreError::InsecurePermissions { path, mode } => {
                    assert_eq!(path, store.path());
                    assert_eq!(*mode, bad);
                }
                other => panic!("expected InsecurePermissions, got {other:?}"),
            }
            let msg = err.to_string();
            assert!(msg.contains("chmod 600"), "{msg}");
            assert!(msg.contains(&store.path().display().to_string()), "{msg}");
        }
        // Fixed as the message says: loads again, same key.
        fs::set_permissions(store.path(), fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(store.load().unwrap().unwrap().to_bytes(), key.to_bytes());
    }

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

    #[test]
    fn keystore_refuses_a_corrupt_file_and_leaves_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let key = store.load_or_create(&mut entropy()).unwrap();
        let good = fs::read_to_string(store.path()).unwrap();
        // One character of the secret changed: still base64url, wrong key.
        let flipped = {
            let i = good.find("secret ").unwrap() + "secret ".len() + 5;
            let mut b = good.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            String::from_utf8(b).unwrap()
        };
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "not a Tandem device key file"),
            ("garbage\n".into(), "not a Tandem device key file"),
            (good.replacen("v1", "v2", 1), "unknown format version"),
            (good.lines().take(1).collect::<Vec<_>>().join("\n"), "`secret` line is missing"),
            (good.replace("secret ", "secret x"), "not 32 bytes"),
            (good.lines().take(2).collect::<Vec<_>>().join("\n"), "`device-id` line is missing"),
            (format!("{good}extra\n"), "unexpected lines"),
            (flipped, "does not match the device id"),
        ];
        for (contents, reason) in cases {
            fs::write(store.path(), &contents).unwrap();
            fs::set_permissions(store.path(), fs::Permissions::from_mode(0o600)).unwrap();
            let err = store.load_or_create(&mut entropy()).unwrap_err();
            assert!(matches!(err, KeyStoreError::Corrupt { .. }), "{contents:?}: {err:?}");
            let msg = err.to_string();
            assert!(msg.contains(reason), "{contents:?}: {msg}");
            assert!(msg.contains(&store.path().display().to_string()), "{msg}");
            // Not replaced by a fresh key.
            assert_eq!(fs::read_to_string(store.path()).unwrap(), contents);
        }
        // A key without the final newline still loads.
        fs::write(store.path(), good.trim_end()).unwrap();
        assert_eq!(store.load().unwrap().unwrap().to_bytes(), key.to_bytes());
    }

    #[test]
    fn keystore_never_replaces_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), b"old").unwrap();
        let err = write_private(dir.path(), "f", b"new", Overwrite::Never).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"old");
        write_private(dir.path(), "f", b"new", Overwrite::Replace).unwrap();
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"new");
        assert_eq!(mode(&dir.path().join("f")), 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn keystore_refuses_a_directory_in_place_of_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        fs::create_dir(store.path()).unwrap();
        assert!(store.load_or_create(&mut entropy()).is_err());
    }

    #[test]
    fn keystore_debug_never_shows_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let key = store.load_or_create(&mut entropy()).unwrap();
        let secret = key.to_bytes();
        let mut b64 = Vec::new();
        base64url_encode(&secret, &mut b64);
        let b64 = String::from_utf8(b64).unwrap();
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let decimal = format!("{secret:?}");
        for shown in [format!("{store:?}"), format!("{key:?}"), format!("{:?}", store.load())] {
            assert!(!shown.contains(&b64), "{shown}");
            assert!(!shown.contains(&b64[..8]), "{shown}");
            assert!(!shown.to_lowercase().contains(&hex[..8]), "{shown}");
            assert!(!shown.contains(&decimal[1..decimal.len() - 1]), "{shown}");
        }
        assert!(fs::read_to_string(store.path()).unwrap().contains(&b64));
    }

    #[test]
    fn keystore_base64url_round_trips_and_is_canonical() {
        for seed in 0u8..20 {
            let bytes: Vec<u8> =
                (0..32u8).map(|i| i.wrapping_mul(seed).wrapping_add(seed)).collect();
            let mut s = Vec::new();
            base64url_encode(&bytes, &mut s);
            assert_eq!(s.len(), 43);
            assert_eq!(base64url_decode_32(&s).unwrap().0.to_vec(), bytes);
        }
        // Matches the proto crate's encoding of public keys.
        let pk = DeviceKey::from_bytes([3; 32]).public();
        let mut s = Vec::new();
        base64url_encode(&pk.0, &mut s);
        assert_eq!(String::from_utf8(s).unwrap(), pk.to_string());
        // Non-zero unused bits, wrong length, bad characters.
        let mut s = vec![b'A'; 43];
        s[42] = b'B';
        assert!(base64url_decode_32(&s).is_none());
        assert!(base64url_decode_32(&[b'A'; 42]).is_none());
        assert!(base64url_decode_32(&[b'='; 43]).is_none());
    }
}
