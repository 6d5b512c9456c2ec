//! Tandem's phone-side SDK for iOS and Android (and Python, for tests),
//! exposed through UniFFI proc-macros.
//!
//! Only thin wrappers live here, in the manner of matrix-rust-sdk's
//! `bindings/matrix-sdk-ffi`: the phone-side logic (pairing, sessions,
//! reconnect with backoff and resume, outbox, ordered task events, history)
//! is `tandem-phone`'s [`Phone`](tandem_phone::Phone), which the end-to-end
//! tests and the load generator drive too. This crate adds:
//!
//! - [`TandemClient`]: a [`Phone`](tandem_phone::Phone) with the tokio runtime
//!   it runs on (owned by the SDK; async methods run there, whatever executor
//!   the app awaits them from);
//! - [`PairingHandle`]: the 6-digit code of a pairing in progress and its outcome;
//! - [`EventListener`] (implemented by the app) and [`SubscriptionHandle`]
//!   (stops the subscription when cancelled or dropped);
//! - [`SecretStore`] (implemented by the app with the Keychain or the Android
//!   Keystore; a file store in the data directory by default);
//! - records and enums for desktops, task events and history pages, and the
//!   flat error enum [`MobileError`].
//!
//! Generate bindings with `mobile-ffi/scripts/bindings.sh` (see the README).

mod client;
mod error;
mod events;
mod pairing;
mod push;
mod runtime;
mod secrets;
mod types;

pub use client::{ClientConfig, TandemClient};
pub use error::MobileError;
pub use events::{ClientEvent, EventListener, SubscriptionHandle};
pub use pairing::PairingHandle;
pub use push::{
    PushChoices, PushNotification, PushNotificationKind, PushPlatform, decrypt_notification,
};
pub use secrets::{SecretStore, SecretStoreError};
pub use types::{
    ConnectionState, Desktop, FinishStatus, HistoryPage, Session, TaskEvent, TaskEventRecord,
    TaskState, TaskSummary,
};

uniffi::setup_scaffolding!();

/// The SDK's version (the `tandem-mobile` crate's).
#[uniffi::export]
#[must_use]
pub fn sdk_version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}
