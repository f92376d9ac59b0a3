"""The injectable clock: TTLs, delays and leases follow `connect(clock=...)`, not the wall."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

import agentcomm


class FakeClock:
    """A wall clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def hub(url: str, clock: FakeClock) -> AsyncIterator[agentcomm.Hub]:
    async with agentcomm.connect(url, clock=clock, background=False) as h:
        yield h


async def test_a_ttl_passes_when_the_clock_moves(hub: agentcomm.Hub, clock: FakeClock) -> None:
    a, b = await hub.agent("a"), await hub.agent("b")
    await a.send("b", "short", ttl=10)
    await a.send("b", "long", ttl=100)
    clock.advance(11)
    msg = await b.receive(timeout=0)
    assert msg is not None and msg.data == "long"
    assert await b.receive(timeout=0) is None


async def test_a_delay_becomes_due_when_the_clock_moves(
    hub: agentcomm.Hub, clock: FakeClock
) -> None:
    a, b = await hub.agent("a"), await hub.agent("b")
    sent_at = clock()
    await a.send("b", "later", delay=60)
    assert await b.receive(timeout=0) is None
    clock.advance(61)
    msg = await b.receive(timeout=0)
    assert msg is not None and msg.data == "later"
    assert msg.enqueued_at == sent_at  # timestamps come from the clock too


async def test_a_lease_expires_when_the_clock_moves(hub: agentcomm.Hub, clock: FakeClock) -> None:
    a, b = await hub.agent("a"), await hub.agent("b")
    await a.send("b", "work")
    first = await b.receive(timeout=0, lease=30)
    assert first is not None and first.lease_until == clock() + 30
    assert await b.receive(timeout=0) is None
    clock.advance(31)
    again = await b.receive(timeout=0)
    assert again is not None and again.id == first.id and again.attempt == 2
    with pytest.raises(agentcomm.LeaseLost):
        await first.ack()
    await again.ack()


async def test_a_shared_memory_ttl_passes_when_the_clock_moves(
    hub: agentcomm.Hub, clock: FakeClock
) -> None:
    kv = hub.memory("clocked")
    entry = await kv.put("k", 1, ttl=5)
    assert entry.expires_at == clock() + 5
    clock.advance(6)
    assert await kv.get("k") is None


async def test_clock_must_be_callable(url: str) -> None:
    with pytest.raises(agentcomm.ValidationError, match="clock"):
        agentcomm.connect(url, clock=123.0)  # type: ignore[arg-type]
