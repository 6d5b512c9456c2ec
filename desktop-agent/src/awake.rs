//! Keep the computer awake while tasks run, so that it does not fall asleep
//! in the middle of one.
//!
//! [`KeepAwake`] is a small state machine driven by [`KeepAwake::set_busy`]:
//! the task manager says "busy" when its queue stops being empty and "idle"
//! when it empties. Going busy acquires a hold from an [`Inhibitor`]; going
//! idle (or dropping the [`KeepAwake`]) releases it.
//!
//! The system inhibitor is the `keepawake` crate (cargo feature
//! `keep-awake`, on by default), asked to prevent *idle* sleep only: the
//! display may still turn off, and a sleep the user asks for (closing the
//! lid, the menu) still happens. Under it: systemd-logind's inhibitor locks
//! over the system D-Bus on Linux, an IOKit power assertion on macOS,
//! `SetThreadExecutionState` on Windows. Because the Windows state belongs
//! to a thread, each hold lives on a small thread of its own, which also
//! makes a hold safe to move between the async runtime's threads.
//!
//! Failing to keep the computer awake never fails a task: where no
//! inhibitor works (a headless Linux machine without a system D-Bus, a
//! session logind refuses), the failure is logged once at `warn`, the state
//! says [`AwakeState::Unavailable`] (for `tandem status`), and the next
//! acquisition tries again.
//!
//! Acquiring waits for the system's answer (a D-Bus round trip on Linux, at
//! most [`ACQUIRE_TIMEOUT`]); callers on an async runtime that cannot afford
//! that may call [`KeepAwake::set_busy`] from `spawn_blocking`.

use std::time::Duration;

use serde::Serialize;
use thiserror::Error;

/// How long an acquisition waits for the system to answer.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the computer could not be kept awake.
#[derive(Debug, Error)]
pub enum AwakeError {
    /// The system refused or has no way to do it.
    #[error("the system cannot keep this computer awake: {0}")]
    Unavailable(String),
    /// The system did not answer within [`ACQUIRE_TIMEOUT`].
    #[error("the system did not answer within {} s", ACQUIRE_TIMEOUT.as_secs())]
    Timeout,
    /// This build or this platform has no keep-awake support.
    #[error("keeping the computer awake is not supported by this build of tandem on this system")]
    Unsupported,
    /// The thread that holds the system's lock could not be started.
    #[error("could not start the keep-awake thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// What [`KeepAwake`] is doing, for `tandem status`. Serialised as
/// `{"state":"released"}`, `{"state":"held"}` or
/// `{"state":"unavailable","reason":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum AwakeState {
    /// No task runs; the computer may sleep.
    Released,
    /// Tasks run and the computer is kept awake.
    Held,
    /// Tasks run but the acquisition failed (why); it is tried again when
    /// tasks next start after the queue was empty.
    Unavailable(String),
}

/// Something that keeps the computer awake while its [`Hold`] lives.
pub trait Inhibitor: Send {
    /// Keep the computer awake until the returned hold is dropped.
    ///
    /// # Errors
    /// [`AwakeError`] when the system cannot or will not.
    fn acquire(&mut self) -> Result<Hold, AwakeError>;
}

/// Keeps the computer awake until dropped.
pub struct Hold(#[allow(dead_code)] Box<dyn Send>);

impl Hold {
    /// A hold that releases when `guard` is dropped.
    pub fn new(guard: impl Send + 'static) -> Self {
        Self(Box::new(guard))
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hold")
    }
}

/// Keeps the computer awake while the agent is busy. See the module docs.
pub struct KeepAwake {
    inhibitor: Box<dyn Inhibitor>,
    busy: bool,
    hold: Option<Hold>,
    /// Why the last acquisition failed, until one succeeds.
    failure: Option<String>,
}

impl std::fmt::Debug for KeepAwake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeepAwake").field("busy", &self.busy).field("state", &self.state()).finish()
    }
}

impl Default for KeepAwake {
    fn default() -> Self {
        Self::new()
    }
}

impl KeepAwake {
    /// With the system's inhibitor (the `keepawake` crate), or, in a build
    /// without the `keep-awake` feature or on another platform, one that
    /// always reports [`AwakeError::Unsupported`]. Acquires nothing yet.
    #[must_use]
    pub fn new() -> Self {
        Self::with_inhibitor(Box::new(SystemInhibitor))
    }

    /// With the given inhibitor (tests, embedders). Acquires nothing yet.
    #[must_use]
    pub fn with_inhibitor(inhibitor: Box<dyn Inhibitor>) -> Self {
        Self { inhibitor, busy: false, hold: None, failure: None }
    }

