//! The relay as a library: [`run`] serves a bound listener until the
//! shutdown token fires, then tells every device to reconnect later
//! (`Restarting`) and drains.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, State as AxState, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tandem_proto::ErrorCode;
use tandem_proto::frame::MAX_FRAME_LEN;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{Config, StoreBackend};
use crate::conn;
use crate::listener::ConnInfo;
use crate::net::{IpKey, forwarded_for};
use crate::state::{State, unix_now};
use crate::store::{RedbStore, RedisStore, Store, StoreError};
use crate::tls::{Tls, TlsError};

/// Why the relay could not run.
#[derive(Debug, Error)]
pub enum RelayError {
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// TLS could not be set up.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The cluster (Redis) could not be joined.
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    /// A socket error.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The VAPID key (Web Push) could not be read or made.
    #[error("push: {0}")]
    Vapid(#[from] crate::push::vapid::VapidError),
}

/// Serve on `listener` with `config` until `shutdown` is cancelled, then
/// send `Restarting` to every device, close their connections and return
/// once they are gone (or `drain_timeout` passed).
///
/// # Errors
/// [`RelayError`] when the store or TLS cannot be set up, or serving fails.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    let store = open_store(&config).await?;
    run_with_store(listener, config, store, shutdown).await
}

/// Open the store `config` names: the embedded one in its data directory
/// (a store that cannot be opened now, on a full disk say, starts down and
/// keeps trying), or Redis.
///
/// # Errors
/// [`RelayError`] when the data directory is unsafe or the store cannot be
/// reached.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, RelayError> {
    crate::fsmode::secure_dir(&config.data_dir)?;
    let store: Arc<dyn Store> = match &config.store {
        // A store that cannot be opened now (a full disk) does not stop the
        // relay: it serves, not ready, and the store keeps trying to open.
        StoreBackend::Embedded => Arc::new(RedbStore::open_or_retry(
            &config.data_dir,
            config.queue,
            config.routes,
            unix_now(),
        )?),
        // Redis away now does not stop the relay either: it serves, not
        // ready, and the store keeps trying to connect.
        StoreBackend::Redis { url, prefix } => {
            Arc::new(RedisStore::connect_or_retry(url, config.queue, config.routes, prefix)?)
        }
    };
    Ok(store)
}

/// [`run`] with a store of the caller's choosing (a Redis backend, a test double).
///
/// # Errors
/// As [`run`].
pub async fn run_with_store(
    listener: TcpListener,
    config: Config,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    let tls = Tls::start(&config.tls, config.tls_poll, shutdown.child_token()).await?;
    let cluster = match &config.store {
        StoreBackend::Redis { url, prefix } => {
            let node = config.node_id.clone().unwrap_or_else(crate::cluster::generate_node_id);
            let c = crate::cluster::Cluster::connect(url, &node, prefix).await?;
            info!(node = %node, "cluster node");
            Some(Arc::new(c))
        }
        StoreBackend::Embedded => None,
    };
    let vapid_path = match &config.push.vapid_key_file {
        Some(p) => p.clone(),
        None => config.data_dir.join(crate::push::vapid::VAPID_FILE),
    };
    let state = Arc::new(State::with_push(config, store, cluster.clone(), shutdown.clone(), None));
    load_vapid(&state, &vapid_path).await?;
    if let Some(c) = &cluster {
        tokio::spawn(crate::cluster::run(state.clone(), c.clone()));
        tokio::spawn(crate::cluster::run_heartbeat(state.clone(), c.clone()));
        tokio::spawn(crate::cluster::run_upkeep(state.clone(), c.clone()));
    }
    if let Some(epochs) = state.store.epoch_changed() {
        tokio::spawn(close_on_new_epoch(state.clone(), epochs));
    }
    let accept_stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let addr = listener.local_addr()?;
    let metrics_listener = match state.config.metrics_listen {
        Some(at) => Some(TcpListener::bind(at).await?),
        None => None,
    };
    crate::listener::start(
        listener,
        tls.as_ref().map(Tls::acceptor),
        state.clone(),
        router(state.clone()),
        accept_stop.clone(),
        tasks.clone(),
    );
    info!(%addr, tls = tls.is_some(), "relay listening");
    if let Some(l) = metrics_listener {
        let at = l.local_addr()?;
        info!(%at, "metrics listening");
        if let Some(hook) = &state.config.on_metrics_ready {
            hook(at);
        }
        let app = Router::new().route("/metrics", get(metrics)).with_state(state.clone());
        tokio::spawn(crate::http::serve_metrics(l, app, state.clone(), shutdown.clone()));
    }
    if let Some(ready) = &state.config.on_ready {
        ready(addr, tls.as_ref().and_then(Tls::self_signed_cert_pem));
    }
    let maintenance = tokio::spawn(maintain(state.clone()));
    let _flusher = tokio::spawn(crate::hold::run_flusher(state.clone()));
    if let (Some(tls), Some(reload)) = (tls.clone(), state.config.reload.clone()) {
        tokio::spawn(async move {
            loop {
                reload.notified().await;
                match tls.reload() {
                    Ok(()) => info!("certificate reloaded"),
                    Err(e) => warn!(error = %e, "certificate reload failed; keeping the old one"),
                }
            }
        });
    }

    drain(state.clone(), accept_stop).await;
    // HTTP connections that are not WebSockets were told to finish.
    tasks.close();
    let _ = tokio::time::timeout(state.config.drain_timeout, tasks.wait()).await;
    maintenance.abort();
    if let Some(c) = &state.cluster {
        c.leave().await;
    }
    Ok(())
}

