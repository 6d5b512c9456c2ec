//! One device connection: authenticate, then read frames and act on them
//! while a writer task sends responses, live deliveries, the backlog from
//! the store and pings. A slow reader never blocks anyone else: other tasks
//! only `try_send` to a connection (falling back to a wake-up and the store),
//! and a write that takes longer than `write_timeout` closes the connection.
//!
//! Payload bytes are never logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{FuturesOrdered, SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tandem_proto::entropy::Entropy;
use tandem_proto::frame::{Frame, FrameError};
use tandem_proto::relay_auth::RelayChallenge;
use tandem_proto::{DeviceId, ErrorCode, Role};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, info, warn};

use crate::registry::{ConnHandle, Outbound, Queued};
use crate::state::{State, unix_now};
use crate::store::{Enqueued, StoreError, StoreFuture};

type Sink = SplitSink<WebSocket, Message>;
type Stream = SplitStream<WebSocket>;

/// The reason recorded when a write fails or times out.
const WRITE_FAILED: &str = "write failed or timed out";

/// Most store operations one connection may have in flight.
pub(crate) const MAX_PENDING: usize = 256;
/// Frames read from the store per backlog page.
const BACKLOG_PAGE: usize = 128;
/// Most queued frames the writer buffers before it flushes.
const WRITE_BATCH: usize = 64;

/// When the connection last carried application traffic either way
/// (milliseconds since it was opened): the phone idle timeout counts
/// deliveries to the phone as well as what it sends.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self { start: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::AcqRel);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Acquire))
    }
}

/// Why a connection ends, with the code to close it with.
struct Closing(ErrorCode, String);

impl Closing {
    fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Self(code, msg.into())
    }
}

/// What [`serve`] needs besides the socket: the peer's address, the upgrade
/// request's `Host`, the shared state and a connection slot (`None`: the
/// relay is full). Boxed by the caller, so that what is kept for the
/// connection's life by the task that serves it is one pointer.
pub(crate) type Accepted = Box<(SocketAddr, String, Arc<State>, Option<OwnedSemaphorePermit>)>;

/// Serve one upgraded WebSocket.
///
/// A task keeps its future's size for the connection's life, and a future
/// is as large as its largest await plus everything it captured (an `async
/// fn` also keeps its arguments, moved or not). So this is no `async fn`,
/// every step before and after the idle wait for frames is boxed, and what
/// the idle wait holds is the connection ([`Conn`]) and the reader's loop.
#[expect(clippy::boxed_local, reason = "the caller's closure keeps what it captured")]
pub(crate) fn serve(socket: WebSocket, accepted: Accepted) -> impl Future<Output = ()> + Send {
    let (sink, stream) = socket.split();
    let (peer, host, state, slot) = *accepted;
    let opening = Box::pin(open(sink, stream, peer, host, state, slot));
    async move {
        let Some(mut conn) = opening.await else { return };
        if conn.writer.is_some() {
            match conn.reader.run(&mut conn.stream).await {
                Err(Closing(code, msg)) => conn.reader.handle.close(code, &msg),
                Ok(()) => conn.reader.handle.close(ErrorCode::Other(0), ""),
            }
        }
        Box::pin(conn.finish()).await;
    }
}

/// An authenticated, registered connection.
struct Conn {
    stream: Stream,
    reader: Reader,
    conn_id: u64,
    /// The writer task; `None` when the first write (`AuthOk`) failed.
    writer: Option<tokio::task::JoinHandle<()>>,
    /// Held until the connection is gone.
    _slot: OwnedSemaphorePermit,
}

