//! A connection's reader: frames from the device become actions; store
//! operations are pipelined in order and answered as they finish.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::Message;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tandem_proto::frame::{FORWARD_HEADER_LEN, Frame, FrameError, peek_send};
use tandem_proto::{DeviceId, ErrorCode, Role};
use tokio::time::{Instant, sleep_until};
use tracing::{info, warn};

use super::pending::{Done, Enqueue, Pending, PendingFut, Unapplied};
use super::writer::STORE_RETRY;
use super::{Closing, Link, MAX_PENDING, Stream, read_error};
use crate::answers::refusal;
use crate::hold::NotHeld;
use crate::net::IpKey;
use crate::pairing::Owner;
use crate::registry::{ConnHandle, Outbound};
use crate::state::{State, unix_now};
use crate::store::{NewFrame, StoreError};

mod push;

/// What a device over its frame rate limit is told.
const RATE_LIMITED: &str = "too many frames; slow down";

/// What woke the reader.
enum Event {
    /// A store operation finished.
    Done(Done),
    /// The idle deadline passed (PROTOCOL.md §6.4).
    Idle,
    /// An ack the store did not apply is due again.
    RetryAck,
    /// The device sent something (`None`: the end of the stream).
    Message(Option<Result<Message, axum::Error>>),
}

/// What the reader does after a message.
enum Next {
    /// Read the next one.
    Read,
    /// Track a store operation it started.
    Track(Pending),
    /// Stop: the device closed the connection.
    Stop,
}

pub(super) struct Reader {
    pub(super) state: Arc<State>,
    pub(super) handle: ConnHandle,
    pub(super) device: DeviceId,
    pub(super) role: Role,
    /// The protocol level of the connection.
    pub(super) level: u8,
    /// The client address it counts under.
    pub(super) ip: IpKey,
    /// What it shares with the connection's writer.
    pub(super) link: Arc<Link>,
    /// The highest ack the store did not apply yet.
    pub(super) unapplied: Unapplied,
    /// In a cluster: per recipient, this device's frames queued in the
    /// store whose ids the store has not answered yet. None of its frames
    /// for that recipient is held meanwhile: on Redis a queued frame's id
    /// may be above ids the node leased, and the device's frames must keep
    /// their order (PROTOCOL.md §6.6).
    pub(super) unanswered: std::sync::Mutex<Vec<(DeviceId, u32)>>,
    /// Such frames for a recipient with a hold here: the reader reads no
    /// more until they are answered, so the device's next frame can be
    /// held above them (instead of queued too, and so on for as long as
    /// it keeps frames in flight).
    pub(super) paused: std::sync::atomic::AtomicU32,
}