/// On shutdown: refuse new connections, tell everyone to come back later,
/// close, and wait for the connections to finish.
async fn drain(state: Arc<State>, accept_stop: CancellationToken) {
    state.shutdown.cancelled().await;
    state.draining.store(true, Ordering::Release);
    accept_stop.cancel();
    let hint = u32::try_from(state.config.restart_hint.as_millis()).unwrap_or(u32::MAX);
    let conns = state.registry.all();
    info!(connections = conns.len(), "shutting down: sending restart hints");
    // Each writer sends `Restarting` itself before closing with `shutting_down`.
    let _ = hint;
    for h in &conns {
        h.close(ErrorCode::ShuttingDown, "the relay is restarting; reconnect after the hint");
    }
    let deadline = tokio::time::Instant::now() + state.config.drain_timeout;
    while state.registry.len() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if state.registry.len() > 0 {
        warn!(left = state.registry.len(), "drain timeout: closing the rest");
    }
}

/// The store's epoch changed under the relay (Redis restarted, failed over
/// or was wiped: ids may go back): every connection was told the old one in
/// its `AuthOk`, so every one is closed with a restart hint; the devices
/// come back, hear the new epoch and fetch their queues afresh (PROTOCOL.md
/// §6.6). A connection's writer also checks the epoch before every delivery,
/// so none is sent under the wrong one meanwhile.
async fn close_on_new_epoch(state: Arc<State>, mut epochs: tokio::sync::watch::Receiver<u64>) {
    let mut told = *epochs.borrow_and_update();
    while epochs.changed().await.is_ok() {
        let now = *epochs.borrow_and_update();
        // 0: not known yet (the store has not reached Redis); nobody was
        // told an epoch then (and connections are refused meanwhile).
        let was = std::mem::replace(&mut told, now);
        if was == 0 || was == now {
            continue;
        }
        let conns = state.registry.all();
        warn!(connections = conns.len(), "the store's epoch changed; closing every connection");
        for h in conns {
            h.close(ErrorCode::ShuttingDown, "the relay's store changed; reconnect after the hint");
        }
    }
}

async fn maintain(state: Arc<State>) {
    let mut tick =
        tokio::time::interval(state.config.sweep_interval.max(Duration::from_millis(10)));
    loop {
        tick.tick().await;
        // In a cluster one node sweeps the shared store at a time.
        let sweeps = match &state.cluster {
            Some(c) => c.lead("sweep", state.config.sweep_interval * 3).await,
            None => true,
        };
        let expired = if sweeps { Some(state.store.expire(unix_now()).await) } else { None };
        match expired.unwrap_or(Ok(crate::store::Expired::default())) {
            Ok(x) => {
                if x.frames > 0 {
                    state.metrics.dropped("ttl", x.frames);
                    info!(frames = x.frames, "expired queued frames");
                }
                if x.authorizations > 0 {
                    state.metrics.authorizations_expired(x.authorizations);
                    info!(authorizations = x.authorizations, "expired one-sided authorisations");
                }
            }
            Err(e) => warn!(error = %e, "expiry sweep failed"),
        }
        let gone = state.mailboxes.sweep();
        for _ in 0..gone {
            state.metrics.pairing("expired");
        }
        state.limits.sweep();
        if let Ok(t) = state.store.totals().await {
            state.metrics.queue_depth(t.queues);
            state.metrics.pending_authorizations(t.pending_authorizations);
        }
    }
}

fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/v1/connect", get(connect))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_with_token))
        .route("/v1/push", get(push_info))
        // The web client (`/`, `/p`, `/assets/*`, the manifest and icons) and 404s.
        .fallback(crate::web::handle)
        .with_state(state)
}

