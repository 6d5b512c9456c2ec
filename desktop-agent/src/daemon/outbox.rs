//! What leaves for the relay, and what goes out again (`docs/PROTOCOL.md`
//! §13.5, §13.6).
//!
//! * Messages are sealed in batches: a peer's link is saved once per batch,
//!   before any record of the batch leaves ([`Daemon::send_all`]).
//! * One sender task hands records to the relay in order and reports, per
//!   data record, whether the relay stored it (`Ok`) or refused it.
//! * A record the relay refused, or one dropped because the send queue was
//!   full, is sent again on a timer (1 s, doubling, at most
//!   [`RETRY_MAX`] apart) until the relay stores it or the peer
//!   acknowledges it: no reconnect is needed.
//! * When a peer comes online (`Presence`) only the records the relay has
//!   neither stored nor been handed (and not answered yet) are sent again; a new relay connection (`Connected`: the
//!   relay may have restarted or lost its data) sends every unacknowledged
//!   record again.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use tandem_client::Client;
use tandem_proto::DeviceId;
use tandem_proto::message::Message;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{Daemon, DaemonError, is_finish, reaches_detached};
use crate::crashpoint::{Steps, crash_point};
use crate::peers::PeerError;
use crate::tasks::{Audience, Outgoing};

/// The first wait before a refused record goes out again.
pub(super) const RETRY_FIRST: Duration = Duration::from_secs(1);

/// The longest wait between two retries of a refused record.
pub(super) const RETRY_MAX: Duration = Duration::from_secs(30);

/// A record for the sender task: to whom, the data sequence number it
/// carries (none for acks and handshakes), and the crash point to pass once
/// the relay stored it.
pub(super) struct Posted {
    pub to: DeviceId,
    pub record: Vec<u8>,
    pub seq: Option<u64>,
    pub stored: Option<&'static str>,
}

/// The relay's answer to one posted record.
pub(super) struct Report {
    to: DeviceId,
    seq: Option<u64>,
    stored: bool,
}

/// Hand posted records to the relay in order; report each answer.
pub(super) fn spawn_sender(
    client: Client,
    mut queue: mpsc::Receiver<Posted>,
    reports: mpsc::Sender<Report>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(p) = queue.recv().await {
            let stored = match client.send(p.to, p.record).await {
                Ok(()) => {
                    if let Some(point) = p.stored {
                        crash_point(point);
                    }
                    true
                }
                Err(e) => {
                    info!(peer = %p.to, error = %e, "the relay refused a record; sent again shortly");
                    false
                }
            };
            if reports.send(Report { to: p.to, seq: p.seq, stored }).await.is_err() {
                break;
            }
        }
    })
}

/// A peer whose records wait for a retry.
#[derive(Debug, Default)]
struct Retry {
    /// When they go out again; `None` while nothing was refused since.
    due: Option<Instant>,
    /// Refusals in a row (the backoff).
    failures: u32,
}

/// What the relay has stored, or has been handed and not answered yet,
/// per peer, and the retries due.
#[derive(Debug, Default)]
pub(super) struct RelayState {
    stored: HashMap<DeviceId, BTreeSet<u64>>,
    in_flight: HashMap<DeviceId, BTreeSet<u64>>,
    retry: HashMap<DeviceId, Retry>,
}

impl RelayState {
    fn refused(&mut self, to: DeviceId, now: Instant) {
        let r = self.retry.entry(to).or_default();
        if r.due.is_none() {
            let wait = RETRY_FIRST.saturating_mul(1 << r.failures.min(5)).min(RETRY_MAX);
            r.due = Some(now + wait);
        }
        r.failures = r.failures.saturating_add(1);
    }

    fn posted(&mut self, to: DeviceId, seq: Option<u64>) {
        if let Some(s) = seq {
            self.in_flight.entry(to).or_default().insert(s);
        }
    }

