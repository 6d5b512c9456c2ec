//! What is reported before anyone subscribes (from [`Phone::open`] on):
//! kept for the first subscriber, bounded. The newest [`FIRST_REPLAY`]
//! events are kept, and every [`PhoneEvent::DesktopSetAside`] (one per
//! damaged file, never dropped: the app must tell the person to pair
//! again); older events are dropped and the first subscriber is told how
//! many ([`PhoneEvent::EarlyEventsDropped`], before the events kept).

use std::collections::VecDeque;

use super::PhoneEvent;

/// The most events (besides the set-aside reports) a first subscriber is
/// replayed.
pub const FIRST_REPLAY: usize = 256;

/// The events reported while nobody subscribed.
#[derive(Debug, Default)]
pub(super) struct Early {
    events: VecDeque<PhoneEvent>,
    missed: u64,
}

fn set_aside(e: &PhoneEvent) -> bool {
    matches!(e, PhoneEvent::DesktopSetAside { .. })
}

impl Early {
    /// Keep `e`, dropping the oldest other event past the bound.
    pub(super) fn push(&mut self, e: PhoneEvent) {
        self.events.push_back(e);
        let others = self.events.iter().filter(|e| !set_aside(e)).count();
        if others > FIRST_REPLAY
            && let Some(i) = self.events.iter().position(|e| !set_aside(e))
        {
            self.events.remove(i);
            self.missed += 1;
        }
    }

    /// What the first subscriber gets, in order: the set-aside reports,
    /// how many events were dropped (if any), the events kept.
    pub(super) fn replay(self) -> Vec<PhoneEvent> {
        let (mut out, rest): (Vec<_>, Vec<_>) = self.events.into_iter().partition(set_aside);
        if self.missed > 0 {
            out.push(PhoneEvent::EarlyEventsDropped { missed: self.missed });
        }
        out.extend(rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(n: usize) -> PhoneEvent {
        PhoneEvent::Presence { desktop_id: n.to_string(), online: true }
    }

    #[test]
    fn the_newest_events_and_every_set_aside_report_are_kept() {
        let mut early = Early::default();
        early.push(PhoneEvent::DesktopSetAside {
            desktop_id: "d".into(),
            moved_to: None,
            message: "m".into(),
        });
        for n in 0..FIRST_REPLAY + 10 {
            early.push(presence(n));
        }
        let replay = early.replay();
        assert_eq!(replay.len(), FIRST_REPLAY + 2);
        assert!(matches!(replay[0], PhoneEvent::DesktopSetAside { .. }));
        assert_eq!(replay[1], PhoneEvent::EarlyEventsDropped { missed: 10 });
        assert_eq!(replay[2], presence(10));
        assert_eq!(replay.last(), Some(&presence(FIRST_REPLAY + 9)));
        // Under the bound: all of it, no notice.
        let mut early = Early::default();
        early.push(presence(1));
        assert_eq!(early.replay(), [presence(1)]);
    }
}
