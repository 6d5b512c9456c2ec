//! The relay's configuration as typed values. Only the binary (`main.rs`)
//! reads files, environment variables and flags; the library takes a
//! [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

pub use crate::net::ProxyHeader;
use crate::store::{QueueLimits, RouteLimits};
use crate::tls::TlsMode;

/// Everything the relay can be told.
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// Where the store lives (the embedded store's file, and the
    /// self-signed certificate).
    pub data_dir: PathBuf,
    /// Which store holds the queues and routes: the embedded one (one node)
    /// or Redis (several nodes sharing it).
    pub store: StoreBackend,
    /// This node's id among the cluster's nodes (Redis store only; letters,
    /// digits, `.`, `_`, `-`). `None`: a fresh one at every start.
    pub node_id: Option<String>,
    /// The host names (or IP addresses) devices reach this relay by. A
    /// connection whose `Host` is not one of them is refused (421): the
    /// relay-authentication challenge is bound to the name, and answering to
    /// any name would let another relay pass our challenge through. Ports are
    /// not compared.
    pub names: Vec<String>,
    /// TLS termination.
    pub tls: TlsMode,
    /// How often certificate files are checked for changes.
    pub tls_poll: Duration,
    /// Queue bounds (per recipient, per sender, per sender address, in all,
    /// the overflow for connected recipients) and TTL.
    pub queue: QueueLimits,
    /// Bounds on one-sided authorisations (per address, TTL).
    pub routes: RouteLimits,
    /// A new TCP connection must finish its TLS handshake (when the relay
    /// terminates TLS) and send its PROXY header (from a trusted proxy that
    /// speaks it) within this, and every HTTP request head must arrive
    /// within this (also the wait for the next request on a kept-alive
    /// connection). Otherwise the connection is closed.
    pub request_timeout: Duration,
    /// A connection that has not become a WebSocket is closed after this
    /// (gracefully: a response being written gets `request_timeout` more).
    pub http_timeout: Duration,
    /// A WebSocket must authenticate within this.
    pub handshake_timeout: Duration,
    /// The relay pings every connection this often (plus jitter).
    pub ping_interval: Duration,
    /// Up to this much random jitter is added to each ping interval.
    pub ping_jitter: Duration,
    /// A pong must arrive within this, or the connection is closed.
    pub pong_timeout: Duration,
    /// A connection with no application traffic for this long is closed
    /// with `idle_timeout`: a phone's always, a desktop's only while it has
    /// no route and no open pairing mailbox (PROTOCOL.md §6.4).
    pub idle_timeout: Duration,
    /// A write that takes longer than this marks the reader as stuck.
    pub write_timeout: Duration,
    /// Frames waiting for one connection's writer before new live frames
    /// fall back to the store (never blocks the sender).
    pub send_queue: usize,
    /// Most deliveries sent on one connection and not acknowledged yet
    /// (PROTOCOL.md §6.6): the rest wait in the store until acks make room.
    pub delivery_window_frames: usize,
    /// Most payload bytes of the deliveries sent on one connection and not
    /// acknowledged yet (a delivery is sent while the window holds less, so
    /// it passes this by at most one frame).
    pub delivery_window_bytes: u64,
    /// How long a frame for a connected recipient is held in memory, waiting
    /// for the recipient's `Ack`, before it is written to the store (and its
    /// sender told `Ok` after the commit). Zero: every frame is written
    /// before `Ok` (PROTOCOL.md §6.5).
    pub hold_window: Duration,
    /// Most memory the frames held for all recipients together may take
    /// (each counts its payload plus about 200 bytes: its `Deliver` header
    /// and its entry); past it, frames go to the store at once. One recipient's hold is bounded
    /// by its delivery window ([`Self::delivery_window_frames`],
    /// [`Self::delivery_window_bytes`]).
    pub hold_max_bytes: u64,
    /// Longest a pairing mailbox may live.
    pub pairing_ttl_max: Duration,
    /// Most simultaneous WebSocket connections.
    pub max_connections: usize,
    /// Most authenticated connections from one client address (an IPv4
    /// address or an IPv6 prefix of [`Self::ipv6_prefix_len`]), any role.
    pub max_connections_per_ip: usize,
    /// Most connections that have not authenticated yet (TCP, TLS, HTTP and
    /// WebSocket before `AuthOk`), in all.
    pub max_unauthenticated: usize,
    /// Most connections that have not authenticated yet from one client address.
    pub max_unauthenticated_per_ip: usize,
    /// New connections per client address per minute.
    pub connects_per_ip_per_minute: u32,
    /// Pairing claims per client address per minute (brute-force brake).
    pub pair_claims_per_ip_per_minute: u32,
    /// Most open pairing mailboxes, in all.
    pub max_mailboxes: usize,
    /// Most open pairing mailboxes opened from one client address.
    pub max_mailboxes_per_ip: usize,
    /// Per-address limits count IPv6 clients per prefix of this length (64:
    /// one host usually holds a whole /64).
    pub ipv6_prefix_len: u8,
    /// Proxies whose word on the client's address is taken (CIDRs). A
    /// connection from anywhere else is the client itself.
    pub trusted_proxies: Vec<IpNet>,
    /// How the trusted proxies pass the client's address.
    pub trusted_proxy_header: ProxyHeader,
    /// Serve `/metrics` on this address of its own (without a token).
    pub metrics_listen: Option<SocketAddr>,
    /// Serve `/metrics` on the main listener to requests with
    /// `Authorization: Bearer <token>`. With neither this nor
    /// [`Self::metrics_listen`], `/metrics` is not served at all.
    pub metrics_token: Option<String>,
    /// Called with the metrics listener's address once it is bound.
    pub on_metrics_ready: Option<MetricsHook>,
    /// Frames per device per second (burst: the same number).
    pub frames_per_device_per_second: u32,
    /// The reconnect hint sent in `Restarting` on shutdown.
    pub restart_hint: Duration,
    /// How long shutdown waits for writers to flush.
    pub drain_timeout: Duration,
    /// How often expired frames and pairing mailboxes are swept.
    pub sweep_interval: Duration,
    /// Notified to reload certificate files (the binary does it on SIGHUP).
    pub reload: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// What the relay answers at `/` and `/p` (the pairing link's path).
    pub web_client: WebClient,
    /// Called once the relay is ready to accept devices (store open, TLS
    /// set up), with the bound address and, in self-signed mode, the
    /// certificate in PEM (for clients to trust).
    pub on_ready: Option<ReadyHook>,
    /// Push: VAPID, allowed Web Push origins, per-device rate, the APNs
    /// and FCM senders (docs/PUSH.md).
    pub push: crate::push::PushConfig,
}

