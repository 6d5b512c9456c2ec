//! What can stop a benchmark run.

use thiserror::Error;

/// Why a scenario could not run, or why it failed its correctness checks.
#[derive(Debug, Error)]
pub enum BenchError {
    /// A server process (relay, forwarder, worker) could not be started or died.
    #[error("process: {0}")]
    Process(String),
    /// The relay client refused or failed.
    #[error("relay client: {0}")]
    Client(#[from] tandem_client::ClientError),
    /// Pairing two simulated devices failed.
    #[error("pairing: {0}")]
    Pairing(String),
    /// A WebSocket to a baseline target failed.
    #[error("WebSocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// A file or socket operation failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The end-to-end layer refused something it should have accepted.
    #[error("end to end: {0}")]
    Protocol(String),
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The options do not make sense together.
    #[error("usage: {0}")]
    Usage(String),
    /// Writing the JSON report failed.
    #[error("report: {0}")]
    Report(#[from] serde_json::Error),
    /// The run finished but a correctness check failed (lost or duplicated
    /// messages, failed authentication or pairing).
    #[error("correctness check failed: {0}")]
    Check(String),
}

/// Shorthand for results in this crate.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;
