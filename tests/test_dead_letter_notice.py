"""Dead-letter notices: every dead letter is announced on `$agentcomm.dead.<agent>`, written by
the backend in the transaction that dead-letters it, so a coordinator waits instead of polling,
across hubs and processes. Topics under `$agentcomm.` are reserved."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import agentcomm
from agentcomm import Hub
from processes import finish, spawn


async def _next(sub: agentcomm.Subscription) -> agentcomm.TopicMessage:
    got = await sub.next(timeout=10)
    assert got is not None, "no dead-letter notice within 10 s"
    return got


async def test_an_explicit_dead_letter_is_announced(hub: Hub) -> None:
    boss, worker = await hub.agent("boss"), await hub.agent("worker")
    async with boss.subscribe("$agentcomm.dead.>") as sub:
        mid = await boss.send("worker", {"job": 1}, type="job")
        msg = await worker.receive(timeout=5)
        assert msg is not None
        await msg.dead_letter("bad input")
        notice = await _next(sub)
    assert (notice.topic, notice.type, notice.sender) == (
        "$agentcomm.dead.worker", "dead_letter", "worker",
    )  # fmt: skip
    assert notice.data == {
        "id": mid, "sender": "boss", "recipient": "worker", "type": "job",
        "reason": "bad input", "attempts": 1, "correlation_id": None,
    }  # fmt: skip


async def test_a_final_nack_and_an_ended_lease_are_announced(
    make_hub: Callable[..., Hub],
) -> None:
    async with make_hub(lease=0.2, max_attempts=1) as hub:
        boss, worker = await hub.agent("boss"), await hub.agent("worker")
        async with boss.subscribe("$agentcomm.dead.worker") as sub:
            first = await boss.send("worker", "nacked")
            second = await boss.send("worker", "forgotten")
            msg = await worker.receive(timeout=5)
            assert msg is not None and msg.id == first
            await msg.nack()
            assert (await _next(sub)).data["reason"] == "nacked on final delivery 1"
            assert await worker.receive(timeout=5) is not None  # never settled
            while await worker.receive(timeout=0.3) is not None:
                pass  # the next look finds the lease ended
            notice = await _next(sub)
            assert notice.data["id"] == second
            assert notice.data["reason"] == "lease expired on delivery 1 of 1"


async def test_a_request_notice_carries_its_correlation_id(hub: Hub) -> None:
    boss, worker = await hub.agent("boss"), await hub.agent("worker")
    async with boss.subscribe("$agentcomm.dead.*") as sub:
        task = asyncio.create_task(boss.request("worker", "q", timeout=30))
        msg = await worker.receive(timeout=5)
        assert msg is not None
        await msg.dead_letter("no")
        notice = await _next(sub)
        assert notice.data["correlation_id"] == msg.correlation_id
        with pytest.raises(agentcomm.RequestFailed):
            await task


async def test_a_notice_reaches_a_subscriber_on_another_hub(
    make_hub: Callable[..., Hub],
) -> None:
    async with make_hub() as one, make_hub() as two:
        boss = await one.agent("boss")
        worker = await two.agent("worker")
        async with boss.subscribe("$agentcomm.dead.>") as live:
            durable = await boss.subscribe("$agentcomm.dead.>", durable="coordinator")
            await boss.send("worker", "x")
            msg = await worker.receive(timeout=5)
            assert msg is not None
            await msg.dead_letter("no")
            assert (await _next(live)).data["id"] == msg.id
            stored = await _next(durable)
            assert stored.data["id"] == msg.id
            await stored.ack()
            await durable.aclose()
        stats = await one.topic_stats("$agentcomm.dead.worker")
        assert stats.published == 1


async def test_agentcomm_topics_are_reserved(hub: Hub) -> None:
    a = await hub.agent("a")
    for topic in ("$agentcomm.dead.a", "$agentcomm.anything"):
        with pytest.raises(agentcomm.InvalidTopic, match="reserved"):
            await a.publish(topic, "forged")
    assert await hub.topics() == []
    await a.publish("$mine.x", "fine")  # only agentcomm's own prefix is reserved


_DEAD_LETTER_ONE = """
async def main(url):
    async with agentcomm.connect(url) as hub:
        worker = await hub.agent("worker")
        msg = await worker.receive(timeout=30)
        await msg.dead_letter("child gave up")
"""


async def test_a_notice_crosses_processes(url: str, backend_name: str) -> None:
    if backend_name == "memory":
        pytest.skip("a memory store lives in one process")
    async with agentcomm.connect(url) as hub:
        boss = await hub.agent("boss")
        await hub.agent("worker")
        async with boss.subscribe("$agentcomm.dead.worker") as sub:
            task = asyncio.create_task(boss.request("worker", "q", timeout=60))
            child = spawn(_DEAD_LETTER_ONE, url)
            notice = await _next(sub)
            assert notice.data["reason"] == "child gave up"
            with pytest.raises(agentcomm.RequestFailed, match="child gave up"):
                await asyncio.wait_for(task, 10)
            await asyncio.to_thread(finish, child)
