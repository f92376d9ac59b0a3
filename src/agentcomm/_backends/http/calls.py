"""The backend contract as remote calls: one `StoreCall` per contract method, derived from
`contracts.py` (argument names and types are the contract's own; `now` is dropped: the server
uses its own clock). Shared by the client (`backend.py`) and the server (`_server/rpc.py`)."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

import msgspec

from ..._codec import StoredRef
from ..._models import AgentInfo, DeadLetter
from .. import contracts

__all__ = ["CALLS", "FEATURES", "StoreCall", "from_wire", "wire_result"]

FEATURES: dict[str, type] = {
    "mailboxes": contracts.MailboxStore,
    "topics": contracts.TopicStore,
    "shared_memory": contracts.SharedMemoryStore,
    "references": contracts.ReferenceStore,
    "pools": contracts.PoolStore,
    "leases": contracts.LeaseStore,
    "backend": contracts.Backend,
}
#: Not remote calls: the hub's side of the connection, or (the `*_waiting` ones) a remote
#: call with `?wait=` (see `HttpBackend.claim_waiting`).
_SKIP = {"open", "close", "check", "claim_waiting", "take_reply_waiting"}


class AgentInfoWire(msgspec.Struct):
    """`AgentInfo` on the wire (its public class cannot be decoded by name)."""

    name: str
    created_at: float
    last_seen: float
    last_active: float | None = None
    state: str = "idle"


class DeadLetterWire(msgspec.Struct):
    """`DeadLetter` on the wire: a payload held by reference travels as `ref`."""

    id: str
    sender: str
    recipient: str
    type: str
    reason: str
    attempts: int
    enqueued_at: float
    dead_at: float
    data: Any
    metadata: dict[str, Any]
    error: str | None = None
    ref: StoredRef | None = None


def _wire_type(tp: Any) -> Any:
    """The type a result is decoded as on the client."""
    if tp is AgentInfo:
        return AgentInfoWire
    if tp == AgentInfo | None:
        return AgentInfoWire | None
    if tp == list[AgentInfo]:
        return list[AgentInfoWire]
    if tp == list[DeadLetter]:
        return list[DeadLetterWire]
    return tp


class StoreCall:
    """One contract method as a remote call."""

    def __init__(self, feature: str, name: str, fn: Callable[..., Any]) -> None:
        hints = typing.get_type_hints(fn)
        params = list(inspect.signature(fn).parameters)[1:]
        self.feature = feature
        self.name = name
        self.params = params
        self.takes_now = "now" in params
        fields = [(p, hints[p]) for p in params if p != "now"]
        self.args_type = msgspec.defstruct(f"{feature}.{name}", fields, forbid_unknown_fields=True)
        self.decoder = msgspec.msgpack.Decoder(self.args_type)
        self.result_type = _wire_type(hints["return"])
        self.result_decoder = msgspec.msgpack.Decoder(self.result_type)
        self.signature = inspect.signature(fn)


CALLS: dict[tuple[str, str], StoreCall] = {}
for _feature, _cls in FEATURES.items():
    for _name, _fn in vars(_cls).items():
        if callable(_fn) and not _name.startswith("_") and _name not in _SKIP:
            CALLS[(_feature, _name)] = StoreCall(_feature, _name, _fn)


def wire_result(call: StoreCall, value: Any) -> Any:
    """A result as it is encoded for the client."""
    if call.result_type == list[DeadLetterWire]:
        out = []
        for d in value:
            fields = msgspec.structs.asdict(d)
            if isinstance(d.data, StoredRef):
                fields["ref"], fields["data"] = d.data, None
            out.append(DeadLetterWire(**fields))
        return out
    return value


def from_wire(value: Any) -> Any:
    """A decoded result as the contract returns it (wire mirrors back to public classes)."""
    if isinstance(value, list):
        return [from_wire(v) for v in value]
    if isinstance(value, AgentInfoWire):
        return AgentInfo(**msgspec.structs.asdict(value))
    if isinstance(value, DeadLetterWire):
        fields = msgspec.structs.asdict(value)
        ref = fields.pop("ref")
        if ref is not None:
            fields["data"] = ref
        return DeadLetter(**fields)
    return value
