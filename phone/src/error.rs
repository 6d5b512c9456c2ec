//! What can go wrong on the phone side, as one flat enum an app can show.

use tandem_client::ClientError;
use tandem_proto::ErrorCode;
use tandem_proto::pairing::PairingError;
use tandem_proto::qr::QrError;
use thiserror::Error;

/// Why a phone operation failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PhoneError {
    /// The scanned text is not a Tandem pairing link (or it is damaged).
    #[error("not a Tandem pairing code: {0}")]
    InvalidQr(String),
    /// The pairing code expired; show a new one on the desktop.
    #[error("the pairing code expired; show a new one on the desktop")]
    Expired,
    /// Another phone used this pairing code first.
    #[error("this pairing code was already used")]
    AlreadyClaimed,
    /// The relay named in the code does not know it (a code for another
    /// relay, or one the desktop stopped showing), or it is not the relay it
    /// claims to be.
    #[error("the relay does not know this pairing code: {0}")]
    WrongRelay(String),
    /// The person at the desktop refused the pairing (or the handshake failed).
    #[error("the desktop refused: {0}")]
    DesktopRefused(String),
    /// The relay cannot be reached.
    #[error("cannot reach the relay: {0}")]
    RelayUnreachable(String),
    /// No paired desktop has this id.
    #[error("no paired desktop {0}")]
    UnknownDesktop(String),
    /// The desktop revoked this phone: the relay refuses its messages.
    #[error("this phone was revoked by the desktop")]
    Revoked,
    /// The phone's own storage failed.
    #[error("storage: {0}")]
    Storage(String),
    /// The relay connection was lost while pairing (the relay restarted or
    /// the network dropped) and the pairing could not be taken up again:
    /// the desktop forgets the attempt too (PROTOCOL §9.4, "Interruptions").
    /// Show a new code on the desktop and scan it.
    #[error("pairing interrupted: scan again")]
    PairingInterrupted,
    /// The message was not delivered yet, and may still be: it stays in the
    /// outbox (the relay refused it: `not_authorized`, `revoked`; or the
    /// connection closed before the relay answered) and
    /// goes out again on the next reconnect, presence or restart of this
    /// phone. Do not send it again as a new message: a retry of a task
    /// submit with the same `task_id` ([`crate::Phone::submit_with_id`]) is
    /// harmless (the desktop runs a task id once).
    #[error("not delivered yet, still queued{}: {cause}", task_id.as_ref().map_or(String::new(), |t| format!(" (task {t})")))]
    Queued {
        /// The task's id, for a task submit.
        task_id: Option<String>,
        /// Why the relay did not take it ([`PhoneError::Revoked`] for
        /// `not_authorized`/`revoked`, [`PhoneError::Closed`], …).
        cause: Box<PhoneError>,
    },
    /// The desktop refused the request (`refused`: its code and message,
    /// PROTOCOL.md §15.3.2), for a request answered in the call
    /// ([`crate::Phone::sessions`]).
    #[error("the desktop refused ({code}): {message}")]
    Refused {
        /// The refusal's code (`not_supported`, `scope`, …).
        code: String,
        /// What the desktop said.
        message: String,
    },
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// The phone was closed.
    #[error("closed")]
    Closed,
    /// Something the protocol does not allow happened.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A relay refused the push registration (no sender for that platform
    /// configured there, a malformed token, …).
    #[error("the relay refused push notifications: {0}")]
    PushRefused(String),
    /// The configuration cannot work (for example a renewal schedule with a
    /// 0 in it).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}

impl From<QrError> for PhoneError {
    fn from(e: QrError) -> Self {
        match e {
            QrError::Expired { .. } => PhoneError::Expired,
            other => PhoneError::InvalidQr(other.to_string()),
        }
    }
}

impl From<PairingError> for PhoneError {
    fn from(e: PairingError) -> Self {
        match e {
            PairingError::Expired => PhoneError::Expired,
            PairingError::Refused(r) => PhoneError::DesktopRefused(r),
            other => PhoneError::DesktopRefused(other.to_string()),
        }
    }
}

impl From<ClientError> for PhoneError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Refused(code, msg) => match code {
                ErrorCode::PairingClaimed => PhoneError::AlreadyClaimed,
                ErrorCode::PairingExpired => PhoneError::Expired,
                ErrorCode::PairingNotFound => PhoneError::WrongRelay(msg),
                ErrorCode::NotAuthorized | ErrorCode::Revoked => PhoneError::Revoked,
                other => PhoneError::Protocol(format!("{}: {msg}", other.as_str())),
            },
            ClientError::Closed => PhoneError::Closed,
            ClientError::Timeout => PhoneError::Timeout,
            ClientError::WrongRelay { .. } => PhoneError::WrongRelay(e.to_string()),
            ClientError::Io(m) | ClientError::Tls(m) | ClientError::WebSocket(m) => {
                PhoneError::RelayUnreachable(m)
            }
            other => PhoneError::Protocol(other.to_string()),
        }
    }
}
