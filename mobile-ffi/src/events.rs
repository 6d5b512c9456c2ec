//! Events for the app: [`EventListener`] (implemented by the app) and the
//! [`SubscriptionHandle`] that keeps a subscription alive.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::runtime::Handle;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::runtime::AbortOnDrop;
use crate::types::{Choices, ConnectionState, TaskEventRecord};

/// Something the app may want to show.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum ClientEvent {
    /// A task event, live. For each task, every offset arrives once and in
    /// order (the SDK fills gaps from the desktop's history and drops
    /// repeats), also across reconnects and restarts of the relay.
    Task {
        /// The event.
        record: TaskEventRecord,
    },
    /// The connection for a desktop changed.
    Connection {
        /// The desktop.
        desktop_id: String,
        /// Its new state.
        state: ConnectionState,
    },
    /// A desktop came online or went offline (its relay connection).
    Presence {
        /// The desktop.
        desktop_id: String,
        /// Whether it is connected to the relay now.
        online: bool,
    },
    /// The desktop stopped streaming to this phone after it stayed idle for
    /// `idle_secs`; it streams again on the next call (any submit, follow-up,
    /// decision, history or task list).
    Detached {
        /// The desktop.
        desktop_id: String,
        /// How long the phone was idle.
        idle_secs: u64,
    },
    /// A desktop said which executors and projects it offers, for the first
    /// time since the client opened or other than before (it says so with
    /// every task list, so after connecting): what `TandemClient::choices`
    /// now answers. Offer them when submitting.
    Choices {
        /// The desktop.
        desktop_id: String,
        /// What it offers.
        choices: Choices,
    },
    /// The desktop refused something this phone sent (scope, unknown task,
    /// executor or project, a decision too late, …).
    Refused {
        /// The desktop.
        desktop_id: String,
        /// The task it concerned, if any.
        task_id: Option<String>,
        /// The refusal code (`forbidden`, `unknown_task`, …; see the protocol).
        code: String,
        /// A human-readable message.
        message: String,
    },
    /// Messages the desktop sent were dropped before reaching this phone
    /// (the desktop's outbox limit, or this phone's data restored from an
    /// older copy): they will never arrive. Tell the person that updates
    /// from that desktop are missing, and reload what is shown from
    /// `TandemClient::tasks` and `history`.
    MessagesLost {
        /// The desktop.
        desktop_id: String,
        /// The first lost message (the desktop's sequence number).
        from_seq: u64,
        /// The last lost message.
        to_seq: u64,
    },
    /// Events `from_offset..=to_offset` of a task are no longer kept by the
    /// desktop and will never be shown: mark the task's history as
    /// incomplete. Later events follow as usual.
    TaskEventsLost {
        /// The desktop.
        desktop_id: String,
        /// The task.
        task_id: String,
        /// The first lost offset.
        from_offset: u64,
        /// The last lost offset.
        to_offset: u64,
    },
    /// The relay refused a message for this desktop (`queue_full`,
    /// `rate_limited`, …). With `retrying` it stays queued and is sent again
    /// automatically until the relay takes it (show the desktop as not
    /// reachable for now); without, it can never be sent.
    SendRefused {
        /// The desktop.
        desktop_id: String,
        /// The relay's code.
        code: String,
        /// A human-readable message.
        message: String,
        /// Whether it is sent again.
        retrying: bool,
    },
    /// A paired desktop's saved state could not be read at `open`: it was
    /// moved aside and that desktop is no longer paired here. Show
    /// `message` and offer to pair with it again. Delivered to the first
    /// listener subscribed after `open`.
    DesktopSetAside {
        /// The desktop.
        desktop_id: String,
        /// Where the damaged file is now, if it could be moved.
        moved_to: Option<String>,
        /// What happened and what to do, for a person.
        message: String,
    },
    /// The listener fell behind and `missed` events were dropped before it
    /// saw them; or, to the first listener, more than 256 events were
    /// reported before it subscribed and the `missed` oldest were dropped.
    /// Refresh from `TandemClient::tasks` and `history`.
    Lagged {
        /// How many events were dropped.
        missed: u64,
    },
}

