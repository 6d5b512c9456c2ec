//! The Redis store: several relay nodes share their queues and routes
//! through one Redis server ([`RedisStore`]).
//!
//! # Layout and operations
//!
//! Keys are listed in [`keys`]. Every write is one Lua script ([`scripts`],
//! `lua/*.lua`), so it is atomic on the server: an enqueue checks the mutual
//! route and every limit of [`QueueLimits`], takes its delivery id
//! (`HINCRBY` of the store-wide counter `next`, kept beside the epoch base
//! in one key, so it cannot be lost without the epoch changing) and
//! stores the frame in one step, so a revocation is never raced and ids
//! are strictly increasing per recipient (and across nodes: they all `INCR`
//! the one counter). The accounts the limits are checked against (bytes per
//! sender address, per sender and recipient, in all; one-sided
//! authorisations per address) are counters the scripts keep in step, never
//! scans.
//!
//! **Queues are Redis Streams** with explicit ids `<delivery id>-0`: a
//! stream is ordered by id and read by id range (`XRANGE` for a fetch, one
//! command without a script), a cumulative ack is a prefix cut (`XTRIM
//! MINID`), entries of consecutive ids pack into listpacks (far smaller than
//! a sorted set plus a hash per frame), and `XADD` itself refuses an id at
//! or below the stream's last one, a second guard on the id order. A
//! revocation deletes single entries (`XDEL`), which is rare. The expiry
//! sweep reads the sorted set `qexp` (each non-empty queue scored by its
//! head's expiry), so it touches only queues with something due. The cost:
//! an ack, a revocation and the sweep read the entries they delete (with
//! their payloads) inside the script, to take them off the accounts (one
//! update per sender and address, not per frame). Measured on Redis 7.0
//! (`redis_costs_per_frame`, ignored): an enqueue is one `EVALSHA` of
//! about 14 µs of Redis time (16 commands inside it then; 14 since, for a
//! frame behind others in its queue), an ack of 16 frames
//! about 60 µs, whatever the payload size (64 B to 16 KiB).
//!
//! # Order, batching, errors
//!
//! One task ([`driver`]) owns the connection. Calls are submitted to it
//! when they are made (a bounded channel of [`QUEUE`] operations; past it
//! [`StoreError::Busy`] at once) and sent in that order, the ones waiting
//! together as one pipeline, up to [`driver::MAX_IN_FLIGHT`] pipelines on
//! their way at once on the one connection (Redis runs them in the order
//! they were written), so operations from one caller are applied in call
//! order. [`Enqueued::placed`] resolves with `durable`'s answer (one
//! round trip; nothing is told early).
//!
//! Redis unreachable, or an answer later than [`driver::RESPONSE_TIMEOUT`]
//! (2 s): the calls of that pipeline, and of the pipelines sent after it,
//! fail with [`StoreError::Unavailable`],
//! the store is down ([`Store::health`]) and refuses every call at once
//! until it has connected again (backing off from 100 ms to 500 ms). **A
//! failed call may have been applied** when its pipeline had reached Redis
//! and only the answer was lost: an enqueue may have stored its frame (the
//! sender, which had no `Ok`, resends it and the end-to-end layer drops the
//! copy), an ack, authorisation or revocation may have been applied (they
//! are idempotent and the relay or device repeats them). Calls refused
//! before they were sent (the store down, [`StoreError::Busy`]) did not
//! happen. Data under the namespace that is not what the store wrote (a
//! key of another type) fails the calls that touch it with
//! [`StoreError::Backend`]; the scripts check before they write.
//!
//! # Durability and `Ok`
//!
//! A script's effects are in Redis's memory and its AOF buffer when it
//! answers: an `Ok` the relay sends after a write to this store means that
//! (a held frame's `Ok` may also mean its recipient acknowledged it, and it
//! was never written: `crate::hold`), and the frame
//! is on disk as the operator's `appendfsync` says. Run Redis with
//! `appendonly yes` and `appendfsync always` for the relay's contract (an
//! `Ok` survives a crash of Redis), or `appendfsync everysec` to lose at
//! most about a second of `Ok`ed frames when Redis (not a relay node)
//! crashes. Without AOF a restart loses everything since the last snapshot.
//! Redis must not evict keys: `maxmemory-policy noeviction` (the default;
//! the store warns at connect otherwise), so a full Redis refuses writes
//! ([`StoreError::Backend`], `OOM`) instead of dropping queues or the
//! counter.
//!
//! # Store epoch
//!
//! [`Store::epoch`] is a hash of a random base kept in Redis (`base`, set
//! with `HSETNX` by the first node that connects) and the server's `run_id`
//! (`INFO server`), which is new at every Redis restart and differs on a
//! failed-over replica: every node computes the same value, and it changes
//! whenever ids may go back (a restart that lost its last writes, a restore
//! of an older copy, a failover that lost writes, a wipe: `FLUSHALL`
//! deletes the base, and the next connection makes a new one). It is read on
//! every new connection before anything else runs on it; a Redis restart
//! always breaks the connection, so no call runs under a stale epoch. Every
//! write script also checks the base against the one the connection read
//! (a wipe without a restart), and an idle connection checks it every
//! second; a mismatch drops the connection. Until a new connection has read
//! the epoch, every call is refused ([`StoreError::Unavailable`]).
//! [`Store::epoch_changed`] tells the relay each new epoch; the epoch is
//! updated before any call runs under it, so a connection that compares
//! [`Store::epoch`] with the epoch it announced after each store answer
//! never passes on an id of another epoch.
//!
//! # Not supported yet
//!
//! TLS (`rediss://`) and Redis Cluster (the keys share one hash tag, but
//! the scripts build key names they do not declare: untested there).
//! Sentinel is supported ([`target`]): a failover is a new primary with
//! another `run_id`, so a new epoch; the store leaves the old primary when a
//! sentinel announces the switch ([`switches`]), or at its first `READONLY`.
//!
//! # Held frames
//!
//! [`Store::reserve_id`] hands out ids from blocks the node leases from the
//! counter ([`pool`], which says how the ids stay increasing per
//! recipient across nodes); [`Store::enqueue_reserved`] writes held frames
//! under them (`enqueue_reserved.lua`: the enqueue's checks, plus: the
//! recipient's ownership still has the fence they were held under (when
//! nobody owns it, its latest claim had that fence: `last:<device>`, kept a
//! day, so a write held up past another node's whole connection is
//! refused; `Unavailable`, and the sender sends again); a frame whose queue
//! already holds a higher id is stored under a fresh id from the counter,
//! so a sender's frames keep their order (the relay raises the mark).
//! [`Store::watch`] raises a watched recipient's mark when an enqueue for
//! it is answered.

