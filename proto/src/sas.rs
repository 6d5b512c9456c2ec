//! The short authentication string both screens show after pairing: six
//! digits from the handshake hash. A relay that swapped keys would produce
//! different handshake hashes on the two sides, so the codes would differ.

use crate::kdf::{label, mac};

/// Six decimal digits, compared by the user on both screens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sas(u32);

impl Sas {
    /// The code for a Noise handshake hash (32 bytes for BLAKE2s).
    #[must_use]
    pub fn from_handshake_hash(hh: &[u8; 32]) -> Self {
        let m = mac(hh, label::SAS, &[]);
        let mut first = [0u8; 8];
        first.copy_from_slice(m.get(..8).unwrap_or(&[0; 8]));
        // 2^64 mod 10^6 bias is below 2^-44: negligible.
        Sas((u64::from_be_bytes(first) % 1_000_000) as u32)
    }

    /// The six digits, zero-padded: `"042917"`.
    #[must_use]
    pub fn digits(&self) -> String {
        format!("{:06}", self.0)
    }

    /// The value as a number below 1,000,000.
    #[must_use]
    pub fn value(&self) -> u32 {
        self.0
    }
}

impl std::fmt::Display for Sas {
    /// Grouped for reading aloud: `"042 917"`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:03} {:03}", self.0 / 1000, self.0 % 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_digits_and_sensitive_to_every_bit() {
        let a = Sas::from_handshake_hash(&[0; 32]);
        assert_eq!(a.digits().len(), 6);
        assert_eq!(a.to_string().len(), 7);
        let mut hh = [0u8; 32];
        hh[31] = 1;
        assert_ne!(a, Sas::from_handshake_hash(&hh));
    }
}
