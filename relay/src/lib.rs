//! Tandem's relay server.
//!
//! Authenticates devices by key, runs the pairing rendezvous, forwards
//! ciphertext between paired devices only and queues it for offline ones. The
//! server itself lands with the relay issue; this crate holds its place in the
//! workspace and the protocol version it speaks.

/// The relay-protocol version this relay speaks.
pub const PROTOCOL_VERSION: u8 = tandem_proto::frame::VERSION;
