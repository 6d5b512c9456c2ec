//! Session handshakes between paired devices: `Noise_KKpsk2` with both static
//! keys pinned at pairing and the session PSK agreed at pairing.
//!
//! Either side may start one whenever it wants fresh keys (post-compromise
//! security): typically when a peer comes back online, and before a session's
//! counters run out. The initiator's payload is a timestamp in milliseconds
//! that must be newer than the last one accepted from that peer (WireGuard's
//! guard against a replayed first message; the relay's queue makes replays
//! easy). If both sides start at once, [`wins_collision`] says whose
//! handshake survives; the other side drops its own.
//!
//! Until a new session completes, both sides keep using their current one:
//! renewal never blocks sending.

use thiserror::Error;
use zeroize::Zeroizing;

use crate::crypto::SESSION_NOISE;
use crate::crypto::noise::{self, HandshakeSpec, Side};
use crate::entropy::{Entropy, EntropyError};
use crate::envelope::Envelope;
use crate::identity::{DeviceId, DeviceKey, PublicKey};
use crate::kdf::label;
use crate::record::Session;

/// Why a session handshake failed. A failure leaves existing sessions intact.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// The Noise handshake failed (wrong keys, wrong PSK, tampered message).
    #[error("session handshake failed: {0}")]
    Handshake(String),
    /// The initiator's timestamp is not newer than the last accepted one: a replay.
    #[error("stale session init (timestamp {got} ≤ last accepted {last})")]
    Stale {
        /// The timestamp in the message.
        got: u64,
        /// The last accepted timestamp.
        last: u64,
    },
    /// The envelope is not the expected handshake message.
    #[error("unexpected envelope for this handshake step")]
    UnexpectedEnvelope,
    /// The accept answers a different init.
    #[error("session accept for another handshake")]
    HandshakeIdMismatch,
    /// The initiator's payload is not an 8-byte timestamp.
    #[error("malformed session init payload")]
    BadPayload,
    /// No randomness.
    #[error(transparent)]
    Entropy(#[from] EntropyError),
}

fn hs_err(e: snow::Error) -> SessionError {
    SessionError::Handshake(e.to_string())
}

/// What both sides need for a session handshake with one peer.
#[derive(Debug, Clone, Copy)]
pub struct PeerSecrets<'a> {
    /// This device's key.
    pub local: &'a DeviceKey,
    /// The peer's pinned public key.
    pub remote: &'a PublicKey,
    /// The session PSK agreed at pairing.
    pub psk: &'a [u8; 32],
}

fn prologue(initiator: &DeviceId, responder: &DeviceId, handshake_id: &[u8; 8]) -> Vec<u8> {
    let mut p = label::SESSION_PROLOGUE.as_bytes().to_vec();
    p.extend_from_slice(&initiator.0);
    p.extend_from_slice(&responder.0);
    p.extend_from_slice(handshake_id);
    p
}

/// The initiator's state between message 1 and message 2.
pub struct SessionInitiator {
    hs: snow::HandshakeState,
    handshake_id: [u8; 8],
}

impl std::fmt::Debug for SessionInitiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionInitiator").field("handshake_id", &self.handshake_id).finish()
    }
}

impl SessionInitiator {
    /// Start a handshake; returns the state and the `SessionInit` envelope to send.
    ///
    /// # Errors
    /// [`SessionError`] if snow refuses the keys or randomness fails.
    pub fn start(
        peer: PeerSecrets<'_>,
        now_ms: u64,
        entropy: &mut Entropy,
    ) -> Result<(Self, Vec<u8>), SessionError> {
        let handshake_id = entropy.array8()?;
        let local_private = Zeroizing::new(peer.local.to_bytes());
        let prologue =
            prologue(&peer.local.public().device_id(), &peer.remote.device_id(), &handshake_id);
        let mut hs = noise::build(
            &HandshakeSpec {
                pattern: SESSION_NOISE,
                side: Side::Initiator,
                local_private: &local_private,
                remote_public: Some(&peer.remote.0),
                psk: peer.psk,
                prologue: &prologue,
            },
            entropy.clone(),
        )
        .map_err(hs_err)?;
        // Keep the caller's stream moving past what snow drew for the ephemeral.
        entropy.array32()?;
        let msg = noise::write(&mut hs, &now_ms.to_be_bytes()).map_err(hs_err)?;
        Ok((Self { hs, handshake_id }, Envelope::SessionInit { handshake_id, noise: msg }.encode()))
    }

    /// This handshake's id.
    #[must_use]
    pub fn handshake_id(&self) -> [u8; 8] {
        self.handshake_id
    }

    /// Finish with the responder's `SessionAccept`.
    ///
    /// # Errors
    /// [`SessionError`] for the wrong envelope, another handshake's accept, or
    /// a message that does not authenticate. On error this state is consumed;
    /// the caller keeps its current session and may start again.
    pub fn finish(mut self, envelope: &Envelope) -> Result<Session, SessionError> {
        let Envelope::SessionAccept { handshake_id, noise } = envelope else {
            return Err(SessionError::UnexpectedEnvelope);
        };
        if *handshake_id != self.handshake_id {
            return Err(SessionError::HandshakeIdMismatch);
        }
        noise::read(&mut self.hs, noise).map_err(hs_err)?;
        Ok(noise::into_session(self.hs, Side::Initiator))
    }
}

