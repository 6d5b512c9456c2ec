//! The task that owns the Redis connection: it connects (and reconnects),
//! learns the store epoch on every new connection before anything else runs
//! on it, and sends the operations callers submitted, in the order they were
//! submitted, one pipeline per batch.
//!
//! Up to [`MAX_IN_FLIGHT`] batches are on their way at once: a batch goes as
//! soon as it is gathered and fewer than that are unanswered, and is handed
//! to the connection before the next one is made, so the one connection
//! writes them, and Redis runs them, in submission order; their answers come
//! back in that order. Past the bound, the next batch gathers in the channel
//! (up to [`MAX_BATCH`] operations). Any connection error, timeout
//! ([`RESPONSE_TIMEOUT`]), lost script (`NOSCRIPT`) or epoch guard refusal
//! (`TANDEM_EPOCH`) in one batch drops the connection and refuses the
//! batches still in flight behind it with [`StoreError::Unavailable`] (they
//! may have been applied): the store is down (every call refused at once)
//! until a new connection has read the epoch again. An idle connection is
//! checked every [`HEARTBEAT`] (the epoch base still there), so
//! [`crate::store::Store::health`] notices a dead or wiped Redis without
//! traffic.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures_util::stream::{FuturesOrdered, StreamExt};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};
use tokio::sync::{mpsc, oneshot, watch};

use super::keys::Keys;
use super::scripts::Script;
use super::switches::{Announced, left_behind, switched};
use super::target::Target;
use crate::store::StoreError;

/// Longest a connection attempt or a batch's answer may take.
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// An idle connection's check.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Most operations in one pipeline.
pub(super) const MAX_BATCH: usize = 512;
/// Most pipelines sent and not answered yet.
pub(super) const MAX_IN_FLIGHT: usize = 4;
/// The first wait before reconnecting, doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between two attempts to reach Redis: a Redis that comes
/// back is used within it (devices resume within about a second of it). An
/// attempt at a server that refuses costs a round trip; one that does not
/// answer waits out [`RESPONSE_TIMEOUT`] anyway.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// What one operation sends.
pub(super) enum Call {
    /// A script, with its own arguments (the namespace and the epoch base
    /// go before them).
    Script(Script, Vec<Vec<u8>>),
    /// A plain command.
    Cmd(redis::Cmd),
}

/// One operation and where its answer goes.
pub(super) struct Job {
    pub(super) call: Call,
    /// Frames it writes (for [`crate::store::StoreStats`]).
    pub(super) frames: u64,
    pub(super) reply: Box<dyn FnOnce(Result<Value, StoreError>) + Send>,
}

/// What the store and its driver share.
#[derive(Debug)]
pub(super) struct Shared {
    /// The store epoch of the current (or last) connection; 0 before the
    /// first.
    pub(super) epoch: AtomicU64,
    /// Why the store cannot take operations now; `None` while it can.
    pub(super) down: Mutex<Option<String>>,
    /// Told every new epoch.
    pub(super) epoch_tx: watch::Sender<u64>,
    pub(super) durable_commits: AtomicU64,
    pub(super) frames_written: AtomicU64,
}

impl Shared {
    pub(super) fn new() -> Self {
        Self {
            epoch: AtomicU64::new(0),
            down: Mutex::new(Some("not connected to Redis yet".into())),
            epoch_tx: watch::channel(0).0,
            durable_commits: AtomicU64::new(0),
            frames_written: AtomicU64::new(0),
        }
    }

