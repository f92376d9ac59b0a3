"""The read-only views that users get back from hubs (re-exported by `agentcomm`)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = [
    "AgentInfo",
    "CheckReport",
    "ConsumerInfo",
    "DeadLetter",
    "HubStats",
    "MailboxStats",
    "NamespaceInfo",
    "PeekedMessage",
    "PendingInfo",
    "PruneReport",
    "PublishResult",
    "ScheduleInfo",
    "TopicStats",
]


#: An agent's state in `AgentInfo.state`.
AgentState = Literal["active", "idle", "gone"]


class AgentInfo(msgspec.Struct, frozen=True):
    """A registered agent: when it was created, last seen and last active, and its state.

    `last_seen` is the last time a hub acted for it: an attach (`hub.agent`), a send, a
    receive, an ack, or a receive or `serve` waiting for messages (which refreshes it every
    `Presence.interval`). `last_active` is the last send, delivery or ack (None if none yet).
    Hubs write both at most once per `Presence.interval` per agent, so they lag by up to that.

    `state`, by the listing hub's `Presence` thresholds: "active" (active within
    `Presence.active` seconds), "idle" (seen within `Presence.gone` seconds, not active), or
    "gone" (not seen for `Presence.gone` seconds: no process serves it).
    """

    name: str
    created_at: float
    last_seen: float
    last_active: float | None = None
    state: AgentState = "idle"


class MailboxStats(msgspec.Struct, frozen=True):
    """Counts of one agent's mailbox by state."""

    agent: str
    ready: int
    delayed: int
    in_flight: int
    dead: int

    @property
    def pending(self) -> int:
        """Messages not yet delivered: ready now or delayed."""
        return self.ready + self.delayed


class PendingInfo(msgspec.Struct, frozen=True):
    """A message waiting in (or leased from) a mailbox, described without its payload."""

    id: str
    sender: str
    recipient: str
    type: str
    priority: int
    state: str
    attempt: int
    enqueued_at: float
    visible_at: float
    expires_at: float | None
    size: int


class PeekedMessage(msgspec.Struct, frozen=True):
    """A message waiting in (or leased from) a mailbox, with its payload, as `hub.peek` lists
    it without consuming it.

    `state` is "ready", "delayed" or "in_flight"; `attempt` counts its deliveries so far;
    `size` is the payload's size in bytes (the original size of a blob it refers to, whose id
    is `ref`). `data` and `metadata` are decoded; when they cannot be read (the blob is gone,
    or the stored bytes cannot be decoded), `data` is None and `error` says why.
    """

    id: str
    sender: str
    recipient: str
    type: str
    priority: int
    state: str
    attempt: int
    max_attempts: int
    enqueued_at: float
    visible_at: float
    expires_at: float | None
    size: int
    data: Any
    metadata: dict[str, Any]
    correlation_id: str | None = None
    ref: str | None = None
    error: str | None = None


class DeadLetter(msgspec.Struct, frozen=True):
    """A message that will not be delivered again unless requeued."""

    id: str
    sender: str
    recipient: str
    type: str
    reason: str
    attempts: int
    enqueued_at: float
    dead_at: float
    data: Any
    metadata: dict[str, Any]
    #: Set when the stored payload or metadata cannot be decoded (`data` is then None).
    error: str | None = None


class ScheduleInfo(msgspec.Struct, frozen=True):
    """A recurring delivery: one message per occurrence of `cron` or every `every` seconds."""

    id: str
    sender: str
    recipient: str
    type: str
    cron: str | None
    every: float | None
    next_run: float
    runs: int
    #: Set when the stored schedule cannot be decoded or fired: it is parked (never due, its
    #: other fields may be empty) until cancelled with `hub.cancel_schedule(id)`.
    error: str | None = None


class CheckReport(msgspec.Struct, frozen=True):
    """What `Hub.check()` found: `ok` when nothing is wrong, else each problem in `problems`."""

    backend: str
    #: What was checked, e.g. "PRAGMA integrity_check" (or "nothing to check").
    checked: str
    problems: list[str]

    @property
    def ok(self) -> bool:
        """Whether the check found nothing wrong."""
        return not self.problems


class HubStats(msgspec.Struct, frozen=True):
    """Event counters kept by the backend since the store was created."""

    sent: int
    deduplicated: int
    expired: int
    dead_lettered: int
    late_replies: int
    scheduled_runs: int
    #: Stored records found that could not be decoded (each is reported once, then skipped).
    undecodable: int = 0


class PruneReport(msgspec.Struct, frozen=True):
    """What one retention pass did."""

    expired: int
    dead_lettered: int
    pruned_messages: int
    pruned_dedupe_keys: int
    pruned_requests: int
    pruned_topic_records: int = 0
    pruned_pool_records: int = 0


class PublishResult(msgspec.Struct, frozen=True, gc=False):
    """What one publish did: live subscribers of this hub reached and dropped, log position."""

    delivered: int
    dropped: int
    sequence: int


class ConsumerInfo(msgspec.Struct, frozen=True):
    """A durable topic consumer: its pattern and filters, where it is in the topic log, and
    how far behind.

    `position` is the highest log sequence it has scanned, `head` the latest sequence of the
    log; `lag` counts the retained records after `position` that match its pattern and
    filters (what it has still to receive), `pending` the deliveries leased to it and not
    acked yet, `lost` the records it lost to retention since its last claim.
    """

    name: str
    pattern: str
    senders: list[str] | None
    types: list[str] | None
    position: int
    head: int
    lag: int
    pending: int
    lost: int


class NamespaceInfo(msgspec.Struct, frozen=True):
    """A shared-memory namespace with its counts: live keys and their bytes, writes and
    version conflicts since it was created. `owner` is None for a shared namespace
    (`hub.memory(name)`), else the agent whose private namespace it is (`agent.memory()`,
    whose `namespace` is "")."""

    namespace: str
    owner: str | None
    keys: int
    bytes: int
    writes: int
    conflicts: int


class TopicStats(msgspec.Struct, frozen=True):
    """Counters of one topic: publishes, deliveries, drops (buffers full), subscribers."""

    name: str
    published: int
    delivered: int
    dropped: int
    subscribers: int
    last_publish: float | None
    last_sequence: int
    #: Records of the topic still in the topic log (within retention): what a durable
    #: consumer starting at "all" would read.
    retained: int = 0
