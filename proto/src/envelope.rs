//! End-to-end envelopes: the opaque payload the relay carries in `Send`,
//! `Deliver`, `PairClaim` and `PairMessage` frames.
//!
//! Layout: `version u8 ‖ kind u8 ‖ body`. Handshake envelopes carry a Noise
//! handshake message; a record carries `session_id [8] ‖ counter u64 ‖
//! ciphertext`, and its first [`RECORD_HEADER_LEN`] bytes are the AEAD's
//! associated data, so the header cannot be altered without the record
//! failing to open.

use thiserror::Error;

use crate::codec::{CodecError, Put, Reader};

/// The envelope format version.
pub const ENVELOPE_VERSION: u8 = 1;

/// Bytes of a record's header (version, kind, session id, counter).
pub const RECORD_HEADER_LEN: usize = 18;

/// The AEAD tag length.
pub const TAG_LEN: usize = 16;

/// Noise's limit on one handshake message.
pub const MAX_NOISE_LEN: usize = 65_535;

/// Why an envelope was rejected.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Empty or shorter than its header.
    #[error("envelope shorter than its header")]
    TooShort,
    /// Not version [`ENVELOPE_VERSION`].
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    /// Unknown kind byte.
    #[error("unknown envelope kind 0x{0:02x}")]
    UnknownKind(u8),
    /// The body does not match the kind's layout.
    #[error("malformed envelope: {0}")]
    Malformed(#[from] CodecError),
}

/// One envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope {
    /// `0x01`: pairing handshake, phone → desktop (`IKpsk2` message 1).
    PairHello {
        /// The Noise message.
        noise: Vec<u8>,
    },
    /// `0x02`: pairing handshake, desktop → phone (`IKpsk2` message 2).
    PairWelcome {
        /// The Noise message.
        noise: Vec<u8>,
    },
    /// `0x03`: session handshake, initiator → responder (`KKpsk2` message 1).
    SessionInit {
        /// Random; binds message 2 to message 1 and goes into the prologue.
        handshake_id: [u8; 8],
        /// The Noise message.
        noise: Vec<u8>,
    },
    /// `0x04`: session handshake, responder → initiator (`KKpsk2` message 2).
    SessionAccept {
        /// The initiator's handshake id.
        handshake_id: [u8; 8],
        /// The Noise message.
        noise: Vec<u8>,
    },
    /// `0x05`: an encrypted record.
    Record {
        /// Which session's keys.
        session_id: [u8; 8],
        /// The explicit nonce.
        counter: u64,
        /// Ciphertext and tag.
        ciphertext: Vec<u8>,
    },
}

const PAIR_HELLO: u8 = 0x01;
const PAIR_WELCOME: u8 = 0x02;
const SESSION_INIT: u8 = 0x03;
const SESSION_ACCEPT: u8 = 0x04;
const RECORD: u8 = 0x05;

/// A record's header bytes: the associated data of its AEAD.
#[must_use]
pub fn record_header(session_id: &[u8; 8], counter: u64) -> [u8; RECORD_HEADER_LEN] {
    let mut h = [0u8; RECORD_HEADER_LEN];
    let mut v = Vec::with_capacity(RECORD_HEADER_LEN);
    v.put_u8(ENVELOPE_VERSION);
    v.put_u8(RECORD);
    v.put(session_id);
    v.put_u64(counter);
    h.copy_from_slice(&v);
    h
}

impl Envelope {
    /// Encode to bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match self {
            Envelope::PairHello { noise } => {
                b.put_u8(ENVELOPE_VERSION);
                b.put_u8(PAIR_HELLO);
                b.put(noise);
            }
            Envelope::PairWelcome { noise } => {
                b.put_u8(ENVELOPE_VERSION);
                b.put_u8(PAIR_WELCOME);
                b.put(noise);
            }
            Envelope::SessionInit { handshake_id, noise } => {
                b.put_u8(ENVELOPE_VERSION);
                b.put_u8(SESSION_INIT);
                b.put(handshake_id);
                b.put(noise);
            }
            Envelope::SessionAccept { handshake_id, noise } => {
                b.put_u8(ENVELOPE_VERSION);
                b.put_u8(SESSION_ACCEPT);
                b.put(handshake_id);
                b.put(noise);
            }
            Envelope::Record { session_id, counter, ciphertext } => {
                b.put(&record_header(session_id, *counter));
                b.put(ciphertext);
            }
        }
        b
    }

    /// Decode from bytes.
    ///
    /// # Errors
    /// Every way the bytes can be wrong is an [`EnvelopeError`].
    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("version").map_err(|_| EnvelopeError::TooShort)?;
        if version != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(version));
        }
        let kind = r.u8("kind").map_err(|_| EnvelopeError::TooShort)?;
        let noise = |r: &mut Reader<'_>| -> Result<Vec<u8>, CodecError> {
            let n = r.rest();
            if n.is_empty() {
                return Err(CodecError::Truncated("noise"));
            }
            if n.len() > MAX_NOISE_LEN {
                return Err(CodecError::TooLong {
                    field: "noise",
                    len: n.len(),
                    max: MAX_NOISE_LEN,
                });
            }
            Ok(n.to_vec())
        };
        Ok(match kind {
            PAIR_HELLO => Envelope::PairHello { noise: noise(&mut r)? },
            PAIR_WELCOME => Envelope::PairWelcome { noise: noise(&mut r)? },
            SESSION_INIT => Envelope::SessionInit {
                handshake_id: r.array("handshake_id")?,
                noise: noise(&mut r)?,
            },
            SESSION_ACCEPT => Envelope::SessionAccept {
                handshake_id: r.array("handshake_id")?,
                noise: noise(&mut r)?,
            },
            RECORD => {
                let session_id = r.array("session_id")?;
                let counter = r.u64("counter")?;
                let ciphertext = r.rest();
                if ciphertext.len() < TAG_LEN {
                    return Err(CodecError::Truncated("ciphertext").into());
                }
                Envelope::Record { session_id, counter, ciphertext: ciphertext.to_vec() }
            }
            other => return Err(EnvelopeError::UnknownKind(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects() {
        let e = Envelope::Record { session_id: [1; 8], counter: 7, ciphertext: vec![9; 16] };
        let b = e.encode();
        assert_eq!(b.get(..RECORD_HEADER_LEN), Some(&record_header(&[1; 8], 7)[..]));
        assert_eq!(Envelope::decode(&b), Ok(e));
        assert_eq!(Envelope::decode(&[]), Err(EnvelopeError::TooShort));
        assert_eq!(Envelope::decode(&[2, 1, 0]), Err(EnvelopeError::UnsupportedVersion(2)));
        assert_eq!(Envelope::decode(&[1, 9, 0]), Err(EnvelopeError::UnknownKind(9)));
        assert!(Envelope::decode(&b[..b.len() - 1]).is_err());
        assert!(Envelope::decode(&[1, 1]).is_err());
    }
}
