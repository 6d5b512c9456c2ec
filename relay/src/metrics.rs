//! Prometheus metrics, served at `/metrics`. Labels carry reasons and roles,
//! never device ids or payload bytes.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tandem_proto::{ErrorCode, Role};

use crate::store::QueueDepth;

type Label = [(&'static str, &'static str); 1];

/// Every metric the relay exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    connections: Family<Label, Gauge>,
    accepted: Counter,
    frames_forwarded: Counter,
    bytes_forwarded: Counter,
    queue_frames: Gauge,
    queue_bytes: Gauge,
    queue_charged_bytes: Gauge,
    pending_authorizations: Gauge,
    authorizations_expired: Counter,
    refusals: Family<Label, Counter>,
    limit_refusals: Family<Label, Counter>,
    drops: Family<Label, Counter>,
    auth_failures: Counter,
    pairings: Family<Label, Counter>,
    store_up: Gauge,
    cluster_up: Gauge,
    cluster_dropped_messages: Gauge,
    held_frames: Gauge,
    held_bytes: Gauge,
    oks: Family<Label, Counter>,
    hold_spills: Family<Label, Counter>,
    hold_writes: Counter,
    hold_written_frames: Counter,
    store_commits: Gauge,
    store_frames_written: Gauge,
    push_sent: Family<Label, Counter>,
    push_suppressed: Family<Label, Counter>,
    push_failed: Family<[(&'static str, &'static str); 2], Counter>,
    push_removed: Family<Label, Counter>,
}

