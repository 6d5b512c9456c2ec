//! What of a desktop's outbox goes out again, and when (PROTOCOL §13.4).
//!
//! The outbox (the `Link`'s unacknowledged messages, on disk) is the truth;
//! this module only remembers, in memory, which of its messages the relay
//! holds (it answered `Ok`) and which were handed to the relay client and
//! not answered yet. From that:
//!
//! * a message the relay refused (`queue_full`, `rate_limited`, …), or
//!   that did not fit the connection's send queue, goes out again on a
//!   timer, with a backoff from 500 ms doubling up to 30 s, until the relay
//!   takes it, without waiting for a reconnect or a presence;
//! * on `Presence` (the desktop came online) and on `Connected`, only the
//!   messages the relay neither holds nor is being asked to hold go out: a
//!   flapping desktop or connection does not fill the relay's queue with
//!   copies. The relay keeps its queue across reconnects and restarts
//!   (§6.6); after a relay that announced a restart (`Restarting`) comes
//!   back, everything not acknowledged goes out again;
//! * a message the relay holds that the desktop has still not acknowledged
//!   after both were online for [`STALE`] goes out again (the relay may have
//!   lost it: its data restored or wiped), once per [`STALE`] at most; while
//!   the desktop stays online without acknowledging, the wait doubles up to
//!   [`STALE_MAX`] (a desktop that cannot open them does not get the outbox
//!   every 30 s forever); its next acknowledgement resets it;
//! * after a session renewal completes, everything not acknowledged goes
//!   out again under the new session (what the relay holds may be sealed
//!   under one the desktop erased);
//! * after this phone restarts, everything not acknowledged goes out once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tandem_client::ClientError;
use tandem_proto::{DeviceId, ErrorCode};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{ConnectionState, Desktop, Phone, PhoneEvent, Relay, State};
use crate::crashpoint::crash_point;
use crate::error::PhoneError;

/// The first wait before a refused message goes out again.
const RETRY_FIRST: Duration = Duration::from_millis(500);
/// The longest wait between two tries.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How often the timer looks for something due.
const TICK: Duration = Duration::from_millis(250);
/// How long a message the relay holds may stay unacknowledged while both
/// sides are online before it is sent again.
pub(super) const STALE: Duration = Duration::from_secs(30);
/// The longest wait between two stale resends to a desktop that stays
/// online and does not acknowledge.
pub(super) const STALE_MAX: Duration = Duration::from_secs(300);

type Waiter = tokio::sync::oneshot::Sender<Result<(), PhoneError>>;

/// One desktop's outbox as the relay sees it (in memory).
#[derive(Default)]
pub(super) struct Sent {
    /// Messages the relay answered `Ok` for, and when.
    held: BTreeMap<u64, Instant>,
    /// Messages handed to the client, not answered yet.
    in_flight: BTreeSet<u64>,
    /// When to try again what the relay refused or what was not handed over.
    due: Option<Instant>,
    /// The wait after the next refusal.
    backoff: Duration,
    /// Refusals since the relay last took something (reported at the first).
    refusals: u32,
    /// Since when the desktop is online (this connection's view).
    online_since: Option<Instant>,
    /// Callers of `send` waiting for the relay's answer about a message.
    waiting: BTreeMap<u64, Vec<Waiter>>,
    /// How long a held message waits for the desktop's acknowledgement
    /// before it goes out again ([`STALE`] doubling to [`STALE_MAX`]; zero:
    /// not set yet, [`STALE`]).
    stale_wait: Duration,
    /// The oldest message not acknowledged at the last prune.
    acked: u64,
}

impl Sent {
    /// The desktop came online or went offline.
    pub(super) fn presence(&mut self, online: bool) {
        self.online_since = if online { Some(Instant::now()) } else { None };
    }

    /// Try again after the current backoff, which doubles.
    fn failed(&mut self) {
        let wait = self.backoff.max(RETRY_FIRST);
        self.due = Some(Instant::now() + wait);
        self.backoff = (wait * 2).min(RETRY_MAX);
    }

    /// Wait for `seq`'s answer.
    pub(super) fn wait(&mut self, seq: u64, w: Waiter) {
        self.waiting.entry(seq).or_default().push(w);
    }

    fn tell(&mut self, seq: u64, result: &Result<(), PhoneError>) {
        if result.is_ok() && self.waiting.contains_key(&seq) {
            // Taken (the relay's `Ok`, or the desktop's acknowledgement,
            // whichever came first), the caller not told yet. Not for a
            // record only sent again (no caller in this process).
            crash_point("phone.send_stored");
        }
        for w in self.waiting.remove(&seq).unwrap_or_default() {
            let _ = w.send(result.clone());
        }
    }

