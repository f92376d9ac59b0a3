"""Every permission check of the server, in one place.

A token names a `Principal`: the agents it may act as (exact names or globs), the topic
patterns it may publish and subscribe within, the shared-memory namespaces it may read (`r`)
or read and write (`rw`), the pools it may join and act in, the file globs it may take
coordination leases on, and `admin` (inspect, redrive, purge, tokens). A check either
returns or raises `PermissionDenied`, naming what the token lacks. The routes of the JSON
API, the store calls of the Python client and the MCP tools at `/mcp` (`ToolChecks`) call
these functions before they touch the store; nothing else decides who may do what.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Literal

import msgspec

from .._backends.common import DEAD_TOPIC_PREFIX
from .._errors import PermissionDenied, ValidationError
from .._kv_records import Space
from .._subjects import parse_pattern, parse_topic

__all__ = [
    "RESERVED_NAMESPACE",
    "Principal",
    "ToolChecks",
    "may_see_agent",
    "may_see_lease",
    "may_subscribe_topic",
    "need_act_as",
    "need_admin",
    "need_kv",
    "need_lease",
    "need_pool",
    "need_publish",
    "need_subscribe",
    "notification_visible",
    "pattern_covers",
]

#: The shared-memory namespace the server keeps its tokens and secrets in. Its name is not a
#: valid namespace name, so no hub can open it, and every check below refuses it.
RESERVED_NAMESPACE = "#agentcomm-server"

Access = Literal["r", "rw"]


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """What one token may do (see the module docstring)."""

    #: Agent names or globs (`worker-*`) the token may act as.
    agents: list[str] = []
    #: Topic patterns (`workflow.>`) the token may publish within.
    publish: list[str] = []
    #: Topic patterns the token may subscribe within (live and durable).
    subscribe: list[str] = []
    #: Shared namespace (or glob) -> "r" or "rw".
    kv: dict[str, str] = {}
    #: Pool names or globs the token may open, join and act in.
    pools: list[str] = []
    #: Globs over the text of the file patterns the token may take coordination leases on
    #: (`src/api/*` allows `src/api/users.py` and `src/api/**`); its agents hold them.
    leases: list[str] = []
    #: Inspect every agent, redrive and purge dead letters, manage tokens.
    admin: bool = False

    def acts_as(self, agent: str) -> bool:
        """Whether the token may act as `agent`."""
        return any(fnmatchcase(agent, glob) for glob in self.agents)


def check_principal(p: Principal) -> Principal:
    """Validate a principal's patterns before a token is stored (ValidationError)."""
    for pattern in (*p.publish, *p.subscribe):
        parse_pattern(pattern)
    for ns, access in p.kv.items():
        if access not in ("r", "rw"):
            raise ValidationError(f"kv access for {ns!r} must be 'r' or 'rw', not {access!r}.")
    for glob in (*p.agents, *p.pools, *p.leases, *p.kv):
        if not glob or len(glob) > 256:
            raise ValidationError(f"A token pattern must be 1-256 characters, not {glob!r}.")
    return p


def _deny(message: str) -> PermissionDenied:
    return PermissionDenied(message)


def need_admin(p: Principal, what: str) -> None:
    """Admin-only operations: inspection of other agents, redrive, purge, tokens."""
    if not p.admin:
        raise _deny(f"{what} needs an admin token (agentcomm token create --admin).")


def need_act_as(p: Principal, agent: str, what: str = "act as") -> None:
    """Sending as, receiving for, settling and replying for `agent`."""
    if not p.acts_as(agent):
        raise _deny(
            f"This token may not {what} agent {agent!r}; it acts as "
            f"{', '.join(p.agents) or 'no agent'} (token create --agent NAME)."
        )


def may_see_agent(p: Principal, agent: str) -> bool:
    """Whether an agent (its name and presence) may be shown to the token: its own agents,
    every agent for an admin."""
    return p.admin or p.acts_as(agent)


def need_any_act_as(p: Principal, agents: Iterable[str], what: str) -> None:
    """Every one of `agents` must be the token's."""
    for agent in agents:
        need_act_as(p, agent, what)


