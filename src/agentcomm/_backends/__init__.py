"""Storage backends, chosen by URL scheme: `sqlite://` (default), `memory://`, `redis://`."""

from __future__ import annotations

import math
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from .._errors import ConfigurationError
from .._settings import Retention
from .contracts import Backend

__all__ = ["Backend", "DEFAULT_URL", "open_backend", "with_prefix"]

DEFAULT_URL = "sqlite:///agentcomm.db"
_SCHEMES = ("sqlite", "memory", "redis", "rediss")
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


def open_backend(url: str, retention: Retention) -> Backend:
    """Build the backend named by `url` (not yet opened)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if scheme == "memory":
        from .memory import MemoryBackend

        return MemoryBackend(parts.netloc + parts.path.strip("/"), retention)
    if scheme == "sqlite":
        return _sqlite(parts.path, query, retention)
    if scheme in ("redis", "rediss"):
        return _redis(url, retention)
    raise ConfigurationError(
        f"Unknown backend scheme {scheme!r} in {url!r}; use one of: "
        + ", ".join(f"{s}://" for s in _SCHEMES)
        + "."
    )


def _sqlite(path: str, query: dict[str, str], retention: Retention) -> Backend:
    from .sqlite import SQLiteBackend

    # sqlite:///relative.db -> "relative.db"; sqlite:////abs/path.db -> "/abs/path.db"
    path = path[1:] if path.startswith("/") else path
    if not path or path == ":memory:":
        raise ConfigurationError(
            "A sqlite:// URL needs a file path, e.g. sqlite:///./agentcomm.db; "
            "for a store in memory use memory://."
        )
    unknown = set(query) - {"synchronous", "busy_timeout", "recheck"}
    if unknown:
        raise ConfigurationError(
            f"Unknown sqlite URL option(s) {sorted(unknown)}; "
            "known: synchronous, busy_timeout (ms), recheck (s)."
        )
    synchronous = query.get("synchronous", "NORMAL").upper()
    if synchronous not in _SYNCHRONOUS:
        raise ConfigurationError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}.")
    try:
        busy_timeout = int(query.get("busy_timeout", "10000"))
        recheck = float(query.get("recheck", "2.0"))
    except ValueError as exc:
        raise ConfigurationError(f"Bad sqlite URL option: {exc}") from exc
    if busy_timeout < 0 or recheck <= 0:
        raise ConfigurationError("busy_timeout must be >= 0 and recheck > 0.")
    return SQLiteBackend(
        path,
        retention,
        synchronous=synchronous,
        busy_timeout_ms=busy_timeout,
        recheck_interval=recheck,
    )


def _redis(url: str, retention: Retention) -> Backend:
    try:
        import redis  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            "The redis:// backend needs the Redis client: pip install 'agentcomm[redis]'."
        ) from exc
    from .redis import RedisBackend

    # `prefix`, `recheck` and `command_timeout` are ours; every other option goes to redis-py
    parts = urlsplit(url)
    pairs = [(k, v) for k, vs in parse_qs(parts.query).items() for v in vs]
    ours = {k: v for k, v in pairs if k in ("prefix", "recheck", "command_timeout")}
    rest = urlencode([(k, v) for k, v in pairs if k not in ours])
    recheck = _seconds(ours, "recheck", 1.0)
    command_timeout = _seconds(ours, "command_timeout", 5.0)
    return RedisBackend(
        urlunsplit(parts._replace(query=rest)),
        retention,
        prefix=ours.get("prefix", "agentcomm"),
        recheck_interval=recheck,
        command_timeout=command_timeout,
    )


def _seconds(options: dict[str, str], name: str, default: float) -> float:
    """The URL option `name`: a finite number of seconds > 0."""
    try:
        value = float(options.get(name, default))
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise ConfigurationError(
            f"Bad redis URL option {name}={options[name]!r}: use a finite number of seconds > 0."
        )
    return value


def with_prefix(url: str, prefix: str) -> str:
    """`url` with the Redis key prefix `prefix` set in its query."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("redis", "rediss"):
        raise ConfigurationError("prefix= applies to redis:// and rediss:// URLs only.")
    pairs = [(k, v) for k, vs in parse_qs(parts.query).items() for v in vs if k != "prefix"]
    return urlunsplit(parts._replace(query=urlencode([*pairs, ("prefix", prefix)])))
