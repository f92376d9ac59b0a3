"""The `agentcomm` loggers, on every backend: INFO for dead letters, lease expiries and lost
leases; DEBUG for each operation; nothing at WARNING in normal operation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

import agentcomm
from agentcomm import Hub


def _infos(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.INFO and r.name.startswith("agentcomm")
    ]


async def test_dead_letters_are_logged_at_info(hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agentcomm")
    a = await hub.agent("a")
    mid = await a.send("a", "x", max_attempts=1)
    msg = await a.receive(timeout=5)
    assert msg is not None
    await msg.nack()
    [line] = [m for m in _infos(caplog) if "dead-lettered" in m]
    assert mid in line and "'a'" in line and "nacked on final delivery 1" in line


async def test_lease_expiries_and_lost_leases_are_logged_at_info(
    make_hub: Callable[..., Hub], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentcomm")
    async with make_hub(lease=0.2, max_attempts=2) as hub:
        a = await hub.agent("a")
        mid = await a.send("a", "x")
        first = await a.receive(timeout=5)
        assert first is not None
        second = await a.receive(timeout=5)  # after the first lease ended
        assert second is not None and second.attempt == 2
        with pytest.raises(agentcomm.LeaseLost):
            await first.ack()
        while await a.receive(timeout=0.3) is not None:
            pass  # the second lease ends too: dead-lettered
    infos = _infos(caplog)
    assert any(mid in m and "ended unsettled on delivery 1 of 2" in m for m in infos), infos
    assert any(mid in m and "lease lost" in m for m in infos), infos
    assert any(mid in m and "lease expired on delivery 2 of 2" in m for m in infos), infos


async def test_each_operation_is_logged_at_debug(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agentcomm")
    a, b = await hub.agent("a"), await hub.agent("b")
    mid = await a.send("b", "x")
    msg = await b.receive(timeout=5)
    assert msg is not None
    await msg.ack()
    await a.publish("t.x", 1)
    await hub.memory("ns").put("k", 1)
    await hub.memory("ns").get("k")
    ref = await hub.refs.store(b"blob")
    await hub.refs.resolve(ref)
    lines = [r.getMessage() for r in caplog.records if r.name == "agentcomm.ops"]
    names = [line.split(" ", 1)[0] for line in lines]
    for name in (
        "queue.enqueue",
        "queue.dequeue",
        "queue.ack",
        "bus.publish",
        "shared_memory.put",
        "shared_memory.get",
        "refs.store",
        "refs.resolve",
    ):
        assert name in names, (name, names)  # fmt: skip
    assert any(line.startswith("queue.dequeue") and mid in line for line in lines)


async def test_normal_operation_logs_nothing_at_warning(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agentcomm")
    a, b = await hub.agent("a"), await hub.agent("b")

    async def serve() -> None:
        msg = await b.receive(timeout=5)
        assert msg is not None
        await msg.reply("pong")

    server = asyncio.create_task(serve())
    assert (await a.request("b", "ping", timeout=10)).data == "pong"
    await server
    async with b.subscribe("t.>") as sub:
        await a.publish("t.x", 1)
        assert await sub.next(timeout=5) is not None
    await a.send("b", "x")
    msg = await b.receive(timeout=5)
    assert msg is not None
    await msg.nack(delay=0)
    msg = await b.receive(timeout=5)
    assert msg is not None
    await msg.ack()
    await hub.prune()
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == []
    assert _infos(caplog) == []  # nothing went wrong: nothing at INFO either


async def test_a_redis_reconnect_is_logged_at_info(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import redis

    caplog.set_level(logging.INFO, logger="agentcomm")
    sep = "&" if "?" in redis_url else "?"
    async with agentcomm.connect(f"{redis_url}{sep}prefix=test-log-reconnect"):
        admin = redis.Redis.from_url(redis_url)
        try:
            assert admin.client_kill_filter(_type="pubsub") >= 1
        finally:
            admin.close()
        for _ in range(200):
            if any("reconnected to Redis" in m for m in _infos(caplog)):
                break
            await asyncio.sleep(0.05)
    infos = _infos(caplog)
    assert any("lost the wake-up connection" in m for m in infos), infos
    assert any("reconnected to Redis" in m for m in infos), infos
