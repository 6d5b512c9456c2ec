//! Push notifications: the relay wakes a device through its platform's push
//! service with an opaque blob the desktop sealed for it.
//!
//! The seam is [`PushSender`], one per platform: Web Push, [`apns`] (Apple)
//! and [`fcm`] (Google). The senders see only the subscription and the
//! inner-sealed blob; the delivery rules (suppression, collapse, rate
//! limits, removal of dead subscriptions) live above them.
//!
//! (This file is the issue-19 spec's seam as the APNs/FCM branch needs it;
//! at merge the lead keeps the Web Push branch's copy and adds the module
//! lines in the `native` block below.)

use std::future::Future;
use std::pin::Pin;

// --- native senders (APNs, FCM): keep these lines at merge ---
pub mod apns;
pub mod fcm;
mod h2client;
mod jwt;
pub mod native_config;
// --- end native senders ---

/// One platform's sender (Web Push, APNs, FCM).
pub trait PushSender: Send + Sync + 'static {
    /// Send `push` to `sub`.
    fn send<'a>(
        &'a self,
        sub: &'a Subscription,
        push: &'a Push,
    ) -> Pin<Box<dyn Future<Output = Result<(), PushError>> + Send + 'a>>;
}

/// Where a device is woken: its subscription with one platform.
#[derive(Clone, PartialEq, Eq)]
pub enum Subscription {
    /// A Web Push subscription (RFC 8030 endpoint, RFC 8291 keys).
    WebPush {
        /// The push service's URL for this subscription.
        endpoint: String,
        /// The subscription's P-256 public key (uncompressed).
        p256dh: [u8; 65],
        /// The subscription's authentication secret.
        auth: [u8; 16],
    },
    /// An APNs device token (raw bytes).
    Apns {
        /// The device token.
        token: Vec<u8>,
    },
    /// An FCM registration token.
    Fcm {
        /// The registration token.
        token: String,
    },
}

/// One push to send.
#[derive(Clone, Debug)]
pub struct Push {
    /// How urgent (RFC 8030 `Urgency`).
    pub urgency: Urgency,
    /// The collapse topic; `None`: no collapse.
    pub topic: Option<[u8; 16]>,
    /// The inner-sealed notification, opaque to the relay.
    pub blob: bytes::Bytes,
    /// How long the push service may keep it for an unreachable device.
    pub ttl_secs: u32,
}

/// RFC 8030 urgency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Urgency {
    /// `very-low`.
    VeryLow,
    /// `low`.
    Low,
    /// `normal`.
    Normal,
    /// `high`.
    High,
}

/// Why a push was not sent.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum PushError {
    /// The subscription is dead (404/410, APNs `Unregistered`/`BadDeviceToken`,
    /// FCM `UNREGISTERED`): remove it.
    #[error("the subscription is gone")]
    Gone,
    /// The push service refused this push (another 4xx).
    #[error("the push service refused the push: {0}")]
    Rejected(String),
    /// The push service could not be reached or failed (5xx, 429, network,
    /// timeout): retry later, once.
    #[error("the push service is unavailable: {0}")]
    Unavailable(String),
}
