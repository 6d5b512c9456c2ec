//! The connected agent: receives end-to-end records from paired devices,
//! keeps each link's state on disk, acknowledges what it has persisted, runs
//! tasks through the configured executors ([`crate::tasks`]) and streams
//! their events to every paired device.
//!
//! Ordering rule: a link is persisted before anything sealed under it is
//! sent and before the relay delivery that changed it is acknowledged; a
//! task event is in the task history before it is sealed; a phone's
//! instruction is applied, with its applied marker, before the link's
//! receipt is persisted ([`instructions`]).
//!
//! Idle phones: a phone that sent nothing for the idle time is *detached*:
//! it is told once (`detached`), and from then on gets only approval
//! requests, their resolutions and finishes, until it sends anything again.
//!
//! Records leave through one sender task in order; while the relay is
//! unreachable they wait in each link's persisted outbox and go out again on
//! the next `Connected`, so the loop never blocks on the network. A record
//! the relay refused goes out again on a timer ([`outbox`]).
//!
//! Revocation bites (`daemon/control.rs`, `daemon/devices.rs`): the task
//! manager's permits follow the paired devices, so a device that is revoked
//! or lowered below `submit`, here or by another process, has its tasks
//! stopped ([`crate::tasks`]); the relay's side of a revocation is kept in
//! `agent.json` until the relay confirms it, and sent again on every
//! `Connected`.
//! Sessions renew and rekey on the schedule of `docs/PROTOCOL.md` §10.6, for
//! every paired phone, on the one-second tick and when a phone comes online
//! ([`renewal`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tandem_client::{Client, Event};
use tandem_proto::message::{Message, TaskEvent};
use tandem_proto::upkeep::Schedule;
use tandem_proto::{DeviceId, DeviceKey};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::debug;

mod auditing;
mod catch_up;
mod control;
mod deliver;
mod devices;
mod expiry;
mod instructions;
mod later;
mod lost;
mod outbox;
mod pairing;
mod push;
mod renewal;

use crate::audit::AuditLog;
use crate::history::HistoryError;
use crate::ipc::Call;
use crate::pair::PairCall;
use crate::peers::{PeerError, PeerStore};
use crate::tasks::{TaskManager, TaskUpdate};

/// Records waiting for the sender task; beyond this they are dropped here
/// and resent from the link outbox on the retry timer ([`outbox`]).
const SEND_QUEUE: usize = 4096;

/// How long a revocation waits for the relay before it is queued for later.
const REVOKE_WAIT: Duration = Duration::from_secs(5);

