"""The JSON bodies of the `/v1` API (msgspec Structs: decoded, validated and described in the
OpenAPI document from these same definitions)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import msgspec

from .._backends.http.calls import AgentInfoWire as AgentInfo
from .._backends.http.calls import DeadLetterWire as DeadLetter
from .._models import HubStats, MailboxStats, PublishResult, TopicStats
from .._pool_models import PoolConfig, PoolMember, Receipt
from .authz import Principal

__all__ = [
    "AgentInfo", "DeadLetter", "HubStats", "MailboxStats", "PoolConfig", "PoolMember",
    "PublishResult", "Receipt", "TopicStats",
]  # fmt: skip


class SendBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A message to send: `to` and `data` (any JSON value) are required."""

    to: str
    data: Any
    type: str = "message"
    priority: int = 0
    ttl: float | None = None
    max_attempts: int | None = None
    idempotency_key: str | None = None
    delay: float | None = None
    metadata: dict[str, Any] | None = None


class SendBatchBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Messages sent in one atomic step."""

    messages: list[SendBody]


class SendResult(msgspec.Struct):
    """The id of a message sent."""

    id: str


class SendBatchResult(msgspec.Struct):
    """The ids of the messages sent, in order."""

    ids: list[str]


class ReceiveBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`wait`: seconds to long-poll for a message (bounded by the server's `max_wait`)."""

    max_messages: int = 1
    wait: float = 0.0
    lease: float | None = None


class Delivery(msgspec.Struct, kw_only=True):
    """A delivered message; settle it with its `receipt` (ack, nack, extend, dead-letter,
    reply). Bytes payloads arrive base64-encoded."""

    receipt: str
    id: str
    sender: str
    recipient: str
    type: str
    priority: int
    attempt: int
    max_attempts: int
    enqueued_at: float
    lease_until: float
    correlation_id: str | None
    reply_to: str | None
    data: Any
    metadata: dict[str, Any]


class Deliveries(msgspec.Struct):
    """What a receive returned (empty when the wait ended with nothing)."""

    messages: list[Delivery]


class ReceiptBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A delivery to ack."""

    receipt: str


class NackBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A delivery to retry after `delay` seconds (default: the server hub's backoff)."""

    receipt: str
    delay: float | None = None


class ExtendBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A delivery whose lease to extend to `lease` seconds from now."""

    receipt: str
    lease: float


class DeadLetterBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A delivery to give up on, with the reason."""

    receipt: str
    reason: str


class ReplyBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An answer to a request delivery (acked with it unless `ack` is false)."""

    receipt: str
    data: Any = None
    type: str = "reply"
    metadata: dict[str, Any] | None = None
    ack: bool = True


class ReplyErrorBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An error answer to a request delivery: the requester gets RemoteError."""

    receipt: str
    message: str
    data: Any = None
    type: str = "error"
    ack: bool = True


class Delivered(msgspec.Struct):
    """Whether the reply reached a waiting requester (False: it had timed out)."""

    delivered: bool


class Ok(msgspec.Struct):
    """The operation was done."""

    ok: bool = True


class RequestBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A request: waits up to `timeout` seconds (bounded by the server's `max_wait`)."""

    to: str
    data: Any
    type: str = "request"
    timeout: float = 30.0
    priority: int = 0
    max_attempts: int | None = None
    metadata: dict[str, Any] | None = None


class ReplyOut(msgspec.Struct, kw_only=True):
    """The reply to a request."""

    correlation_id: str
    id: str
    sender: str
    type: str
    data: Any
    metadata: dict[str, Any]
    sent_at: float


class ScheduleBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A recurring message: `cron` or `every` seconds."""

    to: str
    data: Any
    type: str = "message"
    cron: str | None = None
    every: float | None = None
    priority: int = 0
    ttl: float | None = None
    metadata: dict[str, Any] | None = None


class PublishBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A publish to a topic."""

    topic: str
    data: Any
    type: str = "event"
    metadata: dict[str, Any] | None = None


class FetchBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A fetch from durable consumer `name` (created on first use with `pattern`)."""

    pattern: str
    max_messages: int = 10
    wait: float = 0.0
    lease: float | None = None
    start: Literal["all", "new"] | None = None


class TopicDelivery(msgspec.Struct, kw_only=True):
    """A record delivered to a durable consumer; ack it with its receipt."""

    receipt: str
    sequence: int
    topic: str
    sender: str
    type: str
    attempt: int
    published_at: float
    data: Any
    metadata: dict[str, Any]


class TopicDeliveries(msgspec.Struct):
    """What a fetch returned; `lost` counts records lost to retention."""

    messages: list[TopicDelivery]
    lost: int = 0


class AckTopicBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Deliveries of a durable consumer to ack."""

    receipts: list[str]


class EntryOut(msgspec.Struct, kw_only=True):
    """A shared-memory value at its version."""

    key: str
    value: Any
    version: int
    created_at: float
    updated_at: float
    updated_by: str | None
    expires_at: float | None = None


class PutBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A write: `expected_version` makes it conditional (0: only if absent)."""

    value: Any
    expected_version: int | None = None
    ttl: float | None = None


class Keys(msgspec.Struct):
    """Live keys of a namespace."""

    keys: list[str]


class Deleted(msgspec.Struct):
    """Whether a live key was deleted."""

    deleted: bool


class AgentList(msgspec.Struct):
    """Registered agents (all for an admin token, else the token's own)."""

    agents: list[AgentInfo]


class QueueList(msgspec.Struct):
    """Every agent's mailbox counts."""

    queues: list[MailboxStats]


class DeadLetterList(msgspec.Struct):
    """An agent's dead letters, oldest first."""

    dead_letters: list[DeadLetter]


class RedriveBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Dead letters to deliver again (`ids` omitted: all of them)."""

    ids: list[str] | None = None


class PurgeBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What to purge: the agent's ready, delayed and in-flight messages, and with
    `dead_letters` its dead letters too."""

    dead_letters: bool = False


class Purged(msgspec.Struct, kw_only=True):
    """How many messages of `agent` a purge removed."""

    agent: str
    removed: int


class Count(msgspec.Struct):
    """How many items the operation affected."""

    count: int


class TokenBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A token to create."""

    principal: Principal
    label: str = ""


class TokenOut(msgspec.Struct, kw_only=True):
    """A token's record; `token` (the secret) is set only in the answer that created it."""

    id: str
    label: str
    principal: Principal
    created_at: float
    token: str | None = None


class TokenList(msgspec.Struct):
    """Every live token (without secrets)."""

    tokens: list[TokenOut]


class WhoAmI(msgspec.Struct, kw_only=True):
    """The calling token's id and permissions."""

    id: str
    label: str
    principal: Principal


class Health(msgspec.Struct):
    """The server is up."""

    status: str
    backend: str


# --- agent pools ---------------------------------------------------------------------------

#: A pool, run, agent, topic, policy ref or type name (the rule of `check_name`).
Name = Annotated[
    str,
    msgspec.Meta(
        pattern="^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,127}$",
        description="1-128 letters, digits or `_ . : @ -`, starting with a letter, digit or `_`",
    ),
]
#: An idempotency key (or a wake id or message id where the field says so).
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
RecordKind = Literal[
    "opened", "member_joined", "member_left", "message", "event", "wake_registered",
    "wake_triggered", "wake_timed_out", "wake_cancelled",
]  # fmt: skip


class PoolConfigBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A pool's config (see `agentcomm.PoolConfig`), fixed when the pool is created."""

    required_policy_refs: list[Name] = []
    include_sender_in_broadcast: bool = False
    observe_policy_refs: list[Name] = []


class PoolOpenBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Create the pool, or attach to it (`config` omitted: any existing config, or the
    default for a new pool; another config than the stored one answers 409)."""

    config: PoolConfigBody | None = None


class JoinBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Run `run` of agent `agent` joins (again: its topics and policy refs are updated)."""

    run: Name
    agent: Name
    topics: list[Name] = []
    policy_refs: list[Name] = []


class RunBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A member run."""

    run: Name


class ToRunTarget(msgspec.Struct, tag_field="kind", tag="run", forbid_unknown_fields=True):
    """One member run."""

    run: Name


class ToAgentTarget(msgspec.Struct, tag_field="kind", tag="agent", forbid_unknown_fields=True):
    """Every member run of an agent."""

    agent: Name


class ToTopicTarget(msgspec.Struct, tag_field="kind", tag="topic", forbid_unknown_fields=True):
    """Every member holding a topic."""

    topic: Name


class ToPoolTarget(msgspec.Struct, tag_field="kind", tag="pool", forbid_unknown_fields=True):
    """Every member (minus the sender unless the pool's config includes it)."""


#: Where a pool message goes: `{"kind": "run", "run": ...}`, `{"kind": "agent", "agent": ...}`,
#: `{"kind": "topic", "topic": ...}` or `{"kind": "pool"}`.
Target = Union[ToRunTarget, ToAgentTarget, ToTopicTarget, ToPoolTarget]  # noqa: UP007


class PoolSendBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A pool message from member run `sender` (see `Pool.send`); `ttl` omitted: the server
    hub's default. A repeated `idempotency_key` answers the first receipt (`duplicate`)."""

    sender: Name
    to: Target
    data: Any = None
    type: Name = "message"
    policy_refs: list[Name] = []
    idempotency_key: Key | None = None
    ttl: float | None = None
    metadata: dict[str, Any] | None = None
    priority: int = 0
    max_attempts: int | None = None


class EmitBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A custom event of member run `run` (it can trigger wakes)."""

    run: Name
    type: Name
    data: Any = None
    metadata: dict[str, Any] | None = None


class FilterBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Which records a wake is after (see `agentcomm.EventFilter`): fields are ANDed, an
    omitted one matches any value."""

    kinds: list[RecordKind] | None = None
    runs: list[Name] | None = None
    senders: list[Name] | None = None
    agents: list[Name] | None = None
    types: list[Name] | None = None
    topics: list[Name] | None = None
    to_me: bool | None = None
    metadata: dict[str, str | int | bool | None] | None = None


class WaitForBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A wake for member run `run` (see `Pool.wait_for`); `timeout` in seconds, omitted:
    never. The same `idempotency_key` answers the wake registered with it."""

    run: Name
    filter: FilterBody = msgspec.field(default_factory=FilterBody)
    timeout: float | None = None
    idempotency_key: Key | None = None
    replay: bool = False
    resume: Literal["envelope", "full"] = "envelope"


class WakeKeyBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A wake, by id or idempotency key."""

    key: Key


class PoolRecordOut(msgspec.Struct, kw_only=True):
    """One entry of a pool's log (see `agentcomm.PoolRecord`); `data` is null where withheld."""

    seq: int
    kind: str
    pool: str
    run: str | None
    at: float
    agent: str | None = None
    topics: list[str] = []
    policy_refs: list[str] = []
    message_id: str | None = None
    to: Target | None = None
    type: str | None = None
    data: Any = None
    metadata: dict[str, Any] | None = None
    receipt: Receipt | None = None
    wake_id: str | None = None
    trigger_seq: int | None = None
    config: PoolConfig | None = None
    missed: int = 0


class PoolRecords(msgspec.Struct):
    """A page of a pool's log, oldest first."""

    records: list[PoolRecordOut]


class WakeOut(msgspec.Struct, kw_only=True):
    """A wake: `status` "registered", "triggered" (`record`: the record that triggered it, its
    payload withheld unless `resume` is "full"), "timed_out" or "cancelled"."""

    id: str
    pool: str
    run: str
    filter: FilterBody
    idempotency_key: str | None
    resume: str
    status: str
    registered_at: float
    deadline: float | None
    trigger_seq: int | None
    record: PoolRecordOut | None = None


class Cancelled(msgspec.Struct):
    """Whether a registered wake was cancelled (False: it had ended)."""

    cancelled: bool


class PoolSnapshotOut(msgspec.Struct, kw_only=True):
    """A pool's config, members, topics, registered wakes, counts, and `cursor` (the last
    record's seq) to read or watch from."""

    name: str
    config: PoolConfig
    created_at: float
    members: list[PoolMember]
    topics: list[str]
    pending_wakes: list[WakeOut]
    counts: dict[str, int]
    cursor: int
