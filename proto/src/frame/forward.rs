//! The relay's forwarding path without copies of the payload: a `Send`'s
//! header read in place (its payload stays in the received buffer), and a
//! `Deliver` encoded straight from a borrowed payload. Both agree byte for
//! byte with [`Frame::decode`] and [`Frame::encode`].
//!
//! [`Frame::decode`]: super::Frame::decode
//! [`Frame::encode`]: super::Frame::encode

use super::{FrameError, FrameType, MAX_FRAME_LEN, MAX_PAYLOAD_LEN, VERSION};
use crate::identity::DeviceId;

/// Bytes before the payload of a `Send` (`version ‖ type ‖ send_id u64 ‖
/// to [16]`) and of a `Deliver` (`version ‖ type ‖ delivery_id u64 ‖
/// from [16]`): the same length, so one frame becomes the other by
/// rewriting its header.
pub const FORWARD_HEADER_LEN: usize = 2 + 8 + 16;

/// A `Send` frame's header; its payload is the frame's bytes from
/// [`FORWARD_HEADER_LEN`] on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendHeader {
    /// The sender's id for the frame, echoed in the relay's answer.
    pub send_id: u64,
    /// The recipient.
    pub to: DeviceId,
}

/// The header of `bytes` if they are a `Send` frame that
/// [`Frame::decode`](super::Frame::decode) accepts; `None` for anything
/// else (decode those for the frame, or for the precise error).
#[must_use]
pub fn peek_send(bytes: &[u8]) -> Option<SendHeader> {
    if bytes.len() > MAX_FRAME_LEN {
        return None;
    }
    let (header, payload) = bytes.split_first_chunk::<FORWARD_HEADER_LEN>()?;
    if payload.len() > MAX_PAYLOAD_LEN || header[0] != VERSION || header[1] != FrameType::Send as u8
    {
        return None;
    }
    let (id, to) = header[2..].split_at(8);
    let send_id = u64::from_be_bytes(id.try_into().ok()?);
    Some(SendHeader { send_id, to: DeviceId(to.try_into().ok()?) })
}

/// Encode `Deliver { delivery_id, from, payload }`, the same bytes as
/// [`Frame::encode`](super::Frame::encode) gives, with one copy of `payload`.
///
/// # Errors
/// [`FrameError::TooLarge`] for a payload over [`MAX_PAYLOAD_LEN`].
pub fn encode_deliver(
    delivery_id: u64,
    from: &DeviceId,
    payload: &[u8],
) -> Result<Vec<u8>, FrameError> {
    if payload.len() > MAX_PAYLOAD_LEN {
        return Err(FrameError::TooLarge(FORWARD_HEADER_LEN + payload.len()));
    }
    let mut b = Vec::with_capacity(FORWARD_HEADER_LEN + payload.len());
    b.push(VERSION);
    b.push(FrameType::Deliver as u8);
    b.extend_from_slice(&delivery_id.to_be_bytes());
    b.extend_from_slice(&from.0);
    b.extend_from_slice(payload);
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::super::Frame;
    use super::*;

    fn send(len: usize) -> Vec<u8> {
        Frame::Send { send_id: 0x0102_0304_0506_0708, to: DeviceId([9; 16]), payload: vec![7; len] }
            .encode()
            .unwrap()
    }

    #[test]
    fn a_send_is_read_in_place_as_decode_reads_it() {
        for len in [0, 1, 64, 1024, MAX_PAYLOAD_LEN - 8] {
            let b = send(len);
            let h = peek_send(&b).unwrap();
            let Frame::Send { send_id, to, payload } = Frame::decode(&b).unwrap() else {
                panic!("not a send")
            };
            assert_eq!((h.send_id, h.to), (send_id, to));
            assert_eq!(&b[FORWARD_HEADER_LEN..], &payload[..]);
        }
    }

    #[test]
    fn peek_accepts_nothing_decode_refuses() {
        let ok = send(10);
        let mut cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![VERSION],
            ok[..FORWARD_HEADER_LEN - 1].to_vec(),
            vec![0u8; MAX_FRAME_LEN + 1],
        ];
        let mut bad_version = ok.clone();
        bad_version[0] = VERSION + 1;
        cases.push(bad_version);
        let mut deliver = ok.clone();
        deliver[1] = FrameType::Deliver as u8;
        cases.push(deliver);
        let mut too_long = send(0);
        too_long.resize(MAX_FRAME_LEN + 1, 0);
        cases.push(too_long);
        for c in &cases {
            assert_eq!(peek_send(c), None, "{:?}", &c[..c.len().min(4)]);
        }
        // Every prefix and every first-byte value agree with decode.
        for n in 0..ok.len() {
            assert_eq!(peek_send(&ok[..n]).is_some(), Frame::decode(&ok[..n]).is_ok());
        }
        for t in 0..=255u8 {
            let mut b = ok.clone();
            b[1] = t;
            let decoded_send = matches!(Frame::decode(&b), Ok(Frame::Send { .. }));
            assert_eq!(peek_send(&b).is_some(), decoded_send, "type {t:#x}");
        }
    }

    #[test]
    fn deliver_is_encoded_as_frame_encodes_it() {
        for len in [0, 5, 4096, MAX_PAYLOAD_LEN] {
            let payload = vec![3u8; len];
            let from = DeviceId([4; 16]);
            let want = Frame::Deliver { delivery_id: 77, from, payload: payload.clone() }.encode();
            assert_eq!(encode_deliver(77, &from, &payload).ok(), want.ok());
        }
        let over = vec![0u8; MAX_PAYLOAD_LEN + 1];
        assert!(matches!(
            encode_deliver(1, &DeviceId([0; 16]), &over),
            Err(FrameError::TooLarge(_))
        ));
    }
}