/// What the relay serves to browsers (see `docs/ARCHITECTURE.md`, relay: `web.rs`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum WebClient {
    /// Serve the web client embedded in the binary at `/` and `/p`, with its
    /// assets, manifest and icons (the default).
    #[default]
    Embedded,
    /// The web client lives on another origin: `/` and `/p` answer `302` to
    /// this URL plus `?relay=<this relay's origin>` (the browser keeps the
    /// `#fragment`). Nothing else is served. Build it with
    /// [`WebClient::redirect`].
    Redirect(String),
    /// No web client at all: `404`.
    Off,
}

impl WebClient {
    /// Redirect to the web client at `url`: an absolute `https://` URL (or
    /// `http://` for a host on the local network), without a `#fragment`.
    ///
    /// # Errors
    /// A message naming what is wrong with `url`.
    pub fn redirect(url: &str) -> Result<Self, String> {
        let url = url.trim();
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| format!("web client URL {url:?} must start with https://"))?;
        if url.contains('#') {
            return Err(format!("web client URL {url:?} must not have a #fragment"));
        }
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let uri: http::Uri = url.parse().map_err(|e| format!("web client URL {url:?}: {e}"))?;
        if authority.is_empty() || uri.host().is_none_or(str::is_empty) || authority.contains('@') {
            return Err(format!("web client URL {url:?} has no host"));
        }
        // The same origin rule as pairing links: plain http only on a local network.
        let origin = format!("{}://{authority}", uri.scheme_str().unwrap_or("https"));
        if tandem_proto::qr::QrPayload::validate_relay(&origin).is_err() {
            return Err(format!(
                "web client URL {url:?}: needs https (plain http only for a host on the local network)"
            ));
        }
        Ok(Self::Redirect(url.to_owned()))
    }
}

