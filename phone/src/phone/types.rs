//! The phone engine's public types: how to open it, and what it reports.

use super::*;

/// How to open a phone.
#[derive(Debug, Clone)]
pub struct PhoneConfig {
    /// Where the phone keeps its state.
    pub data_dir: PathBuf,
    /// What the phone is called on the desktop.
    pub device_name: String,
    /// `ios`, `android`, `web`, …
    pub platform: String,
    /// The app's version.
    pub app_version: String,
    /// Where the device key lives; `None`: 0600 files in `data_dir/secrets`.
    pub secret_store: Option<Arc<dyn SecretStore>>,
    /// Extra trusted root certificates (PEM) for relays with private CAs.
    pub extra_roots_pem: Vec<String>,
    /// When each desktop's session is renewed and its sending key ratcheted
    /// (`docs/PROTOCOL.md` §10.6; default: hourly). No field may be 0.
    pub schedule: Schedule,
    /// Called with the name of each step of a session renewal as this phone
    /// passes it (the names of the agent's crash points,
    /// `renew.init_saved` …). For crash tests, which abort the process
    /// there; `None` in apps.
    pub step_hook: Option<StepHook>,
    /// How long a pairing waits for the desktop's result once its relay
    /// connection dropped and came back while it waited (the result may
    /// have been lost on the way): the desktop gives up on a phone that
    /// shows no sign of having got its answer after the same time (its
    /// `unfinished_pairing_secs`, at most 60 s), so both say "pairing
    /// interrupted: scan again" within about the same time. Default 60 s.
    pub pairing_interrupted_wait: Duration,
}

impl PhoneConfig {
    /// A configuration with a file secret store.
    #[must_use]
    pub fn new(data_dir: impl Into<PathBuf>, device_name: impl Into<String>) -> Self {
        Self {
            data_dir: data_dir.into(),
            device_name: device_name.into(),
            platform: "unknown".into(),
            app_version: env!("CARGO_PKG_VERSION").into(),
            secret_store: None,
            extra_roots_pem: Vec::new(),
            schedule: Schedule::default(),
            step_hook: None,
            pairing_interrupted_wait: Duration::from_secs(60),
        }
    }
}

/// A relay connection's state, as an app shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// The first connection attempt is under way.
    Connecting,
    /// Authenticated with the relay.
    Connected,
    /// Disconnected; trying again.
    Reconnecting {
        /// When the next attempt is (ms).
        retry_in_ms: u64,
    },
    /// The relay refuses this phone for good.
    Revoked,
}

/// A paired desktop, for a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesktopSummary {
    /// Its device id.
    pub desktop_id: String,
    /// What it calls itself.
    pub name: String,
    /// The relay it is reached through.
    pub relay_url: String,
    /// Whether it is connected to the relay now.
    pub online: bool,
    /// Whether a task of it is queued or running (as far as this phone saw).
    pub busy: bool,
    /// This phone's connection to that relay.
    pub connection: ConnectionState,
}

/// One task event, with where it belongs.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEventRecord {
    /// The desktop.
    pub desktop_id: String,
    /// The task.
    pub task_id: String,
    /// Its position in the task's history.
    pub offset: u64,
    /// When it happened (Unix ms, desktop clock).
    pub at_ms: u64,
    /// What happened.
    pub event: TaskEvent,
}

/// One page of a task's history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// The events, in order.
    pub events: Vec<TaskEventRecord>,
    /// The offset after the last event.
    pub next_offset: u64,
    /// More events follow: ask again from `next_offset`.
    pub more: bool,
    /// Events before this offset are no longer kept by the desktop.
    pub unavailable_before: Option<u64>,
}

/// What a desktop offers for a task: its executors and projects and the
/// defaults (`Message::Choices`, PROTOCOL §15.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choices {
    /// Every configured executor, the default first.
    pub executors: Vec<tandem_proto::message::ExecutorChoice>,
    /// Every configured project, the default first (empty: none offered).
    pub projects: Vec<tandem_proto::message::ProjectChoice>,
    /// The executor a task without one runs with.
    pub default_executor: String,
    /// The project a task without one runs in.
    pub default_project: Option<String>,
}