    fn answered(&mut self, to: DeviceId, seq: Option<u64>) {
        if let (Some(s), Some(f)) = (seq, self.in_flight.get_mut(&to)) {
            f.remove(&s);
        }
    }

    fn stored(&mut self, to: DeviceId, seq: Option<u64>) {
        if let Some(s) = seq {
            self.stored.entry(to).or_default().insert(s);
        }
        if self.retry.get(&to).is_some_and(|r| r.due.is_none()) {
            self.retry.remove(&to);
        }
    }

    /// The peers whose retry is due (taken).
    fn due(&mut self, now: Instant) -> Vec<DeviceId> {
        let mut out = Vec::new();
        for (id, r) in &mut self.retry {
            if r.due.is_some_and(|d| d <= now) {
                r.due = None;
                out.push(*id);
            }
        }
        out
    }

    /// Of `unacked`, what the relay has neither stored nor been handed
    /// (forgetting what is acknowledged).
    fn missing(&mut self, to: DeviceId, unacked: &[u64]) -> Vec<u64> {
        let stored = self.stored.entry(to).or_default();
        stored.retain(|s| unacked.binary_search(s).is_ok());
        let in_flight = self.in_flight.entry(to).or_default();
        unacked.iter().copied().filter(|s| !stored.contains(s) && !in_flight.contains(s)).collect()
    }

    /// A new relay connection: it may hold nothing of what it stored.
    pub(super) fn reset(&mut self) {
        self.stored.clear();
        self.in_flight.clear();
        self.retry.clear();
    }
}

