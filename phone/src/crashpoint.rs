//! Named points at every persistence boundary of the phone engine, for
//! tests that kill the phone at one exact step (PROTOCOL §13.5).
//!
//! They are failpoints of the `fail` crate, compiled in only with this
//! crate's `failpoints` feature (`scripts/test.sh` enables it; without it
//! they compile to nothing). A process that wants them armed calls
//! `fail::FailScenario::setup()` at start, which reads `FAILPOINTS`
//! (`FAILPOINTS="phone.send_saved=return"`). A crash point armed with
//! `return` aborts the process (`std::process::abort`: no destructors, like
//! `kill -9`). The points, in the order a request and its answers pass them:
//!
//! * `phone.send_saved`: a request (task, follow-up, cancel, decision,
//!   history) is sealed and the desktop's file holding it in the outbox is
//!   on disk; not yet handed to the relay;
//! * `phone.send_stored`: a request a caller of this process waits for
//!   was taken: the relay answered `Ok` (it holds it, or the desktop
//!   acknowledged it to the relay), or the desktop's acknowledgement came
//!   first; the caller is not told yet (a record only sent again, with no
//!   caller, never stops here);
//! * `phone.resend_saved`: records of the outbox sealed again (after a
//!   reconnect, a presence, a refusal) and the file with their counters on
//!   disk; not yet handed to the relay;
//! * `phone.deliver_received`: a record from the desktop opened, nothing
//!   saved;
//! * `phone.deliver_saved`: the desktop's file with the link and the task
//!   offsets that record changed is on disk; the app not yet told (events),
//!   the relay not yet told (`Ack`);
//! * `phone.deliver_emitted`: the app was told, the relay not yet.
//!
//! One more failpoint injects an error instead of a crash:
//! `phone.save` (with `FAILPOINTS="phone.save=1*return"`) makes the next
//! write of a desktop's file fail, as a full disk would.

/// Abort the process here if `FAILPOINTS` armed this point with `return`.
#[cfg(feature = "failpoints")]
pub(crate) fn crash_point(name: &str) {
    fail::eval(name, |_| {
        eprintln!("FAILPOINTS: {name}: aborting here");
        std::process::abort()
    });
}

/// Without the `failpoints` feature crash points compile to nothing.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn crash_point(_name: &str) {}

/// Whether the points are compiled in (this crate's `failpoints` feature).
pub const ENABLED: bool = cfg!(feature = "failpoints");
