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

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use tandem_proto::DeviceKey;
use tandem_proto::entropy::{Entropy, EntropyError};
use thiserror::Error;

/// The key file's name inside the data directory.
pub const KEY_FILE_NAME: &str = "device.key";
/// The name of the file that records that the key is in the OS keychain.
pub const KEYCHAIN_MARKER_NAME: &str = "device.key.keychain";
/// The environment variable that chooses the store: `auto` (the default),
/// `keychain` or `file`.
pub const KEYSTORE_ENV: &str = "TANDEM_KEYSTORE";
/// The keychain entry's service name.
pub const KEYCHAIN_SERVICE: &str = "tandem";

/// The first line of a version 1 key file.
const HEADER_V1: &str = "tandem-device-key v1";
/// The common prefix of every version's first line.
const HEADER_PREFIX: &str = "tandem-device-key v";
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
    /// `TANDEM_KEYSTORE` holds something other than `auto`, `keychain` or
    /// `file`.
    #[error("{KEYSTORE_ENV}={value:?} is not understood: use `auto`, `keychain` or `file`")]
    InvalidSetting {
        /// The value found.
        value: String,
    },
    /// `TANDEM_KEYSTORE=keychain`, and no OS keychain works here.
    #[error(
        "{KEYSTORE_ENV}=keychain, but the OS keychain cannot be used ({reason}); unset it (or \
         set it to `file`) to keep the device key in a file in the data directory"
    )]
    KeychainRequired {
        /// Why the keychain cannot be used.
        reason: String,
    },
    /// The key was moved into the keychain, which cannot be reached now.
    #[error(
        "the device key is in the OS keychain (service \"{KEYCHAIN_SERVICE}\", account \
         \"{account}\", as {} records), which cannot be reached now ({reason}); run tandem \
         where the keychain is reachable and unlocked (a desktop session). No new key was made: \
         it would unpair every device",
        marker.display()
    )]
    KeychainUnreachable {
        /// The file that records the keychain entry.
        marker: PathBuf,
        /// The entry's account.
        account: String,
        /// Why the keychain cannot be reached.
        reason: String,
    },
    /// A keychain operation failed.
    #[error(
        "could not {action} the device key in the OS keychain (service \"{KEYCHAIN_SERVICE}\", \
         account \"{account}\"): {reason}"
    )]
    Keychain {
        /// What was being done ("read", "store", …).
        action: &'static str,
        /// The entry's account.
        account: String,
        /// What the keychain said.
        reason: String,
    },
    /// The keychain entry exists but cannot be understood. It is left
    /// untouched.
    #[error(
        "the device key in the OS keychain (service \"{KEYCHAIN_SERVICE}\", account \
         \"{account}\") is damaged ({reason}); it was left as it is, because a new key would \
         unpair every device: restore it, or delete the entry and pair again"
    )]
    KeychainCorrupt {
        /// The entry's account.
        account: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The marker says the key is in the keychain, and the keychain has no
    /// such entry (and there is no key file).
    #[error(
        "{} says the device key is in the OS keychain (service \"{KEYCHAIN_SERVICE}\", account \
         \"{account}\"), but the keychain has no such entry; restore the entry (or the {KEY_FILE_NAME} \
         file from a backup), or remove {} and pair again",
        marker.display(),
        marker.display()
    )]
    KeychainEntryMissing {
        /// The file that records the keychain entry.
        marker: PathBuf,
        /// The entry's account.
        account: String,
    },
    /// The key file and the keychain hold different keys.
    #[error(
        "{} and the OS keychain entry (service \"{KEYCHAIN_SERVICE}\", account \"{account}\") \
         hold different device keys; move away the one your paired devices do not know (`tandem \
         devices` works with the keychain's) and start again",
        path.display()
    )]
    Conflict {
        /// The key file.
        path: PathBuf,
        /// The entry's account.
        account: String,
    },
}

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