impl Daemon<'_> {
    /// Queue a record for the relay, in order; never waits for the network.
    /// A record the queue has no room for is sent again on the retry timer.
    pub(super) fn post_data(&mut self, p: Posted) {
        let (to, seq) = (p.to, p.seq);
        if self.outbound.try_send(p).is_ok() {
            self.relay_state.posted(to, seq);
        } else {
            debug!(peer = %to, "send queue full; the record is sent again shortly");
            self.relay_state.refused(to, Instant::now());
        }
    }

    /// The relay answered a posted record.
    pub(super) fn relay_answered_send(&mut self, r: Report) {
        self.relay_state.answered(r.to, r.seq);
        if r.stored {
            self.relay_state.stored(r.to, r.seq);
        } else {
            self.relay_state.refused(r.to, Instant::now());
        }
    }

    /// Send again, to every peer whose retry is due, what the relay has not
    /// stored (on the one-second tick).
    pub(super) async fn retry_due(&mut self) -> Result<(), DaemonError> {
        if !self.connected {
            return Ok(());
        }
        for id in self.relay_state.due(Instant::now()) {
            self.resend(id).await?;
        }
        Ok(())
    }

    /// Send `id` again every unacknowledged record the relay has not
    /// stored.
    pub(super) async fn resend(&mut self, id: DeviceId) -> Result<(), DaemonError> {
        if !self.peers.sync_from_disk(&id)? {
            return Ok(());
        }
        let Some(peer) = self.peers.get_mut(&id) else { return Ok(()) };
        let unacked: Vec<u64> = peer.link().outbound().unacked_from(0).map(|(s, _)| s).collect();
        let missing = self.relay_state.missing(id, &unacked);
        let Some(&first) = missing.first() else { return Ok(()) };
        let records = match peer.link_mut().resend(first) {
            Ok(r) => r,
            Err(e) => {
                // Counters used up: the schedule renews the session (now, if
                // the phone is online), and the outbox follows the renewal.
                info!(peer = %id, error = %e, "cannot reseal the outbox until the session is renewed");
                self.needs_reseal(id);
                return self.upkeep(id);
            }
        };
        match self.peers.save(&id) {
            Err(PeerError::UnknownPeer(_)) => return Ok(()),
            r => r?,
        }
        let seqs = unacked.iter().copied().filter(|s| *s >= first);
        for (seq, record) in seqs.zip(records) {
            if missing.binary_search(&seq).is_ok() {
                self.post_data(Posted { to: id, record, seq: Some(seq), stored: None });
            }
        }
        Ok(())
    }

    /// Seal and send application messages to their audience.
    pub(super) async fn send_all(&mut self, out: Outgoing) -> Result<(), DaemonError> {
        self.send_all_for(out, None).await
    }

    /// As [`Self::send_all`], the replies to an instruction passing its
    /// crash points `steps`. Each peer's link is saved once, after every
    /// message of the batch is sealed and before any leaves.
    pub(super) async fn send_all_for(
        &mut self,
        out: Outgoing,
        steps: Option<Steps>,
    ) -> Result<(), DaemonError> {
        // Why the desktop stopped tasks, before their finishes.
        self.audit_stopped();
        self.audit_outgoing(&out);
        let mut sealed: Vec<(DeviceId, u64, Vec<u8>)> = Vec::new();
        let mut touched: BTreeSet<DeviceId> = BTreeSet::new();
        for (audience, message) in out {
            let Ok(bytes) = message.encode() else { continue };
            // New events go to everyone; replays and catch-up to one device.
            if audience == Audience::Everyone {
                self.tell_followers(&message);
            }
            let cursor = match &message {
                Message::TaskEvent { task_id, offset, .. } => Some((task_id.as_str(), offset + 1)),
                _ => None,
            };
            let targets: Vec<DeviceId> = match audience {
                Audience::Device(d) => vec![d],
                Audience::Everyone => {
                    let all: Vec<DeviceId> =
                        self.peers.list().iter().map(|p| p.device_id()).collect();
                    let (send, skip): (Vec<DeviceId>, Vec<DeviceId>) = all
                        .into_iter()
                        .partition(|id| !self.detached.contains(id) || reaches_detached(&message));
                    // Skipped on purpose, not lost: no catching up after a crash.
                    if let Some((task, next)) = cursor {
                        for id in skip {
                            if let Some(p) = self.peers.get_mut(&id) {
                                p.advance_task_cursor(task, next);
                                touched.insert(id);
                            }
                        }
                    }
                    send
                }
            };
            for id in targets {
                if !touched.contains(&id) && !self.peers.sync_from_disk(&id)? {
                    continue;
                }
                let Some(peer) = self.peers.get_mut(&id) else { continue };
                touched.insert(id);
                let (seq, record) = match peer.link_mut().send(bytes.clone()) {
                    Ok(r) => r,
                    Err(e) => {
                        // Queued, not sealed (the session's counters are used
                        // up): it goes out after the next renewal.
                        warn!(peer = %id, error = %e, "message not sealed; it stays in the outbox");
                        if matches!(e, tandem_proto::record::RecordError::Exhausted) {
                            self.needs_reseal(id);
                        }
                        continue;
                    }
                };
                if let Some((task, next)) = cursor {
                    if is_finish(&message) {
                        // Nothing of it is owed any more: keep the file small.
                        peer.drop_task_cursor(task);
                    } else {
                        peer.advance_task_cursor(task, next);
                    }
                }
                sealed.push((id, seq, record));
            }
        }
        // Persist before anything leaves: once per peer.
        let mut gone = BTreeSet::new();
        for id in touched {
            match self.peers.save(&id) {
                Err(PeerError::UnknownPeer(_)) => {
                    gone.insert(id);
                }
                r => r?,
            }
        }
        if let Some(s) = steps
            && !sealed.is_empty()
        {
            crash_point(s.replied);
        }
        let last = sealed.len().saturating_sub(1);
        for (i, (to, seq, record)) in sealed.into_iter().enumerate() {
            if gone.contains(&to) {
                continue;
            }
            let stored = steps.map(|s| s.sent).filter(|_| i == last);
            self.post_data(Posted { to, record, seq: Some(seq), stored });
        }
        Ok(())
    }
}
