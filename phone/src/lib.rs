//! Tandem's phone-side engine, shared by the mobile SDK (`tandem-mobile`),
//! the tests and the load generator.
//!
//! A [`Phone`] pairs with desktops from their QR codes ([`Phone::start_pairing`],
//! [`Pairing::sas`], [`Pairing::wait`]), keeps each desktop's end-to-end
//! `Link` and task offsets on disk, holds one reconnecting relay connection
//! per relay (`tandem-client`), sends tasks, follow-ups, cancels and
//! approval decisions, and tells subscribers every task event exactly once
//! and in order per task: repeats are dropped and gaps are filled from the
//! desktop's history ([`offsets`], PROTOCOL §15.5).
//!
//! ```no_run
//! # async fn demo(qr: &str) -> Result<(), tandem_phone::PhoneError> {
//! use tandem_phone::{Phone, PhoneConfig, PhoneEvent};
//! let phone = Phone::open(PhoneConfig::new("/tmp/phone", "Ana's phone")).await?;
//! let mut events = phone.subscribe();
//! let pairing = phone.start_pairing(qr).await?;
//! println!("compare {} with the desktop", pairing.sas());
//! let desktop = pairing.wait().await?;
//! let task = phone.submit(&desktop.desktop_id, "run the tests", None).await?;
//! while let Ok(e) = events.recv().await {
//!     if let PhoneEvent::Task(t) = e { println!("{task}: {:?}", t.event) }
//! }
//! # Ok(()) }
//! ```

pub mod crashpoint;
mod error;
pub mod offsets;
mod phone;
mod push;
mod secrets;
mod store;

pub use error::PhoneError;
pub use phone::{
    Choices, ConnectionState, DEVICE_KEY_SECRET, DesktopSummary, FIRST_REPLAY, HistoryPage,
    Pairing, Phone, PhoneConfig, PhoneEvent, StepHook, TaskEventRecord,
};
pub use push::{
    KEPT_KEYS, OpenedNotification, PushChoices, PushRegistration, decrypt_notification,
};
pub use secrets::{FileSecretStore, SecretStore};
pub use tandem_proto::message::{
    ExecutorChoice, FinishStatus, ProjectChoice, TaskEvent, TaskState, TaskSummary,
};
pub use tandem_proto::push::{Notification, NotificationKind};
pub use tandem_proto::upkeep::Schedule;
