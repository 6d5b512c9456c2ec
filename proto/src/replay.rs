//! A sliding replay window over 64-bit record counters (RFC 6479 style,
//! 1024 bits). Checking never changes state; only [`ReplayWindow::accept`],
//! called after a record authenticated, does.

use serde::{Deserialize, Serialize};

/// How many counters below the highest accepted one are still tracked.
pub const WINDOW_BITS: u64 = 1024;
const WORDS: usize = (WINDOW_BITS / 64) as usize;

/// Why a counter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// Already accepted once.
    #[error("counter {0} was already accepted (replay)")]
    Duplicate(u64),
    /// Too far below the highest accepted counter to tell.
    #[error("counter {0} is older than the replay window")]
    TooOld(u64),
}

/// The window. Loading a stored window with the wrong number of bits is an
/// error (a damaged window would re-allow replays).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StoredWindow")]
pub struct ReplayWindow {
    /// One past the highest accepted counter (0: nothing accepted yet).
    next: u64,
    /// Bit `c % 1024` is set when counter `c` (within the window) was accepted.
    bits: Vec<u64>,
}

#[derive(Deserialize)]
struct StoredWindow {
    next: u64,
    bits: Vec<u64>,
}

impl TryFrom<StoredWindow> for ReplayWindow {
    type Error = String;
    fn try_from(s: StoredWindow) -> Result<Self, String> {
        if s.bits.len() != WORDS {
            return Err(format!("replay window has {} words, expected {WORDS}", s.bits.len()));
        }
        Ok(Self { next: s.next, bits: s.bits })
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window.
    #[must_use]
    pub fn new() -> Self {
        Self { next: 0, bits: vec![0; WORDS] }
    }

    /// The highest accepted counter, if any.
    #[must_use]
    pub fn highest(&self) -> Option<u64> {
        self.next.checked_sub(1)
    }

    /// Would `counter` be accepted? Changes nothing.
    ///
    /// # Errors
    /// [`ReplayError`] for a duplicate or a counter below the window.
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        if counter >= self.next {
            return Ok(());
        }
        if self.next - counter > WINDOW_BITS {
            return Err(ReplayError::TooOld(counter));
        }
        if self.bit(counter) { Err(ReplayError::Duplicate(counter)) } else { Ok(()) }
    }

    /// Record `counter` as accepted. Call only after [`Self::check`] passed and
    /// the record authenticated.
    pub fn accept(&mut self, counter: u64) {
        if self.bits.len() != WORDS {
            self.bits = vec![0; WORDS];
        }
        if counter >= self.next {
            // Clear the bits of every counter the window slides past.
            let advance = counter - self.next + 1;
            if advance >= WINDOW_BITS {
                self.bits.iter_mut().for_each(|w| *w = 0);
            } else {
                for c in self.next..=counter {
                    self.set_bit(c, false);
                }
            }
            self.next = counter.saturating_add(1);
        }
        self.set_bit(counter, true);
    }

    fn bit(&self, c: u64) -> bool {
        let i = ((c % WINDOW_BITS) / 64) as usize;
        self.bits.get(i).is_some_and(|w| w & (1 << (c % 64)) != 0)
    }

    fn set_bit(&mut self, c: u64, on: bool) {
        let i = ((c % WINDOW_BITS) / 64) as usize;
        if let Some(w) = self.bits.get_mut(i) {
            if on { *w |= 1 << (c % 64) } else { *w &= !(1 << (c % 64)) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn duplicates_and_old_counters_are_refused() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.highest(), None);
        w.accept(0);
        assert_eq!(w.check(0), Err(ReplayError::Duplicate(0)));
        w.accept(5);
        assert_eq!(w.check(3), Ok(()));
        w.accept(3);
        assert_eq!(w.check(3), Err(ReplayError::Duplicate(3)));
        w.accept(5000);
        assert_eq!(w.check(5000 - 1024), Err(ReplayError::TooOld(5000 - 1024)));
        assert_eq!(w.check(5000 - 1023), Ok(()));
        assert_eq!(w.check(5), Err(ReplayError::TooOld(5)));
    }

    #[test]
    fn a_damaged_stored_window_is_refused() {
        let mut w = ReplayWindow::new();
        w.accept(3);
        let ok: ReplayWindow = serde_json::from_str(&serde_json::to_string(&w).unwrap()).unwrap();
        assert_eq!(ok, w);
        assert!(serde_json::from_str::<ReplayWindow>(r#"{"next":4,"bits":[8]}"#).is_err());
    }

    proptest! {
        #[test]
        fn matches_a_set_model(ops in proptest::collection::vec(0u64..3000, 0..400)) {
            let mut w = ReplayWindow::new();
            let mut seen = std::collections::BTreeSet::new();
            for c in ops {
                let high = seen.iter().next_back().copied();
                let expect = if seen.contains(&c) {
                    Err(ReplayError::Duplicate(c))
                } else if high.is_some_and(|h| h >= c && h - c >= WINDOW_BITS) {
                    Err(ReplayError::TooOld(c))
                } else {
                    Ok(())
                };
                let got = w.check(c);
                // A duplicate far below the window may be reported as too old.
                match (expect, got) {
                    (Err(ReplayError::Duplicate(_)), Err(ReplayError::TooOld(_))) => {}
                    (e, g) => prop_assert_eq!(e, g),
                }
                if got.is_ok() {
                    w.accept(c);
                    seen.insert(c);
                }
            }
        }
    }
}
