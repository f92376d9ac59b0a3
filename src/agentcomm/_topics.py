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
import time
from collections import deque
from collections.abc import Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import msgspec

from ._codec import decode_metadata, decode_payload, encode_metadata, encode_payload
from ._errors import AgentCommError, HubClosed, RefNotFound, ValidationError
from ._models import PublishResult, TopicStats
from ._records import ConsumerSpec, NewTopicRecord, TopicRecord
from ._ref_records import REF_FLAG
from ._subjects import (
    TOPICS_CHANNEL,
    SubjectTree,
    TopicFilter,
    consumer_channel,
    parse_topic,
    wake_channel,
)
from ._validation import check_name, check_non_negative

if TYPE_CHECKING:
    from ._context import Context
    from ._hub import Hub

__all__ = ["Subscription", "TopicBus", "TopicMessage"]

#: Default per-subscription buffer (live) or lease batch (durable), in messages.
DEFAULT_BUFFER = 1024
_READ_LIMIT = 1000  # log records read per step by the cross-process reader
_COUNTS_DELAY = 0.5  # seconds live delivery counts wait before being added to topic stats
_ACK_DELAY = 0.05  # seconds a durable ack waits to be written with others
_UNSET: Any = object()


class TopicMessage:
    """One message received on a topic.

    For a durable subscription, `ack()` it when done: the consumer's position advances and the
    message is not delivered again. Unacked, it is delivered again once its lease ends. On a
    live subscription `ack()` does nothing, and the live subscriptions of one hub that receive
    the same publish share one message object: treat `data` and `metadata` as read-only.
    """

    __slots__ = ("_acked", "_data", "_lease_until", "_metadata", "_record", "_sub")

    _sub: Subscription | None
    _lease_until: float
    _acked: bool
    _data: Any
    _metadata: Any

    def __init__(self, record: TopicRecord) -> None:
        # the other slots stay unset until used: this runs once per live delivery
        self._record = record

    @classmethod
    def _leased(cls, record: TopicRecord, sub: Subscription, lease_until: float) -> TopicMessage:
        msg = cls(record)
        msg._sub = sub
        msg._lease_until = lease_until
        msg._acked = False
        return msg

    @property
    def topic(self) -> str:
        """The topic it was published to."""
        return self._record.topic

    @property
    def sender(self) -> str:
        """The agent that published it."""
        return self._record.sender

    @property
    def type(self) -> str:
        """The type given at publish."""
        return self._record.type

    @property
    def data(self) -> Any:
        """The payload, decoded on first access."""
        try:
            return self._data
        except AttributeError:
            self._data = decode_payload(self._record.data, self._record.data_kind)
            return self._data

    @property
    def metadata(self) -> dict[str, Any]:
        """The metadata given at publish (empty dict if none)."""
        try:
            return self._metadata  # type: ignore[no-any-return]
        except AttributeError:
            self._metadata = decode_metadata(self._record.metadata)
            return self._metadata  # type: ignore[no-any-return]

    @property
    def sequence(self) -> int:
        """Its position in the store's topic log."""
        return self._record.seq

    @property
    def published_at(self) -> float:
        """When it was published (epoch seconds)."""
        return self._record.published_at

    @property
    def attempt(self) -> int:
        """Which delivery to a durable consumer this is, from 1 (always 1 when live)."""
        return max(self._record.attempt, 1)

    async def ack(self) -> None:
        """Durable: mark it done (written within 50 ms, with the next fetch, or at close; at
        once if the subscription is closed already)."""
        sub = getattr(self, "_sub", None)
        if sub is None or self._acked:
            return
        self._acked = True
        sub._add_ack(self._record.seq, self._record.attempt)
        if sub._closed:
            await sub._settle(release=False)

    def __repr__(self) -> str:
        return f"<TopicMessage {self.topic} #{self.sequence} from {self.sender} type={self.type!r}>"


