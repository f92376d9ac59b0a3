"""The exception hierarchy. Every error agentcomm raises is an :class:`AgentCommError`.

::

    AgentCommError
    ├── ConfigurationError          bad URL, unknown backend, missing extra
    ├── ValidationError (ValueError) an argument is out of range or malformed
    │   ├── InvalidName              agent name does not follow the naming rules
    │   ├── InvalidTopic             topic name or pattern is malformed
    │   ├── EncodeError              payload or metadata cannot be encoded
    │   └── RefNotHeld               release of a reference this hub's holder does not hold
    ├── NotFound (LookupError)
    │   ├── UnknownAgent             recipient was never registered
    │   ├── NotAMember               the run is not a member of the pool
    │   └── RefNotFound              no stored blob has that reference id
    ├── LeaseLost                    ack/nack/extend after the lease passed to another delivery
    ├── AlreadySettled               the message was already acked, nacked or dead-lettered
    ├── Reject                       raised by a `serve` handler: dead-letter the message
    ├── RequestTimeout (TimeoutError) no reply before the deadline
    ├── RequestFailed                the request was dead-lettered or expired unanswered
    ├── RemoteError                  the responder answered with `reply_error`
    ├── VersionConflict              a shared-memory write expected another version
    ├── PoolConfigConflict           a pool opened with another config than it was created with
    ├── IntegrityError               a stored blob no longer matches its checksum
    ├── HubClosed                    the hub is closed or was never opened
    ├── AsyncMisuse (TypeError)      an async call used without `await` / `async with`
    ├── WrongEventLoop (RuntimeError) a hub used from another event loop than the one it opened in
    ├── AuthenticationFailed         the server knows no such token, or it was revoked
    ├── PermissionDenied             the server's token does not allow this operation
    ├── RateLimited                  the server's rate limit for this token was reached
    ├── SandboxError                 a sandbox channel cannot do what was asked
    │   └── ActionRejected           a sandbox action handler refused the request
    └── BackendError                 the storage engine failed
        └── BackendUnavailable       the storage engine cannot be reached or stays locked
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ActionRejected",
    "AgentCommError",
    "AlreadySettled",
    "AsyncMisuse",
    "AuthenticationFailed",
    "BackendError",
    "BackendUnavailable",
    "ConfigurationError",
    "EncodeError",
    "HubClosed",
    "IntegrityError",
    "InvalidName",
    "InvalidTopic",
    "LeaseLost",
    "NotAMember",
    "NotFound",
    "PermissionDenied",
    "PoolConfigConflict",
    "RateLimited",
    "RefNotFound",
    "RefNotHeld",
    "Reject",
    "RemoteError",
    "RequestFailed",
    "RequestTimeout",
    "SandboxError",
    "UnknownAgent",
    "ValidationError",
    "VersionConflict",
    "WrongEventLoop",
]


class AgentCommError(Exception):
    """Root of every error raised by agentcomm."""


class ConfigurationError(AgentCommError):
    """The hub cannot be built as asked: bad URL, unknown scheme, or a missing optional extra."""


class ValidationError(AgentCommError, ValueError):
    """An argument is malformed or out of range; nothing was stored."""


class InvalidName(ValidationError):
    """A name (agent, namespace, ...) does not follow the naming rules."""


class InvalidTopic(ValidationError):
    """A topic name or subscription pattern is malformed."""


class EncodeError(ValidationError):
    """A payload or metadata value cannot be encoded; nothing was stored."""


class RefNotHeld(ValidationError):
    """A release named a blob this hub's reference holder holds no reference to; nothing changed.

    References are counted per holder (`RefConfig.holder`): a release only drops one that the
    same holder took with `store`, `store_file` or `retain`. A received message's payload is
    held by the message itself and needs no release.
    """

    def __init__(self, ref_id: str, holder: str) -> None:
        super().__init__(
            f"Cannot release {ref_id}: holder {holder!r} holds no reference to it, so nothing "
            "was changed. Release only what this holder took with refs.store(), "
            "refs.store_file() or refs.retain(); a received message's payload_ref needs no "
            "release (the message holds it until it is acked)."
        )
        self.ref_id = ref_id
        self.holder = holder

    def __reduce__(self) -> tuple[type[RefNotHeld], tuple[str, str]]:
        return (RefNotHeld, (self.ref_id, self.holder))


class NotFound(AgentCommError, LookupError):
    """The named object does not exist."""


class UnknownAgent(NotFound):
    """The recipient agent was never registered with this hub."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"Agent {name!r} is not registered. Register it with `await hub.agent({name!r})` "
            "first, or open the hub with `auto_register=True`."
        )
        self.name = name


class NotAMember(NotFound):
    """The run is not a member of the pool."""

    def __init__(self, pool: str, run: str) -> None:
        super().__init__(
            f"Run {run!r} is not a member of pool {pool!r}: join it first with "
            f"`await pool.join({run!r}, agent=...)`."
        )
        self.pool = pool
        self.run = run


class PoolConfigConflict(AgentCommError):
    """A pool was opened with a config other than the one it was created with."""


class RefNotFound(NotFound):
    """No blob with that reference id is stored (never stored, or evicted)."""


class IntegrityError(AgentCommError):
    """A stored blob's bytes no longer match its id (SHA-256); no data was returned."""


class LeaseLost(AgentCommError):
    """The lease ended and the message was delivered again; this delivery cannot settle it."""


