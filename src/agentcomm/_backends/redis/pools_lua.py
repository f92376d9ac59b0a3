"""The pool script: the rules of `pool_engine.py` in Lua, one operation per call (see
`scripts.py` for the calling convention and `pools.py` for what Python encodes).

Every operation that changes a pool checks what can make it fail (the pool exists, the run is a
member, the ref a payload refers to is stored...) before its first write, since Redis does not
roll a failed script back; then it times out the pool's due wakes, appends its records, updates
the state keys, enqueues pool messages with the mailbox script's own `store` (the functions of
`mailbox_lua_functions.py` are part of this script) and triggers the wakes the new records
match. A rule a call breaks is an error reply `POOLERR <code> <pool> <args>` which the backend
raises as NotFound, NotAMember, PoolConfigConflict or ValidationError (`errors.py`).

Pool keys (P = prefix; a pool, run, agent or topic name never holds `/` or a space):
  P pl:all                SET: every pool (for retention)
  P pl:p:<pool>           HASH: cfg (the config, JSON as `ConfigSpec` encodes it), at
                          (created at), head (the last seq), c:<name> (counters: messages,
                          failed, expired, duplicates, events)
  P pl:m:<pool>           HASH: run -> member (msgpack, see `pools.py`)
  P pl:mz:<pool>          ZSET (score 0): the member runs, in name order
  P pl:a:<pool>/<agent>   ZSET (score 0): the member runs of an agent
  P pl:t:<pool>/<topic>   ZSET (score 0): the member runs holding a topic
  P pl:log:<pool>         STREAM: the log, entry id "<seq>-0"; fields r (the record, msgpack
                          as `StoredPoolRecord`), at (its time), v (for the kinds that can
                          trigger a wake: what filters look at, cmsgpack)
  P pl:rc:<pool>          HASH: message id -> receipt (msgpack as `ReceiptRecord`)
  P pl:rk:<pool>          HASH: idempotency key -> message id
  P pl:rt:<pool>          ZSET: message ids by the time their receipt was written
  P pl:w:<pool>/<id>      HASH: one wake: s (its fixed part, msgpack, see `pools.py`), f (its
                          filter as this script reads it), run, st (status), rs (the seq of
                          its wake_registered record), dl (deadline), key, ts (trigger seq),
                          fa (finished at)
  P pl:wk:<pool>          HASH: wake idempotency key -> wake id
  P pl:wp:<pool>          ZSET: registered wakes, score rs (registration order)
  P pl:wd:<pool>          ZSET: registered wakes with a deadline, score deadline
  P pl:wd                 ZSET: "<pool>/<id>" of every registered wake with a deadline, score
                          deadline (for the hubs' expiry passes)
  P pl:wf                 ZSET: "<pool>/<id>" of finished wakes, score finished at (retention)
"""

from __future__ import annotations

from ..common import pool_channel
from ..pool_engine import POOL_WAKES_CHANNEL
from .mailbox_lua_functions import FUNCTIONS
from .ref_holds import REF_HOLDS
from .scripts import COMMON, Lua, Part

#: Log records a replaying wake reads per step, and due wakes one expiry pass times out.
_PAGE = 500
_EXPIRE_BATCH = 1000

