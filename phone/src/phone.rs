//! The phone: paired desktops, one relay connection per relay, pairing, and
//! the task messages in both directions.
//!
//! Ordering rule (as on the desktop): a desktop's `Link` and offsets are
//! saved before anything sealed under it leaves and before the relay
//! delivery that changed it is acknowledged. Every record is handed to the
//! relay client (which writes requests in the order they were made) while
//! the state is locked, right after it was sealed and saved, so records
//! reach the relay in the order they were sealed, whatever path sealed them:
//! a record sealed under a session must not arrive after the confirmation of
//! the next one, when the desktop may have erased the old session. One
//! sender task per connection waits for the relay's answers, so the
//! connection loop never waits on the network; what cannot be sent now
//! stays in the link's persisted outbox and goes out again on the next
//! `Connected`.
//!
//! Sessions renew and rekey on the schedule of `docs/PROTOCOL.md` §10.6
//! ([`PhoneConfig::schedule`]): see [`renewal`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tandem_client::{Client, ClientConfig, ClientError, Event};
use tandem_proto::entropy::Entropy;
use tandem_proto::envelope::Envelope;
use tandem_proto::link::{LinkError, LinkEvent};
use tandem_proto::message::{Decoded, DeviceInfo, Message, TaskEvent, TaskSummary};
use tandem_proto::pairing::{PhoneAwaitingResult, PhonePairing};
use tandem_proto::qr::PairingLink;
use tandem_proto::record::RecordError;
use tandem_proto::upkeep::Schedule;
use tandem_proto::{DeviceId, DeviceKey, Role};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::error::PhoneError;
use crate::offsets::{Offsets, Verdict};
use crate::secrets::{FileSecretStore, SecretStore};
use crate::store::{self, DesktopRecord};

mod renewal;

pub use renewal::StepHook;

/// The name of the device key in the secret store.
pub const DEVICE_KEY_SECRET: &str = "device-key";

/// How long a request waits for the relay before it counts as queued.
const SEND_WAIT: Duration = Duration::from_secs(10);
/// How long pairing waits for the desktop's first answer.
const WELCOME_WAIT: Duration = Duration::from_secs(30);
/// How long pairing waits for the person at the desktop to confirm.
const CONFIRM_WAIT: Duration = Duration::from_secs(300);
/// How long a history or task-list request waits for its answer.
const ANSWER_WAIT: Duration = Duration::from_secs(30);
/// Records waiting for a connection's sender task.
const SEND_QUEUE: usize = 1024;
/// Events kept for slow subscribers.
const EVENT_BUFFER: usize = 4096;

/// How to open a phone.
#[derive(Debug, Clone)]
pub struct PhoneConfig {
    /// Where the phone keeps its state.
    pub data_dir: PathBuf,
    /// What the phone is called on the desktop.
    pub device_name: String,
    /// `ios`, `android`, `web`, …
    pub platform: String,
    /// The app's version.
    pub app_version: String,
    /// Where the device key lives; `None`: 0600 files in `data_dir/secrets`.
    pub secret_store: Option<Arc<dyn SecretStore>>,
    /// Extra trusted root certificates (PEM) for relays with private CAs.
    pub extra_roots_pem: Vec<String>,
    /// When each desktop's session is renewed and its sending key ratcheted
    /// (`docs/PROTOCOL.md` §10.6; default: hourly). No field may be 0.
    pub schedule: Schedule,
    /// Called with the name of each step of a session renewal as this phone
    /// passes it (the names of the agent's crash points,
    /// `renew.init_saved` …). For crash tests, which abort the process
    /// there; `None` in apps.
    pub step_hook: Option<StepHook>,
}

impl PhoneConfig {
    /// A configuration with a file secret store.
    #[must_use]
    pub fn new(data_dir: impl Into<PathBuf>, device_name: impl Into<String>) -> Self {
        Self {
            data_dir: data_dir.into(),
            device_name: device_name.into(),
            platform: "unknown".into(),
            app_version: env!("CARGO_PKG_VERSION").into(),
            secret_store: None,
            extra_roots_pem: Vec::new(),
            schedule: Schedule::default(),
            step_hook: None,
        }
    }
}

/// A relay connection's state, as an app shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// The first connection attempt is under way.
    Connecting,
    /// Authenticated with the relay.
    Connected,
    /// Disconnected; trying again.
    Reconnecting {
        /// When the next attempt is (ms).
        retry_in_ms: u64,
    },
    /// The relay refuses this phone for good.
    Revoked,
}

/// A paired desktop, for a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesktopSummary {
    /// Its device id.
    pub desktop_id: String,
    /// What it calls itself.
    pub name: String,
    /// The relay it is reached through.
    pub relay_url: String,
    /// Whether it is connected to the relay now.
    pub online: bool,
    /// Whether a task of it is queued or running (as far as this phone saw).
    pub busy: bool,
    /// This phone's connection to that relay.
    pub connection: ConnectionState,
}

