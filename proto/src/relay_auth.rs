//! Relay authentication: a device proves to the relay that it holds the
//! secret key behind the public key it claims, without signatures.
//!
//! The relay sends a fresh ephemeral X25519 key `E`, a random nonce `N` and
//! its name `R` — the `Host` the device's WebSocket request named
//! (`Challenge`). The device checks that `R` is the `host[:port]` it dialed,
//! then answers (`Auth`) with its public key `P` and
//!
//! ```text
//! k     = mac(X25519(device secret, E), "tandem relay auth key v1", [])
//! proof = mac(k, "tandem relay auth v1", [version, role, N, E, P, u16(len R), R])
//! ```
//!
//! The relay recomputes `k` from `X25519(e, P)`. Only the holder of the
//! device secret (or of `e`, which never leaves the relay's memory and dies
//! with the connection) can produce the proof; a captured proof is useless
//! on any other connection because `E` and `N` are fresh each time. Binding
//! `R` stops a malicious relay from passing another relay's challenge
//! through to a device and logging in there as that device: the device
//! would see the other relay's name, and a rewritten name breaks the proof.

use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::entropy::{Entropy, EntropyError};
use crate::frame::{Frame, MAX_RELAY_NAME_LEN, VERSION};
use crate::identity::{DeviceId, DeviceKey, PublicKey, Role};
use crate::kdf::{label, mac};

/// Why authentication failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RelayAuthError {
    /// The proof does not match (wrong key, replayed challenge, tampered frame).
    #[error("the authentication proof does not match")]
    BadProof,
    /// The public key is a low-order point.
    #[error("the public key is not usable (low-order point)")]
    BadKey,
    /// The challenge names another relay than the one the device dialed.
    #[error("the relay calls itself {got:?}, but this device connected to {expected:?}")]
    WrongRelay {
        /// The name in the challenge.
        got: String,
        /// The name the device dialed.
        expected: String,
    },
    /// `prove` was handed a frame that is not a `Challenge`.
    #[error("expected a Challenge frame")]
    NotAChallenge,
    /// A relay name over [`MAX_RELAY_NAME_LEN`] bytes.
    #[error("relay name longer than {MAX_RELAY_NAME_LEN} bytes")]
    NameTooLong,
    /// No randomness for the challenge.
    #[error(transparent)]
    Entropy(#[from] EntropyError),
}

/// The relay's side of one connection's challenge.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct RelayChallenge {
    secret: [u8; 32],
    #[zeroize(skip)]
    public: PublicKey,
    nonce: [u8; 32],
    #[zeroize(skip)]
    name: String,
}

impl std::fmt::Debug for RelayChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayChallenge")
            .field("public", &self.public)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl RelayChallenge {
    /// A fresh challenge for a connection whose upgrade request named
    /// `relay_name` as its `Host` (normalised with [`normalize_name`]). The
    /// relay must only pass names that are its own: a relay that accepted
    /// any `Host` would let another relay log in there as a device that
    /// dialed the other relay.
    ///
    /// # Errors
    /// [`RelayAuthError::NameTooLong`] or [`RelayAuthError::Entropy`].
    pub fn new(entropy: &mut Entropy, relay_name: &str) -> Result<Self, RelayAuthError> {
        let name = normalize_name(relay_name).ok_or(RelayAuthError::NameTooLong)?;
        let secret = entropy.array32()?;
        let nonce = entropy.array32()?;
        let public = DeviceKey::from_bytes(secret).public();
        Ok(Self { secret, public, nonce, name })
    }

    /// The `Challenge` frame to send.
    #[must_use]
    pub fn frame(&self) -> Frame {
        Frame::Challenge {
            relay_ephemeral: self.public,
            nonce: self.nonce,
            relay_name: self.name.clone(),
        }
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
        let expected =
            compute_proof(&shared, role, &self.nonce, &self.public, public_key, &self.name);
        shared.zeroize();
        if bool::from(expected.ct_eq(proof)) {
            Ok(public_key.device_id())
        } else {
            Err(RelayAuthError::BadProof)
        }
    }
}

/// A relay name as compared and MACed: trimmed, ASCII lower case, a trailing
/// `.` dropped. `None` when the result is over [`MAX_RELAY_NAME_LEN`] bytes.
#[must_use]
pub fn normalize_name(name: &str) -> Option<String> {
    let mut n = name.trim().to_ascii_lowercase();
    if n.ends_with('.') {
        n.pop();
    }
    (n.len() <= MAX_RELAY_NAME_LEN).then_some(n)
}

