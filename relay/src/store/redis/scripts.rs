//! The Lua scripts of [`super::RedisStore`] (`lua/*.lua`): each is the
//! shared library (`lua/lib.lua`, with the Rust constants it needs) and one
//! operation. They are loaded (`SCRIPT LOAD`) on every new connection, before
//! anything else runs on it, and called with `EVALSHA`; a server that lost
//! them (`SCRIPT FLUSH`) answers `NOSCRIPT`, and the store reconnects, which
//! loads them again.

use crate::store::{FRAME_COST_BYTES, LIVE_ALLOWANCE_BYTES, MAX_PEERS};

/// One script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Script {
    /// Route check, limits, id and frame: one atomic step.
    Enqueue,
    /// Delete a queue's frames up to an id.
    Ack,
    /// The expiry sweep.
    Expire,
    /// Record an authorisation.
    Authorize,
    /// Withdraw one.
    Revoke,
    /// Reads of several keys (route, peers, depth, totals).
    Read,
    /// Frames held under leased ids, written.
    EnqueueReserved,
    /// A block of ids for a node's pool.
    Lease,
}

impl Script {
    /// Every script, in the order [`Script::index`] numbers them.
    pub(super) const ALL: [Script; 8] = [
        Script::Enqueue,
        Script::Ack,
        Script::Expire,
        Script::Authorize,
        Script::Revoke,
        Script::Read,
        Script::EnqueueReserved,
        Script::Lease,
    ];

    /// Its place in [`Script::ALL`] (and in the loaded hashes).
    pub(super) fn index(self) -> usize {
        self as usize
    }

    /// Whether it writes (counted as a commit in the store's stats).
    pub(super) fn writes(self) -> bool {
        !matches!(self, Script::Read)
    }

    fn body(self) -> &'static str {
        match self {
            Script::Enqueue => include_str!("lua/enqueue.lua"),
            Script::Ack => include_str!("lua/ack.lua"),
            Script::Expire => include_str!("lua/expire.lua"),
            Script::Authorize => include_str!("lua/authorize.lua"),
            Script::Revoke => include_str!("lua/revoke.lua"),
            Script::Read => include_str!("lua/read.lua"),
            Script::EnqueueReserved => include_str!("lua/enqueue_reserved.lua"),
            Script::Lease => include_str!("lua/lease.lua"),
        }
    }

    /// The full text sent to `SCRIPT LOAD`.
    pub(super) fn text(self) -> String {
        format!(
            "local COST = {FRAME_COST_BYTES}\nlocal LIVE = {LIVE_ALLOWANCE_BYTES}\n\
             local MAX_PEERS = {MAX_PEERS}\n{}\n{}",
            include_str!("lua/lib.lua"),
            self.body()
        )
    }
}

/// What [`Script::Enqueue`] answers for a refused frame (its reply `<= 0`).
pub(super) fn enqueue_refusal(code: i64, to: tandem_proto::DeviceId) -> crate::store::StoreError {
    use crate::store::StoreError;
    match code {
        0 => StoreError::NoRoute,
        -1 => StoreError::QueueFull(to),
        -2 => StoreError::SenderShareFull,
        -3 => StoreError::AddressShareFull,
        -4 => StoreError::StorageFull,
        -5 => StoreError::OverflowFull,
        -6 => StoreError::Unavailable(
            "redis: the recipient moved to a newer connection, or its queue refused the frame; \
             send it again"
                .into(),
        ),
        -7 => StoreError::Unavailable("redis: an id leased under another store epoch".into()),
        other => StoreError::Backend(format!("redis: unknown enqueue answer {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_is_numbered_in_order_and_carries_the_library() {
        for (i, s) in Script::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
            let t = s.text();
            assert!(t.starts_with("local COST = 128\n"), "{t}");
            assert!(t.contains("local function guard()"));
        }
    }
}
