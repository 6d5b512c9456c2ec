//! Small helpers around snow shared by the pairing and session handshakes.

use snow::{Builder, HandshakeState};

use crate::crypto::TandemResolver;
use crate::entropy::Entropy;
use crate::envelope::MAX_NOISE_LEN;
use crate::kdf::{hash, label};
use crate::record::Session;

/// Which side of a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Initiator,
    Responder,
}

/// Keys and pins for building one handshake.
pub(crate) struct HandshakeSpec<'a> {
    pub(crate) pattern: &'static str,
    pub(crate) side: Side,
    pub(crate) local_private: &'a [u8; 32],
    pub(crate) remote_public: Option<&'a [u8; 32]>,
    pub(crate) psk: &'a [u8; 32],
    pub(crate) prologue: &'a [u8],
}

/// Build a handshake state over Tandem's resolver. The PSK sits at position 2
/// for both `IKpsk2` and `KKpsk2`.
pub(crate) fn build(
    spec: &HandshakeSpec<'_>,
    entropy: Entropy,
) -> Result<HandshakeState, snow::Error> {
    let params = spec.pattern.parse()?;
    let mut b = Builder::with_resolver(params, Box::new(TandemResolver::new(entropy)))
        .local_private_key(spec.local_private)?
        .psk(2, spec.psk)?
        .prologue(spec.prologue)?;
    if let Some(r) = spec.remote_public {
        b = b.remote_public_key(r)?;
    }
    match spec.side {
        Side::Initiator => b.build_initiator(),
        Side::Responder => b.build_responder(),
    }
}

/// Write one handshake message.
pub(crate) fn write(hs: &mut HandshakeState, payload: &[u8]) -> Result<Vec<u8>, snow::Error> {
    let mut buf = vec![0u8; MAX_NOISE_LEN];
    let n = hs.write_message(payload, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// Read one handshake message, returning its payload.
pub(crate) fn read(hs: &mut HandshakeState, message: &[u8]) -> Result<Vec<u8>, snow::Error> {
    let mut buf = vec![0u8; MAX_NOISE_LEN];
    let n = hs.read_message(message, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// The handshake hash as a fixed array (BLAKE2s: 32 bytes).
pub(crate) fn handshake_hash(hs: &HandshakeState) -> [u8; 32] {
    let mut h = [0u8; 32];
    if let Some(src) = hs.get_handshake_hash().get(..32) {
        h.copy_from_slice(src);
    }
    h
}

/// Turn a finished handshake into a record-layer [`Session`]. The session id
/// is derived from the handshake hash, so both sides agree on it.
pub(crate) fn into_session(mut hs: HandshakeState, side: Side) -> Session {
    let hh = handshake_hash(&hs);
    let mut id = [0u8; 8];
    id.copy_from_slice(hash(label::SESSION_ID, &[&hh]).get(..8).unwrap_or(&[0; 8]));
    let (k1, k2) = hs.dangerously_get_raw_split();
    match side {
        Side::Initiator => Session::new(id, k1, k2),
        Side::Responder => Session::new(id, k2, k1),
    }
}
