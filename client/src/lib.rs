//! Tandem's shared async relay client: connect, authenticate, reconnect,
//! keep an outbox, surface deliveries for acknowledgement. The desktop agent,
//! the mobile SDK, the end-to-end tests and the load generator all use it.
//!
//! * [`connect`] — one authenticated connection: TCP (no Nagle), TLS with
//!   rustls and ring (the webpki roots plus optional extra roots in PEM, for
//!   self-signed relays), a WebSocket with small buffers and a
//!   [`proto::frame::MAX_FRAME_LEN`] cap, then `Hello → Challenge → Auth →
//!   AuthOk` under one deadline. The client refuses a challenge that names
//!   another relay than the one it dialed ([`ClientError::WrongRelay`]) and
//!   sends no proof then.
//!   A TCP attempt not connected within 600 ms gets a fresh one beside it
//!   (every 600 ms, at most 3 at once; the first to connect wins), so a SYN
//!   lost to a network that then comes back is not waited out (the kernel
//!   sends it again only after 1, 3, 7 s).
//! * [`Client`] — a handle to a background task that owns the connection and
//!   reconnects forever with full-jitter exponential backoff (a random wait
//!   up to 250 ms, the bound doubling to 30 s; reset once a connection stayed
//!   up 10 s; in the first 10 s of an outage, 30 s while requests wait, the
//!   bound is at most 750 ms, and a request made during a longer wait cuts
//!   it to that; an `overloaded` or `rate_limited` relay gets the plain
//!   schedule), waits out the relay's `Restarting` hint instead, pings the
//!   relay (every ~20 s; no frame within 10 s means the connection is dead)
//!   and answers its pings. A stalled connection (a request unanswered for
//!   1 s with nothing at all from the relay meanwhile, or the relay silent
//!   for 1 s past one and a half of its announced ping intervals) is probed
//!   with a ping; without any frame within 1 s, a new connection is made
//!   beside it, the old one kept until the new one has authenticated, and
//!   what the old one left unanswered is written again on the new one. It notices waking from sleep (the wall clock
//!   jumped past the monotonic clock, or the process stood still: a jump of
//!   10 s or more): connected, it pings and replaces the connection at once
//!   unless the relay answers within 3 s; waiting out its backoff, it
//!   reconnects now (a wait the relay asked for ends when its time is up by
//!   the wall clock). It stops
//!   reconnecting only when the relay rejects the device itself
//!   (`auth_failed`, `revoked`), or on [`Client::close`], or when every
//!   handle is dropped. What happens is reported as [`Event`]s.
//!
//! # Guarantees
//!
//! These are **relay-level** guarantees, hop by hop; end-to-end delivery is
//! confirmed only by the peer's acknowledgement inside the encrypted channel
//! (`tandem_proto::delivery`), and the application keeps its own outbox until
//! then.
//!
//! * **Sending.** [`Client::send`] resolves `Ok` once the relay has taken
//!   responsibility for the payload (handed to the recipient's live connection
//!   or stored in its durable queue), or with the relay's refusal
//!   ([`ClientError::Refused`]). Until then the send is retried: it waits
//!   while disconnected (up to [`ClientConfig::outbox_capacity`] in the
//!   actor's outbox, the rest in an ordered queue as long as their futures
//!   live: a dropped future takes its request out), and a send written but unanswered when
//!   the connection drops is written again after reconnecting with the same
//!   `send_id`. The relay may therefore store a payload twice; the end-to-end
//!   layer deduplicates.
//! * **Order.** A request takes its place when the method is called (not when
//!   its future is first polled): requests are written to the relay in the
//!   order they were made, however their futures are polled (`join!`,
//!   `FuturesUnordered`), also while the outbox is full and when they are
//!   written again after a reconnect. The returned futures do not borrow the
//!   [`Client`].
//! * **Receiving.** Each [`Event::Deliver`] carries the relay's `delivery_id`,
//!   increasing per device. The application persists what a delivery leads to
//!   and then calls [`Client::ack`] (cumulative); the relay deletes a queued
//!   delivery only then. Unacknowledged deliveries are delivered again after a
//!   reconnect, with the same ids: the client drops those at or below the
//!   highest id the application already acknowledged in this process (and
//!   repeats that ack), and the end-to-end layer deduplicates the rest (for
//!   example after a crash between persisting and acknowledging).
//! * **Other requests.** `Authorize` and `Revoke` are idempotent and retried
//!   like sends. `PairOpen`, `PairClaim` and `PairClose` are not retried once
//!   written: if the connection drops before the answer they fail with
//!   [`ClientError::Interrupted`].
//! * Nothing from the network panics the client, and payload bytes are never
//!   logged (the [`Event`] `Debug` output shows only their length).

mod actor;
mod backoff;
mod client;
pub mod connect;
mod cursor;
mod error;
mod race;
mod requests;
mod wake;

pub use client::{Client, ClientConfig, Event};
pub use connect::{Connection, Endpoint};
pub use error::ClientError;
pub use tandem_proto as proto;
