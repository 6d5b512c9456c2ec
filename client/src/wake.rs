//! Noticing that the computer slept or the process was stopped.
//!
//! A laptop that sleeps keeps its TCP connections in the kernel, but the
//! relay, the NAT boxes and the Wi-Fi on the way forget them; after waking,
//! a connection can look open and be dead. The client's regular pings would
//! find out after up to a ping interval plus the pong timeout (half a
//! minute), and a reconnect wait that started before the sleep would carry
//! on where it stopped: on Linux and macOS the monotonic clock that timers
//! use does not advance during suspend. So the client watches the clocks.
//!
//! [`WakeDetector`] is the logic, without I/O: fed `(monotonic, wall-clock)`
//! samples taken every `period`, it reports a jump when
//!
//! * the wall clock advanced more than the monotonic clock (the machine was
//!   suspended: `CLOCK_MONOTONIC` stops, wall-clock time does not), or
//! * a sample came far later than scheduled on the monotonic clock (the
//!   process was stopped, e.g. `SIGSTOP`, or starved; or a platform whose
//!   monotonic clock counts suspended time),
//!
//! by at least `threshold`. A wall clock stepped forward by hand or by NTP
//! looks the same and costs one extra ping; a wall clock stepped back is
//! ignored.
//!
//! [`spawn_watch`] runs a detector in its own small task (so that a busy
//! actor, for example one waiting for the application to take an event, is
//! not mistaken for a sleeping computer) and reports each jump on a channel.

use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep};
use tracing::Instrument;

/// The most often the clocks are compared.
const MAX_PERIOD: Duration = Duration::from_secs(2);
/// The least often the clocks are compared.
const MIN_PERIOD: Duration = Duration::from_millis(50);

/// What one sample says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Clock {
    /// Time went on as scheduled.
    Normal,
    /// The computer slept or the process stood still for about `by`.
    Jumped {
        /// How long, about.
        by: Duration,
    },
}

/// Compares successive `(monotonic, wall-clock)` samples; see the module
/// documentation.
#[derive(Debug, Clone)]
pub(crate) struct WakeDetector {
    period: Duration,
    threshold: Duration,
    last: Option<(Instant, SystemTime)>,
}

impl WakeDetector {
    /// A detector for samples taken every `period`, reporting jumps of at
    /// least `threshold`.
    pub(crate) fn new(period: Duration, threshold: Duration) -> Self {
        Self { period, threshold, last: None }
    }

    /// How often to sample for a `threshold`: a fifth of it, between 50 ms
    /// and 2 s (a jump is noticed within about this long after waking).
    pub(crate) fn period_for(threshold: Duration) -> Duration {
        (threshold / 5).clamp(MIN_PERIOD, MAX_PERIOD)
    }

    /// Take a sample. The first one only sets the baseline.
    pub(crate) fn observe(&mut self, mono: Instant, wall: SystemTime) -> Clock {
        let Some((mono0, wall0)) = self.last.replace((mono, wall)) else {
            return Clock::Normal;
        };
        let mono_elapsed = mono.saturating_duration_since(mono0);
        // Later than scheduled on the monotonic clock: stopped or starved.
        let late = mono_elapsed.saturating_sub(self.period);
        // More wall-clock time than monotonic time: suspended. (A wall clock
        // set back is not a sleep.)
        let suspended =
            wall.duration_since(wall0).map_or(Duration::ZERO, |w| w.saturating_sub(mono_elapsed));
        let by = late.max(suspended);
        if by >= self.threshold { Clock::Jumped { by } } else { Clock::Normal }
    }
}

