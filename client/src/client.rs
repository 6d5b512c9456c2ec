//! The reconnecting client: a handle ([`Client`]) to an actor task that owns
//! the relay connection.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tandem_proto::frame::{MAX_PAYLOAD_LEN, PushSubscription, Urgency};
use tandem_proto::{DeviceId, DeviceKey, ErrorCode, Role};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument;

use crate::actor::Actor;
use crate::connect::{DEFAULT_CONNECT_TIMEOUT, Endpoint};
use crate::error::ClientError;
use crate::requests::Answer;
pub(crate) use crate::requests::{Command, Request, Requests};

/// How to reach the relay and how to behave on the way.
///
/// Build it with [`ClientConfig::new`] and adjust the public fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The relay URL, e.g. `wss://relay.example.com:8443/v1/connect`.
    pub url: String,
    /// This device's long-term key.
    pub key: DeviceKey,
    /// Desktop or phone.
    pub role: Role,
    /// Extra trusted root certificates (PEM text), on top of the webpki
    /// roots: for a relay with a self-signed or private-CA certificate.
    pub extra_roots_pem: Vec<String>,
    /// Deadline for TCP + TLS + WebSocket + authentication (default 10 s).
    pub connect_timeout: Duration,
    /// First reconnect backoff ceiling (default 250 ms).
    pub backoff_min: Duration,
    /// Largest reconnect backoff (default 30 s).
    pub backoff_max: Duration,
    /// A connection that stayed up this long resets the backoff (default 10 s).
    pub backoff_reset_after: Duration,
    /// The fast phase of the reconnect schedule: for the first
    /// [`ClientConfig::backoff_fast_for`] of an outage (from its first failed
    /// attempt), or [`ClientConfig::backoff_fast_for_busy`] while requests
    /// wait to be sent, the backoff bound is at most this (default 750 ms):
    /// a network that comes back is used within it. A request made during a
    /// longer wait cuts it to a random time within this bound too, while in
    /// the busy phase. Set it to [`ClientConfig::backoff_max`] to turn the
    /// fast phase off.
    pub backoff_fast_max: Duration,
    /// How long the fast phase lasts when no request waits (default 10 s).
    pub backoff_fast_for: Duration,
    /// How long the fast phase lasts while requests wait (default 30 s).
    pub backoff_fast_for_busy: Duration,
    /// A stalled connection: a request written and unanswered this long
    /// with no frame at all from the relay meanwhile, or a relay silent for
    /// this long past one and a half times the ping interval it announced,
    /// makes the client send a probe ping (default 1 s; `None` turns the
    /// check off). Without an answer within [`ClientConfig::probe_timeout`]
    /// it connects again beside the old connection, keeps the old one until
    /// the new one has authenticated, then moves to it (requests the old
    /// one left unanswered are written again; see [`crate::Client`]).
    pub stall_after: Option<Duration>,
    /// How long a stalled connection's probe ping waits for any frame
    /// (default 1 s).
    pub probe_timeout: Duration,
    /// How often this client pings the relay, ±20 % jitter (default 20 s).
    pub ping_interval: Duration,
    /// How long to wait for any frame after a ping (and for a frame to be
    /// written) before declaring the connection dead (default 10 s).
    pub pong_timeout: Duration,
    /// Waking from sleep: a clock jump of at least this much (the computer
    /// was suspended, or the process stopped) makes the client check its
    /// connection at once with a ping, or cut a backoff wait short and
    /// connect now with the backoff reset (default 10 s; `None` turns the
    /// check off). A wait the relay asked for (`Restarting`, `replaced`)
    /// ends when its time is up by the wall clock instead. The clocks are
    /// compared every fifth of it, at most every 2 s. A wall clock set
    /// forward by as much looks the same and costs a ping.
    pub wake_threshold: Option<Duration>,
    /// After waking, how long the relay has to answer the check's ping
    /// before the connection is dropped and a new one made at once
    /// (default 3 s).
    pub wake_pong_timeout: Duration,
    /// Capacity of the event channel (default 256).
    pub event_capacity: usize,
    /// How many requests the client works on at once, written or not
    /// (default 256); further requests wait for room, in the order they were
    /// made, in a queue bounded only by the request futures alive (a dropped
    /// future takes its request out). A caller that gives up on a request
    /// the client already works on frees its room as soon as another
    /// request needs it.
    pub outbox_capacity: usize,
}

