//! TCP connection attempts raced against a lossy network.
//!
//! A SYN that is lost (a network that drops everything, a partition towards
//! the relay) is sent again by the kernel only after 1 s, then 3 s, 7 s, …
//! from the first: a network that comes back 4 s into an attempt is used
//! only at the 7 s retransmission. So an attempt that has not connected
//! within [`STAGGER`] gets a fresh one beside it (a new socket, whose SYN
//! goes out at once), and so on every [`STAGGER`], at most [`LIVE`] at once
//! (the oldest is dropped for a new one): a SYN leaves at least every
//! [`STAGGER`] for as long as the attempt lasts, and the first attempt to
//! connect wins (the others are dropped, unconnected or closed at once). On a
//! network that answers, the first attempt connects or fails long before
//! [`STAGGER`] and nothing else is started; a SYN that never arrives costs
//! the relay nothing.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, Sleep, sleep_until};

/// How long an attempt goes unanswered before another starts beside it.
pub(crate) const STAGGER: Duration = Duration::from_millis(600);

/// Most attempts in progress at once.
pub(crate) const LIVE: usize = 3;

/// Run attempts made by `start` as the module documentation says: the first
/// that succeeds, or the error of the last one when every attempt started
/// has failed (an attempt that fails at once, refused, is not retried here:
/// that is the reconnect schedule's job).
pub(crate) async fn race<T, Fut>(
    mut start: impl FnMut() -> Fut,
    stagger: Duration,
    live: usize,
) -> std::io::Result<T>
where
    Fut: Future<Output = std::io::Result<T>>,
{
    let mut attempts: VecDeque<Pin<Box<Fut>>> = VecDeque::from([Box::pin(start())]);
    let mut tick: Pin<Box<Sleep>> = Box::pin(sleep_until(Instant::now() + stagger));
    loop {
        let next = std::future::poll_fn(|cx| {
            for i in 0..attempts.len() {
                if let Some(a) = attempts.get_mut(i)
                    && let Poll::Ready(result) = a.as_mut().poll(cx)
                {
                    attempts.remove(i);
                    return Poll::Ready(Some(result));
                }
            }
            tick.as_mut().poll(cx).map(|()| None)
        })
        .await;
        match next {
            Some(Ok(done)) => return Ok(done),
            Some(Err(e)) if attempts.is_empty() => return Err(e),
            Some(Err(_)) => {}
            None => {
                if attempts.len() >= live.max(1) {
                    attempts.pop_front();
                }
                attempts.push_back(Box::pin(start()));
                let at = tick.deadline() + stagger;
                tick.as_mut().reset(at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn ms(m: u64) -> Duration {
        Duration::from_millis(m)
    }

    #[tokio::test]
    async fn a_stuck_attempt_gets_company_and_the_first_to_connect_wins() {
        let started = Arc::new(AtomicU32::new(0));
        let s = Arc::clone(&started);
        let t0 = Instant::now();
        // Attempts never finish, except the fourth, which connects after 10 ms:
        // started at 0, 60, 120 and 180 ms (the first dropped for it).
        let got = race(
            move || {
                let n = s.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 3 {
                        tokio::time::sleep(ms(10)).await;
                        Ok(n)
                    } else {
                        std::future::pending().await
                    }
                }
            },
            ms(60),
            3,
        )
        .await
        .unwrap();
        assert_eq!(got, 3);
        assert_eq!(started.load(Ordering::SeqCst), 4);
        let took = Instant::now() - t0;
        assert!(took >= ms(190) && took < ms(1000), "{took:?}");
    }

    #[tokio::test]
    async fn a_refused_attempt_is_not_retried_here() {
        let started = Arc::new(AtomicU32::new(0));
        let s = Arc::clone(&started);
        let got: std::io::Result<()> = race(
            move || {
                s.fetch_add(1, Ordering::SeqCst);
                async { Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)) }
            },
            ms(60),
            3,
        )
        .await;
        assert_eq!(got.unwrap_err().kind(), std::io::ErrorKind::ConnectionRefused);
        assert_eq!(started.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_fast_attempt_starts_nothing_else() {
        let started = Arc::new(AtomicU32::new(0));
        let s = Arc::clone(&started);
        let got = race(
            move || {
                s.fetch_add(1, Ordering::SeqCst);
                async {
                    tokio::time::sleep(ms(5)).await;
                    Ok(7)
                }
            },
            ms(200),
            3,
        )
        .await
        .unwrap();
        assert_eq!(got, 7);
        assert_eq!(started.load(Ordering::SeqCst), 1);
    }
}