#[cfg(feature = "keychain")]
fn platform_keychain() -> Result<Keychain, String> {
    #[cfg(target_os = "macos")]
    let store = apple_native_keyring_store::keychain::Store::new().map(|s| s as Keychain);
    #[cfg(windows)]
    let store = windows_native_keyring_store::Store::new().map(|s| s as Keychain);
    #[cfg(all(unix, not(any(target_os = "macos", target_os = "ios", target_os = "android"))))]
    let store = zbus_secret_service_keyring_store::Store::new().map(|s| s as Keychain);
    #[cfg(any(
        all(unix, not(any(target_os = "macos", target_os = "ios", target_os = "android"))),
        target_os = "macos",
        windows
    ))]
    return store.map_err(|e| keychain_reason(&e));
    #[cfg(not(any(
        all(unix, not(any(target_os = "macos", target_os = "ios", target_os = "android"))),
        target_os = "macos",
        windows
    )))]
    Err("this platform has no supported OS keychain".into())
}

#[cfg(not(feature = "keychain"))]
fn platform_keychain() -> Result<std::convert::Infallible, String> {
    Err("this build of tandem has no keychain support (the `keychain` feature is off)".into())
}

/// What a keychain load found.
#[cfg(feature = "keychain")]
struct KeychainLoad {
    /// The key, from the keychain or (not moved, or moved now) the file.
    key: Option<DeviceKey>,
    /// Why the keychain did not answer, when it did not and nothing of
    /// ours points at it (`auto` mode: a new key goes to the file).
    trouble: Option<String>,
}

#[cfg(feature = "keychain")]
impl KeyStore {
    fn load_keychain(
        &self,
        store: &Keychain,
        required: bool,
    ) -> Result<Option<DeviceKey>, KeyStoreError> {
        self.load_keychain_inner(store, required).map(|l| l.key)
    }

    fn load_keychain_inner(
        &self,
        store: &Keychain,
        required: bool,
    ) -> Result<KeychainLoad, KeyStoreError> {
        let marker = self.read_marker()?;
        let had_marker = marker.is_some();
        let account = marker.unwrap_or_else(|| self.derived_account());
        let entry = KeychainSecret::open(store, &account)?;
        match entry.get() {
            Ok(Some(text)) => {
                let key =
                    decode_key_file(&text.0).map_err(|reason| KeyStoreError::KeychainCorrupt {
                        account: account.clone(),
                        reason: reason.into(),
                    })?;
                self.finish_move(&key, &account, had_marker)?;
                self.set_used(Backend::Keychain);
                tracing::debug!(
                    %account,
                    device_id = %key.public().device_id(),
                    "loaded the device key from the OS keychain"
                );
                Ok(KeychainLoad { key: Some(key), trouble: None })
            }
            Ok(None) => match self.load_file()? {
                Some(key) => {
                    self.move_into_keychain(&entry, &key);
                    Ok(KeychainLoad { key: Some(key), trouble: None })
                }
                None if had_marker => {
                    Err(KeyStoreError::KeychainEntryMissing { marker: self.marker_path(), account })
                }
                None => Ok(KeychainLoad { key: None, trouble: None }),
            },
            // The keychain opened but does not answer: on Linux, a D-Bus
            // session without a Secret Service, or a collection that stays
            // locked; elsewhere, a denied access.
            Err(reason) => {
                if let Some(key) = self.load_file()? {
                    tracing::warn!(
                        %reason,
                        path = %self.path.display(),
                        "the OS keychain does not answer; using the device key file"
                    );
                    self.set_used(Backend::File);
                    return Ok(KeychainLoad { key: Some(key), trouble: None });
                }
                if had_marker {
                    return Err(KeyStoreError::KeychainUnreachable {
                        marker: self.marker_path(),
                        account,
                        reason,
                    });
                }
                if required {
                    return Err(KeyStoreError::KeychainRequired { reason });
                }
                tracing::debug!(%reason, "the OS keychain does not answer; using a key file");
                Ok(KeychainLoad { key: None, trouble: Some(reason) })
            }
        }
    }

