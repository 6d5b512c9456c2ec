//! [`MobileError`]: every way an SDK call can fail, as one flat enum.

use tandem_phone::PhoneError;

/// Why an SDK call failed. A flat enum: each variant carries only its
/// message (in Swift `MobileError.Expired(message:)`, in Kotlin
/// `MobileException.Expired`), so an app switches on the variant and may show
/// the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum MobileError {
    /// The scanned text is not a Tandem pairing link, or it is damaged.
    /// Ask the user to scan again.
    #[error("not a Tandem pairing code: {0}")]
    InvalidQr(String),
    /// The pairing code expired. Ask the user to show a new one on the
    /// desktop (`tandem pair`) and scan it.
    #[error("the pairing code expired; show a new one on the desktop")]
    Expired,
    /// Another phone used this pairing code first. Show a new one.
    #[error("this pairing code was already used")]
    AlreadyClaimed,
    /// The relay the code points to does not know it: a code for another
    /// relay, one the desktop stopped showing, or a server that is not the
    /// relay it claims to be.
    #[error("the relay does not know this pairing code: {0}")]
    WrongRelay(String),
    /// The person at the desktop refused the pairing, or the handshake failed
    /// (for example the desktop is not the one the code names).
    #[error("the desktop refused: {0}")]
    DesktopRefused(String),
    /// The relay cannot be reached (network down, DNS, TLS). Messages
    /// already accepted stay in the outbox and are sent on reconnect.
    #[error("cannot reach the relay: {0}")]
    RelayUnreachable(String),
    /// No paired desktop has this id (it was forgotten, or never paired).
    #[error("no paired desktop {0}")]
    UnknownDesktop(String),
    /// The desktop revoked this phone: the relay refuses its messages. The
    /// app should offer to forget the desktop and pair again.
    #[error("this phone was revoked by the desktop")]
    Revoked,
    /// The phone's own storage (data directory or secret store) failed.
    #[error("storage: {0}")]
    Storage(String),
    /// The relay connection was lost while pairing and the pairing could
    /// not be taken up again; the desktop forgets the attempt too. Ask the
    /// user to show a new code on the desktop and scan it.
    #[error("pairing interrupted: scan again")]
    PairingInterrupted,
    /// Not delivered yet, and it may still be: the relay refused it for now
    /// (the message names why, e.g. revoked) or the connection closed before
    /// it answered; it stays in the outbox and goes out on the next
    /// reconnect. Do not send it again as new: for a submit, the message
    /// names the task id; retry with `submitWithId` and that id (the desktop
    /// runs a task id once).
    #[error("{0}")]
    Queued(String),
    /// The desktop refused the request; the message names its refusal code
    /// in parentheses (PROTOCOL.md §15.3.2: `(not_supported)`, `(scope)`,
    /// `(busy)`, …) and says why.
    #[error("the desktop refused ({code}): {message}")]
    Refused {
        /// The refusal code.
        code: String,
        /// What the desktop said.
        message: String,
    },
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// The client was closed (or is shutting down), or the operation was
    /// cancelled.
    #[error("closed")]
    Closed,
    /// The other side broke the protocol, or a message could not be read.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A relay refused the push registration (no sender for that platform
    /// configured on it, a malformed token, …): the message says why.
    #[error("the relay refused push notifications: {0}")]
    PushRefused(String),
    /// The call cannot be made in this state (for example waiting twice on
    /// one pairing).
    #[error("invalid use: {0}")]
    InvalidUse(String),
    /// A bug in the SDK (a task panicked); the message says where.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<PhoneError> for MobileError {
    fn from(e: PhoneError) -> Self {
        match e {
            PhoneError::InvalidQr(m) => Self::InvalidQr(m),
            PhoneError::Expired => Self::Expired,
            PhoneError::AlreadyClaimed => Self::AlreadyClaimed,
            PhoneError::WrongRelay(m) => Self::WrongRelay(m),
            PhoneError::DesktopRefused(m) => Self::DesktopRefused(m),
            PhoneError::RelayUnreachable(m) => Self::RelayUnreachable(m),
            PhoneError::UnknownDesktop(m) => Self::UnknownDesktop(m),
            PhoneError::Revoked => Self::Revoked,
            PhoneError::Storage(m) => Self::Storage(m),
            PhoneError::PairingInterrupted => Self::PairingInterrupted,
            PhoneError::Timeout => Self::Timeout,
            PhoneError::Refused { code, message } => Self::Refused { code, message },
            PhoneError::Closed => Self::Closed,
            PhoneError::Protocol(m) => Self::Protocol(m),
            PhoneError::PushRefused(m) => Self::PushRefused(m),
            PhoneError::InvalidConfig(m) => Self::InvalidUse(m),
            e @ PhoneError::Queued { .. } => Self::Queued(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phone_error_keeps_its_kind_and_message() {
        let cases = [
            (PhoneError::InvalidQr("x".into()), MobileError::InvalidQr("x".into())),
            (PhoneError::Expired, MobileError::Expired),
            (PhoneError::AlreadyClaimed, MobileError::AlreadyClaimed),
            (PhoneError::WrongRelay("r".into()), MobileError::WrongRelay("r".into())),
            (PhoneError::DesktopRefused("d".into()), MobileError::DesktopRefused("d".into())),
            (PhoneError::RelayUnreachable("u".into()), MobileError::RelayUnreachable("u".into())),
            (PhoneError::UnknownDesktop("k".into()), MobileError::UnknownDesktop("k".into())),
            (PhoneError::Revoked, MobileError::Revoked),
            (PhoneError::Storage("s".into()), MobileError::Storage("s".into())),
            (PhoneError::PairingInterrupted, MobileError::PairingInterrupted),
            (PhoneError::Timeout, MobileError::Timeout),
            (
                PhoneError::Refused { code: "c".into(), message: "m".into() },
                MobileError::Refused { code: "c".into(), message: "m".into() },
            ),
            (PhoneError::Closed, MobileError::Closed),
            (PhoneError::Protocol("p".into()), MobileError::Protocol("p".into())),
            (PhoneError::PushRefused("n".into()), MobileError::PushRefused("n".into())),
            (
                PhoneError::Queued {
                    task_id: Some("t1".into()),
                    cause: Box::new(PhoneError::Revoked),
                },
                MobileError::Queued(
                    "not delivered yet, still queued (task t1): this phone was revoked by the desktop"
                        .into(),
                ),
            ),
        ];
        for (phone, mobile) in cases {
            let text = phone.to_string();
            let got = MobileError::from(phone);
            assert_eq!(got, mobile);
            assert_eq!(got.to_string(), text, "the app shows the engine's words");
        }
    }

    #[test]
    fn an_unusable_configuration_is_an_invalid_use() {
        let got = MobileError::from(PhoneError::InvalidConfig(
            "rekey_after_ms must be at least 1".into(),
        ));
        assert_eq!(got, MobileError::InvalidUse("rekey_after_ms must be at least 1".into()));
    }
}
