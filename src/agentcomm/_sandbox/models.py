"""The public views of the sandbox channel: statuses, reports, messages of each side."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = [
    "ActionResult",
    "CatchUp",
    "InboundMessage",
    "State",
    "Status",
    "SweepReport",
]

State = Literal["pending", "processing", "completed", "failed", "paused", "cancelled"]
CatchUp = Literal["once", "skip"]


class Status(msgspec.Struct, frozen=True, kw_only=True):
    """Where a message the host sent stands, as the host sees it.

    `state`: `pending` (waiting to be claimed, or waiting for a retry), `processing` (claimed by
    the sandbox), `completed`, `failed` (`reason` says why), `paused` (a paused recurring
    task), `cancelled` (a cancelled recurring task). `tries`: how many times the sandbox has
    claimed it.
    """

    id: str
    state: State
    tries: int
    reason: str | None = None
    series_id: str | None = None
    process_after: float = 0.0


class SweepReport(msgspec.Struct, frozen=True, kw_only=True):
    """What one sweep did and saw.

    `retried`: ids whose stale claim was given back for another try (with backoff);
    `failed`: ids given up on after `max_tries` (their status says why); `rescheduled`: next
    occurrences of recurring tasks scheduled because an occurrence finished or failed;
    `alive`: whether the sandbox's heartbeat is younger than `stale_after`;
    `heartbeat_age`: seconds since its last heartbeat (None: never seen);
    `due_while_down`: messages due now that no live sandbox will pick up (the host's cue to
    start the sandbox; 0 while it is alive).
    """

    retried: list[str]
    failed: list[str]
    rescheduled: list[str]
    alive: bool
    heartbeat_age: float | None
    due_while_down: int


class ActionResult(msgspec.Struct, frozen=True, kw_only=True):
    """The host's answer to `box.request_action`: `status` is `applied` (with the handler's
    `result`) or `rejected` (with the `reason`)."""

    status: Literal["applied", "rejected"]
    reason: str | None = None
    result: Any = None


class InboundMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A message from the host, as `box.next_batch()` returns it (claimed by this sandbox).

    `tries` counts claims including this one; `trigger` is False for context-only messages;
    `series_id` is set for an occurrence of a recurring task.
    """

    id: str
    seq: int
    kind: str
    data: Any
    tries: int
    trigger: bool
    created_at: float
    in_reply_to: str | None = None
    series_id: str | None = None
