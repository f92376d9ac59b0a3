"""Durable topic consumers: positions, leases, shared work, rewinds, retention."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import agentcomm

# --- durable consumers ---------------------------------------------------------------------


async def _drain(sub: agentcomm.Subscription, *, ack: bool = True, idle: float = 0.2) -> list[int]:
    got = []
    while (msg := await sub.next(timeout=idle)) is not None:
        got.append(msg.data)
        if ack:
            await msg.ack()
    return got


async def test_durable_resumes_after_reopen(
    hub: agentcomm.Hub, make_hub: Callable[..., agentcomm.Hub]
) -> None:
    planner = await hub.agent("planner")
    for i in range(5):
        await planner.publish("jobs.build", i)
    async with make_hub() as first:
        sub = await (await first.agent("auditor")).subscribe("jobs.>", durable="audit", start="all")
        for expected in (0, 1):
            msg = await sub.next(timeout=5)
            assert msg is not None and msg.data == expected and msg.attempt == 1
            await msg.ack()
    # the hub closed: acks were written, the unhanded leases released
    for i in range(5, 7):
        await planner.publish("jobs.build", i)
    async with make_hub() as second:
        # the same start as at creation: a restart resumes, it does not rewind
        sub = await (await second.agent("auditor")).subscribe(
            "jobs.>", durable="audit", start="all"
        )
        assert await _drain(sub) == [2, 3, 4, 5, 6]
        assert sub.lost == 0
        stats = await second.topic_stats("jobs.build")
        assert stats.subscribers == 1  # the durable consumer


async def test_ack_after_close_is_written(make_hub: Callable[..., agentcomm.Hub]) -> None:
    async with make_hub(lease=0.2) as hub:
        planner = await hub.agent("planner")
        reader = await hub.agent("reader")
        await planner.publish("late.x", 1)
        async with await reader.subscribe("late.>", durable="late", start="all") as sub:
            msg = await sub.next(timeout=5)
        assert msg is not None
        await msg.ack()
        again = await reader.subscribe("late.>", durable="late")
        assert await again.next(timeout=0.5) is None  # past the lease: not delivered again
        await again.aclose()


async def test_durable_redelivers_after_the_lease(make_hub: Callable[..., agentcomm.Hub]) -> None:
    async with make_hub(lease=0.3) as hub:
        planner = await hub.agent("planner")
        worker = await hub.agent("worker")
        sub = await worker.subscribe("jobs.*", durable="workers", buffer=1)
        await planner.publish("jobs.a", "a")
        first = await sub.next(timeout=5)
        assert first is not None and first.attempt == 1
        again = await sub.next(timeout=5)  # not acked: back after the lease
        assert again is not None and again.data == "a" and again.attempt == 2
        await again.ack()
        await first.ack()  # stale: ignored
        await planner.publish("jobs.a", "b")
        nxt = await sub.next(timeout=5)
        assert nxt is not None and nxt.data == "b"
        await nxt.ack()
        await sub.aclose()


async def test_durable_shares_work_between_subscribers(
    hub: agentcomm.Hub, make_hub: Callable[..., agentcomm.Hub]
) -> None:
    planner = await hub.agent("planner")
    async with make_hub() as other:
        # every process runs the same line: the second attach must not rewind the first
        one = await (await hub.agent("w1")).subscribe(
            "work.>", durable="pool", buffer=3, start="all"
        )
        two = await (await other.agent("w2")).subscribe(
            "work.>", durable="pool", buffer=3, start="all"
        )
        for i in range(60):
            await planner.publish(f"work.{i % 3}", i)

        async def consume(sub: agentcomm.Subscription, seen: list[int]) -> None:
            while (msg := await sub.next(timeout=0.3)) is not None:
                seen.append(msg.data)
                await msg.ack()
                await asyncio.sleep(0.005)  # some work, so both get a turn at the lock

        a: list[int] = []
        b: list[int] = []
        await asyncio.gather(consume(one, a), consume(two, b))
        assert sorted(a + b) == list(range(60))  # each message to exactly one of them
        assert a and b
        await one.aclose()
        await two.aclose()


async def test_rewind_with_start(hub: agentcomm.Hub) -> None:
    planner = await hub.agent("planner")
    reader = await hub.agent("reader")
    seqs = [(await planner.publish("log.x", i)).sequence for i in range(6)]
    sub = await reader.subscribe("log.x", durable="r", start="new")
    await planner.publish("log.x", 6)
    assert await _drain(sub) == [6]
    await sub.aclose()
    sub = await reader.subscribe("log.x", durable="r", start=seqs[3])
    assert await _drain(sub) == [3, 4, 5, 6]
    await sub.aclose()
    sub = await reader.subscribe("log.x", durable="r", start="all")
    assert await _drain(sub) == [0, 1, 2, 3, 4, 5, 6]
    await sub.aclose()
    cut = datetime.now(UTC)
    await planner.publish("log.x", 7)
    sub = await reader.subscribe("log.x", durable="r", start=cut)
    assert await _drain(sub) == [7]
    sub2 = await reader.subscribe("log.x", durable="r")  # resumes: nothing left
    assert await sub2.next(timeout=0.05) is None
    sub3 = await reader.subscribe("log.x", durable="r", start=cut)  # same start: resumes
    assert await sub3.next(timeout=0.05) is None
    await sub.aclose()
    await sub2.aclose()
    await sub3.aclose()
    sub = await reader.subscribe("log.x", durable="r", start=0)  # another start: rewinds
    assert await _drain(sub) == [0, 1, 2, 3, 4, 5, 6, 7]


async def test_durable_filters_and_literal_patterns(hub: agentcomm.Hub) -> None:
    planner = await hub.agent("planner")
    other = await hub.agent("other")
    reader = await hub.agent("reader")
    for i in range(4):
        await planner.publish("a.b", i, metadata={"k": i % 2})
        await other.publish("a.b", 10 + i)
        await planner.publish("a.c", 20 + i)
    literal = await reader.subscribe("a.b", durable="lit", start="all")
    filtered = await reader.subscribe(
        "a.*", durable="flt", start="all", senders=["planner"], metadata={"k": 1}
    )
    assert await _drain(literal) == [0, 10, 1, 11, 2, 12, 3, 13]
    assert await _drain(filtered) == [1, 3]
    await planner.publish("a.b", 5, metadata={"k": 1})
    assert await _drain(literal) == [5]
    assert await _drain(filtered) == [5]


async def test_consumer_behind_retention_is_told_what_it_lost(
    hub: agentcomm.Hub, make_hub: Callable[..., agentcomm.Hub]
) -> None:
    planner = await hub.agent("planner")
    reader = await hub.agent("reader")
    fast = await reader.subscribe("r.>", durable="fast", start="all")
    slow = await reader.subscribe("r.a", durable="slow", start="all", buffer=1)
    seqs = [(await planner.publish("r.a" if i % 2 == 0 else "r.b", i)).sequence for i in range(10)]
    assert len(await _drain(fast)) == 10
    retention = agentcomm.Retention(topic_max_count=2, topic_max_age=3600)
    async with make_hub(retention=retention, background=False) as pruner:
        report = await pruner.prune()
        assert report.pruned_topic_records == 8
    stats = {t.name: t for t in await hub.topics()}  # counts survive the pruning
    assert (stats["r.a"].published, stats["r.b"].published) == (5, 5)
    assert (stats["r.a"].last_sequence, stats["r.b"].last_sequence) == (seqs[8], seqs[9])
    rest = await _drain(slow)
    assert rest == [8]  # the r.a records 0, 2, 4, 6 are gone
    assert slow.lost == 4 and slow.missed == 4
    assert fast.lost == 0
    await planner.publish("r.a", 10)
    assert await _drain(slow) == [10] and await _drain(fast) == [10]
    all_again = await reader.subscribe("r.>", durable="late", start="all")
    assert await _drain(all_again) == [8, 9, 10] and all_again.lost == 0


async def test_retention_by_age(hub: agentcomm.Hub, make_hub: Callable[..., agentcomm.Hub]) -> None:
    planner = await hub.agent("planner")
    for i in range(3):
        await planner.publish("old.x", i)
    retention = agentcomm.Retention(topic_max_age=0.0)
    async with make_hub(retention=retention, background=False) as pruner:
        assert (await pruner.prune()).pruned_topic_records == 3
    assert await hub.topics() == []  # stats of topics with nothing retained go too
    sub = await (await hub.agent("r")).subscribe("old.>", durable="d", start="all")
    assert await sub.next(timeout=0.05) is None
