//! Several relay nodes sharing one Redis: who owns each device's connection,
//! how a frame for a device on another node reaches it, presence across
//! nodes, route changes every node must see, and pairing mailboxes whose two
//! ends sit on different nodes.
//!
//! The design (docs/ARCHITECTURE.md, "Several nodes"):
//! * **Ownership.** A device's connection is owned by one node at a time:
//!   `own:<device>` names the node and a fence token taken from one counter
//!   for the whole cluster (so no key is left behind per device).
//!   A connection claims it once authenticated; the node that held it is told
//!   (on its channel) and closes its connection if that one's fence is lower
//!   (`replaced`). A connection gives the ownership up when it ends, if its
//!   node still holds it.
//! * **One hop.** Every node subscribes to one channel of its own. A frame
//!   for a device on another node (a live `Deliver` after the frame was
//!   queued in Redis, a `Presence`, a `PairMessage`) is published on the
//!   owner's channel by one script that looks the owner up and publishes in
//!   the same step. Pub/sub may lose messages (a node's subscription drops):
//!   nothing depends on them for delivery, since every frame is queued in
//!   Redis first and a node that resubscribes makes each of its connections
//!   read its queue again and sends fresh presence.
//! * **Liveness.** Each node renews `alive:<node>` (a few seconds' TTL)
//!   every second; a node that finds another's expired reaps it: the devices
//!   it still owned lose their owner and their peers are told they went
//!   offline. A node that finds its own key had expired (it was frozen, or cut
//!   off from Redis) closes every connection it has: its devices reconnect
//!   and claim again.
//! * **Routes.** A route change is published to every node, which drops its
//!   cached routes for the two devices and the frames it holds between them.
//!   The store checks the route inside the enqueue, so a revoked route is
//!   never crossed even by a node that has not heard yet.
//! * **Pairing.** A mailbox stays with the node of the desktop that opened
//!   it (its limits, its expiry); `pair:<id>` tells every node where it is
//!   and who claimed it, so the phone may be on any node.

mod deliveries;
mod inbound;
mod link;
mod message;
mod pairing;
mod presence;
mod scripts;
#[cfg(test)]
mod tests;
mod upkeep;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tandem_proto::DeviceId;
use tandem_proto::frame::Frame;
use thiserror::Error;
use tracing::warn;

pub(crate) use self::inbound::run;
pub(crate) use self::message::Message;
pub(crate) use self::presence::Change;
use self::scripts::Scripts;
pub use self::upkeep::RECONCILE;
pub(crate) use self::upkeep::{run_heartbeat, run_upkeep};

/// How long a node counts as alive after its last heartbeat.
pub const ALIVE_TTL: Duration = Duration::from_secs(3);

/// How often a node renews its liveness and looks for dead nodes.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// Most devices one reaping or ownership-scan script handles: a node with
/// many devices is walked in steps, so Redis never runs one long script.
const SCAN_STEP: usize = 500;

/// Why a cluster operation failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ClusterError {
    /// The node id is not usable (empty, too long, or with characters other
    /// than letters, digits, `.`, `_` and `-`).
    #[error("bad node id {0:?}: 1 to 64 letters, digits, '.', '_' or '-'")]
    NodeId(String),
    /// The Redis URL does not parse.
    #[error("bad Redis URL: {0}")]
    Url(String),
    /// Redis failed or did not answer in time.
    #[error("redis: {0}")]
    Redis(String),
}

impl From<redis::RedisError> for ClusterError {
    fn from(e: redis::RedisError) -> Self {
        ClusterError::Redis(e.to_string())
    }
}

/// A node's link to the others.
pub(crate) struct Cluster {
    node: String,
    prefix: String,
    /// The command connection (to the primary, with Sentinel).
    link: link::Link,
    scripts: Scripts,
    /// Live deliveries to other nodes, gathered on a connection of their own.
    deliveries: deliveries::Deliveries,
    /// The node's channel subscription is up (its messages arrive).
    subscribed: AtomicBool,
    /// The last heartbeat reached Redis.
    beating: AtomicBool,
    /// Messages from other nodes that could not be read.
    pub(crate) garbage: AtomicU64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node", &self.node).finish_non_exhaustive()
    }
}

/// A fresh node id: 12 hex digits.
#[must_use]
pub fn generate_node_id() -> String {
    let n: u64 = rand::random();
    format!("{:012x}", n & 0xffff_ffff_ffff)
}

/// Check a node id (it is part of Redis keys and channel names).
///
/// # Errors
/// [`ClusterError::NodeId`] when it is empty, longer than 64 bytes or holds
/// other characters than ASCII letters, digits, `.`, `_` and `-`.
pub fn check_node_id(id: &str) -> Result<(), ClusterError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(ClusterError::NodeId(id.to_owned())) }
}

fn hex(d: &DeviceId) -> String {
    crate::store::redis_hex(&d.0)
}

