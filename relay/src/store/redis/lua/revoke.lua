-- `by` withdraws its authorisation of `peer`: the frames between them go
-- both ways; `peer`'s authorisation of `by` is one-sided from now on.
-- ARGV: 3 by, 4 peer, 5 now. Returns the frames dropped.
local stale = guard()
if stale then return stale end
local by, peer, now = ARGV[3], ARGV[4], ARGV[5]
local mine = redis.call('HGET', P .. 'r:' .. by, peer)
if not mine then
  return 0
end
local theirs = redis.call('HGET', P .. 'r:' .. peer, by)
redis.call('HDEL', P .. 'r:' .. by, peer)
if not theirs then
  local _, maddr = row(mine)
  redis.call('ZREM', P .. 'pend', by .. peer)
  count_pending(maddr, -1)
else
  -- Counted against the address it was made from, past its cap if need
  -- be: `by`'s revocation is not `peer`'s doing.
  local _, taddr = row(theirs)
  redis.call('HSET', P .. 'r:' .. peer, by, now .. ':' .. taddr)
  redis.call('ZADD', P .. 'pend', now, peer .. by)
  count_pending(taddr, 1)
end
-- Drop the frames queued for `to` by `from`.
local function drop(to, from)
  local q = P .. 'q:' .. to
  local es = redis.call('XRANGE', q, '-', '+')
  local gone = {}
  for _, e in ipairs(es) do
    if fields(e[2]).f == from then
      gone[#gone + 1] = e
    end
  end
  if #gone == 0 then
    return 0
  end
  unaccount_all(to, gone)
  for i = 1, #gone, 500 do
    local ids = {}
    for j = i, math.min(i + 499, #gone) do
      ids[#ids + 1] = gone[j][1]
    end
    redis.call('XDEL', q, unpack(ids))
  end
  settle(to)
  return #gone
end
return drop(peer, by) + drop(by, peer)
