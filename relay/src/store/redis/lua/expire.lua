-- Delete frames past their TTL (from each queue's head, in id order) and
-- one-sided authorisations past theirs, at most ARGV[5] of each.
-- ARGV: 3 now, 4 pending cutoff (authorisations made at or before it go;
-- -1: none), 5 limit. Returns {frames, authorisations}.
local stale = guard()
if stale then return stale end
local now, cutoff, limit = num(ARGV[3]), num(ARGV[4]), num(ARGV[5])
local frames = 0
local due = redis.call('ZRANGEBYSCORE', P .. 'qexp', '-inf', now, 'LIMIT', 0, limit)
for _, to in ipairs(due) do
  if frames >= limit then
    break
  end
  local q = P .. 'q:' .. to
  local es = redis.call('XRANGE', q, '-', '+', 'COUNT', limit - frames)
  local gone = {}
  for _, e in ipairs(es) do
    if num(fields(e[2]).e) > now then
      break
    end
    gone[#gone + 1] = e
  end
  if #gone > 0 then
    unaccount_all(to, gone)
    redis.call('XTRIM', q, 'MINID', int(entry_id(gone[#gone][1]) + 1) .. '-0')
    frames = frames + #gone
  end
  settle(to)
end
local auths = 0
if cutoff >= 0 then
  local old = redis.call('ZRANGEBYSCORE', P .. 'pend', '-inf', cutoff, 'WITHSCORES', 'LIMIT', 0, limit)
  for i = 1, #old, 2 do
    local member, since = old[i], num(old[i + 1])
    local by, peer = string.sub(member, 1, 32), string.sub(member, 33, 64)
    redis.call('ZREM', P .. 'pend', member)
    local v = redis.call('HGET', P .. 'r:' .. by, peer)
    if v then
      local s, addr = row(v)
      -- Only the row this entry was made for (each change of a row moves
      -- its entry; anything else is a stale entry, gone now).
      if s == since and redis.call('HEXISTS', P .. 'r:' .. peer, by) == 0 then
        redis.call('HDEL', P .. 'r:' .. by, peer)
        count_pending(addr, -1)
        auths = auths + 1
      end
    end
  end
end
return {frames, auths}
