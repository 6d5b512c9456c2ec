//! `tandem-relay`: the relay server binary. Reads configuration (TOML file,
//! `TANDEM_RELAY_*` environment variables, flags — flags win), sets up
//! logging, binds, and runs [`tandem_relay::run`] until SIGINT or SIGTERM.
//! SIGHUP reloads certificate files.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde::Deserialize;
use tandem_relay::tls::TlsMode;
use tandem_relay::{Config, DEFAULT_CONFIG_TOML, ProxyHeader, WebClient};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "tandem-relay",
    version,
    about = "Tandem's relay: forwards end-to-end encrypted frames between paired devices"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the relay (the default).
    Serve,
    /// Print a commented example configuration file with every default.
    DefaultConfig,
    /// Copy an embedded store (the relay stopped) into the Redis store the
    /// settings name (`--store redis --redis-url ...`): every route and
    /// queued frame, in order, with its expiry.
    Migrate {
        /// The embedded store's data directory (default: `--data-dir`).
        #[arg(long)]
        from: Option<PathBuf>,
        /// Copy into a Redis store that already holds frames or routes.
        #[arg(long)]
        force: bool,
    },
}

/// Every setting; unset ones come from the file, then the defaults.
#[derive(clap::Args, Debug, Default)]
struct Opts {
    /// TOML configuration file.
    #[arg(long, env = "TANDEM_RELAY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address and port to listen on (port 0 picks a free one).
    #[arg(long, env = "TANDEM_RELAY_LISTEN", global = true)]
    listen: Option<SocketAddr>,
    /// Directory for the store (and the self-signed certificate).
    #[arg(long, env = "TANDEM_RELAY_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Names devices reach the relay by (comma-separated; ports not compared).
    #[arg(long, env = "TANDEM_RELAY_NAMES", value_delimiter = ',', global = true)]
    names: Option<Vec<String>>,
    /// The store: embedded (one node) or redis (several nodes share it).
    #[arg(long, env = "TANDEM_RELAY_STORE", global = true, value_name = "embedded|redis")]
    store: Option<String>,
    /// The Redis server of `--store redis`: redis://[user:password@]host:port/[db],
    /// redis+sentinel://host:port[,...]/<primary>[/db] or redis+cluster://host:port[,...].
    #[arg(long, env = "TANDEM_RELAY_REDIS_URL", global = true, hide_env_values = true)]
    redis_url: Option<String>,
    /// What every Redis key and channel of this cluster starts with.
    #[arg(long, env = "TANDEM_RELAY_REDIS_PREFIX", global = true)]
    redis_prefix: Option<String>,
    /// This node's id in the cluster (default: a fresh one, logged).
    #[arg(long, env = "TANDEM_RELAY_NODE_ID", global = true)]
    node_id: Option<String>,
    /// TLS mode: off, files, self-signed or acme.
    #[arg(long, env = "TANDEM_RELAY_TLS", global = true)]
    tls: Option<String>,
    /// Certificate chain (PEM) for `--tls files`.
    #[arg(long, env = "TANDEM_RELAY_TLS_CERT", global = true)]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) for `--tls files`.
    #[arg(long, env = "TANDEM_RELAY_TLS_KEY", global = true)]
    tls_key: Option<PathBuf>,
    /// Domains for `--tls acme` (comma-separated).
    #[arg(long, env = "TANDEM_RELAY_ACME_DOMAINS", value_delimiter = ',', global = true)]
    acme_domains: Option<Vec<String>>,
    /// Contact e-mail for the ACME account.
    #[arg(long, env = "TANDEM_RELAY_ACME_CONTACT", global = true)]
    acme_contact: Option<String>,
    /// Use the production ACME directory (default: staging).
    #[arg(long, env = "TANDEM_RELAY_ACME_PRODUCTION", global = true)]
    acme_production: Option<bool>,
    /// Names for the self-signed certificate (comma-separated).
    #[arg(long, env = "TANDEM_RELAY_SELF_SIGNED_NAMES", value_delimiter = ',', global = true)]
    self_signed_names: Option<Vec<String>>,
    /// Most frames queued per device.
    #[arg(long, env = "TANDEM_RELAY_QUEUE_MAX_FRAMES", global = true)]
    queue_max_frames: Option<u64>,
    /// Most bytes queued per device (payload plus 128 per frame).
    #[arg(long, env = "TANDEM_RELAY_QUEUE_MAX_BYTES", global = true)]
    queue_max_bytes: Option<u64>,
    /// How long a queued frame may wait, in seconds.
    #[arg(long, env = "TANDEM_RELAY_QUEUE_TTL_SECS", global = true)]
    queue_ttl_secs: Option<u64>,
    /// Most bytes queued in all queues together (payload plus 128 per frame).
    #[arg(long, env = "TANDEM_RELAY_QUEUE_TOTAL_MAX_BYTES", global = true)]
    queue_total_max_bytes: Option<u64>,
    /// How far past the total frames for connected recipients may take the queues.
    #[arg(long, env = "TANDEM_RELAY_QUEUE_OVERFLOW_MAX_BYTES", global = true)]
    queue_overflow_max_bytes: Option<u64>,
    /// One-sided authorisations one client address may hold.
    #[arg(long, env = "TANDEM_RELAY_MAX_PENDING_AUTHORIZATIONS_PER_IP", global = true)]
    max_pending_authorizations_per_ip: Option<u64>,
    /// Seconds before a one-sided authorisation is removed.
    #[arg(long, env = "TANDEM_RELAY_PENDING_AUTHORIZATION_TTL_SECS", global = true)]
    pending_authorization_ttl_secs: Option<u64>,
    /// The share (percent) of the total (and of the overflow) one sender
    /// address may fill, and of one recipient's queue one sender may fill.
    #[arg(long, env = "TANDEM_RELAY_QUEUE_SENDER_SHARE_PERCENT", global = true,
          value_parser = clap::value_parser!(u8).range(1..=100))]
    queue_sender_share_percent: Option<u8>,
    /// Seconds for the TLS handshake, a PROXY header and each HTTP request head.
    #[arg(long, env = "TANDEM_RELAY_REQUEST_TIMEOUT_SECS", global = true)]
    request_timeout_secs: Option<u64>,
    /// Seconds a connection may stay without becoming a WebSocket.
    #[arg(long, env = "TANDEM_RELAY_HTTP_TIMEOUT_SECS", global = true)]
    http_timeout_secs: Option<u64>,
    /// Seconds a connection has to authenticate.
    #[arg(long, env = "TANDEM_RELAY_HANDSHAKE_TIMEOUT_SECS", global = true)]
    handshake_timeout_secs: Option<u64>,
    /// Seconds between pings.
    #[arg(long, env = "TANDEM_RELAY_PING_INTERVAL_SECS", global = true)]
    ping_interval_secs: Option<u64>,
    /// Up to this many seconds of random jitter on each ping interval.
    #[arg(long, env = "TANDEM_RELAY_PING_JITTER_SECS", global = true)]
    ping_jitter_secs: Option<u64>,
    /// Seconds to wait for a pong.
    #[arg(long, env = "TANDEM_RELAY_PONG_TIMEOUT_SECS", global = true)]
    pong_timeout_secs: Option<u64>,
    /// Seconds without application traffic before a phone is detached.
    #[arg(long, env = "TANDEM_RELAY_IDLE_TIMEOUT_SECS", global = true)]
    idle_timeout_secs: Option<u64>,
    /// Seconds a write may take before the connection is dropped.
    #[arg(long, env = "TANDEM_RELAY_WRITE_TIMEOUT_SECS", global = true)]
    write_timeout_secs: Option<u64>,
    /// Most deliveries sent on one connection and not acknowledged yet.
    #[arg(long, env = "TANDEM_RELAY_DELIVERY_WINDOW_FRAMES", global = true)]
    delivery_window_frames: Option<usize>,
    /// Most payload bytes sent on one connection and not acknowledged yet.
    #[arg(long, env = "TANDEM_RELAY_DELIVERY_WINDOW_BYTES", global = true)]
    delivery_window_bytes: Option<u64>,
    /// Milliseconds a frame for a connected recipient is held in memory
    /// waiting for its ack before it is written (0: written before `Ok`).
    #[arg(long, env = "TANDEM_RELAY_HOLD_WINDOW_MS", global = true)]
    hold_window_ms: Option<u64>,
    /// Most memory held frames take for all recipients (payload plus
    /// about 200 bytes a frame).
    #[arg(long, env = "TANDEM_RELAY_HOLD_MAX_BYTES", global = true)]
    hold_max_bytes: Option<u64>,
    /// Most simultaneous connections.
    #[arg(long, env = "TANDEM_RELAY_MAX_CONNECTIONS", global = true)]
    max_connections: Option<usize>,
    /// Most authenticated connections from one client address (IPv6: prefix).
    #[arg(long, env = "TANDEM_RELAY_MAX_CONNECTIONS_PER_IP", global = true)]
    max_connections_per_ip: Option<usize>,
    /// Most connections not authenticated yet, in all.
    #[arg(long, env = "TANDEM_RELAY_MAX_UNAUTHENTICATED", global = true)]
    max_unauthenticated: Option<usize>,
    /// Most connections not authenticated yet from one client address.
    #[arg(long, env = "TANDEM_RELAY_MAX_UNAUTHENTICATED_PER_IP", global = true)]
    max_unauthenticated_per_ip: Option<usize>,
    /// Most open pairing mailboxes, in all.
    #[arg(long, env = "TANDEM_RELAY_MAX_MAILBOXES", global = true)]
    max_mailboxes: Option<usize>,
    /// Most open pairing mailboxes from one client address.
    #[arg(long, env = "TANDEM_RELAY_MAX_MAILBOXES_PER_IP", global = true)]
    max_mailboxes_per_ip: Option<usize>,
    /// Per-address limits count IPv6 clients per prefix of this many bits.
    #[arg(long, env = "TANDEM_RELAY_IPV6_PREFIX_LEN", global = true,
          value_parser = clap::value_parser!(u8).range(1..=128))]
    ipv6_prefix_len: Option<u8>,
    /// Proxies (CIDRs, comma-separated) whose word on the client's address is taken.
    #[arg(long, env = "TANDEM_RELAY_TRUSTED_PROXIES", value_delimiter = ',', global = true)]
    trusted_proxies: Option<Vec<String>>,
    /// How the trusted proxies name the client: x-forwarded-for or proxy-protocol.
    #[arg(long, env = "TANDEM_RELAY_TRUSTED_PROXY_HEADER", global = true)]
    trusted_proxy_header: Option<String>,
    /// Serve /metrics on this address of its own (no token needed there).
    #[arg(long, env = "TANDEM_RELAY_METRICS_LISTEN", global = true)]
    metrics_listen: Option<SocketAddr>,
    /// Serve /metrics on the main listener to `Authorization: Bearer <token>`.
    #[arg(long, env = "TANDEM_RELAY_METRICS_TOKEN", global = true, hide_env_values = true)]
    metrics_token: Option<String>,
    /// New connections per IP per minute.
    #[arg(long, env = "TANDEM_RELAY_CONNECTS_PER_IP_PER_MINUTE", global = true)]
    connects_per_ip_per_minute: Option<u32>,
    /// Pairing claims per IP per minute.
    #[arg(long, env = "TANDEM_RELAY_PAIR_CLAIMS_PER_IP_PER_MINUTE", global = true)]
    pair_claims_per_ip_per_minute: Option<u32>,
    /// Frames per device per second.
    #[arg(long, env = "TANDEM_RELAY_FRAMES_PER_DEVICE_PER_SECOND", global = true)]
    frames_per_device_per_second: Option<u32>,
    /// Longest pairing mailbox lifetime, in seconds.
    #[arg(long, env = "TANDEM_RELAY_PAIRING_TTL_MAX_SECS", global = true)]
    pairing_ttl_max_secs: Option<u64>,
    /// Reconnect hint sent on shutdown, in milliseconds.
    #[arg(long, env = "TANDEM_RELAY_RESTART_HINT_MS", global = true)]
    restart_hint_ms: Option<u64>,
    /// Seconds to wait for connections to drain on shutdown.
    #[arg(long, env = "TANDEM_RELAY_DRAIN_TIMEOUT_SECS", global = true)]
    drain_timeout_secs: Option<u64>,
    /// Milliseconds between sweeps of expired frames and mailboxes.
    #[arg(long, env = "TANDEM_RELAY_SWEEP_INTERVAL_MS", global = true)]
    sweep_interval_ms: Option<u64>,
    /// Log JSON lines instead of text.
    #[arg(long, env = "TANDEM_RELAY_LOG_JSON", global = true)]
    log_json: Option<bool>,
    /// A web client on another origin: /p redirects there with
    /// ?relay=<this relay's origin> (default: serve the embedded one).
    #[arg(long, env = "TANDEM_RELAY_WEB_CLIENT", global = true, value_name = "URL")]
    web_client: Option<String>,
    /// Serve no web client at all (/ and /p answer 404).
    #[arg(
        long,
        env = "TANDEM_RELAY_NO_WEB_CLIENT",
        global = true,
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    no_web_client: Option<bool>,
}

