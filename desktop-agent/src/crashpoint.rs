//! Named crash points, for tests that kill the agent at one exact step.
//!
//! `TANDEM_CRASH_AT=<name>` makes the process abort (`std::process::abort`:
//! no destructors, no flushing of anything not yet written, like `kill -9`)
//! when it reaches the point of that name. Unset, or set to another name,
//! [`crash_point`] does nothing. Names are `<area>.<step>`; this agent has the
//! steps of pairing (`pair.rs`):
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
