//! A WebSocket tap: devices dial it instead of the relay, it dials the relay
//! for each of them, and it records every binary message (a relay frame)
//! both ways before passing it on. That is a recording of the relay's
//! traffic, as the relay operator or anyone on the network before TLS would
//! hold it. [`Tap::cut`] closes every connection at once (the devices
//! reconnect through it).
//!
//! The relay names itself in its challenge by the `Host` the device dialed,
//! which the device checks: the tap passes each device's `Host` on
//! unchanged, so it is transparent to both.
//!
//! [`Tap::refuse_sends_to`] makes it a faulty relay: the next `Send`s to a
//! device are not passed on but answered `Error{queue_full}`, as a relay
//! whose store refused them would.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::{SinkExt, StreamExt};
use tandem_proto::frame::{Frame, FrameType};
use tandem_proto::{DeviceId, ErrorCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::header::HOST;

/// Which way a frame went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a device to the relay (`Send`, `Ack`, `Auth`, …).
    ToRelay,
    /// From the relay to a device (`Deliver`, `Ok`, `Presence`, …).
    FromRelay,
}

impl Direction {
    /// `to_relay` or `from_relay`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToRelay => "to_relay",
            Direction::FromRelay => "from_relay",
        }
    }
}

/// One recorded WebSocket message.
#[derive(Debug, Clone)]
pub struct Captured {
    /// Its place in the recording (0, 1, 2, … in the order the tap saw them).
    pub index: usize,
    /// When the tap saw it (Unix milliseconds).
    pub at_ms: u64,
    /// Which way it went.
    pub direction: Direction,
    /// The bytes: one relay frame.
    pub bytes: Vec<u8>,
}

impl Captured {
    /// The end-to-end envelope this frame delivers from `from`, if it is a
    /// `Deliver` from that device.
    #[must_use]
    pub fn delivered_from(&self, from: DeviceId) -> Option<Vec<u8>> {
        match Frame::decode(&self.bytes) {
            Ok(Frame::Deliver { from: f, payload, .. })
                if f == from && self.direction == Direction::FromRelay =>
            {
                Some(payload)
            }
            _ => None,
        }
    }
}

/// Called with each frame as it is recorded.
pub type OnFrame = Arc<dyn Fn(&Captured) + Send + Sync>;

struct Shared {
    captured: Mutex<Vec<Captured>>,
    on_frame: Option<OnFrame>,
    /// Per recipient, how many more `Send`s to refuse, the smallest payload
    /// refused and the code refused with.
    refuse: Mutex<Vec<(DeviceId, usize, usize, ErrorCode)>>,
    /// A frame type from the relay, and how many more of it pass before
    /// the one that cuts the connection instead.
    drop_at: Mutex<Option<(FrameType, usize)>>,
    /// Set by that cut: no connection is taken from then on.
    down: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// The refusal for `frame` if it is a `Send` the tap must refuse.
    fn refusal(&self, frame: &[u8]) -> Option<Vec<u8>> {
        let Ok(Frame::Send { send_id, to, payload }) = Frame::decode(frame) else { return None };
        let mut refuse = self.refuse.lock().unwrap_or_else(PoisonError::into_inner);
        let left =
            refuse.iter_mut().find(|(d, n, min, _)| *d == to && *n > 0 && payload.len() >= *min)?;
        left.1 -= 1;
        Frame::Error { code: left.3, ref_id: send_id, message: "refused by the test tap".into() }
            .encode()
            .ok()
    }

    /// Whether `frame`, from the relay, is the one [`Tap::cut_at_from_relay`]
    /// waits for.
    fn drops(&self, frame: &[u8]) -> bool {
        let mut drop_at = self.drop_at.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((kind, left)) = drop_at.as_mut() else { return false };
        if Frame::decode(frame).map(|f| f.frame_type()).ok() != Some(*kind) {
            return false;
        }
        if *left > 0 {
            *left -= 1;
            return false;
        }
        *drop_at = None;
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        true
    }

    fn record(&self, direction: Direction, bytes: &[u8]) {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut all = self.captured.lock().unwrap_or_else(PoisonError::into_inner);
        let c = Captured { index: all.len(), at_ms, direction, bytes: bytes.to_vec() };
        if let Some(f) = &self.on_frame {
            f(&c);
        }
        all.push(c);
    }
}

/// The running tap. Dropping it stops it and closes every connection.
pub struct Tap {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cuts: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Tap {
    /// A tap on `127.0.0.1:0` in front of the relay at `upstream`.
    ///
    /// # Errors
    /// When it cannot listen.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Tap> {
        Self::start_on("127.0.0.1:0", upstream, None).await
    }

