"""The registry of a hub's background tasks, and how they are stopped when the hub closes.

Loops end on their own: they check `closed` after every wake-up, and closing sets it and wakes
them. Cancelling is only the fallback for a task that does not end within the grace period (a
driver may swallow a cancel, so even that wait is bounded).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from ._errors import AgentCommError

__all__ = ["TaskRegistry"]

logger = logging.getLogger("agentcomm")


class TaskRegistry:
    """Every background task a hub starts: scheduler, retention, topic reader, cleanups."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed: asyncio.Event | None = None  # made on first use, inside the loop
        self.closed = False
        #: Tasks `aclose` had to cancel (0 when every loop ended on the close flag).
        self.cancelled = 0

    def __iter__(self) -> Any:
        return iter(list(self._tasks))

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` in the background; `aclose` waits for it (bounded)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here: nobody awaits a background task
        if exc is not None and not isinstance(exc, AgentCommError):
            logger.error("agentcomm background task failed", exc_info=exc)

    def _event(self) -> asyncio.Event:
        if self._closed is None:
            self._closed = asyncio.Event()
            if self.closed:
                self._closed.set()
        return self._closed

    def closing(self) -> asyncio.Event:
        """An event set when the registry closes (for loops that wait on other events too)."""
        return self._event()

    async def sleep(self, seconds: float) -> bool:
        """Sleep `seconds`, or less if the registry closes; False once it is closed."""
        if self.closed:
            return False
        event = self._event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)
        return not self.closed

    def close(self) -> None:
        """Mark closed: loops see it at their next check (wake them up too)."""
        self.closed = True
        if self._closed is not None:
            self._closed.set()

    async def aclose(self, grace: float, cancel_grace: float) -> None:
        """Wait at most `grace` seconds for the tasks to end (including tasks they start
        meanwhile), then cancel the rest and wait at most `cancel_grace` seconds more; a task
        still running after that is left behind (and logged)."""
        self.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self._tasks:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await asyncio.wait(set(self._tasks), timeout=remaining)
        if not self._tasks:
            return
        stuck = set(self._tasks)
        self.cancelled += len(stuck)
        for task in stuck:
            task.cancel()
        _, pending = await asyncio.wait(stuck, timeout=cancel_grace)
        for task in pending:  # a driver swallowed the cancel: do not wait any longer
            logger.warning("agentcomm: a background task did not stop at close: %r", task)
            self._tasks.discard(task)