    /// The current wait before a held message counts as stale.
    fn stale_after(&self) -> Duration {
        self.stale_wait.max(STALE)
    }

    /// Held messages went out again as stale: wait twice as long next time.
    fn stale_resent(&mut self) {
        self.stale_wait = (self.stale_after() * 2).min(STALE_MAX);
    }

    /// Forget what the desktop acknowledged (below `oldest`). An
    /// acknowledgement that moved `oldest` resets the stale wait.
    pub(super) fn prune(&mut self, oldest: u64) {
        if oldest > self.acked {
            self.acked = oldest;
            self.stale_wait = STALE;
        }
        self.held = self.held.split_off(&oldest);
        self.in_flight = self.in_flight.split_off(&oldest);
        let acked: Vec<u64> = self.waiting.range(..oldest).map(|(s, _)| *s).collect();
        for s in acked {
            // Acknowledged by the desktop: certainly stored.
            self.tell(s, &Ok(()));
        }
    }

    /// Whether a retry is due, or a held message is stale.
    fn due(&self, now: Instant) -> bool {
        if self.due.is_some_and(|d| d <= now) {
            return true;
        }
        let online_long = self.online_since.is_some_and(|t| now.duration_since(t) >= STALE);
        let wait = self.stale_after();
        online_long && self.held.values().any(|t| now.duration_since(*t) >= wait)
    }
}

/// Whether the relay may take the message later (`true`), or never: too
/// large, the client closed, or this phone is not (or no longer) allowed to
/// reach the desktop. Those are told to the caller; a route that comes back
/// gets the outbox on the next presence or reconnect.
fn retryable(e: &ClientError) -> bool {
    !matches!(
        e,
        ClientError::TooLarge
            | ClientError::Closed
            | ClientError::Refused(
                ErrorCode::FrameTooLarge
                    | ErrorCode::MalformedFrame
                    | ErrorCode::Revoked
                    | ErrorCode::NotAuthorized
                    | ErrorCode::AuthFailed,
                _
            )
    )
}

/// Hand outbox message `seq` (sealed as `record`) to `d`'s relay connection.
pub(super) fn post(
    relays: &std::collections::HashMap<String, Relay>,
    d: &mut Desktop,
    seq: u64,
    record: Vec<u8>,
) {
    let queued =
        relays.get(&d.record.relay_url).is_some_and(|r| r.post(d.id, record, None, Some(seq)));
    if queued {
        d.sent.in_flight.insert(seq);
    } else {
        d.sent.failed();
    }
}

impl Phone {
    /// The relay answered about outbox message `seq` for `to`.
    pub(super) fn answered(&self, to: DeviceId, seq: u64, result: Result<(), ClientError>) {
        let id = to.to_string();
        let mut notice = None;
        {
            let mut st = self.lock();
            let Some(d) = st.desktops.get_mut(&id) else { return };
            d.sent.in_flight.remove(&seq);
            match result {
                Ok(()) => {
                    if seq >= d.record.link.outbound().oldest() {
                        d.sent.held.insert(seq, Instant::now());
                    }
                    d.sent.backoff = RETRY_FIRST;
                    d.sent.refusals = 0;
                    d.sent.tell(seq, &Ok(()));
                }
                Err(e) => {
                    let retrying = retryable(&e);
                    let (code, message) = match &e {
                        ClientError::Refused(code, m) => (code.as_str().to_owned(), m.clone()),
                        other => ("unsent".to_owned(), other.to_string()),
                    };
                    if retrying {
                        d.sent.failed();
                        debug!(desktop = %id, seq, error = %e, "send refused; tried again on a timer");
                    } else {
                        warn!(desktop = %id, seq, error = %e, "send refused for good");
                        d.sent.tell(seq, &Err(e.into()));
                    }
                    d.sent.refusals += 1;
                    if d.sent.refusals == 1 || !retrying {
                        notice = Some(PhoneEvent::SendRefused {
                            desktop_id: id,
                            code,
                            message,
                            retrying,
                        });
                    }
                }
            }
        }
        if let Some(n) = notice {
            self.emit(n);
        }
    }

