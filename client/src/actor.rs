//! The task behind [`crate::Client`]: owns the connection, the outbox and the
//! reconnect loop.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::Rng;
use tandem_proto::{DeviceKey, ErrorCode, Frame};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::client::{ClientConfig, Event, Shared};
use crate::connect::{Connection, Endpoint};
use crate::cursor::Cursor;
use crate::error::ClientError;
use crate::wake;
use events::held_len;

mod events;
mod reconnect;

/// Requests written per turn of the connection loop before reading again.
const FLUSH_BATCH: usize = 32;

/// Most events held for the application while its event channel is full
/// (PROTOCOL.md §6.6): the connection keeps being read (pings answered)
/// until this many, or [`MAX_HELD_BYTES`] of payload, wait. The relay's
/// delivery window (512 frames, 2 MiB) keeps a conforming relay under both.
const MAX_HELD_EVENTS: usize = 1024;
/// Most payload bytes of the events held for the application.
const MAX_HELD_BYTES: usize = 4 << 20;

/// A request in the outbox (not yet written) or in flight (written, not yet
/// answered).
struct Pending {
    /// `send_id`/`request_id`; 0 for a `PairMessage`.
    id: u64,
    frame: Frame,
    reply: oneshot::Sender<Result<(), ClientError>>,
}

impl Pending {
    fn answer(self, result: Result<(), ClientError>) {
        let _ = self.reply.send(result);
    }

    /// Whether it is safe to write again after the connection dropped without
    /// an answer.
    fn idempotent(&self) -> bool {
        matches!(self.frame, Frame::Send { .. } | Frame::Authorize { .. } | Frame::Revoke { .. })
    }
}

/// What woke the connection loop.
enum Wake {
    Stop,
    Frame(Result<Frame, ClientError>),
    Requests,
    Ack,
    Ping,
    PongTimeout,
    /// The computer slept or the process stood still for about this long.
    Woke(Duration),
    /// No answer to the ping sent after waking.
    ProbeTimeout,
    Flush,
    /// Room in the event channel for the oldest held event.
    Emit(mpsc::OwnedPermit<Event>),
}

pub(crate) struct Actor {
    config: ClientConfig,
    key: Arc<DeviceKey>,
    endpoint: Option<Arc<Endpoint>>,
    events: mpsc::Sender<Event>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    /// Dropped with the actor: closes the request queue ([`Shared::requests`]).
    _close_requests: CloseRequests,
    /// Dropped with the actor, which tells [`crate::Client::close`] it is done.
    _done: watch::Sender<()>,
    /// Requests taken from [`Shared::requests`], in order, not yet written.
    /// With `in_flight`, at most [`ClientConfig::outbox_capacity`] (requests
    /// whose callers gave up included, until noticed).
    outbox: VecDeque<Pending>,
    in_flight: BTreeMap<u64, Pending>,
    next_id: u64,
    /// The highest `Ack` written (on any connection), as a local id.
    ack_sent: u64,
    /// Local delivery ids against the relay's store epoch.
    cursor: Cursor,
    /// Events for the application that did not fit in its channel yet, in
    /// order (bounded: [`MAX_HELD_EVENTS`], [`MAX_HELD_BYTES`]).
    held: VecDeque<Event>,
    /// Payload bytes in `held`.
    held_bytes: usize,
    /// The reconnect schedule (failed attempts since the last stable
    /// connection).
    backoff: Backoff,
    /// Clock jumps from the wake watcher (`None` when it is turned off).
    wake: Option<mpsc::Receiver<Duration>>,
    /// Set on waking; the next disconnect reconnects at once. Cleared when
    /// the connection answered after waking.
    woke: bool,
    /// The relay's `Restarting` hint for the next reconnect.
    restart_hint: Option<Duration>,
    /// The last connection-ending code the relay announced in an `Error`
    /// frame on the current connection.
    last_error: Option<ErrorCode>,
    /// Set when reconnecting cannot help; every request fails with it.
    fatal: Option<ClientError>,
    stopping: bool,
}

impl Actor {
    pub(crate) fn new(
        config: ClientConfig,
        endpoint: Result<Endpoint, ClientError>,
        events: mpsc::Sender<Event>,
        shared: Arc<Shared>,
        stop: CancellationToken,
        done: watch::Sender<()>,
    ) -> Self {
        let (endpoint, fatal) = match endpoint {
            Ok(e) => (Some(Arc::new(e)), None),
            Err(e) => (None, Some(e)),
        };
        Self {
            key: Arc::new(config.key.clone()),
            backoff: Backoff::new(
                config.backoff_min,
                config.backoff_max,
                config.backoff_reset_after,
            ),
            wake: None,
            woke: false,
            config,
            endpoint,
            events,
            _close_requests: CloseRequests(Arc::clone(&shared)),
            shared,
            stop,
            _done: done,
            outbox: VecDeque::new(),
            in_flight: BTreeMap::new(),
            next_id: 1,
            ack_sent: 0,
            cursor: Cursor::default(),
            held: VecDeque::new(),
            held_bytes: 0,
            restart_hint: None,
            last_error: None,
            fatal,
            stopping: false,
        }
    }