    /// Whether tasks are running: acquire on idle → busy, release on
    /// busy → idle; the same value twice does nothing. An acquisition that
    /// fails is logged (at `warn` the first time in a row, then at `debug`)
    /// and shows in [`Self::state`]; it never fails the caller.
    pub fn set_busy(&mut self, busy: bool) {
        if busy == self.busy {
            return;
        }
        self.busy = busy;
        if !busy {
            if self.hold.take().is_some() {
                tracing::debug!("released the keep-awake hold: no task runs");
            }
            return;
        }
        match self.inhibitor.acquire() {
            Ok(hold) => {
                tracing::debug!("keeping the computer awake while tasks run");
                self.hold = Some(hold);
                self.failure = None;
            }
            Err(e) => {
                let reason = e.to_string();
                if self.failure.is_none() {
                    tracing::warn!(
                        error = %reason,
                        "cannot keep the computer awake while tasks run; they run anyway"
                    );
                } else {
                    tracing::debug!(error = %reason, "still cannot keep the computer awake");
                }
                self.failure = Some(reason);
            }
        }
    }

    /// Whether tasks are running, as last told.
    #[must_use]
    pub fn is_busy(&self) -> bool {
        self.busy
    }

    /// What it is doing now.
    #[must_use]
    pub fn state(&self) -> AwakeState {
        match (&self.hold, &self.failure) {
            (Some(_), _) => AwakeState::Held,
            (None, Some(reason)) if self.busy => AwakeState::Unavailable(reason.clone()),
            (None, _) => AwakeState::Released,
        }
    }
}

/// The system's inhibitor: the `keepawake` crate, each hold on a thread of
/// its own.
struct SystemInhibitor;

#[cfg(all(feature = "keep-awake", any(target_os = "linux", target_os = "macos", windows)))]
impl Inhibitor for SystemInhibitor {
    fn acquire(&mut self) -> Result<Hold, AwakeError> {
        use std::sync::mpsc;

        let (result_tx, result_rx) = mpsc::channel::<Result<(), String>>();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tandem-keep-awake".into())
            .spawn(move || {
                let guard = keepawake::Builder::default()
                    .idle(true)
                    .reason("A task sent from a paired phone is running")
                    .app_name("Tandem")
                    .app_reverse_domain("dev.tandem.agent")
                    .create();
                match guard {
                    Ok(guard) => {
                        let _ = result_tx.send(Ok(()));
                        // Until the hold is dropped (its sender with it),
                        // or the acquirer gave up waiting.
                        let _ = release_rx.recv();
                        drop(guard);
                    }
                    Err(e) => {
                        let _ = result_tx.send(Err(e.to_string()));
                    }
                }
            })
            .map_err(AwakeError::Thread)?;
        match result_rx.recv_timeout(ACQUIRE_TIMEOUT) {
            Ok(Ok(())) => {
                Ok(Hold::new(ThreadHold { release: Some(release_tx), thread: Some(thread) }))
            }
            Ok(Err(reason)) => Err(AwakeError::Unavailable(reason)),
            // Dropping `release_tx` here releases a hold acquired late.
            Err(mpsc::RecvTimeoutError::Timeout) => Err(AwakeError::Timeout),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(AwakeError::Unavailable("the keep-awake thread stopped".into()))
            }
        }
    }
}

#[cfg(not(all(feature = "keep-awake", any(target_os = "linux", target_os = "macos", windows))))]
impl Inhibitor for SystemInhibitor {
    fn acquire(&mut self) -> Result<Hold, AwakeError> {
        Err(AwakeError::Unsupported)
    }
}

