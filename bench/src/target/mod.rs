//! What the throughput and latency scenarios drive: a [`Target`] carries
//! messages for simulated pairs, each pair a [`PairIo`]. The scenarios only
//! see messages going in at one end, coming out at the other, and
//! end-to-end acknowledgements coming back, so the same load runs against
//!
//! * [`tandem::TandemTarget`] — the real relay and protocol: `tandem-client`
//!   connections, real pairing, Noise-encrypted `Link` records and acks;
//!   the whole path, devices' work included;
//! * [`tandem_wire::TandemWireTarget`] — the same relay, devices paired for
//!   real, then frames written directly ([`frames`]): opaque payloads of the
//!   sealed records' sizes, no crypto or client outbox in the load
//!   generator; the relay's cost against the forwarder's;
//!   Two more targets drive it the same way against relay nodes on Redis
//!   (issue 16): `tandem-wire-redis` (one node, its store in Redis) and
//!   `tandem-wire-cluster` (two nodes, each pair's desktop on node 1 and
//!   phone on node 2);
//! * [`forwarder::ForwarderTarget`] — the bare forwarder (`tandem-bench
//!   forwarder`): the same WebSocket stack, no authentication, no store, no
//!   encryption; the limit of the stack;
//! * [`direct::DirectTarget`] — no server at all: the desktop end connects
//!   straight to the phone end over loopback; what latency is added against.
//!
//! * `iroh::IrohTarget` (cargo feature `iroh`) — iroh-relay's server and
//!   client: a third baseline, another relay's cost for the same frames.

pub mod direct;
pub mod forwarder;
pub mod frames;
#[cfg(feature = "iroh")]
pub mod iroh;
pub mod plain;
pub mod steps;
pub mod tandem;
pub mod tandem_wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::{Future, FutureExt, Stream, StreamExt};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::error::Result;

/// A message as it came out at the phone end.
#[derive(Debug)]
pub struct Received {
    /// When the phone end had it (decrypted, in order).
    pub at: Instant,
    /// The message ([`crate::wire::message`]).
    pub message: Vec<u8>,
}

/// One simulated pair, seen from the load driver. Dropping it stops the
/// pair's tasks.
#[derive(Debug)]
pub struct PairIo {
    /// Messages to send from the desktop end, in order; numbered from 1.
    pub send: mpsc::Sender<Vec<u8>>,
    /// The highest message number the phone end acknowledged end to end.
    pub acked: watch::Receiver<u64>,
    /// What came out at the phone end, in the order it came out.
    pub received: mpsc::Receiver<Received>,
    /// The pair's tasks.
    pub tasks: Tasks,
    /// Its relay clients' connections and attempts (the tandem target).
    pub steps: Option<Arc<steps::PairSteps>>,
}

/// Background tasks, aborted when dropped.
#[derive(Debug, Default)]
pub struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    /// Own `tasks`.
    #[must_use]
    pub fn new(tasks: Vec<JoinHandle<()>>) -> Self {
        Self(tasks)
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The ends' side of a pair's channels.
#[derive(Debug)]
pub struct Ends {
    /// Messages the desktop end sends, in order.
    pub outgoing: mpsc::Receiver<Vec<u8>>,
    /// Where the desktop end reports end-to-end acknowledgements.
    pub acked: watch::Sender<u64>,
    /// Where the phone end hands over what it received.
    pub incoming: mpsc::Sender<Received>,
}

/// A new pair's channels: the driver's side (its tasks still to be set)
/// and the ends' side.
#[must_use]
pub fn channels() -> (PairIo, Ends) {
    let (send, outgoing) = mpsc::channel(CHANNEL);
    let (acked_tx, acked) = watch::channel(0);
    let (incoming, received) = mpsc::channel(CHANNEL);
    (
        PairIo { send, acked, received, tasks: Tasks::default(), steps: None },
        Ends { outgoing, acked: acked_tx, incoming },
    )
}

/// Capacity of the channels between the load driver and a pair's ends.
pub const CHANNEL: usize = 1024;

/// Something the load runs against.
pub trait Target: Send + Sync {
    /// A short name for tables and JSON (`tandem`, `tandem-wire`,
    /// `forwarder`, `direct`).
    fn name(&self) -> &'static str;
    /// The server process, for its CPU time and memory (`None`: in process).
    fn pid(&self) -> Option<u32>;
    /// Set up `pairs` pairs, ready to carry messages.
    fn open(&self, pairs: usize) -> BoxFuture<'_, Result<Vec<PairIo>>>;
    /// What went wrong inside the pairs' ends so far.
    fn health(&self) -> &Health;
    /// Whether the target drops messages by design (iroh-relay, on full
    /// queues): its losses are reported, not failures.
    fn lossy(&self) -> bool {
        false
    }
}

/// The targets a scenario can be told to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// The tandem relay with the real protocol (end to end: sealing,
    /// opening, acks, `tandem-client`).
    Tandem,
    /// The tandem relay, devices paired for real, then driven at the frame
    /// level with opaque payloads of the sealed sizes (the relay's cost,
    /// without the devices' crypto in the load generator).
    TandemWire,
    /// `tandem-wire` against one relay node whose store is a Redis server
    /// the bench starts (sender and recipient on the same node).
    TandemWireRedis,
    /// `tandem-wire` against two relay nodes on one Redis: each pair's
    /// desktop on node 1, its phone on node 2 (pairing and every frame
    /// cross nodes).
    TandemWireCluster,
    /// The bare tokio-tungstenite forwarder (baseline: the stack's limit).
    Forwarder,
    /// A direct loopback WebSocket between the two ends (no server).
    Direct,
    /// iroh-relay's server and client (needs the cargo feature `iroh`;
    /// never in the defaults).
    Iroh,
}