mod driver;
pub(crate) use self::driver::MAX_BACKOFF;
mod keys;
mod pool;
pub(crate) use self::keys::{hex as redis_hex, namespace};
mod scripts;
pub(crate) mod switches;
pub(crate) mod target;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use redis::Value;
use tandem_proto::DeviceId;
use tokio::sync::{mpsc, oneshot};

use self::driver::{Call, Driver, Job, Shared};
use self::keys::Keys;
use self::pool::Pool;
use self::scripts::Script;
use super::{
    AddrKey, Enqueued, Expired, MAX_EXPIRED_PER_SWEEP, NewFrame, QueueDepth, QueueLimits, Queued,
    Reserved, RouteLimits, Store, StoreError, StoreFuture, StoreStats, Totals,
};

/// Most operations waiting for the connection's task; past it a call is
/// refused at once with [`StoreError::Busy`].
pub const QUEUE: usize = 8 * driver::MAX_BATCH;

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "tandem:";

/// The Redis-backed [`Store`] (see the [module docs](self)).
#[derive(Debug)]
pub struct RedisStore {
    tx: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    keys: Keys,
    limits: QueueLimits,
    routes: RouteLimits,
    pool: Arc<Pool>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("redis: {e}"))
}

impl RedisStore {
    /// Connect to the Redis server at `url` (`redis://[:password@]host:port[/db]`,
    /// `unix:///path`, or the primary Sentinel names:
    /// `redis+sentinel://[:password@]host:port[,host:port...]/<primary>[/<db>]`),
    /// keys under `prefix` ([`DEFAULT_PREFIX`] when empty), and read the
    /// store epoch. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// [`StoreError::Backend`] for a bad URL, [`StoreError::Unavailable`]
    /// when Redis cannot be reached (within about 2 s).
    pub async fn connect(
        url: &str,
        queue: QueueLimits,
        routes: RouteLimits,
        prefix: &str,
    ) -> Result<Self, StoreError> {
        let (first_tx, first) = oneshot::channel();
        let store = Self::start(url, queue, routes, prefix, Some(first_tx))?;
        first.await.map_err(|_| StoreError::Closed)??;
        Ok(store)
    }

