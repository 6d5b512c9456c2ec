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
//!
//! `1*return` fails once; `return(abort)` aborts the process there (a
//! `kill -9` at that step).

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
