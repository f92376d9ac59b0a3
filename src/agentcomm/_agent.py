"""An agent's handle: its identity when sending, and its mailbox when receiving."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime
from typing import Any

import msgspec

from . import _observe
from ._awaiting import awaitable
from ._backends.common import mail_channel, reply_channel
from ._codec import check_size, encode_for, encode_metadata, encode_payload
from ._context import Context
from ._errors import AgentCommError, HubClosed, LeaseLost, RequestTimeout, ValidationError
from ._ids import new_id
from ._mailbox import Message, Reply, answer
from ._models import PublishResult
from ._records import NewMessage, ScheduleSpec, StoredReply
from ._ref_records import REF_FLAG
from ._scheduling import check_recurrence
from ._shared_memory import SharedMemory
from ._subscription import DEFAULT_BUFFER, Start, Subscribing
from ._validation import (
    check_attempts,
    check_int,
    check_name,
    check_non_negative,
    check_positive,
    check_priority,
    check_seconds,
    check_text,
    check_timestamp,
)
from ._workers import Handler, serve

__all__ = ["Agent", "Outgoing"]

#: The most messages one `receive_many` leases at once.
MAX_RECEIVE = 10_000


class Outgoing(msgspec.Struct, kw_only=True):
    """One message for `Agent.send_many`; the fields mean what `Agent.send`'s arguments mean."""

    to: str
    data: Any
    type: str = "message"
    priority: int = 0
    ttl: float | None = None
    max_attempts: int | None = None
    idempotency_key: str | None = None
    delay: float | None = None
    at: datetime | float | None = None
    metadata: dict[str, Any] | None = None


async def _take(ctx: Context, cid: str, abandon: bool, wait: float = 0.0) -> StoredReply | None:
    """Take the reply to `cid` if it arrived (see `MailboxStore.take_reply`), resolved; the
    slot's reference to a payload stored by reference is released. With `wait`, the store
    waits up to that long for it (`Backend.take_reply_waiting`)."""
    ctx.check_open()
    if wait > 0 and not abandon:
        reply = await ctx.backend.take_reply_waiting(cid, wait=wait)
    else:
        reply = await ctx.mailboxes.take_reply(cid, abandon=abandon)
    if reply is not None and reply.data_kind & REF_FLAG:
        ref_id = reply.data.decode("ascii")
        try:
            reply.data, reply.data_kind, _ = await ctx.refs.load(reply.data, reply.data_kind)
        finally:
            await ctx.refs.release(ref_id)
    return reply


def _timeout(to: str, cid: str, timeout: float, attempts: int) -> RequestTimeout:
    if attempts:
        what = (
            f"it was received ({attempts} delivery(ies)) but not answered in time: give the "
            "responder a longer timeout, or have it extend() its lease and reply sooner"
        )
    else:
        what = (
            f"it was never received: is an agent receiving from {to!r}'s mailbox? "
            "(hub.pending(...) lists what waits there)"
        )
    return RequestTimeout(
        f"No reply from {to!r} to request {cid} within {timeout:g} s; {what}. "
        "A reply that arrives later is discarded and counted.",
        received=attempts > 0, attempts=attempts, recipient=to, correlation_id=cid,
    )  # fmt: skip


def _schedule_ttl(ttl: object) -> float | None:
    seconds = check_seconds("ttl", ttl, positive=True, allow_inf=True)
    return None if math.isinf(seconds) else seconds  # None: the messages never expire


