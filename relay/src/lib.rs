//! Tandem's relay server.
//!
//! Authenticates devices by key, runs the pairing rendezvous, forwards
//! ciphertext between devices that authorised each other and queues it for
//! offline ones, durably. [`run`] is the testable entry point: it serves a
//! bound listener until a cancellation token fires. The binary
//! (`tandem-relay`) reads configuration and calls it.
//!
//! Map: [`config`] (settings), [`store`] (durable queues and routes behind a
//! trait), [`tls`] (certificates), `fsmode` (the data directory's modes),
//! `listener` (accept, PROXY headers, TLS handshakes), `io` (the
//! connection's byte stream, reads that keep no buffer while idle), `net` (client
//! addresses, trusted proxies), `proxy` (the PROXY protocol header),
//! `admission` (connection counts), `http` (one HTTP connection and its
//! deadlines), `server` (HTTP routes, shutdown), `conn` (one device
//! connection: auth, reader, writer), `cluster` (several nodes on one Redis: ownership, cross-node
//! delivery, presence, route changes, mailboxes), `hold` (frames for connected devices
//! held in memory until acked or written), `answers` (a connection's `Ok`
//! and refusals decided elsewhere), `registry` (who is online), `routes`
//! (route cache), `pairing` (mailboxes), `limits` (rate limits), `metrics`
//! (Prometheus), `web` (the embedded web client).

mod admission;
mod answers;
pub mod cluster;
pub mod config;
mod conn;
pub mod failpoints;
mod fsmode;
mod hold;
mod http;
mod io;
mod limits;
mod listener;
mod metrics;
pub mod migrate;
mod net;
mod pairing;
mod proxy;
pub mod push;
mod registry;
mod routes;
mod server;
mod state;
pub mod store;
pub mod tls;
mod web;

pub use config::{Config, DEFAULT_CONFIG_TOML, ProxyHeader, StoreBackend, WebClient};
pub use listener::{LISTEN_BACKLOG, bind};
pub use server::{RelayError, open_store, run, run_with_store};

/// The relay-protocol version this relay speaks.
pub const PROTOCOL_VERSION: u8 = tandem_proto::frame::VERSION;
