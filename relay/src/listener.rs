//! Accepting connections: TCP with `TCP_NODELAY`, a per-IP accept throttle,
//! and (when configured) a TLS handshake under a deadline. Handshakes run in
//! their own tasks, so one slow client never holds up the accept loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tandem_proto::ErrorCode;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::state::State;

/// A plain or TLS connection. The TLS stream is boxed: it is over a
/// kilobyte (rustls's connection state), and hyper keeps the `Io` of an
/// upgraded connection for the connection's life, so a plain connection
/// would otherwise carry that size too.
pub(crate) type Io = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// The listener axum serves from.
pub(crate) struct RelayListener {
    rx: mpsc::Receiver<(Io, SocketAddr)>,
    local: SocketAddr,
}

/// The remote address of a connection, for handlers (`ConnectInfo<Peer>`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub(crate) SocketAddr);

impl Connected<IncomingStream<'_, RelayListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, RelayListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl RelayListener {
    /// Start accepting on `tcp`; stops when `shutdown` fires.
    pub(crate) fn start(
        tcp: TcpListener,
        tls: Option<TlsAcceptor>,
        handshake_timeout: Duration,
        state: Arc<State>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(accept_loop(tcp, tls, handshake_timeout, state, shutdown, tx));
        Ok(Self { rx, local })
    }
}

async fn accept_loop(
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    state: Arc<State>,
    shutdown: CancellationToken,
    tx: mpsc::Sender<(Io, SocketAddr)>,
) {
    loop {
        let (stream, addr) = tokio::select! {
            () = shutdown.cancelled() => return,
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
        if !state.limits.connect(addr.ip()) {
            state.metrics.refused(ErrorCode::RateLimited);
            debug!(ip = %addr.ip(), "connection refused: per-IP accept rate");
            continue;
        }
        let _ = stream.set_nodelay(true);
        match &tls {
            None => {
                if tx.send((Either::Left(stream), addr)).await.is_err() {
                    return;
                }
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                let state = state.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            let _ = tx.send((Either::Right(Box::new(s)), addr)).await;
                        }
                        Ok(Err(e)) => debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => {
                            state.metrics.refused(ErrorCode::HandshakeTimeout);
                            debug!(%addr, "TLS handshake timed out");
                        }
                    }
                });
            }
        }
    }
}

impl Listener for RelayListener {
    type Io = Io;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept loop stopped (shutdown): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
