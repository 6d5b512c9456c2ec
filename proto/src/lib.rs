//! # tandem-proto
//!
//! Tandem's wire protocol, sans I/O: no sockets, no async runtime, no clock
//! it reads itself (callers pass the time in), and randomness only through
//! [`entropy::Entropy`]. Every other part of Tandem speaks through this crate.
//!
//! The layers, outermost first (the normative spec is `docs/PROTOCOL.md`):
//!
//! * [`frame`] — relay frames: what a device and the relay say to each other.
//!   [`relay_auth`] is the challenge-response a device passes to connect.
//! * [`envelope`] — end-to-end envelopes, the opaque payload of relay frames:
//!   Noise handshake messages and encrypted records.
//! * [`pairing`] (Noise `IKpsk2`, from a [`qr`] code, confirmed with a [`sas`])
//!   and [`session`] (Noise `KKpsk2`, renewing keys between paired devices),
//!   both over [`crypto`]'s snow resolver.
//! * [`record`] — the record layer: explicit counters, a sliding replay
//!   window, rekeying; state that survives restarts (offline delivery).
//! * [`delivery`] — per-direction sequence numbers and acknowledgements:
//!   exactly once, in order, or an explicit "resync needed".
//! * [`message`] — versioned application messages (tasks, events, approvals).
//!
//! ```
//! use tandem_proto::{DeviceKey, Frame, Role, entropy::Entropy, relay_auth};
//!
//! // A device answers the relay's challenge; the relay checks the proof.
//! let mut entropy = Entropy::os();
//! let key = DeviceKey::generate(&mut entropy)?;
//! let challenge = relay_auth::RelayChallenge::new(&mut entropy, "relay.example.com")?;
//! let wire = challenge.frame().encode()?;
//! let auth = relay_auth::prove(&key, Role::Phone, "relay.example.com", &Frame::decode(&wire)?)?;
//! let Frame::Auth { public_key, proof } = Frame::decode(&auth.encode()?)? else { unreachable!() };
//! assert_eq!(challenge.verify(Role::Phone, &public_key, &proof)?, key.public().device_id());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod codec;
pub mod content;
pub mod crypto;
pub mod delivery;
pub mod entropy;
pub mod envelope;
pub mod error_code;
pub mod frame;
pub mod identity;
pub mod kdf;
pub mod link;
pub mod message;
pub mod pairing;
pub mod push;
pub mod qr;
pub mod record;
pub mod relay_auth;
pub mod replay;
pub mod sas;
pub mod session;
pub mod upkeep;

pub use error_code::ErrorCode;
pub use frame::{Frame, FrameError, FrameType};
pub use identity::{DeviceId, DeviceKey, PublicKey, Role};
