//! The desktop's long-term device key: in the OS keychain where one works,
//! else in a 0600 file in the agent's data directory
//! (`<data_dir>/device.key`).
//!
//! # Where the key lives
//!
//! [`KeyStore::new`] picks the place from `TANDEM_KEYSTORE`
//! ([`KEYSTORE_ENV`]):
//!
//! * `auto` (or unset): the OS keychain (macOS Keychain, Windows Credential
//!   Manager, the Secret Service on Linux and the BSDs, through
//!   `keyring-core` and one store crate per OS) when it answers, else the
//!   file. A machine without one (a headless server, a container, an SSH
//!   login without a D-Bus session) uses the file and says so only in a
//!   debug log.
//! * `keychain`: the keychain or an error ([`KeyStoreError::KeychainRequired`]).
//! * `file`: the file only, as before the keychain existed.
//!
//! In the keychain the key is one entry, service `tandem`, account
//! `device-key-<24 hex digits>` (a hash of the data directory's absolute
//! path, so that two data directories on one machine never share a key). The
//! entry holds the same text as the file below. A small file next to where
//! the key file would be, `device.key.keychain`, records the account: it
//! tells a later run that the key is in the keychain, so that a run which
//! cannot reach the keychain fails ([`KeyStoreError::KeychainUnreachable`])
//! instead of making a new key that would unpair every device.
//!
//! **Moving an existing file into the keychain.** When the keychain works,
//! has no entry yet and a key file exists, the key is written to the
//! keychain, read back and compared; only then is `device.key.keychain`
//! written and the key file removed. If any step fails the file stays and
//! is used (a warning is logged); the move is tried again on the next load.
//! A leftover file holding the same key as the keychain (a move interrupted
//! between the two steps) is removed; one holding another key is an error
//! ([`KeyStoreError::Conflict`]), because only the user can tell which one
//! the paired devices know.
//!
//! [`KeyStore::backend`] says which place holds the key (`"keychain"` or
//! `"file"`) for `tandem status`.
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
//! * A damaged file or keychain entry is an error
//!   ([`KeyStoreError::Corrupt`], [`KeyStoreError::KeychainCorrupt`]), never
//!   a reason to make a new key: a new key would orphan every paired device.
//!   Neither is a keychain that fails after it held the key.
//! * A new key in the keychain is made under a lock file
//!   (`.device.key.lock`), since a keychain has no "create unless it
//!   exists"; the file store needs none (its link never replaces a file).
//! * The secret never appears in logs, errors or `Debug` output; buffers that
//!   held it are overwritten when dropped (best effort: without the `zeroize`
//!   crate, copies made on the stack or by reallocation, or inside the
//!   keychain crates, are not reached).
//!
//! On non-Unix platforms the mode and owner checks are skipped.

mod error;
mod format;
#[cfg(feature = "keychain")]
mod keychain;
mod private_file;

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use tandem_proto::DeviceKey;
use tandem_proto::entropy::Entropy;

pub use error::KeyStoreError;
pub(crate) use format::SecretBuf;
use format::{decode_key_file, encode_key_file};
#[cfg(feature = "keychain")]
use keychain::platform_keychain;
pub(crate) use private_file::{
    FileProblem, Overwrite, check_private, create_private_dir, owner_of, sync_dir, write_private,
};

/// The key file's name inside the data directory.
pub const KEY_FILE_NAME: &str = "device.key";
/// The name of the file that records that the key is in the OS keychain.
pub const KEYCHAIN_MARKER_NAME: &str = "device.key.keychain";
/// The environment variable that chooses the store: `auto` (the default),
/// `keychain` or `file`.
pub const KEYSTORE_ENV: &str = "TANDEM_KEYSTORE";
/// The keychain entry's service name.
pub const KEYCHAIN_SERVICE: &str = "tandem";

/// A key file is a few dozen bytes; anything much larger is not one.
const MAX_KEY_FILE_LEN: u64 = 1024;
/// The first line of the marker file.
const MARKER_HEADER_V1: &str = "tandem-device-key-location v1";
/// The prefix of the marker's second line; the account follows.
const MARKER_ACCOUNT_PREFIX: &str = "keychain service=tandem account=";
/// The lock file taken while a key is made in the keychain.
#[cfg(feature = "keychain")]
const LOCK_FILE_NAME: &str = ".device.key.lock";
/// Domain separation for the keychain account derived from the data dir.
const ACCOUNT_LABEL: &str = "tandem keychain account v1";

/// Which place holds the device key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The OS keychain.
    Keychain,
    /// `<data_dir>/device.key`.
    File,
}

