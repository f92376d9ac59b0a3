# The tables pass wrong types on purpose, one call per line.
# mypy: disable-error-code="arg-type, dict-item, list-item"
# ruff: noqa: E501
"""Validation at the edge: every bad argument raises a typed error and changes nothing.

Each row of the table is one bad call; the test asserts the error type and that the store
(everything the public API lists) is the same before and after, on every backend.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

import agentcomm
from agentcomm import ConfigurationError, EncodeError, InvalidName, ValidationError
from store_snapshot import INLINE, LIMITS, NAMESPACE, Env, connect, populate, snapshot

NAN, INF = math.nan, math.inf
YEAR = 366 * 86400.0


def _self_ref() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


async def _watch(kv: agentcomm.SharedMemory, **kwargs: Any) -> None:
    watcher = kv.watch(**kwargs)
    try:
        await anext(watcher)
    finally:
        await watcher.aclose()


async def _subscribe(e: Env, pattern: str, **kwargs: Any) -> None:
    sub = await e.a.subscribe(pattern, **kwargs)
    await sub.aclose()


def _year_one_fits() -> bool:
    try:
        datetime.min.timestamp()  # naive: local time; out of range east of UTC and at UTC
    except (ValueError, OverflowError):
        return False
    return True


async def _if_out_of_range(call: Coroutine[Any, Any, Any]) -> Any:
    if _year_one_fits():
        call.close()
        pytest.skip("datetime(1, 1, 1) as local time is a valid timestamp here")
    return await call


Call = Callable[[Env], Awaitable[Any]]

BAD_CALLS: list[tuple[str, Call, type[Exception]]] = [
    # --- send: times and durations (items 3, 6, 8)
    ("at-str", lambda e: e.a.send("b", 1, at="soon"), ValidationError),
    ("at-nan", lambda e: e.a.send("b", 1, at=NAN), ValidationError),
    ("at-inf", lambda e: e.a.send("b", 1, at=INF), ValidationError),
    ("at-minus-inf", lambda e: e.a.send("b", 1, at=-INF), ValidationError),
    ("at-bool", lambda e: e.a.send("b", 1, at=True), ValidationError),
    ("at-beyond-max-delay", lambda e: e.a.send("b", 1, at=time.time() + 2 * YEAR), ValidationError),
    ("at-year-9999", lambda e: e.a.send("b", 1, at=datetime(9999, 12, 31, tzinfo=UTC)), ValidationError),
    ("at-year-9999-naive", lambda e: e.a.send("b", 1, at=datetime.max), ValidationError),
    ("at-year-1-naive", lambda e: _if_out_of_range(e.a.send("b", 1, at=datetime.min)), ValidationError),
    ("delay-nan", lambda e: e.a.send("b", 1, delay=NAN), ValidationError),
    ("delay-inf", lambda e: e.a.send("b", 1, delay=INF), ValidationError),
    ("delay-negative", lambda e: e.a.send("b", 1, delay=-1), ValidationError),
    ("delay-str", lambda e: e.a.send("b", 1, delay="1"), ValidationError),
    ("delay-bool", lambda e: e.a.send("b", 1, delay=True), ValidationError),
    ("delay-decimal", lambda e: e.a.send("b", 1, delay=Decimal("1")), ValidationError),
    ("delay-huge-int", lambda e: e.a.send("b", 1, delay=10**400), ValidationError),
    ("delay-beyond-max", lambda e: e.a.send("b", 1, delay=2 * YEAR), ValidationError),
    ("delay-and-at", lambda e: e.a.send("b", 1, delay=1, at=time.time()), ValidationError),
    ("ttl-nan", lambda e: e.a.send("b", 1, ttl=NAN), ValidationError),
    ("ttl-zero", lambda e: e.a.send("b", 1, ttl=0), ValidationError),
    ("ttl-minus-inf", lambda e: e.a.send("b", 1, ttl=-INF), ValidationError),
    ("ttl-str", lambda e: e.a.send("b", 1, ttl="1"), ValidationError),
    # --- send: counts, names, keys
    ("max-attempts-2**63", lambda e: e.a.send("b", 1, max_attempts=2**63), ValidationError),
    ("max-attempts-zero", lambda e: e.a.send("b", 1, max_attempts=0), ValidationError),
    ("max-attempts-float", lambda e: e.a.send("b", 1, max_attempts=1.5), ValidationError),
    ("priority-2**31", lambda e: e.a.send("b", 1, priority=2**31), ValidationError),
    ("priority-str", lambda e: e.a.send("b", 1, priority="1"), ValidationError),
    ("to-none", lambda e: e.a.send(None, 1), InvalidName),
    ("to-bad", lambda e: e.a.send("no spaces", 1), InvalidName),
    ("to-unknown", lambda e: e.a.send("ghost", 1), agentcomm.UnknownAgent),
    ("type-empty", lambda e: e.a.send("b", 1, type=""), InvalidName),
    ("key-empty", lambda e: e.a.send("b", 1, idempotency_key=""), ValidationError),
    ("key-long", lambda e: e.a.send("b", 1, idempotency_key="k" * 257), ValidationError),
    ("key-int", lambda e: e.a.send("b", 1, idempotency_key=5), ValidationError),
    ("key-surrogate", lambda e: e.a.send("b", 1, idempotency_key="\ud800"), ValidationError),
    # --- payloads (items 4, 5)
    ("data-nan", lambda e: e.a.send("b", NAN), EncodeError),
    ("data-inf-inside", lambda e: e.a.send("b", {"x": [INF]}), EncodeError),
    ("data-int-key", lambda e: e.a.send("b", {1: "a"}), EncodeError),
    ("data-self-ref", lambda e: e.a.send("b", _self_ref()), EncodeError),
    ("data-too-deep", lambda e: e.a.send("b", _nested(LIMITS.max_depth + 1)), EncodeError),
    ("data-very-deep", lambda e: e.a.send("b", _nested(5000)), EncodeError),
    ("data-object", lambda e: e.a.send("b", object()), EncodeError),
    ("data-surrogate", lambda e: e.a.send("b", "\ud800"), EncodeError),
    ("data-strided-buffer", lambda e: e.a.send("b", {"m": memoryview(b"abcd")[::2]}), EncodeError),
    ("data-too-big-inline", lambda e: e.a.send("b", "x" * 3000, type=INLINE), ValidationError),
    ("meta-str", lambda e: e.a.send("b", 1, metadata="x"), EncodeError),
    ("meta-int-key", lambda e: e.a.send("b", 1, metadata={1: "a"}), EncodeError),
    ("meta-nan", lambda e: e.a.send("b", 1, metadata={"x": NAN}), EncodeError),
    ("meta-buffer", lambda e: e.a.send("b", 1, metadata={"m": memoryview(b"abcd")[::2]}), EncodeError),
    ("meta-too-big", lambda e: e.a.send("b", 1, metadata={"m": "x" * 600}), EncodeError),
    ("send-many-not-outgoing", lambda e: e.a.send_many([1]), ValidationError),
    ("send-many-one-bad", lambda e: e.a.send_many([agentcomm.Outgoing(to="b", data=1), agentcomm.Outgoing(to="b", data=NAN)]), EncodeError),
    # --- receiving and settling
    ("receive-many-2**63", lambda e: e.b.receive_many(2**63, timeout=0), ValidationError),
    ("receive-many-zero", lambda e: e.b.receive_many(0, timeout=0), ValidationError),
    ("receive-many-bool", lambda e: e.b.receive_many(True, timeout=0), ValidationError),
    ("receive-timeout-nan", lambda e: e.b.receive(timeout=NAN), ValidationError),
    ("receive-timeout-inf", lambda e: e.b.receive(timeout=INF), ValidationError),
    ("receive-timeout-str", lambda e: e.b.receive(timeout="1"), ValidationError),
    ("receive-lease-nan", lambda e: e.b.receive(timeout=0, lease=NAN), ValidationError),
    ("receive-lease-huge", lambda e: e.b.receive(timeout=0, lease=10 * YEAR), ValidationError),
    ("nack-nan", lambda e: e.msg.nack(delay=NAN), ValidationError),
    ("nack-inf", lambda e: e.msg.nack(delay=INF), ValidationError),
    ("nack-str", lambda e: e.msg.nack(delay="1"), ValidationError),
    ("nack-negative", lambda e: e.msg.nack(delay=-1), ValidationError),
    ("extend-nan", lambda e: e.msg.extend(NAN), ValidationError),
    ("extend-inf", lambda e: e.msg.extend(INF), ValidationError),
    ("extend-str", lambda e: e.msg.extend("5"), ValidationError),
    ("dead-letter-reason-int", lambda e: e.msg.dead_letter(5), ValidationError),
    ("reply-not-a-request", lambda e: e.msg.reply(1), ValidationError),
    ("ack-many-not-messages", lambda e: e.b.ack_many([1]), ValidationError),
    ("request-timeout-nan", lambda e: e.a.request("b", 1, timeout=NAN), ValidationError),
    ("request-timeout-inf", lambda e: e.a.request("b", 1, timeout=INF), ValidationError),
    ("request-data-nan", lambda e: e.a.request("b", NAN, timeout=1), EncodeError),
    # --- schedules (item 1)
    ("every-bool", lambda e: e.a.schedule("b", 1, every=True), ValidationError),
    ("every-tiny", lambda e: e.a.schedule("b", 1, every=1e-300), ValidationError),
    ("every-below-minimum", lambda e: e.a.schedule("b", 1, every=0.5), ValidationError),
    ("every-2**64", lambda e: e.a.schedule("b", 1, every=2**64), ValidationError),
    ("every-huge-int", lambda e: e.a.schedule("b", 1, every=10**400), ValidationError),
    ("every-decimal", lambda e: e.a.schedule("b", 1, every=Decimal("5")), ValidationError),
    ("every-nan", lambda e: e.a.schedule("b", 1, every=NAN), ValidationError),
    ("every-inf", lambda e: e.a.schedule("b", 1, every=INF), ValidationError),
    ("every-str", lambda e: e.a.schedule("b", 1, every="5"), ValidationError),
    ("cron-nonsense", lambda e: e.a.schedule("b", 1, cron="nonsense"), ValidationError),
    ("cron-int", lambda e: e.a.schedule("b", 1, cron=5), ValidationError),
    ("cron-never", lambda e: e.a.schedule("b", 1, cron="0 0 30 2 *"), ValidationError),
    ("cron-nul", lambda e: e.a.schedule("b", 1, cron="\0"), ValidationError),
    ("schedule-data-nan", lambda e: e.a.schedule("b", NAN, every=60), EncodeError),
    ("schedule-ttl-nan", lambda e: e.a.schedule("b", 1, every=60, ttl=NAN), ValidationError),
    ("schedule-too-big-inline", lambda e: e.a.schedule("b", "x" * 3000, every=60, type=INLINE), ValidationError),
    ("cancel-schedule-none", lambda e: e.hub.cancel_schedule(None), ValidationError),
    # --- hub listings
    ("pending-limit-2**63", lambda e: e.hub.pending("b", limit=2**63), ValidationError),
    ("pending-limit-zero", lambda e: e.hub.pending("b", limit=0), ValidationError),
    ("dead-letters-limit-2**63", lambda e: e.hub.dead_letters("a", limit=2**63), ValidationError),
    ("dead-letters-limit-str", lambda e: e.hub.dead_letters("a", limit="5"), ValidationError),
    ("requeue-ids-str", lambda e: e.hub.requeue_dead_letters("a", ids="x"), ValidationError),
    ("requeue-ids-ints", lambda e: e.hub.requeue_dead_letters("a", ids=[1]), ValidationError),
    ("mailbox-stats-none", lambda e: e.hub.mailbox_stats(None), InvalidName),
    ("agent-none", lambda e: e.hub.agent(None), InvalidName),
    # --- topics
    ("publish-empty-topic", lambda e: e.a.publish("", 1), agentcomm.InvalidTopic),
    ("publish-wildcard", lambda e: e.a.publish("t.*", 1), agentcomm.InvalidTopic),
    ("publish-nan", lambda e: e.a.publish("t.x", NAN), EncodeError),
    ("publish-meta-int-key", lambda e: e.a.publish("t.x", 1, metadata={1: 2}), ValidationError),
    ("publish-meta-too-big", lambda e: e.a.publish("t.x", 1, metadata={"m": "x" * 600}), EncodeError),
    ("publish-too-big-inline", lambda e: e.a.publish("t.x", "x" * 3000, type=INLINE), ValidationError),
    ("subscribe-start-year-1", lambda e: _if_out_of_range(_subscribe(e, "t.>", durable="d2", start=datetime(1, 1, 1))), ValidationError),
    ("subscribe-start-2**64", lambda e: _subscribe(e, "t.>", durable="d2", start=2**64), ValidationError),
    ("subscribe-buffer-2**63", lambda e: _subscribe(e, "t.>", durable="d2", buffer=2**63), ValidationError),
    ("subscribe-durable-empty", lambda e: _subscribe(e, "t.>", durable=""), InvalidName),
    # --- shared memory
    ("memory-none", lambda e: _call(e.hub.memory, None), InvalidName),
    ("memory-history-2**63", lambda e: _call(e.hub.memory, NAMESPACE, history=2**63), ValidationError),
    ("memory-change-log-2**63", lambda e: _call(e.hub.memory, NAMESPACE, change_log=2**63), ValidationError),
    ("put-key-none", lambda e: e.hub.memory(NAMESPACE).put(None, 1), ValidationError),
    ("put-nan", lambda e: e.hub.memory(NAMESPACE).put("k", NAN), EncodeError),
    ("put-too-deep", lambda e: e.hub.memory(NAMESPACE).put("k", _nested(LIMITS.max_depth + 1)), EncodeError),
    ("put-ttl-nan", lambda e: e.hub.memory(NAMESPACE).put("k", 1, ttl=NAN), ValidationError),
    ("put-ttl-str", lambda e: e.hub.memory(NAMESPACE).put("k", 1, ttl="1"), ValidationError),
    ("put-version-2**63", lambda e: e.hub.memory(NAMESPACE).put("k", 1, expected_version=2**63), ValidationError),
    ("delete-version-2**64", lambda e: e.hub.memory(NAMESPACE).delete("k", expected_version=2**64), ValidationError),
    ("history-limit-2**63", lambda e: e.hub.memory(NAMESPACE).history("k", limit=2**63), ValidationError),
    ("keys-pattern-none", lambda e: e.hub.memory(NAMESPACE).keys(None), ValidationError),
    ("update-fn-none", lambda e: e.hub.memory(NAMESPACE).update("k", None), ValidationError),
    ("update-ttl-nan", lambda e: e.hub.memory(NAMESPACE).update("k", lambda v: 1, ttl=NAN), ValidationError),
    ("watch-since-2**64", lambda e: _watch(e.hub.memory(NAMESPACE), since=2**64), ValidationError),
    # --- references
    ("store-none", lambda e: e.hub.refs.store(None), ValidationError),
    ("store-ttl-nan", lambda e: e.hub.refs.store(b"x", ttl=NAN), ValidationError),
    ("store-content-type-int", lambda e: e.hub.refs.store(b"x", content_type=5), ValidationError),
    ("store-compression-lzma", lambda e: e.hub.refs.store(b"x" * 5000, compression="lzma"), ValidationError),
    ("store-file-none", lambda e: e.hub.refs.store_file(None), ValidationError),
    ("store-file-dev-zero", lambda e: e.hub.refs.store_file("/dev/zero"), ValidationError),
    ("store-file-missing", lambda e: e.hub.refs.store_file("/nonexistent/file"), ValidationError),
    ("store-file-nul", lambda e: e.hub.refs.store_file("a\0b"), ValidationError),
    ("resolve-to-nul", lambda e: e.hub.refs.resolve_to(e.ref, "a\0b"), ValidationError),
    ("resolve-not-hex", lambda e: e.hub.refs.resolve("sha256:" + "z" * 64), ValidationError),
    ("retain-none", lambda e: e.hub.refs.retain(None), ValidationError),
]  # fmt: skip


async def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


@pytest.mark.parametrize(
    ("call", "error"), [(c, e) for _, c, e in BAD_CALLS], ids=[n for n, _, _ in BAD_CALLS]
)
async def test_bad_call_raises_typed_error_and_changes_nothing(
    url: str, call: Call, error: type[Exception]
) -> None:
    async with connect(url) as hub:
        env = await populate(hub)
        before = await snapshot(hub)
        with pytest.raises(error) as info:
            await call(env)
        assert str(info.value)  # every message says what is allowed
        assert await snapshot(hub) == before
        # the store still works: every schedule can be listed, fired and cancelled
        for sched in await hub.schedules():
            assert await hub.cancel_schedule(sched.id)


BAD_SETTINGS: list[tuple[str, Callable[[], Any], type[Exception]]] = [
    ("connect-int", lambda: agentcomm.connect(12345), ConfigurationError),
    ("connect-bad-ipv6", lambda: agentcomm.connect("redis://[::1"), ConfigurationError),
    ("connect-bad-prefix-url", lambda: agentcomm.connect("redis://[::1", prefix="p"), ConfigurationError),
    ("connect-retention-str", lambda: agentcomm.connect("memory://", retention="x"), ConfigurationError),
    ("connect-backoff-int", lambda: agentcomm.connect("memory://", backoff=5), ConfigurationError),
    ("connect-limits-str", lambda: agentcomm.connect("memory://", limits="x"), ConfigurationError),
    ("connect-refs-str", lambda: agentcomm.connect("memory://", refs="x"), ConfigurationError),
    ("connect-lease-nan", lambda: agentcomm.connect("memory://", lease=NAN), ValidationError),
    ("connect-ttl-nan", lambda: agentcomm.connect("memory://", default_ttl=NAN), ValidationError),
    ("connect-attempts-2**63", lambda: agentcomm.connect("memory://", max_attempts=2**63), ValidationError),
    ("connect-auto-register-str", lambda: agentcomm.connect("memory://", auto_register="yes"), ValidationError),
    ("connect-policy-unknown", lambda: agentcomm.connect("memory://", policies={"x": "fast"}), ValidationError),
    ("connect-clock-int", lambda: agentcomm.connect("memory://", clock=5), ValidationError),
    ("backoff-base-nan", lambda: agentcomm.Backoff(base=NAN), ValidationError),
    ("backoff-factor-inf", lambda: agentcomm.Backoff(factor=INF), ValidationError),
    ("retention-acked-nan", lambda: agentcomm.Retention(acked=NAN), ValidationError),
    ("retention-interval-str", lambda: agentcomm.Retention(interval="5"), ValidationError),
    ("retention-max-count-float", lambda: agentcomm.Retention(topic_max_count=1.5), ValidationError),
    ("refconfig-ttl-nan", lambda: agentcomm.RefConfig(default_ttl=NAN), ValidationError),
    ("autopromote-negative", lambda: agentcomm.AutoPromote(threshold=-1), ValidationError),
    ("limits-depth-1000", lambda: agentcomm.Limits(max_depth=1000), ValidationError),
    ("limits-payload-zero", lambda: agentcomm.Limits(max_payload=0), ValidationError),
    ("limits-period-zero", lambda: agentcomm.Limits(min_schedule_period=0), ValidationError),
    ("limits-delay-nan", lambda: agentcomm.Limits(max_delay=NAN), ValidationError),
    ("limits-period-above-delay", lambda: agentcomm.Limits(min_schedule_period=10, max_delay=5), ValidationError),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "error"), [(m, e) for _, m, e in BAD_SETTINGS], ids=[n for n, _, _ in BAD_SETTINGS]
)
def test_bad_settings_raise_typed_errors(make: Callable[[], Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        make()


def test_limits_are_public_and_documented() -> None:
    limits = agentcomm.Limits()
    assert limits.max_payload == 4 * 1024 * 1024 and limits.max_metadata == 64 * 1024
    assert limits.max_depth == 64 and limits.min_schedule_period == 1.0
    assert "Limits" in agentcomm.__all__ and agentcomm.Limits.__doc__
    assert agentcomm.connect("memory://", limits=LIMITS).limits == LIMITS


# --- what is accepted ---------------------------------------------------------------------------


async def test_at_in_the_past_is_delivered_at_once(hub: agentcomm.Hub) -> None:
    a, b = await hub.agent("a"), await hub.agent("b")
    for at in (0, time.time() - 10 * 86400, datetime(1, 1, 2, tzinfo=UTC)):
        await a.send("b", "late", at=at, ttl=60)
        msg = await b.receive(timeout=0)
        assert msg is not None and msg.data == "late"
        await msg.ack()
    assert (await hub.stats()).expired == 0


async def test_ttl_inf_means_never_expires(hub: agentcomm.Hub) -> None:
    a, _ = await hub.agent("a"), await hub.agent("b")
    await a.send("b", 1, ttl=math.inf)
    (info,) = await hub.pending("b")
    assert info.expires_at is None
    entry = await hub.memory("ns").put("k", 1, ttl=math.inf)
    assert entry.expires_at is None


async def test_schedule_at_the_minimum_period_is_listed(url: str) -> None:
    async with connect(url) as hub:
        a, _ = await hub.agent("a"), await hub.agent("b")
        await a.schedule("b", 1, every=LIMITS.min_schedule_period)
        await a.schedule("b", 1, every=LIMITS.max_delay)
        await a.schedule("b", 1, cron="*/5 * * * *")
        assert len(await hub.schedules()) == 3


async def test_payload_above_the_limit_goes_by_reference(url: str) -> None:
    async with connect(url) as hub:
        a, b = await hub.agent("a"), await hub.agent("b")
        big = "x" * 12_000  # above both the limit and the default AutoPromote threshold
        await a.send("b", big)  # the default policy stores it by reference
        msg = await b.receive(timeout=0)
        assert msg is not None and msg.data == big and msg.payload_ref is not None
        await msg.ack()


@pytest.mark.parametrize(
    ("value", "back"),
    [
        ((1, 2), [1, 2]),
        ({"s": frozenset([3])}, {"s": [3]}),
        ({"t": (1, (2,))}, {"t": [1, [2]]}),
        (datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC), "2030-01-02T03:04:05Z"),
        (Decimal("1.5"), "1.5"),
        ({"b": b"\x00\x01"}, {"b": "AAE="}),
        (2**70, 2**70),
        (-0.0, 0.0),
        (_nested(LIMITS.max_depth), _nested(LIMITS.max_depth)),
    ],
    ids=["tuple", "frozenset", "nested-tuple", "datetime", "decimal", "bytes-inside", "bigint", "neg-zero", "max-depth"],
)  # fmt: skip
async def test_accepted_values_come_back_as_documented(url: str, value: Any, back: Any) -> None:
    async with connect(url) as hub:
        a, b = await hub.agent("a"), await hub.agent("b")
        await a.send("b", value)
        msg = await b.receive(timeout=0)
        assert msg is not None and msg.data == back
        entry = await hub.memory("ns").put("k", value)
        got = await hub.memory("ns").get("k")
        assert got is not None and got.value == back and entry.version == 1


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("at", lambda e: e.a.send("b", 1, at="soon")),
        ("delay", lambda e: e.a.send("b", 1, delay=NAN)),
        ("ttl", lambda e: e.a.send("b", 1, ttl=True)),
        ("max_attempts", lambda e: e.a.send("b", 1, max_attempts=2**63)),
        ("max_messages", lambda e: e.b.receive_many(2**63, timeout=0)),
        ("every", lambda e: e.a.schedule("b", 1, every=0.5)),
        ("limit", lambda e: e.hub.pending("b", limit=2**63)),
        ("metadata", lambda e: e.a.send("b", 1, metadata={"m": "x" * 600})),
        ("Limits.max_payload", lambda e: e.a.send("b", "x" * 3000, type=INLINE)),
        ("Limits.max_depth", lambda e: e.a.send("b", _nested(LIMITS.max_depth + 1))),
        ("expected_version", lambda e: e.hub.memory(NAMESPACE).put("k", 1, expected_version=-1)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)  # fmt: skip
async def test_error_names_the_argument(url: str, name: str, call: Call) -> None:
    async with connect(url) as hub:
        env = await populate(hub)
        with pytest.raises(ValidationError, match=name.replace(".", r"\.")):
            await call(env)


async def test_bad_reply_changes_nothing(url: str) -> None:
    async with connect(url) as hub:
        env = await populate(hub)
        asking = asyncio.ensure_future(env.a.request("b", "q?", timeout=30))
        request = None
        while request is None or request.correlation_id is None:
            request = await env.b.receive(timeout=5)
            assert request is not None
        before = await snapshot(hub)
        bad_replies: list[Callable[[], Awaitable[Any]]] = [
            lambda: request.reply(NAN),
            lambda: request.reply({1: "a"}),
            lambda: request.reply(_nested(LIMITS.max_depth + 1)),
            lambda: request.reply("x" * 3000, type=INLINE),
            lambda: request.reply(1, metadata={"m": "x" * 600}),
            lambda: request.reply(1, type=""),
            lambda: request.reply(1, ack="yes"),
        ]
        for bad in bad_replies:
            with pytest.raises(ValidationError):
                await bad()
            assert await snapshot(hub) == before
        assert await request.reply("fine")
        assert (await asking).data == "fine"