    pub(super) fn down(&self) -> Option<String> {
        self.down.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn set_down(&self, why: Option<String>) {
        *self.down.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = why;
    }
}

/// One open connection and what was read on it first.
struct Live {
    conn: MultiplexedConnection,
    /// The server's address (left when Sentinel announces another primary),
    /// and the primary Sentinel had announced last before it was asked for it.
    addr: redis::ConnectionAddr,
    announced: Option<Announced>,
    /// The epoch base it read (the scripts' guard compares it).
    base: Vec<u8>,
    /// The loaded scripts' hashes, in [`Script::ALL`] order.
    shas: Vec<String>,
}

/// The connection's owner.
pub(super) struct Driver {
    pub(super) target: Target,
    pub(super) keys: Keys,
    pub(super) shared: Arc<Shared>,
    pub(super) rx: mpsc::Receiver<Job>,
    /// Told how the first connection went.
    pub(super) first: Option<oneshot::Sender<Result<(), StoreError>>>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

impl Driver {
    /// Connect, serve, reconnect, until the store is dropped.
    pub(super) async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.open().await {
                Ok(live) => {
                    backoff = MIN_BACKOFF;
                    self.shared.set_down(None);
                    if let Some(first) = self.first.take() {
                        let _ = first.send(Ok(()));
                    }
                    let Some(why) = self.serve(live).await else { return };
                    tracing::warn!("redis store down: {why}");
                    self.shared.set_down(Some(why));
                    // What waits was submitted before the store went down:
                    // refused, like what comes until it is up again.
                    while let Ok(job) = self.rx.try_recv() {
                        (job.reply)(Err(unavailable("connection lost")));
                    }
                }
                Err(e) => {
                    self.shared.set_down(Some(e.to_string()));
                    if let Some(first) = self.first.take() {
                        let _ = first.send(Err(e));
                        return;
                    }
                }
            }
            // Wait before the next attempt, refusing what comes meanwhile.
            let wake = tokio::time::sleep(backoff);
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    () = &mut wake => break,
                    job = self.rx.recv() => match job {
                        Some(job) => (job.reply)(Err(unavailable(
                            self.shared.down().unwrap_or_default(),
                        ))),
                        None => return,
                    },
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// A new connection: the epoch base (made if missing), the server's
    /// run id, the scripts; then the epoch, published if it changed.
    async fn open(&mut self) -> Result<Live, StoreError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let announced = self.target.switches().and_then(|rx| rx.borrow().clone());
        let client = self.target.client().await?;
        let addr = client.get_connection_info().addr().clone();
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(unavailable)?;
        let fresh = rand::random::<u64>().max(1).to_string();
        let mut pipe = redis::pipe();
        pipe.cmd("HSETNX").arg(self.keys.epoch()).arg("base").arg(&fresh).ignore();
        pipe.cmd("HGET").arg(self.keys.epoch()).arg("base");
        pipe.cmd("INFO").arg("server");
        pipe.cmd("INFO").arg("memory");
        for s in Script::ALL {
            pipe.cmd("SCRIPT").arg("LOAD").arg(s.text());
        }
        let got: Vec<Value> = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        let mut got = got.into_iter();
        let base = got.next().and_then(|v| redis::from_redis_value::<Vec<u8>>(v).ok());
        let info = got.next().and_then(|v| redis::from_redis_value::<String>(v).ok());
        let memory = got.next().and_then(|v| redis::from_redis_value::<String>(v).ok());
        let (Some(base), Some(info), Some(memory)) = (base, info, memory) else {
            return Err(unavailable("no epoch base or server info"));
        };
        warn_if_evicting(&memory);
        let run_id = info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| unavailable("INFO server gave no run_id"))?;
        let shas: Vec<String> = got
            .map(|v| redis::from_redis_value::<String>(v).map_err(unavailable))
            .collect::<Result<_, _>>()?;
        if shas.len() != Script::ALL.len() {
            return Err(unavailable("the scripts did not load"));
        }
        let epoch = epoch_of(&base, run_id);
        let before = self.shared.epoch.swap(epoch, Ordering::AcqRel);
        if before != epoch {
            if before != 0 {
                tracing::warn!("redis store epoch changed (Redis restarted, failed over or wiped)");
            }
            self.shared.epoch_tx.send_replace(epoch);
        }
        Ok(Live { conn, addr, announced, base, shas })
    }