/// Why the agent loop stopped.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The peer store could not be written: stop rather than ack unpersisted state.
    #[error(transparent)]
    Store(#[from] PeerError),
    /// The task history could not be written: stop rather than send events
    /// that a replay could not find.
    #[error(transparent)]
    History(#[from] HistoryError),
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The agent's message loop.
pub struct Daemon<'a> {
    client: &'a Client,
    key: &'a DeviceKey,
    peers: &'a mut PeerStore,
    tasks: TaskManager,
    updates: mpsc::Receiver<TaskUpdate>,
    entropy: tandem_proto::entropy::Entropy,
    audit: Option<AuditLog>,
    outbound: mpsc::Sender<outbox::Posted>,
    sender: tokio::task::JoinHandle<()>,
    /// The relay's answers to posted records.
    reports: mpsc::Receiver<outbox::Report>,
    /// What the relay stored of each peer's outbox, and the retries due.
    relay_state: outbox::RelayState,
    calls: Option<mpsc::Receiver<Call>>,
    followers: Vec<(Option<String>, mpsc::Sender<Value>)>,
    idle_detach: Duration,
    last_heard: HashMap<DeviceId, Instant>,
    detached: HashSet<DeviceId>,
    online: HashSet<DeviceId>,
    connected: bool,
    relay_url: Option<String>,
    data_dir: Option<PathBuf>,
    busy_hook: Option<Box<dyn FnMut(bool) -> Value + Send + 'a>>,
    last_busy: Option<bool>,
    started: bool,
    awake: Value,
    status_extra: serde_json::Map<String, Value>,
    /// Relay revocations sent and not answered yet.
    revoking: HashSet<DeviceId>,
    /// Devices whose route the relay refused to authorise again for now
    /// (`daemon/devices.rs`): tried again on the tick.
    reauth_later: std::sync::Arc<std::sync::Mutex<HashSet<DeviceId>>>,
    /// Their answers: the device and whether the relay confirmed.
    revoked_tx: mpsc::Sender<(DeviceId, bool)>,
    revoked_rx: mpsc::Receiver<(DeviceId, bool)>,
    /// Tasks stopped for their device so far (audited).
    tasks_stopped: usize,
    pair_calls: Option<mpsc::Receiver<PairCall>>,
    expiry: expiry::Expiry,
    /// The renewal and rekey schedule of every link.
    schedule: Schedule,
    /// Phones whose outbox could not be sealed (counters used up): resent
    /// as soon as a renewal completes.
    reseal: HashSet<DeviceId>,
    /// Phones' messages lost before they arrived, per device.
    lost: lost::Lost,
    /// The relay store's epoch at the last connection (none yet), and
    /// whether the relay said it restarts since: a connection to the same
    /// store sends again only what it has not stored ([`outbox`]).
    relay_epoch: Option<u64>,
    relay_restarting: bool,
    /// How long a record the relay stored may stay unacknowledged by a
    /// peer that comes online before it is sent again.
    stale_after: Duration,
    /// Per link, the highest instruction audited ([`Self::audit_due`]).
    audited: HashMap<String, Option<u64>>,
    /// History asks waiting for room in the phone's outbox: (phone, task)
    /// → from offset, the newest ask per task ([`Self::history_page`]).
    waiting_pages: BTreeMap<(DeviceId, String), u64>,
    /// This desktop's name, in push notifications.
    own_name: String,
    /// Answers computed off the loop (`daemon/later.rs`).
    late: later::LateAnswers,
    /// Pushes planned with a batch, asked of the relay once it is saved
    /// ([`push`]).
    pushes: Vec<push::PendingPush>,
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        self.sender.abort();
    }
}

impl std::fmt::Debug for Daemon<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").field("tasks", &self.tasks).finish_non_exhaustive()
    }
}

impl<'a> Daemon<'a> {
    /// A loop over `client`'s events for the devices in `peers`, running
    /// tasks with `tasks`' executors.
    pub fn new(
        client: &'a Client,
        key: &'a DeviceKey,
        peers: &'a mut PeerStore,
        (tasks, updates): (TaskManager, mpsc::Receiver<TaskUpdate>),
    ) -> Self {
        let (outbound, queue) = mpsc::channel(SEND_QUEUE);
        let (reports_tx, reports) = mpsc::channel(SEND_QUEUE);
        let sender = outbox::spawn_sender(client.clone(), queue, reports_tx);
        let now = Instant::now();
        let last_heard = peers.list().iter().map(|p| (p.device_id(), now)).collect();
        let (revoked_tx, revoked_rx) = mpsc::channel(64);
        Self {
            client,
            key,
            peers,
            tasks,
            updates,
            entropy: tandem_proto::entropy::Entropy::os(),
            audit: None,
            outbound,
            sender,
            reports,
            relay_state: outbox::RelayState::default(),
            calls: None,
            followers: Vec::new(),
            idle_detach: Duration::from_secs(600),
            last_heard,
            detached: HashSet::new(),
            online: HashSet::new(),
            connected: true,
            relay_url: None,
            data_dir: None,
            busy_hook: None,
            last_busy: None,
            started: false,
            awake: Value::Null,
            status_extra: serde_json::Map::new(),
            revoking: HashSet::new(),
            reauth_later: std::sync::Arc::default(),
            revoked_tx,
            revoked_rx,
            tasks_stopped: 0,
            pair_calls: None,
            expiry: expiry::Expiry::default(),
            schedule: Schedule::default(),
            late: later::LateAnswers::default(),
            reseal: HashSet::new(),
            lost: lost::Lost::default(),
            relay_epoch: None,
            relay_restarting: false,
            stale_after: outbox::STALE_AFTER,
            audited: HashMap::new(),
            own_name: "desktop".into(),
            pushes: Vec::new(),
            waiting_pages: BTreeMap::new(),
        }
    }