    /// [`RedisStore::connect`], except that a Redis that cannot be reached
    /// now is not an error: the store starts down ([`Store::health`] says
    /// why), refuses every call with [`StoreError::Unavailable`], keeps
    /// trying, and reports its epoch through [`Store::epoch_changed`] once
    /// it connected ([`Store::epoch`] is 0 until then).
    ///
    /// # Errors
    /// [`StoreError::Backend`] for a bad URL or outside a tokio runtime.
    pub fn connect_or_retry(
        url: &str,
        queue: QueueLimits,
        routes: RouteLimits,
        prefix: &str,
    ) -> Result<Self, StoreError> {
        Self::start(url, queue, routes, prefix, None)
    }

    fn start(
        url: &str,
        limits: QueueLimits,
        routes: RouteLimits,
        prefix: &str,
        first: Option<oneshot::Sender<Result<(), StoreError>>>,
    ) -> Result<Self, StoreError> {
        let target = target::Target::parse(url, &crate::store::redis_namespace(prefix))?;
        let rt = tokio::runtime::Handle::try_current().map_err(backend)?;
        let keys = Keys::new(prefix);
        let shared = Arc::new(Shared::new());
        let (tx, rx) = mpsc::channel(QUEUE);
        let driver = Driver { target, keys: keys.clone(), shared: Arc::clone(&shared), rx, first };
        rt.spawn(driver.run());
        Ok(Self { tx, shared, keys, limits, routes, pool: Arc::new(Pool::default()) })
    }

    /// Hand `job` to the connection's task, or refuse it at once.
    fn submit(&self, job: Job) -> Result<(), StoreError> {
        if let Some(why) = self.shared.down() {
            return Err(StoreError::Unavailable(why));
        }
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Busy,
            mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
        })
    }

    fn call<T: Send + 'static>(
        &self,
        call: Call,
        parse: impl FnOnce(Value) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<T> {
        let (reply, rx) = oneshot::channel();
        let job =
            Job { call, frames: 0, reply: Box::new(move |r| drop(reply.send(r.and_then(parse)))) };
        let sent = self.submit(job);
        Box::pin(async move {
            sent?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn read<T: Send + 'static>(
        &self,
        what: &str,
        a: &DeviceId,
        b: Option<&DeviceId>,
        parse: impl FnOnce(Value) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<T> {
        let mut args = vec![what.as_bytes().to_vec(), keys::dev(a).into_bytes()];
        if let Some(b) = b {
            args.push(keys::dev(b).into_bytes());
        }
        self.call(Call::Script(Script::Read, args), parse)
    }
}

impl RedisStore {
    /// The limits' script arguments, in `admit`'s order (`lib.lua`).
    fn limit_args(&self) -> [Vec<u8>; 7] {
        let l = &self.limits;
        [
            num(l.max_frames),
            num(l.max_bytes),
            num(l.sender_pair_max()),
            num(l.sender_total_max()),
            num(l.total_max_bytes),
            num(l.total_max_bytes.saturating_add(l.overflow_max_bytes)),
            num(l.sender_overflow_max()),
        ]
    }

    /// Ask for a block of ids for the pool.
    fn lease(&self) {
        let pool = Arc::clone(&self.pool);
        let shared = Arc::clone(&self.shared);
        let job = Job {
            call: Call::Script(Script::Lease, vec![num(pool::BLOCK)]),
            frames: 0,
            reply: Box::new(move |r| {
                // Answered on the connection that ran it, before any other:
                // its epoch is the store's now.
                let epoch = shared.epoch.load(Ordering::Acquire);
                let last = r.ok().and_then(|v| int(&v).ok()).and_then(|n| u64::try_from(n).ok());
                pool.leased(last, epoch);
            }),
        };
        if self.submit(job).is_err() {
            self.pool.leased(None, 0);
        }
    }
}

/// Decimal text, as script arguments take numbers.
fn num(n: u64) -> Vec<u8> {
    n.to_string().into_bytes()
}

fn int(v: &Value) -> Result<i64, StoreError> {
    match v {
        Value::Int(n) => Ok(*n),
        other => Err(backend(format!("expected an integer, got {other:?}"))),
    }
}

/// A count the scripts keep (never negative unless the data is foreign).
fn count(v: &Value) -> Result<u64, StoreError> {
    Ok(u64::try_from(int(v)?).unwrap_or(0))
}

fn array(v: Value) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(backend(format!("expected an array, got {other:?}"))),
    }
}

