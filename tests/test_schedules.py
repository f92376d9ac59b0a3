"""Scheduled and recurring delivery on every backend."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import agentcomm
from agentcomm import Hub

#: Schedules shorter than the default minimum period (1 s) keep these tests fast.
FAST = agentcomm.Limits(min_schedule_period=0.01)


async def test_every_delivers_one_message_per_occurrence(make_hub: Callable[..., Hub]) -> None:
    async with make_hub(limits=FAST) as hub:
        await _every_delivers_one_message_per_occurrence(hub)


async def _every_delivers_one_message_per_occurrence(hub: Hub) -> None:
    planner = await hub.agent("planner")
    coder = await hub.agent("coder")
    sched_id = await planner.schedule("coder", {"report": True}, type="tick", every=0.1)
    ticks = []
    for _ in range(3):
        msg = await coder.receive(timeout=5)
        assert msg is not None
        ticks.append(msg)
        await msg.ack()
    assert {(m.type, m.sender) for m in ticks} == {("tick", "planner")}
    assert len({m.id for m in ticks}) == 3
    (info,) = await hub.schedules()
    assert info.id == sched_id and info.runs >= 3 and info.every == 0.1
    assert await hub.cancel_schedule(sched_id) is True
    assert await hub.cancel_schedule(sched_id) is False
    await asyncio.sleep(0.25)
    # at most one tick was already in flight when cancelled; then nothing more
    while (msg := await coder.receive(timeout=0)) is not None:
        await msg.ack()
    await asyncio.sleep(0.25)
    assert await coder.receive(timeout=0) is None
    assert await hub.schedules() == []


async def test_cron_schedule_is_stored_with_next_run(hub: Hub) -> None:
    planner = await hub.agent("planner")
    await hub.agent("coder")
    await planner.schedule("coder", 1, cron="*/5 * * * *")
    (info,) = await hub.schedules()
    assert info.cron == "*/5 * * * *"
    assert int(info.next_run) % 300 == 0


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"cron": "nonsense"}, {"every": 0}, {"every": -5}, {"cron": "* * * * *", "every": 5}],
)
async def test_invalid_recurrence(hub: Hub, kwargs: dict[str, object]) -> None:
    planner = await hub.agent("planner")
    await hub.agent("coder")
    with pytest.raises(agentcomm.ValidationError):
        await planner.schedule("coder", 1, **kwargs)  # type: ignore[arg-type]


async def test_schedule_to_unknown_agent(hub: Hub) -> None:
    planner = await hub.agent("planner")
    with pytest.raises(agentcomm.UnknownAgent):
        await planner.schedule("ghost", 1, every=1)


async def test_two_hubs_never_fork_a_series(make_hub: Callable[..., Hub]) -> None:
    """Both hubs run the scheduler; each occurrence is still enqueued exactly once."""
    async with make_hub(limits=FAST) as first, make_hub(limits=FAST) as second:
        planner = await first.agent("planner")
        coder = await second.agent("coder")
        await planner.schedule("coder", "tick", every=0.05)
        await asyncio.sleep(0.5)
        (info,) = await first.schedules()
        await first.cancel_schedule(info.id)
        runs = (await second.schedules(), info.runs)
        got = await coder.receive_many(1000, timeout=1)
        assert runs[0] == []
        # one message per recorded run, never two
        assert len(got) == (await first.stats()).scheduled_runs
        assert len(got) >= info.runs >= 3