impl Backend {
    /// `"keychain"` or `"file"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Keychain => "keychain",
            Self::File => "file",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A keychain: `keyring-core`'s credential store (a platform store, or its
/// mock in tests).
#[cfg(feature = "keychain")]
pub type Keychain = std::sync::Arc<keyring_core::CredentialStore>;

/// What `TANDEM_KEYSTORE` (or the constructor) asked for, and what came of
/// it.
enum Choice {
    /// The file only.
    File,
    /// The keychain could not be opened; `required` if it was asked for.
    Unavailable { reason: String, required: bool },
    /// The keychain opened; `required` if it was asked for (no fallback to
    /// the file for a new key).
    #[cfg(feature = "keychain")]
    Keychain { store: Keychain, required: bool },
    /// `TANDEM_KEYSTORE` is not understood.
    Invalid(String),
}

/// `used` before any load.
const USED_UNKNOWN: u8 = 0;
const USED_KEYCHAIN: u8 = 1;
const USED_FILE: u8 = 2;

/// Where the desktop's device key lives. `Debug` shows the paths and the
/// backend, never a secret.
pub struct KeyStore {
    path: PathBuf,
    choice: Choice,
    /// The backend the last load or creation used ([`USED_UNKNOWN`] before).
    used: AtomicU8,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore")
            .field("path", &self.path)
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    /// The store for the agent's data directory, chosen by
    /// `TANDEM_KEYSTORE` (see the module docs): the keychain where one
    /// answers, else `<data_dir>/device.key`. Opens the keychain (on Linux,
    /// a D-Bus connection) but touches nothing on disk; problems with the
    /// setting or the keychain surface on [`Self::load`].
    #[must_use]
    pub fn new(data_dir: &Path) -> Self {
        let setting = std::env::var(KEYSTORE_ENV).unwrap_or_default();
        Self::with_choice(data_dir, choose(&setting))
    }

    /// The file store only: `<data_dir>/device.key`, whatever
    /// `TANDEM_KEYSTORE` says. Touches nothing on disk.
    #[must_use]
    pub fn file(data_dir: &Path) -> Self {
        Self::with_choice(data_dir, Choice::File)
    }

    /// The given keychain as the primary store, with the file as the
    /// fallback as in `auto` mode, or none if `required` (as
    /// `TANDEM_KEYSTORE=keychain`). For tests (with
    /// `keyring_core::mock::Store`) and embedders.
    #[cfg(feature = "keychain")]
    #[must_use]
    pub fn with_keychain(data_dir: &Path, store: Keychain, required: bool) -> Self {
        Self::with_choice(data_dir, Choice::Keychain { store, required })
    }

    fn with_choice(data_dir: &Path, choice: Choice) -> Self {
        Self { path: data_dir.join(KEY_FILE_NAME), choice, used: AtomicU8::new(USED_UNKNOWN) }
    }

    /// The key file's path (whether or not the file holds the key).
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of the file that records that the key is in the keychain.
    #[must_use]
    pub fn marker_path(&self) -> PathBuf {
        self.data_dir().join(KEYCHAIN_MARKER_NAME)
    }

    /// Which place holds the key: `"keychain"` or `"file"`. After a load,
    /// the one that load used; before, the one a load would try first (the
    /// keychain where it opened or the marker points at it).
    #[must_use]
    pub fn backend(&self) -> &'static str {
        self.backend_kind().as_str()
    }

    /// [`Self::backend`] as an enum.
    #[must_use]
    pub fn backend_kind(&self) -> Backend {
        match self.used.load(Ordering::Relaxed) {
            USED_KEYCHAIN => return Backend::Keychain,
            USED_FILE => return Backend::File,
            _ => {}
        }
        match &self.choice {
            Choice::File => Backend::File,
            #[cfg(feature = "keychain")]
            Choice::Keychain { .. } => Backend::Keychain,
            Choice::Unavailable { required: true, .. } => Backend::Keychain,
            Choice::Unavailable { .. } | Choice::Invalid(_) => {
                if self.marker_path().exists() {
                    Backend::Keychain
                } else {
                    Backend::File
                }
            }
        }
    }

    fn set_used(&self, backend: Backend) {
        let v = match backend {
            Backend::Keychain => USED_KEYCHAIN,
            Backend::File => USED_FILE,
        };
        self.used.store(v, Ordering::Relaxed);
    }

    fn data_dir(&self) -> &Path {
        self.path.parent().unwrap_or_else(|| Path::new("."))
    }