/// One task event, with where it belongs.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEventRecord {
    /// The desktop.
    pub desktop_id: String,
    /// The task.
    pub task_id: String,
    /// Its position in the task's history.
    pub offset: u64,
    /// When it happened (Unix ms, desktop clock).
    pub at_ms: u64,
    /// What happened.
    pub event: TaskEvent,
}

/// One page of a task's history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// The events, in order.
    pub events: Vec<TaskEventRecord>,
    /// The offset after the last event.
    pub next_offset: u64,
    /// More events follow: ask again from `next_offset`.
    pub more: bool,
    /// Events before this offset are no longer kept by the desktop.
    pub unavailable_before: Option<u64>,
}

/// What the phone tells its subscribers.
#[derive(Debug, Clone, PartialEq)]
pub enum PhoneEvent {
    /// A task event, each offset once and in order per task.
    Task(TaskEventRecord),
    /// A relay connection changed state (for every desktop on that relay).
    Connection {
        /// The desktop.
        desktop_id: String,
        /// The new state.
        state: ConnectionState,
    },
    /// A desktop came online or went offline.
    Presence {
        /// The desktop.
        desktop_id: String,
        /// Whether it is connected to the relay.
        online: bool,
    },
    /// The desktop stopped streaming progress to this idle phone; any
    /// request (a history fetch) re-attaches it.
    Detached {
        /// The desktop.
        desktop_id: String,
        /// The idle time that detached it.
        idle_secs: u64,
    },
    /// The desktop refused a request.
    Refused {
        /// The desktop.
        desktop_id: String,
        /// The task it concerns.
        task_id: Option<String>,
        /// The desktop's code (PROTOCOL §15.3.2).
        code: String,
        /// Its words.
        message: String,
    },
}

struct Desktop {
    id: DeviceId,
    record: DesktopRecord,
    offsets: Offsets,
    online: bool,
    active: BTreeSet<String>,
    /// Its outbox could not be sealed (the session's counters are used up):
    /// resend it as soon as a renewal completes.
    reseal: bool,
}

impl Desktop {
    fn new(id: DeviceId, record: DesktopRecord, offsets: Offsets, online: bool) -> Self {
        Desktop { id, record, offsets, online, active: BTreeSet::new(), reseal: false }
    }
}

/// The relay's answer to one record already handed to the client.
type Answer = Pin<Box<dyn Future<Output = Result<(), ClientError>> + Send>>;

/// For a connection's sender task: to whom a record went, the relay's
/// answer to wait for, and the renewal step it completes once stored.
type Posted = (DeviceId, Answer, Option<&'static str>);

struct Relay {
    client: Client,
    outbound: mpsc::Sender<Posted>,
    state: ConnectionState,
    tasks: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Hand `record` to the client now (its place in the order is taken
    /// here, under the caller's lock), and its answer to the sender task;
    /// `stored` is the renewal step it completes once the relay stored it.
    /// Never waits; a record that does not fit the queue is withdrawn and
    /// stays in the outbox.
    fn post(&self, to: DeviceId, record: Vec<u8>, stored: Option<&'static str>) {
        let answer: Answer = Box::pin(self.client.send(to, record));
        if self.outbound.try_send((to, answer, stored)).is_err() {
            debug!(peer = %to, "send queue full; the record stays in the outbox");
        }
    }
}

struct PendingHistory {
    from: u64,
    events: Vec<TaskEventRecord>,
    unavailable_before: Option<u64>,
    reply: oneshot::Sender<HistoryPage>,
}

#[derive(Default)]
struct State {
    desktops: BTreeMap<String, Desktop>,
    relays: HashMap<String, Relay>,
    pairings: HashMap<[u8; 16], mpsc::Sender<Vec<u8>>>,
    histories: HashMap<(String, String), Vec<PendingHistory>>,
    lists: HashMap<String, Vec<oneshot::Sender<Vec<TaskSummary>>>>,
    closed: bool,
}

struct Inner {
    data_dir: PathBuf,
    key: DeviceKey,
    info: DeviceInfo,
    roots: Vec<String>,
    state: Mutex<State>,
    entropy: Mutex<Entropy>,
    events: broadcast::Sender<PhoneEvent>,
    schedule: Schedule,
    step_hook: Option<StepHook>,
}

/// The phone side of Tandem. Cheap to clone; needs a tokio runtime.
#[derive(Clone)]
pub struct Phone {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Phone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Phone").field("device_id", &self.device_id()).finish_non_exhaustive()
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn storage(e: impl std::fmt::Display) -> PhoneError {
    PhoneError::Storage(e.to_string())
}

/// `http(s)://host[:port]` → the relay's WebSocket endpoint.
fn relay_url(origin: &str) -> String {
    let ws = if let Some(rest) = origin.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = origin.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        origin.to_owned()
    };
    format!("{}/v1/connect", ws.trim_end_matches('/'))
}

fn load_key(store: &dyn SecretStore, entropy: &mut Entropy) -> Result<DeviceKey, PhoneError> {
    match store.load(DEVICE_KEY_SECRET).map_err(PhoneError::Storage)? {
        Some(bytes) => {
            let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                PhoneError::Storage("the stored device key is damaged (not 32 bytes)".into())
            })?;
            Ok(DeviceKey::from_bytes(secret))
        }
        None => {
            let key = DeviceKey::generate(entropy).map_err(storage)?;
            store.store(DEVICE_KEY_SECRET, &key.to_bytes()).map_err(PhoneError::Storage)?;
            Ok(key)
        }
    }
}

