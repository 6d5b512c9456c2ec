//! The client's delivery cursor against the relay's store epoch
//! (PROTOCOL.md §6.6).

/// Where this client's delivery ids stand against the relay's (PROTOCOL.md
/// §6.6). The relay's ids compare only within one store epoch; the ids the
/// application sees ([`crate::Event::Deliver`], [`crate::Client::ack`]) are the
/// relay's plus `offset`, which moves past every id handed out before
/// whenever the epoch changes, so they keep increasing for the life of the
/// client and an acknowledgement of the old epoch never reaches the new one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// The store epoch of the last `AuthOk` (`None` before the first).
    epoch: Option<u64>,
    /// Added to the relay's ids in this epoch.
    offset: u64,
}

impl Cursor {
    /// A connection announced `epoch`; `delivered` is the highest local id
    /// handed out so far. Returns whether the cursor was reset.
    pub(crate) fn connected(&mut self, epoch: u64, delivered: u64) -> bool {
        if self.epoch == Some(epoch) {
            return false;
        }
        self.epoch = Some(epoch);
        self.offset = delivered;
        true
    }

    /// The local id of the relay's delivery `id`.
    pub(crate) fn local(&self, id: u64) -> u64 {
        self.offset.saturating_add(id)
    }

    /// The relay's id for local `id`, if it is in this epoch.
    pub(crate) fn relay(&self, id: u64) -> Option<u64> {
        id.checked_sub(self.offset).filter(|&r| r > 0)
    }
}
