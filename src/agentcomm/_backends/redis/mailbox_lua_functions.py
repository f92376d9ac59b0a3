"""The functions of the mailbox script (`mailbox_lua.py`): storing, finishing and settling
messages, their timers, and the checks each operation makes before its first write."""

from __future__ import annotations

from ..._subjects import TOPICS_CHANNEL, topic_channel
from ..common import (
    DEAD_NOTICE_TYPE,
    DEAD_TOPIC_PREFIX,
    REPLY_GRACE,
    expired_reason,
    final_nack_reason,
    lease_expired_reason,
    mail_channel,
)
from .scripts import Part

# Message hash fields: b (the body, msgpack: see `Body` in mailbox.py), id, rcp, pri, vis
# (visible at / lease until), exp, max (attempts), att (attempt), st (state), fin, why (reason),
# ref (the reference the payload holds, if it does), cid (a request's correlation id).
#
# A request's reply slot (`P req`) holds "" while its requester waits, then the reply: the
# msgpack of a `StoredReply`, or, written by `fail_request` when the request is dead-lettered
# or expires, "\0F" state NUL attempts NUL recipient NUL message id NUL time NUL reason
# (see `decode_reply` in mailbox.py). `P req:att` records the attempt of each request's latest
# delivery.
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
_EXPIRED_AFTER = _template(expired_reason(1001), 1001)
# the channels a dead-letter notice touches, as a Lua table
_DEAD_TOPIC_CHANNELS = f"{{{TOPICS_CHANNEL!r}, {topic_channel(DEAD_TOPIC_PREFIX)!r}}}"


def fill(lua: str) -> str:
    """`lua` with the constants it names filled in."""
    return (
        lua.replace("REPLY_GRACE", repr(REPLY_GRACE))
        .replace("LEASE_EXPIRED", _LEASE_EXPIRED)
        .replace("FINAL_NACK", _FINAL_NACK)
        .replace("EXPIRED_AFTER", _EXPIRED_AFTER)
        .replace("EXPIRED_NEVER", repr(expired_reason(0)))
        .replace("DEAD_TOPIC_PREFIX", repr(DEAD_TOPIC_PREFIX))
        .replace("DEAD_NOTICE_TYPE", repr(DEAD_NOTICE_TYPE))
        .replace(
            "DEAD_TOPIC_CHANNELS", f"{{{TOPICS_CHANNEL!r}, {topic_channel(DEAD_TOPIC_PREFIX)!r}}}"
        )
        .replace("MAIL_CHANNEL", repr(mail_channel("")))
    )


