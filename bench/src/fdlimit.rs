//! The open-file limit: every idle connection costs the relay one file
//! descriptor and the load generator another, so the idle scenario raises
//! the soft limit to the hard one (children inherit it: the relay the bench
//! starts, and its worker processes) and splits connections across
//! processes when one would run out.

use rlimit::Resource;

/// Descriptors a process keeps for itself besides its connections
/// (runtime, pipes, the relay's store and listener, log files).
pub const RESERVED: u64 = 256;

/// The current (soft, hard) limit on open files; (0, 0) when unknown.
#[must_use]
pub fn current() -> (u64, u64) {
    Resource::NOFILE.get().unwrap_or((0, 0))
}

/// Raise the soft limit to the hard limit; returns the new soft limit.
#[must_use]
pub fn raise() -> u64 {
    let (soft, hard) = current();
    if soft < hard && Resource::NOFILE.set(hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// How many connections one process can hold with `limit` descriptors.
#[must_use]
pub fn connections_per_process(limit: u64) -> usize {
    usize::try_from(limit.saturating_sub(RESERVED).max(1)).unwrap_or(usize::MAX)
}
