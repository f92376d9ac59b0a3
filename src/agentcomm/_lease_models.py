"""The views of coordination leases that `hub.leases` returns (re-exported by `agentcomm`)."""

from __future__ import annotations

import msgspec

__all__ = ["Lease", "LeaseConflict", "LeaseResult", "LeaseWant"]


class Lease(msgspec.Struct, frozen=True):
    """A coordination lease: `owner` holds the files matching `pattern` until `expires_at`.

    `exclusive`: no other owner may hold an overlapping pattern; a shared lease (False)
    coexists with other shared ones. `reason` is what the owner said it is doing.
    """

    id: str
    owner: str
    pattern: str
    exclusive: bool
    reason: str | None
    acquired_at: float
    expires_at: float


class LeaseConflict(msgspec.Struct, frozen=True):
    """Why a requested `pattern` was not granted: `lease`, held by another owner, overlaps it
    and one of the two is exclusive."""

    pattern: str
    lease: Lease

    @property
    def holder(self) -> str:
        """The owner of the conflicting lease."""
        return self.lease.owner


class LeaseResult(msgspec.Struct, frozen=True):
    """What `Leases.acquire` did: the leases granted (or renewed) and the conflicts found."""

    granted: list[Lease]
    conflicts: list[LeaseConflict]

    @property
    def ok(self) -> bool:
        """Whether every requested pattern was granted (no conflict)."""
        return not self.conflicts


class LeaseWant(msgspec.Struct, frozen=True, array_like=True):
    """One pattern asked for (internal: what the feature layer hands the backend)."""

    id: str
    pattern: str
    exclusive: bool
