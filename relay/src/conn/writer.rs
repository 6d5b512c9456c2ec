//! A connection's writer: responses, live deliveries, the backlog from the
//! store and pings, each batch in one flush; a write that takes longer than
//! `write_timeout` closes the connection.
//!
//! Deliveries are sent only while the connection's delivery window has
//! room (PROTOCOL.md §6.6): what does not fit stays in the store and is
//! read from there as the device's acks make room. So a slow device is
//! served at its pace, and pings and answers never wait behind more than a
//! window of deliveries.
//!
//! When the store cannot be read (it is down, or busy) the connection stays
//! open: the device is told once (`Error{store_unavailable, ref_id = 0}`),
//! nothing is delivered past the gap, and the backlog is read again every
//! [`STORE_RETRY`] until it works.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::Rng;
use tandem_proto::frame::{Frame, encode_deliver, push_ok};
use tandem_proto::{DeviceId, ErrorCode};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tracing::warn;

use super::{Closing, Link, Sink, close, feed, feed_raw, flush, write};
use crate::answers::{Answer, refusal};
use crate::registry::{ConnHandle, Outbound, Queued};
use crate::state::State;

/// The reason recorded when a write fails or times out.
pub(super) const WRITE_FAILED: &str = "write failed or timed out";
/// Frames read from the store per backlog page.
const BACKLOG_PAGE: usize = 128;
/// Most queued frames the writer buffers before it flushes.
const WRITE_BATCH: usize = 64;
/// How long the writer waits before reading the backlog again after the
/// store refused a read.
pub(super) const STORE_RETRY: Duration = Duration::from_secs(1);

pub(super) struct Writer {
    pub(super) sink: Sink,
    pub(super) state: Arc<State>,
    pub(super) handle: ConnHandle,
    pub(super) device: DeviceId,
    /// What it shares with the connection's reader.
    pub(super) link: Arc<Link>,
    /// Deliveries sent and not acknowledged yet.
    pub(super) window: Window,
    /// The device speaks level 2: answers to its `Send`s go as `Oks`.
    pub(super) oks: bool,
    /// Some delivery was left in the store for want of room in the window.
    pub(super) behind: bool,
    /// The store refused the last backlog read: when to read it again.
    pub(super) retry_at: Option<Instant>,
    /// Every frame the store had for the device with an id up to this when
    /// the writer last read it through was read (and sent, or gone).
    pub(super) fetched: u64,
    /// The highest id the writer heard the store may hold besides
    /// [`crate::hold::Hold::mark`] (live deliveries of stored frames).
    pub(super) known: u64,
    /// The store is read at the next pump whatever the marks say (at
    /// first; when woken by a store that watches nothing; at a ping in a
    /// cluster; when the hold asks): a read that counts no id as read that
    /// was not handed out before it.
    pub(super) must_read: bool,
    /// The store epoch its `AuthOk` announced: no delivery id is sent under
    /// another (the store's epoch changes when Redis lost writes).
    pub(super) epoch: u64,
}

/// What a connection is closed with when the store's epoch moved under it.
const NEW_EPOCH: &str = "the relay's store changed; reconnect after the hint";

/// The deliveries in flight on one connection: sent, not acknowledged.
#[derive(Default)]
pub(super) struct Window {
    /// Their ids and payload sizes, in id order.
    sent: VecDeque<(u64, u64)>,
    /// The sum of their payload sizes.
    bytes: u64,
}

impl Window {
    /// Forget what `acked` covers.
    fn release(&mut self, acked: u64) {
        while let Some(&(id, len)) = self.sent.front() {
            if id > acked {
                break;
            }
            self.sent.pop_front();
            self.bytes -= len;
        }
    }

    fn push(&mut self, id: u64, len: usize) {
        let len = u64::try_from(len).unwrap_or(u64::MAX);
        self.sent.push_back((id, len));
        self.bytes = self.bytes.saturating_add(len);
    }

    /// How many more deliveries may be sent (0 once the bytes are reached).
    fn room(&self, max_frames: usize, max_bytes: u64) -> usize {
        if self.bytes >= max_bytes { 0 } else { max_frames.saturating_sub(self.sent.len()) }
    }
}

