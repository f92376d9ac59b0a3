"""Many producer and consumer tasks on one hub: no loss, no duplicate after ack."""

from __future__ import annotations

import asyncio

from agentcomm import Hub

# also on SQLite with loop writes off (see conftest.py)
ALSO_THREAD_WRITES = True


async def test_8_producers_4_consumers_10000_messages(hub: Hub, backend_name: str) -> None:
    # through the server each message is three HTTP round trips: a tenth keeps it in bounds
    total = 1_000 if backend_name == "http" else 10_000
    producers, consumers = 8, 4
    await hub.agent("worker")
    done = asyncio.Event()
    acked: list[int] = []

    async def produce(n: int) -> None:
        me = await hub.agent(f"producer-{n}")
        for i in range(n, total, producers):
            await me.send("worker", i)

    async def consume() -> None:
        me = await hub.agent("worker")
        while not done.is_set():
            msgs = await me.receive_many(25, timeout=0.2)
            for m in msgs:
                await m.ack()
                acked.append(m.data)
            if len(acked) >= total:
                done.set()

    tasks = [asyncio.create_task(consume()) for _ in range(consumers)]
    await asyncio.gather(*(produce(n) for n in range(producers)))
    await asyncio.wait_for(done.wait(), 120)
    await asyncio.gather(*tasks)
    assert len(acked) == total
    assert sorted(acked) == list(range(total))
    stats = await hub.mailbox_stats("worker")
    assert (stats.ready, stats.in_flight, stats.dead) == (0, 0, 0)
