"""Coordination leases in memory: the `lease_engine` rules applied under the store's lock."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from ..._lease_models import Lease, LeaseResult, LeaseWant
from .. import lease_engine
from ..contracts import LeaseStore
from .transactions import Transactions

T = TypeVar("T")


class LeaseState:
    """The leases of one memory store, by id."""

    def __init__(self) -> None:
        self.leases: dict[str, Lease] = {}


class MemoryLeases(LeaseStore):
    """Coordination leases in memory."""

    def __init__(self, state: LeaseState, txn: Transactions) -> None:
        self._state = state
        self._txn = txn

    def _apply(self, decide: Callable[[list[Lease]], tuple[T, lease_engine.LeaseChanges]]) -> T:
        def op(touched: set[str]) -> T:
            leases = self._state.leases
            result, changes = decide(list(leases.values()))
            for lease_id in changes.delete:
                leases.pop(lease_id, None)
            for lease in changes.put:
                leases[lease.id] = lease
            if not changes.empty:
                touched.add(lease_engine.LEASES_CHANNEL)
            return result

        return self._txn.run(op)

    async def lease_acquire(
        self,
        owner: str,
        wants: Sequence[LeaseWant],
        *,
        ttl: float,
        reason: str | None,
        partial: bool,
        now: float,
    ) -> LeaseResult:
        return self._apply(
            lambda records: lease_engine.acquire(
                records, owner, wants, ttl=ttl, reason=reason, partial=partial, now=now
            )
        )

    async def lease_renew(
        self, owner: str, selectors: frozenset[str] | None, *, ttl: float, now: float
    ) -> list[Lease]:
        return self._apply(
            lambda records: lease_engine.renew(records, owner, selectors, ttl=ttl, now=now)
        )

    async def lease_release(
        self, owner: str, selectors: frozenset[str] | None, *, now: float
    ) -> list[Lease]:
        return self._apply(lambda records: lease_engine.release(records, owner, selectors, now=now))

    async def lease_list(self, *, now: float) -> list[Lease]:
        with self._txn.lock:
            records = list(self._state.leases.values())
        return lease_engine.alive(records, now)
