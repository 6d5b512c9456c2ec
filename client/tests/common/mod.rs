//! A small fake relay speaking the real frames over real sockets, for the
//! client's tests: it reads the `Host` header, challenges with
//! `RelayChallenge` and verifies the proof, then hands each authenticated
//! connection to the test.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tandem_client::proto::entropy::Entropy;
use tandem_client::proto::frame::{LEVEL, MAX_FRAME_LEN};
use tandem_client::proto::relay_auth::RelayChallenge;
use tandem_client::proto::{DeviceId, DeviceKey, ErrorCode, Frame, Role};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The fake relay's self-signed certificate (for `127.0.0.1` and `localhost`).
pub(crate) const CERT_PEM: &str = include_str!("../data/relay-cert.pem");
const KEY_PEM: &str = include_str!("../data/relay-key.pem");

/// Every await in the tests is bounded by this.
pub(crate) const LIMIT: Duration = Duration::from_secs(5);

/// Await `f` for at most [`LIMIT`].
pub(crate) async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f).await.expect("timed out")
}

pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// How the fake relay treats a handshake.
#[derive(Debug, Clone)]
pub(crate) enum Auth {
    /// Verify the proof and answer `AuthOk` with this `queued`.
    Accept { queued: u32 },
    /// Verify the proof, then refuse with `Error{code}` and close with `4000 + code`.
    Refuse(ErrorCode),
}

/// Settings, changeable while the relay runs.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Challenge under this name instead of the `Host` header.
    pub(crate) challenge_name: Option<String>,
    pub(crate) auth: Auth,
    pub(crate) tls: bool,
    /// The store epoch `AuthOk` announces.
    pub(crate) epoch: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self { challenge_name: None, auth: Auth::Accept { queued: 0 }, tls: false, epoch: 1 }
    }
}

/// What happened to one connection's handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Authenticated as this device, with the `Host` it sent.
    Authenticated { device: DeviceId, role: Role, host: String },
    /// The proof was right, but the relay refused as configured.
    Refused(ErrorCode),
    /// The proof did not verify.
    BadProof,
    /// The client went away after the challenge without sending `Auth`.
    NoAuth,
}

pub(crate) struct FakeRelay {
    pub(crate) addr: SocketAddr,
    pub(crate) options: Arc<Mutex<Options>>,
    conns: mpsc::UnboundedReceiver<RelayConn>,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    task: JoinHandle<()>,
}

impl FakeRelay {
    pub(crate) async fn start(options: Options) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), options).await
    }

    /// Listen on `addr` (to come back on the same port after [`FakeRelay::stop`]).
    pub(crate) async fn start_on(addr: SocketAddr, options: Options) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let options = Arc::new(Mutex::new(options));
        let (conn_tx, conns) = mpsc::unbounded_channel();
        let (outcome_tx, outcomes) = mpsc::unbounded_channel();
        let opts = Arc::clone(&options);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let options = opts.lock().unwrap().clone();
                let (conn_tx, outcome_tx) = (conn_tx.clone(), outcome_tx.clone());
                tokio::spawn(async move {
                    let io: Box<dyn Io> = if options.tls {
                        let Ok(tls) = acceptor().accept(tcp).await else { return };
                        Box::new(tls)
                    } else {
                        Box::new(tcp)
                    };
                    if let Some(outcome) = handshake(io, &options, &conn_tx).await {
                        let _ = outcome_tx.send(outcome);
                    }
                });
            }
        });
        Self { addr, options, conns, outcomes, task }
    }

    pub(crate) fn url(&self) -> String {
        let scheme = if self.options.lock().unwrap().tls { "wss" } else { "ws" };
        format!("{scheme}://{}/v1/connect", self.addr)
    }

    /// The next authenticated connection.
    pub(crate) async fn accept(&mut self) -> RelayConn {
        within(self.conns.recv()).await.expect("relay stopped")
    }

    /// The next handshake outcome.
    pub(crate) async fn outcome(&mut self) -> Outcome {
        within(self.outcomes.recv()).await.expect("relay stopped")
    }

    /// Whether a connection authenticated within `d`.
    pub(crate) async fn accepts_within(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, self.conns.recv()).await.is_ok()
    }

    /// Stop listening (connections already handed out stay open).
    pub(crate) async fn stop(self) -> SocketAddr {
        self.task.abort();
        let _ = self.task.await;
        self.addr
    }
}