/// `/readyz`: 200 `ready` while the relay takes traffic; 503 with a short
/// reason while it drains or its store cannot write (`store unavailable:
/// ...`, e.g. a full disk) or does not answer within 2 s.
async fn ready(AxState(state): AxState<Arc<State>>) -> Response {
    if state.draining.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    let health = state.store.health();
    state.metrics.store_up(health.is_ok());
    if let Err(why) = health {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("store unavailable: {why}\n"))
            .into_response();
    }
    if let Some(Err(why)) = state.cluster.as_ref().map(|c| c.health()) {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("cluster unavailable: {why}\n"))
            .into_response();
    }
    // A cheap store round trip (one lookup), not a scan: /readyz is public.
    match tokio::time::timeout(
        Duration::from_secs(2),
        state.store.depth(tandem_proto::DeviceId([0; 16])),
    )
    .await
    {
        Ok(Ok(_)) => "ready\n".into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response(),
    }
}

/// `/metrics` on the main listener: only with the configured bearer token
/// (401 without it), and not at all (404) when no token is configured.
async fn metrics_with_token(headers: HeaderMap, AxState(state): AxState<Arc<State>>) -> Response {
    let Some(token) = &state.config.metrics_token else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !token_matches(given.as_bytes(), token.as_bytes()) {
        state.metrics.limit_refused("metrics_token");
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "unauthorized\n",
        )
            .into_response();
    }
    metrics(AxState(state)).await
}

/// Whether `given` is the metrics `token`, in a time that tells nothing
/// about the token: fixed-size hashes of both are compared in constant
/// time, so neither a differing byte nor a differing length shows.
fn token_matches(given: &[u8], token: &[u8]) -> bool {
    use blake2::{Blake2s256, Digest};
    use subtle::ConstantTimeEq;
    const LABEL: &[u8] = b"tandem-relay metrics token v1\0";
    let hash = |b: &[u8]| Blake2s256::new().chain_update(LABEL).chain_update(b).finalize();
    bool::from(hash(given).as_slice().ct_eq(hash(token).as_slice()))
}

async fn metrics(AxState(state): AxState<Arc<State>>) -> Response {
    state.metrics.store_up(state.store.health().is_ok());
    state.metrics.store_stats(state.store.stats());
    if let Some(c) = &state.cluster {
        let dropped = c.garbage.load(std::sync::atomic::Ordering::Relaxed);
        state.metrics.cluster(c.health().is_ok(), dropped);
    }
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response()
}

/// Read or make the VAPID key and turn Web Push on. A key file that holds
/// something else stops the relay (the operator's mistake); one that cannot
/// be written now (a full disk) does not: the relay serves without Web
/// Push (`/v1/push` 404, `push_unavailable`) and tries again every 5 s.
async fn load_vapid(state: &Arc<State>, path: &std::path::Path) -> Result<(), RelayError> {
    use crate::push::vapid::{Vapid, VapidError};
    let attempt = |path: &std::path::Path| {
        if let Some(dir) = path.parent() {
            crate::fsmode::create_private_dir(dir)
                .map_err(|source| VapidError::Io { path: dir.display().to_string(), source })?;
        }
        Vapid::load_or_create(path)
    };
    match attempt(path) {
        Ok(v) => {
            info!(public_key = %v.public_key_b64(), "Web Push (VAPID) key");
            state.push.install(Arc::new(v));
            Ok(())
        }
        Err(e @ VapidError::Io { .. }) => {
            warn!(error = %e, "no Web Push until the VAPID key can be written; trying again");
            let (state, path) = (Arc::clone(state), path.to_owned());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    if state.shutdown.is_cancelled() {
                        return;
                    }
                    if let Ok(v) = attempt(&path) {
                        info!(public_key = %v.public_key_b64(), "Web Push (VAPID) key");
                        state.push.install(Arc::new(v));
                        return;
                    }
                }
            });
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// `GET /v1/push`: the VAPID public key and the push kinds this relay
/// sends (PROTOCOL.md §6.14). No authentication: the key is public.
async fn push_info(AxState(state): AxState<Arc<State>>) -> Response {
    let Some(vapid) = state.push.vapid() else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let body = serde_json::json!({
        "vapid_public_key": vapid.public_key_b64(),
        "kinds": state.push.kinds(),
    });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// The host part of a `Host` header value, lower case, without port or brackets.
pub(crate) fn host_only(host: &str) -> String {
    let h = host.trim().to_ascii_lowercase();
    let h = h.trim_end_matches('.');
    if let Some(v6) = h.strip_prefix('[') {
        return v6.split(']').next().unwrap_or_default().to_owned();
    }
    match h.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.contains(':') => {
            name.to_owned()
        }
        _ => h.to_owned(),
    }
}

