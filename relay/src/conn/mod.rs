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
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tandem_proto::entropy::Entropy;
use tandem_proto::frame::{Frame, LEVEL, LEVEL_OKS};
use tandem_proto::relay_auth::RelayChallenge;
use tandem_proto::{DeviceId, ErrorCode, Role};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::{Instant, timeout};
use tracing::{debug, info, warn};

use crate::admission::{Places, Unauthenticated};
use crate::cluster::Change;
use crate::net::IpKey;
use crate::registry::{ConnHandle, Outbound};
use crate::state::State;

mod pending;
mod reader;
mod writer;

use self::reader::Reader;
use self::writer::Writer;

type Sink = SplitSink<WebSocket, Message>;
type Stream = SplitStream<WebSocket>;

/// How long a replaced connection's writer may take to say goodbye before
/// it is stopped.
const REPLACED_GOODBYE: Duration = Duration::from_millis(500);

/// How long a connection refused before (or right at) authentication may
/// take to be told why: its `Error` and close frame, and the close. It no
/// longer holds a place among the unauthenticated connections meanwhile.
const REFUSED_GOODBYE: Duration = Duration::from_secs(1);

/// Most store operations one connection may have in flight.
pub(crate) const MAX_PENDING: usize = 256;

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

/// What a connection's reader and writer share, in one allocation.
struct Link {
    /// The nonce of the ping waiting for its pong (0: none).
    liveness: AtomicU64,
    /// The highest delivery id the writer has sent on this connection.
    delivered: AtomicU64,
    activity: Activity,
    /// The highest delivery id the device acknowledged on this connection
    /// (set by the reader, clamped to `delivered`), for the writer's
    /// delivery window.
    acked: AtomicU64,
    /// Tells the writer that an `Ack` may have made room in its window.
    room: tokio::sync::Notify,
}

impl Link {
    fn new() -> Self {
        Self {
            liveness: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            activity: Activity::new(),
            acked: AtomicU64::new(0),
            room: tokio::sync::Notify::new(),
        }
    }
}

/// Why a connection ends, with the code to close it with.
struct Closing(ErrorCode, String);

impl Closing {
    fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Self(code, msg.into())
    }
}

/// What [`serve`] needs besides the socket.
pub(crate) struct Arrival {
    /// The client's address (told by a trusted proxy, or the TCP peer).
    pub(crate) peer: SocketAddr,
    /// What per-address limits count it under.
    pub(crate) key: IpKey,
    /// The upgrade request's `Host`.
    pub(crate) host: String,
    pub(crate) state: Arc<State>,
    /// A connection slot (`None`: the relay is full).
    pub(crate) slot: Option<OwnedSemaphorePermit>,
    /// Its place among connections not authenticated yet, given up at `AuthOk`.
    pub(crate) unauthenticated: Unauthenticated,
}

/// An [`Arrival`], boxed by the caller so that what is kept for the
/// connection's life by the task that serves it is one pointer.
pub(crate) type Accepted = Box<Arrival>;

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
    let opening = Box::pin(open(sink, stream, *accepted));
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
}

