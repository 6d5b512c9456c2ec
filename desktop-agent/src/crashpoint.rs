//! Named crash points, for tests that kill the agent at one exact step.
//!
//! `TANDEM_CRASH_AT=<name>` makes the process abort (`std::process::abort`:
//! no destructors, no flushing of anything not yet written, like `kill -9`)
//! when it reaches the point of that name. Unset, or set to another name,
//! [`crash_point`] does nothing. Names are `<area>.<step>`; this agent has:
//!
//! * `pair.saved`: a new device's link and scope are on disk, the route is
//!   not authorised and the phone has not been answered (`pair.rs`);
//! * `pair.sent`: the accepting `PairResult` reached the relay, the device
//!   is still marked as not finished pairing.
//!
//! The variable is read on every call: the points are on rare paths.

/// The environment variable naming the point to crash at.
pub const ENV: &str = "TANDEM_CRASH_AT";

/// Abort the process here if `TANDEM_CRASH_AT` names this point.
pub fn crash_point(name: &str) {
    if std::env::var_os(ENV).is_some_and(|v| v == name) {
        eprintln!("{ENV}={name}: aborting here");
        std::process::abort();
    }
}
