"""Topics: publish to dot-separated names, subscribe by pattern, live or durable.

Each hub owns one `TopicBus`. A publish is appended to the backend's topic log, then handed
directly to the matching live subscriptions of this hub (a subject tree finds them). Hubs in
other processes, or other hubs on the same memory store, are woken on the `topics` channel
and read the log after their cursor, skipping records their own hub published. Durable
subscriptions do not use the tree: they lease records from the backend (`claim_topic`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any
from uuid import uuid4

import msgspec

from ._codec import decode_metadata, encode_for, encode_metadata
from ._context import Context
from ._errors import AgentCommError, HubClosed, InvalidTopic, ValidationError
from ._models import PublishResult, TopicStats
from ._records import ConsumerSpec, NewTopicRecord, TopicRecord
from ._ref_records import REF_FLAG
from ._subjects import TOPICS_CHANNEL, SubjectTree, TopicFilter, parse_topic
from ._subscription import Start, Subscription, wake_one
from ._topic_message import TopicMessage, resolve_record
from ._validation import MAX_SEQUENCE, check_int, check_name, check_timestamp

__all__ = ["TopicBus"]

_READ_LIMIT = 1000  # log records read per step by the cross-process reader
_COUNTS_DELAY = 0.5  # seconds live delivery counts wait before being added to topic stats
_UNSET: Any = object()
#: The first token of the topics only agentcomm writes (`$agentcomm.dead.<agent>`).
RESERVED_TOKEN = "$agentcomm"
#: The largest live buffer or durable lease batch of one subscription.
MAX_BUFFER = 100_000


class TopicBus:
    """A hub's topic machinery: its live subscriptions, the log reader, delivery counts."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.origin = uuid4().hex
        self._tree: SubjectTree[Subscription] = SubjectTree()
        self._subs: dict[Subscription, None] = {}
        self._cursor: int | None = None
        self._reader: asyncio.Task[None] | None = None
        self._reader_started: asyncio.Future[None] | None = None
        self._counts: dict[str, list[int]] = {}
        self._counts_timer: asyncio.TimerHandle | None = None
        self._closed = False

    # --- publishing --------------------------------------------------------------------------

    async def publish(
        self, sender: str, topic: str, data: Any, type: str, metadata: Mapping[str, Any] | None
    ) -> PublishResult:
        """Append to the log, then deliver to this hub's matching live subscriptions."""
        tokens = parse_topic(topic)
        if tokens[0] == RESERVED_TOKEN:
            raise InvalidTopic(
                f"Topic {topic!r} is reserved: topics starting with '{RESERVED_TOKEN}.' are "
                "written by agentcomm itself (e.g. dead-letter notices); subscribe to them, "
                "publish to a topic of your own."
            )
        if type != "event":
            check_name("type", type)
        ctx = self.ctx
        meta = encode_metadata(_as_dict("metadata", metadata), ctx.settings) if metadata else None
        payload, kind = encode_for(ctx.settings, type, data)
        now = ctx.now()
        # the tier policy: a large payload is stored once and the log record refers to it (and
        # holds its own reference until it is pruned)
        promoted = False
        if ctx.refs.by_value(type, payload, kind):  # the hot path: nothing to hold
            record = await ctx.topics.publish(
                NewTopicRecord(topic, sender, type, payload, kind, meta, now, self.origin),
                now=now,
            )
        else:
            async with ctx.refs.hold() as hold:
                stored, stored_kind = await hold.promote(type, payload, kind)
                record = await ctx.topics.publish(
                    NewTopicRecord(
                        topic, sender, type, stored, stored_kind, meta, now, self.origin
                    ),
                    now=now,
                )
            promoted = hold.promoted
        if promoted:  # this hub's live subscribers get the payload itself (a copy: the
            # memory backend's log holds the record object returned)
            record = msgspec.structs.replace(record, data=payload, data_kind=kind)
        seq = record.seq
        if self._cursor is not None and seq == self._cursor + 1:
            self._cursor = seq  # nothing foreign in between: the reader need not look
        if self._closed or not self._tree:
            return PublishResult(0, 0, seq)
        delivered, dropped = self._fanout(record, tokens)
        return PublishResult(delivered, dropped, seq)

    def _fanout(self, record: TopicRecord, tokens: tuple[str, ...]) -> tuple[int, int]:
        subs = self._tree.match(record.topic, tokens)
        if not subs:
            return 0, 0
        delivered = dropped = 0
        meta: Any = _UNSET
        # One message object for every live subscription of this hub: `data` is decoded once,
        # at most. It is documented as shared (read-only by convention), which doubles fan-out.
        msg = TopicMessage(record)
        for sub in subs:  # Subscription._offer, inlined: this is the hot path
            filt = sub._filter
            if filt is not None:
                if filt.metadata is not None and meta is _UNSET:
                    meta = decode_metadata(record.metadata)
                if not filt.accepts(record.sender, record.type, meta if filt.metadata else None):
                    continue
            buf = sub._buf
            if len(buf) >= sub._maxlen:
                sub.dropped += 1
                dropped += 1
                continue
            buf.append(msg)
            if sub._waiters:
                wake_one(sub._waiters)
            delivered += 1
        if delivered or dropped:
            self._count(record.topic, delivered, dropped)
        return delivered, dropped

    def _count(self, topic: str, delivered: int, dropped: int) -> None:
        counts = self._counts.get(topic)
        if counts is None:
            self._counts[topic] = [delivered, dropped]
        else:
            counts[0] += delivered
            counts[1] += dropped
        if self._counts_timer is None and not self._closed:
            self._counts_timer = asyncio.get_running_loop().call_later(
                _COUNTS_DELAY, lambda: self.ctx.spawn(self._flush_counts_quietly())
            )

    async def _flush_counts_quietly(self) -> None:
        self._counts_timer = None
        with contextlib.suppress(AgentCommError):  # the counts of this interval are lost
            await self.flush_counts()

    async def flush_counts(self) -> None:
        """Add the live delivery counts gathered so far to the topics' stats."""
        if self._counts_timer is not None:
            self._counts_timer.cancel()
            self._counts_timer = None
        counts, self._counts = self._counts, {}
        if counts:
            await self.ctx.topics.count_topic_deliveries(
                {t: (c[0], c[1]) for t, c in counts.items()}
            )

    # --- subscribing -------------------------------------------------------------------------

    async def subscribe(
        self,
        pattern: str,
        *,
        senders: Iterable[str] | None,
        types: Iterable[str] | None,
        metadata: Mapping[str, Any] | None,
        buffer: int,
        durable: str | None,
        start: Start | None,
        lease: float,
    ) -> Subscription:
        """Validate, then register a live subscription or open a durable consumer."""
        self.ctx.check_open()
        sender_list = _names("senders", "sender", senders)
        type_list = _names("types", "type", types)
        meta = dict(sorted(_as_dict("metadata", metadata).items())) if metadata else None
        filt = TopicFilter(pattern, sender_list, type_list, meta)
        check_int("buffer", buffer, 1, MAX_BUFFER)
        if durable is None:
            if start is not None:
                raise ValidationError(
                    "start= rewinds a durable consumer: give durable=<name> too, or leave "
                    "start out for a live subscription (it sees publishes from now on)."
                )
            sub = Subscription(self, filt, buffer, None, lease)
            await self._ensure_reader()
            self._check_open()
            self._tree.insert(filt.tokens, sub)
            self._subs[sub] = None
            return sub
        check_name("durable name", durable)
        spec = ConsumerSpec(
            durable, filt.pattern, sender_list, type_list,
            encode_metadata(meta, self.ctx.settings) if meta else None,
        )  # fmt: skip
        _set_start(spec, start)
        await self.ctx.topics.open_consumer(spec, now=self.ctx.now())
        self._check_open()
        sub = Subscription(self, filt, buffer, durable, lease)
        self._subs[sub] = None
        return sub

    def _check_open(self) -> None:
        if self._closed:
            raise HubClosed("The hub closed while the subscription was being set up.")

    def forget(self, sub: Subscription) -> None:
        """Drop a closed subscription."""
        self._subs.pop(sub, None)
        if sub._durable is None:
            self._tree.remove(sub._match.tokens, sub)

    def live_subscribers(self, topic: str) -> int:
        """How many open live subscriptions of this hub match `topic`."""
        return len(self._tree.match(topic, parse_topic(topic)))

    # --- reading the log ---------------------------------------------------------------------

    async def _ensure_reader(self) -> None:
        started = self._reader_started
        if started is None:
            started = asyncio.get_running_loop().create_future()
            self._reader_started = started
            self._reader = self.ctx.spawn(self._read_loop(started))
        # every caller waits until the cursor is set: what is published after subscribe()
        # returns lies after it; shielded so that one caller's cancellation fails no other
        await asyncio.shield(started)

    async def _read_loop(self, started: asyncio.Future[None]) -> None:
        backend = self.ctx
        with backend.wakeups(TOPICS_CHANNEL, self._channel()) as wakeups:
            try:
                self._cursor = await backend.topics.topic_head()
            except BaseException as exc:
                self._reader = self._reader_started = None  # the next subscribe tries again
                if not isinstance(exc, AgentCommError):  # cancelled: the bus is closing
                    exc = HubClosed("The hub closed while a subscription was being set up.")
                started.set_exception(exc)
                started.exception()  # retrieved: callers that gave up must not leave it unseen
                return
            started.set_result(None)
            while not self._closed:
                wakeups.rearm()
                after = self._cursor
                try:
                    batch = await backend.topics.read_topics(
                        after, exclude_origin=self.origin, limit=_READ_LIMIT
                    )
                except AgentCommError:
                    batch = None  # e.g. locked past the busy timeout: the next wake retries
                if batch is not None:
                    for record in batch.records:
                        if self._closed:
                            return
                        if record.data_kind & REF_FLAG:
                            resolved = await resolve_record(self.ctx, record)
                            if resolved is None:
                                continue
                            record = resolved
                        self._fanout(record, parse_topic(record.topic))
                    self._cursor = max(self._cursor, batch.through)
                    if batch.through - after >= _READ_LIMIT:
                        continue  # more to read
                await wakeups.wait()

    # --- lifecycle ---------------------------------------------------------------------------

    def _channel(self) -> str:
        """The private channel `aclose()` notifies to wake the log reader."""
        return f"topicbus:{id(self)}"

    async def aclose(self) -> None:
        """Close every subscription and wake the log reader, which then ends (the hub waits
        for it with its other background tasks, then calls `flush_counts`)."""
        if self._closed:
            return
        self._closed = True  # first: a subscribe() still in flight then fails instead of leaking
        for sub in list(self._subs):
            await sub.aclose()
        self.ctx.notifier.notify((self._channel(),))

    async def stats(self, name: str | None) -> list[TopicStats]:
        """The backend's stats with this hub's live subscribers and unwritten counts added."""
        self.ctx.check_open()
        await self.flush_counts()
        rows = await self.ctx.topics.topic_stats(name)
        return [
            msgspec.structs.replace(r, subscribers=r.subscribers + self.live_subscribers(r.name))
            for r in rows
        ]


def _as_dict(what: str, value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ValidationError(f"{what} must be a mapping with string keys, not {value!r:.80}.")
    return dict(value)


def _names(what: str, one: str, values: Iterable[str] | None) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    try:
        items = list(values)
    except TypeError:
        raise ValidationError(f"{what}= must be a list of names, not {values!r}.") from None
    names = sorted({check_name(one, v) for v in items})
    if not names:
        raise ValidationError(f"{what}= needs at least one name; use None for no filter.")
    return names


def _set_start(spec: ConsumerSpec, start: Start | None) -> None:
    if start is None:
        return
    if start in ("all", "new"):
        spec.start = str(start)
    elif isinstance(start, datetime):
        spec.start, spec.start_time = "time", check_timestamp("start", start)
    elif isinstance(start, int) and not isinstance(start, bool) and 0 <= start <= MAX_SEQUENCE:
        spec.start, spec.start_seq = "seq", start
    else:
        raise ValidationError(
            f"start must be 'all', 'new', a sequence number from 0 to {MAX_SEQUENCE} or a "
            f"datetime, not {start!r}."
        )
