"""Topics in memory: the log as a list, durable consumers as dicts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import msgspec

from ..._errors import NotFound
from ..._models import TopicStats
from ..._records import (
    ConsumerRecord,
    ConsumerSpec,
    NewTopicRecord,
    TopicBatch,
    TopicClaim,
    TopicRecord,
)
from ..._ref_records import REF_FLAG
from ..._settings import Retention
from ..._subjects import TOPICS_CHANNEL, consumer_channel, topic_channel
from ..common import conflict, consumer_filter, same_definition, same_start
from ..contracts import TopicStore
from .references import RefHolds
from .transactions import Transactions

# Trim the log inside publish once it holds a tenth (at least 1024) more than the retained
# count, so a store published to faster than the retention interval stays bounded.
_TRIM_SLACK = 1024


class _Stats:
    __slots__ = ("delivered", "dropped", "last_publish", "last_seq", "published")

    def __init__(self) -> None:
        self.published = 0
        self.delivered = 0
        self.dropped = 0
        self.last_publish: float | None = None
        self.last_seq = 0


class _Consumer:
    __slots__ = ("delivered", "filter", "lost", "pending", "spec")

    def __init__(self, spec: ConsumerSpec, delivered: int) -> None:
        self.spec = spec
        self.filter = consumer_filter(spec)
        self.delivered = delivered  # highest sequence scanned
        self.pending: dict[int, list[float]] = {}  # seq -> [attempt, lease_until]
        self.lost = 0


class TopicState:
    """The topic log, per-topic stats and durable consumers of one memory store."""

    __slots__ = ("consumers", "log", "seq", "stats")

    def __init__(self) -> None:
        self.seq = 0
        self.log: list[TopicRecord] = []  # contiguous sequences, oldest first
        self.stats: dict[str, _Stats] = {}
        self.consumers: dict[str, _Consumer] = {}

    def first(self) -> int:
        """The sequence of log[0] (or of the next publish when empty)."""
        return self.seq - len(self.log) + 1


class MemoryTopics(TopicStore):
    """The topics part of the backend contract in memory."""

    def __init__(
        self, state: TopicState, txn: Transactions, holds: RefHolds, retention: Retention
    ) -> None:
        self._state = state
        self._txn = txn
        self._holds = holds
        self._retention = retention

    async def publish(self, record: NewTopicRecord, *, now: float) -> TopicRecord:
        with self._txn.lock:
            rec = self.append(record, now)
        self._txn.notify((TOPICS_CHANNEL, topic_channel(record.topic)))
        return rec

    def append(self, record: NewTopicRecord, now: float) -> TopicRecord:
        """Append a record to the log; the caller holds the store's lock and notifies the
        topic channels (the mailboxes append dead-letter notices through this)."""
        st = self._state
        st.seq = seq = st.seq + 1
        r = record
        rec = TopicRecord(
            seq, r.topic, r.sender, r.type, r.data, r.data_kind, r.metadata,
            r.published_at, r.origin,
        )  # fmt: skip
        if r.data_kind & REF_FLAG:
            self._holds.hold(r.data, r.data_kind)
        st.log.append(rec)
        stats = st.stats.get(r.topic)
        if stats is None:
            stats = st.stats[r.topic] = _Stats()
        stats.published += 1
        stats.last_publish = r.published_at
        stats.last_seq = seq
        limit = self._retention.topic_max_count
        if len(st.log) > limit + max(limit // 10, _TRIM_SLACK):
            self.prune_step(now)
        return rec

    async def topic_head(self) -> int:
        with self._txn.lock:
            return self._state.seq

    async def read_topics(self, after: int, *, exclude_origin: str, limit: int) -> TopicBatch:
        with self._txn.lock:
            st = self._state
            start = max(after + 1 - st.first(), 0)
            rows = st.log[start : start + limit]
            through = rows[-1].seq if rows else max(after, st.seq)
            return TopicBatch([r for r in rows if r.origin != exclude_origin], through)

    async def count_topic_deliveries(self, counts: Mapping[str, tuple[int, int]]) -> None:
        def op(touched: set[str]) -> None:
            stats = self._state.stats
            for topic, (delivered, dropped) in counts.items():
                s = stats.get(topic)
                if s is None:
                    s = stats[topic] = _Stats()
                s.delivered += delivered
                s.dropped += dropped

        self._txn.run(op)

    async def topic_stats(self, name: str | None) -> list[TopicStats]:
        with self._txn.lock:
            st = self._state
            names = sorted(st.stats) if name is None else [name]
            filters = [c.filter for c in st.consumers.values()]
            retained = Counter(r.topic for r in st.log)
            out = []
            for n in names:
                s = st.stats.get(n) or _Stats()
                subscribers = sum(1 for f in filters if f.matches_topic(n))
                stat = TopicStats(
                    n, s.published, s.delivered, s.dropped, subscribers, s.last_publish,
                    s.last_seq, retained[n],
                )  # fmt: skip
                out.append(stat)
            return out

    async def open_consumer(self, spec: ConsumerSpec, *, now: float) -> None:
        def op(touched: set[str]) -> None:
            st = self._state
            c = st.consumers.get(spec.name)
            if c is not None:
                if not same_definition(c.spec, spec):
                    raise conflict(spec, c.spec.pattern)
                if spec.start is None or same_start(c.spec, spec):
                    return
                c.spec = spec
                c.pending.clear()
                c.lost = 0
                c.delivered = _position(st, spec)
                touched.add(consumer_channel(spec.name))
                return
            st.consumers[spec.name] = _Consumer(spec, _position(st, spec))

        self._txn.run(op)

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
        def op(touched: set[str]) -> TopicClaim:
            st = self._state
            c = st.consumers.get(consumer)
            if c is None:
                raise NotFound(f"Durable consumer {consumer!r} does not exist; subscribe again.")
            pending = c.pending
            for seq, attempt in acks:
                p = pending.get(seq)
                if p is not None and p[0] == attempt:
                    del pending[seq]
            for seq, attempt in releases:
                p = pending.get(seq)
                if p is not None and p[0] == attempt:
                    p[1] = now
                    touched.add(consumer_channel(consumer))
            if max_messages <= 0:
                return TopicClaim([], 0.0, 0, None)
            until = now + lease
            first = st.first()
            log = st.log
            out: list[TopicRecord] = []
            for seq in sorted(s for s, p in pending.items() if p[1] <= now)[:max_messages]:
                p = pending[seq]
                p[0] += 1
                p[1] = until
                out.append(msgspec.structs.replace(log[seq - first], attempt=int(p[0])))
            i = max(c.delivered + 1 - first, 0)
            n = len(log)
            matches = c.filter.matches
            while len(out) < max_messages and i < n:
                r = log[i]
                i += 1
                if matches(r.topic, r.sender, r.type, r.metadata):
                    pending[r.seq] = [1, until]
                    out.append(msgspec.structs.replace(r, attempt=1))
            c.delivered = max(c.delivered, first + i - 1)
            for r in out:
                s = st.stats.get(r.topic)
                if s is not None:
                    s.delivered += 1
            lost, c.lost = c.lost, 0
            next_wake = min((p[1] for p in pending.values()), default=None)
            return TopicClaim(out, until, lost, next_wake)

        return self._txn.run(op)

    async def list_consumers(self) -> list[ConsumerRecord]:
        with self._txn.lock:
            return [
                ConsumerRecord(c.spec, c.delivered, len(c.pending), c.lost)
                for _, c in sorted(self._state.consumers.items())
            ]

    def prune_step(self, now: float) -> int:
        """Drop log records beyond retention, counting what each durable consumer lost; the
        caller holds the store's lock."""
        st = self._state
        log = st.log
        r = self._retention
        cut = max(len(log) - r.topic_max_count, 0)
        cutoff = now - r.topic_max_age
        while cut < len(log) and log[cut].published_at <= cutoff:
            cut += 1
        if cut:
            first = st.first()
            through = log[cut - 1].seq
            for c in st.consumers.values():
                gone = [s for s in c.pending if s <= through]
                lost = 0
                for s in gone:
                    # a record out on a live lease was delivered; one whose lease ended is lost
                    lost += c.pending.pop(s)[1] <= now
                if c.delivered < through:
                    for rec in log[max(c.delivered + 1 - first, 0) : cut]:
                        if c.filter.matches(rec.topic, rec.sender, rec.type, rec.metadata):
                            lost += 1
                    c.delivered = through
                c.lost += lost
            holds = self._holds
            for rec in log[:cut]:  # records stored by reference release it as they leave
                if rec.data_kind & REF_FLAG:
                    holds.drop(rec.data, rec.data_kind)
            del log[:cut]
        stale = [
            n
            for n, s in st.stats.items()
            if s.last_publish is not None and s.last_publish <= cutoff
        ]
        for n in stale:
            del st.stats[n]
        return cut


def _position(st: TopicState, spec: ConsumerSpec) -> int:
    """The sequence a consumer starting at `spec.start` has already passed."""
    if spec.start == "all":
        return 0
    if spec.start == "seq":
        return max(spec.start_seq - 1, 0)
    if spec.start == "time":
        for r in st.log:
            if r.published_at >= spec.start_time:
                return r.seq - 1
    return st.seq