/// The device's answer to a `Challenge`. `dialed` is the `host[:port]` the
/// device connected to, as it sent it in the `Host` header.
///
/// # Errors
/// [`RelayAuthError::WrongRelay`] when the challenge names another relay;
/// [`RelayAuthError::BadKey`] when the relay's ephemeral key is a low-order
/// point; [`RelayAuthError::NotAChallenge`] for another frame.
pub fn prove(
    key: &DeviceKey,
    role: Role,
    dialed: &str,
    challenge: &Frame,
) -> Result<Frame, RelayAuthError> {
    let Frame::Challenge { relay_ephemeral, nonce, relay_name } = challenge else {
        return Err(RelayAuthError::NotAChallenge);
    };
    let expected = normalize_name(dialed).ok_or(RelayAuthError::NameTooLong)?;
    if normalize_name(relay_name).as_ref() != Some(&expected) {
        return Err(RelayAuthError::WrongRelay { got: relay_name.clone(), expected });
    }
    let mut shared = key.diffie_hellman(relay_ephemeral).ok_or(RelayAuthError::BadKey)?;
    let public_key = key.public();
    let proof = compute_proof(&shared, role, nonce, relay_ephemeral, &public_key, &expected);
    shared.zeroize();
    Ok(Frame::Auth { public_key, proof })
}

fn compute_proof(
    shared: &[u8; 32],
    role: Role,
    nonce: &[u8; 32],
    relay_ephemeral: &PublicKey,
    device: &PublicKey,
    relay_name: &str,
) -> [u8; 32] {
    let mut k = mac(shared, label::RELAY_AUTH_KEY, &[]);
    let name_len = u16::try_from(relay_name.len()).unwrap_or(u16::MAX).to_be_bytes();
    let proof = mac(
        &k,
        label::RELAY_AUTH,
        &[
            &[VERSION, role.to_byte()],
            nonce,
            &relay_ephemeral.0,
            &device.0,
            &name_len,
            relay_name.as_bytes(),
        ],
    );
    k.zeroize();
    proof
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(key: &DeviceKey, role: Role, ch: &RelayChallenge) -> (PublicKey, [u8; 32]) {
        let Frame::Auth { public_key, proof } =
            prove(key, role, "relay.example.com", &ch.frame()).unwrap()
        else {
            panic!()
        };
        (public_key, proof)
    }

    #[test]
    fn good_key_passes_wrong_key_replay_and_role_swap_fail() {
        let mut e = Entropy::deterministic([1; 32]);
        let key = DeviceKey::generate(&mut e).unwrap();
        let ch = RelayChallenge::new(&mut e, "Relay.Example.com.").unwrap();
        let (pk, proof) = auth(&key, Role::Phone, &ch);
        assert_eq!(ch.verify(Role::Phone, &pk, &proof), Ok(key.public().device_id()));
        // The same proof under a role it was not made for.
        assert_eq!(ch.verify(Role::Desktop, &pk, &proof), Err(RelayAuthError::BadProof));
        // Claiming someone else's key with our proof.
        let other = DeviceKey::generate(&mut e).unwrap();
        assert_eq!(ch.verify(Role::Phone, &other.public(), &proof), Err(RelayAuthError::BadProof));
        // Replaying a proof against a new challenge.
        let ch2 = RelayChallenge::new(&mut e, "relay.example.com").unwrap();
        assert_eq!(ch2.verify(Role::Phone, &pk, &proof), Err(RelayAuthError::BadProof));
        // A low-order key.
        assert_eq!(
            ch.verify(Role::Phone, &PublicKey([0; 32]), &proof),
            Err(RelayAuthError::BadKey)
        );
    }

    #[test]
    fn a_challenge_passed_through_from_another_relay_is_refused() {
        let mut e = Entropy::deterministic([2; 32]);
        let key = DeviceKey::generate(&mut e).unwrap();
        // The device dialed evil.example; evil relays honest.example's challenge.
        let honest = RelayChallenge::new(&mut e, "honest.example").unwrap();
        assert_eq!(
            prove(&key, Role::Phone, "evil.example", &honest.frame()),
            Err(RelayAuthError::WrongRelay {
                got: "honest.example".into(),
                expected: "evil.example".into()
            })
        );
        // Rewriting the name to the one the device expects breaks the proof
        // at the honest relay.
        let Frame::Challenge { relay_ephemeral, nonce, .. } = honest.frame() else { panic!() };
        let forged = Frame::Challenge { relay_ephemeral, nonce, relay_name: "evil.example".into() };
        let Frame::Auth { public_key, proof } =
            prove(&key, Role::Phone, "evil.example", &forged).unwrap()
        else {
            panic!()
        };
        assert_eq!(honest.verify(Role::Phone, &public_key, &proof), Err(RelayAuthError::BadProof));
        assert_eq!(
            prove(&key, Role::Phone, "x", &Frame::Ping { nonce: 0 }),
            Err(RelayAuthError::NotAChallenge)
        );
        let long = "a".repeat(256);
        assert_eq!(RelayChallenge::new(&mut e, &long).err(), Some(RelayAuthError::NameTooLong));
        assert_eq!(
            prove(&key, Role::Phone, &long, &honest.frame()),
            Err(RelayAuthError::NameTooLong)
        );
    }
}
