"""Leases held by this process: the deliveries a hub leased and its consumers have not settled
yet, so that closing the hub (or stopping `serve`) hands them back at once instead of leaving
them leased until the lease ends (`MailboxStore.release`: the delivery does not count as an
attempt); and `LeaseKeeper`, which extends one delivery's lease while work on it runs
(`msg.auto_extend()`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING

from ._errors import AgentCommError, AlreadySettled, HubClosed, LeaseLost, ValidationError
from ._records import SettleKind

if TYPE_CHECKING:
    from ._context import Context
    from ._mailbox import Message

__all__ = ["LeaseBook", "LeaseKeeper", "release"]

logger = logging.getLogger("agentcomm")

#: Entries the book holds before it drops those settled meanwhile.
_TIDY_AT = 1024
#: Seconds an auto-extend loop has to end after its block.
_UNWIND = 2.0


class LeaseBook:
    """The unsettled messages received through one hub, by (recipient, seq)."""

    __slots__ = ("_held", "_tidy_at")

    def __init__(self) -> None:
        self._held: dict[tuple[str, int], Message] = {}
        self._tidy_at = _TIDY_AT

    def __len__(self) -> int:
        return len(self._held)

    def add(self, msg: Message) -> None:
        """Track a delivery (a redelivery of the same message replaces the older one)."""
        self._held[(msg.recipient, msg._stored.seq)] = msg
        if len(self._held) >= self._tidy_at:
            self._held = {k: m for k, m in self._held.items() if not m.settled}
            self._tidy_at = max(_TIDY_AT, 2 * len(self._held))

    def discard(self, msg: Message) -> None:
        """Forget a settled delivery."""
        key = (msg.recipient, msg._stored.seq)
        if self._held.get(key) is msg:
            del self._held[key]

    def take(self) -> list[Message]:
        """Every delivery still unsettled; the book is left empty."""
        held, self._held = self._held, {}
        return [m for m in held.values() if not m.settled]


async def release(ctx: Context, messages: Iterable[Message], timeout: float) -> int:
    """Hand `messages` back to their queues unprocessed, in one step, without counting the
    delivery as an attempt; each is marked settled. Bounded by `timeout` seconds; a failure
    is logged, not raised (the messages then come back when their lease ends). Returns how
    many were released."""
    batch = [m for m in messages if not m.settled]
    if not batch:
        return 0
    ops = [m._op(SettleKind.RELEASE) for m in batch]
    for m in batch:
        m._settled = True
        ctx.leases.discard(m)
    results: list[bool] = []
    with contextlib.suppress(TimeoutError):
        try:
            results = await asyncio.wait_for(ctx.mailboxes.release(ops, now=ctx.now()), timeout)
        except AgentCommError as exc:
            logger.warning(
                "agentcomm: could not release %d unfinished message(s); they are delivered "
                "again when their lease ends: %s", len(ops), exc,
            )  # fmt: skip
    return sum(results)


class LeaseKeeper:
    """What `msg.auto_extend()` returns: an async context manager that extends the message's
    lease every `every` seconds while its block runs. `lost` tells whether an extend found the
    lease lost (then settling the message raises LeaseLost)."""

    __slots__ = ("_every", "_lease", "_msg", "_stop", "_task", "extends", "lost")

    def __init__(self, msg: Message, lease: float, every: float) -> None:
        self._msg = msg
        self._lease = lease
        self._every = every
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        #: Whether an extend found the lease lost (the message was delivered again).
        self.lost = False
        #: How many times the lease was extended.
        self.extends = 0

    async def __aenter__(self) -> LeaseKeeper:
        if self._task is not None:
            raise ValidationError("This auto_extend() is in use already; call it again.")
        self._stop = asyncio.Event()
        self._task = self._msg._ctx.spawn(self._run(self._stop))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stop is not None:
            self._stop.set()
        task = self._task
        if task is not None and not task.done():
            # it ends on the stop event at once; a stuck backend call is cut off (bounded)
            _, pending = await asyncio.wait({task}, timeout=_UNWIND)
            for t in pending:
                t.cancel()

    async def _run(self, stop: asyncio.Event) -> None:
        msg = self._msg
        ctx = msg._ctx
        closing = ctx.tasks.closing()
        waits = {
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(closing.wait()),
        }
        try:
            while True:
                done, _ = await asyncio.wait(
                    waits, timeout=self._every, return_when=asyncio.FIRST_COMPLETED
                )
                if done or msg.settled or ctx.closed:
                    return
                try:
                    await msg.extend(self._lease)
                    self.extends += 1
                except (LeaseLost, AlreadySettled, HubClosed) as exc:
                    if isinstance(exc, LeaseLost):
                        self.lost = True
                        logger.info(
                            "agentcomm: lease of message %s was lost while its handler ran; "
                            "it may be delivered again", msg.id,
                        )  # fmt: skip
                    return
                except AgentCommError as exc:  # e.g. a locked file: try again next time
                    logger.info("agentcomm: could not extend message %s: %s", msg.id, exc)
        finally:
            for w in waits:
                w.cancel()