    /// The stored key, or `None` when none is stored yet. With a working
    /// keychain that has no entry yet, an existing key file is moved into
    /// it (see the module docs).
    ///
    /// # Errors
    /// [`KeyStoreError`] when the file cannot be read, is not private to its
    /// owner ([`KeyStoreError::InsecurePermissions`],
    /// [`KeyStoreError::WrongOwner`]) or is damaged
    /// ([`KeyStoreError::Corrupt`]); when the keychain fails or holds a
    /// damaged entry while it holds the key, or was required and is not
    /// there; on a bad `TANDEM_KEYSTORE`.
    pub fn load(&self) -> Result<Option<DeviceKey>, KeyStoreError> {
        match &self.choice {
            Choice::File => self.load_file_only(),
            Choice::Invalid(value) => Err(KeyStoreError::InvalidSetting { value: value.clone() }),
            Choice::Unavailable { reason, required: true } => {
                Err(KeyStoreError::KeychainRequired { reason: reason.clone() })
            }
            Choice::Unavailable { reason, required: false } => self.load_without_keychain(reason),
            #[cfg(feature = "keychain")]
            Choice::Keychain { store, required } => self.load_keychain(store, *required),
        }
    }

    /// The stored key; if there is none yet, a new one from `entropy`,
    /// stored first: in the keychain (verified by reading it back) when one
    /// works, else in the file (mode 0600, atomically; the data directory is
    /// created with mode 0700 if missing). An existing key is never
    /// replaced, even when it is damaged or another process created it
    /// meanwhile.
    ///
    /// # Errors
    /// Those of [`Self::load`], filesystem and keychain errors while
    /// creating the key, and [`KeyStoreError::Entropy`].
    pub fn load_or_create(&self, entropy: &mut Entropy) -> Result<DeviceKey, KeyStoreError> {
        let dir = self.data_dir();
        create_private_dir(dir).map_err(|source| KeyStoreError::Io {
            action: "create the directory",
            path: dir.to_path_buf(),
            source,
        })?;
        #[cfg(feature = "keychain")]
        if let Choice::Keychain { store, required } = &self.choice {
            return self.load_or_create_keychain(store, *required, entropy);
        }
        if let Some(key) = self.load()? {
            return Ok(key);
        }
        self.create_file(DeviceKey::generate(entropy)?)
    }

    /// The file store: the key file or nothing.
    fn load_file_only(&self) -> Result<Option<DeviceKey>, KeyStoreError> {
        let key = self.load_file()?;
        if key.is_some() {
            self.set_used(Backend::File);
        }
        Ok(key)
    }

    /// `auto` mode where the keychain did not open: the file, unless the
    /// marker says the key is in the keychain.
    fn load_without_keychain(&self, reason: &str) -> Result<Option<DeviceKey>, KeyStoreError> {
        if let Some(key) = self.load_file()? {
            self.set_used(Backend::File);
            return Ok(Some(key));
        }
        if let Some(account) = self.read_marker()? {
            return Err(KeyStoreError::KeychainUnreachable {
                marker: self.marker_path(),
                account,
                reason: reason.to_owned(),
            });
        }
        Ok(None)
    }

    /// The key file's key, or `None` when there is no key file.
    fn load_file(&self) -> Result<Option<DeviceKey>, KeyStoreError> {
        let Some(buf) = FileSecret { store: self }.read()? else {
            return Ok(None);
        };
        let key = decode_key_file(&buf.0).map_err(|reason| KeyStoreError::Corrupt {
            path: self.path.clone(),
            reason: reason.into(),
        })?;
        tracing::debug!(
            path = %self.path.display(),
            device_id = %key.public().device_id(),
            "loaded the device key from its file"
        );
        Ok(Some(key))
    }