/// The TOML file: the same settings, all optional.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    names: Option<Vec<String>>,
    store: Option<String>,
    redis_url: Option<String>,
    redis_prefix: Option<String>,
    node_id: Option<String>,
    tls: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    acme_domains: Option<Vec<String>>,
    acme_contact: Option<String>,
    acme_production: Option<bool>,
    self_signed_names: Option<Vec<String>>,
    queue_max_frames: Option<u64>,
    queue_max_bytes: Option<u64>,
    queue_ttl_secs: Option<u64>,
    queue_total_max_bytes: Option<u64>,
    queue_overflow_max_bytes: Option<u64>,
    max_pending_authorizations_per_ip: Option<u64>,
    pending_authorization_ttl_secs: Option<u64>,
    queue_sender_share_percent: Option<u8>,
    request_timeout_secs: Option<u64>,
    http_timeout_secs: Option<u64>,
    handshake_timeout_secs: Option<u64>,
    ping_interval_secs: Option<u64>,
    ping_jitter_secs: Option<u64>,
    pong_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    write_timeout_secs: Option<u64>,
    delivery_window_frames: Option<usize>,
    delivery_window_bytes: Option<u64>,
    hold_window_ms: Option<u64>,
    hold_max_bytes: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    max_unauthenticated: Option<usize>,
    max_unauthenticated_per_ip: Option<usize>,
    max_mailboxes: Option<usize>,
    max_mailboxes_per_ip: Option<usize>,
    ipv6_prefix_len: Option<u8>,
    trusted_proxies: Option<Vec<String>>,
    trusted_proxy_header: Option<String>,
    metrics_listen: Option<SocketAddr>,
    metrics_token: Option<String>,
    connects_per_ip_per_minute: Option<u32>,
    pair_claims_per_ip_per_minute: Option<u32>,
    frames_per_device_per_second: Option<u32>,
    pairing_ttl_max_secs: Option<u64>,
    restart_hint_ms: Option<u64>,
    drain_timeout_secs: Option<u64>,
    sweep_interval_ms: Option<u64>,
    log_json: Option<bool>,
    web_client: Option<String>,
    no_web_client: Option<bool>,
    push: Option<PushFile>,
    /// `[apns]`: Apple's push service, with the operator's key (docs/PUSH.md).
    apns: Option<tandem_relay::push::native_config::ApnsConfig>,
    /// `[fcm]`: Google's push service, with the operator's service account.
    fcm: Option<tandem_relay::push::native_config::FcmConfig>,
}

