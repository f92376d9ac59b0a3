"""The one place that knows redis-py's exceptions: each becomes an agentcomm error."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from redis import exceptions as rexc

from ..._errors import (
    AgentCommError,
    BackendError,
    BackendUnavailable,
    RefNotFound,
    ValidationError,
)
from .ref_holds import REF_NOT_FOUND

#: The error a script raises for an argument it refuses before writing anything.
BAD_ARG = "BADARG"

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