    /// Serve on `live` until it fails (the reason) or the store is dropped
    /// (`None`, once what is in flight has been answered).
    async fn serve(&mut self, mut live: Live) -> Option<String> {
        let mut flight = Flight::default();
        let mut open = true;
        let mut switches = self.target.switches();
        loop {
            if let Some(rx) = &switches
                && left_behind(rx.borrow().as_ref(), live.announced.as_ref(), &live.addr)
            {
                let why = format!("redis: sentinel announced a new primary; leaving {}", live.addr);
                flight.refuse(&why);
                return Some(why);
            }
            if !open && flight.is_empty() {
                return None;
            }
            tokio::select! {
                biased;
                Some(answers) = flight.answers.next(), if !flight.is_empty() => {
                    let Some(batch) = flight.batches.pop_front() else { continue };
                    if let Err(why) = self.finish(&live, batch, answers) {
                        flight.refuse(&why);
                        return Some(why);
                    }
                }
                job = self.rx.recv(), if open && flight.batches.len() < MAX_IN_FLIGHT => {
                    let Some(first) = job else {
                        open = false;
                        continue;
                    };
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match self.rx.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    flight.launch(self.pipeline(&live, &batch), &live.conn, batch).await;
                }
                changed = switched(&mut switches) => {
                    if changed.is_err() {
                        switches = None;
                    }
                }
                () = tokio::time::sleep(HEARTBEAT), if open && flight.is_empty() => {
                    if let Err(why) = self.heartbeat(&mut live).await {
                        return Some(why);
                    }
                }
            }
        }
    }

    /// The epoch base is still the one this connection read.
    async fn heartbeat(&self, live: &mut Live) -> Result<(), String> {
        let got: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(self.keys.epoch())
            .arg("base")
            .query_async(&mut live.conn)
            .await
            .map_err(|e| format!("redis: {e}"))?;
        if got.as_deref() == Some(&live.base[..]) {
            Ok(())
        } else {
            Err("redis: the store epoch changed (its base is gone or another)".into())
        }
    }

    /// One batch as one pipeline, the epoch base's check last.
    fn pipeline(&self, live: &Live, batch: &[Job]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for job in batch {
            match &job.call {
                Call::Script(s, args) => {
                    let sha = live.shas.get(s.index()).map_or("", String::as_str);
                    pipe.cmd("EVALSHA").arg(sha).arg(0).arg(&self.keys.ns).arg(&live.base[..]);
                    for a in args {
                        pipe.arg(&a[..]);
                    }
                }
                Call::Cmd(c) => {
                    pipe.add_command(c.clone());
                }
            }
        }
        // Last, the epoch base: still the connection's, so no wipe happened
        // before or during the batch, and what its reads found belongs to
        // this epoch (a wipe deletes the base; a new one is another).
        pipe.cmd("HGET").arg(self.keys.epoch()).arg("base");
        pipe
    }

    /// Answer each job of a batch from its pipeline's answers; the reason
    /// to drop the connection, if any.
    fn finish(
        &self,
        live: &Live,
        batch: Vec<Job>,
        answers: redis::RedisResult<Vec<Value>>,
    ) -> Result<(), String> {
        let mut writes = false;
        let mut frames = 0;
        for job in &batch {
            frames += job.frames;
            writes |= matches!(job.call, Call::Script(s, _) if s.writes());
        }
        let answers = match answers {
            Ok(mut a) if a.len() == batch.len() + 1 => {
                let base = a.pop();
                if !matches!(&base, Some(Value::BulkString(b)) if *b == live.base) {
                    let why = "redis: the store epoch changed (its base is gone or another)";
                    for (job, v) in batch.into_iter().zip(a) {
                        // Writes checked the base themselves: their answers
                        // stand. Reads may have seen another epoch's data.
                        let guarded = matches!(job.call, Call::Script(s, _) if s.writes());
                        let r = if guarded { answer(v) } else { Err(unavailable(why)) };
                        (job.reply)(r);
                    }
                    return Err(why.into());
                }
                a
            }
            Ok(_) => {
                for job in batch {
                    (job.reply)(Err(unavailable("a reply went missing")));
                }
                return Err("redis: a pipeline's replies did not match".into());
            }
            Err(e) => {
                // The commands may or may not have run (see the module docs
                // of `RedisStore`): the callers hear Unavailable.
                let why = format!("redis: {e}");
                for job in batch {
                    (job.reply)(Err(StoreError::Unavailable(format!(
                        "{why} (the operation may have been applied)"
                    ))));
                }
                return Err(why);
            }
        };
        if writes {
            self.shared.durable_commits.fetch_add(1, Ordering::Relaxed);
            self.shared.frames_written.fetch_add(frames, Ordering::Relaxed);
        }
        let mut failed = None;
        for (job, v) in batch.into_iter().zip(answers) {
            let r = answer(v);
            if let Err(StoreError::Unavailable(why)) = &r {
                failed.get_or_insert_with(|| why.clone());
            }
            (job.reply)(r);
        }
        failed.map_or(Ok(()), Err)
    }
}

