"""The rules of coordination leases, written once over a snapshot of the stored leases.

Each operation takes every stored lease and returns its result with the changes to store
(`LeaseChanges`: ids to delete, leases to write). The memory and SQLite backends run it inside
one transaction; Redis reads a snapshot with its version and commits the changes in one script
call that first checks the version is unchanged (else it reads again), so every operation is
atomic against every other hub and process.

Rules: a lease whose `expires_at` is not after `now` is gone (each operation deletes the
expired ones it sees). A wanted pattern conflicts with a live lease of *another* owner when
the patterns overlap (`_globs.overlaps`) and either is exclusive. An owner's lease on the same
pattern is updated in place (mode, reason, expiry; id and `acquired_at` kept).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from .._globs import overlaps
from .._lease_models import Lease, LeaseConflict, LeaseResult, LeaseWant

__all__ = ["LEASES_CHANNEL", "LeaseChanges", "acquire", "alive", "release", "renew"]

#: The channel notified after leases change.
LEASES_CHANNEL = "leases"


class LeaseChanges(NamedTuple):
    """What an operation stores: lease ids to delete, leases to write (insert or replace)."""

    delete: list[str]
    put: list[Lease]

    @property
    def empty(self) -> bool:
        """Whether nothing changes."""
        return not self.delete and not self.put


def alive(records: Iterable[Lease], now: float) -> list[Lease]:
    """The leases not expired at `now`, by owner, then pattern."""
    return sorted((r for r in records if r.expires_at > now), key=lambda r: (r.owner, r.pattern))


def _expired(records: Iterable[Lease], now: float) -> list[str]:
    return [r.id for r in records if r.expires_at <= now]


def acquire(
    records: Sequence[Lease],
    owner: str,
    wants: Sequence[LeaseWant],
    *,
    ttl: float,
    reason: str | None,
    partial: bool,
    now: float,
) -> tuple[LeaseResult, LeaseChanges]:
    """Grant `wants` to `owner` unless they conflict; with `partial`, grant those that do not
    (else none when any does)."""
    live = alive(records, now)
    mine = {r.pattern: r for r in live if r.owner == owner}
    others = [r for r in live if r.owner != owner]
    conflicts: list[LeaseConflict] = []
    grantable: list[LeaseWant] = []
    for want in wants:
        found = [
            LeaseConflict(want.pattern, r)
            for r in others
            if (want.exclusive or r.exclusive) and overlaps(want.pattern, r.pattern)
        ]
        conflicts.extend(found)
        if not found:
            grantable.append(want)
    if conflicts and not partial:
        grantable = []
    granted = []
    for want in grantable:
        old = mine.get(want.pattern)
        granted.append(
            Lease(
                id=want.id if old is None else old.id,
                owner=owner,
                pattern=want.pattern,
                exclusive=want.exclusive,
                reason=reason,
                acquired_at=now if old is None else old.acquired_at,
                expires_at=now + ttl,
            )
        )
    return LeaseResult(granted, conflicts), LeaseChanges(_expired(records, now), granted)


def _selected(lease: Lease, owner: str, selectors: frozenset[str] | None) -> bool:
    if lease.owner != owner:
        return False
    return selectors is None or lease.pattern in selectors or lease.id in selectors


def renew(
    records: Sequence[Lease],
    owner: str,
    selectors: frozenset[str] | None,
    *,
    ttl: float,
    now: float,
) -> tuple[list[Lease], LeaseChanges]:
    """Move the expiry of `owner`'s live leases (all, or those whose pattern or id is in
    `selectors`) to `now + ttl`."""
    renewed = [
        Lease(r.id, r.owner, r.pattern, r.exclusive, r.reason, r.acquired_at, now + ttl)
        for r in alive(records, now)
        if _selected(r, owner, selectors)
    ]
    return renewed, LeaseChanges(_expired(records, now), renewed)


def release(
    records: Sequence[Lease], owner: str, selectors: frozenset[str] | None, *, now: float
) -> tuple[list[Lease], LeaseChanges]:
    """Delete `owner`'s live leases (all, or those whose pattern or id is in `selectors`)."""
    released = [r for r in alive(records, now) if _selected(r, owner, selectors)]
    return released, LeaseChanges(_expired(records, now) + [r.id for r in released], [])