/// The `[push]` table (file only).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct PushFile {
    vapid_subject: Option<String>,
    vapid_key_file: Option<PathBuf>,
    webpush_origins: Option<Vec<String>>,
    burst: Option<u32>,
    interval_ms: Option<u64>,
    max_waiting: Option<usize>,
    ttl_secs: Option<u64>,
    timeout_secs: Option<u64>,
    retry_after_ms: Option<u64>,
}

/// The `[push]` table over the defaults.
fn push_settings(p: PushFile) -> anyhow::Result<tandem_relay::push::PushConfig> {
    let mut c = tandem_relay::push::PushConfig::default();
    if let Some(v) = p.vapid_subject {
        if !(v.starts_with("mailto:") || v.starts_with("https://")) {
            bail!("push.vapid_subject {v:?} must be a mailto: or https: URI");
        }
        c.vapid_subject = v;
    }
    c.vapid_key_file = p.vapid_key_file;
    if let Some(v) = p.webpush_origins {
        for o in &v {
            if !(o.starts_with("https://") || o.starts_with("http://")) {
                bail!("push.webpush_origins: {o:?} is not an http(s) origin");
            }
        }
        c.webpush_origins = v;
    }
    if let Some(v) = p.burst {
        c.burst = v.max(1);
    }
    if let Some(v) = p.interval_ms {
        c.interval = Duration::from_millis(v.max(1));
    }
    if let Some(v) = p.max_waiting {
        c.max_waiting = v;
    }
    if let Some(v) = p.ttl_secs {
        c.ttl = Duration::from_secs(v);
    }
    if let Some(v) = p.timeout_secs {
        c.timeout = Duration::from_secs(v.max(1));
    }
    if let Some(v) = p.retry_after_ms {
        c.retry_after = Duration::from_millis(v);
    }
    Ok(c)
}

