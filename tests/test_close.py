"""Closing a hub: idempotent, bounded, and it ends every call waiting on it without cancel."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

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


async def test_every_waiter_ends_by_the_one_rule(url: str) -> None:
    """On close, a single waiting call raises HubClosed and an iteration ends quietly."""
    hub = await agentcomm.connect(_slow_recheck(url))
    agent = await hub.agent("waiter")
    server = await hub.agent("server")
    await hub.agent("peer")
    live = await agent.subscribe("events.>")
    durable = await agent.subscribe("jobs.>", durable="one", start="all")
    live_iterated = await agent.subscribe("more.>")
    durable_iterated = await agent.subscribe("work.>", durable="two", start="all")

    async def drain(items: Any) -> list[Any]:
        return [item async for item in items]

    async def handler(msg: agentcomm.Message) -> None:
        pass

    singles = {
        "receive": asyncio.create_task(agent.receive()),
        "receive_many": asyncio.create_task(agent.receive_many(5)),
        "request": asyncio.create_task(agent.request("peer", 1, timeout=60)),
        "live next": asyncio.create_task(live.next()),
        "durable next": asyncio.create_task(durable.next()),
    }
    iterations = {
        "messages": asyncio.create_task(drain(agent.messages())),
        "watch": asyncio.create_task(drain(hub.memory("ns").watch())),
        "live iteration": asyncio.create_task(drain(live_iterated)),
        "durable iteration": asyncio.create_task(drain(durable_iterated)),
        "serve": asyncio.create_task(server.serve(handler, signals=False)),
    }
    everything = {**singles, **iterations}
    await asyncio.sleep(0.3)  # all of them are waiting now
    assert [name for name, t in everything.items() if t.done()] == []

    await hub.aclose()
    done, _ = await asyncio.wait(everything.values(), timeout=5)
    assert len(done) == len(everything), "a waiter did not end after the close"
    for name, task in singles.items():
        assert isinstance(task.exception(), agentcomm.HubClosed), name
    for name, task in iterations.items():
        assert task.result() in ([], None), name

    # started after the close: the same rule
    with pytest.raises(agentcomm.HubClosed):
        await agent.receive(timeout=0)
    with pytest.raises(agentcomm.HubClosed):
        await live.next(timeout=0)
    assert await drain(agent.messages()) == []
    assert await drain(hub.memory("ns").watch()) == []
    assert await drain(live) == []
