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
//! Answers to accepted `Send`s ([`Outbound::Accepted`]) go out as one `Ok`
//! each, or, to a device that speaks level 2, merged: every answer waiting
//! in the queue when the writer takes a batch goes out as one `Oks`, in the
//! place of the first of them ([`coalesce`]). Nothing waits for more.
//!
//! When the store cannot be read (it is down, or busy) the connection stays
//! open: the device is told once (`Error{store_unavailable, ref_id = 0}`),
//! nothing is delivered past the gap, and the backlog is read again every
//! [`STORE_RETRY`] until it works.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tandem_proto::frame::{Frame, push_ok};
use tandem_proto::{DeviceId, ErrorCode};
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, sleep_until};
use tracing::warn;

use super::{Activity, Closing, Sink, close, feed, flush, write};
use crate::registry::{ConnHandle, Outbound, Queued};
use crate::state::State;

/// The reason recorded when a write fails or times out.
pub(super) const WRITE_FAILED: &str = "write failed or timed out";
/// Frames read from the store per backlog page.
const BACKLOG_PAGE: usize = 128;
/// Most queued frames the writer buffers before it flushes.
const WRITE_BATCH: usize = 64;
/// Most items the writer takes from its queue for one batch (answers merged
/// into an `Oks` count as one frame towards [`WRITE_BATCH`]).
const MAX_DRAIN: usize = 4 * WRITE_BATCH;
/// How long the writer waits before reading the backlog again after the
/// store refused a read.
pub(super) const STORE_RETRY: Duration = Duration::from_secs(1);

