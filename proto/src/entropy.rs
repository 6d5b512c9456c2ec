//! Where randomness comes from.
//!
//! The protocol crate reads no clock and opens no socket, but keys, nonces and
//! Noise ephemerals need randomness. [`Entropy::os`] asks the operating system
//! (`getrandom`); [`Entropy::deterministic`] is a seeded stream for tests and
//! golden vectors only, so that a transcript can be reproduced byte for byte
//! by another implementation.

use crate::kdf::{label, mac};
use thiserror::Error;

/// The operating system's random source failed.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("the operating system's random source failed")]
pub struct EntropyError;

/// A source of random bytes.
#[derive(Debug, Clone)]
pub struct Entropy {
    inner: Source,
}

#[derive(Clone)]
enum Source {
    Os,
    Deterministic { seed: [u8; 32], counter: u64 },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Os => f.write_str("Os"),
            Source::Deterministic { counter, .. } => {
                f.debug_struct("Deterministic").field("counter", counter).finish()
            }
        }
    }
}

impl Entropy {
    /// The operating system's cryptographically secure random source.
    #[must_use]
    pub fn os() -> Self {
        Self { inner: Source::Os }
    }

    /// A deterministic stream derived from `seed`: block `i` (32 bytes) is
    /// `mac(seed, "tandem test entropy v1", u64be(i))`. **Tests and golden
    /// vectors only**: anyone who knows the seed knows every key it makes.
    #[must_use]
    pub fn deterministic(seed: [u8; 32]) -> Self {
        Self { inner: Source::Deterministic { seed, counter: 0 } }
    }

    /// Fill `dest` with random bytes.
    ///
    /// # Errors
    /// [`EntropyError`] when the operating system's source fails.
    pub fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError> {
        match &mut self.inner {
            Source::Os => getrandom::fill(dest).map_err(|_| EntropyError),
            Source::Deterministic { seed, counter } => {
                for chunk in dest.chunks_mut(32) {
                    let block = mac(seed, label::TEST_ENTROPY, &[&counter.to_be_bytes()]);
                    *counter = counter.wrapping_add(1);
                    chunk.copy_from_slice(block.get(..chunk.len()).unwrap_or_default());
                }
                Ok(())
            }
        }
    }

    /// 32 random bytes.
    ///
    /// # Errors
    /// [`EntropyError`] when the operating system's source fails.
    pub fn array32(&mut self) -> Result<[u8; 32], EntropyError> {
        let mut out = [0u8; 32];
        self.fill(&mut out)?;
        Ok(out)
    }

    /// 8 random bytes.
    ///
    /// # Errors
    /// [`EntropyError`] when the operating system's source fails.
    pub fn array8(&mut self) -> Result<[u8; 8], EntropyError> {
        let mut out = [0u8; 8];
        self.fill(&mut out)?;
        Ok(out)
    }
}

impl snow::types::Random for Entropy {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.fill(dest).map_err(|_| snow::Error::Rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_is_reproducible_and_os_is_not_constant() {
        let mut a = Entropy::deterministic([7; 32]);
        let mut b = Entropy::deterministic([7; 32]);
        let mut x = [0u8; 45];
        let mut y = [0u8; 45];
        a.fill(&mut x).unwrap();
        b.fill(&mut y).unwrap();
        assert_eq!(x, y);
        let mut os = Entropy::os();
        assert_ne!(os.array32().unwrap(), os.array32().unwrap());
    }
}
