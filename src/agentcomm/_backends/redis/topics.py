"""Topics on Redis, with their Lua (and keys) in `topics_lua.py`.

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
from typing import Any

import msgspec

from ..._errors import NotFound, RefNotFound
from ..._ids import new_id
from ..._models import TopicStats
from ..._records import (
    ConsumerRecord,
    ConsumerSpec,
    NewTopicRecord,
    TopicBatch,
    TopicClaim,
    TopicRecord,
)
from ..._settings import Retention
from ..._subjects import TOPICS_CHANNEL, TopicFilter, topic_channel
from ..common import conflict, consumer_filter
from ..contracts import TopicStore
from .errors import text
from .scripts import Scripts, num, opt_float
from .topics_lua import TOPICS

_SCAN_CHUNK = 256  # log records read per step when a filter may skip some
_SCAN_STEPS = 16  # chunks one claim reads at most before it settles for what it found
_CLAIM_TRIES = 50  # claims lost to other hubs in a row before returning what we have
_PRUNE_BATCH = 10_000

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


def _record(entry: Sequence[Any], attempt: int = 0) -> TopicRecord:
    """A log record from a stream entry (id, flat field list)."""
    raw = entry[1]
    f = {raw[i]: raw[i + 1] for i in range(0, len(raw), 2)}
    return TopicRecord(
        int(entry[0].split(b"-", 1)[0]), f[b"t"].decode(), f[b"s"].decode(), f[b"y"].decode(),
        f[b"d"], int(f[b"k"]), f.get(b"m"), float(f[b"at"]), f[b"o"].decode(), attempt,
    )  # fmt: skip


class RedisTopics(TopicStore):
    """The topic log and durable consumers on Redis."""

    def __init__(self, scripts: Scripts, retention: Retention) -> None:
        self._scripts = scripts
        self._script = scripts.register(TOPICS)
        self._retention = retention
        self._topic_filters: dict[bytes, TopicFilter] = {}  # by stored definition
        # by name, of the consumers this hub opened
        self._consumer_filters: dict[str, TopicFilter] = {}

    async def _topic_op(self, op: str, now: float, *args: Any, token: str | None = None) -> Any:
        return await self._scripts.run(self._script, op, now, args, token)

    def _filter_of(self, definition: bytes) -> TopicFilter:
        """The filter a stored consumer definition describes (cached: definitions never
        change)."""
        cache = self._topic_filters
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
        seq = await self._scripts.call(
            self._script, "publish", now,
            (r.topic, r.sender, r.type, r.data, int(r.data_kind),
             "0" if r.metadata is None else "1", r.metadata or b"", num(r.published_at),
             r.origin),
            new_id(),
        )  # fmt: skip
        if seq is None:
            raise RefNotFound(
                f"The payload's reference {r.data[:80]!r} is no longer stored; publish again."
            )
        self._scripts.notifier.notify((TOPICS_CHANNEL, topic_channel(r.topic)))
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
        await self._topic_op("count", 0.0, *args, token=new_id())

    async def topic_stats(self, name: str | None) -> list[TopicStats]:
        args = ("0",) if name is None else ("1", name)
        rows, definitions = await self._topic_op("stats", 0.0, *args)
        filters = [self._filter_of(d) for d in definitions]
        out = []
        for n, pub, dl, dr, at, last, kept in rows:
            topic = n.decode()
            subscribers = sum(1 for f in filters if f.matches_topic(topic))
            out.append(
                TopicStats(
                    topic,
                    int(pub),
                    int(dl),
                    int(dr),
                    subscribers,
                    opt_float(at),
                    int(last),
                    max(int(kept), 0),
                )
            )
        out.sort(key=lambda s: s.name)
        return out

    async def list_consumers(self) -> list[ConsumerRecord]:
        s = self._scripts
        stored = await s.command(s.client.hgetall(s.prefix + "tp:cons"))
        definitions: dict[str, bytes] = {text(k): _raw(v) for k, v in stored.items()}
        names = sorted(definitions)
        async with s.client.pipeline(transaction=True) as pipe:
            for name in names:
                key = s.prefix + "tp:c:" + name
                pipe.hmget(key, "pos", "lost")
                pipe.zcard(key + ":p")
            replies = await s.command(pipe.execute())
        out = []
        for i, name in enumerate(names):
            (pos, lost), pending = replies[2 * i], replies[2 * i + 1]
            try:
                pattern, senders, types, metadata = _def_decoder.decode(definitions[name])
            except (msgspec.DecodeError, ValueError, TypeError):
                continue  # a damaged definition: its claims report it
            spec = ConsumerSpec(name, pattern, senders, types, metadata)
            out.append(ConsumerRecord(spec, int(pos or 0), int(pending), int(lost or 0)))
        return out

    async def open_consumer(self, spec: ConsumerSpec, *, now: float) -> None:
        definition = _definition(spec)
        stored = await self._topic_op(
            "open", now, spec.name, definition, _start(spec), spec.start or "",
            int(spec.start_seq), num(spec.start_time),
        )  # fmt: skip
        if stored is not None:
            raise conflict(spec, _def_decoder.decode(stored)[0])
        self._consumer_filters[spec.name] = self._filter_of(definition)

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
        known = self._consumer_filters.get(consumer)
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
            args: list[Any] = [consumer, pos, scanned, num(lease_until), len(per_topic)]
            for topic, n in per_topic.items():
                args += [topic, n]
            args += [r.seq for r in matched]
            taken = await self._topic_op("take", now, *args, token=new_id())
            if taken is None:
                raise _no_consumer(consumer)
            if taken[0]:
                out += matched
                next_wake = opt_float(taken[1])
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
            "claim", now, consumer, num(lease_until), want, chunk, n_acks, *settles
        )
        if want == 0:
            return None
        if result is None:
            raise _no_consumer(consumer)
        flat, pos, lost, definition, rows, head, next_wake = result
        expired = [_record(flat[i + 1], int(flat[i])) for i in range(0, len(flat), 2)]
        return (
            expired, int(pos), int(lost), definition, [_record(e, 1) for e in rows], int(head),
            opt_float(next_wake),
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

    async def prune(self, now: float) -> int:
        """Delete log records beyond retention, counting what each durable consumer lost."""
        r = self._retention
        cutoff = num(now - r.topic_max_age)
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


def _raw(value: bytes | str) -> bytes:
    """A reply value as bytes (the client returns bytes; its types allow str too)."""
    return value.encode() if isinstance(value, str) else value