/// What `main` needs besides the library's [`Config`].
struct Settings {
    listen: SocketAddr,
    log_json: bool,
    config: Config,
}

fn settings(o: Opts) -> anyhow::Result<Settings> {
    let f: FileConfig = match &o.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => FileConfig::default(),
    };
    // Flags and environment win over the file, which wins over the defaults.
    macro_rules! pick {
        ($field:ident) => {
            o.$field.or(f.$field)
        };
    }
    let data_dir = pick!(data_dir).unwrap_or_else(|| PathBuf::from("tandem-relay-data"));
    let mut c = Config::new(data_dir.clone());
    let secs = Duration::from_secs;
    c.store = match pick!(store).as_deref().unwrap_or("embedded") {
        "embedded" => tandem_relay::StoreBackend::Embedded,
        "redis" => {
            let url = pick!(redis_url).context("--store redis needs --redis-url")?;
            let prefix = pick!(redis_prefix)
                .unwrap_or_else(|| tandem_relay::config::DEFAULT_REDIS_PREFIX.to_owned());
            tandem_relay::StoreBackend::Redis { url, prefix }
        }
        other => anyhow::bail!("--store must be embedded or redis, not {other:?}"),
    };
    if let Some(id) = pick!(node_id) {
        tandem_relay::cluster::check_node_id(&id)?;
        c.node_id = Some(id);
    }
    if let Some(v) = pick!(names) {
        c.names = v.into_iter().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect();
    }
    let self_signed_names =
        pick!(self_signed_names).unwrap_or_else(|| vec!["localhost".into(), "127.0.0.1".into()]);
    c.tls = match pick!(tls).as_deref().unwrap_or("self-signed") {
        "off" => TlsMode::Off,
        "files" => TlsMode::Files {
            cert: pick!(tls_cert).context("--tls files needs --tls-cert")?,
            key: pick!(tls_key).context("--tls files needs --tls-key")?,
        },
        "self-signed" => {
            TlsMode::SelfSigned { names: self_signed_names, dir: Some(data_dir.join("tls")) }
        }
        "acme" => {
            let domains = pick!(acme_domains).unwrap_or_default();
            if domains.is_empty() {
                bail!("--tls acme needs --acme-domains");
            }
            for d in &domains {
                if !c.names.contains(d) {
                    c.names.push(d.clone());
                }
            }
            TlsMode::Acme {
                domains,
                contact: pick!(acme_contact),
                cache_dir: data_dir.join("acme"),
                production: pick!(acme_production).unwrap_or(false),
            }
        }
        other => bail!("unknown TLS mode {other:?}: use off, files, self-signed or acme"),
    };
    if let Some(v) = pick!(queue_max_frames) {
        c.queue.max_frames = v;
    }
    if let Some(v) = pick!(queue_max_bytes) {
        c.queue.max_bytes = v;
    }
    if let Some(v) = pick!(queue_ttl_secs) {
        c.queue.ttl_secs = v;
    }
    if let Some(v) = pick!(queue_total_max_bytes) {
        c.queue.total_max_bytes = v;
    }
    if let Some(v) = pick!(queue_overflow_max_bytes) {
        c.queue.overflow_max_bytes = v;
    }
    if let Some(v) = pick!(max_pending_authorizations_per_ip) {
        c.routes.max_pending_per_ip = v;
    }
    if let Some(v) = pick!(pending_authorization_ttl_secs) {
        c.routes.pending_ttl_secs = v.max(1);
    }
    if let Some(v) = pick!(queue_sender_share_percent) {
        if !(1..=100).contains(&v) {
            bail!("queue_sender_share_percent must be 1 to 100, not {v}");
        }
        c.queue.sender_share_percent = v;
    }
    if let Some(v) = pick!(request_timeout_secs) {
        c.request_timeout = secs(v.max(1));
    }
    if let Some(v) = pick!(http_timeout_secs) {
        c.http_timeout = secs(v.max(1));
    }
    if let Some(v) = pick!(handshake_timeout_secs) {
        c.handshake_timeout = secs(v);
    }
    if let Some(v) = pick!(ping_interval_secs) {
        c.ping_interval = secs(v.max(1));
    }
    if let Some(v) = pick!(ping_jitter_secs) {
        c.ping_jitter = secs(v);
    }
    if let Some(v) = pick!(pong_timeout_secs) {
        c.pong_timeout = secs(v.max(1));
    }
    if let Some(v) = pick!(idle_timeout_secs) {
        c.idle_timeout = secs(v.max(1));
    }
    if let Some(v) = pick!(write_timeout_secs) {
        c.write_timeout = secs(v.max(1));
    }
    if let Some(v) = pick!(delivery_window_frames) {
        c.delivery_window_frames = v.max(1);
    }
    if let Some(v) = pick!(delivery_window_bytes) {
        c.delivery_window_bytes = v.max(1);
    }
    if let Some(v) = pick!(hold_window_ms) {
        c.hold_window = Duration::from_millis(v);
    }
    if let Some(v) = pick!(hold_max_bytes) {
        c.hold_max_bytes = v;
    }
    if let Some(v) = pick!(max_connections) {
        c.max_connections = v;
    }
    if let Some(v) = pick!(max_connections_per_ip) {
        c.max_connections_per_ip = v;
    }
    if let Some(v) = pick!(max_unauthenticated) {
        c.max_unauthenticated = v;
    }
    if let Some(v) = pick!(max_unauthenticated_per_ip) {
        c.max_unauthenticated_per_ip = v;
    }
    if let Some(v) = pick!(max_mailboxes) {
        c.max_mailboxes = v;
    }
    if let Some(v) = pick!(max_mailboxes_per_ip) {
        c.max_mailboxes_per_ip = v;
    }
    if let Some(v) = pick!(ipv6_prefix_len) {
        if !(1..=128).contains(&v) {
            bail!("ipv6_prefix_len must be 1 to 128, not {v}");
        }
        c.ipv6_prefix_len = v;
    }
    if let Some(list) = pick!(trusted_proxies) {
        c.trusted_proxies = list
            .iter()
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
            .map(parse_net)
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(v) = pick!(trusted_proxy_header) {
        c.trusted_proxy_header = ProxyHeader::parse(&v).map_err(anyhow::Error::msg)?;
    }
    c.metrics_listen = pick!(metrics_listen);
    c.metrics_token = pick!(metrics_token).filter(|t| !t.trim().is_empty());
    if let Some(v) = pick!(connects_per_ip_per_minute) {
        c.connects_per_ip_per_minute = v;
    }
    if let Some(v) = pick!(pair_claims_per_ip_per_minute) {
        c.pair_claims_per_ip_per_minute = v;
    }
    if let Some(v) = pick!(frames_per_device_per_second) {
        c.frames_per_device_per_second = v;
    }
    if let Some(v) = pick!(pairing_ttl_max_secs) {
        c.pairing_ttl_max = secs(v);
    }
    if let Some(v) = pick!(restart_hint_ms) {
        c.restart_hint = Duration::from_millis(v);
    }
    if let Some(v) = pick!(drain_timeout_secs) {
        c.drain_timeout = secs(v);
    }
    if let Some(v) = pick!(sweep_interval_ms) {
        c.sweep_interval = Duration::from_millis(v);
    }
    // The two web-client settings go together: either given as a flag (or
    // environment variable) overrides both of the file's.
    let (web_client, no_web_client) = if o.web_client.is_some() || o.no_web_client.is_some() {
        (o.web_client, o.no_web_client)
    } else {
        (f.web_client, f.no_web_client)
    };
    c.web_client = match (web_client, no_web_client.unwrap_or(false)) {
        (Some(_), true) => bail!("--web-client and --no-web-client contradict each other"),
        (Some(url), false) => WebClient::redirect(&url).map_err(anyhow::Error::msg)?,
        (None, true) => WebClient::Off,
        (None, false) => WebClient::Embedded,
    };
    c.push = push_settings(f.push.unwrap_or_default())?;
    // A bad key or service account stops the start, not the first push.
    if let Some(a) = f.apns {
        let sender = tandem_relay::push::apns::ApnsSender::new(a).context("[apns]")?;
        c.push.apns = Some(std::sync::Arc::new(sender));
    }
    if let Some(g) = f.fcm {
        let sender = tandem_relay::push::fcm::FcmSender::new(g).context("[fcm]")?;
        c.push.fcm = Some(std::sync::Arc::new(sender));
    }
    let listen = pick!(listen).unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8443)));
    Ok(Settings { listen, log_json: pick!(log_json).unwrap_or(false), config: c })
}

