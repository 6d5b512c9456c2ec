//! Tandem's phone-side SDK, exposed to Swift and Kotlin through UniFFI.
//!
//! Only thin wrappers live here; the logic is in `tandem-client` and
//! `tandem-proto`. The bindings land with the mobile SDK issue.

pub use tandem_proto as proto;
