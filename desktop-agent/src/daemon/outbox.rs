//! What leaves for the relay, and what goes out again (`docs/PROTOCOL.md`
//! §13.4, §13.5).
//!
//! * Messages are sealed in batches: a peer's link is saved once per batch,
//!   before any record of the batch leaves ([`Daemon::send_all`]).
//! * One sender task hands records to the relay in order (up to
//!   [`SENDS_IN_FLIGHT`] waiting for answers) and reports, per data record
//!   and in order, whether the relay took it (`Ok`) or refused it.
//! * A record the relay refused for now, or one dropped because the send
//!   queue was full, is sent again on a timer (1 s, doubling per refused
//!   retry, at most [`RETRY_MAX`] apart) until the relay stores it or the
//!   peer acknowledges it: no reconnect is needed. Each retry sends one
//!   record (a probe); once the relay stores it, the rest goes.
//! * A record refused for good ([`Outcome::Never`]: `not_authorized`,
//!   `frame_too_large`...) is logged, counted and kept for the next relay
//!   connection.
//! * When a peer comes online (`Presence`) the records the relay has
//!   neither stored nor been handed are sent again, and those it stored
//!   more than [`STALE_AFTER`] ago (`resend_stale_secs`) and the peer
//!   still has not acknowledged.
//! * A new relay connection (`Connected`) to the same store epoch sends
//!   again only what the relay has neither stored nor been handed; to
//!   another epoch (the relay's data was wiped or restored), or after the
//!   relay said it restarts (`Restarting`), or the first connection of
//!   this process, every unacknowledged record but those on their way (the
//!   client writes them after a reconnect).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tandem_client::{Client, ClientError};
use tandem_proto::DeviceId;
use tandem_proto::error_code::ErrorCode;
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

/// How long, by default, a record the relay stored may stay
/// unacknowledged by a peer that comes online before it is sent again on
/// `Presence` (the relay may have expired or lost it); the agent's
/// `resend_stale_secs` setting.
pub(super) const STALE_AFTER: Duration = Duration::from_secs(120);

/// How the relay answered a posted record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Stored.
    Stored,
    /// Refused for now (a full queue, a failing store, a rate limit, a
    /// lost connection): sent again on the retry timer.
    Later,
    /// Refused for good (`not_authorized`, `revoked`, `frame_too_large`,
    /// `malformed_frame`...): not retried until the next relay connection.
    Never,
}

impl Outcome {
    /// What a failed send means for the record.
    fn of(e: &ClientError) -> Outcome {
        if matches!(e, ClientError::TooLarge) {
            return Outcome::Never;
        }
        match e.code() {
            Some(
                ErrorCode::NotAuthorized
                | ErrorCode::Revoked
                | ErrorCode::AuthFailed
                | ErrorCode::FrameTooLarge
                | ErrorCode::MalformedFrame
                | ErrorCode::UnknownFrameType
                | ErrorCode::UnexpectedFrame,
            ) => Outcome::Never,
            _ => Outcome::Later,
        }
    }
}

/// What a resend is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resend {
    /// A new relay connection, or the relay took the probe: everything it
    /// has not stored and is not on its way.
    All,
    /// The peer came online: as [`Resend::All`], and also what the relay
    /// stored more than [`STALE_AFTER`] ago (it may have expired or lost
    /// it). Nothing while a retry waits (the probe goes first).
    Presence,
    /// The retry timer: only the first missing record.
    Probe,
}

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
    outcome: Outcome,
}

/// How many records the sender task keeps waiting for the relay's answer
/// at once. The relay answers a record for a connected phone when the
/// phone acknowledges it (PROTOCOL §6.5): one at a time, a stream of task
/// events would go at one phone round trip per record.
const SENDS_IN_FLIGHT: usize = 256;

