"""The store calls of the Python client: `POST /v1/store/{feature}/{method}` (msgpack).

The Python client (`agentcomm._backends.http`) is a backend: the feature layer (validation,
encoding, the tier policy, waiting) runs in the client's hub, and each backend contract call
travels here. The argument names and types are the contract's own (`contracts.py`), so this
table is derived from it, except `now`: the server's clock is used, never the caller's. Each
call is authorized by `CHECKS` (below, calling `authz`), and what it returns is filtered where
a token may see only part of it (topic records, agents, schedules).

`GET /v1/store/events` is a Server-Sent Events stream of the wake-up channels the token may
see: the client's waits wake on the server's commits, as a local hub's do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import ClientDisconnect

from .._backends.common import mail_channel, reply_channel
from .._backends.http.calls import CALLS, StoreCall, wire_result
from .._coord_leases import MAX_PATTERNS, MAX_REASON
from .._errors import NotFound, PermissionDenied, RefNotHeld, ValidationError
from .._globs import normalize
from .._records import TopicBatch
from .._validation import check_name, check_positive, check_text
from . import authz
from .api import Call

__all__ = ["CALLS", "WAITS", "StoreCall", "events", "invoke", "wire_result"]

# --- authorization of each call --------------------------------------------------------------

Check = Callable[[Call, Any], Awaitable[None]]
CHECKS: dict[tuple[str, str], Check] = {}


def check(*keys: str) -> Callable[[Check], Check]:
    """Register an authorization check for the calls `feature.method`."""

    def register(fn: Check) -> Check:
        for key in keys:
            feature, name = key.split(".")
            CHECKS[(feature, name)] = fn
        return fn

    return register


def _p(call: Call) -> authz.Principal:
    return call.token.principal


@check("mailboxes.register_agent", "mailboxes.touch_agent")
async def _agent_name(call: Call, a: Any) -> None:
    authz.need_act_as(_p(call), check_name("agent name", a.name))


@check("mailboxes.get_agent", "mailboxes.mailbox_stats", "mailboxes.pending",
       "mailboxes.dead_letters")  # fmt: skip
async def _inspect(call: Call, a: Any) -> None:
    name = getattr(a, "name", None) or a.agent
    if not _p(call).admin:
        authz.need_act_as(_p(call), name, "inspect")


@check("mailboxes.list_agents", "mailboxes.list_schedules", "topics.topic_head",
       "topics.topic_stats", "topics.count_topic_deliveries", "topics.read_topics",
       "mailboxes.take_reply", "mailboxes.request_attempts", "references.ref_put",
       "references.ref_stage", "references.ref_commit", "references.ref_abort",
       "references.ref_read", "references.ref_adjust", "references.ref_stats")  # fmt: skip
async def _anyone(call: Call, a: Any) -> None:
    """Any token: results are filtered, or the call needs an unguessable id."""


@check("mailboxes.enqueue")
async def _enqueue(call: Call, a: Any) -> None:
    for m in a.messages:
        authz.need_act_as(_p(call), m.sender, "send as")
        check_name("recipient", m.recipient)
        if m.reply_to not in (None, m.sender):
            raise PermissionDenied("A request's reply_to must be its sender.")


@check("mailboxes.claim")
async def _claim(call: Call, a: Any) -> None:
    authz.need_act_as(_p(call), a.agent, "receive for")


@check("mailboxes.settle")
async def _settle(call: Call, a: Any) -> None:
    authz.need_act_as(_p(call), a.op.recipient, "settle messages of")


@check("mailboxes.settle_many", "mailboxes.release")
async def _settle_many(call: Call, a: Any) -> None:
    for op in a.ops:
        authz.need_act_as(_p(call), op.recipient, "settle messages of")


@check("mailboxes.post_reply")
async def _post_reply(call: Call, a: Any) -> None:
    authz.need_act_as(_p(call), a.reply.sender, "reply as")
    if a.ack is not None:
        authz.need_act_as(_p(call), a.ack.recipient, "settle messages of")


@check("mailboxes.requeue_dead", "mailboxes.fire_due", "references.ref_gc",
       "references.ref_list", "pools.pool_expire_wakes", "backend.prune",
       "backend.stats", "backend.prefixes", "mailboxes.delete_message", "mailboxes.purge",
       "mailboxes.remove_agent", "pools.pool_names", "shared_memory.kv_spaces",
       "topics.list_consumers")  # fmt: skip
async def _admin(call: Call, a: Any) -> None:
    authz.need_admin(_p(call), "This operation")


@check("mailboxes.peek")
async def _peek(call: Call, a: Any) -> None:
    authz.need_act_as(_p(call), a.agent, "look into the inbox of")


@check("mailboxes.add_schedule")
async def _add_schedule(call: Call, a: Any) -> None:
    authz.need_act_as(_p(call), a.spec.sender, "schedule as")
    check_name("recipient", a.spec.recipient)


@check("mailboxes.cancel_schedule")
async def _cancel_schedule(call: Call, a: Any) -> None:
    if _p(call).admin:
        return
    mailboxes = call.server.hub._ctx.mailboxes
    for s in await mailboxes.list_schedules():
        if s.id == a.schedule_id:
            authz.need_act_as(_p(call), s.sender, "cancel schedules of")


@check("topics.publish")
async def _publish(call: Call, a: Any) -> None:
    authz.need_act_as(_p(call), a.record.sender, "publish as")
    authz.need_publish(_p(call), a.record.topic)


@check("topics.open_consumer")
async def _open_consumer(call: Call, a: Any) -> None:
    authz.need_subscribe(_p(call), a.spec.pattern)
    await call.server.tokens.remember_consumer(a.spec.name, a.spec.pattern)


@check("topics.claim_topic")
async def _claim_topic(call: Call, a: Any) -> None:
    pattern = await call.server.tokens.consumer_pattern(a.consumer)
    if pattern is None:
        authz.need_admin(_p(call), f"Fetching from durable consumer {a.consumer!r} that was not "
                         "opened through this server")  # fmt: skip
    else:
        authz.need_subscribe(_p(call), pattern)


@check("shared_memory.kv_get", "shared_memory.kv_scan", "shared_memory.kv_changes",
       "shared_memory.kv_history", "shared_memory.kv_counts")  # fmt: skip
async def _kv_read(call: Call, a: Any) -> None:
    authz.need_kv(_p(call), a.space, write=False)


@check("shared_memory.kv_put")
async def _kv_put(call: Call, a: Any) -> None:
    authz.need_kv(_p(call), a.space, write=True)
    if a.write.by is not None:
        authz.need_act_as(_p(call), a.write.by, "write as")


@check("shared_memory.kv_delete")
async def _kv_delete(call: Call, a: Any) -> None:
    authz.need_kv(_p(call), a.space, write=True)
    if a.by is not None:
        authz.need_act_as(_p(call), a.by, "write as")


@check("pools.pool_open", "pools.pool_receipt", "pools.pool_wake", "pools.pool_snapshot",
       "pools.pool_records")  # fmt: skip
async def _pool(call: Call, a: Any) -> None:
    authz.need_pool(_p(call), getattr(a, "pool", None) or a.name)


@check("pools.pool_cancel_wake")
async def _pool_cancel_wake(call: Call, a: Any) -> None:
    """Only the wake's own run cancels it (as the JSON route's check)."""
    authz.need_pool(_p(call), a.pool)
    pools = call.server.hub._ctx.backend.pools
    wake = None if pools is None else await pools.pool_wake(
        a.pool, wake_id=a.wake_id, key=None, now=call.server.hub._ctx.now()
    )  # fmt: skip
    if wake is not None:
        authz.need_act_as(_p(call), wake.run, "cancel wakes of")


@check("pools.pool_join")
async def _pool_join(call: Call, a: Any) -> None:
    authz.need_pool(_p(call), a.pool)
    authz.need_act_as(_p(call), a.member.agent, "join pools as")
    authz.need_act_as(_p(call), a.member.run, "join pools as run")


@check("pools.pool_leave", "pools.pool_emit")
async def _pool_run(call: Call, a: Any) -> None:
    authz.need_pool(_p(call), a.pool)
    authz.need_act_as(_p(call), a.run, "act as run")


@check("pools.pool_send")
async def _pool_send(call: Call, a: Any) -> None:
    authz.need_pool(_p(call), a.message.pool)
    authz.need_act_as(_p(call), a.message.sender, "send in pools as")


@check("pools.pool_wait_for")
async def _pool_wait(call: Call, a: Any) -> None:
    authz.need_pool(_p(call), a.spec.pool)
    authz.need_act_as(_p(call), a.spec.run, "wait as run")


@check("leases.lease_acquire")
async def _lease_acquire(call: Call, a: Any) -> None:
    authz.need_act_as(_p(call), check_name("owner", a.owner), "hold leases as")
    _lease_ttl(call, a.ttl)
    if a.reason is not None:
        check_text("reason", a.reason, longest=MAX_REASON)
    if not 0 < len(a.wants) <= MAX_PATTERNS:
        raise ValidationError(f"Give 1 to {MAX_PATTERNS} patterns per call.")
    for want in a.wants:  # the engine takes normalized patterns: a client could send others
        if normalize(want.pattern) != want.pattern:
            raise ValidationError(f"Lease pattern {want.pattern!r} is not normalized.")
        authz.need_lease(_p(call), want.pattern)


@check("leases.lease_renew", "leases.lease_release")
async def _lease_owner(call: Call, a: Any) -> None:
    """Only the owner's own leases change (granted when acquired)."""
    authz.need_act_as(_p(call), check_name("owner", a.owner), "hold leases as")
    if hasattr(a, "ttl"):
        _lease_ttl(call, a.ttl)