/// Authenticate, register the device, greet it and start the writer.
/// `None` when the connection was refused (and closed).
async fn open(mut sink: Sink, mut stream: Stream, arrival: Arrival) -> Option<Conn> {
    let Arrival { peer, key, host, state, slot, unauthenticated } = arrival;
    let Some(slot) = slot else {
        drop(unauthenticated);
        state.metrics.refused(ErrorCode::Overloaded);
        let msg = "the relay is at its connection limit";
        refuse(&mut sink, ErrorCode::Overloaded, msg, &state).await;
        return None;
    };
    let handshake =
        timeout(state.config.handshake_timeout, authenticate(&mut sink, &mut stream, &host));
    let (device, role, level) = match handshake.await {
        Ok(Ok(id)) => id,
        Ok(Err(Closing(code, msg))) => {
            // Refused: its place goes now, not after the goodbye.
            drop(unauthenticated);
            if code == ErrorCode::AuthFailed {
                state.metrics.auth_failed();
            }
            state.metrics.refused(code);
            debug!(%peer, %code, "handshake refused");
            refuse(&mut sink, code, &msg, &state).await;
            return None;
        }
        Err(_) => {
            drop(unauthenticated);
            state.metrics.refused(ErrorCode::HandshakeTimeout);
            debug!(%peer, "no authentication within handshake_timeout");
            let msg = "authenticate within the deadline";
            refuse(&mut sink, ErrorCode::HandshakeTimeout, msg, &state).await;
            return None;
        }
    };

    // Authenticated: trade the place among those that are not for one among
    // the authenticated connections from its address (every role counts).
    // Replacing the same device's connection from the same address, it
    // takes over that one's places (even at the cap), which then holds none
    // while it goes.
    drop(unauthenticated);
    let inherited =
        state.registry.get(&device).filter(|old| old.ip == key).and_then(|old| old.take_places());
    let places = match inherited {
        Some(places) => {
            drop(slot);
            places
        }
        None => match state.admission.authenticated(key) {
            Ok(live) => Places { _all: slot, _address: live },
            Err(refusal) => {
                state.metrics.limit_refused(refusal.label());
                state.metrics.refused(ErrorCode::RateLimited);
                debug!(%peer, ip = %key, "too many connections from this address");
                let msg = "too many connections from your address";
                refuse(&mut sink, ErrorCode::RateLimited, msg, &state).await;
                return None;
            }
        },
    };
    let conn_id = state.registry.next_conn_id();
    let (tx, rx) = mpsc::channel(state.config.send_queue.max(1));
    let handle = ConnHandle::new(conn_id, device, key, tx, places);
    let (handle, old) = state.registry.insert(device, handle, &state);
    if let Some(old) = &old {
        old.close(ErrorCode::Replaced, "a newer connection for this device replaced this one");
    }
    if let Some(cluster) = &state.cluster {
        // The device's connection is this node's now; the node that had it
        // is told to close its one.
        match cluster.claim_at(device).await {
            Ok((fence, next)) => {
                handle.set_fence(fence);
                // Ids up to the counter at the claim may have reached the
                // device through another node: nothing is held under them.
                handle.hold.claimed(&state, fence, next);
            }
            Err(e) => {
                // Only while this is the device's connection: the failed
                // claim of one a newer connection replaced meanwhile must not
                // stop the newer one's hold (found by review).
                if state.registry.get(&device).is_some_and(|h| h.conn_id == conn_id) {
                    handle.hold.claim_failed();
                }
                warn!(device = %device, error = %e, "cannot claim the device in the cluster");
                if let (_, Some(write)) = state.registry.remove(&device, conn_id, &state) {
                    // What the connection it replaced held.
                    write.finish(state.clone()).await;
                }
                if let Some(old) = &old {
                    // The connection it replaced is gone too: the device
                    // is offline (best effort; if Redis is away, the node's
                    // reconciliation releases it later).
                    announce(&state, device, Change::Released(old.fence())).await;
                }
                state.metrics.refused(ErrorCode::StoreUnavailable);
                let msg = "the relay cannot reach its store right now; retry later";
                refuse(&mut sink, ErrorCode::StoreUnavailable, msg, &state).await;
                return None;
            }
        }
    }
    if state.shutdown.is_cancelled() {
        // Authenticated while the relay was draining: tell it to come back later.
        handle.close(ErrorCode::ShuttingDown, "the relay is restarting; reconnect after the hint");
    }
    state.metrics.connected(role);
    info!(device = %device, ?role, level, conn_id, %peer, "device connected");

    let link = Arc::new(Link::new());
    let queued = match state.store.depth(device).await {
        Ok(d) => u32::try_from(d.frames).unwrap_or(u32::MAX),
        Err(_) => 0,
    };
    let ping_ms = u32::try_from(state.config.ping_interval.as_millis()).unwrap_or(u32::MAX);
    let store_epoch = state.store.epoch();
    let hello = Frame::AuthOk { device_id: device, queued, ping_interval_ms: ping_ms, store_epoch };
    let writer = match write(&mut sink, &hello, &state).await {
        Ok(()) => {
            let w = Writer {
                sink,
                state: state.clone(),
                handle: handle.clone(),
                device,
                link: link.clone(),
                window: writer::Window::default(),
                oks: level >= LEVEL_OKS,
                behind: false,
                retry_at: None,
                fetched: 0,
                known: 0,
                must_read: true,
                epoch: store_epoch,
            };
            Some(tokio::spawn(w.run(rx)))
        }
        Err(_) => None,
    };
    if writer.is_some() && announce(&state, device, Change::Online(handle.fence())).await {
        handle.set_announced();
    }
    let reader = Reader {
        state,
        handle,
        device,
        role,
        level,
        ip: key,
        link,
        unapplied: pending::Unapplied::default(),
        unanswered: std::sync::Mutex::new(Vec::new()),
        paused: std::sync::atomic::AtomicU32::new(0),
    };
    Some(Conn { stream, reader, conn_id, writer })
}