    pub(crate) async fn run(mut self) {
        if let Some(e) = self.fatal.clone() {
            warn!(error = %e, "the relay client cannot start");
            self.emit(Event::Disconnected {
                reason: e.to_string(),
                code: e.code(),
                retry_in: Duration::MAX,
            })
            .await;
        }
        if self.fatal.is_none() {
            self.wake = self.config.wake_threshold.map(wake::spawn_watch);
        }
        while !self.stopping {
            let Some(endpoint) = self.endpoint.clone().filter(|_| self.fatal.is_none()) else {
                self.serve_stopped().await;
                break;
            };
            let Some(result) = self.attempt_connection(&endpoint).await else { break };
            let ended = match result {
                Ok(conn) => {
                    info!(relay = endpoint.dialed_name(), queued = conn.queued(), "connected");
                    let up_since = Instant::now();
                    let ended = self.run_connection(conn).await;
                    self.backoff.connection_ended(up_since.elapsed());
                    ended
                }
                Err(e) => e,
            };
            if self.stopping {
                break;
            }
            self.after_disconnect(ended).await;
        }
        debug!("relay client stopped");
        // Dropping the outbox and the in-flight requests answers them `Closed`.
    }

    /// Connect while still taking requests. `None` when asked to stop.
    async fn attempt_connection(
        &mut self,
        endpoint: &Arc<Endpoint>,
    ) -> Option<Result<Connection, ClientError>> {
        let endpoint = Arc::clone(endpoint);
        let key = Arc::clone(&self.key);
        let (role, timeout) = (self.config.role, self.config.connect_timeout);
        let attempt = async move { endpoint.connect(&key, role, timeout).await };
        tokio::pin!(attempt);
        self.intake();
        loop {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => {
                    self.stopping = true;
                    return None;
                }
                result = &mut attempt => return Some(result),
                () = self.shared.requests.notify.notified() => self.intake(),
                by = woke(&mut self.wake) => {
                    // The attempt began before the sleep: its socket may be
                    // dead, and its deadline counts from then. Start afresh.
                    info!(slept = ?by, "woke up while connecting; connecting again at once");
                    self.woke = true;
                    self.emit(Event::Woke { slept: by }).await;
                    return Some(Err(ClientError::Disconnected {
                        code: None,
                        reason: format!("woke up after about {by:?} while connecting"),
                    }));
                }
            }
        }
    }

    /// Drive one authenticated connection until it ends; returns why.
    async fn run_connection(&mut self, mut conn: Connection) -> ClientError {
        conn.set_write_timeout(self.config.pong_timeout);
        self.last_error = None;
        self.restart_hint = None;
        self.woke = false;
        let delivered = self.shared.delivered.load(Ordering::Acquire);
        if self.cursor.connected(conn.store_epoch(), delivered) {
            if delivered > 0 {
                info!(
                    store_epoch = conn.store_epoch(),
                    "the relay's store epoch changed: delivery cursor reset"
                );
            }
            // Nothing of the new epoch is acknowledged yet.
            self.ack_sent = self.ack_sent.max(delivered);
        }
        self.hold(Event::Connected {
            device_id: conn.device_id(),
            queued: conn.queued(),
            store_epoch: conn.store_epoch(),
        });

        let mut next_ping = after(jittered(self.config.ping_interval));
        let mut pong_deadline: Option<Instant> = None;
        // The ping sent after waking: its nonce and the deadline for its pong.
        let mut probe: Option<(u64, Instant)> = None;
        loop {
            if self.stopping || self.stop.is_cancelled() {
                self.stopping = true;
                let _ = self.flush_ack(&mut conn).await;
                conn.close(None).await;
                return ClientError::Closed;
            }
            if let Err(e) = self.flush_ack(&mut conn).await {
                return e;
            }
            self.intake();
            if let Err(e) = self.flush(&mut conn).await {
                return e;
            }
            // More to write, or the flush made room (a request whose
            // caller gave up skipped, a pairing message answered on write)
            // that requests are waiting for.
            let more =
                !self.outbox.is_empty() || (self.has_room() && self.shared.requests.is_waiting());
            // The socket is read while the application is slow too (pings
            // are answered), up to what may be held for it.
            let read = self.held.len() < MAX_HELD_EVENTS && self.held_bytes < MAX_HELD_BYTES;
            let holding = !self.held.is_empty();
            let events = self.events.clone();
            let wake = tokio::select! {
                () = self.stop.cancelled() => Wake::Stop,
                frame = conn.recv(), if read => Wake::Frame(frame),
                permit = events.reserve_owned(), if holding => match permit {
                    Ok(permit) => Wake::Emit(permit),
                    // Nobody listens any more: events are dropped.
                    Err(_) => {
                        self.held.clear();
                        self.held_bytes = 0;
                        continue;
                    }
                },
                () = self.shared.requests.notify.notified() => Wake::Requests,
                () = self.shared.ack_notify.notified() => Wake::Ack,
                () = sleep_until(next_ping) => Wake::Ping,
                () = sleep_until(pong_deadline.unwrap_or(next_ping)), if pong_deadline.is_some() => {
                    Wake::PongTimeout
                }
                by = woke(&mut self.wake) => Wake::Woke(by),
                () = sleep_until(probe.map_or(next_ping, |(_, at)| at)), if probe.is_some() => {
                    Wake::ProbeTimeout
                }
                () = std::future::ready(()), if more => Wake::Flush,
            };
            match wake {
                Wake::Stop => self.stopping = true,
                Wake::Ack | Wake::Flush | Wake::Requests => {}
                Wake::Emit(permit) => {
                    if let Some(event) = self.held.pop_front() {
                        self.held_bytes -= held_len(&event);
                        permit.send(event);
                    }
                }
                Wake::Frame(Err(e)) => {
                    if matches!(e, ClientError::Protocol(_)) {
                        conn.close(Some(ErrorCode::MalformedFrame)).await;
                    }
                    return e;
                }
                Wake::Frame(Ok(frame)) => {
                    // Anything from the relay proves the connection alive.
                    pong_deadline = None;
                    // After waking, only the answer to the probe does: other
                    // frames may have waited in the socket since before.
                    if let (Frame::Pong { nonce }, Some((probe_nonce, _))) = (&frame, probe)
                        && *nonce == probe_nonce
                    {
                        debug!("the relay answered after the wake; keeping the connection");
                        probe = None;
                        self.woke = false;
                    }
                    if let Err(e) = self.on_frame(&mut conn, frame).await {
                        return e;
                    }
                }
                Wake::Ping => {
                    next_ping = after(jittered(self.config.ping_interval));
                    if pong_deadline.is_none() {
                        let nonce = rand::rng().random::<u64>();
                        if let Err(e) = conn.send(&Frame::Ping { nonce }).await {
                            return e;
                        }
                        pong_deadline = Some(after(self.config.pong_timeout));
                    }
                }
                Wake::Woke(by) => {
                    info!(slept = ?by, "woke up (the clock jumped); checking the relay connection");
                    self.woke = true;
                    if probe.is_none() {
                        let nonce = rand::rng().random::<u64>();
                        if let Err(e) = conn.send(&Frame::Ping { nonce }).await {
                            return e;
                        }
                        probe = Some((nonce, after(self.config.wake_pong_timeout)));
                    }
                    self.hold(Event::Woke { slept: by });
                }
                Wake::ProbeTimeout => {
                    warn!(
                        timeout = ?self.config.wake_pong_timeout,
                        "no answer from the relay after waking; reconnecting"
                    );
                    return ClientError::Disconnected {
                        code: None,
                        reason: format!(
                            "the relay did not answer a ping within {:?} after waking",
                            self.config.wake_pong_timeout
                        ),
                    };
                }
                Wake::PongTimeout => {
                    warn!(timeout = ?self.config.pong_timeout, "the relay stopped answering");
                    return ClientError::Disconnected {
                        code: None,
                        reason: format!(
                            "the relay did not answer a ping within {:?}",
                            self.config.pong_timeout
                        ),
                    };
                }
            }
        }
    }

    async fn on_frame(&mut self, conn: &mut Connection, frame: Frame) -> Result<(), ClientError> {
        match frame {
            Frame::Deliver { delivery_id: relay_id, from, payload } => {
                let delivery_id = self.cursor.local(relay_id);
                self.shared.delivered.fetch_max(delivery_id, Ordering::AcqRel);
                let acked = self.shared.ack.load(Ordering::Acquire);
                if delivery_id <= acked {
                    // Already processed and acknowledged in this process and
                    // this store epoch: the earlier ack was lost with a
                    // connection. Say it again.
                    debug!(relay_id, acked, "dropping a redelivery");
                    if let Some(up_to) = self.cursor.relay(acked) {
                        conn.send(&Frame::Ack { up_to }).await?;
                    }
                    self.ack_sent = self.ack_sent.max(acked);
                } else {
                    debug!(relay_id, delivery_id, %from, len = payload.len(), "deliver");
                    self.hold(Event::Deliver { delivery_id, from, payload });
                }
            }
            Frame::Ok { ref_id } => match self.in_flight.remove(&ref_id) {
                Some(pending) => pending.answer(Ok(())),
                None => debug!(ref_id, "Ok for no pending request"),
            },
            Frame::Oks { runs } => {
                // Each `Send` in flight that a run covers, as by `Ok`; ids
                // not in flight (or not a `Send`) are not this answer's.
                for run in &runs {
                    let covered: Vec<u64> = self
                        .in_flight
                        .range(run.ids())
                        .filter(|(_, p)| matches!(p.frame, Frame::Send { .. }))
                        .map(|(id, _)| *id)
                        .collect();
                    for id in covered {
                        if let Some(pending) = self.in_flight.remove(&id) {
                            pending.answer(Ok(()));
                        }
                    }
                }
            }
            Frame::Error { code, ref_id, message } => {
                match self.in_flight.remove(&ref_id).filter(|_| ref_id != 0) {
                    Some(pending) => {
                        debug!(ref_id, %code, "request refused");
                        pending.answer(Err(ClientError::Refused(code, message)));
                    }
                    None => {
                        warn!(ref_id, %code, %message, "the relay reported an error");
                        if ends_connection(code) {
                            self.last_error = Some(code);
                        }
                        self.hold(Event::Refused { code, ref_id, message });
                    }
                }
            }
            Frame::Ping { nonce } => conn.send(&Frame::Pong { nonce }).await?,
            Frame::Pong { .. } => {}
            Frame::Presence { peer, online } => {
                debug!(%peer, online, "presence");
                self.hold(Event::Presence { peer, online });
            }
            Frame::PairMessage { pairing_id, peer, payload } => {
                debug!(%peer, len = payload.len(), "pair message");
                self.hold(Event::PairMessage { pairing_id, peer, payload });
            }
            Frame::Restarting { reconnect_after_ms } => {
                let after = Duration::from_millis(u64::from(reconnect_after_ms));
                info!(?after, "the relay is restarting");
                self.restart_hint = Some(after);
                self.hold(Event::Restarting { after });
            }
            other => warn!(frame = %other.frame_type(), "ignoring an unexpected frame"),
        }
        Ok(())
    }

    /// Write the application's acknowledgement if it grew.
    async fn flush_ack(&mut self, conn: &mut Connection) -> Result<(), ClientError> {
        let acked = self.shared.ack.load(Ordering::Acquire);
        if acked > self.ack_sent {
            // An acknowledgement of an older store epoch stays here.
            if let Some(up_to) = self.cursor.relay(acked) {
                conn.send(&Frame::Ack { up_to }).await?;
                debug!(up_to, "ack");
            }
            self.ack_sent = acked;
        }
        Ok(())
    }

    /// Write up to [`FLUSH_BATCH`] requests from the outbox.
    async fn flush(&mut self, conn: &mut Connection) -> Result<(), ClientError> {
        for _ in 0..FLUSH_BATCH {
            let Some(pending) = self.outbox.pop_front() else { break };
            if pending.reply.is_closed() {
                debug!(id = pending.id, "dropping a request nobody waits for");
                continue;
            }
            match conn.send(&pending.frame).await {
                Ok(()) if pending.id == 0 => pending.answer(Ok(())),
                Ok(()) => {
                    debug!(id = pending.id, frame = %pending.frame.frame_type(), "written");
                    self.in_flight.insert(pending.id, pending);
                }
                Err(ClientError::TooLarge) => pending.answer(Err(ClientError::TooLarge)),
                Err(e) => {
                    // It may have been partly written: treat it as in flight.
                    if pending.id == 0 {
                        self.outbox.push_front(pending);
                    } else {
                        self.in_flight.insert(pending.id, pending);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// Closes the request queue when the actor goes (however it ends): later
/// requests fail with [`ClientError::Closed`], waiting ones too.
struct CloseRequests(Arc<Shared>);

impl Drop for CloseRequests {
    fn drop(&mut self) {
        self.0.requests.close();
    }
}

/// Codes with which the relay ends a connection (§5).
fn ends_connection(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::AuthFailed
            | ErrorCode::NotAuthenticated
            | ErrorCode::HandshakeTimeout
            | ErrorCode::IdleTimeout
            | ErrorCode::Replaced
            | ErrorCode::Overloaded
            | ErrorCode::ShuttingDown
            | ErrorCode::PingTimeout
    )
}

/// The next clock jump from the wake watcher; never, when it is off.
async fn woke(wake: &mut Option<mpsc::Receiver<Duration>>) -> Duration {
    match wake {
        Some(rx) => match rx.recv().await {
            Some(by) => by,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// `interval` ± 20 %.
fn jittered(interval: Duration) -> Duration {
    let factor = rand::rng().random_range(0.8..=1.2);
    Duration::try_from_secs_f64(interval.as_secs_f64() * factor).unwrap_or(interval)
}

/// `now + d`, saturating far in the future.
fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d).unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}