pub(super) struct Writer {
    pub(super) sink: Sink,
    pub(super) state: Arc<State>,
    pub(super) handle: ConnHandle,
    pub(super) device: DeviceId,
    pub(super) liveness: Arc<AtomicU64>,
    pub(super) delivered: Arc<AtomicU64>,
    pub(super) activity: Arc<Activity>,
    /// The highest delivery id the device acknowledged on this connection
    /// (set by the reader, clamped to `delivered`).
    pub(super) acked: Arc<AtomicU64>,
    /// Notified by the reader on every `Ack`.
    pub(super) room: Arc<Notify>,
    /// Deliveries sent and not acknowledged yet.
    pub(super) window: Window,
    /// The device speaks level 2: answers to its `Send`s go out as `Oks`.
    pub(super) oks: bool,
    /// Some delivery was left in the store for want of room in the window.
    pub(super) behind: bool,
    /// The store refused the last backlog read: when to read it again.
    pub(super) retry_at: Option<Instant>,
}

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
        if self.handle.reason().is_some_and(|(c, _)| c == ErrorCode::ShuttingDown) {
            let hint =
                u32::try_from(self.state.config.restart_hint.as_millis()).unwrap_or(u32::MAX);
            let _ =
                write(&mut self.sink, &Frame::Restarting { reconnect_after_ms: hint }, &self.state)
                    .await;
        }
        // Flush what is queued (answers merged as in a batch), then close.
        let mut queued = Vec::new();
        while let Ok(out) = rx.try_recv() {
            queued.push(out);
        }
        if self.oks {
            coalesce(&mut queued);
        }
        for out in queued {
            let f = match *out {
                Outbound::Frame(f) => f,
                Outbound::Accepted(id) => Frame::Ok { ref_id: id },
                Outbound::Deliver { .. } => continue,
            };
            if write(&mut self.sink, &f, &self.state).await.is_err() {
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
            Box::pin(self.backlog(last, u64::MAX)).await?;
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
                    () = self.handle.wake.notified() => {
                        if self.handle.is_closed() {
                            return Ok(());
                        }
                        Box::pin(self.backlog(last, u64::MAX)).await?;
                        self.flush().await?;
                        continue;
                    }
                    // Acks made room for what waits in the store.
                    () = self.room.notified(), if self.behind => {
                        Box::pin(self.backlog(last, u64::MAX)).await?;
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
                    // Whatever else is ready goes out in the same write.
                    let batch = self.drain(out, rx);
                    for out in batch {
                        Box::pin(self.deliver(*out, last)).await?;
                    }
                    self.flush().await?;
                    continue;
                }
                let now = Instant::now();
                if self.retry_at.is_some_and(|r| r <= now) {
                    Box::pin(self.backlog(last, u64::MAX)).await?;
                    self.flush().await?;
                }
                if pong_by.is_some_and(|p| p <= now) {
                    if self.liveness.load(Ordering::Acquire) != 0 {
                        return Err(Closing::new(ErrorCode::PingTimeout, "no pong in time"));
                    }
                    pong_by = None;
                }
                if ping_at <= now {
                    ping_at = self.next_ping();
                    // While a pong is still due, its deadline decides.
                    if pong_by.is_none() {
                        let nonce = rand::rng().random_range(1..u64::MAX);
                        self.liveness.store(nonce, Ordering::Release);
                        Box::pin(self.send(&Frame::Ping { nonce })).await?;
                        pong_by = Some(Instant::now() + self.state.config.pong_timeout);
                    }
                }
            }
        }
    }

    /// `first` and what else is ready in the queue, up to [`WRITE_BATCH`]
    /// frames; for a level-2 device with the answers merged ([`coalesce`]).
    fn drain(&self, first: Queued, rx: &mut mpsc::Receiver<Queued>) -> Vec<Queued> {
        let mut batch = vec![first];
        let mut frames = 1;
        while frames < WRITE_BATCH
            && batch.len() < MAX_DRAIN
            && let Ok(out) = rx.try_recv()
        {
            if !(self.oks && matches!(*out, Outbound::Accepted(_))) {
                frames += 1;
            }
            batch.push(out);
        }
        if self.oks {
            coalesce(&mut batch);
        }
        batch
    }

    /// Buffer what another task handed over; the caller flushes.
    async fn deliver(&mut self, out: Outbound, last: &mut u64) -> Result<(), Closing> {
        match out {
            Outbound::Frame(f) => self.feed(&f).await,
            Outbound::Accepted(id) => self.feed(&Frame::Ok { ref_id: id }).await,
            Outbound::Deliver { id, from, payload } => {
                if id <= *last {
                    return Ok(());
                }
                if self.room() == 0 {
                    // It is in the store: read from there once acks make room.
                    self.behind = true;
                    return Ok(());
                }
                if id > *last + 1 {
                    // Something before it may be only in the store: catch up first.
                    let complete = Box::pin(self.backlog(last, id - 1)).await?;
                    if !complete && id > *last + 1 {
                        // The backlog stopped short (closing, the window is
                        // full, or the store refused the read): never send
                        // past a gap. The frame is read from the store later.
                        return Ok(());
                    }
                    if self.room() == 0 {
                        self.behind = true;
                        return Ok(());
                    }
                }
                // The store applies enqueues in id order, and the backlog's
                // fetch was submitted after the enqueue of every lower id
                // (that id was taken first), so it saw each of them: what
                // it did not return is gone (acknowledged, expired,
                // revoked) or was refused.
                if id > *last {
                    self.window.push(id, payload.len());
                    self.feed(&Frame::Deliver { delivery_id: id, from, payload }).await?;
                    *last = id;
                    self.delivered.store(id, Ordering::Release);
                    self.activity.touch();
                }
                Ok(())
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

    async fn flush(&mut self) -> Result<(), Closing> {
        flush(&mut self.sink, &self.state)
            .await
            .map_err(|()| Closing::new(ErrorCode::Other(0), WRITE_FAILED))
    }

    /// How many more deliveries the window takes now.
    fn room(&mut self) -> usize {
        self.window.release(self.acked.load(Ordering::Acquire));
        let c = &self.state.config;
        self.window.room(c.delivery_window_frames, c.delivery_window_bytes)
    }

    /// Deliver stored frames after `last` up to `until`, in order, while the
    /// window has room (buffered: the caller flushes after the last page).
    /// Whether it read everything up to `until`: not when it stopped for the
    /// window (then `behind` is set), when the connection is closing, or when
    /// the store refused a read (then the device is told, once, and the read
    /// is tried again after [`STORE_RETRY`]).
    async fn backlog(&mut self, last: &mut u64, until: u64) -> Result<bool, Closing> {
        loop {
            if self.handle.is_closed() {
                return Ok(false);
            }
            let room = self.room();
            if room == 0 {
                self.behind = true;
                return Ok(false);
            }
            // Out with the previous page before waiting for the store.
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
                        let f =
                            Frame::Error { code: ErrorCode::StoreUnavailable, ref_id: 0, message };
                        self.feed(&f).await?;
                    }
                    self.retry_at = Some(Instant::now() + STORE_RETRY);
                    return Ok(false);
                }
            };
            let full = page.len() == limit;
            for q in page {
                if q.id > until {
                    return Ok(true);
                }
                if self.room() == 0 {
                    self.behind = true;
                    return Ok(false);
                }
                self.window.push(q.id, q.payload.len());
                self.feed(&Frame::Deliver { delivery_id: q.id, from: q.from, payload: q.payload })
                    .await?;
                *last = q.id;
                self.delivered.store(q.id, Ordering::Release);
                self.activity.touch();
            }
            if !full {
                // Everything stored is out.
                self.behind = false;
                return Ok(true);
            }
        }
    }
}

