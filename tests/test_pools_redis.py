"""Redis pools against the pool engine: the same random operations, with the same clock and ids,
through the `PoolStore` contract on Redis (the rules in Lua) and on SQLite and memory (the
rules of `pool_engine.py` in Python) must give equal results, records, receipts, wakes,
snapshots, prune counts and mailbox contents. Then what only Redis needs: a refused call
leaves the store key-for-key as it was, and a call redis-py runs again applies once.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import msgspec
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentcomm import Retention
from agentcomm._backends import open_backend
from agentcomm._backends.contracts import Backend, PoolStore
from agentcomm._backends.redis import RedisBackend
from agentcomm._backends.redis.pools import RedisPools, meta_index
from agentcomm._errors import (
    AgentCommError,
    NotAMember,
    NotFound,
    PoolConfigConflict,
    ValidationError,
)
from agentcomm._pool_records import ConfigSpec, FilterSpec, MemberRecord, NewPoolMessage, WakeSpec
from redis_server import drop_prefixes
from test_redis_retries import dropped_after

_RUNS = ["r1", "r2", "r3", "r4"]
_AGENTS = ["a", "b"]
_TOPICS = ["x", "y"]
_REFS = ["p", "q"]
_KEYS = [None, "k1", "k2", "k:3 \u00e9"]
_METADATA = [
    None, b"{}", b'{"x":1}', b'{"x":true}', b'{"x":"1"}', b'{"x":1.0}', b'{"x":null,"y":[1]}',
    b' {"z":"a b", "x":1}',
]  # fmt: skip
_KINDS = ["member_joined", "member_left", "message", "event", "wake_registered"]
_RETENTION = Retention(pool_max_count=12, pool_max_age=40.0, dedupe_window=25.0)
_encode_config = msgspec.json.Encoder().encode


def _subset(values: list[str]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(values), unique=True, max_size=len(values)).map(sorted)


def _maybe(values: list[str]) -> st.SearchStrategy[list[str] | None]:
    # mostly "any": a filter of many set fields would hardly ever match
    return st.one_of(st.none(), st.none(), st.none(), _subset(values))


_filters = st.builds(
    FilterSpec,
    kinds=_maybe(_KINDS),
    runs=_maybe(_RUNS),
    senders=_maybe(_RUNS),
    agents=_maybe(_AGENTS),
    types=_maybe(["t1", "t2"]),
    topics=_maybe(_TOPICS),
    to_me=st.sampled_from([False, False, True]),
    metadata=st.sampled_from(
        [None, None, None, {}, {"x": 1}, {"x": True}, {"x": "1"}, {"x": None}, {"z": "a b"}]
    ),
)
_address = st.sampled_from(
    [("run", r) for r in [*_RUNS, "nobody"]]
    + [("agent", a) for a in [*_AGENTS, "c"]]
    + [("topic", t) for t in [*_TOPICS, "z"]]
    + [("pool", "")]
)
_join = st.tuples(
    st.just("join"),
    st.sampled_from(_RUNS),
    st.sampled_from(_AGENTS),
    _subset(_TOPICS),
    _subset(_REFS),
)
_send = st.tuples(
    st.just("send"),
    st.sampled_from(_RUNS),
    _address,
    _subset(_REFS),
    st.sampled_from(_KEYS),
    st.sampled_from([None, None, None, -1.0, 100.0]),
    st.sampled_from(_METADATA),
    st.binary(max_size=40),
    st.sampled_from(["t1", "t2"]),
)
_emit = st.tuples(
    st.just("emit"),
    st.sampled_from(_RUNS),
    st.sampled_from(["t1", "t2"]),
    st.sampled_from(_METADATA),
    st.binary(max_size=10),
)
_wait = st.tuples(
    st.just("wait"),
    st.sampled_from(_RUNS),
    _filters,
    st.sampled_from([None, 0.0, 3.0, 20.0]),
    st.sampled_from(_KEYS),
    st.booleans(),
)
# weighted: the operations that append and trigger come up most
_op = st.one_of(
    _send,
    _send,
    _send,
    _wait,
    _wait,
    _wait,
    _emit,
    _emit,
    _join,
    st.tuples(st.just("leave"), st.sampled_from(_RUNS)),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
    st.tuples(st.just("tick"), st.sampled_from([0.5, 4.0, 30.0])),
    st.tuples(st.just("expire")),
    st.tuples(st.just("wake"), st.sampled_from(_KEYS[1:])),
    st.tuples(st.just("receipt"), st.sampled_from(_KEYS[1:]), st.integers(0, 30)),
    st.tuples(st.just("records"), st.integers(0, 30), st.integers(1, 7)),
    st.tuples(st.just("prune")),
)
#: every run joins first (with drawn agents, topics and refs), most of them stay
_first_joins = st.tuples(
    *(
        st.tuples(st.just("join"), st.just(run), st.sampled_from(_AGENTS), _subset(_TOPICS),
                  _subset(_REFS))
        for run in _RUNS
    )
)  # fmt: skip
_ops = st.builds(
    lambda joins, rest: [*joins, *rest], _first_joins, st.lists(_op, min_size=15, max_size=40)
)


async def _apply(
    store: PoolStore, backend: Backend, op: tuple[Any, ...], now: float, n: int
) -> Any:
    """Run one operation; returns its result (or its error's type and text)."""
    kind = op[0]
    try:
        if kind == "join":
            _, run, agent, topics, refs = op
            return await store.pool_join("pl", MemberRecord(run, agent, topics, refs, now), now=now)
        if kind == "leave":
            return await store.pool_leave("pl", op[1], now=now)
        if kind == "send":
            _, sender, (to_kind, to_value), refs, key, ttl, meta, data, type_ = op
            message = NewPoolMessage(
                "pl", f"m{n}", sender, to_kind, to_value, type_, data, 1, meta, refs, key,
                None if ttl is None else now + ttl, 2, 3,
            )  # fmt: skip
            return await store.pool_send(message, now=now)
        if kind == "emit":
            _, run, type_, meta, data = op
            return await store.pool_emit("pl", run, type_, data, 2, meta, now=now)
        if kind == "wait":
            _, run, filt, timeout, key, replay = op
            spec = WakeSpec(
                f"w{n}", "pl", run, filt, key, replay, "envelope", now,
                None if timeout is None else now + timeout,
            )  # fmt: skip
            return await store.pool_wait_for(spec, now=now)
        if kind == "cancel":
            return await store.pool_cancel_wake("pl", f"w{op[1]}", now=now)
        if kind == "expire":
            return await store.pool_expire_wakes(now=now)
        if kind == "wake":
            return await store.pool_wake("pl", wake_id=None, key=op[1], now=now)
        if kind == "receipt":
            by_key = await store.pool_receipt("pl", message_id=None, key=op[1])
            by_id = await store.pool_receipt("pl", message_id=f"m{op[2]}", key=None)
            return by_key, by_id
        if kind == "records":
            return await store.pool_records("pl", op[1], limit=op[2])
        if kind == "prune":
            return (await backend.prune(now)).pruned_pool_records
    except AgentCommError as exc:
        return type(exc).__name__, str(exc)
    raise AssertionError(op)


async def _state(store: PoolStore, backend: Backend, now: float) -> Any:
    """Everything a pool shows, and every message its runs got."""
    snapshot = await store.pool_snapshot("pl", now=now)
    records = await store.pool_records("pl", 0, limit=1000)
    assert backend.mailboxes is not None
    mail = {}
    for run in _RUNS:
        claimed = await backend.mailboxes.claim(run, max_messages=1000, lease=60.0, now=now)
        mail[run] = [msgspec.structs.replace(m, seq=0) for m in claimed.messages]
    return snapshot, records, mail


async def _run(url: str, config: ConfigSpec, ops: list[tuple[Any, ...]]) -> list[Any]:
    backend = open_backend(url, _RETENTION)
    await backend.open()
    try:
        store = backend.pools
        assert store is not None
        now = 1_700_000_000.125
        encoded = _encode_config(config)
        default = _encode_config(ConfigSpec([], False, []))
        out: list[Any] = [await store.pool_open("pl", encoded, default, now=now)]
        try:
            await store.pool_open("pl", default, default, now=now)
        except AgentCommError as exc:
            out.append((type(exc).__name__, str(exc)))
        for n, op in enumerate(ops):
            if op[0] == "tick":
                now += op[1]
                continue
            now += 0.37
            out.append(await _apply(store, backend, op, now, n))
        out.append(await _state(store, backend, now + 1.0))
        return out
    finally:
        await backend.close()


def _compare(redis_url: str, tmp_path: Path, config: ConfigSpec, ops: list[Any]) -> None:
    name = uuid4().hex[:12]
    prefix = f"test-{name}"
    redis = f"{redis_url}{'&' if '?' in redis_url else '?'}prefix={prefix}"
    try:
        got = asyncio.run(_run(redis, config, ops))
    finally:
        drop_prefixes(redis_url, [prefix])
    for reference in (f"sqlite:///{tmp_path / name}.db", f"memory://{name}"):
        expected = asyncio.run(_run(reference, config, ops))
        for i, (g, e) in enumerate(itertools.zip_longest(got, expected)):
            assert g == e, (reference, i, ops[i - 2] if 2 <= i < len(ops) + 2 else None)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=_ops,
    required=_subset(_REFS),
    include_sender=st.booleans(),
    observe=_subset(_REFS),
)
def test_redis_pools_match_the_engine(
    redis_url: str,
    tmp_path: Path,
    ops: list[tuple[Any, ...]],
    required: list[str],
    include_sender: bool,
    observe: list[str],
) -> None:
    _compare(redis_url, tmp_path, ConfigSpec(required, include_sender, observe), ops)


