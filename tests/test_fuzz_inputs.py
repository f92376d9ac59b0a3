"""Fuzzing the public calls with generated values, on every backend.

Whatever a call is given, only agentcomm errors escape (a hang would surface as a plain
TimeoutError and fail), and a call refused as invalid (ValidationError) or for an unknown
name (NotFound) leaves the store as it was. Values a call accepts come back as documented.
"""

from __future__ import annotations

import asyncio
import base64
import math
from collections.abc import Callable, Coroutine
from datetime import UTC
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agentcomm
from agentcomm import AgentCommError, NotFound, ValidationError
from store_snapshot import INLINE, NAMESPACE, Env, connect, populate, snapshot


def _settings(examples: int) -> settings:
    # the three tests take about 15 s per backend together (Redis the slowest); 3,000 examples
    # per test ran clean when this was written
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )


#: Over the server, its hub runs no background passes either (they would change the store
#: between the snapshots around a refused call).
HTTP_HUB_OPTIONS = {"background": False}
_HANG = 10.0  # seconds after which a call counts as hung (every call here takes milliseconds)


def _self_ref() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = {"x": value}
    return value


_ODD = st.sampled_from(
    [object(), _self_ref(), _nested(20), _nested(200), math.nan, math.inf, -math.inf, "\ud800",
     "", " ", "a b", "a.*", "a.>", "x" * 300, "a\0b", 2**63, 2**64, -(2**63) - 1, 10**400,
     1e-300, 1e300, True, False, b"", bytearray(b"x"), {1, 2}, (1, "a"), [None]]
)  # fmt: skip
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=12),
    st.decimals(),
    st.datetimes(timezones=st.sampled_from([None, UTC])),
    _ODD,
)
VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(
            st.one_of(st.text(max_size=6), st.integers(), st.none()), inner, max_size=4
        ),
    ),
    max_leaves=8,
)
#: Timeouts: anything bad, but nothing valid that would wait long.
TIMEOUTS = st.one_of(
    st.floats(max_value=0.01), st.integers(max_value=0), st.text(max_size=3), st.booleans(), _ODD
).filter(lambda v: not (isinstance(v, int | float) and not isinstance(v, bool) and v > 0.01))

Call = Callable[[Env, Any], Coroutine[Any, Any, Any]]


async def _subscribe(e: Env, pattern: Any, **kwargs: Any) -> None:
    sub = await e.a.subscribe(pattern, **kwargs)
    await sub.aclose()


async def _watch(kv: agentcomm.SharedMemory, *args: Any, **kwargs: Any) -> None:
    watcher = kv.watch(*args, include_initial=True, **kwargs)
    try:
        await asyncio.wait_for(anext(watcher), 0.05)  # a valid watch may wait for a change
    except TimeoutError:
        pass
    finally:
        await watcher.aclose()


def _kv(e: Env) -> agentcomm.SharedMemory:
    return e.hub.memory(NAMESPACE)


async def _memory(e: Env, namespace: Any) -> None:
    await e.hub.memory(namespace).get("k")


