//! What nodes tell each other over Redis pub/sub: one binary message per
//! publish, on the recipient node's channel (or on the channel all nodes
//! hear, for route changes).
//!
//! Layout: a kind byte, then the kind's fields (devices and pairing ids as
//! their 16 raw bytes):
//! * `1` a frame for a device on that node: device, then the relay frame as
//!   it goes on the wire (`Deliver`, `Presence`, `PairMessage`);
//! * `2` ownership moved: device, then the new fence token in ASCII decimal
//!   (the claim script appends it);
//! * `3` a mailbox was claimed: pairing id, claimer, then the claim's payload;
//! * `4` a route changed: the two devices;
//! * `5` a stored frame for a device on that node: device, the store epoch
//!   its delivery id was taken under (8 bytes, big-endian), then the
//!   `Deliver` as it goes on the wire.

use tandem_proto::DeviceId;
use tandem_proto::frame::Frame;
use thiserror::Error;

const FRAME: u8 = 1;
const REPLACED: u8 = 2;
const CLAIMED: u8 = 3;
const ROUTES: u8 = 4;
const DELIVER: u8 = 5;

/// A message from another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    /// A frame for `to`, if it is connected here.
    Frame { to: DeviceId, frame: Frame },
    /// A stored frame for `to` (a `Deliver`) whose id was taken under
    /// store epoch `epoch`: dropped unless this node's store has that epoch.
    Deliver { to: DeviceId, epoch: u64, frame: Frame },
    /// `device` connected elsewhere with this fence: a connection here with
    /// a lower one is replaced.
    Replaced { device: DeviceId, fence: u64 },
    /// `claimer` claimed mailbox `pairing_id` (opened by a desktop here)
    /// with `payload`.
    Claimed { pairing_id: [u8; 16], claimer: DeviceId, payload: Vec<u8> },
    /// The route between `a` and `b` changed.
    Routes { a: DeviceId, b: DeviceId },
}

/// Why a message could not be read (a node of another version, or garbage
/// on the channel: it is dropped and counted, never acted on).
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum MessageError {
    /// Shorter than its kind's fields.
    #[error("truncated cluster message")]
    Truncated,
    /// A kind this node does not know.
    #[error("unknown cluster message kind {0}")]
    UnknownKind(u8),
    /// The frame inside does not decode.
    #[error("bad frame in a cluster message: {0}")]
    Frame(String),
    /// The fence is not a number.
    #[error("bad fence in a cluster message")]
    Fence,
}

/// The 16 bytes at the start of `b`, and the rest.
fn take16(b: &[u8]) -> Result<([u8; 16], &[u8]), MessageError> {
    let (head, rest) = b.split_at_checked(16).ok_or(MessageError::Truncated)?;
    let head = <[u8; 16]>::try_from(head).map_err(|_| MessageError::Truncated)?;
    Ok((head, rest))
}

impl Message {
    /// The bytes of a frame for `to` (the frame encoded as on the wire).
    pub(crate) fn frame(to: DeviceId, frame: &[u8]) -> Vec<u8> {
        let mut b = Vec::with_capacity(17 + frame.len());
        b.push(FRAME);
        b.extend_from_slice(&to.0);
        b.extend_from_slice(frame);
        b
    }

    /// The bytes of a stored frame for `to`, its id taken under `epoch`.
    pub(crate) fn deliver(to: DeviceId, epoch: u64, frame: &[u8]) -> Vec<u8> {
        let mut b = Vec::with_capacity(25 + frame.len());
        b.push(DELIVER);
        b.extend_from_slice(&to.0);
        b.extend_from_slice(&epoch.to_be_bytes());
        b.extend_from_slice(frame);
        b
    }

    /// The start of a `Replaced` message; the claim script appends the fence.
    pub(crate) fn replaced_prefix(device: DeviceId) -> Vec<u8> {
        let mut b = Vec::with_capacity(17 + 20);
        b.push(REPLACED);
        b.extend_from_slice(&device.0);
        b
    }

