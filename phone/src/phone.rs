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
//! connection loop never waits on the network. What cannot be sent now
//! stays in the link's persisted outbox: see [`outbox`] for what goes out
//! again when (a timer for refusals, presence and reconnects for the rest,
//! never a record the relay already holds).
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

use crate::crashpoint::crash_point;
use crate::error::PhoneError;
use crate::offsets::{Offsets, Verdict};
use crate::secrets::{FileSecretStore, SecretStore};
use crate::store::{self, DesktopRecord};

mod connection;
mod early;
mod incoming;
mod outbox;
mod pairing;
mod push;
mod renewal;
mod requests;
mod types;

pub use early::FIRST_REPLAY;
pub use pairing::Pairing;
pub use renewal::StepHook;
pub use types::{
    Choices, ConnectionState, DesktopSummary, HistoryPage, PhoneConfig, PhoneEvent, TaskEventRecord,
};

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
/// How long `close` lets records already handed over reach the relay.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);
/// Records waiting for a connection's sender task.
const SEND_QUEUE: usize = 1024;
/// Events kept for slow subscribers.
const EVENT_BUFFER: usize = 4096;

struct Desktop {
    id: DeviceId,
    record: DesktopRecord,
    offsets: Offsets,
    online: bool,
    active: BTreeSet<String>,
    /// Its outbox could not be sealed (the session's counters are used up):
    /// resend it as soon as a renewal completes.
    reseal: bool,
    /// What the relay holds or is being asked to hold of the outbox.
    sent: outbox::Sent,
    /// The executors and projects it offers, as it last said (it says so
    /// with every task list; not kept across restarts).
    choices: Option<Choices>,
}

impl Desktop {
    fn new(id: DeviceId, record: DesktopRecord, offsets: Offsets, online: bool) -> Self {
        let mut sent = outbox::Sent::default();
        sent.presence(online);
        Desktop {
            id,
            record,
            offsets,
            online,
            active: BTreeSet::new(),
            reseal: false,
            sent,
            choices: None,
        }
    }
}

/// The relay's answer to one record already handed to the client.
type Answer = Pin<Box<dyn Future<Output = Result<(), ClientError>> + Send>>;

/// For a connection's sender task: one record handed to the client.
struct Posted {
    /// The desktop it goes to.
    to: DeviceId,
    /// The relay's answer to wait for.
    answer: Answer,
    /// The renewal step it completes once stored.
    stored: Option<&'static str>,
    /// The outbox message it carries, if it is one (not an ack, a nack or a
    /// handshake message, which are made again when needed).
    seq: Option<u64>,
}