/// Authenticate, register the device, greet it and start the writer.
/// `None` when the connection was refused (and closed).
async fn open(
    mut sink: Sink,
    mut stream: Stream,
    peer: SocketAddr,
    host: String,
    state: Arc<State>,
    slot: Option<OwnedSemaphorePermit>,
) -> Option<Conn> {
    let Some(slot) = slot else {
        state.metrics.refused(ErrorCode::Overloaded);
        close(&mut sink, ErrorCode::Overloaded, "the relay is at its connection limit", &state)
            .await;
        return None;
    };
    let handshake =
        timeout(state.config.handshake_timeout, authenticate(&mut sink, &mut stream, &host));
    let (device, role) = match handshake.await {
        Ok(Ok(id)) => id,
        Ok(Err(Closing(code, msg))) => {
            if code == ErrorCode::AuthFailed {
                state.metrics.auth_failed();
            }
            state.metrics.refused(code);
            debug!(%peer, %code, "handshake refused");
            close(&mut sink, code, &msg, &state).await;
            return None;
        }
        Err(_) => {
            state.metrics.refused(ErrorCode::HandshakeTimeout);
            close(
                &mut sink,
                ErrorCode::HandshakeTimeout,
                "authenticate within the deadline",
                &state,
            )
            .await;
            return None;
        }
    };

    let conn_id = state.registry.next_conn_id();
    let (tx, rx) = mpsc::channel(state.config.send_queue.max(1));
    let handle = ConnHandle::new(conn_id, tx);
    if let Some(old) = state.registry.insert(device, handle.clone()) {
        old.close(ErrorCode::Replaced, "a newer connection for this device replaced this one");
    }
    if state.shutdown.is_cancelled() {
        // Authenticated while the relay was draining: tell it to come back later.
        handle.close(ErrorCode::ShuttingDown, "the relay is restarting; reconnect after the hint");
    }
    state.metrics.connected(role);
    info!(device = %device, ?role, conn_id, "device connected");

    let liveness = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let activity = Arc::new(Activity::new());
    let queued = match state.store.depth(device).await {
        Ok(d) => u32::try_from(d.frames).unwrap_or(u32::MAX),
        Err(_) => 0,
    };
    let ping_ms = u32::try_from(state.config.ping_interval.as_millis()).unwrap_or(u32::MAX);
    let hello = Frame::AuthOk { device_id: device, queued, ping_interval_ms: ping_ms };
    let writer = match write(&mut sink, &hello, &state).await {
        Ok(()) => {
            let w = Writer {
                sink,
                state: state.clone(),
                handle: handle.clone(),
                device,
                liveness: liveness.clone(),
                delivered: delivered.clone(),
                activity: activity.clone(),
            };
            Some(tokio::spawn(w.run(rx)))
        }
        Err(_) => None,
    };
    if writer.is_some() {
        announce(&state, device, true).await;
    }
    let reader = Reader { state, handle, device, role, peer, liveness, delivered, activity };
    Some(Conn { stream, reader, conn_id, writer, _slot: slot })
}

impl Conn {
    /// After the reader stopped: wait for the writer, unregister, tell the
    /// peers; the connection slot is freed last.
    async fn finish(self) {
        if let Some(w) = self.writer {
            let _ = w.await;
        }
        let Reader { state, device, role, .. } = &self.reader;
        if state.registry.remove(device, self.conn_id) {
            announce(state, *device, false).await;
            state.routes.forget(*device);
        }
        state.metrics.disconnected(*role);
        info!(device = %device, conn_id = self.conn_id, "device disconnected");
    }
}

/// Hello → Challenge → Auth. Returns the authenticated device and its role.
async fn authenticate(
    sink: &mut Sink,
    stream: &mut Stream,
    host: &str,
) -> Result<(DeviceId, Role), Closing> {
    let role = match next_frame(stream).await? {
        Frame::Hello { min_version, max_version, role } => {
            if !(min_version..=max_version).contains(&tandem_proto::frame::VERSION) {
                return Err(Closing::new(
                    ErrorCode::UnsupportedVersion,
                    format!("this relay speaks version {}", tandem_proto::frame::VERSION),
                ));
            }
            role
        }
        _ => return Err(Closing::new(ErrorCode::NotAuthenticated, "send Hello first")),
    };
    let challenge = RelayChallenge::new(&mut Entropy::os(), host)
        .map_err(|_| Closing::new(ErrorCode::Internal, "no randomness"))?;
    let bytes =
        challenge.frame().encode().map_err(|_| Closing::new(ErrorCode::Internal, "challenge"))?;
    sink.send(Message::Binary(bytes.into()))
        .await
        .map_err(|_| Closing::new(ErrorCode::Internal, "write"))?;
    match next_frame(stream).await? {
        Frame::Auth { public_key, proof } => challenge
            .verify(role, &public_key, &proof)
            .map(|id| (id, role))
            .map_err(|e| Closing::new(ErrorCode::AuthFailed, e.to_string())),
        _ => Err(Closing::new(ErrorCode::NotAuthenticated, "send Auth after the challenge")),
    }
}

