"""Coordination leases: `/v1/agents/{agent}/leases...` (the agent holds them) and
`/v1/leases` (who holds what).

Lease patterns are file globs (`src/api/*.py`) and contain `/`, so they travel in bodies and
query strings, not in paths. Taking a lease needs the token to act as its owner and a
`leases` grant covering each pattern (`authz.need_lease`); renewing and releasing touch only
the owner's own leases, so acting as the owner suffices.
"""

from __future__ import annotations

import msgspec

from .._coord_leases import _patterns
from .._lease_models import Lease, LeaseResult
from .._validation import check_name
from . import authz
from .api import Call, route

TAG = "leases"


class AcquireBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Leases to take: file globs, held `ttl` seconds, exclusive or shared; all or nothing
    unless `partial`."""

    patterns: list[str]
    ttl: float = 3600.0
    exclusive: bool = True
    reason: str | None = None
    partial: bool = False


class RenewBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Leases to extend to `ttl` seconds from now: those on `patterns` or with these lease
    ids (omitted: all of the agent's)."""

    patterns: list[str] | None = None
    ttl: float = 3600.0


class ReleaseBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Leases to release: those on `patterns` or with these lease ids (omitted: all)."""

    patterns: list[str] | None = None


class LeaseList(msgspec.Struct):
    """Leases, by owner then pattern."""

    leases: list[Lease]


def _owner(call: Call) -> str:
    owner = check_name("agent name", call.path("agent"))
    authz.need_act_as(call.principal, owner, "hold leases as")
    return owner


@route("POST", "/v1/agents/{agent}/leases", summary="Take leases on file globs (the "
       "conflicts name the other holders)", tag=TAG, body=AcquireBody,
       response=LeaseResult)  # fmt: skip
async def acquire(call: Call) -> LeaseResult:
    owner = _owner(call)
    b: AcquireBody = call.body
    patterns = _patterns(b.patterns)
    for pattern in patterns:
        authz.need_lease(call.principal, pattern)
    return await call.server.hub.leases.acquire(
        owner, patterns, ttl=b.ttl, exclusive=b.exclusive, reason=b.reason, partial=b.partial
    )


@route("POST", "/v1/agents/{agent}/leases/renew", summary="Extend the agent's live leases",
       tag=TAG, body=RenewBody, response=LeaseList)  # fmt: skip
async def renew(call: Call) -> LeaseList:
    owner = _owner(call)
    b: RenewBody = call.body
    return LeaseList(await call.server.hub.leases.renew(owner, b.patterns, ttl=b.ttl))


@route("POST", "/v1/agents/{agent}/leases/release", summary="Release the agent's leases",
       tag=TAG, body=ReleaseBody, response=LeaseList)  # fmt: skip
async def release(call: Call) -> LeaseList:
    owner = _owner(call)
    return LeaseList(await call.server.hub.leases.release(owner, call.body.patterns))


@route("GET", "/v1/leases", summary="The live leases the token may see (its agents' and "
       "those its lease grants cover; all for admin)", tag=TAG, response=LeaseList,
       query=[("owner", "string", "Only this owner's."),
              ("overlapping", "string", "Only those overlapping this glob or path.")])  # fmt: skip
async def list_leases(call: Call) -> LeaseList:
    p = call.principal
    leases = await call.server.hub.leases.list(owner=call.query("owner"),
                                               overlapping=call.query("overlapping"))  # fmt: skip
    return LeaseList([x for x in leases if authz.may_see_lease(p, x.owner, x.pattern)])
