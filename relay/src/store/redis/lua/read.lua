-- Reads that take more than one command. ARGV: 3 what, 4 a, 5 b.
-- "route": 1 when a and b authorised each other; "peers": a's mutual
-- peers; "depth": {frames, bytes} for a; "totals": {frames, bytes,
-- one-sided authorisations}.
local what, a, b = ARGV[3], ARGV[4], ARGV[5]
if what == 'route' then
  if redis.call('HEXISTS', P .. 'r:' .. a, b) == 1 and redis.call('HEXISTS', P .. 'r:' .. b, a) == 1 then
    return 1
  end
  return 0
elseif what == 'peers' then
  local out = {}
  for _, peer in ipairs(redis.call('HKEYS', P .. 'r:' .. a)) do
    if redis.call('HEXISTS', P .. 'r:' .. peer, a) == 1 then
      out[#out + 1] = peer
    end
  end
  return out
elseif what == 'depth' then
  return {redis.call('XLEN', P .. 'q:' .. a), num(redis.call('HGET', P .. 'qb', a))}
elseif what == 'totals' then
  local t = redis.call('HMGET', P .. 'tot', 'n', 'b', 'p')
  return {num(t[1]), num(t[2]), num(t[3])}
end
return redis.error_reply('unknown read ' .. tostring(what))