/// See [`Config::on_metrics_ready`].
pub type MetricsHook = std::sync::Arc<dyn Fn(SocketAddr) + Send + Sync>;

/// Where the relay keeps its queues and routes.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreBackend {
    /// The embedded store in the data directory: one node.
    Embedded,
    /// A Redis server shared by every node of a cluster.
    Redis {
        /// `redis://[user:password@]host:port/[db]`.
        url: String,
        /// The cluster's name in Redis: every key and channel of the store
        /// and of the cluster is under `{<prefix>}:` (a hash tag, so they
        /// share one slot). Several clusters may share one Redis under
        /// different prefixes.
        prefix: String,
    },
}

impl StoreBackend {
    /// The Redis backend at `url`, with the default key prefix.
    #[must_use]
    pub fn redis(url: impl Into<String>) -> Self {
        StoreBackend::Redis { url: url.into(), prefix: DEFAULT_REDIS_PREFIX.into() }
    }
}

impl std::fmt::Debug for StoreBackend {
    /// Never shows a password in the URL.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreBackend::Embedded => f.write_str("Embedded"),
            StoreBackend::Redis { url, prefix } => {
                let shown = match (url.find("://"), url.rfind('@')) {
                    (Some(s), Some(at)) if at > s => {
                        format!("{}://…@{}", &url[..s], &url[at + 1..])
                    }
                    _ => url.clone(),
                };
                f.debug_struct("Redis").field("url", &shown).field("prefix", prefix).finish()
            }
        }
    }
}

/// The key prefix of [`StoreBackend::redis`].
pub const DEFAULT_REDIS_PREFIX: &str = crate::store::REDIS_DEFAULT_PREFIX;

/// See [`Config::on_ready`].
pub type ReadyHook = std::sync::Arc<dyn Fn(std::net::SocketAddr, Option<String>) + Send + Sync>;

impl Config {
    /// Defaults for a store in `data_dir`, without TLS.
    #[must_use]
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            store: StoreBackend::Embedded,
            node_id: None,
            names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            tls: TlsMode::Off,
            tls_poll: Duration::from_secs(5),
            queue: QueueLimits {
                max_frames: 10_000,
                max_bytes: 64 << 20,
                ttl_secs: 7 * 24 * 3600,
                total_max_bytes: 1 << 30,
                overflow_max_bytes: 64 << 20,
                sender_share_percent: 50,
            },
            routes: RouteLimits { pending_ttl_secs: 7 * 24 * 3600, max_pending_per_ip: 1024 },
            request_timeout: Duration::from_secs(10),
            http_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            ping_jitter: Duration::from_secs(5),
            pong_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            write_timeout: Duration::from_secs(10),
            send_queue: 64,
            delivery_window_frames: 512,
            delivery_window_bytes: 2 << 20,
            hold_window: Duration::from_millis(200),
            hold_max_bytes: 64 << 20,
            pairing_ttl_max: Duration::from_secs(600),
            max_connections: 20_000,
            max_connections_per_ip: 64,
            max_unauthenticated: 1024,
            max_unauthenticated_per_ip: 32,
            connects_per_ip_per_minute: 600,
            pair_claims_per_ip_per_minute: 20,
            max_mailboxes: 10_000,
            max_mailboxes_per_ip: 32,
            ipv6_prefix_len: 64,
            trusted_proxies: Vec::new(),
            trusted_proxy_header: ProxyHeader::ForwardedFor,
            metrics_listen: None,
            metrics_token: None,
            on_metrics_ready: None,
            frames_per_device_per_second: 2_000,
            restart_hint: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(5),
            sweep_interval: Duration::from_secs(15),
            reload: None,
            web_client: WebClient::Embedded,
            on_ready: None,
            push: crate::push::PushConfig::default(),
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("data_dir", &self.data_dir)
            .field("store", &self.store)
            .field("node_id", &self.node_id)
            .field("names", &self.names)
            .field("tls", &self.tls)
            .field("queue", &self.queue)
            .field("routes", &self.routes)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("metrics_listen", &self.metrics_listen)
            .field("metrics_token", &self.metrics_token.as_ref().map(|_| "<set>"))
            .field("web_client", &self.web_client)
            .field("push", &self.push)
            .finish_non_exhaustive()
    }
}

