//! The phone's push state on disk (`push.json`, 0600, written atomically):
//! the platform registration it gave its relays, what it wants pushed, and
//! per desktop its last [`KEPT_KEYS`] push keys, newest last (docs/PUSH.md).
//!
//! Kept apart from the desktops' files so that an iOS Notification Service
//! Extension or an Android data-message handler can open a notification
//! with [`decrypt_notification`] without opening the phone (no relay
//! connection, no session state).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tandem_proto::message::Secret;
use tandem_proto::push::{Notification, PushError, PushKey, key_id_of};

use crate::error::PhoneError;

/// Push keys kept per desktop: the newest and the two before it, for the
/// pushes sealed under them still on their way.
pub const KEPT_KEYS: usize = 3;

const FILE: &str = "push.json";

/// Where pushes for this phone go: the platform's token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PushRegistration {
    /// Apple Push Notification service: the device token (raw bytes, as
    /// `didRegisterForRemoteNotificationsWithDeviceToken` gives them).
    Apns {
        /// The token.
        token: Vec<u8>,
    },
    /// Firebase Cloud Messaging: the registration token.
    Fcm {
        /// The token.
        token: String,
    },
    /// A Web Push subscription (RFC 8030; an app built on a web view, or a
    /// test's own push service): the endpoint and the subscription's keys.
    WebPush {
        /// The push service's URL for this subscription.
        endpoint: String,
        /// The subscription's P-256 public key (65 bytes, uncompressed).
        p256dh: Vec<u8>,
        /// The subscription's authentication secret (16 bytes).
        auth: Vec<u8>,
    },
}

/// What the phone wants pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushChoices {
    /// Approval requests.
    pub approvals: bool,
    /// Finished tasks.
    pub finished: bool,
    /// Notices of messages that never reached a desktop.
    pub missing: bool,
}

impl Default for PushChoices {
    fn default() -> Self {
        Self { approvals: true, finished: true, missing: true }
    }
}

/// One stored key.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct StoredKey {
    pub(crate) id: String,
    pub(crate) key: Secret,
    pub(crate) created_unix: u64,
}

/// The whole file.
#[derive(Clone, Default, Serialize, Deserialize)]
pub(crate) struct PushState {
    /// None: push is off.
    #[serde(default)]
    pub(crate) registration: Option<PushRegistration>,
    #[serde(default)]
    pub(crate) choices: PushChoices,
    /// Desktop id → its keys, newest last.
    #[serde(default)]
    pub(crate) keys: BTreeMap<String, Vec<StoredKey>>,
    /// Desktop id → its name (shown when a notification comes from it).
    #[serde(default)]
    pub(crate) names: BTreeMap<String, String>,
}