class Subscription:
    """Messages on topics matching a pattern. Get one with `await agent.subscribe(...)`.

    Iterate it (`async for msg in sub`) or call `next(timeout)`; close it when done (or use it
    as `async with`). Iteration ends when it is closed or its hub closes.
    """

    __slots__ = (
        "_ack_timer",
        "_acks",
        "_buf",
        "_bus",
        "_closed",
        "_durable",
        "_filter",
        "_lease",
        "_match",
        "_maxlen",
        "_more",
        "_next_wake",
        "_prefetch",
        "_waiters",
        "dropped",
        "lost",
    )

    def __init__(
        self, bus: TopicBus, filt: TopicFilter, buffer: int, durable: str | None, lease: float
    ) -> None:
        self._bus = bus
        self._match = filt
        self._filter = filt if filt.has_filters else None
        self._maxlen = buffer
        self._durable = durable
        self._lease = lease
        self._buf: deque[TopicMessage] = deque()
        self._waiters: deque[asyncio.Future[None]] = deque()  # live next() calls waiting
        self._closed = False
        self._acks: list[tuple[int, int]] = []
        self._ack_timer: asyncio.TimerHandle | None = None
        self._more = False  # the last claim was full: more is probably waiting
        self._next_wake: float | None = None
        self._prefetch: asyncio.Task[None] | None = None
        #: Live: messages that did not fit in the buffer and were dropped.
        self.dropped = 0
        #: Durable: messages pruned by retention before this consumer took them.
        self.lost = 0

    @property
    def pattern(self) -> str:
        """The pattern subscribed to."""
        return self._match.pattern

    @property
    def durable(self) -> str | None:
        """The durable consumer's name, or None for a live subscription."""
        return self._durable

    @property
    def missed(self) -> int:
        """Messages this subscription will never see: dropped (live) plus lost (durable)."""
        return self.dropped + self.lost

    @property
    def closed(self) -> bool:
        """Whether it was closed (by `close()` or because its hub closed)."""
        return self._closed

    def __repr__(self) -> str:
        kind = f"durable={self._durable!r}" if self._durable else "live"
        return f"<Subscription {self.pattern!r} {kind}{' closed' if self._closed else ''}>"

    # --- receiving ---------------------------------------------------------------------------

    async def next(self, timeout: float | None = None) -> TopicMessage | None:
        """The next message; None if `timeout` seconds pass first or the subscription closes.

        `timeout=None` waits as long as it takes, `timeout=0` only looks.
        """
        if timeout is not None:
            check_non_negative("timeout", timeout)
        if self._durable is not None:
            return await self._next_durable(timeout)
        buf = self._buf
        if buf:
            return buf.popleft()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        waiters = self._waiters
        while not buf:
            if self._closed:
                return None
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            fut = loop.create_future()
            waiters.append(fut)
            timer = None if remaining is None else loop.call_later(remaining, _wake, fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled() and buf:
                    _wake_one(waiters)  # we were handed a message we will not take: pass it on
                raise
            finally:
                if timer is not None:
                    timer.cancel()
                if fut in waiters:  # woken by the timer or cancelled, not by a delivery
                    waiters.remove(fut)
        return buf.popleft()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> TopicMessage:
        if self._durable is None and self._buf:
            return self._buf.popleft()
        msg = await self.next()
        if msg is None:
            raise StopAsyncIteration
        return msg

    async def _next_durable(self, timeout: float | None) -> TopicMessage | None:
        msg = self._pop_leased()
        if msg is not None or self._closed:
            return msg
        name = self._durable
        assert name is not None
        backend = self._bus._backend
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        channels = (wake_channel(self._match.tokens), consumer_channel(name), self._channel())
        with backend.notifier.listen(*channels) as listener:
            while True:
                listener.rearm()
                prefetch = self._prefetch
                if prefetch is not None:
                    # shielded: a caller's timeout must not cancel a claim other calls await
                    await asyncio.shield(prefetch)
                    next_wake = self._next_wake
                else:
                    next_wake = await self._claim()
                if self._closed:
                    return None
                msg = self._pop_leased()
                if msg is not None:
                    return msg
                wait = backend.recheck_interval
                if next_wake is not None:
                    wait = min(wait, max(next_wake - time.time(), 0.0) + 0.001)
                if deadline is not None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        return None
                    wait = min(wait, remaining)
                # woken by a publish, by close(), or when a lease may have ended
                await listener.wait(wait)
                if self._closed:
                    return None

    async def _claim(self) -> float | None:
        """Write pending acks and lease the next batch into the buffer; returns `next_wake`."""
        name = self._durable
        assert name is not None
        acks, self._acks = self._acks, []
        try:
            claim = await self._bus._backend.topics.claim_topic(
                name, acks=acks, releases=(), max_messages=self._maxlen, lease=self._lease,
                now=time.time(),
            )  # fmt: skip
        except BaseException:
            self._acks[:0] = acks  # written with the next attempt
            raise
        self.lost += claim.lost
        buf = self._buf
        for r in claim.records:
            if r.data_kind & REF_FLAG:
                resolved = await _resolve(self._bus._hub, r)
                if resolved is None:
                    continue
                r = resolved
            buf.append(TopicMessage._leased(r, self, claim.lease_until))
        self._more = len(claim.records) == self._maxlen
        self._next_wake = claim.next_wake
        if self._closed:  # closed while we claimed: hand the leases back now
            await self._release_buffered()
        return claim.next_wake

    def _maybe_prefetch(self) -> None:
        """Claim the next batch while this one is consumed, when more is likely waiting."""
        if (
            self._more
            and self._prefetch is None
            and not self._closed
            and len(self._buf) <= self._maxlen // 2
        ):
            self._more = False
            task = asyncio.get_running_loop().create_task(self._claim_quietly())
            self._prefetch = task
            task.add_done_callback(self._prefetched)

    async def _claim_quietly(self) -> None:
        with contextlib.suppress(AgentCommError):  # the next call to next() claims again
            await self._claim()

    def _prefetched(self, task: asyncio.Task[None]) -> None:
        self._prefetch = None

    def _channel(self) -> str:
        """The private channel `close()` notifies to wake a waiting durable `next()`."""
        return f"topicsub:{id(self)}"

    def _pop_leased(self) -> TopicMessage | None:
        buf = self._buf
        if not buf:
            return None
        now = time.time()
        while buf:
            msg = buf.popleft()
            # a lease that ended meanwhile may already be redelivered elsewhere: skip it, the
            # next claim hands it out again
            if msg._lease_until > now:
                if self._more:
                    self._maybe_prefetch()
                return msg
        return None

    # --- durable acks ------------------------------------------------------------------------

    def _add_ack(self, seq: int, attempt: int) -> None:
        self._acks.append((seq, attempt))
        if self._ack_timer is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._ack_timer = loop.call_later(_ACK_DELAY, self._flush_acks_soon)

    def _flush_acks_soon(self) -> None:
        self._ack_timer = None
        if self._acks:
            self._bus._spawn(self._settle(release=False))

    async def _settle(self, *, release: bool) -> None:
        acks, self._acks = self._acks, []
        releases = []
        if release:
            releases = [(m._record.seq, m._record.attempt) for m in self._buf]
            self._buf.clear()
        if not acks and not releases:
            return
        name = self._durable
        assert name is not None
        try:
            await self._bus._backend.topics.claim_topic(
                name, acks=acks, releases=releases, max_messages=0, lease=0.0, now=time.time()
            )
        except AgentCommError:
            # unwritten acks mean redelivery after the lease: at-least-once still holds
            if not self._closed:
                self._acks[:0] = acks
            elif not release:
                raise  # an ack after close is written by the caller, who should hear of it

    async def _release_buffered(self) -> None:
        await self._settle(release=True)

    # --- lifecycle ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop receiving; buffered messages are discarded. Idempotent. A durable consumer's
        pending acks are written and the messages it fetched but did not hand out are released
        for redelivery at once."""
        if self._closed:
            return
        self._closed = True
        self._bus._forget(self)
        if self._durable is None:
            self._buf.clear()
        while self._waiters:
            _wake(self._waiters.popleft())
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if self._durable is not None:
            self._bus._backend.notifier.notify((self._channel(),))
            if self._prefetch is not None:
                await asyncio.gather(self._prefetch, return_exceptions=True)
            await self._release_buffered()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _resolve(hub: Hub, record: TopicRecord) -> TopicRecord | None:
    """A copy of `record` with the payload it refers to in its place; None if the blob is
    gone (the record left the log and released it meanwhile: it counts as missed)."""
    try:
        data, kind, _ = await hub.refs._load(record.data, record.data_kind)
    except RefNotFound:
        return None
    return msgspec.structs.replace(record, data=data, data_kind=kind)


def _wake_one(waiters: deque[asyncio.Future[None]]) -> None:
    """Wake the longest-waiting live `next()` call that is still waiting."""
    while waiters:
        fut = waiters.popleft()
        if not fut.done():
            fut.set_result(None)
            return


class TopicBus:
    """A hub's topic machinery: its live subscriptions, the log reader, delivery counts."""

    def __init__(self, hub: Hub, backend: Context) -> None:
        self._hub = hub
        self._backend = backend
        self.origin = uuid4().hex
        self._tree: SubjectTree[Subscription] = SubjectTree()
        self._subs: dict[Subscription, None] = {}
        self._cursor: int | None = None
        self._reader: asyncio.Task[None] | None = None
        self._reader_started: asyncio.Future[None] | None = None
        self._counts: dict[str, list[int]] = {}
        self._counts_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # --- publishing --------------------------------------------------------------------------

    async def publish(
        self, sender: str, topic: str, data: Any, type: str, metadata: Mapping[str, Any] | None
    ) -> PublishResult:
        """Append to the log, then deliver to this hub's matching live subscriptions."""
        tokens = parse_topic(topic)
        if type != "event":
            check_name("type", type)
        payload, kind = encode_payload(data)
        meta = encode_metadata(_as_dict("metadata", metadata)) if metadata else None
        now = time.time()
        refs = self._hub.refs
        held: dict[int, tuple[bytes, str]] = {}
        stored, stored_kind = payload, kind
        try:  # the tier policy: a large payload is stored once and the log record refers to it
            if refs.policies.by_reference(type, len(payload)):
                stored, stored_kind = await refs._promote(type, payload, kind, held)
            record = await self._backend.topics.publish(
                NewTopicRecord(topic, sender, type, stored, stored_kind, meta, now, self.origin),
                now=now,
            )
        finally:
            if held:  # the log record holds its own reference until it is pruned
                await refs._unhold(held)
        if held:  # this hub's live subscribers get the payload itself (a copy: the memory
            # backend's log holds the record object returned)
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
                _wake_one(sub._waiters)
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
                _COUNTS_DELAY, lambda: self._spawn(self._flush_counts_quietly())
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
            await self._backend.topics.count_topic_deliveries(
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
        start: str | int | datetime | None,
        lease: float,
    ) -> Subscription:
        """Validate, then register a live subscription or open a durable consumer."""
        sender_list = _names("senders", "sender", senders)
        type_list = _names("types", "type", types)
        meta = dict(sorted(_as_dict("metadata", metadata).items())) if metadata else None
        filt = TopicFilter(pattern, sender_list, type_list, meta)
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
            raise ValidationError(f"buffer must be an int >= 1, not {buffer!r}.")
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
            encode_metadata(meta) if meta else None,
        )  # fmt: skip
        _set_start(spec, start)
        await self._backend.topics.open_consumer(spec, now=time.time())
        self._check_open()
        sub = Subscription(self, filt, buffer, durable, lease)
        self._subs[sub] = None
        return sub

    def _check_open(self) -> None:
        if self._closed:
            raise HubClosed("The hub closed while the subscription was being set up.")

    def _forget(self, sub: Subscription) -> None:
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
            self._reader = asyncio.create_task(self._read_loop(started))
        # every caller waits until the cursor is set: what is published after subscribe()
        # returns lies after it; shielded so that one caller's cancellation fails no other
        await asyncio.shield(started)

    async def _read_loop(self, started: asyncio.Future[None]) -> None:
        backend = self._backend
        with backend.notifier.listen(TOPICS_CHANNEL) as listener:
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
                listener.rearm()
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
                            resolved = await _resolve(self._hub, record)
                            if resolved is None:
                                continue
                            record = resolved
                        self._fanout(record, parse_topic(record.topic))
                    self._cursor = max(self._cursor, batch.through)
                    if batch.through - after >= _READ_LIMIT:
                        continue  # more to read
                await listener.wait(backend.recheck_interval)

    # --- lifecycle ---------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Close every subscription, stop the reader and write the pending counts."""
        if self._closed:
            return
        self._closed = True  # first: a subscribe() still in flight then fails instead of leaking
        for sub in list(self._subs):
            await sub.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(AgentCommError):  # only statistics would be lost
            await self.flush_counts()

    async def stats(self, name: str | None) -> list[TopicStats]:
        """The backend's stats with this hub's live subscribers and unwritten counts added."""
        await self.flush_counts()
        rows = await self._backend.topics.topic_stats(name)
        return [
            msgspec.structs.replace(r, subscribers=r.subscribers + self.live_subscribers(r.name))
            for r in rows
        ]


def _as_dict(what: str, value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ValidationError(f"{what} must be a mapping with string keys, not {value!r}.")
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


def _set_start(spec: ConsumerSpec, start: str | int | datetime | None) -> None:
    if start is None:
        return
    if start in ("all", "new"):
        spec.start = str(start)
    elif isinstance(start, datetime):
        spec.start, spec.start_time = "time", start.timestamp()
    elif isinstance(start, int) and not isinstance(start, bool) and start >= 0:
        spec.start, spec.start_seq = "seq", start
    else:
        raise ValidationError(
            f"start must be 'all', 'new', a sequence number >= 0 or a datetime, not {start!r}."
        )