/// Merge the answers to accepted `Send`s in `batch` into one `Oks`, in the
/// place of the first of them; everything else keeps its order. An id no
/// run can hold (`u64::MAX`) stays an answer of its own (`Ok`).
fn coalesce(batch: &mut Vec<Queued>) {
    if !batch.iter().any(|out| matches!(**out, Outbound::Accepted(_))) {
        return;
    }
    let mut runs = Vec::new();
    let mut at = None;
    let mut kept = Vec::with_capacity(batch.len());
    for out in batch.drain(..) {
        if let Outbound::Accepted(id) = *out
            && push_ok(&mut runs, id)
        {
            if at.is_none() {
                at = Some(kept.len());
                kept.push(out);
            }
            continue;
        }
        kept.push(out);
    }
    if let Some(slot) = at.and_then(|i| kept.get_mut(i)) {
        **slot = Outbound::Frame(Frame::Oks { runs });
    }
    *batch = kept;
}

#[cfg(test)]
mod tests {
    use tandem_proto::frame::OkRun;

    use super::*;

    fn frames(batch: Vec<Queued>) -> Vec<String> {
        batch
            .into_iter()
            .map(|out| match *out {
                Outbound::Frame(Frame::Oks { runs }) => {
                    let runs: Vec<_> =
                        runs.iter().map(|r| format!("{}+{}", r.first, r.count)).collect();
                    format!("Oks[{}]", runs.join(","))
                }
                Outbound::Frame(f) => f.frame_type().to_string(),
                Outbound::Deliver { id, .. } => format!("Deliver{id}"),
                Outbound::Accepted(id) => format!("Accepted{id}"),
            })
            .collect()
    }

    #[test]
    fn answers_merge_into_one_oks_where_the_first_was() {
        let deliver =
            |id| Box::new(Outbound::Deliver { id, from: DeviceId([1; 16]), payload: vec![] });
        let ok = |id| Box::new(Outbound::Accepted(id));
        let presence =
            Box::new(Outbound::Frame(Frame::Presence { peer: DeviceId([2; 16]), online: true }));
        let mut batch = vec![
            deliver(10),
            ok(5),
            ok(6),
            presence,
            Box::new(Outbound::Frame(Frame::Ok { ref_id: 3 })),
            ok(7),
            deliver(11),
            ok(9),
            ok(u64::MAX),
        ];
        coalesce(&mut batch);
        assert_eq!(
            frames(batch),
            [
                "Deliver10",
                "Oks[5+3,9+1]",
                "Presence",
                "Ok",
                "Deliver11",
                &format!("Accepted{}", u64::MAX)
            ]
        );
        // Nothing to merge: nothing changes.
        let mut batch = vec![deliver(1), Box::new(Outbound::Frame(Frame::Ok { ref_id: 2 }))];
        coalesce(&mut batch);
        assert_eq!(frames(batch), ["Deliver1", "Ok"]);
        let mut batch = vec![ok(4)];
        coalesce(&mut batch);
        assert!(
            matches!(*batch[0], Outbound::Frame(Frame::Oks { ref runs }) if *runs == [OkRun { first: 4, count: 1 }])
        );
    }
}
