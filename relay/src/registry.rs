//! Who is online: one live connection per device. A newer connection for
//! the same device replaces the older one, which is closed with `replaced`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tandem_proto::{DeviceId, ErrorCode, Frame};
use tokio::sync::{Notify, mpsc};

use crate::admission::Places;
use crate::answers::Answers;
use crate::hold::{Hold, Write};
use crate::net::IpKey;
use crate::state::State;

/// What other tasks hand a connection's writer.
pub(crate) enum Outbound {
    /// A frame to send as is.
    Frame(Frame),
    /// A stored frame to deliver live (the writer keeps delivery order),
    /// its id taken under store epoch `epoch` (a connection told another
    /// epoch reads its queue instead).
    Deliver { id: u64, from: DeviceId, payload: bytes::Bytes, epoch: u64 },
}

/// What a connection's queue holds: boxed, so that the queue's first block
/// (32 slots, allocated with the channel and kept while it lives) costs 8
/// bytes a slot on an idle connection instead of the size of a [`Frame`].
pub(crate) type Queued = Box<Outbound>;

impl std::fmt::Debug for Outbound {
    /// Never shows payload bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outbound::Frame(fr) => write!(f, "Frame({})", fr.frame_type()),
            Outbound::Deliver { id, payload, .. } => {
                write!(f, "Deliver({id}, {} bytes)", payload.len())
            }
        }
    }
}

/// A handle on one live connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnHandle {
    pub(crate) conn_id: u64,
    /// The client address the connection counts under.
    pub(crate) ip: IpKey,
    pub(crate) tx: mpsc::Sender<Queued>,
    /// The device's held frames ([`crate::hold`]), adopted by a connection
    /// that replaces this one.
    pub(crate) hold: Arc<Hold>,
    /// The rest of what other tasks share with the connection.
    pub(crate) shared: Arc<Shared>,
}

/// What other tasks share with one connection, in one allocation (an idle
/// connection's memory is mostly such small pieces, docs/BENCHMARKS.md).
#[derive(Debug)]
pub(crate) struct Shared {
    /// The answers to this connection's `Send`s decided elsewhere, and
    /// what wakes its writer: to send them, to send held frames, to read
    /// its backlog from the store, or (from [`ConnHandle::close`]) to see
    /// that the connection is closing.
    pub(crate) answers: Answers,
    /// [`ConnHandle::close`] was called.
    closed: AtomicBool,
    /// Wakes whoever waits in [`ConnHandle::cancelled`].
    closing: Notify,
    reason: Mutex<Option<(ErrorCode, String)>>,
    /// Its places among the relay's connections, until it is gone or a
    /// connection that replaces it takes them over.
    places: Mutex<Option<Places>>,
    /// Its fence token among the cluster's connections of the device (0:
    /// not claimed yet, or a single node).
    fence: AtomicU64,
    /// The highest fence another node claimed the device with since this
    /// connection opened (0: none).
    replaced_by: AtomicU64,
    /// Its peers were told it is online (in a cluster the node's
    /// reconciliation says it later when that failed).
    announced: AtomicBool,
    /// The device says it is in the foreground (`Active`; from the start):
    /// no push for it meanwhile.
    active: AtomicBool,
}

impl Shared {
    /// Open, holding `places`.
    pub(crate) fn new(places: Option<Places>) -> Self {
        Self {
            answers: Answers::default(),
            closed: AtomicBool::new(false),
            closing: Notify::new(),
            reason: Mutex::new(None),
            places: Mutex::new(places),
            fence: AtomicU64::new(0),
            replaced_by: AtomicU64::new(0),
            announced: AtomicBool::new(false),
            active: AtomicBool::new(true),
        }
    }
}

impl ConnHandle {
    pub(crate) fn new(
        conn_id: u64,
        device: DeviceId,
        ip: IpKey,
        tx: mpsc::Sender<Queued>,
        places: Places,
    ) -> Self {
        let shared = Arc::new(Shared::new(Some(places)));
        Self { conn_id, ip, tx, hold: Arc::new(Hold::new(device, Arc::clone(&shared))), shared }
    }

    /// The answers to this connection's `Send`s decided elsewhere (and
    /// what wakes its writer).
    pub(crate) fn answers(&self) -> &Answers {
        &self.shared.answers
    }

    /// The device connected to another node of the cluster with `fence`:
    /// close this connection if its own fence is lower (once it has one).
    pub(crate) fn replaced_at(&self, fence: u64) {
        self.shared.replaced_by.fetch_max(fence, Ordering::AcqRel);
        let mine = self.shared.fence.load(Ordering::Acquire);
        if mine != 0 && mine < fence {
            self.close(ErrorCode::Replaced, "a newer connection for this device replaced this one");
        }
    }

    /// Whether the device is in the foreground (its last `Active`; true
    /// until it says otherwise).
    pub(crate) fn active(&self) -> bool {
        self.shared.active.load(Ordering::Acquire)
    }

    /// The device's `Active`.
    pub(crate) fn set_active(&self, active: bool) {
        self.shared.active.store(active, Ordering::Release);
    }

    /// Whether its peers were told it is online.
    pub(crate) fn announced(&self) -> bool {
        self.shared.announced.load(Ordering::Acquire)
    }

    /// Its peers were told it is online.
    pub(crate) fn set_announced(&self) {
        self.shared.announced.store(true, Ordering::Release);
    }

    /// Its fence token in the cluster (0: none yet, or one node).
    pub(crate) fn fence(&self) -> u64 {
        self.shared.fence.load(Ordering::Acquire)
    }