_POOL_FUNCTIONS = r"""
local ALL, WD, WF
local function pk(pool) return P .. 'pl:p:' .. pool end
local function mk(pool) return P .. 'pl:m:' .. pool end
local function mz(pool) return P .. 'pl:mz:' .. pool end
local function agk(pool, agent) return P .. 'pl:a:' .. pool .. '/' .. agent end
local function tpk(pool, topic) return P .. 'pl:t:' .. pool .. '/' .. topic end
local function lk(pool) return P .. 'pl:log:' .. pool end
local function rck(pool) return P .. 'pl:rc:' .. pool end
local function rkk(pool) return P .. 'pl:rk:' .. pool end
local function rtk(pool) return P .. 'pl:rt:' .. pool end
local function wk(pool, id) return P .. 'pl:w:' .. pool .. '/' .. id end
local function wkk(pool) return P .. 'pl:wk:' .. pool end
local function wpk(pool) return P .. 'pl:wp:' .. pool end
local function wdk(pool) return P .. 'pl:wd:' .. pool end
local function int(n) return string.format('%d', n) end
local function seq_of(id) return tonumber(string.match(id, '^(%d+)')) end

local function fail(code, ...)
  error({err = 'POOLERR ' .. code .. ' ' .. table.concat({...}, ' ')})
end

local function set_of(list)
  local s = {}
  for _, v in ipairs(list or {}) do s[v] = true end
  return s
end

-- the pool's config (decoded, with its stored bytes as `raw`), or nil
local function config_of(pool)
  local raw = redis.call('HGET', pk(pool), 'cfg')
  if not raw then return nil end
  local c = cjson.decode(raw)
  c.raw = raw
  return c
end

local function require_pool(pool)
  local c = config_of(pool)
  if not c then fail('NOTFOUND', pool) end
  return c
end

-- a member from its stored blob (run, agent, topics, policy refs, joined at)
local function member_of(blob)
  local m = cmsgpack.unpack(blob)
  return {run = m[1], agent = m[2], topics = m[3], refs = m[4], blob = blob}
end

local function member(pool, run)
  local blob = redis.call('HGET', mk(pool), run)
  if not blob then return nil end
  return member_of(blob)
end

local function holds_all(have, need)
  local s = set_of(have)
  for _, r in ipairs(need) do
    if not s[r] then return false end
  end
  return true
end

-- whether a member's records are visible to wakes (it holds the pool's observe refs)
local function visible(cfg, m)
  if m == nil or #cfg.observe_policy_refs == 0 then return true end
  return holds_all(m.refs, cfg.observe_policy_refs)
end

local function put_member(pool, m)
  redis.call('HSET', mk(pool), m.run, m.blob)
  redis.call('ZADD', mz(pool), 0, m.run)
  redis.call('ZADD', agk(pool, m.agent), 0, m.run)
  for _, t in ipairs(m.topics) do redis.call('ZADD', tpk(pool, t), 0, m.run) end
end

local function unindex_member(pool, m)
  redis.call('ZREM', agk(pool, m.agent), m.run)
  for _, t in ipairs(m.topics) do redis.call('ZREM', tpk(pool, t), m.run) end
end

-- --- records -------------------------------------------------------------------------------

local function receipt_blob(mid, status, runs, seq, reason, key)
  local parts = {mp_str('message_id') .. mp_str(mid), mp_str('status') .. mp_str(status),
    mp_str('delivered_to') .. mp_strs(runs), mp_str('seq') .. mp_num(seq)}
  if reason then parts[#parts + 1] = mp_str('reason') .. mp_str(reason) end
  if key then parts[#parts + 1] = mp_str('idempotency_key') .. mp_str(key) end
  return mp_map_head(#parts) .. table.concat(parts)
end

-- a `StoredPoolRecord` (see `_pool_records.py`) from the Lua record `r`
local function record_blob(seq, r)
  local parts = {mp_str('seq') .. mp_num(seq), mp_str('kind') .. mp_str(r.kind),
    mp_str('run') .. (r.run and mp_str(r.run) or MP_NIL), mp_str('at') .. mp_num(now)}
  local function put(name, enc) parts[#parts + 1] = mp_str(name) .. enc end
  if r.visible == false then put('visible', MP_FALSE) end
  if r.agent then put('agent', mp_str(r.agent)) end
  if r.topics then put('topics', mp_strs(r.topics)) end
  if r.policy_refs then put('policy_refs', mp_strs(r.policy_refs)) end
  if r.message_id then put('message_id', mp_str(r.message_id)) end
  if r.to_kind then put('to_kind', mp_str(r.to_kind)) end
  if r.to_value then put('to_value', mp_str(r.to_value)) end
  if r.type then put('type', mp_str(r.type)) end
  if r.data then
    put('data', mp_bin(r.data))
    put('data_kind', mp_num(r.data_kind))
  end
  if r.metadata then put('metadata', mp_bin(r.metadata)) end
  if r.receipt then put('receipt', r.receipt) end
  if r.wake_id then put('wake_id', mp_str(r.wake_id)) end
  if r.trigger_seq then put('trigger_seq', mp_num(r.trigger_seq)) end
  if r.config then put('config', mp_bin(r.config)) end
  return mp_map_head(#parts) .. table.concat(parts)
end

-- append record `r` to the pool's log as the next seq; sets r.seq and r.blob
local function append(pool, r)
  local seq = redis.call('HINCRBY', pk(pool), 'head', 1)
  r.seq = seq
  r.blob = record_blob(seq, r)
  local f = {'XADD', lk(pool), int(seq) .. '-0', 'r', r.blob, 'at', NOW_S}
  if r.view then
    f[#f + 1] = 'v'
    f[#f + 1] = cmsgpack.pack(r.view)
  end
  redis.call(unpack(f))
  touch(POOL_CHANNEL .. pool)
  return seq
end

-- --- filters (as `pool_engine.matches`) --------------------------------------------------------

-- what a filter looks at in a record: kind, run, agent, type, address, whether it is visible,
-- the runs a message was delivered to, and the scalar metadata entries (see `meta_index` in
-- pools.py)
local function view_of(r)
  return {k = r.kind, r = r.run, a = r.agent, y = r.type, tk = r.to_kind, tv = r.to_value,
    v = r.visible ~= false, d = r.delivered or {}, mi = r.mi or {}}
end

local function prepared_view(v)
  v.ds = set_of(v.d)
  v.ms = set_of(v.mi)
  return v
end

local FILTER_SETS = {'k', 'r', 's', 'a', 'y', 't'}
local filters

-- a wake's filter: sets of kinds, runs, senders, agents, types and topics (absent: any), me
-- (to_me) and m (metadata entries that must all be present)
local function filter_of(w)
  local f = filters[w.fblob]
  if f then return f end
  local raw = cmsgpack.unpack(w.fblob)
  f = {me = raw.me == true, m = raw.m}
  for _, name in ipairs(FILTER_SETS) do
    if raw[name] then f[name] = set_of(raw[name]) end
  end
  filters[w.fblob] = f
  return f
end

local function matches(f, v, run)
  if not v.v then return false end
  if f.k and not f.k[v.k] then return false end
  if f.r and not (v.r and f.r[v.r]) then return false end
  if f.s and not (v.k == 'message' and v.r and f.s[v.r]) then return false end
  if f.a and not (v.a and f.a[v.a]) then return false end
  if f.y and not (v.y and f.y[v.y]) then return false end
  if f.t and not (v.tk == 'topic' and v.tv and f.t[v.tv]) then return false end
  if f.me and not (v.k == 'message' and v.ds[run]) then return false end
  if f.m then
    for _, e in ipairs(f.m) do
      if not v.ms[e] then return false end
    end
  end
  return true
end

-- --- wakes ---------------------------------------------------------------------------------

local function wake_load(pool, id)
  local v = redis.call('HMGET', wk(pool, id), 'run', 'st', 'rs', 'f')
  if not v[1] or not v[2] then return nil end
  return {id = id, run = v[1], st = v[2], rs = tonumber(v[3]) or 0, fblob = v[4] or ''}
end

-- what Python builds a `WakeRecord` from
local function wake_reply(pool, id)
  local v = redis.call('HMGET', wk(pool, id), 's', 'st', 'rs', 'ts', 'fa')
  if not v[1] then return false end
  return v
end

local function finish_wake(pool, w, status, trigger_seq)
  local f = {'HSET', wk(pool, w.id), 'st', status, 'fa', NOW_S}
  if trigger_seq then
    f[#f + 1] = 'ts'
    f[#f + 1] = int(trigger_seq)
  end
  redis.call(unpack(f))
  w.st = status
  local entry = pool .. '/' .. w.id
  redis.call('ZREM', wpk(pool), w.id)
  redis.call('ZREM', wdk(pool), w.id)
  redis.call('ZREM', WD, entry)
  redis.call('ZADD', WF, NOW_S, entry)
  local kind = 'wake_cancelled'
  if status == 'triggered' then kind = 'wake_triggered' end
  if status == 'timed_out' then kind = 'wake_timed_out' end
  append(pool, {kind = kind, run = w.run, wake_id = w.id, trigger_seq = trigger_seq})
end

-- time out the pool's registered wakes whose deadline passed, in registration order
local function expire_pool(pool)
  local ids = redis.call('ZRANGEBYSCORE', wdk(pool), '-inf', NOW_S)
  if #ids == 0 then return end
  local due = {}
  for _, id in ipairs(ids) do
    local w = wake_load(pool, id)
    if w and w.st == 'registered' then
      due[#due + 1] = w
    else
      redis.call('ZREM', wdk(pool), id)
    end
  end
  table.sort(due, function(a, b) return a.rs < b.rs end)
  for _, w in ipairs(due) do finish_wake(pool, w, 'timed_out') end
end

-- append an event (a record of a kind that can trigger wakes) and trigger the registered
-- wakes it matches, in registration order
local function happened(pool, r)
  r.view = view_of(r)
  local seq = append(pool, r)
  local ids = redis.call('ZRANGE', wpk(pool), 0, -1)
  if #ids == 0 then return end
  local v = prepared_view(r.view)
  for _, id in ipairs(ids) do
    local w = wake_load(pool, id)
    if w and w.st == 'registered' and w.rs < seq and matches(filter_of(w), v, w.run) then
      finish_wake(pool, w, 'triggered', seq)
    end
  end
end

-- the first record before seq `before` that triggering-kind filter `f` matches for `run`
local function replay(pool, f, run, before)
  local after = 0
  while true do
    local entries = redis.call('XRANGE', lk(pool), int(after + 1) .. '-0', '+', 'COUNT', PAGE)
    for _, e in ipairs(entries) do
      local seq = seq_of(e[1])
      if seq >= before then return nil end
      local raw = e[2]
      for i = 1, #raw, 2 do
        if raw[i] == 'v' then
          if matches(f, prepared_view(cmsgpack.unpack(raw[i + 1])), run) then return seq end
        end
      end
      after = seq
    end
    if #entries < PAGE then return nil end
  end
end

-- --- sends ---------------------------------------------------------------------------------

-- the metadata of a pool message in a recipient's mailbox (`pool_engine.pool_metadata`)
local function pool_metadata(user, pool, seq, sender, mid)
  local head = '{"pool.name":' .. cjson.encode(pool) .. ',"pool.seq":' .. int(seq)
    .. ',"pool.sender":' .. cjson.encode(sender) .. ',"pool.message_id":' .. cjson.encode(mid)
  if user == nil or string.match(user, '^%s*{}%s*$') then return head .. '}' end
  return head .. ',' .. string.sub(string.gsub(user, '^%s+', ''), 2)
end

local function quoted(name) return "'" .. name .. "'" end

-- the members a message to (kind, value) from `sender` goes to, or nil and why it fails
local function recipients(pool, cfg, kind, value, sender, refs, needed)
  local runs, what
  if kind == 'run' then
    runs = {}
    if redis.call('HEXISTS', mk(pool), value) == 1 then runs[1] = value end
    what = 'run ' .. quoted(value)
  elseif kind == 'agent' then
    runs = redis.call('ZRANGE', agk(pool, value), 0, -1)
    what = 'agent ' .. quoted(value)
  elseif kind == 'topic' then
    runs = redis.call('ZRANGE', tpk(pool, value), 0, -1)
    what = 'topic ' .. quoted(value)
  else
    runs = {}
    for _, run in ipairs(redis.call('ZRANGE', mz(pool), 0, -1)) do
      if cfg.include_sender_in_broadcast or run ~= sender then runs[#runs + 1] = run end
    end
    what = 'the pool'
  end
  if #runs == 0 then return nil, 'no member matches ' .. what end
  local found = {}
  for _, run in ipairs(runs) do
    local m = member(pool, run)
    if m and holds_all(m.refs, refs) then found[#found + 1] = m end
  end
  if #found == 0 then
    return nil, 'no member addressed by ' .. what .. ' holds every policy ref of the message ('
      .. table.concat(needed, ', ') .. ')'
  end
  return found, nil
end
"""

