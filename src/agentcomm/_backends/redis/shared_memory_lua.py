"""The shared-memory script: one operation on one space per call (see `scripts.py` for the
calling convention), so a version check and the write it guards are atomic across every hub.

Values and kept versions hold their payload's reference (`ref_holds.py`); change-log entries
do not.
"""

from __future__ import annotations

from ..._kv_records import DEFAULT_CHANGE_LOG, DEFAULT_HISTORY, TOMBSTONE_KEEP
from .ref_holds import REF_HOLDS
from .scripts import COMMON, Lua, Part

# One space S = P kv:<owner>/<namespace>/ (neither part can contain "/"):
#   S meta          HASH: seq (last change), floor, hist, clog, writes, conflicts, bytes
#   S log           STREAM: the change log, entry id "<seq>-0"
#   S r:<key>       HASH: the key's current version v, data d (absent: tombstone), kind k,
#                   created c, updated u, by b, expires e
#   S live          ZSET (score 0, by key): live keys
#   S exp           ZSET: expires_at of live keys that have one
#   S tomb          ZSET: updated_at of tombstones
#   S h:<key>       ZSET: versions kept in history; S p:<key>:<version> HASH: one of them
#   P kvspaces      SET: "<owner>/<namespace>" of every space written to

_DEFS = r"""
local PUT, DELETE, EXPIRE = 0, 1, 2
local SP, S, META
local FIELDS = {'v', 'd', 'k', 'c', 'u', 'b', 'e'}

local function row(key)
  return redis.call('HMGET', S .. 'r:' .. key, 'v', 'd', 'k', 'c', 'u', 'b', 'e')
end

local function settings()
  local v = redis.call('HMGET', META, 'hist', 'clog', 'seq', 'floor')
  return stored_num(v[1]) or DEFAULT_HISTORY, stored_num(v[2]) or DEFAULT_CHANGE_LOG,
    stored_num(v[3]) or 0, stored_num(v[4]) or 0
end

local function append(kind, key, version, data, dk, by)
  local _, clog, _, floor = settings()
  local seq = hincr(META, 'seq', 1)
  hincr(META, 'writes', 1)
  local f = {'XADD', S .. 'log', seq .. '-0', 'k', kind, 'key', key, 'v', version, 'dk', dk,
    'at', NOW_S}
  if data then f[#f + 1] = 'd'; f[#f + 1] = data end
  if by then f[#f + 1] = 'b'; f[#f + 1] = by end
  redis.call(unpack(f))
  if seq - floor > clog then
    redis.call('XTRIM', S .. 'log', 'MAXLEN', clog)
    redis.call('HSET', META, 'floor', seq - clog)
  end
  touch('kv:' .. SP)  -- the space's `Space.channel`
end

-- the reference a past version `version` of `key` holds, or nil
local function past_ref(key, version)
  local v = redis.call('HMGET', S .. 'p:' .. key .. ':' .. version, 'd', 'k')
  return ref_id_of(v[1], v[2])
end

-- values and kept versions hold their references; change-log entries do not
local function keep_history(key, old, new_version)
  local hist = settings()
  if hist <= 1 then return end
  local hk = S .. 'h:' .. key
  if old and tonumber(old[1]) then
    local ref = ref_id_of(old[2], old[3])
    if ref then ref_hold(ref) end
    local f = {'HSET', S .. 'p:' .. key .. ':' .. old[1]}
    for i, name in ipairs(FIELDS) do
      if old[i] then f[#f + 1] = name; f[#f + 1] = old[i] end
    end
    redis.call(unpack(f))
    redis.call('ZADD', hk, old[1], old[1])
  end
  local floor = new_version - hist
  for _, version in ipairs(redis.call('ZRANGEBYSCORE', hk, '-inf', floor)) do
    local ref = past_ref(key, version)
    if ref then ref_drop(ref) end
    redis.call('DEL', S .. 'p:' .. key .. ':' .. version)
  end
  redis.call('ZREMRANGEBYSCORE', hk, '-inf', floor)
end

-- the live row `old` of `key` becomes a tombstone; returns the new version
local function finish(key, old, kind, by)
  local version = (tonumber(old[1]) or 0) + 1
  keep_history(key, old, version)
  local rk = S .. 'r:' .. key
  redis.call('DEL', rk)
  local f = {'HSET', rk, 'v', version, 'k', 0, 'u', NOW_S}
  if by then f[#f + 1] = 'b'; f[#f + 1] = by end
  redis.call(unpack(f))
  redis.call('ZREM', S .. 'live', key)
  redis.call('ZREM', S .. 'exp', key)
  redis.call('ZADD', S .. 'tomb', NOW_S, key)
  hincr(META, 'bytes', -#old[2])
  local ref = ref_id_of(old[2], old[3])
  if ref then ref_drop(ref) end
  append(kind, key, version, nil, 0, by)
  return version
end

-- the live row of `key` (recording its expiry if due) and the key's latest version
local function current(key)
  local v = row(key)
  if not v[1] then return nil, 0 end
  -- a version that is not a number (a damaged row) counts as 0: the next write replaces it
  if not v[2] then return nil, tonumber(v[1]) or 0 end
  local expires = stored_num(v[7])
  if expires and expires <= now then return nil, finish(key, v, EXPIRE, nil) end
  return v, tonumber(v[1]) or 0
end

local function expire_due()
  for _, key in ipairs(redis.call('ZRANGEBYSCORE', S .. 'exp', '-inf', NOW_S)) do
    local v = row(key)
    if v[2] then finish(key, v, EXPIRE, nil) else redis.call('ZREM', S .. 'exp', key) end
  end
  local first = redis.call('ZRANGE', S .. 'exp', 0, 0, 'WITHSCORES')
  return first[2] or false
end

local function opt(value)
  if value == '' then return nil end
  return value
end

"""

