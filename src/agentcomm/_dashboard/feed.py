"""The dashboard's feed: one snapshot loop per app, driven by the hub's wake-ups.

The loop runs while at least one page is connected. It listens on every channel of the hub's
notifier (sends, acks, publishes, writes: in this process and, on SQLite and Redis, in others),
reads a snapshot after a wake-up, at most once per `min_interval` (1 s), and at least every
`idle_refresh` seconds (presence changes without a notification). Pages wait on `next()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator

from .._errors import AgentCommError, HubClosed
from .._hub import Hub
from .._notify import ALL
from .snapshot import History, Snapshot, collect

__all__ = ["Feed", "FeedClosed"]

log = logging.getLogger("agentcomm.dashboard")


class FeedClosed(Exception):
    """The feed stopped: its hub closed, or the server is shutting down."""


class Feed:
    """Snapshots of one hub for every connected page; see the module docstring."""

    def __init__(self, hub: Hub, *, min_interval: float = 1.0, idle_refresh: float = 5.0) -> None:
        self.hub = hub
        self.min_interval = min_interval
        self.idle_refresh = idle_refresh
        self.snapshot: Snapshot | None = None
        self.version = 0
        self.closed = False
        self._history = History()
        self._changed: asyncio.Future[None] | None = None
        self._watchers = 0
        self._task: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        self._poke = f"dashboard:{os.getpid()}:{id(self)}"

    async def current(self) -> Snapshot:
        """The latest snapshot; read now if there is none or it is older than `min_interval`."""
        if self.closed or self.hub._ctx.tasks.closed:
            raise FeedClosed
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            snap = self.snapshot
            if snap is None or self._task is None:
                loop = asyncio.get_running_loop()
                if snap is None or loop.time() - self._read_at >= self.min_interval:
                    return await self._read()
            return snap

    _read_at = 0.0

    async def _read(self) -> Snapshot:
        try:
            snap = await collect(self.hub, self._history)
        except HubClosed:
            self.close()
            raise FeedClosed from None
        self._read_at = asyncio.get_running_loop().time()
        self.snapshot = snap
        self.version += 1
        fut, self._changed = self._changed, None
        if fut is not None and not fut.done():
            fut.set_result(None)
        return snap

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[Feed]:
        """Keep the snapshot loop running while the block runs (one per connected page)."""
        if self.closed:
            raise FeedClosed
        self._watchers += 1
        if self._task is None or self._task.done():
            self._task = self.hub._ctx.spawn(self._run())
        try:
            yield self
        finally:
            self._watchers -= 1
            if self._watchers == 0:  # let the loop see it now rather than at its next refresh
                self.hub._ctx.notifier.notify((self._poke,))

    async def next(self, version: int, timeout: float) -> Snapshot | None:
        """A snapshot newer than `version`, or None after `timeout` seconds without one."""
        if self.closed:
            raise FeedClosed
        if self.version > version and self.snapshot is not None:
            return self.snapshot
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._changed), timeout)
        if self.closed:
            raise FeedClosed
        return self.snapshot if self.version > version else None

    def close(self) -> None:
        """Stop: the loop ends and every waiting page gets FeedClosed. Idempotent."""
        self.closed = True
        fut, self._changed = self._changed, None
        if fut is not None and not fut.done():
            fut.set_result(None)
        with contextlib.suppress(RuntimeError):  # no loop: nothing waits
            self.hub._ctx.notifier.notify((self._poke,))

    async def _run(self) -> None:
        ctx = self.hub._ctx
        loop = asyncio.get_running_loop()
        with ctx.notifier.listen(ALL, self._poke) as listener:
            while not (self.closed or ctx.tasks.closed) and self._watchers > 0:
                listener.rearm()
                started = loop.time()
                try:
                    await self._read()
                except FeedClosed:
                    break
                except AgentCommError as exc:  # e.g. the store is unreachable: retry later
                    log.warning("dashboard: cannot read the store: %s", exc)
                await listener.wait(self.idle_refresh)
                if self.closed or ctx.tasks.closed or self._watchers == 0:
                    break
                rest = self.min_interval - (loop.time() - started)
                if rest > 0 and not await ctx.tasks.sleep(rest):
                    break
        if ctx.tasks.closed:
            self.close()
