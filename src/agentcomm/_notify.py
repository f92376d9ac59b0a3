"""In-process wake-ups: waiters listen on named channels; backends notify them after commits.

A waiter registers *before* it checks storage, so a notification that lands between the check
and the wait is never lost: the wait then returns at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from types import TracebackType

ALL = "*"


_TIMED_OUT = object()


def _time_out(fut: asyncio.Future[object]) -> None:
    if not fut.done():
        fut.set_result(_TIMED_OUT)


class Listener:
    """A registration on one or more channels; `wait()` returns when any of them is notified."""

    __slots__ = ("_channels", "_future", "_notifier")

    def __init__(self, notifier: Notifier, channels: tuple[str, ...]) -> None:
        self._notifier = notifier
        self._channels = channels
        self._future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        notifier._add(self)

    @property
    def notified(self) -> bool:
        """Whether a notification arrived since the last `rearm()`."""
        fut = self._future
        return fut.done() and not fut.cancelled() and fut.result() is None

    def rearm(self) -> None:
        """Forget earlier notifications; call before re-checking storage."""
        if self._future.done():
            self._future = asyncio.get_running_loop().create_future()

    async def wait(self, timeout: float | None) -> bool:
        """Wait for a notification, at most `timeout` seconds; True if one arrived."""
        fut = self._future
        if fut.done():
            return True
        if timeout is not None and timeout <= 0:
            return False
        # The notification wakes this task directly (asyncio.wait would take one more loop
        # turn and a waiter of its own); a timeout resolves the same future with _TIMED_OUT.
        # A notification after that, or after a cancellation, finds the future done and is
        # dropped: harmless, as every caller re-arms and looks in storage before waiting again.
        timer = None if timeout is None else fut.get_loop().call_later(timeout, _time_out, fut)
        try:
            return await fut is None
        finally:
            if timer is not None:
                timer.cancel()

    def _fire(self) -> None:
        if not self._future.done():
            self._future.set_result(None)

    def fire(self) -> None:
        """Wake this listener alone, as a notification of its channels would."""
        self._fire()

    def close(self) -> None:
        """Stop listening."""
        self._notifier._remove(self)

    def __enter__(self) -> Listener:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Notifier:
    """Channel -> listeners. Used from the event loop thread only."""

    def __init__(self) -> None:
        self._listeners: dict[str, set[Listener]] = {}
        #: Callables given every notified channel list (the server forwards them to its
        #: clients' event streams); each must be quick and never raise.
        self.taps: list[Callable[[list[str]], None]] = []

    def listen(self, *channels: str) -> Listener:
        """Register a listener on `channels`; use it as a context manager.

        A listener on `"*"` (`ALL`) is woken by every notification, whatever its channels
        (the dashboard's feed uses one to follow every change of the store)."""
        return Listener(self, channels)

    def notify(self, channels: Iterable[str]) -> None:
        """Wake every listener on any of `channels` (`"*"` wakes all)."""
        if self.taps:
            channels = list(channels)
            for tap in self.taps:
                tap(channels)
        listeners = self._listeners
        if not listeners:
            return
        for channel in channels:
            if channel == ALL:
                for members in list(listeners.values()):
                    for listener in list(members):
                        listener._fire()
                return
            group = listeners.get(channel)
            if group:
                for listener in list(group):
                    listener._fire()
        taps = listeners.get(ALL)
        if taps:
            for listener in list(taps):
                listener._fire()

    def wake_all(self) -> None:
        """Wake every listener (used on close and by the safety re-check)."""
        self.notify((ALL,))

    def _add(self, listener: Listener) -> None:
        for channel in listener._channels:
            self._listeners.setdefault(channel, set()).add(listener)

    def _remove(self, listener: Listener) -> None:
        for channel in listener._channels:
            group = self._listeners.get(channel)
            if group is not None:
                group.discard(listener)
                if not group:
                    del self._listeners[channel]
