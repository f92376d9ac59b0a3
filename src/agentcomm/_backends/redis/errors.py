"""The one place that knows redis-py's exceptions: each becomes an agentcomm error."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from redis import exceptions as rexc

from ..._errors import (
    AgentCommError,
    BackendError,
    BackendUnavailable,
    NotAMember,
    RefNotFound,
    ValidationError,
)
from ..pool_engine import agent_conflict, config_conflict, pool_missing, wake_missing
from .ref_holds import REF_NOT_FOUND

#: The error a script raises for an argument it refuses before writing anything.
BAD_ARG = "BADARG"

#: The error the pool script raises, before writing anything, for a rule a call breaks:
#: `POOLERR <code> <pool> <args...>` (names hold no spaces; Redis may append its own words).
POOL_ERROR = "POOLERR"

#: What closing a connection that is already broken may raise; ignored on cleanup.
CLOSE_ERRORS = (rexc.RedisError, OSError)


#: Every exception redis-py raises (and the socket errors it may let through).
REDIS_ERRORS = (rexc.RedisError, OSError)


def translate(exc: BaseException, where: str) -> AgentCommError:
    """Our error for a redis-py exception: BackendUnavailable when the connection failed,
    RefNotFound when a script found a payload's reference missing, ValidationError when a
    script refused an argument (before its first write)."""
    if isinstance(exc, rexc.ResponseError) and str(exc).startswith(REF_NOT_FOUND):
        ref_id = (str(exc).removeprefix(REF_NOT_FOUND).split() or ["a blob"])[0]
        return RefNotFound(f"The payload refers to {ref_id}, which is not stored (evicted?).")
    if isinstance(exc, rexc.ResponseError) and str(exc).startswith(POOL_ERROR + " "):
        return _pool_error(str(exc).split(), where)
    if isinstance(exc, rexc.ResponseError) and str(exc).startswith(BAD_ARG):
        return ValidationError(
            f"Redis refused the call before storing anything: {str(exc).removeprefix(BAD_ARG)}."
        )
    if isinstance(exc, rexc.ConnectionError | rexc.TimeoutError | rexc.ReadOnlyError | OSError):
        return BackendUnavailable(
            f"Redis at {where} cannot be reached ({type(exc).__name__}: {exc}). The hub "
            "reconnects by itself; retry the operation once Redis is back."
        )
    return BackendError(f"Redis at {where} failed: {type(exc).__name__}: {exc}")


def _pool_error(words: list[str], where: str) -> AgentCommError:
    """The typed error a `POOLERR` reply of the pool script stands for."""
    code, args = words[1], words[2:]
    if code == "NOTFOUND" and args:
        return pool_missing(args[0])
    if code == "NOTAMEMBER" and len(args) >= 2:
        return NotAMember(args[0], args[1])
    if code == "CONFLICT" and len(args) >= 2:
        return config_conflict(args[0], args[1].encode())
    if code == "AGENT" and len(args) >= 3:
        return agent_conflict(args[0], args[1], args[2])
    if code == "NOWAKE" and len(args) >= 2:
        return wake_missing(args[0], args[1])
    return BackendError(f"Redis at {where} failed: {' '.join(words)}")


@contextlib.contextmanager
def redis_errors(where: str) -> Iterator[None]:
    """Raise BackendUnavailable for a connection that failed, BackendError for the rest."""
    try:
        yield
    except REDIS_ERRORS as exc:
        raise translate(exc, where) from exc


def text(value: bytes | str) -> str:
    """A reply value as text (the client returns bytes; its types allow str too)."""
    return value if isinstance(value, str) else value.decode()