fn acceptor() -> tokio_rustls::TlsAcceptor {
    let certs = rustls_pemfile::certs(&mut CERT_PEM.as_bytes()).collect::<Result<Vec<_>, _>>();
    let key = rustls_pemfile::private_key(&mut KEY_PEM.as_bytes()).unwrap().unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs.unwrap(), key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn handshake(
    io: Box<dyn Io>,
    options: &Options,
    conns: &mpsc::UnboundedSender<RelayConn>,
) -> Option<Outcome> {
    let host = Arc::new(Mutex::new(String::new()));
    let seen = Arc::clone(&host);
    #[allow(clippy::result_large_err)] // the signature is tungstenite's
    let callback = move |req: &Request, resp: Response| {
        let h = req.headers().get("host").and_then(|h| h.to_str().ok()).unwrap_or_default();
        *seen.lock().unwrap() = h.to_owned();
        Ok(resp)
    };
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_LEN))
        .max_frame_size(Some(MAX_FRAME_LEN));
    let ws =
        tokio_tungstenite::accept_hdr_async_with_config(io, callback, Some(config)).await.ok()?;
    let host = host.lock().unwrap().clone();
    let mut conn = RelayConn { ws, device: DeviceId([0; 16]), host: host.clone() };

    // The client speaks every protocol level up to this build's.
    let Some(Frame::Hello { min_version: 1, max_version: LEVEL, role }) = conn.recv().await else {
        return None;
    };
    let name = options.challenge_name.clone().unwrap_or_else(|| host.clone());
    let challenge = RelayChallenge::new(&mut Entropy::os(), &name).unwrap();
    conn.send(&challenge.frame()).await;
    let Some(Frame::Auth { public_key, proof }) = conn.recv().await else {
        return Some(Outcome::NoAuth);
    };
    let Ok(device) = challenge.verify(role, &public_key, &proof) else {
        conn.close(Some(ErrorCode::AuthFailed)).await;
        return Some(Outcome::BadProof);
    };
    match options.auth {
        Auth::Accept { queued } => {
            conn.device = device;
            let store_epoch = options.epoch;
            let ok =
                Frame::AuthOk { device_id: device, queued, ping_interval_ms: 20_000, store_epoch };
            conn.send(&ok).await;
            conns.send(conn).ok()?;
            Some(Outcome::Authenticated { device, role, host })
        }
        Auth::Refuse(code) => {
            conn.send(&Frame::Error { code, ref_id: 0, message: "refused by the test".into() })
                .await;
            conn.close(Some(code)).await;
            Some(Outcome::Refused(code))
        }
    }
}

/// One authenticated connection, seen from the relay.
pub(crate) struct RelayConn {
    ws: WebSocketStream<Box<dyn Io>>,
    pub(crate) device: DeviceId,
    pub(crate) host: String,
}

impl RelayConn {
    pub(crate) async fn send(&mut self, frame: &Frame) {
        let _ = self.ws.send(Message::Binary(frame.encode().unwrap().into())).await;
    }

    /// Send `bytes` as one binary message, whatever they are.
    pub(crate) async fn send_raw(&mut self, bytes: Vec<u8>) {
        let _ = self.ws.send(Message::Binary(bytes.into())).await;
    }

    /// The next frame; `None` when the connection ended.
    pub(crate) async fn recv(&mut self) -> Option<Frame> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Binary(b)) => return Some(Frame::decode(&b).unwrap()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The next frame that is not a client `Ping` (answered with `Pong`),
    /// within [`LIMIT`].
    pub(crate) async fn expect(&mut self) -> Frame {
        within(async {
            loop {
                match self.recv().await.expect("connection ended") {
                    Frame::Ping { nonce } => self.send(&Frame::Pong { nonce }).await,
                    frame => return frame,
                }
            }
        })
        .await
    }

    /// Wait until the client closes the connection (answering pings).
    pub(crate) async fn expect_end(&mut self) {
        within(async {
            while let Some(frame) = self.recv().await {
                if let Frame::Ping { nonce } = frame {
                    self.send(&Frame::Pong { nonce }).await;
                }
            }
        })
        .await;
    }

    /// Close with `4000 + code`, or a normal close.
    pub(crate) async fn close(&mut self, code: Option<ErrorCode>) {
        let frame = CloseFrame {
            code: code.map_or(CloseCode::Normal, |c| CloseCode::from(c.close_code())),
            reason: "".into(),
        };
        let _ = self.ws.close(Some(frame)).await;
    }
}

/// A fresh device key.
pub(crate) fn key() -> DeviceKey {
    DeviceKey::generate(&mut Entropy::os()).unwrap()
}

/// Connect a raw TCP stream and never answer: for deadline tests.
pub(crate) async fn silent_listener() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held: Vec<TcpStream> = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    (addr, task)
}
