"""agentcomm: reliable communication for the agents of a multi-agent system.

Open a hub with `agentcomm.connect(url)`; get agents from it with `await hub.agent(name)`.
"""

from contextlib import suppress as _suppress

from . import sandbox
from ._agent import Agent, Outgoing
from ._errors import (
    ActionRejected,
    AgentCommError,
    AlreadySettled,
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    EncodeError,
    HubClosed,
    IntegrityError,
    InvalidName,
    InvalidTopic,
    LeaseLost,
    NotFound,
    RefNotFound,
    RefNotHeld,
    RequestTimeout,
    SandboxError,
    UnknownAgent,
    ValidationError,
    VersionConflict,
)
from ._hub import Hub, connect
from ._mailbox import Message, Reply
from ._models import (
    AgentInfo,
    CheckReport,
    DeadLetter,
    HubStats,
    MailboxStats,
    PendingInfo,
    PruneReport,
    PublishResult,
    ScheduleInfo,
    TopicStats,
)
from ._references import AutoPromote, Ref, RefConfig, RefStats, RefStore
from ._settings import Backoff, Limits, Retention
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
    "AutoPromote",
    "BackendError",
    "BackendUnavailable",
    "Backoff",
    "Change",
    "CheckReport",
    "ConfigurationError",
    "DeadLetter",
    "EncodeError",
    "Entry",
    "Hub",
    "HubClosed",
    "HubStats",
    "IntegrityError",
    "InvalidName",
    "InvalidTopic",
    "KVStats",
    "LeaseLost",
    "Limits",
    "MailboxStats",
    "Message",
    "NotFound",
    "Outgoing",
    "PendingInfo",
    "PruneReport",
    "PublishResult",
    "Ref",
    "RefConfig",
    "RefNotFound",
    "RefNotHeld",
    "RefStats",
    "RefStore",
    "Reply",
    "RequestTimeout",
    "Retention",
    "SandboxError",
    "ScheduleInfo",
    "SharedMemory",
    "Subscription",
    "TopicMessage",
    "TopicStats",
    "UnknownAgent",
    "ValidationError",
    "VersionConflict",
    "connect",
    "sandbox",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) or callable(_obj):
        with _suppress(AttributeError, TypeError):
            _obj.__module__ = "agentcomm"
del _name, _obj, _suppress