_DEFS = fill(
    r"""
-- a msgpack writer for values Python decodes with msgspec: Redis's cmsgpack writes every Lua
-- string as msgpack str (msgspec wants bin for bytes) and cannot read bin back
local function mp_u16(n) return string.char(math.floor(n / 256), n % 256) end
local function mp_u32(n)
  return string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256)
end
local function mp_str(s)
  local n = #s
  if n < 32 then return string.char(160 + n) .. s end
  if n < 256 then return '\217' .. string.char(n) .. s end
  if n < 65536 then return '\218' .. mp_u16(n) .. s end
  return '\219' .. mp_u32(n) .. s
end
local function mp_bin(s)
  local n = #s
  if n < 256 then return '\196' .. string.char(n) .. s end
  if n < 65536 then return '\197' .. mp_u16(n) .. s end
  return '\198' .. mp_u32(n) .. s
end
local MP_NIL, MP_TRUE, MP_FALSE = '\192', '\195', '\194'
-- numbers (integers and floats exactly) and nil
local function mp_num(n)
  if n == nil then return MP_NIL end
  return cmsgpack.pack(n)
end
local function mp_array_head(n)
  if n < 16 then return string.char(144 + n) end
  if n < 65536 then return '\220' .. mp_u16(n) end
  return '\221' .. mp_u32(n)
end
local function mp_map_head(n)
  if n < 16 then return string.char(128 + n) end
  if n < 65536 then return '\222' .. mp_u16(n) end
  return '\223' .. mp_u32(n)
end
-- an array of strings
local function mp_strs(list)
  local parts = {mp_array_head(#list)}
  for i, s in ipairs(list) do parts[i + 1] = mp_str(s) end
  return table.concat(parts)
end

-- the body of a message as `Body` in mailbox.py encodes it (an array, in its field order),
-- for messages a script builds itself (pool sends); numbers as Lua numbers, `meta` and `exp`
-- nil for none
local function message_body(id, snd, rcp, typ, pri, data, kind, meta, enq, exp, maxa)
  return table.concat({mp_array_head(13), mp_str(id), mp_str(snd), mp_str(rcp), mp_str(typ),
    mp_num(pri), mp_bin(data), mp_num(kind), meta and mp_bin(meta) or MP_NIL, mp_num(enq),
    mp_num(exp), mp_num(maxa), MP_NIL, MP_NIL})
end

local function mkey(sid) return P .. 'm:' .. sid end
local function count(name, n)
  if n ~= 0 then hincr(P .. 'counters', name, n) end
end

local STATE_KEY = {['3'] = 'fin:3', ['4'] = 'fin:4', ['5'] = 'fin:5'}
local BARE = {enqueue = true, claim = true, settle = true, reply = true, take = true,
  drop = true}

-- sorted-set writes of a batch, sent as one command per key at the end (see `flush`); used
-- only where nothing reads the key in between and no member is both added and removed
local zadds, zrems
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

-- what the caller logs: 'R' NUL agent NUL id NUL attempt NUL max for a lease that ended with
-- attempts left, 'D' NUL agent NUL id NUL attempts NUL reason for a dead letter
local events

-- channels every hub, this one too, must hear of: the failure replies and dead-letter notices
-- are written inside hot ops, whose caller notifies only the channels it knows of
local shout, shouted
local function shout_channel(channel)
  if not shouted[channel] then
    shouted[channel] = true
    shout[#shout + 1] = channel
  end
end
local function shout_all()
  -- an origin of no hub: every hub, this one too, relays it to its waiters
  if #shout > 0 then redis.call('PUBLISH', P .. 'wake', '\n' .. table.concat(shout, '\n')) end
end

-- a request dead-lettered (state '3') or expired ('4') whose requester still waits: the
-- failure goes into its reply slot and, whole, to the waiting hub
local function fail_request(sid, state, reason)
  local v = redis.call('HMGET', mkey(sid), 'cid', 'att', 'id', 'rcp')
  local cid = v[1]
  if not cid or redis.call('HGET', P .. 'req', cid) ~= '' then return end
  local att = v[2] or '0'
  if state == '4' then
    if att == '0' then reason = EXPIRED_NEVER else reason = string.format(EXPIRED_AFTER, att) end
  end
  local blob = '\0F' .. state .. '\0' .. att .. '\0' .. (v[4] or '') .. '\0' .. (v[3] or '')
    .. '\0' .. NOW_S .. '\0' .. (reason or '')
  redis.call('HSET', P .. 'req', cid, blob)
  redis.call('PUBLISH', P .. 'wake', '\1' .. cid .. '\n' .. blob)
end

-- the first `n` fields of a message body (msgpack array, see `Body`), when they are strings:
-- read here because the server's cmsgpack cannot decode the bin field that follows them
local function leading_strings(body, n)
  local out, pos = {}, 2
  local b = string.byte(body, 1)
  if not b then return out end
  if b == 0xdc then pos = 4 elseif b == 0xdd then pos = 6 elseif b < 0x90 or b > 0x9f then
    return out
  end
  for i = 1, n do
    local t = string.byte(body, pos)
    local len, skip
    if not t then return out end
    if t >= 0xa0 and t <= 0xbf then len, skip = t - 0xa0, 1
    elseif t == 0xd9 then len, skip = string.byte(body, pos + 1), 2
    elseif t == 0xda then
      local h, l = string.byte(body, pos + 1, pos + 2)
      if not l then return out end
      len, skip = h * 256 + l, 3
    else return out end
    if not len then return out end
    out[i] = string.sub(body, pos + skip, pos + skip + len - 1)
    pos = pos + skip + len
  end
  return out
end

-- a message was dead-lettered: fail its request, append the notice to its agent's dead-letter
-- topic, record the event for the caller's log
local function dead_lettered(sid, rcp, reason)
  reason = reason or ''
  fail_request(sid, '3', reason)
  local v = redis.call('HMGET', mkey(sid), 'id', 'att', 'b', 'cid')
  local head = leading_strings(v[3] or '', 4)
  local snd, typ = head[2] or '', head[4] or ''
  local notice = cjson.encode({id = v[1] or '', sender = snd, recipient = rcp, type = typ,
    reason = reason, attempts = tonumber(v[2]) or 0, correlation_id = v[4] or cjson.null})
  if topic_append(DEAD_TOPIC_PREFIX .. rcp, rcp, DEAD_NOTICE_TYPE, notice, '0', nil, NOW_S,
      '') then
    for _, channel in ipairs(DEAD_TOPIC_CHANNELS) do shout_channel(channel) end
  end
  events[#events + 1] = 'D\0' .. rcp .. '\0' .. (v[1] or '') .. '\0' .. (v[2] or '0') .. '\0'
    .. reason
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
    dead_lettered(sid, rcp, reason)
  elseif state == '4' then
    count('expired', 1)
    fail_request(sid, '4', nil)
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

-- an operator removes a message (delete, purge, remove_agent): a ready, delayed, in-flight or
-- dead one drops the reference its payload holds; returns 1, or 0 if it was not stored
local function remove_message(sid, rcp)
  local mk = mkey(sid)
  local v = redis.call('HMGET', mk, 'st', 'ref')
  unindex(sid, rcp)
  redis.call('ZREM', P .. 'd:' .. rcp, sid)
  if not v[1] then return 0 end
  if STATE_KEY[v[1]] then redis.call('ZREM', P .. STATE_KEY[v[1]], sid) end
  if v[2] and (v[1] == '0' or v[1] == '1' or v[1] == '2' or v[1] == '3') then ref_drop(v[2]) end
  redis.call('DEL', mk)
  return 1
end

-- delete a schedule and drop the reference its payload holds; returns 1, or 0 if none
local function cancel_schedule(id)
  local gone = redis.call('ZREM', P .. 'sched:next', id)
  redis.call('HDEL', P .. 'sched', id)
  redis.call('HDEL', P .. 'sched:runs', id)
  local ref = redis.call('HGET', P .. 'sched:ref', id)
  if ref then
    redis.call('HDEL', P .. 'sched:ref', id)
    ref_drop(ref)
  end
  return gone
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
    local v = redis.call('HMGET', mkey(sid), 'st', 'att', 'max', 'pri', 'exp', 'id')
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
        events[#events + 1] = 'R\0' .. agent .. '\0' .. (v[6] or '') .. '\0' .. v[2] .. '\0'
          .. v[3]
      end
    else
      redis.call('ZREM', tk, sid)
    end
  end
  return ready, dead
end

-- lease up to `want` of the agent's ready messages, best first, until `lease_until`: appends
-- sid, attempt, body of each to `out`; returns how many
local function take_ready(agent, lease_until, want, out)
  local rk, tk = P .. 'r:' .. agent, P .. 't:' .. agent
  local got = 0
  while got < want do
    local sids = redis.call('ZRANGE', rk, 0, want - got - 1)
    if #sids == 0 then break end
    redis.call('ZREM', rk, unpack(sids))
    for _, sid in ipairs(sids) do
      local mk = mkey(sid)
      local v = redis.call('HMGET', mk, 'exp', 'att', 'b', 'ref', 'cid')
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
        if v[5] and redis.call('HEXISTS', P .. 'req', v[5]) == 1 then
          redis.call('HSET', P .. 'req:att', v[5], att)  -- the request was received
        end
        out[#out + 1] = sid
        out[#out + 1] = att
        out[#out + 1] = v[3]
        got = got + 1
      end
    end
  end
  return got
end

local function untouch(channel)
  if touched[channel] then
    touched[channel] = nil
    for i, c in ipairs(touched_list) do
      if c == channel then
        table.remove(touched_list, i)
        break
      end
    end
  end
end

-- whether a hub listens on `channel` (false, and nothing delivered, for a user who may not ask)
local function subscribed(channel)
  local n = redis.pcall('PUBSUB', 'NUMSUB', channel)
  return type(n) == 'table' and not n.err and tonumber(n[2]) ~= nil and tonumber(n[2]) > 0
end

-- A hub whose receive found the agent's mailbox empty waits for its next message (the claim
-- op's registration in `P w:<agent>`): the message is leased to that hub here, and goes to it
-- whole, with no claim round trip, by pub/sub on its own channel, or in this call's reply
-- (`mine`) when the hub is the caller. A hub that is no longer subscribed gets nothing (a
-- crashed hub's registration is dropped); one whose receive left meanwhile hands the messages
-- back (`release`). Returns whether the agent has no ready message left.
local function deliver(rcp, mine)
  local wk, rk = P .. 'w:' .. rcp, P .. 'r:' .. rcp
  redis.call('ZREMRANGEBYSCORE', wk, '-inf', '(' .. NOW_S)
  for _, reg in ipairs(redis.call('ZRANGE', wk, 0, -1)) do
    redis.call('ZREM', wk, reg)
    local f = split(reg, 4)
    local lease, want = stored_num(f[2]), stored_num(f[3])
    local channel = P .. 'wake:' .. f[1]
    if lease and want and want >= 1 and (f[1] == ORIGIN or subscribed(channel)) then
      local lease_until = string.format('%.17g', now + lease)
      local out = {}
      local got = take_ready(rcp, lease_until, want, out)
      flush()
      if got > 0 then
        local parts = {rcp, lease_until, got}
        for i = 1, #out, 3 do
          parts[#parts + 1] = out[i]
          parts[#parts + 1] = out[i + 1]
          parts[#parts + 1] = #out[i + 2]
          parts[#parts + 1] = out[i + 2]
        end
        local payload = table.concat(parts, '\0')
        if f[1] == ORIGIN then
          mine[#mine + 1] = payload
        else
          redis.call('PUBLISH', channel, '\2' .. payload)
        end
      end
      if redis.call('EXISTS', rk) == 0 then return true end
    end
  end
  return false
end

-- the sequence number of the last stored message: the first store of a script INCRs it,
-- later ones count in this local, written back by `save_seq`
local last_seq, stored

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
  if deadline ~= '' and cid ~= '' then f[#f + 1] = 'cid'; f[#f + 1] = cid end
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
"""
)

#: What the mailbox script's functions keep during a call, reset at its start.
_BEGIN = r"""
zadds, zrems = {}, {}
events = {}
shout, shouted = {}, {}
last_seq, stored = nil, 0
"""

#: The functions of the mailbox script (the pool script has them too).
FUNCTIONS = Part(_DEFS, _BEGIN)
