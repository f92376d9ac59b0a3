"""The internal context that feature objects (agents, messages, subscriptions, shared memory,
the reference store) are given instead of the whole hub.

It carries what they share: the backend (reached per feature: `ctx.mailboxes`, `ctx.topics`,
`ctx.shared_memory`, `ctx.references`), the clock, the notifier, the hub's settings, the
reference holder, the topic bus and the registry of background tasks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Literal

from ._backends.contracts import (
    Backend,
    LeaseStore,
    MailboxStore,
    PoolStore,
    ReferenceStore,
    SharedMemoryStore,
    TopicStore,
)
from ._errors import ConfigurationError, HubClosed, WrongEventLoop
from ._leases import LeaseBook
from ._notify import Notifier
from ._presence import PresenceTracker
from ._settings import HubSettings
from ._tasks import TaskRegistry
from ._waiting import Wakeups

if TYPE_CHECKING:
    from ._holds import RefHolder
    from ._topic_bus import TopicBus

__all__ = ["Clock", "Context"]

#: A wall clock: a zero-argument callable returning epoch seconds (`time.time`).
Clock = Callable[[], float]


class Context:
    """What a hub's feature objects share. The hub makes one and fills in `refs` and `bus`."""

    refs: RefHolder
    bus: TopicBus

    def __init__(self, backend: Backend, url: str, settings: HubSettings, clock: Clock) -> None:
        self.backend = backend
        self.url = url
        self.settings = settings
        #: Wall time (epoch seconds); the feature layer reads the time only through it.
        self.now = clock
        self.state: Literal["new", "open", "closed"] = "new"
        #: The event loop the hub was opened in; every call must come from it.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tasks = TaskRegistry()
        #: Per-namespace counters this hub keeps for `SharedMemory.stats()` (reads, watchers).
        self.kv_local: dict[Any, Any] = {}
        #: The deliveries received through this hub and not settled yet (released at close).
        self.leases = LeaseBook()
        #: The coalesced writes of agents' last_seen / last_active.
        self.presence = PresenceTracker(self)

    @property
    def notifier(self) -> Notifier:
        """The backend's in-process wake-ups."""
        return self.backend.notifier

    @property
    def recheck_interval(self) -> float:
        """Seconds between safety re-checks while waiting."""
        return self.backend.recheck_interval

    @property
    def closed(self) -> bool:
        """Whether the hub was closed."""
        return self.state == "closed"

    def check_open(self) -> Backend:
        """The backend; raises HubClosed unless the hub is open."""
        if self.state != "open":
            raise HubClosed(
                "The hub is closed." if self.state == "closed"
                else "The hub is not open yet: use `async with agentcomm.connect(...)` "
                "or `hub = await agentcomm.connect(...)`."
            )  # fmt: skip
        self.check_loop()
        return self.backend

    def check_loop(self) -> None:
        """Raise WrongEventLoop when called from another event loop than the hub's."""
        running = asyncio.events._get_running_loop()
        if running is not None and running is not self.loop and self.loop is not None:
            raise WrongEventLoop(
                "This hub was opened in another event loop, which has ended or is not this "
                "one (each asyncio.run() makes a new loop, and a hub belongs to the loop that "
                "opened it). Open a hub inside each asyncio.run() with `async with "
                "agentcomm.connect(url) as hub:`, or use the blocking "
                "`agentcomm.sync.connect(url)`, whose hub keeps its own loop."
            )

    def wakeups(
        self, *channels: str, timeout: float | None = None, recheck: float | None = None
    ) -> Wakeups:
        """The wait loop helper of a blocking call on `channels` (see `Wakeups`)."""
        return Wakeups(
            self.notifier, channels, clock=self.now, timeout=timeout,
            recheck=self.recheck_interval if recheck is None else recheck,
        )  # fmt: skip

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

    @property
    def pools(self) -> PoolStore:
        """The backend's agent pools (ConfigurationError if it has none)."""
        store: PoolStore = self._feature("pools", self.backend.pools)
        return store

    @property
    def lease_store(self) -> LeaseStore:
        """The backend's coordination leases (ConfigurationError if it has none)."""
        store: LeaseStore = self._feature("leases", self.backend.leases)
        return store

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` in the background; the hub waits for it (bounded) when it closes."""
        return self.tasks.spawn(coro)