/// Hand posted records to the relay in order (each takes its place in the
/// client's queue when it is taken from `queue`), up to
/// [`SENDS_IN_FLIGHT`] waiting for their answers; report each answer, in
/// the order the records were posted.
pub(super) fn spawn_sender(
    client: Client,
    mut queue: mpsc::Receiver<Posted>,
    reports: mpsc::Sender<Report>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut waiting = FuturesOrdered::new();
        let mut open = true;
        while open || !waiting.is_empty() {
            tokio::select! {
                biased;
                Some((to, seq, stored, answer)) = waiting.next(), if !waiting.is_empty() => {
                    let outcome = outcome(to, stored, answer);
                    if reports.send(Report { to, seq, outcome }).await.is_err() {
                        break;
                    }
                }
                p = queue.recv(), if open && waiting.len() < SENDS_IN_FLIGHT => match p {
                    Some(p) => {
                        let answer = client.send(p.to, p.record);
                        let (to, seq, stored) = (p.to, p.seq, p.stored);
                        waiting.push_back(async move { (to, seq, stored, answer.await) });
                    }
                    None => open = false,
                },
            }
        }
    })
}

/// What the relay's answer to a record to `to` means; passes the record's
/// crash point once the relay took it.
fn outcome(to: DeviceId, stored: Option<&'static str>, answer: Result<(), ClientError>) -> Outcome {
    match answer {
        Ok(()) => {
            if let Some(point) = stored {
                crash_point(point);
            }
            Outcome::Stored
        }
        Err(e) => {
            let outcome = Outcome::of(&e);
            if outcome == Outcome::Later {
                info!(peer = %to, error = %e, "the relay refused a record; sent again shortly");
            } else {
                warn!(peer = %to, error = %e, "the relay refused a record for good; kept for the next connection");
            }
            outcome
        }
    }
}

/// A peer whose records wait for a retry.
#[derive(Debug, Default)]
struct Retry {
    /// When they go out again; `None` while nothing was refused since.
    due: Option<Instant>,
    /// Retry rounds refused in a row (the backoff).
    failures: u32,
}

/// What the relay has stored, or has been handed and not answered yet,
/// per peer, and the retries due.
#[derive(Debug, Default)]
pub(super) struct RelayState {
    /// Stored by the relay, and when.
    stored: HashMap<DeviceId, BTreeMap<u64, Instant>>,
    in_flight: HashMap<DeviceId, BTreeSet<u64>>,
    /// Refused for good on this connection.
    rejected: HashMap<DeviceId, BTreeSet<u64>>,
    /// How many records the relay refused for good (since the start).
    rejected_total: u64,
    retry: HashMap<DeviceId, Retry>,
}

impl RelayState {
    fn refused(&mut self, to: DeviceId, now: Instant) {
        let r = self.retry.entry(to).or_default();
        if r.due.is_none() {
            let wait = RETRY_FIRST.saturating_mul(1 << r.failures.min(5)).min(RETRY_MAX);
            r.due = Some(now + wait);
            r.failures = r.failures.saturating_add(1);
        }
    }

    /// Refused for good: not sent again until the next relay connection.
    fn rejected(&mut self, to: DeviceId, seq: Option<u64>) {
        if let Some(s) = seq {
            self.rejected.entry(to).or_default().insert(s);
        }
        self.rejected_total = self.rejected_total.saturating_add(1);
    }

