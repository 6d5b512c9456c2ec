//! Relay authentication: a device proves to the relay that it holds the
//! secret key behind the public key it claims, without signatures.
//!
//! The relay sends a fresh ephemeral X25519 key `E` and a random nonce `N`
//! (`Challenge`). The device answers (`Auth`) with its public key `P` and
//!
//! ```text
//! k     = mac(X25519(device secret, E), "tandem relay auth key v1", [])
//! proof = mac(k, "tandem relay auth v1", [version, role, N, E, P])
//! ```
//!
//! The relay recomputes `k` from `X25519(e, P)`. Only the holder of the
//! device secret (or of `e`, which never leaves the relay's memory and dies
//! with the connection) can produce the proof; a captured proof is useless
//! on any other connection because `E` and `N` are fresh each time.

use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::entropy::{Entropy, EntropyError};
use crate::frame::{Frame, VERSION};
use crate::identity::{DeviceId, DeviceKey, PublicKey, Role};
use crate::kdf::{label, mac};

/// Why authentication failed.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum RelayAuthError {
    /// The proof does not match (wrong key, replayed challenge, tampered frame).
    #[error("the authentication proof does not match")]
    BadProof,
    /// The public key is a low-order point.
    #[error("the public key is not usable (low-order point)")]
    BadKey,
}

/// The relay's side of one connection's challenge.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct RelayChallenge {
    secret: [u8; 32],
    #[zeroize(skip)]
    public: PublicKey,
    nonce: [u8; 32],
}

impl std::fmt::Debug for RelayChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayChallenge").field("public", &self.public).finish_non_exhaustive()
    }
}

impl RelayChallenge {
    /// A fresh challenge.
    ///
    /// # Errors
    /// [`EntropyError`] when the random source fails.
    pub fn new(entropy: &mut Entropy) -> Result<Self, EntropyError> {
        let secret = entropy.array32()?;
        let nonce = entropy.array32()?;
        let public = DeviceKey::from_bytes(secret).public();
        Ok(Self { secret, public, nonce })
    }

    /// The `Challenge` frame to send.
    #[must_use]
    pub fn frame(&self) -> Frame {
        Frame::Challenge { relay_ephemeral: self.public, nonce: self.nonce }
    }

    /// Check a device's `Auth`. Returns the device id it proved.
    ///
    /// # Errors
    /// [`RelayAuthError`] when the proof is wrong or the key unusable.
    pub fn verify(
        &self,
        role: Role,
        public_key: &PublicKey,
        proof: &[u8; 32],
    ) -> Result<DeviceId, RelayAuthError> {
        let eph = DeviceKey::from_bytes(self.secret);
        let mut shared = eph.diffie_hellman(public_key).ok_or(RelayAuthError::BadKey)?;
        let expected = compute_proof(&shared, role, &self.nonce, &self.public, public_key);
        shared.zeroize();
        if bool::from(expected.ct_eq(proof)) {
            Ok(public_key.device_id())
        } else {
            Err(RelayAuthError::BadProof)
        }
    }
}

/// The device's answer to a challenge.
///
/// # Errors
/// [`RelayAuthError::BadKey`] when the relay's ephemeral key is a low-order point.
pub fn prove(
    key: &DeviceKey,
    role: Role,
    relay_ephemeral: &PublicKey,
    nonce: &[u8; 32],
) -> Result<Frame, RelayAuthError> {
    let mut shared = key.diffie_hellman(relay_ephemeral).ok_or(RelayAuthError::BadKey)?;
    let public_key = key.public();
    let proof = compute_proof(&shared, role, nonce, relay_ephemeral, &public_key);
    shared.zeroize();
    Ok(Frame::Auth { public_key, proof })
}

fn compute_proof(
    shared: &[u8; 32],
    role: Role,
    nonce: &[u8; 32],
    relay_ephemeral: &PublicKey,
    device: &PublicKey,
) -> [u8; 32] {
    let mut k = mac(shared, label::RELAY_AUTH_KEY, &[]);
    let proof = mac(
        &k,
        label::RELAY_AUTH,
        &[&[VERSION, role.to_byte()], nonce, &relay_ephemeral.0, &device.0],
    );
    k.zeroize();
    proof
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(key: &DeviceKey, role: Role, ch: &RelayChallenge) -> (PublicKey, [u8; 32]) {
        let Frame::Challenge { relay_ephemeral, nonce } = ch.frame() else { panic!() };
        let Frame::Auth { public_key, proof } = prove(key, role, &relay_ephemeral, &nonce).unwrap()
        else {
            panic!()
        };
        (public_key, proof)
    }

    #[test]
    fn good_key_passes_wrong_key_replay_and_role_swap_fail() {
        let mut e = Entropy::deterministic([1; 32]);
        let key = DeviceKey::generate(&mut e).unwrap();
        let ch = RelayChallenge::new(&mut e).unwrap();
        let (pk, proof) = auth(&key, Role::Phone, &ch);
        assert_eq!(ch.verify(Role::Phone, &pk, &proof), Ok(key.public().device_id()));
        // The same proof under a role it was not made for.
        assert_eq!(ch.verify(Role::Desktop, &pk, &proof), Err(RelayAuthError::BadProof));
        // Claiming someone else's key with our proof.
        let other = DeviceKey::generate(&mut e).unwrap();
        assert_eq!(ch.verify(Role::Phone, &other.public(), &proof), Err(RelayAuthError::BadProof));
        // Replaying a proof against a new challenge.
        let ch2 = RelayChallenge::new(&mut e).unwrap();
        assert_eq!(ch2.verify(Role::Phone, &pk, &proof), Err(RelayAuthError::BadProof));
        // A low-order key.
        assert_eq!(
            ch.verify(Role::Phone, &PublicKey([0; 32]), &proof),
            Err(RelayAuthError::BadKey)
        );
    }
}
