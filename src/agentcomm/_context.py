"""The internal context that feature objects (agents, messages, subscriptions, shared memory,
the reference store) are given instead of the whole hub."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from ._backends.contracts import (
    Backend,
    MailboxStore,
    ReferenceStore,
    SharedMemoryStore,
    TopicStore,
)
from ._errors import ConfigurationError, HubClosed
from ._notify import Notifier

__all__ = ["Context"]


class Context:
    """What a hub's feature objects share: its backend, notifier and background tasks."""

    def __init__(self, backend: Backend, url: str) -> None:
        self.backend = backend
        self.url = url
        self.state = "new"
        self.tasks: set[asyncio.Task[Any]] = set()

    @property
    def notifier(self) -> Notifier:
        """The backend's in-process wake-ups."""
        return self.backend.notifier

    @property
    def recheck_interval(self) -> float:
        """Seconds between safety re-checks while waiting."""
        return self.backend.recheck_interval

    def check_open(self) -> Backend:
        """The backend; raises HubClosed unless the hub is open."""
        if self.state != "open":
            raise HubClosed(
                "The hub is closed." if self.state == "closed"
                else "The hub is not open yet: use `async with agentcomm.connect(...)` "
                "or `hub = await agentcomm.connect(...)`."
            )  # fmt: skip
        return self.backend

    def _feature(self, name: str, feature: Any) -> Any:
        if feature is None:
            raise ConfigurationError(
                f"The backend behind {self.url!r} does not implement {name.replace('_', ' ')}; "
                f"it offers: {', '.join(sorted(self.backend.capabilities)) or 'nothing'}."
            )
        return feature

    @property
    def mailboxes(self) -> MailboxStore:
        """The backend's mailboxes (ConfigurationError if it has none)."""
        store: MailboxStore = self._feature("mailboxes", self.backend.mailboxes)
        return store

    @property
    def topics(self) -> TopicStore:
        """The backend's topic log (ConfigurationError if it has none)."""
        store: TopicStore = self._feature("topics", self.backend.topics)
        return store

    @property
    def shared_memory(self) -> SharedMemoryStore:
        """The backend's shared memory (ConfigurationError if it has none)."""
        store: SharedMemoryStore = self._feature("shared_memory", self.backend.shared_memory)
        return store

    @property
    def references(self) -> ReferenceStore:
        """The backend's blob store (ConfigurationError if it has none)."""
        store: ReferenceStore = self._feature("references", self.backend.references)
        return store

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` in the background; the hub waits for it (bounded) when it closes."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