class Agent:
    """A registered agent. Get one with `await hub.agent(name)`.

    Every message it sends carries its name as the sender; nothing else can set the sender.
    """

    def __init__(self, ctx: Context, name: str) -> None:
        self._ctx = ctx
        self._name = name

    @property
    def name(self) -> str:
        """The agent's name."""
        return self._name

    def __repr__(self) -> str:
        return f"<Agent {self._name!r}>"

    # --- sending -----------------------------------------------------------------------------

    def _build(
        self, out: Outgoing, now: float, memo: dict[int, tuple[Any, bytes, int]] | None = None
    ) -> NewMessage:
        if not isinstance(out, Outgoing):
            raise ValidationError(f"send_many() takes Outgoing messages, not {type(out).__name__}.")
        settings = self._ctx.settings
        limits = settings.limits
        check_name("recipient", out.to)
        check_name("type", out.type)
        ttl = (
            settings.default_ttl if out.ttl is None
            else check_seconds("ttl", out.ttl, positive=True, allow_inf=True)
        )  # fmt: skip
        if out.delay is not None and out.at is not None:
            raise ValidationError("Give delay= or at=, not both.")
        visible_at = now
        if out.delay is not None:
            visible_at = now + check_non_negative("delay", out.delay, limits.max_delay)
        elif out.at is not None:
            # an `at` in the past is delivered at once (its TTL counts from now)
            visible_at = max(now, check_timestamp("at", out.at))
            if visible_at - now > limits.max_delay:
                raise ValidationError(
                    f"at= is {visible_at - now:.0f} s ahead, beyond the {limits.max_delay:g} s "
                    "a message may be held back (Limits.max_delay)."
                )
        key = out.idempotency_key
        if key is not None:
            check_text("idempotency_key", key, longest=256, empty=False)
        priority = check_priority(out.priority)
        max_attempts = check_attempts(
            settings.max_attempts if out.max_attempts is None else out.max_attempts
        )
        metadata = encode_metadata(out.metadata, settings)
        if memo is None:
            data, kind = encode_payload(out.data, limits.max_depth)
        else:  # one value sent to many recipients is encoded (and stored by reference) once
            got = memo.get(id(out.data))
            if got is None:
                # the value itself is kept in the memo, so its id cannot be reused meanwhile
                got = memo[id(out.data)] = (out.data, *encode_payload(out.data, limits.max_depth))
            _, data, kind = got
        check_size(settings, out.type, data)
        return NewMessage(
            id=new_id(),
            sender=self._name,
            recipient=out.to,
            type=out.type,
            priority=priority,
            data=data,
            data_kind=kind,
            metadata=metadata,
            enqueued_at=now,
            visible_at=visible_at,
            # TTL counts from when the message becomes deliverable
            expires_at=None if math.isinf(ttl) else visible_at + ttl,
            max_attempts=max_attempts,
            idempotency_key=key,
            dedupe_until=None if key is None else now + settings.retention.dedupe_window,
        )

    async def send(
        self,
        to: str,
        data: Any,
        *,
        type: str = "message",
        priority: int = 0,
        ttl: float | None = None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
        delay: float | None = None,
        at: datetime | float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Send `data` to agent `to`'s mailbox and return the message id.

        `ttl` (default: the hub's, 24 h; `math.inf` for none) counts from when the message
        becomes deliverable; `delay` seconds or `at` (datetime or epoch seconds) hold it back.
        A repeated `idempotency_key` (same sender and recipient, within the dedupe window)
        returns the first message's id and stores nothing.
        """
        out = Outgoing(
            to=to, data=data, type=type, priority=priority, ttl=ttl, max_attempts=max_attempts,
            idempotency_key=idempotency_key, delay=delay, at=at, metadata=metadata,
        )  # fmt: skip
        ids = await self.send_many((out,))
        return ids[0]

    async def send_many(self, messages: Iterable[Outgoing]) -> list[str]:
        """Send several messages in one atomic step; returns their ids in order."""
        ctx = self._ctx
        ctx.check_open()
        now = ctx.now()
        memo: dict[int, tuple[Any, bytes, int]] = {}
        try:
            batch = list(messages)
        except TypeError:
            raise ValidationError("send_many() takes an iterable of Outgoing messages.") from None
        if _observe.active():
            return await self._send_observed(batch, now, memo)
        built = [self._build(out, now, memo) for out in batch]
        if not built:
            return []
        ids = await self._enqueue(built, now)
        await ctx.presence.note(self._name, active=True)
        return ids

    async def _send_observed(
        self, batch: list[Outgoing], now: float, memo: dict[int, tuple[Any, bytes, int]]
    ) -> list[str]:
        """`send_many` in a `queue.enqueue` span whose trace context each message carries."""
        first = batch[0] if batch and isinstance(batch[0], Outgoing) else None
        attrs = {
            "agentcomm.agent": self._name,
            "messaging.destination.name": None if first is None else first.to,
            "agentcomm.type": None if first is None else first.type,
            "messaging.batch.message_count": len(batch),
        }
        with _observe.span("queue.enqueue", attrs) as note:
            batch = [
                msgspec.structs.replace(out, metadata=_observe.inject(out.metadata))
                if isinstance(out, Outgoing) else out
                for out in batch
            ]  # fmt: skip
            built = [self._build(out, now, memo) for out in batch]
            if not built:
                return []
            note("messaging.message.id", built[0].id)
            ids = await self._enqueue(built, now)
        await self._ctx.presence.note(self._name, active=True)
        return ids

    async def _enqueue(self, messages: list[NewMessage], now: float) -> list[str]:
        """Store messages, the tier policy applied (the stored rows hold their own references)."""
        ctx = self._ctx
        refs = ctx.refs
        if all(refs.by_value(m.type, m.data, m.data_kind) for m in messages):  # the hot path
            return await ctx.mailboxes.enqueue(
                messages, auto_register=ctx.settings.auto_register, now=now
            )
        async with refs.hold() as hold:
            for m in messages:
                m.data, m.data_kind = await hold.promote(m.type, m.data, m.data_kind)
            return await ctx.mailboxes.enqueue(
                messages, auto_register=ctx.settings.auto_register, now=now
            )

    # --- receiving ---------------------------------------------------------------------------

    @awaitable
    async def receive(
        self, timeout: float | None = None, lease: float | None = None
    ) -> Message | None:
        """Wait for the next message and lease it for `lease` seconds (default: the hub's).

        Returns None only when `timeout` seconds pass with nothing to deliver; `timeout=None`
        waits as long as it takes, `timeout=0` only looks. Raises HubClosed if the hub closes
        meanwhile (its unsettled messages are then released, see `Hub.aclose`).
        """
        got = await self.receive_many(1, timeout=timeout, lease=lease)
        return got[0] if got else None

    async def receive_many(
        self, max_messages: int = 100, *, timeout: float | None = None, lease: float | None = None
    ) -> list[Message]:
        """Like `receive`, but lease up to `max_messages` ready messages at once, best first.

        Returns as soon as at least one is ready; an empty list only on timeout.
        """
        ctx = self._ctx
        ctx.check_open()
        check_int("max_messages", max_messages, 1, MAX_RECEIVE)
        if lease is not None:
            lease = check_positive("lease", lease, ctx.settings.limits.max_delay)
        if timeout is not None:
            check_non_negative("timeout", timeout)
        return await self._receive(max_messages, lease=lease, timeout=timeout)

    async def _receive(
        self,
        max_messages: int,
        *,
        lease: float | None,
        timeout: float | None,
        stop: asyncio.Event | None = None,
        wake: str | None = None,
    ) -> list[Message]:
        """`receive_many` with checked arguments; also returns [] once `stop` is set (whoever
        sets it notifies channel `wake`). Raises HubClosed once the hub closes."""
        ctx = self._ctx
        name = self._name
        lease = ctx.settings.lease if lease is None else lease
        presence = ctx.presence
        channels = (mail_channel(name),) if wake is None else (mail_channel(name), wake)
        # a backend whose store waits in the call (the http backend): one call per receive,
        # unless a local `stop` must be heard while waiting and the backend waits elsewhere;
        # the redis backend waits here, for a message its store delivers to this receive
        backend = ctx.backend
        remote = backend.remote_wait if stop is None or backend.waits_locally else 0.0
        with ctx.wakeups(*channels, timeout=timeout) as wakeups:
            while True:
                ctx.check_open()  # raises HubClosed once the hub closes
                if stop is not None and stop.is_set():
                    return []
                wakeups.rearm()
                now = ctx.now()
                waited = False
                if remote:
                    left = wakeups.remaining
                    wait = max(0.0, min(remote, presence.due(name) - now,
                                        remote if left is None else left))  # fmt: skip
                    started = time.monotonic()
                    claimed = await backend.claim_waiting(
                        name, max_messages=max_messages, lease=lease, now=now, wait=wait,
                        also=channels[1:],
                    )  # fmt: skip
                    # an empty answer well before `wait` (a stopping server): wait here
                    waited = wait > 0 and time.monotonic() - started >= wait / 2
                else:
                    claimed = await ctx.mailboxes.claim(
                        name, max_messages=max_messages, lease=lease, now=now
                    )
                if claimed.messages:
                    got = []
                    for m in claimed.messages:
                        ref = None
                        if m.data_kind & REF_FLAG:  # resolved here: msg.data needs no extra call
                            m.data, m.data_kind, ref = await ctx.refs.load(m.data, m.data_kind)
                        msg = Message(ctx, m, ref, lease)
                        ctx.leases.add(msg)
                        got.append(msg)
                    await presence.note(name, active=True)
                    if _observe.active():
                        for msg in got:
                            with msg._span("queue.dequeue"):
                                pass
                    return got
                # a waiting receive keeps the agent's last_seen fresh (see `Presence`)
                await presence.note(name, active=False)
                if waited:  # the store waited already
                    if wakeups.expired:
                        return []
                    continue
                next_wake = claimed.next_wake
                due = presence.due(name)
                if next_wake is None or due < next_wake:
                    next_wake = due
                if not await wakeups.wait(next_wake):
                    return []

    async def ack_many(self, messages: Iterable[Message]) -> None:
        """Ack several received messages in one atomic step.

        Raises LeaseLost naming the messages whose lease was lost; the others are acked.
        """
        try:
            batch = list(messages)
        except TypeError:
            raise ValidationError("ack_many() takes an iterable of received messages.") from None
        if not all(isinstance(m, Message) for m in batch):
            raise ValidationError("ack_many() takes messages returned by receive().")
        ops = [m._ack_op() for m in batch]
        if not ops:
            return
        self._ctx.check_open()
        if _observe.active():
            for m in batch:
                with m._span("queue.ack"):
                    pass
        results = await self._ctx.mailboxes.settle_many(ops, now=self._ctx.now())
        lost = [m.id for m, ok in zip(batch, results, strict=True) if not ok]
        for m, ok in zip(batch, results, strict=True):
            m._settled = ok
            if ok:
                self._ctx.leases.discard(m)
        await self._ctx.presence.note(self._name, active=True)
        if lost:
            raise LeaseLost(
                f"Could not ack {len(lost)} message(s) whose lease ended and which were "
                f"delivered again or settled elsewhere: {', '.join(lost[:10])}."
            )

    async def messages(
        self, *, lease: float | None = None, batch: int = 1
    ) -> AsyncIterator[Message]:
        """Yield messages as they arrive, waiting without polling; ends quietly when the hub
        closes (the rule of every waiter, see `Hub.aclose`)."""
        while True:
            try:
                got = await self.receive_many(batch, lease=lease)
            except HubClosed:
                return
            for msg in got:
                yield msg

    async def serve(
        self,
        handler: Handler,
        *,
        concurrency: int = 4,
        lease: float | None = None,
        grace: float = 30.0,
        stop: asyncio.Event | None = None,
        signals: bool = True,
        auto_extend: bool = True,
    ) -> None:
        """Run `handler` on every message of this agent's mailbox, up to `concurrency` at once,
        until stopped; the worker loop of a competing consumer (see docs/workers.md).

        For each message: `await handler(msg)`; on return the message is acked (a request is
        answered with the return value as its reply); on `agentcomm.Reject(reason)` it is
        dead-lettered with that reason; on any other exception it is nacked with the hub's
        backoff (dead-lettered after its last attempt, the exception named in the reason). A
        handler may settle the message itself; serve then leaves it alone. While a handler
        runs its lease (`lease`, default the hub's) is extended every third of the lease
        (`auto_extend=False` turns that off).

        Stopping: when `stop` (an asyncio.Event) is set, or on SIGINT / SIGTERM (with
        `signals`, and only when running in the main thread's event loop), serve stops taking
        work, waits up to `grace` seconds for running handlers (a second signal cuts that
        short), cancels those still running and releases their messages: they go back to the
        queue at once, that delivery not counted as an attempt. Then it returns; the hub stays
        open. When the hub closes, serve returns without waiting for running handlers (the
        close releases their messages).
        """
        await serve(
            self, handler, concurrency=concurrency, lease=lease, grace=grace, stop=stop,
            signals=signals, auto_extend=auto_extend,
        )  # fmt: skip

    # --- request / reply ---------------------------------------------------------------------

    @awaitable
    async def request(
        self,
        to: str,
        data: Any,
        *,
        type: str = "request",
        timeout: float = 30.0,
        priority: int = 0,
        max_attempts: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Reply:
        """Send a request and wait for its reply.

        The request is correlated by an id it carries (never by agent names) and expires from
        the recipient's mailbox with the timeout. Like any message it is delivered up to
        `max_attempts` times (default: the hub's): a responder that nacks it, or whose lease
        ends, lets it be retried within the timeout.

        Raises `RemoteError` when the responder answers with `reply_error`; `RequestFailed`
        as soon as the request is dead-lettered (attempts used up, nacked on its last
        delivery, or dead-lettered by the responder) or expires; `RequestTimeout` after
        `timeout` seconds without an answer (saying whether it was ever received). A reply
        arriving later is discarded and counted.
        """
        timeout = check_positive("timeout", timeout, self._ctx.settings.limits.max_delay)
        ctx = self._ctx
        ctx.check_open()
        now = ctx.now()
        cid = new_id()
        with ctx.wakeups(reply_channel(cid), timeout=timeout) as wakeups:
            attrs = {
                "agentcomm.agent": self._name,
                "messaging.destination.name": to,
                "agentcomm.type": type,
                "messaging.message.conversation_id": cid,
            }
            with _observe.span("queue.enqueue", attrs) as note:
                msg = self._build(
                    Outgoing(
                        to=to,
                        data=data,
                        type=type,
                        priority=priority,
                        ttl=timeout,
                        max_attempts=max_attempts,
                        metadata=_observe.inject(metadata),
                    ),
                    now,
                )
                msg.correlation_id = cid
                msg.reply_to = self._name
                msg.request_deadline = now + timeout
                note("messaging.message.id", msg.id)
                await self._enqueue([msg], now)
            taking: asyncio.Future[StoredReply | None] | None = None
            remote = ctx.backend.remote_wait  # the store waits in the take (http backend)
            started, wait = 0.0, 0.0
            try:
                while True:
                    # after an empty answer well before its wait (a stopping server), or
                    # without remote waits, wait here for a wake-up
                    if remote and (not wait or time.monotonic() - started >= wait / 2):
                        ctx.check_open()
                        wait = max(min(remote, wakeups.remaining or 0.0), 0.0)
                        started = time.monotonic()
                        expired = wait <= 0
                    else:
                        wait = 0.0
                        expired = not await wakeups.wait()
                        if not expired:
                            wakeups.rearm()
                            ctx.check_open()
                            expired = wakeups.expired
                    # shielded: a cancel while the reply is being taken must not lose it (and
                    # the reference it holds); `_abandon` waits for it
                    attempts = 0
                    if expired:  # read before the slot is closed: was it ever received?
                        attempts = await ctx.mailboxes.request_attempts(cid)
                    taking = asyncio.ensure_future(_take(ctx, cid, expired, wait))
                    reply = await asyncio.shield(taking)
                    if reply is not None:
                        return answer(cid, reply, to)
                    if expired:
                        raise _timeout(to, cid, timeout, attempts)
            except asyncio.CancelledError:
                # close the slot so a reply to an abandoned request counts as late
                self._abandon(cid, taking)
                raise

    def _abandon(self, cid: str, taking: asyncio.Future[StoredReply | None] | None) -> None:
        async def close_slot() -> None:
            with contextlib.suppress(AgentCommError):
                if taking is not None:
                    await taking  # a take in progress finishes first (and releases)
                await _take(self._ctx, cid, True)  # a reply taken here is released unread

        self._ctx.spawn(close_slot())

    # --- scheduling --------------------------------------------------------------------------

    async def schedule(
        self,
        to: str,
        data: Any,
        *,
        type: str = "message",
        cron: str | None = None,
        every: float | None = None,
        priority: int = 0,
        ttl: float | None = None,
        max_attempts: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Send `data` to `to` at every occurrence of `cron` (UTC) or every `every` seconds.

        Returns the schedule id for `hub.cancel_schedule`. Each occurrence enqueues exactly one
        message; occurrences missed while no hub ran are coalesced into one.
        """
        ctx = self._ctx
        ctx.check_open()
        settings = ctx.settings
        now = ctx.now()
        cron, every, next_run = check_recurrence(cron, every, now, settings.limits)
        check_name("recipient", to)
        check_name("type", type)
        spec = ScheduleSpec(
            id=new_id(),
            sender=self._name,
            recipient=to,
            type=type,
            priority=check_priority(priority),
            data=b"",
            data_kind=0,
            metadata=encode_metadata(metadata, settings),
            ttl=_schedule_ttl(settings.default_ttl if ttl is None else ttl),
            max_attempts=check_attempts(
                settings.max_attempts if max_attempts is None else max_attempts
            ),
            cron=cron,
            every=every,
            next_run=next_run,
            created_at=now,
        )
        spec.data, spec.data_kind = encode_for(settings, type, data)
        # the schedule holds its own reference, and so does each message it sends
        async with ctx.refs.hold() as hold:
            spec.data, spec.data_kind = await hold.promote(type, spec.data, spec.data_kind)
            await ctx.mailboxes.add_schedule(spec, auto_register=settings.auto_register)
        return spec.id

    # --- topics --------------------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        data: Any,
        *,
        type: str = "event",
        metadata: Mapping[str, Any] | None = None,
    ) -> PublishResult:
        """Publish `data` to `topic` (dot-separated tokens, no wildcards). Never blocks on
        subscribers: a live subscriber whose buffer is full misses it (counted as dropped).

        The message is appended to the topic log first (`sequence`), then handed to this hub's
        matching live subscribers (`delivered`, `dropped`); other hubs read it from the log.
        """
        self._ctx.check_open()
        if _observe.active() and (metadata is None or isinstance(metadata, Mapping)):
            attrs = {"agentcomm.agent": self._name, "messaging.destination.name": topic,
                     "agentcomm.type": type}  # fmt: skip
            with _observe.span("bus.publish", attrs) as note:
                traced = _observe.inject(None if metadata is None else dict(metadata))
                result = await self._ctx.bus.publish(self._name, topic, data, type, traced)
                note("messaging.message.id", result.sequence)
        else:
            result = await self._ctx.bus.publish(self._name, topic, data, type, metadata)
        await self._ctx.presence.note(self._name, active=True)
        return result

    def subscribe(
        self,
        pattern: str,
        *,
        senders: Iterable[str] | None = None,
        types: Iterable[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        buffer: int = DEFAULT_BUFFER,
        durable: str | None = None,
        start: Start | None = None,
    ) -> Subscribing:
        """Receive messages published to topics matching `pattern`.

        In a pattern `*` matches one token and `>` (last only) one or more trailing tokens.
        Filters AND together: sender in `senders`, type in `types`, and every `metadata` key
        equal to the given value. Live (default): publishes from now on, at most `buffer`
        waiting (more are dropped and counted). With `durable=name`: a consumer stored in the
        backend that resumes where it was acked, shares its work with every subscriber of the
        same name, and leases `buffer` messages at a time for the hub's lease. `start` ("all",
        "new", a sequence, or a datetime) is where a new consumer starts; an existing one resumes
        unless `start` differs from where it was last started, which rewinds it there. Without
        `start` an existing consumer resumes and a new one starts at "new".

        Use it as `sub = await agent.subscribe(...)` or `async with agent.subscribe(...) as
        sub:` (which closes it at the end of the block).
        """
        ctx = self._ctx
        subscribe = functools.partial(
            ctx.bus.subscribe, pattern, senders=senders, types=types, metadata=metadata,
            buffer=buffer, durable=durable, start=start, lease=ctx.settings.lease,
        )  # fmt: skip
        return Subscribing(subscribe)

    # --- shared memory -------------------------------------------------------------------------

    def memory(
        self,
        namespace: str | None = None,
        *,
        history: int | None = None,
        change_log: int | None = None,
    ) -> SharedMemory:
        """This agent's private namespace, or with `namespace` the shared one of that name with
        writes recorded as this agent's (`Entry.updated_by`).

        The private namespace is keyed by the agent itself, not by a name prefix: no other
        agent or namespace can reach it. `history` and `change_log` as in `hub.memory`.
        """
        return SharedMemory._open(
            self._ctx, namespace, agent=self._name, history=history, change_log=change_log
        )