impl TargetKind {
    /// Every kind that needs nothing but this binary and the relay's, in
    /// the order reports list them.
    pub const ALL: [TargetKind; 4] =
        [TargetKind::Tandem, TargetKind::TandemWire, TargetKind::Forwarder, TargetKind::Direct];

    /// The kinds that need a `redis-server` (added to the defaults when
    /// one is installed).
    pub const REDIS: [TargetKind; 2] = [TargetKind::TandemWireRedis, TargetKind::TandemWireCluster];

    /// Its name in tables, JSON and on the command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Tandem => "tandem",
            TargetKind::TandemWire => "tandem-wire",
            TargetKind::TandemWireRedis => "tandem-wire-redis",
            TargetKind::TandemWireCluster => "tandem-wire-cluster",
            TargetKind::Forwarder => "forwarder",
            TargetKind::Direct => "direct",
            TargetKind::Iroh => "iroh",
        }
    }

    /// Whether this kind runs relay nodes on Redis.
    #[must_use]
    pub fn needs_redis(self) -> bool {
        Self::REDIS.contains(&self)
    }
}

/// Errors and events inside the pairs' ends, which run as background tasks:
/// the scenario checks them when it reports.
#[derive(Debug, Default)]
pub struct Health {
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    reconnects: AtomicU64,
    redeliveries: AtomicU64,
    nacks: AtomicU64,
}

/// A snapshot of [`Health`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct HealthReport {
    /// Errors inside the ends (each one fails the run).
    pub errors: u64,
    /// The first of them.
    pub first_error: Option<String>,
    /// Relay connections made again after the first one.
    pub reconnects: u64,
    /// Records the end-to-end layer recognised as seen before (relay
    /// redeliveries and resends after a reconnect: expected, and dropped).
    pub redeliveries: u64,
    /// Gaps the phone ends asked to be filled (a message came out of order).
    pub nacks: u64,
}

impl Health {
    /// Count an error.
    pub fn error(&self, what: impl std::fmt::Display) {
        if self.errors.fetch_add(1, Ordering::AcqRel) == 0
            && let Ok(mut first) = self.first_error.lock()
        {
            *first = Some(what.to_string());
        }
    }

    /// Count a reconnection.
    pub fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::AcqRel);
    }

    /// Count a record seen before.
    pub fn redelivered(&self) {
        self.redeliveries.fetch_add(1, Ordering::AcqRel);
    }

    /// Count a nack (a gap seen by a phone end).
    pub fn nacked(&self) {
        self.nacks.fetch_add(1, Ordering::AcqRel);
    }

    /// How many errors so far.
    #[must_use]
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Acquire)
    }

    /// A snapshot.
    #[must_use]
    pub fn report(&self) -> HealthReport {
        HealthReport {
            errors: self.errors(),
            first_error: self.first_error.lock().ok().and_then(|f| f.clone()),
            reconnects: self.reconnects.load(Ordering::Acquire),
            redeliveries: self.redeliveries.load(Ordering::Acquire),
            nacks: self.nacks.load(Ordering::Acquire),
        }
    }
}

/// Open `pairs` pairs with `open_one`, at most `at_once` of them at a time
/// (what every target's [`Target::open`] does).
///
/// # Errors
/// The first pair that could not be opened.
pub(crate) async fn open_pairs<Fut>(
    pairs: usize,
    at_once: usize,
    mut open_one: impl FnMut() -> Fut,
) -> Result<Vec<PairIo>>
where
    Fut: Future<Output = Result<PairIo>>,
{
    futures_util::stream::iter(0..pairs)
        .map(|_| open_one())
        .buffer_unordered(at_once)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// The next item of `stream` and whatever else is ready at once, at most
/// `max` in all; `None` at the stream's end. The phone ends acknowledge
/// one batch at a time.
pub(crate) async fn next_batch<S: Stream + Unpin>(
    stream: &mut S,
    max: usize,
) -> Option<Vec<S::Item>> {
    let first = stream.next().await?;
    let mut batch = vec![first];
    while batch.len() < max {
        match stream.next().now_or_never() {
            Some(Some(item)) => batch.push(item),
            _ => break,
        }
    }
    Some(batch)
}
