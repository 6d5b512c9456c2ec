//! When a link renews its session and rekeys: the schedule every endpoint
//! runs (`docs/PROTOCOL.md` §10.6), sans I/O.
//!
//! The caller owns the timer. It calls [`crate::link::Link::upkeep`] with the
//! time (Unix milliseconds, its own clock) and whether the peer is online,
//! every few seconds and whenever the peer comes online, then:
//!
//! 1. if [`Upkeep::must_persist`], durably persists the link;
//! 2. sends [`Upkeep::renewal`] (a `SessionInit` envelope), if any, to the
//!    peer.
//!
//! The link keeps what the schedule needs ([`Clock`]) in its persisted
//! state, so the schedule survives restarts. A renewal in progress does not:
//! after a restart the answer to it is refused and a new renewal starts.

use serde::{Deserialize, Serialize};

use crate::record::MAX_COUNTER;

/// The default age after which a session is renewed: one hour.
pub const DEFAULT_RENEW_AFTER_MS: u64 = 3_600_000;
/// The default number of records (sealed plus opened) after which a session
/// is renewed.
pub const DEFAULT_RENEW_AFTER_RECORDS: u64 = 50_000;
/// The default interval of time-based rekeying: one hour.
pub const DEFAULT_REKEY_AFTER_MS: u64 = 3_600_000;
/// The default time a renewal may wait for its answer before it is
/// abandoned (and the earliest another one starts).
pub const DEFAULT_RENEWAL_TIMEOUT_MS: u64 = 30_000;
/// Counters left in a session when it is renewed whatever its age.
pub const EXHAUSTION_MARGIN: u64 = MAX_COUNTER / 4;

/// When to renew and rekey. Every field is in milliseconds or records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Renew a session this old (by this device's clock, from when it first
    /// saw the session as current).
    pub renew_after_ms: u64,
    /// Renew a session after this many records sealed or opened under it.
    pub renew_after_records: u64,
    /// Ratchet the sending key (`rekey_now`) this often.
    pub rekey_after_ms: u64,
    /// Abandon a renewal that got no answer within this; also the least
    /// time between two renewals this device starts.
    pub renewal_timeout_ms: u64,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            renew_after_ms: DEFAULT_RENEW_AFTER_MS,
            renew_after_records: DEFAULT_RENEW_AFTER_RECORDS,
            rekey_after_ms: DEFAULT_REKEY_AFTER_MS,
            renewal_timeout_ms: DEFAULT_RENEWAL_TIMEOUT_MS,
        }
    }
}

/// What one call of [`crate::link::Link::upkeep`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Upkeep {
    /// A `SessionInit` to send to the peer, after persisting the link.
    pub renewal: Option<Vec<u8>>,
    /// The sending key was ratcheted (its old value is gone from memory;
    /// persist to erase it from storage).
    pub rekeyed: bool,
    /// A renewal that got no answer in time was abandoned.
    pub abandoned: bool,
    /// The persisted state changed: persist before sending anything sealed
    /// under the link (and before [`Self::renewal`]).
    pub changed: bool,
}

impl Upkeep {
    /// Whether the link must be persisted now.
    #[must_use]
    pub fn must_persist(&self) -> bool {
        self.changed || self.rekeyed || self.renewal.is_some()
    }
}

/// The schedule's persisted state, kept in the link.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock {
    /// The session `since_ms` is about; when the link's current session is
    /// another one, the clock starts again.
    pub(crate) session_id: [u8; 8],
    /// When this device first saw the session as current (0: not yet).
    pub(crate) since_ms: u64,
    /// When the sending key was last ratcheted by time (or `since_ms`).
    pub(crate) rekeyed_ms: u64,
    /// Records sealed or opened under the session.
    pub(crate) records: u64,
}

impl Clock {
    /// A clock for a session this device has just switched to; started by
    /// the next upkeep.
    pub(crate) fn for_session(session_id: [u8; 8]) -> Self {
        Self { session_id, ..Self::default() }
    }

    /// Start (or restart) the clock at `now_ms` when the session changed,
    /// was never timed, or the clock went back. Returns whether it changed.
    pub(crate) fn start(&mut self, session_id: [u8; 8], now_ms: u64) -> bool {
        if self.session_id != session_id {
            *self = Self::for_session(session_id);
        }
        if self.since_ms == 0 || self.since_ms > now_ms {
            self.since_ms = now_ms;
            self.rekeyed_ms = now_ms;
            return true;
        }
        if self.rekeyed_ms > now_ms {
            self.rekeyed_ms = now_ms;
            return true;
        }
        false
    }

    /// Count one record sealed or opened under the current session.
    pub(crate) fn count(&mut self) {
        self.records = self.records.saturating_add(1);
    }

    /// How long the session has been current.
    #[must_use]
    pub(crate) fn age_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.since_ms)
    }
}

/// What the link remembers about its own renewals between calls (not
/// persisted).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attempt {
    /// When the pending renewal was started.
    pub(crate) pending_since_ms: Option<u64>,
    /// When this device last started a renewal.
    pub(crate) last_start_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_starts_on_a_new_session_and_when_time_goes_back() {
        let mut c = Clock::default();
        assert!(c.start([1; 8], 1_000));
        assert_eq!((c.since_ms, c.rekeyed_ms), (1_000, 1_000));
        assert!(!c.start([1; 8], 5_000));
        c.count();
        assert_eq!(c.records, 1);
        assert_eq!(c.age_ms(5_000), 4_000);
        // Another session: everything starts again.
        assert!(c.start([2; 8], 6_000));
        assert_eq!((c.since_ms, c.records), (6_000, 0));
        // The clock went back: restart rather than wait for the old time.
        assert!(c.start([2; 8], 10));
        assert_eq!(c.since_ms, 10);
    }

    #[test]
    fn persisting_is_needed_for_any_change() {
        assert!(!Upkeep::default().must_persist());
        assert!(Upkeep { changed: true, ..Upkeep::default() }.must_persist());
        assert!(Upkeep { rekeyed: true, ..Upkeep::default() }.must_persist());
        assert!(Upkeep { renewal: Some(vec![1]), ..Upkeep::default() }.must_persist());
    }
}