/// The example printed by `tandem-relay default-config`: every setting with
/// its default and what it means. Tested to parse to the defaults.
pub const DEFAULT_CONFIG_TOML: &str = r#"# tandem-relay configuration. Every setting may also be given as a flag
# (--listen, --data-dir, ...) or an environment variable (TANDEM_RELAY_LISTEN,
# TANDEM_RELAY_DATA_DIR, ...); flags win over the environment, which wins
# over this file.

# Address and port to listen on.
listen = "0.0.0.0:8443"

# Where queued frames and routes are kept (a redb database; with
# store = "redis", only the self-signed certificate).
data_dir = "/var/lib/tandem-relay"

# The store: "embedded" (the redb database in data_dir: one node) or
# "redis" (a Redis server shared by several relay nodes behind a load
# balancer; docs/PROTOCOL.md says what Ok means there and deploy/README.md
# which persistence settings to give Redis). Every node of a cluster needs
# the same names and redis_url, and its own node_id (generated and logged
# at every start when not set).
store = "embedded"
# redis_url = "redis://redis:6379/"
# (or "redis+sentinel://sentinel1:26379,sentinel2:26379/<primary>", or
# "redis+cluster://node1:6379,node2:6379" for a Redis Cluster)
# redis_prefix = "tandem"
# node_id = "relay-1"

# The names devices reach this relay by (ports are not compared). Requests
# for any other Host are refused: device authentication is bound to the name.
names = ["localhost", "127.0.0.1", "::1"]

# TLS: "files" (tls_cert + tls_key, reloaded on change or SIGHUP),
# "acme" (automatic certificates for acme_domains), "self-signed"
# (development), or "off" (plain HTTP: loopback or behind a TLS proxy only).
tls = "self-signed"
# tls_cert = "/etc/tandem/relay.crt"
# tls_key = "/etc/tandem/relay.key"
# acme_domains = ["relay.example.com"]
# acme_contact = "mailto:ops@example.com"
# acme_production = true
# Names the self-signed certificate is made for.
self_signed_names = ["localhost", "127.0.0.1"]

# Queues for offline devices: per recipient (frames, bytes), how long a
# frame may wait, the bytes queued in all, and the share (percent) of the
# total that one sender address (IPv4 address, IPv6 prefix) may fill, and of
# any one recipient's queue that one sender may fill. A frame's bytes are
# its payload plus 128 (what its row costs). Past the total, a frame is
# still taken for a connected recipient whose queue holds under 1 MiB (so
# pairs that keep acknowledging keep working), up to
# queue_overflow_max_bytes past it in all, and only from a sender address
# holding less than its share of that overflow.
queue_max_frames = 10000
queue_max_bytes = 67108864
queue_ttl_secs = 604800
queue_total_max_bytes = 1073741824
queue_overflow_max_bytes = 67108864
queue_sender_share_percent = 50

# Authorisations the peer has not answered (one-sided): at most this many
# made from one client address, each removed after this many seconds
# unless the peer authorised back. Routes both sides authorised never expire.
max_pending_authorizations_per_ip = 1024
pending_authorization_ttl_secs = 604800

# Deadlines before a device is authenticated: the TLS handshake, a PROXY
# header and each HTTP request head (request_timeout_secs); a connection
# that never becomes a WebSocket (http_timeout_secs); authentication on the
# WebSocket (handshake_timeout_secs).
request_timeout_secs = 10
http_timeout_secs = 60
handshake_timeout_secs = 10

