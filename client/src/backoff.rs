//! The reconnect schedule: exponential backoff with full jitter.
//!
//! Attempt `n` (from 0) waits a uniformly random time in
//! `[0, min(max, min · 2^n)]` ("full jitter": clients that lost the same
//! relay at the same moment spread out instead of returning in waves). A
//! connection that stayed up at least `reset_after` starts the schedule
//! again, as does waking from sleep or the relay's `Restarting` hint.
//!
//! The fast phase: for the first `fast_for` of an outage (from the first
//! failed attempt after the schedule started), or `fast_for_busy` while
//! requests wait to be sent, the bound is at most `fast_max` (750 ms by
//! default): a network that comes back is used within `fast_max`, not after
//! a bound that doubled to seconds while every attempt failed at once (a
//! reset, a refused connection). Past it the doubling bound applies (it kept
//! counting), so a relay down for long sees each device at most about every
//! `max`.

use std::time::{Duration, Instant};

use rand::Rng;

/// Failed attempts so far and the bounds; see the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    reset_after: Duration,
    attempt: u32,
    /// The fast phase's bound and lengths (idle, busy).
    fast_max: Duration,
    fast_for: Duration,
    fast_for_busy: Duration,
    /// When the first attempt of this schedule was drawn.
    failing_since: Option<Instant>,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration, reset_after: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            reset_after,
            attempt: 0,
            fast_max: max.max(min),
            fast_for: Duration::ZERO,
            fast_for_busy: Duration::ZERO,
            failing_since: None,
        }
    }

    /// With a fast phase (module documentation): bound `fast_max` for the
    /// first `fast_for` of an outage, `fast_for_busy` while requests wait.
    pub(crate) fn with_fast(
        mut self,
        fast_max: Duration,
        fast_for: Duration,
        fast_for_busy: Duration,
    ) -> Self {
        self.fast_max = fast_max;
        self.fast_for = fast_for;
        self.fast_for_busy = fast_for_busy;
        self
    }

    /// The bound of the next wait at `now`, `busy` when requests wait.
    pub(crate) fn ceiling_at(&self, now: Instant, busy: bool) -> Duration {
        let ceiling = self.ceiling();
        let since = self.failing_since.unwrap_or(now);
        let window = if busy { self.fast_for_busy.max(self.fast_for) } else { self.fast_for };
        if now.saturating_duration_since(since) < window {
            ceiling.min(self.fast_max)
        } else {
            ceiling
        }
    }

    /// The next wait at `now` (`busy` when requests wait), drawn with
    /// `rng`; counts one more attempt.
    pub(crate) fn next_at(&mut self, now: Instant, busy: bool, rng: &mut impl Rng) -> Duration {
        self.failing_since.get_or_insert(now);
        let ceiling = self.ceiling_at(now, busy);
        self.attempt = self.attempt.saturating_add(1);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.random_range(0..=millis))
    }

    /// The next wait now, `busy` when requests wait; counts one more attempt.
    /// `fast` false skips the fast phase for this wait (the relay said it
    /// is overloaded or limits this device).
    pub(crate) fn next_busy(&mut self, busy: bool, fast: bool) -> Duration {
        if fast {
            return self.next_at(Instant::now(), busy, &mut rand::rng());
        }
        let now = Instant::now();
        self.failing_since.get_or_insert(now);
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }

    /// The upper bound of the next wait: `min · 2^attempt`, capped at `max`.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min.checked_mul(factor).unwrap_or(self.max).min(self.max)
    }

    /// The next wait, drawn with `rng`, without a fast phase; counts one
    /// more attempt.
    #[cfg(test)]
    pub(crate) fn next_with(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.random_range(0..=millis))
    }

    /// The next wait, without a fast phase; counts one more attempt.
    #[cfg(test)]
    pub(crate) fn next(&mut self) -> Duration {
        self.next_with(&mut rand::rng())
    }

    /// Start again from the smallest ceiling (and a new fast phase).
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
        self.failing_since = None;
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
    fn the_fast_phase_caps_the_bound_for_a_while_longer_when_busy() {
        let mut b = default().with_fast(ms(750), Duration::from_secs(10), Duration::from_secs(30));
        let mut rng = StdRng::seed_from_u64(3);
        let t0 = Instant::now();
        for i in 0..20 {
            let now = t0 + Duration::from_millis(400 * i);
            let wait = b.next_at(now, false, &mut rng);
            assert!(wait <= ms(750), "attempt {i}: {wait:?}");
        }
        // 10 s into the outage: the doubled bound (30 s) for an idle device,
        // still 750 ms for one with requests waiting, until 30 s.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.ceiling_at(later, false), Duration::from_secs(30));
        assert_eq!(b.ceiling_at(later, true), ms(750));
        assert_eq!(b.ceiling_at(t0 + Duration::from_secs(30), true), Duration::from_secs(30));
        // A new schedule, a new fast phase.
        b.reset();
        assert_eq!(b.ceiling_at(later, false), ms(250));
        b.next_at(later, false, &mut rng);
        assert_eq!(b.ceiling_at(later + Duration::from_secs(9), false), ms(500));
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
