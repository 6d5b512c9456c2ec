//! The phone-side offset rule (PROTOCOL §15.5): per task, the next offset
//! expected. A smaller offset is a repeat and is dropped; a larger one is a
//! gap (the phone was detached, or the desktop crashed between recording an
//! event and sending it), filled by asking for the history from the
//! expected offset. Sans I/O: it says what to do, the caller does it.
//!
//! Bounded: at most [`MAX_TASKS`] tasks are tracked per desktop. Past that,
//! the tasks seen finishing are forgotten, the oldest first (a desktop keeps
//! 500 tasks by default, so a task forgotten here is one the desktop no
//! longer keeps either). A task the desktop lists as finished (`TaskList`)
//! counts as seen finishing even when its `Finished` never arrived live.
//! Unfinished tasks are never forgotten (the desktop caps how many it runs). An event of a forgotten task is a gap from 0: its
//! history is asked for again, as for a task never seen.
//!
//! The offsets are saved in the desktop's file together with its `Link`,
//! in one atomic write: a delivery's effects and the link that took it must
//! be durable together (PROTOCOL §13.5 rule 3), so they are not split into
//! an append-only file; the cap bounds what each write carries.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The most tasks whose offsets one desktop's record keeps.
pub const MAX_TASKS: usize = 1024;

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
    /// Tasks seen finishing, oldest first.
    finished: VecDeque<String>,
}

impl Offsets {
    /// From stored next offsets (and the tasks seen finishing, oldest first).
    #[must_use]
    pub fn from_stored(next: BTreeMap<String, u64>, finished: Vec<String>) -> Self {
        let finished = finished.into_iter().filter(|t| next.contains_key(t)).collect();
        let mut o = Self { next, filling: BTreeSet::new(), finished };
        o.prune();
        o
    }

    /// The tasks seen finishing, oldest first, to store.
    #[must_use]
    pub fn finished(&self) -> Vec<String> {
        self.finished.iter().cloned().collect()
    }

    /// `task` delivered an event: `done` if it was its `Finished`. A task
    /// that goes on after finishing (a follow-up) is unfinished again.
    pub fn note(&mut self, task: &str, done: bool) {
        if let Some(i) = self.finished.iter().position(|t| t == task) {
            if done {
                return;
            }
            self.finished.remove(i);
        } else if done {
            self.finished.push_back(task.to_owned());
            self.prune();
        }
    }

    /// The desktop listed `task` as finished (a `TaskList`): a tracked task
    /// whose `Finished` never arrived live (the phone was detached, or the
    /// gap was never filled) counts as finished too, so that the cap can
    /// forget it. Its place is the oldest: its finish was not seen, so it
    /// is no newer than any that was. A task already counted keeps its place.
    pub fn listed_finished(&mut self, task: &str) {
        if !self.next.contains_key(task) || self.finished.iter().any(|t| t == task) {
            return;
        }
        self.finished.push_front(task.to_owned());
        self.prune();
    }

    /// Forget the oldest finished tasks while more than [`MAX_TASKS`] are kept.
    fn prune(&mut self) {
        while self.next.len() > MAX_TASKS {
            let Some(t) = self.finished.pop_front() else { break };
            self.next.remove(&t);
            self.filling.remove(&t);
        }
    }

    /// How many tasks are tracked.
    #[must_use]
    pub fn len(&self) -> usize {
        self.next.len()
    }

    /// Whether no task is tracked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.next.is_empty()
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
            self.prune();
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
    /// Returns the offsets lost for good (`from..=to`) when this phone was
    /// waiting for them (a gap it was filling), `None` otherwise.
    pub fn unavailable(&mut self, task: &str, earliest: u64) -> Option<(u64, u64)> {
        let next = self.next(task);
        if next >= earliest {
            return None;
        }
        self.next.insert(task.to_owned(), earliest);
        self.prune();
        self.filling.contains(task).then(|| (next, earliest - 1))
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
        self.finished.retain(|t| keep(t));
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
        assert_eq!(o.unavailable("t", 10), Some((0, 9)), "0..=9 are lost for good");
        for off in 10..266 {
            assert_eq!(o.observe("t", off), Verdict::Deliver);
        }
        assert_eq!(o.history_end("t", 266, true), Some(266));
        for off in 266..=300 {
            assert_eq!(o.observe("t", off), Verdict::Deliver);
        }
        assert_eq!(o.history_end("t", 301, false), None);
        assert_eq!(o.next("t"), 301);
        let restored = Offsets::from_stored(o.stored().clone(), o.finished());
        assert_eq!(restored.next("t"), 301);
        // Not filling: nothing the phone waited for is lost.
        assert_eq!(o.unavailable("u", 5), None);
    }

    #[test]
    fn finished_tasks_are_forgotten_oldest_first_past_the_cap() {
        let mut o = Offsets::default();
        for i in 0..MAX_TASKS {
            let t = format!("t{i}");
            assert_eq!(o.observe(&t, 0), Verdict::Deliver);
            o.note(&t, i % 2 == 0);
        }
        // t0 finished, then went on (a follow-up): unfinished again.
        assert_eq!(o.observe("t0", 1), Verdict::Deliver);
        o.note("t0", false);
        assert_eq!(o.len(), MAX_TASKS);
        assert_eq!(o.observe("new", 0), Verdict::Deliver);
        assert_eq!(o.len(), MAX_TASKS);
        assert_eq!(o.next("t0"), 2, "unfinished tasks are kept");
        assert_eq!(o.next("t2"), 0, "the oldest finished task went");
        assert_eq!(o.next("t1"), 1);
        // A restart keeps the order.
        let r = Offsets::from_stored(o.stored().clone(), o.finished());
        assert_eq!(r.finished().first().map(String::as_str), Some("t4"));
        // Only unfinished tasks: the cap is not enforced on them.
        let mut u = Offsets::default();
        for i in 0..=MAX_TASKS {
            u.observe(&format!("u{i}"), 0);
        }
        assert_eq!(u.len(), MAX_TASKS + 1);
    }

    #[test]
    fn tasks_listed_as_finished_count_as_finished() {
        let mut o = Offsets::default();
        for i in 0..MAX_TASKS {
            assert_eq!(o.observe(&format!("t{i}"), 0), Verdict::Deliver);
        }
        // None was seen finishing live; the task list says t5 and t7 are.
        o.listed_finished("t7");
        o.listed_finished("t5");
        o.listed_finished("t5");
        o.listed_finished("never-seen");
        assert_eq!(o.finished(), ["t5", "t7"]);
        assert_eq!(o.observe("new", 0), Verdict::Deliver);
        assert_eq!(o.len(), MAX_TASKS);
        assert_eq!(o.next("t5"), 0, "the listed finished task went first");
        assert_eq!(o.next("t7"), 1);
        // One seen finishing live is not moved by a later list.
        o.note("t9", true);
        o.listed_finished("t9");
        assert_eq!(o.finished(), ["t7", "t9"]);
    }
}