    fn load_or_create_keychain(
        &self,
        store: &Keychain,
        required: bool,
        entropy: &mut Entropy,
    ) -> Result<DeviceKey, KeyStoreError> {
        // A keychain cannot "create unless it exists": two first runs at
        // once would each store their own key. The lock orders them.
        let _lock = self.lock()?;
        let loaded = self.load_keychain_inner(store, required)?;
        if let Some(key) = loaded.key {
            return Ok(key);
        }
        let key = DeviceKey::generate(entropy)?;
        if loaded.trouble.is_some() {
            return self.create_file(key);
        }
        // No marker (else the load failed), so the account is the derived one.
        let account = self.derived_account();
        let entry = KeychainSecret::open(store, &account)?;
        match self.store_verified(&entry, &key) {
            Ok(()) => {
                self.write_marker(&account)?;
                self.set_used(Backend::Keychain);
                tracing::info!(
                    %account,
                    device_id = %key.public().device_id(),
                    "created a new device key in the OS keychain"
                );
                Ok(key)
            }
            Err(e) if !required => {
                tracing::warn!(
                    error = %e,
                    "could not store a new device key in the OS keychain; using a key file"
                );
                self.create_file(key)
            }
            Err(e) => Err(e),
        }
    }

    /// After a load from the keychain: a key file left by a move that was
    /// interrupted is removed if it holds the same key; the marker is
    /// written if missing.
    fn finish_move(
        &self,
        key: &DeviceKey,
        account: &str,
        had_marker: bool,
    ) -> Result<(), KeyStoreError> {
        let file_key = self.load_file()?;
        if let Some(fk) = &file_key
            && fk.to_bytes() != key.to_bytes()
        {
            return Err(KeyStoreError::Conflict {
                path: self.path.clone(),
                account: account.to_owned(),
            });
        }
        if !had_marker && let Err(e) = self.write_marker(account) {
            tracing::warn!(error = %e, "could not record that the device key is in the OS keychain");
            return Ok(());
        }
        if file_key.is_some()
            && let Err(e) = self.remove_key_file()
        {
            tracing::warn!(error = %e, "could not remove the moved device key file");
        }
        Ok(())
    }

    /// Move the file's key into the keychain: store, read back, compare,
    /// record, then remove the file. On failure the file stays (and is
    /// used); the move is tried again on the next load.
    fn move_into_keychain(&self, entry: &KeychainSecret, key: &DeviceKey) {
        let moved = self
            .store_verified(entry, key)
            .and_then(|()| self.write_marker(&entry.account))
            .and_then(|()| self.remove_key_file());
        match moved {
            Ok(()) => {
                self.set_used(Backend::Keychain);
                tracing::info!(
                    path = %self.path.display(),
                    account = %entry.account,
                    "moved the device key from its file into the OS keychain"
                );
            }
            Err(e) => {
                self.set_used(Backend::File);
                tracing::warn!(
                    error = %e,
                    path = %self.path.display(),
                    "the device key stays in its file: moving it into the OS keychain failed"
                );
            }
        }
    }

    /// Store `key` in the entry and read it back; on a mismatch the entry
    /// is deleted again (best effort).
    fn store_verified(&self, entry: &KeychainSecret, key: &DeviceKey) -> Result<(), KeyStoreError> {
        let text = encode_key_file(key);
        entry.set(&text.0)?;
        let check = match entry.read() {
            Ok(Some(back)) if back.0 == text.0 => Ok(()),
            Ok(_) => Err(KeyStoreError::Keychain {
                action: "verify",
                account: entry.account.clone(),
                reason: "reading the entry back gave something else".into(),
            }),
            Err(e) => Err(e),
        };
        if check.is_err() {
            let _ = entry.delete();
        }
        check
    }

    fn remove_key_file(&self) -> Result<(), KeyStoreError> {
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(KeyStoreError::Io {
                    action: "remove",
                    path: self.path.clone(),
                    source,
                });
            }
        }
        sync_dir(self.data_dir()).map_err(|source| KeyStoreError::Io {
            action: "sync",
            path: self.data_dir().to_path_buf(),
            source,
        })
    }

    /// Take the lock file (blocking until another process releases it).
    fn lock(&self) -> Result<File, KeyStoreError> {
        let path = self.data_dir().join(LOCK_FILE_NAME);
        let mut options = OpenOptions::new();
        options.create(true).truncate(false).write(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let io_err = |action, source| KeyStoreError::Io { action, path: path.clone(), source };
        let file = options.open(&path).map_err(|e| io_err("open", e))?;
        file.lock().map_err(|e| io_err("lock", e))?;
        Ok(file)
    }
}

