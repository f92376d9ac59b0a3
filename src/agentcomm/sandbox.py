"""The sandbox channel: an agent in a container or VM that shares only a directory with its host.

Two SQLite files, each with one writer: the host writes `inbound.db`, the sandbox writes
`outbound.db`, and each opens the other's file read-only. `bridge()` makes the sandboxed agent
an ordinary agent of a hub. See docs/sandbox.md.

    host = await sandbox.open_host("/srv/sessions/s1")
    box = await sandbox.open_sandbox("/workspace")        # in the sandbox, same directory
"""

from __future__ import annotations

from ._errors import ActionRejected, SandboxError
from ._sandbox.box import Sandbox, open_sandbox
from ._sandbox.bridge import Bridge, bridge
from ._sandbox.host import Host, OutboundMessage, open_host
from ._sandbox.models import ActionResult, InboundMessage, Status, SweepReport
from ._sandbox.sweep import ActionTx, task_actions

__all__ = [
    "ActionRejected",
    "ActionResult",
    "ActionTx",
    "Bridge",
    "Host",
    "InboundMessage",
    "OutboundMessage",
    "Sandbox",
    "SandboxError",
    "Status",
    "SweepReport",
    "bridge",
    "open_host",
    "open_sandbox",
    "task_actions",
]

for _name in __all__:
    _obj = globals()[_name]
    if callable(_obj) and str(getattr(_obj, "__module__", "")).startswith("agentcomm._sandbox"):
        _obj.__module__ = "agentcomm.sandbox"
del _name, _obj
