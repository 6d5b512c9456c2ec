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
//! and the steps of applying an instruction from a phone
//! (`docs/PROTOCOL.md` §13.5; `daemon/instructions.rs`), where `<kind>` is
//! `submit`, `follow_up`, `cancel` or `decide` ([`Steps`]), in order:
//!
//! * `agent.<kind>.audited`: the instruction's audit line is written (a
//!   decision has none), nothing applied;
//! * `agent.<kind>.applied`: its effect and its applied marker are in
//!   `tasks.redb` (one transaction), the link's receipt is not on disk;
//! * `agent.<kind>.link_saved`: the link's receipt is on disk, with the
//!   replies to the instruction sealed in its outbox (one write: a refusal
//!   is not lost), none handed to the relay, the relay delivery not
//!   acknowledged;
//! * `agent.<kind>.replied`: the same state, passed only when there are
//!   replies (every peer's link holding them is on disk);
//! * `agent.<kind>.sent`: the relay stored the last reply;
//!
//! and, on every path that records a task event:
//!
//! * `agent.event_saved`: a task event is in the history, not yet sealed
//!   for any phone.

/// The crash points one kind of instruction passes, in order (see the
/// module's list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steps {
    /// Audited, nothing applied.
    pub audited: &'static str,
    /// Effect and applied marker on disk, link not.
    pub applied: &'static str,
    /// The link's receipt and the sealed replies on disk, nothing sent.
    pub link_saved: &'static str,
    /// As `link_saved`, when there are replies.
    pub replied: &'static str,
    /// The relay stored the last reply.
    pub sent: &'static str,
}

macro_rules! steps {
    ($kind:literal) => {
        Steps {
            audited: concat!("agent.", $kind, ".audited"),
            applied: concat!("agent.", $kind, ".applied"),
            link_saved: concat!("agent.", $kind, ".link_saved"),
            replied: concat!("agent.", $kind, ".replied"),
            sent: concat!("agent.", $kind, ".sent"),
        }
    };
}

/// A `task_submit`.
pub const SUBMIT: Steps = steps!("submit");
/// A `follow_up`.
pub const FOLLOW_UP: Steps = steps!("follow_up");
/// A `cancel`.
pub const CANCEL: Steps = steps!("cancel");
/// An `approval_decision`.
pub const DECIDE: Steps = steps!("decide");

impl Steps {
    /// Every point, in order.
    #[must_use]
    pub fn all(&self) -> [&'static str; 5] {
        [self.audited, self.applied, self.link_saved, self.replied, self.sent]
    }
}

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
