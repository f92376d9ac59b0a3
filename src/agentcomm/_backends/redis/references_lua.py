"""The references script: content-addressed blobs and their counts (keys in `ref_holds.py`;
see `scripts.py` for the calling convention). Explicit references are counted per holder in
`P ref:<id>:h` (holder -> count), changed in the same call as the blob's `refcount`."""

from __future__ import annotations

from .ref_holds import REF_HOLDS
from .scripts import COMMON, Lua, Part

_DEFS = r"""
local function stat(name, n)
  if n ~= 0 then hincr(P .. 'refs:stats', name, n) end
end

-- id, size, stored_size, compression, content_type, created_at, expires_at, refcount
local function record(id)
  local v = redis.call('HMGET', P .. 'ref:' .. id, 'size', 'stored_size', 'compression',
    'content_type', 'created_at', 'expires_at', 'refcount')
  if not v[1] then return false end
  return {id, v[1], v[2], v[3], v[4], v[5], v[6], v[7]}
end

-- the hub's strategy, read by `ref_drop` in every script
local function set_strategy(strategy)
  if redis.call('GET', P .. 'refs:gc') ~= strategy then
    redis.call('SET', P .. 'refs:gc', strategy)
  end
end

-- the content is stored already: add a reference, keep the longer expiry
local function existing(id, expires)
  local key = P .. 'ref:' .. id
  local old = redis.call('HGET', key, 'expires_at')
  if not old then return false end
  stat('dedupe_hits', 1)
  local merged = ''
  if old ~= '' and expires ~= '' then
    merged = old
    if tonumber(expires) > (stored_num(old) or 0) then merged = expires end
  end
  redis.call('HSET', key, 'expires_at', merged)
  if hincr(key, 'refcount', 1) == 1 then
    redis.call('ZREM', P .. 'refs:free', id)
  end
  return record(id)
end

local function insert(id, size, stored, compression, ctype, expires, chunks)
  redis.call('HSET', P .. 'ref:' .. id, 'refcount', 1, 'size', size, 'stored_size', stored,
    'compression', compression, 'content_type', ctype, 'created_at', NOW_S,
    'expires_at', expires, 'chunks', chunks)
  redis.call('ZADD', P .. 'refs', NOW_S, id)
  stat('total_refs', 1)
  stat('total_bytes', tonumber(size))
  stat('bytes', tonumber(size))
  stat('stored', tonumber(stored))
  return record(id)
end

local function drop_upload(upload)
  redis.call('DEL', P .. 'refs:up:' .. upload)
  redis.call('ZREM', P .. 'refs:uploads', upload)
end

-- change `holder`'s count on `id` by `delta`; false (nothing changed) below zero
local function holder_add(id, holder, delta)
  local hk = P .. 'ref:' .. id .. ':h'
  if delta > 0 then
    redis.call('HINCRBY', hk, holder, delta)
    return true
  end
  local n = tonumber(redis.call('HGET', hk, holder)) or 0
  if n + delta < 0 then return false end
  if n + delta == 0 then
    redis.call('HDEL', hk, holder)
  elseif delta ~= 0 then
    redis.call('HINCRBY', hk, holder, delta)
  end
  return true
end

"""