CALLS: dict[str, Call] = {
    "send.to": lambda e, v: e.a.send(v, 1),
    "send.data": lambda e, v: e.a.send("b", v),
    "send.inline": lambda e, v: e.a.send("b", v, type=INLINE),
    "send.type": lambda e, v: e.a.send("b", 1, type=v),
    "send.priority": lambda e, v: e.a.send("b", 1, priority=v),
    "send.ttl": lambda e, v: e.a.send("b", 1, ttl=v),
    "send.delay": lambda e, v: e.a.send("b", 1, delay=v),
    "send.at": lambda e, v: e.a.send("b", 1, at=v),
    "send.max_attempts": lambda e, v: e.a.send("b", 1, max_attempts=v),
    "send.idempotency_key": lambda e, v: e.a.send("b", 1, idempotency_key=v),
    "send.metadata": lambda e, v: e.a.send("b", 1, metadata=v),
    "receive_many.max": lambda e, v: e.b.receive_many(v, timeout=0),
    "receive.lease": lambda e, v: e.b.receive(timeout=0, lease=v),
    "nack.delay": lambda e, v: e.msg.nack(delay=v),
    "extend.lease": lambda e, v: e.msg.extend(v),
    "schedule.every": lambda e, v: e.a.schedule("b", 1, every=v),
    "schedule.cron": lambda e, v: e.a.schedule("b", 1, cron=v),
    "schedule.data": lambda e, v: e.a.schedule("b", v, every=60),
    "schedule.ttl": lambda e, v: e.a.schedule("b", 1, every=60, ttl=v),
    "publish.topic": lambda e, v: e.a.publish(v, 1),
    "publish.data": lambda e, v: e.a.publish("t.x", v),
    "publish.type": lambda e, v: e.a.publish("t.x", 1, type=v),
    "publish.metadata": lambda e, v: e.a.publish("t.x", 1, metadata=v),
    "subscribe.pattern": lambda e, v: _subscribe(e, v),
    "subscribe.durable": lambda e, v: _subscribe(e, "t.>", durable=v),
    "subscribe.start": lambda e, v: _subscribe(e, "t.>", durable="fz", start=v),
    "subscribe.buffer": lambda e, v: _subscribe(e, "t.>", buffer=v),
    "subscribe.senders": lambda e, v: _subscribe(e, "t.>", senders=v),
    "subscribe.metadata": lambda e, v: _subscribe(e, "t.>", metadata=v),
    "subscribe.durable.metadata": lambda e, v: _subscribe(e, "t.>", durable="fm", metadata=v),
    "kv.update.value": lambda e, v: _kv(e).update("k", lambda _: v),
    "kv.update.retries": lambda e, v: _kv(e).update("k", lambda _: 1, retries=v),
    "kv.watch.since": lambda e, v: _watch(_kv(e), since=v),
    "kv.watch.pattern": lambda e, v: _watch(_kv(e), v),
    "kv.put.key": lambda e, v: _kv(e).put(v, 1),
    "kv.put.value": lambda e, v: _kv(e).put("k", v),
    "kv.put.ttl": lambda e, v: _kv(e).put("k", 1, ttl=v),
    "kv.put.expected_version": lambda e, v: _kv(e).put("k", 1, expected_version=v),
    "kv.delete.expected_version": lambda e, v: _kv(e).delete("k", expected_version=v),
    "kv.get": lambda e, v: _kv(e).get(v),
    "kv.keys": lambda e, v: _kv(e).keys(v),
    "kv.history.limit": lambda e, v: _kv(e).history("k", limit=v),
    "hub.memory": _memory,
    "hub.agent": lambda e, v: e.hub.agent(v),
    "hub.pending.limit": lambda e, v: e.hub.pending("b", limit=v),
    "hub.dead_letters.limit": lambda e, v: e.hub.dead_letters("a", limit=v),
    "hub.mailbox_stats": lambda e, v: e.hub.mailbox_stats(v),
    "hub.cancel_schedule": lambda e, v: e.hub.cancel_schedule(v),
    "hub.topic_stats": lambda e, v: e.hub.topic_stats(v),
    "hub.requeue.ids": lambda e, v: e.hub.requeue_dead_letters("a", ids=v),
    "refs.store": lambda e, v: e.hub.refs.store(v),
    "refs.store.ttl": lambda e, v: e.hub.refs.store(b"fuzz", ttl=v),
    "refs.store.content_type": lambda e, v: e.hub.refs.store(b"fuzz", content_type=v),
    "refs.get": lambda e, v: e.hub.refs.get(v),
    "refs.resolve": lambda e, v: e.hub.refs.resolve(v),
}  # fmt: skip
TIMED: dict[str, Call] = {
    "receive.timeout": lambda e, v: e.b.receive(timeout=v),
    "request.timeout": lambda e, v: e.a.request("b", 1, timeout=v),
}


async def _try(env: Env, call: Call, value: Any) -> None:
    before = await snapshot(env.hub)
    try:
        await asyncio.wait_for(call(env, value), _HANG)
    except (ValidationError, NotFound):
        assert await snapshot(env.hub) == before
    except AgentCommError:
        pass  # e.g. RequestTimeout, LeaseLost: typed, after a valid call
    if env.msg.settled:  # nacked or extended for good: lease a fresh one for the next example
        await env.a.send("b", "next")
        got = await env.b.receive(timeout=5, lease=3600)
        assert got is not None
        env.msg = got


def _run_fuzz(
    url: str, calls: dict[str, Call], values: st.SearchStrategy[Any], examples: int
) -> None:
    with asyncio.Runner() as runner:
        hub = connect(url)
        runner.run(hub.open())
        try:
            env = runner.run(populate(hub))

            @_settings(examples)
            @given(name=st.sampled_from(sorted(calls)), value=values)
            def one_call(name: str, value: Any) -> None:
                runner.run(_try(env, calls[name], value))

            one_call()
        finally:
            runner.run(hub.aclose())


def test_fuzz_public_calls(url: str) -> None:
    _run_fuzz(url, CALLS, VALUES, 600)


def test_fuzz_timeouts(url: str) -> None:
    _run_fuzz(url, TIMED, TIMEOUTS, 150)


# --- what is accepted comes back as documented ---------------------------------------------------

_JSONISH = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
        st.binary(max_size=8),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.frozensets(st.integers(), max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), inner, max_size=4),
    ),
    max_leaves=10,
)  # fmt: skip


def documented(value: Any, top: bool = True) -> Any:
    """What a payload comes back as, per the documented conversions (see `agentcomm` README)."""
    if isinstance(value, bytes):
        return value if top else base64.b64encode(value).decode("ascii")
    if isinstance(value, list | tuple | frozenset):
        return [documented(v, False) for v in value]
    if isinstance(value, dict):
        return {k: documented(v, False) for k, v in value.items()}
    return value


async def _round_trip(env: Env, value: Any) -> None:
    kv = env.hub.memory(NAMESPACE)
    try:
        await kv.put("rt", value)
    except agentcomm.EncodeError:
        return  # refused: NaN, an infinity or a non-str key (checked by the fuzz above)
    entry = await kv.get("rt")
    assert entry is not None and entry.value == documented(value)
    await env.a.send("b", value)
    got = await env.b.receive(timeout=5)
    assert got is not None and got.data == documented(value)
    await got.ack()


def test_accepted_values_round_trip(url: str) -> None:
    with asyncio.Runner() as runner:
        hub = connect(url)
        runner.run(hub.open())
        try:
            env = runner.run(populate(hub))
            runner.run(env.msg.ack())  # b's mailbox holds only what the test sends

            @_settings(300)
            @given(value=_JSONISH)
            def one_value(value: Any) -> None:
                runner.run(_round_trip(env, value))

            one_value()
        finally:
            runner.run(hub.aclose())
