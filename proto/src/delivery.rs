//! Delivery: per-direction sequence numbers and cumulative acknowledgements,
//! for exactly-once, in-order delivery to the application across reconnects
//! and restarts — or an explicit "resync needed", never a silent gap.
//!
//! The sender ([`Outbound`]) numbers messages from 1 and keeps every one
//! until the peer acknowledges it; on reconnect it resends what is
//! unacknowledged (under new record counters). The receiver ([`Inbound`])
//! delivers the next expected number, drops anything at or below what it
//! has delivered (a duplicate: acknowledge again), and answers a jump ahead
//! with a `Nack` naming what it needs. Each data message also says the
//! oldest number its sender still holds; if that is above what the receiver
//! expects, the messages in between are gone for good (the sender's outbox
//! overflowed) and the receiver reports [`Receipt::resync`] before going on.
//!
//! Both halves are plain data; a device persists them together with the
//! effects of what it delivered (and before acknowledging to the relay),
//! so a crash can neither lose nor repeat a message.

use std::collections::VecDeque;
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Outbox bounds: beyond them the oldest unacknowledged message is dropped
/// (and the peer told, through `oldest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxLimits {
    /// Most messages kept.
    pub max_messages: usize,
    /// Most bytes kept.
    pub max_bytes: usize,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        Self { max_messages: 100_000, max_bytes: 256 * 1024 * 1024 }
    }
}

/// What an outbox takes now before it drops its oldest message
/// ([`Outbound::room`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxRoom {
    /// Messages that still fit.
    pub messages: usize,
    /// Bytes that still fit.
    pub bytes: usize,
}

/// A peer said something impossible.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryError {
    /// Sequence numbers start at 1.
    #[error("sequence number 0 is invalid")]
    ZeroSeq,
    /// `oldest` above the message's own number.
    #[error("oldest held ({oldest}) is above the message's own number ({seq})")]
    OldestAboveSeq {
        /// The message's number.
        seq: u64,
        /// What the sender claimed to hold.
        oldest: u64,
    },
    /// An acknowledgement for messages never sent.
    #[error("acknowledgement {ack} is beyond the last sent message {last}")]
    AckBeyondSent {
        /// The ack.
        ack: u64,
        /// The last number sent.
        last: u64,
    },
}

/// One unacknowledged message. Stored (in a serialised [`crate::link::Link`])
/// as `{"seq": 3, "message": "<standard base64>"}`; links stored before
/// that hold the message as an array of byte values, which still reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    seq: u64,
    #[serde(with = "compact_bytes")]
    message: Vec<u8>,
}

/// Bytes as one standard base64 string (about a quarter of a JSON array of
/// numbers' size); reads either that or the older array of numbers.
mod compact_bytes {
    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&data_encoding::BASE64.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_any(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a base64 string or an array of byte values")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
            data_encoding::BASE64
                .decode(v.as_bytes())
                .map_err(|e| E::custom(format!("bad base64 message: {e}")))
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

/// The sending half.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbound {
    next_seq: u64,
    acked: u64,
    unacked: VecDeque<Pending>,
    bytes: usize,
    limits: OutboxLimits,
    dropped: u64,
}

impl Default for Outbound {
    fn default() -> Self {
        Self::new(OutboxLimits::default())
    }
}

impl Outbound {
    /// An empty outbox.
    #[must_use]
    pub fn new(limits: OutboxLimits) -> Self {
        Self { next_seq: 1, acked: 0, unacked: VecDeque::new(), bytes: 0, limits, dropped: 0 }
    }

    /// Queue a message; returns its sequence number. If the outbox is over
    /// its limits afterwards, the oldest messages are dropped (counted in
    /// [`Self::dropped`]; the peer will be told through `oldest`).
    pub fn push(&mut self, message: Vec<u8>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += message.len();
        self.unacked.push_back(Pending { seq, message });
        while self.unacked.len() > 1
            && (self.unacked.len() > self.limits.max_messages || self.bytes > self.limits.max_bytes)
        {
            if let Some(p) = self.unacked.pop_front() {
                self.bytes -= p.message.len();
                self.dropped += 1;
            }
        }
        seq
    }

    /// The peer acknowledged everything up to `ack`; forget it.
    ///
    /// # Errors
    /// [`DeliveryError::AckBeyondSent`] for an ack of messages never sent
    /// (nothing changes).
    pub fn on_ack(&mut self, ack: u64) -> Result<usize, DeliveryError> {
        self.check_ack(ack)?;
        let mut n = 0;
        while self.unacked.front().is_some_and(|p| p.seq <= ack) {
            if let Some(p) = self.unacked.pop_front() {
                self.bytes -= p.message.len();
                n += 1;
            }
        }
        self.acked = self.acked.max(ack);
        Ok(n)
    }

