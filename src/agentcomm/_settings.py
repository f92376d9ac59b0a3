"""Policies a hub is opened with: retention of finished rows, the retry backoff, and the
settings its feature objects read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from ._errors import ValidationError

if TYPE_CHECKING:
    from ._references import PolicyTable

__all__ = ["Backoff", "HubSettings", "Retention"]


class Retention(msgspec.Struct, frozen=True):
    """How long finished rows are kept before a prune pass deletes them (seconds).

    `acked=0` deletes a message at ack time. `dedupe_window` is how long an idempotency key
    is remembered. `interval` is how often the hub runs a prune pass in the background.
    The topic log keeps publishes for at most `topic_max_age` seconds and at most
    `topic_max_count` records (oldest pruned first).
    """

    acked: float = 0.0
    expired: float = 3600.0
    dead: float = 7 * 86400.0
    dedupe_window: float = 86400.0
    interval: float = 10.0
    topic_max_age: float = 86400.0
    topic_max_count: int = 100_000

    def __post_init__(self) -> None:
        for name in ("acked", "expired", "dead", "dedupe_window"):
            if getattr(self, name) < 0:
                raise ValidationError(f"Retention.{name} must be >= 0 seconds.")
        if self.interval <= 0:
            raise ValidationError("Retention.interval must be > 0 seconds.")
        if self.topic_max_age < 0 or self.topic_max_count < 0:
            raise ValidationError("Retention.topic_max_age and topic_max_count must be >= 0.")


class Backoff(msgspec.Struct, frozen=True):
    """Delay before a nacked message is retried when `nack()` is given no delay.

    The n-th retry waits `base * factor ** (n - 1)` seconds, at most `max`.
    """

    base: float = 1.0
    factor: float = 2.0
    max: float = 300.0

    def __post_init__(self) -> None:
        if self.base < 0 or self.factor < 1 or self.max < 0:
            raise ValidationError("Backoff needs base >= 0, factor >= 1 and max >= 0.")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the `attempt`-th delivery failed."""
        exponent = min(max(attempt - 1, 0), 64)
        return float(min(self.base * self.factor**exponent, self.max))


@dataclass(frozen=True, slots=True)
class HubSettings:
    """The options a hub was opened with that its feature objects read (see `connect`)."""

    default_ttl: float
    max_attempts: int
    lease: float
    retention: Retention
    backoff: Backoff
    auto_register: bool
    policies: PolicyTable