    /// Store a new key in the file (the data directory exists). If another
    /// process created the file meanwhile, its key is returned instead.
    fn create_file(&self, key: DeviceKey) -> Result<DeviceKey, KeyStoreError> {
        let contents = encode_key_file(&key);
        match write_private(self.data_dir(), KEY_FILE_NAME, &contents.0, Overwrite::Never) {
            Ok(()) => {
                tracing::info!(
                    path = %self.path.display(),
                    device_id = %key.public().device_id(),
                    "created a new device key"
                );
                self.set_used(Backend::File);
                Ok(key)
            }
            // Another process created the key between our look and our link:
            // theirs wins, since it may already be in use.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.load_file_only()?.ok_or_else(|| KeyStoreError::Io {
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

    /// The account recorded in the marker file, or `None` when there is
    /// none.
    fn read_marker(&self) -> Result<Option<String>, KeyStoreError> {
        let path = self.marker_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(KeyStoreError::Io { action: "read", path, source }),
        };
        let mut lines = text.lines();
        let account = match (lines.next(), lines.next()) {
            (Some(MARKER_HEADER_V1), Some(line)) => line.strip_prefix(MARKER_ACCOUNT_PREFIX),
            _ => None,
        };
        match account {
            Some(a) if !a.is_empty() && a.chars().all(|c| c.is_ascii_graphic()) => {
                Ok(Some(a.to_owned()))
            }
            _ => Err(KeyStoreError::Corrupt {
                path,
                reason: "not a Tandem key location file".into(),
            }),
        }
    }

    /// Record that the key is in the keychain under `account`.
    #[cfg_attr(not(feature = "keychain"), allow(dead_code))]
    fn write_marker(&self, account: &str) -> Result<(), KeyStoreError> {
        let text = format!(
            "{MARKER_HEADER_V1}\n{MARKER_ACCOUNT_PREFIX}{account}\n\
             # The device key is in the OS keychain. Removing this file does not remove it.\n"
        );
        write_private(self.data_dir(), KEYCHAIN_MARKER_NAME, text.as_bytes(), Overwrite::Replace)
            .map_err(|source| KeyStoreError::Io {
                action: "write",
                path: self.marker_path(),
                source,
            })
    }

    /// The keychain account for this data directory: a hash of its
    /// absolute path.
    #[must_use]
    pub fn derived_account(&self) -> String {
        let dir = self.data_dir();
        let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let hash = tandem_proto::kdf::hash(ACCOUNT_LABEL, &[abs.as_os_str().as_encoded_bytes()]);
        let mut out = String::from("device-key-");
        for b in hash.iter().take(12) {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

/// One place the key's text can be kept.
trait SecretStore {
    /// The key's text, or `None` when nothing is stored.
    fn read(&self) -> Result<Option<SecretBuf>, KeyStoreError>;
}

/// The key file, with its permission and owner checks.
struct FileSecret<'a> {
    store: &'a KeyStore,
}

impl SecretStore for FileSecret<'_> {
    fn read(&self) -> Result<Option<SecretBuf>, KeyStoreError> {
        let path = &self.store.path;
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(KeyStoreError::Io { action: "open", path: path.clone(), source });
            }
        };
        let io_err = |source| KeyStoreError::Io { action: "read", path: path.clone(), source };
        let meta = file.metadata().map_err(io_err)?;
        let dir = self.store.data_dir();
        let expected_owner = owner_of(dir).map_err(|source| KeyStoreError::Io {
            action: "inspect",
            path: dir.to_path_buf(),
            source,
        })?;
        check_private(&meta, expected_owner).map_err(|p| match p {
            FileProblem::NotAFile => KeyStoreError::NotAFile { path: path.clone() },
            FileProblem::Permissions(mode) => {
                KeyStoreError::InsecurePermissions { path: path.clone(), mode }
            }
            FileProblem::Owner { owner, expected } => {
                KeyStoreError::WrongOwner { path: path.clone(), owner, expected }
            }
        })?;
        if meta.len() > MAX_KEY_FILE_LEN {
            return Err(KeyStoreError::Corrupt {
                path: path.clone(),
                reason: "far too large to be a key file".into(),
            });
        }
        let mut buf = SecretBuf(Vec::with_capacity(usize::try_from(MAX_KEY_FILE_LEN).unwrap_or(0)));
        file.take(MAX_KEY_FILE_LEN + 1).read_to_end(&mut buf.0).map_err(io_err)?;
        Ok(Some(buf))
    }
}

/// The store a `TANDEM_KEYSTORE` value asks for.
fn choose(setting: &str) -> Choice {
    match setting.trim().to_ascii_lowercase().as_str() {
        "file" => Choice::File,
        "" | "auto" => open_platform_keychain(false),
        "keychain" => open_platform_keychain(true),
        _ => Choice::Invalid(setting.to_owned()),
    }
}

/// The platform's keychain, or why there is none.
fn open_platform_keychain(required: bool) -> Choice {
    match platform_keychain() {
        #[cfg(feature = "keychain")]
        Ok(store) => Choice::Keychain { store, required },
        Err(reason) => {
            tracing::debug!(%reason, "no OS keychain; the device key is kept in a file");
            Choice::Unavailable { reason, required }
        }
    }
}