    /// Whether [`Self::on_ack`] would take `ack`, without changing anything.
    ///
    /// # Errors
    /// [`DeliveryError::AckBeyondSent`] for an ack of messages never sent.
    pub fn check_ack(&self, ack: u64) -> Result<(), DeliveryError> {
        let last = self.next_seq - 1;
        if ack > last {
            return Err(DeliveryError::AckBeyondSent { ack, last });
        }
        Ok(())
    }

    /// The oldest sequence number still held (the next one if none is).
    #[must_use]
    pub fn oldest(&self) -> u64 {
        self.unacked.front().map_or(self.next_seq, |p| p.seq)
    }

    /// The highest acknowledged sequence number.
    #[must_use]
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Unacknowledged messages from `from` on, in order: what to (re)send.
    pub fn unacked_from(&self, from: u64) -> impl Iterator<Item = (u64, &[u8])> {
        self.unacked.iter().filter(move |p| p.seq >= from).map(|p| (p.seq, p.message.as_slice()))
    }

    /// How many messages wait for an acknowledgement.
    #[must_use]
    pub fn len(&self) -> usize {
        self.unacked.len()
    }

    /// True when everything sent has been acknowledged.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.unacked.is_empty()
    }

    /// What can be queued now without dropping an unacknowledged message:
    /// a sender that may shorten what it sends (a history page) keeps
    /// within it.
    #[must_use]
    pub fn room(&self) -> OutboxRoom {
        OutboxRoom {
            messages: self.limits.max_messages.saturating_sub(self.unacked.len()),
            bytes: self.limits.max_bytes.saturating_sub(self.bytes),
        }
    }

    /// Messages dropped unacknowledged because the outbox overflowed.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// The receiving half.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inbound {
    delivered: u64,
    /// The last `expected` a Nack was requested for: one Nack per gap, not
    /// one per out-of-order message (a burst after a loss would otherwise
    /// make the sender resend the burst once per message).
    #[serde(default)]
    nacked: u64,
}

/// What to do with a received data message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Messages that can never arrive (the sender no longer holds them):
    /// tell the application to resync before anything else.
    pub resync: Option<RangeInclusive<u64>>,
    /// What to do with this message.
    pub action: Action,
}

/// The receiver's decision for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Deliver it to the application.
    Deliver,
    /// Already delivered: drop it and acknowledge again.
    Duplicate,
    /// Ahead of what is expected: drop it; send a `Nack` for `expected` if
    /// `nack` is set (the first time this gap is seen).
    Gap {
        /// The next number needed.
        expected: u64,
        /// Whether to send a Nack now.
        nack: bool,
    },
}

impl Inbound {
    /// A fresh receiver.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Allow the next gap to be Nacked again (call on a timer while a gap persists).
    pub fn forget_nack(&mut self) {
        self.nacked = 0;
    }

    /// The cumulative acknowledgement to send: everything up to here was delivered.
    #[must_use]
    pub fn ack(&self) -> u64 {
        self.delivered
    }

