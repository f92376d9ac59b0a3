"""Workers: `agent.serve(handler)`, the receive / handle / settle loop, with graceful shutdown on
SIGINT and SIGTERM (the lease of each running handler kept by `msg.auto_extend()`)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ._errors import (
    AgentCommError,
    AlreadySettled,
    HubClosed,
    LeaseLost,
    Reject,
    ValidationError,
)
from ._leases import release
from ._mailbox import Message
from ._records import SettleKind
from ._validation import check_bool, check_int, check_non_negative, check_positive

if TYPE_CHECKING:
    from ._agent import Agent

__all__ = ["Handler", "serve"]

logger = logging.getLogger("agentcomm")

#: What `agent.serve` calls for each message: an async function of the message. For a request
#: its return value is the reply.
Handler = Callable[[Message], Awaitable[Any]]

#: Seconds a handler cancelled at the end of the grace period has to unwind.
_UNWIND = 2.0
#: The most handlers one `serve` runs at once.
MAX_CONCURRENCY = 10_000


class _Stopper:
    """Why and when `serve` stops: its stop event, a signal, or the hub closing; a second
    signal ends the grace period at once."""

    def __init__(self, agent: Agent, stop: asyncio.Event | None) -> None:
        self.requested = asyncio.Event()
        self.hurry = asyncio.Event()
        self._agent = agent
        self.channel = f"serve:{id(self)}"
        self._watch: asyncio.Task[None] | None = None
        if stop is not None:
            self._watch = asyncio.ensure_future(self._on_event(stop))

    async def _on_event(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.request("the stop event was set")

    def request(self, why: str) -> None:
        """Stop taking work (a second request: stop waiting for running handlers too)."""
        if self.requested.is_set():
            if not self.hurry.is_set():
                logger.info("agentcomm: %s again; ending running handlers now", why)
                self.hurry.set()
            return
        logger.info("agentcomm: %s; serve of %r stops taking work", why, self._agent.name)
        self.requested.set()
        ctx = self._agent._ctx
        ctx.notifier.notify((self.channel,))  # wakes the waiting receive

    def install_signals(self) -> None:
        """Stop on SIGINT and SIGTERM, when this is the main thread's loop (the only place
        signal handlers can be installed); see `_Signals`."""
        if threading.current_thread() is threading.main_thread():
            _SIGNALS.join(self)

    def restore(self) -> None:
        """Leave the signal handling (the last one out restores the previous handlers) and
        stop watching the stop event."""
        _SIGNALS.leave(self)
        if self._watch is not None:
            self._watch.cancel()


class _Signals:
    """The process's SIGINT / SIGTERM handling while any `serve` runs in the main thread:
    installed when the first one starts, telling every running serve to stop, and the
    handlers from before restored when the last one returns."""

    def __init__(self) -> None:
        self._members: list[_Stopper] = []
        self._saved: list[tuple[signal.Signals, Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def join(self, stopper: _Stopper) -> None:
        self._members.append(stopper)
        if len(self._members) > 1:
            return
        loop = self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous = signal.getsignal(sig)
                loop.add_signal_handler(sig, self._received, sig)
            except (NotImplementedError, RuntimeError, ValueError):  # e.g. Windows
                continue
            self._saved.append((sig, previous))

    def leave(self, stopper: _Stopper) -> None:
        if stopper not in self._members:
            return
        self._members.remove(stopper)
        if self._members:
            return
        loop, self._loop = self._loop, None
        for sig, previous in self._saved:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                if loop is not None and not loop.is_closed():
                    loop.remove_signal_handler(sig)
                if previous is not None:
                    signal.signal(sig, previous)
        self._saved.clear()

    def _received(self, sig: signal.Signals) -> None:
        for stopper in list(self._members):
            stopper.request(f"{sig.name} received")


_SIGNALS = _Signals()


async def serve(
    agent: Agent,
    handler: Handler,
    *,
    concurrency: int,
    lease: float | None,
    grace: float,
    stop: asyncio.Event | None,
    signals: bool,
    auto_extend: bool,
) -> None:
    """`Agent.serve` (see there)."""
    ctx = agent._ctx
    if not callable(handler):
        raise ValidationError(
            f"serve() takes an async function of the message, not {type(handler).__name__}."
        )
    check_int("concurrency", concurrency, 1, MAX_CONCURRENCY)
    max_delay = ctx.settings.limits.max_delay
    lease = ctx.settings.lease if lease is None else check_positive("lease", lease, max_delay)
    grace = check_non_negative("grace", grace, max_delay)
    if stop is not None and not isinstance(stop, asyncio.Event):
        raise ValidationError(f"stop= takes an asyncio.Event, not {type(stop).__name__}.")
    check_bool("signals", signals)
    check_bool("auto_extend", auto_extend)
    ctx.check_open()

    stopper = _Stopper(agent, stop)
    if signals:
        stopper.install_signals()
    running: dict[asyncio.Task[None], Message] = {}
    slot_free = asyncio.Event()

    def finished(task: asyncio.Task[None]) -> None:
        running.pop(task, None)
        slot_free.set()
        if not task.cancelled() and task.exception() is not None:  # a bug, not the handler's
            logger.error("agentcomm: serve failed to settle a message", exc_info=task.exception())

    try:
        while not stopper.requested.is_set():
            free = concurrency - len(running)
            if free <= 0:
                slot_free.clear()
                # busy: the agent is still seen while every slot works (see `Presence`)
                await _first(slot_free, stopper.requested, ctx.settings.presence.interval)
                await ctx.presence.note(agent.name, active=False)
                continue
            try:
                got = await agent._receive(
                    free, lease=lease, timeout=None, stop=stopper.requested,
                    wake=stopper.channel,
                )  # fmt: skip
            except HubClosed:
                break
            if stopper.requested.is_set():  # taken as the stop came: hand them back unread
                await release(ctx, got, _UNWIND)
                break
            for msg in got:
                task = asyncio.ensure_future(_handle(handler, msg, auto_extend))
                running[task] = msg
                task.add_done_callback(finished)
        if running and not ctx.closed:  # let them finish within the grace period
            await _first(asyncio.gather(*running, return_exceptions=True), stopper.hurry, grace)
    finally:
        stopper.restore()
        if running:  # the grace period is over: end them, and hand their messages back
            unfinished = dict(running)
            for task in unfinished:
                task.cancel()
            await asyncio.wait(unfinished, timeout=_UNWIND)
            if ctx.state == "open":
                await release(ctx, unfinished.values(), _UNWIND)
        logger.info("agentcomm: serve of %r stopped", agent.name)


async def _first(
    what: asyncio.Event | asyncio.Future[Any], other: asyncio.Event, timeout: float | None = None
) -> None:
    """Wait until `what` (an event, or a future) or event `other` is done, or `timeout`."""
    first = asyncio.ensure_future(what.wait() if isinstance(what, asyncio.Event) else what)
    second = asyncio.ensure_future(other.wait())
    try:
        await asyncio.wait({first, second}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        second.cancel()
        if isinstance(what, asyncio.Event):
            first.cancel()


async def _handle(handler: Handler, msg: Message, auto_extend: bool) -> None:
    """Run the handler on one message and settle it by the outcome."""
    keeper = msg.auto_extend() if auto_extend else contextlib.nullcontext()
    async with keeper:
        try:
            result = handler(msg)
            if inspect.isawaitable(result):
                result = await result
        except Reject as exc:
            await _settle(msg, "dead-letter", msg.dead_letter(_reason(exc.reason)))
            return
        except Exception as exc:
            delay = msg._ctx.settings.backoff.delay(msg.attempt)
            logger.warning(
                "agentcomm: handler failed on message %s (attempt %d of %d)%s",
                msg.id, msg.attempt, msg.max_attempts,
                "" if msg.attempt >= msg.max_attempts else f"; retrying in {delay:g} s",
                exc_info=exc,
            )  # fmt: skip
            reason = _reason(f"the handler raised {type(exc).__name__}: {exc}")
            op = msg._op(SettleKind.NACK, until=msg._ctx.now() + delay, reason=reason)
            await _settle(msg, "nack", msg._settle(op, "nack"))
            return
    if msg.settled:  # the handler acked, nacked or replied itself
        return
    if msg.correlation_id is not None and msg.reply_to is not None:
        try:
            await _settle(msg, "reply to", msg.reply(result), reply=True)
        except ValidationError as exc:  # the return value cannot be a reply: retrying won't help
            why = _reason(f"the handler's return value cannot be sent as the reply: {exc}")
            await _settle(msg, "dead-letter", msg.dead_letter(why))
    else:
        await _settle(msg, "ack", msg.ack())


async def _settle(msg: Message, what: str, call: Awaitable[Any], *, reply: bool = False) -> None:
    try:
        await call
    except (LeaseLost, AlreadySettled, HubClosed) as exc:
        logger.info("agentcomm: could not %s message %s: %s", what, msg.id, exc)
    except ValidationError:
        if reply:
            raise
        logger.warning("agentcomm: could not %s message %s", what, msg.id, exc_info=True)
    except AgentCommError as exc:
        # e.g. the reply cannot be encoded: the message comes back when its lease ends
        logger.warning("agentcomm: could not %s message %s: %s", what, msg.id, exc)


def _reason(text: str) -> str:
    """`text` as a dead-letter reason: storable, and at most 1000 characters."""
    return text.encode("utf-8", "replace").decode("utf-8")[:1000] or "rejected by the handler"
