"""The topics script: the log, per-topic stats and durable consumers (see `scripts.py` for
the calling convention; `topics.py` for how a claim and a prune split into two calls).

A published payload stored by reference holds its reference (`ref_holds.py`) until the
record is pruned.
"""

from __future__ import annotations

from ..._subjects import TOPICS_CHANNEL, consumer_channel
from .ref_holds import REF_HOLDS
from .scripts import COMMON, Lua, Part

# Topic keys (P = prefix):
#   P tp:seq            the last topic sequence number
#   P tp:log            STREAM: the log, entry id "<seq>-0"; fields t (topic), s (sender),
#                       y (type), d (data), k (data kind), m (metadata, absent if none),
#                       at (published_at), o (origin)
#   P tp:s:<topic>      HASH: pub, dl, dr (published, delivered, dropped), at and last (time
#                       and sequence of the latest publish), kept (records in the log)
#   P tp:names          ZSET (score 0): topics with stats
#   P tp:cons           HASH: durable consumer name -> definition (msgpack: see `_definition`)
#   P tp:c:<name>       HASH: def, start (where it was last started, "" if never), pos
#                       (highest sequence scanned), lost (records lost since the last claim)
#   P tp:c:<name>:p     ZSET: leased sequences, score lease_until
#   P tp:c:<name>:a     HASH: leased sequence -> attempt
#: Appends one record to the log and counts it in the topic's stats; returns its sequence, or
#: nil (writing nothing) when the sequence counter is damaged. Shared by the topics script and
#: the mailbox script (which appends dead-letter notices in the call that dead-letters).
TOPIC_APPEND = r"""
local function topic_append(topic, snd, typ, data, kind, meta, at, origin)
  local cur = redis.call('GET', P .. 'tp:seq')
  if cur and not string.match(cur, '^%d+$') then return nil end
  local seq = redis.call('INCR', P .. 'tp:seq')
  local f = {'XADD', P .. 'tp:log', string.format('%d-0', seq), 't', topic, 's', snd,
    'y', typ, 'd', data, 'k', kind, 'at', at, 'o', origin}
  if meta then f[#f + 1] = 'm'; f[#f + 1] = meta end
  redis.call(unpack(f))
  local sk = P .. 'tp:s:' .. topic
  hincr(sk, 'pub', 1)
  hincr(sk, 'kept', 1)
  redis.call('HSET', sk, 'at', at, 'last', string.format('%d', seq))
  redis.call('ZADD', P .. 'tp:names', 0, topic)
  return seq
end
"""

_DEFS = r"""
local LOG, NAMES, CONS
local function skey(topic) return P .. 'tp:s:' .. topic end
local function ckey(name) return P .. 'tp:c:' .. name end
local function head() return stored_num(redis.call('GET', P .. 'tp:seq')) or 0 end
local function eid(seq) return string.format('%d-0', seq) end
-- numbers are stored through this: Redis would write a Lua number with only 14 digits
local function int(n) return string.format('%d', n) end
local function seq_of(id) return tonumber(string.match(id, '^(%d+)')) end

local function fields(entry)
  local f, raw = {}, entry[2]
  for i = 1, #raw, 2 do f[raw[i]] = raw[i + 1] end
  return f
end

local function count_delivered(counts)
  for topic, n in pairs(counts) do
    local sk = skey(topic)
    if redis.call('EXISTS', sk) == 1 then hincr(sk, 'dl', n) end
  end
end

local function next_wake(pk)
  local first = redis.call('ZRANGE', pk, 0, 0, 'WITHSCORES')
  return first[2] or false
end

"""

_BEGIN = r"""
LOG, NAMES, CONS = P .. 'tp:log', P .. 'tp:names', P .. 'tp:cons'
"""