    /// Decide about message `seq` whose sender still holds everything from
    /// `oldest`. A gap whose Nack was lost is filled by the sender's resend on
    /// reconnect, or by the caller asking again ([`Self::forget_nack`]).
    ///
    /// # Errors
    /// [`DeliveryError`] for impossible numbers (nothing changes).
    pub fn on_data(&mut self, seq: u64, oldest: u64) -> Result<Receipt, DeliveryError> {
        if seq == 0 {
            return Err(DeliveryError::ZeroSeq);
        }
        if oldest > seq {
            return Err(DeliveryError::OldestAboveSeq { seq, oldest });
        }
        if seq <= self.delivered {
            return Ok(Receipt { resync: None, action: Action::Duplicate });
        }
        let mut resync = None;
        if oldest > self.delivered + 1 {
            resync = Some(self.delivered + 1..=oldest - 1);
            self.delivered = oldest - 1;
        }
        let action = if seq == self.delivered + 1 {
            self.delivered = seq;
            Action::Deliver
        } else {
            let expected = self.delivered + 1;
            let nack = self.nacked != expected;
            self.nacked = expected;
            Action::Gap { expected, nack }
        };
        Ok(Receipt { resync, action })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_outbox_stores_messages_as_base64_and_reads_the_old_arrays() {
        let mut out = Outbound::default();
        out.push(b"hello".to_vec());
        out.push(vec![0, 255, 7]);
        let json = serde_json::to_value(&out).unwrap();
        assert_eq!(json["unacked"][0]["message"], "aGVsbG8=");
        assert_eq!(json["unacked"][1]["message"], "AP8H");
        assert_eq!(serde_json::from_value::<Outbound>(json.clone()).unwrap(), out);
        // As stored before: arrays of byte values.
        let mut old = json;
        old["unacked"][0]["message"] = serde_json::json!([104, 101, 108, 108, 111]);
        old["unacked"][1]["message"] = serde_json::json!([0, 255, 7]);
        assert_eq!(serde_json::from_value::<Outbound>(old.clone()).unwrap(), out);
        // Garbage is an error, never a panic.
        for bad in
            [serde_json::json!("not base64!"), serde_json::json!([256]), serde_json::json!(7)]
        {
            let mut broken = old.clone();
            broken["unacked"][0]["message"] = bad;
            assert!(serde_json::from_value::<Outbound>(broken).is_err());
        }
    }

    #[test]
    fn in_order_duplicate_gap_and_resync() {
        let mut out = Outbound::default();
        let mut inb = Inbound::new();
        let a = out.push(b"a".to_vec());
        let b = out.push(b"b".to_vec());
        assert_eq!((a, b), (1, 2));
        assert_eq!(inb.on_data(1, out.oldest()).unwrap().action, Action::Deliver);
        assert_eq!(inb.on_data(1, 1).unwrap().action, Action::Duplicate);
        let c = out.push(b"c".to_vec());
        assert_eq!(inb.on_data(c, 1).unwrap().action, Action::Gap { expected: 2, nack: true });
        // The same gap again: no second Nack.
        assert_eq!(inb.on_data(c, 1).unwrap().action, Action::Gap { expected: 2, nack: false });
        assert_eq!(out.on_ack(inb.ack()).unwrap(), 1);
        let resend: Vec<_> = out.unacked_from(2).map(|(s, _)| s).collect();
        assert_eq!(resend, vec![2, 3]);
        assert_eq!(out.on_ack(9), Err(DeliveryError::AckBeyondSent { ack: 9, last: 3 }));
        // The sender lost 2..=4; the receiver is told, then gets 5.
        let r = inb.on_data(5, 5).unwrap();
        assert_eq!(r.resync, Some(2..=4));
        assert_eq!(r.action, Action::Deliver);
        assert_eq!(inb.ack(), 5);
    }

    #[test]
    fn overflow_drops_oldest_and_says_so() {
        let mut out = Outbound::new(OutboxLimits { max_messages: 2, max_bytes: 1 << 20 });
        for m in [b"1", b"2", b"3"] {
            out.push(m.to_vec());
        }
        assert_eq!(out.oldest(), 2);
        assert_eq!(out.dropped(), 1);
    }

    #[test]
    fn room_is_what_fits_before_a_drop() {
        let mut out = Outbound::new(OutboxLimits { max_messages: 3, max_bytes: 10 });
        assert_eq!(out.room(), OutboxRoom { messages: 3, bytes: 10 });
        out.push(b"1234".to_vec());
        assert_eq!(out.room(), OutboxRoom { messages: 2, bytes: 6 });
        out.push(b"123456".to_vec());
        assert_eq!(out.room(), OutboxRoom { messages: 1, bytes: 0 });
        assert_eq!(out.dropped(), 0);
        out.on_ack(2).unwrap();
        assert_eq!(out.room(), OutboxRoom { messages: 3, bytes: 10 });
    }

    #[test]
    fn impossible_numbers_change_nothing() {
        let mut inb = Inbound::new();
        assert_eq!(inb.on_data(0, 0), Err(DeliveryError::ZeroSeq));
        assert_eq!(inb.on_data(3, 4), Err(DeliveryError::OldestAboveSeq { seq: 3, oldest: 4 }));
        assert_eq!(inb, Inbound::new());
    }

    proptest! {
        /// Any mix of loss, duplication and reconnect-resend delivers every
        /// message exactly once, in order.
        #[test]
        fn exactly_once_in_order_under_loss_and_duplication(
            n in 1u64..60,
            schedule in proptest::collection::vec((any::<bool>(), any::<bool>()), 0..400),
        ) {
            let mut out = Outbound::default();
            let mut inb = Inbound::new();
            for i in 0..n { out.push(i.to_be_bytes().to_vec()); }
            let mut delivered = Vec::new();
            let mut wire: VecDeque<(u64, Vec<u8>)> =
                out.unacked_from(0).map(|(s, m)| (s, m.to_vec())).collect();
            let mut steps = schedule.into_iter();
            let mut rounds = 0;
            while delivered.len() < n as usize {
                rounds += 1;
                prop_assert!(rounds < 10_000);
                match wire.pop_front() {
                    Some((seq, m)) => {
                        let (lose, dup) = steps.next().unwrap_or((false, false));
                        if dup { wire.push_back((seq, m.clone())); }
                        if lose { continue; }
                        let r = inb.on_data(seq, out.oldest().min(seq)).unwrap();
                        prop_assert!(r.resync.is_none());
                        if r.action == Action::Deliver { delivered.push(m); }
                        out.on_ack(inb.ack()).unwrap();
                    }
                    // Reconnect: resend everything unacknowledged.
                    None => wire.extend(out.unacked_from(0).map(|(s, m)| (s, m.to_vec()))),
                }
            }
            let expect: Vec<Vec<u8>> = (0..n).map(|i| i.to_be_bytes().to_vec()).collect();
            prop_assert_eq!(delivered, expect);
        }
    }
}