/// Answer a `SessionInit`. `last_timestamp_ms` is the newest initiator
/// timestamp accepted from this peer so far (0 if none); on success the
/// caller stores the returned timestamp in its place.
///
/// # Errors
/// [`SessionError`] for a tampered or mis-keyed message or a stale timestamp.
pub fn respond(
    peer: PeerSecrets<'_>,
    envelope: &Envelope,
    last_timestamp_ms: u64,
    entropy: &mut Entropy,
) -> Result<(Session, Vec<u8>, u64), SessionError> {
    let Envelope::SessionInit { handshake_id, noise } = envelope else {
        return Err(SessionError::UnexpectedEnvelope);
    };
    let local_private = Zeroizing::new(peer.local.to_bytes());
    let prologue =
        prologue(&peer.remote.device_id(), &peer.local.public().device_id(), handshake_id);
    let mut hs = noise::build(
        &HandshakeSpec {
            pattern: SESSION_NOISE,
            side: Side::Responder,
            local_private: &local_private,
            remote_public: Some(&peer.remote.0),
            psk: peer.psk,
            prologue: &prologue,
        },
        entropy.clone(),
    )
    .map_err(hs_err)?;
    entropy.array32()?;
    let payload = noise::read(&mut hs, noise).map_err(hs_err)?;
    let ts: [u8; 8] = payload.as_slice().try_into().map_err(|_| SessionError::BadPayload)?;
    let ts = u64::from_be_bytes(ts);
    if ts <= last_timestamp_ms {
        return Err(SessionError::Stale { got: ts, last: last_timestamp_ms });
    }
    let msg = noise::write(&mut hs, &[]).map_err(hs_err)?;
    let session = noise::into_session(hs, Side::Responder);
    Ok((session, Envelope::SessionAccept { handshake_id: *handshake_id, noise: msg }.encode(), ts))
}

/// When both devices send a `SessionInit` at once, the one from the device
/// with the smaller id wins: that device ignores the other's init, and the
/// other device abandons its own and answers.
#[must_use]
pub fn wins_collision(local: &DeviceId, remote: &DeviceId) -> bool {
    local < remote
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (DeviceKey, DeviceKey, [u8; 32]) {
        (DeviceKey::from_bytes([1; 32]), DeviceKey::from_bytes([2; 32]), [7; 32])
    }

    #[test]
    fn handshake_yields_matching_sessions() {
        let (a, b, psk) = keys();
        let (ap, bp) = (a.public(), b.public());
        let mut e = Entropy::deterministic([5; 32]);
        let (init, m1) = SessionInitiator::start(
            PeerSecrets { local: &a, remote: &bp, psk: &psk },
            1000,
            &mut e,
        )
        .unwrap();
        let (mut sb, m2, ts) = respond(
            PeerSecrets { local: &b, remote: &ap, psk: &psk },
            &Envelope::decode(&m1).unwrap(),
            999,
            &mut e,
        )
        .unwrap();
        assert_eq!(ts, 1000);
        let mut sa = init.finish(&Envelope::decode(&m2).unwrap()).unwrap();
        assert_eq!(sa.id(), sb.id());
        let r = sa.seal(b"ping").unwrap();
        assert_eq!(sb.open(&Envelope::decode(&r).unwrap()).unwrap(), b"ping");
        let r = sb.seal(b"pong").unwrap();
        assert_eq!(sa.open(&Envelope::decode(&r).unwrap()).unwrap(), b"pong");
    }

    #[test]
    fn replayed_init_wrong_psk_and_wrong_key_fail() {
        let (a, b, psk) = keys();
        let (ap, bp) = (a.public(), b.public());
        let mut e = Entropy::deterministic([5; 32]);
        let (_, m1) = SessionInitiator::start(
            PeerSecrets { local: &a, remote: &bp, psk: &psk },
            1000,
            &mut e,
        )
        .unwrap();
        let m1 = Envelope::decode(&m1).unwrap();
        assert_eq!(
            respond(PeerSecrets { local: &b, remote: &ap, psk: &psk }, &m1, 1000, &mut e).err(),
            Some(SessionError::Stale { got: 1000, last: 1000 })
        );
        // KKpsk2 mixes the PSK into message 2: a responder with the wrong PSK
        // answers, and the initiator refuses the answer.
        let (init, m1b) = SessionInitiator::start(
            PeerSecrets { local: &a, remote: &bp, psk: &psk },
            2000,
            &mut e,
        )
        .unwrap();
        let (_, m2, _) = respond(
            PeerSecrets { local: &b, remote: &ap, psk: &[8; 32] },
            &Envelope::decode(&m1b).unwrap(),
            0,
            &mut e,
        )
        .unwrap();
        assert!(matches!(
            init.finish(&Envelope::decode(&m2).unwrap()),
            Err(SessionError::Handshake(_))
        ));
        let mallory = DeviceKey::from_bytes([3; 32]).public();
        assert!(matches!(
            respond(PeerSecrets { local: &b, remote: &mallory, psk: &psk }, &m1, 0, &mut e),
            Err(SessionError::Handshake(_))
        ));
    }

    #[test]
    fn collision_rule_is_antisymmetric() {
        let (a, b, _) = keys();
        let (x, y) = (a.public().device_id(), b.public().device_id());
        assert_ne!(wins_collision(&x, &y), wins_collision(&y, &x));
    }
}
