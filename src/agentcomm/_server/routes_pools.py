"""Agent pools: `/v1/pools/{pool}/...` (open, join, leave, send, receipts, emit, wakes,
snapshot, records, and the log as Server-Sent Events).

Every route needs the token's `pools` glob for the pool; a route that acts as a run (join,
leave, send, emit, wait-for, cancelling a wake) also needs the token to act as that run (and,
to join, as its agent). Reading (snapshot, records, receipts, wakes, watch) needs the pool
only, as the store calls of the Python client do.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any, cast

import msgspec
from starlette.responses import StreamingResponse

from .._backends.common import pool_channel
from .._errors import HubClosed, NotFound, ValidationError
from .._pool_models import (
    Address,
    EventFilter,
    PoolConfig,
    PoolMember,
    PoolRecord,
    Receipt,
    ToAgent,
    ToPool,
    ToRun,
    ToTopic,
)
from .._pools import Pool, Wake, filter_spec
from .._validation import (
    MAX_COUNT,
    MAX_SEQUENCE,
    check_attempts,
    check_int,
    check_name,
    check_priority,
    check_seconds,
)
from . import authz
from .api import Call, FieldError, first_of, route
from .schemas import (
    Cancelled,
    EmitBody,
    FilterBody,
    JoinBody,
    Ok,
    PoolConfigBody,
    PoolOpenBody,
    PoolRecordOut,
    PoolRecords,
    PoolSendBody,
    PoolSnapshotOut,
    RunBody,
    Target,
    ToAgentTarget,
    ToPoolTarget,
    ToRunTarget,
    ToTopicTarget,
    WaitForBody,
    WakeKeyBody,
    WakeOut,
)

TAG = "pools"
_P = "/v1/pools/{pool}"


@contextlib.contextmanager
def _field(name: str) -> Iterator[None]:
    """Name `name` as the field at fault in a ValidationError raised inside."""
    try:
        yield
    except FieldError:
        raise
    except ValidationError as exc:
        raise FieldError(str(exc), name) from None


def _pool_name(call: Call) -> str:
    with _field("pool"):
        name = check_name("pool name", call.path("pool"))
    authz.need_pool(call.principal, name)
    return name


def _attached(call: Call) -> Pool:
    """The path's pool, once the token may use it; not created (a missing one answers 404
    from the store)."""
    name = _pool_name(call)
    ctx = call.server.hub._ctx
    return Pool(ctx, ctx.pools, name, PoolConfig())


def _key(call: Call) -> str:
    key = call.query("key")
    if not key or len(key) > 256:
        raise FieldError("Query parameter key must be 1-256 characters.", "key")
    return key


def _config(body: PoolConfigBody) -> PoolConfig:
    return PoolConfig(
        required_policy_refs=tuple(body.required_policy_refs),
        include_sender_in_broadcast=body.include_sender_in_broadcast,
        observe_policy_refs=tuple(body.observe_policy_refs),
    )


def _address(t: Target) -> Address:
    if isinstance(t, ToRunTarget):
        return ToRun(t.run)
    if isinstance(t, ToAgentTarget):
        return ToAgent(t.agent)
    if isinstance(t, ToTopicTarget):
        return ToTopic(t.topic)
    return ToPool()


def _target(a: Address | None) -> Target | None:
    if isinstance(a, ToRun):
        return ToRunTarget(a.run)
    if isinstance(a, ToAgent):
        return ToAgentTarget(a.agent)
    if isinstance(a, ToTopic):
        return ToTopicTarget(a.topic)
    if isinstance(a, ToPool):
        return ToPoolTarget()
    return None


def _event_filter(f: FilterBody) -> EventFilter:
    def s(values: list[Any] | None) -> frozenset[str] | None:
        return None if values is None else frozenset(values)

    return EventFilter(
        kinds=s(f.kinds), runs=s(f.runs), senders=s(f.senders), agents=s(f.agents),
        types=s(f.types), topics=s(f.topics), to_me=f.to_me, metadata=f.metadata,
    )  # fmt: skip


def _filter_out(f: EventFilter) -> FilterBody:
    def s(values: Any) -> list[Any] | None:
        return None if values is None else sorted(values)

    return FilterBody(
        kinds=s(f.kinds), runs=s(f.runs), senders=s(f.senders), agents=s(f.agents),
        types=s(f.types), topics=s(f.topics), to_me=f.to_me, metadata=f.metadata,
    )  # fmt: skip


def record_out(r: PoolRecord) -> PoolRecordOut:
    """A pool record as JSON."""
    return PoolRecordOut(
        seq=r.seq, kind=r.kind, pool=r.pool, run=r.run, at=r.at, agent=r.agent,
        topics=list(r.topics), policy_refs=list(r.policy_refs), message_id=r.message_id,
        to=_target(r.to), type=r.type, data=r.data, metadata=r.metadata, receipt=r.receipt,
        wake_id=r.wake_id, trigger_seq=r.trigger_seq, config=r.config, missed=r.missed,
    )  # fmt: skip


async def _wake_out(w: Wake, *, with_record: bool = True) -> WakeOut:
    record = None
    if with_record and w.status == "triggered":
        got = (await w.result()).record  # ended already: answers at once
        record = None if got is None else record_out(got)
    return WakeOut(
        id=w.id, pool=w.pool, run=w.run, filter=_filter_out(w.filter),
        idempotency_key=w.idempotency_key, resume=w.resume, status=w.status,
        registered_at=w.registered_at, deadline=w.deadline, trigger_seq=w.trigger_seq,
        record=record,
    )  # fmt: skip


async def _snapshot(pool: Pool) -> PoolSnapshotOut:
    snap = await pool.snapshot()
    return PoolSnapshotOut(
        name=snap.name, config=snap.config, created_at=snap.created_at,
        members=list(snap.members), topics=list(snap.topics),
        pending_wakes=[await _wake_out(w, with_record=False) for w in snap.pending_wakes],
        counts=snap.counts, cursor=snap.cursor,
    )  # fmt: skip


# --- opening and membership --------------------------------------------------------------------


@route("POST", _P, summary="Create the pool or attach to it (409 for another config)",
       tag=TAG, body=PoolOpenBody, response=PoolSnapshotOut)  # fmt: skip
async def open_pool(call: Call) -> PoolSnapshotOut:
    b: PoolOpenBody = call.body
    name = _pool_name(call)
    config = None if b.config is None else _config(b.config)
    return await _snapshot(await call.server.hub.pool(name, config=config))


@route("GET", _P, summary="The pool's config, members, registered wakes, counts and cursor",
       tag=TAG, response=PoolSnapshotOut)  # fmt: skip
async def snapshot(call: Call) -> PoolSnapshotOut:
    return await _snapshot(_attached(call))


@route("POST", _P + "/join",
       summary="A run joins as an agent (creating the pool if missing); its pool messages "
       "arrive in its mailbox", tag=TAG, body=JoinBody, response=PoolMember)  # fmt: skip
async def join(call: Call) -> PoolMember:
    b: JoinBody = call.body
    name = _pool_name(call)
    authz.need_act_as(call.principal, b.agent, "join pools as")
    authz.need_act_as(call.principal, b.run, "join pools as run")
    for field, values in (("run", [b.run]), ("agent", [b.agent]), ("topics", b.topics),
                          ("policy_refs", b.policy_refs)):  # fmt: skip
        with _field(field):  # before the pool is created: a rejected join stores nothing
            for value in values:
                check_name(field, value)
    pool = await call.server.hub.pool(name)
    return await pool.join(b.run, agent=b.agent, topics=b.topics, policy_refs=b.policy_refs)


@route("POST", _P + "/leave", summary="A run leaves (its registered wakes are cancelled)",
       tag=TAG, body=RunBody, response=Ok)  # fmt: skip
async def leave(call: Call) -> Ok:
    b: RunBody = call.body
    pool = _attached(call)
    authz.need_act_as(call.principal, b.run, "act as run")
    await pool.leave(b.run)
    return Ok()


# --- messages and events -----------------------------------------------------------------------


@route("POST", _P + "/send",
       summary="Send a pool message from a member run; answers its receipt", tag=TAG,
       body=PoolSendBody, response=Receipt)  # fmt: skip
async def send(call: Call) -> Receipt:
    b: PoolSendBody = call.body
    pool = _attached(call)
    authz.need_act_as(call.principal, b.sender, "send in pools as")
    with _field("priority"):
        check_priority(b.priority)
    if b.max_attempts is not None:
        with _field("max_attempts"):
            check_attempts(b.max_attempts)
    with _field("metadata"):
        if b.metadata is not None and any(k.startswith("pool.") for k in b.metadata):
            raise ValidationError(
                "metadata keys starting with 'pool.' are set by the pool; use other names."
            )
    return await pool.send(
        b.sender, to=_address(b.to), data=b.data, type=b.type, policy_refs=b.policy_refs,
        idempotency_key=b.idempotency_key, ttl=b.ttl, metadata=b.metadata,
        priority=b.priority, max_attempts=b.max_attempts,
    )  # fmt: skip


_KEY_Q = ("key", "string", "An idempotency key or an id.")


@route("GET", _P + "/receipt", summary="A stored receipt, by idempotency key or message id",
       tag=TAG, response=Receipt, query=[_KEY_Q])  # fmt: skip
async def receipt(call: Call) -> Receipt:
    pool = _attached(call)
    key = _key(call)
    found = await pool.receipt(key)
    if found is None:
        raise NotFound(f"Pool {pool.name!r} has no receipt for {key!r} (or it was pruned).")
    return found


@route("POST", _P + "/emit", summary="Record a custom event of a member run", tag=TAG,
       body=EmitBody, response=PoolRecordOut)  # fmt: skip
async def emit(call: Call) -> PoolRecordOut:
    b: EmitBody = call.body
    pool = _attached(call)
    authz.need_act_as(call.principal, b.run, "act as run")
    return record_out(await pool.emit(b.run, b.type, b.data, metadata=b.metadata))


# --- wakes -------------------------------------------------------------------------------------


@route("POST", _P + "/wait-for",
       summary="Register a wake for a member run; read it with GET .../wake?key=", tag=TAG,
       body=WaitForBody, response=WakeOut)  # fmt: skip
async def wait_for(call: Call) -> WakeOut:
    b: WaitForBody = call.body
    pool = _attached(call)
    authz.need_act_as(call.principal, b.run, "wait as run")
    if b.timeout is not None:
        with _field("timeout"):
            check_seconds("timeout", b.timeout, maximum=call.server.hub.limits.max_delay)
    event_filter = _event_filter(b.filter)
    with _field("filter"):
        filter_spec(event_filter)
    w = await pool.wait_for(
        b.run, event_filter, timeout=b.timeout, idempotency_key=b.idempotency_key,
        replay=b.replay, resume=b.resume,
    )  # fmt: skip
    return await _wake_out(w)


@route("GET", _P + "/wake",
       summary="A wake by id or key; long-polls up to `wait` seconds while it is registered",
       tag=TAG, response=WakeOut,
       query=[_KEY_Q, ("wait", "number", "Seconds to wait for the wake to end (bounded by "
                       "the server's max_wait).")])  # fmt: skip
async def wake(call: Call) -> WakeOut:
    pool = _attached(call)
    key = _key(call)
    server = call.server
    wait = min(max(call.query_float("wait", 0.0), 0.0), server.settings.max_wait)
    w = await pool.wake(key)
    if w is None:
        raise NotFound(f"Pool {pool.name!r} has no wake {key!r}.")
    if w.status == "registered" and wait > 0 and not server.stopping.is_set():
        ctx = server.hub._ctx
        with ctx.wakeups(pool_channel(pool.name), server.drain, timeout=wait) as wakeups:
            while True:
                wakeups.rearm()
                await w.refresh()
                if w.status != "registered" or server.stopping.is_set():
                    break
                if not await wakeups.wait(w.deadline):
                    break
    return await _wake_out(w)


@route("POST", _P + "/wake/cancel",
       summary="Cancel a registered wake (of a run the token acts as)", tag=TAG,
       body=WakeKeyBody, response=Cancelled)  # fmt: skip
async def cancel_wake(call: Call) -> Cancelled:
    pool = _attached(call)
    key = call.body.key
    w = await pool.wake(key)
    if w is None:
        raise NotFound(f"Pool {pool.name!r} has no wake {key!r}.")
    authz.need_act_as(call.principal, w.run, "cancel wakes of")
    return Cancelled(await w.cancel())


# --- the log -----------------------------------------------------------------------------------

_AS_RUN_Q = ("as_run", "string", "Withhold message payloads this run neither sent nor received.")


def _as_run(call: Call) -> str | None:
    raw = call.query("as_run")
    if raw is None:
        return None
    with _field("as_run"):
        return check_name("as_run", raw)


@route("GET", _P + "/records", summary="A page of the pool's log, oldest first", tag=TAG,
       response=PoolRecords,
       query=[("after", "integer", "Records with seq > after (default 0)."),
              ("limit", "integer", "At most this many (default 100)."), _AS_RUN_Q])  # fmt: skip
async def records(call: Call) -> PoolRecords:
    pool = _attached(call)
    with _field("after"):
        after = check_int("after", call.query_int("after", 0), 0, MAX_SEQUENCE)
    with _field("limit"):
        limit = check_int("limit", call.query_int("limit", 100), 1, MAX_COUNT)
    got = await pool.records(after, limit, as_run=_as_run(call))
    return PoolRecords([record_out(r) for r in got])


@route("GET", _P + "/watch",
       summary="The pool's log from `after` on, then new records as they are written "
       "(Server-Sent Events; each event's id is the record's seq)", tag=TAG, kind="sse",
       query=[("after", "integer", "Start after this seq (default: the Last-Event-ID header, "
               "else 0)."), _AS_RUN_Q])  # fmt: skip
async def watch(call: Call) -> StreamingResponse:
    pool = _attached(call)
    resume = call.request.headers.get("last-event-id", "")
    default = int(resume) if resume.isdigit() else 0
    with _field("after"):
        after = check_int("after", call.query_int("after", default), 0, MAX_SEQUENCE)
    as_run = _as_run(call)
    await pool.records(after, 1)  # a missing pool answers 404 here, not inside the stream
    server = call.server

    async def body() -> AsyncIterator[bytes]:
        yield b": ready\n\n"
        changes = cast(AsyncGenerator[PoolRecord, None], pool.watch(after, as_run=as_run))
        try:
            while not server.stopping.is_set():
                r = await first_of(changes.__anext__(), server.stopping)
                if r is None:
                    return
                head = b"id: %d\n" % r.seq if r.seq else b""
                yield head + b"data: " + msgspec.json.encode(record_out(r)) + b"\n\n"
        except (StopAsyncIteration, HubClosed):
            return
        finally:
            await changes.aclose()

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store"})  # fmt: skip
