"""Shared memory: the conformance suite, run on every backend."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

import agentcomm
from agentcomm import Change, VersionConflict

WAIT = 20.0  # a guard against hanging, never a timing assertion


async def collect(changes: AsyncIterator[Change], n: int) -> list[Change]:
    """The next `n` changes of a watch."""
    out: list[Change] = []

    async def run() -> None:
        async for change in changes:
            out.append(change)
            if len(out) == n:
                return

    await asyncio.wait_for(run(), WAIT)
    return out


def brief(changes: list[Change]) -> list[tuple[str, str, int]]:
    return [(c.kind, c.key, c.version) for c in changes]


# --- versions and conflicts ---------------------------------------------------------------------


async def test_versions_count_up_and_conflicts_carry_both_versions(hub: agentcomm.Hub) -> None:
    kv = hub.memory("project-x")
    first = await kv.put("plan", {"steps": 3})
    assert (first.key, first.value, first.version, first.updated_by) == (
        "plan",
        {"steps": 3},
        1,
        None,
    )
    second = await kv.put("plan", {"steps": 4}, expected_version=first.version)
    assert second.version == 2
    assert second.created_at == first.created_at
    with pytest.raises(VersionConflict) as info:
        await kv.put("plan", {"steps": 5}, expected_version=1)
    assert (info.value.key, info.value.expected, info.value.actual) == ("plan", 1, 2)
    got = await kv.get("plan")
    assert got is not None
    assert (got.value, got.version) == ({"steps": 4}, 2)
    assert await kv.get("nothing") is None


async def test_expected_version_zero_creates_only(hub: agentcomm.Hub) -> None:
    kv = hub.memory("locks")
    assert (await kv.put("lock", "me", expected_version=0)).version == 1
    with pytest.raises(VersionConflict) as info:
        await kv.put("lock", "you", expected_version=0)
    assert (info.value.expected, info.value.actual) == (0, 1)
    with pytest.raises(VersionConflict) as info:
        await kv.put("other", "x", expected_version=3)
    assert (info.value.expected, info.value.actual) == (3, 0)


async def test_delete_is_versioned_and_versions_keep_counting(hub: agentcomm.Hub) -> None:
    kv = hub.memory("ns")
    await kv.put("plan", 1)
    await kv.put("plan", 2)
    with pytest.raises(VersionConflict):
        await kv.delete("plan", expected_version=1)
    assert await kv.delete("plan", expected_version=2) is True
    assert await kv.get("plan") is None
    assert await kv.delete("plan") is False
    with pytest.raises(VersionConflict) as info:
        await kv.delete("plan", expected_version=3)
    assert info.value.actual == 0
    # the delete was version 3, so a stale holder of version 1 or 2 can never win again
    again = await kv.put("plan", 9, expected_version=0)
    assert again.version == 4


async def test_values_round_trip_and_bytes_stay_bytes(hub: agentcomm.Hub) -> None:
    kv = hub.memory("ns")
    await kv.put("blob", b"\x00\x01raw")
    await kv.put("doc", {"a": [1, 2.5, None, "x"], "b": True})
    blob, doc = await kv.get("blob"), await kv.get("doc")
    assert blob is not None and doc is not None
    assert blob.value == b"\x00\x01raw"
    assert doc.value == {"a": [1, 2.5, None, "x"], "b": True}
    with pytest.raises(agentcomm.EncodeError):
        await kv.put("bad", object())


async def test_update_retries_until_every_increment_lands(hub: agentcomm.Hub) -> None:
    kv = hub.memory("counters")

    async def incr() -> agentcomm.Entry:
        return await kv.update("counter", lambda v: (v or 0) + 1)

    await asyncio.gather(*(incr() for _ in range(20)))
    got = await kv.get("counter")
    assert got is not None
    assert (got.value, got.version) == (20, 20)


async def test_update_accepts_a_coroutine_function(hub: agentcomm.Hub) -> None:
    kv = hub.memory("ns")

    async def append(v: Any) -> list[int]:
        return [*(v or []), 1]

    await kv.update("items", append)
    entry = await kv.update("items", append)
    assert entry.value == [1, 1]


# --- concurrent writers expecting version 1 -------------------------------------------------------


def _count(results: list[Any]) -> tuple[int, int, list[Any]]:
    wins = sum(isinstance(r, agentcomm.Entry) for r in results)
    conflicts = [r for r in results if isinstance(r, VersionConflict)]
    assert all((c.expected, c.actual) == (1, 2) for c in conflicts)
    others = [r for r in results if not isinstance(r, agentcomm.Entry | VersionConflict)]
    return wins, len(conflicts), others


async def test_ten_concurrent_tasks_one_winner(hub: agentcomm.Hub) -> None:
    kv = hub.memory("race")
    await kv.put("k", "start")
    results = await asyncio.gather(
        *(kv.put("k", i, expected_version=1) for i in range(10)), return_exceptions=True
    )
    assert _count(list(results)) == (1, 9, [])
    got = await kv.get("k")
    assert got is not None and got.version == 2


async def test_ten_concurrent_threads_one_winner(hub: agentcomm.Hub, url: str) -> None:
    await hub.memory("race").put("k", "start")
    barrier = threading.Barrier(10)
    results: list[Any] = []
    lock = threading.Lock()

    async def writer(i: int) -> None:
        async with agentcomm.connect(url) as own:
            barrier.wait(WAIT)
            try:
                result: Any = await own.memory("race").put("k", i, expected_version=1)
            except Exception as exc:
                result = exc
            with lock:
                results.append(result)

    threads = [threading.Thread(target=asyncio.run, args=(writer(i),)) for i in range(10)]
    for t in threads:
        t.start()

    def join_all() -> None:
        for t in threads:
            t.join(WAIT)

    await asyncio.to_thread(join_all)
    assert _count(results) == (1, 9, [])


def _process_writer(url: str, hubs: int, barrier: Any, out: Any) -> None:
    async def main() -> list[Any]:
        async with contextlib.AsyncExitStack() as stack:
            opened = [await stack.enter_async_context(agentcomm.connect(url)) for _ in range(hubs)]
            barrier.wait(WAIT)
            return list(
                await asyncio.gather(
                    *(h.memory("race").put("k", "p", expected_version=1) for h in opened),
                    return_exceptions=True,
                )
            )

    results = asyncio.run(main())
    wins, conflicts, others = _count(results)
    out.put((wins, conflicts, [repr(o) for o in others]))


@pytest.mark.slow
async def test_ten_writers_in_two_processes_one_winner(
    hub: agentcomm.Hub, url: str, backend_name: str
) -> None:
    if backend_name == "memory":
        pytest.skip("a memory store lives in one process")
    await hub.memory("race").put("k", "start")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    out = ctx.Queue()
    procs = [ctx.Process(target=_process_writer, args=(url, 5, barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        got = [await asyncio.to_thread(out.get, True, 60) for _ in procs]
    finally:
        for p in procs:
            await asyncio.to_thread(p.join, 30)
    assert sum(g[0] for g in got) == 1
    assert sum(g[1] for g in got) == 9
    assert [g[2] for g in got] == [[], []]
    final = await hub.memory("race").get("k")
    assert final is not None and final.version == 2


# --- watch ----------------------------------------------------------------------------------------


async def test_watch_sees_puts_deletes_and_expiry_in_order_across_hubs(
    hub: agentcomm.Hub, make_hub: Callable[..., agentcomm.Hub]
) -> None:
    other = await make_hub()
    async with other, contextlib.aclosing(other.memory("ns").watch("plan*", since=0)) as changes:
        watcher = asyncio.create_task(collect(changes, 6))
        kv = hub.memory("ns")
        await kv.put("plan", 1)
        await kv.put("other", 1)  # not matched
        await kv.put("plan", 2)
        await kv.put("plan.b", 1)
        await kv.delete("plan")
        await kv.put("plan.c", 1, ttl=0.05)
        got = await watcher
    assert brief(got) == [
        ("put", "plan", 1),
        ("put", "plan", 2),
        ("put", "plan.b", 1),
        ("delete", "plan", 3),
        ("put", "plan.c", 1),
        ("expire", "plan.c", 2),
    ]
    assert [c.value for c in got] == [1, 2, 1, None, 1, None]
    seqs = [c.sequence for c in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == 6


async def test_watch_include_initial_then_live(hub: agentcomm.Hub) -> None:
    kv = hub.memory("ns")
    await kv.put("a", 1)
    await kv.put("b", 2)
    await kv.put("a", 3)
    async with contextlib.aclosing(kv.watch(include_initial=True)) as changes:
        first = await collect(changes, 2)
        assert brief(first) == [("put", "a", 2), ("put", "b", 1)]
        assert [c.value for c in first] == [3, 2]
        await kv.put("c", 4)
        assert brief(await collect(changes, 1)) == [("put", "c", 1)]


async def test_watch_resumes_after_its_last_seen_seq(hub: agentcomm.Hub) -> None:
    kv = hub.memory("ns")
    async with contextlib.aclosing(kv.watch(since=0)) as changes:
        await kv.put("a", 1)
        await kv.put("a", 2)
        seen = await collect(changes, 1)
    await kv.put("a", 3)
    async with contextlib.aclosing(kv.watch(since=seen[-1].sequence)) as changes:
        assert brief(await collect(changes, 2)) == [("put", "a", 2), ("put", "a", 3)]


async def test_watcher_behind_the_change_log_is_told_to_resync(hub: agentcomm.Hub) -> None:
    kv = hub.memory("ns", change_log=4)
    for i in range(30):
        await kv.put(f"k{i % 3}", i)
    async with contextlib.aclosing(kv.watch(since=1)) as changes:
        got = await collect(changes, 4)
        assert got[0].kind == "resync"
        # then the current state, as puts
        assert [(c.kind, c.key, c.value) for c in got[1:]] == [
            ("put", "k0", 27),
            ("put", "k1", 28),
            ("put", "k2", 29),
        ]
        await kv.delete("k0")
        assert brief(await collect(changes, 1)) == [("delete", "k0", 11)]


async def test_watch_counts_watchers_and_ends_when_the_hub_closes(
    make_hub: Callable[..., agentcomm.Hub],
) -> None:
    own = await make_hub()
    kv = own.memory("ns")
    await kv.put("a", 1)
    changes = kv.watch(include_initial=True)
    assert (await anext(changes)).key == "a"
    assert (await kv.stats()).watchers == 1
    task = asyncio.create_task(collect(changes, 1))
    await own.aclose()
    assert await asyncio.wait_for(task, WAIT) == []  # the watch ended without a change
    await changes.aclose()


# --- TTL, history, stats --------------------------------------------------------------------------


async def test_expired_key_reads_as_absent(hub: agentcomm.Hub) -> None:
    kv = hub.memory("ns")
    entry = await kv.put("session", {"user": 1}, ttl=0.05)
    assert entry.expires_at is not None
    await kv.put("stays", 1)
    await asyncio.sleep(0.1)
    assert await kv.get("session") is None
    assert await kv.keys() == ["stays"]
    assert (await kv.stats()).keys == 1
    # absent, so a create-only put wins; the expiry counted as version 2
    assert (await kv.put("session", {}, expected_version=0)).version == 3


async def test_prune_records_expiries_for_watchers(hub: agentcomm.Hub) -> None:
    kv = hub.memory("ns")
    await kv.put("s", 1, ttl=0.05)
    await asyncio.sleep(0.1)
    await hub.prune()
    async with contextlib.aclosing(kv.watch(since=0)) as changes:
        assert brief(await collect(changes, 2)) == [("put", "s", 1), ("expire", "s", 2)]


async def test_update_keeps_the_remaining_ttl(hub: agentcomm.Hub) -> None:
    kv = hub.memory("ns")
    first = await kv.put("s", 1, ttl=60)
    second = await kv.update("s", lambda v: v + 1)
    assert second.expires_at == first.expires_at


async def test_history_keeps_the_last_n_versions(hub: agentcomm.Hub) -> None:
    kv = hub.memory("ns", history=3)
    for i in range(1, 6):
        await kv.put("plan", i)
    assert [(e.version, e.value) for e in await kv.history("plan")] == [(5, 5), (4, 4), (3, 3)]
    assert [e.version for e in await kv.history("plan", limit=2)] == [5, 4]
    await kv.delete("plan")
    assert [e.version for e in await kv.history("plan")] == [5, 4]
    plain = hub.memory("plain")
    await plain.put("plan", 1)
    await plain.put("plan", 2)
    assert [e.version for e in await plain.history("plan")] == [2]
    # the setting belongs to the namespace: a handle without it keeps it
    for i in range(3):
        await hub.memory("ns").put("x", i)
    assert len(await kv.history("x")) == 3


async def test_change_log_and_history_stay_bounded(
    hub: agentcomm.Hub, url: str, backend_name: str
) -> None:
    kv = hub.memory("ns", history=2, change_log=10)
    for i in range(200):
        await kv.put(f"k{i % 4}", i)
    assert [e.version for e in await kv.history("k0")] == [50, 49]
    if backend_name == "sqlite":
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            changes = conn.execute("SELECT COUNT(*) FROM kv_changes").fetchone()[0]
            past = conn.execute("SELECT COUNT(*) FROM kv_history").fetchone()[0]
        assert 10 <= changes <= 11
        assert past == 4  # one older version per key


async def test_stats_count_keys_bytes_reads_writes_conflicts(hub: agentcomm.Hub) -> None:
    kv = hub.memory("ns")
    await kv.put("a", "xyz")
    await kv.put("b", b"12")
    await kv.get("a")
    with pytest.raises(VersionConflict):
        await kv.put("a", 1, expected_version=5)
    stats = await kv.stats()
    assert (stats.namespace, stats.keys, stats.bytes) == ("ns", 2, len(b'"xyz"') + 2)
    assert (stats.reads, stats.writes, stats.conflicts, stats.watchers) == (1, 2, 1, 0)


async def test_keys_glob(hub: agentcomm.Hub) -> None:
    kv = hub.memory("ns")
    for key in ("plan", "plan.a", "plan/b", "plot", "xplan"):
        await kv.put(key, 1)
    assert await kv.keys("plan*") == ["plan", "plan.a", "plan/b"]
    assert await kv.keys("pl?t") == ["plot"]
    assert await kv.keys("*plan") == ["plan", "xplan"]
    assert await kv.keys("[px]*") == ["plan", "plan.a", "plan/b", "plot", "xplan"]


# --- namespaces, identity and validation ----------------------------------------------------------


async def test_private_namespaces_are_isolated_by_construction(hub: agentcomm.Hub) -> None:
    wf = await hub.agent("wf")
    role = await hub.agent("wf:role")
    await role.memory().put("secret", 1)
    await hub.memory("wf").put("public", 1)
    await wf.memory().put("mine", 1)
    assert await wf.memory().keys() == ["mine"]
    assert await role.memory().keys() == ["secret"]
    assert await hub.memory("wf").keys() == ["public"]
    assert await hub.memory("wf:role").keys() == []
    assert await wf.memory().get("secret") is None
    assert wf.memory().owner == "wf" and hub.memory("wf").owner is None


async def test_agent_writes_are_attributed(hub: agentcomm.Hub) -> None:
    planner = await hub.agent("planner")
    entry = await planner.memory("project-x").put("plan", 1)
    assert entry.updated_by == "planner"
    got = await hub.memory("project-x").get("plan")
    assert got is not None and got.updated_by == "planner"


async def test_values_are_durable_across_hubs(
    hub: agentcomm.Hub, make_hub: Callable[..., agentcomm.Hub]
) -> None:
    await hub.memory("ns").put("plan", {"v": 1})
    async with make_hub() as other:
        got = await other.memory("ns").get("plan")
    assert got is not None and got.value == {"v": 1}


@pytest.mark.parametrize("key", ["", "a b", "x*", "é", "a" * 257, 5, None, "new\nline"])
async def test_bad_keys_are_rejected(hub: agentcomm.Hub, key: Any) -> None:
    with pytest.raises(agentcomm.ValidationError, match="key"):
        await hub.memory("ns").put(key, 1)


async def test_bad_arguments_are_rejected_with_our_errors(hub: agentcomm.Hub) -> None:
    for namespace in ("", "a/b", ".x", "a" * 129):
        with pytest.raises(agentcomm.InvalidName):
            hub.memory(namespace)
    with pytest.raises(agentcomm.ValidationError):
        hub.memory("ns", history=0)
    kv = hub.memory("ns")
    with pytest.raises(agentcomm.ValidationError):
        await kv.put("k", 1, ttl=-1)
    with pytest.raises(agentcomm.ValidationError):
        await kv.put("k", 1, expected_version=-1)
    with pytest.raises(agentcomm.ValidationError):
        await kv.keys("a b")
    with pytest.raises(agentcomm.ValidationError):
        await kv.update("k", lambda v: v, retries=0)


async def test_closed_hub_raises_hub_closed(make_hub: Callable[..., agentcomm.Hub]) -> None:
    own = await make_hub()
    await own.aclose()
    with pytest.raises(agentcomm.HubClosed):
        await own.memory("ns").get("k")


# --- model test -----------------------------------------------------------------------------------

KEYS = ("a", "b", "c")
VALUES = st.none() | st.integers(-(2**53), 2**53) | st.text(max_size=5) | st.lists(st.booleans())


def test_store_matches_a_dict_model(url: str) -> None:
    class Model(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.hub = self.loop.run_until_complete(agentcomm.connect(url, background=False).open())
            self.kv = self.hub.memory("m" + uuid4().hex[:12])
            self.live: dict[str, Any] = {}
            self.versions: dict[str, int] = dict.fromkeys(KEYS, 0)

        def run(self, coro: Any) -> Any:
            return self.loop.run_until_complete(coro)

        def expected(self, key: str, how: str) -> int | None:
            actual = self.versions[key] if key in self.live else 0
            return {"none": None, "right": actual, "zero": 0, "wrong": actual + 1}[how]

        @rule(
            key=st.sampled_from(KEYS),
            value=VALUES,
            how=st.sampled_from(["none", "right", "zero", "wrong"]),
        )
        def put(self, key: str, value: Any, how: str) -> None:
            expected = self.expected(key, how)
            actual = self.versions[key] if key in self.live else 0
            if expected is not None and expected != actual:
                with pytest.raises(VersionConflict):
                    self.run(self.kv.put(key, value, expected_version=expected))
                return
            entry = self.run(self.kv.put(key, value, expected_version=expected))
            self.versions[key] += 1
            self.live[key] = value
            assert entry.version == self.versions[key]

        @rule(key=st.sampled_from(KEYS), how=st.sampled_from(["none", "right", "wrong"]))
        def delete(self, key: str, how: str) -> None:
            expected = self.expected(key, how)
            actual = self.versions[key] if key in self.live else 0
            if expected is not None and expected != actual:
                with pytest.raises(VersionConflict):
                    self.run(self.kv.delete(key, expected_version=expected))
                return
            deleted = self.run(self.kv.delete(key, expected_version=expected))
            assert deleted == (key in self.live)
            if deleted:
                self.versions[key] += 1
                del self.live[key]

        @rule(key=st.sampled_from(KEYS))
        def increment(self, key: str) -> None:
            old = self.live.get(key)
            base = old if isinstance(old, int) else 0
            entry = self.run(self.kv.update(key, lambda v: (v if isinstance(v, int) else 0) + 1))
            self.versions[key] += 1
            self.live[key] = base + 1
            assert (entry.value, entry.version) == (base + 1, self.versions[key])

        @invariant()
        def matches(self) -> None:
            for key in KEYS:
                got = self.run(self.kv.get(key))
                if key in self.live:
                    assert got is not None
                    assert (got.value, got.version) == (self.live[key], self.versions[key])
                else:
                    assert got is None
            assert self.run(self.kv.keys()) == sorted(self.live)

        def teardown(self) -> None:
            self.run(self.hub.aclose())
            self.loop.close()

    run_state_machine_as_test(
        Model, settings=settings(max_examples=30, stateful_step_count=25, deadline=None)
    )
