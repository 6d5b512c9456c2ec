//! What a stolen copy of a stored link can open: the thief's view of a
//! phone's desktop file (`desktops/<id>.json`, the link under `link`) or an
//! agent's peer file (`peers/<id>.json`, under `peer.link`), tried against
//! records captured from the relay's traffic ([`crate::tap`]).
//!
//! Every try works on a fresh copy of the stored link, as a thief who kept
//! the file would, so one record's outcome never depends on another's.

use serde_json::Value;
use tandem_proto::DeviceKey;
use tandem_proto::entropy::Entropy;
use tandem_proto::envelope::Envelope;
use tandem_proto::link::{Link, LinkError};
use tandem_proto::record::RecordError;
use thiserror::Error;

/// Why a file is no stored link.
#[derive(Debug, Error)]
pub enum ProbeError {
    /// Not JSON.
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON without a link under `link` or `peer.link`.
    #[error("no link under `link` or `peer.link`")]
    NoLink,
}

/// What the stored link made of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It decrypted (the delivery layer may still have refused what it
    /// said, which is no protection: the plaintext was read).
    Opened,
    /// The record layer refused it: `WrongSession` (no key for that session
    /// at all), `Replay`, `Decrypt`, ….
    Refused(RecordError),
    /// Not a record, or not an envelope.
    NotARecord(String),
}

impl Verdict {
    /// A short name: `opened`, `wrong_session`, `replay`, `decrypt`,
    /// `too_far_ahead`, `not_a_record`, `other`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Opened => "opened",
            Verdict::Refused(RecordError::WrongSession) => "wrong_session",
            Verdict::Refused(RecordError::Replay(_)) => "replay",
            Verdict::Refused(RecordError::Decrypt) => "decrypt",
            Verdict::Refused(RecordError::TooFarAhead) => "too_far_ahead",
            Verdict::Refused(_) => "other",
            Verdict::NotARecord(_) => "not_a_record",
        }
    }
}

/// The session ids a stored link holds keys for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sessions {
    /// The session records are sealed under.
    pub current: [u8; 8],
    /// The one before the last switch, still kept (§10.3).
    pub previous: Option<[u8; 8]>,
    /// A responder's renewed session not yet confirmed.
    pub next: Option<[u8; 8]>,
}

impl Sessions {
    /// Whether the link holds keys for `id` at all.
    #[must_use]
    pub fn holds(&self, id: [u8; 8]) -> bool {
        self.current == id || self.previous == Some(id) || self.next == Some(id)
    }
}

/// A stored link as a file holds it.
#[derive(Debug, Clone)]
pub struct StoredLink {
    json: Value,
}

fn session_id(v: &Value) -> Option<[u8; 8]> {
    let bytes: Vec<u8> = serde_json::from_value(v.get("id")?.clone()).ok()?;
    bytes.try_into().ok()
}

impl StoredLink {
    /// The link in a phone's desktop file or an agent's peer file.
    ///
    /// # Errors
    /// [`ProbeError`] when the bytes hold no link.
    pub fn from_file(bytes: &[u8]) -> Result<StoredLink, ProbeError> {
        let v: Value = serde_json::from_slice(bytes)?;
        let json = match (v.get("link"), v.get("peer").and_then(|p| p.get("link"))) {
            (Some(l), _) | (None, Some(l)) => l.clone(),
            (None, None) => return Err(ProbeError::NoLink),
        };
        let stored = StoredLink { json };
        stored.link()?;
        Ok(stored)
    }

    /// A fresh copy of the link.
    ///
    /// # Errors
    /// [`ProbeError::Json`] when it does not deserialise.
    pub fn link(&self) -> Result<Link, ProbeError> {
        Ok(serde_json::from_value(self.json.clone())?)
    }

    /// The sessions it holds keys for.
    #[must_use]
    pub fn sessions(&self) -> Sessions {
        let get = |k: &str| self.json.get(k).and_then(session_id);
        let next = self.json.get("next").and_then(|n| n.get("session")).and_then(session_id);
        Sessions { current: get("current").unwrap_or_default(), previous: get("previous"), next }
    }

    /// The current session's sending epoch.
    #[must_use]
    pub fn send_epoch(&self) -> u64 {
        self.link().map_or(0, |l| l.send_epoch())
    }

    /// Try to open `envelope` (a record the peer sealed) with a fresh copy.
    #[must_use]
    pub fn opens(&self, envelope: &[u8]) -> Verdict {
        let Ok(mut link) = self.link() else {
            return Verdict::NotARecord("the stored link does not load".into());
        };
        // A record needs no device key to open; the thief's is any key.
        let mut entropy = Entropy::deterministic([7; 32]);
        let Ok(key) = DeviceKey::generate(&mut entropy) else {
            return Verdict::NotARecord("no key".into());
        };
        if !matches!(Envelope::decode(envelope), Ok(Envelope::Record { .. })) {
            return Verdict::NotARecord("not a record envelope".into());
        }
        match link.receive(&key, envelope, &mut entropy) {
            Ok(_) | Err(LinkError::Delivery(_) | LinkError::Content(_) | LinkError::Unexpected) => {
                Verdict::Opened
            }
            Err(LinkError::Record(e)) => Verdict::Refused(e),
            Err(e) => Verdict::NotARecord(e.to_string()),
        }
    }
}

/// The session a record envelope is sealed under, if it is one.
#[must_use]
pub fn record_session(envelope: &[u8]) -> Option<[u8; 8]> {
    match Envelope::decode(envelope) {
        Ok(Envelope::Record { session_id, .. }) => Some(session_id),
        _ => None,
    }
}

/// Lower-case hex.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}
