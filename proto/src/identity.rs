//! Device identity: a long-term X25519 key pair per device, the device id
//! derived from its public key, and a fingerprint people can compare.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::entropy::{Entropy, EntropyError};
use crate::kdf::{hash, label};

/// Errors from parsing identity values.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IdentityError {
    /// A device id string is not 26 characters of lowercase base32.
    #[error("not a device id (expected 26 characters of lowercase base32)")]
    BadDeviceId,
    /// A public key string is not 43 characters of base64url.
    #[error("not a public key (expected 43 characters of base64url)")]
    BadPublicKey,
}

/// A device's long-term secret key (X25519). Zeroed when dropped; never
/// printed by `Debug`.
#[derive(Clone, Zeroize, ZeroizeOnDrop, Serialize, Deserialize)]
pub struct DeviceKey {
    secret: [u8; 32],
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceKey({})", self.public().device_id())
    }
}

impl DeviceKey {
    /// A fresh key from `entropy`.
    ///
    /// # Errors
    /// [`EntropyError`] when the random source fails.
    pub fn generate(entropy: &mut Entropy) -> Result<Self, EntropyError> {
        Ok(Self { secret: entropy.array32()? })
    }

    /// A key from its 32 secret bytes (as stored in a keychain or key file).
    #[must_use]
    pub fn from_bytes(secret: [u8; 32]) -> Self {
        Self { secret }
    }

    /// The 32 secret bytes, for storage. Handle with care.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 32] {
        self.secret
    }

    /// The public half.
    #[must_use]
    pub fn public(&self) -> PublicKey {
        let s = x25519_dalek::StaticSecret::from(self.secret);
        PublicKey(x25519_dalek::PublicKey::from(&s).to_bytes())
    }

    /// X25519 with a peer's public key. `None` if the result is all zeros (a
    /// low-order point), which Tandem always treats as an attack.
    #[must_use]
    pub fn diffie_hellman(&self, their: &PublicKey) -> Option<[u8; 32]> {
        let s = x25519_dalek::StaticSecret::from(self.secret);
        let shared = s.diffie_hellman(&x25519_dalek::PublicKey::from(their.0));
        shared.was_contributory().then(|| shared.to_bytes())
    }
}

/// A device's public key (X25519, 32 bytes). Shown as unpadded base64url.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The device id this key identifies.
    #[must_use]
    pub fn device_id(&self) -> DeviceId {
        let h = hash(label::DEVICE_ID, &[&self.0]);
        let mut id = [0u8; 16];
        id.copy_from_slice(h.get(..16).unwrap_or(&[0; 16]));
        DeviceId(id)
    }

    /// A fingerprint to compare by eye: 20 hex digits in five groups,
    /// e.g. `3f2a-91bc-0d4e-77a1-c2f0`.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        let h = hash(label::FINGERPRINT, &[&self.0]);
        h.get(..10)
            .unwrap_or_default()
            .chunks(2)
            .map(|c| data_encoding::HEXLOWER.encode(c))
            .collect::<Vec<_>>()
            .join("-")
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::BASE64URL_NOPAD.encode(&self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v = data_encoding::BASE64URL_NOPAD
            .decode(s.as_bytes())
            .map_err(|_| IdentityError::BadPublicKey)?;
        Ok(Self(v.try_into().map_err(|_| IdentityError::BadPublicKey)?))
    }
}

/// A device's id: the first 16 bytes of `hash("tandem device id v1", public key)`.
/// The relay addresses devices by it. Shown as 26 characters of lowercase
/// unpadded base32.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceId(pub [u8; 16]);

const BASE32_LOWER: data_encoding::Encoding = data_encoding::BASE32_NOPAD;

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE32_LOWER.encode(&self.0).to_ascii_lowercase())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

impl FromStr for DeviceId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 26 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(IdentityError::BadDeviceId);
        }
        let v = BASE32_LOWER
            .decode(s.to_ascii_uppercase().as_bytes())
            .map_err(|_| IdentityError::BadDeviceId)?;
        Ok(Self(v.try_into().map_err(|_| IdentityError::BadDeviceId)?))
    }
}

/// What kind of device is speaking. Desktops run tasks and open pairing
/// mailboxes; phones (and web clients) send tasks and claim mailboxes. Routes
/// between devices are mutual whatever the roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A desktop agent.
    Desktop,
    /// A phone: the mobile SDK or the web client.
    Phone,
}

impl Role {
    /// The wire byte.
    #[must_use]
    pub fn to_byte(self) -> u8 {
        match self {
            Role::Desktop => 1,
            Role::Phone => 2,
        }
    }

    /// From the wire byte.
    #[must_use]
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Role::Desktop),
            2 => Some(Role::Phone),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_id_round_trips_and_is_stable() {
        let key = DeviceKey::from_bytes([9; 32]);
        let id = key.public().device_id();
        let s = id.to_string();
        assert_eq!(s.len(), 26);
        assert_eq!(s.parse::<DeviceId>().unwrap(), id);
        assert_eq!(key.public().to_string().parse::<PublicKey>().unwrap(), key.public());
        assert_eq!(key.public().fingerprint().len(), 24);
        assert!("AAAAAAAAAAAAAAAAAAAAAAAAAA".parse::<DeviceId>().is_err());
        assert!("short".parse::<DeviceId>().is_err());
        assert!("!!".parse::<PublicKey>().is_err());
    }

    #[test]
    fn low_order_points_are_refused() {
        let key = DeviceKey::from_bytes([9; 32]);
        assert!(key.diffie_hellman(&PublicKey([0; 32])).is_none());
        let other = DeviceKey::from_bytes([3; 32]);
        assert_eq!(key.diffie_hellman(&other.public()), other.diffie_hellman(&key.public()));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = DeviceKey::from_bytes([0xAB; 32]);
        assert!(!format!("{key:?}").contains("171"));
        assert!(!format!("{key:?}").to_lowercase().contains("abab"));
    }
}
