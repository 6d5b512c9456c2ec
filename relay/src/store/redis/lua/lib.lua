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

-- The checks of an enqueue for a frame of `len` payload bytes from `from`
-- at `addr` for `to`: the mutual route, then every limit, from ARGV[at]
-- on: max_frames, max_bytes, sender pair max, sender total max, total
-- max, total + overflow, sender overflow max. `live`: `to` is connected.
-- Returns a refusal code <= 0 (0 no route, -1 queue full, -2 sender
-- share, -3 address share, -4 storage full, -5 overflow full), or nil and
-- what `put` needs.
local function admit(to, from, addr, len, live, at)
  if redis.call('HEXISTS', P .. 'r:' .. from, to) == 0
    or redis.call('HEXISTS', P .. 'r:' .. to, from) == 0 then
    return 0
  end
  local cost = len + COST
  local q = P .. 'q:' .. to
  local frames = redis.call('XLEN', q)
  local queued = num(redis.call('HGET', P .. 'qb', to)) + frames * COST
  if frames + 1 > num(ARGV[at]) or queued + cost > num(ARGV[at + 1]) then
    return -1
  end
  if num(redis.call('HGET', P .. 'up', from .. to)) + cost > num(ARGV[at + 2]) then
    return -2
  end
  local known = addr ~= ZERO
  local by_addr = 0
  if known then
    by_addr = num(redis.call('HGET', P .. 'ua', addr))
    if by_addr + cost > num(ARGV[at + 3]) then
      return -3
    end
  end
  local t = redis.call('HMGET', P .. 'tot', 'n', 'b')
  local total = num(t[2]) + num(t[1]) * COST + cost
  if total > num(ARGV[at + 4]) then
    -- Past the total: only for a connected recipient with a small queue,
    -- within the overflow and the address's share of it.
    if not (live and queued + cost <= LIVE) then
      return -4
    end
    if total > num(ARGV[at + 5]) or (known and by_addr + cost > num(ARGV[at + 6])) then
      return -5
    end
  end
  return nil, {q = q, frames = frames, t = t, cost = cost, len = len, known = known}
end

-- Keep the accounts for a frame `admit` let in and that is now in `to`'s
-- queue (as `account` keeps them), from the values `admit` read: the
-- totals in one write, and the queue's head indexed only when this frame
-- is its head (a non-empty queue's head is indexed already: `settle`).
local function put(to, from, addr, expires, a)
  redis.call('HINCRBY', P .. 'up', from .. to, int(a.cost))
  if a.known then
    redis.call('HINCRBY', P .. 'ua', addr, int(a.cost))
  end
  redis.call('HSET', P .. 'tot', 'n', int(num(a.t[1]) + 1), 'b', int(num(a.t[2]) + a.len))
  redis.call('HINCRBY', P .. 'qb', to, int(a.len))
  if a.frames == 0 then
    redis.call('ZADD', P .. 'qexp', 'NX', expires, to)
  end
end
