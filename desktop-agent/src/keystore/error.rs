//! [`KeyStoreError`]: why the device key could not be loaded or created.

use std::io;
use std::path::PathBuf;

use tandem_proto::entropy::EntropyError;
use thiserror::Error;

use super::{KEY_FILE_NAME, KEYCHAIN_SERVICE, KEYSTORE_ENV};

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
