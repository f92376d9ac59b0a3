"""Presence: the coalesced writes of agents' `last_seen` / `last_active`, and their state.

A hub writes an agent's activity at most once per `Presence.interval`: the first send,
receive or ack after that interval writes it, the others in between only cost a clock read.
A receive waiting for messages refreshes `last_seen` on the same interval (`due`), so an agent
whose process runs but has nothing to do reads "idle", and one whose process stopped "gone".
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from ._errors import AgentCommError
from ._models import AgentInfo, AgentState

if TYPE_CHECKING:
    from ._context import Context

__all__ = ["PresenceTracker", "state_of"]

logger = logging.getLogger("agentcomm")


class PresenceTracker:
    """One hub's record of when it last wrote each agent's presence."""

    __slots__ = ("_ctx", "_written")

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        # agent -> (when last_seen was last written, when last_active was last written)
        self._written: dict[str, tuple[float, float]] = {}

    def attached(self, name: str, now: float) -> None:
        """`hub.agent(name)` wrote `last_seen` just now."""
        _, active_at = self._written.get(name, (-math.inf, -math.inf))
        self._written[name] = (now, active_at)

    def due(self, name: str) -> float:
        """When `name`'s `last_seen` should next be refreshed by a waiting receive."""
        seen_at, _ = self._written.get(name, (-math.inf, -math.inf))
        return seen_at + self._ctx.settings.presence.interval

    async def note(self, name: str, *, active: bool) -> None:
        """Record that `name` was seen (and with `active`, did work) now; written only if
        the last write is at least `Presence.interval` old. A failed write is not raised:
        presence must never fail the operation it records."""
        ctx = self._ctx
        now = ctx.now()
        interval = ctx.settings.presence.interval
        seen_at, active_at = self._written.get(name, (-math.inf, -math.inf))
        write_active = active and now - active_at >= interval
        if not write_active and now - seen_at < interval:
            return
        self._written[name] = (now, now if write_active else active_at)
        if ctx.state != "open":
            return
        try:
            await ctx.mailboxes.touch_agent(name, seen=now, active=now if write_active else None)
        except AgentCommError as exc:  # the next write carries it
            logger.debug("agentcomm: could not record presence of %r: %s", name, exc)


def state_of(info: AgentInfo, now: float, active: float, gone: float) -> AgentState:
    """`info`'s state at `now` by the thresholds `active` and `gone` (seconds)."""
    if now - info.last_seen >= gone:
        return "gone"
    if info.last_active is not None and now - info.last_active <= active:
        return "active"
    return "idle"