def _j(
    run: str, agent: str = "a", topics: list[str] | None = None, refs: list[str] | None = None
) -> Any:
    return ("join", run, agent, topics or [], refs or [])


def _s(
    sender: str, to: tuple[str, str], refs: list[str] | None = None, meta: bytes | None = None
) -> Any:
    return ("send", sender, to, refs or [], None, None, meta, b"\x00\xff", "t1")


def _w(run: str, timeout: float | None = None, replay: bool = False, **fields: Any) -> Any:
    return ("wait", run, FilterSpec(**fields), timeout, None, replay)


_SCENARIOS = {
    "to_me only for the runs a message reached": (
        [_j("r1"), _j("r2"), _j("r3"), _w("r1", to_me=True), _s("r2", ("run", "r3")),
         _s("r2", ("run", "r1")), ("wake", "k1")]
    ),
    "due wakes time out in registration order": (
        [_j("r1"), _j("r2"), _w("r1", 20.0), _w("r2", 3.0), ("tick", 30.0), _s("r1", ("pool", ""))]
    ),
    "replay finds the first match, metadata typed": (
        [_j("r1"), _j("r2"), _s("r1", ("run", "r2"), meta=b'{"x":1.0}'),
         _s("r1", ("run", "r2"), meta=b'{"x":true}'), _s("r1", ("run", "r2"), meta=b'{"x":1}'),
         _w("r2", replay=True, metadata={"x": 1}), _w("r2", replay=True, metadata={"x": True}),
         _w("r2", replay=True, metadata={"x": "1"})]
    ),
    "a pool's due wakes time out in registration order, not in run order": (
        [_j("r1"), _j("r2"), _j("r3"), _w("r3", 3.0), _w("r1", 20.0), _w("r2", 3.0),
         ("tick", 30.0), ("wake", "k1")]
    ),
    "looking a wake up times out the pool's other due wakes": (
        [_j("r1"), _j("r2"), ("wait", "r1", FilterSpec(kinds=["event"]), 20.0, "k:3 \u00e9", False),
         _w("r2", 3.0), ("tick", 4.0), ("wake", "k:3 \u00e9"), ("receipt", "k1", 0)]
    ),
    "a leaving run's wakes are cancelled before it leaves": (
        [_j("r1"), _j("r2"), _w("r1", kinds=["member_left"]), _w("r2", kinds=["member_left"]),
         ("leave", "r1")]
    ),
    "broadcast, agents, topics and policy refs": (
        [_j("r1", "a", ["x"], ["p"]), _j("r2", "a", ["x", "y"], []), _j("r3", "b", ["y"], ["p"]),
         _s("r1", ("pool", "")), _s("r1", ("pool", ""), ["p"]), _s("r3", ("agent", "a"), ["p"]),
         _s("r3", ("topic", "y")), _s("r3", ("topic", "x"), ["q"]), _s("r1", ("run", "r9")),
         _j("r2", "b"), ("leave", "r4"), _j("r1", "a", ["y"], ["p"]),
        _s("r3", ("topic", "x"), ["p"]), _s("r3", ("topic", "y"), ["p"])]
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(_SCENARIOS))
@pytest.mark.parametrize("include_sender", [False, True])
def test_redis_pools_match_the_engine_in_scenarios(
    redis_url: str, tmp_path: Path, name: str, include_sender: bool
) -> None:
    config = ConfigSpec([], include_sender, ["p"] if name.startswith("broadcast") else [])
    _compare(redis_url, tmp_path, config, list(_SCENARIOS[name]))


@pytest.mark.parametrize(
    ("metadata", "entries"),
    [
        (None, []),
        (b"{}", []),
        (b'{"a":1,"b":true,"c":"1","d":null,"e":1.0,"f":[1]}', ["1:ai1", "1:bb1", "1:cs1", "1:dn"]),
    ],
)
def test_meta_index_keeps_scalars_with_their_type(
    metadata: bytes | None, entries: list[str]
) -> None:
    assert meta_index(metadata) == entries


# --- Redis only: refused calls write nothing, reruns apply once ------------------------------


@pytest.fixture
async def store(redis_url: str, prefix: str) -> AsyncIterator[RedisPools]:
    b = open_backend(f"{redis_url}?prefix={prefix}", Retention())
    assert isinstance(b, RedisBackend)
    await b.open()
    try:
        yield b._pools
    finally:
        await b.close()


def _dump(raw: redis.Redis, prefix: str) -> dict[bytes, bytes]:
    """Every key of the store with its DUMP: equal dumps mean equal content."""
    return {k: raw.dump(k) for k in sorted(raw.scan_iter(match=f"{prefix}:*", count=1000))}  # type: ignore[misc]


def _message(n: int, sender: str = "r1", **fields: Any) -> NewPoolMessage:
    base: dict[str, Any] = dict(
        pool="pl", message_id=f"m{n}", sender=sender, to_kind="pool", to_value="", type="t",
        data=b"\x00\xff", data_kind=0, metadata=None, policy_refs=[], idempotency_key=None,
        expires_at=None, priority=0, max_attempts=3,
    )  # fmt: skip
    base.update(fields)
    return NewPoolMessage(**base)


async def _populated(store: RedisPools) -> None:
    """A pool with two members, a receipt, and a wake that is due at 2000."""
    config = _encode_config(ConfigSpec(["p"], False, []))
    await store.pool_open("pl", config, config, now=1000.0)
    for run in ("r1", "r2"):
        await store.pool_join("pl", MemberRecord(run, "a", ["x"], ["p"], 1000.0), now=1000.0)
    await store.pool_send(_message(0, policy_refs=["p"], idempotency_key="k"), now=1000.0)
    spec = WakeSpec("w0", "pl", "r2", FilterSpec(), "wk", False, "envelope", 1000.0, 1500.0)
    await store.pool_wait_for(spec, now=1000.0)


async def test_a_refused_pool_call_writes_nothing(
    store: RedisPools, raw: redis.Redis, prefix: str
) -> None:
    await _populated(store)
    now = 2000.0  # the wake is due: an accepted call would time it out first
    other = _encode_config(ConfigSpec([], True, []))
    spec = WakeSpec("w1", "pl", "r9", FilterSpec(), None, False, "envelope", now, None)
    refused: list[tuple[type[AgentCommError], Any]] = [
        (PoolConfigConflict, store.pool_open("pl", other, other, now=now)),
        (NotFound, store.pool_join("nope", MemberRecord("r1", "a", [], [], now), now=now)),
        (ValidationError, store.pool_join("pl", MemberRecord("r1", "b", [], [], now), now=now)),
        (NotAMember, store.pool_leave("pl", "r9", now=now)),
        (NotAMember, store.pool_send(_message(1, sender="r9"), now=now)),
        (ValidationError, store.pool_send(_message(2, expires_at=math.nan), now=now)),
        (NotAMember, store.pool_emit("pl", "r9", "t", b"", 0, None, now=now)),
        (NotAMember, store.pool_wait_for(spec, now=now)),
        (NotFound, store.pool_cancel_wake("pl", "w9", now=now)),
        (NotFound, store.pool_snapshot("nope", now=now)),
        (NotFound, store.pool_records("nope", 0, limit=10)),
    ]
    for error, call in refused:
        before = _dump(raw, prefix)
        with pytest.raises(error):
            await call
        assert _dump(raw, prefix) == before, error
    snap = await store.pool_snapshot("pl", now=now)  # accepted: the wake times out now
    assert snap.pending_wakes == []
    wake = await store.pool_wake("pl", wake_id=None, key="wk", now=now)
    assert wake is not None and (wake.status, wake.finished_at) == ("timed_out", now)


async def test_retried_pool_calls_apply_once(
    store: RedisPools, raw: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _populated(store)
    with dropped_after(monkeypatch, "join") as drops:
        await store.pool_join("pl", MemberRecord("r3", "b", [], ["p"], 1001.0), now=1001.0)
    with dropped_after(monkeypatch, "send"):
        first = await store.pool_send(_message(1, policy_refs=["p"]), now=1002.0)
    with dropped_after(monkeypatch, "emit"):
        await store.pool_emit("pl", "r3", "t", b"", 0, None, now=1003.0)
    spec = WakeSpec("w1", "pl", "r3", FilterSpec(), None, False, "envelope", 1004.0, None)
    with dropped_after(monkeypatch, "wait_for"):
        await store.pool_wait_for(spec, now=1004.0)
    with dropped_after(monkeypatch, "cancel"):
        assert await store.pool_cancel_wake("pl", "w1", now=1005.0)
    with dropped_after(monkeypatch, "leave"):
        await store.pool_leave("pl", "r3", now=1006.0)
    assert drops.dropped == 1
    assert first.status == "delivered" and not first.duplicate
    page = await store.pool_records("pl", 0, limit=100)
    kinds = [r.kind for r in page.records]
    assert kinds == [
        "opened", "member_joined", "member_joined", "message", "wake_registered",
        "member_joined", "wake_triggered", "message", "event", "wake_registered",
        "wake_cancelled", "member_left",
    ]  # fmt: skip
    assert [r.seq for r in page.records] == list(range(1, 13))
    # the first message reached r2, the retried one r2 and r3, once each
    assert len(list(raw.scan_iter(match=f"{prefix}:m:*"))) == 1 + 2
