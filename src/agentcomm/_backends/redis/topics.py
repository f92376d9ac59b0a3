"""Topics on Redis: a mixin of `RedisBackend`, with its Lua in `TOPICS`.

The log is one stream whose entry ids are the topic sequence numbers (`<seq>-0`), so a read
after a position is one XRANGE. Filters (pattern, senders, types, metadata) are evaluated in
Python with `TopicFilter`, exactly as on the other backends, which splits the atomic steps that
need them in two script calls:

- a claim settles, re-leases expired deliveries and reads the log after the consumer's
  position (`claim`); Python picks the matching records; `take` then leases them and moves the
  position, only if the position is still the one read (else another hub claimed meanwhile,
  and the claim reads again). Records are immutable and pruning moves the position of every
  consumer it overtakes, so a position that did not move means the records read are still
  there and nobody else leased them.
- a prune reads the records beyond retention and every consumer's definition (`prune_scan`);
  Python lists, per consumer, the doomed records that match it; `prune` then deletes them and
  counts as lost, per consumer, those after its position at that moment.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from ..._errors import NotFound, RefNotFound
from ..._models import TopicStats
from ..._notify import Notifier
from ..._records import ConsumerSpec, NewTopicRecord, TopicBatch, TopicClaim, TopicRecord
from ..._settings import Retention
from ..._subjects import TOPICS_CHANNEL, TopicFilter, consumer_channel, topic_channel
from ..common import conflict, consumer_filter
from .ref_holds import REF_HOLDS
from .scripts import _COMMON

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from redis.commands.core import AsyncScript

_SCAN_CHUNK = 256  # log records read per step when a filter may skip some
_SCAN_STEPS = 16  # chunks one claim reads at most before it settles for what it found
_CLAIM_TRIES = 50  # claims lost to other hubs in a row before returning what we have
_PRUNE_BATCH = 10_000

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
TOPICS = (
    _COMMON
    + REF_HOLDS
    + r"""
local LOG, NAMES, CONS = P .. 'tp:log', P .. 'tp:names', P .. 'tp:cons'
local function skey(topic) return P .. 'tp:s:' .. topic end
local function ckey(name) return P .. 'tp:c:' .. name end
local function head() return tonumber(redis.call('GET', P .. 'tp:seq') or '0') end
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
    if redis.call('EXISTS', sk) == 1 then redis.call('HINCRBY', sk, 'dl', n) end
  end
end

local function next_wake(pk)
  local first = redis.call('ZRANGE', pk, 0, 0, 'WITHSCORES')
  return first[2] or false
end