_OPS = r"""
-- the operations, in two functions: a Lua function can use at most 60 locals of the
-- functions around it (each returns false for an operation it does not have)
local function membership_and_messages()
  local result = false
  if OP == 'open' then
    -- name, has config, config, default
    local name, config = ARGV[5], ARGV[7]
    local stored = redis.call('HGET', pk(name), 'cfg')
    if stored then
      if ARGV[6] == '1' and config ~= stored then fail('CONFLICT', name, stored) end
      result = stored
    else
      if ARGV[6] ~= '1' then config = ARGV[8] end
      redis.call('HSET', pk(name), 'cfg', config, 'at', NOW_S, 'head', 0)
      redis.call('SADD', ALL, name)
      append(name, {kind = 'opened', config = config})
      result = config
    end

  elseif OP == 'join' then
    -- pool, member blob
    local pool = ARGV[5]
    local cfg = require_pool(pool)
    local m = member_of(ARGV[6])
    local old = member(pool, m.run)
    if old and old.agent ~= m.agent then fail('AGENT', pool, m.run, old.agent) end
    expire_pool(pool)
    ensure_agents({m.run}, true)
    if old then unindex_member(pool, old) end
    put_member(pool, m)
    local r = {kind = 'member_joined', run = m.run, visible = visible(cfg, m), agent = m.agent,
      topics = m.topics, policy_refs = m.refs}
    happened(pool, r)
    result = r.blob

  elseif OP == 'leave' then
    local pool, run = ARGV[5], ARGV[6]
    local cfg = require_pool(pool)
    local m = member(pool, run)
    if not m then fail('NOTAMEMBER', pool, run) end
    expire_pool(pool)
    for _, id in ipairs(redis.call('ZRANGE', wpk(pool), 0, -1)) do
      local w = wake_load(pool, id)
      if w and w.st == 'registered' and w.run == run then finish_wake(pool, w, 'cancelled') end
    end
    unindex_member(pool, m)
    redis.call('HDEL', mk(pool), run)
    redis.call('ZREM', mz(pool), run)
    local r = {kind = 'member_left', run = run, visible = visible(cfg, m), agent = m.agent}
    happened(pool, r)
    result = r.blob

  elseif OP == 'send' then
    -- pool, message id, sender, to kind, to value, type, data, data kind, has metadata,
    -- metadata, policy refs (msgpack), the same sorted and unique (msgpack), has key, key,
    -- expires at ('' for never), priority, max attempts, metadata index (msgpack), the ref the
    -- payload holds ('' for none)
    local pool, mid, sender = ARGV[5], ARGV[6], ARGV[7]
    local to_kind, to_value, typ, data = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
    local meta, key = nil, nil
    if ARGV[13] == '1' then meta = ARGV[14] end
    if ARGV[17] == '1' then key = ARGV[18] end
    local refs, needed = cmsgpack.unpack(ARGV[15]), cmsgpack.unpack(ARGV[16])
    local exp_s, pri, maxa, ref = ARGV[19], ARGV[20], ARGV[21], ARGV[23]
    local kind = arg_num(ARGV[12], 'data_kind')
    local exp = arg_opt_num(exp_s, 'expires_at')
    arg_num(pri, 'priority')
    arg_num(maxa, 'max_attempts')
    local cfg = require_pool(pool)
    local snd = member(pool, sender)
    if not snd then fail('NOTAMEMBER', pool, sender) end
    if ref ~= '' then ref_require({ref}, 1) end
    check_seq(P .. 'seq')
    expire_pool(pool)
    local first = nil
    if key then
      local first_id = redis.call('HGET', rkk(pool), key)
      if first_id then first = redis.call('HGET', rck(pool), first_id) end
    end
    if first then
      hincr(pk(pool), 'c:duplicates', 1)
      result = {first, 1}
    else
      local found, reason, status = nil, nil, nil
      local have, missing = set_of(refs), {}
      for _, r in ipairs(cfg.required_policy_refs) do
        if not have[r] then missing[#missing + 1] = r end
      end
      if exp and exp <= now then
        status, reason = 'expired', "the message's ttl had passed when it was sent"
      elseif #missing > 0 then
        status = 'failed'
        reason = 'the message lacks required policy refs: ' .. table.concat(missing, ', ')
      else
        found, reason = recipients(pool, cfg, to_kind, to_value, sender, refs, needed)
        status = reason and 'failed' or 'delivered'
      end
      local seq = tonumber(redis.call('HGET', pk(pool), 'head')) + 1
      local runs = {}
      if found then
        for i, m in ipairs(found) do runs[i] = m.run end
        ensure_agents(runs, true)
        local md = pool_metadata(meta, pool, seq, sender, mid)
        local n_pri, n_max = tonumber(pri), tonumber(maxa)
        for i, run in ipairs(runs) do
          local id = mid .. '.' .. int(i - 1)
          store({id, sender, run, pri, NOW_S, exp_s, maxa, '', '', '', ref, ''},
            message_body(id, sender, run, typ, n_pri, data, kind, md, now, exp, n_max))
        end
        save_seq()
      end
      local receipt = receipt_blob(mid, status, runs, seq, reason, key)
      redis.call('HSET', rck(pool), mid, receipt)
      redis.call('ZADD', rtk(pool), NOW_S, mid)
      if key then redis.call('HSET', rkk(pool), key, mid) end
      hincr(pk(pool), 'c:messages', 1)
      if status ~= 'delivered' then hincr(pk(pool), 'c:' .. status, 1) end
      happened(pool, {kind = 'message', run = sender, visible = visible(cfg, snd),
        agent = snd.agent, policy_refs = refs, message_id = mid, to_kind = to_kind,
        to_value = to_value, type = typ, data = data, data_kind = kind, metadata = meta,
        receipt = receipt, delivered = runs, mi = cmsgpack.unpack(ARGV[22])})
      result = {receipt, 0}
    end

  elseif OP == 'emit' then
    -- pool, run, type, data, data kind, has metadata, metadata, metadata index (msgpack)
    local pool, run = ARGV[5], ARGV[6]
    local kind = arg_num(ARGV[9], 'data_kind')
    local cfg = require_pool(pool)
    local m = member(pool, run)
    if not m then fail('NOTAMEMBER', pool, run) end
    expire_pool(pool)
    hincr(pk(pool), 'c:events', 1)
    local meta = nil
    if ARGV[10] == '1' then meta = ARGV[11] end
    local r = {kind = 'event', run = run, visible = visible(cfg, m), agent = m.agent,
      type = ARGV[7], data = ARGV[8], data_kind = kind, metadata = meta,
      mi = cmsgpack.unpack(ARGV[12])}
    happened(pool, r)
    result = r.blob

  elseif OP == 'receipt' then
    -- pool, 'k' (by idempotency key) or 'm' (by message id), the key or id
    local pool, mid = ARGV[5], ARGV[7]
    if ARGV[6] == 'k' then mid = redis.call('HGET', rkk(pool), mid) end
    if mid then result = redis.call('HGET', rck(pool), mid) end
  end
  return result
end

local function wakes_and_housekeeping()
  local result = false
  if OP == 'wait_for' then
    -- pool, wake id, run, has key, key, replay, deadline ('' for none), spec blob, filter blob
    local pool, id, run = ARGV[5], ARGV[6], ARGV[7]
    local key = nil
    if ARGV[8] == '1' then key = ARGV[9] end
    local dl = arg_opt_num(ARGV[11], 'deadline')
    require_pool(pool)
    local existing = key and redis.call('HGET', wkk(pool), key)
    if existing and not wake_load(pool, existing) then existing = nil end
    if not existing and redis.call('HEXISTS', mk(pool), run) == 0 then
      fail('NOTAMEMBER', pool, run)
    end
    expire_pool(pool)
    if existing then
      result = wake_reply(pool, existing)
    else
      local rs = append(pool, {kind = 'wake_registered', run = run, wake_id = id})
      local f = {'HSET', wk(pool, id), 's', ARGV[12], 'f', ARGV[13], 'run', run,
        'st', 'registered', 'rs', int(rs)}
      if dl then
        f[#f + 1] = 'dl'
        f[#f + 1] = ARGV[11]
      end
      if key then
        f[#f + 1] = 'key'
        f[#f + 1] = key
        redis.call('HSET', wkk(pool), key, id)
      end
      redis.call(unpack(f))
      redis.call('ZADD', wpk(pool), int(rs), id)
      if dl then
        redis.call('ZADD', wdk(pool), ARGV[11], id)
        redis.call('ZADD', WD, ARGV[11], pool .. '/' .. id)
      end
      local w = {id = id, run = run, st = 'registered', rs = rs, fblob = ARGV[13]}
      if ARGV[10] == '1' then
        local seq = replay(pool, filter_of(w), run, rs)
        if seq then finish_wake(pool, w, 'triggered', seq) end
      end
      if w.st == 'registered' and dl then
        if dl <= now then
          finish_wake(pool, w, 'timed_out')
        else
          touch(POOL_WAKES_CHANNEL)
        end
      end
      result = wake_reply(pool, id)
    end

  elseif OP == 'wake' then
    -- pool, 'k' (by idempotency key) or 'i' (by id), the key or id
    local pool, id = ARGV[5], ARGV[7]
    if redis.call('EXISTS', pk(pool)) == 1 then expire_pool(pool) end
    if ARGV[6] == 'k' then id = redis.call('HGET', wkk(pool), id) end
    if id then result = wake_reply(pool, id) end

  elseif OP == 'cancel' then
    local pool, id = ARGV[5], ARGV[6]
    require_pool(pool)
    if not wake_load(pool, id) then fail('NOWAKE', pool, id) end
    expire_pool(pool)
    local w = wake_load(pool, id)
    if w.st == 'registered' then
      finish_wake(pool, w, 'cancelled')
      result = 1
    else
      result = 0
    end

  elseif OP == 'snapshot' then
    local pool = ARGV[5]
    if redis.call('EXISTS', pk(pool)) == 1 then expire_pool(pool) end
    local row = redis.call('HGETALL', pk(pool))
    if #row == 0 then fail('NOTFOUND', pool) end
    local members, wakes = {}, {}
    for _, run in ipairs(redis.call('ZRANGE', mz(pool), 0, -1)) do
      local blob = redis.call('HGET', mk(pool), run)
      if blob then members[#members + 1] = blob end
    end
    for _, id in ipairs(redis.call('ZRANGE', wpk(pool), 0, -1)) do
      local w = wake_reply(pool, id)
      if w then wakes[#wakes + 1] = w end
    end
    result = {row, members, wakes}

  elseif OP == 'records' then
    -- pool, after, limit
    local pool = ARGV[5]
    local after, limit = arg_num(ARGV[6], 'after'), arg_num(ARGV[7], 'limit')
    local head = redis.call('HGET', pk(pool), 'head')
    if not head then fail('NOTFOUND', pool) end
    local out = {}
    if limit >= 1 then
      local entries = redis.call('XRANGE', lk(pool), int(after + 1) .. '-0', '+', 'COUNT',
        int(limit))
      for i, e in ipairs(entries) do out[i] = e[2][2] end
    end
    local first = redis.call('XRANGE', lk(pool), '-', '+', 'COUNT', 1)
    local oldest = tonumber(head) + 1
    if first[1] then oldest = seq_of(first[1][1]) end
    result = {out, head, oldest}

  elseif OP == 'expire' then
    local due = redis.call('ZRANGEBYSCORE', WD, '-inf', NOW_S, 'LIMIT', 0, EXPIRE_BATCH)
    for _, entry in ipairs(due) do
      local pool, id = string.match(entry, '^(.-)/(.*)$')
      local w = pool and wake_load(pool, id)
      if w and w.st == 'registered' and redis.call('EXISTS', pk(pool)) == 1 then
        finish_wake(pool, w, 'timed_out')
      else
        redis.call('ZREM', WD, entry)
      end
    end
    local first = redis.call('ZRANGE', WD, 0, 0, 'WITHSCORES')
    result = first[2] or false

  elseif OP == 'prune' then
    -- max count, age cutoff, dedupe cutoff, batch; returns the log records deleted
    local max_count = arg_num(ARGV[5], 'pool_max_count')
    local age_cut, dd_cut = arg_num(ARGV[6], 'age cutoff'), arg_num(ARGV[7], 'dedupe cutoff')
    local batch = arg_num(ARGV[8], 'batch')
    local dropped = 0
    for _, pool in ipairs(redis.call('SMEMBERS', ALL)) do
      local log = lk(pool)
      if redis.call('XLEN', log) > max_count then
        dropped = dropped + redis.call('XTRIM', log, 'MAXLEN', int(max_count))
      end
      local budget = batch
      while budget > 0 do
        local want = math.min(PAGE, budget)
        local entries = redis.call('XRANGE', log, '-', '+', 'COUNT', int(want))
        local ids, stop = {}, #entries < want
        for _, e in ipairs(entries) do
          local at = nil
          for i = 1, #e[2], 2 do
            if e[2][i] == 'at' then at = stored_num(e[2][i + 1]) end
          end
          if at and at < age_cut then
            ids[#ids + 1] = e[1]
          else
            stop = true
            break
          end
        end
        if #ids > 0 then
          redis.call('XDEL', log, unpack(ids))
          dropped = dropped + #ids
          budget = budget - #ids
        end
        if stop then break end
      end
      local stale = redis.call('ZRANGEBYSCORE', rtk(pool), '-inf', '(' .. ARGV[7], 'LIMIT', 0,
        int(batch))
      for _, mid in ipairs(stale) do
        local blob = redis.call('HGET', rck(pool), mid)
        if blob then
          local key = cmsgpack.unpack(blob).idempotency_key
          if key and redis.call('HGET', rkk(pool), key) == mid then
            redis.call('HDEL', rkk(pool), key)
          end
          redis.call('HDEL', rck(pool), mid)
        end
        redis.call('ZREM', rtk(pool), mid)
      end
    end
    local done = redis.call('ZRANGEBYSCORE', WF, '-inf', '(' .. ARGV[7], 'LIMIT', 0, int(batch))
    for _, entry in ipairs(done) do
      local pool, id = string.match(entry, '^(.-)/(.*)$')
      if pool then
        local key = redis.call('HGET', wk(pool, id), 'key')
        if key and redis.call('HGET', wkk(pool), key) == id then
          redis.call('HDEL', wkk(pool), key)
        end
        redis.call('DEL', wk(pool, id))
      end
      redis.call('ZREM', WF, entry)
    end
    result = dropped
  end
  return result
end
"""

_DISPATCH = r"""
local result = membership_and_messages() or wakes_and_housekeeping()

flush()
publish()
return once_done({result, touched_list})
"""


def _fill(lua: str) -> str:
    return (
        lua.replace("POOL_WAKES_CHANNEL", repr(POOL_WAKES_CHANNEL))
        .replace("POOL_CHANNEL", repr(pool_channel("")))
        .replace("EXPIRE_BATCH", str(_EXPIRE_BATCH))
        .replace("PAGE", str(_PAGE))
    )


#: What the pool functions keep during a call, reset at its start (`filters` caches decoded
#: wake filters for one call only: a library's state lives as long as the server).
_POOL_BEGIN = r"""
ALL, WD, WF = P .. 'pl:all', P .. 'pl:wd', P .. 'pl:wf'
filters = {}
"""

POOLS = Lua(
    "pools",
    (COMMON, Part(REF_HOLDS), FUNCTIONS, Part(_fill(_POOL_FUNCTIONS + _OPS), _POOL_BEGIN)),
    _fill(_DISPATCH),
)
