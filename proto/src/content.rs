//! What a record's plaintext carries: `content_type u8 ‖ body`.
//!
//! | type | name | body |
//! |---|---|---|
//! | `0x01` | Data | `seq u64 ‖ oldest u64 ‖ ack u64 ‖ message` |
//! | `0x02` | Ack | `ack u64` |
//! | `0x03` | Nack | `expected u64` |
//! | `0x10` | PairConfirm | *(empty)* |
//! | `0x11` | PairResult | `accepted u8 ‖ session_psk [32] ‖ reason str16` |
//!
//! Data, Ack and Nack belong to [`crate::delivery`]; the pairing contents are
//! valid only inside the pairing session (see [`crate::pairing`]).

use thiserror::Error;

use crate::codec::{CodecError, Put, Reader};

/// Longest refusal reason in a `PairResult`, in bytes.
pub const MAX_REASON_LEN: usize = 256;

/// Why a record's plaintext could not be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ContentError {
    /// Empty plaintext.
    #[error("empty record plaintext")]
    Empty,
    /// Unknown content type.
    #[error("unknown content type 0x{0:02x}")]
    UnknownType(u8),
    /// The body does not match the type's layout.
    #[error("malformed record content: {0}")]
    Malformed(#[from] CodecError),
}

/// A record's decoded plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// An application message with its delivery header.
    Data {
        /// This message's sequence number in its direction (from 1).
        seq: u64,
        /// The oldest sequence number the sender still holds; anything below
        /// it that the receiver lacks is gone for good (resync needed).
        oldest: u64,
        /// Cumulative acknowledgement of the other direction.
        ack: u64,
        /// The application message (see [`crate::message`]).
        message: Vec<u8>,
    },
    /// A bare cumulative acknowledgement.
    Ack {
        /// Every sequence number up to this one was received.
        ack: u64,
    },
    /// The receiver saw a gap: resend from `expected`.
    Nack {
        /// The next sequence number the receiver needs.
        expected: u64,
    },
    /// Phone → desktop after the pairing handshake: proves the phone knew the PSK.
    PairConfirm,
    /// Desktop → phone: the user's decision.
    PairResult {
        /// Whether the desktop user confirmed.
        accepted: bool,
        /// The PSK for later `KKpsk2` session handshakes (zeros when refused).
        session_psk: [u8; 32],
        /// Why it was refused, if it was.
        reason: String,
    },
}

impl Content {
    /// Encode to plaintext bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match self {
            Content::Data { seq, oldest, ack, message } => {
                b.put_u8(0x01);
                b.put_u64(*seq);
                b.put_u64(*oldest);
                b.put_u64(*ack);
                b.put(message);
            }
            Content::Ack { ack } => {
                b.put_u8(0x02);
                b.put_u64(*ack);
            }
            Content::Nack { expected } => {
                b.put_u8(0x03);
                b.put_u64(*expected);
            }
            Content::PairConfirm => b.put_u8(0x10),
            Content::PairResult { accepted, session_psk, reason } => {
                b.put_u8(0x11);
                b.put_u8(u8::from(*accepted));
                b.put(session_psk);
                let mut end = reason.len().min(MAX_REASON_LEN);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                b.put_str16(reason.get(..end).unwrap_or_default());
            }
        }
        b
    }

    /// Decode plaintext bytes.
    ///
    /// # Errors
    /// [`ContentError`] for empty, unknown or malformed content.
    pub fn decode(bytes: &[u8]) -> Result<Content, ContentError> {
        let mut r = Reader::new(bytes);
        let t = r.u8("content_type").map_err(|_| ContentError::Empty)?;
        let c = match t {
            0x01 => Content::Data {
                seq: r.u64("seq")?,
                oldest: r.u64("oldest")?,
                ack: r.u64("ack")?,
                message: r.rest().to_vec(),
            },
            0x02 => Content::Ack { ack: r.u64("ack")? },
            0x03 => Content::Nack { expected: r.u64("expected")? },
            0x10 => Content::PairConfirm,
            0x11 => Content::PairResult {
                accepted: match r.u8("accepted")? {
                    0 => false,
                    1 => true,
                    _ => return Err(CodecError::BadValue("accepted").into()),
                },
                session_psk: r.array("session_psk")?,
                reason: r.str16(MAX_REASON_LEN, "reason")?.to_owned(),
            },
            other => return Err(ContentError::UnknownType(other)),
        };
        r.finish()?;
        Ok(c)
    }
}
