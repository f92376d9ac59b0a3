"""Redis only: durable topic consumers claimed and pruned by several hubs at once (the
position check that keeps a claim from leasing what another hub leased)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from uuid import uuid4

import pytest

import agentcomm
from agentcomm._records import ConsumerSpec
from redis_server import BINARY, drop_prefixes

pytestmark = pytest.mark.skipif(BINARY is None, reason="redis-server is not installed")


@pytest.fixture
def url(redis_url: str) -> Iterator[str]:
    """A store of its own on the session's server; its keys are deleted after."""
    prefix = f"t-{uuid4().hex[:8]}"
    yield f"{redis_url}?prefix={prefix}"
    drop_prefixes(redis_url, [prefix])


async def test_hubs_claiming_at_once_lease_each_record_once(url: str) -> None:
    hubs = [agentcomm.connect(url) for _ in range(4)]
    for hub in hubs:
        await hub.open()
    try:
        planner = await hubs[0].agent("planner")
        for i in range(300):
            await planner.publish(f"work.{i % 5}", i, metadata={"even": i % 2 == 0})
        spec = ConsumerSpec("pool", "work.*", None, None, None, start="all")
        for hub in hubs:
            await hub._ctx.topics.open_consumer(spec, now=time.time())

        async def drain(hub: agentcomm.Hub) -> list[int]:
            got: list[int] = []
            while True:
                claim = await hub._ctx.topics.claim_topic(
                    "pool", acks=(), releases=(), max_messages=7, lease=60.0, now=time.time()
                )
                if not claim.records:
                    return got
                got += [r.seq for r in claim.records]
                await asyncio.sleep(0)

        results = await asyncio.gather(*(drain(hub) for hub in hubs))
        leased = [seq for got in results for seq in got]
        assert len(leased) == len(set(leased)) == 300
    finally:
        for hub in hubs:
            await hub.aclose()


async def test_hubs_pruning_at_once_count_what_was_lost_once(url: str) -> None:
    async with agentcomm.connect(url) as hub:
        planner = await hub.agent("planner")
        reader = await hub.agent("reader")
        sub = await reader.subscribe("lost.a", durable="slow", start="all")
        for i in range(40):
            await planner.publish("lost.a" if i % 2 else "lost.b", i)
        retention = agentcomm.Retention(topic_max_count=0)
        pruners = [agentcomm.connect(url, retention=retention, background=False) for _ in range(3)]
        for p in pruners:
            await p.open()
        try:
            reports = await asyncio.gather(*(p.prune() for p in pruners))
        finally:
            for p in pruners:
                await p.aclose()
        assert sum(r.pruned_topic_records for r in reports) == 40
        assert await sub.next(timeout=0.05) is None
        assert sub.lost == 20
        assert (await hub.topic_stats("lost.a")).published == 20
        await planner.publish("lost.a", 99)
        msg = await sub.next(timeout=5)
        assert msg is not None and msg.data == 99 and sub.lost == 20
