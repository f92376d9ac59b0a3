"""Policies a hub is opened with: retention of finished rows, the retry backoff, and the
settings its feature objects read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from ._errors import ValidationError
from ._validation import MAX_SEQUENCE, check_int, check_seconds

if TYPE_CHECKING:
    from ._references import PolicyTable

__all__ = ["Backoff", "HubSettings", "Limits", "Presence", "Retention"]

#: The deepest nesting `Limits.max_depth` may allow: far enough below Python's recursion
#: limit (1000) that decoding, which needs a level more than encoding, always succeeds.
MAX_DEPTH = 256
#: The longest duration any setting accepts: 100 years, in seconds.
MAX_SETTING_SECONDS = 100 * 365.25 * 86400.0


class Retention(msgspec.Struct, frozen=True):
    """How long finished rows are kept before a prune pass deletes them (seconds).

    `acked=0` deletes a message at ack time. `dedupe_window` is how long an idempotency key
    is remembered. `interval` is how often the hub runs a prune pass in the background.
    The topic log keeps publishes for at most `topic_max_age` seconds and at most
    `topic_max_count` records (oldest pruned first); each pool's log likewise keeps at most
    `pool_max_age` seconds and `pool_max_count` records, and a pool's receipts and finished
    wakes are kept for `dedupe_window`.
    """

    acked: float = 0.0
    expired: float = 3600.0
    dead: float = 7 * 86400.0
    dedupe_window: float = 86400.0
    interval: float = 10.0
    topic_max_age: float = 86400.0
    topic_max_count: int = 100_000
    pool_max_age: float = 7 * 86400.0
    pool_max_count: int = 100_000

    def __post_init__(self) -> None:
        for name in ("acked", "expired", "dead", "dedupe_window", "topic_max_age", "pool_max_age"):
            check_seconds(f"Retention.{name}", getattr(self, name), maximum=MAX_SETTING_SECONDS)
        check_seconds(
            "Retention.interval", self.interval, positive=True, maximum=MAX_SETTING_SECONDS
        )
        check_int("Retention.topic_max_count", self.topic_max_count, 0, MAX_SEQUENCE)
        check_int("Retention.pool_max_count", self.pool_max_count, 0, MAX_SEQUENCE)


class Backoff(msgspec.Struct, frozen=True):
    """Delay before a nacked message is retried when `nack()` is given no delay.

    The n-th retry waits `base * factor ** (n - 1)` seconds, at most `max`.
    """

    base: float = 1.0
    factor: float = 2.0
    max: float = 300.0

    def __post_init__(self) -> None:
        check_seconds("Backoff.base", self.base, maximum=MAX_SETTING_SECONDS)
        check_seconds("Backoff.max", self.max, maximum=MAX_SETTING_SECONDS)
        factor = check_seconds("Backoff.factor", self.factor, maximum=1000.0)
        if factor < 1:
            raise ValidationError(f"Backoff.factor must be >= 1, not {self.factor!r}.")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the `attempt`-th delivery failed."""
        exponent = min(max(attempt - 1, 0), 64)
        try:
            return float(min(self.base * self.factor**exponent, self.max))
        except OverflowError:
            return float(self.max)


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Bounds a hub enforces on what it is given, checked before anything is stored
    (`connect(limits=agentcomm.Limits(...))`); a call beyond them raises ValidationError.

    - `max_payload` (default 4 MiB): the largest encoded payload stored inline (by value).
      A larger one is fine when the type's tier policy stores it by reference (the default
      policy does so above 10 KiB); otherwise it is refused.
    - `max_metadata` (default 64 KiB): the largest encoded metadata of one message.
    - `max_depth` (default 64, at most 256): how deeply lists and dicts may nest in a payload
      or metadata; the margin to Python's recursion limit means whatever is accepted can be
      decoded again.
    - `min_schedule_period` (default 1 s): the shortest `schedule(every=...)`.
    - `max_delay` (default 366 days): the furthest `delay=`, `at=`, `nack(delay=)`,
      `every=`, lease or `extend()` may reach into the future.
    """

    max_payload: int = 4 * 1024 * 1024
    max_metadata: int = 64 * 1024
    max_depth: int = 64
    min_schedule_period: float = 1.0
    max_delay: float = 366 * 86400.0

    def __post_init__(self) -> None:
        check_int("Limits.max_payload", self.max_payload, 1, 512 * 1024 * 1024)
        check_int("Limits.max_metadata", self.max_metadata, 1, 512 * 1024 * 1024)
        check_int("Limits.max_depth", self.max_depth, 1, MAX_DEPTH)
        check_seconds("Limits.max_delay", self.max_delay, positive=True,
                      maximum=MAX_SETTING_SECONDS)  # fmt: skip
        check_seconds("Limits.min_schedule_period", self.min_schedule_period, positive=True,
                      maximum=self.max_delay)  # fmt: skip


class Presence(msgspec.Struct, frozen=True, kw_only=True):
    """How a hub records agents' activity and reads it back as `AgentInfo.state`
    (`connect(presence=agentcomm.Presence(...))`), in seconds.

    - `interval` (default 10): a hub writes an agent's `last_seen` / `last_active` at most
      this often (activity in between is coalesced into the next write), and a receive or
      `serve` waiting for messages refreshes `last_seen` this often.
    - `active` (default 60): an agent that sent, got a message or acked within this long is
      "active".
    - `gone` (default 120): an agent not seen for this long is "gone" (no process attached
      to it is running); otherwise it is "idle". Must exceed `interval` (by 2x or more, so
      one late write does not make a live agent look gone).
    """

    interval: float = 10.0
    active: float = 60.0
    gone: float = 120.0

    def __post_init__(self) -> None:
        check_seconds("Presence.interval", self.interval, positive=True,
                      maximum=MAX_SETTING_SECONDS)  # fmt: skip
        check_seconds("Presence.active", self.active, maximum=MAX_SETTING_SECONDS)
        check_seconds("Presence.gone", self.gone, positive=True, maximum=MAX_SETTING_SECONDS)
        if self.gone < 2 * self.interval:
            raise ValidationError(
                f"Presence.gone ({self.gone:g} s) must be at least twice Presence.interval "
                f"({self.interval:g} s): a live agent's last_seen is refreshed only that often."
            )


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
    limits: Limits
    presence: Presence
