//! A paired peer's whole end-to-end state, and Tandem's answer to "offline
//! delivery vs forward secrecy": **persisted session state**.
//!
//! After pairing, each side holds a live [`Session`] and keeps it on disk.
//! Either side seals records under it at any time — the peer may be offline
//! for days; the relay queues the ciphertext — and the peer opens them when
//! it is back. Forward secrecy comes from two ratchets:
//!
//! * the record layer's key ratchet ([`crate::record::REKEY_INTERVAL`] and
//!   [`Session::rekey_now`], hourly by policy): old epoch keys are erased, so
//!   a device stolen today does not reveal last week's records;
//! * a fresh `KKpsk2` handshake ([`crate::session`]) whenever both sides are
//!   online: new ephemeral Diffie-Hellman, so a key stolen once stops
//!   working (post-compromise security).
//!
//! The trade-off, written down in `docs/PROTOCOL.md`: records queued while
//! the peer is offline are protected by the current epoch key, which sits on
//! the sending and receiving devices until it ratchets; someone who steals a
//! device *and* the relay's queue before the ratchet could read them. Sealed
//! one-way envelopes (Noise `X`) were rejected: they give no forward secrecy
//! at all against a later theft of the recipient's static key.
//!
//! Renewal, WireGuard style: the initiator switches to the new session when
//! it reads the `SessionAccept` and confirms at once with an `Ack` under it;
//! the responder keeps sending under the current session until a record
//! under the new one arrives, then promotes it. A lost handshake therefore
//! never strands a message: both sides still share the current session. The
//! previous session is kept only until the peer's first record under the
//! current one arrives (the relay delivers each sender's records in order),
//! then erased.
//!
//! Persistence rules for the caller (see `docs/PROTOCOL.md`, "Persistence"):
//! persist the link after [`Link::send`] and before sending the record (the
//! outbox must hold every message the peer may acknowledge, and
//! [`Link::must_persist`] says when the counter reservation needs it too);
//! persist after [`Link::receive`] together with the effects of delivered
//! messages, before acknowledging the deliveries to the relay.

use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::content::{Content, ContentError};
use crate::delivery::{Action, DeliveryError, Inbound, Outbound, OutboxLimits};
use crate::entropy::Entropy;
use crate::envelope::{Envelope, EnvelopeError};
use crate::identity::{DeviceKey, PublicKey};
use crate::message::MAX_MESSAGE_LEN;
use crate::pairing::PairedPeer;
use crate::record::{RecordError, Session};
use crate::session::{PeerSecrets, SessionError, SessionInitiator, respond, wins_collision};
use crate::upkeep::{Attempt, Clock, EXHAUSTION_MARGIN, Schedule, Upkeep};

/// Why an incoming envelope was refused. None of these change the link,
/// with one exception: a `SessionAccept` for our handshake that does not
/// authenticate cancels that renewal (start another; nothing is lost).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// Not a valid envelope.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// A record that does not open under any session this link holds.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A record whose plaintext is malformed.
    #[error(transparent)]
    Content(#[from] ContentError),
    /// Impossible sequence numbers.
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    /// A session handshake message that failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// A `SessionAccept` with no handshake of ours in progress.
    #[error("session accept without a handshake in progress")]
    NoHandshakeInProgress,
    /// An envelope that has no place on an established link (pairing messages).
    #[error("unexpected envelope on an established link")]
    Unexpected,
}

/// Something the caller must act on after [`Link::receive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// Deliver this application message (exactly once, in order).
    Message {
        /// Its sequence number.
        seq: u64,
        /// The message bytes (see [`crate::message`]).
        message: Vec<u8>,
    },
    /// Messages `from..=to` will never arrive: show that history is
    /// incomplete and resync (e.g. request task history again).
    ResyncNeeded {
        /// First missing.
        from: u64,
        /// Last missing.
        to: u64,
    },
    /// Send these envelopes to the peer (nacks, resends, handshakes).
    Send(Vec<Vec<u8>>),
    /// Data arrived: send [`Link::ack`] soon. One ack covers everything
    /// delivered so far, so callers coalesce (and data going the other way
    /// carries the ack too).
    AckDue,
    /// A new session is in use.
    SessionRenewed,
}