/// The thread holding a `keepawake` guard; dropping this releases it and
/// waits for the thread, so the release has happened when drop returns.
#[cfg(all(feature = "keep-awake", any(target_os = "linux", target_os = "macos", windows)))]
struct ThreadHold {
    release: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[cfg(all(feature = "keep-awake", any(target_os = "linux", target_os = "macos", windows)))]
impl Drop for ThreadHold {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A test double: counts acquisitions and releases, and fails the next
/// acquisitions on request. Clones share their counters.
#[derive(Debug, Clone, Default)]
pub struct CountingInhibitor {
    counts: std::sync::Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    acquired: std::sync::atomic::AtomicUsize,
    released: std::sync::atomic::AtomicUsize,
    fail_next: std::sync::atomic::AtomicUsize,
}

impl CountingInhibitor {
    /// A double that succeeds until told otherwise.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Successful acquisitions so far.
    #[must_use]
    pub fn acquired(&self) -> usize {
        self.counts.acquired.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Holds released so far.
    #[must_use]
    pub fn released(&self) -> usize {
        self.counts.released.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Holds acquired and not released.
    #[must_use]
    pub fn held(&self) -> usize {
        self.acquired() - self.released()
    }

    /// Make the next `n` acquisitions fail.
    pub fn fail_next(&self, n: usize) {
        self.counts.fail_next.store(n, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Inhibitor for CountingInhibitor {
    fn acquire(&mut self) -> Result<Hold, AwakeError> {
        use std::sync::atomic::Ordering::SeqCst;
        let failing = self.counts.fail_next.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(AwakeError::Unavailable("no D-Bus (test double)".into()));
        }
        self.counts.acquired.fetch_add(1, SeqCst);
        Ok(Hold::new(CountingHold(self.counts.clone())))
    }
}

struct CountingHold(std::sync::Arc<Counts>);

impl Drop for CountingHold {
    fn drop(&mut self) {
        self.0.released.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counting() -> (KeepAwake, CountingInhibitor) {
        let double = CountingInhibitor::new();
        (KeepAwake::with_inhibitor(Box::new(double.clone())), double)
    }

    #[test]
    fn awake_busy_idle_busy_acquires_and_releases_each_time() {
        let (mut awake, double) = counting();
        assert_eq!(awake.state(), AwakeState::Released);
        assert_eq!(double.acquired(), 0, "nothing acquired before work");
        awake.set_busy(true);
        assert_eq!(awake.state(), AwakeState::Held);
        assert_eq!((double.acquired(), double.released()), (1, 0));
        awake.set_busy(false);
        assert_eq!(awake.state(), AwakeState::Released);
        assert_eq!((double.acquired(), double.released()), (1, 1));
        awake.set_busy(true);
        assert_eq!(awake.state(), AwakeState::Held);
        assert_eq!((double.acquired(), double.released()), (2, 1));
    }

    #[test]
    fn awake_set_busy_is_idempotent() {
        let (mut awake, double) = counting();
        awake.set_busy(false);
        assert_eq!(double.acquired(), 0);
        awake.set_busy(true);
        awake.set_busy(true);
        assert_eq!(double.acquired(), 1);
        awake.set_busy(false);
        awake.set_busy(false);
        assert_eq!(double.released(), 1);
        assert!(!awake.is_busy());
    }

    #[test]
    fn awake_failure_is_reported_then_retried_on_the_next_acquisition() {
        let (mut awake, double) = counting();
        double.fail_next(1);
        awake.set_busy(true);
        match awake.state() {
            AwakeState::Unavailable(reason) => assert!(reason.contains("no D-Bus"), "{reason}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(awake.is_busy(), "the work goes on");
        // Still busy: no retry on every call.
        awake.set_busy(true);
        assert_eq!(double.acquired(), 0);
        // Idle: nothing held and nothing needed.
        awake.set_busy(false);
        assert_eq!(awake.state(), AwakeState::Released);
        assert_eq!(double.released(), 0);
        // Next work: tried again, and it works now.
        awake.set_busy(true);
        assert_eq!(awake.state(), AwakeState::Held);
        assert_eq!(double.held(), 1);
        awake.set_busy(false);
        assert_eq!(awake.state(), AwakeState::Released);
        assert_eq!(double.held(), 0);
    }

    #[test]
    fn awake_drop_releases() {
        let (mut awake, double) = counting();
        awake.set_busy(true);
        assert_eq!(double.held(), 1);
        drop(awake);
        assert_eq!((double.acquired(), double.released()), (1, 1));
    }

    #[test]
    fn awake_state_serialises_for_status() {
        let json = |s: AwakeState| serde_json::to_string(&s).unwrap();
        assert_eq!(json(AwakeState::Released), r#"{"state":"released"}"#);
        assert_eq!(json(AwakeState::Held), r#"{"state":"held"}"#);
        assert_eq!(
            json(AwakeState::Unavailable("no D-Bus".into())),
            r#"{"state":"unavailable","reason":"no D-Bus"}"#
        );
    }

    /// The real inhibitor on whatever machine runs the tests: held where it
    /// works, unavailable where it does not (a headless CI machine), and
    /// never a panic or a hang.
    #[test]
    fn awake_system_inhibitor_never_fails_the_caller() {
        let mut awake = KeepAwake::new();
        let started = std::time::Instant::now();
        awake.set_busy(true);
        assert!(started.elapsed() < ACQUIRE_TIMEOUT + Duration::from_secs(1));
        assert_ne!(awake.state(), AwakeState::Released);
        awake.set_busy(false);
        awake.set_busy(true);
        drop(awake);
    }
}
