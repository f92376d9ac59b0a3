"""The encoded pool records the feature layer hands to backends and gets back from them.

A pool is stored as: its row (config, head sequence, counters), its members, its receipts (by
message id and by idempotency key), its wakes (by id, key, status and deadline), and its log of
`StoredPoolRecord`s, one per event, numbered from 1 without gaps. Backends keep the state
tables current as they append, so no operation replays the log.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "ConfigSpec",
    "FilterSpec",
    "MemberRecord",
    "NewPoolMessage",
    "PoolPage",
    "PoolSnapshotRecord",
    "ReceiptRecord",
    "StoredPoolRecord",
    "WakeRecord",
    "WakeSpec",
]


class MemberRecord(msgspec.Struct, gc=False):
    """A member run of a pool: the agent it runs as, its topics and its policy refs."""

    run: str
    agent: str
    topics: list[str]
    policy_refs: list[str]
    joined_at: float


class ReceiptRecord(msgspec.Struct, gc=False):
    """What happened to one pool message (see `agentcomm.Receipt`)."""

    message_id: str
    status: str
    delivered_to: list[str]
    seq: int
    reason: str | None = None
    idempotency_key: str | None = None
    duplicate: bool = False


class NewPoolMessage(msgspec.Struct, gc=False):
    """A pool message to address, deliver and record in one atomic step."""

    pool: str
    message_id: str
    sender: str
    #: ("run" | "agent" | "topic" | "pool", value; "" for the whole pool)
    to_kind: str
    to_value: str
    type: str
    data: bytes
    data_kind: int
    #: the caller's metadata, JSON-encoded (the store adds the pool's keys per recipient)
    metadata: bytes | None
    policy_refs: list[str]
    idempotency_key: str | None
    #: None: never; a time at or before `now` makes the receipt "expired"
    expires_at: float | None
    priority: int
    max_attempts: int


class StoredPoolRecord(msgspec.Struct, gc=False, omit_defaults=True):
    """One entry of a pool's log, as stored. Fields beyond the first five depend on `kind`."""

    seq: int
    kind: str
    run: str | None
    at: float
    #: whether the acting run held the pool's `observe_policy_refs` (wakes see only these)
    visible: bool = True
    agent: str | None = None
    topics: list[str] | None = None
    policy_refs: list[str] | None = None
    message_id: str | None = None
    to_kind: str | None = None
    to_value: str | None = None
    type: str | None = None
    data: bytes | None = None
    data_kind: int = 0
    metadata: bytes | None = None
    receipt: ReceiptRecord | None = None
    wake_id: str | None = None
    trigger_seq: int | None = None
    reason: str | None = None
    config: bytes | None = None


class FilterSpec(msgspec.Struct, gc=False, omit_defaults=True):
    """An event filter, normalized: sorted lists, None for "any"."""

    kinds: list[str] | None = None
    runs: list[str] | None = None
    senders: list[str] | None = None
    agents: list[str] | None = None
    types: list[str] | None = None
    topics: list[str] | None = None
    to_me: bool = False
    #: scalar values only (str, int, bool, None), compared for equality
    metadata: dict[str, str | int | bool | None] | None = None


class WakeSpec(msgspec.Struct, gc=False):
    """A wake condition to register."""

    id: str
    pool: str
    run: str
    filter: FilterSpec
    idempotency_key: str | None
    replay: bool
    resume: str
    registered_at: float
    deadline: float | None


class WakeRecord(msgspec.Struct, gc=False):
    """A stored wake condition and where it is in its life."""

    id: str
    pool: str
    run: str
    filter: FilterSpec
    idempotency_key: str | None
    resume: str
    status: str
    registered_at: float
    deadline: float | None
    #: the seq of its `wake_registered` record: only later records can trigger it
    registered_seq: int
    #: the record that triggered it
    trigger_seq: int | None = None
    finished_at: float | None = None


class PoolPage(msgspec.Struct, gc=False):
    """A page of a pool's log, with the head and the oldest sequence still kept."""

    records: list[StoredPoolRecord]
    head: int
    oldest: int


class PoolSnapshotRecord(msgspec.Struct, gc=False):
    """A pool's current state, read from its state tables in one consistent view."""

    config: bytes
    created_at: float
    members: list[MemberRecord]
    pending_wakes: list[WakeRecord]
    head: int
    counts: dict[str, int]


class ConfigSpec(msgspec.Struct, gc=False):
    """A pool's configuration as stored: sorted, de-duplicated lists, so that equal configs
    encode to equal bytes (the store compares bytes when a pool is opened again)."""

    required_policy_refs: list[str]
    include_sender_in_broadcast: bool
    observe_policy_refs: list[str]
