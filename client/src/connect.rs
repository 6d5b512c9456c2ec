//! One authenticated relay connection: TCP, TLS (rustls with ring), the
//! WebSocket upgrade, then the relay's challenge-response.
//!
//! [`Endpoint`] is a parsed relay URL plus its TLS configuration, built once
//! and reused for every (re)connection. [`Endpoint::connect`] returns a
//! [`Connection`] that has passed `Hello → Challenge → Auth → AuthOk`; the
//! whole sequence runs under one deadline. [`crate::Client`] uses this layer
//! and adds reconnection, the outbox and liveness; tools that want a raw
//! connection (load generators, tests) can use it directly.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::Uri;
use tandem_proto::frame::{LEVEL, MAX_FRAME_LEN};
use tandem_proto::{DeviceId, DeviceKey, ErrorCode, Frame, FrameError, Role, relay_auth};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, http::HeaderValue};
use tokio_tungstenite::{
    Connector as WsConnector, MaybeTlsStream, WebSocketStream, client_async_tls_with_config,
};
use tracing::{debug, warn};

use crate::error::ClientError;
use crate::race;

/// The default deadline for connecting, the TLS and WebSocket handshakes and
/// authentication together.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// WebSocket read buffer: small, many devices share a relay and a phone's
/// memory matters more than bulk throughput.
const READ_BUFFER_SIZE: usize = 4 * 1024;

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A relay to connect to: its URL, the `host[:port]` the client dials (sent
/// as the `Host` header and checked against the relay's challenge), and the
/// TLS trust configuration.
#[derive(Clone)]
pub struct Endpoint {
    url: String,
    uri: Uri,
    /// The host for TCP, without IPv6 brackets.
    host: String,
    port: u16,
    /// `host[:port]` exactly as sent in the `Host` header.
    dialed: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The local address connections are made from (any port), if chosen.
    local_ip: Option<IpAddr>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Parse a relay URL (`wss://relay.example.com:8443/v1/connect`, or
    /// `ws://127.0.0.1:PORT/v1/connect` for local tests) and build the TLS
    /// configuration for `wss`: the webpki (Mozilla) roots plus every
    /// certificate in `extra_roots_pem` (PEM text, one or more certificates
    /// each), for relays with a self-signed or private-CA certificate.
    ///
    /// # Errors
    /// [`ClientError::InvalidUrl`] for a URL that is not `ws`/`wss` with a
    /// host (or that carries credentials); [`ClientError::Tls`] when an extra
    /// root does not parse or is refused.
    pub fn new(url: &str, extra_roots_pem: &[String]) -> Result<Self, ClientError> {
        let bad =
            |reason: &str| ClientError::InvalidUrl { url: url.to_owned(), reason: reason.into() };
        let uri: Uri = url.parse().map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let tls = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => return Err(bad("the scheme must be ws or wss")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        let host = authority.host();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tls = if tls { Some(tls_config(extra_roots_pem)?) } else { None };
        Ok(Self {
            url: url.to_owned(),
            dialed: authority.as_str().to_owned(),
            host: host.to_owned(),
            port,
            uri,
            tls,
            local_ip: None,
        })
    }

    /// Make connections from `ip` (any free port) instead of the address the
    /// system picks: a load generator spreads many connections over several
    /// loopback addresses (`127.0.0.2`, …) so that ports do not run out.
    #[must_use]
    pub fn with_local_ip(mut self, ip: Option<IpAddr>) -> Self {
        self.local_ip = ip;
        self
    }

    /// The URL as given.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The `host[:port]` this client dials: the `Host` header it sends and
    /// the name the relay's challenge must carry.
    #[must_use]
    pub fn dialed_name(&self) -> &str {
        &self.dialed
    }

    /// Connect and authenticate as `key` in `role`, all within `timeout`.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] past the deadline; [`ClientError::Io`],
    /// [`ClientError::Tls`] or [`ClientError::WebSocket`] when the relay
    /// cannot be reached; [`ClientError::WrongRelay`] when the challenge
    /// names another relay (no `Auth` is sent); [`ClientError::Refused`] or
    /// [`ClientError::Disconnected`] when the relay refuses (for example
    /// `auth_failed`); [`ClientError::Protocol`] when it breaks the protocol.
    pub async fn connect(
        &self,
        key: &DeviceKey,
        role: Role,
        timeout: Duration,
    ) -> Result<Connection, ClientError> {
        match tokio::time::timeout(timeout, self.connect_inner(key, role, timeout)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// The TCP connection, from [`Endpoint::with_local_ip`]'s address if
    /// set; an attempt not connected within [`race::STAGGER`] gets a fresh
    /// one beside it (a lost SYN is otherwise sent again only after 1, 3,
    /// 7 s: `crate::race`).
    async fn tcp(&self) -> std::io::Result<TcpStream> {
        race::race(|| self.tcp_once(), race::STAGGER, race::LIVE).await
    }

    /// One TCP connection attempt.
    async fn tcp_once(&self) -> std::io::Result<TcpStream> {
        let Some(local) = self.local_ip else {
            return TcpStream::connect((self.host.as_str(), self.port)).await;
        };
        let mut last = None;
        for remote in tokio::net::lookup_host((self.host.as_str(), self.port)).await? {
            if remote.is_ipv4() != local.is_ipv4() {
                continue;
            }
            let socket = if local.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            socket.bind(SocketAddr::new(local, 0))?;
            match socket.connect(remote).await {
                Ok(tcp) => return Ok(tcp),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                format!("no address of the relay's family of {local}"),
            )
        }))
    }

    async fn connect_inner(
        &self,
        key: &DeviceKey,
        role: Role,
        write_timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let tcp = self.tcp().await.map_err(|e| ClientError::Io(format!("{}: {e}", self.dialed)))?;
        tcp.set_nodelay(true).map_err(|e| ClientError::Io(e.to_string()))?;

        let mut request = self.uri.clone().into_client_request()?;
        request.headers_mut().insert(
            http::header::USER_AGENT,
            HeaderValue::from_static(concat!("tandem-client/", env!("CARGO_PKG_VERSION"))),
        );
        let connector = match &self.tls {
            Some(config) => WsConnector::Rustls(Arc::clone(config)),
            None => WsConnector::Plain,
        };
        let (ws, _response) =
            client_async_tls_with_config(request, tcp, Some(ws_config()), Some(connector)).await?;
        let mut conn = Connection {
            ws,
            device_id: key.public().device_id(),
            queued: 0,
            relay_ping_interval: Duration::ZERO,
            store_epoch: 0,
            write_timeout,
        };

        // Protocol levels 1 to LEVEL: a level-2 relay may answer sends with
        // `Oks`; level 3 takes the push frames.
        conn.send(&Frame::Hello { min_version: 1, max_version: LEVEL, role }).await?;
        let challenge = conn.recv_handshake().await?;
        let auth = match relay_auth::prove(key, role, &self.dialed, &challenge) {
            Ok(auth) => auth,
            Err(e) => {
                warn!(relay = %self.dialed, error = %e, "refusing the relay's challenge");
                conn.close(None).await;
                return Err(e.into());
            }
        };
        conn.send(&auth).await?;
        match conn.recv_handshake().await? {
            Frame::AuthOk { device_id, queued, ping_interval_ms, store_epoch } => {
                if device_id != conn.device_id {
                    conn.close(None).await;
                    return Err(ClientError::Protocol(format!(
                        "AuthOk names device {device_id}, not this device ({})",
                        conn.device_id
                    )));
                }
                conn.queued = queued;
                conn.relay_ping_interval = Duration::from_millis(u64::from(ping_interval_ms));
                conn.store_epoch = store_epoch;
                debug!(relay = %self.dialed, device = %device_id, queued, store_epoch, "authenticated");
                Ok(conn)
            }
            other => {
                conn.close(None).await;
                Err(ClientError::Protocol(format!("expected AuthOk, got {}", other.frame_type())))
            }
        }
    }
}

/// The WebSocket limits: one relay frame per message, never more than
/// [`MAX_FRAME_LEN`]; small buffers, frames written as soon as they are sent.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_SIZE)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * MAX_FRAME_LEN)
        .max_message_size(Some(MAX_FRAME_LEN))
        .max_frame_size(Some(MAX_FRAME_LEN))
}

/// A rustls client configuration (ring provider) trusting the webpki roots
/// plus the certificates in `extra_roots_pem`.
///
/// # Errors
/// [`ClientError::Tls`] when a PEM text holds no certificate or one that
/// cannot be a root.
pub fn tls_config(extra_roots_pem: &[String]) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for pem in extra_roots_pem {
        let mut found = 0usize;
        for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
            let cert = cert.map_err(|e| {
                ClientError::Tls(format!("cannot read an extra root certificate: {e}"))
            })?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Tls(format!("unusable extra root certificate: {e}")))?;
            found += 1;
        }
        if found == 0 {
            return Err(ClientError::Tls("no certificate in an extra root PEM".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// An authenticated relay connection.
pub struct Connection {
    ws: WsStream,
    device_id: DeviceId,
    queued: u32,
    relay_ping_interval: Duration,
    store_epoch: u64,
    write_timeout: Duration,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("device_id", &self.device_id)
            .field("queued", &self.queued)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// This device's id, as the relay confirmed it in `AuthOk`.
    #[must_use]
    pub fn device_id(&self) -> DeviceId {
        self.device_id
    }

    /// How many deliveries were waiting when the connection was authenticated.
    #[must_use]
    pub fn queued(&self) -> u32 {
        self.queued
    }

    /// How often the relay said it will ping.
    #[must_use]
    pub fn relay_ping_interval(&self) -> Duration {
        self.relay_ping_interval
    }

    /// The relay's store epoch from `AuthOk` (PROTOCOL.md §6.6): delivery
    /// ids compare only within one epoch.
    #[must_use]
    pub fn store_epoch(&self) -> u64 {
        self.store_epoch
    }

    /// How long a frame may take to be written before the connection is
    /// considered dead (defaults to the connect timeout).
    pub fn set_write_timeout(&mut self, timeout: Duration) {
        self.write_timeout = timeout;
    }

    /// Send one frame.
    ///
    /// # Errors
    /// [`ClientError::TooLarge`] for a payload over the limit (nothing is
    /// sent); [`ClientError::Timeout`] when the relay does not take the frame
    /// within the write timeout; otherwise the connection failed.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), ClientError> {
        let bytes = frame.encode().map_err(|e| match e {
            FrameError::TooLarge(_) => ClientError::TooLarge,
            other => ClientError::Protocol(other.to_string()),
        })?;
        match tokio::time::timeout(self.write_timeout, self.ws.send(Message::Binary(bytes.into())))
            .await
        {
            Ok(result) => result.map_err(ClientError::from),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Receive the next frame. Frames of a type or version this build does
    /// not know (a newer relay's) are logged and skipped, as are WebSocket
    /// control and text messages. Cancel safe.
    ///
    /// # Errors
    /// [`ClientError::Disconnected`] (with the relay's code when it closed
    /// with a Tandem close code) or another error when the connection ended;
    /// [`ClientError::Protocol`] for a frame of a known type that does not
    /// decode (a malformed `Oks`, say): skipping it could lose an answer or
    /// a delivery, so the connection is given up (what was in flight goes
    /// again on the next one).
    pub async fn recv(&mut self) -> Result<Frame, ClientError> {
        loop {
            let message = match self.ws.next().await {
                Some(Ok(message)) => message,
                Some(Err(e)) => return Err(read_error(e)),
                None => {
                    return Err(ClientError::Disconnected {
                        code: None,
                        reason: "the relay closed the connection".into(),
                    });
                }
            };
            match message {
                Message::Binary(bytes) => match Frame::decode(&bytes) {
                    Ok(frame) => return Ok(frame),
                    Err(e @ (FrameError::UnknownType(_) | FrameError::UnsupportedVersion(_))) => {
                        warn!(error = %e, len = bytes.len(), "skipping an unknown frame");
                    }
                    Err(e) => {
                        warn!(error = %e, len = bytes.len(), "the relay sent a malformed frame");
                        return Err(ClientError::Protocol(format!(
                            "the relay sent a malformed frame: {e}"
                        )));
                    }
                },
                Message::Close(close) => return Err(closed(close.as_ref())),
                Message::Text(_) => warn!("skipping a text message from the relay"),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Close the connection politely (with `code`'s close code, or a normal
    /// close), waiting at most the write timeout.
    pub async fn close(&mut self, code: Option<ErrorCode>) {
        let frame = CloseFrame {
            code: code.map_or(CloseCode::Normal, |c| CloseCode::from(c.close_code())),
            reason: code.map(ErrorCode::as_str).unwrap_or_default().into(),
        };
        let _ = tokio::time::timeout(self.write_timeout, self.ws.close(Some(frame))).await;
    }

    /// Receive during the handshake: answers pings, turns `Error` frames into
    /// [`ClientError::Refused`].
    async fn recv_handshake(&mut self) -> Result<Frame, ClientError> {
        loop {
            match self.recv().await? {
                Frame::Ping { nonce } => self.send(&Frame::Pong { nonce }).await?,
                Frame::Error { code, message, .. } => {
                    return Err(ClientError::Refused(code, message));
                }
                frame @ (Frame::Challenge { .. } | Frame::AuthOk { .. }) => return Ok(frame),
                Frame::Restarting { reconnect_after_ms } => {
                    return Err(ClientError::Disconnected {
                        code: Some(ErrorCode::ShuttingDown),
                        reason: format!(
                            "the relay is restarting (reconnect after {reconnect_after_ms} ms)"
                        ),
                    });
                }
                other => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected {} during the handshake",
                        other.frame_type()
                    )));
                }
            }
        }
    }
}

fn closed(close: Option<&CloseFrame>) -> ClientError {
    match close {
        Some(frame) => {
            let raw = u16::from(frame.code);
            let code = ErrorCode::from_close_code(raw);
            let reason = match code {
                Some(code) => format!("the relay closed the connection: {code}"),
                None if frame.reason.is_empty() => {
                    format!("the relay closed the connection (close code {raw})")
                }
                None => format!(
                    "the relay closed the connection (close code {raw}: {})",
                    frame.reason.as_str()
                ),
            };
            ClientError::Disconnected { code, reason }
        }
        None => ClientError::Disconnected {
            code: None,
            reason: "the relay closed the connection".into(),
        },
    }
}

fn read_error(e: tokio_tungstenite::tungstenite::Error) -> ClientError {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::ConnectionClosed | E::AlreadyClosed => ClientError::Disconnected {
            code: None,
            reason: "the relay closed the connection".into(),
        },
        E::Io(io) => {
            ClientError::Disconnected { code: None, reason: format!("connection error: {io}") }
        }
        E::Capacity(c) => {
            ClientError::Protocol(format!("the relay sent an oversized message: {c}"))
        }
        other => {
            ClientError::Disconnected { code: None, reason: format!("WebSocket error: {other}") }
        }
    }
}
