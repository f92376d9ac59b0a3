"""Error bodies: `{"error": {"type": "VersionConflict", "message": "...", ...}}`.

`type` is the name of the Python error (`agentcomm._errors`), so a client can raise the same
class; the error's public attributes (e.g. `key`, `expected`, `actual`) ride along. No stack
trace is ever sent: an unexpected exception answers 500 with type `BackendError`.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from starlette.responses import Response

from .. import _errors
from .._errors import (
    AgentCommError,
    AlreadySettled,
    AuthenticationFailed,
    BackendUnavailable,
    ConfigurationError,
    HubClosed,
    IntegrityError,
    LeaseLost,
    NotFound,
    PermissionDenied,
    PoolConfigConflict,
    RateLimited,
    RequestFailed,
    RequestTimeout,
    ValidationError,
    VersionConflict,
)

__all__ = ["BodyTooLarge", "ErrorBody", "ErrorDetail", "error_response", "status_of"]

logger = logging.getLogger("agentcomm.server")


class BodyTooLarge(ValidationError):
    """A request body (or uploaded blob) over the server's limit: answered 413."""

    def __init__(self, limit: int, what: str = "request body") -> None:
        super().__init__(f"The {what} is larger than the server's limit of {limit} bytes; "
                         "nothing was stored.")  # fmt: skip


class ErrorDetail(msgspec.Struct, kw_only=True):
    """What went wrong: the Python error's name, its message, and (optionally) the field."""

    type: str
    message: str
    field: str | None = None
    attrs: dict[str, Any] | None = None


class ErrorBody(msgspec.Struct):
    """Every error response's body."""

    error: ErrorDetail


# most specific first
_STATUS: tuple[tuple[type[AgentCommError], int], ...] = (
    (AuthenticationFailed, 401),
    (PermissionDenied, 403),
    (RateLimited, 429),
    (NotFound, 404),
    (VersionConflict, 409),
    (PoolConfigConflict, 409),
    (LeaseLost, 409),
    (AlreadySettled, 409),
    (RequestTimeout, 504),
    (RequestFailed, 502),
    (ValidationError, 422),
    (IntegrityError, 422),
    (ConfigurationError, 400),
    (HubClosed, 503),
    (BackendUnavailable, 503),
)

#: The attributes of an error that travel with it (all plain values).
_ATTRS = ("key", "expected", "actual", "received", "attempts", "recipient", "correlation_id",
          "reason", "expired", "retry_after", "type", "message", "data", "sender")  # fmt: skip


def status_of(exc: AgentCommError) -> int:
    """The HTTP status of an agentcomm error."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def _attrs(exc: AgentCommError) -> dict[str, Any] | None:
    out = {}
    for name in _ATTRS:
        if name in vars(exc):
            value = vars(exc)[name]
            try:
                msgspec.json.encode(value)
            except (TypeError, ValueError):
                continue
            out[name] = value
    return out or None


def error_response(
    exc: BaseException, *, status: int | None = None, field: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:  # fmt: skip
    """The JSON response for `exc`; anything not an AgentCommError is logged and hidden."""
    if isinstance(exc, AgentCommError):
        name = type(exc).__name__
        if not hasattr(_errors, name):  # a private subclass: name its public parent
            name = next(c.__name__ for c in type(exc).__mro__ if hasattr(_errors, c.__name__))
        detail = ErrorDetail(type=name, message=str(exc), field=field, attrs=_attrs(exc))
        code = status or status_of(exc)
        if isinstance(exc, RateLimited):
            headers = {**(headers or {}), "Retry-After": str(max(1, round(exc.retry_after)))}
    else:
        logger.error("unexpected error in the server", exc_info=exc)
        detail = ErrorDetail(type="BackendError", message="The server failed; see its log.")
        code = status or 500
    return Response(
        msgspec.json.encode(ErrorBody(detail)), status_code=code,
        media_type="application/json", headers=headers,
    )  # fmt: skip
