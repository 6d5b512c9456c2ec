//! Accepting connections: TCP with `TCP_NODELAY`; the client's address
//! (from a trusted proxy's PROXY header, else the TCP peer); the per-address
//! accept throttle and the counts of connections not authenticated yet
//! (`admission`); then, in a task of the connection's own, the PROXY header
//! and the TLS handshake under `request_timeout` and the HTTP connection
//! (`http`). One slow client never holds up the accept loop.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use tandem_proto::ErrorCode;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::admission::Unauthenticated;
use crate::io::Io;
use crate::net::{IpKey, ProxyHeader, is_trusted};
use crate::state::State;

/// The accept queue asked for: as deep as the kernel allows (Linux caps it
/// at `net.core.somaxconn`, 4096 by default). After a restart every device
/// connects again within a second or two; a connection that finds the queue
/// full has its handshake dropped, and the kernel retries it only after
/// 1 s, then 2 s, 4 s… So a shallow queue (tokio's `bind` asks for 1024)
/// turned a 10,000-connection reconnect storm into a tail of several
/// seconds (docs/BENCHMARKS.md, "Restart storm"). Queued connections cost
/// the kernel's socket memory only, which they hold anyway once accepted.
pub const LISTEN_BACKLOG: u32 = 65_535;

/// Bind a TCP listener on `addr` for [`crate::run`], with
/// [`LISTEN_BACKLOG`] and `SO_REUSEADDR` (a restarted relay binds its port
/// again while the old connections linger in `TIME_WAIT`), as tokio's
/// `TcpListener::bind` does but for the queue's depth.
///
/// # Errors
/// The socket cannot be made, bound or put to listen.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What handlers know about the connection a request came on (a request
/// extension).
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// The client: named by a trusted proxy's PROXY header, else the TCP peer.
    pub(crate) client: SocketAddr,
    /// The TCP peer is a trusted proxy that names the client in
    /// `X-Forwarded-For` (read per request).
    pub(crate) forwarded: bool,
    /// The connection's place among those not authenticated yet; the
    /// WebSocket upgrade takes it along to the device connection.
    pub(crate) unauthenticated: Arc<Mutex<Option<Unauthenticated>>>,
}

/// Accept on `tcp` until `stop` fires; each connection is served in a task
/// tracked by `tasks`, and told to finish when `shutdown` fires.
pub(crate) fn start(
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
    app: Router,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    tokio::spawn(accept_loop(tcp, tls, state, app, stop, tasks));
}

async fn accept_loop(
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
    app: Router,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let (stream, addr) = tokio::select! {
            () = stop.cancelled() => return,
            r = tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let c = &state.config;
        let from_proxy = is_trusted(addr.ip(), &c.trusted_proxies);
        let proxy_protocol = from_proxy && c.trusted_proxy_header == ProxyHeader::ProxyProtocol;
        // The client's address is known now unless a proxy names it later.
        let known = (!from_proxy).then(|| IpKey::new(addr.ip(), c.ipv6_prefix_len));
        if let Some(key) = known
            && !admit_rate(&state, key)
        {
            continue;
        }
        let unauthenticated = match state.admission.unauthenticated(known) {
            Ok(u) => u,
            Err(refusal) => {
                state.metrics.limit_refused(refusal.label());
                debug!(%addr, limit = refusal.label(), "connection refused");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        let state = state.clone();
        let app = app.clone();
        let shutdown = stop.clone();
        tasks.spawn(async move {
            let deadline = Instant::now() + state.config.request_timeout;
            let mut stream = stream;
            let mut unauthenticated = unauthenticated;
            let client = if proxy_protocol {
                match read_proxy_header(&state, &mut stream, addr, deadline).await {
                    Some(client) => client,
                    None => return,
                }
            } else {
                addr
            };
            if proxy_protocol {
                let key = IpKey::new(client.ip(), state.config.ipv6_prefix_len);
                if !admit_rate(&state, key) {
                    return;
                }
                if let Err(refusal) = state.admission.add_ip(&mut unauthenticated, key) {
                    state.metrics.limit_refused(refusal.label());
                    debug!(%client, limit = refusal.label(), "connection refused");
                    return;
                }
            }
            let io = match tls {
                None => Io::plain(stream),
                Some(acceptor) => match timeout_at(deadline, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => Io::tls(Box::new(s)),
                    Ok(Err(e)) => {
                        debug!(%client, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        state.metrics.refused(ErrorCode::HandshakeTimeout);
                        state.metrics.limit_refused("request_timeout");
                        debug!(%client, "TLS handshake timed out");
                        return;
                    }
                },
            };
            let info = ConnInfo {
                client,
                forwarded: from_proxy && !proxy_protocol,
                unauthenticated: Arc::new(Mutex::new(Some(unauthenticated))),
            };
            crate::http::serve_connection(io, info, state, app, shutdown).await;
        });
    }
}

/// The per-address accept throttle (`connects_per_ip_per_minute`).
pub(crate) fn admit_rate(state: &State, key: IpKey) -> bool {
    if state.limits.connect(key) {
        return true;
    }
    state.metrics.refused(ErrorCode::RateLimited);
    state.metrics.limit_refused("connect_rate");
    debug!(ip = %key, "connection refused: per-address accept rate");
    false
}

/// The client named by a trusted proxy's PROXY header (the proxy itself
/// when the header names nobody); `None`: refused (logged and counted).
async fn read_proxy_header(
    state: &State,
    stream: &mut TcpStream,
    addr: SocketAddr,
    deadline: Instant,
) -> Option<SocketAddr> {
    match timeout_at(deadline, crate::proxy::read_header(stream)).await {
        Ok(Ok(client)) => Some(client.unwrap_or(addr)),
        Ok(Err(e)) => {
            state.metrics.limit_refused("proxy_header");
            debug!(%addr, error = %e, "PROXY header refused");
            None
        }
        Err(_) => {
            state.metrics.limit_refused("request_timeout");
            debug!(%addr, "no PROXY header in time");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bound_listener_accepts_a_queue_of_connections_and_its_port_binds_again() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // More connections than the 128 the relay had wait to be accepted,
        // none accepted yet, and every one completes its handshake at once
        // (a full queue drops it: the kernel retries a second later). The
        // kernel caps the queue at `net.core.somaxconn`.
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(100);
        let n = somaxconn.min(200);
        let mut clients = Vec::new();
        for _ in 0..n {
            let connect = TcpStream::connect(addr);
            let client = tokio::time::timeout(Duration::from_millis(900), connect).await;
            clients.push(client.expect("a handshake was dropped").unwrap());
        }
        for _ in 0..n {
            let accepted = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await;
            assert!(accepted.unwrap().is_ok());
        }
        // A restarted relay takes its port again at once (`SO_REUSEADDR`),
        // while the old connections linger.
        drop(listener);
        let again = bind(addr).unwrap();
        assert_eq!(again.local_addr().unwrap(), addr);
        drop(clients);
    }
}