    /// Whether a retry waits for its time.
    fn backing_off(&self, to: DeviceId) -> bool {
        self.retry.get(&to).is_some_and(|r| r.due.is_some())
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

    /// Stored at `now`. Returns whether this ends a retry (the probe got
    /// through: the rest goes now).
    fn stored(&mut self, to: DeviceId, seq: Option<u64>, now: Instant) -> bool {
        if let Some(s) = seq {
            self.stored.entry(to).or_default().insert(s, now);
        }
        if self.retry.get(&to).is_some_and(|r| r.due.is_none()) {
            self.retry.remove(&to);
            return true;
        }
        false
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

    /// Of `unacked`, what the relay has neither stored nor been handed nor
    /// refused for good (forgetting what is acknowledged); with
    /// `stale_before`, what it stored before then counts as missing too.
    fn missing(
        &mut self,
        to: DeviceId,
        unacked: &[u64],
        stale_before: Option<Instant>,
    ) -> Vec<u64> {
        let stored = self.stored.entry(to).or_default();
        stored.retain(|s, _| unacked.binary_search(s).is_ok());
        let rejected = self.rejected.entry(to).or_default();
        rejected.retain(|s| unacked.binary_search(s).is_ok());
        let in_flight = self.in_flight.entry(to).or_default();
        let held = |s: &u64| {
            stored.get(s).is_some_and(|at| stale_before.is_none_or(|before| *at > before))
        };
        unacked
            .iter()
            .copied()
            .filter(|s| !held(s) && !in_flight.contains(s) && !rejected.contains(s))
            .collect()
    }

    /// A new relay connection: it may hold nothing of what it stored. What
    /// is in flight stays so: the client writes its unanswered sends again
    /// after a reconnect and the send queue still holds the rest, so
    /// posting them again would leave copies at the relay.
    pub(super) fn reset(&mut self) {
        self.stored.clear();
        self.rejected.clear();
        self.retry.clear();
    }

    /// A new relay connection; `same_store`: to the store epoch of the
    /// connection before, which still holds what it stored. What it refused
    /// for good goes again either way (a record is kept for the next
    /// connection, whose routes are authorised again), and so does what
    /// waits for a retry.
    pub(super) fn reconnected(&mut self, same_store: bool) {
        if same_store {
            // What followed a refused record reached the relay before it,
            // and the phone drops records ahead of a gap: from the first
            // refused one on, everything goes again, in order.
            for (to, rejected) in &self.rejected {
                if let Some(&first) = rejected.first() {
                    if let Some(s) = self.stored.get_mut(to) {
                        s.retain(|seq, _| *seq < first);
                    }
                    if let Some(f) = self.in_flight.get_mut(to) {
                        f.retain(|seq| *seq < first);
                    }
                }
            }
            self.rejected.clear();
            self.retry.clear();
        } else {
            self.reset();
        }
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

    /// The relay answered a posted record. A stored probe sends the rest.
    pub(super) async fn relay_answered_send(&mut self, r: Report) -> Result<(), DaemonError> {
        self.relay_state.answered(r.to, r.seq);
        match r.outcome {
            Outcome::Stored => {
                if self.relay_state.stored(r.to, r.seq, Instant::now()) && self.connected {
                    return self.resend(r.to, Resend::All).await;
                }
            }
            Outcome::Later => self.relay_state.refused(r.to, Instant::now()),
            Outcome::Never => {
                self.relay_state.rejected(r.to, r.seq);
                warn!(
                    peer = %r.to,
                    seq = ?r.seq,
                    refused_for_good = self.relay_state.rejected_total,
                    "record kept in the outbox until the next relay connection"
                );
            }
        }
        Ok(())
    }

    /// Send again, to every peer whose retry is due, what the relay has not
    /// stored (on the one-second tick).
    pub(super) async fn retry_due(&mut self) -> Result<(), DaemonError> {
        if !self.connected {
            return Ok(());
        }
        for id in self.relay_state.due(Instant::now()) {
            self.resend(id, Resend::Probe).await?;
        }
        Ok(())
    }

    /// Send `id` again the unacknowledged records the relay is missing
    /// (see [`Resend`]); only those are sealed again.
    pub(super) async fn resend(&mut self, id: DeviceId, why: Resend) -> Result<(), DaemonError> {
        if why != Resend::Probe && self.relay_state.backing_off(id) {
            // The probe goes first, on the timer.
            return Ok(());
        }
        if !self.peers.sync_from_disk(&id)? {
            return Ok(());
        }
        let Some(peer) = self.peers.get_mut(&id) else { return Ok(()) };
        let unacked: Vec<u64> = peer.link().outbound().unacked_from(0).map(|(s, _)| s).collect();
        let now = Instant::now();
        let stale_before =
            (why == Resend::Presence).then(|| now.checked_sub(self.stale_after)).flatten();
        let mut missing = self.relay_state.missing(id, &unacked, stale_before);
        if why == Resend::Probe {
            missing.truncate(1);
        }
        if missing.is_empty() {
            return Ok(());
        }
        let records = match peer.link_mut().resend_only(|s| missing.binary_search(&s).is_ok()) {
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
        for (seq, record) in records {
            self.post_data(Posted { to: id, record, seq: Some(seq), stored: None });
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
        let batch = self.seal_batch(out, None)?;
        let gone = self.save_batch(&batch)?;
        if let Some(s) = steps
            && !batch.sealed.is_empty()
        {
            crash_point(s.replied);
        }
        self.post_sealed(batch.sealed, &gone, steps);
        Ok(())
    }

    /// Seal `out` for its audience, in memory: the links to save before
    /// any of it leaves are in [`Sealed::touched`]. `receiving` is a peer
    /// whose link was changed in memory by what it sent (not read again
    /// from disk, and saved with the batch).
    pub(super) fn seal_batch(
        &mut self,
        out: Outgoing,
        receiving: Option<DeviceId>,
    ) -> Result<Sealed, DaemonError> {
        // Why the desktop stopped tasks, before their finishes.
        self.audit_stopped();
        self.audit_outgoing(&out);
        self.plan_pushes(&out);
        let mut sealed: Vec<(DeviceId, u64, Vec<u8>)> = Vec::new();
        let mut touched: BTreeSet<DeviceId> = receiving.into_iter().collect();
        for (audience, message) in out {
            let bytes = match message.encode() {
                Ok(b) => b,
                Err(e) => {
                    // Bounded everywhere it is built; said, should one slip.
                    warn!(error = %e, kind = ?std::mem::discriminant(&message), "a message could not be encoded and was not sent");
                    continue;
                }
            };
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
        Ok(Sealed { sealed, touched })
    }

    /// Persist every link `batch` touched, once each, before anything
    /// leaves. Returns the peers revoked meanwhile (nothing goes to them).
    pub(super) fn save_batch(&mut self, batch: &Sealed) -> Result<BTreeSet<DeviceId>, DaemonError> {
        let mut gone = BTreeSet::new();
        for id in &batch.touched {
            match self.peers.save(id) {
                Err(PeerError::UnknownPeer(_)) => {
                    gone.insert(*id);
                }
                r => r?,
            }
        }
        Ok(gone)
    }

    /// Hand sealed (and saved) records to the relay, but those for `gone`;
    /// the last passes `steps`' `sent` once the relay stored it.
    pub(super) fn post_sealed(
        &mut self,
        sealed: Vec<(DeviceId, u64, Vec<u8>)>,
        gone: &BTreeSet<DeviceId>,
        steps: Option<Steps>,
    ) {
        let last = sealed.len().saturating_sub(1);
        for (i, (to, seq, record)) in sealed.into_iter().enumerate() {
            if gone.contains(&to) {
                continue;
            }
            let stored = steps.map(|s| s.sent).filter(|_| i == last);
            self.post_data(Posted { to, record, seq: Some(seq), stored });
        }
    }
}

/// A batch of messages sealed in memory ([`Daemon::seal_batch`]).
pub(super) struct Sealed {
    /// Each record: to whom, its sequence number, the record.
    pub sealed: Vec<(DeviceId, u64, Vec<u8>)>,
    /// The peers whose links changed.
    pub touched: BTreeSet<DeviceId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_records_wait_one_second_doubling_to_at_most_thirty() {
        let mut s = RelayState::default();
        let peer = DeviceId([7; 16]);
        let t0 = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..8 {
            s.refused(peer, t0);
            let due = s.retry[&peer].due.unwrap();
            waits.push(due.duration_since(t0).as_secs());
            assert!(s.due(t0).is_empty(), "not before its time");
            assert_eq!(s.due(due), vec![peer]);
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        // Stored: the backoff starts again.
        s.stored(peer, Some(1), t0);
        s.refused(peer, t0);
        assert_eq!(s.retry[&peer].due.unwrap().duration_since(t0).as_secs(), 1);
    }

    #[test]
    fn only_what_the_relay_neither_stored_nor_holds_goes_again() {
        let mut s = RelayState::default();
        let peer = DeviceId([7; 16]);
        s.posted(peer, Some(1));
        s.posted(peer, Some(2));
        s.posted(peer, Some(3));
        s.answered(peer, Some(1));
        s.stored(peer, Some(1), Instant::now());
        s.answered(peer, Some(3));
        assert_eq!(s.missing(peer, &[1, 2, 3, 4], None), [3, 4]);
        // Acknowledged by the peer: forgotten.
        assert_eq!(s.missing(peer, &[3, 4], None), [3, 4]);
        assert!(s.stored[&peer].is_empty());
        // A new relay connection: everything again but what is on its way
        // (2 and 4: handed over, unanswered).
        s.posted(peer, Some(4));
        s.reset();
        assert_eq!(s.missing(peer, &[1, 2, 3, 4], None), [1, 3]);
    }

    #[test]
    fn a_reconnection_to_the_same_store_sends_again_what_it_refused_for_good() {
        let mut s = RelayState::default();
        let peer = DeviceId([7; 16]);
        let t0 = Instant::now();
        for seq in 1..=3 {
            s.posted(peer, Some(seq));
            s.answered(peer, Some(seq));
        }
        s.stored(peer, Some(1), t0);
        // 2: `not_authorized` (the route was not there yet); 3: refused
        // for now, its retry waiting.
        s.rejected(peer, Some(2));
        s.refused(peer, t0);
        assert_eq!(s.missing(peer, &[1, 2, 3], None), [3]);
        assert!(s.backing_off(peer));
        // Same store epoch: 1 is still held; 2 goes again, and 3 at once.
        s.reconnected(true);
        assert!(!s.backing_off(peer));
        assert_eq!(s.missing(peer, &[1, 2, 3], None), [2, 3]);
        // Another store: 1 too.
        s.reconnected(false);
        assert_eq!(s.missing(peer, &[1, 2, 3], None), [1, 2, 3]);
    }

    #[test]
    fn on_presence_what_the_relay_stored_long_ago_goes_again() {
        let mut s = RelayState::default();
        let peer = DeviceId([7; 16]);
        let t0 = Instant::now();
        let later = t0 + STALE_AFTER + Duration::from_secs(1);
        s.posted(peer, Some(1));
        s.answered(peer, Some(1));
        s.stored(peer, Some(1), t0);
        s.posted(peer, Some(2));
        s.answered(peer, Some(2));
        s.stored(peer, Some(2), later);
        // Not on the timer or a new connection's pass.
        assert!(s.missing(peer, &[1, 2], None).is_empty());
        // On Presence, stored more than two minutes ago and unacknowledged.
        let stale_before = later.checked_sub(STALE_AFTER);
        assert_eq!(s.missing(peer, &[1, 2], stale_before), [1]);
    }

    #[test]
    fn permanent_refusals_are_not_retried_and_a_stored_probe_ends_the_retry() {
        let refused = |c| ClientError::Refused(c, String::new());
        for c in [ErrorCode::NotAuthorized, ErrorCode::Revoked, ErrorCode::FrameTooLarge] {
            assert_eq!(Outcome::of(&refused(c)), Outcome::Never, "{c:?}");
        }
        assert_eq!(Outcome::of(&ClientError::TooLarge), Outcome::Never);
        for c in [ErrorCode::QueueFull, ErrorCode::RateLimited, ErrorCode::StoreUnavailable] {
            assert_eq!(Outcome::of(&refused(c)), Outcome::Later, "{c:?}");
        }
        let mut s = RelayState::default();
        let peer = DeviceId([7; 16]);
        let t0 = Instant::now();
        s.posted(peer, Some(1));
        s.answered(peer, Some(1));
        s.rejected(peer, Some(1));
        assert!(s.missing(peer, &[1, 2], None) == [2], "refused for good: not again");
        s.reset();
        assert_eq!(s.missing(peer, &[1, 2], None), [1, 2], "a new connection: again");
        // A burst refused: one backoff round, not one per record.
        s.refused(peer, t0);
        s.refused(peer, t0);
        assert_eq!(s.retry[&peer].failures, 1);
        assert!(s.backing_off(peer));
        assert_eq!(s.due(t0 + RETRY_FIRST), [peer]);
        assert!(s.stored(peer, Some(1), t0), "the probe got through: the rest goes");
        assert!(!s.stored(peer, Some(2), t0));
    }
}
