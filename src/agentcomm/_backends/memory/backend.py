"""The in-memory backend's core: the store, the registry of named stores, open / close / prune.

`memory://` gives a private store; `memory://<name>` a store shared by every hub of the process
that uses the same name (for as long as one of them is open). A store holds one state object
per feature; each hub's backend composes one feature object per feature over them.
"""

from __future__ import annotations

import threading
import weakref

import msgspec

from ..._models import HubStats, PruneReport
from ..._notify import Notifier
from ..._settings import Retention
from ..contracts import Backend
from .leases import LeaseState, MemoryLeases
from .mailbox import MailboxState, MemoryMailboxes
from .pools import MemoryPools, PoolState
from .references import MemoryReferences, RefHolds, RefTable
from .shared_memory import MemorySharedMemory, SharedMemoryState
from .topics import MemoryTopics, TopicState
from .transactions import Transactions


class MemoryStore:
    """The shared state behind one or more memory backends: a lock and one state per feature."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        #: The links of the hubs attached to this store, woken after each change.
        self.hubs: weakref.WeakSet[Transactions] = weakref.WeakSet()
        self.mailboxes = MailboxState()
        self.topics = TopicState()
        self.shared_memory = SharedMemoryState()
        self.references = RefTable()
        self.pools = PoolState()
        self.leases = LeaseState()


_named_stores: weakref.WeakValueDictionary[str, MemoryStore] = weakref.WeakValueDictionary()
_named_lock = threading.Lock()


def _store_for(name: str) -> MemoryStore:
    if not name:
        return MemoryStore()
    with _named_lock:
        store = _named_stores.get(name)
        if store is None:
            store = MemoryStore()
            _named_stores[name] = store
        return store


class MemoryBackend(Backend):
    """Implements the backend contract in memory."""

    recheck_interval = 3600.0  # every change notifies every hub of the store directly

    mailboxes: MemoryMailboxes
    topics: MemoryTopics
    shared_memory: MemorySharedMemory
    references: MemoryReferences
    pools: MemoryPools
    leases: MemoryLeases

    def __init__(self, name: str, retention: Retention) -> None:
        self.retention = retention
        self.notifier = Notifier()
        # the registry holds named stores weakly: each backend keeps its store alive
        self._store = store = _store_for(name)
        self._txn = txn = Transactions(store.lock, store.hubs, self.notifier)
        holds = RefHolds(store.references)
        self.mailboxes = MemoryMailboxes(store.mailboxes, txn, holds, retention)
        self.topics = MemoryTopics(store.topics, txn, holds, retention)
        self.mailboxes.announce = self.topics.append  # dead-letter notices
        self.shared_memory = MemorySharedMemory(store.shared_memory, txn, holds)
        self.references = MemoryReferences(store.references, txn)
        self.pools = MemoryPools(store.pools, txn, self.mailboxes, retention)
        self.leases = MemoryLeases(store.leases, txn)

    async def open(self) -> None:
        self._txn.attach()
        self.references.use_strategy(self.ref_gc_strategy)

    async def close(self) -> None:
        self._txn.detach()
        self.notifier.wake_all()

    async def prune(self, now: float) -> PruneReport:
        def op(touched: set[str]) -> PruneReport:
            report = self.mailboxes.prune_step(now, touched)
            topic_records = self.topics.prune_step(now)
            self.shared_memory.prune_step(now, touched)
            pool_records = self.pools.prune_step(now)
            return msgspec.structs.replace(
                report, pruned_topic_records=topic_records, pruned_pool_records=pool_records
            )

        return self._txn.run(op)

    async def stats(self) -> HubStats:
        return self.mailboxes.hub_stats()