/// A pipeline's answers, on their way.
type Answers = Pin<Box<dyn Future<Output = redis::RedisResult<Vec<Value>>> + Send>>;

/// The batches sent and not answered yet, oldest first, with their answers
/// (which come in the same order: one connection).
#[derive(Default)]
struct Flight {
    answers: FuturesOrdered<Answers>,
    batches: VecDeque<Vec<Job>>,
}

impl Flight {
    fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Send `pipe` for `batch` on `conn`. The pipeline is handed to the
    /// connection here (its future polled once), before the caller makes
    /// the next batch, so batches reach Redis in the order they were made.
    async fn launch(
        &mut self,
        pipe: redis::Pipeline,
        conn: &MultiplexedConnection,
        batch: Vec<Job>,
    ) {
        let mut conn = conn.clone();
        let mut answers: Answers = Box::pin(async move { pipe.query_async(&mut conn).await });
        let first = std::future::poll_fn(|cx| Poll::Ready(answers.as_mut().poll(cx))).await;
        if let Poll::Ready(done) = first {
            answers = Box::pin(std::future::ready(done));
        }
        self.answers.push_back(answers);
        self.batches.push_back(batch);
    }

    /// Refuse every batch still in flight: the connection is dropped, so
    /// their answers will not be read (they may have been applied).
    fn refuse(&mut self, why: &str) {
        for job in self.batches.drain(..).flatten() {
            (job.reply)(Err(StoreError::Unavailable(format!(
                "{why} (an earlier operation failed; this one may have been applied)"
            ))));
        }
    }
}

/// Warn when Redis may evict keys (a queue, the id counter) under memory
/// pressure: the store needs `maxmemory-policy noeviction`.
fn warn_if_evicting(info_memory: &str) {
    let field = |name: &str| {
        info_memory.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or_default()
    };
    let (limit, policy) = (field("maxmemory:"), field("maxmemory_policy:"));
    if limit != "0" && !limit.is_empty() && policy != "noeviction" {
        tracing::warn!(
            "redis evicts keys under memory pressure (maxmemory-policy {policy}): \
             queued frames or the delivery id counter may be lost; set noeviction"
        );
    }
}

/// One command's answer: a script refused by its epoch guard, lost by the
/// server (`NOSCRIPT`), or sent to a server that is no primary now
/// (`READONLY`, `MASTERDOWN`; in a Redis Cluster `MOVED`, `ASK`,
/// `CLUSTERDOWN`, `TRYAGAIN`) is [`StoreError::Unavailable`] (and the
/// connection is dropped); any other server error, such as a key of another
/// type under the namespace, is [`StoreError::Backend`].
fn answer(v: Value) -> Result<Value, StoreError> {
    match v {
        Value::ServerError(e) => {
            let code = e.code().to_owned();
            let text = format!("redis: {code} {}", e.details().unwrap_or_default());
            // The guard, lost scripts, a primary turned replica (after a
            // failover: Sentinel names the new one at the next connection).
            // In a Redis Cluster: the slot moved (a failover, a resharding).
            let moved = matches!(code.as_str(), "MOVED" | "ASK" | "CLUSTERDOWN" | "TRYAGAIN");
            if moved
                || matches!(code.as_str(), "TANDEM_EPOCH" | "NOSCRIPT" | "READONLY" | "MASTERDOWN")
            {
                Err(StoreError::Unavailable(text))
            } else {
                Err(StoreError::Backend(text))
            }
        }
        v => Ok(v),
    }
}

/// The store epoch of Redis server `run_id` holding epoch base `base`: the
/// same on every node, another after every restart, failover or wipe.
pub(super) fn epoch_of(base: &[u8], run_id: &str) -> u64 {
    use blake2::{Blake2s256, Digest};
    let h = Blake2s256::new()
        .chain_update(b"tandem-relay redis store epoch v1\0")
        .chain_update(base)
        .chain_update(b"\0")
        .chain_update(run_id.as_bytes())
        .finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(h.get(..8).unwrap_or(&[0; 8]));
    u64::from_be_bytes(b).max(1)
}
