//! One HTTP/1.1 connection (hyper), until it closes or becomes a WebSocket.
//!
//! Deadlines, so that connections that never become devices cannot pile up:
//! every request head must arrive within `request_timeout` (hyper's header
//! read timeout; it also bounds the wait for the next request on a
//! kept-alive connection), and a connection that has not become a WebSocket
//! after `http_timeout` is shut down gracefully (a response being written
//! gets `request_timeout` more, then the connection is dropped). On relay
//! shutdown the same graceful shutdown happens at once. Once upgraded, the
//! WebSocket belongs to its own task (`conn`) and this one ends.

use std::sync::Arc;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tower::Service;
use tracing::debug;

use crate::listener::{ConnInfo, Io};
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
