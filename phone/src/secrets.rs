//! Where the phone's device key is kept: an app-supplied [`SecretStore`]
//! (Keychain, Android Keystore) or, by default, [`FileSecretStore`].

use std::fmt::Debug;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A place for small secrets, implemented by the app with the platform's
/// secure storage. Errors are the store's own words.
pub trait SecretStore: Send + Sync + Debug {
    /// The secret called `name`, if there is one.
    ///
    /// # Errors
    /// The store could not be read.
    fn load(&self, name: &str) -> Result<Option<Vec<u8>>, String>;
    /// Keep `secret` as `name`, replacing any previous one.
    ///
    /// # Errors
    /// The store could not be written.
    fn store(&self, name: &str, secret: &[u8]) -> Result<(), String>;
    /// Forget `name` (nothing to forget is not an error).
    ///
    /// # Errors
    /// The store could not be written.
    fn delete(&self, name: &str) -> Result<(), String>;
}

/// Secrets as 0600 files in a 0700 directory (the default store).
#[derive(Debug, Clone)]
pub struct FileSecretStore {
    dir: PathBuf,
}

impl FileSecretStore {
    /// Secrets under `dir` (created on first write).
    #[must_use]
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_owned() }
    }

    fn path(&self, name: &str) -> Result<PathBuf, String> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(format!("bad secret name {name:?}"));
        }
        Ok(self.dir.join(name))
    }
}

impl SecretStore for FileSecretStore {
    fn load(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        match std::fs::read(self.path(name)?) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn store(&self, name: &str, secret: &[u8]) -> Result<(), String> {
        let path = self.path(name)?;
        crate::store::create_private_dir(&self.dir).map_err(|e| e.to_string())?;
        crate::store::write_private(&path, secret).map_err(|e| e.to_string())
    }

    fn delete(&self, name: &str) -> Result<(), String> {
        match std::fs::remove_file(self.path(name)?) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Flush helper shared with the store (keeps `Write` in scope there).
pub(crate) fn write_all_sync(f: &mut std::fs::File, bytes: &[u8]) -> std::io::Result<()> {
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_store_round_trip_and_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileSecretStore::new(&dir.path().join("secrets"));
        assert_eq!(s.load("device-key").unwrap(), None);
        s.store("device-key", b"abc").unwrap();
        assert_eq!(s.load("device-key").unwrap().as_deref(), Some(&b"abc"[..]));
        use std::os::unix::fs::PermissionsExt;
        let mode =
            std::fs::metadata(dir.path().join("secrets/device-key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        s.delete("device-key").unwrap();
        s.delete("device-key").unwrap();
        assert!(s.store("../x", b"").is_err());
    }
}