    /// The connection claimed its device with `fence`; a claim with a
    /// higher one that another node made meanwhile replaces it at once.
    pub(crate) fn set_fence(&self, fence: u64) {
        self.shared.fence.store(fence, Ordering::Release);
        if self.shared.replaced_by.load(Ordering::Acquire) > fence {
            self.close(ErrorCode::Replaced, "a newer connection for this device replaced this one");
        }
    }

    /// Take its places (for the connection that replaces it); `None` if
    /// they were taken or given up already.
    pub(crate) fn take_places(&self) -> Option<Places> {
        lock(&self.shared.places).take()
    }

    /// Ask the connection to close with `code`; the first reason wins.
    pub(crate) fn close(&self, code: ErrorCode, message: &str) {
        let mut r = lock(&self.shared.reason);
        if r.is_none() {
            *r = Some((code, message.to_owned()));
        }
        drop(r);
        self.shared.closed.store(true, Ordering::Release);
        self.shared.closing.notify_waiters();
        // The writer waits on its wake-up rather than in `cancelled`.
        self.shared.answers.wake();
    }

    /// Resolves when [`Self::close`] was called.
    pub(crate) async fn cancelled(&self) {
        loop {
            let closing = self.shared.closing.notified();
            tokio::pin!(closing);
            // Registered before the check: a close after it wakes this.
            closing.as_mut().enable();
            if self.is_closed() {
                return;
            }
            closing.await;
        }
    }

    /// Whether [`Self::close`] was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Why the connection was asked to close.
    pub(crate) fn reason(&self) -> Option<(ErrorCode, String)> {
        lock(&self.shared.reason).clone()
    }

    /// Hand a frame to the writer, waiting while its queue is full; false
    /// once the writer is gone.
    pub(crate) async fn send(&self, frame: Frame) -> bool {
        self.tx.send(Box::new(Outbound::Frame(frame))).await.is_ok()
    }

    /// Hand something to the writer without making the caller wait.
    ///
    /// A stored frame (`Deliver`) that does not fit is not lost: the writer
    /// is woken and reads its backlog from the store. A control frame
    /// (presence, pairing) that does not fit is handed over by a short-lived
    /// task; if the writer cannot take it within a second, its reader is
    /// stuck and the connection is closed (the device reconnects and the
    /// state it missed is sent afresh).
    pub(crate) fn offer(&self, out: Outbound) {
        match self.tx.try_send(Box::new(out)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(out))
                if let Outbound::Deliver { id, .. } = *out =>
            {
                // The store may hold it: the writer reads it from there.
                self.hold.mark.fetch_max(id, Ordering::AcqRel);
                self.answers().wake()
            }
            Err(mpsc::error::TrySendError::Full(out)) => {
                let me = self.clone();
                tokio::spawn(async move {
                    let sent =
                        tokio::time::timeout(std::time::Duration::from_secs(1), me.tx.send(out))
                            .await;
                    if !matches!(sent, Ok(Ok(()))) {
                        me.close(ErrorCode::Other(0), "the connection is not reading");
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Lock a mutex, recovering from poisoning (a panicked holder cannot leave
/// these maps inconsistent: every update is a single insert or remove).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The map from device to its live connection.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    map: Mutex<HashMap<DeviceId, ConnHandle>>,
    next_id: AtomicU64,
}

impl Registry {
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Register a connection: it adopts the hold of the one it replaces
    /// (or the store starts watching the device's queue for its new hold).
    /// Returns the connection as registered, and the one it replaces.
    pub(crate) fn insert(
        &self,
        device: DeviceId,
        mut handle: ConnHandle,
        state: &State,
    ) -> (ConnHandle, Option<ConnHandle>) {
        let mut map = lock(&self.map);
        match map.get(&device) {
            Some(old) => {
                handle.hold = Arc::clone(&old.hold);
                handle.hold.adopt(Arc::clone(&handle.shared));
            }
            None => {
                let watched = state.store.watch(device, Some(Arc::clone(&handle.hold.mark)));
                handle.hold.set_watched(watched);
            }
        }
        if state.cluster.is_some() {
            // Nothing is held until the connection's claim says which ids
            // the device may have seen on other nodes (`Hold::claimed`).
            handle.hold.begin_claim();
        }
        let old = map.insert(device, handle.clone());
        (handle, old)
    }

    /// Unregister, but only if `conn_id` is still the device's connection:
    /// then (true) its hold is closed and what it held is written (the
    /// write is submitted before a new connection can register, so that
    /// one's first read of the store sees it).
    pub(crate) fn remove(
        &self,
        device: &DeviceId,
        conn_id: u64,
        state: &State,
    ) -> (bool, Option<Write>) {
        let mut map = lock(&self.map);
        if map.get(device).is_some_and(|h| h.conn_id == conn_id) {
            let Some(h) = map.remove(device) else { return (false, None) };
            let _ = state.store.watch(*device, None);
            (true, h.hold.close(state))
        } else {
            (false, None)
        }
    }

    pub(crate) fn get(&self, device: &DeviceId) -> Option<ConnHandle> {
        lock(&self.map).get(device).cloned()
    }

    /// Every connected device with its connection.
    pub(crate) fn devices(&self) -> Vec<(DeviceId, ConnHandle)> {
        lock(&self.map).iter().map(|(d, h)| (*d, h.clone())).collect()
    }

    pub(crate) fn all(&self) -> Vec<ConnHandle> {
        lock(&self.map).values().cloned().collect()
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.map).len()
    }
}
