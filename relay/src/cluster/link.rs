//! The node's command connection to Redis: one multiplexed connection to
//! the server the URL names, or to the primary Sentinel names now, made
//! again (and the primary asked for again) after any error that says the
//! connection or the server's role is gone: I/O errors, timeouts,
//! `READONLY` (the primary was demoted), `MASTERDOWN`, and in a Redis
//! Cluster `MOVED`, `ASK`, `CLUSTERDOWN` and `TRYAGAIN` (the slot moved),
//! and, with Sentinel, as soon as it announces a failover to another
//! address than the connection's (the old primary takes writes until it is
//! demoted, and then discards them).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, ServerErrorKind,
    Value,
};

use super::ClusterError;
use crate::store::RedisTarget;

/// How long connecting, and then one command, may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Server errors that say this server does not serve Tandem's keys now.
fn moved_on(kind: ServerErrorKind) -> bool {
    matches!(
        kind,
        ServerErrorKind::ReadOnly
            | ServerErrorKind::MasterDown
            | ServerErrorKind::Moved
            | ServerErrorKind::Ask
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::TryAgain
    )
}

/// Whether `e` means the connection (or the server as a primary) is gone.
fn gone(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || matches!(e.kind(), ErrorKind::Server(k) if moved_on(k))
}

/// Whether an answer is such a server error (the connection hands server
/// errors over as values; the caller turns them into errors).
fn answered_gone(v: &Value) -> bool {
    match v {
        Value::ServerError(e) => e.kind().is_some_and(moved_on),
        Value::Array(items) => items.iter().any(answered_gone),
        _ => false,
    }
}

/// The server to talk to, and the connection to it while it works.
pub(super) struct Link {
    target: tokio::sync::Mutex<RedisTarget>,
    current: Mutex<Option<Watched>>,
    /// With Sentinel: the primary it announced last.
    switches: Option<tokio::sync::watch::Receiver<Option<crate::store::RedisAnnounced>>>,
    /// Moves on with every new connection: the node's subscription is made
    /// again when it moved (with Sentinel the primary may have changed, and
    /// a subscription on a demoted server may miss messages).
    generation: std::sync::atomic::AtomicU64,
}

impl Link {
    /// A link to `target` (with Sentinel, listening for failovers on the
    /// current tokio runtime).
    pub(super) fn new(target: RedisTarget) -> Self {
        Self {
            switches: target.switches(),
            target: tokio::sync::Mutex::new(target),
            current: Mutex::new(None),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How many connections were made so far.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// With Sentinel, the primary it announced last (a subscription made
    /// before a change is to be made again).
    pub(super) fn switches(
        &self,
    ) -> Option<tokio::sync::watch::Receiver<Option<crate::store::RedisAnnounced>>> {
        self.switches.clone()
    }

    /// A client of the server to talk to now (for a pub/sub connection).
    pub(super) async fn client(&self) -> Result<redis::Client, ClusterError> {
        self.target.lock().await.client().await.map_err(|e| ClusterError::Redis(e.to_string()))
    }

    /// The connection, made first if there is none (or the last one broke).
    pub(super) async fn conn(&self) -> Result<Watched, ClusterError> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        // One connection attempt at a time: the others wait for it.
        let mut target = self.target.lock().await;
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let announced = self.switches.as_ref().and_then(|rx| rx.borrow().clone());
        let client = target.client().await.map_err(|e| ClusterError::Redis(e.to_string()))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let addr = client.get_connection_info().addr().clone();
        let inner = client.get_multiplexed_async_connection_with_config(&config).await?;
        let c = Watched { inner, addr, announced, broken: Arc::new(AtomicBool::new(false)) };
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(c.clone());
        self.generation.fetch_add(1, Ordering::AcqRel);
        drop(target);
        Ok(c)
    }

    fn cached(&self) -> Option<Watched> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let now = self.switches.as_ref().and_then(|rx| rx.borrow().clone());
        if current.as_ref().is_some_and(|c| {
            c.broken.load(Ordering::Acquire)
                || crate::store::redis_left_behind(now.as_ref(), c.announced.as_ref(), &c.addr)
        }) {
            *current = None;
        }
        current.clone()
    }
}

/// A multiplexed connection that marks itself broken on an error that
/// says it is gone (the next [`Link::conn`] makes another).
#[derive(Clone)]
pub(super) struct Watched {
    inner: MultiplexedConnection,
    /// The server's address, and the primary Sentinel had announced last
    /// before it was asked for it.
    addr: redis::ConnectionAddr,
    announced: Option<crate::store::RedisAnnounced>,
    broken: Arc<AtomicBool>,
}

impl Watched {
    fn watch<T: Send + 'static>(
        broken: Arc<AtomicBool>,
        fut: RedisFuture<'_, T>,
        answer_gone: fn(&T) -> bool,
    ) -> RedisFuture<'_, T> {
        Box::pin(async move {
            let r = fut.await;
            let is_gone = match &r {
                Err(e) => gone(e),
                Ok(v) => answer_gone(v),
            };
            if is_gone {
                broken.store(true, Ordering::Release);
            }
            r
        })
    }
}

impl ConnectionLike for Watched {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let broken = Arc::clone(&self.broken);
        Self::watch(broken, self.inner.req_packed_command(cmd), answered_gone)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let broken = Arc::clone(&self.broken);
        Self::watch(broken, self.inner.req_packed_commands(pipeline, offset, count), |vs| {
            vs.iter().any(answered_gone)
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}
