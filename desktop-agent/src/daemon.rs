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
use tandem_proto::link::LinkEvent;
use tandem_proto::message::{Message, TaskEvent};
use tandem_proto::upkeep::Schedule;
use tandem_proto::{DeviceId, DeviceKey};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

mod control;
mod devices;
mod expiry;
mod instructions;
mod lost;
mod outbox;
mod pairing;
mod renewal;

use crate::audit::{AuditEvent, AuditLog, text_hash};
use crate::crashpoint::crash_point;
use crate::history::HistoryError;
use crate::ipc::Call;
use crate::pair::PairCall;
use crate::peers::{PeerError, PeerStore};
use crate::tasks::{Audience, TaskManager, TaskUpdate};

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
    /// History asks waiting for room in the phone's outbox: (phone, task)
    /// → from offset, the newest ask per task ([`Self::history_page`]).
    waiting_pages: BTreeMap<(DeviceId, String), u64>,
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
            reseal: HashSet::new(),
            lost: lost::Lost::default(),
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

    /// Record every remote instruction and decision in `log`.
    #[must_use]
    pub fn with_audit(mut self, log: AuditLog) -> Self {
        self.audit = Some(log);
        self
    }

    pub(super) fn record(&mut self, event: AuditEvent) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        if let Some(log) = &mut self.audit
            && let Err(e) = log.append(at, event)
        {
            warn!(error = %e, "audit log append failed");
        }
    }

    /// Audit why the desktop stopped tasks.
    fn audit_stopped(&mut self) {
        for s in self.tasks.take_stopped() {
            self.tasks_stopped += 1;
            self.record(AuditEvent::TaskStopped {
                task_id: s.task_id,
                device: s.device,
                reason: s.cause.as_audit(),
                was: if s.was_running { "running" } else { "queued" }.to_owned(),
            });
        }
    }

    /// Audit what the desktop tells phones about tasks and approvals.
    fn audit_outgoing(&mut self, out: &[(Audience, Message)]) {
        for (audience, m) in out {
            let event = match m {
                Message::TaskEvent { task_id, event, .. } => match event {
                    tandem_proto::message::TaskEvent::ApprovalRequest {
                        approval_id,
                        summary,
                        ..
                    } => AuditEvent::ApprovalRequested {
                        task_id: task_id.clone(),
                        approval_id: approval_id.clone(),
                        summary_hash: text_hash(summary),
                    },
                    tandem_proto::message::TaskEvent::ApprovalResolved {
                        approval_id,
                        allow,
                        by,
                    } => AuditEvent::ApprovalDecided {
                        task_id: task_id.clone(),
                        approval_id: approval_id.clone(),
                        allow: *allow,
                        by: by.clone(),
                    },
                    tandem_proto::message::TaskEvent::Finished { status, .. } => {
                        AuditEvent::TaskFinished {
                            task_id: task_id.clone(),
                            status: crate::tasks::status_str(*status).to_owned(),
                        }
                    }
                    _ => continue,
                },
                Message::Refused { task_id, code, .. } => AuditEvent::TaskRefused {
                    device: match audience {
                        Audience::Device(d) => d.to_string(),
                        Audience::Everyone => "everyone".into(),
                    },
                    task_id: task_id.clone().unwrap_or_default(),
                    code: code.clone(),
                },
                _ => continue,
            };
            self.record(event);
        }
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
        }
        self.tasks.cancel_all().await;
        Ok(())
    }

    /// Send each phone the task events recorded after the last one sealed
    /// for it (a crash between the history and the link), at most a page per
    /// task: a longer gap shows as one, and the phone asks for the history.
    async fn catch_up(&mut self) -> Result<(), DaemonError> {
        let ids: Vec<DeviceId> = self.peers.list().iter().map(|p| p.device_id()).collect();
        for id in ids {
            let cursors: Vec<(String, u64)> = match self.peers.get(&id) {
                Some(p) => p.task_cursors().iter().map(|(t, c)| (t.clone(), *c)).collect(),
                None => continue,
            };
            let mut owed = Vec::new();
            let mut done = Vec::new();
            for (task, cursor) in cursors {
                match self.tasks.record(&task)? {
                    Some(r) if cursor < r.next_offset => {
                        for m in self.tasks.events(&task, cursor, crate::tasks::HISTORY_PAGE)? {
                            owed.push((Audience::Device(id), m));
                        }
                    }
                    Some(r) if !r.is_finished() => {}
                    _ => done.push(task),
                }
            }
            if let Some(p) = self.peers.get_mut(&id) {
                for t in &done {
                    p.drop_task_cursor(t);
                }
            }
            if !owed.is_empty() {
                info!(peer = %id, events = owed.len(), "sending task events a crash kept from this phone");
            }
            self.send_all(owed).await?;
        }
        Ok(())
    }

    /// Tell phones that were silent for the idle time that they are detached.
    async fn detach_idle(&mut self) -> Result<(), DaemonError> {
        let now = Instant::now();
        let idle: Vec<DeviceId> = self
            .last_heard
            .iter()
            .filter(|(id, at)| {
                !self.detached.contains(id) && now.duration_since(**at) >= self.idle_detach
            })
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            info!(peer = %id, "phone idle: detached until it sends something");
            self.detached.insert(id);
            let idle_secs = self.idle_detach.as_secs();
            self.send_all(vec![(Audience::Device(id), Message::Detached { idle_secs })]).await?;
        }
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
        self.catch_up().await?;
        let out = self.tasks.recover().await?;
        self.send_all(out).await?;
        if self.connected {
            self.resend_revokes();
        }
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
            Event::Connected { .. } => {
                self.connected = true;
                // The routes, in case the relay lost them (a new store
                // epoch); then revocations the relay has not confirmed.
                self.reauthorize();
                self.resend_revokes();
                // Whatever the peers have not acknowledged goes out again:
                // the relay may have restarted or lost its data.
                self.relay_state.reset();
                let ids: Vec<DeviceId> = self.peers.list().iter().map(|p| p.device_id()).collect();
                for id in ids {
                    self.resend(id, outbox::Resend::All).await?;
                }
            }
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

    async fn deliver(&mut self, from: DeviceId, payload: &[u8]) -> Result<(), DaemonError> {
        // A revocation or scope change made by `tandem revoke`/`scope` meanwhile.
        if !self.peers.sync_from_disk(&from)? {
            debug!(peer = %from, "record from a device that is not paired dropped");
            return Ok(());
        }
        let Some(peer) = self.peers.get_mut(&from) else {
            // Not (or no longer) paired: nothing in it can be accepted.
            debug!(peer = %from, "record from an unknown device dropped");
            return Ok(());
        };
        let kind = renewal::Kind::of(payload);
        let events = match peer.link_mut().receive(self.key, payload, &mut self.entropy) {
            Ok(e) => e,
            Err(e) => {
                debug!(peer = %from, error = %e, "record refused");
                return Ok(());
            }
        };
        peer.mark_seen(now_unix());
        let scope = peer.scope();
        let link = instructions::link_key(from, peer.link());
        let step = renewal::Points::of(kind, &events);
        let renewed = events.iter().any(|e| matches!(e, LinkEvent::SessionRenewed));
        if renewed {
            self.session_renewed(from);
        }
        if let Some(p) = step {
            crash_point(p.received);
        }
        // Act before the link's receipt is saved (PROTOCOL §13.5 rule 3):
        // each instruction's effect and its applied marker are durable
        // first. A crash before the save below makes the relay deliver the
        // record again, the link accept it again, and the marker skip it.
        let at = instructions::Applying { link: &link, applied: self.tasks.applied(&link)? };
        let mut envelopes = Vec::new();
        let mut replies = Vec::new();
        let mut ack_due = false;
        let mut steps = None;
        for ev in events {
            match ev {
                LinkEvent::Message { seq, message } => {
                    // Anything from the phone re-attaches it.
                    self.last_heard.insert(from, Instant::now());
                    self.detached.remove(&from);
                    let (out, s) = self.apply(from, scope, &at, seq, &message).await?;
                    replies.extend(out);
                    steps = s.or(steps);
                }
                LinkEvent::Send(e) => envelopes.extend(e),
                LinkEvent::ResyncNeeded { from: a, to: b } => self.messages_lost(from, a, b),
                LinkEvent::AckDue => ack_due = true,
                // Counted above, before the first save.
                LinkEvent::SessionRenewed => {}
            }
        }
        // An acknowledgement may have made room for a waiting history page.
        let waiting: Vec<(String, u64)> = self
            .waiting_pages
            .range((from, String::new())..)
            .take_while(|((d, _), _)| *d == from)
            .map(|((_, t), o)| (t.clone(), *o))
            .collect();
        for (task, offset) in waiting {
            let taken = replies.iter().filter(|(a, _)| reaches(a, from)).count();
            replies.extend(self.history_page(from, &task, offset, taken)?);
        }
        // Data arrived: the acknowledgement rides on the first reply to this
        // device, or goes bare. Never in answer to an ack alone (the two
        // sides would ack each other's acks forever).
        let direct = replies.iter().any(|(a, _)| matches!(a, Audience::Device(d) if *d == from))
            || replies.iter().any(|(a, _)| *a == Audience::Everyone);
        if ack_due
            && !direct
            && let Some(peer) = self.peers.get_mut(&from)
            && let Ok(ack) = peer.link_mut().ack()
        {
            envelopes.push(ack);
        }
        match self.peers.save(&from) {
            Err(PeerError::UnknownPeer(_)) => return Ok(()),
            r => r?,
        }
        if let Some(p) = step {
            crash_point(p.saved);
        }
        if let Some(s) = steps {
            crash_point(s.link_saved);
        }
        // The renewal's answer (the accept, or the confirming ack) is the
        // last envelope: its crash point passes once the relay stored it.
        let last = envelopes.len().saturating_sub(1);
        for (i, e) in envelopes.into_iter().enumerate() {
            self.post_step(from, e, step.and_then(|p| p.sent).filter(|_| i == last));
        }
        // A renewal ended an exhausted session: what could not be sealed
        // goes out now.
        if renewed && self.reseal.remove(&from) {
            self.resend(from, outbox::Resend::All).await?;
        }
        self.send_all_for(replies, steps).await
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

/// Whether a message for `audience` goes to `device`.
fn reaches(audience: &Audience, device: DeviceId) -> bool {
    matches!(audience, Audience::Device(d) if *d == device) || *audience == Audience::Everyone
}

fn is_finish(m: &Message) -> bool {
    matches!(m, Message::TaskEvent { event: TaskEvent::Finished { .. }, .. })
}

/// What still reaches a detached phone: what needs a decision or ends a task.
fn reaches_detached(m: &Message) -> bool {
    match m {
        Message::TaskEvent { event, .. } => matches!(
            event,
            TaskEvent::ApprovalRequest { .. }
                | TaskEvent::ApprovalResolved { .. }
                | TaskEvent::Finished { .. }
        ),
        _ => true,
    }
}