fn parse_hex(s: &str) -> Option<DeviceId> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(DeviceId(out))
}

/// What a pairing claim through Redis found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Claimed: the desktop that opened it, and whether it is on this node.
    Won { desktop: DeviceId, here: bool },
    /// Refused with this code.
    Refused(tandem_proto::ErrorCode),
}

impl Cluster {
    /// Join the cluster on Redis at `url` as node `node`, with every key and
    /// channel under `prefix`'s namespace (`tandem` → `{tandem}:`, the
    /// store's).
    ///
    /// # Errors
    /// A bad node id or URL; Redis unreachable.
    pub(crate) async fn connect(url: &str, node: &str, prefix: &str) -> Result<Self, ClusterError> {
        check_node_id(node)?;
        // Connected lazily: a node starts while Redis is away (not ready
        // until it is there) and reconnects by itself.
        let namespace = crate::store::redis_namespace(prefix);
        let target = || {
            crate::store::RedisTarget::parse(url, &namespace)
                .map_err(|e| ClusterError::Url(e.to_string()))
        };
        let scripts = Scripts::new();
        let deliveries = deliveries::Deliveries::start(
            link::Link::new(target()?),
            scripts.route.clone(),
            namespace.clone(),
        );
        Ok(Self {
            node: node.to_owned(),
            link: link::Link::new(target()?),
            prefix: namespace,
            scripts,
            deliveries,
            subscribed: AtomicBool::new(false),
            beating: AtomicBool::new(false),
            garbage: AtomicU64::new(0),
        })
    }

