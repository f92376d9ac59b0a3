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
  P w:<agent>             ZSET: the receives waiting for the agent's next message, score:
                          until when; member "origin NUL lease NUL max_messages NUL receive"
  P d:<agent>             ZSET: dead letters, score seq
  P exp                   ZSET: expires_at of undelivered messages that have one (and of
                          in-flight ones until a prune pass drops them)
  P fin:5|4|3             ZSET: finish time of acked (kept) / expired / dead messages
  P agents, P seen        HASH: agent -> created_at, agent -> last_seen
  P active                HASH: agent -> last_active (presence)
  P dd, P dd:until        HASH + ZSET: "sender/recipient/key" -> first message id, its window
  P req, P req:dl         HASH + ZSET: correlation id -> reply ("" while waiting), deadline
  P req:ref               HASH: correlation id -> the reference its reply holds
  P req:att               HASH: correlation id -> the attempt of the request's latest delivery
  P tp:...                the topic log (see topics_lua.py): dead-letter notices go there
  P sched, P sched:next, P sched:runs   schedules: spec, next run, runs
  P sched:ref             HASH: schedule id -> the reference its payload holds
  P counters              HASH: event counters
  P hubs                  SET: the open hubs (their origin ids), subscribed to P wake
  P wake:<origin>         pub/sub channel of one hub: the messages delivered to it (`deliver`)
  P once:<token>          STRING: the answer of a call with a token, for a rerun (scripts.py)
"""

from __future__ import annotations

from .mailbox_lua_functions import FUNCTIONS, fill
from .ref_holds import REF_HOLDS
from .scripts import COMMON, Lua, Part
from .topics_lua import TOPIC_APPEND

MAILBOX = Lua(
    "mailbox",
    (COMMON, Part(REF_HOLDS), Part(TOPIC_APPEND), FUNCTIONS),
    fill(
        r"""
local result = false
if OP == 'register' then
  local name = ARGV[5]
  redis.call('HSETNX', P .. 'agents', name, NOW_S)
  redis.call('HSET', P .. 'seen', name, NOW_S)
  result = redis.call('HGET', P .. 'agents', name)

elseif OP == 'touch' then
  -- name, last_active ('' to keep it): presence of a registered agent (seen at NOW)
  local name = ARGV[5]
  if redis.call('HEXISTS', P .. 'agents', name) == 1 then
    redis.call('HSET', P .. 'seen', name, NOW_S)
    if ARGV[6] ~= '' then
      arg_num(ARGV[6], 'last_active')
      redis.call('HSET', P .. 'active', name, ARGV[6])
    end
  end

