"""Property-based tests: delivery order and dedupe against a model, on every backend."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agentcomm

T = TypeVar("T")

_SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _run(fresh_url: Callable[[], str], scenario: Callable[[agentcomm.Hub], Awaitable[T]]) -> T:
    async def go(url: str) -> T:
        async with agentcomm.connect(url) as hub:
            return await scenario(hub)

    return asyncio.run(go(fresh_url()))  # a new store for every example


@_SETTINGS
@given(priorities=st.lists(st.integers(-3, 3), max_size=40), batch=st.integers(1, 7))
def test_delivery_order_is_priority_then_fifo(
    fresh_url: Callable[[], str], priorities: list[int], batch: int
) -> None:
    async def scenario(hub: agentcomm.Hub) -> list[int]:
        sender = await hub.agent("s")
        receiver = await hub.agent("r")
        for i, p in enumerate(priorities):
            await sender.send("r", i, priority=p)
        got: list[int] = []
        while msgs := await receiver.receive_many(batch, timeout=0):
            got.extend(m.data for m in msgs)
            await receiver.ack_many(msgs)
        return got

    expected = sorted(range(len(priorities)), key=lambda i: (-priorities[i], i))
    assert _run(fresh_url, scenario) == expected


@_SETTINGS
@given(
    sends=st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["r1", "r2"]),
                  st.one_of(st.none(), st.sampled_from(["k1", "k2", "k3"]))),
        max_size=30,
    )
)  # fmt: skip
def test_dedupe_matches_a_model(
    fresh_url: Callable[[], str], sends: list[tuple[str, str, str | None]]
) -> None:
    async def scenario(hub: agentcomm.Hub) -> tuple[list[str], dict[str, int]]:
        agents = {n: await hub.agent(n) for n in ("a", "b", "r1", "r2")}
        ids = [await agents[s].send(r, i, idempotency_key=k) for i, (s, r, k) in enumerate(sends)]
        depths = {r: await hub.queue_depth(r) for r in ("r1", "r2")}
        return ids, depths

    ids, depths = _run(fresh_url, scenario)
    first: dict[tuple[str, str, str], str] = {}
    expected_depth = {"r1": 0, "r2": 0}
    for msg_id, (s, r, k) in zip(ids, sends, strict=True):
        if k is None:
            expected_depth[r] += 1
            assert msg_id not in first.values()
            continue
        if (s, r, k) in first:
            assert msg_id == first[(s, r, k)]
        else:
            first[(s, r, k)] = msg_id
            expected_depth[r] += 1
    assert depths == expected_depth
    assert len(set(ids)) == sum(expected_depth.values())


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(st.sampled_from(["release", "nack", "expire"]), max_size=10))
def test_released_deliveries_never_count_as_attempts(
    fresh_url: Callable[[], str], steps: list[str]
) -> None:
    """Against a model: a delivery that is nacked or whose lease ends counts as an attempt, a
    released one does not; the message is dead once the counted attempts reach the limit."""
    from agentcomm._leases import release

    now = [1_700_000_000.0]

    async def go(url: str) -> None:
        async with agentcomm.connect(url, clock=lambda: now[0], max_attempts=3) as hub:
            worker = await hub.agent("w")
            await worker.send("w", "job")
            counted = 0
            for step in steps:
                msg = await worker.receive(timeout=0, lease=10)
                if counted >= 3:
                    assert msg is None
                    break
                assert msg is not None and msg.attempt == counted + 1
                if step == "release":
                    assert await release(hub._ctx, [msg], 5.0) == 1
                elif step == "nack":
                    await msg.nack(delay=0)
                    counted += 1
                else:
                    now[0] += 11  # the lease ends
                    counted += 1
            last = await worker.receive(timeout=0, lease=10)  # the next look settles timers
            assert (last is None) == (counted >= 3)
            stats = await hub.mailbox_stats("w")
            if counted >= 3:
                assert stats.dead == 1
                (letter,) = await hub.dead_letters("w")
                assert letter.attempts == 3
            else:
                assert last is not None and last.attempt == counted + 1
                assert stats.dead == 0 and stats.in_flight == 1

    asyncio.run(go(fresh_url()))