    /// This node's id.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    fn key(&self, what: &str, d: &DeviceId) -> String {
        format!("{}{what}:{}", self.prefix, hex(d))
    }

    /// This node's channel.
    fn channel(&self) -> String {
        format!("{}node:{}", self.prefix, self.node)
    }

    /// The channel every node hears.
    fn all_channel(&self) -> String {
        format!("{}all", self.prefix)
    }

    /// Whether the node takes part in the cluster now (`/readyz`).
    ///
    /// # Errors
    /// Why not: its channel is not subscribed, or its heartbeat fails.
    pub(crate) fn health(&self) -> Result<(), String> {
        if !self.subscribed.load(Ordering::Acquire) {
            return Err("the node's cluster channel is not subscribed".into());
        }
        if !self.beating.load(Ordering::Acquire) {
            return Err("the node's heartbeat does not reach Redis".into());
        }
        Ok(())
    }

    /// Take ownership of `device`'s connection; returns its fence token.
    /// A connection to Redis found broken is replaced and the claim made
    /// once more (a claim is safe to repeat: the later fence wins).
    #[cfg(test)]
    pub(crate) async fn claim(&self, device: DeviceId) -> Result<u64, ClusterError> {
        Ok(self.claim_at(device).await?.0)
    }

    /// [`Self::claim`], with the store's delivery id counter at the claim:
    /// every id handed out before it, by any node (ids the device may have
    /// seen on another node's connection), is at or below it.
    pub(crate) async fn claim_at(&self, device: DeviceId) -> Result<(u64, u64), ClusterError> {
        let mut tries = 0;
        loop {
            let mut c = self.link.conn().await?;
            let fence: Result<(u64, u64), redis::RedisError> = self
                .scripts
                .claim
                .key(self.key("own", &device))
                .key(format!("{}fences", self.prefix))
                .key(self.key("fence", &device))
                .arg(&self.node)
                .arg(&self.prefix)
                .arg(hex(&device))
                .arg(Message::replaced_prefix(device))
                .invoke_async(&mut c)
                .await;
            match fence {
                Err(e) if tries == 0 && (e.is_io_error() || e.is_connection_dropped()) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return Ok(other?),
            }
        }
    }

    /// Who owns each of `devices` now: its node and fence (`None`: nobody).
    pub(crate) async fn owners(
        &self,
        devices: &[DeviceId],
    ) -> Result<Vec<Option<(String, u64)>>, ClusterError> {
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.link.conn().await?;
        let keys: Vec<String> = devices.iter().map(|d| self.key("own", d)).collect();
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(keys).query_async(&mut c).await?;
        Ok(values
            .into_iter()
            .map(|v| {
                let v = v?;
                let (node, fence) = v.rsplit_once('|')?;
                Some((node.to_owned(), fence.parse().ok()?))
            })
            .collect())
    }

    /// The devices `own` gives to this node, each with its owner value
    /// (read in steps of [`SCAN_STEP`]).
    pub(crate) async fn owned(&self) -> Result<Vec<(DeviceId, String)>, ClusterError> {
        let mut out = Vec::new();
        let mut cursor = String::from("0");
        loop {
            let mut c = self.link.conn().await?;
            let (next, got): (String, Vec<String>) = self
                .scripts
                .owned
                .key(format!("{}devs:{}", self.prefix, self.node))
                .arg(&self.prefix)
                .arg(&self.node)
                .arg(&cursor)
                .arg(SCAN_STEP)
                .invoke_async(&mut c)
                .await?;
            out.extend(got.iter().filter_map(|s| {
                let (d, v) = s.split_once('|')?;
                Some((parse_hex(d)?, v.to_owned()))
            }));
            if next == "0" {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// Hand each frame to its device's node (not this one's devices: the
    /// caller offers those itself); `None` for a frame only looks. Returns,
    /// per device, whether it is online on a live node.
    pub(crate) async fn route(
        &self,
        frames: &[(DeviceId, Option<Frame>)],
    ) -> Result<Vec<bool>, ClusterError> {
        if frames.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.scripts.route.prepare_invoke();
        inv.arg(&self.prefix);
        for (to, frame) in frames {
            inv.key(self.key("own", to));
            let msg = match frame {
                Some(f) => {
                    let bytes = f.encode().map_err(|e| ClusterError::Redis(e.to_string()))?;
                    Message::frame(*to, &bytes)
                }
                None => Vec::new(),
            };
            inv.arg(msg);
        }
        let mut c = self.link.conn().await?;
        let out: Vec<i64> = inv.invoke_async(&mut c).await?;
        Ok(out.into_iter().map(|n| n == 1).collect())
    }

    /// Hand a stored frame's `Deliver` (encoded), its id taken under store
    /// epoch `epoch`, to `to`'s node, if it is online on a live node. The
    /// frame is handed to the deliveries' task ([`deliveries`]), which
    /// sends what waits in one script call: this waits for room there, not
    /// for Redis; a delivery that fails leaves the frame in the store.
    pub(crate) async fn deliver(
        &self,
        to: DeviceId,
        epoch: u64,
        frame: &[u8],
    ) -> Result<(), ClusterError> {
        self.deliveries.submit(self.key("own", &to), to, epoch, frame).await
    }

    /// Tell every node that the route between `a` and `b` changed.
    pub(crate) async fn routes_changed(&self, a: DeviceId, b: DeviceId) {
        let Ok(mut c) = self.link.conn().await else {
            warn!("could not tell the other nodes about a route change: Redis is away");
            return;
        };
        let sent: Result<i64, _> = redis::cmd("PUBLISH")
            .arg(self.all_channel())
            .arg(Message::routes(a, b))
            .query_async(&mut c)
            .await;
        if let Err(e) = sent {
            // The other nodes' caches may be stale until they resubscribe:
            // the store still checks every enqueue against the route.
            warn!(error = %e, "could not tell the other nodes about a route change");
        }
    }

    /// Renew this node's liveness; false if it had expired.
    async fn heartbeat(&self) -> Result<bool, ClusterError> {
        let mut c = self.link.conn().await?;
        let ttl = u64::try_from(ALIVE_TTL.as_millis()).unwrap_or(u64::MAX);
        let was: i64 = self
            .scripts
            .heartbeat
            .key(format!("{}alive:{}", self.prefix, self.node))
            .key(format!("{}nodes", self.prefix))
            .arg(&self.node)
            .arg(ttl)
            .invoke_async(&mut c)
            .await?;
        Ok(was == 1)
    }

    /// One step of reaping dead nodes: the devices they owned that this
    /// step took (at most [`SCAN_STEP`]), and whether more are left.
    async fn reap_step(&self) -> Result<(Vec<DeviceId>, bool), ClusterError> {
        let mut c = self.link.conn().await?;
        let (gone, more): (Vec<String>, i64) = self
            .scripts
            .reap
            .key(format!("{}nodes", self.prefix))
            .arg(&self.prefix)
            .arg(&self.node)
            .arg(SCAN_STEP)
            .invoke_async(&mut c)
            .await?;
        Ok((gone.iter().filter_map(|s| parse_hex(s)).collect(), more != 0))
    }

    /// Leave the cluster (clean shutdown, after the connections closed):
    /// its liveness goes at once, so the other nodes reap whatever it
    /// still owns (a connection the drain did not finish) without waiting
    /// for the liveness to expire.
    pub(crate) async fn leave(&self) {
        let Ok(mut c) = self.link.conn().await else { return };
        let left: Result<i64, _> = redis::cmd("DEL")
            .arg(format!("{}alive:{}", self.prefix, self.node))
            .query_async(&mut c)
            .await;
        if let Err(e) = left {
            warn!(error = %e, "could not leave the cluster; the others reap this node");
        }
    }

    /// Whether this node runs `task` now (one node at a time runs the
    /// expiry sweep); it keeps the lead for `ttl` unless it renews it.
    pub(crate) async fn lead(&self, task: &str, ttl: Duration) -> bool {
        let Ok(mut c) = self.link.conn().await else { return false };
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let led: Result<i64, _> = self
            .scripts
            .lead
            .key(format!("{}lead:{task}", self.prefix))
            .arg(&self.node)
            .arg(ms)
            .invoke_async(&mut c)
            .await;
        led.is_ok_and(|n| n == 1)
    }
}
