//! What can go wrong talking to the relay.

use tandem_proto::ErrorCode;
use tandem_proto::frame::MAX_PAYLOAD_LEN;
use tandem_proto::relay_auth::RelayAuthError;
use thiserror::Error;
use tokio_tungstenite::tungstenite;

/// An error from [`crate::connect`] or a [`crate::Client`] request.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// The relay refused: an `Error` frame answering the request (or the
    /// handshake), with its documented code and human-readable message.
    #[error("the relay refused: {0}: {1}")]
    Refused(ErrorCode, String),
    /// The client was closed (or every handle dropped) before an answer came.
    #[error("the relay client is closed")]
    Closed,
    /// Connecting, the TLS/WebSocket handshake or authentication did not
    /// finish within the deadline, or the relay stopped taking our frames.
    #[error("timed out waiting for the relay")]
    Timeout,
    /// The payload is over [`MAX_PAYLOAD_LEN`] bytes; nothing was sent.
    #[error("payload over the {MAX_PAYLOAD_LEN}-byte limit")]
    TooLarge,
    /// The relay URL is not usable.
    #[error("invalid relay URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS configuration is unusable (for example an extra root
    /// certificate that does not parse), or the TLS handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The relay could not be reached (DNS, TCP, or a TLS failure reported
    /// as an I/O error such as an untrusted certificate).
    #[error("cannot reach the relay: {0}")]
    Io(String),
    /// The WebSocket upgrade or framing failed.
    #[error("WebSocket: {0}")]
    WebSocket(String),
    /// The relay's challenge names another relay than the one dialed: it may
    /// be passing another relay's challenge through. No `Auth` was sent.
    #[error(
        "the relay calls itself {got:?}, but this client dialed {expected:?}; refusing to \
         authenticate"
    )]
    WrongRelay {
        /// The name in the challenge.
        got: String,
        /// The name this client dialed (normalised).
        expected: String,
    },
    /// The relay's challenge could not be answered (for example a low-order
    /// ephemeral key). No `Auth` was sent.
    #[error("cannot answer the relay's challenge: {0}")]
    Auth(RelayAuthError),
    /// The relay broke the protocol (an unexpected frame during the
    /// handshake, an `AuthOk` for another device id, …).
    #[error("relay protocol violation: {0}")]
    Protocol(String),
    /// The relay closed the connection (or it dropped). `code` is set when the
    /// relay said why with a Tandem close code (`4000 + code`).
    #[error("the connection to the relay ended: {reason}")]
    Disconnected {
        /// The relay's reason, if it gave a Tandem close code.
        code: Option<ErrorCode>,
        /// Human-readable detail.
        reason: String,
    },
    /// The connection dropped after the request was written and before the
    /// relay answered. The request may or may not have taken effect; it is
    /// not retried automatically because it is not idempotent (`PairOpen`,
    /// `PairClaim`, `PairClose`).
    #[error("the connection dropped before the relay answered; the request may have taken effect")]
    Interrupted,
}

impl ClientError {
    /// The relay's error code, when the relay gave one.
    #[must_use]
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused(code, _) => Some(*code),
            ClientError::Disconnected { code, .. } => *code,
            _ => None,
        }
    }

    /// Whether reconnecting cannot help: the relay rejected this device's key
    /// (`auth_failed`) or the device was revoked (`revoked`).
    #[must_use]
    pub fn is_fatal(&self) -> bool {
        self.code().is_some_and(is_fatal_code)
    }

    /// Whether the relay refused the request for now and the same request
    /// may be taken later: its store cannot write (`store_unavailable`), it
    /// is busy (`rate_limited`, `overloaded`) or failed (`internal`).
    #[must_use]
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            ClientError::Refused(
                ErrorCode::StoreUnavailable
                    | ErrorCode::RateLimited
                    | ErrorCode::Overloaded
                    | ErrorCode::Internal,
                _
            )
        )
    }
}

/// Connection-level codes after which the client stops reconnecting.
pub(crate) fn is_fatal_code(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::AuthFailed | ErrorCode::Revoked)
}

impl From<RelayAuthError> for ClientError {
    fn from(e: RelayAuthError) -> Self {
        match e {
            RelayAuthError::WrongRelay { got, expected } => {
                ClientError::WrongRelay { got, expected }
            }
            other => ClientError::Auth(other),
        }
    }
}

impl From<tungstenite::Error> for ClientError {
    fn from(e: tungstenite::Error) -> Self {
        use tungstenite::Error as E;
        match e {
            E::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => ClientError::Timeout,
            E::Io(io) => ClientError::Io(io.to_string()),
            E::Tls(tls) => ClientError::Tls(tls.to_string()),
            E::ConnectionClosed | E::AlreadyClosed => {
                ClientError::Disconnected { code: None, reason: "the connection is closed".into() }
            }
            E::Url(url) => ClientError::InvalidUrl { url: String::new(), reason: url.to_string() },
            E::Http(resp) => ClientError::WebSocket(format!(
                "the relay answered the upgrade with HTTP {}",
                resp.status()
            )),
            other => ClientError::WebSocket(other.to_string()),
        }
    }
}