local result = false
if OP == 'publish' then
  local topic, snd, typ, data, kind = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
  local rid = ref_id_of(data, kind)
  if not rid or ref_hold(rid) then
    local seq = redis.call('INCR', P .. 'tp:seq')
    local f = {'XADD', LOG, eid(seq), 't', topic, 's', snd, 'y', typ, 'd', data, 'k', kind,
      'at', ARGV[12], 'o', ARGV[13]}
    if ARGV[10] == '1' then f[#f + 1] = 'm'; f[#f + 1] = ARGV[11] end
    redis.call(unpack(f))
    local sk = skey(topic)
    redis.call('HINCRBY', sk, 'pub', 1)
    redis.call('HINCRBY', sk, 'kept', 1)
    redis.call('HSET', sk, 'at', ARGV[12], 'last', int(seq))
    redis.call('ZADD', NAMES, 0, topic)
    touch('topics')
    touch('topics:' .. string.match(topic, '^[^.]*'))
    result = seq
  end

elseif OP == 'head' then
  result = head()

elseif OP == 'read' then
  -- the log after ARGV[5] (at most ARGV[6] records) and the head, in one snapshot
  local rows = redis.call('XRANGE', LOG, eid(tonumber(ARGV[5]) + 1), '+', 'COUNT', ARGV[6])
  result = {rows, head()}

elseif OP == 'count' then
  for i = 5, #ARGV, 3 do
    local sk = skey(ARGV[i])
    redis.call('HINCRBY', sk, 'dl', ARGV[i + 1])
    redis.call('HINCRBY', sk, 'dr', ARGV[i + 2])
    redis.call('ZADD', NAMES, 0, ARGV[i])
  end

elseif OP == 'stats' then
  local names
  if ARGV[5] == '1' then names = {ARGV[6]} else names = redis.call('ZRANGE', NAMES, 0, -1) end
  local rows = {}
  for _, name in ipairs(names) do
    local v = redis.call('HMGET', skey(name), 'pub', 'dl', 'dr', 'at', 'last')
    rows[#rows + 1] = {name, v[1] or '0', v[2] or '0', v[3] or '0', v[4] or false,
      v[5] or '0'}
  end
  result = {rows, redis.call('HVALS', CONS)}

elseif OP == 'open' then
  local name, def, start, kind, sseq, stime = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9],
    ARGV[10]
  local ck = ckey(name)
  local function position()
    if kind == 'all' then return 0 end
    if kind == 'seq' then return math.max(tonumber(sseq) - 1, 0) end
    if kind == 'time' then
      local t, from = tonumber(stime), '-'
      while true do
        local rows = redis.call('XRANGE', LOG, from, '+', 'COUNT', 1000)
        if #rows == 0 then break end
        for _, e in ipairs(rows) do
          if tonumber(fields(e).at) >= t then return seq_of(e[1]) - 1 end
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
      redis.call('DEL', ck .. ':p', ck .. ':a')
      redis.call('HSET', ck, 'start', start, 'pos', int(position()), 'lost', 0)
      touch(CONSUMER_CHANNEL .. name)
    end
  else
    redis.call('HSET', ck, 'def', def, 'start', start, 'pos', int(position()), 'lost', 0)
    redis.call('HSET', CONS, name, def)
  end