fn counts<const N: usize>(v: Value) -> Result<[u64; N], StoreError> {
    let a = array(v)?;
    let mut out = [0; N];
    if a.len() != N {
        return Err(backend("unexpected reply length"));
    }
    for (o, v) in out.iter_mut().zip(&a) {
        *o = count(v)?;
    }
    Ok(out)
}

fn bytes(v: Value) -> Result<Vec<u8>, StoreError> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        other => Err(backend(format!("expected a string, got {other:?}"))),
    }
}

/// One stream entry (`[id, [field, value, ...]]`) as a queued frame.
fn entry(v: Value) -> Result<Queued, StoreError> {
    let mut e = array(v)?.into_iter();
    let (Some(id), Some(kv)) = (e.next(), e.next()) else {
        return Err(backend("a queue entry without fields"));
    };
    let id = bytes(id)?;
    let id = id
        .split(|b| *b == b'-')
        .next()
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|d| d.parse::<u64>().ok())
        .ok_or_else(|| backend("a queue entry with a foreign id"))?;
    let (mut from, mut payload) = (None, None);
    let mut kv = array(kv)?.into_iter();
    while let (Some(k), Some(v)) = (kv.next(), kv.next()) {
        match &bytes(k)?[..] {
            b"f" => from = keys::parse_dev(&bytes(v)?),
            b"p" => payload = Some(bytes(v)?),
            _ => {}
        }
    }
    match (from, payload) {
        (Some(from), Some(payload)) => Ok(Queued { id, from, payload }),
        _ => Err(backend(format!("queue entry {id} lacks its sender or payload"))),
    }
}

impl Store for RedisStore {
    fn enqueue(&self, frame: NewFrame, now_unix: u64, live: bool) -> Enqueued {
        let to = frame.to;
        let mut args = vec![
            keys::dev(&frame.to).into_bytes(),
            keys::dev(&frame.from).into_bytes(),
            keys::addr(&frame.addr).into_bytes(),
            frame.payload.to_vec(),
            num(now_unix.saturating_add(self.limits.ttl_secs)),
            num(u64::from(live)),
        ];
        args.extend(self.limit_args());
        let pool = Arc::clone(&self.pool);
        let (placed_tx, placed) = oneshot::channel();
        let (durable_tx, durable) = oneshot::channel();
        let job = Job {
            call: Call::Script(Script::Enqueue, args),
            frames: 1,
            reply: Box::new(move |r| {
                let r = r.and_then(|v| match int(&v)? {
                    id if id > 0 => u64::try_from(id).map_err(backend),
                    code => Err(scripts::enqueue_refusal(code, to)),
                });
                match &r {
                    // Before anyone hears the id: a writer that misses its
                    // live delivery reads it from Redis.
                    Ok(id) => pool.enqueued(&to, *id),
                    Err(StoreError::QueueFull(_)) => pool.set_full(to),
                    Err(_) => {}
                }
                let _ = placed_tx.send(r.clone());
                let _ = durable_tx.send(r);
            }),
        };
        let sent = self.submit(job);
        if sent.is_ok() && self.pool.take_want() {
            // After the enqueue: the block is above its id.
            self.lease();
        }
        let answer = |rx: oneshot::Receiver<Result<u64, StoreError>>,
                      sent: Result<(), StoreError>|
         -> StoreFuture<u64> {
            Box::pin(async move {
                sent?;
                rx.await.map_err(|_| StoreError::Closed)?
            })
        };
        Enqueued { placed: answer(placed, sent.clone()), durable: answer(durable, sent) }
    }

