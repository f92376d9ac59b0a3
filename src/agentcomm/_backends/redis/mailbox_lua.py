"""The mailbox script: agents, messages, replies, schedules and their retention, one
operation per call (see `scripts.py` for the calling convention).

A payload stored by reference holds its reference through the functions of `ref_holds.py`,
taken before the script's first write (Redis does not roll a failed script back).

Mailbox keys (P = prefix):
  P seq                   the last message sequence number (= messages stored); a message's
                          `sid` is its sequence number zero-padded to 16 digits
  P m:<sid>               HASH: one message (fields below)
  P r:<agent>             ZSET: ready messages, score -priority, member sid (FIFO by member)
  P t:<agent>             ZSET: delayed messages and leases, score visible_at
  P d:<agent>             ZSET: dead letters, score seq
  P exp                   ZSET: expires_at of undelivered messages that have one (and of
                          in-flight ones until a prune pass drops them)
  P fin:5|4|3             ZSET: finish time of acked (kept) / expired / dead messages
  P agents, P seen        HASH: agent -> created_at, agent -> last_seen
  P dd, P dd:until        HASH + ZSET: "sender/recipient/key" -> first message id, its window
  P req, P req:dl         HASH + ZSET: correlation id -> reply ("" while waiting), deadline
  P req:ref               HASH: correlation id -> the reference its reply holds
  P sched, P sched:next, P sched:runs   schedules: spec, next run, runs
  P sched:ref             HASH: schedule id -> the reference its payload holds
  P counters              HASH: event counters
  P hubs                  SET: the open hubs (their origin ids), subscribed to P wake
"""

from __future__ import annotations

from ..common import REPLY_GRACE, final_nack_reason, lease_expired_reason, mail_channel
from .ref_holds import REF_HOLDS
from .scripts import COMMON

# Message hash fields: b (the body, msgpack: see `Body` in mailbox.py), id, rcp, pri, vis
# (visible at / lease until), exp, max (attempts), att (attempt), st (state), fin, why (reason),
# ref (the reference the payload holds, if it does).
# States as in `_records.State`: 0 ready, 1 in flight, 2 delayed, 3 dead, 4 expired, 5 acked.


def _template(text: str, *marks: int) -> str:
    """`text` as a quoted Lua `string.format` template, each of `marks` replaced by `%s`."""
    text = text.replace("%", "%%")
    for mark in marks:
        text = text.replace(str(mark), "%s")
    return "'" + text + "'"


# The dead-letter reasons the script writes: the texts of `common.lease_expired_reason` and
# `common.final_nack_reason`, which the other backends use, so every backend words them alike.
_LEASE_EXPIRED = _template(lease_expired_reason(1001, 1002), 1001, 1002)
_FINAL_NACK = _template(final_nack_reason(1001), 1001)

