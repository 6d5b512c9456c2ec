//! The Lua scripts the cluster runs in Redis: each is one atomic step, so
//! an ownership change, a route lookup and its publish, or a node's reaping
//! never interleave with another node's.
//!
//! Keys (all under the configured prefix, which holds a `{…}` hash tag so
//! that every key lands in one slot): `own:<device>` = `<node>|<fence>`,
//! `fences` (the one counter every fence token comes from, so tokens only
//! grow, for every device, and nothing is kept per device once it is
//! offline; the `fence:<device>` counters of earlier versions are read as a
//! floor and moved up with each claim while they exist, and may be deleted
//! once no node of an earlier version runs), `devs:<node>` (the devices a
//! node owns), `alive:<node>` (expires unless the node's heartbeat renews
//! it), `nodes` (every node that ever announced itself and was not reaped),
//! `last:<device>` = the fence of the device's latest claim, kept a day after
//! the ownership ended (a held frame's late write under an older fence is
//! refused even when nobody owns the device: `enqueue_reserved.lua`),
//! `pair:<id>` = `<node>|<desktop>|<claimer or empty>` (expires with the
//! mailbox), `lead:<task>` (who runs a cluster-wide task). Channels:
//! `node:<node>` (messages for one node's devices) and `all` (route changes).

use redis::Script;

/// `KEYS`: own, fences, the device's `fence:<device>` of earlier versions.
/// `ARGV`: node, prefix, device (hex), the `Replaced` message without its
/// fence. Takes ownership of the device for `node`, returns the new fence
/// token and the store's delivery id counter then (`{fence, next}`: every
/// id handed out before, by any node, is at or below it); the previous owner (another node) is told to close its
/// connection. The token is above the current owner's and above the
/// device's counter of earlier versions (during a rolling upgrade both kinds
/// of node claim; that counter, where it exists, is moved up with it, so an
/// older node's next claim is above this one too).
const CLAIM: &str = r"
local old = redis.call('GET', KEYS[1])
local floor = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
if old then
  local f = tonumber(string.match(old, '|(%d+)$') or '0') or 0
  if f > floor then floor = f end
end
local n = redis.call('INCR', KEYS[2])
if n <= floor then
  n = floor + 1
  redis.call('SET', KEYS[2], n)
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('SET', KEYS[3], n)
end
local fence = string.format('%d', n)
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. fence)
redis.call('SET', ARGV[2] .. 'last:' .. ARGV[3], fence, 'EX', 86400)
redis.call('SADD', ARGV[2] .. 'devs:' .. ARGV[1], ARGV[3])
if old then
  local node = string.match(old, '^(.*)|')
  if node and node ~= ARGV[1] then
    redis.call('SREM', ARGV[2] .. 'devs:' .. node, ARGV[3])
    redis.call('PUBLISH', ARGV[2] .. 'node:' .. node, ARGV[4] .. fence)
  end
end
local next = redis.call('HGET', ARGV[2] .. 'epoch', 'next') or '0'
return {fence, next}
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

/// `KEYS`: nodes. `ARGV`: prefix, this node, the most devices to take.
/// Every node in `nodes` whose liveness expired is reaped: the devices it
/// still owns lose their owner and are returned, up to the given number per call; a node is removed from
/// `nodes` once its set is empty. Returns `{devices, more}` (`more` is 1 when
/// the budget ran out first: call again; the caller announces each step's
/// devices before the next, so a step that fails loses none). Bounded so that a node that died
/// with many devices does not stall Redis for one long script; between two
/// calls the liveness is looked at again, so a node that came back under
/// the same id keeps what it claimed since.
const REAP: &str = r"
local gone = {}
local budget = tonumber(ARGV[3])
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if node ~= ARGV[2] and redis.call('EXISTS', ARGV[1] .. 'alive:' .. node) == 0 then
    local devs = ARGV[1] .. 'devs:' .. node
    if budget <= 0 then return {gone, 1} end
    for _, d in ipairs(redis.call('SPOP', devs, budget)) do
      budget = budget - 1
      local k = ARGV[1] .. 'own:' .. d
      local o = redis.call('GET', k)
      if o and string.match(o, '^(.*)|') == node then
        redis.call('DEL', k)
        table.insert(gone, d)
      end
    end
    if redis.call('SCARD', devs) > 0 then return {gone, 1} end
    redis.call('SREM', KEYS[1], node)
  end
end
return {gone, 0}
";

/// `KEYS`: devs. `ARGV`: prefix, node, an `SSCAN` cursor, a count. The
/// devices of one step of a scan of this node's set that `own` still gives
/// to this node, as `device|value` pairs (the node releases those it has no
/// connection for, each only if its value is still the same: a claim
/// meanwhile changes it); those it no longer owns leave the set. Returns
/// `{next cursor, pairs}` (the scan is over at cursor `0`), so a node with
/// many devices never holds Redis for one long script.
const OWNED: &str = r"
local r = redis.call('SSCAN', KEYS[1], ARGV[3], 'COUNT', ARGV[4])
local out = {}
for _, d in ipairs(r[2]) do
  local o = redis.call('GET', ARGV[1] .. 'own:' .. d)
  if o and string.match(o, '^(.*)|') == ARGV[2] then
    table.insert(out, d .. '|' .. o)
  else
    redis.call('SREM', KEYS[1], d)
  end
end
return {r[1], out}
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
    pub(super) route: Script,
    pub(super) heartbeat: Script,
    pub(super) reap: Script,
    pub(super) owned: Script,
    pub(super) lead: Script,
    pub(super) pair_open: Script,
    pub(super) pair_claim: Script,
    pub(super) pair_route: Script,
    pub(super) pair_close: Script,
    /// [`super::presence`]'s.
    pub(super) presence: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            claim: Script::new(CLAIM),
            route: Script::new(ROUTE),
            heartbeat: Script::new(HEARTBEAT),
            reap: Script::new(REAP),
            owned: Script::new(OWNED),
            lead: Script::new(LEAD),
            pair_open: Script::new(PAIR_OPEN),
            pair_claim: Script::new(PAIR_CLAIM),
            pair_route: Script::new(PAIR_ROUTE),
            pair_close: Script::new(PAIR_CLOSE),
            presence: super::presence::script(),
        }
    }
}
