//! `tandem-bench`: Tandem's load generator and benchmarks.
//!
//! Simulated desktop/phone pairs speak the real protocol (relay
//! authentication through `tandem-client`, pairing through the relay's
//! mailboxes, Noise-encrypted `Link` records with end-to-end acks) against
//! a `tandem-relay` the bench starts or any relay URL. Scenarios: `idle`
//! (memory per idle connection), `throughput`, `latency`, `reconnect-storm`
//! (the relay killed and restarted under load: nothing lost, nothing
//! duplicated) and `pairing`; each prints tables and writes JSON with the
//! machine, the command line and the figures. Baselines run in the same
//! process and run: a bare WebSocket forwarder on the same stack (the
//! stack's limit) and a direct loopback path (what latency is added to),
//! behind the [`target::Target`] seam. `--quick` makes every scenario small
//! enough for the test command (correctness only).
//!
//! See `bench/README.md` for every command.

pub mod balancer;
pub mod cli;
pub mod cluster;
pub mod error;
pub mod fdlimit;
pub mod forwarder;
pub mod load;
pub mod machine;
pub mod pairing;
pub mod pin;
pub mod procfs;
pub mod redis;
pub mod relay;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod target;
pub mod wire;

pub use error::{BenchError, Result};