TOPICS = Lua(
    "topics",
    (COMMON, Part(REF_HOLDS), Part(TOPIC_APPEND), Part(_DEFS, _BEGIN)),
    r"""
local result = false
if OP == 'publish' then
  local topic, snd, typ, data, kind = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
  local rid = ref_id_of(data, kind)
  check_seq(P .. 'tp:seq')
  if not rid or ref_hold(rid) then
    local meta = nil
    if ARGV[10] == '1' then meta = ARGV[11] end
    -- checked above: the counter is an integer, so this appends
    local seq = topic_append(topic, snd, typ, data, kind, meta, ARGV[12], ARGV[13])
    touch(TOPICS_CHANNEL)
    touch(TOPICS_CHANNEL .. ':' .. string.match(topic, '^[^.]*'))
    result = seq
  end

elseif OP == 'head' then
  result = head()

elseif OP == 'read' then
  -- the log after ARGV[5] (at most ARGV[6] records) and the head, in one snapshot
  local rows = redis.call('XRANGE', LOG, eid(arg_num(ARGV[5], 'after') + 1), '+', 'COUNT',
    arg_num(ARGV[6], 'limit'))
  result = {rows, head()}

elseif OP == 'count' then
  for i = 5, #ARGV, 3 do
    arg_num(ARGV[i + 1], 'delivered')
    arg_num(ARGV[i + 2], 'dropped')
  end
  for i = 5, #ARGV, 3 do
    local sk = skey(ARGV[i])
    hincr(sk, 'dl', ARGV[i + 1])
    hincr(sk, 'dr', ARGV[i + 2])
    redis.call('ZADD', NAMES, 0, ARGV[i])
  end

elseif OP == 'stats' then
  local names
  if ARGV[5] == '1' then names = {ARGV[6]} else names = redis.call('ZRANGE', NAMES, 0, -1) end
  local rows = {}
  for _, name in ipairs(names) do
    local v = redis.call('HMGET', skey(name), 'pub', 'dl', 'dr', 'at', 'last', 'kept')
    rows[#rows + 1] = {name, v[1] or '0', v[2] or '0', v[3] or '0', v[4] or false,
      v[5] or '0', v[6] or '0'}
  end
  result = {rows, redis.call('HVALS', CONS)}

elseif OP == 'open' then
  local name, def, start, kind, sseq, stime = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9],
    ARGV[10]
  local ck = ckey(name)
  if kind == 'seq' then arg_num(sseq, 'start sequence') end
  if kind == 'time' then arg_num(stime, 'start time') end
  -- read before any write (the script may fail on nothing after its first write)
  local function position()
    if kind == 'all' then return 0 end
    if kind == 'seq' then return math.max(tonumber(sseq) - 1, 0) end
    if kind == 'time' then
      local t, from = tonumber(stime), '-'
      while true do
        local rows = redis.call('XRANGE', LOG, from, '+', 'COUNT', 1000)
        if #rows == 0 then break end
        for _, e in ipairs(rows) do
          if (stored_num(fields(e).at) or 0) >= t then return seq_of(e[1]) - 1 end
        end
        from = eid(seq_of(rows[#rows][1]) + 1)
      end
    end
    return head()
  end
  local cur = redis.call('HMGET', ck, 'def', 'start')
  if cur[1] then
    if cur[1] ~= def then
      result = cur[1]
    elseif start ~= '' and start ~= cur[2] then
      local pos = int(position())
      redis.call('DEL', ck .. ':p', ck .. ':a')
      redis.call('HSET', ck, 'start', start, 'pos', pos, 'lost', 0)
      touch(CONSUMER_CHANNEL .. name)
    end
  else
    redis.call('HSET', ck, 'def', def, 'start', start, 'pos', int(position()), 'lost', 0)
    redis.call('HSET', CONS, name, def)
  end

elseif OP == 'claim' then
  -- ARGV: name, lease_until, max, chunk, number of acks, acks and releases as seq, attempt
  local name, lease_until, want, chunk = ARGV[5], ARGV[6], arg_num(ARGV[7], 'want'), ARGV[8]
  arg_num(lease_until, 'lease_until')
  arg_num(chunk, 'chunk')
  local ck = ckey(name)
  local pk, ak = ck .. ':p', ck .. ':a'
  local last_ack = 9 + 2 * arg_num(ARGV[9], 'acks')
  for i = 10, #ARGV, 2 do
    local seq, att = ARGV[i], ARGV[i + 1]
    if redis.call('HGET', ak, seq) == att then
      if i < last_ack then
        redis.call('HDEL', ak, seq)
        redis.call('ZREM', pk, seq)
      else
        redis.call('ZADD', pk, NOW_S, seq)
        touch(CONSUMER_CHANNEL .. name)
      end
    end
  end
  local c = redis.call('HMGET', ck, 'def', 'pos', 'lost')
  if want <= 0 then
    result = 0
  elseif not c[1] then
    result = false
  else
    local due = redis.call('ZRANGEBYSCORE', pk, '-inf', NOW_S)
    table.sort(due, function(a, b) return tonumber(a) < tonumber(b) end)
    local out, counts = {}, {}
    for _, seq in ipairs(due) do
      if #out >= 2 * want then break end
      local e = redis.call('XRANGE', LOG, seq .. '-0', seq .. '-0')[1]
      if e then
        out[#out + 1] = hincr(ak, seq, 1)
        out[#out + 1] = e
        redis.call('ZADD', pk, lease_until, seq)
        local topic = fields(e).t
        if topic then counts[topic] = (counts[topic] or 0) + 1 end
      else  -- pruned by a pass that found its lease running: it was delivered
        redis.call('ZREM', pk, seq)
        redis.call('HDEL', ak, seq)
      end
    end
    count_delivered(counts)
    local lost = tonumber(c[3]) or 0
    if lost ~= 0 then redis.call('HSET', ck, 'lost', 0) end
    -- a damaged position restarts at the head: what is in the log is not redelivered
    local pos = stored_num(c[2]) or head()
    local rows = {}
    if #out < 2 * want then
      rows = redis.call('XRANGE', LOG, eid(pos + 1), '+', 'COUNT', chunk)
    end
    result = {out, pos, lost, c[1], rows, head(), next_wake(pk)}
  end

elseif OP == 'scan' then
  local rows = redis.call('XRANGE', LOG, eid(arg_num(ARGV[5], 'after') + 1), '+', 'COUNT',
    arg_num(ARGV[6], 'limit'))
  result = {rows, head()}

elseif OP == 'take' then
  -- ARGV: name, the position read, the new position, lease_until, number of topics, then
  -- topic, count pairs, then the sequences to lease
  local name, from, to, lease_until = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
  arg_num(to, 'to')
  arg_num(lease_until, 'lease_until')
  local first = 10 + 2 * arg_num(ARGV[9], 'topics')
  for i = 10, first - 1, 2 do arg_num(ARGV[i + 1], 'delivered') end
  local ck = ckey(name)
  local pk, ak = ck .. ':p', ck .. ':a'
  local pos = redis.call('HGET', ck, 'pos')
  if not pos then
    result = false
  elseif tonumber(pos) ~= tonumber(from) then
    result = {0, false}
  else
    redis.call('HSET', ck, 'pos', to)
    local counts = {}
    for i = 10, first - 1, 2 do counts[ARGV[i]] = tonumber(ARGV[i + 1]) end
    count_delivered(counts)
    for i = first, #ARGV do
      redis.call('ZADD', pk, lease_until, ARGV[i])
      redis.call('HSET', ak, ARGV[i], 1)
    end
    result = {1, next_wake(pk)}
  end

elseif OP == 'prune_scan' then
  -- the records beyond retention, oldest first (at most ARGV[7]), as seq, topic, sender,
  -- type, metadata; and every durable consumer's name and definition
  local excess = redis.call('XLEN', LOG) - arg_num(ARGV[5], 'max_count')
  local cutoff, batch = arg_num(ARGV[6], 'cutoff'), arg_num(ARGV[7], 'batch')
  local out, from, done = {}, '-', false
  while not done and #out < batch do
    local rows = redis.call('XRANGE', LOG, from, '+', 'COUNT', math.min(1000, batch - #out))
    if #rows == 0 then break end
    for _, e in ipairs(rows) do
      local f = fields(e)
      if #out >= excess and (stored_num(f.at) or 0) > cutoff then
        done = true
        break
      end
      out[#out + 1] = {seq_of(e[1]), f.t, f.s, f.y, f.m or false}
    end
    from = eid(seq_of(rows[#rows][1]) + 1)
  end
  result = {out, redis.call('HGETALL', CONS)}

elseif OP == 'prune' then
  -- ARGV: the last sequence to delete, the age cutoff, then per consumer its name and the
  -- doomed sequences that match it (comma-separated)
  local through, cutoff = arg_num(ARGV[5], 'through'), arg_num(ARGV[6], 'cutoff')
  local matched = {}
  for i = 7, #ARGV, 2 do matched[ARGV[i]] = ARGV[i + 1] end
  local pruned = 0
  if through > 0 then
    for _, name in ipairs(redis.call('HKEYS', CONS)) do
      local ck = ckey(name)
      local pk, ak = ck .. ':p', ck .. ':a'
      local lost = 0
      local leased = redis.call('ZRANGE', pk, 0, -1, 'WITHSCORES')
      for i = 1, #leased, 2 do
        if tonumber(leased[i]) <= through then
          -- a record out on a live lease was delivered; one whose lease ended is lost
          if tonumber(leased[i + 1]) <= now then lost = lost + 1 end
          redis.call('ZREM', pk, leased[i])
          redis.call('HDEL', ak, leased[i])
        end
      end
      local pos = tonumber(redis.call('HGET', ck, 'pos'))
      if pos and pos < through then
        for s in string.gmatch(matched[name] or '', '%d+') do
          if tonumber(s) > pos then lost = lost + 1 end
        end
        redis.call('HSET', ck, 'pos', int(through))
      end
      if lost > 0 then hincr(ck, 'lost', lost) end
    end
    while true do
      local rows = redis.call('XRANGE', LOG, '-', eid(through), 'COUNT', 1000)
      if #rows == 0 then break end
      local ids = {}
      for _, e in ipairs(rows) do
        local f = fields(e)
        ids[#ids + 1] = e[1]
        if f.t then hincr(skey(f.t), 'kept', -1) end
        local rid = ref_id_of(f.d, f.k)
        if rid then ref_drop(rid) end
      end
      redis.call('XDEL', LOG, unpack(ids))
      pruned = pruned + #ids
    end
  end
  for _, name in ipairs(redis.call('ZRANGE', NAMES, 0, -1)) do
    local v = redis.call('HMGET', skey(name), 'at', 'kept')
    if (not stored_num(v[1]) or stored_num(v[1]) <= cutoff) and (stored_num(v[2]) or 0) <= 0 then
      redis.call('DEL', skey(name))
      redis.call('ZREM', NAMES, name)
    end
  end
  result = pruned
end

publish()
if OP == 'publish' then return once_done(result) end
return once_done({result, touched_list})
""".replace("CONSUMER_CHANNEL", repr(consumer_channel(""))).replace(
        "TOPICS_CHANNEL", repr(TOPICS_CHANNEL)
    ),
)
