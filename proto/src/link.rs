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
//! never strands a message: both sides still share the current session.

use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::content::{Content, ContentError};
use crate::delivery::{Action, DeliveryError, Inbound, Outbound, OutboxLimits};
use crate::entropy::Entropy;
use crate::envelope::{Envelope, EnvelopeError};
use crate::identity::{DeviceKey, PublicKey};
use crate::pairing::PairedPeer;
use crate::record::{RecordError, Session};
use crate::session::{PeerSecrets, SessionError, SessionInitiator, respond, wins_collision};

/// Why an incoming envelope was refused. None of these change the link.
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
    /// Send these envelopes to the peer (acks, nacks, resends, handshakes).
    Send(Vec<Vec<u8>>),
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
    /// A responder-side session waiting for the initiator's first record.
    next: Option<Session>,
    last_init_ms: u64,
    outbound: Outbound,
    inbound: Inbound,
    #[serde(skip)]
    pending: Option<SessionInitiator>,
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
            peer: paired.public_key,
            psk: paired.session_psk,
            current: paired.session,
            previous: None,
            next: None,
            last_init_ms: 0,
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

    /// The current session's id.
    #[must_use]
    pub fn session_id(&self) -> [u8; 8] {
        self.current.id()
    }

    /// Queue an application message and seal it for sending now. The message
    /// stays in the outbox until the peer acknowledges it.
    ///
    /// # Errors
    /// [`RecordError::Exhausted`] when the session must be renewed first
    /// (the message is still queued and goes out with [`Self::resend`]).
    pub fn send(&mut self, message: Vec<u8>) -> Result<(u64, Vec<u8>), RecordError> {
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
        self.current.seal(&content.encode())
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

    /// A bare acknowledgement of everything delivered so far.
    ///
    /// # Errors
    /// [`RecordError::Exhausted`] when the session must be renewed first.
    pub fn ack(&mut self) -> Result<Vec<u8>, RecordError> {
        self.current.seal(&Content::Ack { ack: self.inbound.ack() }.encode())
    }

    /// Ratchet the sending key now (call hourly: forward secrecy for idle links).
    pub fn rekey_now(&mut self) {
        self.current.rekey_now();
    }

    /// Start a `KKpsk2` renewal; send the returned envelope. Replaces any
    /// renewal already in progress.
    ///
    /// # Errors
    /// [`SessionError`] when randomness fails.
    pub fn start_renewal(
        &mut self,
        local: &DeviceKey,
        now_ms: u64,
        entropy: &mut Entropy,
    ) -> Result<Vec<u8>, SessionError> {
        let (init, msg) = SessionInitiator::start(self.secrets(local), now_ms, entropy)?;
        self.pending = Some(init);
        Ok(msg)
    }

    fn secrets<'a>(&'a self, local: &'a DeviceKey) -> PeerSecrets<'a> {
        PeerSecrets { local, remote: &self.peer, psk: &self.psk }
    }

    /// Handle one envelope from the peer. On error nothing changed: the
    /// caller drops the envelope (and may still acknowledge it to the relay,
    /// since nothing in it can ever be accepted).
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
            e @ Envelope::SessionInit { .. } => {
                if self.pending.is_some()
                    && wins_collision(&local.public().device_id(), &self.peer.device_id())
                {
                    // Our own init wins; the peer will answer it.
                    return Ok(Vec::new());
                }
                let (session, accept, ts) =
                    respond(self.secrets(local), &e, self.last_init_ms, entropy)?;
                self.pending = None;
                self.last_init_ms = ts;
                self.next = Some(session);
                Ok(vec![LinkEvent::Send(vec![accept])])
            }
            e @ Envelope::SessionAccept { .. } => {
                let init = self.pending.take().ok_or(LinkError::NoHandshakeInProgress)?;
                if let Envelope::SessionAccept { handshake_id, .. } = &e {
                    if *handshake_id != init.handshake_id() {
                        self.pending = Some(init);
                        return Err(SessionError::HandshakeIdMismatch.into());
                    }
                }
                let session = init.finish(&e)?;
                self.previous = Some(std::mem::replace(&mut self.current, session));
                self.next = None;
                // Key confirmation: the responder promotes the session on this.
                let confirm = self.ack()?;
                Ok(vec![LinkEvent::SessionRenewed, LinkEvent::Send(vec![confirm])])
            }
            Envelope::PairHello { .. } | Envelope::PairWelcome { .. } => Err(LinkError::Unexpected),
        }
    }

    fn receive_record(&mut self, e: &Envelope) -> Result<Vec<LinkEvent>, LinkError> {
        let Envelope::Record { session_id, .. } = e else {
            return Err(LinkError::Unexpected);
        };
        let mut events = Vec::new();
        // Work on copies; commit only when everything checks out.
        let (which, mut session) = if *session_id == self.current.id() {
            (Which::Current, self.current.clone())
        } else if self.next.as_ref().is_some_and(|s| s.id() == *session_id) {
            (Which::Next, self.next.clone().ok_or(LinkError::Unexpected)?)
        } else if self.previous.as_ref().is_some_and(|s| s.id() == *session_id) {
            (Which::Previous, self.previous.clone().ok_or(LinkError::Unexpected)?)
        } else {
            return Err(RecordError::WrongSession.into());
        };
        let plain = session.open(e)?;
        let content = Content::decode(&plain)?;
        let mut outbound = self.outbound.clone();
        let mut inbound = self.inbound.clone();
        match content {
            Content::Data { seq, oldest, ack, message } => {
                outbound.on_ack(ack)?;
                let receipt = inbound.on_data(seq, oldest)?;
                if let Some(r) = receipt.resync {
                    events.push(LinkEvent::ResyncNeeded { from: *r.start(), to: *r.end() });
                }
                match receipt.action {
                    Action::Deliver => events.push(LinkEvent::Message { seq, message }),
                    Action::Duplicate => {}
                    Action::Gap { expected, nack } => {
                        self.commit(which, session, outbound, inbound)?;
                        if nack {
                            let nack = self.current.seal(&Content::Nack { expected }.encode())?;
                            events.push(LinkEvent::Send(vec![nack]));
                        }
                        return Ok(events);
                    }
                }
            }
            Content::Ack { ack } => {
                outbound.on_ack(ack)?;
            }
            Content::Nack { expected } => {
                self.commit(which, session, outbound, inbound)?;
                let resend = self.resend(expected)?;
                events.push(LinkEvent::Send(resend));
                return Ok(events);
            }
            Content::PairConfirm | Content::PairResult { .. } => return Err(LinkError::Unexpected),
        }
        if which == Which::Next {
            events.push(LinkEvent::SessionRenewed);
        }
        self.commit(which, session, outbound, inbound)?;
        Ok(events)
    }

    fn commit(
        &mut self,
        which: Which,
        session: Session,
        outbound: Outbound,
        inbound: Inbound,
    ) -> Result<(), LinkError> {
        match which {
            Which::Current => self.current = session,
            Which::Previous => self.previous = Some(session),
            Which::Next => {
                self.previous = Some(std::mem::replace(&mut self.current, session));
                self.next = None;
            }
        }
        self.outbound = outbound;
        self.inbound = inbound;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Current,
    Previous,
    Next,
}
