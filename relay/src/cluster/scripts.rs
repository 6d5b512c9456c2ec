//! The Lua scripts the cluster runs in Redis: each is one atomic step, so
//! an ownership change, a route lookup and its publish, or a node's reaping
//! never interleave with another node's.
//!
//! Keys (all under the configured prefix, which holds a `{…}` hash tag so
//! that every key lands in one slot): `own:<device>` = `<node>|<fence>`,
//! `fence:<device>` (a counter, never deleted), `devs:<node>` (the devices a
//! node owns), `alive:<node>` (expires unless the node's heartbeat renews
//! it), `nodes` (every node that ever announced itself and was not reaped),
//! `pair:<id>` = `<node>|<desktop>|<claimer or empty>` (expires with the
//! mailbox), `lead:<task>` (who runs a cluster-wide task). Channels:
//! `node:<node>` (messages for one node's devices) and `all` (route changes).

use redis::Script;

/// `KEYS`: own, fence. `ARGV`: node, prefix, device (hex), the `Replaced`
/// message without its fence. Takes ownership of the device for `node`,
/// returns the new fence token; the previous owner (another node) is told
/// to close its connection.
const CLAIM: &str = r"
local fence = string.format('%d', redis.call('INCR', KEYS[2]))
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. fence)
redis.call('SADD', ARGV[2] .. 'devs:' .. ARGV[1], ARGV[3])
if old then
  local node = string.match(old, '^(.*)|')
  if node and node ~= ARGV[1] then
    redis.call('SREM', ARGV[2] .. 'devs:' .. node, ARGV[3])
    redis.call('PUBLISH', ARGV[2] .. 'node:' .. node, ARGV[4] .. fence)
  end
end
return fence
";

/// `KEYS`: own. `ARGV`: node, prefix, device (hex), the owner value it was
/// claimed with (`node|fence`). Gives up the device's ownership if it is
/// still exactly that (a later claim, even on this node, keeps it); 1 if it
/// did.
const RELEASE: &str = r"
local old = redis.call('GET', KEYS[1])
if old and old == ARGV[4] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', ARGV[2] .. 'devs:' .. ARGV[1], ARGV[3])
  return 1
end
return 0
";

/// `KEYS`: the `own` key of each recipient. `ARGV`: prefix, then one
/// message per key (empty: only look). For each recipient whose owner node
/// is alive, publishes its message on that node's channel; returns 1 or 0
/// per recipient (online or not). Each owner and each node's liveness is
/// read once per call (a call may carry many frames for a few devices).
const ROUTE: &str = r"
local out, owner, alive = {}, {}, {}
for i, k in ipairs(KEYS) do
  local node = owner[k]
  if node == nil then
    local o = redis.call('GET', k)
    node = (o and string.match(o, '^(.*)|')) or false
    owner[k] = node
  end
  local sent = 0
  if node then
    local up = alive[node]
    if up == nil then
      up = redis.call('EXISTS', ARGV[1] .. 'alive:' .. node) == 1
      alive[node] = up
    end
    if up then
      local msg = ARGV[i + 1]
      if msg and #msg > 0 then
        redis.call('PUBLISH', ARGV[1] .. 'node:' .. node, msg)
      end
      sent = 1
    end
  end
  out[i] = sent
end
return out
";

/// `KEYS`: alive, nodes. `ARGV`: node, ttl (ms). Renews the node's
/// liveness; returns whether it was still alive (0: it expired, and other
/// nodes may have reaped its devices).
const HEARTBEAT: &str = r"
local was = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return was
";

/// `KEYS`: nodes. `ARGV`: prefix, this node. Every node in `nodes` whose
/// liveness expired is reaped: the devices it still owns lose their owner
/// and are returned (as `node|device` strings), its sets are deleted.
const REAP: &str = r"
local gone = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if node ~= ARGV[2] and redis.call('EXISTS', ARGV[1] .. 'alive:' .. node) == 0 then
    local devs = ARGV[1] .. 'devs:' .. node
    for _, d in ipairs(redis.call('SMEMBERS', devs)) do
      local k = ARGV[1] .. 'own:' .. d
      local o = redis.call('GET', k)
      if o and string.match(o, '^(.*)|') == node then
        redis.call('DEL', k)
        table.insert(gone, d)
      end
    end
    redis.call('DEL', devs)
    redis.call('SREM', KEYS[1], node)
  end
end
return gone
";

