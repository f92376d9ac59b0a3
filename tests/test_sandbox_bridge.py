"""The bridge: the sandboxed agent is agent "coder" of a hub (every backend), with the sandbox
side in another process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import agentcomm
from agentcomm import sandbox
from sandbox_procs import BoxProcess, shared_directory


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    with shared_directory() as d:
        yield d


async def test_bridge_end_to_end(hub: agentcomm.Hub, shared_dir: Path) -> None:
    planner = await hub.agent("planner")
    async with sandbox.bridge(hub, agent="coder", path=shared_dir, poll_max=0.2) as b:
        assert b.agent == "coder"
        box = await BoxProcess.start("serve", shared_dir)
        try:
            await box.event("ready")
            # a hub request to "coder" is answered by the sandbox's reply
            reply = await planner.request("coder", {"reply": True, "n": 1}, timeout=20)
            assert reply.sender == "coder"
            assert reply.data == {"echo": {"reply": True, "n": 1}}
            # a sandbox message with to="planner" arrives from "coder"
            await planner.send("coder", {"tell": "planner"})
            msg = await planner.receive(timeout=20)
            assert msg is not None and msg.sender == "coder"
            assert msg.data == {"told": {"tell": "planner"}}
            await msg.ack()
            # a sandbox question becomes a hub request; its reply answers box.ask()
            await planner.send("coder", {"ask": "planner"})
            question = await planner.receive(timeout=20)
            assert question is not None and question.type == "question"
            assert await question.reply("yes")
            answer = await planner.receive(timeout=20)
            assert answer is not None and answer.data == {"answer": "yes"}
            await answer.ack()
            # a message to an unknown agent is recorded failed, with the hub's reason
            await planner.send("coder", {"tell": "nobody-here"})
            await planner.send("coder", {"stop": True})
            await box.event("stopped")
            await box.finish()
            # the hub messages the sandbox finished are acked, nothing waits or died
            await _until(lambda: _drained(hub), "the hub mailbox of coder to drain")
            assert await hub.dead_letters("coder") == []
        finally:
            await box.close()


async def _drained(hub: agentcomm.Hub) -> bool:
    return await hub.queue_depth("coder") == 0 and not await hub.pending("coder")


async def _until(check: object, what: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_task_the_sweep_gives_up_on_is_a_dead_letter(shared_dir: Path) -> None:
    async with agentcomm.connect("memory://") as hub:
        planner = await hub.agent("planner")
        async with sandbox.bridge(
            hub, agent="coder", path=shared_dir, stale_after=0.3, retry_base=0.05, max_tries=2,
            poll_max=0.1,
        ) as b:  # fmt: skip
            await planner.send("coder", {"hang": True}, max_attempts=1)
            for attempt in (1, 2):
                box = await BoxProcess.start("serve", shared_dir)
                try:
                    assert (await box.event("claimed"))["tries"] == attempt
                finally:
                    box.kill()  # kill -9 mid-batch
                    await box.close()

            async def dead() -> bool:
                return bool(await hub.dead_letters("coder"))

            await _until(dead, "the dead letter")
            [letter] = await hub.dead_letters("coder")
            assert letter.data == {"hang": True}
            assert letter.reason.startswith("gave up after 2 tries")
            assert b.host.last_sweep is not None


async def test_a_resent_outbound_message_is_stored_once(shared_dir: Path) -> None:
    # a host crash between sending in the hub and recording delivery: the next bridge sends
    # the same outbound message again, with the same idempotency key
    async with agentcomm.connect("memory://") as hub:
        planner = await hub.agent("planner")
        async with sandbox.open_host(shared_dir):
            pass
        async with sandbox.open_sandbox(shared_dir) as box:
            await box.send({"hello": 1}, to="planner")
        for _ in range(2):
            async with sandbox.bridge(hub, agent="coder", path=shared_dir) as b:
                await _until(lambda: _depth(hub, "planner", 1), "the message in the hub")
                # forget the delivery record, as if the host crashed before writing it
                await b.host._store.call(  # type: ignore[union-attr]
                    lambda c: c.execute("DELETE FROM deliveries")
                )
        assert await hub.queue_depth("planner") == 1
        msg = await planner.receive(timeout=5)
        assert msg is not None and msg.data == {"hello": 1} and msg.sender == "coder"


async def _depth(hub: agentcomm.Hub, agent: str, n: int) -> bool:
    return await hub.queue_depth(agent) == n
