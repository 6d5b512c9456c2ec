//! Crash points: named places in the agent where the crash tests make the
//! process die, as `kill -9` or a power cut would, to prove that what is on
//! disk and at the relay at that instant is enough to recover.
//!
//! `TANDEM_CRASH_AT=<name>` in the agent's environment makes
//! [`crash_point`]`(<name>)` call [`std::process::abort`]; without it (or
//! with another name) every crash point does nothing. The variable is read
//! once per process.
//!
//! The points of a session renewal (`docs/PROTOCOL.md` §10.3, §10.6), in the
//! order a renewal passes them:
//!
//! | name | side | between |
//! |---|---|---|
//! | `renew.init_saved` | initiator | the link with the new `SessionInit` persisted, and the init handed to the relay |
//! | `renew.init_sent` | initiator | the relay stored the init, and anything after |
//! | `renew.init_received` | responder | the init opened (`next` made, in memory), and `next` persisted |
//! | `renew.next_saved` | responder | `next` persisted, and the `SessionAccept` handed to the relay |
//! | `renew.accept_sent` | responder | the relay stored the accept, and anything after (the relay ack of the init may not have left) |
//! | `renew.accept_received` | initiator | the accept opened (switched, in memory), and the switch persisted |
//! | `renew.switch_saved` | initiator | the switch persisted, and the confirming `Ack` handed to the relay |
//! | `renew.confirm_sent` | initiator | the relay stored the confirming `Ack`, and anything after |
//! | `renew.confirm_received` | responder | the first record under `next` opened (promoted, in memory), and the promotion persisted |
//! | `renew.promoted_saved` | responder | the promotion persisted, and the relay ack of that record |

use std::sync::OnceLock;

/// The environment variable that arms one crash point.
pub const CRASH_AT_ENV: &str = "TANDEM_CRASH_AT";

/// The crash point this process dies at, if any.
fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED.get_or_init(|| std::env::var(CRASH_AT_ENV).ok()).as_deref()
}

/// Abort the process here when `TANDEM_CRASH_AT` names this point.
pub fn crash_point(name: &str) {
    if armed() == Some(name) {
        eprintln!("tandem: crash point {name} reached ({CRASH_AT_ENV}): aborting");
        std::process::abort();
    }
}