impl Reader {
    pub(super) async fn run(&self, stream: &mut Stream) -> Result<(), Closing> {
        let mut pending: FuturesOrdered<PendingFut> = FuturesOrdered::new();
        let result = self.read(stream, &mut pending).await;
        // One last try at an ack the store did not apply.
        if let Some(up_to) = self.unapplied.take() {
            let fut = self.state.store.ack(self.device, up_to);
            pending.push_back(Box::pin(Pending::Ack { up_to, fut }.finish()));
        }
        // Operations already submitted still complete in the store; finish
        // them so that a frame stored for an online recipient is pushed to
        // it even though its sender has gone (answers to the sender are moot).
        let drain = async {
            while let Some(done) = pending.next().await {
                Box::pin(self.finished(done, false)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
        result
    }

    async fn read(
        &self,
        stream: &mut Stream,
        pending: &mut FuturesOrdered<PendingFut>,
    ) -> Result<(), Closing> {
        let idle = self.state.config.idle_timeout;
        loop {
            let idle_deadline = self.link.activity.last() + idle;
            let retry_ack = self.unapplied.due();
            // Only waiting happens here; the work is boxed (see `serve`), and
            // the event is moved into it whole (a partly moved one would stay
            // in this future).
            let event = tokio::select! {
                biased;
                () = self.handle.cancelled() => return Ok(()),
                Some(done) = pending.next(), if !pending.is_empty() => Event::Done(done),
                () = sleep_until(retry_ack.unwrap_or(idle_deadline)), if retry_ack.is_some() => {
                    Event::RetryAck
                }
                () = sleep_until(idle_deadline) => Event::Idle,
                msg = stream.next(), if pending.len() < MAX_PENDING
                    && self.paused.load(Ordering::Acquire) == 0 => Event::Message(msg),
            };
            match Box::pin(self.on_event(event)).await? {
                Next::Read => {}
                Next::Track(p) => pending.push_back(Box::pin(p.finish())),
                Next::Stop => return Ok(()),
            }
        }
    }

    async fn on_event(&self, event: Event) -> Result<Next, Closing> {
        match event {
            Event::Done(done) => {
                self.finished(done, true).await;
                Ok(Next::Read)
            }
            // Deliveries may have moved the deadline while we slept.
            Event::Idle
                if self.link.activity.last() + self.state.config.idle_timeout <= Instant::now() =>
            {
                if self.waits_for_peers().await {
                    // A desktop serving a peer or a pairing: count from now.
                    self.link.activity.touch();
                    return Ok(Next::Read);
                }
                self.state.metrics.limit_refused("idle_timeout");
                Err(Closing::new(
                    ErrorCode::IdleTimeout,
                    "no activity on this connection; reconnect to re-attach",
                ))
            }
            Event::Idle => Ok(Next::Read),
            Event::RetryAck => Ok(self.unapplied.take().map_or(Next::Read, |up_to| {
                Next::Track(Pending::Ack { up_to, fut: self.state.store.ack(self.device, up_to) })
            })),
            Event::Message(msg) => self.on_message(msg).await,
        }
    }

    /// Whether an idle connection may stay (PROTOCOL.md §6.4): a desktop's,
    /// while it has a mutual route with some device or an open pairing
    /// mailbox. The role is the device's own claim, so it alone earns
    /// nothing: a phone, or a "desktop" that nobody authorised and that
    /// pairs with nobody, is closed when idle.
    async fn waits_for_peers(&self) -> bool {
        if self.role != Role::Desktop {
            return false;
        }
        let conn_id = self.handle.conn_id;
        if self.state.mailboxes.has_open(self.device, conn_id) {
            return true;
        }
        self.state.routes.peers(self.device).await.is_ok_and(|p| !p.is_empty())
    }

    /// Act on what the device sent (`None`: the end of the stream).
    async fn on_message(&self, msg: Option<Result<Message, axum::Error>>) -> Result<Next, Closing> {
        let frame = match msg {
            // The forwarding path: the payload stays in the received
            // buffer, from the socket to the recipient's `Deliver`.
            Some(Ok(Message::Binary(b))) if let Some(h) = peek_send(&b) => {
                self.link.activity.touch();
                if !self.state.limits.frame(self.device) {
                    self.refuse(ErrorCode::RateLimited, h.send_id, RATE_LIMITED).await;
                    return Ok(Next::Read);
                }
                let payload = b.slice(FORWARD_HEADER_LEN..);
                return Ok(self
                    .on_send(h.send_id, h.to, payload)
                    .await
                    .map_or(Next::Read, Next::Track));
            }
            Some(Ok(Message::Binary(b))) => match Frame::decode(&b) {
                Ok(f) => f,
                Err(FrameError::UnknownType(t)) => {
                    let m = format!("unknown frame type 0x{t:02x}");
                    self.refuse(ErrorCode::UnknownFrameType, 0, &m).await;
                    return Ok(Next::Read);
                }
                Err(e) => {
                    self.state.metrics.refused(e.code());
                    return Err(Closing::new(e.code(), e.to_string()));
                }
            },
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Ok(Next::Read),
            Some(Ok(Message::Text(_))) => {
                self.state.metrics.refused(ErrorCode::MalformedFrame);
                return Err(Closing::new(ErrorCode::MalformedFrame, "frames are binary messages"));
            }
            Some(Ok(Message::Close(_))) | None => return Ok(Next::Stop),
            Some(Err(e)) => {
                let c = read_error(&e);
                if c.0 == ErrorCode::FrameTooLarge {
                    self.state.metrics.refused(c.0);
                }
                return Err(c);
            }
        };
        if !matches!(frame, Frame::Ping { .. } | Frame::Pong { .. }) {
            self.link.activity.touch();
        }
        Ok(self.on_frame(frame).await?.map_or(Next::Read, Next::Track))
    }

    /// Send an `Error` frame on this connection (waits if its own queue is full).
    async fn refuse(&self, code: ErrorCode, ref_id: u64, message: &str) {
        self.state.metrics.refused(code);
        let _ = self.handle.send(Frame::Error { code, ref_id, message: message.to_owned() }).await;
    }

    /// The device says it has every delivery up to `up_to`: the delivery
    /// window opens as soon as it says so; the store deletes them meanwhile.
    fn open_window(&self, up_to: u64) {
        let up_to = up_to.min(self.link.delivered.load(Ordering::Acquire));
        if self.link.acked.fetch_max(up_to, Ordering::AcqRel) < up_to {
            self.link.room.notify_one();
        }
        // Held frames it covers: their senders hear `Ok` now (a write of
        // one of them was submitted before this, under the hold's lock, and
        // moved the hold's mark: the store ack below follows it).
        self.handle.hold.ack(&self.state, up_to);
    }

    async fn reply(&self, frame: Frame) {
        let _ = self.handle.send(frame).await;
    }

    /// A `Send` of `payload` to `to`: held for a connected recipient, or
    /// queued in the store (the returned operation), or refused.
    async fn on_send(&self, send_id: u64, to: DeviceId, mut payload: Bytes) -> Option<Pending> {
        let state = &self.state;
        let me = self.device;
        // Read before the route check: a change since keeps the frame out
        // of the hold (the store checks routes itself).
        let generation = state.routes.generation();
        let route = if crate::failpoints::no_route(&to) {
            Ok(false)
        } else {
            state.routes.is_route(me, to).await
        };
        match route {
            Ok(true) => {}
            Ok(false) => {
                let m = "no route: these devices have not authorised each other";
                self.refuse(ErrorCode::NotAuthorized, send_id, m).await;
                return None;
            }
            Err(_) => {
                let m = "the relay cannot read its store right now; retry later";
                self.refuse(ErrorCode::StoreUnavailable, send_id, m).await;
                return None;
            }
        }
        let recipient = state.registry.get(&to);
        let live = recipient.is_some();
        let cluster = state.cluster.is_some();
        let mut pausing = false;
        if !state.config.hold_window.is_zero()
            && let Some(r) = recipient
        {
            if cluster && self.unanswered_to(&to) > 0 {
                // Queued after its frames whose ids are not known yet.
                state.metrics.spilled("sender_order");
            } else {
                let addr = self.ip.addr_key();
                let sender = &self.handle.shared;
                match r.hold.offer(state, generation, send_id, me, addr, sender, payload) {
                    // Answered when the recipient acks it or it is written.
                    Ok(()) => return None,
                    Err(NotHeld(p, write)) => {
                        payload = p;
                        if let Some(w) = write {
                            tokio::spawn(w.finish(Arc::clone(state)));
                        }
                    }
                }
            }
            pausing = cluster;
        }
        if cluster {
            self.count_unanswered(to, true);
            if pausing {
                self.paused.fetch_add(1, Ordering::AcqRel);
            }
        }
        let frame = NewFrame { to, from: me, addr: self.ip.addr_key(), payload: payload.clone() };
        // The epoch before the enqueue: if it is the same once the store
        // answered, the answer's id was taken under it (the store moves its
        // epoch before it answers anything under a new one).
        let epoch = state.store.epoch();
        let enqueued = state.store.enqueue(frame, unix_now(), live);
        Some(Pending::Enqueue(Box::new(Enqueue {
            state: Arc::clone(state),
            send_id,
            from: me,
            to,
            payload,
            enqueued,
            epoch,
            pausing,
        })))
    }

    async fn on_frame(&self, frame: Frame) -> Result<Option<Pending>, Closing> {
        let state = &self.state;
        let me = self.device;
        if let Frame::Ack { up_to } = frame {
            // The window opens before the rate limit is looked at: an ack
            // the limiter drops must not stall deliveries for good (its
            // store write waits for the next ack, which covers it).
            self.open_window(up_to);
        }
        if !matches!(frame, Frame::Ping { .. } | Frame::Pong { .. }) && !state.limits.frame(me) {
            let ref_id = match &frame {
                Frame::Send { send_id, .. } => *send_id,
                Frame::PairOpen { request_id, .. }
                | Frame::PairClaim { request_id, .. }
                | Frame::PairClose { request_id, .. }
                | Frame::Authorize { request_id, .. }
                | Frame::Revoke { request_id, .. }
                | Frame::PushSubscribe { request_id, .. }
                | Frame::Notify { request_id, .. } => *request_id,
                _ => 0,
            };
            if let Frame::Ack { up_to } = frame {
                // Applied later, unless the next ack covers it first.
                let up_to = up_to.min(self.link.delivered.load(Ordering::Acquire));
                self.unapplied.note(up_to, Instant::now() + STORE_RETRY);
            }
            self.refuse(ErrorCode::RateLimited, ref_id, RATE_LIMITED).await;
            return Ok(None);
        }
        match frame {
            Frame::Ping { nonce } => self.reply(Frame::Pong { nonce }).await,
            Frame::Pong { nonce } => {
                let _ = self.link.liveness.compare_exchange(
                    nonce,
                    0,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            Frame::Send { send_id, to, payload } => {
                return Ok(self.on_send(send_id, to, payload.into()).await);
            }
            Frame::Ack { up_to } => {
                // Never delete what this connection has not delivered yet
                // (the window was opened above, before the rate limit).
                // It covers an earlier one the store did not apply.
                let up_to = up_to.min(self.link.delivered.load(Ordering::Acquire));
                let unapplied = self.unapplied.take();
                // Held frames written, and stored frames it was handed
                // (another node may have written them).
                let hold = &self.handle.hold;
                let mark =
                    hold.mark.load(Ordering::Acquire).max(hold.stored_seen.load(Ordering::Acquire));
                let acked = self.handle.hold.store_acked.load(Ordering::Acquire);
                let watched = self.handle.hold.watched();
                if watched && unapplied.is_none() && (mark <= acked || up_to <= acked) {
                    // Nothing it covers can be in the store.
                    return Ok(None);
                }
                let up_to = unapplied.map_or(up_to, |u| u.max(up_to));
                self.handle.hold.store_acked.fetch_max(up_to, Ordering::AcqRel);
                return Ok(Some(Pending::Ack { up_to, fut: state.store.ack(me, up_to) }));
            }
            Frame::Authorize { request_id, peer } => {
                if peer == me {
                    self.refuse(
                        ErrorCode::UnexpectedFrame,
                        request_id,
                        "a device cannot authorise itself",
                    )
                    .await;
                    return Ok(None);
                }
                match state.store.authorize(me, peer, self.ip.addr_key(), unix_now()).await {
                    Ok(()) => {
                        state.routes.invalidate(me, peer);
                        if let Some(c) = &state.cluster {
                            c.routes_changed(me, peer).await;
                        }
                        self.reply(Frame::Ok { ref_id: request_id }).await;
                        if state.routes.is_route(me, peer).await.unwrap_or(false)
                            && state
                                .offer_to(peer, Frame::Presence { peer: me, online: true })
                                .await
                        {
                            self.reply(Frame::Presence { peer, online: true }).await;
                        }
                    }
                    Err(StoreError::TooManyPeers) => {
                        state.metrics.limit_refused("max_peers");
                        self.refuse(
                            ErrorCode::RateLimited,
                            request_id,
                            "too many authorised peers",
                        )
                        .await;
                    }
                    Err(StoreError::TooManyPending) => {
                        state.metrics.limit_refused("pending_authorizations_per_ip");
                        self.refuse(
                            ErrorCode::RateLimited,
                            request_id,
                            "too many authorisations from your address that no peer answered",
                        )
                        .await;
                    }
                    Err(_) => {
                        state.metrics.refused(ErrorCode::StoreUnavailable);
                        let msg = "the relay cannot write its store right now; retry later";
                        self.refuse(ErrorCode::StoreUnavailable, request_id, msg).await
                    }
                }
            }
            Frame::Revoke { request_id, peer } => {
                let had_route = state.routes.is_route(me, peer).await.unwrap_or(false);
                match state.store.revoke(me, peer, unix_now()).await {
                    Ok(dropped) => {
                        state.routes.invalidate(me, peer);
                        if let Some(c) = &state.cluster {
                            // Every node drops its cached route and what it
                            // holds between the two.
                            c.routes_changed(me, peer).await;
                        }
                        // Held frames between the two go too (a frame
                        // offered from now on sees the generation moved).
                        if let Some(h) = state.registry.get(&peer) {
                            h.hold.purge(state, me);
                        }
                        self.handle.hold.purge(state, peer);
                        state.metrics.dropped("revoked", dropped);
                        if had_route {
                            state.offer_to(peer, Frame::Presence { peer: me, online: false }).await;
                        }
                        info!(device = %me, peer = %peer, dropped, "route revoked");
                        self.reply(Frame::Ok { ref_id: request_id }).await;
                    }
                    Err(_) => {
                        state.metrics.refused(ErrorCode::StoreUnavailable);
                        let msg = "the relay cannot write its store right now; retry later";
                        self.refuse(ErrorCode::StoreUnavailable, request_id, msg).await
                    }
                }
            }
            Frame::PairOpen { request_id, pairing_id, ttl_secs } => {
                crate::failpoints::crash_point("relay.pair_open");
                if self.role != Role::Desktop {
                    self.refuse(
                        ErrorCode::UnexpectedFrame,
                        request_id,
                        "only desktops open pairing mailboxes",
                    )
                    .await;
                    return Ok(None);
                }
                let ttl = Duration::from_secs(u64::from(ttl_secs.max(1)))
                    .min(state.config.pairing_ttl_max);
                let owner = Owner { desktop: me, conn_id: self.handle.conn_id, ip: self.ip };
                match state.mailboxes.open(pairing_id, owner, ttl) {
                    Ok(()) => {
                        // In a cluster the id must be free on every node.
                        if let Some(code) = self.register_mailbox(pairing_id, ttl).await {
                            let _ = state.mailboxes.close(pairing_id, me);
                            let msg = match code {
                                ErrorCode::PairingClaimed => "pairing id in use",
                                _ => "the relay cannot reach its store right now; retry later",
                            };
                            self.refuse(code, request_id, msg).await;
                            return Ok(None);
                        }
                        state.metrics.pairing("opened");
                        self.reply(Frame::Ok { ref_id: request_id }).await;
                    }
                    Err(refused) => {
                        let msg = match refused.limit() {
                            Some(limit) => {
                                state.metrics.limit_refused(limit);
                                "too many open pairing mailboxes"
                            }
                            None => "pairing id in use",
                        };
                        self.refuse(refused.code(), request_id, msg).await
                    }
                }
            }
            Frame::PairClaim { request_id, pairing_id, payload } => {
                crate::failpoints::crash_point("relay.pair_claim");
                if self.role != Role::Phone {
                    self.refuse(
                        ErrorCode::UnexpectedFrame,
                        request_id,
                        "only phones claim pairing mailboxes",
                    )
                    .await;
                    return Ok(None);
                }
                if !state.limits.claim(self.ip) {
                    self.refuse(
                        ErrorCode::RateLimited,
                        request_id,
                        "too many pairing attempts; wait a minute",
                    )
                    .await;
                    return Ok(None);
                }
                if state.cluster.is_some() {
                    self.claim_in_cluster(request_id, pairing_id, payload).await;
                    return Ok(None);
                }
                match state.mailboxes.claim(pairing_id, me) {
                    Ok(desktop) => match state.registry.get(&desktop) {
                        Some(h) => {
                            h.offer(Outbound::Frame(Frame::PairMessage {
                                pairing_id,
                                peer: me,
                                payload,
                            }));
                            state.metrics.pairing("claimed");
                            self.reply(Frame::Ok { ref_id: request_id }).await;
                        }
                        None => {
                            // Nothing happened: the claim may be retried once the desktop is back.
                            state.mailboxes.unclaim(pairing_id, me);
                            self.refuse(
                                ErrorCode::PairingNotFound,
                                request_id,
                                "the desktop is not connected",
                            )
                            .await
                        }
                    },
                    Err(code) => self.refuse(code, request_id, "pairing refused").await,
                }
            }
            Frame::PairMessage { pairing_id, peer, payload } => {
                crate::failpoints::crash_point("relay.pair_message");
                let frame = Frame::PairMessage { pairing_id, peer: me, payload };
                match state.mailboxes.route(pairing_id, me, peer) {
                    Ok(to) => {
                        if !state.offer_to(to, frame).await {
                            self.refuse(
                                ErrorCode::PairingNotFound,
                                0,
                                "the other device is not connected",
                            )
                            .await
                        }
                    }
                    // The mailbox may be on another node (its desktop's).
                    Err(ErrorCode::PairingNotFound) if let Some(c) = &state.cluster => {
                        match c.pair_route(pairing_id, me, peer, &frame).await {
                            Ok(None) => {}
                            Ok(Some(code)) => self.refuse(code, 0, "pairing message refused").await,
                            Err(_) => {
                                let m = "the relay cannot reach its store right now; retry later";
                                self.refuse(ErrorCode::StoreUnavailable, 0, m).await
                            }
                        }
                    }
                    Err(code) => self.refuse(code, 0, "pairing message refused").await,
                }
            }
            Frame::PairClose { request_id, pairing_id } => {
                match state.mailboxes.close(pairing_id, me) {
                    Ok(()) => {
                        if let Some(c) = &state.cluster {
                            c.pair_close(pairing_id, me).await;
                        }
                        state.metrics.pairing("closed");
                        self.reply(Frame::Ok { ref_id: request_id }).await;
                    }
                    Err(code) => self.refuse(code, request_id, "cannot close that mailbox").await,
                }
            }
            push @ (Frame::PushSubscribe { .. } | Frame::Notify { .. } | Frame::Active { .. }) => {
                self.on_push(push).await;
            }
            other => {
                let name = other.frame_type();
                self.refuse(
                    ErrorCode::UnexpectedFrame,
                    0,
                    &format!("{name} is not sent by devices"),
                )
                .await;
            }
        }
        Ok(None)
    }

    /// Register a mailbox opened here with the cluster (no-op on one node);
    /// the code to refuse the `PairOpen` with, if it was not registered.
    async fn register_mailbox(&self, pairing_id: [u8; 16], ttl: Duration) -> Option<ErrorCode> {
        let c = self.state.cluster.as_ref()?;
        match c.pair_open(pairing_id, self.device, ttl).await {
            Ok(true) => None,
            Ok(false) => Some(ErrorCode::PairingClaimed),
            Err(e) => {
                warn!(error = %e, "cannot register a mailbox in the cluster");
                Some(ErrorCode::StoreUnavailable)
            }
        }
    }

    /// A `PairClaim` in a cluster: Redis decides which claim wins, wherever
    /// the desktop's mailbox is; its node hands the claim to the desktop.
    async fn claim_in_cluster(&self, request_id: u64, pairing_id: [u8; 16], payload: Vec<u8>) {
        let state = &self.state;
        let Some(c) = &state.cluster else { return };
        let me = self.device;
        match c.pair_claim(pairing_id, me, &payload).await {
            Ok(crate::cluster::Claim::Won { desktop, here }) => {
                if here {
                    let _ = state.mailboxes.claim(pairing_id, me);
                    state
                        .offer_to(desktop, Frame::PairMessage { pairing_id, peer: me, payload })
                        .await;
                    state.metrics.pairing("claimed");
                }
                self.reply(Frame::Ok { ref_id: request_id }).await;
            }
            Ok(crate::cluster::Claim::Refused(code)) => {
                self.refuse(code, request_id, "pairing refused").await
            }
            Err(e) => {
                warn!(error = %e, "cannot claim a mailbox in the cluster");
                let m = "the relay cannot reach its store right now; retry later";
                self.refuse(ErrorCode::StoreUnavailable, request_id, m).await
            }
        }
    }

    /// Act on a finished store operation; `answer` is false once the
    /// sender's connection is closing (only the push to the recipient matters).
    async fn finished(&self, done: Done, answer: bool) {
        let state = &self.state;
        match done {
            Done::Enqueued { send_id, to, pausing, len, result } => {
                if state.cluster.is_some() {
                    self.count_unanswered(to, false);
                }
                if pausing {
                    self.paused.fetch_sub(1, Ordering::AcqRel);
                }
                self.enqueued(send_id, len, result, answer);
            }
            Done::Acked { up_to, result: Err(e) } => {
                warn!(error = %e, up_to, "ack failed; applying it again later");
                self.unapplied.note(up_to, Instant::now() + STORE_RETRY);
            }
            Done::Acked { up_to, result: Ok(_) } => self.unapplied.covered(up_to),
        }
    }

    /// A `Send` the store answered: tell the device.
    fn enqueued(&self, send_id: u64, len: usize, result: Result<u64, StoreError>, answer: bool) {
        let state = &self.state;
        match result {
            Ok(_) => {
                state.metrics.forwarded(len);
                state.metrics.ok("commit");
                // The store commits again: so may an ack it refused.
                self.unapplied.hurry();
                if answer {
                    self.handle.answers().ok(send_id);
                }
            }
            Err(_) if !answer => {}
            Err(e) => {
                if !matches!(e, StoreError::NoRoute) && refusal(&e).2.is_none() {
                    warn!(error = %e, "store failed");
                }
                self.handle.answers().refuse(send_id, e);
            }
        }
    }

    /// This device's frames for `to` queued and not answered yet.
    fn unanswered_to(&self, to: &DeviceId) -> u32 {
        let u = self.unanswered.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        u.iter().find(|(d, _)| d == to).map_or(0, |(_, n)| *n)
    }

    /// One more (`up`) or one fewer of them.
    fn count_unanswered(&self, to: DeviceId, up: bool) {
        let mut u = self.unanswered.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match u.iter().position(|(d, _)| *d == to) {
            Some(i) => {
                let left = u.get_mut(i).map_or(0, |e| {
                    e.1 = if up { e.1.saturating_add(1) } else { e.1.saturating_sub(1) };
                    e.1
                });
                if left == 0 {
                    u.swap_remove(i);
                }
            }
            None if up => u.push((to, 1)),
            None => {}
        }
        if u.is_empty() && u.capacity() > 16 {
            *u = Vec::new();
        }
    }
}
