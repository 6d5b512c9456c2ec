//! Failpoints (the `fail` crate) for crash and fault tests, compiled in only
//! with the `failpoints` feature (`scripts/test.sh` enables it; without it
//! every point passes and [`setup`] arms nothing).
//!
//! The relay binary reads `FAILPOINTS` at start (`name=action;...`, the
//! `fail` crate's syntax). Every persistence boundary of the store has one:
//!
//! | point | where | `return` | `return(abort)` |
//! |---|---|---|---|
//! | `relay.enqueue` | a `Send` is submitted to the store | refused as a failed store write (`store_unavailable`), no id taken | refused too (no abort) |
//! | `relay.enqueue.<device id>` | the same, only for frames to that device | as `relay.enqueue` | as `relay.enqueue` |
//! | `relay.open` | the store is opened (at start, and reopened after a failure) | the open fails (as on a full disk): the relay serves, not ready, and retries | abort |
//! | `relay.commit.before` | before a batch with an enqueue, authorisation or revocation is committed | the commit fails as an I/O error would: the batch is refused, the store is reopened | abort |
//! | `relay.commit.after` | after such a batch's commit, before its answers (`Ok`) are sent | abort (the batch is on disk, nobody was told) | abort |
//! | `relay.ack` | an acknowledgement deletes frames | the batch fails (as an I/O error) | abort |
//! | `relay.route` | an authorisation or revocation is written | the batch fails (as an I/O error) | abort |
//! | `relay.push.delay` | a stored frame is about to be handed to its connected recipient's writer (the live push after an enqueue) | `return(ms)`: it waits `ms` first (a slow task; the frame stays in the store meanwhile) | as `return` |
//! | `relay.no_route.<device id>` | a `Send` to that device is checked for a route | refused `not_authorized`, as if the two had not authorised each other (the route and the store are untouched) | as `return` |
//!
//! `1*return` fails once; `return(abort)` aborts the process there (a
//! `kill -9` at that step).
//!
//! and the crash points of pairing ([`crash_point`], `conn/reader.rs`):
//!
//! * `relay.pair_open`: a desktop's `PairOpen` was read, before it is
//!   looked at (never answered: the desktop's open is interrupted);
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

/// Evaluate the point `name`: `Err(name)` when it is armed with `return`
/// (the caller fails as an I/O error would), the process aborts when it is
/// armed with `return(abort)` (or for `relay.commit.after`, with any
/// `return`), and `Ok` otherwise.
#[cfg(feature = "failpoints")]
pub(crate) fn check(name: &'static str) -> Result<(), &'static str> {
    match fail::eval(name, |arg| arg) {
        Some(arg) if arg.as_deref() == Some("abort") || name == "relay.commit.after" => {
            eprintln!("failpoint {name}: aborting");
            std::process::abort()
        }
        Some(_) => Err(name),
        None => Ok(()),
    }
}

/// Without the `failpoints` feature every point passes.
#[cfg(not(feature = "failpoints"))]
#[inline]
pub(crate) fn check(_name: &'static str) -> Result<(), &'static str> {
    Ok(())
}

/// Whether `relay.no_route.<to>` is armed: a `Send` to `to` is then
/// refused `not_authorized` as if there were no route (a refusal for good
/// on the same store epoch, for the senders' tests).
#[cfg(feature = "failpoints")]
pub(crate) fn no_route(to: &tandem_proto::DeviceId) -> bool {
    fail::eval(&format!("relay.no_route.{to}"), |_| ()).is_some()
}

/// How long to hold back the live push of a stored frame
/// (`relay.push.delay=return(ms)`), if armed.
#[cfg(feature = "failpoints")]
pub(crate) fn push_delay() -> Option<std::time::Duration> {
    fail::eval("relay.push.delay", |arg| arg.and_then(|a| a.parse::<u64>().ok()))
        .flatten()
        .map(std::time::Duration::from_millis)
}

/// Without the `failpoints` feature no push waits.
#[cfg(not(feature = "failpoints"))]
#[inline]
pub(crate) fn push_delay() -> Option<std::time::Duration> {
    None
}

/// Without the `failpoints` feature no route is refused.
#[cfg(not(feature = "failpoints"))]
#[inline]
pub(crate) fn no_route(_to: &tandem_proto::DeviceId) -> bool {
    false
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
