"""A subscription to topics: live (fed by this hub's topic bus) or durable (leased from the
backend), and the awaitable that `agent.subscribe` returns."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from . import _observe
from ._context import Context
from ._errors import AgentCommError, HubClosed
from ._ref_records import REF_FLAG
from ._subjects import TopicFilter, consumer_channel, wake_channel
from ._topic_message import TopicMessage, resolve_record
from ._validation import check_non_negative

if TYPE_CHECKING:
    from ._topic_bus import TopicBus

__all__ = ["DEFAULT_BUFFER", "Start", "Subscribing", "Subscription"]

#: Default per-subscription buffer (live) or lease batch (durable), in messages.
DEFAULT_BUFFER = 1024
_ACK_DELAY = 0.05  # seconds a durable ack waits to be written with others

#: Where a new durable consumer starts: the whole log, new publishes only, a sequence number,
#: or the first publish at or after a time.
Start: TypeAlias = Literal["all", "new"] | int | datetime


class Subscription:
    """Messages on topics matching a pattern. Get one with `await agent.subscribe(...)`.

    Iterate it (`async for msg in sub`) or call `next(timeout)`; close it with `aclose()` when
    done (or use `async with`). Iteration ends quietly when it is closed or its hub closes;
    `next()` returns None once it is closed and raises HubClosed once its hub closes (the rule
    of every waiter, see `Hub.aclose`).
    """

    __slots__ = (
        "_ack_timer",
        "_acks",
        "_buf",
        "_bus",
        "_closed",
        "_ctx",
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
        self._ctx: Context = bus.ctx
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
        """Whether it was closed (by `aclose()` or because its hub closed)."""
        return self._closed

    def __repr__(self) -> str:
        kind = f"durable={self._durable!r}" if self._durable else "live"
        return f"<Subscription {self.pattern!r} {kind}{' closed' if self._closed else ''}>"

    # --- receiving ---------------------------------------------------------------------------

    async def next(self, timeout: float | None = None) -> TopicMessage | None:
        """The next message; None if `timeout` seconds pass first or the subscription is
        closed (`aclose()`). Raises HubClosed once its hub closes.

        `timeout=None` waits as long as it takes, `timeout=0` only looks.
        """
        if timeout is not None:
            check_non_negative("timeout", timeout)
        msg = await self._next(timeout)
        if msg is None and self._ctx.closed:
            raise HubClosed("The hub was closed; this subscription was closed with it.")
        if msg is not None and _observe.active():
            _delivered(msg)
        return msg

    async def _next(self, timeout: float | None) -> TopicMessage | None:
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
                    wake_one(waiters)  # we were handed a message we will not take: pass it on
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
        if self._durable is None and self._buf and not _observe.active():
            return self._buf.popleft()
        msg = await self._next(None)
        if msg is None:  # closed, or its hub closed: iteration ends quietly
            raise StopAsyncIteration
        if _observe.active():
            _delivered(msg)
        return msg

    async def _next_durable(self, timeout: float | None) -> TopicMessage | None:
        msg = self._pop_leased()
        if msg is not None or self._closed:
            return msg
        name = self._durable
        assert name is not None
        channels = (wake_channel(self._match.tokens), consumer_channel(name), self._channel())
        with self._ctx.wakeups(*channels, timeout=timeout) as wakeups:
            while True:
                wakeups.rearm()
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
                # woken by a publish, by aclose(), or when a lease may have ended
                if not await wakeups.wait(next_wake):
                    return None
                if self._closed:
                    return None

    async def _claim(self) -> float | None:
        """Write pending acks and lease the next batch into the buffer; returns `next_wake`."""
        name = self._durable
        assert name is not None
        acks, self._acks = self._acks, []
        try:
            claim = await self._ctx.topics.claim_topic(
                name, acks=acks, releases=(), max_messages=self._maxlen, lease=self._lease,
                now=self._ctx.now(),
            )  # fmt: skip
        except BaseException:
            self._acks[:0] = acks  # written with the next attempt
            raise
        self.lost += claim.lost
        buf = self._buf
        for r in claim.records:
            if r.data_kind & REF_FLAG:
                resolved = await resolve_record(self._ctx, r)
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
            task = self._ctx.spawn(self._claim_quietly())
            self._prefetch = task
            task.add_done_callback(self._prefetched)

    async def _claim_quietly(self) -> None:
        with contextlib.suppress(AgentCommError):  # the next call to next() claims again
            await self._claim()

    def _prefetched(self, task: asyncio.Task[None]) -> None:
        self._prefetch = None

    def _channel(self) -> str:
        """The private channel `aclose()` notifies to wake a waiting durable `next()`."""
        return f"topicsub:{id(self)}"

    def _pop_leased(self) -> TopicMessage | None:
        buf = self._buf
        if not buf:
            return None
        now = self._ctx.now()
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
            self._ctx.spawn(self._settle(release=False))

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
            await self._ctx.topics.claim_topic(
                name, acks=acks, releases=releases, max_messages=0, lease=0.0, now=self._ctx.now()
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

    async def aclose(self) -> None:
        """Stop receiving; buffered messages are discarded. Idempotent. A durable consumer's
        pending acks are written and the messages it fetched but did not hand out are released
        for redelivery at once."""
        if self._closed:
            return
        self._closed = True
        self._bus.forget(self)
        if self._durable is None:
            self._buf.clear()
        while self._waiters:
            _wake(self._waiters.popleft())
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if self._durable is not None:
            self._ctx.notifier.notify((self._channel(),))
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
        await self.aclose()


class Subscribing(Coroutine[Any, Any, Subscription]):
    """What `agent.subscribe(...)` returns: await it for the `Subscription`, or use it as
    `async with agent.subscribe(...) as sub:` to close the subscription at the block's end.

    It is a coroutine, so `asyncio.create_task(agent.subscribe(...))` works too.
    """

    __slots__ = ("_coro", "_open", "_sub")

    def __init__(self, open: Callable[[], Coroutine[Any, Any, Subscription]]) -> None:
        self._open = open
        self._coro: Coroutine[Any, Any, Subscription] | None = None
        self._sub: Subscription | None = None

    def _started(self) -> Coroutine[Any, Any, Subscription]:
        if self._coro is None:  # made on first use: an unused Subscribing leaves no coroutine
            self._coro = self._open()
        return self._coro

    def __await__(self) -> Generator[Any, None, Subscription]:
        return self._started().__await__()

    def send(self, value: Any) -> Any:
        """Coroutine protocol: resume the subscribe call."""
        return self._started().send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        """Coroutine protocol: raise in the subscribe call."""
        if val is None and tb is None:
            return self._started().throw(typ)
        return self._started().throw(typ, val, tb)

    def close(self) -> None:
        """Coroutine protocol: abandon the subscribe call."""
        if self._coro is not None:
            self._coro.close()

    async def __aenter__(self) -> Subscription:
        self._sub = await self._started()
        return self._sub

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sub is not None:
            await self._sub.aclose()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def wake_one(waiters: deque[asyncio.Future[None]]) -> None:
    """Wake the longest-waiting live `next()` call that is still waiting."""
    while waiters:
        fut = waiters.popleft()
        if not fut.done():
            fut.set_result(None)
            return


def _delivered(msg: TopicMessage) -> None:
    """Record a delivery to a subscriber (`bus.deliver`), in the publisher's trace."""
    attrs = {
        "messaging.destination.name": msg.topic, "agentcomm.sender": msg.sender,
        "agentcomm.type": msg.type, "messaging.message.id": msg.sequence,
        "agentcomm.attempt": msg.attempt or None,
    }  # fmt: skip
    with _observe.span("bus.deliver", attrs, msg.metadata):
        pass
