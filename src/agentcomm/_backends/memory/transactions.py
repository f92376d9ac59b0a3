"""One hub's link to a memory store: operations under the store's lock, wake-ups for every hub.

Every hub of a named `memory://` store shares its data and its lock. An operation runs under
that lock, so it is atomic like a SQLite transaction, and collects the channels it touched;
they are then notified on every hub attached to the store, each on its own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Callable, Collection
from typing import TypeVar

from ..._notify import Notifier

T = TypeVar("T")


class Transactions:
    """Runs one hub's operations on a store and wakes the hubs attached to it."""

    __slots__ = ("__weakref__", "_loop", "_peers", "lock", "notifier")

    def __init__(
        self, lock: threading.RLock, peers: weakref.WeakSet[Transactions], notifier: Notifier
    ) -> None:
        #: The store's lock; hold it to read consistent state without notifying anything.
        self.lock = lock
        self.notifier = notifier
        self._peers = peers
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self) -> None:
        """Start receiving the store's wake-ups on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._peers.add(self)

    def detach(self) -> None:
        """Stop receiving the store's wake-ups."""
        self._peers.discard(self)

    def run(self, fn: Callable[[set[str]], T]) -> T:
        """Run `fn(touched)` under the store's lock, then notify the channels it added."""
        touched: set[str] = set()
        with self.lock:
            result = fn(touched)
        if touched:
            self.notify(touched)
        return result

    def notify(self, channels: Collection[str]) -> None:
        """Notify `channels` on every hub attached to the store."""
        peers = self._peers
        if len(peers) == 1 and self in peers:  # the hot path: this hub alone
            self.notifier.notify(channels)
            return
        current = self._loop
        for peer in list(peers):
            loop = peer._loop
            if loop is None or loop.is_closed():
                continue
            if loop is current:
                peer.notifier.notify(channels)
            else:
                # RuntimeError: that loop closed after the check; its hub is gone
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(peer.notifier.notify, set(channels))
