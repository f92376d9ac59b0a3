"""Inspection and repair (`/v1/admin/...`, admin tokens only), tokens, and who-am-I."""

from __future__ import annotations

import msgspec

from .._validation import check_name
from . import authz
from .api import Call, route
from .schemas import (
    Count,
    DeadLetter,
    DeadLetterList,
    HubStats,
    Ok,
    PurgeBody,
    Purged,
    QueueList,
    RedriveBody,
    TokenBody,
    TokenList,
    TokenOut,
    WhoAmI,
)
from .tokens import TokenInfo

TAG = "admin"


@route("GET", "/v1/whoami", summary="The calling token's id and permissions", tag="tokens",
       response=WhoAmI)  # fmt: skip
async def whoami(call: Call) -> WhoAmI:
    t = call.token
    return WhoAmI(id=t.id, label=t.label, principal=t.principal)


@route("GET", "/v1/admin/stats", summary="The store's event counters", tag=TAG,
       response=HubStats)  # fmt: skip
async def stats(call: Call) -> HubStats:
    authz.need_admin(call.principal, "Reading the store's stats")
    return await call.server.hub.stats()


@route("GET", "/v1/admin/queues", summary="Every agent's mailbox counts (queue depths)",
       tag=TAG, response=QueueList)  # fmt: skip
async def queues(call: Call) -> QueueList:
    authz.need_admin(call.principal, "Listing queue depths")
    hub = call.server.hub
    return QueueList([await hub.mailbox_stats(a.name) for a in await hub.agents()])


@route("GET", "/v1/admin/agents/{agent}/dead-letters", summary="An agent's dead letters",
       tag=TAG, response=DeadLetterList,
       query=[("limit", "integer", "At most this many (default 100).")])  # fmt: skip
async def dead_letters(call: Call) -> DeadLetterList:
    authz.need_admin(call.principal, "Listing dead letters")
    limit = int(call.query_float("limit", 100))
    agent = check_name("agent name", call.path("agent"))
    letters = await call.server.hub.dead_letters(agent, limit=limit)
    return DeadLetterList([DeadLetter(**msgspec.structs.asdict(d)) for d in letters])


@route("POST", "/v1/admin/agents/{agent}/dead-letters/redrive",
       summary="Deliver dead letters again", tag=TAG, body=RedriveBody,
       response=Count)  # fmt: skip
async def redrive(call: Call) -> Count:
    authz.need_admin(call.principal, "Redriving dead letters")
    agent = check_name("agent name", call.path("agent"))
    return Count(await call.server.hub.requeue_dead_letters(agent, call.body.ids))


@route("POST", "/v1/admin/agents/{agent}/purge",
       summary="Remove every ready, delayed and in-flight message of an agent (with "
       "dead_letters: its dead letters too); cannot be undone", tag=TAG, body=PurgeBody,
       response=Purged)  # fmt: skip
async def purge(call: Call) -> Purged:
    authz.need_admin(call.principal, "Purging a mailbox")
    agent = check_name("agent name", call.path("agent"))
    removed = await call.server.hub.purge(agent, dead_letters=call.body.dead_letters)
    return Purged(agent=agent, removed=removed)


@route("POST", "/v1/admin/prune", summary="Run a retention pass now", tag=TAG, response=Ok)
async def prune(call: Call) -> Ok:
    authz.need_admin(call.principal, "Pruning")
    await call.server.hub.prune()
    return Ok()


def _out(info: TokenInfo, token: str | None = None) -> TokenOut:
    return TokenOut(
        id=info.id, label=info.label, principal=info.principal, created_at=info.created_at,
        token=token,
    )  # fmt: skip


@route("POST", "/v1/admin/tokens", summary="Create a token (its secret is shown once)",
       tag="tokens", body=TokenBody, response=TokenOut)  # fmt: skip
async def create_token(call: Call) -> TokenOut:
    authz.need_admin(call.principal, "Creating tokens")
    b: TokenBody = call.body
    token, info = await call.server.tokens.create(b.principal, b.label)
    return _out(info, token)


@route("GET", "/v1/admin/tokens", summary="List tokens (without secrets)", tag="tokens",
       response=TokenList)  # fmt: skip
async def list_tokens(call: Call) -> TokenList:
    authz.need_admin(call.principal, "Listing tokens")
    return TokenList([_out(i) for i in await call.server.tokens.list()])


@route("DELETE", "/v1/admin/tokens/{token_id}", summary="Revoke a token at once",
       tag="tokens", response=Ok)  # fmt: skip
async def revoke_token(call: Call) -> Ok:
    authz.need_admin(call.principal, "Revoking tokens")
    await call.server.tokens.revoke(call.path("token_id"))
    return Ok()
