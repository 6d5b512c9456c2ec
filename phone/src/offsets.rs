//! The phone-side offset rule (PROTOCOL §15.5): per task, the next offset
//! expected. A smaller offset is a repeat and is dropped; a larger one is a
//! gap (the phone was detached, or the desktop crashed between recording an
//! event and sending it), filled by asking for the history from the
//! expected offset. Sans I/O: it says what to do, the caller does it.

use std::collections::{BTreeMap, BTreeSet};

/// What to do with a task event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The next one: show it.
    Deliver,
    /// Seen before, or beyond a gap being filled: drop it.
    Drop,
    /// Events are missing: ask for the history from `from` (once per gap).
    Fill {
        /// The first missing offset.
        from: u64,
    },
}

/// Offsets of every task of one desktop.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Offsets {
    next: BTreeMap<String, u64>,
    filling: BTreeSet<String>,
}

impl Offsets {
    /// From stored next offsets.
    #[must_use]
    pub fn from_stored(next: BTreeMap<String, u64>) -> Self {
        Self { next, filling: BTreeSet::new() }
    }

    /// The next offsets, to store.
    #[must_use]
    pub fn stored(&self) -> &BTreeMap<String, u64> {
        &self.next
    }

    /// The next offset expected for `task`.
    #[must_use]
    pub fn next(&self, task: &str) -> u64 {
        self.next.get(task).copied().unwrap_or(0)
    }

    /// An event of `task` at `offset` arrived.
    pub fn observe(&mut self, task: &str, offset: u64) -> Verdict {
        let next = self.next(task);
        if offset < next {
            return Verdict::Drop;
        }
        if offset == next {
            self.next.insert(task.to_owned(), next + 1);
            return Verdict::Deliver;
        }
        if self.filling.insert(task.to_owned()) {
            Verdict::Fill { from: next }
        } else {
            Verdict::Drop
        }
    }

    /// A history reply for `task` ended at `next_offset`; `more` if it was
    /// one page. Returns where to ask again, if anything is still missing.
    pub fn history_end(&mut self, task: &str, next_offset: u64, more: bool) -> Option<u64> {
        let next = self.next(task);
        if more || next < next_offset {
            self.filling.insert(task.to_owned());
            return Some(next);
        }
        self.filling.remove(task);
        None
    }

    /// The desktop no longer keeps events before `earliest`: skip to it.
    pub fn unavailable(&mut self, task: &str, earliest: u64) {
        if self.next(task) < earliest {
            self.next.insert(task.to_owned(), earliest);
        }
    }

    /// Stop waiting for gap fills (their answers were lost with a
    /// connection): the next gap asks again.
    pub fn forget_fills(&mut self) {
        self.filling.clear();
    }

    /// Forget tasks not in `keep` (bounded storage).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.next.retain(|t, _| keep(t));
        self.filling.retain(|t| keep(t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_dropped_and_gaps_filled_once() {
        let mut o = Offsets::default();
        assert_eq!(o.observe("t", 0), Verdict::Deliver);
        assert_eq!(o.observe("t", 0), Verdict::Drop);
        assert_eq!(o.observe("t", 1), Verdict::Deliver);
        // Detached: 2..=4 skipped, 5 arrives.
        assert_eq!(o.observe("t", 5), Verdict::Fill { from: 2 });
        assert_eq!(o.observe("t", 6), Verdict::Drop);
        // The history replays 2..=6.
        for off in 2..=6 {
            assert_eq!(o.observe("t", off), Verdict::Deliver);
        }
        assert_eq!(o.history_end("t", 7, false), None);
        assert_eq!(o.observe("t", 7), Verdict::Deliver);
        // A later gap asks again.
        assert_eq!(o.observe("t", 9), Verdict::Fill { from: 8 });
    }

    #[test]
    fn paged_history_asks_for_the_rest_and_pruned_history_skips() {
        let mut o = Offsets::default();
        assert_eq!(o.observe("t", 300), Verdict::Fill { from: 0 });
        o.unavailable("t", 10);
        for off in 10..266 {
            assert_eq!(o.observe("t", off), Verdict::Deliver);
        }
        assert_eq!(o.history_end("t", 266, true), Some(266));
        for off in 266..=300 {
            assert_eq!(o.observe("t", off), Verdict::Deliver);
        }
        assert_eq!(o.history_end("t", 301, false), None);
        assert_eq!(o.next("t"), 301);
        let restored = Offsets::from_stored(o.stored().clone());
        assert_eq!(restored.next("t"), 301);
    }
}