/// What in the settings deserves a warning (logged once logging is up).
fn warnings(s: &Settings) -> Vec<String> {
    let c = &s.config;
    let mut out = Vec::new();
    if matches!(c.tls, TlsMode::Off) && !s.listen.ip().is_loopback() {
        out.push(format!(
            "plain HTTP on {}, a non-loopback address: only behind a TLS-terminating proxy",
            s.listen
        ));
    }
    for (per_ip, all, what) in [
        (c.max_connections_per_ip, c.max_connections, "max_connections"),
        (c.max_unauthenticated_per_ip, c.max_unauthenticated, "max_unauthenticated"),
        (c.max_mailboxes_per_ip, c.max_mailboxes, "max_mailboxes"),
    ] {
        if per_ip >= all {
            out.push(format!(
                "{what}_per_ip ({per_ip}) is not below {what} ({all}): one address can take them all"
            ));
        }
    }
    out
}

/// A trusted proxy network: a CIDR, or one address.
fn parse_net(s: &str) -> anyhow::Result<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .with_context(|| format!("trusted proxy {s:?} is not an address or CIDR"))
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TANDEM_RELAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: not in files or the journal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Fault tests' failpoints (`FAILPOINTS`; only with the `failpoints` feature).
    let _failpoints = tandem_relay::failpoints::setup();
    let cli = Cli::parse();
    if matches!(cli.command, Some(Command::DefaultConfig)) {
        print!("{DEFAULT_CONFIG_TOML}");
        return Ok(());
    }
    let s = settings(cli.opts)?;
    init_logging(s.log_json);
    if let Some(Command::Migrate { from, force }) = cli.command {
        return migrate(s.config, from, force).await;
    }
    for warning in warnings(&s) {
        tracing::warn!("{warning}");
    }
    let listener = tandem_relay::bind(s.listen).with_context(|| format!("binding {}", s.listen))?;
    let scheme = if matches!(s.config.tls, TlsMode::Off) { "ws" } else { "wss" };

    let shutdown = CancellationToken::new();
    let reload = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(signals(shutdown.clone(), reload.clone()));
    let mut config = s.config;
    config.reload = Some(reload);
    config.on_ready = Some(Arc::new(move |addr, _pem| {
        // Tests and scripts read this line; it is printed once the relay is ready.
        println!("tandem-relay listening on {scheme}://{addr}/v1/connect");
    }));
    config.on_metrics_ready = Some(Arc::new(|addr| {
        // Printed before the listening line, once the metrics listener is bound.
        println!("tandem-relay metrics on http://{addr}/metrics");
    }));
    tandem_relay::run(listener, config, shutdown).await?;
    Ok(())
}