impl Conn {
    /// After the reader stopped: wait for the writer, unregister, tell the
    /// peers; the connection slot is freed last.
    async fn finish(self) {
        if let Some(mut w) = self.writer {
            let replaced =
                self.reader.handle.reason().is_some_and(|(code, _)| code == ErrorCode::Replaced);
            if replaced {
                // Its device is on a newer connection, which took its
                // places: the goodbye gets a moment, not `write_timeout`
                // per write (a device that does not read would otherwise
                // keep any number of these open by reconnecting).
                if timeout(REPLACED_GOODBYE, &mut w).await.is_err() {
                    w.abort();
                }
            } else {
                let _ = w.await;
            }
        }
        let Reader { state, device, role, .. } = &self.reader;
        // The pairing mailboxes it opened go with it.
        let closed = state.mailboxes.close_all(*device, self.conn_id);
        for id in closed {
            state.metrics.pairing("closed");
            if let Some(c) = &state.cluster {
                c.pair_close(id, *device).await;
            }
        }
        let (gone, write) = state.registry.remove(device, self.conn_id, state);
        if gone {
            // In a cluster the device is offline only if this node still
            // owned it (it may be connected to another node already); if
            // Redis is away, the cluster reaps it should this node die.
            announce(state, *device, Change::Released(self.reader.handle.fence())).await;
            state.routes.forget(*device);
        }
        if let Some(write) = write {
            // What was held for it is written (`Ok` to its senders after the
            // commit); shutdown waits for this task up to 10 s. A store that
            // takes longer does not drop the write: it goes on in a task of
            // its own, so its senders still get their answers and the held
            // bytes are given back.
            let mut finish = Box::pin(write.finish(state.clone()));
            if timeout(Duration::from_secs(10), &mut finish).await.is_err() {
                warn!(device = %device, "writing the held frames takes over 10 s; it goes on");
                tokio::spawn(finish);
            }
        }
        state.metrics.disconnected(*role);
        info!(device = %device, conn_id = self.conn_id, "device disconnected");
        // Its places, unless a connection that replaced it took them.
        drop(self.reader.handle.take_places());
    }
}

/// Hello → Challenge → Auth. Returns the authenticated device, its role
/// and the protocol level of the connection (the highest both speak).
async fn authenticate(
    sink: &mut Sink,
    stream: &mut Stream,
    host: &str,
) -> Result<(DeviceId, Role, u8), Closing> {
    let (role, level) = match next_frame(stream).await? {
        Frame::Hello { min_version, max_version, role } => {
            match tandem_proto::frame::negotiate(min_version, max_version) {
                Some(level) => (role, level),
                None => {
                    return Err(Closing::new(
                        ErrorCode::UnsupportedVersion,
                        format!("this relay speaks protocol levels 1 to {LEVEL}"),
                    ));
                }
            }
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
            .map(|id| (id, role, level))
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

/// [`feed`] an encoded frame as it is (a held `Deliver`, shared, not copied).
async fn feed_raw(sink: &mut Sink, frame: bytes::Bytes, state: &State) -> Result<(), ()> {
    match timeout(state.config.write_timeout, sink.feed(Message::Binary(frame))).await {
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

/// [`close`] for a connection that was never served: at most
/// [`REFUSED_GOODBYE`] in all (a client that does not read must not keep
/// the socket for `write_timeout` per write), then the socket goes.
async fn refuse(sink: &mut Sink, code: ErrorCode, msg: &str, state: &State) {
    let _ = timeout(REFUSED_GOODBYE, close(sink, code, msg, state)).await;
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

/// Tell `device`'s online mutual peers that it came or went (`change`),
/// and (when it came) tell it which of them are online. In a cluster, peers
/// on every node, through their nodes' channels, in the same Redis step as
/// the ownership check `change` carries (`cluster::presence`): false when
/// that check failed and nothing was said (for [`Change::Released`]: the
/// ownership was not given up, the device is connected elsewhere).
pub(crate) async fn announce(state: &State, device: DeviceId, change: Change) -> bool {
    let peers = state.routes.peers(device).await;
    if let Some(c) = &state.cluster {
        // Peers that cannot be read (the store is away, or not open yet
        // after a start): nothing is said or released now. A device still
        // owned here without a connection is released, and its peers told,
        // by the node's next reconciliation (every 10 s); a reaped one is
        // tried again by the reaper's task.
        let Ok(peers) = peers else { return false };
        let peers: Vec<DeviceId> = peers.iter().copied().collect();
        return match c.announce(device, &change, &peers).await {
            Ok(done) => done.is_some(),
            Err(e) => {
                warn!(device = %device, error = %e, "cannot announce a device's presence in the cluster");
                false
            }
        };
    }
    let Ok(peers) = peers else { return true };
    let online = matches!(change, Change::Online(_));
    let me = state.registry.get(&device);
    for peer in peers.iter() {
        if let Some(h) = state.registry.get(peer) {
            h.offer(Outbound::Frame(Frame::Presence { peer: device, online }));
            if online && let Some(me) = &me {
                me.offer(Outbound::Frame(Frame::Presence { peer: *peer, online: true }));
            }
        }
    }
    true
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
    /// a large by-value argument of an `async fn`, shows here. (Debug
    /// build, 2026-12: 768 and 672 bytes.)
    #[test]
    fn an_idle_connections_futures_stay_small() {
        let serve = future_size(&serve);
        let writer = future_size(&Writer::run);
        assert!(serve <= 800, "the connection's future is {serve} bytes");
        assert!(writer <= 700, "the writer's future is {writer} bytes");
    }
}
