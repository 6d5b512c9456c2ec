//! Domain-separated hashing and MACs.
//!
//! Every derived value in Tandem goes through one of the two functions here,
//! each with its own label from [`label`]. Both are BLAKE2s-256 (the hash the
//! Noise handshakes use too), computed over `label ‖ 0x00 ‖ parts…`: labels
//! never contain a NUL byte and every part has a fixed length at its call
//! site, so two different uses can never produce the same input.

use blake2::digest::{Digest, KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac256};

/// The domain-separation labels, one per use. Changing one is a protocol
/// version change.
pub mod label {
    /// Device id from a device's public key.
    pub const DEVICE_ID: &str = "tandem device id v1";
    /// Human-readable fingerprint of a device's public key.
    pub const FINGERPRINT: &str = "tandem fingerprint v1";
    /// Key for the relay-authentication MAC, from the X25519 shared secret.
    pub const RELAY_AUTH_KEY: &str = "tandem relay auth key v1";
    /// The relay-authentication MAC itself.
    pub const RELAY_AUTH: &str = "tandem relay auth v1";
    /// Pairing id from the QR's one-time secret.
    pub const PAIRING_ID: &str = "tandem pairing id v1";
    /// Noise prologue for pairing handshakes.
    pub const PAIR_PROLOGUE: &str = "tandem pair v1";
    /// Noise prologue for session handshakes.
    pub const SESSION_PROLOGUE: &str = "tandem session v1";
    /// Short authentication string from a handshake hash.
    pub const SAS: &str = "tandem sas v1";
    /// Session id from a handshake hash.
    pub const SESSION_ID: &str = "tandem session id v1";
    /// Deterministic test entropy stream (tests and golden vectors only).
    pub const TEST_ENTROPY: &str = "tandem test entropy v1";
}

/// Unkeyed BLAKE2s-256 over `label ‖ 0x00 ‖ parts…`.
#[must_use]
pub fn hash(label: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    Digest::update(&mut h, label.as_bytes());
    Digest::update(&mut h, [0u8]);
    for p in parts {
        Digest::update(&mut h, p);
    }
    h.finalize().into()
}

/// Keyed BLAKE2s-256 (BLAKE2's own keyed mode, a PRF and MAC) over
/// `label ‖ 0x00 ‖ parts…`, with a 32-byte key.
#[must_use]
pub fn mac(key: &[u8; 32], label: &str, parts: &[&[u8]]) -> [u8; 32] {
    // A 32-byte key is always a valid BLAKE2s key (1..=32 bytes).
    let mut m = <Blake2sMac256 as KeyInit>::new(key.into());
    Mac::update(&mut m, label.as_bytes());
    Mac::update(&mut m, &[0u8]);
    for p in parts {
        Mac::update(&mut m, p);
    }
    m.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_separate_domains() {
        assert_ne!(hash(label::DEVICE_ID, &[b"x"]), hash(label::FINGERPRINT, &[b"x"]));
        assert_ne!(mac(&[1; 32], label::SAS, &[b"x"]), mac(&[2; 32], label::SAS, &[b"x"]));
        assert_ne!(mac(&[1; 32], label::SAS, &[b"x"]), mac(&[1; 32], label::SESSION_ID, &[b"x"]));
    }

    #[test]
    fn hash_matches_reference_blake2s() {
        // BLAKE2s-256("abc") from RFC 7693 appendix B, via the plain hash of "abc"
        // minus our framing: check the framing by hashing the same bytes directly.
        let framed = hash("ab", &[b"c"]);
        let direct: [u8; 32] = Blake2s256::digest(b"ab\0c").into();
        assert_eq!(framed, direct);
    }
}