def _topic_matches(topic: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    for i, token in enumerate(pattern):
        if token == ">":
            return len(topic) > i
        if i >= len(topic) or (token != "*" and token != topic[i]):
            return False
    return len(topic) == len(pattern)


def pattern_covers(outer: tuple[str, ...], inner: tuple[str, ...]) -> bool:
    """Whether every topic matching pattern `inner` also matches pattern `outer`."""
    for i, token in enumerate(outer):
        if token == ">":
            return len(inner) > i
        if i >= len(inner) or inner[i] == ">":
            return False
        if token != "*" and (inner[i] == "*" or inner[i] != token):
            return False
    return len(inner) == len(outer)


def need_publish(p: Principal, topic: str) -> None:
    """Publishing to `topic` (reserved `$agentcomm.` topics are never allowed)."""
    tokens = parse_topic(topic)
    if not topic.startswith("$agentcomm.") and any(
        _topic_matches(tokens, parse_pattern(pat)) for pat in p.publish
    ):
        return
    raise _deny(
        f"This token may not publish to {topic!r}; it publishes within "
        f"{', '.join(p.publish) or 'no pattern'} (token create --publish PATTERN)."
    )


def _own_dead_topic(p: Principal, tokens: tuple[str, ...]) -> bool:
    prefix = tuple(DEAD_TOPIC_PREFIX.rstrip(".").split("."))
    return (
        len(tokens) == len(prefix) + 1 and tokens[: len(prefix)] == prefix and p.acts_as(tokens[-1])
    )


def need_subscribe(p: Principal, pattern: str) -> None:
    """Subscribing (live or durable) with `pattern`: it must lie within a subscribe pattern
    of the token; the dead-letter notices of the token's own agents are always allowed."""
    tokens = parse_pattern(pattern)
    if _own_dead_topic(p, tokens) or any(
        pattern_covers(parse_pattern(pat), tokens) for pat in p.subscribe
    ):
        return
    raise _deny(
        f"This token may not subscribe to {pattern!r}; it subscribes within "
        f"{', '.join(p.subscribe) or 'no pattern'} (token create --subscribe PATTERN)."
    )


def may_subscribe_topic(p: Principal, topic: str) -> bool:
    """Whether a record published to `topic` may be shown to the token."""
    tokens = tuple(topic.split("."))
    return _own_dead_topic(p, tokens) or any(
        _topic_matches(tokens, parse_pattern(pat)) for pat in p.subscribe
    )


def kv_access(p: Principal, space: Space) -> Access | None:
    """The token's access to a shared-memory space: its own agents' private spaces rw, the
    namespaces its token names as given, the reserved namespace never."""
    if space.owner:
        return "rw" if p.acts_as(space.owner) else None
    if space.namespace == RESERVED_NAMESPACE:
        return None
    best: Access | None = None
    for glob, access in p.kv.items():
        if fnmatchcase(space.namespace, glob):
            if access == "rw":
                return "rw"
            best = "r"
    return best


def need_kv(p: Principal, space: Space, write: bool) -> None:
    """Reading (`write` False) or writing a shared-memory space."""
    got = kv_access(p, space)
    if got == "rw" or (got == "r" and not write):
        return
    where = (
        f"agent {space.owner!r}'s private memory"
        if space.owner
        else (f"namespace {space.namespace!r}")
    )
    raise _deny(
        f"This token may not {'write' if write else 'read'} {where} "
        f"(token create --kv 'NAMESPACE:{'rw' if write else 'r'}')."
    )


def need_pool(p: Principal, pool: str) -> None:
    """Opening, joining and acting in pool `pool`."""
    if not any(fnmatchcase(pool, glob) for glob in p.pools):
        raise _deny(
            f"This token may not use pool {pool!r}; it may use "
            f"{', '.join(p.pools) or 'no pool'} (token create --pool GLOB)."
        )


def may_see_lease(p: Principal, owner: str, pattern: str) -> bool:
    """Whether a lease (its owner, pattern and reason) may be shown to the token."""
    return p.admin or p.acts_as(owner) or any(fnmatchcase(pattern, g) for g in p.leases)


def need_lease(p: Principal, pattern: str) -> None:
    """Taking a coordination lease on the file glob `pattern` (normalized).

    The token's `leases` globs are matched against the pattern's text with `fnmatch`, where
    `*` also matches `/` and glob characters: grant `src/api/*` covers every pattern written
    under `src/api/` (`src/api/**` too), and `*` every pattern."""
    if not any(fnmatchcase(pattern, glob) for glob in p.leases):
        raise _deny(
            f"This token may not take leases on {pattern!r}; it may lease "
            f"{', '.join(p.leases) or 'no pattern'} (token create --lease GLOB)."
        )


class ToolChecks:
    """The checks of the MCP tools served at `/mcp`, for one token (`agentcomm._mcp.Checks`).

    Each tool calls the check of its operation before it touches the store, so a tool allows
    what the `/v1` route of the same operation allows: shared memory by `kv` grant (`r` to
    read, `rw` to write), topics by `publish` / `subscribe` pattern, file reservations by
    `leases` grant, and listings of agents and leases filtered as `/v1/agents` and
    `/v1/leases` filter them. Acting as the one agent is checked when the token is resolved
    (`mounts.agent_of`); the rest of the tools touch only that agent's own mailbox, dead
    letters and leases.
    """

    def __init__(self, principal: Principal) -> None:
        self.principal = principal

    def read_memory(self, namespace: str) -> None:
        """Reading a shared namespace (`--kv NAMESPACE:r`)."""
        need_kv(self.principal, Space("", namespace), write=False)

    def write_memory(self, namespace: str) -> None:
        """Writing or deleting in a shared namespace (`--kv NAMESPACE:rw`)."""
        need_kv(self.principal, Space("", namespace), write=True)

    def publish(self, topic: str) -> None:
        """Publishing to `topic` (`--publish`)."""
        need_publish(self.principal, topic)

    def subscribe(self, pattern: str) -> None:
        """Reading topics matching `pattern` with a durable cursor (`--subscribe`)."""
        need_subscribe(self.principal, pattern)

    def take_leases(self, patterns: Iterable[str]) -> None:
        """Reserving every one of the (normalized) file `patterns` (`--lease`)."""
        for pattern in patterns:
            need_lease(self.principal, pattern)

    def sees_agent(self, agent: str) -> bool:
        """Whether `agent` is listed (and reached by a broadcast) for this token."""
        return may_see_agent(self.principal, agent)

    def sees_lease(self, owner: str, pattern: str) -> bool:
        """Whether a reservation is listed for this token."""
        return may_see_lease(self.principal, owner, pattern)


def notification_visible(p: Principal, channel: str, kv_channels: Mapping[str, Space]) -> bool:
    """Whether a wake-up on `channel` may be forwarded to the token's event stream.

    Wake-ups carry no data, only the channel name; mailbox, memory and pool channels are
    shown only to tokens that may use them."""
    kind, _, rest = channel.partition(":")
    if kind == "mail":
        return p.acts_as(rest)
    if kind == "kv":
        space = kv_channels.get(channel)
        if space is None:
            owner, _, namespace = rest.partition("/")
            space = Space(owner, namespace)
        return kv_access(p, space) is not None
    if kind == "pool":
        return any(fnmatchcase(rest, glob) for glob in p.pools)
    return True