impl ClientConfig {
    /// A configuration with the defaults.
    #[must_use]
    pub fn new(url: impl Into<String>, key: DeviceKey, role: Role) -> Self {
        Self {
            url: url.into(),
            key,
            role,
            extra_roots_pem: Vec::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            backoff_reset_after: Duration::from_secs(10),
            backoff_fast_max: Duration::from_millis(750),
            backoff_fast_for: Duration::from_secs(10),
            backoff_fast_for_busy: Duration::from_secs(30),
            stall_after: Some(Duration::from_secs(1)),
            probe_timeout: Duration::from_secs(1),
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(10),
            wake_threshold: Some(Duration::from_secs(10)),
            wake_pong_timeout: Duration::from_secs(3),
            event_capacity: 256,
            outbox_capacity: 256,
        }
    }
}

/// What the client reports to the application, in order.
#[derive(Clone, PartialEq, Eq)]
pub enum Event {
    /// Authenticated with the relay (after every (re)connection).
    Connected {
        /// This device's id, as the relay confirmed it.
        device_id: DeviceId,
        /// Deliveries waiting in the relay's queue; they follow as `Deliver`.
        queued: u32,
        /// The relay's store epoch (PROTOCOL.md §6.6). A device that resends
        /// only what the relay has not stored does so only while this is
        /// the epoch of its previous connection (§13.4).
        store_epoch: u64,
    },
    /// A connection attempt failed or a connection ended.
    Disconnected {
        /// Human-readable cause.
        reason: String,
        /// The relay's code, when it gave one.
        code: Option<ErrorCode>,
        /// When the client tries again. [`Duration::MAX`] when it has stopped
        /// for good: the relay refused this device's key (`auth_failed`), the
        /// device is revoked (`revoked`) or the configuration is unusable;
        /// requests then fail with that error.
        retry_in: Duration,
    },
    /// A payload from a peer. Persist what it leads to, then call
    /// [`Client::ack`] with `delivery_id`. It may be a redelivery.
    Deliver {
        /// Position in this device's relay queue, increasing for the life
        /// of the client: the relay's id, moved past every id handed out
        /// before whenever the relay's store epoch changes (PROTOCOL.md
        /// §6.6); pass it to [`Client::ack`].
        delivery_id: u64,
        /// The sender.
        from: DeviceId,
        /// The opaque end-to-end envelope.
        payload: Vec<u8>,
    },
    /// A peer with a route to this device came online or went offline.
    Presence {
        /// The peer.
        peer: DeviceId,
        /// Whether it is connected now.
        online: bool,
    },
    /// A pairing-mailbox message.
    PairMessage {
        /// The mailbox.
        pairing_id: [u8; 16],
        /// The other party.
        peer: DeviceId,
        /// The pairing envelope.
        payload: Vec<u8>,
    },
    /// An `Error` frame that answers no pending request (for example about a
    /// `PairMessage`, which has no request id, or before a close).
    Refused {
        /// What went wrong.
        code: ErrorCode,
        /// The id it refers to, or 0.
        ref_id: u64,
        /// The relay's human-readable detail.
        message: String,
    },
    /// The relay is restarting; the client reconnects after about `after`.
    Restarting {
        /// The relay's hint.
        after: Duration,
    },
    /// The computer slept or this process was stopped (the clocks jumped,
    /// see [`ClientConfig::wake_threshold`]). If connected, the client is
    /// checking the connection with a ping and replaces it at once when the
    /// relay does not answer (then [`Event::Disconnected`] and
    /// [`Event::Connected`] follow); if backing off, it reconnects now.
    Woke {
        /// About how long the clocks jumped.
        slept: Duration,
    },
}

/// Payload bytes are never printed, only their length.
impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Connected { device_id, queued, store_epoch } => f
                .debug_struct("Connected")
                .field("device_id", device_id)
                .field("queued", queued)
                .field("store_epoch", store_epoch)
                .finish(),
            Event::Disconnected { reason, code, retry_in } => f
                .debug_struct("Disconnected")
                .field("reason", reason)
                .field("code", code)
                .field("retry_in", retry_in)
                .finish(),
            Event::Deliver { delivery_id, from, payload } => f
                .debug_struct("Deliver")
                .field("delivery_id", delivery_id)
                .field("from", from)
                .field("payload_len", &payload.len())
                .finish(),
            Event::Presence { peer, online } => {
                f.debug_struct("Presence").field("peer", peer).field("online", online).finish()
            }
            Event::PairMessage { pairing_id: _, peer, payload } => f
                .debug_struct("PairMessage")
                .field("peer", peer)
                .field("payload_len", &payload.len())
                .finish_non_exhaustive(),
            Event::Refused { code, ref_id, message } => f
                .debug_struct("Refused")
                .field("code", code)
                .field("ref_id", ref_id)
                .field("message", message)
                .finish(),
            Event::Restarting { after } => {
                f.debug_struct("Restarting").field("after", after).finish()
            }
            Event::Woke { slept } => f.debug_struct("Woke").field("slept", slept).finish(),
        }
    }
}

