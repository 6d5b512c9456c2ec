//! The answers to a connection's `Send`s that other tasks decide (the
//! recipient's reader on its `Ack`, the task that writes held frames), and
//! the durable path's own: all go through [`Answers`], and the
//! connection's writer turns them into frames in one place
//! ([`Answers::take`], then `Writer::answer`), so that they can be
//! coalesced there (PROTOCOL.md §6.5).

use std::sync::Mutex;

use tandem_proto::ErrorCode;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::registry::lock;
use crate::store::StoreError;

/// What a `Send` is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Accepted: the recipient acknowledged it, or it is durable.
    Ok(u64),
    /// Refused by the store (`send_id`, why).
    Refused(u64, StoreError),
}

/// The answers waiting for one connection's writer, and what wakes that
/// writer (for them, and for the other reasons to look: held frames, a
/// backlog to read, the connection closing).
#[derive(Debug, Default)]
pub(crate) struct Answers {
    q: Mutex<Vec<Answer>>,
    /// The connection's writer waits on it.
    wake: Notify,
}

impl Answers {
    /// Wake the connection's writer (once, if it is not waiting).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves at the next [`Self::wake`] (or at once, for one made
    /// while nobody waited).
    pub(crate) fn woken(&self) -> Notified<'_> {
        self.wake.notified()
    }

    /// `send_id` is accepted.
    pub(crate) fn ok(&self, send_id: u64) {
        self.push(Answer::Ok(send_id));
    }

    /// `send_id` was refused by the store.
    pub(crate) fn refuse(&self, send_id: u64, e: StoreError) {
        self.push(Answer::Refused(send_id, e));
    }

    fn push(&self, a: Answer) {
        let mut q = lock(&self.q);
        let first = q.is_empty();
        q.push(a);
        drop(q);
        if first {
            self.wake.notify_one();
        }
    }

    /// Everything waiting, in the order it came.
    pub(crate) fn take(&self) -> Vec<Answer> {
        std::mem::take(&mut *lock(&self.q))
    }
}

/// The `Error` a store refusal is answered with: its code, its message,
/// and the limit it counts under in `/metrics` (if any).
pub(crate) fn refusal(e: &StoreError) -> (ErrorCode, &'static str, Option<&'static str>) {
    match e {
        StoreError::NoRoute => (
            ErrorCode::NotAuthorized,
            "no route: these devices have not authorised each other",
            None,
        ),
        StoreError::QueueFull(_) => {
            (ErrorCode::QueueFull, "the recipient's queue is full", Some("queue_recipient"))
        }
        StoreError::SenderShareFull => (
            ErrorCode::QueueFull,
            "this device has its share of the recipient's queue full; wait for acks",
            Some("queue_sender_share"),
        ),
        StoreError::AddressShareFull => (
            ErrorCode::QueueFull,
            "your address has its share of the relay's queues full; wait for acks",
            Some("queue_address_share"),
        ),
        StoreError::StorageFull => {
            (ErrorCode::QueueFull, "the relay's queue storage is full", Some("queue_total"))
        }
        StoreError::OverflowFull => (
            ErrorCode::QueueFull,
            "the relay's queue storage is full, and so is its overflow (or your address's share of it)",
            Some("queue_overflow"),
        ),
        _ => (
            ErrorCode::StoreUnavailable,
            "the relay cannot store frames right now; retry later",
            None,
        ),
    }
}
