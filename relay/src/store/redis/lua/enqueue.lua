-- Queue a frame if the route is mutual and every limit allows it.
-- ARGV: 3 to, 4 from, 5 addr, 6 payload, 7 expires, 8 live (0/1),
-- 9 max_frames, 10 max_bytes, 11 sender pair max, 12 sender total max,
-- 13 total max, 14 total + overflow, 15 sender overflow max.
-- Returns the delivery id, or a refusal code <= 0: 0 no route, -1 queue
-- full, -2 sender share, -3 address share, -4 storage full, -5 overflow full.
local stale = guard()
if stale then return stale end
local to, from, addr, payload = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if redis.call('HEXISTS', P .. 'r:' .. from, to) == 0
  or redis.call('HEXISTS', P .. 'r:' .. to, from) == 0 then
  return 0
end
local len = string.len(payload)
local cost = len + COST
local q = P .. 'q:' .. to
local frames = redis.call('XLEN', q)
local queued = num(redis.call('HGET', P .. 'qb', to)) + frames * COST
if frames + 1 > num(ARGV[9]) or queued + cost > num(ARGV[10]) then
  return -1
end
if num(redis.call('HGET', P .. 'up', from .. to)) + cost > num(ARGV[11]) then
  return -2
end
local known = addr ~= ZERO
local by_addr = 0
if known then
  by_addr = num(redis.call('HGET', P .. 'ua', addr))
  if by_addr + cost > num(ARGV[12]) then
    return -3
  end
end
local t = redis.call('HMGET', P .. 'tot', 'n', 'b')
local total = num(t[2]) + num(t[1]) * COST + cost
if total > num(ARGV[13]) then
  -- Past the total: only for a connected recipient with a small queue,
  -- within the overflow and the address's share of it.
  if not (ARGV[8] == '1' and queued + cost <= LIVE) then
    return -4
  end
  if total > num(ARGV[14]) or (known and by_addr + cost > num(ARGV[15])) then
    return -5
  end
end
local id = redis.call('HINCRBY', P .. 'epoch', 'next', 1)
redis.call('XADD', q, int(id) .. '-0', 'f', from, 'a', addr, 'e', ARGV[7], 'p', payload)
-- The accounts (as `account` keeps them), from the values read above: the
-- totals in one write, and the queue's head indexed only when this frame
-- is its head (a non-empty queue's head is indexed already: `settle`).
redis.call('HINCRBY', P .. 'up', from .. to, int(cost))
if known then
  redis.call('HINCRBY', P .. 'ua', addr, int(cost))
end
redis.call('HSET', P .. 'tot', 'n', int(num(t[1]) + 1), 'b', int(num(t[2]) + len))
redis.call('HINCRBY', P .. 'qb', to, int(len))
if frames == 0 then
  redis.call('ZADD', P .. 'qexp', 'NX', ARGV[7], to)
end
return id
