-- Queue frames whose delivery ids a node leased (`lease.lua`) and held in
-- memory, each checked as `enqueue.lua` checks a frame (for a connected
-- recipient) and kept under its id.
-- ARGV: 3 the fence token of the recipients' connection they were held
-- for (0: none), 4 expires, 5..11 the limits (as enqueue.lua's 9..15),
-- then five per frame: id, to, from, addr, payload.
-- Returns one answer per frame: the id it is stored under (its own, or a
-- fresh one when the queue already holds a higher id), or a refusal code
-- <= 0: `admit`'s,
-- -6 the recipient's ownership (or, nobody owning it, its latest claim)
-- has another fence (a newer connection may have been handed higher ids)
-- or the stream refused the write, -7 an id the counter never reached
-- (leased under another epoch).
local stale = guard()
if stale then return stale end
local fence, expires = ARGV[3], ARGV[4]
local counter = num(redis.call('HGET', P .. 'epoch', 'next'))
local out = {}
local i = 12
while ARGV[i + 4] do
  local id, to, from, addr, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  i = i + 5
  local answer
  if num(id) > counter or num(id) < 1 then
    answer = -7
  else
    if fence ~= '0' then
      -- The owner's fence, or, when nobody owns the device, its latest
      -- claim's (`last:`, kept a day): a write held up past another node's
      -- whole connection for the device (which may have handed it higher
      -- ids) is refused either way.
      local o = redis.call('GET', P .. 'own:' .. to)
      local current
      if o then
        current = string.match(o, '|(%d+)$')
      else
        current = redis.call('GET', P .. 'last:' .. to)
      end
      if current and current ~= fence then
        answer = -6
      end
    end
    if not answer then
      local refused, a = admit(to, from, addr, string.len(payload), true, 5)
      if refused then
        answer = refused
      else
        local added = redis.pcall('XADD', a.q, id .. '-0', 'f', from, 'a', addr, 'e', expires, 'p', payload)
        local stored = num(id)
        if type(added) == 'table' and added.err then
          -- The queue holds a higher id already (a frame written for the
          -- recipient while this one was held): a stream takes ids in
          -- increasing order only, so the frame takes a fresh id from the
          -- counter, above every id handed out so far. The sender's later
          -- frames in this call, and in later ones, then come out below
          -- the queue's top too and go the same way, in their order (a
          -- refusal here would have its sender resend it after its later
          -- frames). The recipient may have had it under its held id: the
          -- end-to-end layer drops the copy.
          stored = redis.call('HINCRBY', P .. 'epoch', 'next', 1)
          added = redis.pcall('XADD', a.q, stored .. '-0', 'f', from, 'a', addr, 'e', expires, 'p', payload)
        end
        if type(added) == 'table' and added.err then
          answer = -6
        else
          put(to, from, addr, expires, a)
          answer = stored
        end
      end
    end
  end
  out[#out + 1] = answer
end
return out
