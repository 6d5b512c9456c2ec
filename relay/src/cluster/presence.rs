//! Presence across nodes, in order. A device that moves between nodes
//! quickly (its connection on node A ends while its new one on node B has
//! claimed it) must end *online* for its peers, wherever they are. So in a
//! cluster every `Presence` about a connection coming or going (or a dead
//! node's devices) for a device on a node goes through that node's channel
//! (those answering `Authorize` and `Revoke` are sent directly), published by the same script step that changed or checked the
//! ownership it reports: a release publishes "offline" only if it took the
//! ownership away, and a claim that follows it publishes "online" after, so
//! each node hears them in the order Redis ran them. (Published from
//! different places, an "offline" from A could arrive after B's "online",
//! and the peer would show the device offline while it is connected.)

use redis::Script;
use tandem_proto::DeviceId;
use tandem_proto::frame::Frame;

use super::message::Message;
use super::{Cluster, ClusterError, hex};

/// `KEYS`: the subject's `own`, then each peer's `own`. `ARGV`: prefix,
/// mode, value, node, subject (hex), then one message per peer (the
/// subject's presence for that peer), then, in modes `online` and `look`,
/// one per peer for the subject (that peer's presence, online and, in
/// `look`, offline: two per peer).
///
/// Modes: `release` gives the subject's ownership up if it is still
/// `value` (this node's `node|fence`) and tells its peers it went offline;
/// `gone` tells them only if nobody owns it (a reaped device); `online`
/// tells them it came, if this node still owns it (with whichever of its
/// connections' fences: the registered connection is the one that counts),
/// and tells the subject which peers are online; `look` tells the subject where each peer is, and
/// nothing to the peers. Returns -1 when the guard failed (nothing
/// published), else 1 per peer that is online on a live node (this one
/// counts as live: it is running the script, even if its liveness key
/// lapsed while Redis was away), 0 otherwise.
const ANNOUNCE: &str = r"
local prefix, mode, value, node, subject = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local n = #KEYS - 1
local own = redis.call('GET', KEYS[1])
if mode == 'release' then
  if own ~= value then return -1 end
  redis.call('DEL', KEYS[1])
  redis.call('SREM', prefix .. 'devs:' .. node, subject)
elseif mode == 'gone' then
  if own then return -1 end
elseif mode == 'online' then
  if not own or string.match(own, '^(.*)|') ~= node then return -1 end
end
local out = {}
for i = 1, n do
  local o = redis.call('GET', KEYS[i + 1])
  local at = o and string.match(o, '^(.*)|')
  if at and at ~= node and redis.call('EXISTS', prefix .. 'alive:' .. at) == 0 then at = nil end
  out[i] = at and 1 or 0
  if at and mode ~= 'look' then
    redis.call('PUBLISH', prefix .. 'node:' .. at, ARGV[5 + i])
  end
  if mode == 'online' and at then
    redis.call('PUBLISH', prefix .. 'node:' .. node, ARGV[5 + n + i])
  elseif mode == 'look' then
    redis.call('PUBLISH', prefix .. 'node:' .. node, ARGV[5 + n + 2 * i - (at and 1 or 0)])
  end
end
return out
";

/// The script, loaded once.
pub(super) fn script() -> Script {
    Script::new(ANNOUNCE)
}

/// What changed about a device (the subject of an announcement).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// Its connection here, claimed with this fence, is up.
    Online(u64),
    /// Its connection here, claimed with this fence, ended.
    Released(u64),
    /// Its ownership entry (`node|fence`, as read from Redis) names this
    /// node but no connection here has it: released if still that value.
    Orphan(String),
    /// Its node died and it was reaped: told only if nobody owns it now.
    Gone,
    /// Tell it where its peers are (after a resubscription); nothing to
    /// the peers.
    Look,
}

impl Cluster {
    /// Announce `change` about `subject` to its `peers`, through their
    /// nodes' channels (this node's too), in one script step with the
    /// ownership check. `None` when the check failed (the device moved on:
    /// nothing was said); else, per peer, whether it is online.
    ///
    /// # Errors
    /// Redis failed.
    pub(crate) async fn announce(
        &self,
        subject: DeviceId,
        change: &Change,
        peers: &[DeviceId],
    ) -> Result<Option<Vec<bool>>, ClusterError> {
        let (mode, value) = match change {
            Change::Online(f) => ("online", format!("{}|{f}", self.node)),
            Change::Released(f) => ("release", format!("{}|{f}", self.node)),
            Change::Orphan(v) => ("release", v.clone()),
            Change::Gone => ("gone", String::new()),
            Change::Look => ("look", String::new()),
        };
        let online = matches!(change, Change::Online(_));
        let mut inv = self.scripts.presence.prepare_invoke();
        inv.key(self.key("own", &subject));
        for p in peers {
            inv.key(self.key("own", p));
        }
        inv.arg(&self.prefix).arg(mode).arg(value).arg(&self.node).arg(hex(&subject));
        for p in peers {
            inv.arg(presence(*p, subject, online)?);
        }
        if matches!(change, Change::Online(_) | Change::Look) {
            for p in peers {
                inv.arg(presence(subject, *p, true)?);
                if *change == Change::Look {
                    inv.arg(presence(subject, *p, false)?);
                }
            }
        }
        // Safe to repeat (a release that happened makes the repeat say
        // nothing): once more on a connection found broken, as a claim.
        let mut tries = 0;
        let out: redis::Value = loop {
            let mut c = self.link.conn().await?;
            match inv.invoke_async(&mut c).await {
                Err(e) if tries == 0 && (e.is_io_error() || e.is_connection_dropped()) => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                other => break other?,
            }
        };
        Ok(match out {
            redis::Value::Int(_) => None,
            v => {
                let flags: Vec<i64> =
                    redis::from_redis_value(v).map_err(|e| ClusterError::Redis(e.to_string()))?;
                Some(flags.into_iter().map(|f| f == 1).collect())
            }
        })
    }
}

/// The message that hands `to` the presence of `peer`.
fn presence(to: DeviceId, peer: DeviceId, online: bool) -> Result<Vec<u8>, ClusterError> {
    let f = Frame::Presence { peer, online };
    let bytes = f.encode().map_err(|e| ClusterError::Redis(e.to_string()))?;
    Ok(Message::frame(to, &bytes))
}