/// `tandem-relay migrate`: the embedded store in `from` into the configured Redis store.
async fn migrate(config: Config, from: Option<PathBuf>, force: bool) -> anyhow::Result<()> {
    let tandem_relay::StoreBackend::Redis { url, prefix } = &config.store else {
        anyhow::bail!("migrate copies into a Redis store: give --store redis --redis-url URL");
    };
    let from = from.unwrap_or_else(|| config.data_dir.clone());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let export = tandem_relay::store::RedbStore::export(&from, now).with_context(|| {
        format!("reading the embedded store in {} (is a relay still using it?)", from.display())
    })?;
    let target = tandem_relay::store::RedisStore::connect(url, config.queue, config.routes, prefix)
        .await
        .context("connecting to Redis")?;
    let totals =
        tandem_relay::store::Store::totals(&target).await.context("reading the Redis store")?;
    if !force && (totals.queues.frames > 0 || totals.pending_authorizations > 0) {
        anyhow::bail!(
            "the Redis store holds {} frames and {} one-sided authorisations already; \
             give --force to copy into it all the same",
            totals.queues.frames,
            totals.pending_authorizations
        );
    }
    let (frames, routes) = (export.frames.len(), export.authorizations.len());
    println!("copying {frames} queued frames and {routes} authorisations from {}", from.display());
    let done = tandem_relay::migrate::migrate(export, &target, config.queue.ttl_secs, now)
        .await
        .context("the migration stopped; the Redis store holds what was copied before")?;
    println!(
        "copied {} authorisations and {} frames ({} had expired and were left out); \
         the Redis store has a store epoch of its own, so devices fetch their queues afresh",
        done.authorizations, done.frames, done.expired
    );
    Ok(())
}

#[cfg(unix)]
async fn signals(shutdown: CancellationToken, reload: Arc<tokio::sync::Notify>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload.notify_one(),
        }
    }
    tracing::info!("signal received: shutting down");
    shutdown.cancel();
}

