"""Request/reply on every backend: correlation by id, timeouts, late replies."""

from __future__ import annotations

import asyncio

import pytest

import agentcomm
from agentcomm import Hub

# also on SQLite with loop writes off (see conftest.py)
ALSO_THREAD_WRITES = True


async def _serve_one(agent: agentcomm.Agent, answer: object, *, wait: float = 0.0) -> bool:
    msg = await agent.receive(timeout=10)
    assert msg is not None
    if wait:
        await asyncio.sleep(wait)
    return await msg.reply(answer)


@pytest.mark.parametrize("responder", ["coder", "time-reporter", "wf:role.v2", "a-b-c"])
async def test_request_reply_round_trip(hub: Hub, responder: str) -> None:
    planner = await hub.agent("planner-1")
    other = await hub.agent(responder)
    server = asyncio.create_task(_serve_one(other, {"a": "green"}))
    reply = await planner.request(responder, {"q": "status?"}, type="question", timeout=10)
    assert reply.data == {"a": "green"}
    assert reply.sender == responder
    assert await server is True
    # replying acked the request: nothing is left or redelivered
    stats = await hub.mailbox_stats(responder)
    assert (stats.ready, stats.in_flight) == (0, 0)
    assert await hub.queue_depth("planner-1") == 0


async def test_request_carries_correlation_and_reply_to(hub: Hub) -> None:
    planner = await hub.agent("planner")
    coder = await hub.agent("coder")
    task = asyncio.create_task(planner.request("coder", "q", timeout=10))
    msg = await coder.receive(timeout=10)
    assert msg is not None
    assert msg.reply_to == "planner" and msg.correlation_id
    await msg.reply("a", metadata={"k": "v"}, type="answer")
    reply = await task
    assert (reply.correlation_id, reply.type, reply.metadata) == (
        msg.correlation_id, "answer", {"k": "v"},
    )  # fmt: skip


async def test_concurrent_requests_get_their_own_replies(hub: Hub) -> None:
    planner = await hub.agent("planner")
    coder = await hub.agent("coder")

    async def echo() -> None:
        for _ in range(20):
            msg = await coder.receive(timeout=10)
            assert msg is not None
            await msg.reply({"echo": msg.data})

    server = asyncio.create_task(echo())
    replies = await asyncio.gather(*(planner.request("coder", i, timeout=10) for i in range(20)))
    assert [r.data for r in replies] == [{"echo": i} for i in range(20)]
    await server


async def test_timeout_raises_and_late_reply_is_discarded_and_counted(hub: Hub) -> None:
    planner = await hub.agent("planner")
    coder = await hub.agent("coder")
    request = asyncio.create_task(planner.request("coder", "q", timeout=0.2))
    msg = await coder.receive(timeout=5)
    assert msg is not None
    with pytest.raises(agentcomm.RequestTimeout) as info:
        await request
    assert isinstance(info.value, TimeoutError)
    assert await msg.reply("too late") is False
    assert (await hub.stats()).late_replies == 1
    assert await hub.queue_depth("planner") == 0
    assert await planner.receive(timeout=0) is None


async def test_unanswered_request_expires_from_the_mailbox(hub: Hub) -> None:
    planner = await hub.agent("planner")
    await hub.agent("coder")
    with pytest.raises(agentcomm.RequestTimeout):
        await planner.request("coder", "q", timeout=0.1)
    assert await (await hub.agent("coder")).receive(timeout=0) is None


async def test_reply_to_a_plain_message_is_rejected(hub: Hub) -> None:
    planner = await hub.agent("planner")
    coder = await hub.agent("coder")
    await planner.send("coder", "not a request")
    msg = await coder.receive(timeout=5)
    assert msg is not None
    with pytest.raises(agentcomm.ValidationError, match="not a request"):
        await msg.reply("x")


async def test_request_to_unknown_agent(hub: Hub) -> None:
    planner = await hub.agent("planner")
    with pytest.raises(agentcomm.UnknownAgent):
        await planner.request("ghost", "q", timeout=1)


async def test_cancelled_request_counts_a_later_reply_as_late(hub: Hub) -> None:
    planner = await hub.agent("planner")
    coder = await hub.agent("coder")
    request = asyncio.create_task(planner.request("coder", "q", timeout=30))
    msg = await coder.receive(timeout=5)
    assert msg is not None
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    # the hub closes the reply slot in a task of its own; let it finish
    closing = [t for t in hub._ctx.tasks if "close_slot" in repr(t.get_coro())]
    assert closing
    await asyncio.gather(*closing)
    assert await msg.reply("nobody waits") is False
    assert (await hub.stats()).late_replies == 1
