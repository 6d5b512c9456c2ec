//! Tandem's relay server.
//!
//! Authenticates devices by key, runs the pairing rendezvous, forwards
//! ciphertext between devices that authorised each other and queues it for
//! offline ones.

pub mod store;
pub mod tls;

/// The relay-protocol version this relay speaks.
pub const PROTOCOL_VERSION: u8 = tandem_proto::frame::VERSION;
