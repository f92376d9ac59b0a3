"""Recurrence rules for scheduled delivery: a cron expression (via croniter) or a fixed period."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from croniter import croniter

from ._errors import ValidationError
from ._ids import new_id
from ._records import NewMessage, ScheduleSpec
from ._validation import check_seconds, check_text

if TYPE_CHECKING:
    from ._settings import Limits


def check_recurrence(
    cron: object, every: object, now: float, limits: Limits
) -> tuple[str | None, float | None, float]:
    """Validate a rule (exactly one of `cron` and `every`, within `limits`) and return
    `(cron, every, first occurrence)`; raises ValidationError."""
    if (cron is None) == (every is None):
        raise ValidationError("Give exactly one of cron= (a cron expression) or every= (seconds).")
    if cron is not None:
        text = check_text("cron", cron, longest=256, empty=False)
        try:
            valid = croniter.is_valid(text)
            first = first_occurrence(text, None, now) if valid else 0.0
        except Exception as exc:  # croniter raises its own errors for dates that never come
            raise ValidationError(f"cron {text!r} has no next occurrence ({exc}).") from None
        if not valid:
            raise ValidationError(f"{text!r} is not a valid cron expression, e.g. '*/5 * * * *'.")
        return text, None, first
    period = check_seconds("every", every, positive=True, maximum=limits.max_delay)
    if period < limits.min_schedule_period:
        raise ValidationError(
            f"every= must be at least {limits.min_schedule_period:g} s "
            f"(Limits.min_schedule_period), not {every!r}."
        )
    return None, period, first_occurrence(None, period, now)


def next_occurrence(cron: str | None, every: float | None, previous: float, now: float) -> float:
    """The first occurrence strictly after both `previous` and `now`.

    Occurrences missed while no hub was running are coalesced: the series resumes from `now`
    instead of firing once for every missed slot.
    """
    if every is not None:
        if previous + every > now:
            return previous + every
        missed = int((now - previous) // every) + 1
        return previous + missed * every
    assert cron is not None
    start = datetime.fromtimestamp(max(previous, now), tz=UTC)
    return float(croniter(cron, start).get_next(float))


def first_occurrence(cron: str | None, every: float | None, now: float) -> float:
    """The first occurrence of a new schedule created at `now`."""
    if every is not None:
        return now + every
    assert cron is not None
    return float(croniter(cron, datetime.fromtimestamp(now, tz=UTC)).get_next(float))


def scheduled_message(spec: ScheduleSpec, now: float) -> NewMessage:
    """The message a schedule enqueues when it fires at `now`."""
    return NewMessage(
        id=new_id(),
        sender=spec.sender,
        recipient=spec.recipient,
        type=spec.type,
        priority=spec.priority,
        data=spec.data,
        data_kind=spec.data_kind,
        metadata=spec.metadata,
        enqueued_at=now,
        visible_at=now,
        expires_at=None if spec.ttl is None else now + spec.ttl,
        max_attempts=spec.max_attempts,
    )
