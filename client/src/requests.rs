//! The requests queue in front of the actor, in the order of the calls,
//! and what a request is on its way to the relay.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tandem_proto::{DeviceId, Frame};
use tokio::sync::{Notify, oneshot};

use crate::client::Shared;
use crate::error::ClientError;

/// The queue in front of the actor. A request takes its place in it when the
/// method is called (not when its future is first polled), so requests are
/// written to the relay in the order they were made, however their futures
/// are polled. The actor takes them from the front while it has room
/// ([`ClientConfig::outbox_capacity`]); the others wait here.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    state: Mutex<RequestsState>,
    /// Wakes the actor: a request was queued, or a caller gave up on one the
    /// actor holds (which may make room).
    pub(crate) notify: Notify,
    /// A caller gave up on a request the actor holds.
    gave_up: AtomicBool,
}

#[derive(Debug, Default)]
struct RequestsState {
    /// In the order of the calls (increasing `seq`).
    waiting: VecDeque<(u64, Command)>,
    next_seq: u64,
    /// The actor is gone: nothing is taken any more.
    closed: bool,
}

impl Requests {
    fn lock(&self) -> std::sync::MutexGuard<'_, RequestsState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue `request` behind every request made before; its position and
    /// the receiver for its answer.
    pub(crate) fn push(
        &self,
        request: Request,
    ) -> Result<(u64, oneshot::Receiver<Result<(), ClientError>>), ClientError> {
        let (reply, answer) = oneshot::channel();
        let seq = {
            let mut state = self.lock();
            if state.closed {
                return Err(ClientError::Closed);
            }
            let seq = state.next_seq;
            state.next_seq += 1;
            state.waiting.push_back((seq, Command { request, reply }));
            seq
        };
        self.notify.notify_one();
        Ok((seq, answer))
    }

    /// Withdraw the request at `seq` if it is still waiting here; `false`
    /// when the actor already took it (or it is gone).
    pub(crate) fn withdraw(&self, seq: u64) -> bool {
        let removed = {
            let mut state = self.lock();
            match state.waiting.binary_search_by_key(&seq, |(s, _)| *s) {
                Ok(i) => state.waiting.remove(i),
                Err(_) => None,
            }
        };
        // Dropped outside the lock.
        removed.is_some()
    }

    /// Whether a caller gave up on a request the actor holds since the last
    /// call.
    pub(crate) fn take_gave_up(&self) -> bool {
        self.gave_up.swap(false, Ordering::AcqRel)
    }

    /// Whether requests wait to be taken.
    pub(crate) fn is_waiting(&self) -> bool {
        !self.lock().waiting.is_empty()
    }

    /// Take up to `max` requests from the front, in order.
    pub(crate) fn take(&self, max: usize) -> Vec<Command> {
        let mut state = self.lock();
        let n = max.min(state.waiting.len());
        state.waiting.drain(..n).map(|(_, command)| command).collect()
    }

    /// The actor stops: refuse new requests, and answer the waiting ones
    /// `Closed` (by dropping them).
    pub(crate) fn close(&self) {
        let waiting = {
            let mut state = self.lock();
            state.closed = true;
            std::mem::take(&mut state.waiting)
        };
        drop(waiting);
    }
}

/// A request's answer, held by its future: dropping the future before the
/// answer came withdraws the request if the actor has not taken it yet, or
/// else tells the actor, whose room it frees (a request nobody waits for is
/// not written if it has not been yet, nor resent after a reconnect).
pub(crate) struct Answer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) seq: u64,
    /// `None` once answered.
    pub(crate) rx: Option<oneshot::Receiver<Result<(), ClientError>>>,
}

impl Drop for Answer {
    fn drop(&mut self) {
        // Close the receiver first: the actor, once told, recognises the
        // requests nobody waits for by their closed reply channels.
        let Some(rx) = self.rx.take() else { return };
        drop(rx);
        let requests = &self.shared.requests;
        if !requests.withdraw(self.seq) {
            requests.gave_up.store(true, Ordering::Release);
            requests.notify.notify_one();
        }
    }
}

