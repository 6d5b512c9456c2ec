//! The OS keychain backend: loading, creating and moving the device key
//! into a keychain entry (the `keychain` feature).

use std::fs::{self, File, OpenOptions};
use std::io;

use tandem_proto::DeviceKey;
use tandem_proto::entropy::Entropy;

use super::format::{SecretBuf, decode_key_file, encode_key_file};
use super::private_file::sync_dir;
use super::{
    Backend, KEYCHAIN_SERVICE, KeyStore, KeyStoreError, Keychain, LOCK_FILE_NAME, SecretStore,
};

/// The platform's OS keychain, or why it cannot be opened.
pub(super) fn platform_keychain() -> Result<Keychain, String> {
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

/// What a keychain load found.
struct KeychainLoad {
    /// The key, from the keychain or (not moved, or moved now) the file.
    key: Option<DeviceKey>,
    /// Why the keychain did not answer, when it did not and nothing of
    /// ours points at it (`auto` mode: a new key goes to the file).
    trouble: Option<String>,
}

impl KeyStore {
    pub(super) fn load_keychain(
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

    pub(super) fn load_or_create_keychain(
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
struct KeychainSecret {
    entry: keyring_core::Entry,
    account: String,
}

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
fn keychain_reason(e: &keyring_core::Error) -> String {
    use keyring_core::Error as E;
    match e {
        E::BadEncoding(_) | E::BadDataFormat(..) => "the stored data is malformed".into(),
        E::Ambiguous(entries) => format!("{} entries match", entries.len()),
        other => other.to_string(),
    }
}

/// The keychain path, against `keyring_core`'s mock store (no OS keychain
/// runs on a headless test machine).
#[cfg(test)]
#[cfg(unix)]
mod keychain_tests {
    use keyring_core::mock;

    use super::super::format::base64url_encode;
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
