//! What a pair's two relay clients went through, with the time of each
//! step: every connection lost or attempt failed (and the wait the client
//! chose before the next), every authentication (and the deliveries the
//! relay said were queued). The reconnect storm reads it to say where the
//! time between the kill and the pair's first message went.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Which end of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The desktop (the sending end).
    Desktop,
    /// The phone (the receiving end).
    Phone,
}

/// Why a connection ended or an attempt failed, roughly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Nobody listened (`connection refused`).
    Refused,
    /// The attempt ran out of time.
    Timeout,
    /// Anything else (a connection that was up and died, a reset).
    Other,
}

impl Cause {
    /// Sort a client's `Disconnected` reason.
    #[must_use]
    pub fn of(reason: &str) -> Self {
        let r = reason.to_ascii_lowercase();
        if r.contains("refused") {
            Cause::Refused
        } else if r.contains("timed out") || r.contains("timeout") {
            Cause::Timeout
        } else {
            Cause::Other
        }
    }
}

/// One step of one end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A connection ended or an attempt failed; the next attempt in
    /// `retry_in`.
    Disconnected {
        /// The client's wait before its next attempt.
        retry_in: Duration,
        /// Why.
        cause: Cause,
    },
    /// Authenticated (`AuthOk`).
    Connected {
        /// Deliveries the relay said were waiting.
        queued: u32,
    },
}

/// A pair's steps, both ends, in the order they were noted.
#[derive(Debug, Default)]
pub struct PairSteps(Mutex<Vec<(Instant, End, Step)>>);

impl PairSteps {
    /// Note `step` of `end`, now.
    pub fn note(&self, end: End, step: Step) {
        if let Ok(mut v) = self.0.lock() {
            v.push((Instant::now(), end, step));
        }
    }

    /// Everything noted so far.
    #[must_use]
    pub fn all(&self) -> Vec<(Instant, End, Step)> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// One end's way back after a moment (the kill): when it noticed, how many
/// attempts failed, how long it waited in all, when it authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WayBack {
    /// The first `Disconnected` after the moment.
    pub lost: Instant,
    /// Attempts that failed after the connection was lost.
    pub failed: u32,
    /// Of them, refused (nobody listening).
    pub refused: u32,
    /// The waits the client chose, added up.
    pub waited: Duration,
    /// When the attempt that succeeded started (its wait over).
    pub last_attempt: Instant,
    /// Authenticated again.
    pub connected: Instant,
    /// What the relay said was queued for it then.
    pub queued: u32,
}

/// `end`'s way back after `since`, from `steps`; `None` when it did not
/// lose its connection or has not authenticated again.
#[must_use]
pub fn way_back(steps: &[(Instant, End, Step)], end: End, since: Instant) -> Option<WayBack> {
    let mut lost = None;
    let (mut failed, mut refused, mut waited) = (0u32, 0u32, Duration::ZERO);
    let mut last_attempt = None;
    for &(at, e, step) in steps {
        if e != end || at < since {
            continue;
        }
        match step {
            Step::Disconnected { retry_in, cause } => {
                if lost.is_none() {
                    lost = Some(at);
                } else {
                    failed += 1;
                    refused += u32::from(cause == Cause::Refused);
                }
                waited = waited.saturating_add(retry_in);
                last_attempt = at.checked_add(retry_in);
            }
            Step::Connected { queued } => {
                let lost = lost?;
                return Some(WayBack {
                    lost,
                    failed,
                    refused,
                    waited,
                    last_attempt: last_attempt.unwrap_or(lost).min(at),
                    connected: at,
                    queued,
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_way_back_adds_the_waits_and_counts_the_failures() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let down = |retry: u64, cause| Step::Disconnected { retry_in: ms(retry), cause };
        let steps = vec![
            (t0, End::Desktop, Step::Connected { queued: 0 }),
            (t0 + ms(100), End::Phone, down(50, Cause::Other)),
            (t0 + ms(100), End::Desktop, down(200, Cause::Other)),
            (t0 + ms(301), End::Desktop, down(400, Cause::Refused)),
            (t0 + ms(900), End::Desktop, down(100, Cause::Timeout)),
            (t0 + ms(1200), End::Desktop, Step::Connected { queued: 3 }),
        ];
        let w = way_back(&steps, End::Desktop, t0 + ms(50)).unwrap();
        assert_eq!((w.failed, w.refused, w.waited), (2, 1, ms(700)));
        assert_eq!(
            (w.lost, w.last_attempt, w.connected),
            (t0 + ms(100), t0 + ms(1000), t0 + ms(1200))
        );
        assert_eq!(w.queued, 3);
        // The phone never came back; before the moment nothing counts.
        assert_eq!(way_back(&steps, End::Phone, t0), None);
        assert_eq!(way_back(&steps, End::Desktop, t0 + ms(2000)), None);
        assert_eq!(Cause::of("127.0.0.1:1: Connection refused (os error 111)"), Cause::Refused);
        assert_eq!(Cause::of("timed out"), Cause::Timeout);
        assert_eq!(Cause::of("connection reset"), Cause::Other);
    }
}
