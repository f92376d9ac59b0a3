"""The deadline of the blocking call in progress, for backends that can bound their waits.

A blocking call with a timeout (`receive`, `request`, a durable `next`) sets it, in event-loop
time, for as long as it runs (`Wakeups`, used as a context manager around the call's loop).
A backend bounds its waits by it: SQLite gives up on an operation still waiting for a lock
another process holds shortly after it, and Redis bounds each round trip by it.
"""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["CALL_DEADLINE", "DEADLINE_GRACE"]

#: Loop time (`loop.time()`) by which the current call must return; None: no deadline.
CALL_DEADLINE: ContextVar[float | None] = ContextVar("agentcomm_call_deadline", default=None)
#: How long past its deadline an operation already queued may still take before the call
#: gives up on it: the documented margin of a timeout.
DEADLINE_GRACE = 0.5
