"""The public value types of agent pools (re-exported by `agentcomm`)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Union

import msgspec

__all__ = [
    "Address",
    "EventFilter",
    "PoolConfig",
    "PoolMember",
    "PoolRecord",
    "Receipt",
    "ToAgent",
    "ToPool",
    "ToRun",
    "ToTopic",
    "WakeResult",
]


class PoolConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How a pool treats its messages; fixed when the pool is created.

    `required_policy_refs`: every pool message must carry all of these (else its receipt is
    "failed"). `include_sender_in_broadcast`: whether a `ToPool()` message reaches its sender.
    `observe_policy_refs`: the records of a run lacking any of these never match a wake's or a
    watch's filter.
    """

    required_policy_refs: tuple[str, ...] = ()
    include_sender_in_broadcast: bool = False
    observe_policy_refs: tuple[str, ...] = ()


class ToRun(msgspec.Struct, frozen=True):
    """Address one member run."""

    run: str


class ToAgent(msgspec.Struct, frozen=True):
    """Address every member run of an agent."""

    agent: str


class ToTopic(msgspec.Struct, frozen=True):
    """Address every member holding a topic."""

    topic: str


class ToPool(msgspec.Struct, frozen=True):
    """Address every member (minus the sender unless the pool's config includes it)."""


#: Where a pool message goes: one of `ToRun`, `ToAgent`, `ToTopic`, `ToPool`.
Address = Union[ToRun, ToAgent, ToTopic, ToPool]  # noqa: UP007 (a runtime alias on 3.11)


class EventFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which pool records a wake (or a watch) is after. Fields are ANDed; None means any.

    `kinds`: record kinds (`message`, `event`, `member_joined`, `member_left`, ...); `runs`:
    the record's run (a message's sender, an event's emitter, the member who joined or left);
    `senders`: a message's sender; `agents`: the agent of the record's run; `types`: a
    message's or event's type; `topics`: a message sent to one of these topics; `to_me=True`:
    a message delivered to the waiting run; `metadata`: every pair equal to the record's
    metadata (values: str, int, bool or None).
    """

    kinds: Collection[str] | None = None
    runs: Collection[str] | None = None
    senders: Collection[str] | None = None
    agents: Collection[str] | None = None
    types: Collection[str] | None = None
    topics: Collection[str] | None = None
    to_me: bool | None = None
    metadata: dict[str, Any] | None = None


class PoolMember(msgspec.Struct, frozen=True):
    """A member run: the agent it runs as, its topics and policy refs, when it joined."""

    run: str
    agent: str
    topics: tuple[str, ...]
    policy_refs: tuple[str, ...]
    joined_at: float


class Receipt(msgspec.Struct, frozen=True):
    """What happened to a pool message.

    `status`: "delivered" (enqueued in each run of `delivered_to`), "failed" (nothing
    enqueued; `reason` says why) or "expired" (its ttl had passed). `seq` is its record's
    position in the pool log; `duplicate` is True when this is the stored receipt of an
    earlier send with the same idempotency key.
    """

    message_id: str
    status: str
    delivered_to: tuple[str, ...]
    seq: int
    duplicate: bool = False
    reason: str | None = None
    idempotency_key: str | None = None


class PoolRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of a pool's log.

    Every record has `seq` (per pool, from 1, without gaps), `kind`, `pool`, `run` (who acted;
    None for `opened`) and `at`. By kind: `opened` carries `config`; `member_joined`
    `agent`, `topics`, `policy_refs`; `member_left` `agent`; `message` `agent` (the
    sender's), `message_id`, `to`, `type`, `policy_refs`, `metadata`, `receipt` and `data`
    (None where withheld); `event` `agent`, `type`, `data`, `metadata`; `wake_*` `wake_id`
    (and `trigger_seq` for `wake_triggered`). A `gap` record (seq 0) tells a watcher that
    `missed` records were dropped by retention before it read them.
    """

    seq: int
    kind: str
    pool: str
    run: str | None
    at: float
    agent: str | None = None
    topics: tuple[str, ...] = ()
    policy_refs: tuple[str, ...] = ()
    message_id: str | None = None
    to: Address | None = None
    type: str | None = None
    data: Any = None
    metadata: dict[str, Any] | None = None
    receipt: Receipt | None = None
    wake_id: str | None = None
    trigger_seq: int | None = None
    config: PoolConfig | None = None
    missed: int = 0


class WakeResult(msgspec.Struct, frozen=True):
    """How a wake ended: "triggered" (with the matching `record`), "timed_out" or
    "cancelled" (`record` None)."""

    status: str
    record: PoolRecord | None
