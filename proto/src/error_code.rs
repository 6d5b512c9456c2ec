//! The documented error codes. One registry for both the relay's `Error`
//! frame and WebSocket close codes (`4000 + code`), so a client can tell why
//! it was refused or closed whichever way the news arrives.

use serde::{Deserialize, Serialize};

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $code:literal, $slug:literal; )*) => {
        /// Why the relay refused a frame or closed a connection. Two values
        /// are equal when their numeric codes are (so `Other(5)` equals
        /// `AuthFailed`).
        #[derive(Debug, Clone, Copy, Serialize, Deserialize)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $name, )*
            /// A code this build does not know (from a newer peer).
            Other(u16),
        }

        impl ErrorCode {
            /// Every known code, in registry order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name,)*];

            /// The numeric code.
            #[must_use]
            pub fn code(self) -> u16 {
                match self { $( ErrorCode::$name => $code, )* ErrorCode::Other(c) => c }
            }

            /// From the numeric code; unknown codes become [`ErrorCode::Other`].
            #[must_use]
            pub fn from_code(code: u16) -> Self {
                match code { $( $code => ErrorCode::$name, )* c => ErrorCode::Other(c) }
            }

            /// A stable snake_case name, used in logs and metrics labels.
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self { $( ErrorCode::$name => $slug, )* ErrorCode::Other(_) => "other" }
            }
        }
    };
}

error_codes! {
    /// The frame's protocol version is not one this side speaks.
    UnsupportedVersion = 1, "unsupported_version";
    /// The frame type is not in the registry.
    UnknownFrameType = 2, "unknown_frame_type";
    /// The frame could not be decoded (truncated, trailing bytes, bad field).
    MalformedFrame = 3, "malformed_frame";
    /// The frame is larger than the limit.
    FrameTooLarge = 4, "frame_too_large";
    /// The device did not prove it holds its key.
    AuthFailed = 5, "auth_failed";
    /// A frame other than the handshake arrived before authentication.
    NotAuthenticated = 6, "not_authenticated";
    /// The frame is valid but not allowed in this state or for this role.
    UnexpectedFrame = 7, "unexpected_frame";
    /// No route: these two devices have not both authorised each other.
    NotAuthorized = 8, "not_authorized";
    /// The device was revoked.
    Revoked = 9, "revoked";
    /// The recipient's queue is full (by count or bytes).
    QueueFull = 10, "queue_full";
    /// Too many frames, connections or pairing attempts.
    RateLimited = 11, "rate_limited";
    /// No pairing with that id (never opened, or expired and gone).
    PairingNotFound = 12, "pairing_not_found";
    /// The pairing was already claimed by another device.
    PairingClaimed = 13, "pairing_claimed";
    /// The pairing expired.
    PairingExpired = 14, "pairing_expired";
    /// A phone's remote session saw no application traffic for the idle timeout.
    IdleTimeout = 15, "idle_timeout";
    /// A newer connection for the same device replaced this one.
    Replaced = 16, "replaced";
    /// The relay is at its connection limit.
    Overloaded = 17, "overloaded";
    /// The connection did not authenticate within the deadline.
    HandshakeTimeout = 18, "handshake_timeout";
    /// The relay is shutting down (a `Restarting` frame came first).
    ShuttingDown = 19, "shutting_down";
    /// No pong arrived within the deadline.
    PingTimeout = 20, "ping_timeout";
    /// The relay's own fault (store unavailable, …). Retry later.
    Internal = 21, "internal";
    /// The relay cannot write its store right now (a full disk, a failed
    /// database being reopened, or the writer's queue is full). Nothing was
    /// accepted: retry later (the end-to-end outbox resends).
    StoreUnavailable = 22, "store_unavailable";
    /// The relay sends no push of that kind (no sender configured for it:
    /// a `PushSubscribe` it cannot serve).
    PushUnavailable = 23, "push_unavailable";
}

impl PartialEq for ErrorCode {
    fn eq(&self, other: &Self) -> bool {
        self.code() == other.code()
    }
}

impl Eq for ErrorCode {}

impl std::hash::Hash for ErrorCode {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.code().hash(state);
    }
}

/// WebSocket close codes 4000–4999 are for applications; Tandem's is
/// `4000 + code`.
pub const CLOSE_CODE_BASE: u16 = 4000;

impl ErrorCode {
    /// The WebSocket close code for this error.
    #[must_use]
    pub fn close_code(self) -> u16 {
        CLOSE_CODE_BASE.saturating_add(self.code())
    }

    /// From a WebSocket close code, if it is one of Tandem's.
    #[must_use]
    pub fn from_close_code(close: u16) -> Option<Self> {
        (4000..5000).contains(&close).then(|| Self::from_code(close - CLOSE_CODE_BASE))
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.as_str(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.code()));
            assert_eq!(ErrorCode::from_code(c.code()), *c);
            assert_eq!(ErrorCode::from_close_code(c.close_code()), Some(*c));
        }
        assert_eq!(ErrorCode::from_code(999), ErrorCode::Other(999));
        assert_eq!(ErrorCode::from_close_code(1000), None);
    }
}
