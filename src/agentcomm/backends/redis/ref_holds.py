"""Lua for holding and dropping references, shared by every script whose rows carry payloads.

A payload stored by reference has `data_kind & REF_FLAG` set and the ref id (ASCII) as its
data. A script that stores such a payload calls `ref_hold(id)` in the same call; one that
removes it calls `ref_drop(id)`. Both expect `P` (the key prefix) and `now` in scope, as the
`_COMMON` prelude of `scripts.py` defines them.

Reference keys (P = prefix), owned by `references.py`:
  P ref:<id>        HASH: refcount, size, stored_size, compression, content_type,
                    created_at, expires_at ("" for none), chunks (count)
  P ref:<id>:c      HASH: chunk number -> chunk bytes
  P refs            ZSET: every stored ref id, score created_at
  P refs:gc         STRING: the store's GC strategy: ref_counting | ttl | manual
  P refs:stats      HASH: total_refs, total_bytes, gc_runs, evictions
"""

from __future__ import annotations

from ...ref_records import REF_FLAG

REF_HOLDS = rf"""
local REF_FLAG = {REF_FLAG}

local function ref_id_of(data, kind)
  if data and kind and bit.band(tonumber(kind), REF_FLAG) ~= 0 then return data end
  return nil
end

local function ref_evict(id)
  local key = P .. 'ref:' .. id
  redis.call('DEL', key, key .. ':c')
  redis.call('ZREM', P .. 'refs', id)
  redis.call('HINCRBY', P .. 'refs:stats', 'evictions', 1)
end

-- returns false when the ref is not stored (evicted): the caller raises RefNotFound
local function ref_hold(id)
  local key = P .. 'ref:' .. id
  if redis.call('EXISTS', key) == 0 then return false end
  redis.call('HINCRBY', key, 'refcount', 1)
  return true
end

-- under ref_counting, the release that drops the count to zero evicts, unless a TTL still runs
local function ref_drop(id)
  local key = P .. 'ref:' .. id
  if redis.call('EXISTS', key) == 0 then return end
  local n = redis.call('HINCRBY', key, 'refcount', -1)
  if n <= 0 and redis.call('GET', P .. 'refs:gc') == 'ref_counting' then
    local exp = redis.call('HGET', key, 'expires_at')
    if not exp or exp == '' or tonumber(exp) <= now then ref_evict(id) end
  end
end
"""
