//! Tandem's shared async relay client.
//!
//! Connects to a relay, authenticates with the device key, reconnects with
//! backoff, resumes with the protocol's sequence numbers and keeps the outbox.
//! The desktop agent, the mobile SDK, the end-to-end tests and the load
//! generator all use it. It is filled in by the relay and agent issues; for
//! now it re-exports the protocol crate it builds on.

pub use tandem_proto as proto;