impl Phone {
    /// Open the phone's state in `config.data_dir` (creating a device key
    /// on first use) and connect to the relays of its paired desktops.
    ///
    /// # Errors
    /// [`PhoneError::Storage`] when the state or the key cannot be read;
    /// [`PhoneError::InvalidConfig`] for a schedule with a 0 in it.
    pub async fn open(config: PhoneConfig) -> Result<Phone, PhoneError> {
        renewal::check_schedule(&config.schedule)?;
        store::create_private_dir(&config.data_dir).map_err(storage)?;
        let secrets: Arc<dyn SecretStore> = match &config.secret_store {
            Some(s) => Arc::clone(s),
            None => Arc::new(FileSecretStore::new(&config.data_dir.join("secrets"))),
        };
        let mut entropy = Entropy::os();
        let key = load_key(secrets.as_ref(), &mut entropy)?;
        let info = DeviceInfo {
            name: config.device_name.chars().take(64).collect(),
            platform: config.platform.chars().take(32).collect(),
            app_version: config.app_version.chars().take(32).collect(),
            ephemeral: false,
        };
        let records = store::load_all(&config.data_dir).map_err(storage)?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let inner = Arc::new(Inner {
            data_dir: config.data_dir.clone(),
            key,
            info,
            roots: config.extra_roots_pem.clone(),
            state: Mutex::new(State::default()),
            entropy: Mutex::new(entropy),
            events,
            schedule: config.schedule,
            step_hook: config.step_hook.clone(),
        });
        let phone = Phone { inner };
        {
            let mut st = phone.lock();
            for record in records {
                let Ok(id) = record.desktop_id.parse::<DeviceId>() else {
                    warn!(desktop = %record.desktop_id, "stored desktop with a bad id skipped");
                    continue;
                };
                let offsets = Offsets::from_stored(record.offsets.clone());
                st.desktops
                    .insert(record.desktop_id.clone(), Desktop::new(id, record, offsets, false));
            }
            let urls: BTreeSet<String> =
                st.desktops.values().map(|d| d.record.relay_url.clone()).collect();
            for url in urls {
                phone.start_relay(&mut st, &url);
            }
        }
        Ok(phone)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// This phone's device id.
    #[must_use]
    pub fn device_id(&self) -> String {
        self.inner.key.public().device_id().to_string()
    }

    /// Subscribe to task events, connection changes, presence, detach and
    /// refusals. A subscriber that falls more than 4096 events behind
    /// misses the oldest (`RecvError::Lagged`) and should reload history.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<PhoneEvent> {
        self.inner.events.subscribe()
    }

    fn emit(&self, e: PhoneEvent) {
        let _ = self.inner.events.send(e);
    }

    /// The connection to `url`, started if there is none.
    fn start_relay(&self, st: &mut State, url: &str) -> Client {
        if let Some(r) = st.relays.get(url) {
            return r.client.clone();
        }
        let mut cc = ClientConfig::new(url.to_owned(), self.inner.key.clone(), Role::Phone);
        cc.extra_roots_pem = self.inner.roots.clone();
        let (client, events) = Client::start(cc);
        let (outbound, mut queue) = mpsc::channel::<Posted>(SEND_QUEUE);
        let me = self.clone();
        let sender = tokio::spawn(async move {
            while let Some((to, answer, stored)) = queue.recv().await {
                match answer.await {
                    Ok(()) => {
                        if let Some(step) = stored {
                            me.step(step);
                        }
                    }
                    Err(e) => debug!(peer = %to, error = %e, "send refused; resent on reconnect"),
                }
            }
        });
        let me = self.clone();
        let u = url.to_owned();
        let reader = tokio::spawn(async move { me.run_relay(u, events).await });
        let upkeep = self.spawn_upkeep(url);
        st.relays.insert(
            url.to_owned(),
            Relay {
                client: client.clone(),
                outbound,
                state: ConnectionState::Connecting,
                tasks: vec![sender, reader, upkeep],
            },
        );
        client
    }

