-- Queue a frame if the route is mutual and every limit allows it.
-- ARGV: 3 to, 4 from, 5 addr, 6 payload, 7 expires, 8 live (0/1),
-- 9 max_frames, 10 max_bytes, 11 sender pair max, 12 sender total max,
-- 13 total max, 14 total + overflow, 15 sender overflow max.
-- Returns the delivery id, or a refusal code <= 0 (`admit`'s).
local stale = guard()
if stale then return stale end
local to, from, addr, payload = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local refused, a = admit(to, from, addr, string.len(payload), ARGV[8] == '1', 9)
if refused then return refused end
local id = redis.call('HINCRBY', P .. 'epoch', 'next', 1)
redis.call('XADD', a.q, int(id) .. '-0', 'f', from, 'a', addr, 'e', ARGV[7], 'p', payload)
put(to, from, addr, ARGV[7], a)
return id
