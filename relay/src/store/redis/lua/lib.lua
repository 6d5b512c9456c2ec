-- Shared by every script of the Redis store (prepended to each; COST,
-- LIVE and MAX_PEERS are prepended by scripts.rs from the Rust constants).
-- ARGV[1]: the key namespace ("{tandem}:"), ARGV[2]: the epoch base the
-- caller read when it connected. Checks come before writes: a script that
-- fails half-way (garbage under the namespace) has written nothing, or only
-- the id counter.
local P = ARGV[1]
local ZERO = string.rep('0', 34)

-- The epoch guard: the base is gone (FLUSHALL, a wiped server, the key
-- deleted, which takes the id counter with it) or another one (a node made
-- a new one after a wipe): the caller's epoch is stale.
local function guard()
  if redis.call('HGET', P .. 'epoch', 'base') ~= ARGV[2] then
    return redis.error_reply('TANDEM_EPOCH the store epoch changed')
  end
  return nil
end

local function num(v)
  return tonumber(v) or 0
end

-- A whole number as Redis text (Lua's tostring would print 1e+14).
local function int(n)
  return string.format('%d', n)
end

-- A stream entry's fields as a table.
local function fields(kv)
  local m = {}
  for i = 1, #kv, 2 do
    m[kv[i]] = kv[i + 1]
  end
  return m
end

-- The delivery id of a stream entry id ("<id>-0").
local function entry_id(s)
  return tonumber(string.match(s, '^(%d+)')) or 0
end

-- Add `n` frames of `len` payload bytes in all, charged `cost` bytes in
-- all, from `from` at `addr` for `to` to the accounts (negative: remove).
local function account(to, from, addr, n, len, cost)
  -- As text: Lua prints 0 * -1 as "-0", which HINCRBY refuses.
  local c, l = int(cost), int(len)
  local pair = from .. to
  if redis.call('HINCRBY', P .. 'up', pair, c) <= 0 then
    redis.call('HDEL', P .. 'up', pair)
  end
  if addr ~= ZERO then
    if redis.call('HINCRBY', P .. 'ua', addr, c) <= 0 then
      redis.call('HDEL', P .. 'ua', addr)
    end
  end
  redis.call('HINCRBY', P .. 'tot', 'n', int(n))
  redis.call('HINCRBY', P .. 'tot', 'b', l)
  redis.call('HINCRBY', P .. 'qb', to, l)
end

-- After frames left `to`'s queue: forget it when empty, else index its
-- head's expiry for the sweep.
local function settle(to)
  local q = P .. 'q:' .. to
  if redis.call('XLEN', q) == 0 then
    redis.call('DEL', q)
    redis.call('HDEL', P .. 'qb', to)
    redis.call('ZREM', P .. 'qexp', to)
    return
  end
  local head = redis.call('XRANGE', q, '-', '+', 'COUNT', 1)
  local m = fields(head[1][2])
  redis.call('ZADD', P .. 'qexp', num(m.e), to)
end

-- Remove the entries `es` (read from `to`'s queue) from the accounts: one
-- update per sender and address, not per frame.
local function unaccount_all(to, es)
  local groups, order = {}, {}
  for _, e in ipairs(es) do
    local m = fields(e[2])
    local from, addr = m.f or '', m.a or ZERO
    local k = from .. '/' .. addr
    local g = groups[k]
    if not g then
      g = {from = from, addr = addr, n = 0, len = 0}
      groups[k] = g
      order[#order + 1] = k
    end
    g.n = g.n + 1
    g.len = g.len + string.len(m.p or '')
  end
  for _, k in ipairs(order) do
    local g = groups[k]
    account(to, g.from, g.addr, -g.n, -g.len, -(g.len + g.n * COST))
  end
end

-- A route row's parts: since, address.
local function row(v)
  local since, addr = string.match(v, '^(%d+):(%x+)$')
  return num(since), addr or ZERO
end

-- One one-sided authorisation more (1) or fewer (-1) for `addr`.
local function count_pending(addr, n)
  redis.call('HINCRBY', P .. 'tot', 'p', int(n))
  if addr ~= ZERO then
    if redis.call('HINCRBY', P .. 'pa', addr, int(n)) <= 0 then
      redis.call('HDEL', P .. 'pa', addr)
    end
  end
end