async fn connect(
    ws: WebSocketUpgrade,
    Extension(info): Extension<ConnInfo>,
    headers: HeaderMap,
    AxState(state): AxState<Arc<State>>,
) -> Response {
    if state.draining.load(Ordering::Acquire) {
        state.metrics.refused(ErrorCode::ShuttingDown);
        return (StatusCode::SERVICE_UNAVAILABLE, "the relay is restarting\n").into_response();
    }
    let host =
        headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default().to_owned();
    let name = host_only(&host);
    if !state.config.names.iter().any(|n| host_only(n) == name) {
        state.metrics.refused(ErrorCode::AuthFailed);
        return (
            StatusCode::MISDIRECTED_REQUEST,
            format!("this relay does not answer to {name:?}; add it to the relay's names\n"),
        )
            .into_response();
    }
    // Behind a trusted proxy that names the client per request: the
    // per-address limits apply now, to that address.
    let mut peer = info.client;
    if info.forwarded
        && let Some(ip) = forwarded_for(&headers, &state.config.trusted_proxies)
    {
        peer = std::net::SocketAddr::new(ip, 0);
    }
    let key = IpKey::new(peer.ip(), state.config.ipv6_prefix_len);
    let Some(mut unauthenticated) = crate::registry::lock(&info.unauthenticated).take() else {
        // A second upgrade on one connection cannot happen; refuse anyway.
        return (StatusCode::BAD_REQUEST, "one WebSocket per connection\n").into_response();
    };
    if info.forwarded {
        let refused = if !crate::listener::admit_rate(&state, key) {
            Some("too many connections from your address; wait a minute")
        } else if let Err(refusal) = state.admission.add_ip(&mut unauthenticated, key) {
            state.metrics.limit_refused(refusal.label());
            Some("too many connections from your address")
        } else {
            None
        };
        if let Some(message) = refused {
            // The connection still counts until it goes.
            *crate::registry::lock(&info.unauthenticated) = Some(unauthenticated);
            return too_many(message);
        }
    }
    let slot = state.slots.clone().try_acquire_owned().ok();
    let accepted: conn::Accepted =
        Box::new(conn::Arrival { peer, key, host, state, slot, unauthenticated });
    ws.read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(4 * MAX_FRAME_LEN)
        .max_message_size(MAX_FRAME_LEN)
        .max_frame_size(MAX_FRAME_LEN)
        .on_upgrade(move |socket| conn::serve(socket, accepted))
}

fn too_many(message: &'static str) -> Response {
    (StatusCode::TOO_MANY_REQUESTS, format!("{message}\n")).into_response()
}

/// The WebSocket's read buffer, kept for the connection's life; each of
/// its reads takes at most this much. The reads come from
/// [`crate::io::Io`], which reads the socket up to 16 KiB at a time and
/// keeps nothing while idle, so a small buffer costs copies, not system
/// calls (docs/BENCHMARKS.md, "Memory per idle connection").
pub(crate) const WS_READ_BUFFER: usize = 512;

/// Bytes the WebSocket buffers before it writes to the socket without a
/// flush. The connection's writer feeds every frame that is ready and then
/// flushes, so a burst of small frames costs a system call per 4 KiB, not
/// one per frame; a frame on its own is written at once, as before. The
/// buffer keeps its allocation (tungstenite does not shrink it), so this is
/// also about what a connection holds after a burst: at most this plus its
/// largest frame, the same as the read buffer.
pub(crate) const WRITE_BUFFER: usize = 4 * 1024;

#[cfg(test)]
mod tests {
    use super::{host_only, token_matches};

    #[test]
    fn the_metrics_token_must_match_exactly() {
        assert!(token_matches(b"s3cret-token", b"s3cret-token"));
        for given in [&b""[..], b"s3cret", b"s3cret-token ", b"s3cret-tokeN", b"x3cret-token"] {
            assert!(!token_matches(given, b"s3cret-token"), "{given:?}");
        }
    }

    #[test]
    fn host_header_names_compare_without_port() {
        assert_eq!(host_only("Relay.Example.com:8443"), "relay.example.com");
        assert_eq!(host_only("relay.example.com."), "relay.example.com");
        assert_eq!(host_only("127.0.0.1:5000"), "127.0.0.1");
        assert_eq!(host_only("[::1]:5000"), "::1");
        assert_eq!(host_only("::1"), "::1");
    }
}
