"""The server's settings and limits: body size, long-poll bounds, per-token rate limits."""

from __future__ import annotations

import math
import time

import msgspec

from .._errors import RateLimited

__all__ = ["RateLimiter", "ServerSettings"]


class ServerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Limits the server enforces on every request."""

    #: The largest request body in bytes (413 above it), except `POST /v1/refs`, which
    #: streams; the Python client's reference uploads send chunks of 1 MiB each.
    max_body: int = 8 * 1024 * 1024
    #: The largest blob `POST /v1/refs` takes, in bytes (413 above it, nothing stored).
    max_blob: int = 1024 * 1024 * 1024
    #: The longest a long poll (`wait`, request `timeout`) may wait, in seconds.
    max_wait: float = 60.0
    #: Requests per second each token may make on average (0: no limit) ...
    rate: float = 0.0
    #: ... and in a burst.
    burst: int = 200
    #: Seconds in-flight requests get to finish on shutdown (long polls are answered at once).
    shutdown_grace: float = 10.0


class RateLimiter:
    """A token bucket per token id."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(max(1, burst))
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> None:
        """Spend one request of `key`'s bucket, or raise RateLimited with the wait."""
        if self._rate <= 0:
            return
        now = time.monotonic()
        level, at = self._buckets.get(key, (self._burst, now))
        level = min(self._burst, level + (now - at) * self._rate)
        if level < 1.0:
            self._buckets[key] = (level, now)
            wait = (1.0 - level) / self._rate
            raise RateLimited(
                f"Rate limit of {self._rate:g} requests/s reached for this token; retry in "
                f"{math.ceil(wait)} s.",
                retry_after=wait,
            )
        self._buckets[key] = (level - 1.0, now)
        if len(self._buckets) > 100_000:  # forget idle buckets (they would be full anyway)
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
