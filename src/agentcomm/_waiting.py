"""The one wait loop of every blocking call: re-arm, check storage, wait for the next wake-up.

A blocking call (receive, request, a durable subscription's `next`, a watch, the topic log
reader) loops: `rearm()`, look in storage, then `await wait(next_wake)`, which returns when a
backend notifies one of the channels, when `next_wake` (a clock time: a delayed message or a
lease falling due) comes, after the backend's safety re-check interval, or at the deadline,
whichever is first. Closing the hub wakes every waiter, so each loop sees the close at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType

from ._deadline import CALL_DEADLINE
from ._notify import Listener, Notifier

__all__ = ["Wakeups"]


class Wakeups:
    """A listener on `channels` plus the deadline of one blocking call (None: no deadline).

    Use it as a context manager around the loop; register before the first look in storage so
    that no notification between the look and the wait is lost.
    """

    __slots__ = ("_clock", "_deadline", "_listener", "_loop", "_outer", "_recheck")

    def __init__(
        self,
        notifier: Notifier,
        channels: tuple[str, ...],
        *,
        clock: Callable[[], float],
        recheck: float,
        timeout: float | None = None,
    ) -> None:
        self._clock = clock
        self._recheck = recheck
        self._loop = asyncio.get_running_loop()
        self._deadline = None if timeout is None else self._loop.time() + timeout
        self._listener: Listener = notifier.listen(*channels)
        self._outer: float | None = None

    @property
    def remaining(self) -> float | None:
        """Seconds left until the deadline (<= 0 once passed), None without a deadline."""
        return None if self._deadline is None else self._deadline - self._loop.time()

    @property
    def expired(self) -> bool:
        """Whether the deadline passed."""
        return self._deadline is not None and self._deadline <= self._loop.time()

    def rearm(self) -> None:
        """Forget earlier notifications; call before each look in storage."""
        self._listener.rearm()

    async def wait(self, next_wake: float | None = None) -> bool:
        """Wait for a notification, `next_wake` (clock time), the re-check or the deadline.

        Returns False, without waiting, if the deadline has passed already.
        """
        wait = self._recheck
        if next_wake is not None:
            wait = min(wait, max(next_wake - self._clock(), 0.0) + 0.001)
        if self._deadline is not None:
            remaining = self._deadline - self._loop.time()
            if remaining <= 0:
                return False
            wait = min(wait, remaining)
        await self._listener.wait(wait)
        return True

    def __enter__(self) -> Wakeups:
        if self._deadline is not None:
            # restored by value, not by token: a loop in an async generator may exit in
            # another context than it entered
            self._outer = CALL_DEADLINE.get()
            CALL_DEADLINE.set(self._deadline)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._listener.close()
        if self._deadline is not None:
            CALL_DEADLINE.set(self._outer)