    /// Keep the devices a pairing that runs alongside pairs
    /// ([`crate::pair::DaemonKeeper`], `tandem up`).
    #[must_use]
    pub fn with_pairing(mut self, calls: mpsc::Receiver<PairCall>) -> Self {
        self.pair_calls = Some(calls);
        self
    }

    /// Forget an ephemeral device gone for `ephemeral_ttl`, and a device
    /// whose pairing never finished after `unfinished_pairing` (defaults:
    /// 12 hours and 10 minutes; see `daemon/expiry.rs`).
    #[must_use]
    pub fn with_device_expiry(
        mut self,
        ephemeral_ttl: Duration,
        unfinished_pairing: Duration,
    ) -> Self {
        self.expiry.ephemeral_ttl = ephemeral_ttl;
        self.expiry.unfinished_pairing = unfinished_pairing;
        self
    }

    /// Renew and rekey every phone's session on `schedule` (default: the
    /// protocol's, hourly).
    #[must_use]
    pub fn with_schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// Serve `tandem status`, `tasks`, `scope` and `revoke` from `calls`
    /// (the control socket, [`crate::ipc`]); `data_dir` is where queued
    /// revocations are kept.
    #[must_use]
    pub fn with_control(mut self, calls: mpsc::Receiver<Call>, data_dir: PathBuf) -> Self {
        self.calls = Some(calls);
        self.data_dir = Some(data_dir);
        self
    }

    /// Detach phones that sent nothing for `idle` (default 10 minutes).
    #[must_use]
    pub fn with_idle_detach(mut self, idle: Duration) -> Self {
        self.idle_detach = idle;
        self
    }

    /// Send a record the relay stored `after` ago and a peer that comes
    /// online has not acknowledged again (default two minutes: the relay
    /// may have expired or lost it).
    #[must_use]
    pub fn with_resend_stale(mut self, after: Duration) -> Self {
        self.stale_after = after;
        self
    }

    /// The relay store's epoch of the connection made before the loop
    /// runs (its `Connected` is not the loop's): a reconnection to the
    /// same store sends only what the relay has not stored.
    #[must_use]
    pub fn with_relay_epoch(mut self, epoch: u64) -> Self {
        self.relay_epoch = Some(epoch);
        self
    }

    /// Shown by `tandem status`.
    #[must_use]
    pub fn with_relay_url(mut self, url: String) -> Self {
        self.relay_url = Some(url);
        self
    }

    /// Called with whether tasks are running or queued after every change
    /// (keep the computer awake); returns its state for `tandem status`.
    #[must_use]
    pub fn with_busy_hook(mut self, hook: impl FnMut(bool) -> Value + Send + 'a) -> Self {
        self.busy_hook = Some(Box::new(hook));
        self
    }

    /// Add `key: value` to what `tandem status` shows.
    #[must_use]
    pub fn with_status_field(mut self, key: &str, value: Value) -> Self {
        self.status_extra.insert(key.to_owned(), value);
        self
    }

    fn busy_changed(&mut self) {
        let busy = self.tasks.busy();
        if self.last_busy == Some(busy) {
            return;
        }
        self.last_busy = Some(busy);
        if let Some(hook) = &mut self.busy_hook {
            // The hook may wait on the OS (a D-Bus round trip): keep the
            // other worker threads running meanwhile.
            let multi = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
            self.awake =
                if multi { tokio::task::block_in_place(|| hook(busy)) } else { hook(busy) };
        }
    }

