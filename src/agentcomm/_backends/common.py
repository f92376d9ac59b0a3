"""What every backend shares: notification channels, constants and durable-consumer rules."""

from __future__ import annotations

import logging

import msgspec

from .._codec import decode_metadata
from .._errors import ValidationError
from .._records import ConsumerSpec
from .._subjects import TopicFilter

__all__ = [
    "DEAD_NOTICE_TYPE",
    "DEAD_TOPIC_PREFIX",
    "REPLY_GRACE",
    "SYSTEM_ORIGIN",
    "SCHEDULES_CHANNEL",
    "conflict",
    "dead_notice",
    "dead_topic",
    "expired_reason",
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


def expired_reason(attempts: int) -> str:
    """Why a request that expired in the mailbox failed (written into its reply slot)."""
    if attempts == 0:
        return "expired before it was delivered"
    return f"expired after {attempts} delivery(ies) without an answer"


# --- the dead-letter notice -----------------------------------------------------------------------

#: Dead-lettering a message of agent A appends a record to topic `$agentcomm.dead.A`, in the
#: same transaction (or Lua call) that dead-letters it. Topics starting with `$agentcomm.` are
#: reserved: only backends write them.
DEAD_TOPIC_PREFIX = "$agentcomm.dead."
#: The `type` of a dead-letter notice.
DEAD_NOTICE_TYPE = "dead_letter"
#: The origin of records a backend writes itself: no hub's, so every hub's reader delivers
#: them to its live subscribers.
SYSTEM_ORIGIN = ""


def dead_topic(agent: str) -> str:
    """The topic a dead letter of `agent`'s mailbox is announced on."""
    return DEAD_TOPIC_PREFIX + agent


_notice_encoder = msgspec.json.Encoder()


def dead_notice(
    message_id: str,
    sender: str,
    recipient: str,
    type: str,
    reason: str,
    attempts: int,
    correlation_id: str | None,
) -> bytes:
    """The payload (JSON) of a dead-letter notice. Redis's Lua builds the same fields."""
    return _notice_encoder.encode(
        {"id": message_id, "sender": sender, "recipient": recipient, "type": type,
         "reason": reason, "attempts": attempts, "correlation_id": correlation_id}
    )  # fmt: skip


# --- logging (the `agentcomm.mailbox` logger; see docs/observability.md) ----------------------

#: Mailbox events: dead letters, lease expiries (INFO), each operation (DEBUG).
mailbox_log = logging.getLogger("agentcomm.mailbox")


def log_dead_letter(agent: str, message_id: str, reason: str, attempts: object) -> None:
    """INFO: a message of `agent`'s mailbox was dead-lettered."""
    mailbox_log.info(
        "dead-lettered message %s of %r after %s delivery(ies): %s",
        message_id, agent, attempts, reason,
    )  # fmt: skip


def log_lease_expired(agent: str, message_id: str, attempt: object, max_attempts: object) -> None:
    """INFO: a lease ended unsettled and the message will be delivered again."""
    mailbox_log.info(
        "lease of message %s of %r ended unsettled on delivery %s of %s; delivering it again",
        message_id, agent, attempt, max_attempts,
    )  # fmt: skip
