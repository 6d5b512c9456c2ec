//! Cryptographic building blocks: the snow resolver over the design's crates,
//! the two Noise protocol names Tandem uses, and helpers around snow.

pub(crate) mod noise;
mod resolver;

pub(crate) use resolver::noise_nonce;
pub use resolver::{Blake2s, ChaChaPoly, TandemResolver, X25519};

/// Pairing handshake: WireGuard's pattern. The QR carries the desktop's static
/// key and the PSK; the phone's static key travels encrypted.
pub const PAIRING_NOISE: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";

/// Session handshake between already-paired devices: both static keys are
/// pinned, and the PSK agreed at pairing hedges against a later break of X25519.
pub const SESSION_NOISE: &str = "Noise_KKpsk2_25519_ChaChaPoly_BLAKE2s";