struct Relay {
    client: Client,
    outbound: mpsc::Sender<Posted>,
    state: ConnectionState,
    /// The relay said it restarts: after the next `Connected` everything
    /// not acknowledged goes out again (it may have lost what it held).
    restarted: bool,
    /// The store epoch of the last connection (none yet): a connection to
    /// another store sends everything not acknowledged again (PROTOCOL.md
    /// §13.4), one to the same store only what it has not stored.
    epoch: Option<u64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Hand `record` to the client now (its place in the order is taken
    /// here, under the caller's lock), and its answer to the sender task;
    /// `stored` is the renewal step it completes once the relay stored it,
    /// `seq` the outbox message it carries. Never waits; a record that does
    /// not fit the queue is withdrawn (it stays in the outbox) and `false`
    /// is returned.
    fn post(
        &self,
        to: DeviceId,
        record: Vec<u8>,
        stored: Option<&'static str>,
        seq: Option<u64>,
    ) -> bool {
        let answer: Answer = Box::pin(self.client.send(to, record));
        let queued = self.outbound.try_send(Posted { to, answer, stored, seq }).is_ok();
        if !queued {
            debug!(peer = %to, "send queue full; the record stays in the outbox");
        }
        queued
    }
}

struct PendingHistory {
    from: u64,
    events: Vec<TaskEventRecord>,
    unavailable_before: Option<u64>,
    reply: oneshot::Sender<HistoryPage>,
}

/// A desktop's answer to a `sessions_request`: the list, or its refusal's
/// code and message.
type SessionsAnswer = Result<Vec<tandem_proto::message::SessionSummary>, (String, String)>;

#[derive(Default)]
struct State {
    desktops: BTreeMap<String, Desktop>,
    relays: HashMap<String, Relay>,
    /// Pairings under way: their relay's URL and where their mailbox's
    /// messages (and the reconnections of that relay) go.
    pairings: HashMap<[u8; 16], (String, mpsc::Sender<pairing::PairInput>)>,
    histories: HashMap<(String, String), Vec<PendingHistory>>,
    lists: HashMap<String, Vec<oneshot::Sender<Vec<TaskSummary>>>>,
    /// `sessions_request`s waiting for their answer, per desktop, oldest
    /// first.
    session_lists: HashMap<String, Vec<oneshot::Sender<SessionsAnswer>>>,
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
    /// What was reported before anyone subscribed (damaged files, and
    /// whatever happened until then), bounded: the first subscriber gets
    /// it; `None` from then on.
    early: Mutex<Option<early::Early>>,
    schedule: Schedule,
    step_hook: Option<StepHook>,
    /// [`PhoneConfig::pairing_interrupted_wait`].
    pairing_interrupted_wait: Duration,
    /// One push change at a time (`push.json` is read, changed, written).
    push_lock: tokio::sync::Mutex<()>,
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
        let (records, set_aside) = store::load_all(&config.data_dir).map_err(storage)?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let inner = Arc::new(Inner {
            data_dir: config.data_dir.clone(),
            key,
            info,
            roots: config.extra_roots_pem.clone(),
            state: Mutex::new(State::default()),
            entropy: Mutex::new(entropy),
            events,
            early: Mutex::new(Some(early::Early::default())),
            schedule: config.schedule,
            step_hook: config.step_hook.clone(),
            pairing_interrupted_wait: config.pairing_interrupted_wait,
            push_lock: tokio::sync::Mutex::new(()),
        });
        let phone = Phone { inner };
        for s in set_aside {
            let moved_to = s.moved_to.map(|p| p.display().to_string());
            let message = format!(
                "the saved state of desktop {} could not be read ({}); it was moved aside{} and \
                 this phone no longer knows that desktop: pair with it again",
                s.desktop_id,
                s.reason,
                moved_to.as_ref().map_or(String::new(), |p| format!(" to {p}")),
            );
            warn!(desktop = %s.desktop_id, "{message}");
            phone.emit(PhoneEvent::DesktopSetAside { desktop_id: s.desktop_id, moved_to, message });
        }
        {
            let mut st = phone.lock();
            for record in records {
                // Checked by `load_all`.
                let Ok(id) = record.desktop_id.parse::<DeviceId>() else { continue };
                let offsets = Offsets::from_stored(record.offsets.clone(), record.finished.clone());
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

    /// Subscribe to task events, connection changes, presence, detach,
    /// refusals and losses. A subscriber that falls more than 4096 events
    /// behind misses the oldest (`RecvError::Lagged`) and should reload
    /// history. The first subscriber also gets what was reported since
    /// [`Phone::open`]: every [`PhoneEvent::DesktopSetAside`] and the newest
    /// [`FIRST_REPLAY`] other events, after a
    /// [`PhoneEvent::EarlyEventsDropped`] if older ones were dropped.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<PhoneEvent> {
        let mut early = self.inner.early.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let rx = self.inner.events.subscribe();
        // Under the lock: no event is emitted between these and the new ones.
        for e in early.take().map(early::Early::replay).unwrap_or_default() {
            let _ = self.inner.events.send(e);
        }
        rx
    }

    fn emit(&self, e: PhoneEvent) {
        let mut early = self.inner.early.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match early.as_mut() {
            Some(kept) => kept.push(e),
            None => {
                let _ = self.inner.events.send(e);
            }
        }
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
            while let Some(p) = queue.recv().await {
                let result = p.answer.await;
                if let (Ok(()), Some(step)) = (&result, p.stored) {
                    me.step(step);
                }
                match p.seq {
                    Some(seq) => me.answered(p.to, seq, result),
                    None => {
                        if let Err(e) = result {
                            debug!(peer = %p.to, error = %e, "ack or handshake refused; made again when due");
                        }
                    }
                }
            }
        });
        let me = self.clone();
        let u = url.to_owned();
        let reader = tokio::spawn(async move { me.run_relay(u, events).await });
        let upkeep = self.spawn_upkeep(url);
        let retry = self.spawn_retry(url);
        st.relays.insert(
            url.to_owned(),
            Relay {
                client: client.clone(),
                outbound,
                state: ConnectionState::Connecting,
                restarted: false,
                epoch: None,
                tasks: vec![sender, reader, upkeep, retry],
            },
        );
        client
    }

    fn save_locked(&self, d: &mut Desktop) -> Result<(), PhoneError> {
        d.record.offsets = d.offsets.stored().clone();
        d.record.finished = d.offsets.finished();
        store::save(&self.inner.data_dir, &d.record).map_err(storage)?;
        d.record.link.mark_persisted();
        Ok(())
    }

    /// The paired desktops.
    #[must_use]
    pub fn desktops(&self) -> Vec<DesktopSummary> {
        let st = self.lock();
        st.desktops.values().map(|d| summary(&st, d)).collect()
    }

    /// The executors and projects `desktop_id` offers and its defaults, as
    /// it last said ([`PhoneEvent::Choices`]); `None` until it has (it says
    /// so in answer to [`Phone::tasks`], which the phone asks on connecting),
    /// or for an unknown desktop.
    #[must_use]
    pub fn choices(&self, desktop_id: &str) -> Option<Choices> {
        self.lock().desktops.get(desktop_id).and_then(|d| d.choices.clone())
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
        self.forget_push_keys(desktop_id).await;
        info!(desktop = %desktop_id, "forgot a desktop");
        Ok(())
    }

    /// Close every relay connection. What was already handed to a
    /// connection (acknowledgements above all, so that the desktop does not
    /// send its last messages again at the next start) gets up to
    /// [`CLOSE_FLUSH`] to reach the relay. The state stays on disk.
    pub async fn close(&self) {
        let relays: Vec<Relay> = {
            let mut st = self.lock();
            st.closed = true;
            st.relays.drain().map(|(_, r)| r).collect()
        };
        for r in relays {
            let Relay { client, outbound, tasks, .. } = r;
            drop(outbound);
            let mut tasks = tasks.into_iter();
            // The first is the sender: it ends once what it holds is answered.
            let sender = tasks.next();
            for t in tasks {
                t.abort();
            }
            if let Some(sender) = sender {
                let abort = sender.abort_handle();
                if tokio::time::timeout(CLOSE_FLUSH, sender).await.is_err() {
                    abort.abort();
                }
            }
            client.close().await;
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
