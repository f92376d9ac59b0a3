"""Closing a hub: idempotent, bounded, and it ends every call waiting on it without cancel."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

import agentcomm


def _slow_recheck(url: str) -> str:
    """The URL with a one-minute safety re-check: only a wake-up can end a wait promptly."""
    if url.startswith("memory://"):
        return url  # memory stores re-check hourly already
    return f"{url}{'&' if '?' in url else '?'}recheck=60"


async def test_close_is_idempotent(url: str) -> None:
    hub = await agentcomm.connect(url)
    await hub.aclose()
    await hub.aclose()
    with pytest.raises(agentcomm.HubClosed):
        await hub.agent("a")
    never_opened = agentcomm.connect(url)
    await never_opened.aclose()
    await never_opened.aclose()
    with pytest.raises(agentcomm.HubClosed):
        await never_opened.open()


async def test_close_ends_waiting_calls_promptly(url: str) -> None:
    hub = await agentcomm.connect(_slow_recheck(url))
    agent = await hub.agent("waiter")
    durable = await agent.subscribe("jobs.>", durable="workers", start="all")
    live = await agent.subscribe("events.>")
    watch = hub.memory("ns").watch()

    async def drain_watch() -> list[agentcomm.Change]:
        async with contextlib.aclosing(watch) as changes:
            return [c async for c in changes]

    receiving = asyncio.create_task(agent.receive())
    fetching = asyncio.create_task(durable.next())
    iterating = asyncio.create_task(live.next())
    watching = asyncio.create_task(drain_watch())
    await asyncio.sleep(0.2)  # all four are waiting now
    assert not any(t.done() for t in (receiving, fetching, iterating, watching))

    started = time.perf_counter()
    await hub.aclose()
    assert time.perf_counter() - started < 1.0

    done, _ = await asyncio.wait({receiving, fetching, iterating, watching}, timeout=1.0)
    assert len(done) == 4, "a waiting call did not end within 1 s of the close"
    # the one rule: single calls raise HubClosed, iterations end quietly
    for single in (receiving, fetching, iterating):
        with pytest.raises(agentcomm.HubClosed):
            single.result()
    assert watching.result() == []
    assert durable.closed and live.closed
    # the scheduler, the retention pass and the topic log reader ended on the close flag and
    # the wake-up, without being cancelled
    assert len(hub._ctx.tasks) == 0 and hub._ctx.tasks.cancelled == 0
