"""Shared memory: `/v1/kv/{namespace}/...` (shared) and `/v1/agents/{agent}/memory/...`
(the agent's private namespace)."""

from __future__ import annotations

from .._errors import ValidationError
from .._kv_records import Space
from .._shared_memory import Entry, SharedMemory
from .._validation import check_name
from . import authz
from .api import Call, route
from .schemas import Deleted, EntryOut, Keys, PutBody

TAG = "memory"


def _memory(call: Call, write: bool) -> SharedMemory:
    hub = call.server.hub
    if "agent" in call.request.path_params:
        agent = call.path("agent")
        authz.need_kv(call.principal, Space(check_name("agent name", agent), ""), write)
        from .._shared_memory import SharedMemory as SM

        return SM._open(hub._ctx, None, agent=agent, history=None, change_log=None)
    namespace = call.path("namespace")
    authz.need_kv(call.principal, Space("", namespace), write)
    return hub.memory(namespace)


def _out(e: Entry) -> EntryOut:
    return EntryOut(
        key=e.key, value=e.value, version=e.version, created_at=e.created_at,
        updated_at=e.updated_at, updated_by=e.updated_by, expires_at=e.expires_at,
    )  # fmt: skip


async def get(call: Call) -> EntryOut:
    entry = await _memory(call, False).get(call.path("key"))
    if entry is None:
        from .._errors import NotFound

        raise NotFound(f"No live key {call.path('key')!r}.")
    return _out(entry)


async def put(call: Call) -> EntryOut:
    b: PutBody = call.body
    return _out(
        await _memory(call, True).put(
            call.path("key"), b.value, expected_version=b.expected_version, ttl=b.ttl
        )
    )


async def delete(call: Call) -> Deleted:
    raw = call.query("expected_version")
    expected = None
    if raw is not None:
        if not raw.isdigit():
            raise ValidationError("expected_version must be a whole number >= 0.")
        expected = int(raw)
    return Deleted(await _memory(call, True).delete(call.path("key"), expected_version=expected))


async def keys(call: Call) -> Keys:
    return Keys(await _memory(call, False).keys(call.query("pattern") or "*"))


_EV = [("expected_version", "integer", "Delete only at this version (0: absent).")]
_PAT = [("pattern", "string", "A glob the keys match (default `*`).")]
for _base, _what in (("/v1/kv/{namespace}", "a shared namespace"),
                     ("/v1/agents/{agent}/memory", "the agent's private namespace")):  # fmt: skip
    route("GET", _base + "/{key}", summary=f"Read a key of {_what}", tag=TAG,
          response=EntryOut)(get)  # fmt: skip
    route("PUT", _base + "/{key}", summary=f"Write a key of {_what}", tag=TAG, body=PutBody,
          response=EntryOut)(put)  # fmt: skip
    route("DELETE", _base + "/{key}", summary=f"Delete a key of {_what}", tag=TAG,
          response=Deleted, query=_EV)(delete)  # fmt: skip
    route("GET", _base, summary=f"List the live keys of {_what}", tag=TAG, response=Keys,
          query=_PAT)(keys)  # fmt: skip