    async fn run_relay(self, url: String, mut events: mpsc::Receiver<Event>) {
        while let Some(ev) = events.recv().await {
            match ev {
                Event::Connected { .. } => self.connection(&url, ConnectionState::Connected, true),
                Event::Disconnected { retry_in, code, reason } => {
                    let state = if retry_in == Duration::MAX
                        && matches!(
                            code,
                            Some(
                                tandem_proto::ErrorCode::Revoked
                                    | tandem_proto::ErrorCode::AuthFailed
                            )
                        ) {
                        ConnectionState::Revoked
                    } else {
                        let ms = u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX);
                        ConnectionState::Reconnecting { retry_in_ms: ms }
                    };
                    debug!(relay = %url, reason, "disconnected");
                    self.connection(&url, state, false);
                }
                Event::Presence { peer, online } => {
                    let id = peer.to_string();
                    let known = {
                        let mut st = self.lock();
                        match st.desktops.get_mut(&id) {
                            Some(d) => {
                                d.online = online;
                                true
                            }
                            None => false,
                        }
                    };
                    if known {
                        self.emit(PhoneEvent::Presence { desktop_id: id.clone(), online });
                        if online {
                            self.resend(&id);
                            // Both online: a renewal that is due starts now.
                            self.upkeep(&id);
                        }
                    }
                }
                Event::Deliver { delivery_id, from, payload } => {
                    // Saved (or nothing to keep): the relay may delete it now.
                    // Not saved: no ack, so the relay delivers it again.
                    if self.deliver(&url, from, &payload)
                        && let Some(r) = self.lock().relays.get(&url)
                    {
                        r.client.ack(delivery_id);
                    }
                }
                Event::PairMessage { pairing_id, payload, .. } => {
                    let tx = self.lock().pairings.get(&pairing_id).cloned();
                    if let Some(tx) = tx {
                        let _ = tx.try_send(payload);
                    }
                }
                other => debug!(?other, "relay event"),
            }
        }
    }

    fn connection(&self, url: &str, state: ConnectionState, connected: bool) {
        let ids: Vec<String> = {
            let mut st = self.lock();
            if let Some(r) = st.relays.get_mut(url) {
                r.state = state;
            }
            let ids: Vec<String> = st
                .desktops
                .values()
                .filter(|d| d.record.relay_url == url)
                .map(|d| d.record.desktop_id.clone())
                .collect();
            if !connected {
                for id in &ids {
                    if let Some(d) = st.desktops.get_mut(id) {
                        d.online = false;
                    }
                }
            }
            ids
        };
        if connected {
            // A gap fill whose answer was lost with the old connection is
            // asked for again at the next gap.
            let mut st = self.lock();
            for id in &ids {
                if let Some(d) = st.desktops.get_mut(id) {
                    d.offsets.forget_fills();
                }
            }
        }
        for id in ids {
            self.emit(PhoneEvent::Connection { desktop_id: id.clone(), state });
            if connected {
                self.resend(&id);
            }
        }
    }

    /// Whatever the desktop has not acknowledged goes out again.
    fn resend(&self, desktop_id: &str) {
        let mut st = self.lock();
        let Some(d) = st.desktops.get_mut(desktop_id) else { return };
        let records = match d.record.link.resend(0) {
            Ok(r) => r,
            Err(e) => {
                // Counters used up: the schedule renews the session, and the
                // outbox follows the renewal.
                info!(desktop = %desktop_id, error = %e, "cannot reseal the outbox until the session is renewed");
                d.reseal = true;
                drop(st);
                self.upkeep(desktop_id);
                return;
            }
        };
        if records.is_empty() {
            return;
        }
        if let Err(e) = self.save_locked(d) {
            warn!(error = %e, "cannot save before resending");
            return;
        }
        let (id, url) = (d.id, d.record.relay_url.clone());
        if let Some(r) = st.relays.get(&url) {
            for rec in records {
                r.post(id, rec, None);
            }
        }
    }

    fn save_locked(&self, d: &mut Desktop) -> Result<(), PhoneError> {
        d.record.offsets = d.offsets.stored().clone();
        store::save(&self.inner.data_dir, &d.record).map_err(storage)?;
        d.record.link.mark_persisted();
        Ok(())
    }

    /// A record from a desktop: open, save, act. `false` if it could not be
    /// saved (then the in-memory state is reloaded from disk and the relay
    /// must deliver it again).
    fn deliver(&self, url: &str, from: DeviceId, payload: &[u8]) -> bool {
        let id = from.to_string();
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut emitted = Vec::new();
        let mut requests = Vec::new();
        let kind = renewal::Kind::of(payload);
        let mut reseal = false;
        {
            let mut st = self.lock();
            let st = &mut *st;
            let Some(d) = st.desktops.get_mut(&id) else {
                debug!(peer = %id, "record from a device that is not paired dropped");
                return true;
            };
            let received = {
                let mut entropy =
                    self.inner.entropy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                d.record.link.receive(&self.inner.key, payload, &mut entropy)
            };
            let events = match received {
                Ok(e) => e,
                Err(LinkError::Record(RecordError::Replay(_))) => {
                    // Seen before (a redelivery): tell the desktop again what we have.
                    if let Ok(ack) = d.record.link.ack() {
                        out.push(ack);
                    }
                    Vec::new()
                }
                Err(e) => {
                    debug!(peer = %id, error = %e, "record refused");
                    return true;
                }
            };
            let step = renewal::Points::of(kind, &events);
            if events.iter().any(|e| matches!(e, LinkEvent::SessionRenewed)) {
                info!(desktop = %id, "session renewed");
                reseal = std::mem::take(&mut d.reseal);
            }
            if let Some(p) = step {
                self.step(p.received);
            }
            let mut direct_reply = false;
            let mut ack_due = false;
            for ev in events {
                match ev {
                    LinkEvent::Message { message, .. } => match Message::decode(&message) {
                        Ok(Decoded::Known(m)) => {
                            apply(st, &id, m, &mut emitted, &mut requests);
                        }
                        Ok(Decoded::Unknown { kind, .. }) => {
                            debug!(kind, "message kind from a newer desktop ignored");
                        }
                        Err(e) => warn!(error = %e, "malformed message from the desktop"),
                    },
                    LinkEvent::Send(e) => out.extend(e),
                    LinkEvent::ResyncNeeded { from: a, to: b } => {
                        warn!(desktop = %id, a, b, "messages from the desktop were lost");
                    }
                    LinkEvent::AckDue => ack_due = true,
                    // Noted above.
                    LinkEvent::SessionRenewed => {}
                }
            }
            let Some(d) = st.desktops.get_mut(&id) else { return true };
            for m in requests {
                let Ok(bytes) = m.encode() else { continue };
                match d.record.link.send(bytes) {
                    Ok((_, r)) => {
                        out.push(r);
                        direct_reply = true;
                    }
                    Err(e) => {
                        warn!(error = %e, "history request not sealed");
                        d.reseal |= matches!(e, RecordError::Exhausted);
                    }
                }
            }
            // Data arrived: acknowledge (never in answer to an ack alone, or
            // the two sides would ack each other forever).
            if ack_due
                && !direct_reply
                && let Ok(ack) = d.record.link.ack()
            {
                out.push(ack);
            }
            if let Err(e) = self.save_locked(d) {
                warn!(error = %e, "cannot save the desktop's state; the relay will redeliver");
                // Back to what is on disk, so the redelivery opens again.
                if let Ok(Some(r)) = store::load_one(&self.inner.data_dir, &id) {
                    d.offsets = Offsets::from_stored(r.offsets.clone());
                    d.record = r;
                }
                return false;
            }
            if let Some(p) = step {
                self.step(p.saved);
            }
            if let Some(r) = st.relays.get(url) {
                // The renewal's answer (the accept, or the confirming ack) is
                // the last envelope: its step passes once the relay stored it.
                let last = out.len().saturating_sub(1);
                for (i, rec) in out.into_iter().enumerate() {
                    let stored = step.and_then(|p| p.sent).filter(|_| i == last);
                    r.post(from, rec, stored);
                }
            }
        }
        for e in emitted {
            self.emit(e);
        }
        if reseal {
            // A renewal ended an exhausted session: the outbox goes out now.
            self.resend(&id);
        }
        true
    }

    /// Start pairing from a scanned QR code or its link. Returns once the
    /// desktop answered, with the 6-digit code to compare; then
    /// [`Pairing::wait`] for the person at the desktop to confirm.
    ///
    /// # Errors
    /// [`PhoneError::InvalidQr`], [`PhoneError::Expired`],
    /// [`PhoneError::AlreadyClaimed`], [`PhoneError::WrongRelay`],
    /// [`PhoneError::RelayUnreachable`], [`PhoneError::Timeout`].
    pub async fn start_pairing(&self, qr: &str) -> Result<Pairing, PhoneError> {
        let link = PairingLink::parse(qr, now_unix())?;
        let url = relay_url(link.relay_origin());
        let pid = link.payload.pairing_id();
        let desktop = link.payload.desktop.device_id();
        let (tx, mut rx) = mpsc::channel(4);
        let client = {
            let mut st = self.lock();
            if st.closed {
                return Err(PhoneError::Closed);
            }
            st.pairings.insert(pid, tx);
            self.start_relay(&mut st, &url)
        };
        let result = async {
            let (pairing, hello) = {
                let mut entropy =
                    self.inner.entropy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                PhonePairing::start(&self.inner.key, &link.payload, &self.inner.info, &mut entropy)?
            };
            match tokio::time::timeout(SEND_WAIT, client.pair_claim(pid, hello)).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(PhoneError::RelayUnreachable(format!("no answer from {url}")));
                }
            }
            let welcome = tokio::time::timeout(WELCOME_WAIT, rx.recv())
                .await
                .map_err(|_| PhoneError::Timeout)?
                .ok_or(PhoneError::Closed)?;
            let envelope =
                Envelope::decode(&welcome).map_err(|e| PhoneError::Protocol(e.to_string()))?;
            let (waiting, confirm) = pairing.on_welcome(&envelope)?;
            client.pair_message(pid, desktop, confirm).await?;
            Ok(waiting)
        }
        .await;
        match result {
            Ok(waiting) => Ok(Pairing { phone: self.clone(), waiting, rx, pid, url, desktop }),
            Err(e) => {
                self.lock().pairings.remove(&pid);
                self.drop_unused_relay(&url);
                Err(e)
            }
        }
    }

    /// Stop a relay connection that no desktop uses (after a failed pairing).
    fn drop_unused_relay(&self, url: &str) {
        let mut st = self.lock();
        let used = st.desktops.values().any(|d| d.record.relay_url == url)
            || st.pairings.values().len() > 0;
        if used {
            return;
        }
        if let Some(r) = st.relays.remove(url) {
            for t in r.tasks {
                t.abort();
            }
            let client = r.client;
            tokio::spawn(async move { client.close().await });
        }
    }

    /// The paired desktops.
    #[must_use]
    pub fn desktops(&self) -> Vec<DesktopSummary> {
        let st = self.lock();
        st.desktops.values().map(|d| summary(&st, d)).collect()
    }

    /// Forget a desktop: its keys and state are deleted here and the relay
    /// is told to stop routing between the two.
    ///
    /// # Errors
    /// [`PhoneError::UnknownDesktop`], [`PhoneError::Storage`].
    pub async fn forget(&self, desktop_id: &str) -> Result<(), PhoneError> {
        let (id, client) = {
            let mut st = self.lock();
            let d = st
                .desktops
                .remove(desktop_id)
                .ok_or_else(|| PhoneError::UnknownDesktop(desktop_id.into()))?;
            store::remove(&self.inner.data_dir, desktop_id).map_err(storage)?;
            let client = st.relays.get(&d.record.relay_url).map(|r| r.client.clone());
            (d.id, client)
        };
        if let Some(c) = client {
            let _ = tokio::time::timeout(SEND_WAIT, c.revoke(id)).await;
        }
        info!(desktop = %desktop_id, "forgot a desktop");
        Ok(())
    }

    /// Seal `m` for a desktop, save, and send it. Resolves when the relay
    /// stored it, or after a while if the relay is unreachable (it stays in
    /// the outbox and goes out on reconnect).
    async fn send(&self, desktop_id: &str, m: &Message) -> Result<(), PhoneError> {
        let bytes = m.encode().map_err(|e| PhoneError::Protocol(e.to_string()))?;
        let answer = {
            let mut st = self.lock();
            let st = &mut *st;
            let d = st
                .desktops
                .get_mut(desktop_id)
                .ok_or_else(|| PhoneError::UnknownDesktop(desktop_id.into()))?;
            let record = match d.record.link.send(bytes) {
                Ok((_, record)) => Some(record),
                // Queued, not sealed: the session's counters are used up. It
                // goes out after the renewal the schedule starts.
                Err(RecordError::Exhausted) => {
                    d.reseal = true;
                    None
                }
                Err(e) => return Err(PhoneError::Protocol(e.to_string())),
            };
            self.save_locked(d)?;
            let client = st
                .relays
                .get(&d.record.relay_url)
                .map(|r| r.client.clone())
                .ok_or(PhoneError::Closed)?;
            // Handed to the client under the lock: in the order it was
            // sealed relative to every other record (see the module docs).
            record.map(|r| client.send(d.id, r))
        };
        let Some(answer) = answer else {
            self.upkeep(desktop_id);
            return Ok(());
        };
        match tokio::time::timeout(SEND_WAIT, answer).await {
            Ok(Ok(())) | Err(_) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// Submit a task; returns its id.
    ///
    /// # Errors
    /// [`PhoneError::UnknownDesktop`], [`PhoneError::Revoked`],
    /// [`PhoneError::Storage`].
    pub async fn submit(
        &self,
        desktop_id: &str,
        text: &str,
        executor: Option<String>,
    ) -> Result<String, PhoneError> {
        let mut raw = [0u8; 16];
        self.inner
            .entropy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .fill(&mut raw)
            .map_err(storage)?;
        let task_id = data_encoding::HEXLOWER.encode(&raw);
        let m = Message::TaskSubmit {
            task_id: task_id.clone(),
            text: text.to_owned(),
            workspace: None,
            executor,
        };
        self.send(desktop_id, &m).await?;
        Ok(task_id)
    }

    /// More input for a running or finished (resumable) task.
    ///
    /// # Errors
    /// As [`Phone::submit`].
    pub async fn follow_up(
        &self,
        desktop_id: &str,
        task_id: &str,
        text: &str,
    ) -> Result<(), PhoneError> {
        let m = Message::FollowUp { task_id: task_id.into(), text: text.into() };
        self.send(desktop_id, &m).await
    }

    /// Stop a task.
    ///
    /// # Errors
    /// As [`Phone::submit`].
    pub async fn cancel(&self, desktop_id: &str, task_id: &str) -> Result<(), PhoneError> {
        self.send(desktop_id, &Message::Cancel { task_id: task_id.into() }).await
    }

    /// Answer an approval request.
    ///
    /// # Errors
    /// As [`Phone::submit`].
    pub async fn decide(
        &self,
        desktop_id: &str,
        task_id: &str,
        approval_id: &str,
        allow: bool,
    ) -> Result<(), PhoneError> {
        let m = Message::ApprovalDecision {
            task_id: task_id.into(),
            approval_id: approval_id.into(),
            allow,
        };
        self.send(desktop_id, &m).await
    }

    /// One page of a task's history from `from_offset`. Also re-attaches a
    /// detached phone.
    ///
    /// # Errors
    /// As [`Phone::submit`]; [`PhoneError::Timeout`] without an answer.
    pub async fn history(
        &self,
        desktop_id: &str,
        task_id: &str,
        from_offset: u64,
    ) -> Result<HistoryPage, PhoneError> {
        let (tx, rx) = oneshot::channel();
        let key = (desktop_id.to_owned(), task_id.to_owned());
        self.lock().histories.entry(key.clone()).or_default().push(PendingHistory {
            from: from_offset,
            events: Vec::new(),
            unavailable_before: None,
            reply: tx,
        });
        let m = Message::HistoryRequest { task_id: Some(task_id.into()), from_offset };
        if let Err(e) = self.send(desktop_id, &m).await {
            if let Some(pages) = self.lock().histories.get_mut(&key) {
                pages.retain(|p| !p.reply.is_closed());
            }
            return Err(e);
        }
        tokio::time::timeout(ANSWER_WAIT, rx)
            .await
            .map_err(|_| PhoneError::Timeout)?
            .map_err(|_| PhoneError::Closed)
    }

    /// The desktop's most recent tasks, newest first.
    ///
    /// # Errors
    /// As [`Phone::history`].
    pub async fn tasks(&self, desktop_id: &str) -> Result<Vec<TaskSummary>, PhoneError> {
        let (tx, rx) = oneshot::channel();
        self.lock().lists.entry(desktop_id.to_owned()).or_default().push(tx);
        self.send(desktop_id, &Message::HistoryRequest { task_id: None, from_offset: 0 }).await?;
        tokio::time::timeout(ANSWER_WAIT, rx)
            .await
            .map_err(|_| PhoneError::Timeout)?
            .map_err(|_| PhoneError::Closed)
    }

    /// Close every relay connection. The state stays on disk.
    pub async fn close(&self) {
        let relays: Vec<Relay> = {
            let mut st = self.lock();
            st.closed = true;
            st.relays.drain().map(|(_, r)| r).collect()
        };
        for r in relays {
            for t in r.tasks {
                t.abort();
            }
            r.client.close().await;
        }
    }
}

fn summary(st: &State, d: &Desktop) -> DesktopSummary {
    DesktopSummary {
        desktop_id: d.record.desktop_id.clone(),
        name: d.record.info.name.clone(),
        relay_url: d.record.relay_url.clone(),
        online: d.online,
        busy: !d.active.is_empty(),
        connection: st
            .relays
            .get(&d.record.relay_url)
            .map_or(ConnectionState::Connecting, |r| r.state),
    }
}

/// Act on one message from desktop `id`: events to emit, requests to send.
fn apply(
    st: &mut State,
    id: &str,
    m: Message,
    emitted: &mut Vec<PhoneEvent>,
    requests: &mut Vec<Message>,
) {
    match m {
        Message::TaskEvent { task_id, offset, at_ms, event } => {
            let record =
                TaskEventRecord { desktop_id: id.to_owned(), task_id, offset, at_ms, event };
            // A page takes only the events that continue it: live events
            // racing the replay are not part of it.
            if let Some(pages) = st.histories.get_mut(&(id.to_owned(), record.task_id.clone())) {
                for p in pages.iter_mut() {
                    let start = p.unavailable_before.map_or(p.from, |e| e.max(p.from));
                    if offset == start + p.events.len() as u64 {
                        p.events.push(record.clone());
                    }
                }
            }
            let Some(d) = st.desktops.get_mut(id) else { return };
            match d.offsets.observe(&record.task_id, offset) {
                Verdict::Deliver => {
                    match &record.event {
                        TaskEvent::Finished { .. } => {
                            d.active.remove(&record.task_id);
                        }
                        _ => {
                            d.active.insert(record.task_id.clone());
                        }
                    }
                    emitted.push(PhoneEvent::Task(record));
                }
                Verdict::Fill { from } => requests.push(Message::HistoryRequest {
                    task_id: Some(record.task_id),
                    from_offset: from,
                }),
                Verdict::Drop => {}
            }
        }
        Message::HistoryEnd { task_id, next_offset, more } => {
            if let Some(d) = st.desktops.get_mut(id)
                && let Some(from) = d.offsets.history_end(&task_id, next_offset, more)
            {
                requests.push(Message::HistoryRequest {
                    task_id: Some(task_id.clone()),
                    from_offset: from,
                });
            }
            // The reply that covered a page's range resolves it (a reply for
            // another range, e.g. a gap fill, leaves it waiting).
            let key = (id.to_owned(), task_id);
            if let Some(pages) = st.histories.get_mut(&key) {
                let mut i = 0;
                while i < pages.len() {
                    let start = pages.get(i).map(|p| {
                        (p.unavailable_before.map_or(p.from, |e| e.max(p.from)), p.events.len())
                    });
                    match start {
                        Some((start, n)) if start + n as u64 == next_offset => {
                            let p = pages.remove(i);
                            let _ = p.reply.send(HistoryPage {
                                events: p.events,
                                next_offset,
                                more,
                                unavailable_before: p.unavailable_before,
                            });
                        }
                        _ => i += 1,
                    }
                }
                if pages.is_empty() {
                    st.histories.remove(&key);
                }
            }
        }
        Message::HistoryUnavailable { task_id, earliest, .. } => {
            if let Some(d) = st.desktops.get_mut(id) {
                d.offsets.unavailable(&task_id, earliest);
            }
            if let Some(pages) = st.histories.get_mut(&(id.to_owned(), task_id)) {
                for p in pages.iter_mut().filter(|p| p.from < earliest && p.events.is_empty()) {
                    p.unavailable_before = Some(earliest);
                }
            }
        }
        Message::TaskList { tasks } => {
            if let Some(d) = st.desktops.get_mut(id) {
                for t in &tasks {
                    if t.state == tandem_proto::message::TaskState::Finished {
                        d.active.remove(&t.task_id);
                    } else {
                        d.active.insert(t.task_id.clone());
                    }
                }
            }
            for w in st.lists.remove(id).unwrap_or_default() {
                let _ = w.send(tasks.clone());
            }
        }
        Message::Detached { idle_secs } => {
            emitted.push(PhoneEvent::Detached { desktop_id: id.to_owned(), idle_secs });
        }
        Message::Refused { task_id, code, message } => {
            emitted.push(PhoneEvent::Refused { desktop_id: id.to_owned(), task_id, code, message });
        }
        Message::DeviceInfo(info) => {
            if let Some(d) = st.desktops.get_mut(id) {
                d.record.info = info;
            }
        }
        _ => debug!("a phone-to-desktop message from a desktop ignored"),
    }
}

/// A pairing under way: the code is known, the desktop has not confirmed yet.
pub struct Pairing {
    phone: Phone,
    waiting: PhoneAwaitingResult,
    rx: mpsc::Receiver<Vec<u8>>,
    pid: [u8; 16],
    url: String,
    desktop: DeviceId,
}

impl std::fmt::Debug for Pairing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pairing").field("desktop", &self.desktop).finish_non_exhaustive()
    }
}