# Liveness.
ping_interval_secs = 20
ping_jitter_secs = 5
pong_timeout_secs = 10
# Connections without application traffic for this long are closed: a
# phone's always, a desktop's only while it has no route and no open
# pairing mailbox.
idle_timeout_secs = 600
write_timeout_secs = 10
# Deliveries sent on one connection and not acknowledged yet, by count and
# payload bytes: the rest wait in the store until acks make room, so a slow
# device is served at its pace instead of being disconnected.
delivery_window_frames = 512
delivery_window_bytes = 2097152
# A frame for a connected recipient is forwarded from memory and held there
# this long waiting for the recipient's ack; unacknowledged by then, it is
# written to the store (group commit, fsync) and its sender gets Ok after
# the commit. 0: every frame is written before Ok.
hold_window_ms = 200
# Most memory held frames take for all recipients (a frame counts its payload
# plus about 200 bytes); past it frames are written at once.
hold_max_bytes = 67108864

# Limits. "Per IP" means per IPv4 address or per IPv6 prefix of
# ipv6_prefix_len bits, of the client (see trusted_proxies). One device
# (key) has one connection at a time, whatever its role.
max_connections = 20000
max_connections_per_ip = 64
max_unauthenticated = 1024
max_unauthenticated_per_ip = 32
connects_per_ip_per_minute = 600
pair_claims_per_ip_per_minute = 20
max_mailboxes = 10000
max_mailboxes_per_ip = 32
frames_per_device_per_second = 2000
pairing_ttl_max_secs = 600
ipv6_prefix_len = 64

# Behind a load balancer or TLS proxy: the proxies (CIDRs) whose word on the
# client's address is taken, and how they give it: "x-forwarded-for" (the
# right-most address that is not a trusted proxy) or "proxy-protocol"
# (a PROXY v1 or v2 header on every connection). Nobody else is believed.
trusted_proxies = []
trusted_proxy_header = "x-forwarded-for"

# /metrics (Prometheus) is served only on a listener of its own
# (metrics_listen, e.g. "127.0.0.1:9090") or, on the main listener, to
# requests with "Authorization: Bearer <metrics_token>". Neither: not at all.
# metrics_listen = "127.0.0.1:9090"
# metrics_token = "a long random string"

# How often expired frames and pairing mailboxes are swept, in milliseconds.
sweep_interval_ms = 15000

# Graceful restart: the reconnect hint sent to clients, and how long to drain.
restart_hint_ms = 2000
drain_timeout_secs = 5

# The web client. By default the relay serves the one embedded in its binary
# at / and /p (the path pairing links open). To use a web client hosted on
# another origin, set web_client: /p then redirects there with
# ?relay=<this relay's origin>. no_web_client = true serves none (404).
# web_client = "https://app.example.com/p"
no_web_client = false

# Log as JSON lines instead of text.
log_json = false

# Push (docs/PUSH.md). Web Push is always on: the VAPID key is made on first
# start as data_dir/vapid.key (or vapid_key_file; every node of a cluster
# needs the same one). vapid_subject is where push services may reach the
# operator (mailto: or https:). A Web Push subscription may name only these
# origins ("*." for any subdomain). Per device: a burst, then one push per
# interval; past max_waiting waiting pushes a Notify is refused.
[push]
vapid_subject = "mailto:relay-operator@localhost"
# vapid_key_file = "/etc/tandem/vapid.key"
webpush_origins = ["https://fcm.googleapis.com", "https://updates.push.services.mozilla.com", "https://web.push.apple.com", "https://*.notify.windows.com", "https://*.push.apple.com"]
burst = 10
interval_ms = 3000
max_waiting = 32
ttl_secs = 3600
timeout_secs = 10
retry_after_ms = 10000

# Native apps' pushes (docs/PUSH.md), with the operator's credentials; a
# bad key or service account stops the start. Apple: a .p8 key from the
# developer account, its key id, the team id, the app's bundle id.
# [apns]
# key_file = "/etc/tandem/AuthKey_ABC123DEFG.p8"
# key_id = "ABC123DEFG"
# team_id = "DEF123GHIJ"
# topic = "com.example.tandem"
# endpoint = "https://api.sandbox.push.apple.com"   # development builds
# Google: a Firebase service account's JSON key.
# [fcm]
# service_account_file = "/etc/tandem/firebase-service-account.json"
"#;
