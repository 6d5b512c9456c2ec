//! What the simulated devices send: numbered, time-stamped messages, and the
//! byte sizes the baselines copy so that they carry exactly what the relay
//! carries, without the crypto.
//!
//! A benchmark message is `seq u64 ‖ sent_ns u64 ‖ padding` (big endian):
//! its number in its pair's stream (from 1) and when it was handed to the
//! target, in nanoseconds since the run's clock started. On the tandem target
//! it is the plaintext of a `Link` record; on the baselines it travels in a
//! plain frame padded to the size of the relay frame that would carry it.

use std::time::Instant;

use tandem_proto::frame::Frame;

use crate::error::{BenchError, Result};

/// Bytes of the message header (number and timestamp); the smallest payload.
pub const HEADER_LEN: usize = 16;

/// Build message `seq` of `len` bytes (at least [`HEADER_LEN`]).
#[must_use]
pub fn message(seq: u64, sent_ns: u64, len: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(len.max(HEADER_LEN));
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&sent_ns.to_be_bytes());
    m.resize(len.max(HEADER_LEN), 0x5a);
    m
}

/// The number and timestamp of a message.
#[must_use]
pub fn parse(message: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_be_bytes(message.get(..8)?.try_into().ok()?);
    let sent = u64::from_be_bytes(message.get(8..16)?.try_into().ok()?);
    Some((seq, sent))
}

/// The run's clock: timestamps in messages count from its start, so that
/// sender and receiver (in the same process) agree.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// A clock starting now.
    #[must_use]
    pub fn start() -> Self {
        Self(Instant::now())
    }

    /// Nanoseconds since the start.
    #[must_use]
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Nanoseconds from the start to `at`.
    #[must_use]
    pub fn ns_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.0).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The sizes of what the relay carries, measured once with a real `Link`
/// pair in memory: a `Send` frame with a data record around a message, and
/// one with a bare acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct WireSizes {
    /// `Send` frame length minus message length for a data record.
    pub data_overhead: usize,
    /// `Send` frame length of an acknowledgement record.
    pub ack_frame: usize,
}

impl WireSizes {
    /// Seal a message and an ack with a freshly paired `Link` and frame them.
    ///
    /// # Errors
    /// [`BenchError::Pairing`] or [`BenchError::Protocol`] if the in-memory
    /// pairing or sealing fails (it does not).
    pub fn measure() -> Result<Self> {
        let ((_, mut desktop), _) = crate::pairing::pair_in_memory()?;
        let frame_len = |payload: Vec<u8>| -> Result<usize> {
            let frame = Frame::Send { send_id: 1, to: tandem_proto::DeviceId([0; 16]), payload };
            Ok(frame.encode().map_err(|e| BenchError::Protocol(e.to_string()))?.len())
        };
        let msg_len = 64;
        let (_, record) = desktop
            .send(message(1, 0, msg_len))
            .map_err(|e| BenchError::Protocol(e.to_string()))?;
        let data = frame_len(record)?;
        let ack = desktop.ack().map_err(|e| BenchError::Protocol(e.to_string()))?;
        Ok(Self { data_overhead: data.saturating_sub(msg_len), ack_frame: frame_len(ack)? })
    }

    /// The frame length that carries a message of `len` bytes.
    #[must_use]
    pub fn data_frame(&self, len: usize) -> usize {
        len + self.data_overhead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_sizes_are_linear() {
        let m = message(7, 99, 64);
        assert_eq!(m.len(), 64);
        assert_eq!(parse(&m), Some((7, 99)));
        assert_eq!(message(1, 2, 3).len(), HEADER_LEN);
        assert_eq!(parse(&[0; 15]), None);

        let sizes = WireSizes::measure().unwrap();
        let ((_, mut link), _) = crate::pairing::pair_in_memory().unwrap();
        for len in [16, 1024, 16 * 1024] {
            let (_, record) = link.send(message(1, 0, len)).unwrap();
            assert_eq!(record.len() + 26, sizes.data_frame(len), "{len}");
        }
        assert!(sizes.ack_frame > 26);
    }
}