def _lease_ttl(call: Call, ttl: float) -> None:
    check_positive("ttl", ttl, call.server.hub._ctx.settings.limits.max_delay)


@check("leases.lease_list")
async def _lease_list(call: Call, a: Any) -> None:
    """Any token: the list is filtered to the leases it may see."""


_missing = sorted(f"{f}.{n}" for f, n in CALLS if (f, n) not in CHECKS)
if _missing:  # every call must have a check: fail at import, not at run time
    raise RuntimeError(f"store calls without an authorization check: {_missing}")


# --- running a call ----------------------------------------------------------------------------


def _target(call: Call, feature: str) -> Any:
    backend = call.server.hub._ctx.backend
    target = backend if feature == "backend" else getattr(backend, feature)
    if target is None:
        raise NotFound(f"The server's backend has no {feature.replace('_', ' ')}.")
    return target


#: The calls that may wait on the server (`?wait=` seconds) for a result worth answering
#: with: the wake-up channel to wait on, and whether a result is still empty.
WAITS: dict[tuple[str, str], tuple[Callable[[Any], str], Callable[[Any], bool]]] = {
    ("mailboxes", "claim"): (lambda a: mail_channel(a.agent), lambda r: not r.messages),
    ("mailboxes", "take_reply"): (
        lambda a: reply_channel(a.correlation_id),
        lambda r: r is None,
    ),
}


