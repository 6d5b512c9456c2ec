//! The reconnect schedule: exponential backoff with full jitter.
//!
//! Attempt `n` (from 0) waits a uniformly random time in
//! `[0, min(max, min · 2^n)]` ("full jitter": clients that lost the same
//! relay at the same moment spread out instead of returning in waves). A
//! connection that stayed up at least `reset_after` starts the schedule
//! again, as does waking from sleep or the relay's `Restarting` hint.

use std::time::Duration;

use rand::Rng;

/// Failed attempts so far and the bounds; see the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    reset_after: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration, reset_after: Duration) -> Self {
        Self { min, max: max.max(min), reset_after, attempt: 0 }
    }

    /// The upper bound of the next wait: `min · 2^attempt`, capped at `max`.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min.checked_mul(factor).unwrap_or(self.max).min(self.max)
    }

    /// The next wait, drawn with `rng`; counts one more attempt.
    pub(crate) fn next_with(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.random_range(0..=millis))
    }

    /// The next wait; counts one more attempt.
    pub(crate) fn next(&mut self) -> Duration {
        self.next_with(&mut rand::rng())
    }

    /// Start again from the smallest ceiling.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    /// A connection ended after being up for `up_for`: a stable one resets
    /// the schedule.
    pub(crate) fn connection_ended(&mut self, up_for: Duration) {
        if up_for >= self.reset_after {
            self.reset();
        }
    }

    /// The largest wait.
    pub(crate) fn max(&self) -> Duration {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn ms(m: u64) -> Duration {
        Duration::from_millis(m)
    }

    fn default() -> Backoff {
        Backoff::new(ms(250), Duration::from_secs(30), Duration::from_secs(10))
    }

    #[test]
    fn ceilings_double_from_250_ms_to_30_s() {
        let mut b = default();
        let mut rng = StdRng::seed_from_u64(7);
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(b.ceiling().as_millis());
            b.next_with(&mut rng);
        }
        assert_eq!(ceilings, [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        // It never overflows, however many attempts fail.
        for _ in 0..100 {
            b.next_with(&mut rng);
        }
        assert_eq!(b.ceiling(), Duration::from_secs(30));
        b.attempt = u32::MAX;
        assert_eq!(b.ceiling(), Duration::from_secs(30));
        assert!(b.next_with(&mut rng) <= Duration::from_secs(30));
    }

    #[test]
    fn waits_are_spread_over_the_whole_range() {
        let mut rng = StdRng::seed_from_u64(1);
        // Full jitter: from 0 up to the ceiling, not ceiling ± a little.
        for attempt in 0..10 {
            let mut low = false;
            let mut high = false;
            for _ in 0..200 {
                let mut b = default();
                b.attempt = attempt;
                let ceiling = b.ceiling();
                let wait = b.next_with(&mut rng);
                assert!(wait <= ceiling, "{wait:?} > {ceiling:?}");
                low |= wait < ceiling / 4;
                high |= wait > ceiling * 3 / 4;
            }
            assert!(low && high, "attempt {attempt}: waits cover [0, ceiling]");
        }
    }

    #[test]
    fn a_stable_connection_resets_the_schedule_a_short_one_does_not() {
        let mut b = default();
        for _ in 0..5 {
            b.next();
        }
        assert_eq!(b.ceiling(), ms(8000));
        // Up for 3 s, then dropped: keep backing off.
        b.connection_ended(Duration::from_secs(3));
        assert_eq!(b.ceiling(), ms(8000));
        // Up for 10 s: stable, start again.
        b.connection_ended(Duration::from_secs(10));
        assert_eq!(b.ceiling(), ms(250));
        b.next();
        assert_eq!(b.ceiling(), ms(500));
        b.reset();
        assert_eq!(b.ceiling(), ms(250));
    }

    #[test]
    fn odd_bounds_are_tolerated() {
        // max below min: min wins; zero: no wait at all.
        let b = Backoff::new(ms(500), ms(100), Duration::ZERO);
        assert_eq!(b.ceiling(), ms(500));
        assert_eq!(b.max(), ms(500));
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO, Duration::ZERO);
        assert_eq!(b.next(), Duration::ZERO);
    }
}
