//! [`SecretStore`]: where the app keeps the phone's device key (the iOS
//! Keychain, the Android Keystore), and its adapter to `tandem-phone`'s trait.

use std::fmt;
use std::sync::Arc;

/// Why the app's secret store failed; its message is the store's own words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum SecretStoreError {
    /// The store could not do it.
    #[error("{message}")]
    Failed {
        /// What went wrong, for the logs.
        message: String,
    },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for SecretStoreError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        Self::Failed { message: e.reason }
    }
}

/// Small secrets (the phone's device key) kept by the app in the platform's
/// secure storage. Implement it with the Keychain on iOS
/// (`kSecClassGenericPassword`, an access group if extensions share it) or
/// with a Keystore-backed encrypted store on Android. Without one the SDK
/// keeps its key in a 0600 file in the data directory.
///
/// Names are short ASCII strings (`device-key`); calls come from the SDK's
/// own threads, rarely (opening the client, pairing).
#[uniffi::export(with_foreign)]
pub trait SecretStore: Send + Sync {
    /// The secret called `name`, or nothing if there is none.
    ///
    /// # Errors
    /// The store could not be read (the client then refuses to open rather
    /// than make a new key).
    fn load(&self, name: String) -> Result<Option<Vec<u8>>, SecretStoreError>;
    /// Keep `secret` as `name`, replacing any previous one.
    ///
    /// # Errors
    /// The store could not be written.
    fn store(&self, name: String, secret: Vec<u8>) -> Result<(), SecretStoreError>;
    /// Forget `name`; forgetting what is not there is not an error.
    ///
    /// # Errors
    /// The store could not be written.
    fn delete(&self, name: String) -> Result<(), SecretStoreError>;
}

/// The app's store as `tandem-phone` sees it.
pub(crate) struct ForeignSecretStore(pub(crate) Arc<dyn SecretStore>);

impl fmt::Debug for ForeignSecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ForeignSecretStore")
    }
}

impl tandem_phone::SecretStore for ForeignSecretStore {
    fn load(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        self.0.load(name.to_owned()).map_err(|e| e.to_string())
    }

    fn store(&self, name: &str, secret: &[u8]) -> Result<(), String> {
        self.0.store(name.to_owned(), secret.to_vec()).map_err(|e| e.to_string())
    }

    fn delete(&self, name: &str) -> Result<(), String> {
        self.0.delete(name.to_owned()).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Memory(Mutex<HashMap<String, Vec<u8>>>);

    impl SecretStore for Memory {
        fn load(&self, name: String) -> Result<Option<Vec<u8>>, SecretStoreError> {
            Ok(self.0.lock().unwrap().get(&name).cloned())
        }
        fn store(&self, name: String, secret: Vec<u8>) -> Result<(), SecretStoreError> {
            if name == "locked" {
                return Err(SecretStoreError::Failed { message: "device locked".into() });
            }
            self.0.lock().unwrap().insert(name, secret);
            Ok(())
        }
        fn delete(&self, name: String) -> Result<(), SecretStoreError> {
            self.0.lock().unwrap().remove(&name);
            Ok(())
        }
    }

    #[test]
    fn the_adapter_passes_secrets_and_the_stores_own_words() {
        let s = ForeignSecretStore(Arc::new(Memory::default()));
        let s: &dyn tandem_phone::SecretStore = &s;
        assert_eq!(s.load("device-key"), Ok(None));
        s.store("device-key", b"k").unwrap();
        assert_eq!(s.load("device-key"), Ok(Some(b"k".to_vec())));
        s.delete("device-key").unwrap();
        assert_eq!(s.load("device-key"), Ok(None));
        assert_eq!(s.store("locked", b"k"), Err("device locked".to_owned()));
    }
}
