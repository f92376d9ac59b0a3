"""Requests that fail fail fast, on every backend: retries within the timeout, failure replies
written where the request is dead-lettered or expires, error replies, and timeouts that say
whether the request was received."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable

import pytest

import agentcomm
from agentcomm import Hub


async def _receive(agent: agentcomm.Agent) -> agentcomm.Message:
    msg = await agent.receive(timeout=10)
    assert msg is not None
    return msg


async def test_request_takes_the_hubs_max_attempts(make_hub: Callable[..., Hub]) -> None:
    async with make_hub(max_attempts=4) as hub:
        planner, coder = await hub.agent("planner"), await hub.agent("coder")
        task = asyncio.create_task(planner.request("coder", "q", timeout=30))
        msg = await _receive(coder)
        assert msg.max_attempts == 4
        await msg.reply("a")
        assert (await task).data == "a"


async def test_a_nacked_request_is_retried_and_answered(hub: Hub) -> None:
    planner, coder = await hub.agent("planner"), await hub.agent("coder")
    task = asyncio.create_task(planner.request("coder", "q", timeout=30, max_attempts=2))
    first = await _receive(coder)
    assert (first.attempt, first.max_attempts) == (1, 2)
    await first.nack(delay=0)
    second = await _receive(coder)
    assert second.attempt == 2
    await second.reply("second time lucky")
    assert (await task).data == "second time lucky"


async def test_a_request_nacked_on_its_last_attempt_fails_at_once(hub: Hub) -> None:
    planner, coder = await hub.agent("planner"), await hub.agent("coder")
    task = asyncio.create_task(planner.request("coder", "q", timeout=60, max_attempts=1))
    msg = await _receive(coder)
    await msg.nack()
    # long before the 60 s timeout (the pytest timeout would end a wait that long)
    with pytest.raises(agentcomm.RequestFailed) as info:
        await asyncio.wait_for(task, 10)
    err = info.value
    assert err.attempts == 1 and not err.expired
    assert err.reason == "nacked on final delivery 1"
    assert err.recipient == "coder" and err.correlation_id == msg.correlation_id
    assert "dead-lettered" in str(err)
    letters = await hub.dead_letters("coder")
    assert [d.id for d in letters] == [msg.id]


async def test_a_request_the_responder_dead_letters_fails_with_its_reason(hub: Hub) -> None:
    planner, coder = await hub.agent("planner"), await hub.agent("coder")
    task = asyncio.create_task(planner.request("coder", "q", timeout=60))
    msg = await _receive(coder)
    await msg.dead_letter("cannot parse the question")
    with pytest.raises(agentcomm.RequestFailed) as info:
        await asyncio.wait_for(task, 10)
    assert info.value.reason == "cannot parse the question"
    assert info.value.attempts == 1


async def test_a_request_whose_leases_run_out_fails_at_once(make_hub: Callable[..., Hub]) -> None:
    async with make_hub(lease=0.2) as hub:
        planner, coder = await hub.agent("planner"), await hub.agent("coder")
        task = asyncio.create_task(planner.request("coder", "q", timeout=60, max_attempts=2))
        for attempt in (1, 2):  # received, never settled: the lease ends
            msg = await _receive(coder)
            assert msg.attempt == attempt
        # the next look at the mailbox (or a prune pass) finds the last lease ended
        while not task.done():
            assert await coder.receive(timeout=0.1) is None
        with pytest.raises(agentcomm.RequestFailed) as info:
            await task
        assert info.value.attempts == 2
        assert info.value.reason == "lease expired on delivery 2 of 2"


async def test_a_request_dead_lettered_by_a_prune_pass_fails(
    make_hub: Callable[..., Hub],
) -> None:
    now = [1000.0]
    async with make_hub(clock=lambda: now[0], background=False) as hub:
        planner, coder = await hub.agent("planner"), await hub.agent("coder")
        task = asyncio.create_task(planner.request("coder", "q", timeout=60, max_attempts=1))
        await _receive(coder)
        now[0] += 31  # past the lease; the requester's timeout is in loop time
        await hub.prune()
        with pytest.raises(agentcomm.RequestFailed, match="lease expired"):
            await asyncio.wait_for(task, 10)


async def test_a_request_that_expires_fails_as_expired(make_hub: Callable[..., Hub]) -> None:
    now = [1000.0]
    async with make_hub(clock=lambda: now[0], background=False) as hub:
        planner = await hub.agent("planner")
        await hub.agent("coder")
        task = asyncio.create_task(planner.request("coder", "q", timeout=60))
        await asyncio.sleep(0.05)
        now[0] += 61  # the request's TTL passes (on the hub's clock) before anyone takes it
        report = await hub.prune()
        assert report.expired == 1
        with pytest.raises(agentcomm.RequestFailed) as info:
            await asyncio.wait_for(task, 10)
        assert info.value.expired and info.value.attempts == 0
        assert info.value.reason == "expired before it was delivered"


async def test_a_failure_reaches_a_requester_on_another_hub(
    make_hub: Callable[..., Hub], backend_name: str
) -> None:
    async with make_hub() as one, make_hub() as two:
        planner = await one.agent("planner")
        coder = await two.agent("coder")
        task = asyncio.create_task(planner.request("coder", "q", timeout=60, max_attempts=1))
        msg = await _receive(coder)
        await msg.dead_letter("no")
        with pytest.raises(agentcomm.RequestFailed):
            await asyncio.wait_for(task, 10)


async def test_reply_error_raises_remote_error(hub: Hub) -> None:
    planner, coder = await hub.agent("planner"), await hub.agent("coder")
    task = asyncio.create_task(planner.request("coder", "q", timeout=30))
    msg = await _receive(coder)
    assert await msg.reply_error("no such file", {"path": "/x"}, type="not_found") is True
    assert msg.settled
    with pytest.raises(agentcomm.RemoteError) as info:
        await task
    err = info.value
    assert (err.type, err.message, err.data, err.sender) == (
        "not_found", "no such file", {"path": "/x"}, "coder",
    )  # fmt: skip
    assert "no such file" in str(err)
    # answered: nothing is left, nothing dead-lettered
    stats = await hub.mailbox_stats("coder")
    assert (stats.ready, stats.in_flight, stats.dead) == (0, 0, 0)


async def test_reply_error_defaults_and_checks(hub: Hub) -> None:
    planner, coder = await hub.agent("planner"), await hub.agent("coder")
    task = asyncio.create_task(planner.request("coder", "q", timeout=30))
    msg = await _receive(coder)
    with pytest.raises(agentcomm.ValidationError):
        await msg.reply_error(42)  # type: ignore[arg-type]
    await msg.reply_error("boom")
    with pytest.raises(agentcomm.RemoteError) as info:
        await task
    assert (info.value.type, info.value.data) == ("error", None)
    await planner.send("coder", "plain")
    plain = await _receive(coder)
    with pytest.raises(agentcomm.ValidationError, match="not a request"):
        await plain.reply_error("x")


async def test_timeout_says_the_request_was_never_received(hub: Hub) -> None:
    planner = await hub.agent("planner")
    await hub.agent("coder")
    with pytest.raises(agentcomm.RequestTimeout) as info:
        await planner.request("coder", "q", timeout=0.2)
    assert info.value.received is False and info.value.attempts == 0
    assert "never received" in str(info.value)


async def test_timeout_says_the_request_was_received(hub: Hub) -> None:
    planner, coder = await hub.agent("planner"), await hub.agent("coder")
    task = asyncio.create_task(planner.request("coder", "q", timeout=0.5))
    await _receive(coder)
    with pytest.raises(agentcomm.RequestTimeout) as info:
        await task
    assert info.value.received is True and info.value.attempts == 1
    assert "was received (1 delivery(ies))" in str(info.value)


async def test_a_late_reply_after_a_failure_is_counted_late(hub: Hub) -> None:
    planner, coder = await hub.agent("planner"), await hub.agent("coder")
    task = asyncio.create_task(planner.request("coder", "q", timeout=30, max_attempts=1))
    msg = await _receive(coder)
    await msg.nack()
    with pytest.raises(agentcomm.RequestFailed):
        await asyncio.wait_for(task, 10)
    assert await msg.reply("too late") is False
    assert (await hub.stats()).late_replies == 1


def test_the_errors_pickle_with_their_attributes() -> None:
    errors: list[agentcomm.AgentCommError] = [
        agentcomm.RequestTimeout("t", received=True, attempts=2, recipient="a",
                                 correlation_id="c"),
        agentcomm.RequestFailed("f", reason="r", attempts=3, expired=True, recipient="a",
                                correlation_id="c"),
        agentcomm.RemoteError("m", type="t", data={"x": 1}, sender="s"),
    ]  # fmt: skip
    for err in errors:
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
        assert vars(back) == vars(err)
