-- Delete `to`'s frames up to an id. ARGV: 3 to, 4 up_to, 5 up_to + 1.
-- Returns how many were deleted.
local stale = guard()
if stale then return stale end
local to = ARGV[3]
local q = P .. 'q:' .. to
local es = redis.call('XRANGE', q, '-', ARGV[4])
if #es == 0 then
  return 0
end
unaccount_all(to, es)
redis.call('XTRIM', q, 'MINID', ARGV[5])
settle(to)
return #es