    fn fetch(&self, to: DeviceId, after: u64, limit: usize) -> StoreFuture<Vec<Queued>> {
        let Some(from) = after.checked_add(1).filter(|_| limit > 0) else {
            return Box::pin(std::future::ready(Ok(Vec::new())));
        };
        let mut cmd = redis::cmd("XRANGE");
        let limit = limit.min(i64::MAX as usize);
        cmd.arg(self.keys.queue(&to)).arg(from).arg("+").arg("COUNT").arg(limit);
        self.call(Call::Cmd(cmd), |v| array(v)?.into_iter().map(entry).collect())
    }

    fn ack(&self, to: DeviceId, up_to: u64) -> StoreFuture<u64> {
        let args = vec![keys::dev(&to).into_bytes(), num(up_to), num(up_to.saturating_add(1))];
        let pool = Arc::clone(&self.pool);
        self.call(Call::Script(Script::Ack, args), move |v| {
            let n = count(&v)?;
            if n > 0 {
                pool.not_full(Some(&to));
            }
            Ok(n)
        })
    }

    fn depth(&self, to: DeviceId) -> StoreFuture<QueueDepth> {
        self.read("depth", &to, None, |v| {
            let [frames, bytes] = counts(v)?;
            Ok(QueueDepth { frames, bytes })
        })
    }

    fn authorize(
        &self,
        by: DeviceId,
        peer: DeviceId,
        addr: AddrKey,
        now_unix: u64,
    ) -> StoreFuture<()> {
        let args = vec![
            keys::dev(&by).into_bytes(),
            keys::dev(&peer).into_bytes(),
            keys::addr(&addr).into_bytes(),
            num(now_unix),
            num(self.routes.max_pending_per_ip),
        ];
        self.call(Call::Script(Script::Authorize, args), |v| match int(&v)? {
            1 => Ok(()),
            -1 => Err(StoreError::TooManyPeers),
            -2 => Err(StoreError::TooManyPending),
            other => Err(backend(format!("unknown authorisation answer {other}"))),
        })
    }

    fn revoke(&self, by: DeviceId, peer: DeviceId, now_unix: u64) -> StoreFuture<u64> {
        let args = vec![keys::dev(&by).into_bytes(), keys::dev(&peer).into_bytes(), num(now_unix)];
        let pool = Arc::clone(&self.pool);
        self.call(Call::Script(Script::Revoke, args), move |v| {
            let n = count(&v)?;
            if n > 0 {
                pool.not_full(None);
            }
            Ok(n)
        })
    }

    fn is_route(&self, a: DeviceId, b: DeviceId) -> StoreFuture<bool> {
        self.read("route", &a, Some(&b), |v| Ok(int(&v)? == 1))
    }

    fn peers(&self, a: DeviceId) -> StoreFuture<Vec<DeviceId>> {
        self.read("peers", &a, None, |v| {
            array(v)?
                .into_iter()
                .map(|p| keys::parse_dev(&bytes(p)?).ok_or_else(|| backend("a foreign peer id")))
                .collect()
        })
    }

    fn expire(&self, now_unix: u64) -> StoreFuture<Expired> {
        let cutoff =
            now_unix.checked_sub(self.routes.pending_ttl_secs).map_or_else(|| b"-1".to_vec(), num);
        let args = vec![num(now_unix), cutoff, num(MAX_EXPIRED_PER_SWEEP as u64)];
        let pool = Arc::clone(&self.pool);
        self.call(Call::Script(Script::Expire, args), move |v| {
            let [frames, authorizations] = counts(v)?;
            if frames > 0 {
                pool.not_full(None);
            }
            Ok(Expired { frames, authorizations })
        })
    }

    fn totals(&self) -> StoreFuture<Totals> {
        // `read` wants a device: the totals ignore it.
        self.read("totals", &DeviceId([0; 16]), None, |v| {
            let [frames, bytes, pending] = counts(v)?;
            Ok(Totals { queues: QueueDepth { frames, bytes }, pending_authorizations: pending })
        })
    }

    fn epoch(&self) -> u64 {
        self.shared.epoch.load(Ordering::Acquire)
    }