async def invoke(call: Call, feature: str, name: str, raw: bytes, wait: float = 0.0) -> bytes:
    """Authorize and run one store call; returns its msgpack-encoded result. A call of
    `WAITS` with `wait` > 0 is run again on each wake-up of its channel until its result is
    not empty or `wait` seconds (at most the server's `max_wait`) passed: a receive or request
    that waits costs the client one round trip."""
    spec = CALLS.get((feature, name))
    if spec is None:
        raise NotFound(f"No store call {feature}.{name}.")
    try:
        args = spec.decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"Bad arguments for {feature}.{name}: {exc}.") from None
    except msgspec.DecodeError:
        raise ValidationError(f"Arguments of {feature}.{name} must be a msgpack map.") from None
    await CHECKS[(feature, name)](call, args)
    kwargs = msgspec.structs.asdict(args)
    holder = kwargs.get("holder")
    if holder is not None:  # holders are per token
        kwargs["holder"] = f"{call.token.id}:{holder}"
    method = getattr(_target(call, feature), name)
    server = call.server
    ctx = server.hub._ctx
    waits = WAITS.get((feature, name))
    wait = min(wait, server.settings.max_wait)
    try:
        if waits is None or wait <= 0 or server.stopping.is_set() or kwargs.get("abandon"):
            if spec.takes_now:
                kwargs["now"] = ctx.now()
            result = await method(**kwargs)
        else:
            channel, empty = waits
            with ctx.wakeups(channel(args), server.drain, timeout=wait) as wakeups:
                while True:
                    wakeups.rearm()
                    if spec.takes_now:
                        kwargs["now"] = ctx.now()
                    result = await method(**kwargs)
                    if not empty(result) or server.stopping.is_set():
                        break
                    if not await wakeups.wait(getattr(result, "next_wake", None)):
                        break
                    if await call.request.is_disconnected():  # nobody would get the claim
                        raise ClientDisconnect()
    except RefNotHeld as exc:  # name the caller's holder, not the server's namespaced one
        raise RefNotHeld(exc.ref_id, holder or exc.holder) from None
    result = _filter(call, feature, name, result)
    return msgspec.msgpack.encode(wire_result(spec, result))


def _filter(call: Call, feature: str, name: str, result: Any) -> Any:
    p = _p(call)
    if name == "kv_spaces":  # the server's own namespace is no one's to see
        return [s for s in result if s.namespace != authz.RESERVED_NAMESPACE]
    if p.admin and name != "read_topics":
        return result
    if name == "list_agents":
        return [i for i in result if authz.may_see_agent(p, i.name)]
    if name == "lease_list":
        return [lease for lease in result if authz.may_see_lease(p, lease.owner, lease.pattern)]
    if name == "list_schedules":
        return [s for s in result if p.acts_as(s.sender)]
    if name == "read_topics":
        assert isinstance(result, TopicBatch)
        result.records = [r for r in result.records if authz.may_subscribe_topic(p, r.topic)]
    return result


# --- the wake-up stream --------------------------------------------------------------------------


async def events(call: Call) -> AsyncIterator[bytes]:
    """The SSE stream of visible wake-up channels, until the client leaves or the server
    stops (the client then reconnects and re-checks everything)."""
    server = call.server
    queue: asyncio.Queue[list[str] | None] = asyncio.Queue()
    p = _p(call)

    def tap(channels: list[str]) -> None:
        seen = [c for c in channels if authz.notification_visible(p, c, {})]
        if seen:
            queue.put_nowait(seen)

    server.taps.add(tap)
    stop = asyncio.ensure_future(server.stopping.wait())
    try:
        yield b": ready\n\n"
        while not server.stopping.is_set():
            get = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait((get, stop), timeout=15.0,
                                         return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            if get not in done:
                get.cancel()
                if not done:
                    yield b": keep-alive\n\n"
                continue
            batch = set(get.result() or ())
            while not queue.empty():
                batch.update(queue.get_nowait() or ())
            yield b"data: " + msgspec.json.encode(sorted(batch)) + b"\n\n"
    finally:
        server.taps.discard(tap)
        stop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stop
