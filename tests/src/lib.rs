//! Tools for end-to-end tests that span components (used by the agent's
//! process-level suites and, through the `tandem-e2e` binary, by the mobile
//! SDK's Python suite). Never shipped.
//!
//! * [`tap`]: a WebSocket proxy between devices and a relay that records
//!   every frame both ways: what someone who records the network in front
//!   of the relay (or the relay itself) holds.
//! * [`probe`]: does a stolen copy of a stored link (a phone's desktop file,
//!   an agent's peer file) open a captured record?
//! * [`damage`]: edits a stored file's bytes for the loaders' property tests.
//!
//! The process-level suites themselves live next to the binaries they start
//! (`relay/tests/`, `desktop-agent/tests/`, `mobile-ffi/tests/`), because
//! Cargo gives tests only their own package's binary paths; the fault suite
//! (`tests/tests/faults.rs`, docs/RELIABILITY.md), which starts all three,
//! finds the agent's binary beside its own.

pub mod damage;
pub mod probe;
pub mod tap;