/// One keychain entry: service [`KEYCHAIN_SERVICE`], an account.
#[cfg(feature = "keychain")]
struct KeychainSecret {
    entry: keyring_core::Entry,
    account: String,
}

#[cfg(feature = "keychain")]
impl KeychainSecret {
    fn open(store: &Keychain, account: &str) -> Result<Self, KeyStoreError> {
        let entry =
            store.build(KEYCHAIN_SERVICE, account, None).map_err(|e| KeyStoreError::Keychain {
                action: "open",
                account: account.to_owned(),
                reason: keychain_reason(&e),
            })?;
        Ok(Self { entry, account: account.to_owned() })
    }

    /// The entry's bytes, `None` when there is no entry, or why the
    /// keychain did not answer.
    fn get(&self) -> Result<Option<SecretBuf>, String> {
        match self.entry.get_secret() {
            Ok(bytes) => Ok(Some(SecretBuf(bytes))),
            Err(keyring_core::Error::NoEntry) => Ok(None),
            Err(e) => Err(keychain_reason(&e)),
        }
    }

    fn set(&self, bytes: &[u8]) -> Result<(), KeyStoreError> {
        self.entry.set_secret(bytes).map_err(|e| self.error("store", &e))
    }

    fn delete(&self) -> Result<(), KeyStoreError> {
        match self.entry.delete_credential() {
            Ok(()) | Err(keyring_core::Error::NoEntry) => Ok(()),
            Err(e) => Err(self.error("delete", &e)),
        }
    }

    fn error(&self, action: &'static str, e: &keyring_core::Error) -> KeyStoreError {
        KeyStoreError::Keychain {
            action,
            account: self.account.clone(),
            reason: keychain_reason(e),
        }
    }
}

#[cfg(feature = "keychain")]
impl SecretStore for KeychainSecret {
    fn read(&self) -> Result<Option<SecretBuf>, KeyStoreError> {
        self.get().map_err(|reason| KeyStoreError::Keychain {
            action: "read",
            account: self.account.clone(),
            reason,
        })
    }
}