#[cfg(not(unix))]
async fn signals(shutdown: CancellationToken, _reload: Arc<tokio::sync::Notify>) {
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_example_parses_to_the_defaults() {
        let f: FileConfig = toml::from_str(DEFAULT_CONFIG_TOML).unwrap();
        let defaults = Config::new(PathBuf::from("/var/lib/tandem-relay"));
        assert_eq!(f.queue_max_frames, Some(defaults.queue.max_frames));
        assert_eq!(f.queue_max_bytes, Some(defaults.queue.max_bytes));
        assert_eq!(f.queue_ttl_secs, Some(defaults.queue.ttl_secs));
        assert_eq!(f.idle_timeout_secs, Some(defaults.idle_timeout.as_secs()));
        assert_eq!(f.ping_interval_secs, Some(defaults.ping_interval.as_secs()));
        assert_eq!(f.ping_jitter_secs, Some(defaults.ping_jitter.as_secs()));
        assert_eq!(f.pong_timeout_secs, Some(defaults.pong_timeout.as_secs()));
        assert_eq!(f.handshake_timeout_secs, Some(defaults.handshake_timeout.as_secs()));
        assert_eq!(f.write_timeout_secs, Some(defaults.write_timeout.as_secs()));
        assert_eq!(f.delivery_window_frames, Some(defaults.delivery_window_frames));
        assert_eq!(f.delivery_window_bytes, Some(defaults.delivery_window_bytes));
        assert_eq!(f.hold_window_ms, Some(defaults.hold_window.as_millis() as u64));
        assert_eq!(f.store.as_deref(), Some("embedded"));
        assert_eq!(defaults.store, tandem_relay::StoreBackend::Embedded);
        assert_eq!(f.hold_max_bytes, Some(defaults.hold_max_bytes));
        assert_eq!(f.max_connections, Some(defaults.max_connections));
        assert_eq!(f.connects_per_ip_per_minute, Some(defaults.connects_per_ip_per_minute));
        assert_eq!(f.pair_claims_per_ip_per_minute, Some(defaults.pair_claims_per_ip_per_minute));
        assert_eq!(f.frames_per_device_per_second, Some(defaults.frames_per_device_per_second));
        assert_eq!(f.pairing_ttl_max_secs, Some(defaults.pairing_ttl_max.as_secs()));
        assert_eq!(f.restart_hint_ms, Some(defaults.restart_hint.as_millis() as u64));
        assert_eq!(f.drain_timeout_secs, Some(defaults.drain_timeout.as_secs()));
        assert_eq!(f.names, Some(defaults.names));
        assert_eq!(f.sweep_interval_ms, Some(defaults.sweep_interval.as_millis() as u64));
        assert_eq!(f.no_web_client, Some(false));
        assert_eq!(defaults.web_client, WebClient::Embedded);
        assert_eq!(f.queue_total_max_bytes, Some(defaults.queue.total_max_bytes));
        assert_eq!(f.queue_sender_share_percent, Some(defaults.queue.sender_share_percent));
        assert_eq!(f.queue_overflow_max_bytes, Some(defaults.queue.overflow_max_bytes));
        assert_eq!(f.max_pending_authorizations_per_ip, Some(defaults.routes.max_pending_per_ip));
        assert_eq!(f.pending_authorization_ttl_secs, Some(defaults.routes.pending_ttl_secs));
        assert_eq!(f.request_timeout_secs, Some(defaults.request_timeout.as_secs()));
        assert_eq!(f.http_timeout_secs, Some(defaults.http_timeout.as_secs()));
        assert_eq!(f.max_connections_per_ip, Some(defaults.max_connections_per_ip));
        assert_eq!(f.max_unauthenticated, Some(defaults.max_unauthenticated));
        assert_eq!(f.max_unauthenticated_per_ip, Some(defaults.max_unauthenticated_per_ip));
        assert_eq!(f.max_mailboxes, Some(defaults.max_mailboxes));
        assert_eq!(f.max_mailboxes_per_ip, Some(defaults.max_mailboxes_per_ip));
        assert_eq!(f.ipv6_prefix_len, Some(defaults.ipv6_prefix_len));
        let push = push_settings(f.push.unwrap()).unwrap();
        let d = &defaults.push;
        assert_eq!(push.vapid_subject, d.vapid_subject);
        assert_eq!(push.webpush_origins, d.webpush_origins);
        assert_eq!(
            (push.burst, push.interval, push.max_waiting, push.ttl, push.timeout, push.retry_after),
            (d.burst, d.interval, d.max_waiting, d.ttl, d.timeout, d.retry_after)
        );
        assert!(
            push_settings(PushFile { vapid_subject: Some("ops@x".into()), ..Default::default() })
                .is_err()
        );
        assert!(
            push_settings(PushFile {
                webpush_origins: Some(vec!["ftp://x".into()]),
                ..Default::default()
            })
            .is_err()
        );
        assert_eq!(f.trusted_proxies, Some(vec![]));
        assert!(defaults.trusted_proxies.is_empty());
        assert_eq!(f.trusted_proxy_header.as_deref(), Some("x-forwarded-for"));
        assert_eq!(defaults.trusted_proxy_header, ProxyHeader::ForwardedFor);
        // /metrics is not served by default.
        assert_eq!((f.metrics_listen, f.metrics_token), (None, None));
        assert_eq!((defaults.metrics_listen, defaults.metrics_token), (None, None));
    }

    #[test]
    fn web_client_settings() {
        let dir = tempfile::tempdir().unwrap();
        let file = |text: &str| {
            let path = dir.path().join("relay.toml");
            std::fs::write(&path, text).unwrap();
            Some(path)
        };
        let s = settings(Opts::default()).unwrap();
        assert_eq!(s.config.web_client, WebClient::Embedded);
        let o = Opts {
            config: file("web_client = \"https://app.example.com/p\"\n"),
            ..Opts::default()
        };
        assert_eq!(
            settings(o).unwrap().config.web_client,
            WebClient::Redirect("https://app.example.com/p".into())
        );
        // A flag overrides both of the file's web-client settings.
        let o = Opts {
            config: file("web_client = \"https://app.example.com/p\"\n"),
            no_web_client: Some(true),
            ..Opts::default()
        };
        assert_eq!(settings(o).unwrap().config.web_client, WebClient::Off);
        let o = Opts {
            config: file("no_web_client = true\n"),
            web_client: Some("https://app.example.com/".into()),
            ..Opts::default()
        };
        assert!(matches!(settings(o).unwrap().config.web_client, WebClient::Redirect(_)));
        let both = Opts {
            web_client: Some("https://app.example.com/".into()),
            no_web_client: Some(true),
            ..Opts::default()
        };
        assert!(settings(both).is_err());
        for bad in [
            "app.example.com/p",
            "http://app.example.com/p",
            "https://app.example.com/p#x",
            "https:///p",
        ] {
            let o = Opts { web_client: Some(bad.into()), ..Opts::default() };
            assert!(settings(o).is_err(), "{bad} was accepted");
        }
        let local =
            Opts { web_client: Some("http://192.168.1.5:5173/p".into()), ..Opts::default() };
        assert!(settings(local).is_ok());
        // The flag parses with and without a value.
        let cli = Cli::try_parse_from(["tandem-relay", "--no-web-client"]).unwrap();
        assert_eq!(cli.opts.no_web_client, Some(true));
        let cli = Cli::try_parse_from(["tandem-relay", "--no-web-client=false"]).unwrap();
        assert_eq!(cli.opts.no_web_client, Some(false));
    }

    #[test]
    fn limit_and_proxy_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            "trusted_proxies = [\"10.0.0.0/8\", \"2001:db8::1\"]\n\
             trusted_proxy_header = \"proxy-protocol\"\n\
             metrics_listen = \"127.0.0.1:9090\"\nmetrics_token = \"s3cret\"\n\
             ipv6_prefix_len = 56\nmax_mailboxes_per_ip = 3\nqueue_sender_share_percent = 20\n\
             queue_overflow_max_bytes = 1000\nmax_pending_authorizations_per_ip = 5\n\
             pending_authorization_ttl_secs = 60\n",
        )
        .unwrap();
        let o = Opts { config: Some(path.clone()), ..Opts::default() };
        let c = settings(o).unwrap().config;
        assert_eq!(c.trusted_proxies.len(), 2);
        assert_eq!(c.trusted_proxies[1].to_string(), "2001:db8::1/128");
        assert_eq!(c.trusted_proxy_header, ProxyHeader::ProxyProtocol);
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(c.metrics_token.as_deref(), Some("s3cret"));
        assert_eq!((c.ipv6_prefix_len, c.max_mailboxes_per_ip), (56, 3));
        assert_eq!(c.queue.sender_share_percent, 20);
        assert_eq!(c.queue.overflow_max_bytes, 1000);
        assert_eq!((c.routes.max_pending_per_ip, c.routes.pending_ttl_secs), (5, 60));
        // Flags win; bad values are refused.
        let cli = Cli::try_parse_from([
            "tandem-relay",
            "--trusted-proxies",
            "127.0.0.2,127.0.0.3/32",
            "--trusted-proxy-header",
            "x-forwarded-for",
            "--max-unauthenticated-per-ip",
            "7",
            "--max-pending-authorizations-per-ip",
            "9",
        ])
        .unwrap();
        let o = Opts { config: Some(path), ..cli.opts };
        let c = settings(o).unwrap().config;
        assert_eq!(c.trusted_proxies.len(), 2);
        assert_eq!(c.trusted_proxy_header, ProxyHeader::ForwardedFor);
        assert_eq!(c.max_unauthenticated_per_ip, 7);
        assert_eq!(c.routes.max_pending_per_ip, 9);
        for bad in [
            vec!["tandem-relay", "--ipv6-prefix-len", "0"],
            vec!["tandem-relay", "--queue-sender-share-percent", "101"],
        ] {
            assert!(Cli::try_parse_from(bad.clone()).is_err(), "{bad:?}");
        }
        let o = Opts { trusted_proxies: Some(vec!["not-a-net".into()]), ..Opts::default() };
        assert!(settings(o).is_err());
        let o = Opts { trusted_proxy_header: Some("forwarded".into()), ..Opts::default() };
        assert!(settings(o).is_err());
        // The defaults warn about nothing; a per-address cap that is the
        // whole does.
        assert_eq!(warnings(&settings(Opts::default()).unwrap()), Vec::<String>::new());
        let o =
            Opts { max_connections: Some(10), max_connections_per_ip: Some(10), ..Opts::default() };
        let w = warnings(&settings(o).unwrap());
        assert!(w.len() == 1 && w[0].contains("one address can take them all"), "{w:?}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, "idle_timeout_secs = 30\ntls = \"off\"\nqueue_ttl_secs = 5\n")
            .unwrap();
        let o = Opts { config: Some(path), idle_timeout_secs: Some(7), ..Opts::default() };
        let s = settings(o).unwrap();
        assert_eq!(s.config.idle_timeout, Duration::from_secs(7));
        assert_eq!(s.config.queue.ttl_secs, 5);
        assert!(matches!(s.config.tls, TlsMode::Off));
        std::fs::write(dir.path().join("bad.toml"), "no_such_setting = 1\n").unwrap();
        let o = Opts { config: Some(dir.path().join("bad.toml")), ..Opts::default() };
        assert!(settings(o).is_err());
    }
}