impl Writer {
    /// Not `async fn`, which would keep a second copy of `self` in its
    /// future for the connection's life (see [`serve`]).
    #[expect(clippy::manual_async_fn, reason = "an async fn keeps its arguments")]
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Queued>) -> impl Future<Output = ()> + Send {
        async move {
            let mut last = 0u64;
            let result = self.loop_(&mut rx, &mut last).await;
            Box::pin(self.finish(&mut rx, result)).await;
        }
    }

    /// After the loop: say goodbye as the reason asks, flush, close.
    async fn finish(&mut self, rx: &mut mpsc::Receiver<Queued>, result: Result<(), Closing>) {
        if let Err(Closing(_, ref m)) = result
            && m == WRITE_FAILED
        {
            // The socket is unusable: no flush, no close frame.
            self.handle.close(ErrorCode::Other(0), WRITE_FAILED);
            return;
        }
        let shutting = matches!(&result, Err(Closing(ErrorCode::ShuttingDown, _)));
        if shutting || self.handle.reason().is_some_and(|(c, _)| c == ErrorCode::ShuttingDown) {
            let hint =
                u32::try_from(self.state.config.restart_hint.as_millis()).unwrap_or(u32::MAX);
            let _ =
                write(&mut self.sink, &Frame::Restarting { reconnect_after_ms: hint }, &self.state)
                    .await;
        }
        // Flush what is queued (answers first), then close.
        let _ = Box::pin(self.answer()).await;
        while let Ok(out) = rx.try_recv() {
            if let Outbound::Frame(f) = *out
                && write(&mut self.sink, &f, &self.state).await.is_err()
            {
                break;
            }
        }
        let (code, msg) = match result {
            Err(Closing(c, m)) => (c, m),
            Ok(()) => self.handle.reason().unwrap_or((ErrorCode::Other(0), String::new())),
        };
        close(&mut self.sink, code, &msg, &self.state).await;
        // Make sure the reader stops too.
        self.handle.close(code, &msg);
    }

    fn next_ping(&self) -> Instant {
        let c = &self.state.config;
        let jitter_ms = u64::try_from(c.ping_jitter.as_millis()).unwrap_or(0);
        let j = if jitter_ms == 0 { 0 } else { rand::rng().random_range(0..=jitter_ms) };
        Instant::now() + c.ping_interval + Duration::from_millis(j)
    }

    /// Not `async fn`, which would keep a second copy of its arguments in its
    /// future (see [`serve`]).
    #[expect(clippy::manual_async_fn, reason = "an async fn keeps its arguments")]
    fn loop_<'a>(
        &'a mut self,
        rx: &'a mut mpsc::Receiver<Queued>,
        last: &'a mut u64,
    ) -> impl Future<Output = Result<(), Closing>> + Send + 'a {
        async move {
            self.must_read = true;
            Box::pin(self.pump(last, u64::MAX)).await?;
            self.flush().await?;
            let mut ping_at = self.next_ping();
            let mut pong_by: Option<Instant> = None;
            // One timer for the next ping and the pong deadline, whichever is
            // first: it is re-armed only when that changes (or it fired).
            let timer = sleep_until(ping_at);
            tokio::pin!(timer);
            loop {
                {
                    let due = pong_by.map_or(ping_at, |p| p.min(ping_at));
                    let due = self.retry_at.map_or(due, |r| r.min(due));
                    if timer.deadline() != due || timer.is_elapsed() {
                        timer.as_mut().reset(due);
                    }
                }
                // Only waiting happens here; the work is boxed (see `serve`).
                let out = tokio::select! {
                    biased;
                    // A backlog to read, or the connection is closing (`close`
                    // wakes the writer too): closing comes first.
                    () = self.handle.answers().woken() => {
                        if self.handle.is_closed() {
                            return Ok(());
                        }
                        // Asked to (live deliveries from other nodes may have
                        // been missed), or the store watches nothing (a live
                        // delivery may have been dropped for a full queue):
                        // read the store.
                        let reread = self.handle.hold.take_reread();
                        if reread || !self.handle.hold.watched() {
                            self.must_read = true;
                        }
                        Box::pin(self.answer()).await?;
                        // Answers may wake it at every turn: the queue is
                        // served here too, so it never starves; and first,
                        // since what it holds was handed over before the
                        // held frames that woke it (a peer's `Presence`
                        // before that peer's first frames; a stored
                        // `Deliver` pumps the held frames below it itself).
                        let mut n = 0;
                        while n < WRITE_BATCH
                            && let Ok(out) = rx.try_recv()
                        {
                            Box::pin(self.deliver(*out, last)).await?;
                            n += 1;
                        }
                        Box::pin(self.pump(last, u64::MAX)).await?;
                        self.flush().await?;
                        continue;
                    }
                    // Acks made room for what waits in the store or the hold.
                    () = self.link.room.notified(), if self.behind => {
                        Box::pin(self.pump(last, u64::MAX)).await?;
                        self.flush().await?;
                        continue;
                    }
                    () = &mut timer => None,
                    out = rx.recv() => match out {
                        Some(out) => Some(out),
                        None => return Ok(()),
                    },
                };
                if let Some(out) = out {
                    Box::pin(self.deliver(*out, last)).await?;
                    // Whatever else is ready goes out in the same write.
                    let mut n = 1;
                    while n < WRITE_BATCH
                        && let Ok(out) = rx.try_recv()
                    {
                        Box::pin(self.deliver(*out, last)).await?;
                        n += 1;
                    }
                    self.flush().await?;
                    continue;
                }
                let now = Instant::now();
                if self.retry_at.is_some_and(|r| r <= now) {
                    Box::pin(self.pump(last, u64::MAX)).await?;
                    self.flush().await?;
                }
                if pong_by.is_some_and(|p| p <= now) {
                    if self.link.liveness.load(Ordering::Acquire) != 0 {
                        return Err(Closing::new(ErrorCode::PingTimeout, "no pong in time"));
                    }
                    pong_by = None;
                }
                if ping_at <= now {
                    ping_at = self.next_ping();
                    // While a pong is still due, its deadline decides.
                    if pong_by.is_none() {
                        let nonce = rand::rng().random_range(1..u64::MAX);
                        self.link.liveness.store(nonce, Ordering::Release);
                        Box::pin(self.send(&Frame::Ping { nonce })).await?;
                        pong_by = Some(Instant::now() + self.state.config.pong_timeout);
                        if self.state.cluster.is_some() {
                            // In a cluster a live delivery from another node
                            // is a hint that may be lost with its publish:
                            // the queue is read once a ping interval anyway.
                            self.must_read = true;
                            Box::pin(self.pump(last, u64::MAX)).await?;
                            self.flush().await?;
                        }
                    }
                }
            }
        }
    }

    /// Buffer what another task handed over; the caller flushes.
    async fn deliver(&mut self, out: Outbound, last: &mut u64) -> Result<(), Closing> {
        match out {
            Outbound::Frame(f) => self.feed(&f).await,
            Outbound::Deliver { id, from, payload, epoch } => {
                if id <= *last || epoch != self.epoch {
                    // Sent already, or an id of another store epoch than
                    // the device was told (its frame, if kept, is read
                    // from the store under the right one).
                    return Ok(());
                }
                // It is in the store (or being written there): nothing is
                // held under a lower id from now on.
                self.known = self.known.max(id);
                self.handle.hold.raise_floor(id, true);
                if self.room() == 0 {
                    // Read from there once acks make room.
                    self.behind = true;
                    return Ok(());
                }
                if id > *last + 1 {
                    // Something before it may be held, or only in the
                    // store: those first. Never send past a gap: if that
                    // stopped short (closing, the window is full, the store
                    // refused a read), the frame is read from the store later.
                    let complete = Box::pin(self.pump(last, id - 1)).await?;
                    if !complete || self.room() == 0 {
                        self.behind = true;
                        return Ok(());
                    }
                }
                // The store applies enqueues in the order they are
                // submitted and the fetch was submitted after this one's
                // id was taken (and after the write of every held frame
                // below it that left the hold), so what it did not return,
                // and the hold does not have, is gone (acknowledged,
                // expired, revoked) or was refused.
                if id > *last {
                    self.window.push(id, payload.len());
                    self.feed_deliver(id, from, &payload).await?;
                    *last = id;
                    self.link.delivered.store(id, Ordering::Release);
                    self.link.activity.touch();
                }
                Ok(())
            }
        }
    }

    /// Send what other tasks decided about this connection's `Send`s: the
    /// one place a `Send` is answered (where `Ok`s can be coalesced).
    async fn answer(&mut self) -> Result<(), Closing> {
        // At level 2 the accepted ids go as runs of one `Oks` (PROTOCOL
        // §6.5), sent before any refusal that follows them, so the answers
        // keep their order; at level 1 one `Ok` each.
        let mut runs = Vec::new();
        for a in self.handle.answers().take() {
            let f = match a {
                Answer::Ok(ref_id) if self.oks => {
                    if push_ok(&mut runs, ref_id) {
                        continue;
                    }
                    if !runs.is_empty() {
                        self.feed(&Frame::Oks { runs: std::mem::take(&mut runs) }).await?;
                    }
                    if push_ok(&mut runs, ref_id) {
                        continue;
                    }
                    // An id no run can hold (`u64::MAX`).
                    Frame::Ok { ref_id }
                }
                Answer::Ok(ref_id) => Frame::Ok { ref_id },
                Answer::Refused(ref_id, e) => {
                    if !runs.is_empty() {
                        self.feed(&Frame::Oks { runs: std::mem::take(&mut runs) }).await?;
                    }
                    let (code, message, limit) = refusal(&e);
                    if let Some(l) = limit {
                        self.state.metrics.limit_refused(l);
                    }
                    self.state.metrics.refused(code);
                    Frame::Error { code, ref_id, message: message.to_owned() }
                }
            };
            self.feed(&f).await?;
        }
        if !runs.is_empty() {
            self.feed(&Frame::Oks { runs }).await?;
        }
        Ok(())
    }

    /// Send, in id order, the held frames and the stored ones with ids
    /// after `last` up to `until`, while the window has room. The store is
    /// read only when it may hold something not read yet (the hold's mark,
    /// or a live delivery of a stored frame, passed what was read). Whether
    /// it sent everything up to `until` (see [`Self::backlog`] for when not).
    async fn pump(&mut self, last: &mut u64, until: u64) -> Result<bool, Closing> {
        loop {
            if self.handle.is_closed() {
                return Ok(false);
            }
            let k = self.handle.hold.mark.load(Ordering::Acquire).max(self.known);
            if k <= self.fetched && !self.must_read {
                let done = match self.send_held(last, until, true).await? {
                    Held::All => true,
                    Held::Stopped => false,
                    // The store took a frame for this device meanwhile:
                    // read it first (its id is below the held ones after it).
                    Held::ReadStore => continue,
                };
                if done && until == u64::MAX {
                    self.behind = false;
                }
                return Ok(done);
            }
            match Box::pin(self.backlog(last, until)).await? {
                Read::Through => {
                    self.fetched = self.fetched.max(k);
                    self.must_read = false;
                }
                Read::More => {}
                // Stored frames past `until` wait for the next read.
                Read::Until => {
                    return Ok(matches!(self.send_held(last, until, false).await?, Held::All));
                }
                Read::Stopped => return Ok(false),
            }
        }
    }

    /// Send the held frames with ids after `last` up to `until` while the
    /// window has room; whether it sent them all.
    /// `check`: whether the store was read through (not in the middle of a
    /// page, whose frames' ids are all below any taken after the read).
    async fn send_held(
        &mut self,
        last: &mut u64,
        until: u64,
        check: bool,
    ) -> Result<Held, Closing> {
        loop {
            let room = self.room();
            if room == 0 {
                self.behind = true;
                return Ok(Held::Stopped);
            }
            let ready = self.handle.hold.ready(*last, until, room.min(WRITE_BATCH));
            if ready.is_empty() {
                return Ok(Held::All);
            }
            // A frame the hold did not take went to the store after the
            // last read (this loop pauses on every write): its id is below
            // the held frames taken after it, so the store is read before
            // any of these is sent. Sending them first would move `last`
            // past it, and the device's ack would delete it unsent.
            // A frame held under an id from a block the store leased (the
            // Redis store) may have frames other nodes wrote below it:
            // those are read first.
            let below = ready.iter().map(|r| r.3).max().unwrap_or(0);
            if check
                && self.handle.hold.mark.load(Ordering::Acquire).max(self.known).max(below)
                    > self.fetched
            {
                self.known = self.known.max(below);
                return Ok(Held::ReadStore);
            }
            for (id, frame, len, _) in ready {
                self.same_epoch()?;
                self.window.push(id, len);
                feed_raw(&mut self.sink, frame, &self.state)
                    .await
                    .map_err(|()| Closing::new(ErrorCode::Other(0), WRITE_FAILED))?;
                *last = id;
                self.link.delivered.store(id, Ordering::Release);
                self.link.activity.touch();
            }
        }
    }

    async fn send(&mut self, f: &Frame) -> Result<(), Closing> {
        write(&mut self.sink, f, &self.state)
            .await
            .map_err(|()| Closing::new(ErrorCode::Other(0), WRITE_FAILED))
    }

    async fn feed(&mut self, f: &Frame) -> Result<(), Closing> {
        feed(&mut self.sink, f, &self.state)
            .await
            .map_err(|()| Closing::new(ErrorCode::Other(0), WRITE_FAILED))
    }

    /// Buffer a `Deliver` of `payload`, copied once, into the frame.
    async fn feed_deliver(
        &mut self,
        id: u64,
        from: DeviceId,
        payload: &[u8],
    ) -> Result<(), Closing> {
        self.same_epoch()?;
        let failed = |()| Closing::new(ErrorCode::Other(0), WRITE_FAILED);
        let frame = encode_deliver(id, &from, payload).map_err(|_| failed(()))?;
        feed_raw(&mut self.sink, frame.into(), &self.state).await.map_err(failed)
    }

    /// Every delivery id is checked against the epoch the device was told,
    /// after the store answer it came from (the store moves its epoch before
    /// it answers anything under the new one): under another, the
    /// connection closes instead (the device reconnects and hears it).
    fn same_epoch(&self) -> Result<(), Closing> {
        if self.state.store.epoch() == self.epoch {
            Ok(())
        } else {
            Err(Closing::new(ErrorCode::ShuttingDown, NEW_EPOCH))
        }
    }

    async fn flush(&mut self) -> Result<(), Closing> {
        flush(&mut self.sink, &self.state)
            .await
            .map_err(|()| Closing::new(ErrorCode::Other(0), WRITE_FAILED))
    }

    /// How many more deliveries the window takes now.
    fn room(&mut self) -> usize {
        self.window.release(self.link.acked.load(Ordering::Acquire));
        let c = &self.state.config;
        self.window.room(c.delivery_window_frames, c.delivery_window_bytes)
    }

    /// Read one page of stored frames after `last` and send them, with the
    /// held frames between them, in id order, up to `until`, while the
    /// window has room (buffered: the caller flushes).
    async fn backlog(&mut self, last: &mut u64, until: u64) -> Result<Read, Closing> {
        if self.handle.is_closed() {
            return Ok(Read::Stopped);
        }
        let room = self.room();
        if room == 0 {
            self.behind = true;
            return Ok(Read::Stopped);
        }
        // Out with what is buffered before waiting for the store.
        self.flush().await?;
        let limit = BACKLOG_PAGE.min(room);
        let page = match self.state.store.fetch(self.device, *last, limit).await {
            Ok(page) => {
                self.retry_at = None;
                page
            }
            Err(e) => {
                if self.retry_at.is_none() {
                    warn!(device = %self.device, error = %e, "backlog read refused; retrying");
                    let message = "the relay cannot read its store right now; \
                                   deliveries resume when it can"
                        .to_owned();
                    let f = Frame::Error { code: ErrorCode::StoreUnavailable, ref_id: 0, message };
                    self.feed(&f).await?;
                }
                self.retry_at = Some(Instant::now() + STORE_RETRY);
                return Ok(Read::Stopped);
            }
        };
        let full = page.len() == limit;
        for q in page {
            if q.id > until {
                return Ok(Read::Until);
            }
            // Nothing is held under a lower id from now on; held frames
            // below it go first (a held frame keeps its id when it is
            // written, so it may be in both: sent once).
            if q.id > *last {
                self.handle.hold.raise_floor(q.id, true);
            }
            if q.id > *last + 1
                && !matches!(self.send_held(last, q.id - 1, false).await?, Held::All)
            {
                return Ok(Read::Stopped);
            }
            if q.id <= *last {
                continue;
            }
            if self.room() == 0 {
                self.behind = true;
                return Ok(Read::Stopped);
            }
            self.window.push(q.id, q.payload.len());
            self.feed_deliver(q.id, q.from, &q.payload).await?;
            *last = q.id;
            self.link.delivered.store(q.id, Ordering::Release);
            self.link.activity.touch();
        }
        Ok(if full { Read::More } else { Read::Through })
    }
}

/// How far [`Writer::send_held`] got.
enum Held {
    /// Every held frame up to its limit is sent.
    All,
    /// It stopped: the window is full.
    Stopped,
    /// The store may hold a frame below the held ones: read it first.
    ReadStore,
}

/// How far one read of the store got ([`Writer::backlog`]).
enum Read {
    /// Everything it had after `last` is sent: nothing more to read.
    Through,
    /// A full page was sent: read the next one.
    More,
    /// It reached a frame past `until`.
    Until,
    /// It stopped: for the window (then `behind` is set), because the
    /// connection is closing, or because the store refused the read (then
    /// the device is told, once, and the read is tried again after
    /// [`STORE_RETRY`]).
    Stopped,
}
