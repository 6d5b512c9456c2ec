//! One HTTP/1.1 connection (hyper), until it closes or becomes a WebSocket.
//!
//! Deadlines, so that connections that never become devices cannot pile up:
//! every request head must arrive within `request_timeout` (hyper's header
//! read timeout; it also bounds the wait for the next request on a
//! kept-alive connection), and a connection that has not become a WebSocket
//! after `http_timeout` is shut down gracefully (a response being written
//! gets `request_timeout` more, then the connection is dropped). On relay
//! shutdown the same graceful shutdown happens at once. Once upgraded, the
//! WebSocket belongs to its own task (`conn`) and this one ends. The
//! metrics listener's connections get the same deadlines ([`serve_metrics`]).

use std::sync::Arc;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tower::Service;
use tracing::debug;

use crate::io::Io;
use crate::listener::ConnInfo;
use crate::state::State;

/// The most bytes of a request head the relay buffers (hyper's read
/// buffer; its default is ~408 KiB). The relay's requests are a WebSocket
/// upgrade and the web client's GETs; a longer head is refused (431). So
/// the connections not authenticated yet hold at most this much each while
/// `request_timeout` runs, not 400 KB (`max_unauthenticated` times that).
pub(crate) const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// Serve `io` with `app`; every request carries `info` as an extension.
pub(crate) async fn serve_connection(
    io: Io,
    info: ConnInfo,
    state: Arc<State>,
    app: Router,
    shutdown: CancellationToken,
) {
    let client = info.client;
    let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        req.extensions_mut().insert(info.clone());
        let mut app = app.clone();
        async move { app.call(req).await }
    });
    let request_timeout = state.config.request_timeout;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(request_timeout)
        .max_buf_size(MAX_REQUEST_HEAD);
    let conn = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
    tokio::pin!(conn);
    let lifetime = tokio::time::sleep(state.config.http_timeout);
    tokio::pin!(lifetime);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                if e.is_timeout() {
                    state.metrics.limit_refused("request_timeout");
                    debug!(%client, "no request in time: closed");
                } else {
                    debug!(%client, error = %e, "HTTP connection failed");
                }
            }
            return;
        }
        () = &mut lifetime => {
            state.metrics.limit_refused("http_timeout");
            debug!(%client, "not a WebSocket within http_timeout: closing");
        }
        () = shutdown.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(request_timeout, conn).await;
}

/// Most connections the metrics listener serves at once (a scraper needs
/// one or two); more are closed at once.
const MAX_METRICS_CONNECTIONS: usize = 16;

/// Serve the metrics listener `tcp` with `app` until `shutdown`, with the
/// main listener's deadlines (`request_timeout` for each request head,
/// `http_timeout` for the connection) and at most
/// [`MAX_METRICS_CONNECTIONS`] at once: it is meant for a private address,
/// but nothing that reaches it may hold connections (the process's file
/// descriptors) for good.
pub(crate) async fn serve_metrics(
    tcp: tokio::net::TcpListener,
    app: Router,
    state: Arc<State>,
    shutdown: CancellationToken,
) {
    let places = Arc::new(tokio::sync::Semaphore::new(MAX_METRICS_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            r = tcp.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(place) = places.clone().try_acquire_owned() else { continue };
        let (app, shutdown) = (app.clone(), shutdown.clone());
        let (request_timeout, http_timeout) =
            (state.config.request_timeout, state.config.http_timeout);
        tokio::spawn(async move {
            let _place = place;
            let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let mut app = app.clone();
                async move { app.call(req).await }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(request_timeout)
                .max_buf_size(MAX_REQUEST_HEAD);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                () = tokio::time::sleep(http_timeout) => {}
                () = shutdown.cancelled() => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(request_timeout, conn).await;
        });
    }
}