    /// The bytes of a `Claimed` message.
    pub(crate) fn claimed(pairing_id: [u8; 16], claimer: DeviceId, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::with_capacity(33 + payload.len());
        b.push(CLAIMED);
        b.extend_from_slice(&pairing_id);
        b.extend_from_slice(&claimer.0);
        b.extend_from_slice(payload);
        b
    }

    /// The bytes of a `Routes` message.
    pub(crate) fn routes(a: DeviceId, b: DeviceId) -> Vec<u8> {
        let mut v = Vec::with_capacity(33);
        v.push(ROUTES);
        v.extend_from_slice(&a.0);
        v.extend_from_slice(&b.0);
        v
    }

    /// Read a message.
    pub(crate) fn decode(b: &[u8]) -> Result<Self, MessageError> {
        let (&kind, rest) = b.split_first().ok_or(MessageError::Truncated)?;
        match kind {
            FRAME => {
                let (to, frame) = take16(rest)?;
                let frame = Frame::decode(frame).map_err(|e| MessageError::Frame(e.to_string()))?;
                Ok(Message::Frame { to: DeviceId(to), frame })
            }
            DELIVER => {
                let (to, rest) = take16(rest)?;
                let (epoch, frame) = rest.split_at_checked(8).ok_or(MessageError::Truncated)?;
                let epoch = u64::from_be_bytes(
                    <[u8; 8]>::try_from(epoch).map_err(|_| MessageError::Truncated)?,
                );
                let frame = Frame::decode(frame).map_err(|e| MessageError::Frame(e.to_string()))?;
                Ok(Message::Deliver { to: DeviceId(to), epoch, frame })
            }
            REPLACED => {
                let (device, fence) = take16(rest)?;
                let fence = std::str::from_utf8(fence)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(MessageError::Fence)?;
                Ok(Message::Replaced { device: DeviceId(device), fence })
            }
            CLAIMED => {
                let (pairing_id, rest) = take16(rest)?;
                let (claimer, payload) = take16(rest)?;
                Ok(Message::Claimed {
                    pairing_id,
                    claimer: DeviceId(claimer),
                    payload: payload.to_vec(),
                })
            }
            ROUTES => {
                let (a, rest) = take16(rest)?;
                let (b, rest) = take16(rest)?;
                if !rest.is_empty() {
                    return Err(MessageError::Truncated);
                }
                Ok(Message::Routes { a: DeviceId(a), b: DeviceId(b) })
            }
            k => Err(MessageError::UnknownKind(k)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_and_garbage_is_refused() {
        let (a, b) = (DeviceId([1; 16]), DeviceId([2; 16]));
        let f = Frame::Presence { peer: b, online: true };
        let bytes = Message::frame(a, &f.encode().unwrap());
        assert_eq!(Message::decode(&bytes), Ok(Message::Frame { to: a, frame: f }));
        let mut r = Message::replaced_prefix(a);
        r.extend_from_slice(b"42");
        assert_eq!(Message::decode(&r), Ok(Message::Replaced { device: a, fence: 42 }));
        let c = Message::claimed([9; 16], b, b"hello");
        assert_eq!(
            Message::decode(&c),
            Ok(Message::Claimed { pairing_id: [9; 16], claimer: b, payload: b"hello".to_vec() })
        );
        assert_eq!(Message::decode(&Message::routes(a, b)), Ok(Message::Routes { a, b }));
        let d = Frame::Deliver { delivery_id: 7, from: b, payload: vec![1, 2] };
        let dm = Message::deliver(a, 99, &d.encode().unwrap());
        assert_eq!(Message::decode(&dm), Ok(Message::Deliver { to: a, epoch: 99, frame: d }));
        // Every prefix of every kind is refused, never a panic.
        for m in [bytes, r, c, Message::routes(a, b), dm] {
            for n in 0..m.len() {
                let _ = Message::decode(&m[..n]);
            }
        }
        assert_eq!(Message::decode(&[]), Err(MessageError::Truncated));
        assert_eq!(Message::decode(&[99]), Err(MessageError::UnknownKind(99)));
        assert_eq!(Message::decode(&Message::replaced_prefix(a)), Err(MessageError::Fence));
    }
}
