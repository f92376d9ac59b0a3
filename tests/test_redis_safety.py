"""Redis only: a script that refuses a call leaves the store key-for-key unchanged (Redis does
not roll a failed script back, so each checks before its first write), and a stored record
that cannot be decoded is skipped and reported instead of failing the calls that meet it.

The calls go to the backend directly, with values the feature layer refuses before they get
there, and with raw script arguments no caller sends: the scripts must hold on their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import msgspec
import pytest
import redis

import agentcomm
from agentcomm._backends import open_backend
from agentcomm._backends.redis import RedisBackend
from agentcomm._kv_records import KVWrite, Space
from agentcomm._records import NewMessage, ScheduleSpec, Settle, SettleKind
from agentcomm._settings import Retention
from redis_server import BINARY

pytestmark = pytest.mark.skipif(BINARY is None, reason="redis-server is not installed")

NAN = float("nan")
GUARD = 30.0


@pytest.fixture
async def backend(redis_url: str, prefix: str) -> AsyncIterator[RedisBackend]:
    b = open_backend(f"{redis_url}?prefix={prefix}", Retention())
    assert isinstance(b, RedisBackend)
    await b.open()
    try:
        yield b
    finally:
        await b.close()


def snapshot(raw: redis.Redis, prefix: str) -> dict[bytes, bytes]:
    """Every key of the store with its DUMP: equal snapshots mean equal content."""
    return {k: raw.dump(k) for k in sorted(raw.scan_iter(match=f"{prefix}:*", count=1000))}  # type: ignore[misc]


def message(n: int, **fields: Any) -> NewMessage:
    base: dict[str, Any] = dict(
        id=f"m{n}", sender="a", recipient="b", type="t", priority=0, data=b"\xa1x",
        data_kind=0, metadata=None, enqueued_at=1000.0, visible_at=1000.0, expires_at=None,
        max_attempts=3,
    )  # fmt: skip
    base.update(fields)
    return NewMessage(**base)


def spec(n: int, **fields: Any) -> ScheduleSpec:
    base: dict[str, Any] = dict(
        id=f"s{n}", sender="a", recipient="b", type="t", priority=0, data=b"\xa1x",
        data_kind=0, metadata=None, ttl=None, max_attempts=3, cron=None, every=5.0,
        next_run=1000.0, created_at=1000.0,
    )  # fmt: skip
    base.update(fields)
    return ScheduleSpec(**base)


REFUSED = (agentcomm.ValidationError, agentcomm.BackendError)


async def refused_unchanged(
    raw: redis.Redis, prefix: str, call: Awaitable[Any]
) -> agentcomm.AgentCommError:
    """The error `call` raises (one of REFUSED); the store is as it was before the call."""
    before = snapshot(raw, prefix)
    with pytest.raises(REFUSED) as info:
        async with asyncio.timeout(GUARD):
            await call
    assert snapshot(raw, prefix) == before
    return info.value


async def stored(backend: RedisBackend) -> None:
    """A store with a little of everything: agents, messages (one leased), a schedule, a
    key-value record, a topic record, a blob."""
    mb = backend._mailboxes
    await mb.enqueue([message(1), message(2, visible_at=5000.0)], auto_register=True, now=1000.0)
    await mb.claim("b", max_messages=1, lease=30.0, now=1000.0)
    await mb.enqueue([message(3)], auto_register=True, now=1000.0)
    await mb.add_schedule(spec(1), auto_register=True)
    await backend._shared_memory.kv_put(
        Space("o", "n"), KVWrite("k", b"\xa1v", 0, None, None, None), now=1000.0
    )


# --- item 3: refused calls leave nothing behind --------------------------------------------


async def test_enqueue_refused_whole(backend: RedisBackend, raw: redis.Redis, prefix: str) -> None:
    await stored(backend)
    mb = backend._mailboxes
    for bad in (
        message(9, visible_at=NAN),
        message(9, expires_at=NAN),
        message(9, request_deadline=NAN, correlation_id="c"),
        message(9, idempotency_key="k", dedupe_until=NAN),
    ):
        # the good message first: it must not be stored either
        call = mb.enqueue([message(8), bad], auto_register=True, now=1000.0)
        await refused_unchanged(raw, prefix, call)


@pytest.mark.parametrize(
    "field, value",
    [(4, "x"), (4, "nan"), (5, "soon"), (6, "x"), (7, "x"), (8, "x"), (10, "x")],
    ids=["priority", "visible-nan", "visible", "expires", "max", "window", "deadline"],
)
async def test_enqueue_script_checks_its_header(
    backend: RedisBackend, raw: redis.Redis, prefix: str, field: int, value: str
) -> None:
    await stored(backend)
    mb: Any = backend._mailboxes
    good = ["m8", "a", "b", "0", "1000.0", "", "3", "", "", "", "", ""]
    bad = list(good)
    bad[0], bad[field - 1] = "m9", value
    if field in (8,):
        bad[11] = "key"
    if field == 10:
        bad[8] = "cid"
    args = ["1", "\0".join(good), b"body", "\0".join(bad), b"body"]
    call = backend._scripts.call(mb._script, "enqueue", 1000.0, args)
    error = await refused_unchanged(raw, prefix, call)
    assert isinstance(error, agentcomm.ValidationError)
    assert "before storing anything" in str(error)


async def test_claim_with_a_bad_lease_is_refused(
    backend: RedisBackend, raw: redis.Redis, prefix: str
) -> None:
    await stored(backend)
    for lease in (-1.0, 0.0, NAN, float("inf")):
        call = backend._mailboxes.claim("b", max_messages=5, lease=lease, now=1000.0)
        await refused_unchanged(raw, prefix, call)
    mb: Any = backend._mailboxes
    call = backend._scripts.call(mb._script, "claim", 1000.0, ["b", "later", 5])
    await refused_unchanged(raw, prefix, call)


async def test_settle_batch_refused_whole(
    backend: RedisBackend, raw: redis.Redis, prefix: str
) -> None:
    await stored(backend)
    ack = Settle(SettleKind.ACK, "b", 1, 1)
    for bad in (
        Settle(SettleKind.NACK, "b", 1, 1, until=NAN),
        Settle(SettleKind.EXTEND, "b", 1, 1, until=NAN),
    ):
        call = backend._mailboxes.settle_many([ack, bad], now=1000.0)
        await refused_unchanged(raw, prefix, call)
    mb: Any = backend._mailboxes
    ops = ["0\x000000000000000001\x001\x000.0\x00", "3\x000000000000000001\x001\x00later\x00"]
    call = backend._scripts.call(mb._script, "settle", 1000.0, ["0", *ops])
    await refused_unchanged(raw, prefix, call)
    # a reply whose ack is malformed takes no hold and posts nothing
    call = backend._scripts.call(mb._script, "reply", 1000.0, ["0", "cid", b"r", "", "junk"])
    await refused_unchanged(raw, prefix, call)


async def test_schedule_calls_refused_whole(
    backend: RedisBackend, raw: redis.Redis, prefix: str
) -> None:
    await stored(backend)
    mb: Any = backend._mailboxes
    call = mb.add_schedule(spec(2, next_run=NAN, recipient="new"), auto_register=True)
    await refused_unchanged(raw, prefix, call)
    header = "\0".join(["m9", "a", "b", "0", "1000.0", "", "3", "", "", "", "", ""])
    for due, upcoming in (("1000.0", "x"), ("x", "1005.0")):
        args = ["s1", due, upcoming, header, b"body"]
        call = backend._scripts.call(mb._script, "sched_fire", 1000.0, args)
        await refused_unchanged(raw, prefix, call)
    call = backend._scripts.call(mb._script, "prune", 1000.0, ["nan", "1", "1", "100"])
    await refused_unchanged(raw, prefix, call)
    call = mb.prune(NAN)
    await refused_unchanged(raw, prefix, call)


async def test_kv_put_refused_whole(backend: RedisBackend, raw: redis.Redis, prefix: str) -> None:
    await stored(backend)
    kv: Any = backend.shared_memory
    space = Space("o", "n")
    call = kv.kv_put(space, KVWrite("k", b"\xa1w", 0, None, NAN, None), now=1000.0)
    await refused_unchanged(raw, prefix, call)
    for hist, clog, expected in (("x", "", ""), ("", "x", ""), ("", "", "x")):
        args = ["o/n", "k", expected, b"\xa1w", "0", "", "", hist, clog]
        call = backend._scripts.run(kv._script, "put", 1000.0, args)
        await refused_unchanged(raw, prefix, call)


async def test_topic_and_reference_scripts_refuse_before_writing(
    backend: RedisBackend, raw: redis.Redis, prefix: str
) -> None:
    await stored(backend)
    topics: Any = backend.topics
    refs: Any = backend.references
    s = backend._scripts
    cases: list[tuple[Any, str, list[Any]]] = [
        (topics._script, "count", ["t.a", "1", "1", "t.b", "x", "1"]),
        (topics._script, "claim", ["c", "later", "5", "100", "0"]),
        (topics._script, "take", ["c", "0", "1", "later", "0", "5"]),
        (topics._script, "open", ["c", "def", "s", "seq", "x", ""]),
        (topics._script, "prune", ["x", "0"]),
        (refs._script, "put", ["ref_counting", "h", "id1", "x", "1", "none", "t", "", b"c"]),
        (refs._script, "adjust", ["ref_counting", "id1", "x"]),
        (refs._script, "stage", ["", "0"]),
        (refs._script, "gc", ["x"]),
    ]
    for script, op, args in cases:
        call = s.call(script, op, 1000.0, args)
        await refused_unchanged(raw, prefix, call)
    call = s.call(refs._script, "read", NAN, ["id1", "0", "1"])
    await refused_unchanged(raw, prefix, call)


# --- damaged stored values: skipped and reported, never a failure half-way ---------------


def _sids(raw: redis.Redis, prefix: str, zset: str) -> list[bytes]:
    return list(raw.zrange(f"{prefix}:{zset}", 0, -1))  # type: ignore[arg-type]


async def test_damaged_message_fields_do_not_break_claim(
    backend: RedisBackend, raw: redis.Redis, prefix: str
) -> None:
    mb = backend._mailboxes
    await mb.enqueue([message(1), message(2), message(3)], auto_register=True, now=1000.0)
    sids = _sids(raw, prefix, "r:b")
    raw.hset(f"{prefix}:m:{sids[0].decode()}", "att", "x")
    raw.hset(f"{prefix}:m:{sids[1].decode()}", "b", b"\xc1 not msgpack")
    got = await mb.claim("b", max_messages=5, lease=30.0, now=1000.0)
    assert [m.id for m in got.messages] == ["m3"]
    dead = await mb.dead_letters("b", limit=10)
    assert sorted(d.id for d in dead) == ["m1", "m2"]
    assert all("undecodable" in d.reason for d in dead)
    assert int(raw.hget(f"{prefix}:counters", "undecodable") or 0) == 2
    # a leased message whose max attempts is damaged: its lease ends without an error
    raw.hset(f"{prefix}:m:{sids[2].decode()}", "max", "x")
    got = await mb.claim("b", max_messages=5, lease=30.0, now=2000.0)
    assert got.messages == []
    assert len(await mb.dead_letters("b", limit=10)) == 3


async def test_listings_show_a_damaged_message_with_its_error(
    redis_url: str, prefix: str, raw: redis.Redis
) -> None:
    async with agentcomm.connect(f"{redis_url}?prefix={prefix}", auto_register=True) as hub:
        a = await hub.agent("a")
        await a.send("b", "one")
        await a.send("b", "two")
        first = _sids(raw, prefix, "r:b")[0].decode()
        raw.hset(f"{prefix}:m:{first}", "b", b"\xc1")
        pending = await hub.pending("b")
        assert len(pending) == 2
        assert "undecodable" in pending[0].type
        b = await hub.agent("b")
        msg = await b.receive(timeout=5)
        assert msg is not None and msg.data == "two"
        dead = await hub.dead_letters("b")
        assert len(dead) == 1 and "undecodable" in dead[0].reason
        # the dead letter's body cannot be decoded either: still listed, with the error
        assert dead[0].data is None
        if "undecodable" in agentcomm.HubStats.__struct_fields__:
            assert msgspec.to_builtins(await hub.stats())["undecodable"] == 1


async def test_a_damaged_schedule_stops_no_other(
    redis_url: str, prefix: str, raw: redis.Redis
) -> None:
    fast = agentcomm.Limits(min_schedule_period=0.1)
    url = f"{redis_url}?prefix={prefix}"
    async with agentcomm.connect(url, auto_register=True, limits=fast) as hub:
        a = await hub.agent("a")
        b = await hub.agent("b")
        bad = await a.schedule("b", "bad", every=60.0)
        good = await a.schedule("b", "good", every=0.5)
        raw.hset(f"{prefix}:sched", bad, b"\xc1 not a spec")
        raw.zadd(f"{prefix}:sched:next", {bad: 0})  # due now
        async with asyncio.timeout(GUARD):
            msg = await b.receive(timeout=10)
        assert msg is not None and msg.data == "good"
        listed = {s.id: s for s in await hub.schedules()}
        assert set(listed) == {bad, good}
        error = listed[bad].error
        assert error is not None and "undecodable" in error
        assert await hub.cancel_schedule(bad)
        assert [s.id for s in await hub.schedules()] == [good]
        assert int(raw.hget(f"{prefix}:counters", "undecodable") or 0) == 1


async def test_a_damaged_kv_record_is_skipped_and_replaceable(
    redis_url: str, prefix: str, raw: redis.Redis
) -> None:
    async with agentcomm.connect(f"{redis_url}?prefix={prefix}") as hub:
        kv = hub.memory("team")
        await kv.put("k1", 1)
        await kv.put("k2", 2)
        keys = [k.decode() for k in raw.scan_iter(match=f"{prefix}:kv:*r:k1")]
        assert len(keys) == 1
        raw.hset(keys[0], mapping={"v": "x", "c": "x", "e": "x"})
        assert await kv.get("k1") is None
        assert await kv.get("k2") is not None
        assert await kv.keys() == ["k2"]
        await kv.put("k1", 3)
        got = await kv.get("k1")
        assert got is not None and got.value == 3
        assert int(raw.hget(f"{prefix}:counters", "undecodable") or 0) >= 2


async def test_damaged_reference_counts_do_not_break_gc(
    backend: RedisBackend, raw: redis.Redis, prefix: str
) -> None:
    refs: Any = backend.references
    s = backend._scripts
    for i in (1, 2):
        await s.call(
            refs._script, "put", 1000.0, ["manual", "h", f"id{i}", "1", "1", "n", "t", "", b"c"]
        )
        await s.call(refs._script, "adjust", 1000.0, ["manual", f"id{i}", "-1", "h"])
    raw.hset(f"{prefix}:ref:id1", mapping={"refcount": "x", "expires_at": "x"})
    evicted = await s.call(refs._script, "gc", 2000.0, ["0"])
    assert [r[0] for r in evicted] == [b"id2"]


async def test_damaged_counters_and_sequences(
    backend: RedisBackend, raw: redis.Redis, prefix: str
) -> None:
    await stored(backend)
    mb = backend._mailboxes
    # a damaged sequence number is refused before anything is written: guessing one could
    # reuse a number and overwrite a message or a change
    raw.set(f"{prefix}:seq", "x")
    call = mb.enqueue([message(8)], auto_register=True, now=1000.0)
    error = await refused_unchanged(raw, prefix, call)
    assert "sequence number" in str(error)
    raw.set(f"{prefix}:seq", "3")
    meta = next(iter(raw.scan_iter(match=f"{prefix}:kv:*meta"))).decode()
    raw.hset(meta, "seq", "x")
    write = KVWrite("k", b"\xa1w", 0, None, None, None)
    await refused_unchanged(
        raw, prefix, backend._shared_memory.kv_put(Space("o", "n"), write, now=1000.0)
    )
    raw.hset(meta, "seq", "1")
    # a damaged event counter starts again instead of failing the script half-way
    raw.hset(f"{prefix}:counters", mapping={"dead_lettered": "x", "undecodable": "1.5"})
    raw.hset(meta, mapping={"writes": "x", "bytes": "y"})
    ops = [Settle(SettleKind.DEAD, "b", 1, 1, reason="r")]
    assert await mb.settle_many(ops, now=1000.0) == [True]
    assert raw.hget(f"{prefix}:counters", "dead_lettered") == b"1"
    out = await backend._shared_memory.kv_put(Space("o", "n"), write, now=1000.0)
    assert not out.conflict