    fn epoch_changed(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.shared.epoch_tx.subscribe())
    }

    fn health(&self) -> Result<(), String> {
        self.shared.down().map_or(Ok(()), Err)
    }

    fn reserve_id(&self, to: DeviceId, above: u64) -> Result<Reserved, StoreError> {
        if let Some(why) = self.shared.down() {
            return Err(StoreError::Unavailable(why));
        }
        let (reserved, lease) = self.pool.take(&to, above, self.epoch());
        if lease {
            self.lease();
        }
        reserved
    }

    fn enqueue_reserved(
        &self,
        frames: Vec<(u64, NewFrame)>,
        now_unix: u64,
        fence: u64,
    ) -> StoreFuture<Vec<Result<u64, StoreError>>> {
        // Ids not leased here under the current epoch are refused here;
        // the others go in one script call, their answers put back in place.
        let epoch = self.epoch();
        let mut answers: Vec<Option<Result<u64, StoreError>>> = Vec::with_capacity(frames.len());
        let mut args = vec![num(fence), num(now_unix.saturating_add(self.limits.ttl_secs))];
        args.extend(self.limit_args());
        let mut sent = Vec::new();
        for (id, f) in &frames {
            if self.pool.was_leased(*id, epoch) {
                args.extend([
                    num(*id),
                    keys::dev(&f.to).into_bytes(),
                    keys::dev(&f.from).into_bytes(),
                    keys::addr(&f.addr).into_bytes(),
                    f.payload.to_vec(),
                ]);
                sent.push(f.to);
                answers.push(None);
            } else {
                let why = "redis: an id leased under another store epoch";
                answers.push(Some(Err(StoreError::Unavailable(why.into()))));
            }
        }
        if sent.is_empty() {
            let all = answers.into_iter().flatten().collect();
            return Box::pin(std::future::ready(Ok(all)));
        }
        let (reply, rx) = oneshot::channel();
        let pool = Arc::clone(&self.pool);
        let job = Job {
            call: Call::Script(Script::EnqueueReserved, args),
            frames: sent.len() as u64,
            reply: Box::new(move |r| {
                let r = r.and_then(|v| {
                    let got = array(v)?;
                    if got.len() != sent.len() {
                        return Err(backend("unexpected reply length"));
                    }
                    let mut got = got.into_iter().zip(sent);
                    let mut out = Vec::with_capacity(answers.len());
                    for a in answers {
                        out.push(match a {
                            Some(a) => a,
                            None => {
                                let (v, to) = got.next().ok_or_else(|| backend("missing"))?;
                                match int(&v)? {
                                    id if id > 0 => u64::try_from(id).map_err(backend),
                                    code => {
                                        if code == -1 {
                                            pool.set_full(to);
                                        }
                                        Err(scripts::enqueue_refusal(code, to))
                                    }
                                }
                            }
                        });
                    }
                    Ok(out)
                });
                let _ = reply.send(r);
            }),
        };
        let submitted = self.submit(job);
        Box::pin(async move {
            submitted?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn watch(&self, to: DeviceId, mark: Option<Arc<std::sync::atomic::AtomicU64>>) -> bool {
        self.pool.watch(to, mark);
        true
    }

    fn put_push_subscription(&self, device: DeviceId, sub: Vec<u8>) -> StoreFuture<()> {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.keys.push()).arg(keys::dev(&device)).arg(sub);
        self.call(Call::Cmd(cmd), |v| int(&v).map(|_| ()))
    }

    fn push_subscription(&self, device: DeviceId) -> StoreFuture<Option<Vec<u8>>> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(self.keys.push()).arg(keys::dev(&device));
        self.call(Call::Cmd(cmd), |v| match v {
            Value::Nil => Ok(None),
            v => bytes(v).map(Some),
        })
    }

    fn remove_push_subscription(&self, device: DeviceId) -> StoreFuture<bool> {
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(self.keys.push()).arg(keys::dev(&device));
        self.call(Call::Cmd(cmd), |v| Ok(int(&v)? > 0))
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            durable_commits: self.shared.durable_commits.load(Ordering::Relaxed),
            frames_written: self.shared.frames_written.load(Ordering::Relaxed),
        }
    }
}