    /// As [`Self::post`], passing the crash point `stored` once the relay
    /// stored the record.
    fn post_step(&mut self, to: DeviceId, record: Vec<u8>, stored: Option<&'static str>) {
        self.post_data(outbox::Posted { to, record, seq: None, stored });
    }

    /// This desktop's name, as push notifications show it.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.own_name = name.into();
        self
    }

    /// Record every remote instruction and decision in `log`.
    #[must_use]
    pub fn with_audit(mut self, log: AuditLog) -> Self {
        self.audit = Some(log);
        self
    }

    /// Handle relay events and executor updates until the client stops.
    ///
    /// # Errors
    /// [`DaemonError`] when state cannot be persisted.
    pub async fn run(&mut self, events: &mut mpsc::Receiver<Event>) -> Result<(), DaemonError> {
        self.start().await?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut calls = self.calls.take();
        let mut pairs = self.pair_calls.take();
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.handle(ev).await?,
                    None => break,
                },
                Some(u) = self.updates.recv() => {
                    let out = self.tasks.update(u).await?;
                    self.send_all(out).await?;
                }
                Some(call) = async { match &mut calls { Some(c) => c.recv().await, None => None } } => {
                    self.control_call(call).await?;
                }
                Some((id, confirmed)) = self.revoked_rx.recv() => self.relay_answered(id, confirmed),
                Some(r) = self.reports.recv() => self.relay_answered_send(r).await?,
                Some(out) = self.late.rx.recv() => self.send_all(out).await?,
                Some(call) = async { match &mut pairs { Some(c) => c.recv().await, None => None } } => {
                    self.pair_call(call);
                }
                _ = tick.tick() => {
                    let out = self.tasks.expire_approvals().await?;
                    self.send_all(out).await?;
                    self.detach_idle().await?;
                    self.forget_gone().await?;
                    self.upkeep_all()?;
                    self.retry_due().await?;
                    self.retry_reauthorize();
                    self.followers.retain(|(_, tx)| !tx.is_closed());
                    // Revocations and scope changes made on disk meanwhile.
                    self.sync_all_from_disk();
                }
            }
            self.reconcile_devices().await?;
            self.busy_changed();
            // After whatever the event's batch saved.
            self.flush_pushes();
        }
        self.tasks.cancel_all().await;
        Ok(())
    }

    /// Once, before anything else: events that reached the history but not
    /// a phone's outbox before a crash go out first, then what the restart
    /// itself changes (interrupted tasks, the queue).
    async fn start(&mut self) -> Result<(), DaemonError> {
        if self.started {
            return Ok(());
        }
        self.started = true;
        // Before anything can start: only paired devices may have tasks run
        // (a revocation made while the agent was not running included).
        self.tasks.set_permits(self.peers.list().iter().map(|p| (p.device_id(), p.scope())));
        if self.connected {
            self.resend_revokes();
            // The first connection of this process (its `Connected` was
            // taken before the loop ran): this process does not know what
            // the relay holds, and what it refused for good before a crash
            // is held nowhere else. Every unacknowledged record goes again,
            // before anything new (a record ahead of a gap is dropped by
            // the peer); the peer's link drops the copies (PROTOCOL §13.4).
            let ids: Vec<DeviceId> = self.peers.list().iter().map(|p| p.device_id()).collect();
            for id in ids {
                self.resend(id, outbox::Resend::All).await?;
            }
        }
        self.catch_up().await?;
        let out = self.tasks.recover().await?;
        self.send_all(out).await?;
        self.busy_changed();
        Ok(())
    }

    /// Handle one relay event.
    ///
    /// # Errors
    /// [`DaemonError`] when state cannot be persisted.
    pub async fn handle(&mut self, ev: Event) -> Result<(), DaemonError> {
        self.start().await?;
        self.note_presence(&ev)?;
        match ev {
            Event::Connected { store_epoch, .. } => {
                self.connected = true;
                // The routes, in case the relay lost them (a new store
                // epoch); then revocations the relay has not confirmed.
                self.reauthorize();
                self.resend_revokes();
                // The same store as before: what it stored is still there,
                // and only what it has not goes out again (what it refused
                // for good included: the routes were just authorised
                // again). Another store, the first connection, or a relay
                // that said it restarts: everything the peers have not
                // acknowledged (PROTOCOL §13.4).
                let restarting = std::mem::take(&mut self.relay_restarting);
                let same_store =
                    self.relay_epoch.replace(store_epoch) == Some(store_epoch) && !restarting;
                self.relay_state.reconnected(same_store);
                let ids: Vec<DeviceId> = self.peers.list().iter().map(|p| p.device_id()).collect();
                for id in ids {
                    self.resend(id, outbox::Resend::All).await?;
                }
            }
            Event::Restarting { .. } => self.relay_restarting = true,
            Event::Presence { peer, online: true } => {
                self.online.insert(peer);
                // Only what the relay has not stored (or stored long ago
                // and the phone still has not acknowledged: it may have
                // expired or lost it): a flapping phone does not fill its
                // queue with copies.
                self.resend(peer, outbox::Resend::Presence).await?;
                // Both online: a renewal that is due starts now.
                self.upkeep(peer)?;
            }
            Event::Presence { peer, online: false } => {
                self.online.remove(&peer);
            }
            Event::Disconnected { reason, .. } => {
                debug!(reason, "disconnected from the relay");
                self.connected = false;
                self.online.clear();
            }
            Event::Deliver { delivery_id, from, payload } => {
                self.deliver(from, &payload).await?;
                // Persisted: the relay may delete it now.
                self.client.ack(delivery_id);
            }
            other => debug!(?other, "event"),
        }
        // A device revoked or re-scoped by another process, noticed above.
        self.reconcile_devices().await
    }

    fn tell_followers(&mut self, message: &Message) {
        let Message::TaskEvent { task_id, .. } = message else { return };
        if self.followers.is_empty() {
            return;
        }
        let Ok(v) = serde_json::to_value(message) else { return };
        self.followers.retain(|(want, tx)| {
            if want.as_ref().is_some_and(|w| w != task_id) {
                return !tx.is_closed();
            }
            // A follower that fell behind is dropped (it sees the stream end).
            tx.try_send(json!({"ok": true, "event": v})).is_ok()
        });
    }
}

fn is_finish(m: &Message) -> bool {
    matches!(m, Message::TaskEvent { event: TaskEvent::Finished { .. }, .. })
}

/// What still reaches a detached phone: what needs a decision or ends a task.
fn reaches_detached(m: &Message) -> bool {
    match m {
        // A file's diff goes with the approval that follows it: what the
        // user decides on.
        Message::TaskEvent { event, .. } => matches!(
            event,
            TaskEvent::Diff { .. }
                | TaskEvent::ApprovalRequest { .. }
                | TaskEvent::ApprovalResolved { .. }
                | TaskEvent::Finished { .. }
        ),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detached_phone_still_gets_what_it_decides_on_and_the_finish() {
        let ev = |event| Message::TaskEvent { task_id: "t".into(), offset: 0, at_ms: 0, event };
        let diff = TaskEvent::Diff {
            call_id: "c".into(),
            path: "a".into(),
            diff: String::new(),
            added: 0,
            removed: 0,
        };
        assert!(reaches_detached(&ev(diff)));
        assert!(!reaches_detached(&ev(TaskEvent::Progress { text: "x".into() })));
        assert!(reaches_detached(&Message::Detached { idle_secs: 1 }));
    }
}
