//! Failpoints (the `fail` crate) for crash and fault tests, compiled in only
//! with the `failpoints` feature (`scripts/test.sh` enables it; without it
//! `fail::fail_point!` compiles to nothing and [`setup`] arms nothing).
//!
//! The relay binary reads `FAILPOINTS` at start (`name=action;...`, the
//! `fail` crate's syntax). The points are named `relay.<step>` and listed
//! where they are defined, in the store (`store/`):
//!
//! * `relay.enqueue`: the store refuses a `Send` with a storage error
//!   (`store_unavailable`), as a failing disk would (`1*return`: one frame);
//! * `relay.enqueue.<device id>`: the same, only for frames to that device.
//!
//! and the crash points of pairing ([`crash_point`], `conn/reader.rs`):
//!
//! * `relay.pair_claim`: a phone's `PairClaim` was read, before it is
//!   looked at (the claim is in flight: never answered, never forwarded);
//! * `relay.pair_message`: a `PairMessage` was read, before it is forwarded
//!   (with `2*off->return`, the third of a pairing: the desktop's result).

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

/// Abort the process (no destructors, like `kill -9`) when `FAILPOINTS`
/// arms `name` with `return`; nothing without the `failpoints` feature.
pub(crate) fn crash_point(name: &str) {
    #[cfg(feature = "failpoints")]
    fail::fail_point!(name, |_| {
        tracing::warn!(point = name, "crash point: aborting");
        std::process::abort()
    });
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}
