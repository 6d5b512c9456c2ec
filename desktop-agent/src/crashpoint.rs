//! Named crash points, for tests that kill the agent at one exact step.
//!
//! Crash points are failpoints of the `fail` crate, compiled in only with
//! this crate's `failpoints` feature (`scripts/test.sh` enables it; without
//! it [`crash_point`] is empty). The process reads the `FAILPOINTS`
//! environment variable at start (`FAILPOINTS="pair.saved=return"`, several
//! separated by `;`) and, when a configured point is reached with the
//! action `return`, aborts (`std::process::abort`: no destructors, no
//! flushing of anything not yet written, like `kill -9`). Other actions of
//! the `fail` crate (`sleep(ms)`, `pause`, `1*return`, ...) work as that
//! crate documents. Names are `<area>.<step>`; this agent has the steps of
//! pairing (`pair.rs`):
//!
//! * `pair.saved`: a new device's link and scope are on disk, the route is
//!   not authorised and the phone has not been answered (`pair.rs`);
//! * `pair.sent`: the accepting `PairResult` reached the relay, the device
//!   is still marked as not finished pairing.
//!
//! and the steps of a session renewal (`docs/PROTOCOL.md` §10.3, §10.6;
//! `daemon/renewal.rs`), in the order a renewal passes them:
//!
//! * `renew.init_saved` (initiator): the link with the new `SessionInit`
//!   is on disk, the init not yet handed to the relay;
//! * `renew.init_sent` (initiator): the relay stored the init;
//! * `renew.init_received` (responder): the init opened (`next` made, in
//!   memory only);
//! * `renew.next_saved` (responder): `next` is on disk, the `SessionAccept`
//!   not yet handed to the relay;
//! * `renew.accept_sent` (responder): the relay stored the accept (its ack
//!   of the init may not have left);
//! * `renew.accept_received` (initiator): the accept opened (switched, in
//!   memory only);
//! * `renew.switch_saved` (initiator): the switch is on disk, the confirming
//!   `Ack` not yet handed to the relay;
//! * `renew.confirm_sent` (initiator): the relay stored the confirming `Ack`;
//! * `renew.confirm_received` (responder): the first record under `next`
//!   opened (promoted, in memory only);
//! * `renew.promoted_saved` (responder): the promotion is on disk, the relay
//!   not yet told the record was taken.
//!

/// The environment variable naming the points (read once, at start, by
/// [`setup`]).
pub const ENV: &str = "FAILPOINTS";

/// The points armed from `FAILPOINTS`, for the life of the process: keep it
/// in `main`.
pub struct Armed {
    #[cfg(feature = "failpoints")]
    _scenario: fail::FailScenario<'static>,
}

/// Read `FAILPOINTS` and arm the points it names (nothing without the
/// `failpoints` feature). Call once at the start of the process.
pub fn setup() -> Armed {
    Armed {
        #[cfg(feature = "failpoints")]
        _scenario: fail::FailScenario::setup(),
    }
}

/// Abort the process here if `FAILPOINTS` armed this point with `return`.
#[cfg(feature = "failpoints")]
pub fn crash_point(name: &str) {
    fail::eval(name, |_| {
        eprintln!("{ENV}: {name}: aborting here");
        std::process::abort()
    });
}

/// Without the `failpoints` feature crash points compile to nothing.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn crash_point(_name: &str) {}