class AlreadySettled(AgentCommError):
    """The message was already acked, nacked or dead-lettered through this handle."""


class Reject(AgentCommError):
    """Raise it from an `agent.serve` handler to give up on the message: it is dead-lettered at
    once (no retry) with the exception's message as its reason, e.g.
    `raise agentcomm.Reject("malformed order: no customer id")`."""

    def __init__(self, reason: str = "rejected by the handler") -> None:
        super().__init__(reason)
        self.reason = str(reason) or "rejected by the handler"

    def __reduce__(self) -> tuple[type[Reject], tuple[str]]:
        return (Reject, (self.reason,))


class RequestTimeout(AgentCommError, TimeoutError):
    """No reply arrived before the request's timeout; a later reply is discarded and counted.

    `received` says whether the request was ever delivered to the recipient (`attempts`
    times): False points at nobody receiving from that mailbox, True at a responder that
    took too long or did not answer.
    """

    def __init__(
        self,
        message: str,
        *,
        received: bool = False,
        attempts: int = 0,
        recipient: str = "",
        correlation_id: str = "",
    ) -> None:
        super().__init__(message)
        self.received = received
        self.attempts = attempts
        self.recipient = recipient
        self.correlation_id = correlation_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (RequestTimeout, str(self), {"received": self.received, "attempts": self.attempts,
             "recipient": self.recipient, "correlation_id": self.correlation_id}),
        )  # fmt: skip


class RequestFailed(AgentCommError):
    """The request was dead-lettered (its attempts used up, nacked on its last delivery, or
    dead-lettered by the responder) or expired before it was answered; raised as soon as that
    happens, not at the timeout.

    `reason` is the dead-letter reason (as `hub.dead_letters()` lists it), `attempts` how
    many times it was delivered, `expired` whether it expired rather than being
    dead-lettered.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str = "",
        attempts: int = 0,
        expired: bool = False,
        recipient: str = "",
        correlation_id: str = "",
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.attempts = attempts
        self.expired = expired
        self.recipient = recipient
        self.correlation_id = correlation_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (RequestFailed, str(self), {"reason": self.reason, "attempts": self.attempts,
             "expired": self.expired, "recipient": self.recipient,
             "correlation_id": self.correlation_id}),
        )  # fmt: skip


class RemoteError(AgentCommError):
    """The responder answered the request with `msg.reply_error(...)`.

    `type` is the error type it gave (default "error"), `message` its text, `data` the
    optional details, `sender` the agent that answered.
    """

    def __init__(
        self, message: str, *, type: str = "error", data: Any = None, sender: str = ""
    ) -> None:
        text = f"{sender or 'The responder'} answered with an error ({type}): {message}"
        super().__init__(text)
        self.type = type
        self.message = message
        self.data = data
        self.sender = sender

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_remote,
            (self.message, self.type, self.data, self.sender),
        )


def _rebuild(cls: type[Exception], message: str, attrs: dict[str, Any]) -> Exception:
    return cls(message, **attrs)


def _rebuild_remote(message: str, type: str, data: Any, sender: str) -> RemoteError:
    return RemoteError(message, type=type, data=data, sender=sender)


class VersionConflict(AgentCommError):
    """A shared-memory write expected a version the key does not have; nothing was written."""

    def __init__(self, key: str, expected: int, actual: int) -> None:
        super().__init__(
            f"Key {key!r} is at version {actual}, not the expected {expected} (0 means absent). "
            "Read it again with get() and retry, or use update() to retry automatically."
        )
        self.key = key
        self.expected = expected
        self.actual = actual

    def __reduce__(self) -> tuple[type[VersionConflict], tuple[str, int, int]]:
        return (VersionConflict, (self.key, self.expected, self.actual))


class HubClosed(AgentCommError):
    """The hub is closed, or was used before it was opened."""


class AsyncMisuse(AgentCommError, TypeError):
    """An async call was used as if it were blocking: its result used without `await`, or
    `with` where `async with` is needed. Await it, or use the blocking `agentcomm.sync` API."""


class WrongEventLoop(AgentCommError, RuntimeError):
    """The hub was used from another event loop than the one it was opened in (each
    `asyncio.run()` makes a new loop). Open one hub per loop, or use `agentcomm.sync`."""


class BackendError(AgentCommError):
    """The storage engine reported an error."""


class BackendUnavailable(BackendError):
    """The storage engine cannot be reached, or stayed locked past the busy timeout."""


class AuthenticationFailed(AgentCommError):
    """The agentcomm server does not know the token (never issued, revoked, or malformed):
    HTTP 401. Ask an admin for a token (`agentcomm token create`)."""


class PermissionDenied(AgentCommError):
    """The agentcomm server's token does not allow this operation (HTTP 403); nothing was
    changed. `agentcomm token create --help` lists the permissions a token can carry."""


class RateLimited(AgentCommError):
    """The agentcomm server's rate limit for this token was reached (HTTP 429); retry after
    `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (RateLimited, str(self), {"retry_after": self.retry_after}))


class SandboxError(AgentCommError):
    """A sandbox channel (`agentcomm.sandbox`) cannot do what was asked: its directory or files
    are missing or owned by another side, or the side is closed."""


class ActionRejected(SandboxError):
    """Raised by a sandbox action handler to refuse the request; the sandbox receives
    `status="rejected"` with this error's message as the reason, and nothing is applied."""