/// State shared between the handles and the actor.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// The highest `up_to` the application acknowledged (clamped to `delivered`).
    pub(crate) ack: AtomicU64,
    /// The highest delivery id handed to the application (or dropped as a
    /// redelivery).
    pub(crate) delivered: AtomicU64,
    /// Wakes the actor when `ack` grows.
    pub(crate) ack_notify: Notify,
    /// Requests made and not yet taken by the actor, in the order of the calls.
    pub(crate) requests: Requests,
    /// The application said it is in the background ([`Client::set_active`]):
    /// said again on every new connection (which starts active).
    pub(crate) background: std::sync::atomic::AtomicBool,
}

/// A handle to the relay client. Cheap to clone; the actor stops when
/// [`Client::close`] is called or every handle is dropped (request futures
/// do not keep it running; they then fail with [`ClientError::Closed`]).
#[derive(Debug, Clone)]
pub struct Client {
    shared: Arc<Shared>,
    stop: CancellationToken,
    /// Stops the actor when the last handle is dropped.
    _handles: Arc<DropGuard>,
    done: watch::Receiver<()>,
    device_id: DeviceId,
}

impl Client {
    /// Start the client: it connects, authenticates and reconnects forever in
    /// the background. Read [`Event`]s from the receiver (keep draining it: a
    /// full channel holds up reading from the relay, and with it the answers
    /// to requests). An unusable configuration (bad URL or extra root) is
    /// reported as a final [`Event::Disconnected`] and fails every request;
    /// [`Client::try_start`] reports it up front instead.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    #[must_use]
    pub fn start(config: ClientConfig) -> (Client, mpsc::Receiver<Event>) {
        let endpoint = Endpoint::new(&config.url, &config.extra_roots_pem);
        Self::spawn(config, endpoint)
    }

    /// Like [`Client::start`], but fails on an unusable URL or extra root.
    ///
    /// # Errors
    /// [`ClientError::InvalidUrl`] or [`ClientError::Tls`].
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn try_start(config: ClientConfig) -> Result<(Client, mpsc::Receiver<Event>), ClientError> {
        let endpoint = Endpoint::new(&config.url, &config.extra_roots_pem)?;
        Ok(Self::spawn(config, Ok(endpoint)))
    }

    fn spawn(
        config: ClientConfig,
        endpoint: Result<Endpoint, ClientError>,
    ) -> (Client, mpsc::Receiver<Event>) {
        let device_id = config.key.public().device_id();
        let (events, event_rx) = mpsc::channel(config.event_capacity.max(1));
        let (done_tx, done) = watch::channel(());
        let shared = Arc::new(Shared::default());
        let stop = CancellationToken::new();
        let handles = Arc::new(stop.clone().drop_guard());
        let span = tracing::info_span!("relay_client", device = %device_id);
        let actor =
            Actor::new(config, endpoint, events, Arc::clone(&shared), stop.clone(), done_tx);
        tokio::spawn(actor.run().instrument(span));
        (Client { shared, stop, _handles: handles, done, device_id }, event_rx)
    }

    /// This device's id.
    #[must_use]
    pub fn device_id(&self) -> DeviceId {
        self.device_id
    }