_BEGIN = r"""
SP = ARGV[5]
S = P .. 'kv:' .. SP .. '/'
META = S .. 'meta'
"""


def _fill(lua: str) -> str:
    return (
        lua.replace("DEFAULT_HISTORY", str(DEFAULT_HISTORY))
        .replace("DEFAULT_CHANGE_LOG", str(DEFAULT_CHANGE_LOG))
        .replace("TOMBSTONE_KEEP", repr(TOMBSTONE_KEEP))
    )


KV = Lua(
    "kv",
    (COMMON, Part(REF_HOLDS), Part(_fill(_DEFS), _BEGIN)),
    _fill(r"""
-- every op but `counts` may write (an expiry is a change): the change-log sequence first
local seq_now = redis.call('HGET', META, 'seq')
if seq_now and not string.match(seq_now, '^%d+$') then
  error({err = 'DAMAGED ' .. META .. ' seq is not a sequence number (' .. seq_now .. ')'})
end

local result = false
if OP == 'get' then
  local v = current(ARGV[6])
  result = v or false

elseif OP == 'put' then
  local key, expected, data, dk = ARGV[6], opt(ARGV[7]), ARGV[8], ARGV[9]
  local expires, by, hist, clog = opt(ARGV[10]), opt(ARGV[11]), opt(ARGV[12]), opt(ARGV[13])
  -- the new value's hold first, before any other write (and before an overwrite with the
  -- same content releases the old one)
  arg_num(dk, 'data_kind')
  arg_opt_num(expires, 'expires_at')
  arg_opt_num(hist, 'history')
  arg_opt_num(clog, 'change_log')
  arg_opt_num(expected, 'expected_version')
  local ref = ref_id_of(data, dk)
  if ref and not ref_hold(ref) then ref_not_found(ref) end
  if hist then redis.call('HSET', META, 'hist', hist) end
  if clog then redis.call('HSET', META, 'clog', clog) end
  redis.call('SADD', P .. 'kvspaces', SP)
  local old, version = current(key)
  local actual = 0
  if old then actual = version end
  if expected and tonumber(expected) ~= actual then
    if ref then ref_unhold(ref) end
    hincr(META, 'conflicts', 1)
    result = {1, actual}
  else
    version = version + 1
    keep_history(key, old, version)
    local created = NOW_S
    if old and stored_num(old[4]) then created = old[4] end
    local rk = S .. 'r:' .. key
    redis.call('DEL', rk)
    local f = {'HSET', rk, 'v', version, 'd', data, 'k', dk, 'c', created, 'u', NOW_S}
    if by then f[#f + 1] = 'b'; f[#f + 1] = by end
    if expires then f[#f + 1] = 'e'; f[#f + 1] = expires end
    redis.call(unpack(f))
    redis.call('ZADD', S .. 'live', 0, key)
    redis.call('ZREM', S .. 'tomb', key)
    if expires then
      redis.call('ZADD', S .. 'exp', expires, key)
    else
      redis.call('ZREM', S .. 'exp', key)
    end
    local delta = #data
    if old then
      delta = delta - #old[2]
      local old_ref = ref_id_of(old[2], old[3])
      if old_ref then ref_drop(old_ref) end
    end
    hincr(META, 'bytes', delta)
    append(PUT, key, version, data, dk, by)
    result = {0, version, created}
  end

elseif OP == 'delete' then
  local key, expected, by = ARGV[6], opt(ARGV[7]), opt(ARGV[8])
  arg_opt_num(expected, 'expected_version')
  local old, version = current(key)
  local actual = 0
  if old then actual = version end
  if expected and tonumber(expected) ~= actual then
    hincr(META, 'conflicts', 1)
    result = {1, actual}
  elseif not old then
    result = {0, 0}
  else
    result = {0, finish(key, old, DELETE, by)}
  end

elseif OP == 'scan' then
  expire_due()
  local out = {}
  if ARGV[6] == '1' then
    local prefix = ARGV[7]
    local keys
    if prefix == '' then
      keys = redis.call('ZRANGE', S .. 'live', 0, -1)
    else
      local upper = prefix:sub(1, -2) .. string.char(prefix:byte(-1) + 1)
      keys = redis.call('ZRANGEBYLEX', S .. 'live', '[' .. prefix, '(' .. upper)
    end
    for _, key in ipairs(keys) do
      local v = row(key)
      out[#out + 1] = {key, v[1], v[2], v[3], v[4], v[5], v[6], v[7]}
    end
  end
  local _, _, seq = settings()
  result = {out, seq}

elseif OP == 'changes' then
  local after, limit = arg_num(ARGV[6], 'after'), arg_num(ARGV[7], 'limit')
  local next_expiry = expire_due()
  local _, _, seq, floor = settings()
  local out = {}
  if floor <= after and after < seq then
    out = redis.call('XRANGE', S .. 'log', (after + 1) .. '-0', '+', 'COUNT', limit)
  end
  result = {out, floor, seq, next_expiry}

elseif OP == 'history' then
  local key, limit = ARGV[6], arg_num(ARGV[7], 'limit')
  local out = {}
  local v = current(key)
  if v then out[1] = v end
  local versions = redis.call('ZREVRANGE', S .. 'h:' .. key, 0, limit - 1)
  for _, version in ipairs(versions) do
    if #out >= limit then break end
    out[#out + 1] = redis.call('HMGET', S .. 'p:' .. key .. ':' .. version,
      'v', 'd', 'k', 'c', 'u', 'b', 'e')
  end
  result = out

elseif OP == 'counts' then
  local m = redis.call('HMGET', META, 'writes', 'conflicts', 'bytes')
  local keys = redis.call('ZCARD', S .. 'live')
  local size = tonumber(m[3]) or 0
  for _, key in ipairs(redis.call('ZRANGEBYSCORE', S .. 'exp', '-inf', NOW_S)) do
    keys = keys - 1
    size = size - redis.call('HSTRLEN', S .. 'r:' .. key, 'd')
  end
  result = {keys, size, tonumber(m[1]) or 0, tonumber(m[2]) or 0}

elseif OP == 'prune' then
  expire_due()
  local limit = string.format('%.17g', now - TOMBSTONE_KEEP)
  local stale = redis.call('ZRANGEBYSCORE', S .. 'tomb', '-inf', limit, 'LIMIT', 0, 10000)
  for _, key in ipairs(stale) do
    local rk = S .. 'r:' .. key
    if not redis.call('HGET', rk, 'd') then redis.call('DEL', rk) end
    local hk = S .. 'h:' .. key
    for _, version in ipairs(redis.call('ZRANGE', hk, 0, -1)) do
      local ref = past_ref(key, version)
      if ref then ref_drop(ref) end
      redis.call('DEL', S .. 'p:' .. key .. ':' .. version)
    end
    redis.call('DEL', hk)
    redis.call('ZREM', S .. 'tomb', key)
  end
  result = #stale
end

publish()
return once_done({result, touched_list})
"""),
)
