"""The lease script (see `scripts.py` for the calling convention).

Keys: `P leases` HASH lease id -> the lease (msgpack, written by Python); `P leases:v` the
version of that hash, +1 per change. `read` returns the version and every lease; `commit`
applies a change decided on a snapshot (`lease_engine`) only if the version is still the one
read, so the check and the write are one atomic step; otherwise it changes nothing and the
caller reads again.
"""

from __future__ import annotations

from .scripts import COMMON, Lua, Part

LEASES = Lua(
    "leases",
    (COMMON, Part("\nlocal H, V\n", "\nH, V = P .. 'leases', P .. 'leases:v'\n")),
    r"""

if OP == 'read' then
  return {redis.call('GET', V) or '0', redis.call('HGETALL', H)}
end

if OP == 'commit' then
  -- ARGV: expected version, number of ids to delete, the ids, then (id, lease) pairs to write
  local expected = ARGV[5]
  local ndelete = arg_num(ARGV[6], 'the number of deletes')
  if (redis.call('GET', V) or '0') ~= expected then
    return {0, {}}
  end
  check_seq(V)
  for i = 7, 6 + ndelete do
    redis.call('HDEL', H, ARGV[i])
  end
  for i = 7 + ndelete, #ARGV, 2 do
    redis.call('HSET', H, ARGV[i], ARGV[i + 1])
  end
  if #ARGV > 6 then
    redis.call('INCR', V)
    touch('leases')
    publish()
  end
  return once_done({1, touched_list})
end

error('unknown lease operation ' .. OP)
""",
)
