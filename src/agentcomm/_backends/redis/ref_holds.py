"""Lua for holding and dropping references, shared by every script whose rows carry payloads.

A payload stored by reference has `data_kind & REF_FLAG` set and the ref id (ASCII) as its
data. A script that stores such a payload calls `ref_hold(id)` in the same call; one that
removes it calls `ref_drop(id)`. Both expect `P` (the key prefix) and `now` in scope, as the
`COMMON` prelude of `scripts.py` defines them.

Redis does not roll a script back when it fails, so a script takes its holds before any
other write: when `ref_hold` returns false it calls `ref_not_found(id)` (which aborts the
script with an error the backend raises as `agentcomm.RefNotFound`), after `ref_unhold`-ing
the holds it already took. `ref_unhold` also undoes a hold whose row was not stored after
all (a version conflict, a deduplicated message): it never evicts.

Reference keys (P = prefix), owned by `references_lua.py`:
  P ref:<id>        HASH: refcount, size, stored_size, compression, content_type,
                    created_at, expires_at ("" for none), chunks (count)
  P ref:<id>:c      HASH: chunk number -> chunk bytes
  P ref:<id>:h      HASH: holder -> the explicit references it has on the blob (> 0)
  P refs            ZSET: every stored ref id, score created_at
  P refs:free       ZSET: the stored refs nobody holds, score expires_at (0 for none): the
                    evictable ones are those scored up to now
  P refs:gc         STRING: the store's GC strategy: ref_counting | ttl | manual
  P refs:stats      HASH: total_refs, total_bytes, gc_runs, evictions, dedupe_hits,
                    bytes and stored (original and stored bytes held now)
  P refs:up:<n>     HASH: chunk number -> chunk bytes of streamed upload n
  P refs:uploads    ZSET: uploads in progress, score started_at; P refs:upseq their counter
"""

from __future__ import annotations

from ..._ref_records import REF_FLAG

#: The error a script raises for a payload whose reference is not stored.
REF_NOT_FOUND = "REFNOTFOUND"

REF_HOLDS = rf"""
local REF_FLAG = {REF_FLAG}

local function ref_id_of(data, kind)
  local k = stored_num(kind)
  if data and k and k == math.floor(k) and bit.band(k, REF_FLAG) ~= 0 then return data end
  return nil
end

local function ref_not_found(id)
  error({{err = '{REF_NOT_FOUND} ' .. id}})
end

local function ref_evict(id)
  local key = P .. 'ref:' .. id
  local v = redis.call('HMGET', key, 'size', 'stored_size')
  redis.call('DEL', key, key .. ':c', key .. ':h')
  redis.call('ZREM', P .. 'refs', id)
  redis.call('ZREM', P .. 'refs:free', id)
  local st = P .. 'refs:stats'
  hincr(st, 'evictions', 1)
  hincr(st, 'bytes', -(tonumber(v[1]) or 0))
  hincr(st, 'stored', -(tonumber(v[2]) or 0))
end

-- returns false when the ref is not stored (evicted): the caller raises RefNotFound
local function ref_hold(id)
  local key = P .. 'ref:' .. id
  if redis.call('EXISTS', key) == 0 then return false end
  if hincr(key, 'refcount', 1) == 1 then
    redis.call('ZREM', P .. 'refs:free', id)
  end
  return true
end

-- the count of `id` just reached zero (or a release found it there): evict it under
-- ref_counting unless a TTL still runs; otherwise it waits in refs:free for a GC pass
local function ref_unheld(id, strategy)
  local key = P .. 'ref:' .. id
  local exp = stored_num(redis.call('HGET', key, 'expires_at'))
  local free = not exp or exp <= now
  strategy = strategy or redis.call('GET', P .. 'refs:gc')
  if free and strategy == 'ref_counting' then
    ref_evict(id)
    return true
  end
  redis.call('ZADD', P .. 'refs:free', exp or 0, id)
  return false
end

-- under ref_counting, the release that drops the count to zero evicts, unless a TTL still runs
local function ref_drop(id)
  local key = P .. 'ref:' .. id
  local n = stored_num(redis.call('HGET', key, 'refcount'))
  if not n or n <= 0 then return end
  if hincr(key, 'refcount', -1) == 0 then ref_unheld(id, nil) end
end

-- undo a hold this script took: the count goes back to what it was, nothing is evicted
local function ref_unhold(id)
  local key = P .. 'ref:' .. id
  if redis.call('EXISTS', key) == 0 then return end
  if hincr(key, 'refcount', -1) == 0 then
    local exp = stored_num(redis.call('HGET', key, 'expires_at')) or 0
    redis.call('ZADD', P .. 'refs:free', exp, id)
  end
end

-- every id of `ids` (false/nil entries skipped) is stored; raises RefNotFound otherwise
local function ref_require(ids, n)
  for i = 1, n do
    local id = ids[i]
    if id and id ~= '' and redis.call('EXISTS', P .. 'ref:' .. id) == 0 then
      ref_not_found(id)
    end
  end
end
"""