/// A keychain error as text, without the data some variants carry (which
/// may be secret).
#[cfg(feature = "keychain")]
fn keychain_reason(e: &keyring_core::Error) -> String {
    use keyring_core::Error as E;
    match e {
        E::BadEncoding(_) | E::BadDataFormat(..) => "the stored data is malformed".into(),
        E::Ambiguous(entries) => format!("{} entries match", entries.len()),
        other => other.to_string(),
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

/// The keychain path, against `keyring_core`'s mock store (no OS keychain
/// runs on a headless test machine).
#[cfg(test)]
#[cfg(all(unix, feature = "keychain"))]
mod keychain_tests {
    use keyring_core::mock;

    use super::*;

    fn mock_store() -> Keychain {
        mock::Store::new().unwrap()
    }

    fn entry(store: &Keychain, ks: &KeyStore) -> keyring_core::Entry {
        store.build(KEYCHAIN_SERVICE, &ks.derived_account(), None).unwrap()
    }

    fn fail_next(store: &Keychain, ks: &KeyStore) {
        let e = entry(store, ks);
        let cred: &mock::Cred = e.as_any().downcast_ref().unwrap();
        cred.set_error(keyring_core::Error::NoStorageAccess("the collection is locked".into()));
    }

    #[test]
    fn keychain_store_then_load_gives_the_same_key_and_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let kc = mock_store();
        let ks = KeyStore::with_keychain(dir.path(), kc.clone(), false);
        assert_eq!(ks.backend(), "keychain");
        let key = ks.load_or_create(&mut Entropy::deterministic([7; 32])).unwrap();
        assert_eq!(ks.backend(), "keychain");
        assert!(!ks.path().exists(), "no key file when the keychain holds the key");
        let marker = fs::read_to_string(ks.marker_path()).unwrap();
        assert!(marker.contains(&ks.derived_account()), "{marker}");
        // The entry holds the key file's text.
        let text = entry(&kc, &ks).get_secret().unwrap();
        assert_eq!(decode_key_file(&text).unwrap().to_bytes(), key.to_bytes());
        // Another run, other randomness: the stored key.
        let again = KeyStore::with_keychain(dir.path(), kc.clone(), true)
            .load_or_create(&mut Entropy::deterministic([8; 32]))
            .unwrap();
        assert_eq!(again.to_bytes(), key.to_bytes());
        // A second data directory gets its own entry and key.
        let dir2 = tempfile::tempdir().unwrap();
        let other = KeyStore::with_keychain(dir2.path(), kc, false)
            .load_or_create(&mut Entropy::deterministic([9; 32]))
            .unwrap();
        assert_ne!(other.to_bytes(), key.to_bytes());
    }

    #[test]
    fn keychain_moves_an_existing_key_file_in_and_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyStore::file(dir.path())
            .load_or_create(&mut Entropy::deterministic([7; 32]))
            .unwrap();
        let kc = mock_store();
        let ks = KeyStore::with_keychain(dir.path(), kc.clone(), false);
        assert_eq!(ks.load().unwrap().unwrap().to_bytes(), key.to_bytes());
        assert_eq!(ks.backend(), "keychain");
        assert!(!ks.path().exists(), "the file is removed once the keychain holds the key");
        assert!(ks.marker_path().exists());
        let text = entry(&kc, &ks).get_secret().unwrap();
        assert_eq!(decode_key_file(&text).unwrap().to_bytes(), key.to_bytes());
        // From now on the keychain alone.
        let again = KeyStore::with_keychain(dir.path(), kc, false)
            .load_or_create(&mut Entropy::deterministic([8; 32]))
            .unwrap();
        assert_eq!(again.to_bytes(), key.to_bytes());
    }

    #[test]
    fn keychain_that_does_not_answer_leaves_the_file_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyStore::file(dir.path())
            .load_or_create(&mut Entropy::deterministic([7; 32]))
            .unwrap();
        let kc = mock_store();
        let ks = KeyStore::with_keychain(dir.path(), kc.clone(), false);
        fail_next(&kc, &ks);
        assert_eq!(ks.load().unwrap().unwrap().to_bytes(), key.to_bytes());
        assert_eq!(ks.backend(), "file");
        assert!(ks.path().exists());
        assert!(!ks.marker_path().exists());
        // It answers again: the key moves in.
        let ks = KeyStore::with_keychain(dir.path(), kc, false);
        assert_eq!(ks.load().unwrap().unwrap().to_bytes(), key.to_bytes());
        assert_eq!(ks.backend(), "keychain");
        assert!(!ks.path().exists());
    }

    #[test]
    fn keychain_that_does_not_answer_on_first_run() {
        // auto: the new key goes to the file.
        let dir = tempfile::tempdir().unwrap();
        let kc = mock_store();
        let ks = KeyStore::with_keychain(dir.path(), kc.clone(), false);
        fail_next(&kc, &ks);
        let key = ks.load_or_create(&mut Entropy::deterministic([7; 32])).unwrap();
        assert_eq!(ks.backend(), "file");
        assert!(ks.path().exists());
        assert_eq!(KeyStore::file(dir.path()).load().unwrap().unwrap().to_bytes(), key.to_bytes());
        // required: an error, no key anywhere.
        let dir = tempfile::tempdir().unwrap();
        let ks = KeyStore::with_keychain(dir.path(), kc.clone(), true);
        fail_next(&kc, &ks);
        let err = ks.load_or_create(&mut Entropy::deterministic([7; 32])).unwrap_err();
        assert!(matches!(err, KeyStoreError::KeychainRequired { .. }), "{err:?}");
        assert!(err.to_string().contains("the collection is locked"), "{err}");
        assert!(!ks.path().exists());
    }

    #[test]
    fn keychain_that_fails_after_holding_the_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let kc = mock_store();
        let ks = KeyStore::with_keychain(dir.path(), kc.clone(), false);
        ks.load_or_create(&mut Entropy::deterministic([7; 32])).unwrap();
        fail_next(&kc, &ks);
        let err = ks.load_or_create(&mut Entropy::deterministic([8; 32])).unwrap_err();
        assert!(matches!(err, KeyStoreError::KeychainUnreachable { .. }), "{err:?}");
        assert!(!ks.path().exists(), "no new key in a file");
    }

    #[test]
    fn keychain_corrupt_entry_is_a_clear_error_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let kc = mock_store();
        let ks = KeyStore::with_keychain(dir.path(), kc.clone(), false);
        let good = {
            ks.load_or_create(&mut Entropy::deterministic([7; 32])).unwrap();
            entry(&kc, &ks).get_secret().unwrap()
        };
        for bad in [b"garbage".to_vec(), vec![0xff, 0xfe, 0x00], good[..good.len() - 5].to_vec()] {
            entry(&kc, &ks).set_secret(&bad).unwrap();
            let err = ks.load_or_create(&mut Entropy::deterministic([8; 32])).unwrap_err();
            match &err {
                KeyStoreError::KeychainCorrupt { account, .. } => {
                    assert_eq!(account, &ks.derived_account());
                }
                other => panic!("expected KeychainCorrupt, got {other:?}"),
            }
            assert!(err.to_string().contains("damaged"), "{err}");
            assert_eq!(entry(&kc, &ks).get_secret().unwrap(), bad, "not replaced");
            assert!(!ks.path().exists());
        }
    }

    #[test]
    fn keychain_marker_without_an_entry_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let kc = mock_store();
        let ks = KeyStore::with_keychain(dir.path(), kc.clone(), false);
        ks.load_or_create(&mut Entropy::deterministic([7; 32])).unwrap();
        entry(&kc, &ks).delete_credential().unwrap();
        let err = ks.load_or_create(&mut Entropy::deterministic([8; 32])).unwrap_err();
        assert!(matches!(err, KeyStoreError::KeychainEntryMissing { .. }), "{err:?}");
        assert!(entry(&kc, &ks).get_secret().is_err(), "no new key stored");
    }

    #[test]
    fn keychain_and_file_with_different_keys_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let kc = mock_store();
        let ks = KeyStore::with_keychain(dir.path(), kc.clone(), false);
        ks.load_or_create(&mut Entropy::deterministic([7; 32])).unwrap();
        KeyStore::file(dir.path()).load_or_create(&mut Entropy::deterministic([8; 32])).unwrap();
        let err = ks.load().unwrap_err();
        assert!(matches!(err, KeyStoreError::Conflict { .. }), "{err:?}");
        assert!(ks.path().exists(), "left for the user to decide");
    }

    #[test]
    fn keychain_removes_a_leftover_file_with_the_same_key() {
        // A move interrupted after storing but before the marker and removal.
        let dir = tempfile::tempdir().unwrap();
        let key = KeyStore::file(dir.path())
            .load_or_create(&mut Entropy::deterministic([7; 32]))
            .unwrap();
        let kc = mock_store();
        let ks = KeyStore::with_keychain(dir.path(), kc.clone(), false);
        entry(&kc, &ks).set_secret(&encode_key_file(&key).0).unwrap();
        assert_eq!(ks.load().unwrap().unwrap().to_bytes(), key.to_bytes());
        assert!(!ks.path().exists());
        assert!(ks.marker_path().exists());
    }

    #[test]
    fn keychain_errors_never_show_the_stored_bytes() {
        let secret = b"secret bytes 0123456789".to_vec();
        let reason = keychain_reason(&keyring_core::Error::BadEncoding(secret.clone()));
        assert!(!reason.contains("0123456789") && !reason.contains("115"), "{reason}");
        let dir = tempfile::tempdir().unwrap();
        let ks = KeyStore::with_keychain(dir.path(), mock_store(), false);
        let key = ks.load_or_create(&mut Entropy::deterministic([7; 32])).unwrap();
        let mut b64 = Vec::new();
        base64url_encode(&key.to_bytes(), &mut b64);
        let b64 = String::from_utf8(b64).unwrap();
        assert!(!format!("{ks:?}").contains(&b64[..8]));
    }
}
