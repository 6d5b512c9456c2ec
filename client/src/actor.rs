//! The task behind [`crate::Client`]: owns the connection, the outbox and the
//! reconnect loop.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
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
mod frames;
mod reconnect;

/// A connection attempt in progress beside the current connection.
type Attempt = Pin<Box<dyn Future<Output = Result<Connection, ClientError>> + Send>>;

/// How a connection ended.
enum Ended {
    /// It failed or closed: why.
    Error(ClientError),
    /// It stalled and this connection, made beside it, replaces it.
    Replaced(Box<Connection>),
}

/// A probe ping in flight: its nonce, the deadline for an answer, and
/// whether only its own pong counts (after waking: other frames may have
/// waited in the socket since before) or any frame does (a stall).
#[derive(Clone, Copy)]
struct Probe {
    nonce: u64,
    deadline: Instant,
    strict: bool,
}

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
        matches!(
            self.frame,
            Frame::Send { .. }
                | Frame::Authorize { .. }
                | Frame::Revoke { .. }
                | Frame::PushSubscribe { .. }
        )
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
    /// No answer to the probe ping (after waking, or on a stall).
    ProbeTimeout,
    /// A request unanswered, or the relay silent, for too long.
    Stall,
    /// The connection made beside a stalled one.
    Replacement(Result<Box<Connection>, ClientError>),
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
            )
            .with_fast(
                config.backoff_fast_max,
                config.backoff_fast_for,
                config.backoff_fast_for_busy,
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
        // A connection made beside a stalled one, to move to at once.
        let mut replacement: Option<Connection> = None;
        while !self.stopping {
            let Some(endpoint) = self.endpoint.clone().filter(|_| self.fatal.is_none()) else {
                self.serve_stopped().await;
                break;
            };
            let result = match replacement.take() {
                Some(conn) => Ok(conn),
                None => match self.attempt_connection(&endpoint).await {
                    Some(result) => result,
                    None => break,
                },
            };
            let ended = match result {
                Ok(conn) => {
                    info!(relay = endpoint.dialed_name(), queued = conn.queued(), "connected");
                    let up_since = Instant::now();
                    match self.run_connection(conn, &endpoint).await {
                        Ended::Error(e) => {
                            self.backoff.connection_ended(up_since.elapsed());
                            e
                        }
                        Ended::Replaced(conn) => {
                            self.requeue_in_flight();
                            let reason = "the connection stalled; moved to a new one".to_owned();
                            info!(%reason, "disconnected");
                            self.emit(Event::Disconnected {
                                reason,
                                code: None,
                                retry_in: Duration::ZERO,
                            })
                            .await;
                            replacement = Some(*conn);
                            continue;
                        }
                    }
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

    /// Drive one authenticated connection until it ends; returns why, or
    /// the connection made beside it when it stalled.
    async fn run_connection(&mut self, mut conn: Connection, endpoint: &Arc<Endpoint>) -> Ended {
        match self.drive(&mut conn, endpoint).await {
            Ok(new) => Ended::Replaced(new),
            Err(e) => Ended::Error(e),
        }
    }

    /// [`Actor::run_connection`]'s loop: `Err` when the connection ended,
    /// `Ok` with the connection that replaces it.
    async fn drive(
        &mut self,
        conn: &mut Connection,
        endpoint: &Arc<Endpoint>,
    ) -> Result<Box<Connection>, ClientError> {
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
        // A connection starts active (PROTOCOL.md §6.14).
        if self.shared.background.load(Ordering::Acquire) {
            conn.send(&Frame::Active { active: false }).await?;
        }

        let mut next_ping = after(jittered(self.config.ping_interval));
        let mut pong_deadline: Option<Instant> = None;
        // The probe ping in flight (after waking, or on a stall).
        let mut probe: Option<Probe> = None;
        // The last frame from the relay, and since when a request has been
        // waiting for an answer (while any does).
        let mut last_rx = Instant::now();
        let mut waiting_since: Option<Instant> = None;
        // A connection being made beside this one, once it stalled; and
        // whether this one has ended meanwhile (then only that one counts).
        let mut beside: Option<Attempt> = None;
        let mut dead: Option<ClientError> = None;
        // The relay's own pings: silence past this means trouble.
        let relay_ping = conn.relay_ping_interval();
        loop {
            if self.stopping || self.stop.is_cancelled() {
                self.stopping = true;
                let _ = self.flush_ack(conn).await;
                conn.close(None).await;
                return Err(ClientError::Closed);
            }
            if dead.is_none()
                && let Err(e) = self.flush_ack(conn).await
            {
                match beside {
                    Some(_) => dead = Some(e),
                    None => return Err(e),
                }
            }
            self.intake();
            if dead.is_none()
                && let Err(e) = self.flush(conn).await
            {
                match beside {
                    Some(_) => dead = Some(e),
                    None => return Err(e),
                }
            }
            if self.in_flight.is_empty() {
                waiting_since = None;
            } else if waiting_since.is_none() {
                waiting_since = Some(Instant::now());
            }
            let stall_at = match self.config.stall_after {
                Some(stall) if probe.is_none() && beside.is_none() => {
                    stall_deadline(stall, waiting_since, last_rx, relay_ping)
                }
                _ => None,
            };
            // More to write, or the flush made room (a request whose
            // caller gave up skipped, a pairing message answered on write)
            // that requests are waiting for.
            let more = dead.is_none()
                && (!self.outbox.is_empty()
                    || (self.has_room() && self.shared.requests.is_waiting()));
            // The socket is read while the application is slow too (pings
            // are answered), up to what may be held for it.
            let read = self.held.len() < MAX_HELD_EVENTS && self.held_bytes < MAX_HELD_BYTES;
            let holding = !self.held.is_empty();
            let events = self.events.clone();
            let wake = tokio::select! {
                () = self.stop.cancelled() => Wake::Stop,
                frame = conn.recv(), if read && dead.is_none() => Wake::Frame(frame),
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
                by = woke(&mut self.wake), if dead.is_none() => Wake::Woke(by),
                () = sleep_until(probe.map_or(next_ping, |p| p.deadline)), if probe.is_some() => {
                    Wake::ProbeTimeout
                }
                () = sleep_until(stall_at.unwrap_or(next_ping)), if stall_at.is_some() => Wake::Stall,
                made = attempt(&mut beside), if beside.is_some() => Wake::Replacement(made.map(Box::new)),
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
                    // With a connection being made beside it, wait for that.
                    match beside {
                        Some(_) => dead = Some(e),
                        None => return Err(e),
                    }
                }
                Wake::Frame(Ok(frame)) => {
                    // Anything from the relay proves the connection alive.
                    pong_deadline = None;
                    last_rx = Instant::now();
                    // After waking, only the answer to the probe does: other
                    // frames may have waited in the socket since before.
                    if let Some(p) = probe
                        && (!p.strict || matches!(frame, Frame::Pong { nonce } if nonce == p.nonce))
                    {
                        if p.strict {
                            debug!("the relay answered after the wake; keeping the connection");
                            self.woke = false;
                        } else {
                            debug!("the relay answered the probe; keeping the connection");
                        }
                        probe = None;
                    }
                    if let Err(e) = self.on_frame(conn, frame).await {
                        match beside {
                            Some(_) => dead = Some(e),
                            None => return Err(e),
                        }
                    }
                }
                Wake::Ping => {
                    next_ping = after(jittered(self.config.ping_interval));
                    if pong_deadline.is_none() && dead.is_none() && beside.is_none() {
                        let nonce = rand::rng().random::<u64>();
                        conn.send(&Frame::Ping { nonce }).await?;
                        pong_deadline = Some(after(self.config.pong_timeout));
                    }
                }
                Wake::Stall => {
                    debug!(
                        waiting = !self.in_flight.is_empty(),
                        silent_for = ?last_rx.elapsed(),
                        "the relay is slow to answer; probing the connection"
                    );
                    let nonce = rand::rng().random::<u64>();
                    conn.send(&Frame::Ping { nonce }).await?;
                    probe = Some(Probe {
                        nonce,
                        deadline: after(self.config.probe_timeout),
                        strict: false,
                    });
                }
                Wake::Replacement(Ok(new)) => return Ok(new),
                Wake::Replacement(Err(e)) => {
                    info!(error = %e, "the connection made beside a stalled one failed");
                    return Err(dead.unwrap_or(e));
                }
                Wake::Woke(by) => {
                    info!(slept = ?by, "woke up (the clock jumped); checking the relay connection");
                    self.woke = true;
                    if probe.is_none_or(|p| !p.strict) && beside.is_none() {
                        let nonce = rand::rng().random::<u64>();
                        conn.send(&Frame::Ping { nonce }).await?;
                        probe = Some(Probe {
                            nonce,
                            deadline: after(self.config.wake_pong_timeout),
                            strict: true,
                        });
                    }
                    self.hold(Event::Woke { slept: by });
                }
                Wake::ProbeTimeout if probe.is_some_and(|p| !p.strict) => {
                    probe = None;
                    warn!(
                        timeout = ?self.config.probe_timeout,
                        "the relay did not answer a probe; connecting again beside this connection"
                    );
                    let (endpoint, key) = (Arc::clone(endpoint), Arc::clone(&self.key));
                    let (role, timeout) = (self.config.role, self.config.connect_timeout);
                    beside =
                        Some(Box::pin(async move { endpoint.connect(&key, role, timeout).await }));
                }
                Wake::ProbeTimeout => {
                    warn!(
                        timeout = ?self.config.wake_pong_timeout,
                        "no answer from the relay after waking; reconnecting"
                    );
                    return Err(ClientError::Disconnected {
                        code: None,
                        reason: format!(
                            "the relay did not answer a ping within {:?} after waking",
                            self.config.wake_pong_timeout
                        ),
                    });
                }
                Wake::PongTimeout => {
                    warn!(timeout = ?self.config.pong_timeout, "the relay stopped answering");
                    return Err(ClientError::Disconnected {
                        code: None,
                        reason: format!(
                            "the relay did not answer a ping within {:?}",
                            self.config.pong_timeout
                        ),
                    });
                }
            }
        }
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

/// When a connection counts as stalled (see [`ClientConfig::stall_after`]):
/// `stall` after the later of the oldest unanswered request's wait and the
/// last frame, or `stall` past one and a half relay ping intervals of
/// silence; `None` when neither applies.
fn stall_deadline(
    stall: Duration,
    waiting_since: Option<Instant>,
    last_rx: Instant,
    relay_ping: Duration,
) -> Option<Instant> {
    let waiting = waiting_since.map(|since| since.max(last_rx) + stall);
    let silent =
        (!relay_ping.is_zero()).then(|| last_rx + relay_ping.saturating_mul(3) / 2 + stall);
    match (waiting, silent) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The connection attempt made beside a stalled connection; never, when
/// there is none.
async fn attempt(beside: &mut Option<Attempt>) -> Result<Connection, ClientError> {
    match beside {
        Some(a) => a.await,
        None => std::future::pending().await,
    }
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
