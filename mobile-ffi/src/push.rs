//! Push notifications (docs/PUSH.md): turning them on with the platform's
//! token, and opening one in a Notification Service Extension (iOS) or a
//! data-message handler (Android) with [`decrypt_notification`], which
//! needs no open client.

use crate::client::TandemClient;
use crate::error::MobileError;

/// The platform's push token.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum PushPlatform {
    /// Apple Push Notification service: the device token's bytes.
    Apns {
        /// The token.
        token: Vec<u8>,
    },
    /// Firebase Cloud Messaging: the registration token.
    Fcm {
        /// The token.
        token: String,
    },
}

/// What to push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct PushChoices {
    /// Approval requests.
    #[uniffi(default = true)]
    pub approvals: bool,
    /// Finished tasks.
    #[uniffi(default = true)]
    pub finished: bool,
    /// Notices of messages that never reached a desktop.
    #[uniffi(default = true)]
    pub missing: bool,
}

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum PushNotificationKind {
    /// An approval waits: offer Allow / Deny when `can_decide`.
    Approval,
    /// A task finished.
    Finished,
    /// Some of this phone's messages never reached the desktop.
    Missing,
    /// A kind a newer desktop sends: show it as it is.
    Other,
}

/// An opened notification: what to show.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PushNotification {
    /// The desktop that sent it.
    pub desktop_id: String,
    /// Its name.
    pub desktop_name: String,
    /// What it is about.
    pub kind: PushNotificationKind,
    /// The notification's title.
    pub title: String,
    /// Its body.
    pub body: String,
    /// The task it concerns.
    pub task_id: Option<String>,
    /// The approval it asks for (pass it to `decide`).
    pub approval_id: Option<String>,
    /// When the approval times out (Unix ms).
    pub expires_at_ms: Option<u64>,
    /// This phone may decide the approval.
    pub can_decide: bool,
    /// When the desktop sent it (Unix ms).
    pub at_ms: u64,
}

impl From<tandem_phone::OpenedNotification> for PushNotification {
    fn from(o: tandem_phone::OpenedNotification) -> Self {
        use tandem_phone::NotificationKind as K;
        let n = o.notification;
        Self {
            desktop_id: o.desktop_id,
            desktop_name: n.desktop,
            kind: match n.kind {
                K::Approval => PushNotificationKind::Approval,
                K::Finished => PushNotificationKind::Finished,
                K::Missing => PushNotificationKind::Missing,
                K::Other => PushNotificationKind::Other,
            },
            title: n.title,
            body: n.body,
            task_id: n.task_id,
            approval_id: n.approval_id,
            expires_at_ms: n.expires_at_ms,
            can_decide: n.can_decide,
            at_ms: n.at_ms,
        }
    }
}

/// Open a push's payload (the sealed blob, or its base64 as the `t` field
/// of the APNs or FCM message carries it) with the push keys kept in
/// `data_dir` (the client's data directory; on iOS in an App Group shared
/// with the extension). Opens no connection.
///
/// # Errors
/// [`MobileError::Protocol`] when it is not a notification sealed with one
/// of this phone's keys (show a generic notification then);
/// [`MobileError::Storage`] when the keys cannot be read.
#[uniffi::export]
pub fn decrypt_notification(
    data_dir: String,
    payload: Vec<u8>,
) -> Result<PushNotification, MobileError> {
    Ok(tandem_phone::decrypt_notification(std::path::Path::new(&data_dir), &payload)?.into())
}

#[uniffi::export]
impl TandemClient {
    /// Turn push notifications on with the platform's token (call again
    /// when the token changes): every relay is given the token, every
    /// paired desktop a fresh push key; the notifications carry nothing
    /// the relay, Apple or Google can read.
    ///
    /// # Errors
    /// [`MobileError::PushRefused`] (the relay has no sender for that
    /// platform), [`MobileError::Storage`], [`MobileError::Closed`].
    pub async fn enable_push(
        &self,
        platform: PushPlatform,
        choices: PushChoices,
    ) -> Result<(), MobileError> {
        let phone = self.phone();
        let registration = match platform {
            PushPlatform::Apns { token } => tandem_phone::PushRegistration::Apns { token },
            PushPlatform::Fcm { token } => tandem_phone::PushRegistration::Fcm { token },
        };
        let choices = tandem_phone::PushChoices {
            approvals: choices.approvals,
            finished: choices.finished,
            missing: choices.missing,
        };
        self.runtime().run(async move { phone.enable_push(registration, choices).await }).await
    }

    /// Turn push notifications off: desktops forget the keys, relays the
    /// token, and the keys are deleted.
    ///
    /// # Errors
    /// [`MobileError::Storage`], [`MobileError::Closed`].
    pub async fn disable_push(&self) -> Result<(), MobileError> {
        let phone = self.phone();
        self.runtime().run(async move { phone.disable_push().await }).await
    }

    /// Tell the relays the app is in the foreground (`true`: no pushes, it
    /// sees everything live) or in the background (`false`). Callable from
    /// any thread (the app's main thread has no tokio runtime: the call
    /// enters the SDK's own).
    pub fn set_foreground(&self, foreground: bool) {
        let _entered = self.runtime().handle().enter();
        self.phone().set_foreground(foreground);
    }

    /// Open a push's payload with this client's keys (see
    /// [`decrypt_notification`]).
    ///
    /// # Errors
    /// As [`decrypt_notification`].
    pub fn decrypt_notification(&self, payload: Vec<u8>) -> Result<PushNotification, MobileError> {
        Ok(self.phone().decrypt_notification(&payload)?.into())
    }
}
