"""agentcomm: reliable communication for the agents of a multi-agent system.

Open a hub with `agentcomm.connect(url)`; get agents from it with `await hub.agent(name)`.
"""

from contextlib import suppress as _suppress

from . import dashboard, sandbox
from ._agent import Agent, Outgoing
from ._coord_leases import Leases
from ._errors import (
    ActionRejected,
    AgentCommError,
    AlreadySettled,
    AsyncMisuse,
    AuthenticationFailed,
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    EncodeError,
    HubClosed,
    IntegrityError,
    InvalidName,
    InvalidTopic,
    LeaseLost,
    NotAMember,
    NotFound,
    PermissionDenied,
    PoolConfigConflict,
    RateLimited,
    RefNotFound,
    RefNotHeld,
    Reject,
    RemoteError,
    RequestFailed,
    RequestTimeout,
    SandboxError,
    UnknownAgent,
    ValidationError,
    VersionConflict,
    WrongEventLoop,
)
from ._hub import Hub, connect
from ._lease_models import Lease, LeaseConflict, LeaseResult
from ._mailbox import Message, Reply
from ._models import (
    AgentInfo,
    CheckReport,
    ConsumerInfo,
    DeadLetter,
    HubStats,
    MailboxStats,
    NamespaceInfo,
    PeekedMessage,
    PendingInfo,
    PruneReport,
    PublishResult,
    ScheduleInfo,
    TopicStats,
)
from ._pool_models import (
    EventFilter,
    PoolConfig,
    PoolMember,
    PoolRecord,
    Receipt,
    ToAgent,
    ToPool,
    ToRun,
    ToTopic,
    WakeResult,
)
from ._pools import Pool, PoolSnapshot, Wake
from ._references import AutoPromote, Ref, RefConfig, RefStats, RefStore
from ._settings import Backoff, Limits, Presence, Retention
from ._shared_memory import Change, Entry, KVStats, SharedMemory
from ._subscription import Subscription
from ._topic_message import TopicMessage

__version__ = "0.1.0"

__all__ = [
    "ActionRejected",
    "Agent",
    "AgentCommError",
    "AgentInfo",
    "AlreadySettled",
    "AsyncMisuse",
    "AuthenticationFailed",
    "AutoPromote",
    "BackendError",
    "BackendUnavailable",
    "Backoff",
    "Change",
    "CheckReport",
    "ConfigurationError",
    "ConsumerInfo",
    "DeadLetter",
    "EncodeError",
    "Entry",
    "EventFilter",
    "Hub",
    "HubClosed",
    "HubStats",
    "IntegrityError",
    "InvalidName",
    "InvalidTopic",
    "KVStats",
    "Lease",
    "LeaseConflict",
    "LeaseLost",
    "LeaseResult",
    "Leases",
    "Limits",
    "MailboxStats",
    "Message",
    "NamespaceInfo",
    "NotAMember",
    "NotFound",
    "Outgoing",
    "PeekedMessage",
    "PendingInfo",
    "PermissionDenied",
    "Pool",
    "PoolConfig",
    "PoolConfigConflict",
    "PoolMember",
    "PoolRecord",
    "PoolSnapshot",
    "Presence",
    "PruneReport",
    "PublishResult",
    "RateLimited",
    "Receipt",
    "Ref",
    "RefConfig",
    "RefNotFound",
    "RefNotHeld",
    "RefStats",
    "RefStore",
    "Reject",
    "RemoteError",
    "Reply",
    "RequestFailed",
    "RequestTimeout",
    "Retention",
    "SandboxError",
    "ScheduleInfo",
    "SharedMemory",
    "Subscription",
    "ToAgent",
    "ToPool",
    "ToRun",
    "ToTopic",
    "TopicMessage",
    "TopicStats",
    "UnknownAgent",
    "ValidationError",
    "VersionConflict",
    "Wake",
    "WakeResult",
    "WrongEventLoop",
    "connect",
    "dashboard",
    "sandbox",
    "sync",
]

from . import sync  # it wraps the classes above

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) or callable(_obj):
        with _suppress(AttributeError, TypeError):
            _obj.__module__ = "agentcomm"
del _name, _obj, _suppress