impl Pairing {
    /// The 6-digit code both screens show.
    #[must_use]
    pub fn sas(&self) -> String {
        self.waiting.sas().to_string()
    }

    /// What the desktop calls itself.
    #[must_use]
    pub fn desktop_name(&self) -> String {
        self.waiting.desktop_info().name.clone()
    }

    /// Wait for the person at the desktop to confirm; then the desktop is
    /// paired and saved.
    ///
    /// # Errors
    /// [`PhoneError::DesktopRefused`], [`PhoneError::Timeout`],
    /// [`PhoneError::Storage`].
    pub async fn wait(self) -> Result<DesktopSummary, PhoneError> {
        let Pairing { phone, waiting, rx, pid, url, desktop } = self;
        let r = finish(&phone, waiting, rx, &url, desktop).await;
        phone.lock().pairings.remove(&pid);
        if r.is_err() {
            phone.drop_unused_relay(&url);
        }
        r
    }
}

async fn finish(
    phone: &Phone,
    waiting: PhoneAwaitingResult,
    mut rx: mpsc::Receiver<Vec<u8>>,
    url: &str,
    desktop: DeviceId,
) -> Result<DesktopSummary, PhoneError> {
    let result = tokio::time::timeout(CONFIRM_WAIT, rx.recv())
        .await
        .map_err(|_| PhoneError::Timeout)?
        .ok_or(PhoneError::Closed)?;
    let envelope = Envelope::decode(&result).map_err(|e| PhoneError::Protocol(e.to_string()))?;
    let info = waiting.desktop_info().clone();
    let paired = waiting.on_result(&envelope)?;
    let client = {
        let mut st = phone.lock();
        phone.start_relay(&mut st, url)
    };
    client.authorize(desktop).await?;
    let record = DesktopRecord {
        desktop_id: desktop.to_string(),
        info,
        relay_url: url.to_owned(),
        paired_at_unix: now_unix(),
        link: tandem_proto::link::Link::from_paired(paired, Default::default()),
        offsets: BTreeMap::new(),
    };
    store::save(&phone.inner.data_dir, &record).map_err(storage)?;
    let mut st = phone.lock();
    let d = Desktop::new(desktop, record, Offsets::default(), true);
    let s = summary(&st, &d);
    st.desktops.insert(d.record.desktop_id.clone(), d);
    drop(st);
    info!(desktop = %desktop, "paired");
    // The renewal schedule's clock starts now (saved), not at the next tick.
    phone.upkeep(&s.desktop_id);
    Ok(s)
}
