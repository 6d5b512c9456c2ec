//! Protocol levels (PROTOCOL.md §6.1): what `Hello`'s
//! `[min_version, max_version]` names.

/// The newest protocol level this crate speaks. `Hello`'s
/// `[min_version, max_version]` names the levels a device speaks, the relay
/// uses the highest level both speak ([`negotiate`]); each level is the one
/// below plus what it adds, and every frame's version byte is [`VERSION`](super::VERSION).
/// Level 1: the frames of PROTOCOL.md §4.2 but `Oks`. Level 2 ([`LEVEL_OKS`]):
/// the relay may answer accepted `Send`s with `Oks` instead of `Ok`. Level 3
/// ([`LEVEL_PUSH`]): the push frames `PushSubscribe`, `Notify` and `Active`.
pub const LEVEL: u8 = 3;

/// The level from which the relay answers accepted `Send`s with `Oks`.
pub const LEVEL_OKS: u8 = 2;

/// The level from which the relay takes the push frames (`PushSubscribe`,
/// `Notify`, `Active`); on a connection below it they are unexpected.
pub const LEVEL_PUSH: u8 = 3;

/// The level a side speaking levels `1..=LEVEL` uses with a peer that
/// speaks `min..=max`: the highest level both speak, `None` when the ranges
/// do not meet (`unsupported_version`).
#[must_use]
pub fn negotiate(min: u8, max: u8) -> Option<u8> {
    let level = max.min(LEVEL);
    (level >= min.max(1)).then_some(level)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_the_highest_both_sides_speak() {
        assert_eq!(negotiate(1, 1), Some(1));
        assert_eq!(negotiate(1, 2), Some(2));
        assert_eq!(negotiate(1, 9), Some(LEVEL));
        assert_eq!(negotiate(2, 3), Some(3));
        assert_eq!(negotiate(2, 2), Some(2));
        assert_eq!(negotiate(0, 1), Some(1));
        assert_eq!(negotiate(0, 0), None);
        assert_eq!(negotiate(3, 4), Some(3));
        assert_eq!(negotiate(4, 5), None);
    }
}