impl From<tandem_phone::PhoneEvent> for ClientEvent {
    fn from(e: tandem_phone::PhoneEvent) -> Self {
        use tandem_phone::PhoneEvent;
        match e {
            PhoneEvent::Task(record) => Self::Task { record: record.into() },
            PhoneEvent::Connection { desktop_id, state } => {
                Self::Connection { desktop_id, state: state.into() }
            }
            PhoneEvent::Presence { desktop_id, online } => Self::Presence { desktop_id, online },
            PhoneEvent::Detached { desktop_id, idle_secs } => {
                Self::Detached { desktop_id, idle_secs }
            }
            PhoneEvent::Choices { desktop_id, choices } => {
                Self::Choices { desktop_id, choices: choices.into() }
            }
            PhoneEvent::Refused { desktop_id, task_id, code, message } => {
                Self::Refused { desktop_id, task_id, code, message }
            }
            PhoneEvent::MessagesLost { desktop_id, from_seq, to_seq } => {
                Self::MessagesLost { desktop_id, from_seq, to_seq }
            }
            PhoneEvent::TaskEventsLost { desktop_id, task_id, from_offset, to_offset } => {
                Self::TaskEventsLost { desktop_id, task_id, from_offset, to_offset }
            }
            PhoneEvent::SendRefused { desktop_id, code, message, retrying } => {
                Self::SendRefused { desktop_id, code, message, retrying }
            }
            PhoneEvent::DesktopSetAside { desktop_id, moved_to, message } => {
                Self::DesktopSetAside { desktop_id, moved_to, message }
            }
            // The same advice: reload from `tasks` and `history`.
            PhoneEvent::EarlyEventsDropped { missed } => Self::Lagged { missed },
        }
    }
}

/// Receives the SDK's events. Implemented by the app; called on an SDK
/// thread, one event at a time, in order: return quickly (hand the event to
/// the main thread or an actor) and do not call back into the SDK
/// synchronously from it.
#[uniffi::export(with_foreign)]
pub trait EventListener: Send + Sync {
    /// One event.
    fn on_event(&self, event: ClientEvent);
}

/// A live subscription. Events flow until `cancel` is called or the handle
/// is dropped (released by Swift's ARC, Kotlin's `close()`/`use {}`, or
/// Python's garbage collector): keep it as long as you want events.
#[derive(uniffi::Object)]
pub struct SubscriptionHandle {
    task: Mutex<Option<AbortOnDrop<()>>>,
}

impl std::fmt::Debug for SubscriptionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionHandle").field("active", &self.is_active()).finish()
    }
}

impl SubscriptionHandle {
    /// Forward `events` to `listener` on `runtime` until cancelled.
    pub(crate) fn spawn(
        runtime: &Handle,
        mut events: broadcast::Receiver<tandem_phone::PhoneEvent>,
        listener: Arc<dyn EventListener>,
    ) -> Self {
        let task = runtime.spawn(async move {
            loop {
                let event = match events.recv().await {
                    Ok(e) => ClientEvent::from(e),
                    Err(RecvError::Lagged(missed)) => ClientEvent::Lagged { missed },
                    Err(RecvError::Closed) => return,
                };
                listener.on_event(event);
            }
        });
        Self { task: Mutex::new(Some(AbortOnDrop(task))) }
    }
}

#[uniffi::export]
impl SubscriptionHandle {
    /// Stop the subscription: no event is delivered after this returns,
    /// except one the listener is handling right now. Calling it again does
    /// nothing.
    pub fn cancel(&self) {
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner).take();
        drop(task); // aborts the forwarding task
    }

    /// Whether events still flow (false after `cancel`, or once the client
    /// closed).
    pub fn is_active(&self) -> bool {
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        task.as_ref().is_some_and(|t| !t.0.is_finished())
    }
}