/// Everything one device keeps about one paired peer.
#[derive(Serialize, Deserialize)]
pub struct Link {
    peer: PublicKey,
    psk: Zeroizing<[u8; 32]>,
    current: Session,
    previous: Option<Session>,
    /// A responder-side session waiting for the initiator's first record,
    /// with the initiator's timestamp (stored as accepted on promotion).
    next: Option<Next>,
    /// Newest session-init timestamp accepted from the peer.
    last_init_ms: u64,
    /// Newest session-init timestamp we sent (ours stay strictly increasing
    /// even if the clock goes back).
    last_init_sent_ms: u64,
    outbound: Outbound,
    inbound: Inbound,
    /// The renewal and rekey schedule's state (§10.6). Links stored before
    /// it existed start the clock at their next upkeep.
    #[serde(default)]
    clock: Clock,
    #[serde(skip)]
    pending: Option<SessionInitiator>,
    #[serde(skip)]
    attempt: Attempt,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("peer", &self.peer.device_id())
            .field("current", &self.current)
            .field("unacked", &self.outbound.len())
            .field("delivered", &self.inbound.ack())
            .finish_non_exhaustive()
    }
}

impl Link {
    /// The link right after pairing.
    #[must_use]
    pub fn from_paired(paired: PairedPeer, limits: OutboxLimits) -> Self {
        Self {
            clock: Clock::for_session(paired.session.id()),
            attempt: Attempt::default(),
            peer: paired.public_key,
            psk: paired.session_psk,
            current: paired.session,
            previous: None,
            next: None,
            last_init_ms: 0,
            last_init_sent_ms: 0,
            outbound: Outbound::new(limits),
            inbound: Inbound::new(),
            pending: None,
        }
    }

    /// The peer's pinned key.
    #[must_use]
    pub fn peer(&self) -> PublicKey {
        self.peer
    }

    /// The sending half (for inspection).
    #[must_use]
    pub fn outbound(&self) -> &Outbound {
        &self.outbound
    }

