"""Storage backends, chosen by URL scheme: `sqlite://` (default), `memory://`, `redis://`."""

from __future__ import annotations

import math
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from .._errors import ConfigurationError
from .._settings import Retention
from .contracts import Backend

__all__ = ["Backend", "DEFAULT_URL", "open_backend", "with_prefix"]

DEFAULT_URL = "sqlite:///agentcomm.db"
_SCHEMES = ("sqlite", "memory", "redis", "rediss", "http", "https")
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
_MAX_BUSY_TIMEOUT_MS = 2**31 - 1  # SQLite takes an int
_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def open_backend(url: str, retention: Retention, token: str | None = None) -> Backend:
    """Build the backend named by `url` (not yet opened); `token` is for http(s):// only."""
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
    if scheme in ("http", "https"):
        from .http import HttpBackend

        return HttpBackend(url, retention, token)
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
    unknown = set(query) - {"synchronous", "busy_timeout", "recheck", "create"}
    if unknown:
        raise ConfigurationError(
            f"Unknown sqlite URL option(s) {sorted(unknown)}; "
            "known: synchronous, busy_timeout (ms), recheck (s), create (0 or 1)."
        )
    synchronous = query.get("synchronous", "NORMAL").upper()
    if synchronous not in _SYNCHRONOUS:
        raise ConfigurationError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}.")
    busy = query.get("busy_timeout", "10000")
    if not (busy.isascii() and busy.isdigit()) or int(busy) > _MAX_BUSY_TIMEOUT_MS:
        raise ConfigurationError(
            f"Bad sqlite URL option: busy_timeout must be a whole number of milliseconds from 0 to "
            f"{_MAX_BUSY_TIMEOUT_MS}, not {busy!r}."
        )
    create = query.get("create", "0").lower()
    if create not in _FLAGS:
        raise ConfigurationError(
            f"Bad sqlite URL option: create must be 1 or 0 (true or false), not {create!r}."
        )
    return SQLiteBackend(
        path,
        retention,
        synchronous=synchronous,
        busy_timeout_ms=int(busy),
        recheck_interval=_recheck(query.get("recheck", "2.0")),
        create=_FLAGS[create],
    )


def _recheck(text: str) -> float:
    """The `recheck` URL option: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigurationError(
            "Bad sqlite URL option: recheck must be a finite number of seconds > 0 (e.g. 2), "
            f"not {text!r}."
        )
    return value


def _redis(url: str, retention: Retention) -> Backend:
    try:
        import redis  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            "The redis:// backend needs the Redis client: pip install 'agentcomm[redis]'."
        ) from exc
    from .redis import RedisBackend

    # `prefix`, `recheck`, `command_timeout` and `scripts` are ours; every other option goes to
    # redis-py
    parts = urlsplit(url)
    pairs = [(k, v) for k, vs in parse_qs(parts.query).items() for v in vs]
    ours = {k: v for k, v in pairs if k in ("prefix", "recheck", "command_timeout", "scripts")}
    rest = urlencode([(k, v) for k, v in pairs if k not in ours])
    recheck = _seconds(ours, "recheck", 1.0)
    command_timeout = _seconds(ours, "command_timeout", 5.0)
    scripts = ours.get("scripts", "auto")
    if scripts not in ("auto", "eval"):
        raise ConfigurationError(
            f"Bad redis URL option scripts={scripts!r}: use auto (a Functions library on Redis 7 "
            "and newer, EVALSHA scripts before) or eval (EVALSHA scripts always)."
        )
    return RedisBackend(
        urlunsplit(parts._replace(query=rest)),
        retention,
        prefix=ours.get("prefix", "agentcomm"),
        recheck_interval=recheck,
        command_timeout=command_timeout,
        functions=scripts == "auto",
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