    /// Send `payload` to `to`. Resolves once the relay has taken
    /// responsibility for it (`Ok`: handed to the recipient's connection or
    /// stored durably in its queue), or with the relay's refusal.
    ///
    /// The send takes its place in the request queue when this method is called,
    /// not when the future is first polled: requests are written to the
    /// relay in the order they were made, also when many futures wait at
    /// once and are polled in any order (`join!`, `FuturesUnordered`), when
    /// the outbox is full, and when they are written again after a
    /// reconnect. It goes out even if the future is not polled yet; the
    /// future only waits for the answer (and does not borrow the client).
    ///
    /// While disconnected the send waits in the outbox; a send that was
    /// written but not yet answered when the connection dropped is written
    /// again after reconnecting, with the same `send_id` (the relay may then
    /// store it twice; the end-to-end layer deduplicates). Dropping the
    /// future withdraws the send if it has not been written yet.
    ///
    /// # Errors
    /// [`ClientError::Refused`] (`not_authorized`, `revoked`, `queue_full`,
    /// `rate_limited`, `store_unavailable`, …, or the code that stopped the
    /// client). `queue_full`, `rate_limited` and `store_unavailable` mean
    /// "retry later": the relay did not take the payload, and the
    /// application keeps it in its end-to-end outbox to send again;
    /// [`ClientError::TooLarge`], [`ClientError::Closed`].
    pub fn send(
        &self,
        to: DeviceId,
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<(), ClientError>> + Send + 'static + use<> {
        self.request(check_len(&payload).map(|()| Request::Send { to, payload }))
    }

    /// Acknowledge every delivery up to `up_to` (cumulative), **after** the
    /// application has durably processed them. Fire and forget: the highest
    /// value is written as soon as possible, again after a reconnect if it
    /// had not been written yet, and whenever the relay redelivers something
    /// already acknowledged. Values above the highest delivery id this client
    /// has seen are clamped to it.
    pub fn ack(&self, up_to: u64) {
        let up_to = up_to.min(self.shared.delivered.load(Ordering::Acquire));
        let previous = self.shared.ack.fetch_max(up_to, Ordering::AcqRel);
        if up_to > previous {
            self.shared.ack_notify.notify_one();
        }
    }

