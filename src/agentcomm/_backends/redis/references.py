"""References on Redis: a mixin of `RedisBackend`; each operation is one call of the `REFS`
script (keys in `ref_holds.py`), so a store racing a release of the same content on another
hub either finds the blob and holds it or stores it anew, never half of each.

A blob's chunks live in one hash, `P ref:<id>:c`, read a few chunks per call. A blob larger
than `_PUT_AT_ONCE` is staged in batches like a streamed upload and committed in one call, so
no single command carries more than a few megabytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..._ref_records import Ref, RefMeta, RefStats
from .ref_holds import REF_HOLDS
from .scripts import _COMMON

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from redis.commands.core import AsyncScript

#: An upload not committed after this many seconds was abandoned; `ref_gc` drops it.
ABANDONED_AFTER = 3600.0
_PUT_AT_ONCE = 8 << 20  # stored bytes above which `ref_put` stages its chunks first
_STAGE_BATCH = 4  # chunks per staging call of a large `ref_put`

REFS = (
    _COMMON
    + REF_HOLDS
    + r"""
local function stat(name, n)
  if n ~= 0 then redis.call('HINCRBY', P .. 'refs:stats', name, n) end
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
    if tonumber(expires) > tonumber(old) then merged = expires end
  end
  redis.call('HSET', key, 'expires_at', merged)
  if redis.call('HINCRBY', key, 'refcount', 1) == 1 then
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

local result = false
if OP == 'put' then
  -- strategy, id, size, stored_size, compression, content_type, expires_at, chunks...
  set_strategy(ARGV[5])
  local id = ARGV[6]
  result = existing(id, ARGV[11])
  if not result then
    local ck = P .. 'ref:' .. id .. ':c'
    redis.call('DEL', ck)
    for i = 12, #ARGV do redis.call('HSET', ck, i - 12, ARGV[i]) end
    result = insert(id, ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], #ARGV - 11)
  end

elseif OP == 'dedupe' then
  set_strategy(ARGV[5])
  result = existing(ARGV[6], ARGV[7])

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
  -- strategy, upload, id, size, stored_size, compression, content_type, expires_at
  set_strategy(ARGV[5])
  local upload, id = ARGV[6], ARGV[7]
  result = existing(id, ARGV[12])
  if result then
    drop_upload(upload)
  else
    local uk, ck = P .. 'refs:up:' .. upload, P .. 'ref:' .. id .. ':c'
    local chunks = redis.call('HLEN', uk)
    redis.call('DEL', ck)
    if chunks > 0 then redis.call('RENAME', uk, ck) end
    drop_upload(upload)
    result = insert(id, ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12], chunks)
  end

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
  set_strategy(ARGV[5])
  local id, delta = ARGV[6], tonumber(ARGV[7])
  local key = P .. 'ref:' .. id
  local n = tonumber(redis.call('HGET', key, 'refcount'))
  if n then
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
    if r and tonumber(r[8]) <= 0 then
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

return result
"""
)


def _ref(r: Sequence[Any]) -> Ref:
    """A record from the script's `record` fields."""
    return Ref(
        r[0].decode(), int(r[1]), int(r[2]), r[3].decode(), r[4].decode(), float(r[5]),
        float(r[6]) if r[6] else None, int(r[7]),
    )  # fmt: skip


def _opt_ref(r: Sequence[Any] | None) -> Ref | None:
    return None if not r else _ref(r)


def _expiry(meta: RefMeta) -> str:
    return "" if meta.expires_at is None else repr(float(meta.expires_at))


def _meta_args(meta: RefMeta) -> tuple[Any, ...]:
    """id, size, stored_size, compression, content_type, expires_at: as the scripts take them."""
    return (
        meta.id, meta.size, meta.stored_size, meta.compression, meta.content_type, _expiry(meta),
    )  # fmt: skip


class RedisReferences:
    """The reference part of the backend contract on Redis."""

    if TYPE_CHECKING:
        _client: aioredis.Redis
        ref_gc_strategy: str

        async def _call(
            self, script: AsyncScript, op: str, now: float, args: Sequence[Any]
        ) -> Any: ...

    _refs_script: AsyncScript | None = None

    async def _ref_op(self, op: str, now: float, *args: Any) -> Any:
        script = self._refs_script
        if script is None:
            script = self._refs_script = self._client.register_script(REFS)
        return await self._call(script, op, now, args)

    async def ref_put(self, meta: RefMeta, chunks: Sequence[bytes], *, now: float) -> Ref:
        strategy = self.ref_gc_strategy
        if sum(map(len, chunks)) <= _PUT_AT_ONCE:
            return _ref(await self._ref_op("put", now, strategy, *_meta_args(meta), *chunks))
        found = await self._ref_op("dedupe", now, strategy, meta.id, _expiry(meta))
        if found:
            return _ref(found)
        upload: int | None = None
        try:
            for start in range(0, len(chunks), _STAGE_BATCH):
                pairs: list[Any] = []
                for n in range(start, min(start + _STAGE_BATCH, len(chunks))):
                    pairs += (n, chunks[n])
                upload = int(await self._ref_op("stage", now, _opt_upload(upload), *pairs))
        except BaseException:
            if upload is not None:
                await self.ref_abort(upload)
            raise
        assert upload is not None  # more than _PUT_AT_ONCE bytes: at least one chunk
        return await self.ref_commit(upload, meta, now=now)

    async def ref_stage(self, upload: int | None, n: int, chunk: bytes, *, now: float) -> int:
        return int(await self._ref_op("stage", now, _opt_upload(upload), n, chunk))

    async def ref_commit(self, upload: int, meta: RefMeta, *, now: float) -> Ref:
        args = (self.ref_gc_strategy, upload, *_meta_args(meta))
        return _ref(await self._ref_op("commit", now, *args))

    async def ref_abort(self, upload: int) -> None:
        await self._ref_op("abort", 0.0, upload)

    async def ref_read(self, ref_id: str, start: int, limit: int) -> tuple[Ref | None, list[bytes]]:
        got = await self._ref_op("read", 0.0, ref_id, start, limit)
        if not got:
            return None, []
        return _ref(got[0]), list(got[1])

    async def ref_adjust(self, ref_id: str, delta: int, *, now: float) -> Ref | None:
        return _opt_ref(await self._ref_op("adjust", now, self.ref_gc_strategy, ref_id, delta))

    async def ref_list(self) -> list[Ref]:
        refs = [_ref(r) for r in await self._ref_op("list", 0.0)]
        return sorted(refs, key=lambda r: r.id)

    async def ref_gc(self, *, now: float) -> list[Ref]:
        evicted = await self._ref_op("gc", now, repr(now - ABANDONED_AFTER))
        return sorted((_ref(r) for r in evicted), key=lambda r: r.id)

    async def ref_stats(self) -> RefStats:
        counters, entries, free = await self._ref_op("stats", 0.0)
        total_refs, total_bytes, gc_runs, evictions, dedupe_hits, size, stored = (
            int(c or 0) for c in counters
        )
        return RefStats(
            total_refs, total_bytes, int(entries) - int(free), size, gc_runs, evictions,
            int(entries), stored, dedupe_hits,
        )  # fmt: skip


def _opt_upload(upload: int | None) -> str | int:
    return "" if upload is None else upload
