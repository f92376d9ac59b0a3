"""Several processes on one SQLite file: wake-ups, atomic dedupe, leases surviving kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

import agentcomm
from processes import finish, kill_and_read_rest, spawn

pytestmark = pytest.mark.slow


def _db_url(tmp_path: Path, **options: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"sqlite:///{tmp_path / 'shared.db'}" + (f"?{query}" if query else "")


SENDER = """
async def main(url, count, prefix):
    async with agentcomm.connect(url) as hub:
        me = await hub.agent(prefix)
        for i in range(int(count)):
            await me.send("consumer", {"from": prefix, "i": i})
"""


async def test_send_in_one_process_receive_in_another(tmp_path: Path) -> None:
    # recheck=60: a receiver that wakes in time was woken by a ping, not by the safety poll
    url = _db_url(tmp_path, recheck=60)
    async with agentcomm.connect(url) as hub:
        consumer = await hub.agent("consumer")
        waiting = asyncio.create_task(consumer.receive(timeout=30))
        await asyncio.sleep(0.1)
        proc = spawn(SENDER, url, "1", "producer")
        msg = await asyncio.wait_for(waiting, 20)
        finish(proc)
        assert msg is not None and msg.data == {"from": "producer", "i": 0}
        assert msg.sender == "producer"
        await msg.ack()


async def test_concurrent_writers_in_three_processes_lose_nothing(tmp_path: Path) -> None:
    url = _db_url(tmp_path)
    async with agentcomm.connect(url) as hub:
        consumer = await hub.agent("consumer")
        procs = [spawn(SENDER, url, "1500", f"p{n}") for n in range(3)]
        seen: set[tuple[str, int]] = set()
        while len(seen) < 4500:
            msgs = await consumer.receive_many(200, timeout=30)
            assert msgs, f"stalled after {len(seen)} messages"
            for m in msgs:
                key = (m.data["from"], m.data["i"])
                assert key not in seen
                seen.add(key)
            await consumer.ack_many(msgs)
        for p in procs:
            finish(p)
        assert seen == {(f"p{n}", i) for n in range(3) for i in range(1500)}


DEDUPER = """
async def main(url, count):
    async with agentcomm.connect(url) as hub:
        me = await hub.agent("sender")
        ids = await asyncio.gather(*(me.send("consumer", i, idempotency_key=f"k{i}")
                                     for i in range(int(count))))
        print("\\n".join(ids))
"""


async def test_idempotency_is_atomic_across_processes(tmp_path: Path) -> None:
    url = _db_url(tmp_path)
    async with agentcomm.connect(url) as hub:
        await hub.agent("consumer")
        await hub.agent("sender")
        procs = [spawn(DEDUPER, url, "300") for _ in range(3)]
        outputs = [finish(p).split() for p in procs]
        assert outputs[0] == outputs[1] == outputs[2]
        assert await hub.queue_depth("consumer") == 300
        assert (await hub.stats()).deduplicated == 600


HOLDER = """
async def main(url):
    async with agentcomm.connect(url) as hub:
        me = await hub.agent("consumer")
        msg = await me.receive(timeout=30, lease=1.0)
        print(msg.id, flush=True)
        await asyncio.sleep(3600)
"""


async def test_kill_9_of_a_lease_holder_then_redelivery(tmp_path: Path) -> None:
    url = _db_url(tmp_path)
    async with agentcomm.connect(url) as hub:
        producer = await hub.agent("producer")
        consumer = await hub.agent("consumer")
        msg_id = await producer.send("consumer", "work")
        proc = spawn(HOLDER, url)
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line.strip() == msg_id
        assert (await hub.mailbox_stats("consumer")).in_flight == 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        again = await consumer.receive(timeout=20)
        assert again is not None
        assert (again.id, again.attempt) == (msg_id, 2)
        await again.ack()


PRODUCER_TO_KILL = """
async def main(url):
    async with agentcomm.connect(url) as hub:
        me = await hub.agent("producer")
        i = 0
        while True:
            msg_id = await me.send("consumer", i)
            print(msg_id, flush=True)
            i += 1
"""


async def test_kill_9_of_a_producer_loses_no_confirmed_send(tmp_path: Path) -> None:
    url = _db_url(tmp_path)
    async with agentcomm.connect(url) as hub:
        await hub.agent("producer")
        consumer = await hub.agent("consumer")
        proc = spawn(PRODUCER_TO_KILL, url)
        assert proc.stdout is not None
        confirmed = [await asyncio.to_thread(proc.stdout.readline) for _ in range(300)]
        rest = kill_and_read_rest(proc)
        confirmed_ids = {c.strip() for c in confirmed + rest.splitlines() if c.strip()}
    async with agentcomm.connect(url) as hub:  # reopen: what was confirmed is on disk
        consumer = await hub.agent("consumer")
        stored: set[str] = set()
        while msgs := await consumer.receive_many(500, timeout=0):
            stored.update(m.id for m in msgs)
            await consumer.ack_many(msgs)
        assert confirmed_ids <= stored


async def test_messages_persist_across_reopen(tmp_path: Path) -> None:
    url = _db_url(tmp_path)
    async with agentcomm.connect(url) as hub:
        planner = await hub.agent("planner")
        await hub.agent("coder")
        await planner.send("coder", {"keep": 1}, priority=3)
        await planner.schedule("coder", "tick", every=3600)
    async with agentcomm.connect(url) as hub:
        assert [a.name for a in await hub.agents()] == ["coder", "planner"]
        assert len(await hub.schedules()) == 1
        msg = await (await hub.agent("coder")).receive(timeout=5)
        assert msg is not None and msg.data == {"keep": 1} and msg.priority == 3


W1_PROCESS = """
import json

async def main(url, name, per_sender):
    async with agentcomm.connect(url) as hub:
        worker = await hub.agent("worker")
        senders = [await hub.agent(f"{name}-s{t}") for t in range(4)]
        got = []

        async def send(agent):
            for i in range(int(per_sender)):
                await agent.send("worker", {"from": agent.name, "i": i})

        async def receive():
            while True:  # until the whole store stays empty for a while
                msg = await worker.receive(timeout=3)
                if msg is None:
                    return
                await msg.ack()
                got.append([msg.data["from"], msg.data["i"]])

        await asyncio.gather(*(send(a) for a in senders), receive(), receive())
        counts = hub._backend._writer.counts
        print(json.dumps({"got": got, "loop": counts["loop"], "contended": counts["contended"]}))
"""


@pytest.mark.parametrize("loop_writes", [1, 0])
async def test_two_processes_w1_on_one_file_deliver_exactly_once(
    tmp_path: Path, loop_writes: int
) -> None:
    """Two processes each with 4 senders (one send at a time) and 2 receivers (receive one,
    ack it) on one mailbox: with loop writes on, most of those writes run on each process's
    event-loop thread, taking the lock without waiting; every message arrives exactly once."""
    import json

    url = _db_url(tmp_path, loop_writes=loop_writes)
    async with agentcomm.connect(url) as hub:
        await hub.agent("worker")
    per_sender = 300
    procs = [spawn(W1_PROCESS, url, name, str(per_sender)) for name in ("a", "b")]
    reports = [json.loads(finish(p, timeout=120)) for p in procs]
    got = [tuple(k) for r in reports for k in r["got"]]
    expected = {(f"{n}-s{t}", i) for n in "ab" for t in range(4) for i in range(per_sender)}
    assert len(got) == len(set(got))  # nothing delivered and acked twice
    assert set(got) == expected
    if loop_writes:
        assert all(r["loop"] > 0 for r in reports)
    else:
        assert all(r["loop"] == 0 for r in reports)