fn role_str(role: Role) -> &'static str {
    match role {
        Role::Desktop => "desktop",
        Role::Phone => "phone",
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    #[must_use]
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("tandem_relay");
        let m = Self {
            registry: Registry::default(),
            connections: Family::default(),
            accepted: Counter::default(),
            frames_forwarded: Counter::default(),
            bytes_forwarded: Counter::default(),
            queue_frames: Gauge::default(),
            queue_bytes: Gauge::default(),
            queue_charged_bytes: Gauge::default(),
            pending_authorizations: Gauge::default(),
            authorizations_expired: Counter::default(),
            refusals: Family::default(),
            limit_refusals: Family::default(),
            drops: Family::default(),
            auth_failures: Counter::default(),
            pairings: Family::default(),
            store_up: Gauge::default(),
            cluster_up: Gauge::default(),
            cluster_dropped_messages: Gauge::default(),
            held_frames: Gauge::default(),
            held_bytes: Gauge::default(),
            oks: Family::default(),
            hold_spills: Family::default(),
            hold_writes: Counter::default(),
            hold_written_frames: Counter::default(),
            store_commits: Gauge::default(),
            store_frames_written: Gauge::default(),
            push_sent: Family::default(),
            push_suppressed: Family::default(),
            push_failed: Family::default(),
            push_removed: Family::default(),
        };
        registry.register(
            "push_sent",
            "Pushes a push service accepted, by kind",
            m.push_sent.clone(),
        );
        registry.register(
            "push_suppressed",
            "Accepted Notify requests that sent no push, by reason (active, collapsed, no_route, no_subscription)",
            m.push_suppressed.clone(),
        );
        registry.register(
            "push_failed",
            "Pushes that failed, by kind and reason (rejected, unavailable, no_sender, store, stored)",
            m.push_failed.clone(),
        );
        registry.register(
            "push_removed",
            "Push subscriptions removed because their service said they are gone (404/410)",
            m.push_removed.clone(),
        );
        registry.register(
            "held_frames",
            "Frames held in memory for connected recipients, not acknowledged and not written",
            m.held_frames.clone(),
        );
        registry.register("held_bytes", "Payload bytes of the held frames", m.held_bytes.clone());
        registry.register(
            "send_oks",
            "Ok answers to Send by cause: ack (the recipient acknowledged it, never written) or commit (written durably)",
            m.oks.clone(),
        );
        registry.register(
            "hold_spills",
            "Sends for a connected recipient that went to the store at once, by reason",
            m.hold_spills.clone(),
        );
        registry.register(
            "hold_writes",
            "Writes of held frames to the store (one per recipient per window expiry or close)",
            m.hold_writes.clone(),
        );
        registry.register(
            "hold_written_frames",
            "Held frames submitted to the store",
            m.hold_written_frames.clone(),
        );
        registry.register(
            "store_durable_commits",
            "Durable (fsynced) store commits that answered writes, since the store opened",
            m.store_commits.clone(),
        );
        registry.register(
            "store_frames_written",
            "Frames written by those commits (divide by store_durable_commits for the batch size)",
            m.store_frames_written.clone(),
        );
        registry.register(
            "connections",
            "Authenticated connections by role",
            m.connections.clone(),
        );
        registry.register(
            "connections_accepted",
            "WebSocket connections accepted",
            m.accepted.clone(),
        );
        registry.register(
            "frames_forwarded",
            "Frames stored for a recipient",
            m.frames_forwarded.clone(),
        );
        registry.register(
            "bytes_forwarded",
            "Payload bytes stored for a recipient",
            m.bytes_forwarded.clone(),
        );
        registry.register("queue_frames", "Frames waiting in all queues", m.queue_frames.clone());
        registry.register(
            "queue_bytes",
            "Payload bytes waiting in all queues",
            m.queue_bytes.clone(),
        );
        registry.register(
            "queue_charged_bytes",
            "Bytes all queues are charged against queue_total_max_bytes (payload plus 128 per frame)",
            m.queue_charged_bytes.clone(),
        );
        registry.register(
            "pending_authorizations",
            "One-sided authorisations (the peer has not authorised back)",
            m.pending_authorizations.clone(),
        );
        registry.register(
            "authorizations_expired",
            "One-sided authorisations removed after pending_authorization_ttl_secs",
            m.authorizations_expired.clone(),
        );
        registry.register(
            "refusals",
            "Refused frames and connections by reason",
            m.refusals.clone(),
        );
        registry.register(
            "limit_refusals",
            "Connections, requests and frames refused or closed by a limit, by limit",
            m.limit_refusals.clone(),
        );
        registry.register("drops", "Frames dropped by reason (ttl, revoked)", m.drops.clone());
        registry.register(
            "auth_failures",
            "Failed device authentications",
            m.auth_failures.clone(),
        );
        registry.register("pairings", "Pairing mailbox events by outcome", m.pairings.clone());
        registry.register(
            "store_up",
            "1 while the store can write, 0 while it cannot (not open, or failed and being reopened: /readyz fails)",
            m.store_up.clone(),
        );
        Self { registry, ..m }
    }

    /// Register the cluster's metrics (a node of several; not on one).
    pub(crate) fn register_cluster(&mut self) {
        self.registry.register(
            "cluster_up",
            "1 while this node takes part in the cluster (its channel subscribed, its heartbeat reaching Redis), 0 while not (/readyz fails)",
            self.cluster_up.clone(),
        );
        self.registry.register(
            "cluster_dropped_messages",
            "Messages from other nodes this node could not read (another version, or garbage on its channel), dropped",
            self.cluster_dropped_messages.clone(),
        );
    }

    /// This node's part in the cluster: whether it is up, and how many
    /// messages from other nodes it dropped.
    pub(crate) fn cluster(&self, up: bool, dropped: u64) {
        self.cluster_up.set(i64::from(up));
        self.cluster_dropped_messages.set(i64::try_from(dropped).unwrap_or(i64::MAX));
    }

    /// Whether the store can write (the `store_up` gauge).
    pub(crate) fn store_up(&self, up: bool) {
        self.store_up.set(i64::from(up));
    }

    /// A device authenticated.
    pub(crate) fn connected(&self, role: Role) {
        self.connections.get_or_create(&[("role", role_str(role))]).inc();
        self.accepted.inc();
    }

    /// An authenticated device went away.
    pub(crate) fn disconnected(&self, role: Role) {
        self.connections.get_or_create(&[("role", role_str(role))]).dec();
    }

    /// A frame of `bytes` payload bytes was stored for its recipient.
    pub(crate) fn forwarded(&self, bytes: usize) {
        self.frames_forwarded.inc();
        self.bytes_forwarded.inc_by(bytes as u64);
    }

    /// Something was refused, with the code sent.
    pub(crate) fn refused(&self, code: ErrorCode) {
        self.refusals.get_or_create(&[("reason", code.as_str())]).inc();
    }

    /// A limit refused something, or a deadline closed a connection
    /// (`limit` names it: `unauthenticated`, `queue_total`, ...).
    pub(crate) fn limit_refused(&self, limit: &'static str) {
        self.limit_refusals.get_or_create(&[("limit", limit)]).inc();
    }

    /// Register the gauge of connections that have not authenticated yet.
    pub(crate) fn register_unauthenticated(&mut self, gauge: Gauge) {
        self.registry.register(
            "unauthenticated_connections",
            "Connections not authenticated yet (TCP, TLS, HTTP or WebSocket before AuthOk)",
            gauge,
        );
    }

    /// Frames dropped without delivery.
    pub(crate) fn dropped(&self, reason: &'static str, n: u64) {
        self.drops.get_or_create(&[("reason", reason)]).inc_by(n);
    }

    /// A device failed to authenticate.
    pub(crate) fn auth_failed(&self) {
        self.auth_failures.inc();
    }

    /// A pairing mailbox event (`opened`, `claimed`, `closed`, `expired`).
    pub(crate) fn pairing(&self, outcome: &'static str) {
        self.pairings.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// Current queue totals.
    pub(crate) fn queue_depth(&self, d: QueueDepth) {
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.queue_frames.set(gauge(d.frames));
        self.queue_bytes.set(gauge(d.bytes));
        self.queue_charged_bytes.set(gauge(d.charged()));
    }

    /// One-sided authorisations now.
    pub(crate) fn pending_authorizations(&self, n: u64) {
        self.pending_authorizations.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// One-sided authorisations removed by their TTL.
    pub(crate) fn authorizations_expired(&self, n: u64) {
        self.authorizations_expired.inc_by(n);
    }

    /// Frames (and their payload bytes) entered (positive) or left the holds.
    pub(crate) fn held(&self, frames: i64, bytes: i64) {
        self.held_frames.inc_by(frames);
        self.held_bytes.inc_by(bytes);
    }

    /// A `Send` was answered `Ok`, because of `by` (`ack` or `commit`).
    pub(crate) fn ok(&self, by: &'static str) {
        self.oks.get_or_create(&[("by", by)]).inc();
    }

    /// A `Send` for a connected recipient was not held, for `reason`.
    pub(crate) fn spilled(&self, reason: &'static str) {
        self.hold_spills.get_or_create(&[("reason", reason)]).inc();
    }

    /// `frames` held frames were submitted to the store in one write.
    pub(crate) fn hold_written(&self, frames: usize) {
        self.hold_writes.inc();
        self.hold_written_frames.inc_by(frames as u64);
    }

    /// The store's commit counters ([`crate::store::Store::stats`]).
    pub(crate) fn store_stats(&self, s: crate::store::StoreStats) {
        self.store_commits.set(i64::try_from(s.durable_commits).unwrap_or(i64::MAX));
        self.store_frames_written.set(i64::try_from(s.frames_written).unwrap_or(i64::MAX));
    }

    /// A push service accepted a push of `kind`.
    pub(crate) fn push_sent(&self, kind: &'static str) {
        self.push_sent.get_or_create(&[("kind", kind)]).inc();
    }

    /// An accepted `Notify` sent no push, for `reason`.
    pub(crate) fn push_suppressed(&self, reason: &'static str) {
        self.push_suppressed.get_or_create(&[("reason", reason)]).inc();
    }

    /// A push of `kind` failed, for `reason`.
    pub(crate) fn push_failed(&self, kind: &'static str, reason: &'static str) {
        self.push_failed.get_or_create(&[("kind", kind), ("reason", reason)]).inc();
    }

    /// A subscription of `kind` was removed (its service said it is gone).
    pub(crate) fn push_removed(&self, kind: &'static str) {
        self.push_removed.get_or_create(&[("kind", kind)]).inc();
    }

    /// The text exposition.
    #[must_use]
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
