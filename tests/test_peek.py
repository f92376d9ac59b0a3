"""Looking at a mailbox without consuming it: `peek` (with payloads) and `wait_for_mail`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import agentcomm


async def test_peek_shows_bodies_and_consumes_nothing(
    hub: agentcomm.Hub,
) -> None:
    alice, bob = await hub.agent("alice"), await hub.agent("bob")
    await alice.send("bob", {"task": "x"}, metadata={"thread": "t1"})
    big = "y" * 50_000  # stored by reference under the default policy
    await alice.send("bob", big, priority=5)
    listed = await hub.peek("bob")
    assert [p.data for p in listed] == [big, {"task": "x"}]
    assert listed[1].metadata == {"thread": "t1"} and listed[1].correlation_id is None
    assert listed[0].error is None and listed[0].size >= len(big)
    plain = await hub.pending("bob")
    assert [p.id for p in plain] == [p.id for p in listed]
    again = await hub.peek("bob")
    assert [p.id for p in again] == [p.id for p in listed]
    assert (await hub.mailbox_stats("bob")).ready == 2  # nothing was leased or counted
    first = await bob.receive(timeout=0)
    assert first is not None and first.attempt == 1 and first.data == big
    (leased, waiting) = await hub.peek("bob")
    assert {leased.state, waiting.state} == {"in_flight", "ready"}


async def test_peek_marks_requests(hub: agentcomm.Hub) -> None:
    alice, bob = await hub.agent("alice"), await hub.agent("bob")
    asking = asyncio.ensure_future(alice.request("bob", "2+2?", timeout=30))
    for _ in range(100):
        if await hub.pending("bob"):
            break
        await asyncio.sleep(0.01)
    (req,) = await hub.peek("bob")
    assert req.data == "2+2?" and req.correlation_id is not None
    msg = await bob.receive(timeout=5)
    assert msg is not None
    await msg.reply(4)
    assert (await asking).data == 4


async def test_wait_for_mail_wakes_on_a_send_and_takes_nothing(
    hub: agentcomm.Hub, make_hub: Callable[..., agentcomm.Hub]
) -> None:
    await hub.agent("bob")
    assert await hub.wait_for_mail("bob", timeout=0) is False
    async with make_hub() as other:
        alice = await other.agent("alice")
        waiting = asyncio.ensure_future(hub.wait_for_mail("bob", timeout=30))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await alice.send("bob", "hi")
        assert await waiting is True
    assert await hub.wait_for_mail("bob", timeout=0) is True  # still there
    assert (await hub.mailbox_stats("bob")).ready == 1


async def test_wait_for_mail_sees_a_delayed_message_fall_due_and_a_lease_end(
    url: str,
) -> None:
    now = [1_800_000_000.0]
    async with agentcomm.connect(url, clock=lambda: now[0], background=False) as hub:
        bob = await hub.agent("bob")
        await bob.send("bob", "later", delay=60)
        assert await hub.wait_for_mail("bob", timeout=0) is False
        now[0] += 61
        assert await hub.wait_for_mail("bob", timeout=0) is True
        msg = await bob.receive(timeout=0, lease=10)
        assert msg is not None
        assert await hub.wait_for_mail("bob", timeout=0) is False  # leased
        now[0] += 11
        assert await hub.wait_for_mail("bob", timeout=0) is True  # the lease ended


async def test_peeking_an_unknown_agent_says_so(hub: agentcomm.Hub) -> None:
    with pytest.raises(agentcomm.UnknownAgent):
        await hub.peek("nobody")
    with pytest.raises(agentcomm.UnknownAgent):
        await hub.wait_for_mail("nobody", timeout=0)
    with pytest.raises(agentcomm.ValidationError):
        await hub.peek("nobody", limit=0)