/// A request for the actor.
#[derive(Debug)]
pub(crate) enum Request {
    Send { to: DeviceId, payload: Vec<u8> },
    Authorize(DeviceId),
    Revoke(DeviceId),
    PairOpen { pairing_id: [u8; 16], ttl_secs: u16 },
    PairClaim { pairing_id: [u8; 16], payload: Vec<u8> },
    PairClose { pairing_id: [u8; 16] },
    PairMessage { pairing_id: [u8; 16], peer: DeviceId, payload: Vec<u8> },
    PushSubscribe { kind: u8, data: Vec<u8> },
    Notify { to: DeviceId, urgency: u8, topic: [u8; 16], blob: Vec<u8> },
    Active(bool),
}

impl Request {
    /// Whether the relay answers it (with `Ok`/`Error` naming its id).
    pub(crate) fn has_id(&self) -> bool {
        !matches!(self, Request::PairMessage { .. } | Request::Active(_))
    }

    /// The frame, with `id` as its `send_id`/`request_id`.
    pub(crate) fn into_frame(self, id: u64) -> Frame {
        match self {
            Request::Send { to, payload } => Frame::Send { send_id: id, to, payload },
            Request::Authorize(peer) => Frame::Authorize { request_id: id, peer },
            Request::Revoke(peer) => Frame::Revoke { request_id: id, peer },
            Request::PairOpen { pairing_id, ttl_secs } => {
                Frame::PairOpen { request_id: id, pairing_id, ttl_secs }
            }
            Request::PairClaim { pairing_id, payload } => {
                Frame::PairClaim { request_id: id, pairing_id, payload }
            }
            Request::PairClose { pairing_id } => Frame::PairClose { request_id: id, pairing_id },
            Request::PairMessage { pairing_id, peer, payload } => {
                Frame::PairMessage { pairing_id, peer, payload }
            }
            Request::PushSubscribe { kind, data } => {
                Frame::PushSubscribe { request_id: id, kind, data }
            }
            Request::Notify { to, urgency, topic, blob } => {
                Frame::Notify { request_id: id, to, urgency, topic, blob }
            }
            Request::Active(active) => Frame::Active { active },
        }
    }
}

/// A request with its answer channel. (A caller who gives up drops the
/// receiver; the actor then forgets the request.)
#[derive(Debug)]
pub(crate) struct Command {
    pub(crate) request: Request,
    pub(crate) reply: oneshot::Sender<Result<(), ClientError>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(n: u8) -> Request {
        Request::Send { to: DeviceId([0; 16]), payload: vec![n] }
    }

    fn payloads(commands: Vec<Command>) -> Vec<u8> {
        commands
            .into_iter()
            .map(|c| match c.request {
                Request::Send { payload, .. } => payload[0],
                other => panic!("not a send: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_withdrawn_request_leaves_the_others_in_order() {
        let requests = Requests::default();
        let (a, _ra) = requests.push(send(1)).unwrap();
        let (b, _rb) = requests.push(send(2)).unwrap();
        let (_, _rc) = requests.push(send(3)).unwrap();
        assert!(requests.withdraw(b));
        assert!(!requests.withdraw(b), "withdrawn twice");
        assert_eq!(payloads(requests.take(1)), [1]);
        assert!(!requests.withdraw(a), "withdrawn after the actor took it");
        assert_eq!(payloads(requests.take(10)), [3]);
        assert!(!requests.is_waiting());
    }

    #[test]
    fn closing_answers_the_waiting_requests_and_refuses_new_ones() {
        let requests = Requests::default();
        let (_, mut rx) = requests.push(send(1)).unwrap();
        requests.close();
        assert!(rx.try_recv().is_err(), "the waiting request's channel is closed");
        assert!(matches!(requests.push(send(2)), Err(ClientError::Closed)));
        assert!(requests.take(10).is_empty());
    }
}