    /// A tag of this pairing: the same for the life of the link (across
    /// session renewals), different for every pairing, also of the same two
    /// devices; it reveals nothing of the keys (a hash of the pairing's
    /// pre-shared key). For keying state that belongs to one pairing.
    #[must_use]
    pub fn pairing_tag(&self) -> [u8; 8] {
        let h = crate::kdf::hash("tandem pairing tag v1", &[&self.psk[..]]);
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&h[..8]);
        tag
    }

    /// The current session's id.
    #[must_use]
    pub fn session_id(&self) -> [u8; 8] {
        self.current.id()
    }

    /// True when the link must be persisted before sending what was just
    /// sealed (the counter reservation grew). See [`Session::must_persist`].
    #[must_use]
    pub fn must_persist(&self) -> bool {
        self.current.must_persist()
    }

    /// The caller persisted the link.
    pub fn mark_persisted(&mut self) {
        self.current.mark_persisted();
    }

    /// Queue an application message and seal it for sending now. The message
    /// stays in the outbox until the peer acknowledges it.
    ///
    /// # Errors
    /// [`RecordError::PlaintextTooLarge`] for a message over
    /// [`MAX_MESSAGE_LEN`] (not queued); [`RecordError::Exhausted`] when the
    /// session must be renewed first (the message is queued and goes out
    /// with [`Self::resend`] after the renewal).
    pub fn send(&mut self, message: Vec<u8>) -> Result<(u64, Vec<u8>), RecordError> {
        if message.len() > MAX_MESSAGE_LEN {
            return Err(RecordError::PlaintextTooLarge(message.len()));
        }
        let seq = self.outbound.push(message);
        let record = self.seal_data(seq)?;
        Ok((seq, record))
    }

    fn seal_data(&mut self, seq: u64) -> Result<Vec<u8>, RecordError> {
        let message = self
            .outbound
            .unacked_from(seq)
            .next()
            .filter(|(s, _)| *s == seq)
            .map(|(_, m)| m.to_vec())
            .unwrap_or_default();
        let content =
            Content::Data { seq, oldest: self.outbound.oldest(), ack: self.inbound.ack(), message };
        self.seal(&content)
    }

    /// Seal `content` under the current session, counting it for the schedule.
    fn seal(&mut self, content: &Content) -> Result<Vec<u8>, RecordError> {
        let record = self.current.seal(&content.encode())?;
        self.clock.count();
        Ok(record)
    }

    /// Seal every unacknowledged message from `from` again, under new
    /// counters: after a reconnect (`from = 0`) or a `Nack`.
    ///
    /// # Errors
    /// [`RecordError::Exhausted`] when the session must be renewed first.
    pub fn resend(&mut self, from: u64) -> Result<Vec<Vec<u8>>, RecordError> {
        let seqs: Vec<u64> = self.outbound.unacked_from(from).map(|(s, _)| s).collect();
        seqs.into_iter().map(|s| self.seal_data(s)).collect()
    }

    /// Seal again the unacknowledged messages whose seq `pick` chooses, in
    /// order, each with its seq: a sender that knows which of its records
    /// the relay already holds resends only the others (§13.4).
    ///
    /// # Errors
    /// [`RecordError::Exhausted`] when the session must be renewed first.
    pub fn resend_only(
        &mut self,
        pick: impl Fn(u64) -> bool,
    ) -> Result<Vec<(u64, Vec<u8>)>, RecordError> {
        let seqs: Vec<u64> =
            self.outbound.unacked_from(0).map(|(s, _)| s).filter(|s| pick(*s)).collect();
        seqs.into_iter().map(|s| self.seal_data(s).map(|r| (s, r))).collect()
    }

    /// A bare acknowledgement of everything delivered so far.
    ///
    /// # Errors
    /// [`RecordError::Exhausted`] when the session must be renewed first.
    pub fn ack(&mut self) -> Result<Vec<u8>, RecordError> {
        self.seal(&Content::Ack { ack: self.inbound.ack() })
    }

    /// A gap whose Nack (or its answer) was lost may be Nacked again: call
    /// on a timer while messages keep arriving out of order.
    pub fn forget_nack(&mut self) {
        self.inbound.forget_nack();
    }

    /// Time-based rekeying (call hourly): ratchets the sending key now if it
    /// has been used. See [`Session::rekey_now`].
    pub fn rekey_now(&mut self) {
        self.current.rekey_now();
    }

    /// Start a `KKpsk2` renewal; send the returned envelope. Replaces any
    /// renewal already in progress. The timestamp sent is `now_ms`, or one
    /// more than the last one sent if the clock went back.
    ///
    /// # Errors
    /// [`SessionError`] when randomness fails.
    pub fn start_renewal(
        &mut self,
        local: &DeviceKey,
        now_ms: u64,
        entropy: &mut Entropy,
    ) -> Result<Vec<u8>, SessionError> {
        let ts = now_ms.max(self.last_init_sent_ms.saturating_add(1));
        let (init, msg) = SessionInitiator::start(self.secrets(local), ts, entropy)?;
        self.last_init_sent_ms = ts;
        self.pending = Some(init);
        self.attempt.pending_since_ms = Some(now_ms);
        self.attempt.last_start_ms = Some(now_ms);
        Ok(msg)
    }

    /// Give up on a renewal that got no answer (call after a timeout, e.g.
    /// 30 s): while one is pending, this side ignores the peer's own renewals
    /// when it wins collisions.
    pub fn abandon_renewal(&mut self) {
        self.pending = None;
        self.attempt.pending_since_ms = None;
    }

    /// Whether a renewal started here is waiting for its answer.
    #[must_use]
    pub fn renewal_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Run the renewal and rekey schedule (`docs/PROTOCOL.md` §10.6) at
    /// `now_ms` (Unix milliseconds, this device's clock). Call it every few
    /// seconds and when the peer comes online; `peer_online` says whether the
    /// peer is connected to the relay now (and this device too). In order:
    ///
    /// 1. the schedule's clock starts when the current session is new to it
    ///    (or the wall clock went back);
    /// 2. a renewal pending for `renewal_timeout_ms` is abandoned;
    /// 3. the sending key is ratcheted ([`Self::rekey_now`]) every
    ///    `rekey_after_ms`;
    /// 4. while the peer is online and no renewal is pending, and none was
    ///    started in the last `renewal_timeout_ms`, a renewal starts when the
    ///    session is `renew_after_ms` old, has carried `renew_after_records`
    ///    records, or is near the end of its counters.
    ///
    /// Persist the link when [`Upkeep::must_persist`], then send
    /// [`Upkeep::renewal`].
    ///
    /// # Errors
    /// [`SessionError::Entropy`] when no randomness is available for a
    /// renewal (the rest of the upkeep is done and kept).
    pub fn upkeep(
        &mut self,
        local: &DeviceKey,
        now_ms: u64,
        peer_online: bool,
        schedule: &Schedule,
        entropy: &mut Entropy,
    ) -> Result<Upkeep, SessionError> {
        let mut done =
            Upkeep { changed: self.clock.start(self.current.id(), now_ms), ..Upkeep::default() };
        if let Some(since) = self.attempt.pending_since_ms
            && (now_ms.saturating_sub(since) >= schedule.renewal_timeout_ms || since > now_ms)
        {
            self.abandon_renewal();
            done.abandoned = true;
        }
        if now_ms.saturating_sub(self.clock.rekeyed_ms) >= schedule.rekey_after_ms {
            self.rekey_now();
            self.clock.rekeyed_ms = now_ms;
            done.rekeyed = true;
        }
        let due = self.clock.age_ms(now_ms) >= schedule.renew_after_ms
            || self.clock.records >= schedule.renew_after_records
            || self.current.needs_renewal(EXHAUSTION_MARGIN);
        let rested = self.attempt.last_start_ms.is_none_or(|at| {
            now_ms.saturating_sub(at) >= schedule.renewal_timeout_ms || at > now_ms
        });
        if peer_online && due && rested && self.pending.is_none() {
            done.renewal = Some(self.start_renewal(local, now_ms, entropy)?);
        }
        Ok(done)
    }

    /// How long the current session has been current by this device's clock
    /// at `now_ms` (0 before the first [`Self::upkeep`]), and the records
    /// sealed or opened under it.
    #[must_use]
    pub fn session_age(&self, now_ms: u64) -> (u64, u64) {
        if self.clock.since_ms == 0 || self.clock.session_id != self.current.id() {
            return (0, self.clock.records);
        }
        (self.clock.age_ms(now_ms), self.clock.records)
    }

    /// The current session's sending epoch (advanced by every rekey).
    #[must_use]
    pub fn send_epoch(&self) -> u64 {
        self.current.send_epoch()
    }

    fn secrets<'a>(&'a self, local: &'a DeviceKey) -> PeerSecrets<'a> {
        PeerSecrets { local, remote: &self.peer, psk: &self.psk }
    }

    /// Handle one envelope from the peer. On error nothing changed (but see
    /// [`LinkError`]): the caller drops the envelope and may still acknowledge
    /// it to the relay, since nothing in it can ever be accepted.
    ///
    /// # Errors
    /// [`LinkError`] for anything not authentic, replayed or malformed.
    pub fn receive(
        &mut self,
        local: &DeviceKey,
        bytes: &[u8],
        entropy: &mut Entropy,
    ) -> Result<Vec<LinkEvent>, LinkError> {
        match Envelope::decode(bytes)? {
            e @ Envelope::Record { .. } => self.receive_record(&e),
            e @ Envelope::SessionInit { handshake_id, .. } => {
                if let Some(next) = self.next.as_ref().filter(|n| n.handshake_id == handshake_id) {
                    // The same init again (a relay redelivery, or this device
                    // restarted before its answer left): answering anew would
                    // replace `next` with a session the initiator does not
                    // have, so the same answer goes out again.
                    if next.accept.is_empty() {
                        return Ok(Vec::new());
                    }
                    return Ok(vec![LinkEvent::Send(vec![next.accept.clone()])]);
                }
                if self.pending.is_some()
                    && wins_collision(&local.public().device_id(), &self.peer.device_id())
                {
                    // Our own init wins; the peer will answer it.
                    return Ok(Vec::new());
                }
                let (session, accept, ts) =
                    respond(self.secrets(local), &e, self.last_init_ms, entropy)?;
                self.abandon_renewal();
                self.next = Some(Next { session, ts, handshake_id, accept: accept.clone() });
                Ok(vec![LinkEvent::Send(vec![accept])])
            }
            e @ Envelope::SessionAccept { .. } => {
                let init = self.pending.take().ok_or(LinkError::NoHandshakeInProgress)?;
                if let Envelope::SessionAccept { handshake_id, .. } = &e
                    && *handshake_id != init.handshake_id()
                {
                    self.pending = Some(init);
                    return Err(SessionError::HandshakeIdMismatch.into());
                }
                self.attempt.pending_since_ms = None;
                let session = init.finish(&e)?;
                self.clock = Clock::for_session(session.id());
                self.previous = Some(std::mem::replace(&mut self.current, session));
                self.next = None;
                // Key confirmation: the responder promotes the session on this.
                // A fresh session cannot be exhausted, so this seal succeeds.
                let mut events = vec![LinkEvent::SessionRenewed];
                if let Ok(confirm) = self.ack() {
                    events.push(LinkEvent::Send(vec![confirm]));
                }
                Ok(events)
            }
            Envelope::PairHello { .. } | Envelope::PairWelcome { .. } => Err(LinkError::Unexpected),
        }
    }

    fn receive_record(&mut self, e: &Envelope) -> Result<Vec<LinkEvent>, LinkError> {
        let Envelope::Record { session_id, .. } = e else { return Err(LinkError::Unexpected) };
        // Work on copies; commit only when everything checks out.
        let (which, mut session) = if *session_id == self.current.id() {
            (Which::Current, self.current.clone())
        } else if let Some(next) = self.next.as_ref().filter(|n| n.session.id() == *session_id) {
            (Which::Next, next.session.clone())
        } else if let Some(prev) = self.previous.as_ref().filter(|s| s.id() == *session_id) {
            (Which::Previous, prev.clone())
        } else {
            return Err(RecordError::WrongSession.into());
        };
        let plain = session.open(e)?;
        let content = Content::decode(&plain)?;
        // The inbound state is small: work on a copy. The outbox may hold
        // thousands of messages: check the ack now, apply it at the commit.
        let mut inbound = self.inbound.clone();
        let mut events = Vec::new();
        let mut reply = Reply::None;
        let acked = match &content {
            Content::Data { ack, .. } | Content::Ack { ack } => *ack,
            Content::Nack { expected } => expected.saturating_sub(1),
            Content::PairConfirm | Content::PairResult { .. } => {
                return Err(LinkError::Unexpected);
            }
        };
        self.outbound.check_ack(acked)?;
        match content {
            Content::Data { seq, oldest, message, .. } => {
                let receipt = inbound.on_data(seq, oldest)?;
                if let Some(r) = &receipt.resync {
                    events.push(LinkEvent::ResyncNeeded { from: *r.start(), to: *r.end() });
                }
                match receipt.action {
                    Action::Deliver => {
                        events.push(LinkEvent::Message { seq, message });
                        events.push(LinkEvent::AckDue);
                    }
                    Action::Duplicate => events.push(LinkEvent::AckDue),
                    Action::Gap { expected, nack: true } => reply = Reply::Nack(expected),
                    Action::Gap { .. } if receipt.resync.is_some() => {
                        events.push(LinkEvent::AckDue)
                    }
                    Action::Gap { nack: false, .. } => {}
                }
            }
            Content::Ack { .. } => {}
            Content::Nack { expected } => reply = Reply::Resend(expected),
            Content::PairConfirm | Content::PairResult { .. } => return Err(LinkError::Unexpected),
        }
        // Authenticated and consistent: commit.
        match which {
            Which::Current => {
                self.current = session;
                self.clock.count();
                // The peer has moved on to the current session; its records
                // under the previous one were delivered before this (the
                // relay keeps each sender's order), so erase the old keys.
                self.previous = None;
            }
            Which::Previous => self.previous = Some(session),
            Which::Next => {
                if let Some(next) = self.next.take() {
                    self.last_init_ms = self.last_init_ms.max(next.ts);
                }
                self.clock = Clock::for_session(session.id());
                self.clock.count();
                // The initiator switched before it sealed this record, and
                // the relay keeps each sender's order: nothing it sealed
                // under the old session is still to come, so the old keys go
                // now (zeroised on drop), not at its next record.
                drop(std::mem::replace(&mut self.current, session));
                self.previous = None;
                events.push(LinkEvent::SessionRenewed);
            }
        }
        self.outbound.on_ack(acked)?;
        self.inbound = inbound;
        // Replies are sealed after the commit; if the session is exhausted
        // they are skipped (a reconnect resends everything unacknowledged).
        match reply {
            Reply::None => {}
            Reply::Nack(expected) => {
                if let Ok(nack) = self.seal(&Content::Nack { expected }) {
                    events.push(LinkEvent::Send(vec![nack]));
                }
            }
            Reply::Resend(from) => {
                if let Ok(records) = self.resend(from) {
                    events.push(LinkEvent::Send(records));
                }
            }
        }
        Ok(events)
    }
}

/// A responder-side session waiting for promotion.
#[derive(Clone, Serialize, Deserialize)]
struct Next {
    session: Session,
    ts: u64,
    handshake_id: [u8; 8],
    /// The `SessionAccept` sent for it, sent again when the same init is
    /// delivered again (empty in links stored before it was kept).
    #[serde(default)]
    accept: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Current,
    Previous,
    Next,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    None,
    Nack(u64),
    Resend(u64),
}
