-- Lease a block of delivery ids for a node to reserve from (held frames).
-- ARGV: 3 the block's size. Returns the block's last id (the counter,
-- moved past the block: no other node or enqueue gets any id in it).
local stale = guard()
if stale then return stale end
return redis.call('HINCRBY', P .. 'epoch', 'next', ARGV[3])