MAILBOX = (
    COMMON
    + REF_HOLDS
    + r"""
local function mkey(sid) return P .. 'm:' .. sid end
local function count(name, n)
  if n ~= 0 then hincr(P .. 'counters', name, n) end
end

local STATE_KEY = {['3'] = 'fin:3', ['4'] = 'fin:4', ['5'] = 'fin:5'}
local BARE = {enqueue = true, claim = true, settle = true, reply = true, take = true}

-- sorted-set writes of a batch, sent as one command per key at the end (see `flush`); used
-- only where nothing reads the key in between and no member is both added and removed
local zadds, zrems = {}, {}
local function zadd_later(key, score, member)
  local l = zadds[key]
  if not l then l = {}; zadds[key] = l end
  l[#l + 1] = score
  l[#l + 1] = member
end
local function zrem_later(key, member)
  local l = zrems[key]
  if not l then l = {}; zrems[key] = l end
  l[#l + 1] = member
end
local function flush()
  for key, l in pairs(zadds) do
    -- newest first: a small sorted set is a listpack, which scans from its head for the
    -- place of each insert, and our members mostly arrive in ascending order
    local r = {}
    for i = #l - 1, 1, -2 do
      r[#r + 1] = l[i]
      r[#r + 1] = l[i + 1]
    end
    for i = 1, #r, 4000 do redis.call('ZADD', key, unpack(r, i, math.min(i + 3999, #r))) end
  end
  for key, l in pairs(zrems) do
    for i = 1, #l, 4000 do redis.call('ZREM', key, unpack(l, i, math.min(i + 3999, #l))) end
  end
  zadds, zrems = {}, {}
end

local function unindex(sid, rcp)
  redis.call('ZREM', P .. 'r:' .. rcp, sid)
  redis.call('ZREM', P .. 't:' .. rcp, sid)
  redis.call('ZREM', P .. 'exp', sid)
end

-- `ref`: the reference the message's payload holds (or nil), released unless it becomes a
-- dead letter, which can be requeued
local function finish(sid, rcp, state, reason, ref)
  unindex(sid, rcp)
  if ref and state ~= '3' then ref_drop(ref) end
  local f = {'HSET', mkey(sid), 'st', state, 'fin', NOW_S}
  if reason then f[#f + 1] = 'why'; f[#f + 1] = reason end
  redis.call(unpack(f))
  redis.call('ZADD', P .. STATE_KEY[state], NOW_S, sid)
  if state == '3' then
    redis.call('ZADD', P .. 'd:' .. rcp, tonumber(sid), sid)
    count('dead_lettered', 1)
  elseif state == '4' then
    count('expired', 1)
  end
end

-- `exp` (the expiry index) holds undelivered messages; in-flight ones may linger there until
-- a prune pass drops them, so a message becoming undelivered again is (re-)added
local function make_ready(sid, rcp, pri, exp)
  redis.call('HSET', mkey(sid), 'st', 0)
  redis.call('ZREM', P .. 't:' .. rcp, sid)
  redis.call('ZADD', P .. 'r:' .. rcp, -(stored_num(pri) or 0), sid)
  if stored_num(exp) then redis.call('ZADD', P .. 'exp', exp, sid) end
end

-- a stored message whose fields cannot be read becomes a dead letter saying so (counted as
-- undecodable), instead of failing every call that meets it
local function unreadable(sid, rcp, what)
  finish(sid, rcp, '3', 'undecodable: ' .. what)
  count('undecodable', 1)
end

-- due delayed messages become ready; due leases become ready again, or dead when used up
local function fire_timers(agent, limit)
  local tk = P .. 't:' .. agent
  local due = redis.call('ZRANGEBYSCORE', tk, '-inf', NOW_S, 'LIMIT', 0, limit)
  local ready, dead = 0, 0
  for _, sid in ipairs(due) do
    local v = redis.call('HMGET', mkey(sid), 'st', 'att', 'max', 'pri', 'exp')
    if v[1] == '2' then
      make_ready(sid, agent, v[4], v[5])
      ready = ready + 1
    elseif v[1] == '1' and not (stored_num(v[2]) and stored_num(v[3])) then
      unreadable(sid, agent, 'attempt or max attempts is not a number')
      dead = dead + 1
    elseif v[1] == '1' then
      if tonumber(v[2]) >= tonumber(v[3]) then
        finish(sid, agent, '3', string.format(LEASE_EXPIRED, v[2], v[3]))
        dead = dead + 1
      else
        make_ready(sid, agent, v[4], v[5])
        ready = ready + 1
      end
    else
      redis.call('ZREM', tk, sid)
    end
  end
  return ready, dead
end

-- the sequence number of the last stored message: the first store of a script INCRs it,
-- later ones count in this local, written back by `save_seq`
local last_seq, stored = nil, 0

-- store one message of enqueue or a schedule from its header fields `h` (see `_message_args` in
-- mailbox.py) and its body; returns its id, and whether that is the id of an earlier message
-- because the idempotency key was seen within its window
local function store(h, body)
  local id, snd, rcp, pri, vis, exp, maxa, window, cid, deadline, ref, ikey = unpack(h)
  if ikey ~= '' then
    local field = snd .. '/' .. rcp .. '/' .. ikey
    local seen = redis.call('HGET', P .. 'dd', field)
    if seen then
      local until_ = tonumber(redis.call('ZSCORE', P .. 'dd:until', field))
      if until_ and until_ > now then
        count('deduplicated', 1)
        return seen, true
      end
    end
    if window == '' then window = NOW_S end
    redis.call('HSET', P .. 'dd', field, id)
    redis.call('ZADD', P .. 'dd:until', window, field)
  end
  if last_seq then last_seq = last_seq + 1 else last_seq = redis.call('INCR', P .. 'seq') end
  stored = stored + 1
  local sid = string.format('%016d', last_seq)
  local state = 0
  if tonumber(vis) > now then state = 2 end
  local f = {'HSET', mkey(sid), 'b', body, 'id', id, 'rcp', rcp, 'pri', pri, 'vis', vis,
    'max', maxa, 'att', 0, 'st', state}
  if exp ~= '' then
    f[#f + 1] = 'exp'; f[#f + 1] = exp
    zadd_later(P .. 'exp', exp, sid)
  end
  if ref ~= '' then
    -- checked by the caller (`ref_require`) before its first write
    ref_hold(ref)
    f[#f + 1] = 'ref'; f[#f + 1] = ref
  end
  redis.call(unpack(f))
  if state == 2 then
    zadd_later(P .. 't:' .. rcp, vis, sid)
  else
    zadd_later(P .. 'r:' .. rcp, -tonumber(pri), sid)
  end
  if deadline ~= '' and cid ~= '' then
    redis.call('HSET', P .. 'req', cid, '')
    redis.call('ZADD', P .. 'req:dl', deadline, cid)
  end
  touch(MAIL_CHANNEL .. rcp)
  return id, false
end

-- the numbers of message header `h` (see `store`), checked before the first write
local function check_header(h)
  arg_num(h[4], 'priority')
  arg_num(h[5], 'visible_at')
  arg_opt_num(h[6], 'expires_at')
  arg_num(h[7], 'max_attempts')
  arg_opt_num(h[8], 'dedupe_until')
  arg_opt_num(h[10], 'request_deadline')
end

-- the fields of settle op `op` (see `settle`), its numbers checked before the first write
local function parse_settle(op)
  local f = split(op, 5)
  if not f[5] then error({err = 'BADARG settle op is malformed'}) end
  arg_num(f[1], 'settle kind')
  arg_num(f[3], 'attempt')
  arg_num(f[4], 'until')
  return f
end

local function save_seq()
  if stored > 1 then redis.call('SET', P .. 'seq', last_seq) end
end

-- the references of these message headers are stored; raises RefNotFound otherwise
local function require_refs(headers)
  check_seq(P .. 'seq')
  for _, h in ipairs(headers) do
    if not h[12] then error({err = 'BADARG message header is malformed'}) end
    check_header(h)
    ref_require({h[11]}, 1)
  end
end

-- the recipients must be registered agents, or are registered with `auto`; returns the first
-- unknown one, or nil
local function ensure_agents(recipients, auto)
  local agents = P .. 'agents'
  if not auto then
    for _, rcp in ipairs(recipients) do
      if redis.call('HEXISTS', agents, rcp) == 0 then return rcp end
    end
    return nil
  end
  for _, rcp in ipairs(recipients) do
    if redis.call('HSETNX', agents, rcp, NOW_S) == 1 then
      redis.call('HSET', P .. 'seen', rcp, NOW_S)
    end
  end
  return nil
end

-- one settle op "kind NUL sid NUL attempt NUL until NUL reason"; returns 1 or 0
local function settle(f, keep_acked)
  local kind, sid, att, until_, reason = unpack(f)
  local mk = mkey(sid)
  local v = redis.call('HMGET', mk, 'st', 'att', 'max', 'rcp', 'pri', 'exp', 'ref')
  if not v[1] or v[2] ~= att or (v[1] ~= '0' and v[1] ~= '1') then return 0 end
  local rcp = v[4]
  if kind == '0' then
    if keep_acked then
      finish(sid, rcp, '5', nil, v[7])
    else
      redis.call('DEL', mk)
      if v[7] then ref_drop(v[7]) end
      if v[1] == '1' then
        zrem_later(P .. 't:' .. rcp, sid)
      else
        zrem_later(P .. 'r:' .. rcp, sid)
      end
      if v[6] then zrem_later(P .. 'exp', sid) end
    end
  elseif kind == '3' then
    if v[1] ~= '1' then return 0 end
    redis.call('HSET', mk, 'vis', until_)
    redis.call('ZADD', P .. 't:' .. rcp, until_, sid)
  elseif kind == '2' then
    finish(sid, rcp, '3', reason)
  elseif not stored_num(v[3]) then
    unreadable(sid, rcp, 'max attempts is not a number')
  else
    touch(MAIL_CHANNEL .. rcp)
    if tonumber(att) >= tonumber(v[3]) then
      if reason == '' then reason = string.format(FINAL_NACK, att) end
      finish(sid, rcp, '3', reason)
    elseif tonumber(until_) > now then
      redis.call('HSET', mk, 'st', 2, 'vis', until_)
      redis.call('ZREM', P .. 'r:' .. rcp, sid)
      redis.call('ZADD', P .. 't:' .. rcp, until_, sid)
      if v[6] then redis.call('ZADD', P .. 'exp', v[6], sid) end
    else
      make_ready(sid, rcp, v[5], v[6])
    end
  end
  return 1
end

local result = false
if OP == 'register' then
  local name = ARGV[5]
  redis.call('HSETNX', P .. 'agents', name, NOW_S)
  redis.call('HSET', P .. 'seen', name, NOW_S)
  result = redis.call('HGET', P .. 'agents', name)

elseif OP == 'enqueue' then
  -- ARGV: auto_register, then header and body of each message; returns the ids that differ
  -- from the message's own (deduplicated ones) as position, id pairs
  local headers, recipients, known = {}, {}, {}
  for b = 6, #ARGV, 2 do
    local h = split(ARGV[b], 12)
    headers[#headers + 1] = h
    if not known[h[3]] then
      known[h[3]] = true
      recipients[#recipients + 1] = h[3]
    end
  end
  require_refs(headers)
  local unknown = ensure_agents(recipients, ARGV[5] == '1')
  if unknown then
    result = unknown
  else
    local out = {}
    for i, h in ipairs(headers) do
      local id, seen = store(h, ARGV[5 + 2 * i])
      if seen then
        out[#out + 1] = i
        out[#out + 1] = id
      end
    end
    save_seq()
    result = out
  end

elseif OP == 'claim' then
  local agent, lease_until, want = ARGV[5], ARGV[6], arg_num(ARGV[7], 'max_messages')
  arg_num(lease_until, 'lease_until')
  fire_timers(agent, 1000)
  local rk, tk = P .. 'r:' .. agent, P .. 't:' .. agent
  -- flat: the next wake-up (or false), then sid, attempt, body of each message
  local out = {false}
  local got = 0
  while got < want do
    local sids = redis.call('ZRANGE', rk, 0, want - got - 1)
    if #sids == 0 then break end
    redis.call('ZREM', rk, unpack(sids))
    for _, sid in ipairs(sids) do
      local mk = mkey(sid)
      local v = redis.call('HMGET', mk, 'exp', 'att', 'b', 'ref')
      if not v[3] and not v[2] then
        -- an index entry without its message: nothing to deliver
        redis.call('ZREM', tk, sid)
        redis.call('ZREM', P .. 'exp', sid)
      elseif not v[3] or not stored_num(v[2]) or (v[1] and not stored_num(v[1])) then
        unreadable(sid, agent, 'body, attempt or expiry missing or not a number')
      elseif v[1] and tonumber(v[1]) <= now then
        finish(sid, agent, '4', nil, v[4])
      else
        local att = tonumber(v[2]) + 1
        redis.call('HSET', mk, 'st', 1, 'vis', lease_until, 'att', att)
        zadd_later(tk, lease_until, sid)
        out[#out + 1] = sid
        out[#out + 1] = att
        out[#out + 1] = v[3]
        got = got + 1
      end
    end
  end
  if got == 0 then
    local first = redis.call('ZRANGE', tk, 0, 0, 'WITHSCORES')
    if first[2] then out[1] = first[2] end
  end
  result = out

elseif OP == 'settle' then
  local keep = ARGV[5] == '1'
  local ops, out = {}, {}
  for i = 6, #ARGV do ops[#ops + 1] = parse_settle(ARGV[i]) end
  for _, f in ipairs(ops) do out[#out + 1] = settle(f, keep) end
  result = out

elseif OP == 'reply' then
  -- keep, cid, reply, the reference it holds ('' for none), the settle op of the request
  local cid, blob, ref = ARGV[6], ARGV[7], ARGV[8]
  local ack = ARGV[9] and parse_settle(ARGV[9])
  local waiting = redis.call('HGET', P .. 'req', cid) == ''
  -- the hold first: the ack may release the same content
  if waiting and ref ~= '' and not ref_hold(ref) then ref_not_found(ref) end
  if ack then settle(ack, ARGV[5] == '1') end
  if waiting then
    redis.call('HSET', P .. 'req', cid, blob)
    if ref ~= '' then redis.call('HSET', P .. 'req:ref', cid, ref) end
    -- the reply itself goes to the waiting hub, which then needs no round trip to fetch it
    if others() then redis.call('PUBLISH', P .. 'wake', '\1' .. cid .. '\n' .. blob) end
    result = 1
  else
    count('late_replies', 1)
    result = 0
  end

elseif OP == 'take' then
  local cid = ARGV[5]
  local cur = redis.call('HGET', P .. 'req', cid)
  if cur and (cur ~= '' or ARGV[6] == '1') then
    -- the requester releases the reply's reference once it has read the reply
    redis.call('HDEL', P .. 'req', cid)
    redis.call('HDEL', P .. 'req:ref', cid)
    redis.call('ZREM', P .. 'req:dl', cid)
  end
  if cur and cur ~= '' then result = cur end

elseif OP == 'sched_add' then
  local ref = ARGV[10]
  arg_num(ARGV[8], 'next_run')
  ref_require({ref}, 1)
  local unknown = ensure_agents({ARGV[9]}, ARGV[5] == '1')
  if unknown then
    result = unknown
  else
    local id = ARGV[6]
    if ref ~= '' then
      ref_hold(ref)
      redis.call('HSET', P .. 'sched:ref', id, ref)
    end
    redis.call('HSET', P .. 'sched', id, ARGV[7])
    redis.call('HSET', P .. 'sched:runs', id, 0)
    redis.call('ZADD', P .. 'sched:next', ARGV[8], id)
    touch('schedules')
  end

elseif OP == 'sched_cancel' then
  local id = ARGV[5]
  result = redis.call('ZREM', P .. 'sched:next', id)
  redis.call('HDEL', P .. 'sched', id)
  redis.call('HDEL', P .. 'sched:runs', id)
  local ref = redis.call('HGET', P .. 'sched:ref', id)
  if ref then
    redis.call('HDEL', P .. 'sched:ref', id)
    ref_drop(ref)
  end
  if result == 1 then touch('schedules') end

elseif OP == 'sched_list' then
  local ids = redis.call('ZRANGE', P .. 'sched:next', 0, -1, 'WITHSCORES')
  local out = {}
  for i = 1, #ids, 2 do
    local id = ids[i]
    out[#out + 1] = {redis.call('HGET', P .. 'sched', id), ids[i + 1],
      redis.call('HGET', P .. 'sched:runs', id), id}
  end
  result = out

elseif OP == 'sched_due' then
  local due = redis.call('ZRANGEBYSCORE', P .. 'sched:next', '-inf', NOW_S, 'WITHSCORES',
    'LIMIT', 0, 256)
  local out = {}
  for i = 1, #due, 2 do
    out[#out + 1] = {due[i], due[i + 1], redis.call('HGET', P .. 'sched', due[i])}
  end
  local first = redis.call('ZRANGE', P .. 'sched:next', 0, 0, 'WITHSCORES')
  result = {out, first[2] or false}

elseif OP == 'sched_fire' then
  -- per schedule: id, the next_run it was due at, its next occurrence, message header and
  -- body; a schedule another hub fired meanwhile no longer has that next_run and is skipped
  local runs, headers = 0, {}
  for b = 5, #ARGV, 5 do
    arg_num(ARGV[b + 1], 'next_run')
    arg_num(ARGV[b + 2], 'upcoming')
    headers[#headers + 1] = split(ARGV[b + 3], 12)
  end
  require_refs(headers)
  for b = 5, #ARGV, 5 do
    local id = ARGV[b]
    local score = redis.call('ZSCORE', P .. 'sched:next', id)
    if score and tonumber(score) == tonumber(ARGV[b + 1]) and ARGV[b + 4] then
      store(headers[(b - 5) / 5 + 1], ARGV[b + 4])
      redis.call('ZADD', P .. 'sched:next', ARGV[b + 2], id)
      hincr(P .. 'sched:runs', id, 1)
      runs = runs + 1
    end
  end
  save_seq()
  count('scheduled_runs', runs)
  local first = redis.call('ZRANGE', P .. 'sched:next', 0, 0, 'WITHSCORES')
  result = first[2] or false

elseif OP == 'bury' then
  -- agent, then sid, attempt, why of each claimed message whose body could not be decoded:
  -- each becomes a dead letter saying why, unless its lease was lost meanwhile
  local agent, n = ARGV[5], 0
  for i = 6, #ARGV, 3 do
    local v = redis.call('HMGET', mkey(ARGV[i]), 'st', 'att')
    if v[1] == '1' and v[2] == ARGV[i + 1] then
      unreadable(ARGV[i], agent, ARGV[i + 2])
      n = n + 1
    end
  end
  result = n

elseif OP == 'sched_park' then
  -- schedules that cannot be decoded or fired: they stay listed and cancellable, due never
  for i = 5, #ARGV do
    if redis.call('ZADD', P .. 'sched:next', 'XX', 'CH', 'inf', ARGV[i]) == 1 then
      count('undecodable', 1)
    end
  end
  touch('schedules')

elseif OP == 'box_stats' then
  local agent = ARGV[5]
  local delayed, in_flight = 0, 0
  for _, sid in ipairs(redis.call('ZRANGE', P .. 't:' .. agent, 0, -1)) do
    local st = redis.call('HGET', mkey(sid), 'st')
    if st == '2' then delayed = delayed + 1 elseif st == '1' then in_flight = in_flight + 1 end
  end
  result = {redis.call('ZCARD', P .. 'r:' .. agent), delayed, in_flight,
    redis.call('ZCARD', P .. 'd:' .. agent)}

elseif OP == 'pending' then
  local agent, limit = ARGV[5], arg_num(ARGV[6], 'limit')
  local out = {}
  for _, zk in ipairs({'r:', 't:'}) do
    for _, sid in ipairs(redis.call('ZRANGE', P .. zk .. agent, 0, limit - 1)) do
      local v = redis.call('HMGET', mkey(sid), 'st', 'att', 'vis', 'b', 'ref', 'id')
      local size = false
      if v[5] then size = redis.call('HGET', P .. 'ref:' .. v[5], 'size') or 0 end
      out[#out + 1] = {sid, v[1], v[2], v[3], v[4], size, v[6]}
    end
  end
  result = out

elseif OP == 'dead' then
  local agent, limit = ARGV[5], tonumber(ARGV[6])
  local out = {}
  for _, sid in ipairs(redis.call('ZRANGE', P .. 'd:' .. agent, 0, limit - 1)) do
    out[#out + 1] = redis.call('HMGET', mkey(sid), 'why', 'att', 'fin', 'b', 'id')
  end
  result = out

elseif OP == 'requeue' then
  local agent = ARGV[5]
  local wanted = nil
  if ARGV[6] == '1' then
    wanted = {}
    for i = 7, #ARGV do wanted[ARGV[i]] = true end
  end
  local n = 0
  for _, sid in ipairs(redis.call('ZRANGE', P .. 'd:' .. agent, 0, -1)) do
    local mk = mkey(sid)
    local v = redis.call('HMGET', mk, 'id', 'pri', 'exp')
    if wanted == nil or wanted[v[1]] then
      redis.call('HSET', mk, 'att', 0)
      redis.call('HDEL', mk, 'why', 'fin')
      local exp = v[3]
      -- a requeue is an explicit decision to deliver: clear a passed expiry too
      if exp and not (stored_num(exp) and stored_num(exp) > now) then
        redis.call('HDEL', mk, 'exp')
        exp = nil
      end
      redis.call('ZREM', P .. 'd:' .. agent, sid)
      redis.call('ZREM', P .. 'fin:3', sid)
      make_ready(sid, agent, v[2], exp)
      n = n + 1
    end
  end
  if n > 0 then touch(MAIL_CHANNEL .. agent) end
  result = n

elseif OP == 'prune' then
  local keep = {['5'] = ARGV[5], ['4'] = ARGV[6], ['3'] = ARGV[7]}
  for _, seconds in pairs(keep) do arg_num(seconds, 'retention') end
  local batch = arg_num(ARGV[8], 'batch')
  local dead, expired, pruned = 0, 0, 0
  for _, agent in ipairs(redis.call('HKEYS', P .. 'agents')) do
    local ready, d = fire_timers(agent, batch)
    dead = dead + d
    if ready > 0 then touch(MAIL_CHANNEL .. agent) end
  end
  for _, sid in ipairs(redis.call('ZRANGEBYSCORE', P .. 'exp', '-inf', NOW_S, 'LIMIT', 0,
      batch)) do
    local v = redis.call('HMGET', mkey(sid), 'st', 'rcp', 'ref')
    if v[1] == '0' or v[1] == '2' then
      finish(sid, v[2], '4', nil, v[3])
      expired = expired + 1
    else
      redis.call('ZREM', P .. 'exp', sid)
    end
  end
  for state, seconds in pairs(keep) do
    local zk = P .. STATE_KEY[state]
    local limit = string.format('%.17g', now - tonumber(seconds))
    for _, sid in ipairs(redis.call('ZRANGEBYSCORE', zk, '-inf', limit, 'LIMIT', 0, batch)) do
      local mk = mkey(sid)
      local v = redis.call('HMGET', mk, 'st', 'rcp', 'ref')
      if v[1] == state then
        if state == '3' then
          redis.call('ZREM', P .. 'd:' .. v[2], sid)
          -- expired and acked messages released theirs when they finished
          if v[3] then ref_drop(v[3]) end
        end
        redis.call('DEL', mk)
        pruned = pruned + 1
      end
      redis.call('ZREM', zk, sid)
    end
  end
  local stale = redis.call('ZRANGEBYSCORE', P .. 'dd:until', '-inf', NOW_S, 'LIMIT', 0, batch)
  for _, field in ipairs(stale) do
    redis.call('HDEL', P .. 'dd', field)
    redis.call('ZREM', P .. 'dd:until', field)
  end
  local grace = string.format('%.17g', now - REPLY_GRACE)
  local slots = redis.call('ZRANGEBYSCORE', P .. 'req:dl', '-inf', grace, 'LIMIT', 0, batch)
  for _, cid in ipairs(slots) do
    -- a reply nobody took still holds its payload's reference
    local ref = redis.call('HGET', P .. 'req:ref', cid)
    if ref then
      redis.call('HDEL', P .. 'req:ref', cid)
      ref_drop(ref)
    end
    redis.call('HDEL', P .. 'req', cid)
    redis.call('ZREM', P .. 'req:dl', cid)
  end
  result = {expired, dead, pruned, #stale, #slots}
end

flush()
publish()
-- the hot paths return their result alone: the caller knows which of its waiters to wake
if BARE[OP] then return result end
return {result, touched_list}
""".replace("REPLY_GRACE", repr(REPLY_GRACE))
    .replace("LEASE_EXPIRED", _LEASE_EXPIRED)
    .replace("FINAL_NACK", _FINAL_NACK)
    .replace("MAIL_CHANNEL", repr(mail_channel("")))
)
