"""The deadline of the blocking call in progress, for backends that can bound their waits.

A blocking call (`receive`, `request`) sets it, in event-loop time, around each look in
storage (`Wakeups.bounded`); a backend whose operation may wait on a lock (a SQLite file
another process holds) gives up shortly after it instead of after its own, longer timeout.
"""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["CALL_DEADLINE", "DEADLINE_GRACE"]

#: Loop time (`loop.time()`) by which the current call must return; None: no deadline.
CALL_DEADLINE: ContextVar[float | None] = ContextVar("agentcomm_call_deadline", default=None)
#: How long past its deadline an operation already queued may still take before the call
#: gives up on it: the documented margin of a timeout.
DEADLINE_GRACE = 0.5