elseif OP == 'claim' then
  -- ARGV: name, lease_until, max, chunk, number of acks, acks and releases as seq, attempt
  local name, lease_until, want, chunk = ARGV[5], ARGV[6], tonumber(ARGV[7]), ARGV[8]
  local ck = ckey(name)
  local pk, ak = ck .. ':p', ck .. ':a'
  local last_ack = 9 + 2 * tonumber(ARGV[9])
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
        out[#out + 1] = redis.call('HINCRBY', ak, seq, 1)
        out[#out + 1] = e
        redis.call('ZADD', pk, lease_until, seq)
        local topic = fields(e).t
        counts[topic] = (counts[topic] or 0) + 1
      else  -- pruned by a pass that found its lease running: it was delivered
        redis.call('ZREM', pk, seq)
        redis.call('HDEL', ak, seq)
      end
    end
    count_delivered(counts)
    local lost = tonumber(c[3]) or 0
    if lost ~= 0 then redis.call('HSET', ck, 'lost', 0) end
    local pos = tonumber(c[2])
    local rows = {}
    if #out < 2 * want then
      rows = redis.call('XRANGE', LOG, eid(pos + 1), '+', 'COUNT', chunk)
    end
    result = {out, pos, lost, c[1], rows, head(), next_wake(pk)}
  end

elseif OP == 'scan' then
  local rows = redis.call('XRANGE', LOG, eid(tonumber(ARGV[5]) + 1), '+', 'COUNT', ARGV[6])
  result = {rows, head()}

elseif OP == 'take' then
  -- ARGV: name, the position read, the new position, lease_until, number of topics, then
  -- topic, count pairs, then the sequences to lease
  local name, from, to, lease_until = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
  local ck = ckey(name)
  local pk, ak = ck .. ':p', ck .. ':a'
  local pos = redis.call('HGET', ck, 'pos')
  if not pos then
    result = false
  elseif tonumber(pos) ~= tonumber(from) then
    result = {0, false}
  else
    redis.call('HSET', ck, 'pos', to)
    local first = 10 + 2 * tonumber(ARGV[9])
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
  local excess = redis.call('XLEN', LOG) - tonumber(ARGV[5])
  local cutoff, batch = tonumber(ARGV[6]), tonumber(ARGV[7])
  local out, from, done = {}, '-', false
  while not done and #out < batch do
    local rows = redis.call('XRANGE', LOG, from, '+', 'COUNT', math.min(1000, batch - #out))
    if #rows == 0 then break end
    for _, e in ipairs(rows) do
      local f = fields(e)
      if #out >= excess and tonumber(f.at) > cutoff then
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
  local through, cutoff = tonumber(ARGV[5]), tonumber(ARGV[6])
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
      if lost > 0 then redis.call('HINCRBY', ck, 'lost', lost) end
    end
    while true do
      local rows = redis.call('XRANGE', LOG, '-', eid(through), 'COUNT', 1000)
      if #rows == 0 then break end
      local ids = {}
      for _, e in ipairs(rows) do
        local f = fields(e)
        ids[#ids + 1] = e[1]
        redis.call('HINCRBY', skey(f.t), 'kept', -1)
        local rid = ref_id_of(f.d, f.k)
        if rid then ref_drop(rid) end
      end
      redis.call('XDEL', LOG, unpack(ids))
      pruned = pruned + #ids
    end
  end
  for _, name in ipairs(redis.call('ZRANGE', NAMES, 0, -1)) do
    local v = redis.call('HMGET', skey(name), 'at', 'kept')
    if (not v[1] or tonumber(v[1]) <= cutoff) and (tonumber(v[2]) or 0) <= 0 then
      redis.call('DEL', skey(name))
      redis.call('ZREM', NAMES, name)
    end
  end
  result = pruned
end

publish()
if OP == 'publish' then return result end
return {result, touched_list}
""".replace("CONSUMER_CHANNEL", repr(consumer_channel("")))
)

_def_encoder = msgspec.msgpack.Encoder()
_def_decoder = msgspec.msgpack.Decoder(tuple[str, list[str] | None, list[str] | None, bytes | None])


def _definition(spec: ConsumerSpec) -> bytes:
    """What selects a consumer's records; two specs are the same consumer iff these match."""
    return _def_encoder.encode((spec.pattern, spec.senders, spec.types, spec.metadata))


def _start(spec: ConsumerSpec) -> str:
    """Where a spec starts, as compared with where its consumer was last started."""
    if spec.start is None:
        return ""
    return f"{spec.start}\0{int(spec.start_seq)}\0{float(spec.start_time)!r}"


def _num(value: float) -> str:
    return repr(float(value))


def _record(entry: Sequence[Any], attempt: int = 0) -> TopicRecord:
    """A log record from a stream entry (id, flat field list)."""
    raw = entry[1]
    f = {raw[i]: raw[i + 1] for i in range(0, len(raw), 2)}
    return TopicRecord(
        int(entry[0].split(b"-", 1)[0]), f[b"t"].decode(), f[b"s"].decode(), f[b"y"].decode(),
        f[b"d"], int(f[b"k"]), f.get(b"m"), float(f[b"at"]), f[b"o"].decode(), attempt,
    )  # fmt: skip


def _opt_float(value: bytes | None) -> float | None:
    return None if value is None else float(value)


class RedisTopics:
    """The topics part of the backend contract on Redis."""

    retention: Retention
    notifier: Notifier

    if TYPE_CHECKING:
        _client: aioredis.Redis

        async def _call(
            self, script: AsyncScript, op: str, now: float, args: Sequence[Any]
        ) -> Any: ...

        async def _run(
            self, script: AsyncScript, op: str, now: float, args: Sequence[Any]
        ) -> Any: ...

    _topics_script: AsyncScript
    _topic_filters: dict[bytes, TopicFilter]  # by stored definition
    _consumer_filters: dict[str, TopicFilter]  # by name, of the consumers this hub opened

    def _tscript(self) -> AsyncScript:
        try:
            return self._topics_script
        except AttributeError:
            self._topics_script = self._client.register_script(TOPICS)
            return self._topics_script

    async def _topic_op(self, op: str, now: float, *args: Any) -> Any:
        return await self._run(self._tscript(), op, now, args)

    def _filter_of(self, definition: bytes) -> TopicFilter:
        """The filter a stored consumer definition describes (cached: definitions never
        change)."""
        cache = self.__dict__.setdefault("_topic_filters", {})
        f: TopicFilter | None = cache.get(definition)
        if f is None:
            if len(cache) > 256:
                cache.clear()
            pattern, senders, types, metadata = _def_decoder.decode(definition)
            spec = ConsumerSpec("", pattern, senders, types, metadata)
            f = cache[definition] = consumer_filter(spec)
        return f

    async def publish(self, record: NewTopicRecord, *, now: float) -> TopicRecord:
        r = record
        seq = await self._call(
            self._tscript(), "publish", now,
            (r.topic, r.sender, r.type, r.data, int(r.data_kind),
             "0" if r.metadata is None else "1", r.metadata or b"", _num(r.published_at),
             r.origin),
        )  # fmt: skip
        if seq is None:
            raise RefNotFound(
                f"The payload's reference {r.data[:80]!r} is no longer stored; publish again."
            )
        self.notifier.notify((TOPICS_CHANNEL, topic_channel(r.topic)))
        return TopicRecord(
            int(seq), r.topic, r.sender, r.type, r.data, r.data_kind, r.metadata,
            r.published_at, r.origin,
        )  # fmt: skip

    async def topic_head(self) -> int:
        return int(await self._topic_op("head", 0.0))

    async def read_topics(self, after: int, *, exclude_origin: str, limit: int) -> TopicBatch:
        rows, head = await self._topic_op("read", 0.0, int(after), int(limit))
        records = [_record(e) for e in rows]
        through = records[-1].seq if records else max(after, int(head))
        return TopicBatch([r for r in records if r.origin != exclude_origin], through)

    async def count_topic_deliveries(self, counts: Mapping[str, tuple[int, int]]) -> None:
        if not counts:
            return
        args: list[Any] = []
        for topic, (delivered, dropped) in counts.items():
            args += [topic, int(delivered), int(dropped)]
        await self._topic_op("count", 0.0, *args)

    async def topic_stats(self, name: str | None) -> list[TopicStats]:
        args = ("0",) if name is None else ("1", name)
        rows, definitions = await self._topic_op("stats", 0.0, *args)
        filters = [self._filter_of(d) for d in definitions]
        out = []
        for n, pub, dl, dr, at, last in rows:
            topic = n.decode()
            subscribers = sum(1 for f in filters if f.matches_topic(topic))
            out.append(
                TopicStats(
                    topic, int(pub), int(dl), int(dr), subscribers, _opt_float(at), int(last)
                )
            )
        out.sort(key=lambda s: s.name)
        return out

    async def open_consumer(self, spec: ConsumerSpec, *, now: float) -> None:
        definition = _definition(spec)
        stored = await self._topic_op(
            "open", now, spec.name, definition, _start(spec), spec.start or "",
            int(spec.start_seq), _num(spec.start_time),
        )  # fmt: skip
        if stored is not None:
            raise conflict(spec, _def_decoder.decode(stored)[0])
        filters = self.__dict__.setdefault("_consumer_filters", {})
        filters[spec.name] = self._filter_of(definition)

    async def claim_topic(
        self,
        consumer: str,
        *,
        acks: Sequence[tuple[int, int]],
        releases: Sequence[tuple[int, int]],
        max_messages: int,
        lease: float,
        now: float,
    ) -> TopicClaim:
        lease_until = now + lease
        settles: list[int] = []
        for seq, attempt in (*acks, *releases):
            settles += [int(seq), int(attempt)]
        want = max(int(max_messages), 0)
        known = self.__dict__.setdefault("_consumer_filters", {}).get(consumer)
        # a consumer that takes every record needs no more than it wants
        match_all = known is not None and known.tokens == (">",) and not known.has_filters
        chunk = want if match_all else max(want, _SCAN_CHUNK)
        claimed = await self._claim_step(
            consumer, lease_until, want, chunk, len(acks), settles, now
        )
        if want == 0:
            return TopicClaim([], 0.0, 0, None)
        out, pos, lost, definition, rows, head, next_wake = claimed
        filt = self._filter_of(definition)
        for _ in range(_CLAIM_TRIES):
            need = want - len(out)
            if need <= 0:
                break
            matched, scanned = await self._scan(filt, pos, rows, head, need, chunk)
            if scanned == pos:
                break
            per_topic = Counter(r.topic for r in matched)
            args: list[Any] = [consumer, pos, scanned, _num(lease_until), len(per_topic)]
            for topic, n in per_topic.items():
                args += [topic, n]
            args += [r.seq for r in matched]
            taken = await self._topic_op("take", now, *args)
            if taken is None:
                raise _no_consumer(consumer)
            if taken[0]:
                out += matched
                next_wake = _opt_float(taken[1])
                break
            # another hub moved the position since we read it: read again from there
            more, pos, more_lost, _, rows, head, next_wake = await self._claim_step(
                consumer, lease_until, need, chunk, 0, [], now
            )
            out += more
            lost += more_lost
        return TopicClaim(out, lease_until, lost, next_wake)

    async def _claim_step(
        self,
        consumer: str,
        lease_until: float,
        want: int,
        chunk: int,
        n_acks: int,
        settles: list[int],
        now: float,
    ) -> Any:
        """Settle, re-lease expired deliveries, and read up to `chunk` records of the log
        after the position."""
        result = await self._topic_op(
            "claim", now, consumer, _num(lease_until), want, chunk, n_acks, *settles
        )
        if want == 0:
            return None
        if result is None:
            raise _no_consumer(consumer)
        flat, pos, lost, definition, rows, head, next_wake = result
        expired = [_record(flat[i + 1], int(flat[i])) for i in range(0, len(flat), 2)]
        return (
            expired, int(pos), int(lost), definition, [_record(e, 1) for e in rows], int(head),
            _opt_float(next_wake),
        )  # fmt: skip

    async def _scan(
        self,
        filt: TopicFilter,
        pos: int,
        rows: list[TopicRecord],
        head: int,
        need: int,
        chunk: int,
    ) -> tuple[list[TopicRecord], int]:
        """Up to `need` records after `pos` that pass `filt`, starting with `rows` read
        already, and the position scanned through."""
        matched: list[TopicRecord] = []
        scanned = pos
        matches = filt.matches
        for step in range(_SCAN_STEPS):
            for r in rows:
                scanned = r.seq
                if matches(r.topic, r.sender, r.type, r.metadata):
                    matched.append(r)
                    if len(matched) == need:
                        return matched, scanned
            if len(rows) < chunk:
                # read in one snapshot with the head: nothing else is in the log up to it
                return matched, max(scanned, head)
            if step == _SCAN_STEPS - 1:
                break
            raw, h = await self._topic_op("scan", 0.0, scanned, chunk)
            rows, head = [_record(e, 1) for e in raw], int(h)
        return matched, scanned

    async def _prune_topics(self, now: float) -> int:
        """Delete log records beyond retention, counting what each durable consumer lost."""
        r = self.retention
        cutoff = _num(now - r.topic_max_age)
        doomed, consumers = await self._topic_op(
            "prune_scan", now, int(r.topic_max_count), cutoff, _PRUNE_BATCH
        )
        args: list[Any] = [int(doomed[-1][0]) if doomed else 0, cutoff]
        if doomed:
            records = [
                (int(seq), t.decode(), s.decode(), y.decode(), m) for seq, t, s, y, m in doomed
            ]
            for i in range(0, len(consumers), 2):
                matches = self._filter_of(consumers[i + 1]).matches
                seqs = [str(seq) for seq, t, s, y, m in records if matches(t, s, y, m)]
                args += [consumers[i], ",".join(seqs)]
        pruned: int = await self._topic_op("prune", now, *args)
        return int(pruned)


def _no_consumer(name: str) -> NotFound:
    return NotFound(f"Durable consumer {name!r} does not exist; subscribe again.")