/// The next binary frame, decoded; control frames are skipped.
async fn next_frame(stream: &mut Stream) -> Result<Frame, Closing> {
    loop {
        match stream.next().await {
            Some(Ok(Message::Binary(b))) => {
                return Frame::decode(&b).map_err(|e| Closing::new(e.code(), e.to_string()));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Text(_))) => {
                return Err(Closing::new(ErrorCode::MalformedFrame, "frames are binary messages"));
            }
            Some(Ok(Message::Close(_))) | None => {
                return Err(Closing::new(ErrorCode::Other(0), "closed by peer"));
            }
            Some(Err(e)) => return Err(read_error(&e)),
        }
    }
}

fn read_error(e: &axum::Error) -> Closing {
    let text = e.to_string();
    // tungstenite reports a message over the cap as a capacity error.
    if text.contains("Space limit exceeded")
        || text.contains("too long")
        || text.contains("Capacity")
    {
        Closing::new(ErrorCode::FrameTooLarge, "frame over the size limit")
    } else {
        Closing::new(ErrorCode::Other(0), "read failed")
    }
}

async fn write(sink: &mut Sink, frame: &Frame, state: &State) -> Result<(), ()> {
    let bytes = frame.encode().map_err(|_| ())?;
    match timeout(state.config.write_timeout, sink.send(Message::Binary(bytes.into()))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Queue `frame` in the WebSocket's write buffer; it goes out when the
/// buffer passes [`crate::server::WRITE_BUFFER`] bytes or at the next
/// [`flush`], so a burst of frames costs one system call, not one each.
async fn feed(sink: &mut Sink, frame: &Frame, state: &State) -> Result<(), ()> {
    let bytes = frame.encode().map_err(|_| ())?;
    match timeout(state.config.write_timeout, sink.feed(Message::Binary(bytes.into()))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Write out whatever [`feed`] buffered.
async fn flush(sink: &mut Sink, state: &State) -> Result<(), ()> {
    match timeout(state.config.write_timeout, sink.flush()).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Send an `Error` frame and a close frame with the code, best effort.
async fn close(sink: &mut Sink, code: ErrorCode, msg: &str, state: &State) {
    if code.code() != 0 {
        let _ =
            write(sink, &Frame::Error { code, ref_id: 0, message: msg.to_owned() }, state).await;
    }
    let frame = CloseFrame {
        code: if code.code() == 0 { 1000 } else { code.close_code() },
        reason: truncate(msg, 120).into(),
    };
    let _ = timeout(state.config.write_timeout, sink.send(Message::Close(Some(frame)))).await;
    let _ = timeout(Duration::from_secs(1), sink.close()).await;
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_owned()
}

/// Tell `device`'s online mutual peers that it came or went, and (when it
/// came) tell it which of them are online.
async fn announce(state: &State, device: DeviceId, online: bool) {
    let Ok(peers) = state.routes.peers(device).await else { return };
    let me = state.registry.get(&device);
    for peer in peers.iter() {
        if let Some(h) = state.registry.get(peer) {
            h.offer(Outbound::Frame(Frame::Presence { peer: device, online }));
            if online && let Some(me) = &me {
                me.offer(Outbound::Frame(Frame::Presence { peer: *peer, online: true }));
            }
        }
    }
}

/// A store operation in flight, with what to do when it finishes.
enum Pending {
    Enqueue(Box<Enqueue>),
    Ack { fut: StoreFuture<u64> },
}

/// A `Send` being queued.
struct Enqueue {
    state: Arc<State>,
    send_id: u64,
    from: DeviceId,
    to: DeviceId,
    payload: Vec<u8>,
    enqueued: Enqueued,
}

type PendingFut = std::pin::Pin<Box<dyn std::future::Future<Output = Done> + Send>>;

enum Done {
    Enqueued { send_id: u64, len: usize, result: Result<u64, StoreError> },
    Acked(Result<u64, StoreError>),
}

impl Pending {
    async fn finish(self) -> Done {
        match self {
            Pending::Enqueue(e) => {
                let Enqueue { state, send_id, from, to, payload, enqueued } = *e;
                let len = payload.len();
                // Deliver as soon as the frame has its id, while the commit
                // runs; the sender's `Ok` waits for the commit. Without an
                // early id (a full queue, a failing store), once it is stored.
                let mut payload = Some(payload);
                if let Ok(id) = enqueued.placed.await {
                    push(&state, from, to, id, &mut payload).await;
                }
                let result = enqueued.durable.await;
                if let Ok(id) = result {
                    push(&state, from, to, id, &mut payload).await;
                }
                Done::Enqueued { send_id, len, result }
            }
            Pending::Ack { fut } => Done::Acked(fut.await),
        }
    }
}

/// Hand `payload` (if not handed over yet) to `to`'s live connection, if it
/// has one and the route still stands (a revocation since the route check
/// dropped the frame, or will: do not push what the recipient no longer
/// accepts).
async fn push(state: &State, from: DeviceId, to: DeviceId, id: u64, payload: &mut Option<Vec<u8>>) {
    if payload.is_some()
        && state.routes.is_route(from, to).await.unwrap_or(false)
        && let Some(h) = state.registry.get(&to)
        && let Some(payload) = payload.take()
    {
        h.offer(Outbound::Deliver { id, from, payload });
    }
}

/// What woke the reader.
enum Event {
    /// A store operation finished.
    Done(Done),
    /// The phone idle deadline passed.
    Idle,
    /// The device sent something (`None`: the end of the stream).
    Message(Option<Result<Message, axum::Error>>),
}

/// What the reader does after a message.
enum Next {
    /// Read the next one.
    Read,
    /// Track a store operation it started.
    Track(Pending),
    /// Stop: the device closed the connection.
    Stop,
}

struct Reader {
    state: Arc<State>,
    handle: ConnHandle,
    device: DeviceId,
    role: Role,
    peer: SocketAddr,
    liveness: Arc<AtomicU64>,
    /// The highest delivery id the writer has sent on this connection.
    delivered: Arc<AtomicU64>,
    activity: Arc<Activity>,
}

impl Reader {
    async fn run(&self, stream: &mut Stream) -> Result<(), Closing> {
        let mut pending: FuturesOrdered<PendingFut> = FuturesOrdered::new();
        let result = self.read(stream, &mut pending).await;
        // Operations already submitted still complete in the store; finish
        // them so that a frame stored for an online recipient is pushed to
        // it even though its sender has gone (answers to the sender are moot).
        let drain = async {
            while let Some(done) = pending.next().await {
                Box::pin(self.finished(done, false)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
        result
    }

    async fn read(
        &self,
        stream: &mut Stream,
        pending: &mut FuturesOrdered<PendingFut>,
    ) -> Result<(), Closing> {
        let idle = self.state.config.idle_timeout;
        loop {
            let idle_deadline = self.activity.last() + idle;
            // Only waiting happens here; the work is boxed (see `serve`), and
            // the event is moved into it whole (a partly moved one would stay
            // in this future).
            let event = tokio::select! {
                biased;
                () = self.handle.cancelled() => return Ok(()),
                Some(done) = pending.next(), if !pending.is_empty() => Event::Done(done),
                () = sleep_until(idle_deadline), if self.role == Role::Phone => Event::Idle,
                msg = stream.next(), if pending.len() < MAX_PENDING => Event::Message(msg),
            };
            match Box::pin(self.on_event(event)).await? {
                Next::Read => {}
                Next::Track(p) => pending.push_back(Box::pin(p.finish())),
                Next::Stop => return Ok(()),
            }
        }
    }

    async fn on_event(&self, event: Event) -> Result<Next, Closing> {
        match event {
            Event::Done(done) => {
                self.finished(done, true).await;
                Ok(Next::Read)
            }
            // Deliveries may have moved the deadline while we slept.
            Event::Idle
                if self.activity.last() + self.state.config.idle_timeout <= Instant::now() =>
            {
                Err(Closing::new(
                    ErrorCode::IdleTimeout,
                    "no activity from this phone; reconnect to re-attach",
                ))
            }
            Event::Idle => Ok(Next::Read),
            Event::Message(msg) => self.on_message(msg).await,
        }
    }

    /// Act on what the device sent (`None`: the end of the stream).
    async fn on_message(&self, msg: Option<Result<Message, axum::Error>>) -> Result<Next, Closing> {
        let frame = match msg {
            Some(Ok(Message::Binary(b))) => match Frame::decode(&b) {
                Ok(f) => f,
                Err(FrameError::UnknownType(t)) => {
                    let m = format!("unknown frame type 0x{t:02x}");
                    self.refuse(ErrorCode::UnknownFrameType, 0, &m).await;
                    return Ok(Next::Read);
                }
                Err(e) => {
                    self.state.metrics.refused(e.code());
                    return Err(Closing::new(e.code(), e.to_string()));
                }
            },
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Ok(Next::Read),
            Some(Ok(Message::Text(_))) => {
                self.state.metrics.refused(ErrorCode::MalformedFrame);
                return Err(Closing::new(ErrorCode::MalformedFrame, "frames are binary messages"));
            }
            Some(Ok(Message::Close(_))) | None => return Ok(Next::Stop),
            Some(Err(e)) => {
                let c = read_error(&e);
                if c.0 == ErrorCode::FrameTooLarge {
                    self.state.metrics.refused(c.0);
                }
                return Err(c);
            }
        };
        if !matches!(frame, Frame::Ping { .. } | Frame::Pong { .. }) {
            self.activity.touch();
        }
        Ok(self.on_frame(frame).await?.map_or(Next::Read, Next::Track))
    }

    /// Send an `Error` frame on this connection (waits if its own queue is full).
    async fn refuse(&self, code: ErrorCode, ref_id: u64, message: &str) {
        self.state.metrics.refused(code);
        let _ = self.handle.send(Frame::Error { code, ref_id, message: message.to_owned() }).await;
    }

    async fn reply(&self, frame: Frame) {
        let _ = self.handle.send(frame).await;
    }

    async fn on_frame(&self, frame: Frame) -> Result<Option<Pending>, Closing> {
        let state = &self.state;
        let me = self.device;
        if !matches!(frame, Frame::Ping { .. } | Frame::Pong { .. }) && !state.limits.frame(me) {
            let ref_id = match &frame {
                Frame::Send { send_id, .. } => *send_id,
                Frame::PairOpen { request_id, .. }
                | Frame::PairClaim { request_id, .. }
                | Frame::PairClose { request_id, .. }
                | Frame::Authorize { request_id, .. }
                | Frame::Revoke { request_id, .. } => *request_id,
                _ => 0,
            };
            self.refuse(ErrorCode::RateLimited, ref_id, "too many frames; slow down").await;
            return Ok(None);
        }
        match frame {
            Frame::Ping { nonce } => self.reply(Frame::Pong { nonce }).await,
            Frame::Pong { nonce } => {
                let _ =
                    self.liveness.compare_exchange(nonce, 0, Ordering::AcqRel, Ordering::Acquire);
            }
            Frame::Send { send_id, to, payload } => {
                match state.routes.is_route(me, to).await {
                    Ok(true) => {}
                    Ok(false) => {
                        self.refuse(
                            ErrorCode::NotAuthorized,
                            send_id,
                            "no route: these devices have not authorised each other",
                        )
                        .await;
                        return Ok(None);
                    }
                    Err(_) => {
                        self.refuse(ErrorCode::Internal, send_id, "store unavailable").await;
                        return Ok(None);
                    }
                }
                let enqueued = state.store.enqueue(to, me, payload.clone(), unix_now());
                return Ok(Some(Pending::Enqueue(Box::new(Enqueue {
                    state: Arc::clone(state),
                    send_id,
                    from: me,
                    to,
                    payload,
                    enqueued,
                }))));
            }
            Frame::Ack { up_to } => {
                // Never delete what this connection has not delivered yet.
                let up_to = up_to.min(self.delivered.load(Ordering::Acquire));
                return Ok(Some(Pending::Ack { fut: state.store.ack(me, up_to) }));
            }
            Frame::Authorize { request_id, peer } => {
                if peer == me {
                    self.refuse(
                        ErrorCode::UnexpectedFrame,
                        request_id,
                        "a device cannot authorise itself",
                    )
                    .await;
                    return Ok(None);
                }
                match state.store.authorize(me, peer).await {
                    Ok(()) => {
                        state.routes.invalidate(me, peer);
                        self.reply(Frame::Ok { ref_id: request_id }).await;
                        if state.routes.is_route(me, peer).await.unwrap_or(false)
                            && let Some(h) = state.registry.get(&peer)
                        {
                            h.offer(Outbound::Frame(Frame::Presence { peer: me, online: true }));
                            self.reply(Frame::Presence { peer, online: true }).await;
                        }
                    }
                    Err(StoreError::TooManyPeers) => {
                        self.refuse(
                            ErrorCode::RateLimited,
                            request_id,
                            "too many authorised peers",
                        )
                        .await;
                    }
                    Err(_) => {
                        self.refuse(ErrorCode::Internal, request_id, "store unavailable").await
                    }
                }
            }
            Frame::Revoke { request_id, peer } => {
                let had_route = state.routes.is_route(me, peer).await.unwrap_or(false);
                match state.store.revoke(me, peer).await {
                    Ok(dropped) => {
                        state.routes.invalidate(me, peer);
                        state.metrics.dropped("revoked", dropped);
                        if had_route && let Some(h) = state.registry.get(&peer) {
                            h.offer(Outbound::Frame(Frame::Presence { peer: me, online: false }));
                        }
                        info!(device = %me, peer = %peer, dropped, "route revoked");
                        self.reply(Frame::Ok { ref_id: request_id }).await;
                    }
                    Err(_) => {
                        self.refuse(ErrorCode::Internal, request_id, "store unavailable").await
                    }
                }
            }
            Frame::PairOpen { request_id, pairing_id, ttl_secs } => {
                if self.role != Role::Desktop {
                    self.refuse(
                        ErrorCode::UnexpectedFrame,
                        request_id,
                        "only desktops open pairing mailboxes",
                    )
                    .await;
                    return Ok(None);
                }
                let ttl = Duration::from_secs(u64::from(ttl_secs.max(1)))
                    .min(state.config.pairing_ttl_max);
                match state.mailboxes.open(pairing_id, me, ttl) {
                    Ok(()) => {
                        state.metrics.pairing("opened");
                        self.reply(Frame::Ok { ref_id: request_id }).await;
                    }
                    Err(code) => self.refuse(code, request_id, "pairing id in use").await,
                }
            }
            Frame::PairClaim { request_id, pairing_id, payload } => {
                if self.role != Role::Phone {
                    self.refuse(
                        ErrorCode::UnexpectedFrame,
                        request_id,
                        "only phones claim pairing mailboxes",
                    )
                    .await;
                    return Ok(None);
                }
                if !state.limits.claim(self.peer.ip()) {
                    self.refuse(
                        ErrorCode::RateLimited,
                        request_id,
                        "too many pairing attempts; wait a minute",
                    )
                    .await;
                    return Ok(None);
                }
                match state.mailboxes.claim(pairing_id, me) {
                    Ok(desktop) => match state.registry.get(&desktop) {
                        Some(h) => {
                            h.offer(Outbound::Frame(Frame::PairMessage {
                                pairing_id,
                                peer: me,
                                payload,
                            }));
                            state.metrics.pairing("claimed");
                            self.reply(Frame::Ok { ref_id: request_id }).await;
                        }
                        None => {
                            // Nothing happened: the claim may be retried once the desktop is back.
                            state.mailboxes.unclaim(pairing_id, me);
                            self.refuse(
                                ErrorCode::PairingNotFound,
                                request_id,
                                "the desktop is not connected",
                            )
                            .await
                        }
                    },
                    Err(code) => self.refuse(code, request_id, "pairing refused").await,
                }
            }
            Frame::PairMessage { pairing_id, peer, payload } => {
                match state.mailboxes.route(pairing_id, me, peer) {
                    Ok(to) => match state.registry.get(&to) {
                        Some(h) => h.offer(Outbound::Frame(Frame::PairMessage {
                            pairing_id,
                            peer: me,
                            payload,
                        })),
                        None => {
                            self.refuse(
                                ErrorCode::PairingNotFound,
                                0,
                                "the other device is not connected",
                            )
                            .await
                        }
                    },
                    Err(code) => self.refuse(code, 0, "pairing message refused").await,
                }
            }
            Frame::PairClose { request_id, pairing_id } => {
                match state.mailboxes.close(pairing_id, me) {
                    Ok(()) => {
                        state.metrics.pairing("closed");
                        self.reply(Frame::Ok { ref_id: request_id }).await;
                    }
                    Err(code) => self.refuse(code, request_id, "cannot close that mailbox").await,
                }
            }
            other => {
                let name = other.frame_type();
                self.refuse(
                    ErrorCode::UnexpectedFrame,
                    0,
                    &format!("{name} is not sent by devices"),
                )
                .await;
            }
        }
        Ok(None)
    }

    /// Act on a finished store operation; `answer` is false once the
    /// sender's connection is closing (only the push to the recipient matters).
    async fn finished(&self, done: Done, answer: bool) {
        let state = &self.state;
        match done {
            Done::Enqueued { send_id, len, result } => match result {
                Ok(_) => {
                    state.metrics.forwarded(len);
                    if answer {
                        self.reply(Frame::Ok { ref_id: send_id }).await;
                    }
                }
                Err(_) if !answer => {}
                Err(StoreError::NoRoute) => {
                    self.refuse(
                        ErrorCode::NotAuthorized,
                        send_id,
                        "no route: these devices have not authorised each other",
                    )
                    .await;
                }
                Err(StoreError::QueueFull(_)) => {
                    self.refuse(ErrorCode::QueueFull, send_id, "the recipient's queue is full")
                        .await;
                }
                Err(e) => {
                    warn!(error = %e, "store failed");
                    self.refuse(ErrorCode::Internal, send_id, "store unavailable; retry").await;
                }
            },
            Done::Acked(Err(e)) => warn!(error = %e, "ack failed"),
            Done::Acked(Ok(_)) => {}
        }
    }
}

struct Writer {
    sink: Sink,
    state: Arc<State>,
    handle: ConnHandle,
    device: DeviceId,
    liveness: Arc<AtomicU64>,
    delivered: Arc<AtomicU64>,
    activity: Arc<Activity>,
}

impl Writer {
    /// Not `async fn`, which would keep a second copy of `self` in its
    /// future for the connection's life (see [`serve`]).
    #[expect(clippy::manual_async_fn, reason = "an async fn keeps its arguments")]
    fn run(mut self, mut rx: mpsc::Receiver<Queued>) -> impl Future<Output = ()> + Send {
        async move {
            let mut last = 0u64;
            let result = self.loop_(&mut rx, &mut last).await;
            Box::pin(self.finish(&mut rx, result)).await;
        }
    }

    /// After the loop: say goodbye as the reason asks, flush, close.
    async fn finish(&mut self, rx: &mut mpsc::Receiver<Queued>, result: Result<(), Closing>) {
        if let Err(Closing(_, ref m)) = result
            && m == WRITE_FAILED
        {
            // The socket is unusable: no flush, no close frame.
            self.handle.close(ErrorCode::Other(0), WRITE_FAILED);
            return;
        }
        if self.handle.reason().is_some_and(|(c, _)| c == ErrorCode::ShuttingDown) {
            let hint =
                u32::try_from(self.state.config.restart_hint.as_millis()).unwrap_or(u32::MAX);
            let _ =
                write(&mut self.sink, &Frame::Restarting { reconnect_after_ms: hint }, &self.state)
                    .await;
        }
        // Flush what is queued, then close.
        while let Ok(out) = rx.try_recv() {
            if let Outbound::Frame(f) = *out
                && write(&mut self.sink, &f, &self.state).await.is_err()
            {
                break;
            }
        }
        let (code, msg) = match result {
            Err(Closing(c, m)) => (c, m),
            Ok(()) => self.handle.reason().unwrap_or((ErrorCode::Other(0), String::new())),
        };
        close(&mut self.sink, code, &msg, &self.state).await;
        // Make sure the reader stops too.
        self.handle.close(code, &msg);
    }

    fn next_ping(&self) -> Instant {
        let c = &self.state.config;
        let jitter_ms = u64::try_from(c.ping_jitter.as_millis()).unwrap_or(0);
        let j = if jitter_ms == 0 { 0 } else { rand::rng().random_range(0..=jitter_ms) };
        Instant::now() + c.ping_interval + Duration::from_millis(j)
    }

    /// Not `async fn`, which would keep a second copy of its arguments in its
    /// future (see [`serve`]).
    #[expect(clippy::manual_async_fn, reason = "an async fn keeps its arguments")]
    fn loop_<'a>(
        &'a mut self,
        rx: &'a mut mpsc::Receiver<Queued>,
        last: &'a mut u64,
    ) -> impl Future<Output = Result<(), Closing>> + Send + 'a {
        async move {
            Box::pin(self.backlog(last, u64::MAX)).await?;
            self.flush().await?;
            let mut ping_at = self.next_ping();
            let mut pong_by: Option<Instant> = None;
            // One timer for the next ping and the pong deadline, whichever is
            // first: it is re-armed only when that changes (or it fired).
            let timer = sleep_until(ping_at);
            tokio::pin!(timer);
            loop {
                {
                    let due = pong_by.map_or(ping_at, |p| p.min(ping_at));
                    if timer.deadline() != due || timer.is_elapsed() {
                        timer.as_mut().reset(due);
                    }
                }
                // Only waiting happens here; the work is boxed (see `serve`).
                let out = tokio::select! {
                    biased;
                    // A backlog to read, or the connection is closing (`close`
                    // wakes the writer too): closing comes first.
                    () = self.handle.wake.notified() => {
                        if self.handle.is_closed() {
                            return Ok(());
                        }
                        Box::pin(self.backlog(last, u64::MAX)).await?;
                        self.flush().await?;
                        continue;
                    }
                    () = &mut timer => None,
                    out = rx.recv() => match out {
                        Some(out) => Some(out),
                        None => return Ok(()),
                    },
                };
                if let Some(out) = out {
                    Box::pin(self.deliver(*out, last)).await?;
                    // Whatever else is ready goes out in the same write.
                    let mut n = 1;
                    while n < WRITE_BATCH
                        && let Ok(out) = rx.try_recv()
                    {
                        Box::pin(self.deliver(*out, last)).await?;
                        n += 1;
                    }
                    self.flush().await?;
                    continue;
                }
                let now = Instant::now();
                if pong_by.is_some_and(|p| p <= now) {
                    if self.liveness.load(Ordering::Acquire) != 0 {
                        return Err(Closing::new(ErrorCode::PingTimeout, "no pong in time"));
                    }
                    pong_by = None;
                }
                if ping_at <= now {
                    ping_at = self.next_ping();
                    // While a pong is still due, its deadline decides.
                    if pong_by.is_none() {
                        let nonce = rand::rng().random_range(1..u64::MAX);
                        self.liveness.store(nonce, Ordering::Release);
                        Box::pin(self.send(&Frame::Ping { nonce })).await?;
                        pong_by = Some(Instant::now() + self.state.config.pong_timeout);
                    }
                }
            }
        }
    }

    /// Buffer what another task handed over; the caller flushes.
    async fn deliver(&mut self, out: Outbound, last: &mut u64) -> Result<(), Closing> {
        match out {
            Outbound::Frame(f) => self.feed(&f).await,
            Outbound::Deliver { id, from, payload } => {
                if id > *last + 1 {
                    // Something before it may be only in the store: catch up first.
                    Box::pin(self.backlog(last, id - 1)).await?;
                    if self.handle.is_closed() && id > *last + 1 {
                        // The backlog stopped short: never send past a gap.
                        return Ok(());
                    }
                }
                // The store applies enqueues in id order, and the backlog's
                // fetch was submitted after the enqueue of every lower id
                // (that id was taken first), so it saw each of them: what
                // it did not return is gone (acknowledged, expired,
                // revoked) or was refused.
                if id > *last {
                    self.feed(&Frame::Deliver { delivery_id: id, from, payload }).await?;
                    *last = id;
                    self.delivered.store(id, Ordering::Release);
                    self.activity.touch();
                }
                Ok(())
            }
        }
    }

    async fn send(&mut self, f: &Frame) -> Result<(), Closing> {
        write(&mut self.sink, f, &self.state)
            .await
            .map_err(|()| Closing::new(ErrorCode::Other(0), WRITE_FAILED))
    }

    async fn feed(&mut self, f: &Frame) -> Result<(), Closing> {
        feed(&mut self.sink, f, &self.state)
            .await
            .map_err(|()| Closing::new(ErrorCode::Other(0), WRITE_FAILED))
    }

    async fn flush(&mut self) -> Result<(), Closing> {
        flush(&mut self.sink, &self.state)
            .await
            .map_err(|()| Closing::new(ErrorCode::Other(0), WRITE_FAILED))
    }

    /// Deliver stored frames after `last` up to `until`, in order (buffered:
    /// the caller flushes after the last page).
    async fn backlog(&mut self, last: &mut u64, until: u64) -> Result<(), Closing> {
        loop {
            if self.handle.is_closed() {
                return Ok(());
            }
            // Out with the previous page before waiting for the store.
            self.flush().await?;
            let page = self
                .state
                .store
                .fetch(self.device, *last, BACKLOG_PAGE)
                .await
                .map_err(|_| Closing::new(ErrorCode::Internal, "store unavailable"))?;
            let full = page.len() == BACKLOG_PAGE;
            for q in page {
                if q.id > until {
                    return Ok(());
                }
                self.feed(&Frame::Deliver { delivery_id: q.id, from: q.from, payload: q.payload })
                    .await?;
                *last = q.id;
                self.delivered.store(q.id, Ordering::Release);
                self.activity.touch();
            }
            if !full {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future that `f` returns.
    fn future_size<A, B, R>(_: &impl Fn(A, B) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// An idle connection's two tasks keep their futures' sizes for the
    /// connection's life (docs/BENCHMARKS.md, "Memory per idle
    /// connection"). An unboxed await of a large future on their path, or
    /// a large by-value argument of an `async fn`, shows here.
    #[test]
    fn an_idle_connections_futures_stay_small() {
        let serve = future_size(&serve);
        let writer = future_size(&Writer::run);
        assert!(serve <= 800, "the connection's future is {serve} bytes");
        assert!(writer <= 800, "the writer's future is {writer} bytes");
    }
}