impl PushState {
    /// Read `data_dir/push.json` (none: push off).
    pub(crate) fn load(data_dir: &Path) -> Result<Self, PhoneError> {
        match std::fs::read(data_dir.join(FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| PhoneError::Storage(format!("push.json is damaged: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(PhoneError::Storage(format!("push.json: {e}"))),
        }
    }

    /// Write it (or remove the file when push is off and no key is kept).
    pub(crate) fn save(&self, data_dir: &Path) -> Result<(), PhoneError> {
        let path = data_dir.join(FILE);
        if self.registration.is_none() && self.keys.is_empty() {
            return match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(PhoneError::Storage(format!("push.json: {e}"))),
            };
        }
        let bytes = zeroize::Zeroizing::new(
            serde_json::to_vec(self).map_err(|e| PhoneError::Storage(e.to_string()))?,
        );
        crate::store::write_private(&path, &bytes)
            .map_err(|e| PhoneError::Storage(format!("push.json: {e}")))
    }

    /// A fresh key for `desktop_id` (named `name`), the oldest beyond
    /// [`KEPT_KEYS`] forgotten.
    pub(crate) fn rotate(&mut self, desktop_id: &str, name: &str, key: &PushKey, now_unix: u64) {
        let keys = self.keys.entry(desktop_id.to_owned()).or_default();
        keys.push(StoredKey {
            id: key.id_hex(),
            key: Secret(key.key_hex().to_string()),
            created_unix: now_unix,
        });
        let extra = keys.len().saturating_sub(KEPT_KEYS);
        keys.drain(..extra);
        self.names.insert(desktop_id.to_owned(), name.to_owned());
    }

    /// Forget `desktop_id`'s keys.
    pub(crate) fn forget(&mut self, desktop_id: &str) {
        self.keys.remove(desktop_id);
        self.names.remove(desktop_id);
    }

    /// The key of id `id` and the desktop it belongs to.
    fn find(&self, id: [u8; 8]) -> Option<(String, PushKey)> {
        let hex = data_encoding::HEXLOWER.encode(&id);
        self.keys.iter().find_map(|(desktop, keys)| {
            let k = keys.iter().find(|k| k.id == hex)?;
            Some((desktop.clone(), PushKey::from_hex(&k.id, &k.key.0).ok()?))
        })
    }
}

/// A push opened: what to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedNotification {
    /// The desktop that sent it (its device id).
    pub desktop_id: String,
    /// What it says.
    pub notification: Notification,
}

/// Open a push's payload with the keys in `data_dir`: the blob itself, or
/// its standard base64 (APNs' and FCM's `t` field) as text.
///
/// # Errors
/// [`PhoneError::Storage`] when the keys cannot be read;
/// [`PhoneError::Protocol`] when the payload is not a notification sealed
/// with one of them (unknown key: forgotten, or from a desktop since
/// forgotten; tampered). An app shows a generic notification then.
pub fn decrypt_notification(
    data_dir: &Path,
    payload: &[u8],
) -> Result<OpenedNotification, PhoneError> {
    let blob = blob_of(payload)?;
    let state = PushState::load(data_dir)?;
    let id = key_id_of(&blob).map_err(protocol)?;
    let (desktop_id, key) = state.find(id).ok_or_else(|| protocol(PushError::WrongKey))?;
    let mut notification = key.open(&blob).map_err(protocol)?;
    // The name this phone knows the key's desktop by, not the one in the
    // blob: a paired desktop cannot label its push as another's.
    if let Some(name) = state.names.get(&desktop_id) {
        notification.desktop.clone_from(name);
    }
    Ok(OpenedNotification { desktop_id, notification })
}

fn protocol(e: PushError) -> PhoneError {
    PhoneError::Protocol(e.to_string())
}

/// The blob, from itself or its base64.
fn blob_of(payload: &[u8]) -> Result<Vec<u8>, PhoneError> {
    if payload.first() == Some(&tandem_proto::push::SEAL_VERSION) {
        return Ok(payload.to_vec());
    }
    let text: Vec<u8> = payload.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    data_encoding::BASE64.decode(&text).map_err(|_| {
        PhoneError::Protocol("the payload is neither a sealed push nor its base64".into())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use tandem_proto::entropy::Entropy;
    use tandem_proto::push::NotificationKind;

    use super::*;

    fn note() -> Notification {
        Notification {
            kind: NotificationKind::Finished,
            desktop: "box".into(),
            title: "Task succeeded".into(),
            body: "fix the test".into(),
            task_id: Some("t-1".into()),
            approval_id: None,
            expires_at_ms: None,
            can_decide: false,
            at_ms: 1,
        }
    }

    #[test]
    fn opens_with_any_kept_key_and_forgets_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Entropy::os();
        let mut st = PushState::default();
        let keys: Vec<PushKey> = (0..4).map(|_| PushKey::generate(&mut e).unwrap()).collect();
        for k in &keys {
            st.rotate("D1", "box", k, 1);
        }
        st.save(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(FILE)).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
        for k in &keys[1..] {
            let blob = k.seal(&note(), &mut e).unwrap();
            let got = decrypt_notification(dir.path(), &blob).unwrap();
            assert_eq!((got.desktop_id.as_str(), got.notification), ("D1", note()));
            // The stored name wins over the blob's.
            let mut spoof = note();
            spoof.desktop = "another desktop".into();
            let got = decrypt_notification(dir.path(), &k.seal(&spoof, &mut e).unwrap()).unwrap();
            assert_eq!(got.notification.desktop, "box");
            let b64 = data_encoding::BASE64.encode(&blob);
            assert!(decrypt_notification(dir.path(), b64.as_bytes()).is_ok());
        }
        let old = keys[0].seal(&note(), &mut e).unwrap();
        assert!(decrypt_notification(dir.path(), &old).is_err(), "rotated out");
    }

    #[test]
    fn garbage_and_no_keys_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        for p in [&b""[..], b"\x01", b"not base64 !", &[1; 4000]] {
            assert!(decrypt_notification(dir.path(), p).is_err());
        }
        std::fs::write(dir.path().join(FILE), b"{damaged").unwrap();
        assert!(matches!(decrypt_notification(dir.path(), &[1; 300]), Err(PhoneError::Storage(_))));
    }

    #[test]
    fn off_and_keyless_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = PushState::default();
        st.rotate("D1", "box", &PushKey::generate(&mut Entropy::os()).unwrap(), 1);
        st.save(dir.path()).unwrap();
        st.forget("D1");
        st.save(dir.path()).unwrap();
        assert!(!dir.path().join(FILE).exists());
    }
}