/// What the phone tells its subscribers.
#[derive(Debug, Clone, PartialEq)]
pub enum PhoneEvent {
    /// A task event, each offset once and in order per task.
    Task(TaskEventRecord),
    /// A relay connection changed state (for every desktop on that relay).
    Connection {
        /// The desktop.
        desktop_id: String,
        /// The new state.
        state: ConnectionState,
    },
    /// A desktop came online or went offline.
    Presence {
        /// The desktop.
        desktop_id: String,
        /// Whether it is connected to the relay.
        online: bool,
    },
    /// The desktop stopped streaming progress to this idle phone; any
    /// request (a history fetch) re-attaches it.
    Detached {
        /// The desktop.
        desktop_id: String,
        /// The idle time that detached it.
        idle_secs: u64,
    },
    /// A desktop said which executors and projects it offers, for the first
    /// time since the phone opened or other than before (it says so with
    /// every task list): what [`crate::Phone::choices`] now answers.
    Choices {
        /// The desktop.
        desktop_id: String,
        /// What it offers.
        choices: Choices,
    },
    /// The desktop refused a request.
    Refused {
        /// The desktop.
        desktop_id: String,
        /// The task it concerns.
        task_id: Option<String>,
        /// The desktop's code (PROTOCOL §15.3.2).
        code: String,
        /// Its words.
        message: String,
    },
    /// Messages the desktop sent were dropped from its outbox before they
    /// reached this phone (the desktop's outbox limit, or this phone's state
    /// restored from an older copy): they will never arrive. What to do:
    /// tell the person that the desktop's updates `from_seq..=to_seq` are
    /// missing and reload what is shown (`Phone::tasks`, then
    /// `Phone::history` of the tasks on screen); task events themselves are
    /// filled from the desktop's history as far as it keeps them.
    MessagesLost {
        /// The desktop.
        desktop_id: String,
        /// The first lost message (the desktop's sequence number).
        from_seq: u64,
        /// The last lost message.
        to_seq: u64,
    },
    /// Events of a task that this phone was filling from the desktop's
    /// history are no longer kept by the desktop (its per-task limit, or a
    /// task it pruned): `from_offset..=to_offset` will never be shown. What
    /// to do: mark the task's history as incomplete there; later events
    /// follow as usual.
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
    /// `rate_limited`, `not_authorized`, …). With `retrying`, it stays in
    /// the outbox and is sent again on a timer (backoff up to 30 s) until
    /// the relay takes it: nothing to do but show that the desktop is not
    /// reachable for now. Without, it cannot ever be sent (too large).
    /// Reported once per run of refusals.
    SendRefused {
        /// The desktop.
        desktop_id: String,
        /// The relay's code.
        code: String,
        /// Its words.
        message: String,
        /// Whether it is sent again.
        retrying: bool,
    },
    /// A paired desktop's file could not be read when the phone opened: it
    /// was moved aside (`moved_to`) and the phone opened without that
    /// desktop. What to do: pair with that desktop again (its QR code).
    /// Reported to the first subscriber after `Phone::open`.
    DesktopSetAside {
        /// The desktop (the file's name).
        desktop_id: String,
        /// Where the damaged file is now, if it could be moved.
        moved_to: Option<String>,
        /// The whole story, for a person: what was wrong and what to do.
        message: String,
    },
    /// To the first subscriber only: more events were reported before it
    /// subscribed than it is replayed (the newest
    /// [`FIRST_REPLAY`](crate::FIRST_REPLAY) and every `DesktopSetAside`),
    /// and the `missed` oldest were dropped. What to do: load what is shown
    /// from `Phone::tasks` and `Phone::history` rather than from events.
    EarlyEventsDropped {
        /// How many events were dropped.
        missed: u64,
    },
}