/// Compare the clocks every [`WakeDetector::period_for`]`(threshold)` in a
/// task of its own and send each jump on the returned channel (at most one
/// waits; later ones are dropped while it does). The task ends when the
/// receiver is dropped.
pub(crate) fn spawn_watch(threshold: Duration) -> mpsc::Receiver<Duration> {
    let period = WakeDetector::period_for(threshold);
    let (tx, rx) = mpsc::channel(1);
    let watch = async move {
        let mut detector = WakeDetector::new(period, threshold);
        detector.observe(Instant::now(), SystemTime::now());
        loop {
            tokio::select! {
                () = tx.closed() => return,
                () = sleep(period) => {}
            }
            if let Clock::Jumped { by } = detector.observe(Instant::now(), SystemTime::now()) {
                let _ = tx.try_send(by);
            }
        }
    };
    tokio::spawn(watch.in_current_span());
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_secs(2);
    const THRESHOLD: Duration = Duration::from_secs(10);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// A detector and a clock pair to move by hand.
    struct Clocks {
        detector: WakeDetector,
        mono: Instant,
        wall: SystemTime,
    }

    impl Clocks {
        fn new() -> Self {
            let mut c = Clocks {
                detector: WakeDetector::new(PERIOD, THRESHOLD),
                mono: Instant::now(),
                wall: SystemTime::UNIX_EPOCH + secs(1_700_000_000),
            };
            assert_eq!(c.sample(), Clock::Normal, "the first sample is the baseline");
            c
        }

        fn sample(&mut self) -> Clock {
            self.detector.observe(self.mono, self.wall)
        }

        /// Both clocks advance by `mono`; the wall clock by `extra` more.
        fn advance(&mut self, mono: Duration, extra: Duration) -> Clock {
            self.mono += mono;
            self.wall += mono + extra;
            self.sample()
        }
    }

    #[test]
    fn ticks_on_time_are_normal() {
        let mut c = Clocks::new();
        for _ in 0..100 {
            assert_eq!(c.advance(PERIOD, Duration::ZERO), Clock::Normal);
        }
        // Some scheduling delay and clock drift are normal too.
        assert_eq!(c.advance(PERIOD + secs(3), Duration::ZERO), Clock::Normal);
        assert_eq!(c.advance(PERIOD, secs(2)), Clock::Normal);
        assert_eq!(c.advance(PERIOD + Duration::from_millis(9_999), Duration::ZERO), Clock::Normal);
    }

    #[test]
    fn a_suspend_shows_as_wall_time_the_monotonic_clock_missed() {
        let mut c = Clocks::new();
        // Linux: CLOCK_MONOTONIC stood still for an hour; the tick came on
        // time by it.
        assert_eq!(c.advance(PERIOD, secs(3600)), Clock::Jumped { by: secs(3600) });
        // Back to normal at the next tick: the baseline moved.
        assert_eq!(c.advance(PERIOD, Duration::ZERO), Clock::Normal);
        // Exactly the threshold counts.
        assert_eq!(c.advance(PERIOD, THRESHOLD), Clock::Jumped { by: THRESHOLD });
    }

    #[test]
    fn a_late_tick_shows_a_stopped_process() {
        let mut c = Clocks::new();
        // SIGSTOP for 30 s: both clocks ran, the tick came 30 s late.
        assert_eq!(c.advance(PERIOD + secs(30), Duration::ZERO), Clock::Jumped { by: secs(30) });
        assert_eq!(c.advance(PERIOD, Duration::ZERO), Clock::Normal);
        // A platform whose monotonic clock counts suspended time looks the same.
        assert_eq!(c.advance(secs(600), Duration::ZERO), Clock::Jumped { by: secs(598) });
    }

    #[test]
    fn the_larger_of_both_signs_is_reported() {
        let mut c = Clocks::new();
        // Stopped 20 s (late tick), and the wall clock shows 40 s more.
        assert_eq!(c.advance(PERIOD + secs(20), secs(40)), Clock::Jumped { by: secs(40) });
        let mut c = Clocks::new();
        assert_eq!(c.advance(PERIOD + secs(40), secs(20)), Clock::Jumped { by: secs(40) });
    }

    #[test]
    fn a_wall_clock_set_back_is_not_a_sleep() {
        let mut c = Clocks::new();
        c.mono += PERIOD;
        c.wall -= secs(3600);
        assert_eq!(c.sample(), Clock::Normal);
        assert_eq!(c.advance(PERIOD, Duration::ZERO), Clock::Normal);
    }

    #[test]
    fn the_period_follows_the_threshold() {
        assert_eq!(WakeDetector::period_for(secs(10)), secs(2));
        assert_eq!(WakeDetector::period_for(secs(60)), secs(2));
        assert_eq!(WakeDetector::period_for(secs(1)), Duration::from_millis(200));
        assert_eq!(WakeDetector::period_for(Duration::ZERO), Duration::from_millis(50));
    }
}