    /// Send again what of `desktop_id`'s outbox the relay neither holds nor
    /// is being asked to hold (`all`: everything not acknowledged: the relay
    /// may have lost what it held, or holds it under an old session).
    pub(super) fn resend(&self, desktop_id: &str, all: bool) {
        let mut guard = self.lock();
        let st: &mut State = &mut guard;
        let Some(d) = st.desktops.get_mut(desktop_id) else { return };
        let connected = st
            .relays
            .get(&d.record.relay_url)
            .is_some_and(|r| r.state == ConnectionState::Connected);
        let now = Instant::now();
        d.sent.prune(d.record.link.outbound().oldest());
        if all {
            d.sent.held.clear();
            d.sent.in_flight.clear();
        } else if d.sent.online_since.is_some_and(|t| now.duration_since(t) >= STALE) {
            // Held this long while the desktop was online, and not
            // acknowledged: the relay may have lost it. Then longer, while
            // the desktop stays online without acknowledging.
            let wait = d.sent.stale_after();
            let before = d.sent.held.len();
            d.sent.held.retain(|_, t| now.duration_since(*t) < wait);
            if d.sent.held.len() < before {
                d.sent.stale_resent();
            }
        }
        d.sent.due = None;
        let skip: BTreeSet<u64> =
            d.sent.held.keys().chain(d.sent.in_flight.iter()).copied().collect();
        let records = match d.record.link.resend_only(|s| !skip.contains(&s)) {
            Ok(r) => r,
            Err(e) => {
                // Counters used up: the schedule renews the session, and the
                // outbox follows the renewal.
                info!(desktop = %desktop_id, error = %e, "cannot reseal the outbox until the session is renewed");
                d.reseal = true;
                drop(guard);
                self.upkeep(desktop_id);
                return;
            }
        };
        if records.is_empty() {
            return;
        }
        if let Err(e) = self.save_locked(d) {
            warn!(error = %e, "cannot save before resending; tried again on a timer");
            d.sent.failed();
            return;
        }
        crash_point("phone.resend_saved");
        debug!(desktop = %desktop_id, n = records.len(), connected, "outbox sent again");
        for (seq, rec) in records {
            post(&st.relays, d, seq, rec);
        }
    }

    /// The retry timer of one relay connection: every [`TICK`], each of its
    /// desktops with something due is sent again (while connected).
    pub(super) fn spawn_retry(&self, url: &str) -> JoinHandle<()> {
        let me = self.clone();
        let url = url.to_owned();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = Instant::now();
                let due: Vec<String> = {
                    let st = me.lock();
                    if !st.relays.get(&url).is_some_and(|r| r.state == ConnectionState::Connected) {
                        continue;
                    }
                    st.desktops
                        .values()
                        .filter(|d| d.record.relay_url == url && d.sent.due(now))
                        .map(|d| d.record.desktop_id.clone())
                        .collect()
                };
                for id in due {
                    me.resend(&id, false);
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_bound_and_stale_copies_are_due() {
        let mut s = Sent::default();
        let mut waits = Vec::new();
        for _ in 0..10 {
            let before = Instant::now();
            s.failed();
            waits.push(s.due.unwrap().duration_since(before).as_millis() / 100);
        }
        assert_eq!(waits[..3], [5, 10, 20]);
        assert_eq!(*waits.last().unwrap(), 300);
        // Later than `STALE` after an instant the monotonic clock can
        // show (it may read under 30 s on a freshly booted machine).
        let now = Instant::now() + STALE;
        let mut s = Sent::default();
        assert!(!s.due(now));
        s.held.insert(3, now.checked_sub(STALE).unwrap());
        assert!(!s.due(now), "not due while the desktop is offline");
        s.online_since = now.checked_sub(STALE);
        assert!(s.due(now));
        s.prune(4);
        assert!(!s.due(now), "acknowledged: nothing left");
    }

    #[test]
    fn stale_resends_back_off_while_the_desktop_does_not_acknowledge() {
        // A virtual clock: instants well after any the monotonic clock shows.
        let start = Instant::now() + STALE_MAX * 4;
        let mut s = Sent::default();
        s.prune(3);
        s.online_since = Some(start);
        let mut at = start;
        let mut waits = Vec::new();
        for _ in 0..6 {
            // Held since `at`: due once the current wait passed, not before.
            s.held.insert(3, at);
            let wait = s.stale_after();
            assert!(!s.due(at + wait - Duration::from_secs(1)));
            assert!(s.due(at + wait));
            waits.push(wait.as_secs());
            // Sent again as stale (as `resend` does), and held again.
            s.held.clear();
            s.stale_resent();
            at += wait;
        }
        assert_eq!(waits, [30, 60, 120, 240, 300, 300]);
        // The desktop acknowledges: back to the first wait.
        s.prune(4);
        s.held.insert(4, at);
        assert!(s.due(at + STALE));
        // A prune that acknowledges nothing new does not reset it.
        s.stale_resent();
        s.prune(4);
        assert!(!s.due(at + STALE));
    }

    #[test]
    fn only_too_large_and_closed_are_for_good() {
        assert!(retryable(&ClientError::Refused(ErrorCode::QueueFull, String::new())));
        assert!(retryable(&ClientError::Refused(ErrorCode::RateLimited, String::new())));
        assert!(!retryable(&ClientError::TooLarge));
        assert!(!retryable(&ClientError::Closed));
        assert!(!retryable(&ClientError::Refused(ErrorCode::Revoked, String::new())));
    }
}
