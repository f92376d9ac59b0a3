"""What every backend shares: notification channels, constants and durable-consumer rules."""

from __future__ import annotations

from .._codec import decode_metadata
from .._errors import ValidationError
from .._records import ConsumerSpec
from .._subjects import TopicFilter

__all__ = [
    "REPLY_GRACE",
    "SCHEDULES_CHANNEL",
    "conflict",
    "final_nack_reason",
    "lease_expired_reason",
    "consumer_filter",
    "mail_channel",
    "pool_channel",
    "reply_channel",
    "same_definition",
    "same_start",
]


def mail_channel(agent: str) -> str:
    """The channel notified when `agent`'s mailbox may have a ready message."""
    return "mail:" + agent


def pool_channel(pool: str) -> str:
    """The channel notified when `pool`'s log gets a record."""
    return f"pool:{pool}"


def reply_channel(correlation_id: str) -> str:
    """The channel notified when the reply to `correlation_id` arrives."""
    return "reply:" + correlation_id


SCHEDULES_CHANNEL = "schedules"

#: Seconds a reply slot outlives its deadline before pruning, so the requester's last look
#: at the slot never races the prune.
REPLY_GRACE = 60.0


# --- durable consumers ------------------------------------------------------------------------


def consumer_filter(spec: ConsumerSpec) -> TopicFilter:
    """The filter a durable consumer's spec describes."""
    return TopicFilter(spec.pattern, spec.senders, spec.types, decode_metadata(spec.metadata))


def same_definition(a: ConsumerSpec, b: ConsumerSpec) -> bool:
    """Whether two specs select the same records (start positions aside)."""
    return (a.pattern, a.senders, a.types, a.metadata) == (
        b.pattern,
        b.senders,
        b.types,
        b.metadata,
    )


def same_start(a: ConsumerSpec, b: ConsumerSpec) -> bool:
    """Whether two specs start at the same place (so attaching again is no rewind)."""
    return (a.start, a.start_seq, a.start_time) == (b.start, b.start_seq, b.start_time)


def conflict(spec: ConsumerSpec, pattern: str) -> ValidationError:
    """The error for attaching to a durable consumer with another definition."""
    return ValidationError(
        f"Durable consumer {spec.name!r} exists with pattern {pattern!r} and other filters; "
        "subscribe with the same pattern and filters to share it, or use another durable name."
    )


# --- dead-letter reasons (Redis's Lua scripts build the same texts) -------------------------------


def lease_expired_reason(attempt: int, max_attempts: int) -> str:
    """Why a message whose last lease ended unacked was dead-lettered."""
    return f"lease expired on delivery {attempt} of {max_attempts}"


def final_nack_reason(attempt: int) -> str:
    """Why a message nacked on its last allowed delivery was dead-lettered."""
    return f"nacked on final delivery {attempt}"