    /// Allow routing between this device and `peer` (§6.8: both sides must).
    /// Resent after a reconnect if unanswered (it is idempotent). Like every
    /// request, it takes its place in the order when called (see
    /// [`Client::send`]).
    ///
    /// # Errors
    /// [`ClientError::Refused`], [`ClientError::Closed`].
    pub fn authorize(
        &self,
        peer: DeviceId,
    ) -> impl Future<Output = Result<(), ClientError>> + Send + 'static + use<> {
        self.request(Ok(Request::Authorize(peer)))
    }

    /// Withdraw the route with `peer`. Resent after a reconnect if unanswered.
    ///
    /// # Errors
    /// [`ClientError::Refused`], [`ClientError::Closed`].
    pub fn revoke(
        &self,
        peer: DeviceId,
    ) -> impl Future<Output = Result<(), ClientError>> + Send + 'static + use<> {
        self.request(Ok(Request::Revoke(peer)))
    }

    /// Open a pairing mailbox (desktop).
    ///
    /// # Errors
    /// [`ClientError::Refused`], [`ClientError::Closed`], and
    /// [`ClientError::Interrupted`] when the connection dropped before the
    /// answer (not retried: a second open of the same id is refused).
    pub fn pair_open(
        &self,
        pairing_id: [u8; 16],
        ttl_secs: u16,
    ) -> impl Future<Output = Result<(), ClientError>> + Send + 'static + use<> {
        self.request(Ok(Request::PairOpen { pairing_id, ttl_secs }))
    }

    /// Claim a pairing mailbox with the first handshake message (phone).
    ///
    /// # Errors
    /// [`ClientError::Refused`] (`pairing_not_found`, `pairing_claimed`,
    /// `pairing_expired`, …), [`ClientError::TooLarge`],
    /// [`ClientError::Closed`], [`ClientError::Interrupted`].
    pub fn pair_claim(
        &self,
        pairing_id: [u8; 16],
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<(), ClientError>> + Send + 'static + use<> {
        self.request(check_len(&payload).map(|()| Request::PairClaim { pairing_id, payload }))
    }

    /// Close a pairing mailbox (desktop).
    ///
    /// # Errors
    /// [`ClientError::Refused`], [`ClientError::Closed`],
    /// [`ClientError::Interrupted`].
    pub fn pair_close(
        &self,
        pairing_id: [u8; 16],
    ) -> impl Future<Output = Result<(), ClientError>> + Send + 'static + use<> {
        self.request(Ok(Request::PairClose { pairing_id }))
    }

    /// Send a pairing-mailbox message to `peer`. Resolves once written to a
    /// relay connection (the relay does not answer these; a refusal arrives
    /// as [`Event::Refused`]).
    ///
    /// # Errors
    /// [`ClientError::TooLarge`], [`ClientError::Closed`], or the error that
    /// stopped the client.
    pub fn pair_message(
        &self,
        pairing_id: [u8; 16],
        peer: DeviceId,
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<(), ClientError>> + Send + 'static + use<> {
        let request =
            check_len(&payload).map(|()| Request::PairMessage { pairing_id, peer, payload });
        self.request(request)
    }

    /// Register this device's push subscription with the relay (a phone;
    /// protocol level 3, PROTOCOL.md §6.14), replacing the one it had;
    /// [`PushSubscription::Remove`] forgets it. Ask `GET /v1/push` first:
    /// an older relay does not answer this. Resent after a reconnect if
    /// unanswered (it is idempotent).
    ///
    /// # Errors
    /// [`ClientError::Refused`]: `malformed_frame` (a bad subscription),
    /// `push_unavailable` (the relay sends no pushes of that kind),
    /// `unexpected_frame` (not a phone, or an endpoint origin the relay
    /// refuses), `store_unavailable`; [`ClientError::TooLarge`],
    /// [`ClientError::Closed`].
    pub fn push_subscribe(
        &self,
        subscription: &PushSubscription,
    ) -> impl Future<Output = Result<(), ClientError>> + Send + 'static + use<> {
        let (kind, data) = (subscription.kind(), subscription.data());
        self.request(check_len(&data).map(|()| Request::PushSubscribe { kind, data }))
    }

    /// Ask the relay to wake `to` (a peer with a mutual route) through its
    /// push subscription with `blob` (sealed end to end, 1 to
    /// [`MAX_PUSH_BLOB`](tandem_proto::frame::MAX_PUSH_BLOB) bytes),
    /// `urgency` and a collapse `topic` (`[0; 16]`: none). `Ok` once the
    /// relay took it (sent, queued, collapsed or suppressed alike).
    ///
    /// # Errors
    /// [`ClientError::Refused`]: `not_authorized` (no route),
    /// `malformed_frame`, `rate_limited`; [`ClientError::TooLarge`],
    /// [`ClientError::Closed`], [`ClientError::Interrupted`] (the
    /// connection dropped before the answer: not resent).
    pub fn notify(
        &self,
        to: DeviceId,
        urgency: Urgency,
        topic: [u8; 16],
        blob: Vec<u8>,
    ) -> impl Future<Output = Result<(), ClientError>> + Send + 'static + use<> {
        let urgency = urgency as u8;
        self.request(check_len(&blob).map(|()| Request::Notify { to, urgency, topic, blob }))
    }

    /// Tell the relay whether the application is in the foreground (no
    /// push while it is). Every connection starts active; `false` is said
    /// again after each reconnect until `true` is set. Resolves once
    /// written (the relay does not answer it).
    ///
    /// # Errors
    /// [`ClientError::Closed`], or the error that stopped the client.
    pub fn set_active(
        &self,
        active: bool,
    ) -> impl Future<Output = Result<(), ClientError>> + Send + 'static + use<> {
        self.shared.background.store(!active, Ordering::Release);
        self.request(Ok(Request::Active(active)))
    }

    /// Stop the client: close the connection (after writing a pending ack)
    /// and fail every pending request with [`ClientError::Closed`]. Returns
    /// once the actor has stopped.
    pub async fn close(&self) {
        self.stop.cancel();
        let mut done = self.done.clone();
        while done.changed().await.is_ok() {}
    }

    /// Queue `request` now, behind every request made before it; the
    /// future waits for the answer.
    fn request(
        &self,
        request: Result<Request, ClientError>,
    ) -> impl Future<Output = Result<(), ClientError>> + Send + 'static + use<> {
        let queued = request.and_then(|request| {
            if self.stop.is_cancelled() {
                return Err(ClientError::Closed);
            }
            let (seq, rx) = self.shared.requests.push(request)?;
            Ok(Answer { shared: Arc::clone(&self.shared), seq, rx: Some(rx) })
        });
        async move {
            let mut answer = queued?;
            let result = match answer.rx.as_mut() {
                Some(rx) => rx.await.unwrap_or(Err(ClientError::Closed)),
                None => Err(ClientError::Closed),
            };
            // Answered: nothing left to withdraw.
            answer.rx = None;
            result
        }
    }
}

fn check_len(payload: &[u8]) -> Result<(), ClientError> {
    if payload.len() > MAX_PAYLOAD_LEN { Err(ClientError::TooLarge) } else { Ok(()) }
}
