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
    │   └── RefNotFound              no stored blob has that reference id
    ├── LeaseLost                    ack/nack/extend after the lease passed to another delivery
    ├── AlreadySettled               the message was already acked, nacked or dead-lettered
    ├── RequestTimeout (TimeoutError) no reply before the deadline
    ├── VersionConflict              a shared-memory write expected another version
    ├── IntegrityError               a stored blob no longer matches its checksum
    ├── HubClosed                    the hub is closed or was never opened
    ├── SandboxError                 a sandbox channel cannot do what was asked
    │   └── ActionRejected           a sandbox action handler refused the request
    └── BackendError                 the storage engine failed
        └── BackendUnavailable       the storage engine cannot be reached or stays locked
"""

from __future__ import annotations

__all__ = [
    "ActionRejected",
    "AgentCommError",
    "AlreadySettled",
    "BackendError",
    "BackendUnavailable",
    "ConfigurationError",
    "EncodeError",
    "HubClosed",
    "IntegrityError",
    "InvalidName",
    "InvalidTopic",
    "LeaseLost",
    "NotFound",
    "RefNotFound",
    "RefNotHeld",
    "RequestTimeout",
    "SandboxError",
    "UnknownAgent",
    "ValidationError",
    "VersionConflict",
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


class RefNotFound(NotFound):
    """No blob with that reference id is stored (never stored, or evicted)."""


class IntegrityError(AgentCommError):
    """A stored blob's bytes no longer match its id (SHA-256); no data was returned."""


class LeaseLost(AgentCommError):
    """The lease ended and the message was delivered again; this delivery cannot settle it."""


class AlreadySettled(AgentCommError):
    """The message was already acked, nacked or dead-lettered through this handle."""


class RequestTimeout(AgentCommError, TimeoutError):
    """No reply arrived before the request's timeout; a later reply is discarded and counted."""


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


class BackendError(AgentCommError):
    """The storage engine reported an error."""


class BackendUnavailable(BackendError):
    """The storage engine cannot be reached, or stayed locked past the busy timeout."""


class SandboxError(AgentCommError):
    """A sandbox channel (`agentcomm.sandbox`) cannot do what was asked: its directory or files
    are missing or owned by another side, or the side is closed."""


class ActionRejected(SandboxError):
    """Raised by a sandbox action handler to refuse the request; the sandbox receives
    `status="rejected"` with this error's message as the reason, and nothing is applied."""