elseif OP == 'release' then
  -- settle ops of deliveries handed back: each still in flight at its attempt becomes ready
  -- at once, its attempt count back by one (the delivery does not count)
  local ops, out = {}, {}
  for i = 5, #ARGV do ops[#ops + 1] = parse_settle(ARGV[i]) end
  for _, f in ipairs(ops) do
    local sid, att = f[2], f[3]
    local mk = mkey(sid)
    local v = redis.call('HMGET', mk, 'st', 'att', 'rcp', 'pri', 'exp')
    if v[1] == '1' and v[2] == att and stored_num(att) then
      redis.call('HSET', mk, 'att', tonumber(att) - 1)
      make_ready(sid, v[3], v[4], v[5])
      touch(MAIL_CHANNEL .. v[3])
      out[#out + 1] = 1
    else
      out[#out + 1] = 0
    end
  end
  result = out

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
    -- the recipients a receive waits for get their messages now (see `deliver`); those left
    -- with nothing ready and no new timer need no wake-up
    local delayed = {}
    for _, h in ipairs(headers) do
      if tonumber(h[5]) > now then delayed[h[3]] = true end
    end
    local quiet, mine = {}, {}
    for _, rcp in ipairs(recipients) do
      if redis.call('EXISTS', P .. 'w:' .. rcp) == 1 then
        flush()
        if deliver(rcp, mine) and not delayed[rcp] then
          untouch(MAIL_CHANNEL .. rcp)
          quiet[#quiet + 1] = rcp
        end
      end
    end
    result = {out, quiet, mine}
  end

elseif OP == 'claim' then
  -- agent, lease_until, max_messages; then, to wait for the agent's next message, the time
  -- this hub waits until, the lease and which of the hub's receives waits (see `deliver`)
  local agent, lease_until, want = ARGV[5], ARGV[6], arg_num(ARGV[7], 'max_messages')
  arg_num(lease_until, 'lease_until')
  local wait_until = ARGV[8]
  if wait_until then
    arg_num(wait_until, 'wait_until')
    arg_num(ARGV[9], 'lease')
  end
  fire_timers(agent, 1000)
  -- flat: {the next wake-up (or false), events...}, then sid, attempt, body of each message
  local out = {false}
  local got = take_ready(agent, lease_until, want, out)
  local head = {false}
  if got == 0 then
    local first = redis.call('ZRANGE', P .. 't:' .. agent, 0, 0, 'WITHSCORES')
    if first[2] then head[1] = first[2] end
    if wait_until then
      redis.call('ZADD', P .. 'w:' .. agent, wait_until,
        ORIGIN .. '\0' .. ARGV[9] .. '\0' .. want .. '\0' .. (ARGV[10] or ''))
    end
  end
  for _, e in ipairs(events) do head[#head + 1] = e end
  out[1] = head
  result = out

elseif OP == 'settle' then
  local keep = ARGV[5] == '1'
  local ops, out = {}, {}
  for i = 6, #ARGV do ops[#ops + 1] = parse_settle(ARGV[i]) end
  for _, f in ipairs(ops) do out[#out + 1] = settle(f, keep) end
  result = {out, events}

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
    redis.call('HDEL', P .. 'req:att', cid)
    redis.call('ZREM', P .. 'req:dl', cid)
  end
  if cur and cur ~= '' then result = cur end

elseif OP == 'drop' then
  -- the slots of replies that reached their requester by pub/sub (and were read there)
  local cids = {}
  for i = 5, #ARGV do cids[#cids + 1] = ARGV[i] end
  if #cids > 0 then
    redis.call('HDEL', P .. 'req', unpack(cids))
    redis.call('HDEL', P .. 'req:ref', unpack(cids))
    redis.call('HDEL', P .. 'req:att', unpack(cids))
    redis.call('ZREM', P .. 'req:dl', unpack(cids))
  end

elseif OP == 'attempts' then
  result = redis.call('HGET', P .. 'req:att', ARGV[5]) or 0

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
  result = cancel_schedule(ARGV[5])
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

elseif OP == 'delete' then
  -- agent, message id: remove that message if ready, delayed, in flight or dead
  local agent, id = ARGV[5], ARGV[6]
  local n = 0
  for _, zk in ipairs({'r:', 't:', 'd:'}) do
    for _, sid in ipairs(redis.call('ZRANGE', P .. zk .. agent, 0, -1)) do
      if n == 0 and redis.call('HGET', mkey(sid), 'id') == id then
        n = remove_message(sid, agent)
      end
    end
  end
  if n > 0 then touch(MAIL_CHANNEL .. agent) end
  result = n

elseif OP == 'purge' then
  -- agent, '1' to remove its dead letters too
  local agent = ARGV[5]
  local keys = {'r:', 't:'}
  if ARGV[6] == '1' then keys[3] = 'd:' end
  local n = 0
  for _, zk in ipairs(keys) do
    for _, sid in ipairs(redis.call('ZRANGE', P .. zk .. agent, 0, -1)) do
      n = n + remove_message(sid, agent)
    end
  end
  if n > 0 then touch(MAIL_CHANNEL .. agent) end
  result = n

elseif OP == 'remove_agent' then
  -- name, then the ids of the schedules that send to it
  local name = ARGV[5]
  if redis.call('HDEL', P .. 'agents', name) == 0 then
    result = 0
  else
    redis.call('HDEL', P .. 'seen', name)
    redis.call('HDEL', P .. 'active', name)
    for _, zk in ipairs({'r:', 't:', 'd:'}) do
      for _, sid in ipairs(redis.call('ZRANGE', P .. zk .. name, 0, -1)) do
        remove_message(sid, name)
      end
      redis.call('DEL', P .. zk .. name)
    end
    for i = 6, #ARGV do
      if cancel_schedule(ARGV[i]) == 1 then touch('schedules') end
    end
    touch(MAIL_CHANNEL .. name)
    result = 1
  end

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
    redis.call('HDEL', P .. 'req:att', cid)
    redis.call('ZREM', P .. 'req:dl', cid)
  end
  result = {expired, dead, pruned, #stale, #slots, events}
end

flush()
publish()
shout_all()
-- the hot paths return their result alone: the caller knows which of its waiters to wake
if BARE[OP] then return once_done(result) end
return once_done({result, touched_list})
"""
    ),
)