REFS = Lua(
    "refs",
    (COMMON, Part(REF_HOLDS), Part(_DEFS)),
    r"""
local result = false
-- the numbers of each op, checked before its first write
if OP == 'put' or OP == 'commit' then
  -- put: strategy, holder, id, size, ...; commit: strategy, holder, upload, id, size, ...
  local a = 8
  if OP == 'commit' then a = 9 end
  arg_num(ARGV[a], 'size')
  arg_num(ARGV[a + 1], 'stored_size')
  arg_opt_num(ARGV[a + 4], 'expires_at')
elseif OP == 'dedupe' then
  -- strategy, holder, id, expires_at
  arg_opt_num(ARGV[8], 'expires_at')
elseif OP == 'stage' then
  if #ARGV % 2 ~= 1 then error({err = 'BADARG stage takes chunk number, chunk pairs'}) end
  for i = 6, #ARGV, 2 do arg_num(ARGV[i], 'chunk number') end
elseif OP == 'read' then
  arg_num(ARGV[6], 'start')
  arg_num(ARGV[7], 'limit')
elseif OP == 'adjust' then
  arg_num(ARGV[7], 'delta')
elseif OP == 'gc' then
  arg_num(ARGV[5], 'abandoned before')
end

if OP == 'put' then
  -- strategy, holder, id, size, stored_size, compression, content_type, expires_at, chunks...
  set_strategy(ARGV[5])
  local id = ARGV[7]
  result = existing(id, ARGV[12])
  if not result then
    local ck = P .. 'ref:' .. id .. ':c'
    redis.call('DEL', ck, P .. 'ref:' .. id .. ':h')
    for i = 13, #ARGV do redis.call('HSET', ck, i - 13, ARGV[i]) end
    result = insert(id, ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12], #ARGV - 12)
  end
  holder_add(id, ARGV[6], 1)

elseif OP == 'dedupe' then
  -- strategy, holder, id, expires_at
  set_strategy(ARGV[5])
  result = existing(ARGV[7], ARGV[8])
  if result then holder_add(ARGV[7], ARGV[6], 1) end

elseif OP == 'stage' then
  -- upload ('' for a new one), then chunk number and chunk pairs
  local upload = ARGV[5]
  if upload == '' then
    upload = redis.call('INCR', P .. 'refs:upseq')
    redis.call('ZADD', P .. 'refs:uploads', NOW_S, upload)
  end
  local uk = P .. 'refs:up:' .. upload
  for i = 6, #ARGV, 2 do redis.call('HSET', uk, ARGV[i], ARGV[i + 1]) end
  result = tonumber(upload)

elseif OP == 'commit' then
  -- strategy, holder, upload, id, size, stored_size, compression, content_type, expires_at
  set_strategy(ARGV[5])
  local upload, id = ARGV[7], ARGV[8]
  result = existing(id, ARGV[13])
  if result then
    drop_upload(upload)
  else
    local uk, ck = P .. 'refs:up:' .. upload, P .. 'ref:' .. id .. ':c'
    local chunks = redis.call('HLEN', uk)
    redis.call('DEL', ck, P .. 'ref:' .. id .. ':h')
    if chunks > 0 then redis.call('RENAME', uk, ck) end
    drop_upload(upload)
    result = insert(id, ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13], chunks)
  end
  holder_add(id, ARGV[6], 1)

elseif OP == 'abort' then
  drop_upload(ARGV[5])

elseif OP == 'read' then
  local id, start, limit = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
  local r = record(id)
  if r then
    local count = tonumber(redis.call('HGET', P .. 'ref:' .. id, 'chunks')) or 0
    local last = math.min(start + limit, count) - 1
    local chunks = {}
    if last >= start then
      local f = {'HMGET', P .. 'ref:' .. id .. ':c'}
      for n = start, last do f[#f + 1] = n end
      chunks = redis.call(unpack(f))
    end
    result = {r, chunks}
  end

elseif OP == 'adjust' then
  -- strategy, id, delta, holder ('' for a row's reference handed over)
  set_strategy(ARGV[5])
  local id, delta, holder = ARGV[6], tonumber(ARGV[7]), ARGV[8]
  local key = P .. 'ref:' .. id
  local n = stored_num(redis.call('HGET', key, 'refcount'))
  if n and holder ~= '' and not holder_add(id, holder, delta) then
    result = 'NOTHELD'
  elseif n then
    local after = math.max(n + delta, 0)
    if after ~= n then redis.call('HSET', key, 'refcount', after) end
    if n == 0 and after > 0 then redis.call('ZREM', P .. 'refs:free', id) end
    result = record(id)
    if delta < 0 and after == 0 then ref_unheld(id, ARGV[5]) end
  end

elseif OP == 'list' then
  local out = {}
  for _, id in ipairs(redis.call('ZRANGE', P .. 'refs', 0, -1)) do
    out[#out + 1] = record(id)
  end
  result = out

elseif OP == 'gc' then
  -- the time before which an upload was abandoned
  local out = {}
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'refs:free', '-inf', NOW_S)) do
    local r = record(id)
    local held = r and stored_num(r[8])
    if r and held and held <= 0 then
      ref_evict(id)
      out[#out + 1] = r
    elseif not r then
      redis.call('ZREM', P .. 'refs:free', id)
    end
  end
  for _, upload in ipairs(redis.call('ZRANGEBYSCORE', P .. 'refs:uploads', '-inf', ARGV[5])) do
    drop_upload(upload)
  end
  stat('gc_runs', 1)
  result = out

elseif OP == 'stats' then
  result = {redis.call('HMGET', P .. 'refs:stats', 'total_refs', 'total_bytes', 'gc_runs',
    'evictions', 'dedupe_hits', 'bytes', 'stored'), redis.call('ZCARD', P .. 'refs'),
    redis.call('ZCARD', P .. 'refs:free')}
end

return once_done(result)
""",
)