/// `KEYS`: devs. `ARGV`: prefix, node. The devices this node's set names
/// that `own` still gives to this node, as `device|value` pairs (the node
/// releases those it has no connection for, each only if its value is
/// still the same: a claim meanwhile changes it).
const OWNED: &str = r"
local out = {}
for _, d in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local o = redis.call('GET', ARGV[1] .. 'own:' .. d)
  if o and string.match(o, '^(.*)|') == ARGV[2] then
    table.insert(out, d .. '|' .. o)
  else
    redis.call('SREM', KEYS[1], d)
  end
end
return out
";

/// `KEYS`: lead. `ARGV`: node, ttl (ms). Whether this node runs the task
/// (it takes the lead when nobody holds it, and keeps it while it renews).
const LEAD: &str = r"
local who = redis.call('GET', KEYS[1])
if not who or who == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// `KEYS`: pair. `ARGV`: node, desktop (hex), ttl (ms). Registers a
/// mailbox; 0 if the id is taken.
const PAIR_OPEN: &str = r"
if redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2] .. '|', 'NX', 'PX', ARGV[3]) then
  return 1
end
return 0
";

/// `KEYS`: pair, the claim's payload (kept with the mailbox, so that the
/// desktop's node can replay a `Claimed` message it missed). `ARGV`:
/// claimer (hex), prefix, the `Claimed` message, the caller's node, the
/// claim's payload. The first claim wins; on success the desktop's node is
/// told (unless it is the caller's, which acts itself) and `node|desktop` is
/// returned; otherwise an error word: `not_found`, `claimed`, `self`.
const PAIR_CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 'not_found' end
local node, desk, claimer = string.match(v, '^(.*)|(%x+)|(%x*)$')
if not node then return 'not_found' end
if desk == ARGV[1] then return 'self' end
if #claimer > 0 then return 'claimed' end
if redis.call('EXISTS', ARGV[2] .. 'alive:' .. node) == 0 then return 'not_found' end
redis.call('SET', KEYS[1], node .. '|' .. desk .. '|' .. ARGV[1], 'KEEPTTL')
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  redis.call('SET', KEYS[2], ARGV[5], 'PX', ttl)
end
if #ARGV[3] > 0 and node ~= ARGV[4] then
  redis.call('PUBLISH', ARGV[2] .. 'node:' .. node, ARGV[3])
end
return node .. '|' .. desk
";

/// `KEYS`: pair, the recipient's `own`. `ARGV`: from (hex), to (hex),
/// prefix, message. Passes a pairing message from the claimer to the
/// desktop (or back) on the recipient's node; 1 if sent, 0 if the mailbox
/// does not join the two, -1 if the recipient is offline.
const PAIR_ROUTE: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local node, desk, claimer = string.match(v, '^(.*)|(%x+)|(%x*)$')
if not node or #claimer == 0 then return 0 end
local ok = (ARGV[1] == desk and ARGV[2] == claimer) or (ARGV[1] == claimer and ARGV[2] == desk)
if not ok then return 0 end
local o = redis.call('GET', KEYS[2])
if not o then return -1 end
local to = string.match(o, '^(.*)|')
if not to or redis.call('EXISTS', ARGV[3] .. 'alive:' .. to) == 0 then return -1 end
redis.call('PUBLISH', ARGV[3] .. 'node:' .. to, ARGV[4])
return 1
";

/// `KEYS`: pair, the claim's payload. `ARGV`: desktop (hex). Removes a
/// mailbox its desktop closed.
const PAIR_CLOSE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.match(v, '^.*|(%x+)|%x*$') == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
";

/// The scripts, loaded once (redis-rs sends `EVALSHA` and falls back to
/// `EVAL` when the server does not know a script, e.g. after a restart).
pub(super) struct Scripts {
    pub(super) claim: Script,
    pub(super) release: Script,
    pub(super) route: Script,
    pub(super) heartbeat: Script,
    pub(super) reap: Script,
    pub(super) owned: Script,
    pub(super) lead: Script,
    pub(super) pair_open: Script,
    pub(super) pair_claim: Script,
    pub(super) pair_route: Script,
    pub(super) pair_close: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            claim: Script::new(CLAIM),
            release: Script::new(RELEASE),
            route: Script::new(ROUTE),
            heartbeat: Script::new(HEARTBEAT),
            reap: Script::new(REAP),
            owned: Script::new(OWNED),
            lead: Script::new(LEAD),
            pair_open: Script::new(PAIR_OPEN),
            pair_claim: Script::new(PAIR_CLAIM),
            pair_route: Script::new(PAIR_ROUTE),
            pair_close: Script::new(PAIR_CLOSE),
        }
    }
}
