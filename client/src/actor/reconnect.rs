//! Between connections: what was in flight is requeued or failed, the
//! wait before the next attempt is chosen (our backoff, or the relay's hint)
//! and slept, taking requests meanwhile; after a fatal refusal, requests are
//! answered with it until the client stops.

use std::time::{Duration, SystemTime};

use rand::Rng;
use tandem_proto::ErrorCode;
use tokio::time::sleep;
use tracing::{info, warn};

use super::{Actor, after, woke};
use crate::client::Event;
use crate::error::{ClientError, is_fatal_code};

impl Actor {
    /// Requeue or fail what was in flight, decide when to retry, report it,
    /// and wait (taking requests meanwhile).
    pub(super) async fn after_disconnect(&mut self, ended: ClientError) {
        self.requeue_in_flight();
        let code = ended.code().or(self.last_error.take());
        let reason = ended.to_string();
        if let Some(code) = code.filter(|c| is_fatal_code(*c)) {
            warn!(%code, %reason, "the relay refused this device; not reconnecting");
            let error = ClientError::Refused(code, reason.clone());
            for pending in std::mem::take(&mut self.outbox) {
                pending.answer(Err(error.clone()));
            }
            self.fatal = Some(error);
            self.wake = None;
            self.emit(Event::Disconnected { reason, code: Some(code), retry_in: Duration::MAX })
                .await;
            return;
        }

        let woke = std::mem::take(&mut self.woke);
        // Waits the relay asked for last in real time, across a sleep too;
        // our own backoff is cut short by waking.
        let (retry_in, wait) = if let Some(hint) = self.restart_hint.take() {
            self.backoff.reset();
            let spread = (hint / 2).max(self.config.backoff_min).min(self.backoff.max());
            (hint.saturating_add(random_upto(spread)), Wait::Relay)
        } else if code == Some(ErrorCode::Replaced) {
            // Another instance holds this key: no tight loop (§6.3).
            (self.backoff.max(), Wait::Relay)
        } else if woke {
            // The connection died with the sleep: back at once, and a fresh
            // schedule should the relay be unreachable for a while.
            self.backoff.reset();
            (Duration::ZERO, Wait::Backoff)
        } else {
            // An overloaded relay, or one that limits this device, gets the
            // plain doubling schedule, not the fast phase.
            let fast = !matches!(code, Some(ErrorCode::Overloaded | ErrorCode::RateLimited));
            (self.backoff.next_busy(self.busy(), fast), Wait::Backoff)
        };
        info!(%reason, ?code, ?retry_in, "disconnected");
        self.emit(Event::Disconnected { reason, code, retry_in }).await;
        if !self.stopping {
            self.sleep_taking_requests(retry_in, wait).await;
        }
    }

    /// The connection is gone: what was written and unanswered goes back to
    /// the front of the outbox, in order, if it may be written again;
    /// the rest fails with [`ClientError::Interrupted`].
    pub(super) fn requeue_in_flight(&mut self) {
        let in_flight = std::mem::take(&mut self.in_flight);
        let mut resend = Vec::new();
        for (_, pending) in in_flight {
            if pending.idempotent() {
                resend.push(pending);
            } else {
                pending.answer(Err(ClientError::Interrupted));
            }
        }
        for pending in resend.into_iter().rev() {
            self.outbox.push_front(pending);
        }
    }

    /// Whether requests wait to be sent (the backoff's busy phase).
    fn busy(&self) -> bool {
        !self.outbox.is_empty() || self.shared.requests.is_waiting()
    }

    /// Wait `duration` before reconnecting, taking requests. The timer runs
    /// on the monotonic clock, which may stand still while the computer
    /// sleeps; so on waking a backoff wait ends at once (and the schedule
    /// starts again), and a wait the relay asked for ends when its time is
    /// up by the wall clock.
    async fn sleep_taking_requests(&mut self, duration: Duration, wait: Wait) {
        let wall_deadline = SystemTime::now().checked_add(duration);
        let timer = sleep(duration);
        tokio::pin!(timer);
        // Answers given on the disconnect may have made room.
        self.intake();
        while !self.stopping {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => self.stopping = true,
                () = &mut timer => return,
                () = self.shared.requests.notify.notified() => {
                    self.intake();
                    // A request made during a long wait of our own: within
                    // the busy fast phase, reconnect within its bound.
                    let now = tokio::time::Instant::now();
                    let cap = self.backoff.ceiling_at(now.into_std(), true);
                    if wait == Wait::Backoff && self.busy() && timer.deadline() > now + cap {
                        let sooner = random_upto(cap);
                        info!(?sooner, "a request is waiting; reconnecting sooner");
                        timer.as_mut().reset(now + sooner);
                    }
                }
                by = woke(&mut self.wake) => {
                    self.emit(Event::Woke { slept: by }).await;
                    let left = match wait {
                        Wait::Backoff => Duration::ZERO,
                        Wait::Relay => left_until(wall_deadline, SystemTime::now(), duration),
                    };
                    if left.is_zero() {
                        info!(slept = ?by, "woke up (the clock jumped); reconnecting at once");
                        self.backoff.reset();
                        return;
                    }
                    info!(slept = ?by, ?left, "woke up (the clock jumped); waiting as the relay asked");
                    timer.as_mut().reset(after(left));
                }
            }
        }
    }

    /// After a fatal refusal: answer every request with it until stopped.
    pub(super) async fn serve_stopped(&mut self) {
        self.intake();
        while !self.stopping {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => self.stopping = true,
                () = self.shared.requests.notify.notified() => self.intake(),
            }
        }
    }
}

/// Whose wait before reconnecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Our own backoff.
    Backoff,
    /// The relay's: a `Restarting` hint, or `replaced` (§6.3, §6.4).
    Relay,
}

/// What is left of a wait of `whole` until `deadline` (by the wall clock) at
/// `now`: nothing if it passed, never more than `whole` (a wall clock set
/// back does not lengthen it). `None` is a deadline too far to represent.
fn left_until(deadline: Option<SystemTime>, now: SystemTime, whole: Duration) -> Duration {
    deadline.map_or(whole, |d| d.duration_since(now).unwrap_or(Duration::ZERO).min(whole))
}

/// Uniform in `[0, max]`.
fn random_upto(max: Duration) -> Duration {
    let millis = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actor::jittered;

    #[test]
    fn a_relay_wait_counts_on_the_wall_clock() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let deadline = start.checked_add(Duration::from_secs(60));
        // Woke after 20 s by the wall clock: 40 s are left.
        let whole = Duration::from_secs(60);
        let now = start + Duration::from_secs(20);
        assert_eq!(left_until(deadline, now, whole), Duration::from_secs(40));
        // Slept through it: nothing is left.
        let later = start + Duration::from_secs(3600);
        assert_eq!(left_until(deadline, later, whole), Duration::ZERO);
        assert_eq!(left_until(deadline, start + whole, whole), Duration::ZERO);
        // A wall clock set back does not make it longer.
        let earlier = start - Duration::from_secs(5);
        assert_eq!(left_until(deadline, earlier, whole), whole);
        assert_eq!(left_until(None, now, Duration::MAX), Duration::MAX);
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            assert!(random_upto(Duration::from_millis(10)) <= Duration::from_millis(10));
            let j = jittered(Duration::from_secs(20));
            assert!(j >= Duration::from_secs(16) && j <= Duration::from_secs(24));
        }
    }
}
