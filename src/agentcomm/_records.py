"""The encoded records that the feature layer hands to backends and gets back from them."""

from __future__ import annotations

from enum import IntEnum

import msgspec

from ._models import PendingInfo


class State(IntEnum):
    """Where a stored message is in its life. Values are stored on disk: do not renumber."""

    READY = 0
    IN_FLIGHT = 1
    DELAYED = 2
    DEAD = 3
    EXPIRED = 4
    ACKED = 5


#: How `PendingInfo.state` names the states a pending message can be in.
PENDING_STATE_NAMES = {State.READY: "ready", State.IN_FLIGHT: "in_flight", State.DELAYED: "delayed"}


class DataKind(IntEnum):
    """How a payload's bytes are to be read back."""

    JSON = 0
    BYTES = 1


class NewMessage(msgspec.Struct):
    """A message ready to be stored: payload and metadata already encoded."""

    id: str
    sender: str
    recipient: str
    type: str
    priority: int
    data: bytes
    data_kind: int
    metadata: bytes | None
    enqueued_at: float
    visible_at: float
    expires_at: float | None
    max_attempts: int
    idempotency_key: str | None = None
    dedupe_until: float | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    # Set on requests: the backend opens a reply slot that lives until this time.
    request_deadline: float | None = None


class StoredMessage(msgspec.Struct):
    """A delivered message as the backend returns it: still encoded."""

    seq: int
    id: str
    sender: str
    recipient: str
    type: str
    priority: int
    data: bytes
    data_kind: int
    metadata: bytes | None
    attempt: int
    max_attempts: int
    enqueued_at: float
    lease_until: float
    correlation_id: str | None
    reply_to: str | None


class ReplyStatus(IntEnum):
    """What a reply slot holds. Values are stored: do not renumber."""

    #: An answer (`Message.reply`).
    OK = 0
    #: An error answer (`Message.reply_error`): `data` holds {"message": ..., "data": ...}.
    ERROR = 1
    #: Written by the backend when the request was dead-lettered or expired: `reason` and
    #: `attempts` say why and after how many deliveries.
    FAILED = 2


class StoredReply(msgspec.Struct):
    """A reply waiting for its requester."""

    id: str
    sender: str
    type: str
    data: bytes
    data_kind: int
    metadata: bytes | None
    sent_at: float
    status: int = ReplyStatus.OK
    reason: str = ""
    attempts: int = 0


#: The `type` of a failure reply (`ReplyStatus.FAILED`): dead-lettered, or expired.
DEAD_REPLY_TYPE = "dead_letter"
EXPIRED_REPLY_TYPE = "expired"


def failed_reply(
    message_id: str, recipient: str, attempts: int, reason: str, now: float, expired: bool
) -> StoredReply:
    """The failure reply a backend writes into a request's slot, in the transaction that
    dead-letters or expires the request."""
    return StoredReply(
        id=message_id, sender=recipient, type=EXPIRED_REPLY_TYPE if expired else DEAD_REPLY_TYPE,
        data=b"null", data_kind=DataKind.JSON, metadata=None, sent_at=now,
        status=ReplyStatus.FAILED, reason=reason, attempts=attempts,
    )  # fmt: skip


class Claimed(msgspec.Struct):
    """The result of a claim: the messages leased, and when the mailbox next changes by itself."""

    messages: list[StoredMessage]
    next_wake: float | None


class SettleKind(IntEnum):
    """What a consumer does with a delivery."""

    ACK = 0
    NACK = 1
    DEAD = 2
    EXTEND = 3
    RELEASE = 4  # `MailboxStore.release`: back to ready, the attempt not counted


class Settle(msgspec.Struct):
    """One settle operation on one delivery (`seq` at `attempt`)."""

    kind: SettleKind
    recipient: str
    seq: int
    attempt: int
    # NACK: visible again at this time; EXTEND: lease ends at this time.
    until: float = 0.0
    reason: str = ""


class ScheduleSpec(msgspec.Struct):
    """A schedule to store: the message template and its recurrence."""

    id: str
    sender: str
    recipient: str
    type: str
    priority: int
    data: bytes
    data_kind: int
    metadata: bytes | None
    ttl: float | None
    max_attempts: int
    cron: str | None
    every: float | None
    next_run: float
    created_at: float


class NewTopicRecord(msgspec.Struct, gc=False):
    """A publish to store: payload and metadata already encoded."""

    topic: str
    sender: str
    type: str
    data: bytes
    data_kind: int
    metadata: bytes | None
    published_at: float
    #: The publishing hub's id, so its own live subscribers are not served twice.
    origin: str


# gc=False: records hold only scalars, so they cannot form cycles; a long topic log then costs
# the garbage collector nothing
class TopicRecord(msgspec.Struct, gc=False):
    """A stored publish as a backend returns it (`attempt` is set on durable deliveries)."""

    seq: int
    topic: str
    sender: str
    type: str
    data: bytes
    data_kind: int
    metadata: bytes | None
    published_at: float
    origin: str
    attempt: int = 0


class ConsumerSpec(msgspec.Struct):
    """A durable consumer: its pattern and filters, and where to (re)start when given."""

    name: str
    pattern: str
    senders: list[str] | None
    types: list[str] | None
    metadata: bytes | None
    #: None: resume (a new consumer starts at "new"). "all", "new", "seq" or "time": start
    #: there, rewinding an existing consumer unless it was last started at the same place.
    start: str | None = None
    start_seq: int = 0
    start_time: float = 0.0


class TopicBatch(msgspec.Struct):
    """Log records read after a position, and the position read through."""

    records: list[TopicRecord]
    through: int


class TopicClaim(msgspec.Struct):
    """Deliveries leased to a durable consumer, records it lost to retention, next lease end."""

    records: list[TopicRecord]
    lease_until: float
    lost: int
    next_wake: float | None


class PeekRecord(msgspec.Struct):
    """A pending message as `MailboxStore.peek` returns it: its description and its payload,
    still encoded (`error` set, and `data` empty, when the stored message cannot be read)."""

    info: PendingInfo
    max_attempts: int
    correlation_id: str | None
    data: bytes
    data_kind: int
    metadata: bytes | None
    error: str | None = None


class ConsumerRecord(msgspec.Struct):
    """A durable consumer as `TopicStore.list_consumers` returns it: its definition, the
    highest sequence it scanned, its outstanding deliveries and the records it lost."""

    spec: ConsumerSpec
    position: int
    pending: int
    lost: int