    /// A tap on `listen` in front of `upstream`, calling `on_frame` with
    /// every frame as it is recorded.
    ///
    /// # Errors
    /// When it cannot listen.
    pub async fn start_on(
        listen: &str,
        upstream: SocketAddr,
        on_frame: Option<OnFrame>,
    ) -> std::io::Result<Tap> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            captured: Mutex::new(Vec::new()),
            on_frame,
            refuse: Mutex::new(Vec::new()),
            drop_at: Mutex::new(None),
            down: std::sync::atomic::AtomicBool::new(false),
        });
        let (cuts, cut_rx) = watch::channel(0u64);
        let s = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                if s.down.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let _ = tcp.set_nodelay(true);
                tokio::spawn(carry(tcp, upstream, Arc::clone(&s), cut_rx.clone()));
            }
        });
        Ok(Tap { addr, shared, cuts, task })
    }

    /// Where devices dial.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The relay URL devices use to go through the tap.
    #[must_use]
    pub fn url(&self) -> String {
        format!("ws://{}/v1/connect", self.addr)
    }

    /// Refuse the next `n` `Send`s addressed to `to` (from any device): they
    /// are not passed on, and the sender gets `Error{queue_full}` for each.
    pub fn refuse_sends_to(&self, to: DeviceId, n: usize) {
        self.refuse_large_sends_to(to, n, 0);
    }

    /// As [`Tap::refuse_sends_to`], counting only `Send`s whose payload has
    /// at least `min_len` bytes: a test can target one large message and let
    /// the small records around it (acknowledgements) through.
    pub fn refuse_large_sends_to(&self, to: DeviceId, n: usize, min_len: usize) {
        self.refuse_sends_with(to, n, min_len, ErrorCode::QueueFull);
    }

    /// As [`Tap::refuse_large_sends_to`], refusing with `code` (for example
    /// `not_authorized`, as a relay that lost the route answers).
    pub fn refuse_sends_with(&self, to: DeviceId, n: usize, min_len: usize, code: ErrorCode) {
        let mut refuse = self.shared.refuse.lock().unwrap_or_else(PoisonError::into_inner);
        refuse.retain(|(d, ..)| *d != to);
        refuse.push((to, n, min_len, code));
    }

    /// How many refusals set with [`Tap::refuse_sends_to`] are left for `to`.
    #[must_use]
    pub fn refusals_left(&self, to: DeviceId) -> usize {
        let refuse = self.shared.refuse.lock().unwrap_or_else(PoisonError::into_inner);
        refuse.iter().find(|(d, ..)| *d == to).map_or(0, |(_, n, ..)| *n)
    }

    /// Let `pass` more frames of type `kind` from the relay through, then
    /// cut the connection that the next one is for instead of passing it on,
    /// and take no connection from then on: the device's own network drops
    /// with the frame in flight and stays down (the relay keeps running).
    pub fn cut_at_from_relay(&self, kind: FrameType, pass: usize) {
        *self.shared.drop_at.lock().unwrap_or_else(PoisonError::into_inner) = Some((kind, pass));
    }

    /// Close every connection open now (devices reconnect through the tap).
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Everything recorded so far, in order.
    #[must_use]
    pub fn captured(&self) -> Vec<Captured> {
        self.shared.captured.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// How many frames were recorded so far.
    #[must_use]
    pub fn len(&self) -> usize {
        self.shared.captured.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether nothing was recorded yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// Carry one device's connection to the relay and back, recording binary
/// messages, until either side closes or the tap cuts it.
async fn carry(
    tcp: TcpStream,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    mut cuts: watch::Receiver<u64>,
) {
    cuts.borrow_and_update();
    // The relay answers the challenge with the name the device dialed (its
    // `Host`): pass it on unchanged.
    let mut host = None;
    #[allow(clippy::result_large_err, reason = "the callback's type is tungstenite's")]
    let keep_host = |request: &Request, response: Response| {
        host = request.headers().get(HOST).cloned();
        Ok(response)
    };
    let Ok(device) = tokio_tungstenite::accept_hdr_async(tcp, keep_host).await else { return };
    let Ok(mut request) = format!("ws://{upstream}/v1/connect").into_client_request() else {
        return;
    };
    if let Some(h) = host {
        request.headers_mut().insert(HOST, h);
    }
    let Ok(tcp) = TcpStream::connect(upstream).await else { return };
    let _ = tcp.set_nodelay(true);
    let Ok((relay, _)) = tokio_tungstenite::client_async(request, tcp).await else { return };
    let (mut to_device, mut from_device) = device.split();
    let (mut to_relay, mut from_relay) = relay.split();
    loop {
        tokio::select! {
            _ = cuts.changed() => return,
            m = from_device.next() => match m {
                Some(Ok(m @ (Message::Binary(_) | Message::Text(_)))) => {
                    if let Message::Binary(b) = &m {
                        shared.record(Direction::ToRelay, b);
                        if let Some(error) = shared.refusal(b) {
                            shared.record(Direction::FromRelay, &error);
                            if to_device.send(Message::Binary(error.into())).await.is_err() {
                                return;
                            }
                            continue;
                        }
                    }
                    if to_relay.send(m).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                // A close passes on with its code (`revoked`, `replaced`, …).
                Some(Ok(m @ Message::Close(_))) => {
                    let _ = to_relay.send(m).await;
                    return;
                }
                _ => {
                    let _ = to_relay.close().await;
                    return;
                }
            },
            m = from_relay.next() => match m {
                Some(Ok(m @ (Message::Binary(_) | Message::Text(_)))) => {
                    if let Message::Binary(b) = &m {
                        shared.record(Direction::FromRelay, b);
                        if shared.drops(b) {
                            return;
                        }
                    }
                    if to_device.send(m).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                // A close passes on with its code (`revoked`, `replaced`, …).
                Some(Ok(m @ Message::Close(_))) => {
                    let _ = to_device.send(m).await;
                    return;
                }
                _ => {
                    let _ = to_device.close().await;
                    return;
                }
            },
        }
    }
}
