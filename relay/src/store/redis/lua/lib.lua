-- Shared by every script of the Redis store (prepended to each; COST,
-- LIVE and MAX_PEERS are prepended by scripts.rs from the Rust constants).
-- ARGV[1]: the key namespace ("{tandem}:"), ARGV[2]: the epoch base the
-- caller read when it connected. Checks come before writes: a script that
-- fails half-way (garbage under the namespace) has written nothing, or only
-- the id counter.
local P = ARGV[1]
local ZERO = string.rep('0', 34)

-- The epoch guard: the base is gone (FLUSHALL, a wiped server) or another
-- one (a node made a new one after a wipe): the caller's epoch is stale.
local function guard()
  if redis.call('GET', P .. 'base') ~= ARGV[2] then
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

-- Add (sign 1) or remove (-1) a frame of `len` bytes from `from` at `addr`
-- for `to` in the accounts.
local function account(to, from, addr, len, sign)
  -- As text: Lua prints 0 * -1 as "-0", which HINCRBY refuses.
  local cost = int((len + COST) * sign)
  local bytes = int(len * sign)
  local pair = from .. to
  if redis.call('HINCRBY', P .. 'up', pair, cost) <= 0 then
    redis.call('HDEL', P .. 'up', pair)
  end
  if addr ~= ZERO then
    if redis.call('HINCRBY', P .. 'ua', addr, cost) <= 0 then
      redis.call('HDEL', P .. 'ua', addr)
    end
  end
  redis.call('HINCRBY', P .. 'tot', 'n', int(sign))
  redis.call('HINCRBY', P .. 'tot', 'b', bytes)
  redis.call('HINCRBY', P .. 'qb', to, bytes)
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

-- Remove the entries `es` (read from `to`'s queue) from the accounts.
local function unaccount_all(to, es)
  for _, e in ipairs(es) do
    local m = fields(e[2])
    account(to, m.f or '', m.a or ZERO, string.len(m.p or ''), -1)
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