#[cfg(not(feature = "keychain"))]
fn platform_keychain() -> Result<std::convert::Infallible, String> {
    Err("this build of tandem has no keychain support (the `keychain` feature is off)".into())
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::format::base64url_encode;
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
        let store = KeyStore::file(dir.path());
        assert!(store.load().unwrap().is_none());
        let created = store.load_or_create(&mut entropy()).unwrap();
        let loaded = store.load().unwrap().unwrap();
        assert_eq!(created.to_bytes(), loaded.to_bytes());
        // Another run, other randomness: still the stored key.
        let again = KeyStore::file(dir.path())
            .load_or_create(&mut Entropy::deterministic([8; 32]))
            .unwrap();
        assert_eq!(again.to_bytes(), created.to_bytes());
        // No temporary files left behind.
        let names: Vec<_> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(KEY_FILE_NAME)]);
    }

    #[test]
    fn keystore_file_format_is_versioned_text() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::file(dir.path());
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
        let store = KeyStore::file(&data);
        store.load_or_create(&mut entropy()).unwrap();
        assert_eq!(mode(store.path()), 0o600);
        assert_eq!(mode(&data), 0o700);
    }

    #[test]
    fn keystore_refuses_a_file_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::file(dir.path());
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
    fn keystore_refuses_a_corrupt_file_and_leaves_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::file(dir.path());
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
        let store = KeyStore::file(dir.path());
        fs::create_dir(store.path()).unwrap();
        assert!(store.load_or_create(&mut entropy()).is_err());
    }

    #[test]
    fn keystore_debug_never_shows_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::file(dir.path());
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
}

#[cfg(test)]
mod choice_tests {
    use super::*;

    #[test]
    fn keystore_setting_file_and_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let file = KeyStore::with_choice(dir.path(), choose(" File "));
        assert_eq!(file.backend(), "file");
        assert!(file.load().unwrap().is_none());
        let bad = KeyStore::with_choice(dir.path(), choose("vault"));
        let err = bad.load().unwrap_err();
        assert!(matches!(err, KeyStoreError::InvalidSetting { .. }), "{err:?}");
        assert!(err.to_string().contains("TANDEM_KEYSTORE=\"vault\""), "{err}");
    }

    #[test]
    fn keystore_without_a_keychain_uses_the_file_unless_required() {
        let dir = tempfile::tempdir().unwrap();
        let unavailable =
            || Choice::Unavailable { reason: "no D-Bus session".into(), required: false };
        let store = KeyStore::with_choice(dir.path(), unavailable());
        assert_eq!(store.backend(), "file");
        let key = store.load_or_create(&mut Entropy::deterministic([1; 32])).unwrap();
        assert!(store.path().exists());
        assert_eq!(store.backend(), "file");
        let again = KeyStore::with_choice(dir.path(), unavailable()).load().unwrap().unwrap();
        assert_eq!(again.to_bytes(), key.to_bytes());

        let required = KeyStore::with_choice(
            dir.path(),
            Choice::Unavailable { reason: "no D-Bus session".into(), required: true },
        );
        assert_eq!(required.backend(), "keychain");
        let err = required.load_or_create(&mut Entropy::deterministic([1; 32])).unwrap_err();
        assert!(matches!(err, KeyStoreError::KeychainRequired { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("no D-Bus session") && msg.contains("`file`"), "{msg}");
    }

    #[test]
    fn keystore_marker_without_a_keychain_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::with_choice(
            dir.path(),
            Choice::Unavailable { reason: "no D-Bus session".into(), required: false },
        );
        store.write_marker("device-key-0123").unwrap();
        assert_eq!(store.backend(), "keychain");
        let err = store.load_or_create(&mut Entropy::deterministic([1; 32])).unwrap_err();
        match &err {
            KeyStoreError::KeychainUnreachable { account, reason, .. } => {
                assert_eq!(account, "device-key-0123");
                assert_eq!(reason, "no D-Bus session");
            }
            other => panic!("expected KeychainUnreachable, got {other:?}"),
        }
        assert!(err.to_string().contains("No new key was made"), "{err}");
        assert!(!store.path().exists());
        // A damaged marker is reported, not ignored.
        fs::write(store.marker_path(), "something else\n").unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, KeyStoreError::Corrupt { .. }), "{err:?}");
    }

    #[test]
    fn keystore_accounts_differ_per_data_dir_and_are_stable() {
        let a = KeyStore::file(Path::new("/home/u/.local/share/tandem"));
        let b = KeyStore::file(Path::new("/home/u/other"));
        assert_ne!(a.derived_account(), b.derived_account());
        assert_eq!(
            a.derived_account(),
            KeyStore::file(Path::new("/home/u/.local/share/tandem")).derived_account()
        );
        assert!(a.derived_account().starts_with("device-key-"));
        assert_eq!(a.derived_account().len(), "device-key-".len() + 24);
    }
}
