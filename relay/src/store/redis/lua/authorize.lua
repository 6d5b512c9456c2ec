-- `by` (from `addr`) authorises `peer`. ARGV: 3 by, 4 peer, 5 addr, 6 now,
-- 7 max one-sided per address. Returns 1 done, -1 too many peers, -2 too
-- many one-sided authorisations from the address.
local stale = guard()
if stale then return stale end
local by, peer, addr, now = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local mine = P .. 'r:' .. by
if redis.call('HEXISTS', mine, peer) == 1 then
  return 1
end
if redis.call('HLEN', mine) >= MAX_PEERS then
  return -1
end
local reverse = redis.call('HGET', P .. 'r:' .. peer, by)
if reverse then
  -- It answers `peer`'s one-sided authorisation: a route, for good.
  local _, raddr = row(reverse)
  redis.call('ZREM', P .. 'pend', peer .. by)
  count_pending(raddr, -1)
else
  if addr ~= ZERO and num(redis.call('HGET', P .. 'pa', addr)) >= num(ARGV[7]) then
    return -2
  end
  redis.call('ZADD', P .. 'pend', now, by .. peer)
  count_pending(addr, 1)
end
redis.call('HSET', mine, peer, now .. ':' .. addr)
return 1
